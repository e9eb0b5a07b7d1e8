"""The master's oracle bookkeeping: which worker has which point in flight (:class:`OracleBook`) and
the synchronous round being gathered (:class:`SyncRound`)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .protocol import Answer, Request
from .qp import box_min_linear


class OracleBook:
    """Per worker: idle or busy, the point in flight (iteration, coordination, x), the accuracy asked
    with it, its send order, and a(j), the iteration of its latest answered point."""

    def __init__(self, W: int):
        self.idle = np.ones(W, dtype=bool)
        self.sent_k = np.full(W, -1, dtype=np.int64)         # iteration of the last point sent
        self.sent_seq = np.zeros(W, dtype=np.int64)          # send order (oldest point in flight)
        self.sent_eta = np.full(W, math.inf)                 # accuracy requested with the point in flight
        self.answered_k = np.full(W, -1, dtype=np.int64)     # a(j): iteration of worker j's latest answered point
        self.n_sent = 0
        self.sent: dict[int, tuple[int, int, np.ndarray]] = {}
        self.laggard_answered = False                        # the batch holds the oldest point in flight

    def send(self, w: int, k: int, coord_id: int, eta: float, x: np.ndarray) -> Request:
        """Record point ``x`` of iteration ``k`` sent to worker ``w``; the request to send."""
        self.idle[w] = False
        self.sent_k[w] = k
        self.n_sent += 1
        self.sent_seq[w] = self.n_sent
        self.sent[w] = (k, coord_id, x)
        self.sent_eta[w] = eta
        return Request(w, k, coord_id, self.sent_eta[w], x)

    def note_batch(self, answers: Sequence[Answer]) -> None:
        """Before a batch is absorbed: does it hold the answer to the oldest point in flight?"""
        busy_seq = self.sent_seq[~self.idle]
        oldest = busy_seq.min() if busy_seq.size else -1
        self.laggard_answered = any(self.sent_seq[a.worker] == oldest for a in answers)

    def take(self, w: int) -> tuple[int, int, np.ndarray]:
        """Worker ``w`` answered: its (iteration, coordination id, point); it is idle again."""
        it, cid, z = self.sent.pop(w)
        self.answered_k[w] = it
        self.idle[w] = True
        return it, cid, z

    def drop(self, w: int) -> None:
        """An answer arriving after the stop: discarded, the worker is idle."""
        self.idle[w] = True
        self.sent.pop(w, None)

    def reset(self) -> None:
        """After a resume: nothing in flight."""
        self.idle[:] = True
        self.sent_k[:] = -1
        self.sent.clear()


class SyncRound:
    """The answers of a synchronous round (every worker at one point): held until all have arrived,
    then absorbed in worker order, so the run does not depend on the order of arrival."""

    def __init__(self, n: int, m: int, W: int):
        self.W = W
        self.held: list[Answer] = []
        self.fl = np.zeros(m)
        self.fu = np.zeros(m)
        self.g = np.zeros((m, n))
        self.seen = np.zeros(m, dtype=bool)

    def hold(self, answers: Sequence[Answer]) -> list[Answer] | None:
        """The whole round in worker order once every worker has answered (None before)."""
        self.held.extend(answers)
        if len(self.held) < self.W:
            return None
        out, self.held = sorted(self.held, key=lambda a: a.worker), []
        return out

    def record(self, comps: np.ndarray, fl: np.ndarray, fu: np.ndarray, G: np.ndarray) -> None:
        self.fl[comps] = fl
        self.fu[comps] = fu
        self.g[comps] = G
        self.seen[comps] = True

    def complete(self) -> bool:
        return bool(self.seen.all())

    def lower_bound(self, x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
        """min over the box of the round's aggregated linearisation at ``x``."""
        g = self.g.sum(axis=0)
        return float(self.fl.sum() - g @ x) + box_min_linear(g, lower, upper)


def step_due(book: OracleBook, p: Any, since: int, k: int, coord_done: bool, coordination: Any) -> bool:
    """Asynchronous variants: take a master step (QP) after ``since`` answers? ``p``: the master's
    Params. With ``qp_lazy`` an idle oracle that has not evaluated the newest point yet gets it
    without a new QP; a blocking coordination in flight holds every step."""
    idle = book.idle
    if p.qp_lazy:
        ready = coord_done or idle.all() or since >= idle.size or (
            since >= p.min_batch and any(book.sent_k[w] == k and coordination.for_worker(int(w)) is None
                                         for w in np.flatnonzero(idle)))
    else:
        ready = since >= min(p.min_batch, idle.size) or coord_done or idle.all()
    return ready and not (p.coord_blocking and coordination.active)
