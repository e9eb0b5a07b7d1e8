"""``CheckpointSchedule``: when checkpoints are due and writing them (collective gather, rank 0 writes)."""
from __future__ import annotations

import json
import time
from typing import Any, Callable

from .comm import Comm
from .io.checkpoint import CheckpointManager
from .options import Every

StateFn = Callable[[], "dict | None"]


class CheckpointSchedule:
    """Checkpoints every N iterations and/or every S seconds into ``manager``'s folder (none: never).

    ``meta`` returns the run's metadata for a checkpoint (solver, problem, config, elapsed, ...);
    ``history`` returns the history arrays to store beside the state.
    """

    def __init__(self, comm: Comm, manager: CheckpointManager | None, every: Every,
                 meta: Callable[[], dict[str, Any]], history: Callable[[], dict],
                 on_saved: Callable[[], None] | None = None):
        self.comm = comm
        self.manager = manager
        self.every = every
        self._meta = meta
        self._history = history
        self._on_saved = on_saved
        self.last_path: str | None = None
        self.last_time = time.perf_counter()

    @property
    def enabled(self) -> bool:
        return self.manager is not None

    def time_due(self) -> bool:
        """Local: the time rule fired (seconds since the last checkpoint)."""
        return bool(self.every.seconds) and (time.perf_counter() - self.last_time) >= self.every.seconds

    def count_due(self, iteration: int) -> bool:
        """Local: ``iteration`` is a multiple of the count rule."""
        n = self.every.iterations
        return bool(n) and iteration % n == 0

    def due(self, iteration: int, last: int | None = None) -> bool:
        """Local test, no communication: a multiple of the count rule reached (or crossed since
        ``last``), or the time rule. For solvers whose ranks do not poll in lockstep: the deciding
        rank then makes all ranks call :meth:`save` together."""
        if self.manager is None:
            return False
        n = self.every.iterations
        if n and iteration != last and (iteration % n == 0 or (last is not None and iteration // n > last // n)):
            return True
        return self.time_due()

    def save(self, iteration: int, state_fn: StateFn) -> None:
        """Collective: gather the solver state and the traffic counters, write them on rank 0."""
        state = state_fn()
        stats = self.comm.gather_obj(self.comm.stats.as_dict())
        if self.comm.rank == 0 and self.manager is not None:
            assert state is not None, "state_dict() must return the state on rank 0"
            meta = dict(self._meta(), comm_stats=stats, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            if isinstance(meta.get("config"), dict):
                meta["config"] = json.dumps(meta["config"])
            self.last_path = self.manager.save(iteration, meta, state, self._history())
            if self._on_saved is not None:
                self._on_saved()
        self.last_time = time.perf_counter()
        self.comm.Barrier()
