"""The level problem and the certified lower bounds it gives: :class:`LevelProblem` projects the centre
onto the level set and says what that means for f_low; :class:`LowerBounds` holds the exact LP
min_X fv and checks every infeasible level QP against it (so that f_low = lev is certified, not the
QP solver's word)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .qp import FAILED, INFEASIBLE, OPTIMAL, LevelQP, ModelLP, QPResult, aggregate_bound

SETTLED = "settled"                  # an infeasible level QP whose bound the exact LP settled


class LowerBounds:
    """The exact LP of the cut model and the certification counters."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray, m: int, time_limit: float | None = None):
        self.lp = ModelLP(lower, upper, m, time_limit=time_limit)
        self.n_lp = 0                   # exact LPs solved
        self.n_lp_checks = 0            # feasible QPs whose level the LP had to settle
        self.n_certified = 0            # infeasible QPs confirmed by the exact LP
        self.n_uncertified = 0          # infeasible QPs accepted on two QP solvers' word (the LP failed)
        self.lp_seconds = 0.0

    def lp_value(self, model: Any) -> float | None:
        """min_X fv by the exact LP (a certified lower bound on it; None on LP failure)."""
        t = time.perf_counter()
        v = self.lp.solve(model)
        self.lp_seconds += time.perf_counter() - t
        self.n_lp += 1
        return v

    def certify_infeasible(self, res: QPResult, qp: LevelQP, model: Any, G: np.ndarray, e: np.ndarray,
                           comp: np.ndarray, xc: np.ndarray, lev: float,
                           f_low: float) -> tuple[QPResult, float | None, float]:
        """An infeasible level QP claims lev < min_X fv: the exact LP checks the claim (then f_low = lev
        is certified). When the LP finds min_X fv <= lev, the other QP solver decides; if it rejects
        the level too, the LP value ``v`` (itself a certified bound) settles it (status SETTLED: the
        caller raises f_low to v). When the LP fails, the other QP solver's agreement is accepted and
        counted as uncertified. Returns the result, v and the seconds of the second QP solve."""
        v = self.lp_value(model)
        if v is not None and v > lev:
            self.n_certified += 1
            return res, v, 0.0
        alt = qp.solve_other(G, e, comp, xc, lev)
        if alt.status == OPTIMAL:
            return alt, v, alt.seconds
        if v is None:
            self.n_uncertified += 1
            return (res if alt.status == INFEASIBLE else alt), v, alt.seconds
        if v > f_low:                        # the level is within the solvers' tolerances of min_X fv
            return QPResult(SETTLED, solver="lp"), v, alt.seconds
        return QPResult(FAILED, solver=f"{res.solver}+{alt.solver}",
                        info={"level": lev, "lp_min": v, "reason": "infeasibility not confirmed by the LP"}), v, alt.seconds

    SCALARS = ("n_lp", "n_lp_checks", "n_certified", "n_uncertified", "lp_seconds")


@dataclass
class Outcome:
    """One level QP: ``feasible`` (new point ``x``, multipliers ``lam``), ``infeasible`` (no point: the
    level is below min_X fv) or ``failed`` (``message``); ``f_low`` is the lower bound after it."""
    kind: str
    f_low: float
    x: np.ndarray | None = None
    lam: np.ndarray | None = None
    seconds: float = 0.0
    message: str = ""


class LevelProblem:
    """x+ = argmin ||x - xc||^2 over {x in X : fv(x) <= lev}, and the certified f_low that follows:
    an infeasible QP (checked by the exact LP when ``certify``) raises f_low to lev, a feasible one
    to the aggregate-cut bound."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray, m: int, params: Any):
        self.lower, self.upper, self.m = lower, upper, m
        self.qp = LevelQP(lower, upper, m, params.qp_solver, params.eps_prox, time_limit=params.time_limit)
        self.bounds = LowerBounds(lower, upper, m, time_limit=params.time_limit)

    def lp_bound(self, model: Any, f_low: float, f_up: float) -> tuple[float, float | None]:
        """(f_low raised to the exact LP's min_X fv, capped at f_up; min_X fv or None on LP failure)."""
        v = self.bounds.lp_value(model)
        if v is not None and v > f_low:
            f_low = min(v, f_up)
        return f_low, v

    def solve(self, model: Any, xc: np.ndarray, lev: float, f_low: float, f_up: float, certify: bool) -> Outcome:
        G, e, comp = model.rows
        res = self.qp.solve(G, e, comp, xc, lev)
        secs = res.seconds
        if res.status == INFEASIBLE and certify:
            res, v, extra = self.bounds.certify_infeasible(res, self.qp, model, G, e, comp, xc, lev, f_low)
            secs += extra
            if res.status == SETTLED:
                return Outcome("infeasible", min(v, f_up), seconds=secs)
        if res.status == INFEASIBLE:
            return Outcome("infeasible", max(f_low, min(lev, f_up)), seconds=secs)
        if res.status == FAILED:
            return Outcome("failed", f_low, seconds=secs, message=f"level QP failed ({res.solver}: {res.info})")
        if model.value(res.x) > lev + 1e-9 * max(1.0, abs(lev)):
            # the QP solver accepted the level within its tolerance: settle it with the exact LP
            self.bounds.n_lp_checks += 1
            f_low, v = self.lp_bound(model, f_low, f_up)
            if v is not None and v > lev:
                return Outcome("infeasible", f_low, seconds=secs)
        f_low = max(f_low, min(aggregate_bound(G, e, comp, res.lam, self.m, self.lower, self.upper), f_up))
        return Outcome("feasible", f_low, res.x, res.lam, seconds=secs)
