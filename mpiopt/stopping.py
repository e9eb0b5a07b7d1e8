"""``StopPolicy``: when a run stops from outside the algorithm (time budget, SIGTERM/SIGINT, callback),
and the two guards that bound how long a job can hang: the grace period after a signal and the
progress watchdog. :func:`end_job` is how either guard (and nothing else) ends a job from a thread."""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

from . import result as R
from .comm.abort import abort_job, let_launcher_read
from .comm.core import last_progress, mark_progress
from .errors import EXIT_FAILURE

#: seconds ``MPI_Abort`` may take before the rank exits by itself (a launcher that cannot be reached,
#: e.g. the network to a node is gone, never answers it)
ABORT_WAIT = 5.0
#: a gap between two watchdog ticks longer than this (and than 3 tick periods) is time this process
#: did not run (SIGSTOP/SIGCONT, a suspended job or machine, a GIL held by compiled code): not counted
SUSPEND_GAP = 2.0

_ending = threading.Lock()
_hold_until_exit = False
_pending_signal = 0          # a signal that arrived between two runs of one process (command line)


def hold_signals_until_exit() -> None:
    """For the command line, whose process ends with its run: once a run has installed its handlers,
    SIGTERM/SIGINT stay handled (never the default action: no exit 15, no KeyboardInterrupt
    traceback) until the process exits, and the grace period keeps bounding an orderly stop that is
    under way."""
    global _hold_until_exit
    _hold_until_exit = True


