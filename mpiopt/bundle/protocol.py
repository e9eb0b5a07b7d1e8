"""What every master object offers the drivers that run it (the MPI master rank, the in-process
simulator): the messages it exchanges with the oracles and the base class :class:`Master`.

A driver calls :meth:`Master.start` once (or :meth:`Master.dispatch` after a resume), hands the
answers that arrived to :meth:`Master.receive` and sends what :meth:`Master.dispatch` returns, until
:attr:`Master.done`. Statuses are the integer codes of :mod:`mpiopt.result`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .. import result as R

EVAL = 1


@dataclass
class Request:
    """A point sent to one worker: evaluate all its components at ``x`` to accuracy ``eta``."""
    worker: int
    iter_id: int
    coord_id: int
    eta: float
    x: np.ndarray
    kind: int = EVAL


@dataclass
class Answer:
    """One worker's answer: per component ``comps[j]``: lower value ``fl[j]``, upper value ``fu[j]`` and
    subgradient ``G[j]`` at the point of request ``iter_id`` (``coord_id`` >= 0 for coordination points).
    ``floor[j]`` is the best accuracy fu - fl the oracle says it can reach (0: any)."""
    worker: int
    iter_id: int
    coord_id: int
    comps: np.ndarray
    fl: np.ndarray
    fu: np.ndarray
    G: np.ndarray
    floor: np.ndarray | None = None


@dataclass
class Trace:
    """Per-QP log for invariant checks: iteration, cycle, bounds, level, ||x+ - xc||, flags."""
    rows: list = field(default_factory=list)
    names: tuple = ("k", "cycle", "f_low", "f_up", "lev", "dist", "critical", "infeasible")

    def add(self, *values: float) -> None:
        self.rows.append(values)

    def array(self) -> dict[str, np.ndarray]:
        a = np.asarray(self.rows, dtype=np.float64).reshape(-1, len(self.names))
        return {n: a[:, j] for j, n in enumerate(self.names)}


class Master:
    """Base of the master objects: bounds f_low <= f* <= f_up, the oracle bookkeeping the drivers
    read, the outcome (``status`` from :mod:`mpiopt.result`, ``stop_rule``, ``message``).

    Subclasses set the attributes below in ``__init__`` and implement :meth:`start`,
    :meth:`receive`, :meth:`dispatch`, :meth:`state_dict` and :meth:`load_state_dict`.
    """

    n: int                         # variables
    m: int                         # components
    owners: list[np.ndarray]       # components of each worker
    W: int                         # workers
    phase: str                     # new -> (init) -> run -> done
    f_low: float
    f_up: float
    lev: float                     # current level (nan when the method has none)
    x_best: np.ndarray             # the point of f_up
    k: int                         # QPs (or iterations) so far
    steps: int                     # master steps (history rows are keyed by them)
    cycle: int                     # critical iterations
    n_infeasible: int
    answers: int
    evals: np.ndarray              # oracle calls per component
    idle: np.ndarray               # per worker: no point in flight
    qp_seconds: float
    lp_seconds: float
    n_lp: int = 0                  # exact LPs solved
    trace: Trace
    # state_dict keys holding one iteration count per worker; a resume with another worker count gives
    # each new worker the smallest count of the components it now owns (see :func:`redistribute_workers`)
    per_worker_state: tuple[str, ...] = ()

    def init_outcome(self) -> None:
        self.status: int | None = None
        self.stop_rule = ""
        self.message = ""

    # -- bounds ------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.phase == "done"

    @property
    def gap(self) -> float:
        return self.f_up - self.f_low

    def rel_gap(self) -> float:
        return self.gap / max(1.0, abs(self.f_up))

    def eta_request(self) -> float:
        """The accuracy asked of the oracles now (0: exact)."""
        return 0.0

    @property
    def n_cuts(self) -> int:
        """Cuts in the master's model (0 for methods without one)."""
        return 0

    # -- driver interface --------------------------------------------------------------------
    def start(self) -> list[Request]:
        raise NotImplementedError

    def receive(self, answers: Sequence[Answer]) -> None:
        raise NotImplementedError

    def dispatch(self) -> list[Request]:
        raise NotImplementedError

    def admit(self, answers: Sequence[Answer]) -> bool:
        """True when every answer is finite; else stop with FAILED, a numerical failure naming the first
        non-finite quantity, its component and the master step (drivers call it before :meth:`receive`)."""
        for a in answers:
            for name, arr in (("oracle value", a.fl), ("oracle upper value", a.fu), ("oracle subgradient", a.G)):
                bad = R.nonfinite(arr)
                if bad is None:
                    continue
                rows = np.asarray(arr, dtype=np.float64).reshape(len(a.comps), -1)
                j = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
                self.stop(R.FAILED, R.failure_message(f"{name} of component {int(a.comps[j])}", bad, self.steps,
                                                      "check the problem's oracle", unit="master step"))
                return False
        return True

    def stop(self, status: int, message: str) -> None:
        """Stop for an external reason (time budget, signal, callback, failure)."""
        if not self.done:
            self.finish(status, R.STATUS_NAMES.get(status, "stopped"), message)

    def finish(self, status: int, rule: str, message: str) -> None:
        self.phase = "done"
        self.status, self.stop_rule, self.message = status, rule, message

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, st: dict[str, Any]) -> None:
        raise NotImplementedError


def redistribute_workers(state: dict[str, Any], keys: Sequence[str], old: Sequence[np.ndarray],
                         new: Sequence[np.ndarray]) -> dict[str, Any]:
    """``state`` (a master's :meth:`Master.state_dict`) for the component ownership ``new`` instead of
    ``old`` (lists of component indices per worker): each per-worker count of ``keys`` becomes, per new
    worker, the minimum over its components of their old owner's count. Everything else in a master's
    state is per component or global (cuts, bounds, centre, RNG streams), so it carries over unchanged."""
    m = sum(len(o) for o in old)
    out = dict(state)
    for key in keys:
        if key not in state:
            continue
        counts = np.asarray(state[key]).reshape(-1)
        per_comp = np.empty(m, dtype=counts.dtype)
        for w, comps in enumerate(old):
            per_comp[np.asarray(comps, dtype=np.int64)] = counts[w]
        out[key] = np.array([per_comp[np.asarray(c, dtype=np.int64)].min() for c in new], dtype=counts.dtype)
    return out
