"""Collective validation: run a step on every rank; if any rank raised InputError, all raise it.

The error flags travel on a private duplicate communicator. If a rank fails while the others have
gone on into a collective of their own (e.g. one bad line in one rank's shard), they can never
reach the check: after a grace period the failing rank prints its error and aborts the job with
exit code 2, so nothing hangs.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, TypeVar

import numpy as np
from mpi4py import MPI

from ..errors import EXIT_USAGE, InputError
from .core import Comm, polite_sleep_until

R = TypeVar("R")
GRACE_SECONDS = float(os.environ.get("MPIOPT_CHECK_GRACE", "5"))
_MSG_BYTES = 2048


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
    if comm.size == 1:
        if err is not None:
            raise InputError(err)
        return out
    ctl = comm.control
    flags = np.array([comm.size if err is None else comm.rank], dtype=np.int64)
    lowest = np.empty(1, dtype=np.int64)
    req = ctl.Iallreduce(flags, lowest, op=MPI.MIN)
    if err is None:
        polite_sleep_until(req.Test)
    else:
        deadline = time.monotonic() + GRACE_SECONDS
        polite_sleep_until(lambda: req.Test() or time.monotonic() > deadline)
        if not req.Test():  # the others are stuck elsewhere: report and end the job
            print(f"mpiopt: error: {err}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            time.sleep(0.3)  # let the process manager forward the message before the abort
            comm.mpi.Abort(EXIT_USAGE)
            os._exit(EXIT_USAGE)  # MPI_Abort may return before the process manager acts
    failed = int(lowest[0])
    if failed == comm.size:
        return out
    buf = bytearray(_MSG_BYTES)
    if comm.rank == failed:
        data = (err or "").encode()[:_MSG_BYTES]
        buf[:len(data)] = data
    polite_sleep_until(ctl.Ibcast([buf, MPI.BYTE], root=failed).Test)
    raise InputError(bytes(buf).rstrip(b"\0").decode(errors="replace"))
