"""``ddp``: synchronous data-parallel training with torch DistributedDataParallel over gloo (the
baseline a user would pick on CPUs), on the same models, data and update rule as ``async_subgradient``::

    every rank, every step t = 1, 2, ...:
        B_r  = b samples drawn uniformly (rank-local stream)
        g    = mean over ranks of the batch subgradients       (DDP: bucketed gloo all_reduce)
        g   += wd * x + l1 * sign(x)
        u    = m * u + g
        x   += -(1 - m) * gamma / sqrt(t) * u                    (identical on every rank)

gloo needs a rendezvous: rank 0 picks a free TCP port and broadcasts it with mpi4py. Rank 0 evaluates
the model every ``run.snapshot_every`` seconds; the others wait for it in the next all_reduce, so
the history has ``train_time`` (wall time minus evaluation) beside ``time``.
"""
from __future__ import annotations

import datetime
import os
import socket
import time
from typing import Any

import numpy as np

from .. import result as R
from ..comm.shared_model import single_node
from ..errors import CheckpointError
from ..options import Option
from ..problems.torch_models import TorchModelProblem
from ..registry import register_solver
from ..rng import RankStreams
from .base import Solver, Stop
from .torch_training import (
    TRAINING_OPTIONS,
    epochs,
    evaluation_row,
    evaluator,
    steps_for_epochs,
    training_memory_estimate,
)


