"""Proximal operators: prox(v, t) = argmin_u t*r(u) + 0.5*||u - v||^2, vectorised numpy.

Each regularizer object has ``value(x)`` and ``prox(v, t, out=None)``; ``out`` may alias ``v``.
"""
from __future__ import annotations

import numpy as np


def soft_threshold(v: np.ndarray, thresh: float | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """sign(v) * max(|v| - thresh, 0), elementwise."""
    if out is None:
        out = np.empty_like(v)
    # max(v - t, 0) + min(v + t, 0) avoids sign() and temporaries of |v|
    tmp = np.subtract(v, thresh)
    np.maximum(tmp, 0.0, out=tmp)
    np.add(v, thresh, out=out)
    np.minimum(out, 0.0, out=out)
    out += tmp
    return out


class ElasticNet:
    """r(x) = l1*||x||_1 + (l2/2)*||x||^2 (l1 = 0: ridge; l2 = 0: lasso penalty)."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        self.l1 = float(l1)
        self.l2 = float(l2)

    def value(self, x: np.ndarray) -> float:
        return self.l1 * float(np.abs(x).sum()) + 0.5 * self.l2 * float(x @ x)

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        if self.l1 > 0:
            out = soft_threshold(v, t * self.l1, out)
        elif out is None:
            out = v.copy()
        elif out is not v:
            np.copyto(out, v)
        if self.l2 > 0:
            out /= 1.0 + t * self.l2
        return out

    def __repr__(self) -> str:
        return f"ElasticNet(l1={self.l1}, l2={self.l2})"
