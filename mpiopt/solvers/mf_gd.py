"""``mf_gd``: parallel gradient descent for matrix factorization on the HAMSI block grid (a
stand-in for the paper's unspecified gradient-descent comparison, not its code).

    mode=full:   x <- x - t grad f(x), t by Armijo backtracking on f (one data pass per gradient,
                 one per trial; every reduction summed in block order)
    mode=strata: x <- x - grad f_{s_e}(x) / beta_GD(e), s_e = (e+1) mod C: the stratified steps of
                 HAMSI without its curvature model

One solver step is one epoch: one full-gradient step, or C stratum steps.
"""
from __future__ import annotations

import math

import numpy as np

from .. import result as R
from ..options import Option
from ..registry import register_solver
from .base import Stop, numerical_failure
from .mf_base import GAMMA, SAFEGUARD, StratifiedMF, common_options

ARMIJO_TRIALS = 60
STATIONARY_RTOL = 1e-10   # stationary: the smallest trial step moves f by at most this (relative): rounding


@register_solver("mf_gd")
class MFGD(StratifiedMF):
    summary = "parallel gradient descent for matrix factorization (full gradient + Armijo, or stratified steps)"
    demo_settings = {"problem.n_ratings": 100000, "problem.latent_dim": 10, "solver.max_epochs": 30}
    failure_hint = "try a smaller solver.step0 (mode=full) or solver.safeguard=true (mode=strata)"
    options = (
        Option("mode", "full", "full: full gradient with Armijo backtracking; strata: one stratum per "
               "step with the 1/beta_GD schedule (HAMSI without the L-BFGS model)", str,
               choices=("full", "strata")),
        *common_options(max_epochs=50),
        GAMMA,
        Option("eta_gd", 0.001, "strata mode: step 1/(eta_gd (e+1))^gamma at inner step e", float,
               low=0.0, low_open=True),
        SAFEGUARD,
        Option("warmup_growth", True, "strata mode, with the safeguard: let the step multiplier double after "
               "each accepted step (finds the scale of the 1/nnz-normalized gradient)", bool),
        Option("step0", 1.0, "full mode: first trial step (scaled by nnz / max row or column count)",
               float, low=0.0, low_open=True),
        Option("armijo", 1e-4, "full mode: sufficient-decrease constant c in f(x - t g) <= f(x) - c t |g|^2",
               float, low=0.0, high=1.0, high_open=True),
        Option("grow", 2.0, "full mode: next first trial = grow * last accepted step", float, low=1.0),
    )

    def __init__(self, problem, options, ctx):
        super().__init__(problem, options, ctx)
        top = max(int(problem.row_counts.max()), int(problem.col_counts.max()), 1)
        self.t = options["step0"] * self.mf.nnz / top   # curvature of a row ~ count/nnz
        self.armijo_trials = 0

    def uses_safeguard(self) -> bool:
        return self.opts["mode"] == "strata" and super().uses_safeguard()   # full mode: Armijo is the safeguard

    def strata_steps(self) -> bool:
        return self.opts["mode"] == "strata"

    def step(self) -> Stop | None:
        if self.opts["mode"] == "strata":
            return super().step()
        with self.timed():
            stop = self.armijo_step()
        return self.end_epoch(stop)

    def armijo_step(self) -> Stop | None:
        """x <- x - t g with the first t (halved up to 60 times) that decreases f enough."""
        mf, o = self.mf, self.opts
        x, g, xt = mf.x, self.g, self.d
        f0 = float(mf.reduce(mf.full_loss_grad(x, g)[:, :1])[0])
        gg = mf.dot(g, g)
        t = self.t
        f1 = math.nan
        for _ in range(ARMIJO_TRIALS):
            self.armijo_trials += 1
            np.multiply(g, t, out=xt)
            np.subtract(x, xt, out=xt)
            f1 = float(mf.reduce(self.losses(xt)[:, :1])[0])
            if math.isfinite(f1) and f1 <= f0 - o["armijo"] * t * gg:
                x[...] = xt
                self.t = t * o["grow"]
                self.e += 1
                return None
            t *= 0.5
        return self.no_decrease(f0, gg, f1, 2.0 * t)

    def no_decrease(self, f0: float, gg: float, f1: float, t: float) -> Stop:
        """The stop when no trial was accepted (``f1``: objective at the smallest trial step ``t``):
        converged only when that step changed the objective by no more than rounding (stationary to
        working precision); a non-finite or worse objective there is a failure, never convergence."""
        epoch = self.nit + 1
        bad = self.watch("objective", f0, epoch) or self.watch("squared gradient norm", gg, epoch)
        if bad is None and not math.isfinite(f1):
            bad = numerical_failure("objective", f1, epoch, f"(the smallest Armijo trial step, {t:.3g}); "
                                    f"{self.failure_hint}", "epoch")
            self.failure = self.failure or bad
        if bad is not None:
            return bad
        if abs(f1 - f0) <= STATIONARY_RTOL * max(abs(f0), 1e-300):
            return Stop(R.CONVERGED, "Armijo backtracking found no decrease (stationary to working precision)")
        return Stop(R.FAILED, f"Armijo backtracking found no decrease in {ARMIJO_TRIALS} halvings at epoch {epoch}: "
                              f"the smallest trial step {t:.3g} gives objective {f1:.10g} > {f0:.10g} "
                              f"(not stationary); {self.failure_hint}")

    def losses(self, vec: np.ndarray) -> np.ndarray:
        """(q, 2) per-block partials [objective, sse] of the whole objective at ``vec``."""
        parts = np.zeros((self.mf.q, 2))
        for s in range(self.mf.nb):
            parts += self.mf.stratum_loss(s, vec)
        return parts

    def finish(self, stop):
        res = super().finish(stop)
        res["armijo_trials"] = self.armijo_trials
        return res

    def extra_state(self):
        st = super().extra_state()
        st["t"] = self.t
        st["armijo_trials"] = self.armijo_trials
        return st

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.t = float(state["t"])
        self.armijo_trials = int(state["armijo_trials"])
