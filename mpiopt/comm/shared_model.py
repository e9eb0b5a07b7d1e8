"""The MPI plumbing of a model shared through one-sided windows (seed 003's shared memory).

- :class:`Control`      small int64 window on the host (rank 0): the ASSM lock word, the pause/active
                        words of the consistent-snapshot protocol, global update/sample counters and
                        the sync request counter that brings every rank into a collective (checkpoint,
                        stop). Workers touch it with element-atomic ``Fetch_and_op``/``Accumulate``.
- :class:`HostedVector` the whole parameter vector in a window hosted by rank 0 (HW, ASSM, SGD):
                        lock-free ``Get`` (or ``Get_accumulate`` NO_OP) reads, ``Accumulate(SUM)`` writes.
- :class:`BlockVector`  PASSM: block j of the vector hosted by its owner, who updates it in place; a
                        version word per block (odd while writing) gives consistent per-block reads.
- :func:`host_loop`     the snapshot rank's loop: take a snapshot every ``every`` seconds until a
                        sync is needed, sleeping politely in between.

Every window is an :class:`~mpiopt.comm.rma.Window` (Allocate/Allocate_shared, one NOCHECK epoch,
Flush after each operation), so no operation waits for a busy host (platform.md).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
from mpi4py import MPI

from .core import Comm, polite_sleep_until
from .rma import SpinLock, Window

HOST = 0

# control words (int64) on the host
LOCK, PAUSE, ACTIVE, SYNC, REQUEST, UPDATES, SAMPLES = range(7)
N_CONTROL = 7


def single_node(comm: Comm) -> bool:
    """Whether all ranks share one node (then windows use ``Allocate_shared``)."""
    node = comm.mpi.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_size() == comm.size
    finally:
        node.Free()


class Control:
    """Control words on the host; see the module docstring. Collective to create and free."""

    def __init__(self, comm: Comm, shared: bool = False):
        self.comm = comm
        self.win = Window(comm, N_CONTROL if comm.rank == HOST else 0, np.int64, shared=shared)
        self.lock = SpinLock(self.win, host=HOST, offset=LOCK)
        self._count = np.zeros(2, dtype=np.int64)
        self.seen_sync = 0

    # -- counters ---------------------------------------------------------------------------
    def count_update(self, samples: int) -> None:
        """One worker update of ``samples`` samples: UPDATES += 1, SAMPLES += samples (atomic)."""
        self._count[0], self._count[1] = 1, samples
        self.win.accumulate(HOST, self._count, offset=UPDATES)

    def read(self, word: int) -> int:
        return int(self.win.fetch_and_op(HOST, word, 0, MPI.NO_OP))

    def write(self, word: int, value: int) -> None:
        self.win.fetch_and_op(HOST, word, int(value), MPI.REPLACE)

    def counters(self) -> tuple[int, int]:
        """(global updates, global samples)."""
        return self.read(UPDATES), self.read(SAMPLES)

    # -- sync requests (collective phases) ----------------------------------------------------
    def request_sync(self) -> None:
        """Host: ask every rank to join the next collective phase."""
        self.win.fetch_and_op(HOST, SYNC, 1, MPI.SUM)

    def sync_pending(self) -> bool:
        """Worker: whether a sync was requested since the last one this rank joined."""
        return self.read(SYNC) != self.seen_sync

    def joined_sync(self) -> None:
        self.seen_sync = self.read(SYNC)

    def request_from_worker(self) -> None:
        """A worker asks the host for a sync (e.g. it received a signal)."""
        self.write(REQUEST, 1)

    # -- consistent writes (pause-flag protocol) ---------------------------------------------
    @contextmanager
    def writing(self, consistent: bool, locked: bool) -> Iterator[None]:
        """Bracket one write of the shared vector. ``consistent``: register as active unless the
        snapshot rank paused writers (then wait until it resumes). ``locked``: hold the ASSM lock."""
        w = self.win
        if consistent:
            while True:
                w.fetch_and_op(HOST, ACTIVE, 1, MPI.SUM)
                if w.fetch_and_op(HOST, PAUSE, 0, MPI.NO_OP) == 0:
                    break
                w.fetch_and_op(HOST, ACTIVE, -1, MPI.SUM)
                polite_sleep_until(lambda: w.fetch_and_op(HOST, PAUSE, 0, MPI.NO_OP) == 0, spin=0.0)
        if locked:
            self.lock.acquire()
        try:
            yield
        finally:
            if locked:
                self.lock.release()
            if consistent:
                w.fetch_and_op(HOST, ACTIVE, -1, MPI.SUM)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Host: stop new writes and wait for writes in flight to finish (a consistent cut)."""
        w = self.win
        w.fetch_and_op(HOST, PAUSE, 1, MPI.REPLACE)
        polite_sleep_until(lambda: w.fetch_and_op(HOST, ACTIVE, 0, MPI.NO_OP) == 0, spin=0.0)
        try:
            yield
        finally:
            w.fetch_and_op(HOST, PAUSE, 0, MPI.REPLACE)

    def free(self) -> None:
        self.win.free()


