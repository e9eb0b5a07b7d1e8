"""``StopPolicy``: when a run stops from outside the algorithm (time budget, SIGTERM/SIGINT, callback)."""
from __future__ import annotations

import math
import signal
from typing import Any, Callable

from . import result as R


class StopPolicy:
    """The wall-time budget and the signal flags; :meth:`decide` turns the flags every rank agreed on
    into a status (INTERRUPTED before CALLBACK_STOP before MAX_TIME)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, clock: Callable[[], float], max_time: float = math.inf, poll_every: int = 1):
        self.clock = clock
        self.max_time = float(max_time)
        self.poll_every = max(1, int(poll_every))
        self.signal_received = 0
        self._previous: dict[int, Any] = {}

    def out_of_time(self) -> bool:
        return self.clock() >= self.max_time

    def poll_due(self, iteration: int) -> bool:
        return iteration % self.poll_every == 0

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT set a flag seen at the next poll (then checkpoint and stop); a second
        SIGINT raises KeyboardInterrupt at once. A no-op outside the main thread."""
        def handler(signum, frame):  # noqa: ARG001
            if self.signal_received and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signal_received = signum
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass

    def restore_signal_handlers(self) -> None:
        for sig, old in self._previous.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._previous.clear()

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
