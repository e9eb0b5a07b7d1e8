"""Abort-on-exception: an exception on any rank ends the whole job with a message and an exit code.

An unhandled Python exception on one rank otherwise hangs the other ranks forever
(under every MPI tried: MPICH, Open MPI; see docs/mpi.md).
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Callable

from ..errors import EXIT_FAILURE, EXIT_USAGE, InputError


def report_exception(exc: BaseException, rank: int, verbose: bool) -> None:
    """Print ``rank R: <type>: <message>`` (and the traceback when verbose) to stderr."""
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    name = type(exc).__name__
    print(f"rank {rank}: {name}: {exc}", file=sys.stderr, flush=True)


def abort_on_exception(fn: Callable[[], int], verbose: bool = False) -> int:
    """Run ``fn``; return its exit code. On an exception (other than SystemExit) print it with the
    rank and call ``MPI.COMM_WORLD.Abort`` so no rank is left waiting."""
    try:
        return fn()
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - last line of defence for the whole job
        from mpi4py import MPI
        rank = MPI.COMM_WORLD.Get_rank() if MPI.Is_initialized() else 0
        report_exception(exc, rank, verbose)
        code = EXIT_USAGE if isinstance(exc, InputError) else EXIT_FAILURE
        sys.stdout.flush()
        sys.stderr.flush()
        if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
            time.sleep(0.3)  # let the process manager forward the message before the abort
            MPI.COMM_WORLD.Abort(code)
        os._exit(code)
