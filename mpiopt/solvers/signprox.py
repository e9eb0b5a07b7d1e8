"""``signprox``: one-bit proximal stochastic optimisation with majority-voted packed signs
(Xu and Kamilov, ICASSP 2019), distributed over ranks that each hold a data shard.

    x_0 identical on all ranks
    for t = 0, 1, ..., T-1:
        gam = gamma(t)
        g_p = minibatch gradient of the smooth part on rank p's shard
        m_p = x - prox_{gam r}(x - gam g_p)          # scaled gradient mapping, never sent
        e_p = sign code of m_p (1-bit or ternary), packed 8 per byte
        v   = vote(e_1..e_P) in {-1, 0, +1}^n         # identical on every rank
        x  -= gam * v                                 # same op on same bytes: replicas identical
    return polish(x)

With one rank this is the single-node SignProx rule x <- x - gam * sgn(G(x)). The loop is
:class:`~mpiopt.solvers.sign_vote.SignVoteSolver`; this module supplies the message.
"""
from __future__ import annotations

import numpy as np

from ..prox import gradient_mapping
from ..registry import register_solver
from .sign_vote import SignVoteSolver, sign_options


@register_solver("signprox")
class SignProx(SignVoteSolver):
    summary = ("SignProx: sign of the proximal gradient mapping, 1 bit per element, "
               "majority vote over ranks on packed words")
    demo_settings = {"solver.max_iter": 500, "solver.step0": 0.1, "problem.n_samples": 20000,
                     "problem.n_features": 1000, "problem.density": 0.05, "problem.support": 0.05,
                     "problem.l1": 2e-3}
    options = sign_options(polish="band")

    def message(self, x: np.ndarray, g: np.ndarray, gam: float, out: np.ndarray,
                work: np.ndarray) -> np.ndarray:
        """m = x - prox_{gam r}(x - gam g): the scaled proximal gradient mapping."""
        return gradient_mapping(self.problem.regularizer, x, g, gam, out, work)

    def message_elementwise(self) -> bool:
        return bool(getattr(self.problem.regularizer, "elementwise", False))
