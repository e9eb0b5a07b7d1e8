"""Sign baselines sharing SignProx's packed vote:

- ``signsgd_mv``: x <- x - gam * vote(sign(g_p + s(x))), s a subgradient of r (or r ignored).
- ``sign_then_prox``: x <- prox_{gam r}(x - gam * vote(sign(g_p))). With L1 the threshold gam*lam
  is far below the sign step gam, so it neither shrinks nor sparsifies; on sparse data the 1-bit
  code of sgn(0) = + adds a drift. Kept to show why the prox belongs inside the sign.
"""
from __future__ import annotations

import numpy as np

from ..kernels import MSG_GRADIENT
from ..options import Option
from ..prox import ElasticNet, elastic_net_weights
from ..registry import register_solver
from .prox_sgd import DEMO_PROBLEM
from .sign_vote import SignVoteSolver, sign_options


@register_solver("signsgd_mv")
class SignSGDMV(SignVoteSolver):
    demo_settings = {"solver.max_iter": 500, "solver.step0": 0.1, **DEMO_PROBLEM}
    summary = "signSGD with majority vote (Bernstein et al. 2018/19); r as a subgradient or ignored"
    options = sign_options(polish="none") + (
        Option("reg", "subgradient", "regulariser: subgradient (l1*sign(x) + l2*x for L1/elastic net) or ignore",
               str, choices=("subgradient", "ignore")),
    )

    def message(self, x: np.ndarray, g: np.ndarray, gam: float, out: np.ndarray,
                work: np.ndarray) -> np.ndarray:
        np.copyto(out, g)
        r = self.problem.regularizer
        if self.opts["reg"] == "subgradient" and isinstance(r, ElasticNet):
            if r.l1 > 0:
                np.sign(x, out=work)
                work *= r.l1
                out += work
            if r.l2 > 0:
                out += r.l2 * x
        return out

    def message_elementwise(self) -> bool:
        return True

    def message_kernel(self):
        r = self.problem.regularizer
        if self.opts["reg"] == "subgradient" and isinstance(r, ElasticNet):
            return (MSG_GRADIENT, r.l1, r.l2)
        return (MSG_GRADIENT, 0.0, 0.0)


@register_solver("sign_then_prox")
class SignThenProx(SignVoteSolver):
    demo_settings = {"solver.max_iter": 500, "solver.step0": 0.025, **DEMO_PROBLEM}
    summary = "naive baseline: majority-voted sign step on the smooth gradient, then prox"
    options = sign_options(polish="none")

    def message(self, x: np.ndarray, g: np.ndarray, gam: float, out: np.ndarray,
                work: np.ndarray) -> np.ndarray:
        np.copyto(out, g)
        return out

    def message_elementwise(self) -> bool:
        return True

    def after_vote(self, x: np.ndarray, gam: float) -> None:
        self.problem.regularizer.prox(x, gam, out=x)

    def message_kernel(self):
        return (MSG_GRADIENT, 0.0, 0.0)

    def after_vote_kernel(self):
        return elastic_net_weights(self.problem.regularizer)
