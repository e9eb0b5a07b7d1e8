"""``prox_sgd``: synchronous data-parallel minibatch proximal SGD (the uncompressed baseline).

    for t = 0, 1, ...:
        g_p  = minibatch gradient on rank p's shard            (batch b per rank)
        g    = sum_p (n_p / N) g_p                             (one fp32/fp64 Allreduce)
        x    = prox_{step_t r}(x - step_t g),  step_t = step0/sqrt(t+1) or step0
"""
from __future__ import annotations

import math
import time

import numpy as np
from mpi4py import MPI

from .. import options as O
from .. import result as R
from ..errors import CheckpointError
from ..options import Option
from ..problems.base import CompositeProblem
from ..comm.jit import compile_once
from ..prox import prox_step, warm_prox_step
from ..registry import register_solver
from ..rng import RankStreams
from .base import Solver, Stop, minibatch_estimate


DEMO_PROBLEM = {"problem.n_samples": 20000, "problem.n_features": 1000, "problem.density": 0.05,
                "problem.support": 0.05, "problem.l1": 2e-3}


def step_size(step0: float, t: int, schedule: str) -> float:
    """Step of iteration ``t`` (0-based)."""
    return step0 / math.sqrt(t + 1) if schedule == "sqrt" else step0


@register_solver("prox_sgd")
class ProxSGD(Solver):
    summary = "synchronous minibatch proximal SGD, gradients averaged by Allreduce (uncompressed baseline)"
    problem_kind = CompositeProblem
    default_problem = "logistic"
    # the proximal family's demos share one problem and budget (signprox, signsgd_mv, sign_then_prox)
    demo_settings = {"solver.max_iter": 500, "solver.step0": 16.0, **DEMO_PROBLEM}
    # a history row is one pass over the data (the objective): 15 rows per run keep them under 10 % of
    # a run at the default settings (measured in the signprox benchmark; run.history_every overrides it)
    history_points = 15
    diagnostics_seconds = 0.0
    failure_hint = "try a smaller solver.step0"
    options = (
        O.max_iter(1000),
        O.tol(0.0, "stop when ||x_t - x_t+1|| / step < tol (stochastic gradient mapping; 0: never)"),
        O.step0(0.5),
        O.batch_size(64),
        Option("schedule", "sqrt", "step schedule: sqrt (step0/sqrt(t+1)) or const", str, choices=("sqrt", "const")),
        Option("dtype", "float32", "precision of the gradient on the wire", str, choices=("float32", "float64")),
    )

    @classmethod
    def memory_estimate(cls, problem_cls, cfg, n_ranks):
        return minibatch_estimate(cfg, cfg["solver"]["batch_size"], "batch_size")

    def __init__(self, problem, options, ctx):
        super().__init__(problem, options, ctx)
        p = problem
        self.x = p.x0()
        self.streams = RankStreams(self.comm, ctx.seed, 0x5D)
        self.weight = p.n_local / p.n_samples
        self.wire = np.empty(p.n_vars, dtype=np.dtype(options["dtype"]))
        self.g = np.empty(p.n_vars)
        # the minibatch gradient: compiled and sparse (O(batch nonzeros)) on CSR data
        warm = p.use_sparse_batch_grad() if p.supports_sparse_batch_grad() else []
        self.sparse_grad = bool(warm)
        self.cols: np.ndarray | None = None
        compile_once(self.comm, (lambda: warm_prox_step(self.wire.dtype), *warm))

    def local_gradient(self) -> np.ndarray:
        """Minibatch mean gradient on this rank's shard (zero without local data); with the sparse
        gradient a buffer of the problem's, zero outside ``self.cols``."""
        p, g = self.problem, self.g
        self.cols = None
        if not p.n_local:
            g[:] = 0.0
            return g
        idx = self.streams.rng.integers(0, p.n_local, size=self.opts["batch_size"])
        if self.sparse_grad:
            g, self.cols = p.batch_grad_sparse(self.x, idx)
            return g
        return p.batch_grad(self.x, idx, out=g)

    def step(self) -> Stop | None:
        p, o, x = self.problem, self.opts, self.x
        step = step_size(o["step0"], self.nit, o["schedule"])
        g = self.local_gradient()
        if self.cols is not None:            # sparse: the wire is zero outside the batch's columns
            self.wire.fill(0)
            self.wire[self.cols] = g[self.cols] * self.weight
        else:
            g *= self.weight
            self.wire[:] = g
        self.comm.Allreduce(MPI.IN_PLACE, self.wire, tag="gradient")
        x_old = x.copy() if o["tol"] > 0 else None
        prox_step(p.regularizer, x, self.wire, step, self.g)     # x <- prox(x - step * wire), self.g as scratch
        if x_old is not None and np.linalg.norm(x - x_old) / step < o["tol"]:
            return Stop(R.CONVERGED, f"gradient-mapping norm below tol={o['tol']}")
        return None

    def numeric_checks(self) -> dict:
        return {"iterate": self.x}

    def record_due(self, stop, budget) -> bool:
        return (stop is None or stop.status != R.FAILED) and super().record_due(stop, budget)

    def record(self) -> None:
        t0 = time.perf_counter()
        super().record()
        self.diagnostics_seconds += time.perf_counter() - t0

    def values(self) -> dict:
        f = self.problem.objective(self.x)
        fstar = self.problem.reference_objective
        return {"objective": f, **({"gap": f - fstar} if fstar is not None else {}),
                "bytes_sent": self.bytes_sent(), "nnz": np.count_nonzero(self.x)}

    def finish(self, stop: Stop) -> R.OptimizeResult:
        fun = self.problem.objective(self.x)
        return R.make_result(self.x.copy(), fun, self.nit, stop.status, stop.message, bytes_sent=self.bytes_sent(),
                             nnz=int(np.count_nonzero(self.x)), reference_objective=self.problem.reference_objective,
                             diagnostics_seconds=self.diagnostics_seconds)

    def bytes_sent(self) -> int:
        """Bytes this rank sent for the gradients (evaluation traffic excluded)."""
        return int(self.comm.stats.bytes_by_op["gradient"])

    def state_dict(self):
        rngs = self.streams.state()
        if self.comm.rank != 0:
            return None
        return {"x": self.x.copy(), "t": self.nit, "rng": rngs, "n_ranks": self.comm.size}

    def load_state_dict(self, state) -> None:
        x = np.asarray(state["x"], dtype=np.float64)
        if x.shape != self.x.shape:
            raise CheckpointError(f"checkpoint x has {x.size} variables, problem has {self.x.size}")
        self.x[:] = x
        self.nit = int(state["t"])
        self.streams.load(state["rng"], state["n_ranks"], self.nit)
