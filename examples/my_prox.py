"""A new proximal operator in one class: L1 on a box, r(x) = lam ||x||_1 + indicator(|x_i| <= cap).

Registered as ``problem.reg=box_l1`` of the linear-model problems (``lasso``, ``logistic``):

    mpirun -n 2 python -m mpiopt.run prox_sgd --problem lasso --plugin examples/my_prox.py \\
        --set problem.reg=box_l1 problem.l1=0.01 problem.n_features=20 problem.support=0.5

The prox is exact and separable: prox_{t r}(v)_i = clip(soft(v_i, t lam), -cap, cap). The class
declares it ``elementwise`` (so the solvers may apply it block by block) and ``convex`` (so F* comes
from the prox-gradient reference solver, and the run reports the gap to it).
"""
import numpy as np

from mpiopt.prox import RegularizerBase, soft_threshold
from mpiopt.registry import register_regularizer


@register_regularizer("box_l1")
class BoxL1(RegularizerBase):
    """lam ||x||_1 subject to -cap <= x_i <= cap (``problem.l1`` is lam; ``problem.l2`` is refused)."""

    elementwise = True
    convex = True
    cap = 0.3

    def __init__(self, lam: float, cap: float | None = None):
        self.lam = float(lam)
        if cap is not None:
            self.cap = float(cap)

    def value(self, x: np.ndarray) -> float:
        if np.abs(x).max(initial=0.0) > self.cap * (1 + 1e-12):
            return float("inf")
        return self.lam * float(np.abs(x).sum())

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        out = soft_threshold(v, t * self.lam, out)
        return np.clip(out, -self.cap, self.cap, out=out)

    def __repr__(self) -> str:
        return f"BoxL1(lam={self.lam}, cap={self.cap})"
