"""``prox_sgd``: synchronous data-parallel minibatch proximal SGD (the uncompressed baseline).

    for t = 0, 1, ...:
        g_p  = minibatch gradient on rank p's shard            (batch b per rank)
        g    = sum_p (n_p / N) g_p                             (one fp32/fp64 Allreduce)
        x    = prox_{step_t r}(x - step_t g),  step_t = step0/sqrt(t+1) or step0
"""
from __future__ import annotations

import json
import math

import numpy as np
from mpi4py import MPI

from .. import options as O
from .. import result as R
from ..errors import CheckpointError
from ..kernels import all_finite
from ..options import Option
from ..problems.base import CompositeProblem
from ..prox import prox_step
from ..registry import register_solver
from .base import Solver


def step_size(step0: float, t: int, schedule: str) -> float:
    """Step of iteration ``t`` (0-based)."""
    return step0 / math.sqrt(t + 1) if schedule == "sqrt" else step0


@register_solver("prox_sgd")
class ProxSGD(Solver):
    summary = "synchronous minibatch proximal SGD, gradients averaged by Allreduce (uncompressed baseline)"
    problem_kind = CompositeProblem
    default_problem = "logistic"
    demo_settings = {"solver.max_iter": 500, "solver.step0": 4.0, "problem.n_samples": 20000,
                     "problem.n_features": 200, "problem.noise": 1.0, "problem.l1": 1e-3}
    options = (
        O.max_iter(1000),
        O.tol(0.0, "stop when ||x_t - x_t+1|| / step < tol (stochastic gradient mapping; 0: never)"),
        O.step0(0.5),
        O.batch_size(64),
        Option("schedule", "sqrt", "step schedule: sqrt (step0/sqrt(t+1)) or const", str, choices=("sqrt", "const")),
        Option("dtype", "float32", "precision of the gradient on the wire", str, choices=("float32", "float64")),
    )

    def __init__(self, problem, options, ctx):
        super().__init__(problem, options, ctx)
        p = problem
        self.x = p.x0()
        self.t = 0
        seed = int(ctx.cfg.get("seed", 0))
        self.rng = np.random.default_rng([seed, self.comm.rank, 0x5D])
        self.weight = p.n_local / p.n_samples
        self.wire = np.empty(p.n_vars, dtype=np.dtype(options["dtype"]))

    def solve(self, callback=None) -> R.OptimizeResult:
        p, o, comm, ctx = self.problem, self.opts, self.comm, self.ctx
        self._callback = callback
        T = o["max_iter"]
        ctx.setup_schedule(T, default_history_every=max(1, T // 50))
        fstar = p.reference_objective
        x, wire = self.x, self.wire
        g = np.empty(p.n_vars)
        status, msg = R.MAX_ITER, f"reached max_iter={T}"
        if self.t == 0:
            self._notify(0, fstar)
        while self.t < T:
            step = step_size(o["step0"], self.t, o["schedule"])
            if p.n_local:
                idx = self.rng.integers(0, p.n_local, size=o["batch_size"])
                p.batch_grad(x, idx, out=g)
                g *= self.weight
            else:
                g[:] = 0.0
            wire[:] = g
            comm.Allreduce(MPI.IN_PLACE, wire, tag="gradient")
            x_old = x.copy() if o["tol"] > 0 else None
            prox_step(p.regularizer, x, wire, step, g)     # x <- prox(x - step * wire), g as scratch
            self.t += 1
            if not all_finite(x):
                status, msg = R.FAILED, f"non-finite iterate at iteration {self.t}"
                break
            converged = x_old is not None and np.linalg.norm(x - x_old) / step < o["tol"]
            if ctx.due(self.t, T) or converged:
                self._notify(self.t, fstar)
            if converged:
                status, msg = R.CONVERGED, f"gradient-mapping norm below tol={o['tol']}"
                break
            stop = self.poll(self.t)
            if stop is not None:
                status, msg = stop, R.stop_message(stop)
                break
        ctx.close_progress()
        fun = p.objective(x)
        return R.make_result(x.copy(), fun, self.t, status, msg, bytes_sent=self.bytes_sent(),
                             nnz=int(np.count_nonzero(x)), reference_objective=fstar)

    def _notify(self, it: int, fstar: float | None) -> None:
        f = self.problem.objective(self.x)
        extra = {"gap": f - fstar} if fstar is not None else {}
        self.notify(it, self.x, f, **extra, bytes_sent=self.bytes_sent(),
                    nnz=np.count_nonzero(self.x))

    def bytes_sent(self) -> int:
        """Bytes this rank sent for the gradients (evaluation traffic excluded)."""
        return int(self.comm.stats.bytes_by_op["gradient"])

    def state_dict(self):
        rngs = self.comm.gather_obj(json.dumps(self.rng.bit_generator.state))
        if self.comm.rank != 0:
            return None
        return {"x": self.x.copy(), "t": self.t, "rng": rngs, "n_ranks": self.comm.size}

    def load_state_dict(self, state) -> None:
        x = np.asarray(state["x"], dtype=np.float64)
        if x.shape != self.x.shape:
            raise CheckpointError(f"checkpoint x has {x.size} variables, problem has {self.x.size}")
        self.x[:] = x
        self.t = int(state["t"])
        rngs = state["rng"]
        if int(state["n_ranks"]) == self.comm.size:
            self.rng.bit_generator.state = json.loads(rngs[self.comm.rank])
        else:  # another rank count: fresh streams keyed by the iteration
            seed = int(self.ctx.cfg.get("seed", 0))
            self.rng = np.random.default_rng([seed, self.comm.rank, 0x5D, self.t])
