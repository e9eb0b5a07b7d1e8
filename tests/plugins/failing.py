"""Test plug-in: a problem whose gradient turns NaN on every rank from a given call on, so that the
run ends with status ``failed`` (a numerical failure, exit 1) instead of raising."""
import numpy as np

from mpiopt import register_problem
from mpiopt.options import Option
from mpiopt.problems import CompositeProblem
from mpiopt.prox import ElasticNet


@register_problem("nan_after")
class NanAfter(CompositeProblem):
    summary = "test problem whose gradient becomes NaN on purpose"
    options = (
        Option("nan_at", 5, "gradient call from which the loss and gradient are NaN (0: never)", int, low=0),
        Option("slow", 0.0, "seconds of sleep per gradient call", float, low=0.0),
    )

    def setup(self):
        self.n_vars, self.n_local = 10, 50
        rng = np.random.default_rng(self.comm.rank)
        self.A = rng.standard_normal((self.n_local, self.n_vars))
        self.b = rng.standard_normal(self.n_local)
        self.n_samples = self.n_local * self.comm.size
        self.regularizer = ElasticNet(l1=0.01)
        self.calls = 0

    def local_loss_grad(self, x, idx=None, grad_out=None):
        self.calls += 1
        if self.opts["slow"]:
            import time
            time.sleep(self.opts["slow"])
        A, b = (self.A, self.b) if idx is None else (self.A[idx], self.b[idx])
        r = A @ x - b
        if self.calls >= self.opts["nan_at"] > 0:
            return float("nan"), np.full(self.n_vars, np.nan)
        return 0.5 * float(r @ r), A.T @ r
