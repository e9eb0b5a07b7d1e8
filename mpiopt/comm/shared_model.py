"""The MPI plumbing of a model shared through one-sided windows (the asynchronous methods' shared memory).

- :class:`Control`      small int64 window on the host (rank 0): the ASSM lock word, the pause/active
                        words of the consistent-snapshot protocol, global update/sample counters and
                        the sync request counter that brings every rank into a collective (checkpoint,
                        stop). Workers touch it with element-atomic ``Fetch_and_op``/``Accumulate``.
- :class:`HostedVector` the whole parameter vector in a window hosted by rank 0 (HW, ASSM, SGD):
                        lock-free ``Get`` (or ``Get_accumulate`` NO_OP) reads, ``Accumulate(SUM)`` writes.
- :class:`BlockVector`  PASSM: block j of the vector hosted by its owner, who updates it in place; a
                        version word per block (odd while writing) gives consistent per-block reads.
- :class:`HostedModel`  what the solver uses for ``hw``/``assm``/``sgd``: a HostedVector with the
                        shared BatchNorm statistics (if any) and a write counter riding along, reads
                        and writes in the chosen mode (lock-free plain Get / Get-add-Put,
                        element-atomic Accumulate, under the lock), counts of applied writes and of
                        reads that overlapped a write.
- :class:`BlockModel`   the same surface for ``passm`` over a BlockVector; shared statistics live in a
                        small HostedVector on the host, written with element-atomic Accumulate.

Shared statistics (BatchNorm running mean/variance, ``n_stats`` float32 elements) are written as
increments: a worker reads them with the parameters, its forward pass moves them to
``old + momentum * (batch - old)``, and it adds ``new - old`` to the shared copy with its parameter
write, in the same write mode (so hw's plain writes can lose a statistics increment with the
parameter increment, assm's are under the lock, passm's are element-atomic and never lost).
- :func:`host_loop`     the snapshot rank's loop: take a snapshot every ``every`` seconds until a
                        sync is needed, sleeping politely in between.

Every window is an :class:`~mpiopt.comm.rma.Window` (Allocate/Allocate_shared, one NOCHECK epoch,
Flush after each operation), so no operation waits for a busy host (docs/mpi.md, "One-sided (RMA)
windows").

Nothing outside this package touches window memory: the solver reads and writes the model, asks
for the applied-write counts and the state through the methods below.
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
LOCK, PAUSE, ACTIVE, SYNC, REQUEST, UPDATES, SAMPLES, STARTED = range(8)
N_CONTROL = 8
WRITE_MODES = ("plain", "atomic")


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

    def begin_write(self) -> None:
        """A worker is about to write the shared vector (STARTED += 1; UPDATES counts finished ones)."""
        self.win.fetch_and_op(HOST, STARTED, 1, MPI.SUM)

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
    def locked(self, on: bool = True) -> Iterator[None]:
        """Hold the ASSM lock (``on``) for the duration of the block."""
        if on:
            self.lock.acquire()
        try:
            yield
        finally:
            if on:
                self.lock.release()

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

    def read(self, out: np.ndarray, atomic: bool = False, offset: int = 0) -> np.ndarray:
        """``out.size`` elements from ``offset`` into ``out`` (lock-free; ``atomic``: element-atomic
        Get_accumulate)."""
        t = time.perf_counter()
        if atomic:
            self.win.get_atomic(HOST, out, offset)
        else:
            self.win.get(HOST, out, offset)
        self.rma_seconds += time.perf_counter() - t
        return out

    def add(self, delta: np.ndarray) -> None:
        """``x += delta``, element-atomic (Accumulate SUM): concurrent adds are never lost."""
        t = time.perf_counter()
        self.win.accumulate(HOST, delta)
        self.rma_seconds += time.perf_counter() - t

    def put(self, data: np.ndarray) -> None:
        """``x <- data`` with a plain ``Put`` (not atomic: may interleave with other writes)."""
        t = time.perf_counter()
        self.win.put(HOST, data)
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

    def version(self, j: int) -> int:
        """The version word of block ``j`` (odd while its owner writes; 2 per completed write)."""
        return int(self.ver.fetch_and_op(self.owners[j], 0, 0, MPI.NO_OP))

    def set_version(self, v: int) -> None:
        """Owner, while nobody reads: set its block's version word."""
        self.ver.fetch_and_op(self.comm.rank, 0, int(v), MPI.REPLACE)

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


