"""The plain projected subgradient method in the master interface (the baseline of the benchmark).

    x_{k+1} = P_X(x_k - t_k g_k),  g_k = sum_i g^i(x_k)  (all oracles at x_k: synchronous)
    t_k = (f(x_k) - f*) / ||g_k||^2   (Polyak, when f* is known)
          or step0 * diam(X) / (||g_k|| sqrt(k + 1))

f_up = min_k f(x_k); f_low = max_k min_X [f(x_k) + <g_k, x - x_k>] (valid, usually weak).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .. import result as R
from .protocol import Answer, Master, Request, Trace
from .qp import box_min_linear


class SubgradientMaster(Master):
    """Same driver interface as :class:`~mpiopt.bundle.master.LevelBundleMaster` (variant sync)."""

    def __init__(self, n: int, m: int, lower: np.ndarray, upper: np.ndarray, owners: Sequence[Sequence[int]],
                 *, fstar: float | None = None, step0: float = 0.1, rtol: float = 1e-6, atol: float = 0.0,
                 max_iter: int = 100000, x0: np.ndarray | None = None):
        self.n, self.m = int(n), int(m)
        self.lower, self.upper = np.asarray(lower, float), np.asarray(upper, float)
        self.owners = [np.asarray(o, dtype=np.int64) for o in owners]
        self.W = len(self.owners)
        self.fstar, self.step0, self.rtol, self.atol, self.max_iter = fstar, step0, rtol, atol, max_iter
        self.diam = float(np.linalg.norm(self.upper - self.lower))
        self.x = 0.5 * (self.lower + self.upper) if x0 is None else np.clip(x0, self.lower, self.upper)
        self.x_next = self.x.copy()
        self.x_best = self.x.copy()
        self.f_low, self.f_up, self.lev = -math.inf, math.inf, math.nan
        self.k = self.steps = self.answers = self.cycle = self.n_infeasible = 0
        self.evals = np.zeros(self.m, dtype=np.int64)
        self.qp_seconds = self.lp_seconds = 0.0
        self.idle = np.ones(self.W, dtype=bool)
        self.phase = "new"
        self.init_outcome()
        self.exact = True
        self.trace = Trace()
        self._fl = np.zeros(self.m)
        self._fu = np.zeros(self.m)
        self._g = np.zeros((self.m, self.n))
        self._seen = np.zeros(self.m, dtype=bool)
        self.pending = False

    def start(self) -> list[Request]:
        self.phase = "run"
        return self._send_all()

    def _send_all(self) -> list[Request]:
        self._seen[:] = False
        self.idle[:] = False
        self.pending = False
        return [Request(w, self.k, -1, 0.0, self.x) for w in range(self.W)]

    def dispatch(self) -> list[Request]:
        if self.done or not self.pending or not self.idle.all():
            return []
        return self._send_all()

    def receive(self, answers: Sequence[Answer]) -> None:
        for a in answers:
            self.idle[a.worker] = True
            c = np.asarray(a.comps, dtype=np.int64)
            self._fl[c], self._fu[c] = a.fl, a.fu
            self._g[c] = np.asarray(a.G).reshape(c.size, self.n)
            self._seen[c] = True
            self.evals[c] += 1
            self.answers += 1
        if self.done or not self._seen.all():
            return
        self.steps += 1
        x, fx, g = self.x, float(self._fu.sum()), self._g.sum(axis=0)
        if fx < self.f_up:
            self.f_up, self.x_best = fx, x.copy()
        lin = float(self._fl.sum() - g @ x) + box_min_linear(g, self.lower, self.upper)
        self.f_low = max(self.f_low, min(lin, self.f_up))
        self.k += 1
        self.trace.add(self.k, 0, self.f_low, self.f_up, math.nan, math.nan, 0, 0)
        if self.gap <= max(self.atol, self.rtol * max(1.0, abs(self.f_up))):
            self.finish(R.CONVERGED, "gap", f"gap {self.gap:.3e} below tolerance")
            return
        if self.k >= self.max_iter:
            self.finish(R.MAX_ITER, "max_iter", f"reached max_iter={self.max_iter}")
            return
        gn2 = float(g @ g)
        if gn2 == 0.0:
            self.finish(R.CONVERGED, "zero_subgradient", "zero subgradient: x is optimal")
            return
        if self.fstar is not None:
            t = max(fx - self.fstar, 0.0) / gn2
        else:
            t = self.step0 * self.diam / (math.sqrt(gn2) * math.sqrt(self.k))
        self.x = np.clip(x - t * g, self.lower, self.upper)
        self.x_next = self.x
        self.pending = True

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x.copy(), "x_best": self.x_best.copy(), "f_low": self.f_low, "f_up": self.f_up,
                "k": self.k, "steps": self.steps, "answers": self.answers, "evals": self.evals.copy(),
                "phase": self.phase, "pending": int(self.pending)}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.x = np.asarray(st["x"], float).copy()
        self.x_next = self.x
        self.x_best = np.asarray(st["x_best"], float).copy()
        self.f_low, self.f_up = float(st["f_low"]), float(st["f_up"])
        self.k, self.steps, self.answers = int(st["k"]), int(st["steps"]), int(st["answers"])
        self.evals[:] = st["evals"]
        self.phase = str(st["phase"])
        self.pending = bool(int(st["pending"])) or self.phase == "run"
        self.idle[:] = True
