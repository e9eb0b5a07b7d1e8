"""``async_subgradient``: the solver: options, roles, the collective phases and the result.

Rank 0 hosts the shared vector (hw/assm/sgd) and is the snapshot rank (:mod:`.host`); ranks 1..
are workers running Algorithm 1 (:mod:`.worker`); with one rank, rank 0 does both. The MPI
plumbing of the shared model lives in :mod:`mpiopt.comm.shared_model`.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from ... import result as R
from ...comm.core import polite_sleep_until
from ...comm.shared_model import (
    HOST,
    REQUEST,
    SAMPLES,
    UPDATES,
    BlockModel,
    Control,
    HostedModel,
    single_node,
)
from ...errors import CheckpointError, InputError
from ...options import Option
from ...problems.base import settings
from ...problems.torch_models import TorchModelProblem
from ...registry import register_solver
from ..base import Solver, Stop
from ..torch_training import TRAINING_OPTIONS, epochs, training_memory_estimate
from .host import Decision, SnapshotHost
from .worker import Worker

METHODS = ("sgd", "hw", "assm", "passm")


OPTIONS = (
    Option("method", "passm", "sgd (one worker), hw (Hogwild, lock-free), assm (reads and writes under a lock), "
           "passm (partitioned)", str, choices=METHODS),
    *TRAINING_OPTIONS,
    Option("alpha_low", 0.9, "per-worker step factor alpha_c ~ U[alpha_low, alpha_high] (seeded)", float,
           low=0.0, low_open=True),
    Option("alpha_high", 1.0, "upper end of alpha_c", float, low=0.0, low_open=True),
    Option("step_counter", "update", "k of gamma/sqrt(k): the worker's own update count (update, paper) "
           "or 1 + the global epoch (epoch, the authors' code)", str, choices=("update", "epoch")),
    Option("sampling", "uniform", "minibatches drawn uniformly with replacement (uniform, paper) or "
           "from per-worker shuffled passes (shuffle)", str, choices=("uniform", "shuffle")),
    Option("hw_writes", "plain", "hw/sgd writes: plain (get, add, put back without atomics: concurrent "
           "writes can be lost, as in shared-memory Hogwild) or atomic (element-atomic accumulate: none "
           "lost)", str, choices=("plain", "atomic")),
    Option("assm_lock_reads", True, "assm: read under the lock too, so every read is a consistent state "
           "(false: only writes are locked)", bool),
    Option("read_mode", "get", "get: plain MPI_Get (may mix versions); atomic: Get_accumulate(NO_OP), "
           "element-atomic", str, choices=("get", "atomic")),
    Option("snapshot_mode", "faithful", "faithful: plain copy while workers run (paper); consistent: "
           "pause-flag cut (hw/assm/sgd) or per-block version check (passm)", str,
           choices=("faithful", "consistent")),
    Option("snapshot_eval", "background", "evaluate snapshots in a background thread of the snapshot rank "
           "(background: the period stays as set), on its main thread (inline: the period becomes "
           "max(period, evaluation time)) or not at all (off: store them for mpiopt-report --evaluate; "
           "only the final model is evaluated)", str, choices=("background", "inline", "off")),
    Option("passm_split", "elements", "passm blocks: elements (balanced by parameter count, tensors may be "
           "cut) or tensors (whole tensors only, largest block minimised)", str, choices=("elements", "tensors")),
    Option("passm_subblocks", 1, "passm: split the own block into s pieces and update one random piece "
           "per iteration (the paper's sample i in I_c)", int, low=1),
    Option("bn", "shared", "BatchNorm running statistics: shared (in the shared state like the paper's shared "
           "model: read with x, their change written with each update, saved and used by snapshots) or local "
           "(each worker's own; snapshots recalibrate them with train-mode passes)", str,
           choices=("shared", "local")),
    Option("race_stats", True, "count reads that overlapped a write (possibly torn): a few atomics per "
           "read and write", bool),
    Option("save_snapshots", True, "store every snapshot vector in the result file (/snapshots; shared "
           "BatchNorm statistics in /snapshot_stats)", bool),
    Option("window", "auto", "window memory: auto (shared on one node), shared (Allocate_shared), "
           "allocate (Win.Allocate)", str, choices=("auto", "shared", "allocate")),
    Option("rank_history_every", 1.0, "seconds between a worker's history rows (/workers/rankN)", float,
           low=0.0, low_open=True),
)


@register_solver("async_subgradient")
class AsyncSubgradient(Solver):
    summary = ("asynchronous stochastic subgradient training of torch models over MPI RMA windows "
               "(sgd, hw = lock-free Hogwild, assm = locked reads and writes, passm = partitioned)")
    problem_kind = TorchModelProblem
    default_problem = "digits"
    deterministic = False
    progress_unit = "update"
    failure_hint = "try a smaller solver.gamma"
    collective_records = False      # rows on the snapshot rank; it stops every rank on a failure it sees
    demo_settings = {"solver.method": "passm", "solver.max_epochs": 40, "solver.target_accuracy": 0.95,
                     "run.snapshot_every": 0.5, "run.max_time": 60}
    options = OPTIONS

    @classmethod
    def memory_estimate(cls, problem_cls: type, cfg: dict[str, dict[str, Any]],
                        n_ranks: int) -> tuple[float, str] | None:
        """The training rank's minibatches plus passm's pieces of its block (a Python pair each)."""
        base = training_memory_estimate(problem_cls, cfg)
        pieces = 120.0 * cfg["solver"]["passm_subblocks"]
        what = settings(cfg["solver"], "passm_subblocks", section="solver")
        return (pieces, what) if base is None else (base[0] + pieces, f"{base[1]}, {what}")

    @classmethod
    def check_config(cls, cfg: dict[str, dict[str, Any]], n_ranks: int) -> None:
        s = cfg["solver"]
        if s["alpha_low"] > s["alpha_high"]:
            raise InputError(f"solver.alpha_low={s['alpha_low']} > solver.alpha_high={s['alpha_high']}")
        if s["snapshot_eval"] == "off" and s["target_accuracy"] > 0:
            raise InputError("solver.target_accuracy needs evaluated snapshots; solver.snapshot_eval=off "
                             "evaluates none")

    def __init__(self, problem: TorchModelProblem, options: dict[str, Any], ctx: Any):
        super().__init__(problem, options, ctx)
        import torch

        from ...nn.flat import FlatModel
        from ...nn.models import batchnorm_layers
        torch.set_num_threads(1)
        comm, o = self.comm, options
        self.method = o["method"]
        self.workers = list(range(1, comm.size)) if comm.size > 1 else [0]
        if self.method == "sgd":
            self.workers = self.workers[:1]
        self.is_host = comm.rank == HOST
        self.is_worker = comm.rank in self.workers
        self.flat = FlatModel(problem.build_model())
        if len(set(comm.allgather_obj(self.flat.layout_hash()))) != 1:
            raise InputError("model layouts differ between ranks (names/shapes hash)")
        shared = {"auto": single_node(comm), "shared": True, "allocate": False}[o["window"]]
        self.control = Control(comm, shared=shared)
        self.shared_stats = o["bn"] == "shared" and self.flat.n_stats > 0
        if self.shared_stats and any(bn.momentum is None for bn in batchnorm_layers(self.flat.module)):
            raise InputError("solver.bn=shared: a BatchNorm layer has momentum=None (a cumulative average over "
                             "its own batch count, which is not shared); use solver.bn=local")
        self.model = self._shared_model(shared)
        self.model.store(self.flat.flat_np.copy(), self.flat.stats_np.copy())   # every rank built the same
        comm.Barrier()
        self.worker = Worker(problem, o, self.flat, self.model, self.control, comm, ctx.seed, self.is_worker,
                             o["passm_subblocks"] if self.method == "passm" else 1)
        self.host: SnapshotHost | None = None
        if self.is_host:
            eval_model = FlatModel(problem.build_model()) if self.is_worker else self.flat
            self.host = SnapshotHost(self, eval_model, inline=self.is_worker or o["snapshot_eval"] == "inline",
                                     subtract_eval=self.is_worker, callback_stopped=lambda: self._callback_stop)

    def _shared_model(self, shared: bool) -> HostedModel | BlockModel:
        o, n, c = self.opts, self.flat.n, len(self.workers)
        m = self.flat.n_stats if self.shared_stats else 0
        if self.method != "passm":
            hw = self.method in ("hw", "sgd")
            return HostedModel(self.comm, n, self.control, shared, writes=o["hw_writes"] if hw else "atomic",
                               lock_reads=self.method == "assm" and o["assm_lock_reads"],
                               lock_writes=self.method == "assm", consistent=o["snapshot_mode"] == "consistent",
                               read_atomic=o["read_mode"] == "atomic", count_overlaps=o["race_stats"], n_stats=m)
        from ...nn.flat import partition_elements, partition_tensors
        if o["passm_split"] == "elements":
            ranges = partition_elements(n, c)
        else:
            ranges = partition_tensors([s.size for s in self.flat.slots], c)
        if any(hi == lo for lo, hi in ranges):
            raise InputError(f"solver.method=passm: {c} workers but the model has only {len(self.flat.slots)} "
                             f"parameter tensors (solver.passm_split=tensors never splits one); use at most "
                             f"{len(self.flat.slots) + 1} ranks or solver.passm_split=elements")
        return BlockModel(self.comm, n, ranges, self.workers, self.control, shared, count_overlaps=o["race_stats"],
                          n_stats=m)

    @property
    def n_snapshots(self) -> int:
        return self.host.n_snapshots if self.host is not None else 0

    def epoch_values(self, samples: int) -> dict[str, float]:
        """Epoch counts for a history row: ``epoch`` = samples of all workers / N; for passm also
        ``block_epoch`` = samples per block / N (each passm sample moves only its worker's block)."""
        e = epochs(samples, self.problem.n_train)
        return {"epoch": e, **({"block_epoch": e / len(self.workers)} if self.method == "passm" else {})}

    def counters(self) -> tuple[int, int]:
        """(global updates, global samples)."""
        return self.control.counters()

    # -- the run ---------------------------------------------------------------------------------
    def solve(self, callback=None) -> R.OptimizeResult:
        ctx = self.ctx
        self._callback = callback
        ctx.history.setup(None, default_every=1, unit=self.progress_unit)
        if self.host is not None:
            if self.opts["save_snapshots"]:
                ctx.history.declare_series("snapshots", (self.flat.n,), np.float32)
                if self.shared_stats:
                    ctx.history.declare_series("snapshot_stats", (self.flat.n_stats,), np.float32)
            self.host.start()
        self.comm.Barrier()
        t0 = time.perf_counter()
        if self.is_worker:
            status = self._train()
        elif self.host is not None:
            status = self.host.serve(self._sync)
        else:
            status = self._idle()
        self.wall = time.perf_counter() - t0
        self.x = self.model.gather()          # every rank is in the final collective phase: a consistent cut
        self.stats = self.model.gather_stats() if self.shared_stats else None
        self.lost = self.lost_updates()
        self.final = self.host.finish(self.x, self.stats) if self.host is not None else None
        ctx.history.close()
        msg = {R.MAX_ITER: f"reached max_epochs={self.opts['max_epochs']}",
               R.CONVERGED: f"a snapshot reached target_accuracy={self.opts['target_accuracy']}"}.get(
            status, R.stop_message(status))
        if status == R.FAILED:                # the snapshot rank's failure message, on every rank
            msg = self.comm.bcast_obj(self.failure.message if self.failure is not None else msg, root=HOST)
        return self.finish(Stop(status, msg))

    def _train(self) -> int:
        """A worker's loop (with one rank also the host's snapshots) until a collective phase ends the run."""
        w, host, ctl, ctx = self.worker, self.host, self.control, self.ctx
        every = self.opts["rank_history_every"]
        losses: list[float] = []
        k_last = w.k
        t_last = time.perf_counter()
        next_row = t_last + every

        def row() -> None:
            now = time.perf_counter()
            w.add_row(ctx.elapsed(), epochs(ctl.read(SAMPLES), self.problem.n_train), float(np.mean(losses)),
                      (w.k - k_last) / max(1e-9, now - t_last))
            losses.clear()

        while True:
            if host is not None and host.need_sync():
                ctl.request_sync()
            if ctl.sync_pending():
                status = self._sync(host.decision if host is not None else None)
                if status is not None:
                    if losses:                                 # the last partial interval
                        row()
                    return status
                k_last, t_last = w.k, time.perf_counter()
            losses.append(w.step())
            if ctx.stop.signal_received and host is None:
                ctl.request_from_worker()
            if time.perf_counter() >= next_row:
                row()
                k_last, t_last = w.k, time.perf_counter()
                next_row = t_last + every
            if host is not None:
                host.tick()

    def _sync(self, decision: Decision | None) -> int | None:
        """Every rank: agree on the iteration and stop reason, then poll (checkpoint, time, signals)."""
        iteration, stop = self.comm.bcast_obj(decision if self.is_host else None, root=HOST)
        self.control.seen_sync += 1
        status = self.poll(iteration, force=True)
        if self.is_host:
            self.control.write(REQUEST, 0)
        return status if status is not None else stop

    def _idle(self) -> int:
        """A rank with no role (sgd on several ranks): join collective phases until the run stops."""
        while True:
            polite_sleep_until(self.control.sync_pending, spin=0.0)
            status = self._sync(None)
            if status is not None:
                return status

    def lost_updates(self) -> int:
        """Collective, at a consistent cut: updates made minus writes applied (0 unless writes were lost)."""
        made = self.comm.allreduce_scalar(float(self.worker.k if self.is_worker else 0))
        applied = self.comm.allreduce_scalar(float(self.model.applied()))
        return int(round(made - applied))

    def finish(self, stop: Stop) -> R.OptimizeResult:
        comm = self.comm
        reports = comm.gather_obj((comm.rank, self.worker.report()))
        x, stats = comm.bcast_obj((self.x, self.stats))
        self.flat.load(x, stats)              # every rank's model is now the final shared one (bn=local: own stats)
        train_loss, test_loss, test_acc = comm.bcast_obj(self.final)
        extra = summarize(self.method, reports, self.workers, self.lost, self.wall) if self.is_host else {}
        extra = comm.bcast_obj(extra)
        read_b, write_b = self.model.bytes_per_update()
        extra["summary"].update(bn=self.opts["bn"] if self.flat.n_stats else "none", n_stats=self.flat.n_stats,
                                read_bytes_per_update=read_b, write_bytes_per_update=write_b)
        updates, samples = self.counters()
        ep = self.epoch_values(samples)
        self.free()
        return R.make_result(x, train_loss, updates, stop.status, stop.message, test_loss=test_loss,
                             test_accuracy=test_acc, epochs=ep["epoch"], lost_updates=self.lost,
                             **({"block_epochs": ep["block_epoch"]} if "block_epoch" in ep else {}),
                             extra_groups=extra,
                             solution={"x": x, **({"bn_stats": stats} if self.shared_stats else {})},
                             quality=self.ctx.history.quality("test_accuracy", larger_is_better=True))

    def free(self) -> None:
        """Collective: free the windows (end of the run)."""
        self.model.free()
        self.control.free()

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        x = self.model.gather()
        stats = self.model.gather_stats() if self.shared_stats else np.zeros(0, np.float32)
        rngs = self.worker.streams.state()
        ranks = self.comm.gather_obj({**self.worker.state(), "applied": self.model.applied()})
        if not self.is_host:
            return None
        updates, samples = self.counters()
        return {"x": x, "bn_stats": stats, "updates": updates, "samples": samples, "n_snapshots": self.n_snapshots,
                "n_ranks": self.comm.size, "method": self.method, "rng": rngs,
                "ranks": {f"r{r}": s for r, s in enumerate(ranks)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        x = np.asarray(state["x"], dtype=np.float32)
        if x.shape != (self.flat.n,):
            raise CheckpointError(f"checkpoint x has {x.size} parameters, the model has {self.flat.n}")
        if str(state["method"]) != self.method:
            raise CheckpointError(f"checkpoint is for method {state['method']!r}, this run uses {self.method!r}")
        stats = np.asarray(state.get("bn_stats", np.zeros(0)), dtype=np.float32)
        if self.shared_stats and stats.size != self.flat.n_stats:
            raise CheckpointError(f"checkpoint bn_stats has {stats.size} shared BatchNorm statistics, solver.bn=shared "
                                  f"needs {self.flat.n_stats} (a checkpoint of a solver.bn=local run?)")
        self.flat.load(x, stats if self.shared_stats else None)
        self.model.store(x, stats if self.shared_stats else None)
        if self.host is not None:
            self.host.n_snapshots = int(state["n_snapshots"])
            self.control.write(UPDATES, int(state["updates"]))
            self.control.write(SAMPLES, int(state["samples"]))
        if int(state["n_ranks"]) == self.comm.size:      # else: fresh momentum, counts and streams
            mine = state["ranks"][f"r{self.comm.rank}"]
            self.model.set_applied(int(mine["applied"]))
            if self.is_worker:
                self.worker.load(mine)
        self.worker.streams.load(state["rng"], int(state["n_ranks"]), int(state["updates"]))
        self.comm.Barrier()


def summarize(method: str, reports: list[tuple[int, dict]], workers: list[int], lost: int,
              wall: float) -> dict[str, Any]:
    """The result file's ``/workers`` (each worker's history and totals) and ``/summary``."""
    mine = {f"rank{r}": rep for r, rep in reports if r in workers}
    tot = {k: sum(rep[k] for rep in mine.values()) for k in
           ("k", "comm_seconds", "compute_seconds", "comm_cpu_seconds", "compute_cpu_seconds", "reads",
            "overlapped_reads")}
    wall_s, cpu_s = tot["comm_seconds"] + tot["compute_seconds"], tot["comm_cpu_seconds"] + tot["compute_cpu_seconds"]
    return {"workers": mine, "summary": {
        "method": method, "updates": tot["k"], "lost_updates": lost, "updates_per_s": tot["k"] / max(1e-9, wall),
        "comm_fraction": tot["comm_seconds"] / max(1e-12, wall_s),
        "comm_cpu_fraction": tot["comm_cpu_seconds"] / max(1e-12, cpu_s),
        "reads": tot["reads"], "overlapped_reads": tot["overlapped_reads"], "n_workers": len(workers)}}
