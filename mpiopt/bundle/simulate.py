"""Discrete-event simulation of the master/oracle protocol: a virtual clock, seeded oracle delays,
real oracles and the real master logic (any :class:`~mpiopt.bundle.protocol.Master`), all in one process.

Every point sent at virtual time t to worker w comes back at t + sum of the delays of w's components
(drawn from the problem's :class:`~mpiopt.problems.oracle.DelayModel`). Answers that are due while
the master is busy are handed over together (one batch) when ``batch`` is on. The master's own time
per QP (and per exact LP) is ``qp_cost`` virtual seconds (0: free; ``"measured"``: the real QP and LP seconds), so results are
exactly reproducible for a fixed seed and ``qp_cost``.
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .. import result as R
from .protocol import Answer, Master, Request


@dataclass
class SimResult:
    time: float                                  # virtual time at the end
    history: dict[str, list] = field(default_factory=dict)
    busy: float = 0.0                            # virtual seconds the master spent in QPs


def evaluate_request(oracles: Sequence[Any], owners: Sequence[np.ndarray], req: Request, n: int) -> Answer:
    """Run the oracles of ``req.worker``'s components at ``req.x``."""
    comps = owners[req.worker]
    fl = np.empty(comps.size)
    fu = np.empty(comps.size)
    G = np.empty((comps.size, n))
    for j, i in enumerate(comps):
        fl[j], G[j], fu[j] = oracles[i](req.x, req.eta)
    return Answer(req.worker, req.iter_id, req.coord_id, comps, fl, fu, G)


def simulate(master: Master, oracles: Sequence[Any], delays: Any, *, batch: bool = True,
             qp_cost: float | str = 0.0, max_time: float = math.inf, max_steps: int = 10**7,
             on_step: Callable[[float], bool] | None = None) -> SimResult:
    """Drive ``master`` until it is done (or ``max_time`` virtual seconds / ``max_steps`` batches).

    ``on_step(t)`` is called after every master step; returning True stops the run (it may stop the
    master itself with its own status; otherwise the master is stopped with ``CALLBACK_STOP``)."""
    owners = master.owners
    heap: list = []
    seq = itertools.count()
    res = SimResult(0.0, {k: [] for k in ("time", "f_low", "f_up", "rel_gap", "lev", "k", "answers")})

    def send(reqs: list[Request], t: float) -> None:
        for r in reqs:
            ans = evaluate_request(oracles, owners, r, master.n)
            d = sum(delays.draw(int(i)) for i in owners[r.worker])
            heapq.heappush(heap, (t + d, next(seq), ans))

    def log(t: float) -> None:
        h = res.history
        h["time"].append(t)
        h["f_low"].append(master.f_low)
        h["f_up"].append(master.f_up)
        h["rel_gap"].append(master.gap / max(1.0, abs(master.f_up)))
        h["lev"].append(master.lev)
        h["k"].append(master.k)
        h["answers"].append(master.answers)

    t_free = 0.0
    send(master.start() if master.phase == "new" else master.dispatch(), 0.0)
    steps = 0
    while not master.done and heap and steps < max_steps:
        te, _, ans = heapq.heappop(heap)
        t = max(te, t_free)
        if t > max_time:
            master.stop(R.MAX_TIME, f"reached the virtual time budget {max_time}")
            break
        got = [ans]
        if batch:
            while heap and heap[0][0] <= t:
                got.append(heapq.heappop(heap)[2])
        k0, q0, l0 = master.k, master.qp_seconds + master.lp_seconds, master.n_lp
        s0 = master.steps
        if not master.admit(got):           # a NaN or infinity: the master stopped with FAILED
            break
        master.receive(got)
        if qp_cost == "measured":
            cost = master.qp_seconds + master.lp_seconds - q0
        else:                                    # an exact LP costs as much as a QP
            cost = float(qp_cost) * (master.k - k0 + master.n_lp - l0)
        res.busy += cost
        t_free = t + cost
        steps += 1
        if master.steps != s0:
            log(t_free)
            if on_step is not None and on_step(t_free) and not master.done:
                master.stop(R.CALLBACK_STOP, "stopped by the driver")
                break
        send(master.dispatch(), t_free)
    res.time = t_free
    return res
