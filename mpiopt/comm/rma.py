"""One-sided (RMA) windows that work while the target computes.

Measured with MPICH (docs/mpi.md), ``Win.Lock``/``Unlock`` waits until the target
enters MPI, and ``Win.Create`` windows stall even under NOCHECK. What works, and what this module
does: memory from ``Win.Allocate`` (or ``Win.Allocate_shared`` on one node), ONE
``Lock_all(MODE_NOCHECK)`` epoch for the window's lifetime, ``Flush(target)`` after each operation,
``Unlock_all`` before ``Free``. Accumulate-family operations and compare-and-swap are element-atomic.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
from mpi4py import MPI
from mpi4py.util.dtlib import from_numpy_dtype

from .core import Comm, mark_progress, polite_sleep_until


class Window:
    """A window of ``count`` elements of ``dtype`` hosted by each rank (``count`` may differ per rank;
    0 on ranks that host nothing). ``local`` is a numpy view of this rank's part.

    ``shared=True`` uses ``Allocate_shared`` (all ranks on one node): ``shared_view(rank)`` then gives
    direct load/store access to another rank's part. Collective to create and to :meth:`free`.
    """

    def __init__(self, comm: Comm, count: int, dtype: Any = np.float64, shared: bool = False):
        self.comm = comm
        self.dtype = np.dtype(dtype)
        self.mpi_type = from_numpy_dtype(self.dtype)
        self.itemsize = self.dtype.itemsize
        self.shared = shared
        nbytes = int(count) * self.itemsize
        if shared:
            self.win = MPI.Win.Allocate_shared(nbytes, self.itemsize, comm=comm.mpi)
        else:
            self.win = MPI.Win.Allocate(nbytes, self.itemsize, comm=comm.mpi)
        mem = self.win.tomemory()
        self.local = np.frombuffer(mem, dtype=self.dtype, count=int(count)) if count else np.empty(0, self.dtype)
        self.local[:] = 0
        self.counts = comm.allgather_obj(int(count))
        comm.Barrier()
        self.win.Lock_all(MPI.MODE_NOCHECK)
        self._open = True
        self._scalar = np.empty(1, dtype=self.dtype)
        self._scalar2 = np.empty(1, dtype=self.dtype)
        self._result = np.empty(1, dtype=self.dtype)

    # -- whole-buffer operations (each completes before returning) ---------------------------
    def _target(self, offset: int, count: int) -> tuple[int, int, MPI.Datatype]:
        return (int(offset), int(count), self.mpi_type)

    def get(self, target: int, out: np.ndarray, offset: int = 0) -> np.ndarray:
        """Read ``out.size`` elements at ``offset`` of ``target``'s part (may see a write mid-way)."""
        self.win.Get(out, target, self._target(offset, out.size))
        self.win.Flush(target)
        self.comm.stats.add("rma_get", out.nbytes)
        mark_progress()
        return out

    def get_atomic(self, target: int, out: np.ndarray, offset: int = 0) -> np.ndarray:
        """Element-atomic read (``Get_accumulate`` with NO_OP)."""
        self.win.Get_accumulate(out, out, target, self._target(offset, out.size), op=MPI.NO_OP)
        self.win.Flush(target)
        self.comm.stats.add("rma_get", out.nbytes)
        mark_progress()
        return out

    def put(self, target: int, data: np.ndarray, offset: int = 0) -> None:
        self.win.Put(np.ascontiguousarray(data, dtype=self.dtype), target, self._target(offset, data.size))
        self.win.Flush(target)
        self.comm.stats.add("rma_put", data.nbytes)
        mark_progress()

    def accumulate(self, target: int, data: np.ndarray, offset: int = 0, op: MPI.Op = MPI.SUM) -> None:
        """Element-atomic ``target[offset:] op= data`` (SUM by default; REPLACE for atomic writes)."""
        self.win.Accumulate(np.ascontiguousarray(data, dtype=self.dtype), target,
                            self._target(offset, data.size), op=op)
        self.win.Flush(target)
        self.comm.stats.add("rma_accumulate", data.nbytes)
        mark_progress()

    # -- single-element atomics ------------------------------------------------------------
    def fetch_and_op(self, target: int, offset: int, value: float = 0, op: MPI.Op = MPI.SUM) -> Any:
        """Atomically apply ``op`` with ``value`` at one element; returns the old value.
        ``op=MPI.NO_OP`` reads, ``MPI.REPLACE`` writes."""
        self._scalar[0] = value
        self.win.Fetch_and_op(self._scalar, self._result, target, int(offset), op)
        self.win.Flush(target)
        return self._result[0].item()

    def compare_and_swap(self, target: int, offset: int, compare: float, value: float) -> Any:
        """Atomically set the element to ``value`` if it equals ``compare``; returns the old value."""
        self._scalar[0] = value
        self._scalar2[0] = compare
        self.win.Compare_and_swap(self._scalar, self._scalar2, self._result, target, int(offset))
        self.win.Flush(target)
        return self._result[0].item()

    def sync(self) -> None:
        """Make this rank's direct stores to ``local`` visible to RMA readers (memory barrier)."""
        self.win.Sync()

    def shared_view(self, rank: int) -> np.ndarray:
        """Direct numpy view of ``rank``'s part (``shared=True`` windows only)."""
        if not self.shared:
            raise RuntimeError("shared_view needs a window created with shared=True")
        mem, _ = self.win.Shared_query(rank)
        return np.frombuffer(mem, dtype=self.dtype, count=self.counts[rank])

    def free(self) -> None:
        """Collective: close the epoch and free the window."""
        if self._open:
            self._open = False
            self.win.Unlock_all()
            self.comm.Barrier()
            self.local = np.empty(0, self.dtype)
            self.win.Free()

    def __enter__(self) -> "Window":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.free()


