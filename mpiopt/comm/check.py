"""Collective validation: run a step on every rank; if any rank raised InputError, all raise it."""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from ..errors import InputError
from .core import Comm

R = TypeVar("R")


def collective_check(comm: Comm, fn: Callable[[], R]) -> R:
    """Call ``fn()`` on every rank. If it raised :class:`InputError` on some ranks, raise on every
    rank the error of the lowest such rank, so that it is printed once and every rank exits 2.
    Other exceptions propagate (and abort the job)."""
    err: str | None = None
    out: Any = None
    try:
        out = fn()
    except InputError as exc:
        err = str(exc)
    errors = comm.allgather_obj(err)
    for msg in errors:
        if msg is not None:
            raise InputError(msg)
    return out
