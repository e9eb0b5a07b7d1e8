"""A worker of ``async_subgradient``: Algorithm 1 of the paper on the shared model, and its telemetry."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from ...comm.shared_model import SAMPLES
from ...nn.flat import partition_elements
from ...nn.train import add_penalties, loss_and_grad, momentum_delta, step_size
from ...rng import RankStreams

RNG_TAG = 0xA5


class PhaseTimer:
    """Wall-clock and thread-CPU seconds of a worker's phases (``comm``: RMA reads and writes,
    ``compute``: sampling, forward, backward, update). The CPU clock is read outside the wall
    interval, so a wait for the core after a syscall counts as wall time of the next phase only."""

    def __init__(self) -> None:
        self.wall = {"comm": 0.0, "compute": 0.0}
        self.cpu = {"comm": 0.0, "compute": 0.0}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        c0, t0 = time.thread_time(), time.perf_counter()
        try:
            yield
        finally:
            t1, c1 = time.perf_counter(), time.thread_time()
            self.wall[name] += t1 - t0
            self.cpu[name] += c1 - c0

    def fractions(self) -> tuple[float, float]:
        """(comm share of wall time, comm share of CPU time)."""
        w, c = self.wall, self.cpu
        return (w["comm"] / max(1e-12, w["comm"] + w["compute"]), c["comm"] / max(1e-12, c["comm"] + c["compute"]))

    def totals(self) -> dict[str, float]:
        return {"comm_seconds": self.wall["comm"], "compute_seconds": self.wall["compute"],
                "comm_cpu_seconds": self.cpu["comm"], "compute_cpu_seconds": self.cpu["compute"]}


class Worker:
    """Worker c: its momentum ``u`` over the coordinates it writes, its update count ``k``, its step
    factor ``alpha`` and its random stream. :meth:`step` is one iteration of Algorithm 1. With shared
    BatchNorm statistics (``bn=shared``) it reads them with x and writes their change with its update."""

    def __init__(self, problem: Any, opts: dict[str, Any], flat: Any, model: Any, control: Any, comm: Any,
                 seed: int, active: bool, subblocks: int = 1):
        self.problem, self.opts, self.flat, self.model, self.control = problem, opts, flat, model, control
        self.streams = RankStreams(comm, seed, RNG_TAG)
        self.alpha = float(self.rng.uniform(opts["alpha_low"], opts["alpha_high"]))
        self.lo, self.hi = model.writable(active)
        self.u = np.zeros(self.hi - self.lo, np.float32)
        self.delta = np.zeros(self.hi - self.lo, np.float32)
        self.k = 0
        self.perm = np.zeros(0, np.int64)
        self.perm_pos = 0
        self.pieces = [(self.lo + a, self.lo + b) for a, b in partition_elements(self.hi - self.lo, subblocks)
                       if b > a] or [(self.lo, self.hi)]
        if active and (self.lo, self.hi) != (0, flat.n) and len(self.pieces) == 1:
            flat.set_trainable(self.lo, self.hi)               # partial backward: own block only
        self.timer = PhaseTimer()
        self.rows: dict[str, list[float]] = {}
        self.shared_stats = opts["bn"] == "shared" and flat.n_stats > 0
        self.stats_old = np.zeros(flat.n_stats if self.shared_stats else 0, np.float32)
        self.stats_delta = np.zeros_like(self.stats_old)

    @property
    def rng(self) -> np.random.Generator:
        return self.streams.rng

    # -- Algorithm 1 ---------------------------------------------------------------------------
    def step(self) -> float:
        """Read x, draw a minibatch, take the subgradient at what was read, update u and write
        ``-(1-m) * alpha * gamma / sqrt(k) * u`` into the writable block. Shared statistics: read
        with x, moved by the forward pass, their change ``new - old`` written with the update.
        Returns the batch loss."""
        o, flat, T = self.opts, self.flat, self.timer
        shared = self.shared_stats
        with T.phase("comm"):
            self.model.read(flat.state_np if shared else flat.flat_np)   # xhat = read(x) (and the statistics)
        with T.phase("compute"):
            if shared:
                np.copyto(self.stats_old, flat.stats_np)
            X, y = self.problem.train_batch(self.sample())            # minibatch xi
            lo, hi = self.piece()                                     # block i in I_c
            loss = loss_and_grad(flat, X, y)                          # g = subgradient at xhat
            g = flat.grad_np[lo:hi]
            add_penalties(g, flat.flat_np[lo:hi], o["weight_decay"], o["l1"])
            self.k += 1
            a, b = lo - self.lo, hi - self.lo                         # u = m u + g; delta = -(1-m) gamma_k u
            delta = momentum_delta(self.u[a:b], g, o["momentum"], self.step_size(), out=self.delta[a:b])
            if shared:                                                # momentum * (batch - old)
                np.subtract(flat.stats_np, self.stats_old, out=self.stats_delta)
        with T.phase("comm"):
            self.model.write(delta, lo, hi, o["batch_size"],          # x_i += delta
                             self.stats_delta if shared else None)
        return loss

    def piece(self) -> tuple[int, int]:
        """The block this update writes: the whole writable range, or one random piece of it."""
        if len(self.pieces) == 1:
            return self.pieces[0]
        lo, hi = self.pieces[int(self.rng.integers(len(self.pieces)))]
        self.flat.set_trainable(lo, hi)
        return lo, hi

    def sample(self) -> np.ndarray:
        """Minibatch indices: uniform with replacement (paper) or from shuffled passes."""
        N, b = self.problem.n_train, self.opts["batch_size"]
        if self.opts["sampling"] == "uniform":
            return self.rng.integers(0, N, size=b)
        if self.perm_pos + b > self.perm.size:
            self.perm = self.rng.permutation(N)
            self.perm_pos = 0
        idx = self.perm[self.perm_pos:self.perm_pos + b]
        self.perm_pos += b
        return idx

    def step_size(self) -> float:
        """alpha_c * gamma / sqrt(k): k is this worker's update count, or 1 + the global epoch."""
        if self.opts["step_counter"] == "update":
            k = self.k
        else:
            k = int(self.control.read(SAMPLES) / self.problem.n_train) + 1
        return step_size(self.opts["gamma"], self.alpha, k)

    # -- telemetry ---------------------------------------------------------------------------
    def add_row(self, time_s: float, epoch: float, loss: float, updates_per_s: float) -> None:
        """One row of this worker's own history (``/workers/rankN``)."""
        comm_fraction, comm_cpu_fraction = self.timer.fractions()
        row = {"time": time_s, "k": self.k, "epoch": epoch, "train_loss": loss, "updates_per_s": updates_per_s,
               "comm_fraction": comm_fraction, "comm_cpu_fraction": comm_cpu_fraction}
        for key, v in row.items():
            self.rows.setdefault(key, []).append(float(v))

    def report(self) -> dict[str, Any]:
        """This worker's history and totals for the result file."""
        return {**{k: np.asarray(v) for k, v in self.rows.items()}, "k": self.k, **self.timer.totals(),
                "reads": self.model.overlaps.reads, "overlapped_reads": self.model.overlaps.overlapped}

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"u": self.u.copy(), "k": self.k, "alpha": self.alpha, "lo": self.lo, "hi": self.hi,
                "perm": self.perm.copy(), "perm_pos": self.perm_pos, "buffers": self.flat.buffers_vector()}

    def load(self, mine: dict[str, Any]) -> None:
        self.u[:] = np.asarray(mine["u"], np.float32)
        self.k = int(mine["k"])
        self.alpha = float(mine["alpha"])
        self.perm = np.asarray(mine["perm"], np.int64)
        self.perm_pos = int(mine["perm_pos"])
        if np.asarray(mine["buffers"]).size:
            self.flat.load_buffers_vector(np.asarray(mine["buffers"]))
