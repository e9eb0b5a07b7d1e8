"""``hamsi``: Hessian Approximated Multiple Subsets Iteration for matrix factorization
(Kaya, Oztoprak, Birbil, Cemgil, Simsekli, Kuru, Koptagel, Ozturk; COAP 2019; reference code
spartensor/hamsi-mf).

    C = nb strata of conflict-free blocks; stratum of step e: s_e = (e+1) mod C
    for e = 0, 1, .., E*C - 1:
        g = grad f_{s_e}(x)                       (all ranks in parallel, one ring exchange)
        every C+1 steps: pair (x - x_prev, g - g_prev) over one cycle, same stratum at both ends
        x <- x - g / beta_GD(e)          while fewer than M pairs were accepted (warm-up)
        x <- x - H g / beta(e)           otherwise; H compact L-BFGS, H g = one 2M-number reduction
                                         (solver.step_form=reference, the default: the reference code)
        x <- x - (B + beta(e) I)^-1 g    with solver.step_form=paper (the paper's step): B = H^-1 with
                                         its eigenvalues clipped to [curv_min, curv_max], so the step
                                         is at most |g| / beta(e)
        beta(e) = (eta (e+1))^gamma,  beta_GD(e) = (eta_GD (e+1))^gamma

One solver step is one epoch (C inner steps). The ``hamsi-mf`` preset follows the reference
exactly (no L2, no biases, N(0,1) init, no safeguard). The default adds L2 (problem.l2), row and
column biases (problem.bias), a small init, and a
safeguard that halves a step that raises the stratum loss or is not finite (and clears the memory
after four rejections in a row).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from ..options import Option
from ..problems.base import settings
from ..registry import register_solver
from .mf_base import ETA_GD, GAMMA, SAFEGUARD, WARMUP_GROWTH, StratifiedMF, beta, common_options

MEMORY_MAX = 1000        # the largest L-BFGS memory accepted (the reference code uses 5)


@register_solver("hamsi")
class Hamsi(StratifiedMF):
    summary = "HAMSI: stratified incremental L-BFGS for matrix factorization (row blocks per rank, column blocks on a ring)"
    demo_settings = {"problem.n_ratings": 100000, "problem.latent_dim": 10, "solver.max_epochs": 30}
    failure_hint = "try solver.safeguard=true or a larger solver.eta (solver.eta_gd in the warm-up)"
    options = (
        Option("preset", "none", "hamsi-mf: follow the reference code exactly (no L2, no centring, no "
               "biases, N(0,1) init, no safeguard, no early stop, no held-out split); overrides problem.l2, "
               "problem.center, problem.bias, problem.split (none, where the problem has it), init_scale, "
               "safeguard, patience, tol, curvature, warmup_growth, step_form",
               str, choices=("none", "hamsi-mf")),
        *common_options(max_epochs=50),
        Option("memory", 5, "L-BFGS memory M (curvature pairs)", int, low=1, high=MEMORY_MAX),
        Option("eta", 0.06, "step schedule: 1/beta with beta = (eta (e+1))^gamma", float, low=0.0, low_open=True),
        GAMMA,
        ETA_GD,
        Option("sigma0", 500.0, "initial scaling sigma of H (sigma <- min(sigma, s.y/y.y))", float, low=0.0, low_open=True),
        Option("tau", 1e-6, "accept a pair when s.y/|y| > tau (curvature=reference) or "
               "s.y > tau |s||y| (curvature=scaled)", float),
        Option("curvature", "scaled", "pair test and sigma rule: reference (s.y/|y| > tau, sigma = "
               "min(sigma, s.y/y.y)) or scaled (cosine test, sigma = s.y/y.y of the newest pair)", str,
               choices=("scaled", "reference")),
        SAFEGUARD,
        WARMUP_GROWTH,
        Option("step_form", "reference", "reference: x - H g / beta (H the inverse-Hessian model, as the "
               "reference code; nothing bounds the step); paper: x - (B + beta I)^-1 g with B the Hessian "
               "model, its eigenvalues clipped to [curv_min, curv_max] (the step is at most |g|/beta)",
               str, choices=("reference", "paper")),
        Option("eta_paper", 0.0, "step_form=paper: eta of beta = scale (eta (e+1))^gamma (0: use solver.eta)",
               float, low=0.0),
        Option("beta_scale", 0.0, "step_form=paper: scale of beta in curvature units (0: 1/sigma of the model "
               "when it is first used, then fixed)", float, low=0.0),
        Option("curv_min", 0.0, "step_form=paper: smallest eigenvalue kept in the Hessian model", float, low=0.0),
        Option("curv_max", 1e4, "step_form=paper: largest eigenvalue kept in the Hessian model", float,
               low=0.0, low_open=True),
    )

    @classmethod
    def check_config(cls, cfg, n_ranks):
        super().check_config(cfg, n_ranks)
        so = cfg["solver"]
        if so.get("curv_min", 0.0) > so.get("curv_max", 1e4):
            raise InputError(f"solver.curv_min={so['curv_min']} must be <= solver.curv_max={so['curv_max']}")
        if cfg["solver"].get("preset") == "hamsi-mf":
            cfg["problem"]["l2"] = 0.0
            cfg["problem"]["center"] = False
            cfg["problem"]["bias"] = False
            if "split" in cfg["problem"]:
                cfg["problem"]["split"] = "none"      # the reference trains on the whole file
            cfg["solver"].update(init_scale=1.0, safeguard=False, patience=0, tol=0.0, curvature="reference",
                                 warmup_growth=False, step_form="reference")

    @classmethod
    def memory_estimate(cls, problem_cls, cfg, n_ranks):
        """The grid's plans plus the L-BFGS model: 2M vectors over this rank's factors (the problem's
        estimate counts those of M=5) and its 2M x 2M matrices."""
        grid, what = super().memory_estimate(problem_cls, cfg, n_ranks)
        M = float(cfg["solver"]["memory"])
        lbfgs = 8.0 * 6 * (2 * M) ** 2
        shape = problem_cls.shape_estimate(cfg["problem"])
        if shape is not None:
            k = float(cfg["problem"]["latent_dim"]) + 1
            lbfgs += 8.0 * 2 * max(0.0, M - 5) * (shape[0] + shape[1]) * k / max(1, n_ranks)
        return grid + lbfgs, f"{what}, {settings(cfg['solver'], 'memory', section='solver')}"

    def __init__(self, problem, options, ctx):
        super().__init__(problem, options, ctx)
        o, mf = self.opts, self.mf
        self.x_prev = np.zeros(mf.n_local)
        self.g_prev = np.zeros(mf.n_local)
        self.paper = o["step_form"] == "paper"
        from ..mf.lbfgs import CompactLBFGS    # here, not at the top: it imports numba (the registry loads this module)
        self.H = CompactLBFGS(mf.n_local, o["memory"], o["sigma0"], o["tau"], mf.seg, mf.reduce, o["curvature"],
                              track_ss=self.paper)
        self.beta_scale = 0.0          # step_form=paper: fixed when the model is first used

    # -- the L-BFGS model in the stratified step -----------------------------------------------
    def observe(self, e: int, x: np.ndarray, g: np.ndarray) -> None:
        """A curvature pair over one cycle of C+1 steps (same stratum at both ends)."""
        C = self.C
        if e > 0 and (C == 1 or e % (C + 1) == C):
            # s and y overwrite x_prev and g_prev (set again below or at the next cycle's start)
            self.H.update(np.subtract(x, self.x_prev, out=self.x_prev), np.subtract(g, self.g_prev, out=self.g_prev))
        if C == 1 or e % (C + 1) == 0:
            self.x_prev[...] = x
            self.g_prev[...] = g

    def direction(self, g: np.ndarray, d: np.ndarray, e: int) -> None:
        """d = H g / beta(e) (or (B + beta(e) I)^-1 g) once M pairs are stored, else the warm-up
        gradient step."""
        o = self.opts
        if self.H.ready and self.paper:
            if not self.beta_scale:
                self.beta_scale = o["beta_scale"] or 1.0 / self.H.sigma
            b = self.beta_scale * beta(o["eta_paper"] or o["eta"], o["gamma"], e)
            self.H.apply_shifted(g, b, o["curv_min"], o["curv_max"], out=d)
        elif self.H.ready:
            self.H.apply(g, out=d)
            d *= 1.0 / beta(self.opts["eta"], self.opts["gamma"], e)
        else:
            super().direction(g, d, e)

    def model_ready(self) -> bool:
        return self.H.ready

    def reset_model(self) -> bool:
        if self.H.mem == 0:
            return False
        self.H.reset()
        return True

    # -- history, result, checkpoints ------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        return {**super().values(), "pairs": self.H.mem, "sigma": self.H.sigma}

    def extra_state(self) -> dict[str, Any]:
        mf, H = self.mf, self.H
        st = super().extra_state()
        xp, gp = mf.gather(self.x_prev), mf.gather(self.g_prev)
        S = [mf.gather(H.S[a]) for a in range(H.M)]
        Y = [mf.gather(H.Y[a]) for a in range(H.M)]
        if self.comm.rank == 0:
            st.update(x_prev=xp, g_prev=gp, S=np.stack(S), Y=np.stack(Y), lbfgs=H.small_state())
            if self.paper:
                st["beta_scale"] = self.beta_scale
        return st

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        mf, H = self.mf, self.H
        self.x_prev[...] = mf.scatter(state["x_prev"])
        self.g_prev[...] = mf.scatter(state["g_prev"])
        S, Y = np.asarray(state["S"]), np.asarray(state["Y"])
        for a in range(H.M):
            H.S[a] = mf.scatter(S[a])
            H.Y[a] = mf.scatter(Y[a])
        H.load_small_state(state["lbfgs"])
        if self.paper:
            self.beta_scale = float(state.get("beta_scale", 0.0))