def free_port() -> int:
    """A TCP port free on this host now (for the gloo rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


@register_solver("ddp")
class DDP(Solver):
    summary = "synchronous data-parallel training with torch DistributedDataParallel (gloo): the async baseline"
    problem_kind = TorchModelProblem
    default_problem = "digits"
    deterministic = True
    budget_option = "max_epochs"
    failure_hint = "try a smaller solver.gamma"
    collective_records = False          # evaluations on rank 0; the replicated parameters are checked every step
    # async_subgradient's demo budget and evaluation schedule, so the two can be drawn together
    demo_settings = {"solver.max_epochs": 40, "solver.target_accuracy": 0.95, "run.snapshot_every": 0.5,
                     "run.max_time": 60}
    options = (
        *TRAINING_OPTIONS,
        Option("timeout", 300.0, "seconds a gloo collective may wait before failing", float, low=1.0),
    )

    @classmethod
    def memory_estimate(cls, problem_cls: type, cfg: dict[str, dict[str, Any]],
                        n_ranks: int) -> tuple[float, str] | None:
        return training_memory_estimate(problem_cls, cfg)

    def __init__(self, problem: TorchModelProblem, options: dict[str, Any], ctx: Any):
        super().__init__(problem, options, ctx)
        import torch
        import torch.distributed as dist

        from ..nn.flat import FlatModel
        torch.set_num_threads(1)
        comm = self.comm
        host = "127.0.0.1" if single_node(comm) else socket.gethostbyname(socket.gethostname())
        addr, port = comm.bcast_obj((host, free_port()) if comm.rank == 0 else None)
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=comm.rank, world_size=comm.size,
                                    timeout=datetime.timedelta(seconds=options["timeout"]))
        self.flat = FlatModel(problem.build_model())
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.flat.module)
        self.streams = RankStreams(comm, ctx.seed, 0xDD)
        self.u = np.zeros(self.flat.n, np.float32)
        self.delta = np.zeros(self.flat.n, np.float32)
        self.per_step = options["batch_size"] * comm.size
        self.eval_seconds = 0.0
        self._evaluate: Any = None
        self._target_hit = False
        self._last = (time.perf_counter(), 0)          # (time, step) of the last evaluation
        self._next_eval = 0.0
        self._live = True
        self.final: Any = None

    @property
    def t(self) -> int:
        return self.nit

    def budget(self) -> int:
        return steps_for_epochs(self.opts["max_epochs"], self.per_step, self.problem.n_train)

    def step(self) -> Stop | None:
        """u = m u + g (g: DDP-averaged batch subgradient + penalties); x -= (1-m) gamma/sqrt(t) u."""
        from ..nn.train import add_penalties, momentum_delta, step_size
        o, p, x, g = self.opts, self.problem, self.flat.flat_np, self.flat.grad_np
        X, y = p.train_batch(self.streams.rng.integers(0, p.n_train, size=o["batch_size"]))
        self._loss_and_grad(X, y)
        add_penalties(g, x, o["weight_decay"], o["l1"])
        momentum_delta(self.u, g, o["momentum"], step_size(o["gamma"], 1.0, self.nit + 1), out=self.delta)
        x += self.delta
        return None

    def numeric_checks(self) -> dict[str, Any]:
        return {"iterate": self.flat.flat_np}      # the same on every rank (DDP-averaged gradients)

    def poll(self, iteration: int, force: bool = False) -> int | None:
        if self._target_hit and iteration % self.ctx.stop.poll_every == 0:
            self._callback_stop = True                  # a stop request seen by every rank at this poll
        return super().poll(iteration, force)

    def _loss_and_grad(self, X: Any, y: Any) -> float:
        import torch.nn.functional as F
        self.flat.zero_grad()
        loss = F.cross_entropy(self.ddp(X), y)
        loss.backward()                                   # DDP averages the gradient over ranks
        return float(loss.detach())

    # -- evaluations: rank 0, every run.snapshot_every seconds ------------------------------------
    def record_due(self, stop: Stop | None, budget: int) -> bool:
        every = self.ctx.cfg["snapshot_every"]
        return self.comm.rank == 0 and every > 0 and time.perf_counter() >= self._next_eval

    def record(self) -> None:
        if self.comm.rank != 0:
            return
        super().record()
        self._last = (time.perf_counter(), self.nit)
        self._next_eval = time.perf_counter() + self.ctx.cfg["snapshot_every"]

    def values(self) -> dict[str, Any]:
        """Rank 0: evaluate the model (its evaluation time is not training time)."""
        t_prev, step_prev = self._last
        ups = (self.nit - step_prev) / max(1e-9, time.perf_counter() - t_prev) if self._live and self.nit else 0.0
        if self._evaluate is None:
            self._evaluate = evaluator(self.problem, self.opts, restore_buffers=True)
        t0 = time.perf_counter()
        res = self._evaluate(self.flat)
        self.eval_seconds += time.perf_counter() - t0
        target = self.opts["target_accuracy"]
        self._target_hit = self._target_hit or (target > 0 and res[3] >= target)
        self.final = res
        return {**evaluation_row(res), "epoch": epochs(self.nit * self.per_step, self.problem.n_train),
                "updates_per_s": ups, "train_time": self.ctx.elapsed() - self.eval_seconds}

    def finish(self, stop: Stop) -> R.OptimizeResult:
        import torch.distributed as dist
        comm, p = self.comm, self.problem
        self._live = False
        self.record()                                    # the final model (rank 0)
        tr_loss, _, te_loss, te_acc = comm.bcast_obj(self.final if comm.rank == 0 else None)
        status, msg = stop
        if status == R.CALLBACK_STOP and comm.bcast_obj(self._target_hit):
            status, msg = R.CONVERGED, f"an evaluation reached target_accuracy={self.opts['target_accuracy']}"
        elif status == R.MAX_ITER:
            msg = f"reached max_epochs={self.opts['max_epochs']}"
        xs = self.flat.flat_np.copy()
        extra = {"summary": {"method": "ddp", "updates": self.nit, "eval_seconds": self.eval_seconds,
                             "comm_fraction": float("nan")}}
        dist.destroy_process_group()
        return R.make_result(xs, tr_loss, self.nit, status, msg, test_loss=te_loss, test_accuracy=te_acc,
                             epochs=epochs(self.nit * self.per_step, p.n_train), extra_groups=extra,
                             solution={"x": xs},
                             quality=self.ctx.history.quality("test_accuracy", larger_is_better=True))

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        rngs = self.streams.state()
        if self.comm.rank != 0:
            return None
        return {"x": self.flat.flat_np.copy(), "u": self.u.copy(), "t": self.nit, "rng": rngs,
                "buffers": self.flat.buffers_vector(), "n_ranks": self.comm.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        x = np.asarray(state["x"], np.float32)
        if x.shape != (self.flat.n,):
            raise CheckpointError(f"checkpoint x has {x.size} parameters, the model has {self.flat.n}")
        self.flat.flat_np[:] = x
        self.u[:] = np.asarray(state["u"], np.float32)
        self.nit = int(state["t"])
        if np.asarray(state["buffers"]).size:
            self.flat.load_buffers_vector(np.asarray(state["buffers"]))
        self.streams.load(state["rng"], state["n_ranks"], self.nit)
