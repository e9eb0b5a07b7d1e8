"""Proximal operators: prox(v, t) = argmin_u t*r(u) + 0.5*||u - v||^2, vectorised numpy.

Every regularizer implements :class:`mpiopt.protocols.Regularizer`: ``value(x)`` and
``prox(v, t, out=None)`` (``out`` may alias ``v``), plus the optional hooks whose defaults
:class:`RegularizerBase` carries. ``@register_regularizer("name")`` on a subclass makes it
``problem.reg=name`` of the linear-model problems.
"""
from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from . import kernels as K
from .errors import InputError
from .kernels import BLOCK, blocks
from .protocols import Optimum, ReferenceSolvers
from .registry import register_regularizer


class RegularizerBase:
    """Base of every regularizer: subclasses implement :meth:`value` and :meth:`prox`; every other
    hook of :class:`mpiopt.protocols.Regularizer` has a default here."""

    #: the name under which the class is registered (set by :func:`~mpiopt.registry.register_regularizer`)
    reg_name: ClassVar[str] = ""
    #: prox acts on each element alone with scalar parameters, so it may be applied to any slice
    elementwise: ClassVar[bool] = False
    #: r is convex: the default :meth:`reference_optimum` then runs the prox-gradient reference solver
    convex: ClassVar[bool] = False
    #: K when r = (1/K) sum_k r_k with a cheap exact prox per component (see :meth:`prox_component`)
    n_components: int = 1

    def value(self, x: np.ndarray) -> float:
        """r(x) (``inf`` outside a constraint set)."""
        raise NotImplementedError

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        """``argmin_u t r(u) + 1/2 ||u - v||^2`` (``out`` may alias ``v``)."""
        raise NotImplementedError

    def prox_component(self, v: np.ndarray, t: float, k: int, out: np.ndarray | None = None) -> np.ndarray:
        """prox_{t r_k}(v) of component ``k`` (default, one component: the prox of r)."""
        return self.prox(v, t, out=out)

    def gradient_mapping(self, x: np.ndarray, g: np.ndarray, t: float, out: np.ndarray,
                         work: np.ndarray | None = None) -> np.ndarray:
        """out = x - prox_{t r}(x - t g) (default: from :meth:`prox`; ``work`` is for fused versions)."""
        return _generic_mapping(self, x, g, t, out)

    def reference_optimum(self, ref: ReferenceSolvers) -> Optimum | None:
        """Collective: (F*, x*) of the problem's smooth part + r. Default: the prox-gradient reference
        solver when :attr:`convex`, else None (no certified optimum)."""
        return ref.prox_gradient(self) if self.convex else None

    @classmethod
    def from_options(cls, opts: dict[str, Any], n_vars: int) -> "RegularizerBase":
        """The regularizer for ``problem.reg=NAME`` from the problem's options (default:
        ``cls(problem.l1)``; ``problem.l2 > 0`` is refused). InputError on bad options."""
        cls.refuse_l2(opts)
        return cls(opts["l1"])

    @classmethod
    def refuse_l2(cls, opts: dict[str, Any]) -> None:
        """InputError when ``problem.l2 > 0`` (for regularizers that have no L2 term)."""
        if opts.get("l2", 0.0) > 0:
            raise InputError(f"problem.l2: not supported with problem.reg={cls.reg_name}")


class _Adapted(RegularizerBase):
    """A duck-typed object with only ``value`` and ``prox``, seen through the protocol's defaults."""

    def __init__(self, inner: Any):
        self.inner = inner

    def value(self, x: np.ndarray) -> float:
        return self.inner.value(x)

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        return self.inner.prox(v, t, out=out)

    def __repr__(self) -> str:
        return repr(self.inner)


def as_regularizer(reg: Any) -> RegularizerBase:
    """``reg`` itself when it subclasses :class:`RegularizerBase`; otherwise an object with just
    ``value`` and ``prox`` taken with the default hooks."""
    return reg if isinstance(reg, RegularizerBase) else _Adapted(reg)


