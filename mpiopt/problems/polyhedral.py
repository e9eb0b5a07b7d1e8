"""``polyhedral``: f(x) = sum_i ||C_i x - d_i||_1 + c_i'x on [-1, 1]^n (cheap, exact Lipschitz constants,
f* from the epigraph LP)."""
from __future__ import annotations

import numpy as np

from .. import options as O
from ..bundle import highs
from ..options import Option
from ..registry import register_problem
from .base import settings
from .oracle import DELAY_OPTIONS, Oracle, OracleProblem


class PolyhedralOracle(Oracle):
    """f^i(x) = ||C x - d||_1 + c'x, subgradient C' sign(Cx - d) + c (exact)."""

    def __init__(self, C: np.ndarray, d: np.ndarray, c: np.ndarray):
        self.C, self.d, self.c = C, d, c

    def __call__(self, z: np.ndarray, eta: float) -> tuple[float, np.ndarray, float]:
        r = self.C @ z - self.d
        v = float(np.abs(r).sum() + self.c @ z)
        g = self.C.T @ np.sign(r) + self.c
        return v, g, v


@register_problem("polyhedral")
class Polyhedral(OracleProblem):
    summary = "sum of m terms ||C_i x - d_i||_1 + c_i'x on [-1,1]^n (generated; f* by LP)"
    options = (
        Option("n", 20, "number of variables", int, low=1),
        Option("m", 8, "number of components (oracles)", int, low=1),
        Option("rows", 30, "rows of each C_i", int, low=1),
        O.seed(0),
        Option("reference", True, "compute f* with the epigraph LP (HiGHS) on rank 0", bool),
        *DELAY_OPTIONS,
    )

    @classmethod
    def shape_estimate(cls, opts):
        return int(opts["n"]), int(opts["m"])

    @classmethod
    def memory_estimate(cls, opts, n_ranks):
        n, m, rows = float(opts["n"]), float(opts["m"]), float(opts["rows"])
        data = 8.0 * m * (rows * (n + 1) + n)     # every rank holds all m blocks (C_i, d_i, c_i)
        lp = 4 * data if opts["reference"] else 0.0   # the epigraph LP on rank 0: sparse copies in HiGHS
        return 2 * data + lp + 8.0 * n * 40, settings(opts, "n", "m", "rows")

    def setup(self) -> None:
        o = self.opts
        n, m = o["n"], o["m"]
        self.data = [self._block(i) for i in range(m)]
        L = [float(np.linalg.norm(C, axis=1).sum() + np.linalg.norm(c)) for C, _, c in self.data]
        self.init_box(n, m, -1.0, 1.0, L)

    def _block(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        o = self.opts
        n, rows = o["n"], o["rows"]
        rng = np.random.default_rng([o["seed"], i, 0x9011])
        C = rng.standard_normal((rows, n)) / np.sqrt(n)
        x_true = rng.uniform(-0.5, 0.5, n)
        d = C @ x_true + 0.1 * rng.standard_normal(rows)
        c = 0.05 * rng.standard_normal(n)
        return C, d, c

    def make_oracle(self, i: int) -> Oracle:
        return PolyhedralOracle(*self.data[i])

    def describe(self) -> str:
        o = self.opts
        return f"polyhedral: n={o['n']}, m={o['m']} components of {o['rows']} rows, X=[-1,1]^n"

    def compute_reference(self) -> None:
        if not self.opts["reference"]:
            return
        val = self.reference_lp() if self.comm.rank == 0 else None
        self.reference_objective = self.comm.bcast_obj(val)

    def reference_lp(self) -> float:
        """min sum_i 1't_i + c_i'x s.t. -t_i <= C_i x - d_i <= t_i, x in X (HiGHS)."""
        import highspy
        import scipy.sparse as sp
        n, m = self.n_vars, self.m
        rows = self.opts["rows"]
        h = highs.new_model()
        inf = highspy.kHighsInf
        nt = m * rows
        cost = np.concatenate([sum(c for _, _, c in self.data), np.ones(nt)])
        h.addVars(n + nt, np.concatenate([self.lower, np.zeros(nt)]), np.concatenate([self.upper, np.full(nt, inf)]))
        h.changeColsCost(n + nt, np.arange(n + nt, dtype=np.int32), cost)
        C = np.vstack([C for C, _, _ in self.data])
        d = np.concatenate([d for _, d, _ in self.data])
        eye = sp.identity(nt, format="csr")
        A = sp.vstack([sp.hstack([sp.csr_matrix(C), -eye]), sp.hstack([sp.csr_matrix(-C), -eye])]).tocsr()
        h.addRows(A.shape[0], np.full(A.shape[0], -inf), np.concatenate([d, -d]), A.nnz,
                  A.indptr[:-1].astype(np.int32), A.indices.astype(np.int32), A.data)
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            raise RuntimeError(f"polyhedral: reference LP not solved ({h.modelStatusToString(h.getModelStatus())}); "
                               "set problem.reference=false to run without f*")
        return float(h.getInfo().objective_function_value)
