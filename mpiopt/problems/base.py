"""Problem interfaces. A problem owns its data (each rank its shard) and evaluates the objective."""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import numpy as np
from mpi4py import MPI

from ..comm import Comm
from ..options import Option
from ..prox import RegularizerBase, as_regularizer


def settings(opts: dict[str, Any], *keys: str, section: str = "problem") -> str:
    """``problem.a=1, problem.b=2``: the settings a memory estimate names (its error names the key)."""
    return ", ".join(f"{section}.{k}={opts[k]}" for k in keys)


class Problem:
    """Base of every problem. ``__init__`` is cheap; :meth:`setup` loads or generates this rank's
    data and raises :class:`~mpiopt.errors.InputError` on bad input (reported once, exit 2)."""

    #: the registered name (set by :func:`~mpiopt.registry.register_problem`)
    name: ClassVar[str] = ""
    #: one line for ``--help`` listings
    summary: ClassVar[str] = ""
    #: the kind of problem, shown by ``--problem NAME --help``
    kind_name: ClassVar[str] = "generic"
    #: the problem's options (``problem.*`` keys); their resolved values are in ``self.opts``
    options: ClassVar[tuple[Option, ...]] = ()
    #: (optional module, pip extra) pairs checked before any work
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, options: dict[str, Any], comm: Comm):
        self.opts = options
        self.comm = comm
        self.reference_objective: float | None = None

    @classmethod
    def memory_estimate(cls, opts: dict[str, Any], n_ranks: int) -> tuple[float, str] | None:
        """Bytes of memory per rank that :meth:`setup` and a solver need with ``opts`` on ``n_ranks``
        ranks, and the settings that drive it (checked before any work); None when unknown."""
        return None

    def setup(self) -> None:
        """Load or generate this rank's data (collective-safe)."""

    def compute_reference(self) -> None:
        """Collective, optional: set ``reference_objective`` (the known optimum F*) when cheap."""

    def describe(self) -> str:
        """One line for the run banner."""
        return self.name


class CompositeProblem(Problem):
    """min_x F(x) = (1/N) sum_i loss_i(x) + r(x) over data sharded by rank.

    Implements :class:`mpiopt.protocols.CompositeProblemProtocol`. Subclasses set ``n_vars``,
    ``n_samples`` (global N), ``n_local`` and ``regularizer`` (a :class:`mpiopt.prox.RegularizerBase`;
    any object with ``prox(v, t, out=None)`` and ``value(x)`` is taken with the default hooks) in
    :meth:`setup`, and implement :meth:`local_loss_grad`. Optional hooks, with defaults here: the
    sparse minibatch gradient (:meth:`supports_sparse_batch_grad`) and :meth:`metrics`.
    """

    kind_name = "composite (smooth finite sum + prox-friendly regularizer)"
    n_vars: int
    n_samples: int
    n_local: int

    @property
    def regularizer(self) -> RegularizerBase:
        """r, with every hook of :class:`mpiopt.protocols.Regularizer`."""
        return self._regularizer

    @regularizer.setter
    def regularizer(self, reg: Any) -> None:
        self._regularizer = as_regularizer(reg)

    def x0(self) -> np.ndarray:
        return np.zeros(self.n_vars, dtype=np.float64)

    def local_loss_grad(self, x: np.ndarray, idx: np.ndarray | None = None,
                        grad_out: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """Sum of losses and of gradients over local samples ``idx`` (None: all local samples)."""
        raise NotImplementedError

    def supports_sparse_batch_grad(self) -> bool:
        """Whether the problem has :meth:`use_sparse_batch_grad`, :meth:`csr_structure` and
        :meth:`batch_grad_sparse` (default False; the same on every rank)."""
        return False

    def use_sparse_batch_grad(self) -> list[Callable[[], None]]:
        """Collective where supported: turn the sparse minibatch gradient on; the calls that compile
        its kernels, [] when it stays off (default: off)."""
        return []

    def csr_structure(self) -> tuple[np.ndarray, np.ndarray]:
        """(row pointers, column indices) of this rank's CSR data (with the sparse gradient on)."""
        raise NotImplementedError(f"{type(self).__name__} has no sparse minibatch gradient")

    def batch_grad_sparse(self, x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean gradient over local samples ``idx`` as (dense buffer, columns it touches)."""
        raise NotImplementedError(f"{type(self).__name__} has no sparse minibatch gradient")

    def metrics(self, x: np.ndarray) -> dict[str, float]:
        """Problem-specific values at ``x`` for the history and the result (e.g. PSNR); default none."""
        return {}

    def batch_grad(self, x: np.ndarray, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Mean gradient of the smooth part over local samples ``idx``."""
        _, g = self.local_loss_grad(x, idx, out)
        if out is None:
            out = np.asarray(g, dtype=np.float64)
        elif g is not out:
            out[:] = g
        out /= max(1, len(idx))
        return out

    def smooth_objective(self, x: np.ndarray) -> float:
        """Collective: (1/N) sum_i loss_i(x) over all ranks' data."""
        loss, _ = self.local_loss_grad(x, None)
        return self.comm.allreduce_scalar(loss, tag="eval") / self.n_samples

    def objective(self, x: np.ndarray) -> float:
        """Collective: F(x)."""
        return self.smooth_objective(x) + float(self.regularizer.value(x))

    def full_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Collective: smooth value and its exact gradient over all data."""
        loss, g = self.local_loss_grad(x, None)
        buf = np.empty(g.size + 1)
        buf[:-1] = g
        buf[-1] = loss
        self.comm.Allreduce(MPI.IN_PLACE, buf, tag="eval")
        buf /= self.n_samples
        return float(buf[-1]), buf[:-1]
