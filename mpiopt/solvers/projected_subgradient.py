"""``projected_subgradient``: the plain projected subgradient method on a sum of convex oracles
(the baseline of ``level_bundle``), with the same master/oracle ranks and messaging.

    x_{k+1} = P_X(x_k - t_k g_k),  g_k = sum_i g^i(x_k)  (every oracle at x_k)
    t_k = (f(x_k) - f*)/||g_k||^2 (Polyak, needs the problem's reference f*) or step0*diam(X)/(||g_k|| sqrt(k))
"""
from __future__ import annotations

from typing import Any

from .. import options as O
from ..bundle.subgradient import SubgradientMaster
from ..errors import InputError
from ..options import Option
from ..registry import register_solver
from .master_oracle import MasterOracleSolver


@register_solver("projected_subgradient")
class ProjectedSubgradient(MasterOracleSolver):
    progress_in_iterations = True       # runs to its iteration budget in practice
    summary = "projected subgradient method on a sum of convex oracles (baseline of level_bundle; Polyak or diminishing steps)"
    demo_settings = {"solver.max_iter": 500, "problem.n": 30, "problem.m": 6, "problem.delay_mean": 0.005,
                     "problem.delay_spread": 3.0, "problem.delay_noise": 1.0}   # level_bundle's demo problem
    deterministic = True
    options = (
        Option("step", "polyak", "polyak (needs the problem's f*) or diminishing", str, choices=("polyak", "diminishing")),
        O.step0(0.1, "diminishing steps: t_k = step0*diam(X)/(||g_k|| sqrt(k))"),
        Option("rtol", 1e-6, "stop when f_up - f_low <= max(atol, rtol*max(1,|f_up|))", float, low=0.0),
        Option("atol", 0.0, "absolute gap tolerance", float, low=0.0),
        O.max_iter(2000),
    )

    @classmethod
    def check_config(cls, cfg: dict[str, dict[str, Any]], n_ranks: int) -> None:
        super().check_config(cfg, n_ranks)
        pc = cfg["problem"]
        if cfg["solver"]["step"] == "polyak" and (pc.get("reference") is False or pc.get("integer")):
            raise InputError("solver.step=polyak needs the problem's reference f* "
                             "(problem.reference=true, continuous blocks) or use solver.step=diminishing")

    def __init__(self, problem: Any, options: dict[str, Any], ctx: Any):
        if options["step"] == "polyak" and problem.reference_objective is None:   # same on every rank
            raise InputError("solver.step=polyak needs the problem's reference f* "
                             "(problem.reference=true) or use solver.step=diminishing")
        super().__init__(problem, options, ctx)

    def make_master(self) -> SubgradientMaster:
        o, p = self.opts, self.problem
        fstar = p.reference_objective if o["step"] == "polyak" else None
        return SubgradientMaster(p.n_vars, p.m, p.lower, p.upper, self.owners, fstar=fstar, step0=o["step0"],
                                 rtol=o["rtol"], atol=o["atol"], max_iter=o["max_iter"], x0=p.x0())
