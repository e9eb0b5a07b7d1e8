"""``level_bundle``: (a)synchronous level bundle method, rank 0 the master, ranks 1..P-1 the oracles.

    master (rank 0)                                   oracle rank r (owns components i = r-1 mod P-1)
    ---------------                                   -----------------------------------------------
    send x1 to every oracle                           loop:
    loop until gap <= tol:                                x, eta = receive point      (STOP: leave)
        answers = the answers that arrived (batch)        for each owned i: (fl, g, fu) = f^i(x, eta)
        add their cuts; update f_up                       send the answer
          sync: wait for all, f_up = f(x+)
          upper_model: Lipschitz upper models
          coordination: complete coordinations only
        critical test, level, QP -> x+, f_low
        publish bounds (RMA window)
        send x+ (or z_c) to every idle oracle
    STOP every oracle; broadcast the result

The master logic is :class:`mpiopt.bundle.master.LevelBundleMaster`; the ranks' roles are
:mod:`mpiopt.solvers.master_rank` and :mod:`mpiopt.solvers.oracle_rank` (shared with
``projected_subgradient`` through :class:`~mpiopt.solvers.master_oracle.MasterOracleSolver`).
With one rank the master runs with in-process oracles under the discrete-event simulator
(delays virtual, not slept).
"""
from __future__ import annotations

from typing import Any

from .. import options as O
from ..bundle import highs
from ..bundle.master import STARTS, VARIANTS, LevelBundleMaster, Params
from ..errors import InputError
from ..options import Option
from ..problems.base import settings
from ..registry import register_solver
from .master_oracle import MasterOracleSolver

HIGHS_THREADS_MAX = 1024     # the most threads one HiGHS model is given


