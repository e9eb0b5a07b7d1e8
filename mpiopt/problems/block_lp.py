"""``block_lp_dual``: the Lagrangian dual of a generated block-angular LP (coupling rows relaxed).

Primal: max sum_i c_i'y_i  s.t.  sum_i A_i y_i <= b,  D_i y_i <= d_i,  0 <= y_i <= 1.
Dual:   min_{lam in X} theta(lam) = sum_i f^i(lam),
        f^i(lam) = lam'b/m + max_{y in Y_i} (c_i - A_i'lam)'y,  subgradient b/m - A_i y*.
X = [0, lam_max]^n with lam_max = theta(0)/min_k b_k (y = 0 is feasible, so lam*'b <= theta(0)).
Each oracle keeps one persistent HiGHS model of its block and only changes the cost vector per
call. ``integer=true`` makes the blocks binary: each call is a MIP solved to the requested
accuracy, giving (fl, g, fu) from the incumbent and the MIP bound (the inexact case).

Every HiGHS solve has a time limit (``problem.oracle_time_limit``). At the limit a MIP answers with
what it has (its incumbent, or y = 0, which is always feasible, and its bound: a valid but less
accurate answer); an LP at its limit, or any solve that ends without a verdict (a warm-started
solve can end "Unknown"), is solved again from scratch once, then the oracle fails (the run stops
with status failed and names the block).
"""
from __future__ import annotations

import numpy as np

from .. import options as O
from ..bundle import highs
from ..errors import InputError
from ..options import Option
from ..registry import register_problem
from .base import settings
from .oracle import DELAY_OPTIONS, Oracle, OracleProblem


MIP_GAP_FLOOR = 1e-9                 # the smallest absolute MIP gap a block is asked for


class BlockOracle(Oracle):
    """f^i(lam) = lam'b/m + max_{D y <= d, 0 <= y <= 1} (c - A'lam)'y with a persistent HiGHS model."""

    def __init__(self, A: np.ndarray, c: np.ndarray, D: np.ndarray, d: np.ndarray, bm: np.ndarray,
                 integer: bool = False, warm_start: bool = True, time_limit: float | None = None, index: int = 0):
        import highspy
        self.A, self.c, self.bm, self.integer, self.warm = A, c, bm, integer, warm_start
        self.index = index
        self.timeouts = 0
        ni = c.size
        h = highs.new_model(time_limit=time_limit)
        h.addVars(ni, np.zeros(ni), np.ones(ni))
        inf = highspy.kHighsInf
        nz = D != 0
        starts = np.r_[0, np.cumsum(nz.sum(axis=1))[:-1]].astype(np.int32)
        h.addRows(D.shape[0], np.full(D.shape[0], -inf), d, int(nz.sum()), starts,
                  np.nonzero(nz)[1].astype(np.int32), D[nz])
        if integer:
            h.changeColsIntegrality(ni, np.arange(ni, dtype=np.int32),
                                    np.full(ni, highspy.HighsVarType.kInteger))
        self.h, self.hs = h, highspy
        self.idx = np.arange(ni, dtype=np.int32)

    def __call__(self, lam: np.ndarray, eta: float) -> tuple[float, np.ndarray, float]:
        h = self.h
        red = self.c - self.A.T @ lam
        h.changeColsCost(red.size, self.idx, -red)          # HiGHS minimises
        if not self.warm:
            h.clearSolver()
        if self.integer:
            h.setOptionValue("mip_abs_gap", max(float(eta), MIP_GAP_FLOOR))
            h.setOptionValue("mip_rel_gap", 0.0 if eta > 0 else 1e-9)
        h.run()
        y = self._solution()
        base = float(lam @ self.bm)
        fl = base + float(red @ y)
        if self.integer:
            y = np.round(y)
            fl = base + float(red @ y)
            bound = -float(h.getInfo().mip_dual_bound)
            fu = max(fl, base + bound)
        else:
            fu = fl
        g = self.bm - self.A @ y
        return fl, g, fu

    def _solution(self, retried: bool = False) -> np.ndarray:
        """The block's y after a solve, with the time-limit fall-backs of the module docstring."""
        h, hs = self.h, self.hs
        status = h.getModelStatus()
        if status == hs.HighsModelStatus.kOptimal:
            return np.clip(np.asarray(h.getSolution().col_value), 0.0, 1.0)
        if self.integer and status == hs.HighsModelStatus.kTimeLimit:
            self.timeouts += 1
            sol = h.getSolution()
            if sol.value_valid and len(sol.col_value) == self.c.size:
                return np.clip(np.asarray(sol.col_value), 0.0, 1.0)
            return np.zeros(self.c.size)            # y = 0 is feasible (d >= 0)
        if not retried:
            # An LP over its time limit, or a warm-started solve that ends without a verdict (HiGHS can
            # report "Unknown" after many cost changes): solve once more from scratch.
            if status == hs.HighsModelStatus.kTimeLimit:
                self.timeouts += 1
            h.clearSolver()
            h.run()
            return self._solution(retried=True)
        raise RuntimeError(f"block {self.index}: HiGHS did not solve the block "
                           f"({h.modelStatusToString(status)})")


