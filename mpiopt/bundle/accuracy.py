"""On-demand accuracy for inexact oracles: what the master asks for, and when it has to give up.

An inexact oracle answers ``(fl, g, fu)`` with ``fl <= f^i(z) <= fu``; its accuracy is ``fu - fl``.
The cuts use ``fl`` (valid minorants), the upper bounds ``fu``, so the gap stays a certificate, but
it can only close while ``alpha * gap > 2 * sum_i eta_i`` (``eta_i``: the accuracy of component i's
latest answer). Therefore::

    request(gap) = min(kappa * alpha * gap / (2m), cap)        cap = +inf at the start
    gap <= 2 sum(eta) / alpha  (stalled):
        the oracles can do better  ->  cap = half the largest accuracy they can still improve
                                       (new points ask for tighter answers; the run goes on)
        they cannot                ->  give up (status INEXACT, success false)

A component cannot do better when its latest answer missed the accuracy requested with it (for
example a MIP stopped at its time limit) or is already at the oracle's stated floor
(:meth:`mpiopt.problems.oracle.OracleProblem.accuracy_floor`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


class OnDemandAccuracy:
    def __init__(self, m: int, kappa: float, alpha: float, floors: Any = None):
        self.m = int(m)
        self.kappa, self.alpha = float(kappa), float(alpha)
        self.eta = np.zeros(self.m)                       # accuracy of each component's latest answer
        self.floor = np.zeros(self.m) if floors is None else np.asarray(floors, dtype=np.float64).copy()
        self.missed = np.zeros(self.m, dtype=bool)        # latest answer missed its request
        self.cap = math.inf
        self.tightened = 0                                # times the cap came down

    def request(self, gap: float) -> float:
        """The accuracy to ask for with a new point."""
        base = self.kappa * self.alpha * gap / (2 * self.m) if math.isfinite(gap) else math.inf
        return min(base, self.cap)

    def record(self, comps: np.ndarray, fl: np.ndarray, fu: np.ndarray, requested: float) -> None:
        acc = np.maximum(np.asarray(fu, dtype=np.float64) - np.asarray(fl, dtype=np.float64), 0.0)
        self.eta[comps] = acc
        self.missed[comps] = acc > requested * (1 + 1e-6) + 1e-12 if math.isfinite(requested) else False

    def stall_bound(self) -> float:
        """2 sum(eta) / alpha: the gap cannot close below this with the latest answers."""
        return 2.0 * float(self.eta.sum()) / self.alpha

    def best_bound(self) -> float:
        """2 sum(best accuracy the oracles can deliver) / alpha."""
        return 2.0 * float(np.where(self._stuck(), self.eta, self.floor).sum()) / self.alpha

    def _stuck(self) -> np.ndarray:
        return self.missed | (self.eta <= self.floor * (1 + 1e-9) + 1e-15)

    def give_up(self, gap: float) -> bool:
        """True when the gap is stalled by accuracies the oracles cannot improve; when it is stalled
        by accuracies they can improve, tighten the requests instead (and return False)."""
        if gap > self.stall_bound():
            return False
        if gap <= self.best_bound():
            return True
        free = ~self._stuck()
        cap = 0.5 * float(self.eta[free].max())
        if cap < self.cap:
            self.cap = cap
            self.tightened += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"acc_missed": self.missed.astype(np.int64), "acc_cap": self.cap, "acc_tightened": self.tightened}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        if "acc_cap" in st:
            self.missed[:] = np.asarray(st["acc_missed"]).astype(bool)
            self.cap = float(st["acc_cap"])
            self.tightened = int(st["acc_tightened"])