def soft_threshold(v: np.ndarray, thresh: float | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``sign(v) * max(|v| - thresh, 0)``, elementwise."""
    # v - clip(v, -t, t): two passes, bit-identical to max(v - t, 0) + min(v + t, 0)
    if np.ndim(thresh) == 0:
        thresh = float(thresh)       # a weak Python scalar keeps v's dtype
    neg = -thresh
    if out is None or out is v or np.shares_memory(out, v):
        clipped = np.clip(v, neg, thresh)
        if out is None:
            out = clipped
            np.subtract(v, clipped, out=out)
            return out
    else:
        clipped = np.clip(v, neg, thresh, out=out)
    np.subtract(v, clipped, out=out)
    return out


@register_regularizer("elastic_net")
class ElasticNet(RegularizerBase):
    """r(x) = l1*||x||_1 + (l2/2)*||x||^2 (l1 = 0: ridge; l2 = 0: lasso penalty)."""

    elementwise = True
    convex = True

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

    @classmethod
    def from_options(cls, opts: dict[str, Any], n_vars: int) -> "ElasticNet":
        return ElasticNet(opts["l1"], opts["l2"])

    def reference_optimum(self, ref: ReferenceSolvers) -> Optimum:
        """By L-BFGS-B on the split x = u - v."""
        return ref.split_l1(np.full(ref.n_vars, float(self.l1)), self.l2)

    def gradient_mapping(self, x: np.ndarray, g: np.ndarray, t: float, out: np.ndarray,
                         work: np.ndarray | None = None) -> np.ndarray:
        """out = x - prox_{t r}(x - t g) in four passes for the pure L1 case (see :func:`gradient_mapping`)."""
        if self.l2 > 0 or work is None:
            return _generic_mapping(self, x, g, t, out)
        a = t * self.l1
        np.multiply(g, t, out=out)                 # t g
        np.subtract(x, out, out=work)              # u = x - t g
        np.clip(work, -a, a, out=work)             # u - prox(u) = clip(u, -a, a)
        np.add(out, work, out=out)                 # x - prox(u) = t g + clip(u, -a, a)
        return out


# -- more regularizers -------------------------------------------------------------------------
# Every class has value(x) (inf outside a constraint set) and prox(v, t, out=None); out may alias v.
def _out(v: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return v.copy()
    if out is not v:
        np.copyto(out, v)
    return out


_FEAS_TOL = 1e-9


class Zero(RegularizerBase):
    """r = 0 (prox = identity)."""

    elementwise = True
    convex = True

    def value(self, x: np.ndarray) -> float:
        return 0.0

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        return _out(v, out)

    def __repr__(self) -> str:
        return "Zero()"


class L1(ElasticNet):
    """r(x) = lam*||x||_1 (soft thresholding)."""

    def __init__(self, lam: float):
        super().__init__(lam, 0.0)

    def __repr__(self) -> str:
        return f"L1(lam={self.l1})"


class WeightedL1(RegularizerBase):
    """``r(x) = lam * sum_i w_i |x_i|``, ``w_i >= 0`` (``w_i = 0``: unpenalised)."""

    convex = True

    def __init__(self, lam: float, weights: np.ndarray):
        self.lam = float(lam)
        self.w = np.asarray(weights, dtype=np.float64)
        if (self.w < 0).any() or not np.isfinite(self.w).all():
            raise ValueError("weights must be finite and >= 0")

    def value(self, x: np.ndarray) -> float:
        return self.lam * float(self.w @ np.abs(x))

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        return soft_threshold(v, (t * self.lam) * self.w, out)

    def __repr__(self) -> str:
        return f"WeightedL1(lam={self.lam}, n={self.w.size})"

    def reference_optimum(self, ref: ReferenceSolvers) -> Optimum:
        return ref.split_l1(self.lam * self.w)


@register_regularizer("weighted_l1")
class WeightedElasticNet(RegularizerBase):
    """``l1 * sum_i w_i |x_i| + l2/2 ||x||^2`` (``problem.weights``: a .npy file of the w_i)."""

    convex = True

    def __init__(self, l1: float, l2: float, w: np.ndarray):
        self.inner = WeightedL1(l1, w)
        self.w = self.inner.w
        self.l2 = float(l2)

    def value(self, x: np.ndarray) -> float:
        return self.inner.value(x) + 0.5 * self.l2 * float(x @ x)

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        out = self.inner.prox(v, t, out)
        if self.l2 > 0:
            out /= 1.0 + t * self.l2
        return out

    def reference_optimum(self, ref: ReferenceSolvers) -> Optimum:
        return ref.split_l1(self.inner.lam * self.w, self.l2)

    @classmethod
    def from_options(cls, opts: dict[str, Any], n_vars: int) -> "WeightedElasticNet":
        return cls(opts["l1"], opts["l2"], cls.read_weights(opts.get("weights"), n_vars))

    @staticmethod
    def read_weights(path: str | None, n: int) -> np.ndarray:
        """The weights in the .npy file ``path`` (none: feature 0 unpenalised, 1 elsewhere)."""
        if not path:
            w = np.ones(n)
            w[0] = 0.0
            return w
        if not os.path.isfile(path):
            raise InputError(f"problem.weights {path}: file not found")
        try:
            w = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64).ravel()
        except (OSError, ValueError) as exc:
            raise InputError(f"problem.weights {path}: cannot read a .npy array ({exc})") from None
        if w.size != n:
            raise InputError(f"problem.weights {path}: {w.size} weights for {n} features")
        if not np.isfinite(w).all() or (w < 0).any():
            raise InputError(f"problem.weights {path}: weights must be finite and >= 0")
        return w


class Box(RegularizerBase):
    """Indicator of lo <= x <= hi (lo = 0, hi = inf: nonnegativity); with ``l1`` > 0 adds l1*||x||_1."""

    convex = True

    def __init__(self, lo: float | np.ndarray = 0.0, hi: float | np.ndarray = np.inf, l1: float = 0.0):
        self.lo, self.hi, self.l1 = lo, hi, float(l1)
        if np.any(np.asarray(lo) > np.asarray(hi)):
            raise ValueError("box needs lo <= hi")

    def value(self, x: np.ndarray) -> float:
        if (x < np.asarray(self.lo) - _FEAS_TOL).any() or (x > np.asarray(self.hi) + _FEAS_TOL).any():
            return float("inf")
        return self.l1 * float(np.abs(x).sum())

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        # separable: prox of l1 + box on each coordinate = clip(soft(v), lo, hi)
        out = soft_threshold(v, t * self.l1, out) if self.l1 > 0 else _out(v, out)
        return np.clip(out, self.lo, self.hi, out=out)

    def __repr__(self) -> str:
        return f"Box(lo={self.lo}, hi={self.hi}, l1={self.l1})"


@register_regularizer("nonneg_l1")
class NonNegativeL1(Box):
    """Indicator of x >= 0, plus l1*sum x_i (prox: max(v - t*l1, 0))."""

    def __init__(self, l1: float = 0.0):
        super().__init__(0.0, np.inf, l1)

    def reference_optimum(self, ref: ReferenceSolvers) -> Optimum:
        return ref.split_l1(self.l1 * np.ones(ref.n_vars), 0.0, nonneg=True)


def NonNegative(l1: float = 0.0) -> Box:
    """Indicator of x >= 0, plus l1*||x||_1 (prox: max(v - t*l1, 0))."""
    return NonNegativeL1(l1)


class L2Norm(RegularizerBase):
    """r(x) = lam*||x||_2 (block soft threshold of the whole vector)."""

    convex = True

    def __init__(self, lam: float):
        self.lam = float(lam)

    def value(self, x: np.ndarray) -> float:
        return self.lam * float(np.linalg.norm(x))

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        nrm = float(np.linalg.norm(v))
        scale = max(0.0, 1.0 - t * self.lam / nrm) if nrm > 0 else 0.0
        return np.multiply(v, scale, out=out)

    def __repr__(self) -> str:
        return f"L2Norm(lam={self.lam})"


class L2Ball(RegularizerBase):
    """Indicator of ||x||_2 <= radius (radial projection)."""

    convex = True

    def __init__(self, radius: float):
        if radius < 0:
            raise ValueError("radius must be >= 0")
        self.radius = float(radius)

    def value(self, x: np.ndarray) -> float:
        return 0.0 if np.linalg.norm(x) <= self.radius * (1 + _FEAS_TOL) + _FEAS_TOL else float("inf")

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        nrm = float(np.linalg.norm(v))
        return np.multiply(v, self.radius / nrm if nrm > self.radius else 1.0, out=out)

    def __repr__(self) -> str:
        return f"L2Ball(radius={self.radius})"


@register_regularizer("group_lasso")
class GroupLasso(RegularizerBase):
    """``r(x) = lam * sum_g sqrt(|g|) ||x_g||_2`` over non-overlapping groups (``groups[i]`` = group id
    of x_i, ids 0..G-1); block soft threshold per group."""

    convex = True

    @classmethod
    def from_options(cls, opts: dict[str, Any], n_vars: int) -> "GroupLasso":
        """Consecutive groups of ``problem.group_size`` features."""
        cls.refuse_l2(opts)
        return cls(opts["l1"], np.arange(n_vars) // opts["group_size"])

    def __init__(self, lam: float, groups: np.ndarray, weighted: bool = True):
        self.lam = float(lam)
        self.groups = np.asarray(groups, dtype=np.intp)
        if self.groups.size and self.groups.min() < 0:
            raise ValueError("group ids must be >= 0")
        sizes = np.bincount(self.groups)
        self.weights = np.sqrt(sizes) if weighted else np.ones(sizes.size)

    def _norms(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(np.bincount(self.groups, weights=x * x, minlength=self.weights.size))

    def value(self, x: np.ndarray) -> float:
        return self.lam * float(self.weights @ self._norms(x))

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        nrm = self._norms(v)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(nrm > 0, np.maximum(0.0, 1.0 - t * self.lam * self.weights / nrm), 0.0)
        return np.multiply(v, scale[self.groups], out=out)

    def __repr__(self) -> str:
        return f"GroupLasso(lam={self.lam}, groups={self.weights.size})"


@register_regularizer("l0")
class L0(RegularizerBase):
    """r(x) = lam * #{i: x_i != 0} (nonconvex: no reference optimum); prox: hard threshold at
    sqrt(2 t lam) (ties ``|v_i| = sqrt(2 t lam)`` keep v_i)."""

    def __init__(self, lam: float):
        self.lam = float(lam)

    def value(self, x: np.ndarray) -> float:
        return self.lam * float(np.count_nonzero(x))

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        out = _out(v, out)
        out[np.abs(v) < np.sqrt(2.0 * t * self.lam)] = 0.0
        return out

    def __repr__(self) -> str:
        return f"L0(lam={self.lam})"


def project_simplex(v: np.ndarray, radius: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
    """Euclidean projection onto {x >= 0, sum x = radius} (sort-based, Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - radius
    k = np.arange(1, v.size + 1)
    rho = int(np.flatnonzero(u - css / k > 0)[-1])
    theta = css[rho] / (rho + 1)
    out = np.subtract(v, theta, out=out)
    return np.maximum(out, 0.0, out=out)


class Simplex(RegularizerBase):
    """Indicator of the simplex {x >= 0, sum x = radius}."""

    convex = True

    def __init__(self, radius: float = 1.0):
        if radius <= 0:
            raise ValueError("radius must be > 0")
        self.radius = float(radius)

    def value(self, x: np.ndarray) -> float:
        ok = (x >= -_FEAS_TOL).all() and abs(float(x.sum()) - self.radius) <= 1e-7 * max(1.0, self.radius)
        return 0.0 if ok else float("inf")

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        return project_simplex(v, self.radius, out)

    def __repr__(self) -> str:
        return f"Simplex(radius={self.radius})"


class L1Ball(RegularizerBase):
    """Indicator of ``||x||_1 <= radius`` (projection through the simplex of ``|v|``)."""

    convex = True

    def __init__(self, radius: float = 1.0):
        if radius <= 0:
            raise ValueError("radius must be > 0")
        self.radius = float(radius)

    def value(self, x: np.ndarray) -> float:
        return 0.0 if np.abs(x).sum() <= self.radius * (1 + 1e-9) else float("inf")

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        a = np.abs(v)
        if a.sum() <= self.radius:
            return _out(v, out)
        w = project_simplex(a, self.radius)
        return np.copysign(w, v, out=out)

    def __repr__(self) -> str:
        return f"L1Ball(radius={self.radius})"


# -- total variation ---------------------------------------------------------------------------------
def prox_tv1d(v: np.ndarray, lam: float, out: np.ndarray | None = None) -> np.ndarray:
    """Exact argmin_u lam*sum|u_{i+1} - u_i| + 0.5||u - v||^2 (Condat's direct algorithm, 2013).

    O(n) but a Python loop over samples: meant for signals up to ~1e5 samples."""
    y = np.asarray(v, dtype=np.float64).ravel().tolist()
    n = len(y)
    res = [0.0] * n
    if n == 0 or lam <= 0:
        return _out(np.asarray(v, dtype=np.float64), out)
    k = k0 = kplus = kminus = 0
    umin, umax = lam, -lam
    vmin, vmax = y[0] - lam, y[0] + lam
    twolam, mlam = 2.0 * lam, -lam
    while True:
        while k == n - 1:
            if umin < 0.0:
                while True:
                    res[k0] = vmin
                    k0 += 1
                    if k0 > kminus:
                        break
                k = kminus = k0
                vmin = y[k]
                umin = lam
                umax = vmin + umin - vmax
            elif umax > 0.0:
                while True:
                    res[k0] = vmax
                    k0 += 1
                    if k0 > kplus:
                        break
                k = kplus = k0
                vmax = y[k]
                umax = mlam
                umin = vmax + umax - vmin
            else:
                vmin += umin / (k - k0 + 1)
                while True:
                    res[k0] = vmin
                    k0 += 1
                    if k0 > k:
                        break
                return _out(np.asarray(res), out)
        umin += y[k + 1] - vmin
        if umin < mlam:
            while True:
                res[k0] = vmin
                k0 += 1
                if k0 > kminus:
                    break
            k = kplus = kminus = k0
            vmin = y[k]
            vmax = vmin + twolam
            umin, umax = lam, mlam
        else:
            umax += y[k + 1] - vmax
            if umax > lam:
                while True:
                    res[k0] = vmax
                    k0 += 1
                    if k0 > kplus:
                        break
                k = kplus = kminus = k0
                vmax = y[k]
                vmin = vmax - twolam
                umin, umax = lam, mlam
            else:
                k += 1
                if umin >= lam:
                    kminus = k
                    vmin += (umin - lam) / (kminus - k0 + 1)
                    umin = lam
                if umax <= mlam:
                    kplus = k
                    vmax += (umax + lam) / (kplus - k0 + 1)
                    umax = mlam


def _grad2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x[1:, :] - x[:-1, :], x[:, 1:] - x[:, :-1]


def _div_adj(p: np.ndarray, q: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = D^T (p, q) for the forward differences D of :func:`_grad2d`."""
    out[:] = 0.0
    out[:-1, :] -= p
    out[1:, :] += p
    out[:, :-1] -= q
    out[:, 1:] += q
    return out


def tv2d(x: np.ndarray) -> float:
    """Anisotropic total variation sum|x_{i+1,j} - x_ij| + sum|x_{i,j+1} - x_ij|."""
    a, b = _grad2d(x)
    return float(np.abs(a).sum() + np.abs(b).sum())


def prox_tv2d(v: np.ndarray, lam: float, n_iter: int = 100, out: np.ndarray | None = None) -> np.ndarray:
    """argmin_u lam*TV_aniso(u) + 0.5||u - v||^2 for a 2-D array, by FGP (Beck-Teboulle 2009):
    accelerated projected gradient on the dual, ``n_iter`` iterations (deterministic)."""
    v = np.asarray(v, dtype=np.float64)
    if lam <= 0:
        return _out(v, out)
    H, W = v.shape
    p = np.zeros((H - 1, W)); q = np.zeros((H, W - 1))
    r, s = p.copy(), q.copy()
    u = np.empty_like(v)
    tk = 1.0
    step = 1.0 / (8.0 * lam)
    for _ in range(n_iter):
        _div_adj(r, s, u)
        np.subtract(v, lam * u, out=u)           # primal point for the dual iterate
        gp, gq = _grad2d(u)
        p_new = np.clip(r + step * gp, -1.0, 1.0)
        q_new = np.clip(s + step * gq, -1.0, 1.0)
        tk1 = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * tk * tk))
        c = (tk - 1.0) / tk1
        r = p_new + c * (p_new - p)
        s = q_new + c * (q_new - q)
        p, q, tk = p_new, q_new, tk1
    _div_adj(p, q, u)
    res = v - lam * u
    if out is None:
        return res
    np.copyto(out, res)
    return out


class TotalVariation(RegularizerBase):
    """r(x) = lam * anisotropic TV of x viewed with ``shape`` (1-D: exact prox; 2-D: FGP)."""

    convex = True

    def __init__(self, lam: float, shape: tuple[int, ...], n_iter: int = 50):
        self.lam = float(lam)
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) not in (1, 2):
            raise ValueError("TV needs a 1-D or 2-D shape")
        self.n_iter = int(n_iter)

    def value(self, x: np.ndarray) -> float:
        x = x.reshape(self.shape)
        if x.ndim == 1:
            return self.lam * float(np.abs(np.diff(x)).sum())
        return self.lam * tv2d(x)

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray:
        flat_out = out
        if len(self.shape) == 1:
            res = prox_tv1d(v, t * self.lam)
        else:
            res = prox_tv2d(v.reshape(self.shape), t * self.lam, self.n_iter).reshape(-1)
        if flat_out is None:
            return res
        np.copyto(flat_out, res)
        return flat_out

    def __repr__(self) -> str:
        return f"TotalVariation(lam={self.lam}, shape={self.shape})"

    # r = (1/K) sum_k r_k with r_k = K lam * (the differences of pair set k): 1-D K = 2 (pairs starting at
    # even / odd positions), 2-D K = 4 (vertical and horizontal pairs starting at even / odd rows or
    # columns). No two pairs of one set share an element, so prox_{t r_k} is exact and closed-form.
    @property
    def n_components(self) -> int:
        return 2 if len(self.shape) == 1 else 4

    def component_value(self, x: np.ndarray, k: int) -> float:
        """``r_k(x) = K lam * sum`` over the pairs (a, b) of set k of ``|x_b - x_a|``."""
        a, b = self._pairs(x.reshape(self.shape), k)
        return self.n_components * self.lam * float(np.abs(b - a).sum())

    def _pairs(self, u: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Views (first, second) of the pair set ``k`` of ``u`` (shape ``self.shape``)."""
        if u.ndim == 1:
            s = k
            m = (u.size - s) // 2
            return u[s:s + 2 * m:2], u[s + 1:s + 2 * m:2]
        axis, s = divmod(k, 2)
        if axis == 1:
            u = u.T
        m = (u.shape[0] - s) // 2
        return u[s:s + 2 * m:2], u[s + 1:s + 2 * m:2]

    def prox_component(self, v: np.ndarray, t: float, k: int, out: np.ndarray | None = None) -> np.ndarray:
        """prox_{t r_k}(v): per pair, the mean is kept and the difference soft-thresholded by 2 t K lam."""
        out = _out(v, out)
        a, b = self._pairs(out.reshape(self.shape), k)
        mean = 0.5 * (a + b)
        d = soft_threshold(b - a, 2.0 * t * self.n_components * self.lam)
        np.subtract(mean, 0.5 * d, out=a)
        np.add(mean, 0.5 * d, out=b)
        return out


def n_components(reg: Any) -> int:
    """K when r = (1/K) sum_k r_k with cheap exact prox per component (1: r itself)."""
    return int(as_regularizer(reg).n_components)


def prox_component(reg: Any, v: np.ndarray, t: float, k: int, out: np.ndarray | None = None) -> np.ndarray:
    """prox_{t r_k}(v) (the prox of r when r has one component)."""
    reg = as_regularizer(reg)
    if n_components(reg) == 1:
        return reg.prox(v, t, out=out)
    return reg.prox_component(v, t, k, out=out)



def _generic_mapping(reg: Any, x: np.ndarray, g: np.ndarray, t: float, out: np.ndarray) -> np.ndarray:
    np.multiply(g, -t, out=out)
    out += x
    reg.prox(out, t, out=out)
    np.subtract(x, out, out=out)
    return out


def gradient_mapping(reg: Any, x: np.ndarray, g: np.ndarray, t: float, out: np.ndarray,
                     work: np.ndarray | None = None) -> np.ndarray:
    """out = x - prox_{t r}(x - t g), the gradient mapping scaled by t (``work``: a float buffer
    like ``x`` used by regularizers with a fused version)."""
    reg = as_regularizer(reg)
    if work is not None:
        return reg.gradient_mapping(x, g, t, out, work)
    return _generic_mapping(reg, x, g, t, out)


def prox_step(reg: Any, x: np.ndarray, d: np.ndarray, t: float, work: np.ndarray,
              compiled: bool | None = None) -> np.ndarray:
    """x <- prox_{t r}(x - t d) in place, in float64 (``d`` of any float dtype, e.g. the fp32 wire).

    The elastic net (L1, ridge, none) runs as one compiled pass when the kernels are available
    (``compiled``: None = when available, False = the numpy reference below, bit-identical).
    Elementwise regularizers run block by block (one pass over memory; ``work``: a float64 buffer of
    at least one block); others take the whole vector (``work`` as long as ``x``)."""
    w = elastic_net_weights(reg) if (K.JIT if compiled is None else compiled) else None
    if w is not None and x.dtype == np.float64 and x.flags.c_contiguous and d.flags.c_contiguous:
        K.get("prox_step_en")(x, d, K.prox_params(t, *w))
        return x
    reg = as_regularizer(reg)
    if not reg.elementwise:
        w = work[:x.size]
        np.multiply(d, t, out=w, dtype=np.float64)
        np.subtract(x, w, out=x)
        return reg.prox(x, t, out=x)
    for lo, hi in blocks(x.size, min(BLOCK, work.size)):
        w = work[:hi - lo]
        np.multiply(d[lo:hi], t, out=w, dtype=np.float64)
        np.subtract(x[lo:hi], w, out=w)               # v = x - t d
        reg.prox(w, t, out=x[lo:hi])                  # out distinct from v: no temporary
    return x


def elastic_net_weights(reg: Any) -> tuple[float, float] | None:
    """(l1, l2) when ``reg`` is the elastic net (L1, ridge) or zero, whose prox the compiled kernels
    of :mod:`mpiopt.kernels` implement; None for any other regulariser."""
    if type(reg) in (ElasticNet, L1):
        return reg.l1, reg.l2
    if type(reg) is Zero:
        return 0.0, 0.0
    return None


def warm_prox_step(wire: np.dtype) -> None:
    """Compile (or load from the cache) the prox-step kernel for a ``wire`` dtype."""
    if K.JIT:
        K.get("prox_step_en")(np.zeros(8), np.zeros(8, dtype=wire), K.prox_params(0.1, 0.0, 0.0))