@register_solver("level_bundle")
class LevelBundle(MasterOracleSolver):
    summary = ("asynchronous level bundle method for sums of convex oracles on a box: master rank 0 with "
               "bounds and level QP (DAQP), oracle ranks answering point-to-point (variants sync, "
               "upper_model, coordination)")
    demo_settings = {"solver.variant": "coordination", "problem.n": 30, "problem.m": 6,
                     "problem.delay_mean": 0.005, "problem.delay_spread": 3.0, "problem.delay_noise": 1.0}
    deterministic = False          # variant=sync is deterministic (bit-identical, also across resumes)
    options = (
        Option("variant", "sync", "sync (wait for all oracles), upper_model or coordination (asynchronous)",
               str, choices=VARIANTS),
        Option("alpha", None, "level parameter: f_lev = f_up - alpha*gap (none: 0.5 for sync and upper_model, "
               "0.95 for coordination)", float, low=0.0, high=1.0, low_open=True, high_open=True, nullable=True),
        Option("rtol", 1e-6, "stop when f_up - f_low <= max(atol, rtol*max(1,|f_up|))", float, low=0.0),
        Option("atol", 0.0, "absolute gap tolerance", float, low=0.0),
        O.max_iter(100000, "maximum number of level QPs"),
        Option("max_cuts", 50, "cuts kept per component at compression (critical iterations)", int, low=1),
        Option("lp_every", 0, "exact LP lower bound (HiGHS) every N QPs (0: at start only)", int, low=0),
        Option("lp_start", True, "exact LP lower bound after the first round", bool),
        Option("batch", True, "asynchronous: process all answers that arrived together in one QP", bool),
        Option("min_batch", 1, "asynchronous: answers gathered before the next QP (fewer QPs: less master load)",
               int, low=1),
        Option("coord_every", 0, "coordination: answers between coordinations (0: 2m)", int, low=0),
        Option("coord_promising", True, "coordination: also start one when the oracles' latest values look good", bool),
        Option("coord_laggard", False, "coordination: start a due coordination when the oracle with the oldest point "
               "in flight has just answered (experimental)", bool),
        Option("coord_max", 1, "coordination: coordinations in flight at once (pipelined with coord_rule=idle)", int,
               low=1),
        Option("coord_rule", "count", "coordination: start one after coord_every answers or when promising (count), "
               "or as soon as an idle oracle has none left to evaluate (idle)", str, choices=("count", "idle")),
        Option("qp_lazy", None, "asynchronous: solve a QP only when an idle oracle has nothing new to evaluate "
               "(none: true for coordination, false for upper_model)", bool, nullable=True),
        Option("coord_blocking", False, "coordination: hold new points until the coordination completes (debug)", bool),
        Option("kappa", 0.5, "on-demand accuracy: eta_i = kappa*alpha*gap/(2m)", float, low=0.0, low_open=True),
        Option("eps_prox", 1e-6, "DAQP proximal regularisation (must be positive)", float, low=0.0, low_open=True),
        Option("qp_solver", "daqp", "level QP solver: daqp (HiGHS fallback) or highs", str, choices=("daqp", "highs")),
        Option("upper_points", 50, "upper_model: points kept per oracle", int, low=1),
        Option("certify_infeasible", True, "check every infeasible level QP with the exact LP before its level "
               "becomes the lower bound", bool),
        Option("cycle_wait", False, "asynchronous: start a new cycle on gap decrease only once every oracle has "
               "answered a point of the current one (the test min_j a(j) >= k)", bool),
        Option("time_limit", 300.0, "seconds per level QP and exact LP solve (DAQP, HiGHS); at the limit a QP "
               "falls back to the other solver, an LP gives no bound", float, low=0.0, low_open=True),
        Option("highs_threads", 1, "threads of each HiGHS model on each rank (the ranks already share the cores)",
               int, low=1, high=HIGHS_THREADS_MAX),
        Option("start", "sync", "sync: wait for every oracle at x1 before the first QP; async (upper_model, "
               "coordination): no waiting, f_up = +inf and f_low = -inf until every oracle has answered, steps on "
               "the components that answered meanwhile (docs/level_bundle.md)", str, choices=STARTS),
        Option("cut_cap", 2.0, "between critical iterations, drop the last QP's inactive cuts when a bundle "
               "exceeds cut_cap*max_cuts", float, low=1.0),
    )

    @classmethod
    def check_config(cls, cfg: dict[str, dict[str, Any]], n_ranks: int) -> None:
        super().check_config(cfg, n_ranks)
        s = cfg["solver"]
        if s.get("start") == "async" and s.get("variant", "sync") == "sync":
            raise InputError("solver.start=async needs an asynchronous variant (solver.variant=upper_model or "
                             "coordination); sync waits for every oracle at every point anyway")

    @classmethod
    def memory_estimate(cls, problem_cls: type, cfg: dict[str, dict[str, Any]],
                        n_ranks: int) -> tuple[float, str] | None:
        """The master's cut storage (m (cut_cap max_cuts + 2) cuts of n + 2 numbers, twice while it
        grows) and the upper model's points (m upper_points of n numbers)."""
        shape = problem_cls.shape_estimate(cfg["problem"])
        if shape is None:
            return None
        n, m = float(shape[0]), float(shape[1])
        s = cfg["solver"]
        cuts = 2 * 8.0 * m * (s["cut_cap"] * s["max_cuts"] + 2) * (n + 2)
        upper = 8.0 * m * s["upper_points"] * (n + 1)
        return cuts + upper, settings(s, "max_cuts", "cut_cap", "upper_points", section="solver")

    def __init__(self, problem: Any, options: dict[str, Any], ctx: Any):
        highs.configure(threads=options["highs_threads"], verbose=ctx.verbose)   # before any model is built
        super().__init__(problem, options, ctx)

    def make_master(self) -> LevelBundleMaster:
        o, p = self.opts, self.problem
        params = Params(variant=o["variant"], alpha=o["alpha"], atol=o["atol"], rtol=o["rtol"],
                        max_cuts=o["max_cuts"], lp_every=o["lp_every"], lp_start=o["lp_start"], batch=o["batch"],
                        coord_every=o["coord_every"], coord_promising=o["coord_promising"],
                        coord_blocking=o["coord_blocking"], coord_laggard=o["coord_laggard"],
                        kappa=o["kappa"], eps_prox=o["eps_prox"],
                        qp_solver=o["qp_solver"], max_iter=o["max_iter"], upper_points=o["upper_points"],
                        cut_cap=o["cut_cap"], min_batch=o["min_batch"], coord_max=o["coord_max"],
                        coord_rule=o["coord_rule"], qp_lazy=o["qp_lazy"], certify_infeasible=o["certify_infeasible"],
                        time_limit=o["time_limit"], cycle_wait=o["cycle_wait"], start=o["start"])
        return LevelBundleMaster(p.n_vars, p.m, p.lower, p.upper, p.lipschitz, self.owners, params,
                                 x0=p.x0(), exact=p.exact, floors=[p.accuracy_floor(i) for i in range(p.m)])

    @property
    def batch(self) -> bool:
        return bool(self.opts["batch"])

    def result_extras(self, master: LevelBundleMaster) -> dict[str, Any]:
        """The resolved per-variant defaults (the config may say none) and the certification counters."""
        out = {"alpha": float(master.p.alpha), "qp_lazy": bool(master.p.qp_lazy),
               "certified_infeasible_qps": int(master.n_certified),
               "uncertified_infeasible_qps": int(master.n_uncertified),
               "accuracy_tightened": int(master.accuracy.tightened), "cycle_waits": int(master.n_cycle_waits),
               "start": str(master.p.start)}
        if master.early is not None:     # oracle calls per component when the iterate first left x1
            out["first_move_oracle_calls"] = master.early.first_move_evals.copy()
        return out
