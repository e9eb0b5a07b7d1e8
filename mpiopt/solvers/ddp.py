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
import json
import os
import socket
import time
from typing import Any

import numpy as np

from .. import options as O
from .. import result as R
from ..comm.shared_model import single_node
from ..errors import CheckpointError
from ..options import Option
from ..problems.torch_models import TorchModelProblem
from ..registry import register_solver
from .base import Solver


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


@register_solver("ddp")
class DDP(Solver):
    summary = "synchronous data-parallel training with torch DistributedDataParallel (gloo): the async baseline"
    problem_kind = TorchModelProblem
    default_problem = "digits"
    deterministic = True
    demo_settings = {"solver.max_epochs": 10, "run.snapshot_every": 1.0, "run.max_time": 60}
    options = (
        Option("gamma", 1.0, "base step gamma of gamma/sqrt(t) (as async_subgradient)", float, low=0.0, low_open=True),
        Option("momentum", 0.9, "momentum m of u = m*u + g, x -= (1-m)*step*u", float, low=0.0, high=1.0,
               high_open=True),
        Option("weight_decay", 5e-4, "L2 weight decay added to the gradient", float, low=0.0),
        Option("l1", 1e-4, "L1 term l1*sign(x) added to the gradient", float, low=0.0),
        O.batch_size(64, "minibatch size per rank"),
        Option("max_epochs", 10.0, "stop after this many epochs (samples of all ranks / N)", float,
               low=0.0, low_open=True),
        Option("eval_samples", 0, "test images used for evaluations (0: all)", int, low=0),
        Option("train_eval_samples", 1000, "training images used for the train loss of an evaluation", int, low=1),
        Option("bn_batches", 8, "train batches used to recalibrate BatchNorm statistics before evaluation", int, low=1),
        Option("target_accuracy", 0.0, "stop (converged) when an evaluation reaches this test accuracy (0: never)",
               float, low=0.0, high=1.0),
        Option("timeout", 300.0, "seconds a gloo collective may wait before failing", float, low=1.0),
    )

    def __init__(self, problem: TorchModelProblem, options: dict[str, Any], ctx: Any):
        super().__init__(problem, options, ctx)
        import torch
        import torch.distributed as dist
        from ..nn.flat import FlatModel
        torch.set_num_threads(1)
        comm = self.comm
        host = "127.0.0.1" if single_node(comm) else socket.gethostbyname(socket.gethostname())
        addr, port = comm.bcast_obj((host, _free_port()) if comm.rank == 0 else None)
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=comm.rank, world_size=comm.size,
                                    timeout=datetime.timedelta(seconds=options["timeout"]))
        self.flat = FlatModel(problem.build_model())
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.flat.module)
        seed = int(ctx.cfg.get("seed", 0))
        self.rng = np.random.default_rng([seed, comm.rank, 0xDD])
        self.u = np.zeros(self.flat.n, np.float32)
        self.delta = np.zeros(self.flat.n, np.float32)
        self.t = 0
        self.eval_seconds = 0.0
        self._evals: Any = None
        self._target_hit = False

    def _loss_and_grad(self, X: Any, y: Any) -> float:
        import torch.nn.functional as F
        self.flat.zero_grad()
        loss = F.cross_entropy(self.ddp(X), y)
        loss.backward()                                   # DDP averages the gradient over ranks
        return float(loss.detach())

    def _evaluate(self) -> tuple[float, float, float, float]:
        if self._evals is None:
            from ..nn.train import Evaluator
            o = self.opts
            self._evals = Evaluator(self.problem, o["eval_samples"], o["train_eval_samples"], o["bn_batches"],
                                    o["batch_size"], restore_buffers=True)
        return self._evals(self.flat)

    def _record(self, epoch: float, ups: float) -> tuple[float, float, float, float]:
        t0 = time.perf_counter()
        tr_loss, tr_acc, te_loss, te_acc = self._evaluate()
        self.eval_seconds += time.perf_counter() - t0
        self.notify(self.t, None, tr_loss, epoch=epoch, test_loss=te_loss, test_accuracy=te_acc,
                    train_accuracy=tr_acc, updates_per_s=ups, train_time=self.ctx.elapsed() - self.eval_seconds)
        target = self.opts["target_accuracy"]
        self._target_hit = self._target_hit or (target > 0 and te_acc >= target)
        return tr_loss, tr_acc, te_loss, te_acc

    def solve(self, callback=None) -> R.OptimizeResult:
        from ..nn.train import add_penalties, momentum_delta, step_size
        o, p, ctx, comm = self.opts, self.problem, self.ctx, self.comm
        self._callback = callback
        ctx.setup_schedule(None, default_history_every=1)
        per_step = o["batch_size"] * comm.size
        every = ctx.cfg["snapshot_every"]
        if comm.rank == 0:
            self._record(self.t * per_step / p.n_train, 0.0)
        next_eval = time.perf_counter() + every
        t_last, step_last = time.perf_counter(), self.t
        x, g = self.flat.flat_np, self.flat.grad_np
        status, msg = R.MAX_ITER, f"reached max_epochs={o['max_epochs']}"
        while self.t * per_step / p.n_train < o["max_epochs"]:
            X, y = p.train_batch(self.rng.integers(0, p.n_train, size=o["batch_size"]))
            self._loss_and_grad(X, y)
            add_penalties(g, x, o["weight_decay"], o["l1"])
            self.t += 1
            momentum_delta(self.u, g, o["momentum"], step_size(o["gamma"], 1.0, self.t), out=self.delta)
            x += self.delta
            now = time.perf_counter()
            if comm.rank == 0 and every > 0 and now >= next_eval:
                self._record(self.t * per_step / p.n_train, (self.t - step_last) / max(1e-9, now - t_last))
                t_last, step_last = time.perf_counter(), self.t
                next_eval = time.perf_counter() + every
            if self._target_hit and self.t % ctx.poll_every == 0:
                self._callback_stop = True              # a stop request seen by every rank at this poll
            stop = self.poll(self.t)
            if stop is not None:
                status, msg = stop, R.stop_message(stop)
                if comm.bcast_obj(self._target_hit):
                    status, msg = R.CONVERGED, f"an evaluation reached target_accuracy={o['target_accuracy']}"
                break
        fin = self._record(self.t * per_step / p.n_train, 0.0) if comm.rank == 0 else None
        tr_loss, tr_acc, te_loss, te_acc = comm.bcast_obj(fin)
        ctx.close_progress()
        xs = x.copy()
        extra = {"summary": {"method": "ddp", "updates": self.t, "eval_seconds": self.eval_seconds,
                             "comm_fraction": float("nan")}}
        import torch.distributed as dist
        dist.destroy_process_group()
        return R.make_result(xs, tr_loss, self.t, status, msg, test_loss=te_loss, test_accuracy=te_acc,
                             epochs=self.t * per_step / p.n_train, extra_groups=extra, solution={"x": xs})

    def state_dict(self) -> dict[str, Any] | None:
        rngs = self.comm.gather_obj(json.dumps(self.rng.bit_generator.state))
        if self.comm.rank != 0:
            return None
        return {"x": self.flat.flat_np.copy(), "u": self.u.copy(), "t": self.t, "rng": rngs,
                "buffers": self.flat.buffers_vector(), "n_ranks": self.comm.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        x = np.asarray(state["x"], np.float32)
        if x.shape != (self.flat.n,):
            raise CheckpointError(f"checkpoint x has {x.size} parameters, the model has {self.flat.n}")
        self.flat.flat_np[:] = x
        self.u[:] = np.asarray(state["u"], np.float32)
        self.t = int(state["t"])
        if np.asarray(state["buffers"]).size:
            self.flat.load_buffers_vector(np.asarray(state["buffers"]))
        if int(state["n_ranks"]) == self.comm.size:
            self.rng.bit_generator.state = json.loads(state["rng"][self.comm.rank])
        else:
            seed = int(self.ctx.cfg.get("seed", 0))
            self.rng = np.random.default_rng([seed, self.comm.rank, 0xDD, self.t])
