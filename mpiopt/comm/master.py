"""Master/worker messaging for asynchronous oracle methods (rank 0 = master, ranks 1..P-1 = workers).

Messages are float64 vectors in preallocated buffers:

- POINT (master -> worker): ``[kind, iter_id, coord_id, eta, x(n)]``; kind EVAL, POLL or STOP.
- ANSWER (worker -> master): ``[iter_id, coord_id, status, (comp, fl, fu, g(n)) per owned component]``;
  status -1 announces an exception on the worker, whose text follows with tag ERROR.

The master keeps one posted ``Irecv`` per busy worker (each worker has at most one point in flight)
and collects answers with ``Testsome`` under a polite wait. STOP protocol: idle workers get STOP at
once; for a busy worker the master first waits for its in-flight answer (a computing worker cannot
poll), discards it and then sends STOP, so no request is left pending and no rank hangs.
POLL ``[POLL, iteration, checkpoint, status]`` carries the master's decision to every (idle) worker:
checkpoint together now (all ranks), then stop with ``status`` (``NO_STOP``: go on).
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
from mpi4py import MPI

from .core import Comm, polite_sleep_until, polite_wait

TAG_POINT, TAG_ANSWER, TAG_ERROR = 101, 102, 103
STOP, EVAL, POLL = 0.0, 1.0, 2.0
HEADER_POINT = 4
HEADER_ANSWER = 3


def answer_size(n: int, n_comps: int) -> int:
    """Length of an answer buffer for a worker owning ``n_comps`` components."""
    return HEADER_ANSWER + n_comps * (3 + n)


class MasterChannel:
    """Rank 0's side. Worker w is rank w + 1 and owns ``n_comps[w]`` components."""

    def __init__(self, comm: Comm, n: int, n_comps: Sequence[int]):
        self.comm, self.mpi, self.n = comm, comm.mpi, int(n)
        self.W = len(n_comps)
        self.send_buf = [np.zeros(HEADER_POINT + self.n) for _ in range(self.W)]
        self.recv_buf = [np.zeros(answer_size(self.n, c)) for c in n_comps]
        self.recv_req: list[MPI.Request | None] = [None] * self.W
        self.send_req: list[MPI.Request | None] = [None] * self.W
        self.busy = np.zeros(self.W, dtype=bool)
        self.wait_seconds = 0.0

    def _isend(self, w: int, kind: float, iter_id: int = 0, coord_id: int = -1, eta: float = 0.0,
               x: np.ndarray | None = None) -> None:
        if self.send_req[w] is not None:           # the previous point was received long ago
            polite_wait(self.send_req[w])
        buf = self.send_buf[w]
        buf[:HEADER_POINT] = (kind, iter_id, coord_id, eta)
        if x is not None:
            buf[HEADER_POINT:] = x
        self.send_req[w] = self.mpi.Isend(buf, w + 1, TAG_POINT)
        self.comm.stats.add("point", buf.nbytes)

    def send_point(self, w: int, iter_id: int, coord_id: int, eta: float, x: np.ndarray) -> None:
        """Post the answer receive, then send an EVAL point to worker ``w``."""
        if self.busy[w]:
            raise RuntimeError(f"worker {w} already has a point in flight")
        self.recv_req[w] = self.mpi.Irecv(self.recv_buf[w], w + 1, TAG_ANSWER)
        self.busy[w] = True
        self._isend(w, EVAL, iter_id, coord_id, eta, x)

    def wait_answers(self, deadline: float | None = None) -> list[int]:
        """Workers whose answers have arrived (all of them that are ready: one batch). Waits politely
        for at least one, or until ``deadline`` (perf_counter seconds; then returns [])."""
        ws = np.flatnonzero(self.busy)
        if ws.size == 0:
            return []
        reqs = [self.recv_req[w] for w in ws]
        done: list[int] = []

        def ready() -> bool:
            idx = MPI.Request.Testsome(reqs)
            if idx:
                done.extend(int(ws[i]) for i in idx)
                for i in idx:
                    reqs[i] = MPI.REQUEST_NULL
            return bool(done) or (deadline is not None and time.perf_counter() >= deadline)

        t = time.perf_counter()
        polite_sleep_until(ready, spin=2e-4)
        self.wait_seconds += time.perf_counter() - t
        for w in done:
            self.busy[w] = False
            self.recv_req[w] = None
        return sorted(done)

    def answer(self, w: int) -> np.ndarray:
        """The answer buffer of worker ``w`` (valid until its next point)."""
        return self.recv_buf[w]

    def error_text(self, w: int) -> str:
        """The exception text a failing worker sends after its status -1 answer."""
        st = MPI.Status()
        polite_sleep_until(lambda: self.mpi.Iprobe(w + 1, TAG_ERROR, st))
        return self.mpi.recv(source=w + 1, tag=TAG_ERROR)

    def poll_all(self, iteration: int, checkpoint: bool, status: int) -> None:
        """Tell every (idle) worker the decision of the poll at ``iteration``: checkpoint together now,
        then stop with ``status`` (a :mod:`mpiopt.result` code) or go on (``NO_STOP``)."""
        if self.busy.any():
            raise RuntimeError("poll_all needs every worker idle")
        for w in range(self.W):
            self._isend(w, POLL, iteration, int(checkpoint), float(status))

    def stop_all(self, on_discard: Callable[[int], None] | None = None) -> None:
        """STOP every worker: idle ones at once, busy ones after their in-flight answer (discarded,
        or handed to ``on_discard(w)``). Returns when every STOP has been sent and completed."""
        for w in np.flatnonzero(~self.busy):
            self._isend(int(w), STOP)
        while self.busy.any():
            for w in self.wait_answers():
                if self.recv_buf[w][2] < 0:        # the worker failed meanwhile: drain its text
                    self.error_text(w)
                if on_discard is not None:
                    on_discard(w)
                self._isend(w, STOP)
        for r in self.send_req:
            if r is not None:
                polite_wait(r)
        self.send_req = [None] * self.W


