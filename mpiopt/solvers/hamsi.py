"""``hamsi``: Hessian Approximated Multiple Subsets Iteration for matrix factorization
(Kaya, Oztoprak, Birbil, Cemgil, Simsekli, Kuru, Koptagel, Ozturk; COAP 2019; reference code
spartensor/hamsi-mf).

    C = nb strata of conflict-free blocks; stratum of step e: s_e = (e+1) mod C
    for e = 0, 1, .., E*C - 1:
        g = grad f_{s_e}(x)                       (all ranks in parallel, one ring exchange)
        every C+1 steps: pair (x - x_prev, g - g_prev) over one cycle, same stratum at both ends
        x <- x - g / beta_GD(e)          while fewer than M pairs were accepted (warm-up)
        x <- x - H g / beta(e)           otherwise; H compact L-BFGS, H g = one 2M-number reduction
        beta(e) = (eta (e+1))^gamma,  beta_GD(e) = (eta_GD (e+1))^gamma

The ``hamsi-mf`` preset follows the reference exactly (no L2, N(0,1) init, no safeguard). The
default adds L2 (problem.l2), a small init, and a safeguard that halves a step that raises the
stratum loss or is not finite (and clears the memory after four rejections in a row).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import result as R
from ..mf.cuts import stratum_at
from ..mf.lbfgs import CompactLBFGS
from ..mf.solver import MFSolver, common_options
from ..options import Option
from ..registry import register_solver

SAFEGUARD_RTOL = 1e-4
SAFEGUARD_TRIES = 5
WARMUP_MAX_MULT = 2.0 ** 30
RESET_AFTER = 4          # rejections in a row that clear the L-BFGS memory (spec: 2; 4 measured better)


def beta(eta: float, gamma: float, e: int) -> float:
    """Step divisor (eta (e+1))^gamma of inner step ``e``."""
    return (eta * (e + 1)) ** gamma


@register_solver("hamsi")
class Hamsi(MFSolver):
    summary = "HAMSI: stratified incremental L-BFGS for matrix factorization (row blocks per rank, column blocks on a ring)"
    demo_settings = {"problem.n_ratings": 100000, "problem.latent_dim": 10, "solver.max_epochs": 30}
    options = (
        Option("preset", "none", "hamsi-mf: follow the reference code exactly (no L2, no centring, N(0,1) "
               "init, no safeguard, no early stop); overrides problem.l2, problem.center, init_scale, "
               "safeguard, patience, tol, curvature",
               str, choices=("none", "hamsi-mf")),
        *common_options(max_epochs=50),
        Option("memory", 5, "L-BFGS memory M (curvature pairs)", int, low=1),
        Option("eta", 0.06, "step schedule: 1/beta with beta = (eta (e+1))^gamma", float, low=0.0, low_open=True),
        Option("gamma", 0.51, "step schedule exponent", float, low=0.0),
        Option("eta_gd", 0.001, "warm-up gradient steps 1/(eta_gd (e+1))^gamma until M pairs are stored",
               float, low=0.0, low_open=True),
        Option("sigma0", 500.0, "initial scaling sigma of H (sigma <- min(sigma, s.y/y.y))", float, low=0.0, low_open=True),
        Option("tau", 1e-6, "accept a pair when s.y/|y| > tau (curvature=reference) or "
               "s.y > tau |s||y| (curvature=scaled)", float),
        Option("curvature", "scaled", "pair test and sigma rule: reference (s.y/|y| > tau, sigma = "
               "min(sigma, s.y/y.y)) or scaled (cosine test, sigma = s.y/y.y of the newest pair)", str,
               choices=("scaled", "reference")),
        Option("safeguard", True, "reject/halve steps that raise the stratum loss or give NaN", bool),
        Option("warmup_growth", True, "with the safeguard: let the step multiplier of warm-up gradient "
               "steps double after each accepted step (finds the scale of the 1/nnz-normalized gradient; "
               "reset to at most 1 once the L-BFGS model is used)", bool),
    )
    use_lbfgs = True

    @classmethod
    def check_config(cls, cfg, n_ranks):
        super().check_config(cfg, n_ranks)
        if cfg["solver"].get("preset") == "hamsi-mf":
            cfg["problem"]["l2"] = 0.0
            cfg["problem"]["center"] = False
            cfg["solver"].update(init_scale=1.0, safeguard=False, patience=0, tol=0.0, curvature="reference",
                                 warmup_growth=False)

    def __init__(self, problem, options, ctx):
        super().__init__(problem, options, ctx)
        o, mf = self.opts, self.mf
        self.C = mf.nb
        self.e = 0
        self.mult = 1.0
        self.rejects = 0
        self.rollbacks = 0
        self.g = np.zeros(mf.n_local)
        self.x_prev = np.zeros(mf.n_local)
        self.g_prev = np.zeros(mf.n_local)
        self.d = np.zeros(mf.n_local)
        self.x_trial = np.zeros(mf.n_local) if o["safeguard"] else None
        self.x_epoch = mf.x.copy() if o["safeguard"] else None
        self.last_obj = math.inf
        self._fresh = False           # residuals of stratum (e+1) mod C at x are kept in the blocks
        self.H = CompactLBFGS(mf.n_local, o["memory"], o["sigma0"], o["tau"], mf.seg, mf.reduce,
                              o["curvature"]) \
            if self.use_lbfgs else None

    # -- one inner step ----------------------------------------------------------------------
    def step(self) -> None:
        o, mf, C, e = self.opts, self.mf, self.C, self.e
        x, g, d = mf.x, self.g, self.d
        s = stratum_at(e, C)
        # with one stratum, the safeguard's last accepted trial already holds this step's residuals
        parts = mf.stratum_loss_grad(s, x, g, reuse=self._fresh)
        self._fresh = False
        H = self.H
        if H is not None:
            if e > 0 and (C == 1 or e % (C + 1) == C):
                H.update(x - self.x_prev, g - self.g_prev)
            if C == 1 or e % (C + 1) == 0:
                self.x_prev[...] = x
                self.g_prev[...] = g
        self._direction(g, d, e)
        if not o["safeguard"]:
            x -= d
        else:
            self._safeguarded_update(s, parts, g, d, e)
        self.e += 1

    def _direction(self, g: np.ndarray, d: np.ndarray, e: int) -> None:
        o = self.opts
        if self.H is not None and self.H.ready:
            self.H.apply(g, out=d)
            d *= 1.0 / beta(o["eta"], o["gamma"], e)
        else:
            np.multiply(g, 1.0 / beta(o["eta_gd"], o["gamma"], e), out=d)

    def _safeguarded_update(self, s: int, parts: np.ndarray, g: np.ndarray, d: np.ndarray, e: int) -> None:
        mf, x, xt = self.mf, self.mf.x, self.x_trial
        if self.H is not None and self.H.ready:
            self.mult = min(self.mult, 1.0)          # warm-up growth does not carry over to H g
        f0 = float(mf.reduce(parts[:, :1])[0])
        for _ in range(SAFEGUARD_TRIES + 1):
            np.multiply(d, self.mult, out=xt)
            np.subtract(x, xt, out=xt)
            f1 = float(mf.reduce(mf.stratum_loss(s, xt, keep=self.C == 1)[:, :1])[0])
            if math.isfinite(f1) and f1 - f0 <= SAFEGUARD_RTOL * abs(f0):
                x[...] = xt
                self._fresh = self.C == 1
                warm = self.H is None or not self.H.ready
                cap = WARMUP_MAX_MULT if (warm and self.opts["warmup_growth"]) else 1.0
                self.mult = min(cap, 2.0 * self.mult)
                self.rejects = 0
                return
            self.mult *= 0.5
            self.rejects += 1
            if self.rejects == RESET_AFTER and self.H is not None and self.H.mem > 0:
                self.H.reset()                       # back to warm-up gradient steps
                self._direction(g, d, e)

    # -- epochs --------------------------------------------------------------------------------
    def run_epoch(self):
        C = self.C
        for _ in range(C):
            self.step()
        return None

    def after_eval(self, ev: dict[str, float]) -> dict[str, float]:
        if not self.opts["safeguard"]:
            return ev
        f = ev["objective"]
        if not math.isfinite(f) or (math.isfinite(self.last_obj) and f > 2.0 * self.last_obj):
            # diverged epoch: back to the last epoch's factors, clear the memory, smaller steps
            self.mf.x[...] = self.x_epoch
            self._fresh = False
            if self.H is not None:
                self.H.reset()
            self.mult = 0.25
            self.rollbacks += 1
            ev = self._evaluate()
        self.x_epoch[...] = self.mf.x
        self.last_obj = ev["objective"]
        return ev

    def _record(self, ev):
        if self.H is not None:
            ev = dict(ev, pairs=self.H.mem, sigma=self.H.sigma)
        super()._record(ev)

    def _finish(self, status, msg):
        res = super()._finish(status, msg)
        res["inner_steps"] = self.e
        res["rollbacks"] = self.rollbacks
        return res

    # -- checkpoints ---------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        mf = self.mf
        st: dict[str, Any] = {"e": self.e, "mult": self.mult, "rejects": self.rejects,
                              "rollbacks": self.rollbacks, "last_obj": self.last_obj}
        if self.H is not None:
            xp, gp = mf.gather(self.x_prev), mf.gather(self.g_prev)
            S = [mf.gather(self.H.S[a]) for a in range(self.H.M)]
            Y = [mf.gather(self.H.Y[a]) for a in range(self.H.M)]
            if self.comm.rank == 0:
                st.update(x_prev=xp, g_prev=gp, S=np.stack(S), Y=np.stack(Y), lbfgs=self.H.small_state())
        return st

    def load_extra_state(self, state: dict[str, Any]) -> None:
        mf = self.mf
        self.e = int(state["e"])
        self.mult = float(state["mult"])
        self.rejects = int(state["rejects"])
        self.rollbacks = int(state["rollbacks"])
        self.last_obj = float(state["last_obj"])
        if self.x_epoch is not None:
            self.x_epoch[...] = mf.x
        if self.H is not None:
            self.x_prev[...] = mf.scatter(state["x_prev"])
            self.g_prev[...] = mf.scatter(state["g_prev"])
            S, Y = np.asarray(state["S"]), np.asarray(state["Y"])
            for a in range(self.H.M):
                self.H.S[a] = mf.scatter(S[a])
                self.H.Y[a] = mf.scatter(Y[a])
            self.H.load_small_state(state["lbfgs"])
