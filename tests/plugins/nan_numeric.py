"""Test plug-in: problems whose numbers turn NaN on purpose (a loss, an oracle answer)."""
import time

import numpy as np

from mpiopt import register_problem
from mpiopt.options import Option
from mpiopt.problems import CompositeProblem
from mpiopt.problems.polyhedral import Polyhedral, PolyhedralOracle
from mpiopt.prox import ElasticNet


@register_problem("nan_loss")
class NanLoss(CompositeProblem):
    summary = "least squares whose loss and gradient turn NaN at a given call (test)"
    options = (
        Option("nan_at", 5, "loss/gradient call (on every rank) from which the answers are NaN (0: never)", int,
               low=0),
        Option("slow", 0.0, "seconds of sleep per loss/gradient call", float, low=0.0),
    )

    def setup(self):
        self.n_vars, self.n_local = 20, 100
        rng = np.random.default_rng(self.comm.rank)
        self.A = rng.standard_normal((self.n_local, self.n_vars))
        self.b = rng.standard_normal(self.n_local)
        self.n_samples = self.n_local * self.comm.size
        self.regularizer = ElasticNet(l1=0.01)
        self.calls = 0

    def local_loss_grad(self, x, idx=None, grad_out=None):
        self.calls += 1
        if self.opts["slow"]:
            time.sleep(self.opts["slow"])
        A, b = (self.A, self.b) if idx is None else (self.A[idx], self.b[idx])
        r = A @ x - b
        g = A.T @ r
        if self.calls >= self.opts["nan_at"] > 0:
            return float("nan"), np.full_like(g, np.nan)
        return 0.5 * float(r @ r), g


class NanOracle(PolyhedralOracle):
    def __init__(self, C, d, c, nan_at, what):
        super().__init__(C, d, c)
        self.calls, self.nan_at, self.what = 0, nan_at, what

    def __call__(self, z, eta):
        self.calls += 1
        v, g, u = super().__call__(z, eta)
        if self.calls >= self.nan_at:
            if self.what == "value":
                return float("nan"), g, float("nan")
            g = g.copy()
            g[0] = np.nan
        return v, g, u


@register_problem("nan_oracle")
class NanPolyhedral(Polyhedral):
    summary = "polyhedral whose component 0 answers NaN from a given call on (test)"
    options = Polyhedral.options + (
        Option("nan_at", 3, "oracle call of component 0 from which it answers NaN", int, low=1),
        Option("nan_what", "value", "what turns NaN: value or subgradient", str, choices=("value", "subgradient")),
    )

    def make_oracle(self, i):
        if i != 0:
            return super().make_oracle(i)
        return NanOracle(*self.data[i], self.opts["nan_at"], self.opts["nan_what"])
