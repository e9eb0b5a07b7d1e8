"""``async_subgradient``: asynchronous stochastic subgradient training of a torch model (seed 003).

Algorithm 1 of the seed, run by every worker c on one shared parameter vector x::

    k_c = 0; u = 0
    loop until stop:
        xhat = read(x)                               # lock-free (ASSM: optionally under the lock)
        B    = minibatch drawn uniformly from all training data
        g    = subgradient of the batch loss at xhat  (PASSM: own block I^c only)
        g   += wd * xhat + l1 * sign(xhat)
        u    = m * u + g;  k_c += 1
        x   += -(1 - m) * alpha_c * gamma / sqrt(k_c) * u   # hw: Accumulate; assm: under a lock;
                                                             # passm: owner updates its block in place

Methods: ``sgd`` (one worker), ``hw`` (Hogwild: lock-free reads and element-atomic writes),
``assm`` (writes serialised by a CAS lock), ``passm`` (block I^c owned by worker c; partial backward).
Rank 0 hosts the vector (hw/assm/sgd) and is the snapshot rank; ranks 1.. are workers (one rank:
rank 0 does everything). The MPI plumbing lives in :mod:`mpiopt.comm.shared_model`.
"""
from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from .. import options as O
from .. import result as R
from ..comm.shared_model import (HOST, REQUEST, SAMPLES, UPDATES, BlockVector, Control, HostedVector,
                                 host_loop, single_node)
from ..options import Every
from ..errors import CheckpointError, InputError
from ..options import Option
from ..problems.torch_models import TorchModelProblem
from ..registry import register_solver
from .base import Solver

METHODS = ("sgd", "hw", "assm", "passm")
NO_STOP = -100


