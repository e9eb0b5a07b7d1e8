"""Test plug-in: a problem that fails on purpose on one rank (setup or mid-run)."""
import os
import time

import numpy as np

from mpiopt import register_problem
from mpiopt.errors import InputError
from mpiopt.options import Option
from mpiopt.problems import CompositeProblem
from mpiopt.prox import ElasticNet


@register_problem("faulty")
class Faulty(CompositeProblem):
    summary = "test problem failing on purpose"
    options = (
        Option("fail_rank", -1, "rank that fails (-1: none)", int),
        Option("fail_at", 0, "gradient call at which it raises RuntimeError (0: never)", int, low=0),
        Option("bad_input_rank", -1, "rank whose setup raises InputError", int),
        Option("slow", 0.0, "seconds of sleep per gradient call", float, low=0.0),
        Option("hang_at", 0, "gradient call at which fail_rank loops forever in Python (0: never)", int, low=0),
        Option("hang_marker", "", "file fail_rank creates when it starts looping (empty: none)", str),
        Option("setup_rank", -1, "rank whose setup takes setup_seconds (-1: none)", int),
        Option("setup_seconds", 0.0, "seconds setup_rank spends in setup (busy in Python, like a compiler)", float,
               low=0.0),
    )

    def setup(self):
        if self.comm.rank == self.opts["setup_rank"]:
            t_end = time.monotonic() + self.opts["setup_seconds"]
            while time.monotonic() < t_end:
                pass
        if self.comm.rank == self.opts["bad_input_rank"]:
            raise InputError(f"faulty.dat:{3 + self.comm.rank}: bad value on purpose")
        self.n_vars, self.n_local = 20, 100
        rng = np.random.default_rng(self.comm.rank)
        self.A = rng.standard_normal((self.n_local, self.n_vars))
        self.b = rng.standard_normal(self.n_local)
        self.n_samples = self.n_local * self.comm.size
        self.regularizer = ElasticNet(l1=0.01)
        self.calls = 0

    def local_loss_grad(self, x, idx=None, grad_out=None):
        self.calls += 1
        if self.comm.rank == self.opts["fail_rank"] and self.calls >= self.opts["fail_at"] > 0:
            raise RuntimeError(f"injected failure at call {self.calls} (pid {os.getpid()})")
        if self.comm.rank == self.opts["fail_rank"] and self.calls >= self.opts["hang_at"] > 0:
            if self.opts["hang_marker"]:
                open(self.opts["hang_marker"], "w").close()
            while True:      # a plug-in stuck in user code
                pass
        if self.opts["slow"]:
            time.sleep(self.opts["slow"])
        A, b = (self.A, self.b) if idx is None else (self.A[idx], self.b[idx])
        r = A @ x - b
        return 0.5 * float(r @ r), A.T @ r
