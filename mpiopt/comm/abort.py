"""Abort-on-exception: an exception on any rank ends the whole job with a message and an exit code.

An unhandled Python exception on one rank otherwise hangs the other ranks forever
(under every MPI tried: MPICH, Open MPI; see docs/mpi.md).
"""
from __future__ import annotations

import fcntl
import os
import signal
import struct
import sys
import termios
import time
import traceback
from typing import Callable

from ..errors import EXIT_FAILURE, EXIT_USAGE, InputError


#: seconds a rank that ends the job waits for the launcher to read its last lines
FORWARD_WAIT = 10.0


def let_launcher_read(timeout: float = FORWARD_WAIT) -> None:
    """Wait until the launcher has read everything this process wrote to stdout/stderr (pipes to
    the MPI process manager; checked with FIONREAD), at most ``timeout`` seconds, plus a moment
    for it to pass the lines on. A rank that exits or aborts at once after its last message can
    otherwise lose it: the launcher tears the job down before it has read the pipe."""
    t_end = time.monotonic() + timeout
    for fd in (1, 2):
        while time.monotonic() < t_end:
            try:
                left = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
            except OSError:          # not a pipe (terminal, file): nothing to wait for
                left = 0
            if left <= 0:
                break
            time.sleep(0.01)
    time.sleep(0.5)


def abort_job(code: int) -> None:
    """``MPI_Abort(code)`` on the world when MPI runs with more than one rank (the launcher then ends
    every rank, this one included); otherwise, or if the abort fails, it returns."""
    try:
        from mpi4py import MPI
        if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
            MPI.COMM_WORLD.Abort(code)
    except Exception:  # noqa: BLE001 - the caller exits anyway
        pass


def report_exception(exc: BaseException, rank: int, verbose: bool) -> None:
    """Print ``rank R: <type>: <message>`` (and the traceback when verbose) to stderr."""
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    name = type(exc).__name__
    print(f"rank {rank}: {name}: {exc}", file=sys.stderr, flush=True)


class Interrupted(BaseException):
    """SIGTERM/SIGINT before a run installed its own handlers: nothing to checkpoint yet."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _early_signal(signum, frame):  # noqa: ARG001
    raise Interrupted(signum)


def _nothing() -> None:
    pass


def abort_on_exception(fn: Callable[[], int], verbose: bool = False, *, hold: Callable[[], None] = _nothing,
                       release: Callable[[], None] = _nothing) -> int:
    """Run ``fn`` (the whole life of this process: the command line); return its exit code. On an
    exception (other than SystemExit) print it with the rank and call ``MPI.COMM_WORLD.Abort`` so no
    rank is left waiting. SIGTERM/SIGINT never take their default action: before a run installs its
    handlers they end the job at once (one line, exit 128+N), the run's handlers stay after it
    (``hold``, called first: :func:`mpiopt.stopping.hold_signals_until_exit`), and once ``fn`` has
    returned the exit code they are ignored until the process has exited (``release``:
    :func:`mpiopt.stopping.ignore_signals_at_exit`)."""
    hold()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, _early_signal)
        except ValueError:  # not the main thread
            pass
    try:
        code = fn()
        release()
        return code
    except SystemExit:
        release()
        raise
    except BaseException as exc:  # noqa: BLE001 - last line of defence for the whole job
        from mpi4py import MPI
        rank = MPI.COMM_WORLD.Get_rank() if MPI.Is_initialized() else 0
        if isinstance(exc, (Interrupted, KeyboardInterrupt)):
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            code = 128 + signum
            print(f"rank {rank}: stopped by signal {signum} before the run started (nothing to checkpoint)",
                  file=sys.stderr, flush=True)
        else:
            report_exception(exc, rank, verbose)
            code = EXIT_USAGE if isinstance(exc, InputError) else EXIT_FAILURE
        sys.stdout.flush()
        sys.stderr.flush()
        if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
            let_launcher_read()
            abort_job(code)
        os._exit(code)
