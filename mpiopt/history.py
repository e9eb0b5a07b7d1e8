"""``History``: the run's recorded series (rank 0), the result file's ``/history`` and the progress display."""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np

from .io.checkpoint import Checkpoint
from .io.results import ResultWriter
from .progress import Progress

LINE_SECONDS = 10.0     # batch mode: a progress line at least this often, whatever the iteration count


class History:
    """Rows of named values keyed by iteration; rank 0 keeps them, appends them to the result file
    (when there is one) and shows progress. Other ranks ignore rows."""

    def __init__(self, rank: int, clock: Callable[[], float], *, writer: ResultWriter | None = None,
                 every: int = 0, report_every: int = 0, progress: str = "auto", quiet: bool = False,
                 resume: Checkpoint | None = None):
        self.rank = rank
        self.clock = clock
        self.writer = writer if rank == 0 else None
        self.every = int(every)
        self.report_every = int(report_every)
        self.progress_mode = progress
        self.quiet = quiet
        self.columns: dict[str, list[float]] = {}
        self._len = 0
        self._progress: Progress | None = None
        self._total: int | None = None
        self._next_report = 0
        self._last_flush = 0.0
        self.start = resume.iteration if resume is not None else 0
        if resume is not None and resume.history:
            for k, v in resume.history.items():
                self.columns[k] = [float(a) for a in v]
            self._len = len(next(iter(resume.history.values())))
            if self.writer is not None:
                self.writer.preload_history(resume.history)

    def setup(self, total: int | None, default_every: int = 1, unit: str = "it") -> None:
        """Size the record and report intervals from the iteration budget ``total`` (None: unknown)."""
        self._total = total
        if self.every <= 0:
            self.every = max(1, default_every)
        if self.report_every <= 0:
            self.report_every = max(1, (total or 100) // 10)
        self._next_report = self.start + self.report_every
        if self.rank == 0 and not self.quiet:
            self._progress = Progress(total, self.progress_mode, unit=unit, start=self.start)

    def due(self, iteration: int, last: int | None = None) -> bool:
        """Whether a row is due at ``iteration`` (always at ``last``)."""
        return iteration % self.every == 0 or (last is not None and iteration >= last)

    def record(self, iteration: int, **values: float) -> None:
        """Append one row (rank 0; other ranks ignore it). ``time`` (run seconds) is added."""
        if self.rank != 0:
            return
        row = {"iteration": int(iteration), "time": self.clock()}
        row.update({k: float(v) for k, v in values.items()})
        for k in row:
            if k not in self.columns:
                self.columns[k] = [math.nan] * self._len
        for k, col in self.columns.items():
            col.append(row.get(k, math.nan))
        self._len += 1
        if self.writer is not None:
            self.writer.append(row)
            now = time.perf_counter()
            if now - self._last_flush > 1.0:
                self.writer.flush()
                self._last_flush = now
        p = self._progress
        if p is not None and (p.mode == "bar" or iteration >= self._next_report or p.quiet_for() >= LINE_SECONDS
                              or (self._total and iteration >= self._total)):
            p.update(iteration, row["time"], values)
            while self._next_report <= iteration:
                self._next_report += self.report_every

    # -- extra series (e.g. model snapshots, per-oracle counters) -----------------------------------
    def declare_series(self, name: str, tail_shape: tuple[int, ...], dtype: Any = np.float32) -> None:
        """A growing dataset ``/<name>`` in the result file (rank 0 with a file; else a no-op)."""
        if self.writer is not None:
            self.writer.declare_series(name, tail_shape, dtype)

    def append_series(self, name: str, value: np.ndarray) -> None:
        if self.writer is not None:
            self.writer.append_series(name, value)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def quality(self, name: str, larger_is_better: bool, at: str = "epoch") -> dict[str, float]:
        """Final and best value of column ``name`` with the ``at`` value of the best row (rank 0; empty
        elsewhere or when the column was never recorded): ``{name, best_<name>, best_<at>}``."""
        col = np.asarray(self.columns.get(name, []), dtype=np.float64)
        ok = np.flatnonzero(np.isfinite(col))
        if ok.size == 0:
            return {}
        vals = col[ok]
        i = ok[int(np.argmax(vals) if larger_is_better else np.argmin(vals))]
        out = {name: float(col[ok[-1]]), f"best_{name}": float(col[i])}
        where = self.columns.get(at) or self.columns.get("iteration")
        if where is not None:
            out[f"best_{at if at in self.columns else 'iteration'}"] = float(where[i])
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """The rows so far as one array per column (rank 0; empty elsewhere)."""
        return {k: np.asarray(v, dtype=np.int64 if k == "iteration" else np.float64)
                for k, v in self.columns.items()}

    def close(self) -> None:
        """End the progress display."""
        if self._progress is not None:
            self._progress.close()
            self._progress = None