@register_solver("async_subgradient")
class AsyncSubgradient(Solver):
    summary = ("asynchronous stochastic subgradient training of torch models over MPI RMA windows "
               "(sgd, hw = Hogwild, assm = locked writes, passm = partitioned; seed 003)")
    problem_kind = TorchModelProblem
    default_problem = "digits"
    deterministic = False
    demo_settings = {"solver.method": "passm", "solver.max_epochs": 40, "solver.target_accuracy": 0.95,
                     "run.snapshot_every": 0.5, "run.max_time": 60}
    options = (
        Option("method", "passm", "sgd (one worker), hw (Hogwild), assm (locked writes), passm (partitioned)",
               str, choices=METHODS),
        Option("gamma", 1.0, "base step gamma of alpha_c*gamma/sqrt(k) (not given by the paper)", float,
               low=0.0, low_open=True),
        Option("momentum", 0.9, "momentum m of u = m*u + g, x -= (1-m)*step*u (paper: 0.9; 0 allowed)", float,
               low=0.0, high=1.0, high_open=True),
        Option("weight_decay", 5e-4, "L2 weight decay added to the subgradient (paper: 5e-4)", float, low=0.0),
        Option("l1", 1e-4, "L1 term l1*sign(x) added to the subgradient after the L2 term (paper: 1e-4)", float,
               low=0.0),
        O.batch_size(64, "minibatch size per worker"),
        Option("max_epochs", 10.0, "stop after this many global epochs (samples of all workers / N)", float,
               low=0.0, low_open=True),
        Option("alpha_low", 0.9, "per-worker step factor alpha_c ~ U[alpha_low, alpha_high] (seeded)", float,
               low=0.0, low_open=True),
        Option("alpha_high", 1.0, "upper end of alpha_c", float, low=0.0, low_open=True),
        Option("step_counter", "update", "k of gamma/sqrt(k): the worker's own update count (update, paper) "
               "or 1 + the global epoch (epoch, the authors' code)", str, choices=("update", "epoch")),
        Option("sampling", "uniform", "minibatches drawn uniformly with replacement (uniform, paper) or "
               "from per-worker shuffled passes (shuffle)", str, choices=("uniform", "shuffle")),
        Option("read_mode", "get", "get: plain MPI_Get (paper-faithful, may mix versions); atomic: "
               "Get_accumulate(NO_OP), element-atomic", str, choices=("get", "atomic")),
        Option("snapshot_mode", "faithful", "faithful: plain copy while workers run (paper); consistent: "
               "pause-flag cut (hw/assm/sgd) or per-block version check (passm)", str,
               choices=("faithful", "consistent")),
        Option("assm_lock_reads", False, "assm: also read under the lock (the 'consistent read' variant)", bool),
        Option("passm_subblocks", 1, "passm: split the own block into s pieces (tensor boundaries) and update "
               "one random piece per iteration (the seed's sample i in I_c)", int, low=1),
        Option("bn", "local", "BatchNorm buffers: local to each worker; snapshots recalibrate them with "
               "train-mode passes", str, choices=("local",)),
        Option("bn_batches", 8, "train batches used to recalibrate BatchNorm statistics of a snapshot", int, low=1),
        Option("eval_samples", 0, "test images used to evaluate snapshots (0: all)", int, low=0),
        Option("train_eval_samples", 1000, "training images used for a snapshot's train loss", int, low=1),
        Option("save_snapshots", True, "store every snapshot vector in the result file (/snapshots)", bool),
        Option("window", "auto", "window memory: auto (shared on one node), shared (Allocate_shared), "
               "allocate (Win.Allocate)", str, choices=("auto", "shared", "allocate")),
        Option("target_accuracy", 0.0, "stop (converged) when a snapshot reaches this test accuracy (0: never)",
               float, low=0.0, high=1.0),
        Option("rank_history_every", 1.0, "seconds between a worker's history rows (/workers/rankN)", float,
               low=0.0, low_open=True),
    )

    # -- set-up --------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: dict[str, dict[str, Any]], n_ranks: int) -> None:
        s = cfg["solver"]
        if s["alpha_low"] > s["alpha_high"]:
            raise InputError(f"solver.alpha_low={s['alpha_low']} > solver.alpha_high={s['alpha_high']}")

    def __init__(self, problem: TorchModelProblem, options: dict[str, Any], ctx: Any):
        super().__init__(problem, options, ctx)
        import torch
        torch.set_num_threads(1)
        comm, o = self.comm, options
        self.method = o["method"]
        self.workers = list(range(1, comm.size)) if comm.size > 1 else [0]
        if self.method == "sgd":
            self.workers = self.workers[:1]
        self.is_host = comm.rank == HOST
        self.is_worker = comm.rank in self.workers
        self.inline_host = self.is_host and self.is_worker       # one rank: no separate snapshot rank
        self.flat = _flat_model(problem)
        n = self.flat.n
        hashes = comm.allgather_obj(self.flat.layout_hash())
        if len(set(hashes)) != 1:
            raise InputError("model layouts differ between ranks (names/shapes hash)")
        shared = {"auto": single_node(comm), "shared": True, "allocate": False}[o["window"]]
        self.control = Control(comm, shared=shared)
        if self.method == "passm":
            from ..nn.flat import partition_tensors
            ranges = partition_tensors([s.size for s in self.flat.slots], len(self.workers))
            if any(hi == lo for lo, hi in ranges):
                raise InputError(f"solver.method=passm: {len(self.workers)} workers but the model has only "
                                 f"{len(self.flat.slots)} parameter tensors (blocks never split a tensor); "
                                 f"use at most {len(self.flat.slots) + 1} ranks")
            self.blocks: BlockVector | None = BlockVector(comm, n, ranges, self.workers, shared=shared)
            self.vec: HostedVector | None = None
            self.lo, self.hi = self.blocks.my_range if self.is_worker else (0, 0)
        else:
            self.blocks = None
            self.vec = HostedVector(comm, n + 1, shared=shared)    # element n counts applied writes
            self.lo, self.hi = (0, n) if self.is_worker else (0, 0)
        # initial point: every rank built the same weights (problem.seed); the hosts store them
        self._store_vector(self.flat.flat_np.copy())
        comm.Barrier()
        # worker state (Algorithm 1): u over the writable coordinates, own update count k, alpha_c
        seed = int(ctx.cfg.get("seed", 0))
        self.rng = np.random.default_rng([seed, comm.rank, 0xA5])
        self.alpha = float(self.rng.uniform(o["alpha_low"], o["alpha_high"]))
        width = self.hi - self.lo
        self.u = np.zeros(width, np.float32)
        self.delta = np.zeros(width + (0 if self.method == "passm" else 1), np.float32)
        if self.method != "passm":
            self.delta[-1] = 1.0                               # the write counter rides along
        self.k = 0
        self.perm = np.zeros(0, np.int64)
        self.perm_pos = 0
        self.sub_ranges = self._sub_ranges()
        if self.is_worker and self.method == "passm" and o["passm_subblocks"] == 1:
            self.flat.set_trainable(self.lo, self.hi)        # partial backward: own tensors only
        # bookkeeping
        self.n_snapshots = 0
        self.comm_seconds = 0.0
        self.compute_seconds = 0.0
        self.comm_cpu_seconds = 0.0
        self.compute_cpu_seconds = 0.0
        self.rank_rows: dict[str, list[float]] = {}
        self._eval = None
        self._target_hit = False
        self.eval_seconds = 0.0

    def _sub_ranges(self) -> list[tuple[int, int]]:
        if self.method != "passm" or not self.is_worker or self.opts["passm_subblocks"] == 1:
            return [(self.lo, self.hi)]
        from ..nn.flat import partition_tensors
        sizes = [s.size for s in self.flat.slots if self.lo <= s.offset < self.hi]
        parts = partition_tensors(sizes, self.opts["passm_subblocks"])
        return [(self.lo + a, self.lo + b) for a, b in parts if b > a]

    # -- the shared vector ------------------------------------------------------------------------
    def _store_vector(self, x: np.ndarray) -> None:
        """Collective-free, while no worker writes: hosts load ``x`` into their windows."""
        if self.blocks is not None:
            self.blocks.set_mine(x)
        elif self.is_host:
            self.vec.set_all(np.concatenate([x, self.vec.win.local[-1:]]))

    def _gather_vector(self) -> np.ndarray | None:
        """Collective, while no worker writes: the full vector on rank 0 (None elsewhere)."""
        if self.blocks is None:
            return self.vec.win.local[:-1].copy() if self.is_host else None
        lo, hi = self.blocks.my_range
        parts = self.comm.gather_obj((lo, self.blocks.local.copy()))
        if not self.is_host:
            return None
        x = np.zeros(self.flat.n, np.float32)
        for a, block in parts:
            x[a:a + block.size] = block
        return x

    def _read(self, xhat: np.ndarray) -> None:
        """xhat <- x (lock-free; own PASSM block from local memory)."""
        atomic = self.opts["read_mode"] == "atomic"
        if self.blocks is not None:
            self.blocks.read_others(xhat)
        elif self.method == "assm" and self.opts["assm_lock_reads"]:
            with self.control.writing(consistent=False, locked=True):
                self.vec.read(xhat, atomic)
        else:
            self.vec.read(xhat, atomic)

    def _write(self, delta: np.ndarray, lo: int, hi: int) -> None:
        """x[lo:hi] += delta: Accumulate (hw, sgd), Accumulate under the lock (assm), in place (passm)."""
        consistent = self.opts["snapshot_mode"] == "consistent"
        if self.blocks is not None:
            with self.blocks.writing() as mine:
                mine[lo - self.lo:hi - self.lo] += delta
        else:
            with self.control.writing(consistent, locked=self.method == "assm"):
                self.vec.add(delta)

    # -- the worker: Algorithm 1 ------------------------------------------------------------------
    def _sample(self) -> np.ndarray:
        N, b = self.problem.n_train, self.opts["batch_size"]
        if self.opts["sampling"] == "uniform":
            return self.rng.integers(0, N, size=b)
        if self.perm_pos + b > self.perm.size:
            self.perm = self.rng.permutation(N)
            self.perm_pos = 0
        idx = self.perm[self.perm_pos:self.perm_pos + b]
        self.perm_pos += b
        return idx

    def _step(self, global_epoch: float) -> float:
        from ..nn.train import step_size
        k = self.k if self.opts["step_counter"] == "update" else int(global_epoch) + 1
        return step_size(self.opts["gamma"], self.alpha, k)

    def _worker_iteration(self, epoch: float) -> float:
        from ..nn.train import add_penalties, loss_and_grad, momentum_delta
        o, flat, p = self.opts, self.flat, self.problem
        c0, t0 = time.thread_time(), time.perf_counter()
        self._read(flat.flat_np)                                        # xhat = read(x)
        t1, c1 = time.perf_counter(), time.thread_time()
        X, y = p.train_batch(self._sample())                            # B ~ uniform
        lo, hi = self.sub_ranges[0] if len(self.sub_ranges) == 1 else \
            self.sub_ranges[int(self.rng.integers(len(self.sub_ranges)))]
        if len(self.sub_ranges) > 1:
            flat.set_trainable(lo, hi)
        loss = loss_and_grad(flat, X, y)                                # g = subgradient at xhat
        g = flat.grad_np[lo:hi]
        add_penalties(g, flat.flat_np[lo:hi], o["weight_decay"], o["l1"])
        self.k += 1
        a, b = lo - self.lo, hi - self.lo
        momentum_delta(self.u[a:b], g, o["momentum"], self._step(epoch), out=self.delta[a:b])
        c2, t2 = time.thread_time(), time.perf_counter()
        if self.blocks is not None:
            self._write(self.delta[a:b], lo, hi)                       # x_I += delta
        else:
            self._write(self.delta, lo, hi)
        self.control.count_update(o["batch_size"])
        t3, c3 = time.perf_counter(), time.thread_time()
        # wall and CPU time of the RMA phases; a syscall after a long compute burst may hand the
        # core to another process (overloaded machines): thread_time calls sit outside the RMA
        # intervals so that this wait counts as compute, and CPU time does not count it at all
        self.comm_seconds += (t1 - t0) + (t3 - t2)
        self.compute_seconds += t2 - t1
        self.comm_cpu_seconds += (c1 - c0) + (c3 - c2)
        self.compute_cpu_seconds += c2 - c1
        return loss

    def _work(self) -> int:
        """A worker's loop until a sync ends the run; returns the status."""
        N = self.problem.n_train
        every = self.opts["rank_history_every"]
        next_row = time.perf_counter() + every
        losses: list[float] = []
        k_last, t_last = self.k, time.perf_counter()
        next_snap = time.perf_counter() + self.ctx.cfg["snapshot_every"] if self.inline_host else 0.0
        while True:
            if self.inline_host and self._host_needs_sync():
                self.control.request_sync()
            if self.control.sync_pending():
                status = self._sync()
                if status is not None:
                    if losses:                                  # the last partial interval
                        self._rank_row(np.mean(losses), (self.k - k_last) / max(1e-9, time.perf_counter() - t_last))
                    return status
                k_last, t_last = self.k, time.perf_counter()
            epoch = self.control.read(SAMPLES) / N if self.opts["step_counter"] == "epoch" else 0.0
            losses.append(self._worker_iteration(epoch))
            if self.ctx.signal_received and not self.is_host:
                self.control.request_from_worker()
            now = time.perf_counter()
            if now >= next_row:
                self._rank_row(np.mean(losses), (self.k - k_last) / max(1e-9, now - t_last))
                losses.clear()
                k_last, t_last, next_row = self.k, now, now + every
            if self.inline_host and self.ctx.cfg["snapshot_every"] > 0 and now >= next_snap:
                self._snapshot()
                next_snap = time.perf_counter() + self.ctx.cfg["snapshot_every"]

    def _rank_row(self, loss: float, ups: float) -> None:
        updates, samples = self.control.counters()
        row = {"time": self.ctx.elapsed(), "k": self.k, "epoch": samples / self.problem.n_train,
               "train_loss": float(loss), "updates_per_s": ups,
               "comm_fraction": self.comm_seconds / max(1e-12, self.comm_seconds + self.compute_seconds),
               "comm_cpu_fraction": self.comm_cpu_seconds / max(1e-12, self.comm_cpu_seconds + self.compute_cpu_seconds)}
        for key, v in row.items():
            self.rank_rows.setdefault(key, []).append(float(v))

    # -- the host / snapshot rank --------------------------------------------------------------------
    def _host_needs_sync(self) -> bool:
        """Host: whether to bring every rank into a collective phase now (stop or checkpoint)."""
        ctx, ctl = self.ctx, self.control
        updates, samples = ctl.counters()
        self._sync_iteration = updates
        self._sync_stop = NO_STOP
        if samples / self.problem.n_train >= self.opts["max_epochs"]:
            self._sync_stop = R.MAX_ITER
            return True
        if self._target_hit:
            self._sync_stop = R.CONVERGED
            return True
        if ctx.elapsed() >= ctx.max_time or ctx.signal_received or self._callback_stop or ctl.read(REQUEST):
            return True
        ck_iters, ck_secs = self._ckpt_every
        if ctx.checkpoints is not None:
            if ck_secs and time.perf_counter() - ctx._last_ckpt_time >= ck_secs:
                return True
            if ck_iters and updates // ck_iters > self._last_ckpt_block:
                self._last_ckpt_block = updates // ck_iters
                self._sync_iteration = self._last_ckpt_block * ck_iters
                return True
        return False

    def _host(self) -> int:
        every = self.ctx.cfg["snapshot_every"]
        due = None
        while True:
            due = host_loop(every, self._snapshot, self._host_needs_sync, due)
            self.control.request_sync()
            status = self._sync()
            if status is not None:
                return status

    def _take_vector(self) -> np.ndarray:
        """Host: a copy of the shared vector while workers run (faithful or consistent)."""
        consistent = self.opts["snapshot_mode"] == "consistent"
        if self.blocks is not None:
            return self.blocks.read_all(np.empty(self.flat.n, np.float32), consistent)
        if consistent:
            with self.control.paused():
                return self.vec.host_copy()[:-1]
        return self.vec.host_copy()[:-1]

    def _snapshot(self, x: np.ndarray | None = None) -> None:
        """Host: save a snapshot of the shared model and evaluate it (test loss/accuracy, train loss)."""
        t = self.ctx.elapsed()
        t_eval = time.perf_counter()
        updates, samples = self.control.counters()
        if x is None:
            x = self._take_vector()
        model, evaluate = self._evaluator()
        model.flat_np[:] = x
        train_loss, train_acc, test_loss, test_acc = evaluate(model)
        prev = getattr(self, "_last_snap", None)
        ups = (updates - prev[1]) / max(1e-9, t - prev[0]) if prev else 0.0
        self._last_snap = (t, updates)
        if self.ctx.writer is not None and self.opts["save_snapshots"]:
            self.ctx.writer.append_series("snapshots", x)
        self.notify(updates, None, train_loss, epoch=samples / self.problem.n_train, test_loss=test_loss,
                    test_accuracy=test_acc, train_accuracy=train_acc, updates_per_s=ups,
                    snapshot=self.n_snapshots, snapshot_time=t, train_time=t - self.eval_seconds)
        if self.inline_host:                  # one rank: evaluation time is not training time
            self.eval_seconds += time.perf_counter() - t_eval
        self.n_snapshots += 1
        target = self.opts["target_accuracy"]
        self._target_hit = self._target_hit or (target > 0 and test_acc >= target)
        self._final = (train_loss, test_loss, test_acc, x)

    def _evaluator(self) -> tuple[Any, Any]:
        """Host: the model snapshots are loaded into (its own one if it also trains) and the evaluator."""
        if self._eval is None:
            from ..nn.train import Evaluator
            o = self.opts
            self._eval_model = self.flat if not self.is_worker else _flat_model(self.problem)
            self._eval = Evaluator(self.problem, o["eval_samples"], o["train_eval_samples"], o["bn_batches"],
                                   o["batch_size"])
        return self._eval_model, self._eval

    # -- collective phases ----------------------------------------------------------------------------
    def _sync(self) -> int | None:
        """Every rank: agree on the iteration and stop reason, poll (checkpoint, time, signals)."""
        info = np.zeros(2, np.int64)
        if self.is_host:
            info[:] = self._sync_iteration, self._sync_stop
        self.comm.Bcast(info, root=HOST)
        self.control.seen_sync += 1
        status = self.poll(int(info[0]), force=True)
        if self.is_host:
            self.control.write(REQUEST, 0)
        if status is None and info[1] != NO_STOP:
            status = int(info[1])
        return status

    def _idle(self) -> int:
        """A rank with no role (sgd on several ranks): join syncs until the run stops."""
        from ..comm.core import polite_sleep_until
        while True:
            polite_sleep_until(self.control.sync_pending, spin=0.0)
            status = self._sync()
            if status is not None:
                return status

    # -- solve ------------------------------------------------------------------------------------
    def solve(self, callback=None) -> R.OptimizeResult:
        ctx, comm = self.ctx, self.comm
        self._callback = callback
        self._sync_iteration, self._sync_stop = 0, NO_STOP
        every = Every.parse(ctx.cfg.get("checkpoint_every", "0"))
        self._ckpt_every = (every.iterations, every.seconds)
        ck_iters = self._ckpt_every[0]
        self._last_ckpt_block = (self.control.read(UPDATES) // ck_iters) if (ck_iters and self.is_host) else 0
        ctx.setup_schedule(None, default_history_every=1)
        if self.is_host:
            if ctx.writer is not None and self.opts["save_snapshots"]:
                ctx.writer.declare_series("snapshots", (self.flat.n,), np.float32)
            self._snapshot()
        comm.Barrier()
        t_start = time.perf_counter()
        if self.is_worker:
            status = self._work()
        elif self.is_host:
            status = self._host()
        else:
            status = self._idle()
        wall = time.perf_counter() - t_start
        # everyone is in the final collective phase: no writes in flight, the cut is consistent
        x = self._gather_vector()
        lost = self._lost_updates()
        if self.is_host:
            self._snapshot(x)
        ctx.close_progress()
        rows = comm.gather_obj((comm.rank, {k: np.asarray(v) for k, v in self.rank_rows.items()},
                                self.k, self.comm_seconds, self.compute_seconds,
                                self.comm_cpu_seconds, self.compute_cpu_seconds))
        x = comm.bcast_obj(x)
        fin = comm.bcast_obj(getattr(self, "_final", None))
        train_loss, test_loss, test_acc, _ = fin
        extra: dict[str, Any] = {}
        if self.is_host:
            rows = [r for r in rows if r[0] in self.workers]
            workers = {f"rank{r}": {**hist, "k": k, "comm_seconds": cs, "compute_seconds": cp,
                                    "comm_cpu_seconds": ccs, "compute_cpu_seconds": ccp}
                       for r, hist, k, cs, cp, ccs, ccp in rows}
            total_k, cs, cp, ccs, ccp = (sum(r[i] for r in rows) for i in range(2, 7))
            extra = {"workers": workers, "summary": {
                "method": self.method, "updates": total_k, "lost_updates": lost,
                "updates_per_s": total_k / max(1e-9, wall), "comm_fraction": cs / max(1e-12, cs + cp),
                "comm_cpu_fraction": ccs / max(1e-12, ccs + ccp),
                "n_workers": len(self.workers)}}
        extra = comm.bcast_obj(extra)
        updates, samples = self.control.counters()
        self.free()
        msg = {R.MAX_ITER: f"reached max_epochs={self.opts['max_epochs']}",
               R.CONVERGED: f"a snapshot reached target_accuracy={self.opts['target_accuracy']}"}.get(
            status, R.stop_message(status))
        return R.make_result(x, train_loss, updates, status, msg, test_loss=test_loss,
                             test_accuracy=test_acc, epochs=samples / self.problem.n_train,
                             lost_updates=lost, extra_groups=extra, solution={"x": x})

    def free(self) -> None:
        """Collective: free the windows (end of the run)."""
        if self.blocks is not None:
            self.blocks.free()
        if self.vec is not None:
            self.vec.free()
        self.control.free()

    def _lost_updates(self) -> int:
        """Collective at a consistent cut: applied writes (counted in the vector / block versions)
        against updates made; 0 unless writes were lost."""
        if self.blocks is not None:
            applied = self.blocks.ver.local[0] // 2 if self.blocks.my_block is not None else 0
            made = self.k if self.blocks.my_block is not None else 0
            return int(self.comm.allreduce_scalar(float(made - applied)))
        made = self.comm.allreduce_scalar(float(self.k if self.is_worker else 0))
        applied = float(self.vec.win.local[-1]) if self.is_host else 0.0
        applied = self.comm.allreduce_scalar(applied)
        return int(round(made - applied))

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        x = self._gather_vector()
        mine = {"u": self.u.copy(), "k": self.k, "alpha": self.alpha, "lo": self.lo, "hi": self.hi,
                "rng": json.dumps(self.rng.bit_generator.state), "perm": self.perm.copy(),
                "perm_pos": self.perm_pos, "buffers": self.flat.buffers_vector(),
                "applied": float(self.vec.win.local[-1]) if (self.vec is not None and self.is_host) else 0.0,
                "version": int(self.blocks.ver.local[0]) if (self.blocks is not None and
                                                            self.blocks.my_block is not None) else 0}
        ranks = self.comm.gather_obj(mine)
        if not self.is_host:
            return None
        updates, samples = self.control.counters()
        return {"x": x, "updates": updates, "samples": samples, "n_snapshots": self.n_snapshots,
                "n_ranks": self.comm.size, "method": self.method,
                "ranks": {f"r{r}": s for r, s in enumerate(ranks)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        x = np.asarray(state["x"], dtype=np.float32)
        if x.shape != (self.flat.n,):
            raise CheckpointError(f"checkpoint x has {x.size} parameters, the model has {self.flat.n}")
        if str(state["method"]) != self.method:
            raise CheckpointError(f"checkpoint is for method {state['method']!r}, this run uses {self.method!r}")
        self.flat.flat_np[:] = x
        self._store_vector(x)
        self.n_snapshots = int(state["n_snapshots"])
        same = int(state["n_ranks"]) == self.comm.size
        mine = state["ranks"].get(f"r{self.comm.rank}") if same else None
        if self.is_host:
            self.control.write(UPDATES, int(state["updates"]))
            self.control.write(SAMPLES, int(state["samples"]))
            if self.vec is not None and mine is not None:
                self.vec.win.local[-1] = np.float32(mine["applied"])
        if mine is not None and self.is_worker:
            self.u[:] = np.asarray(mine["u"], np.float32)
            self.k = int(mine["k"])
            self.alpha = float(mine["alpha"])
            self.rng.bit_generator.state = json.loads(mine["rng"])
            self.perm = np.asarray(mine["perm"], np.int64)
            self.perm_pos = int(mine["perm_pos"])
            if np.asarray(mine["buffers"]).size:
                self.flat.load_buffers_vector(np.asarray(mine["buffers"]))
            if self.blocks is not None and self.blocks.my_block is not None:
                self.blocks.ver.local[0] = int(mine["version"])
        elif not same and self.is_worker:   # another rank count: fresh momentum and streams
            seed = int(self.ctx.cfg.get("seed", 0))
            self.rng = np.random.default_rng([seed, self.comm.rank, 0xA5, int(state["updates"])])
        self.comm.Barrier()


def _flat_model(problem: TorchModelProblem) -> Any:
    from ..nn.flat import FlatModel
    return FlatModel(problem.build_model())