class _Overlaps:
    """Reads that overlapped a write: writes finished before the read began (UPDATES) against
    writes begun before it ended (STARTED); more begun than finished means a write was in flight
    during the read, so the read may mix versions (a torn read)."""

    def __init__(self, control: Control, enabled: bool):
        self.control = control
        self.enabled = enabled
        self.reads = 0
        self.overlapped = 0

    def before(self) -> int:
        return self.control.read(UPDATES) if self.enabled else 0

    def after(self, finished: int) -> None:
        self.reads += 1
        if self.enabled and self.control.read(STARTED) > finished:
            self.overlapped += 1


class HostedModel:
    """The shared vector of ``hw``/``assm``/``sgd``: ``n`` float32 parameters hosted by rank 0, then
    ``n_stats`` shared statistics, then one element that counts applied writes (it rides along in
    every write, so a write that is overwritten loses its count too).

    ``writes``: ``plain`` (Get the current x, add, Put it back, no atomics: concurrent writes can
    overwrite each other, as in shared-memory Hogwild) or ``atomic`` (element-atomic
    ``Accumulate(SUM)``: no write is lost). ``lock_reads``/``lock_writes`` hold the spin lock of
    ``control`` around reads/writes. ``consistent`` brackets writes with the pause/active protocol
    (consistent snapshots). ``read_atomic`` reads with ``Get_accumulate(NO_OP)``.
    """

    def __init__(self, comm: Comm, n: int, control: Control, shared: bool = False, *, writes: str = "atomic",
                 lock_reads: bool = False, lock_writes: bool = False, consistent: bool = False,
                 read_atomic: bool = False, count_overlaps: bool = True, n_stats: int = 0):
        if writes not in WRITE_MODES:
            raise ValueError(f"writes must be one of {WRITE_MODES}")
        self.comm, self.n, self.control = comm, int(n), control
        self.n_stats = int(n_stats)
        self.vec = HostedVector(comm, self.n + self.n_stats + 1, shared=shared)
        self.writes, self.lock_reads, self.lock_writes = writes, lock_reads, lock_writes
        self.consistent, self.read_atomic = consistent, read_atomic
        self.overlaps = _Overlaps(control, count_overlaps)
        self._inc = np.zeros(self.n + self.n_stats + 1, np.float32)
        self._cur = np.zeros(self.n + self.n_stats + 1, np.float32) if writes == "plain" else None

    def writable(self, is_worker: bool) -> tuple[int, int]:
        """The coordinates a worker writes: all of them."""
        return (0, self.n) if is_worker else (0, 0)

    def read(self, out: np.ndarray) -> np.ndarray:
        """Worker: ``out[:n] <- x`` and, if ``out`` is longer, ``out[n:] <- `` the shared statistics
        (one Get; lock-free unless ``lock_reads``)."""
        with self.control.locked(self.lock_reads):
            finished = self.overlaps.before()
            self.vec.read(out[:self.n + self.n_stats] if out.size > self.n else out[:self.n], self.read_atomic)
            self.overlaps.after(finished)
        return out

    def write(self, delta: np.ndarray, lo: int, hi: int, samples: int,
              stats_delta: np.ndarray | None = None) -> None:
        """Worker: ``x[lo:hi] += delta`` and ``stats += stats_delta`` (if given) in one write of
        the write mode; counts one update of ``samples`` samples."""
        inc = self._inc
        inc[lo:hi] = delta
        if stats_delta is not None and self.n_stats:
            inc[self.n:self.n + self.n_stats] = stats_delta
        inc[-1] = 1.0
        with self.control.writing(self.consistent, self.lock_writes):
            self.control.begin_write()
            if self._cur is None:
                self.vec.add(inc)
            else:
                cur = self._cur
                self.vec.read(cur)
                cur += inc
                self.vec.put(cur)
            self.control.count_update(samples)          # finished: before the lock is released

    def copy(self, consistent: bool) -> np.ndarray:
        """Host, while workers run: a copy of x (``consistent``: pause writers first)."""
        return self.copy_state(consistent)[0]

    def copy_state(self, consistent: bool) -> tuple[np.ndarray, np.ndarray]:
        """Host, while workers run: copies of x and of the shared statistics, taken together
        (``consistent``: pause writers first)."""
        if consistent:
            with self.control.paused():
                v = self.vec.host_copy()
        else:
            v = self.vec.host_copy()
        return v[:self.n], v[self.n:self.n + self.n_stats]

    def store(self, x: np.ndarray, stats: np.ndarray | None = None) -> None:
        """While no worker writes: the host loads ``x`` and, if given, the statistics (the
        applied-write count is kept)."""
        if self.comm.rank == HOST:
            cur = self.vec.win.local
            st = cur[self.n:self.n + self.n_stats]
            if stats is not None and self.n_stats:
                st = np.asarray(stats, np.float32)
            self.vec.set_all(np.concatenate([np.asarray(x, np.float32), st, cur[-1:]]))

    def gather(self) -> np.ndarray | None:
        """Collective, while no worker writes: x on rank 0 (None elsewhere)."""
        return self.vec.win.local[:self.n].copy() if self.comm.rank == HOST else None

    def gather_stats(self) -> np.ndarray | None:
        """Collective, while no worker writes: the shared statistics on rank 0 (None elsewhere)."""
        return self.vec.win.local[self.n:self.n + self.n_stats].copy() if self.comm.rank == HOST else None

    def bytes_per_update(self) -> tuple[int, int]:
        """(bytes read, bytes moved by the write) of one worker update: plain writes get and put the
        whole vector, atomic ones accumulate it."""
        size = 4 * (self.n + self.n_stats + 1)
        return 4 * (self.n + self.n_stats), (2 * size if self._cur is not None else size)

    def applied(self) -> int:
        """Writes applied, as counted in the vector (rank 0; 0 elsewhere)."""
        return int(round(float(self.vec.win.local[-1]))) if self.comm.rank == HOST else 0

    def set_applied(self, count: int) -> None:
        if self.comm.rank == HOST:
            self.vec.win.local[-1] = np.float32(count)
            self.vec.win.sync()

    def free(self) -> None:
        self.vec.free()