class HostedVector:
    """The whole float32 vector of ``n`` elements in a window on the host (HW, ASSM, SGD)."""

    def __init__(self, comm: Comm, n: int, shared: bool = False):
        self.comm = comm
        self.n = int(n)
        self.win = Window(comm, self.n if comm.rank == HOST else 0, np.float32, shared=shared)
        self.rma_seconds = 0.0

    def read(self, out: np.ndarray, atomic: bool = False) -> np.ndarray:
        """The whole vector into ``out`` (lock-free; ``atomic``: element-atomic Get_accumulate)."""
        t = time.perf_counter()
        if atomic:
            self.win.get_atomic(HOST, out)
        else:
            self.win.get(HOST, out)
        self.rma_seconds += time.perf_counter() - t
        return out

    def add(self, delta: np.ndarray) -> None:
        """``x += delta``, element-atomic (Accumulate SUM): concurrent adds are never lost."""
        t = time.perf_counter()
        self.win.accumulate(HOST, delta)
        self.rma_seconds += time.perf_counter() - t

    def host_copy(self) -> np.ndarray:
        """Host only: a plain copy of the vector (may be torn if writers are active)."""
        self.win.sync()
        return self.win.local.copy()

    def set_all(self, x: np.ndarray) -> None:
        """Host only, while no worker writes: overwrite the vector."""
        self.win.local[:] = x
        self.win.sync()

    def free(self) -> None:
        self.win.free()


class BlockVector:
    """PASSM: contiguous blocks ``ranges[j] = (lo, hi)`` of the vector, block j hosted and updated
    only by rank ``owners[j]``, with a version word per block (odd while its owner writes)."""

    def __init__(self, comm: Comm, n: int, ranges: list[tuple[int, int]], owners: list[int],
                 shared: bool = False):
        self.comm = comm
        self.n = int(n)
        self.ranges = [(int(a), int(b)) for a, b in ranges]
        self.owners = [int(r) for r in owners]
        mine = [j for j, r in enumerate(self.owners) if r == comm.rank]
        if len(mine) > 1:
            raise ValueError("BlockVector: at most one block per rank")
        self.my_block: int | None = mine[0] if mine else None
        size = 0 if self.my_block is None else self.ranges[self.my_block][1] - self.ranges[self.my_block][0]
        self.win = Window(comm, size, np.float32, shared=shared)
        self.ver = Window(comm, 1 if self.my_block is not None else 0, np.int64, shared=shared)
        self.local = self.win.local
        self.rma_seconds = 0.0
        self.retries = 0

    @property
    def my_range(self) -> tuple[int, int]:
        return (0, 0) if self.my_block is None else self.ranges[self.my_block]

    def read_block(self, j: int, out: np.ndarray, consistent: bool = False, max_wait: float = 30.0) -> np.ndarray:
        """Block ``j`` into ``out`` (lock-free). ``consistent``: retry until the version word is the
        same even number before and after the read, so the block is one version, never a mix."""
        owner = self.owners[j]
        if not consistent:
            return self.win.get(owner, out)
        t_end = time.perf_counter() + max_wait
        while True:
            v1 = self.ver.fetch_and_op(owner, 0, 0, MPI.NO_OP)
            if v1 % 2 == 0:
                self.win.get(owner, out)
                if self.ver.fetch_and_op(owner, 0, 0, MPI.NO_OP) == v1:
                    return out
            self.retries += 1
            if time.perf_counter() > t_end:
                raise TimeoutError(f"block {j}: owner {owner} kept writing for {max_wait}s")
            time.sleep(20e-6)

    def read_others(self, flat: np.ndarray, consistent: bool = False) -> np.ndarray:
        """All blocks this rank does not own into their place in ``flat``; own block from memory."""
        t = time.perf_counter()
        for j, (lo, hi) in enumerate(self.ranges):
            if hi == lo:
                continue
            if j == self.my_block:
                flat[lo:hi] = self.local
            else:
                self.read_block(j, flat[lo:hi], consistent)
        self.rma_seconds += time.perf_counter() - t
        return flat

    def read_all(self, flat: np.ndarray, consistent: bool = False) -> np.ndarray:
        return self.read_others(flat, consistent)

    @contextmanager
    def writing(self) -> Iterator[np.ndarray]:
        """Owner: bracket an in-place update of ``local`` (version odd during, even after; the
        stores are made visible with ``Win.Sync`` before the version turns even)."""
        me = self.comm.rank
        self.ver.fetch_and_op(me, 0, 1, MPI.SUM)
        try:
            yield self.local
        finally:
            self.win.sync()
            self.ver.fetch_and_op(me, 0, 1, MPI.SUM)

    def set_mine(self, x: np.ndarray) -> None:
        """Owner, while nobody reads: load its block from the full vector ``x``."""
        lo, hi = self.my_range
        if hi > lo:
            self.local[:] = x[lo:hi]
            self.win.sync()

    def free(self) -> None:
        self.ver.free()
        self.win.free()


def host_loop(every: float, take: Callable[[], None], need_sync: Callable[[], bool],
              next_due: float | None = None, tick: float = 0.01) -> float:
    """The snapshot rank's loop: call ``take()`` every ``every`` seconds (``every <= 0``: never)
    until ``need_sync()`` is true; sleep in between (the host trains nothing and must not steal a
    core). Returns the time (perf_counter) the next snapshot is due."""
    due = time.perf_counter() + every if next_due is None else next_due
    while True:
        if need_sync():
            return due
        now = time.perf_counter()
        if every > 0 and now >= due:
            take()
            due = max(due + every, time.perf_counter())
            continue
        time.sleep(tick if every <= 0 else min(tick, max(0.0, due - now)))