class SpinLock:
    """A mutex word in a window, taken with compare-and-swap: works while the host computes
    (``mpi4py.util.sync.Mutex`` uses a lock epoch without NOCHECK and waits for the host)."""

    def __init__(self, window: Window, host: int = 0, offset: int = 0):
        self.window = window
        self.host = host
        self.offset = offset
        self.me = window.comm.rank + 1

    def acquire(self) -> None:
        w = self.window
        polite_sleep_until(lambda: w.compare_and_swap(self.host, self.offset, 0, self.me) == 0)

    def release(self) -> None:
        self.window.fetch_and_op(self.host, self.offset, 0, MPI.REPLACE)

    def __enter__(self) -> "SpinLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class SeqlockRecord:
    """A small record of float64 fields published by one writer and read without blocking it.

    Layout in the host's window: ``[seq, field_0, ..., field_{n-1}]``. The writer makes ``seq`` odd,
    writes the fields, makes it even; a reader retries until it sees the same even ``seq`` before
    and after reading the fields. Readers never wait for the writer to enter MPI.
    """

    def __init__(self, comm: Comm, fields: list[str], host: int = 0):
        self.fields = list(fields)
        self.host = host
        self.comm = comm
        self.window = Window(comm, len(fields) + 1 if comm.rank == host else 0, np.float64)
        self._buf = np.empty(len(fields), dtype=np.float64)

    def publish(self, **values: float) -> None:
        """Writer side (any single rank; usually the host)."""
        w = self.window
        for name in values:
            if name not in self.fields:
                raise KeyError(name)
        current = self.read() if len(values) < len(self.fields) else None
        buf = np.array([values.get(f, current[f] if current else np.nan) for f in self.fields])
        w.fetch_and_op(self.host, 0, 1.0, MPI.SUM)        # seq odd: write in progress
        w.accumulate(self.host, buf, offset=1, op=MPI.REPLACE)
        w.fetch_and_op(self.host, 0, 1.0, MPI.SUM)        # seq even: consistent

    def read(self, max_wait: float = 5.0) -> dict[str, float]:
        """A consistent snapshot of the fields (never a mix of two publications)."""
        w = self.window
        t_end = time.perf_counter() + max_wait
        while True:
            s1 = w.fetch_and_op(self.host, 0, 0.0, MPI.NO_OP)
            if int(s1) % 2 == 0:
                w.get_atomic(self.host, self._buf, offset=1)
                s2 = w.fetch_and_op(self.host, 0, 0.0, MPI.NO_OP)
                if s1 == s2:
                    out = dict(zip(self.fields, self._buf.tolist()))
                    out["seq"] = s1
                    return out
            if time.perf_counter() > t_end:
                raise TimeoutError("seqlock: writer did not finish a publication in time")
            time.sleep(20e-6)

    def free(self) -> None:
        self.window.free()