@register_problem("block_lp_dual")
class BlockLPDual(OracleProblem):
    summary = "Lagrangian dual of a generated block-angular LP (one oracle per block, HiGHS; f* from the primal LP)"
    options = (
        Option("n", 60, "coupling rows (= dual variables)", int, low=1),
        Option("m", 8, "blocks (components / oracles)", int, low=1),
        Option("block_size", 40, "columns of the smallest block", int, low=4),
        Option("block_spread", 1.0, "block sizes rise linearly from block_size to block_size*block_spread", float, low=1.0),
        Option("density", 0.3, "density of the coupling matrices A_i", float, low=0.0, high=1.0, low_open=True),
        Option("integer", False, "binary blocks: MIP oracles solved to the requested accuracy (inexact case; no f*)", bool),
        Option("warm_start", True, "keep the HiGHS basis between calls (faster; off: results independent of call history)", bool),
        Option("oracle_time_limit", 300.0, "seconds per block solve (at the limit a MIP answers with its incumbent "
               "and bound, an LP is retried once and then fails)", float, low=0.0, low_open=True),
        O.seed(0),
        Option("reference", True, "compute f* from the primal LP (HiGHS) on rank 0", bool),
        *DELAY_OPTIONS,
    )

    @classmethod
    def shape_estimate(cls, opts):
        return int(opts["n"]), int(opts["m"])

    @classmethod
    def memory_estimate(cls, opts, n_ranks):
        n, m = float(opts["n"]), float(opts["m"])
        ni = float(opts["block_size"]) * float(opts["block_spread"])      # the largest block's columns
        block = 8.0 * (3 * n * ni + ni * ni / 4 + 3 * ni)   # A (and its generator's two draws), D, c, d
        lp = 3 * m * block if opts["reference"] else 0.0    # the primal LP on rank 0
        return 2 * m * block + lp + 8.0 * n * 40, settings(opts, "n", "m", "block_size", "block_spread")

    def setup(self) -> None:
        o = self.opts
        n, m = o["n"], o["m"]
        sizes = np.rint(np.linspace(o["block_size"], o["block_size"] * o["block_spread"], m)).astype(int)
        self.sizes = sizes
        self.blocks = [self._block(i, int(sizes[i])) for i in range(m)]
        b = 0.25 * sum(A.sum(axis=1) for A, _, _, _ in self.blocks)
        if np.any(b <= 0):
            raise InputError("problem.density: too sparse, a coupling row has no nonzero (raise density or block_size)")
        self.b = b
        self.bm = b / m
        theta0 = sum(self._block_max0(i) for i in range(m))
        lam_max = theta0 / float(b.min())
        L = [float(np.linalg.norm(b) / m + np.linalg.norm(A.sum(axis=1))) for A, _, _, _ in self.blocks]
        self.init_box(n, m, 0.0, lam_max, L)
        self.exact = not o["integer"]

    def _block(self, i: int, ni: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        o = self.opts
        n = o["n"]
        rng = np.random.default_rng([o["seed"], i, 0xB10C])
        A = rng.uniform(0, 1, (n, ni)) * (rng.uniform(0, 1, (n, ni)) < o["density"])
        c = rng.uniform(0.5, 1.5, ni) * (1 + A.sum(axis=0) / n)
        D = rng.uniform(0, 1, (max(1, ni // 4), ni))
        d = 0.4 * D.sum(axis=1)
        return A, c, D, d

    def _block_max0(self, i: int) -> float:
        """max c_i'y over the block's LP relaxation (theta(0) part; valid bound for integer blocks too)."""
        from scipy.optimize import linprog
        A, c, D, d = self.blocks[i]
        r = linprog(-c, A_ub=D, b_ub=d, bounds=(0, 1), method="highs", options=highs.linprog_options())
        if r.status != 0:
            raise RuntimeError(f"block_lp_dual: block {i} LP relaxation failed: {r.message}")
        return float(-r.fun)

    def make_oracle(self, i: int) -> Oracle:
        A, c, D, d = self.blocks[i]
        return BlockOracle(A, c, D, d, self.bm, self.opts["integer"], self.opts["warm_start"],
                           time_limit=self.opts["oracle_time_limit"], index=i)

    def accuracy_floor(self, i: int) -> float:
        """MIP blocks are solved to at least this absolute gap (what the oracle asks HiGHS for)."""
        return MIP_GAP_FLOOR if self.opts["integer"] else 0.0

    def describe(self) -> str:
        o = self.opts
        kind = "binary (MIP oracles, inexact)" if o["integer"] else "continuous"
        return (f"block_lp_dual: n={o['n']} coupling rows, m={o['m']} {kind} blocks of "
                f"{self.sizes.min()}..{self.sizes.max()} columns, X=[0, {self.upper[0]:.4g}]^n")

    def compute_reference(self) -> None:
        if not self.opts["reference"] or self.opts["integer"]:
            return
        val = self.primal_lp() if self.comm.rank == 0 else None
        self.reference_objective = self.comm.bcast_obj(val)

    def primal_lp(self) -> float:
        """The primal block-angular LP optimum (= min theta by strong duality)."""
        import scipy.sparse as sp
        from scipy.optimize import linprog
        As = sp.hstack([sp.csr_matrix(A) for A, _, _, _ in self.blocks])
        Ds = sp.block_diag([sp.csr_matrix(D) for _, _, D, _ in self.blocks])
        A_ub = sp.vstack([As, Ds]).tocsr()
        b_ub = np.concatenate([self.b, *[d for _, _, _, d in self.blocks]])
        c = np.concatenate([c for _, c, _, _ in self.blocks])
        r = linprog(-c, A_ub=A_ub, b_ub=b_ub, bounds=(0, 1), method="highs", options=highs.linprog_options())
        if r.status != 0:
            raise RuntimeError(f"block_lp_dual: primal LP failed: {r.message}")
        return float(-r.fun)