def ignore_signals_at_exit() -> None:
    """For the command line, once its exit code is decided: SIGTERM/SIGINT are ignored from now on.
    (Python's own finalization would put back their default action, so a repeat arriving while the
    process ends, MPI_Finalize included, would kill it with that signal instead of its exit code.)"""
    for sig in StopPolicy.SIGNALS:
        try:
            signal.signal(sig, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass


def _bounded(fn: Callable[[], Any], seconds: float) -> None:
    """Run ``fn`` in a daemon thread; give up waiting for it after ``seconds``."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(seconds)


def end_job(message: str, code: int) -> None:
    """End the whole job from any thread: write ``message`` (one line, stderr), wait until the
    launcher has read it (:func:`~mpiopt.comm.abort.let_launcher_read`), call ``MPI_Abort(code)`` (the launcher ends every rank),
    and exit ``code`` at once if that has not ended this process within :data:`ABORT_WAIT` seconds
    (a launcher that cannot be reached then sees a dead process; ranks cut off from it end by their
    own watchdog). Only the first caller in a process does this; later ones wait for the end."""
    if not _ending.acquire(blocking=False):
        while True:
            time.sleep(60)
    try:
        os.write(2, (message.rstrip("\n") + "\n").encode(errors="replace"))
        _bounded(sys.stdout.flush, 1.0)          # never blocks on a stdout the main thread holds
        let_launcher_read()
        _bounded(lambda: abort_job(code), ABORT_WAIT)
    finally:
        os._exit(code)


class Watchdog:
    """Ends the job when this rank makes no progress (no completed MPI operation, no iteration) for
    longer than its limit, measured on the time this process actually ran.

    A tick thread wakes every ``period`` seconds and adds the time since its previous tick to the
    idle time; a gap much longer than the period (:data:`SUSPEND_GAP`) means the process was stopped
    (a suspended job: SIGSTOP ... SIGCONT) or could not run, and counts as one period only. Two
    limits: ``setup_limit`` until :meth:`begin_solve` (set-up: data, reference optimum, kernel
    compilation; ``inf``: none), then ``limit``."""

    def __init__(self, rank: int, limit: float, setup_limit: float = math.inf):
        self.rank, self.limit, self.setup_limit = rank, float(limit), float(setup_limit)
        self.period = min(1.0, self.limit / 10)
        self.max_gap = max(SUSPEND_GAP, 3 * self.period)
        self.solving = False
        self.idle = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        mark_progress()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mpiopt-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread = None

    def begin_solve(self) -> None:
        """Set-up is over on this rank: from now on the limit is ``limit``."""
        mark_progress()
        self.solving = True

    def tick(self, now: float, gap: float, stamp: float, seen: float) -> None:
        """Account one tick: ``gap`` seconds since the previous one at ``now``; ``stamp`` the last
        progress mark, ``seen`` the one the previous tick saw."""
        step = gap if gap <= self.max_gap else self.period
        if stamp != seen:      # progress during the gap: idle since then, at most the gap's credit
            self.idle = max(0.0, min(now - stamp, step))
        else:
            self.idle += step

    def expired(self) -> str | None:
        """The message to end the job with, or None."""
        if self.solving and self.idle > self.limit:
            return (f"rank {self.rank}: no progress for {self.idle:.0f} s (no iteration and no MPI operation "
                    f"completed; run.hang_timeout={self.limit:g}): ending the job")
        if not self.solving and self.idle > self.setup_limit:
            return (f"rank {self.rank}: no progress for {self.idle:.0f} s during set-up (no MPI operation "
                    f"completed; run.setup_timeout={self.setup_limit:g}): ending the job")
        return None

    def _run(self) -> None:
        prev, seen = time.monotonic(), last_progress()
        while not self._stop.wait(self.period):
            now, stamp = time.monotonic(), last_progress()
            self.tick(now, now - prev, stamp, seen)
            prev, seen = now, stamp
            message = self.expired()
            if message and not self._stop.is_set():
                end_job(message, EXIT_FAILURE)


class StopPolicy:
    """The wall-time budget and the signal flags; :meth:`decide` turns the flags every rank agreed on
    into a status (INTERRUPTED before CALLBACK_STOP before MAX_TIME).

    Guards: after SIGTERM/SIGINT a rank that has not finished within ``term_grace`` seconds (stuck in
    user code, or waiting for a rank that is) ends the job without a checkpoint (exit 128+N); with
    ``hang_timeout`` > 0 a rank that completes no MPI operation and no iteration for that long ends it
    (exit 1), with ``setup_timeout`` instead (never less than ``hang_timeout``; 0: no limit) until
    :meth:`begin_solve`. Further signals while the orderly stop runs are ignored (it stays bounded
    by ``term_grace``).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, clock: Callable[[], float], max_time: float = math.inf, poll_every: int = 1,
                 rank: int = 0, term_grace: float = 60.0, hang_timeout: float = 0.0, setup_timeout: float = 600.0):
        self.clock = clock
        self.max_time = float(max_time)
        self.poll_every = max(1, int(poll_every))
        self.rank = rank
        self.term_grace = float(term_grace)
        self.hang_timeout = float(hang_timeout)
        self.setup_timeout = float(setup_timeout)
        self.signal_received = 0
        self._finished = False
        self._repeats = 0
        self._previous: dict[int, Any] = {}
        self._grace_timer: threading.Timer | None = None
        self._watchdog: Watchdog | None = None

    def out_of_time(self) -> bool:
        return self.clock() >= self.max_time

    def poll_due(self, iteration: int) -> bool:
        return iteration % self.poll_every == 0

    @staticmethod
    def heartbeat() -> None:
        """Tell the watchdog this rank made progress (called once per iteration by the solvers)."""
        mark_progress()

    def begin_solve(self) -> None:
        """Set-up is over (every rank is at the start of the solve): the watchdog's limit becomes
        ``hang_timeout``."""
        if self._watchdog is not None:
            self._watchdog.begin_solve()

    # -- signals -----------------------------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        """The first SIGTERM/SIGINT sets the flag seen at the next poll and starts the grace timer;
        later ones are ignored (the orderly stop is under way, bounded by the timer). After the run
        (command line only) a first signal is kept for the process's next run, if any."""
        global _pending_signal
        if self._finished and not self.signal_received:
            _pending_signal = _pending_signal or signum
            return
        if self.signal_received:
            self._repeats += 1
            if self._repeats == 1 and self.rank == 0:
                grace = f"at most run.term_grace={self.term_grace:g} s" if self.term_grace > 0 else "no limit"
                os.write(2, f"mpiopt: signal {signum} again: ignored, still stopping (final checkpoint and result "
                            f"first; {grace})\n".encode())
            return
        self.signal_received = signum
        if self.term_grace > 0 and self._grace_timer is None:
            self._grace_timer = threading.Timer(self.term_grace, end_job, args=(
                f"rank {self.rank}: still running {self.term_grace:g} s after signal {signum} (stuck in user "
                f"code, or waiting for a rank that is; run.term_grace): ending the job without a checkpoint",
                128 + signum))
            self._grace_timer.daemon = True
            self._grace_timer.start()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT set a flag seen at the next poll (then checkpoint and stop); repeats are
        ignored. Also starts the watchdog (``hang_timeout``). A no-op outside the main thread."""
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        global _pending_signal
        if _pending_signal and self._previous:
            signum, _pending_signal = _pending_signal, 0
            self._handler(signum, None)
        if self.hang_timeout > 0 and self._watchdog is None:
            setup = max(self.setup_timeout, self.hang_timeout) if self.setup_timeout > 0 else math.inf
            self._watchdog = Watchdog(self.rank, self.hang_timeout, setup)
            self._watchdog.start()

    def restore_signal_handlers(self) -> None:
        """Put back the previous handlers and stop the guards (the run is over). For the command line
        (:func:`hold_signals_until_exit`) the handlers stay, and so does the grace timer of a signal
        already received, until the process exits."""
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if _hold_until_exit and self._previous:
            self._finished = True
            return
        for sig, old in self._previous.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._previous.clear()
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None

    @staticmethod
    def decide(signal_flag: int, callback_flag: bool, time_flag: bool) -> int | None:
        """The stop status for agreed flags, or None to go on."""
        if signal_flag:
            return R.INTERRUPTED
        if callback_flag:
            return R.CALLBACK_STOP
        if time_flag:
            return R.MAX_TIME
        return None
