"""``RunContext``: what a running solver needs from the run around it.

History records (rank 0 writes them to the result file), progress display, the collective
stop/checkpoint poll (time budget, SIGTERM/SIGINT, callback stop), checkpoint writing and the
checkpoint to resume from. Solvers call :meth:`record` and :meth:`poll`; everything else is wiring.
"""
from __future__ import annotations

import json
import math
import signal
import time
from typing import Any, Callable

import numpy as np
from mpi4py import MPI

from . import result as R
from .comm import Comm
from .io.checkpoint import Checkpoint, CheckpointManager
from .io.results import ResultWriter
from .progress import Progress

StateFn = Callable[[], "dict | None"]


class RunContext:
    """Built by the runner (or by :func:`mpiopt.api.minimize`) and handed to a solver."""

    def __init__(self, comm: Comm, run_cfg: dict[str, Any], *, solver: str = "", problem: str = "",
                 config: dict | None = None, writer: ResultWriter | None = None,
                 checkpoints: CheckpointManager | None = None, resume: Checkpoint | None = None,
                 progress_total: int | None = None, verbose: bool = False, quiet: bool = False):
        self.comm = comm
        self.rank = comm.rank
        self.cfg = run_cfg
        self.solver = solver
        self.problem = problem
        self.config = config or {}
        self.writer = writer if comm.rank == 0 else None
        self.checkpoints = checkpoints
        self.resume = resume
        self.verbose = verbose
        self.quiet = quiet
        self.history: dict[str, list[float]] = {}
        self._hist_len = 0
        self.max_time = float(run_cfg.get("max_time", math.inf))
        self.poll_every = int(run_cfg.get("poll_every", 1))
        self.report_every = int(run_cfg.get("report_every", 0))
        self.history_every = int(run_cfg.get("history_every", 0))
        self.signal_received: int = 0
        self.last_checkpoint: str | None = None
        self._ckpt_iters, self._ckpt_secs = _parse_every(str(run_cfg.get("checkpoint_every", "0")))
        self._progress: Progress | None = None
        self._progress_total = progress_total
        self._next_report = 0
        self._last_flush = 0.0
        self.time_offset = 0.0
        if resume is not None:
            self.time_offset = float(resume.meta.get("elapsed", 0.0))
            for k, v in resume.history.items():
                self.history[k] = [float(a) for a in v]
            self._hist_len = len(next(iter(resume.history.values()))) if resume.history else 0
            stats = resume.meta.get("comm_stats")
            if isinstance(stats, list) and len(stats) == comm.size:
                comm.stats.load(stats[comm.rank])
            if self.writer is not None:
                self.writer.preload_history(resume.history)
        self.t0 = time.perf_counter()
        self._last_ckpt_time = self.t0

    # -- configuration for solvers ----------------------------------------------------------
    def setup_schedule(self, total: int | None, default_history_every: int = 1) -> None:
        """Tell the context the iteration budget, to size report and history intervals."""
        self._progress_total = total
        if self.history_every <= 0:
            self.history_every = max(1, default_history_every)
        if self.report_every <= 0:
            self.report_every = max(1, (total or 100) // 10)
        start = self.resume.iteration if self.resume is not None else 0
        self._next_report = start + self.report_every
        if self.rank == 0 and not self.quiet:
            self._progress = Progress(total, self.cfg.get("progress", "auto"))
            if start and self._progress._bar is not None:
                self._progress._bar.update(start)
                self._progress._pos = start

    def elapsed(self) -> float:
        """Seconds since the run started (continuing across resumes)."""
        return self.time_offset + (time.perf_counter() - self.t0)

    @property
    def start_iteration(self) -> int:
        return self.resume.iteration if self.resume is not None else 0

    # -- history -------------------------------------------------------------------------
    def due(self, iteration: int, last: int | None = None) -> bool:
        """Whether a history record is due at ``iteration`` (always at ``last``)."""
        return iteration % self.history_every == 0 or (last is not None and iteration >= last)

    def record(self, iteration: int, **values: float) -> None:
        """Append one history row (rank 0 stores it; other ranks ignore). ``time`` is added."""
        row = {"iteration": int(iteration), "time": self.elapsed()}
        row.update({k: float(v) for k, v in values.items()})
        if self.rank == 0:
            for k in row:
                if k not in self.history:
                    self.history[k] = [math.nan] * self._hist_len
            for k, col in self.history.items():
                col.append(row.get(k, math.nan))
            self._hist_len += 1
            if self.writer is not None:
                self.writer.append(row)
                now = time.perf_counter()
                if now - self._last_flush > 1.0:
                    self.writer.flush()
                    self._last_flush = now
            if self._progress is not None and (self._progress.mode == "bar" or iteration >= self._next_report or
                                               (self._progress_total and iteration >= self._progress_total)):
                self._progress.update(iteration, row["time"], values)
                while self._next_report <= iteration:
                    self._next_report += self.report_every

    def history_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.int64 if k == "iteration" else np.float64) for k, v in self.history.items()}

    def close_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    # -- stop / checkpoint poll ------------------------------------------------------------
    def poll(self, iteration: int, state_fn: StateFn | None = None, local_stop: bool = False,
             force: bool = False) -> int | None:
        """Collective (every rank, same iterations). Writes a checkpoint when due and returns a
        status code to stop with (MAX_TIME, INTERRUPTED, CALLBACK_STOP) or None to go on."""
        if not force and iteration % self.poll_every != 0 and not local_stop:
            if not self._ckpt_iters or iteration % self._ckpt_iters != 0:
                return None
        now = time.perf_counter()
        flags = np.zeros(4, dtype=np.int32)
        if self.rank == 0:
            flags[0] = self.elapsed() >= self.max_time
            flags[3] = bool(self._ckpt_secs) and (now - self._last_ckpt_time) >= self._ckpt_secs
        flags[1] = self.signal_received
        flags[2] = local_stop
        if self.comm.size > 1:
            self.comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MAX, tag="control")
        ckpt_now = bool(flags[3]) or (self._ckpt_iters > 0 and iteration % self._ckpt_iters == 0)
        stop: int | None = None
        if flags[1]:
            stop = R.INTERRUPTED
            self.signal_received = int(flags[1])
            ckpt_now = True
        elif flags[2]:
            stop = R.CALLBACK_STOP
        elif flags[0]:
            stop = R.MAX_TIME
        if ckpt_now and self.checkpoints is not None and state_fn is not None:
            self.save_checkpoint(iteration, state_fn)
        return stop

    def checkpoint_due(self, iteration: int, last: int | None = None) -> bool:
        """Local test, no communication: is a checkpoint due at ``iteration`` (a multiple of the count
        rule reached or crossed since ``last``, or the time rule)? For solvers whose ranks do not poll
        in lockstep: the deciding rank then makes all ranks call :meth:`save_checkpoint` together."""
        if self.checkpoints is None:
            return False
        n = self._ckpt_iters
        if n and iteration != last and (iteration % n == 0 or (last is not None and iteration // n > last // n)):
            return True
        return bool(self._ckpt_secs) and (time.perf_counter() - self._last_ckpt_time) >= self._ckpt_secs

    def save_checkpoint(self, iteration: int, state_fn: StateFn) -> None:
        """Collective: gather the solver state and write it on rank 0."""
        state = state_fn()
        stats = self.comm.gather_obj(self.comm.stats.as_dict())
        if self.rank == 0 and self.checkpoints is not None:
            assert state is not None, "state_dict() must return the state on rank 0"
            meta = {"solver": self.solver, "problem": self.problem, "n_ranks": self.comm.size,
                    "config": json.dumps(self.config), "elapsed": self.elapsed(),
                    "seed": int(self.cfg.get("seed", 0)), "comm_stats": stats,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            self.last_checkpoint = self.checkpoints.save(iteration, meta, state, self.history_arrays())
            if self.writer is not None:
                self.writer.flush()
        self._last_ckpt_time = time.perf_counter()
        self.comm.Barrier()

    # -- signals ---------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT set a flag seen at the next poll (then checkpoint and exit non-zero);
        a second SIGINT raises KeyboardInterrupt at once."""
        def handler(signum, frame):  # noqa: ARG001
            if self.signal_received and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signal_received = signum
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass


def _parse_every(text: str) -> tuple[int, float]:
    """``"100"`` -> (100, 0); ``"30s"`` -> (0, 30.0); ``"0"`` -> (0, 0)."""
    from .errors import InputError
    t = text.strip().lower()
    try:
        if t.endswith("s"):
            secs = float(t[:-1])
            if secs < 0:
                raise ValueError
            return 0, secs
        iters = int(t)
        if iters < 0:
            raise ValueError
        return iters, 0.0
    except ValueError:
        raise InputError(f"run.checkpoint_every: expected N iterations or Ns seconds, got {text!r}") from None
