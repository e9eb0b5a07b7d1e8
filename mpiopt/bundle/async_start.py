"""The start without a synchronous first round (``start=async``, asynchronous variants only).

The synchronous start waits for every oracle at x1 before the first QP. Here x1 goes to every oracle
too, but the master takes a step at each answer (as the variant says) while f_up = +inf and
f_low = -inf. The rules (docs/level_bundle.md, "Start without a synchronous first round")::

    S = the components that have answered (all at x1 first; a component without an answer has no
        cut and is left out of the model and of the level)
    while S != all:          the level method on the sub-sum f_S = sum_{i in S} f^i, whose bracket is
                             finite: up_S = sum_{i in S} fu^i(x1), low_S = min_X of the newest cuts
                             (raised to lev_S by each infeasible sub-QP)
        lev_S = up_S - alpha (up_S - low_S)              (line 15 while f_up = +inf, f_low = -inf)
        x+    = argmin ||x - x1||^2 over {x in X : fv_S(x) <= lev_S}
        nothing about f* follows: f_low and f_up stay infinite
    S = all (the last oracle's first answer):
        f_up  = min(f_up, sum_i fu^i(x1)),  x_best = x1  (every component has evaluated x1)
        f_low = min_X fv (aggregate cuts, then the exact LP with lp_start)   -> the usual method

A worker none of whose components has answered x1 (only after a resume) gets x1 again.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .qp import INFEASIBLE, OPTIMAL, LevelQP, aggregate_bound

MAX_SUB_QPS = 30                     # infeasible sub-QPs in one step before the step gives up (no move)


class AsyncStart:
    """State of the start phase: first values at x1, the sub-sum's lower bound, the first move."""

    def __init__(self, n: int, m: int, lower: np.ndarray, upper: np.ndarray, params: Any):
        self.m, self.lower, self.upper, self.p = m, lower, upper, params
        self.fu1 = np.zeros(m)                   # fu^i(x1) of the components that answered x1
        self.seen = np.zeros(m, dtype=bool)      # components that answered x1
        self.active = True                       # still in the start phase
        self.low = -math.inf                     # lower bound of min_X fv_S raised by infeasible sub-QPs
        self.low_size = 0                        # |S| that bound belongs to
        self.gap = math.inf                      # up_S - low_S after the last step
        self.first_move_evals = np.full(m, -1, dtype=np.int64)   # oracle calls when x+ first left x1
        self._qps: dict[int, LevelQP] = {}

    def record(self, comps: np.ndarray, fu: np.ndarray, iteration: int) -> None:
        """An answer: iteration 0 is the point x1."""
        if iteration == 0:
            self.fu1[comps] = fu
            self.seen[comps] = True

    def complete(self) -> bool:
        return bool(self.seen.all())

    def _qp(self, size: int) -> LevelQP:
        if size not in self._qps:
            p = self.p
            self._qps[size] = LevelQP(self.lower, self.upper, size, p.qp_solver, p.eps_prox, time_limit=p.time_limit)
        return self._qps[size]

    def step(self, model: Any, xc: np.ndarray) -> tuple[np.ndarray | None, float, int, float]:
        """One level step on the sub-sum f_S: (x+ or None, lev_S, QPs solved, QP seconds)."""
        S = np.flatnonzero(self.seen)
        index = np.full(self.m, -1, dtype=np.int64)
        index[S] = np.arange(S.size)
        G, e, comp = model.rows
        rows = self.seen[comp]                   # (a component has cuts only once it answered x1)
        G, e, cs = G[rows], e[rows], index[comp[rows]]
        up = float(self.fu1[S].sum())
        low = aggregate_bound(G, e, cs, None, S.size, self.lower, self.upper)
        if self.low_size == S.size:
            low = max(low, self.low)
        qp, x, lev, qps, secs = self._qp(S.size), None, math.nan, 0, 0.0
        while qps < MAX_SUB_QPS:
            lev = up - self.p.alpha * (up - low)
            res = qp.solve(G, e, cs, xc, lev)
            qps, secs = qps + 1, secs + res.seconds
            if res.status == OPTIMAL:
                x = res.x
                low = max(low, aggregate_bound(G, e, cs, res.lam, S.size, self.lower, self.upper))
                break
            if res.status != INFEASIBLE or lev >= up:
                break
            low = lev                            # the sub-model cannot reach lev_S
        self.low, self.low_size, self.gap = low, S.size, max(up - low, 0.0)
        return x, lev, qps, secs

    def take_step(self, M: Any) -> None:
        """Master ``M``'s step while the phase lasts (a :class:`~mpiopt.bundle.master.LevelBundleMaster`)."""
        x, M.lev, qps, secs = self.step(M.model, M.xc)
        M.k += qps
        M.qp_seconds += secs
        dist = math.nan
        if x is not None:
            M.x_next, M.pending, dist = x, True, float(np.linalg.norm(x - M.xc))
            if self.first_move_evals[0] < 0 and np.any(x != M.x1):
                self.first_move_evals[:] = M.evals
        M.trace.add(M.k, M.cycle, M.f_low, M.f_up, M.lev, dist, 0, int(x is None))

    def finish(self, M: Any) -> None:
        """The last oracle's first answer: f_up = f(x1) (every component evaluated x1), f_low = min_X fv
        by the aggregate cuts (and the exact LP with lp_start); the usual method from here."""
        self.active = False
        M.improve_upper(M.x1, float(self.fu1.sum()))
        G, e, comp = M.model.rows
        M.f_low = min(aggregate_bound(G, e, comp, None, M.m, M.lower, M.upper), M.f_up)
        if M.p.lp_start:
            M.lp_bound()
        M.gap_ref = M.gap

    def state_dict(self) -> dict[str, Any]:
        return {"as_fu1": self.fu1.copy(), "as_seen": self.seen.astype(np.int64), "as_active": int(self.active),
                "as_low": self.low, "as_low_size": self.low_size, "as_gap": self.gap,
                "as_first_move_evals": self.first_move_evals.copy()}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        if "as_fu1" not in st:
            return
        self.fu1[:] = st["as_fu1"]
        self.seen[:] = np.asarray(st["as_seen"]).astype(bool)
        self.active = bool(int(st["as_active"]))
        self.low, self.low_size, self.gap = float(st["as_low"]), int(st["as_low_size"]), float(st["as_gap"])
        self.first_move_evals[:] = st["as_first_move_evals"]
