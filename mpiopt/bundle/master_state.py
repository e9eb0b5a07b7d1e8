"""Checkpoint state of :class:`~mpiopt.bundle.master.LevelBundleMaster` (everything needed to continue
a run; plain scalars and arrays, so a result file or checkpoint can hold it)."""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class MasterWithState(Protocol):
    """What the checkpoint state reads and restores of a :class:`~mpiopt.bundle.master.LevelBundleMaster`:
    the attributes named below and in ``SCALARS``/``ARRAYS`` (those of ``bounds`` and ``book`` in
    ``BOUNDS_SCALARS``/``BOOK_ARRAYS``); the parts with their own ``state_dict``/``load_state_dict``."""

    idle: np.ndarray
    bounds: Any
    book: Any
    lam: np.ndarray | None
    last_infeasible: bool
    pending: bool
    coordination: Any
    model: Any
    accuracy: Any
    umodel: Any
    early: Any
    trace: Any

SCALARS = ("f_low", "f_up", "gap_ref", "lev", "lev_prev", "last_infeasible", "k", "steps", "cycle",
           "n_infeasible", "n_midcycle_compressions", "cycle_k",
           "n_cycle_waits", "answers", "qp_seconds", "phase", "pending",
           "since_step")
ARRAYS = ("x1", "x_best", "xc", "x_next", "evals", "latest_fu", "latest_eta")
BOUNDS_SCALARS = ("n_lp_checks", "n_lp", "n_certified", "n_uncertified", "lp_seconds")   # M.bounds
BOOK_ARRAYS = ("answered_k",)                                                           # M.book


def master_state(M: MasterWithState) -> dict[str, Any]:
    """Everything needed to continue ``M`` (taken while no request is in flight)."""
    if not M.idle.all():
        raise RuntimeError("master state_dict needs every worker idle")
    st: dict[str, Any] = {k: getattr(M, k) for k in SCALARS}
    st["last_infeasible"] = int(M.last_infeasible)
    st["pending"] = int(M.pending)
    st.update({k: getattr(M.bounds, k) for k in BOUNDS_SCALARS})
    st.update({k: np.array(getattr(M, k)) for k in ARRAYS})
    st.update({k: np.array(getattr(M.book, k)) for k in BOOK_ARRAYS})
    st["lam"] = np.array([]) if M.lam is None else M.lam.copy()
    st["has_lam"] = int(M.lam is not None)
    st.update(M.coordination.state_dict())
    st["model"] = M.model.state_dict()
    st.update(M.accuracy.state_dict())
    if M.umodel is not None:
        st["umodel"] = M.umodel.state_dict()
    if M.early is not None:
        st.update(M.early.state_dict())
    st["trace"] = np.asarray(M.trace.rows, dtype=np.float64).reshape(-1, len(M.trace.names))
    return st


def load_master_state(M: MasterWithState, st: dict[str, Any]) -> None:
    """Restore ``M`` from :func:`master_state` (every worker idle afterwards)."""
    for obj, names in ((M, SCALARS), (M.bounds, BOUNDS_SCALARS)):
        for k in names:
            if k not in st:              # a counter added after the checkpoint was written
                continue
            v = st[k]
            cur = getattr(obj, k)
            setattr(obj, k, type(cur)(v) if not isinstance(cur, str) else str(v))
    M.last_infeasible = bool(int(st["last_infeasible"]))
    M.pending = bool(int(st["pending"]))
    for obj, names in ((M, ARRAYS), (M.book, BOOK_ARRAYS)):
        for k in names:
            if k in st:                  # (answered_k: added later)
                getattr(obj, k)[...] = np.asarray(st[k]).reshape(getattr(obj, k).shape)
    M.lam = np.asarray(st["lam"], dtype=np.float64).copy() if int(st["has_lam"]) else None
    M.coordination.load_state_dict(st)
    M.model.load_state_dict(st["model"])
    M.accuracy.load_state_dict(st)
    if M.umodel is not None and "umodel" in st:
        M.umodel.load_state_dict(st["umodel"])
    if M.early is not None:
        M.early.load_state_dict(st)
    M.trace.rows = [tuple(r) for r in np.asarray(st["trace"]).reshape(-1, len(M.trace.names))]
    M.book.reset()
    M.round.held = []
    if M.phase == "run" and M.p.variant == "sync" and not M.pending:
        M.pending = True
