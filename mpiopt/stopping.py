"""``StopPolicy``: when a run stops from outside the algorithm (time budget, SIGTERM/SIGINT, callback),
and the two guards that bound how long a job can hang: the grace period after a signal and the
progress watchdog."""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
from typing import Any, Callable

from . import result as R
from .comm import mark_progress, seconds_since_progress
from .errors import EXIT_FAILURE


def _end_job(message: str, code: int) -> None:
    """Print ``message`` and end this process at once (the MPI launcher then ends the other ranks)."""
    try:
        print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
    finally:
        os._exit(code)


class StopPolicy:
    """The wall-time budget and the signal flags; :meth:`decide` turns the flags every rank agreed on
    into a status (INTERRUPTED before CALLBACK_STOP before MAX_TIME).

    Guards: after SIGTERM/SIGINT a rank that has not finished within ``term_grace`` seconds (stuck in
    user code, or waiting for a rank that is) ends the job without a checkpoint; with
    ``hang_timeout`` > 0 a rank that completes no MPI operation and no iteration for that long ends it.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, clock: Callable[[], float], max_time: float = math.inf, poll_every: int = 1,
                 rank: int = 0, term_grace: float = 60.0, hang_timeout: float = 0.0):
        self.clock = clock
        self.max_time = float(max_time)
        self.poll_every = max(1, int(poll_every))
        self.rank = rank
        self.term_grace = float(term_grace)
        self.hang_timeout = float(hang_timeout)
        self.signal_received = 0
        self._previous: dict[int, Any] = {}
        self._grace_timer: threading.Timer | None = None
        self._watchdog: threading.Thread | None = None
        self._stop_watchdog = threading.Event()

    def out_of_time(self) -> bool:
        return self.clock() >= self.max_time

    def poll_due(self, iteration: int) -> bool:
        return iteration % self.poll_every == 0

    @staticmethod
    def heartbeat() -> None:
        """Tell the watchdog this rank made progress (called once per iteration by the solvers)."""
        mark_progress()

    # -- signals -----------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT set a flag seen at the next poll (then checkpoint and stop); a second
        SIGINT raises KeyboardInterrupt at once. Also starts the watchdog (``hang_timeout``).
        A no-op outside the main thread."""
        def handler(signum, frame):  # noqa: ARG001
            if self.signal_received and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signal_received = signum
            if self.term_grace > 0 and self._grace_timer is None:
                self._grace_timer = threading.Timer(self.term_grace, _end_job, args=(
                    f"rank {self.rank}: still running {self.term_grace:g} s after signal {signum} (stuck in user "
                    f"code, or waiting for a rank that is; run.term_grace): ending the job without a checkpoint",
                    128 + signum))
                self._grace_timer.daemon = True
                self._grace_timer.start()
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        if self.hang_timeout > 0 and self._watchdog is None:
            mark_progress()
            self._stop_watchdog.clear()
            self._watchdog = threading.Thread(target=self._watch, name="mpiopt-watchdog", daemon=True)
            self._watchdog.start()

    def restore_signal_handlers(self) -> None:
        """Put back the previous handlers and stop the guards (the run is over)."""
        for sig, old in self._previous.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._previous.clear()
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        if self._watchdog is not None:
            self._stop_watchdog.set()
            self._watchdog = None

    def _watch(self) -> None:
        period = min(1.0, self.hang_timeout / 10)
        while not self._stop_watchdog.wait(period):
            idle = seconds_since_progress()
            if idle > self.hang_timeout:
                _end_job(f"rank {self.rank}: no progress for {idle:.0f} s (no iteration and no MPI operation "
                         f"completed; run.hang_timeout={self.hang_timeout:g}): ending the job", EXIT_FAILURE)

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
