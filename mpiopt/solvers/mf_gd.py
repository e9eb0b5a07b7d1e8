"""``mf_gd``: parallel gradient descent for matrix factorization on the HAMSI block grid (the
paper's baseline).

    mode=full:   x <- x - t grad f(x), t by Armijo backtracking on f (one data pass per gradient,
                 one per trial; every reduction summed in block order)
    mode=strata: x <- x - grad f_{s_e}(x) / beta_GD(e), s_e = (e+1) mod C: HAMSI with H = I
"""
from __future__ import annotations

import math

import numpy as np

from ..options import Option
from ..registry import register_solver
from .hamsi import Hamsi


@register_solver("mf_gd")
class MFGD(Hamsi):
    summary = "parallel gradient descent for matrix factorization (full gradient + Armijo, or stratified steps)"
    demo_settings = {"problem.n_ratings": 100000, "problem.latent_dim": 10, "solver.max_epochs": 30}
    options = (
        Option("mode", "full", "full: full gradient with Armijo backtracking; strata: one stratum per "
               "step with the 1/beta_GD schedule (HAMSI without the L-BFGS model)", str,
               choices=("full", "strata")),
        *[o for o in Hamsi.options if o.name in ("max_epochs", "blocks", "init", "init_scale", "target_rmse",
                                                   "target_test_rmse", "patience", "tol", "gamma",
                                                   "eta_gd", "safeguard", "warmup_growth")],
        Option("step0", 1.0, "full mode: first trial step (scaled by nnz / max row or column count)",
               float, low=0.0, low_open=True),
        Option("armijo", 1e-4, "full mode: sufficient-decrease constant c in f(x - t g) <= f(x) - c t |g|^2",
               float, low=0.0, high=1.0, high_open=True),
        Option("grow", 2.0, "full mode: next first trial = grow * last accepted step", float, low=1.0),
    )
    use_lbfgs = False

    def __init__(self, problem, options, ctx):
        options = dict(options)
        options.setdefault("preset", "none")
        for name in ("memory", "eta", "sigma0", "tau", "curvature"):
            options.setdefault(name, next(o.default for o in Hamsi.options if o.name == name))
        if options["mode"] == "full":
            options["safeguard"] = False      # Armijo is the safeguard
        super().__init__(problem, options, ctx)
        mf = self.mf
        top = max(int(problem.row_counts.max()), int(problem.col_counts.max()), 1)
        self.t = options["step0"] * mf.nnz / top   # curvature of a row ~ count/nnz
        self.armijo_trials = 0

    def run_epoch(self):
        if self.opts["mode"] == "strata":
            return super().run_epoch()
        mf, o = self.mf, self.opts
        x, g, xt = mf.x, self.g, self.d
        f0 = float(mf.reduce(mf.full_loss_grad(x, g)[:, :1])[0])
        gg = mf.dot(g, g)
        t = self.t
        for _ in range(60):
            self.armijo_trials += 1
            np.multiply(g, t, out=xt)
            np.subtract(x, xt, out=xt)
            f1 = float(mf.reduce(self._losses(xt)[:, :1])[0])
            if math.isfinite(f1) and f1 <= f0 - o["armijo"] * t * gg:
                x[...] = xt
                self.t = t * o["grow"]
                self.e += 1
                return None
            t *= 0.5
        from .. import result as R
        return R.CONVERGED, "Armijo backtracking found no decrease (stationary to working precision)"

    def _losses(self, vec: np.ndarray) -> np.ndarray:
        parts = np.zeros((self.mf.q, 2))
        for s in range(self.mf.nb):
            parts += self.mf.stratum_loss(s, vec)
        return parts

    def _finish(self, status, msg):
        res = super()._finish(status, msg)
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
