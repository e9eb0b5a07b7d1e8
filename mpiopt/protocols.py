"""The written contracts where regularizers and problems plug in.

Each contract is a :class:`typing.Protocol` naming the surface the solvers use; the base class that
implements it (:class:`mpiopt.prox.RegularizerBase`, :class:`mpiopt.problems.base.CompositeProblem`,
:class:`mpiopt.problems.mf.MFProblem`, :class:`mpiopt.problems.oracle.OracleProblem`,
:class:`mpiopt.problems.torch_models.TorchModelProblem`) carries a default for every optional hook,
so a plug-in that subclasses it has them all. Solvers call these hooks; they never probe an object
for an attribute. This module imports nothing of the package, so any layer may name the contracts.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

#: ``(F*, x*)`` of a reference solver
Optimum = tuple[float, np.ndarray]


@runtime_checkable
class ReferenceSolvers(Protocol):
    """Collective reference solvers bound to one composite problem's data (every rank calls them
    with the same arguments and gets ``(F*, x*)``); handed to :meth:`Regularizer.reference_optimum`."""

    n_vars: int

    def split_l1(self, lam: np.ndarray, l2: float = 0.0, nonneg: bool = False) -> Optimum:
        """``min smooth(x) + sum lam_i |x_i| + l2/2 ||x||^2`` (``x >= 0`` if ``nonneg``) by L-BFGS-B on ``x = u - v``."""
        ...

    def prox_gradient(self, reg: "Regularizer", l2: float = 0.0) -> Optimum:
        """``min smooth(x) + l2/2 ||x||^2 + reg(x)`` for a convex ``reg`` by FISTA with restarts."""
        ...


@runtime_checkable
class Regularizer(Protocol):
    """r(x) of a composite problem, with its proximal operator.

    Required: ``value(x)`` (``inf`` outside a constraint set) and ``prox(v, t, out=None)`` =
    ``argmin_u t r(u) + 1/2 ||u - v||^2`` (``out`` may alias ``v``). Optional, with defaults in
    :class:`mpiopt.prox.RegularizerBase`: ``elementwise`` (False), ``convex`` (False),
    ``n_components`` (1) with ``prox_component``, ``gradient_mapping`` (from ``prox``),
    ``reference_optimum`` (None, or the prox-gradient solver when ``convex``) and ``from_options``
    (for ``problem.reg=NAME``)."""

    #: the prox acts on each element alone with scalar parameters (it may be applied to any slice)
    elementwise: bool
    #: r is convex (its prox-gradient fixed point is a global optimum)
    convex: bool

    def value(self, x: np.ndarray) -> float: ...

    def prox(self, v: np.ndarray, t: float, out: np.ndarray | None = None) -> np.ndarray: ...

    @property
    def n_components(self) -> int:
        """K when r = (1/K) sum_k r_k with a cheap exact prox per component (1: r itself)."""
        ...

    def prox_component(self, v: np.ndarray, t: float, k: int, out: np.ndarray | None = None) -> np.ndarray: ...

    def gradient_mapping(self, x: np.ndarray, g: np.ndarray, t: float, out: np.ndarray,
                         work: np.ndarray) -> np.ndarray:
        """out = x - prox_{t r}(x - t g) (``work``: a float buffer like ``x``)."""
        ...

    def reference_optimum(self, ref: ReferenceSolvers) -> Optimum | None:
        """Collective: (F*, x*) of smooth + r by one of ``ref``'s solvers; None when not certified."""
        ...


@runtime_checkable
class CompositeProblemProtocol(Protocol):
    """min (1/N) sum_i loss_i(x) + r(x) (solvers ``prox_sgd``, ``signprox``, ``signsgd_mv``, ...).

    Required: ``n_vars``, ``n_samples``, ``n_local``, ``regularizer`` (a :class:`Regularizer`) and
    ``local_loss_grad``. Optional, with defaults in :class:`mpiopt.problems.base.CompositeProblem`:
    the sparse minibatch gradient (``supports_sparse_batch_grad() -> False``; when True also
    ``use_sparse_batch_grad``, ``csr_structure``, ``batch_grad_sparse``) and ``metrics(x) -> {}``."""

    n_vars: int
    n_samples: int
    n_local: int
    regularizer: Regularizer
    reference_objective: float | None

    def local_loss_grad(self, x: np.ndarray, idx: np.ndarray | None = None,
                        grad_out: np.ndarray | None = None) -> tuple[float, np.ndarray]: ...

    def supports_sparse_batch_grad(self) -> bool: ...

    def use_sparse_batch_grad(self) -> list[Callable[[], None]]: ...

    def csr_structure(self) -> tuple[np.ndarray, np.ndarray]: ...

    def batch_grad_sparse(self, x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def metrics(self, x: np.ndarray) -> dict[str, float]: ...


@runtime_checkable
class RatingsProblemProtocol(Protocol):
    """A sparse ratings matrix for the factorization solvers (``hamsi``, ``mf_gd``, ``dsgd``).

    Required (set by :meth:`mpiopt.problems.mf.MFProblem.setup` from the subclass's ``_load()``):
    the shape ``m`` x ``n``, this rank's training and held-out ratings, ``offset`` (the mean taken
    off the ratings, 0.0 when not centred) and ``row_ids``/``col_ids`` (original ids or None)."""

    m: int
    n: int
    nnz: int
    nnz_test: int
    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    test_rows: np.ndarray
    test_cols: np.ndarray
    test_vals: np.ndarray
    offset: float
    row_ids: Any
    col_ids: Any


@runtime_checkable
class OracleProblemProtocol(Protocol):
    """A sum of convex oracles on a box (``level_bundle``, ``projected_subgradient``).

    Required: ``setup()`` calling ``init_box(...)`` and ``make_oracle(i)``, the oracle of block
    ``i`` returning ``(f_low, g, f_up)`` at a point."""

    def make_oracle(self, i: int) -> Any: ...


@runtime_checkable
class TorchModelProtocol(Protocol):
    """A torch classification problem (``async_subgradient``, ``ddp``).

    Required: ``load()`` returning ``(X_train, y_train, X_test, y_test)`` and ``build_model()``
    returning the (seeded) ``torch.nn.Module``; ``image_shape`` (``()`` when unknown before set-up)."""

    image_shape: tuple[int, ...]

    def load(self) -> tuple[Any, Any, Any, Any]: ...

    def build_model(self) -> Any: ...
