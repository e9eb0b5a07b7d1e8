"""numba sources of the elastic-net prox kernels (call them through :func:`mpiopt.kernels.get`).

The prox of r = l1 ||x||_1 + (l2/2) ||x||^2 with step t is v -> (v - clip(v, -a, a)) / dd with
a = t l1 and dd = 1 + t l2 (each part only where its weight is > 0); :func:`prox_params` groups these
numbers for the kernels."""
from __future__ import annotations

import numpy as np

#: the prox argument of the kernels: (t, a = t l1, has_l1, dd = 1 + t l2, has_l2). A plain tuple, not a
#: named one: numba types plain tuples of scalars and arrays in its C dispatcher (a few microseconds
#: less per call than a named tuple)
Prox = tuple[float, float, bool, float, bool]


def prox_params(t: float, l1: float, l2: float) -> Prox:
    """The prox argument (:data:`Prox`) of step ``t`` and weights (l1, l2)."""
    t, l1, l2 = float(t), float(l1), float(l2)
    return (t, t * l1, l1 > 0, 1.0 + t * l2, l2 > 0)


def clip(u, lo, hi):
    """numpy's clip of one float: min(max(u, lo), hi), NaN propagated."""
    if u != u:
        return u
    c = u if u > lo else lo
    return c if c < hi else hi


def prox_step_en(x, d, p):
    """x <- prox_{t r}(x - t d) for the elastic net :data:`Prox` ``p`` in one pass (``d`` float32 or
    float64), the float operations of :func:`mpiopt.prox.prox_step`: w = d*t (float64), v = x - w,
    soft threshold, / dd."""
    t, a, has_l1, dd, has_l2 = p
    for i in range(x.size):
        v = x[i] - np.float64(d[i]) * t
        if has_l1:
            v = v - clip(v, -a, a)
        if has_l2:
            v = v / dd
        x[i] = v


#: compiled entry points and the helpers they call (compiled only as callees)
KERNELS = (prox_step_en,)
HELPERS = (clip,)
