"""The host / snapshot rank of ``async_subgradient``: snapshots of the shared model (and of the
shared BatchNorm statistics), their evaluation (inline, in a background thread off the snapshot
schedule, or none: offline from the result file), and the decision to bring every rank into a
collective phase (stop, checkpoint)."""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

import numpy as np

from ... import result as R
from ...comm.shared_model import REQUEST, host_loop
from ..torch_training import epochs, evaluation_row

Decision = tuple[int, "int | None"]          # (iteration of the collective phase, stop status or None)


class BackgroundEvaluator:
    """Evaluates snapshot vectors in a thread on its own model copy (torch releases the GIL), so the
    snapshot period does not stretch to the evaluation time. Results come back in order."""

    def __init__(self, evaluate: Callable[[Any], tuple], model: Any):
        self.evaluate, self.model = evaluate, model
        self.todo: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self.pending = 0
        self.thread = threading.Thread(target=self._run, name="snapshot-evaluator", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.todo.get()
            if job is None:
                return
            tag, x, stats = job
            t0 = time.perf_counter()
            try:
                self.model.flat_np[:] = x
                if stats is not None:
                    self.model.stats_np[:] = stats
                out: Any = self.evaluate(self.model)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
                out = exc
            self.results.put((tag, out, time.perf_counter() - t0))

    def submit(self, tag: Any, x: np.ndarray, stats: np.ndarray | None = None) -> None:
        """Queue the evaluation of parameters ``x`` (with BatchNorm statistics ``stats``, if given)."""
        self.pending += 1
        self.todo.put((tag, x, stats))

    def finished(self, wait: bool = False) -> list[tuple[Any, tuple, float]]:
        """Evaluations done so far (``wait``: all submitted ones)."""
        out = []
        while self.pending and (wait or not self.results.empty()):
            tag, res, secs = self.results.get()
            self.pending -= 1
            if isinstance(res, BaseException):
                raise res
            out.append((tag, res, secs))
        return out

    def close(self) -> None:
        self.todo.put(None)
        self.thread.join()


class SnapshotHost:
    """Rank 0's role. ``solver`` gives the run (ctx, control, shared model, problem, options,
    notify); ``eval_model`` is the model snapshots are loaded into; ``inline``: evaluate on the
    calling thread (one rank, or ``solver.snapshot_eval=inline``); ``solver.snapshot_eval=off``:
    snapshots are stored and their rows recorded without evaluation (the final model is evaluated)."""

    def __init__(self, solver: Any, eval_model: Any, inline: bool, subtract_eval: bool,
                 callback_stopped: Callable[[], bool]):
        from ..torch_training import evaluator
        self.s, self.ctx, self.opts = solver, solver.ctx, solver.opts
        self.control, self.model, self.problem = solver.control, solver.model, solver.problem
        self.eval_model = eval_model
        self.evaluate = evaluator(self.problem, self.opts, recalibrate=self.opts["bn"] == "local")
        self.evaluating = self.opts["snapshot_eval"] != "off"
        self.shared_stats = bool(solver.shared_stats)
        self.background = None if (inline or not self.evaluating) else BackgroundEvaluator(self.evaluate, eval_model)
        self.subtract_eval = subtract_eval
        self.callback_stopped = callback_stopped
        self.n_snapshots = 0
        self.eval_seconds = 0.0          # evaluation time on the training path (one rank only)
        self.target_hit = False
        self.final: tuple[float, float, float] | None = None
        self.decision: Decision | None = None
        self._last_ckpt = 0
        self._last_snap: tuple[float, int] | None = None
        self._next_snap = 0.0

    # -- snapshots ---------------------------------------------------------------------------
    def snapshot(self, x: np.ndarray | None = None, stats: np.ndarray | None = None, inline: bool = False,
                 final: bool = False) -> None:
        """Copy the shared model and statistics (or take ``x``, ``stats``), store them in
        ``/snapshots`` (``/snapshot_stats``) and evaluate them (``final``: even with evaluation off)."""
        t = self.ctx.elapsed()
        updates, samples = self.control.counters()
        if x is None:
            x, stats = self.model.copy_state(self.opts["snapshot_mode"] == "consistent")
        stats = stats if self.shared_stats else None
        if self.opts["save_snapshots"]:
            self.ctx.history.append_series("snapshots", x)
            if stats is not None:
                self.ctx.history.append_series("snapshot_stats", stats)
        prev = self._last_snap
        ups = (updates - prev[1]) / max(1e-9, t - prev[0]) if prev else 0.0
        self._last_snap = (t, updates)
        tag = {"iteration": updates, "time": t, "snapshot_time": t, "updates_per_s": ups,
               "snapshot": self.n_snapshots, **self.s.epoch_values(samples)}
        self.n_snapshots += 1
        if not (self.evaluating or final):                  # a row with the columns of an evaluation, NaN
            self._record(tag, (float("nan"),) * 4, float("nan"))
            return
        if self.background is not None and not inline:
            self.background.submit(tag, x, stats)
            return
        t0 = time.perf_counter()
        self.eval_model.load(x, stats)
        res = self.evaluate(self.eval_model)
        secs = time.perf_counter() - t0
        if self.subtract_eval:
            self.eval_seconds += secs
        self._record(tag, res, secs)

    def _record(self, tag: dict[str, Any], res: tuple, secs: float) -> None:
        vals = evaluation_row(res)
        tag = dict(tag, train_time=tag["time"] - self.eval_seconds, eval_seconds=secs)
        iteration, objective = tag.pop("iteration"), vals.pop("objective")
        if secs == secs:                   # an evaluated snapshot (NaN seconds: a row without evaluation)
            self.s.watch("objective", objective, iteration)
        self.s.notify(iteration, None, objective, **vals, **tag)
        target = self.opts["target_accuracy"]
        self.target_hit = self.target_hit or (target > 0 and res[3] >= target)
        self.final = (res[0], res[2], res[3])

    def collect(self, wait: bool = False) -> None:
        """Record the rows of finished background evaluations."""
        if self.background is not None:
            for tag, res, secs in self.background.finished(wait):
                self._record(tag, res, secs)

    def tick(self) -> None:
        """One rank: take a snapshot between updates when one is due."""
        every = self.ctx.cfg["snapshot_every"]
        now = time.perf_counter()
        if every > 0 and now >= self._next_snap:
            self.snapshot(inline=True)
            self._next_snap = time.perf_counter() + every

    def start(self) -> None:
        self._last_ckpt = self.control.counters()[0]
        self._next_snap = time.perf_counter() + self.ctx.cfg["snapshot_every"]
        self.snapshot(inline=True)

    def finish(self, x: np.ndarray, stats: np.ndarray | None = None) -> tuple[float, float, float]:
        """At the final consistent cut: finish pending evaluations, evaluate ``x`` (with the shared
        ``stats``); (train loss, test loss, test accuracy) of the final model."""
        self.collect(wait=True)
        if self.background is not None:
            self.background.close()
        self.snapshot(x, stats, inline=True, final=True)
        assert self.final is not None
        return self.final

    # -- collective phases -------------------------------------------------------------------
    def need_sync(self) -> bool:
        """Whether to bring every rank into a collective phase now; sets :attr:`decision`."""
        self.collect()
        ctx, ctl = self.ctx, self.control
        updates, samples = ctl.counters()
        self.decision = None
        if self.s.failure is not None:                      # a snapshot evaluated to NaN or inf
            self.decision = (updates, R.FAILED)
        elif epochs(samples, self.problem.n_train) >= self.opts["max_epochs"]:
            self.decision = (updates, R.MAX_ITER)
        elif self.target_hit:
            self.decision = (updates, R.CONVERGED)
        elif (ctx.stop.out_of_time() or ctx.stop.signal_received or self.callback_stopped()
              or ctl.read(REQUEST)):
            self.decision = (updates, None)
        elif ctx.checkpoints.due(updates, self._last_ckpt):
            n = ctx.checkpoints.every.iterations
            crossed = n and updates // n > self._last_ckpt // n
            self.decision = ((updates // n) * n if crossed else updates, None)   # a count-rule multiple
            self._last_ckpt = updates
        return self.decision is not None

    def serve(self, sync: Callable[[Decision | None], int | None]) -> int:
        """Rank 0 without training: snapshots on schedule until a collective phase ends the run."""
        due = None
        while True:
            due = host_loop(self.ctx.cfg["snapshot_every"], self.snapshot, self.need_sync, due)
            self.control.request_sync()
            status = sync(self.decision)
            if status is not None:
                return status
