"""The master's subproblems behind one interface.

- :class:`LevelQP`: project the centre xc onto the level set {x in [l, u] : fv(x) <= lev}:
  ``min 0.5||x - xc||^2  s.t.  <g_k, x> - r_{i(k)} <= -e_k,  sum_i r_i <= lev,  l <= x <= u``.
  DAQP (dense dual active set, positive ``eps_prox``) by default, HiGHS QP as the fallback when
  DAQP fails, stops at its time limit or is missing. Infeasible iff lev < min_X fv. A HiGHS solve
  that stops at its time limit reports FAILED (the master then stops with status FAILED).
- :func:`aggregate_bound`: the cheap lower bound min_X of the aggregate cuts built from the QP
  multipliers (a valid bound on min_X fv <= f*).
- :class:`ModelLP`: the exact min_X fv with a persistent HiGHS model (rows added per cut); a solve
  that stops at its time limit gives no bound (None), the bound then stays as it was.

Every solve has a time limit (:mod:`mpiopt.bundle.highs`; ``time_limit`` seconds, default the
process-wide setting).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import highs

OPTIMAL, INFEASIBLE, FAILED = "optimal", "infeasible", "failed"
BIG = 1e30


@dataclass
class QPResult:
    status: str                                  # optimal | infeasible | failed
    x: np.ndarray | None = None
    lam: np.ndarray | None = None                # multiplier per cut (>= 0)
    solver: str = ""
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


def box_min_linear(c: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """min over the box of <c, x>."""
    return float(np.minimum(c * lower, c * upper).sum())


def aggregate_bound(G: np.ndarray, e: np.ndarray, comp: np.ndarray, lam: np.ndarray | None, m: int,
                    lower: np.ndarray, upper: np.ndarray) -> float:
    """Lower bound on min_X fv from one aggregate cut per component: the cuts of component i weighted by
    their normalised multipliers (all zero: its newest cut), summed over components, minimised over X."""
    k = G.shape[0]
    w = np.zeros(k) if lam is None else np.maximum(np.asarray(lam, dtype=np.float64), 0.0)
    tot = np.bincount(comp, weights=w, minlength=m)
    empty = tot <= 0
    if empty.any():                     # newest cut (largest row index) of those components
        last = np.full(m, -1)
        np.maximum.at(last, comp, np.arange(k))
        idx = last[empty]
        w[idx] = 1.0
        tot[empty] = 1.0
    w = w / tot[comp]
    c = w @ G
    return float(w @ e) + box_min_linear(c, lower, upper)


class LevelQP:
    """min 0.5||x - xc||^2 over {x in [lower, upper], fv(x) <= lev}; one call per solve (cold)."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray, m: int, solver: str = "daqp",
                 eps_prox: float = 1e-6, iter_limit: int = 100000, time_limit: float | None = None):
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.n = self.lower.size
        self.m = int(m)
        self.solver = solver
        self.eps_prox = float(eps_prox)
        self.iter_limit = int(iter_limit)
        self.time_limit = highs.settings()["time_limit"] if time_limit is None else float(time_limit)
        self.fallbacks = 0
        self.retries = 0
        self._daqp = None
        try:
            import daqp
            self._daqp = daqp
        except ImportError:
            self.solver = "highs"

    def solve(self, G: np.ndarray, e: np.ndarray, comp: np.ndarray, xc: np.ndarray, lev: float) -> QPResult:
        import time
        t = time.perf_counter()
        res = None
        if self._daqp is not None and self.solver == "daqp":
            for scale in (1.0, 10.0, 100.0):       # DAQP may report cycling on near-degenerate levels
                res = self._solve_daqp(G, e, comp, xc, lev, self.eps_prox * scale)
                if res.status != FAILED:
                    break
                self.retries += 1
        if res is None or res.status == FAILED:
            self.fallbacks += res is not None
            res = self._solve_highs(G, e, comp, xc, lev)
        res.seconds = time.perf_counter() - t
        return res

    def solve_other(self, G: np.ndarray, e: np.ndarray, comp: np.ndarray, xc: np.ndarray, lev: float) -> QPResult:
        """The same QP with the other solver (HiGHS when DAQP is the default, DAQP otherwise if present):
        the second opinion on a result the first solver may have got wrong."""
        import time
        t = time.perf_counter()
        if self._daqp is not None and self.solver == "highs":
            res = self._solve_daqp(G, e, comp, xc, lev, self.eps_prox)
        else:
            res = self._solve_highs(G, e, comp, xc, lev)
        res.seconds = time.perf_counter() - t
        return res

    def _matrix(self, G: np.ndarray, comp: np.ndarray) -> np.ndarray:
        k, n, m = G.shape[0], self.n, self.m
        A = np.zeros((k + 1, n + m))
        A[:k, :n] = G
        A[np.arange(k), n + comp] = -1.0
        A[k, n:] = 1.0
        return A

    def _solve_daqp(self, G, e, comp, xc, lev, eps_prox: float) -> QPResult:
        from ctypes import c_int
        n, m, k = self.n, self.m, G.shape[0]
        H = np.zeros((n + m, n + m))
        H[np.arange(n), np.arange(n)] = 1.0
        f = np.concatenate([-xc, np.zeros(m)])
        A = self._matrix(G, comp)
        bu = np.concatenate([self.upper, -e, [lev]])
        bl = np.concatenate([self.lower, np.full(k + 1, -BIG)])
        sense = np.zeros(n + k + 1, dtype=c_int)
        limit = self.time_limit if 0 < self.time_limit < float("inf") else 0.0
        x, _, flag, info = self._daqp.solve(H, f, A, bu, bl, sense, eps_prox=eps_prox,
                                            iter_limit=self.iter_limit, time_limit=limit)
        if flag == -1:
            return QPResult(INFEASIBLE, solver="daqp", info={"exitflag": int(flag)})
        if flag < 0 or x is None or not np.all(np.isfinite(x)):
            return QPResult(FAILED, solver="daqp", info={"exitflag": int(flag)})
        lam = np.asarray(info["lam"])[n:n + k].copy()
        xs = np.clip(np.asarray(x[:n], dtype=np.float64), self.lower, self.upper)
        return QPResult(OPTIMAL, xs, lam, "daqp", info={"exitflag": int(flag)})

    def _solve_highs(self, G, e, comp, xc, lev) -> QPResult:
        import highspy
        n, m, k = self.n, self.m, G.shape[0]
        h = highs.new_model(time_limit=self.time_limit)
        inf = highspy.kHighsInf
        h.addVars(n + m, np.concatenate([self.lower, np.full(m, -inf)]),
                  np.concatenate([self.upper, np.full(m, inf)]))
        h.changeColsCost(n, np.arange(n, dtype=np.int32), -np.asarray(xc, dtype=np.float64))
        A = self._matrix(G, comp)
        _add_dense_rows(h, A, np.full(k + 1, -inf), np.concatenate([-e, [lev]]))
        hess = highspy.HighsHessian()
        hess.dim_ = n + m
        hess.format_ = highspy.HessianFormat.kTriangular
        hess.start_ = np.r_[np.arange(n + 1), np.full(m, n)].astype(np.int32)
        hess.index_ = np.arange(n, dtype=np.int32)
        hess.value_ = np.ones(n)
        h.passHessian(hess)
        h.run()
        st = h.getModelStatus()
        if st == highspy.HighsModelStatus.kInfeasible:
            return QPResult(INFEASIBLE, solver="highs")
        if st != highspy.HighsModelStatus.kOptimal:
            return QPResult(FAILED, solver="highs", info={"status": str(st)})
        sol = h.getSolution()
        x = np.clip(np.asarray(sol.col_value[:n]), self.lower, self.upper)
        lam = np.maximum(-np.asarray(sol.row_dual[:k]), 0.0)
        return QPResult(OPTIMAL, x, lam, "highs")