class WorkerChannel:
    """A worker's side: receive points, send answers."""

    def __init__(self, comm: Comm, n: int, n_comps: int):
        self.comm, self.mpi, self.n = comm, comm.mpi, int(n)
        self.point = np.zeros(HEADER_POINT + self.n)
        self.out = np.zeros(answer_size(self.n, n_comps))
        self._send_req: MPI.Request | None = None
        self.idle_seconds = 0.0

    def recv(self) -> tuple[float, int, int, float, np.ndarray]:
        """Wait (politely) for the next message: ``(kind, iter_id, coord_id, eta, x)``; for POLL
        ``coord_id`` is the checkpoint flag and ``eta`` the stop status."""
        t = time.perf_counter()
        polite_wait(self.mpi.Irecv(self.point, 0, TAG_POINT), spin=2e-4)
        self.idle_seconds += time.perf_counter() - t
        p = self.point
        return float(p[0]), int(p[1]), int(p[2]), float(p[3]), p[HEADER_POINT:]

    def answer_buffer(self) -> np.ndarray:
        """The answer buffer to fill (after the previous answer's send completed)."""
        if self._send_req is not None:
            polite_wait(self._send_req)
            self._send_req = None
        return self.out

    def send_answer(self) -> None:
        self._send_req = self.mpi.Isend(self.out, 0, TAG_ANSWER)
        self.comm.stats.add("answer", self.out.nbytes)

    def send_error(self, iter_id: int, text: str) -> None:
        """Report an exception: a status -1 answer, then the text."""
        buf = self.answer_buffer()
        buf[:HEADER_ANSWER] = (iter_id, -1, -1)
        self.send_answer()
        self.mpi.send(text, 0, TAG_ERROR)

    def finish(self) -> None:
        if self._send_req is not None:
            polite_wait(self._send_req)
            self._send_req = None