class BlockModel:
    """``passm``: block j of the vector hosted and updated in place only by ``owners[j]``; the
    same surface as :class:`HostedModel`. The applied-write count of a block is its version / 2.
    Reads that overlapped a write are counted per block (version odd or changed across the read)."""

    def __init__(self, comm: Comm, n: int, ranges: list[tuple[int, int]], owners: list[int], control: Control,
                 shared: bool = False, *, count_overlaps: bool = True, n_stats: int = 0):
        self.comm, self.n, self.control = comm, int(n), control
        self.n_stats = int(n_stats)
        self.blocks = BlockVector(comm, n, ranges, owners, shared=shared)
        self.stats = HostedVector(comm, self.n_stats, shared=shared) if self.n_stats else None
        self.overlaps = _Overlaps(control, False)
        self.count_overlaps = count_overlaps
        self.block_reads = 0
        self.block_overlaps = 0

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return self.blocks.ranges

    @property
    def owners(self) -> list[int]:
        return self.blocks.owners

    def writable(self, is_worker: bool) -> tuple[int, int]:
        return self.blocks.my_range if is_worker else (0, 0)

    def read(self, out: np.ndarray) -> np.ndarray:
        """Worker: own block from local memory, the others lock-free from their owners; if ``out``
        is longer than n, ``out[n:]`` <- the statistics, lock-free from the host."""
        b = self.blocks
        self.overlaps.reads += 1
        if out.size > self.n and self.stats is not None:
            self.stats.read(out[self.n:self.n + self.n_stats])
        if not self.count_overlaps:
            return b.read_others(out)
        torn = False
        for j, (lo, hi) in enumerate(b.ranges):
            if hi == lo:
                continue
            if j == b.my_block:
                out[lo:hi] = b.local
                continue
            v1 = b.version(j)
            b.read_block(j, out[lo:hi])
            self.block_reads += 1
            if v1 % 2 == 1 or b.version(j) != v1:
                self.block_overlaps += 1
                torn = True
        self.overlaps.overlapped += torn
        return out

    def write(self, delta: np.ndarray, lo: int, hi: int, samples: int,
              stats_delta: np.ndarray | None = None) -> None:
        """Owner: ``x[lo:hi] += delta`` in place (single writer, no lock); ``stats += stats_delta``
        on the host with element-atomic Accumulate (every worker writes every statistic)."""
        a = self.blocks.my_range[0]
        with self.blocks.writing() as mine:
            mine[lo - a:hi - a] += delta
        if stats_delta is not None and self.stats is not None:
            self.stats.add(stats_delta)
        self.control.count_update(samples)

    def copy(self, consistent: bool) -> np.ndarray:
        """Host, while workers run: every block (``consistent``: each block one version)."""
        return self.blocks.read_all(np.empty(self.n, np.float32), consistent)

    def copy_state(self, consistent: bool) -> tuple[np.ndarray, np.ndarray]:
        """Host, while workers run: every block and a plain copy of the statistics."""
        st = self.stats.host_copy() if self.stats is not None else np.zeros(0, np.float32)
        return self.copy(consistent), st

    def store(self, x: np.ndarray, stats: np.ndarray | None = None) -> None:
        self.blocks.set_mine(np.asarray(x, np.float32))
        if stats is not None and self.stats is not None and self.comm.rank == HOST:
            self.stats.set_all(np.asarray(stats, np.float32))

    def gather_stats(self) -> np.ndarray | None:
        """Collective, while no worker writes: the shared statistics on rank 0 (None elsewhere)."""
        if self.comm.rank != HOST:
            return None
        return self.stats.win.local.copy() if self.stats is not None else np.zeros(0, np.float32)

    def bytes_per_update(self) -> tuple[int, int]:
        """(bytes read, bytes moved by the write) of one update by the owner of the largest block:
        the other blocks and the statistics are read; only the statistics increment crosses a window."""
        own = max(hi - lo for lo, hi in self.ranges)
        return 4 * (self.n - own + self.n_stats), 4 * self.n_stats

    def gather(self) -> np.ndarray | None:
        """Collective, while no worker writes: x on rank 0 (None elsewhere)."""
        lo, _ = self.blocks.my_range
        parts = self.comm.gather_obj((lo, self.blocks.local.copy()))
        if self.comm.rank != HOST:
            return None
        x = np.zeros(self.n, np.float32)
        for a, block in parts:
            x[a:a + block.size] = block
        return x

    def applied(self) -> int:
        """Writes applied to this rank's block (its version / 2; 0 without a block)."""
        return self.blocks.version(self.blocks.my_block) // 2 if self.blocks.my_block is not None else 0

    def set_applied(self, count: int) -> None:
        if self.blocks.my_block is not None:
            self.blocks.set_version(2 * int(count))

    def free(self) -> None:
        if self.stats is not None:
            self.stats.free()
        self.blocks.free()


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
