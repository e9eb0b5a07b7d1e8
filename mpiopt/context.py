"""``RunContext``: what a running solver needs from the run around it, in three parts.

- ``ctx.history``: :class:`~mpiopt.history.History`, the recorded series, the result file's
  ``/history`` and the progress display;
- ``ctx.stop``: :class:`~mpiopt.stopping.StopPolicy`, the time budget and signals;
- ``ctx.checkpoints``: :class:`~mpiopt.checkpointing.CheckpointSchedule`, when checkpoints are due
  and writing them.

:meth:`RunContext.poll` is the one collective that combines them: every rank agrees on whether to
stop and whether to checkpoint now.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
from mpi4py import MPI

from .checkpointing import CheckpointSchedule, StateFn
from .comm import Comm
from .history import History
from .io.checkpoint import Checkpoint, CheckpointManager
from .io.results import ResultWriter
from .options import Every
from .stopping import StopPolicy


class RunContext:
    """Built by the run builder (:mod:`mpiopt.runner`) and handed to a solver."""

    def __init__(self, comm: Comm, run_cfg: dict[str, Any], *, solver: str = "", problem: str = "",
                 config: dict | None = None, writer: ResultWriter | None = None,
                 checkpoints: CheckpointManager | None = None, resume: Checkpoint | None = None,
                 verbose: bool = False, quiet: bool = False, stop: StopPolicy | None = None):
        self.comm = comm
        self.rank = comm.rank
        self.cfg = run_cfg
        self.solver = solver
        self.problem = problem
        self.config = config or {}
        self.resume = resume
        self.inputs: dict[str, Any] = {}     # identities of the data files (preflight.input_identities)
        self.verbose = verbose
        self.quiet = quiet
        self.seed = int(run_cfg.get("seed", 0))
        self.debug = bool(run_cfg.get("debug", False))
        self.time_offset = float(resume.meta.get("elapsed", 0.0)) if resume is not None else 0.0
        if resume is not None:
            stats = resume.meta.get("comm_stats")
            if isinstance(stats, list) and len(stats) == comm.size:
                comm.stats.load(stats[comm.rank])
        self.t0 = time.perf_counter()
        self.history = History(comm.rank, self.elapsed, writer=writer, every=int(run_cfg.get("history_every", 0)),
                               report_every=int(run_cfg.get("report_every", 0)),
                               progress=run_cfg.get("progress", "auto"), quiet=quiet, resume=resume)
        self.stop = stop if stop is not None else StopPolicy(
            self.elapsed, float(run_cfg.get("max_time", math.inf)), int(run_cfg.get("poll_every", 1)),
            rank=comm.rank, term_grace=float(run_cfg.get("term_grace", 60.0)),
            hang_timeout=float(run_cfg.get("hang_timeout", 0.0)),
            setup_timeout=float(run_cfg.get("setup_timeout", 600.0)))
        self.stop.clock = self.elapsed      # the time budget counts across resumes
        self.checkpoints = CheckpointSchedule(
            comm, checkpoints, Every.parse(run_cfg.get("checkpoint_every", "0"), "run.checkpoint_every"),
            meta=self._checkpoint_meta, history=self.history.arrays, on_saved=self.history.flush)

    def elapsed(self) -> float:
        """Seconds since the run started (continuing across resumes)."""
        return self.time_offset + (time.perf_counter() - self.t0)

    def start_clock(self) -> None:
        """Start the run's clock now: set-up (data, reference optimum, kernel compilation) is not run time."""
        self.t0 = time.perf_counter()

    def _checkpoint_meta(self) -> dict[str, Any]:
        meta = {"solver": self.solver, "problem": self.problem, "n_ranks": self.comm.size,
                "config": self.config, "elapsed": self.elapsed(), "seed": self.seed}
        if self.inputs:
            meta["inputs"] = json.dumps(self.inputs)
        return meta

    def poll(self, iteration: int, state_fn: StateFn | None = None, local_stop: bool = False,
             force: bool = False) -> int | None:
        """Collective (every rank, same iterations). Writes a checkpoint when due and returns a
        status code to stop with (MAX_TIME, INTERRUPTED, CALLBACK_STOP) or None to go on."""
        self.stop.heartbeat()
        ck = self.checkpoints
        if not force and not self.stop.poll_due(iteration) and not local_stop and not ck.count_due(iteration):
            return None
        flags = np.zeros(4, dtype=np.int32)
        if self.rank == 0:
            flags[0] = self.stop.out_of_time()
            flags[3] = ck.time_due()
        flags[1] = self.stop.signal_received
        flags[2] = local_stop
        if self.comm.size > 1:
            self.comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MAX, tag="control")
        status = self.stop.decide(int(flags[1]), bool(flags[2]), bool(flags[0]))
        if flags[1]:
            self.stop.signal_received = int(flags[1])
        ckpt_now = bool(flags[3]) or ck.count_due(iteration) or bool(flags[1])
        if ckpt_now and ck.enabled and state_fn is not None:
            ck.save(iteration, state_fn)
        return status
