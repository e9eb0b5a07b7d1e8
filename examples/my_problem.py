"""A user problem registered as a plug-in: least squares with a fixed random design.

    mpirun -n 4 python -m mpiopt.run prox_sgd --problem my_quadratic --plugin examples/my_problem.py
"""
import numpy as np

from mpiopt import register_problem
from mpiopt.options import Option
from mpiopt.problems import CompositeProblem
from mpiopt.problems.reference import elastic_net_optimum
from mpiopt.prox import ElasticNet


@register_problem("my_quadratic")
class MyQuadratic(CompositeProblem):
    summary = "0.5/N ||A x - b||^2 + l1 ||x||_1 on random data"
    options = (Option("n", 50, "variables", int, low=1), Option("l1", 0.01, "L1 weight", float, low=0.0))

    def setup(self):
        rng = np.random.default_rng([7, self.comm.rank])      # this rank's shard
        self.n_vars, self.n_local = self.opts["n"], 200
        self.A = rng.standard_normal((self.n_local, self.n_vars)) / np.sqrt(self.n_vars)
        self.b = self.A @ np.ones(self.n_vars) + 0.1 * rng.standard_normal(self.n_local)
        self.n_samples = self.n_local * self.comm.size
        self.regularizer = ElasticNet(l1=self.opts["l1"])

    def local_loss_grad(self, x, idx=None, grad_out=None):
        A, b = (self.A, self.b) if idx is None else (self.A[idx], self.b[idx])
        r = A @ x - b
        return 0.5 * float(r @ r), A.T @ r

    def compute_reference(self):
        """Optional, collective: the optimum F*, so results report F(x) - F* (here by L-BFGS-B)."""
        self.reference_objective, self.reference_x = elastic_net_optimum(
            self.comm, self.local_loss_grad, self.n_vars, self.n_samples, self.opts["l1"], 0.0)