def _add_dense_rows(h: Any, A: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    nz = A != 0
    starts = np.r_[0, np.cumsum(nz.sum(axis=1))[:-1]].astype(np.int32)
    idx = np.nonzero(nz)[1].astype(np.int32)
    h.addRows(A.shape[0], lo, hi, int(idx.size), starts, idx, A[nz])


class ModelLP:
    """min_X fv(x) = min sum_i r_i s.t. <g_k, x> - r_{i(k)} <= -e_k, x in [lower, upper]: a persistent
    HiGHS model; new cuts are added as rows, a compression (model version change) rebuilds it."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray, m: int, time_limit: float | None = None):
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.n, self.m = self.lower.size, int(m)
        self.time_limit = time_limit
        self.timeouts = 0
        self._h = None
        self._rows = 0
        self._version = -1
        self.seconds = 0.0
        self.calls = 0

    def _build(self) -> None:
        import highspy
        h = highs.new_model(time_limit=self.time_limit)
        h.setOptionValue("presolve", "off")
        inf = highspy.kHighsInf
        n, m = self.n, self.m
        h.addVars(n + m, np.concatenate([self.lower, np.full(m, -inf)]),
                  np.concatenate([self.upper, np.full(m, inf)]))
        h.changeColsCost(m, np.arange(n, n + m, dtype=np.int32), np.ones(m))
        self._h, self._rows = h, 0

    def solve(self, model: "Any") -> float | None:
        """The exact min_X fv of ``model`` (a :class:`~mpiopt.bundle.model.CutModel`), or None on failure."""
        import time

        import highspy
        t = time.perf_counter()
        if self._h is None or model.version != self._version or model.count < self._rows:
            self._build()
            self._version = model.version
        G, e, comp = model.rows
        if model.count > self._rows:
            s = slice(self._rows, model.count)
            k = model.count - self._rows
            A = np.zeros((k, self.n + self.m))
            A[:, :self.n] = G[s]
            A[np.arange(k), self.n + comp[s]] = -1.0
            _add_dense_rows(self._h, A, np.full(k, -highspy.kHighsInf), -e[s])
            self._rows = model.count
        self._h.run()
        self.calls += 1
        self.seconds += time.perf_counter() - t
        status = self._h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            if status == highspy.HighsModelStatus.kTimeLimit:
                self.timeouts += 1
                self._h = None                 # rebuild next time (no half-solved state carried on)
            return None
        # a valid bound whatever the final accuracy: evaluate the dual objective
        sol = self._h.getSolution()
        y = np.minimum(np.asarray(sol.row_dual[:self._rows]), 0.0)     # duals of <= rows are <= 0
        w = -y
        tot = np.bincount(comp, weights=w, minlength=self.m)
        if np.any(tot <= 0):
            return float(self._h.getInfo().objective_function_value)
        # normalise per component (dual feasibility needs sum of weights = 1 per component)
        w = w / tot[comp]
        return float(w @ e) + box_min_linear(w @ G, self.lower, self.upper)
