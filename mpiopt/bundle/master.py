"""The master logic of the (a)synchronous level bundle method as a transport-independent state machine.

The same object is driven by MPI (:mod:`mpiopt.solvers.level_bundle`) and by the discrete-event
simulator (:mod:`mpiopt.bundle.simulate`). The driver calls :meth:`start` once, then repeatedly hands
the answers that arrived to :meth:`receive` and sends what :meth:`dispatch` returns.

One step (one or more level QPs), as in the paper's pseudo-code::

    if gap <= tol: stop
    if gap <= (1 - alpha) gap_ref or last QP infeasible:         # critical iteration
        gap_ref = gap; xc = x_best; compress bundles; lev_prev = +inf
    lev = min(lev_prev, f_up - alpha gap)                         # nested level sets inside a cycle
    x+ = argmin ||x - xc||^2 over {x in X : fv(x) <= lev}         # infeasible: f_low = lev; repeat
    f_low = max(f_low, aggregate-cut bound [, exact LP every lp_every])

Variants: ``sync`` waits for every oracle at x+ (f_up = f(x+)); ``upper_model`` takes f_up from
Lipschitz upper models at the last iterate, the centre and the answered points; ``coordination``
takes f_up only from complete coordinations (every oracle answered the same point z_c).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from .. import result as R
from .accuracy import OnDemandAccuracy
from .coordination import Coordination, Coordinations
from .master_state import load_master_state, master_state
from .model import CutModel, UpperModel
from .protocol import Answer, Master, Request, Trace
from .qp import FAILED, INFEASIBLE, OPTIMAL, LevelQP, ModelLP, QPResult, aggregate_bound, box_min_linear

SETTLED = "settled"                  # an infeasible level QP whose bound the exact LP settled

__all__ = ["VARIANTS", "Params", "Answer", "Request", "Trace", "Coordination", "LevelBundleMaster"]

VARIANTS = ("sync", "upper_model", "coordination")
# default level parameter per variant: coordination gets its upper bounds rarely, so it lowers the level further
# and lets infeasible QPs raise f_low without waiting for a coordination (docs/level_bundle.md, "Benchmark")
ALPHA_DEFAULT = {"sync": 0.5, "upper_model": 0.5, "coordination": 0.95}
QP_LAZY_DEFAULT = {"sync": False, "upper_model": False, "coordination": True}


@dataclass
class Params:
    """Method parameters (see docs/level_bundle.md)."""
    variant: str = "sync"
    alpha: float | None = None       # None: ALPHA_DEFAULT[variant]
    atol: float = 0.0
    rtol: float = 1e-6
    max_cuts: int = 50
    lp_every: int = 0                # exact LP bound every N QPs (0: at start only)
    lp_start: bool = True
    batch: bool = True
    coord_every: int = 0             # answers between coordinations (0: 2m)
    coord_promising: bool = True
    coord_blocking: bool = False
    coord_laggard: bool = False      # start a due coordination when the longest-running oracle has just answered
    kappa: float = 0.5
    eps_prox: float = 1e-6
    qp_solver: str = "daqp"
    max_iter: int = 100000
    upper_points: int = 50           # points kept per oracle in the Lipschitz upper model
    min_batch: int = 1               # asynchronous: answers gathered before the next QP
    cut_cap: float = 2.0             # between critical iterations, compress when a bundle exceeds cut_cap*max_cuts
    coord_max: int = 1               # coordinations in flight at once (pipelined coordinations)
    coord_rule: str = "count"        # count: after coord_every answers / promising; idle: when an idle oracle has none to do
    qp_lazy: bool | None = None      # asynchronous: QP only when an idle oracle has nothing new (None: QP_LAZY_DEFAULT)
    certify_infeasible: bool = True  # check every infeasible level QP with the exact LP before f_low = lev
    time_limit: float | None = None  # seconds per QP / LP solve (None: the process-wide HiGHS setting)
    cycle_wait: bool = False         # a new cycle on gap decrease only once every worker answered a point of this one


class LevelBundleMaster(Master):
    """Master state: bundles, bounds f_low <= f* <= f_up, level, centre, cycles, oracle bookkeeping."""

    def __init__(self, n: int, m: int, lower: np.ndarray, upper: np.ndarray, lipschitz: np.ndarray | None,
                 owners: Sequence[Sequence[int]], params: Params, x0: np.ndarray | None = None,
                 exact: bool = True, floors: Sequence[float] | None = None):
        if params.variant not in VARIANTS:
            raise ValueError(f"unknown variant {params.variant!r}")
        if params.alpha is None:
            params = replace(params, alpha=ALPHA_DEFAULT[params.variant])
        if params.qp_lazy is None:
            params = replace(params, qp_lazy=QP_LAZY_DEFAULT[params.variant])
        self.p = params
        self.n, self.m = int(n), int(m)
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.owners = [np.asarray(o, dtype=np.int64) for o in owners]
        self.W = len(self.owners)
        self.exact = exact
        self.model = CutModel(self.n, self.m, capacity=self.m * (params.max_cuts + 2))
        self.umodel = (UpperModel(self.n, self.m, lipschitz, params.upper_points)
                       if params.variant == "upper_model" else None)
        self.qp = LevelQP(self.lower, self.upper, self.m, params.qp_solver, params.eps_prox,
                          time_limit=params.time_limit)
        self.lp = ModelLP(self.lower, self.upper, self.m, time_limit=params.time_limit)
        x1 = 0.5 * (self.lower + self.upper) if x0 is None else np.clip(x0, self.lower, self.upper)
        # bounds and centre
        self.f_low, self.f_up = -math.inf, math.inf
        self.x1 = x1.astype(np.float64)
        self.x_best = self.x1.copy()
        self.xc = self.x1.copy()
        self.x_next = self.x1.copy()
        self.gap_ref = math.inf
        self.lev = math.inf
        self.lev_prev = math.inf
        self.lam: np.ndarray | None = None
        self.last_infeasible = False
        # counters
        self.k = 0                      # QPs solved (iterations)
        self.steps = 0                  # master steps (one per answer batch)
        self.cycle = 0                  # critical iterations
        self.n_infeasible = 0
        self.n_midcycle_compressions = 0
        self.n_lp_checks = 0
        self.n_lp = 0                   # exact LPs solved
        self.n_certified = 0            # infeasible QPs confirmed by the exact LP
        self.n_uncertified = 0          # infeasible QPs accepted on two QP solvers' word (the LP failed)
        self.evals = np.zeros(self.m, dtype=np.int64)
        self.answers = 0
        self.qp_seconds = 0.0
        self.lp_seconds = 0.0
        # oracle bookkeeping
        self.phase = "new"              # new -> init (first round) -> run -> done
        self.idle = np.ones(self.W, dtype=bool)
        self.sent_k = np.full(self.W, -1, dtype=np.int64)      # iteration of the last point sent
        self.sent_seq = np.zeros(self.W, dtype=np.int64)       # send order (oldest point in flight)
        self.n_sent = 0
        self._laggard_answered = False
        self.since_step = 0
        self.sent: dict[int, tuple[int, int, np.ndarray]] = {}
        self.pending = False            # x_next not yet sent (sync)
        self.held: list[Answer] = []    # answers of the synchronous round in progress
        self.round_fl = np.zeros(self.m)
        self.round_fu = np.zeros(self.m)
        self.round_g = np.zeros((self.m, self.n))
        self.round_seen = np.zeros(self.m, dtype=bool)
        self.latest_fu = np.full(self.m, math.inf)
        self.accuracy = OnDemandAccuracy(self.m, params.kappa, params.alpha, floors)
        self.latest_eta = self.accuracy.eta                    # accuracy fu - fl of the latest answers
        self.sent_eta = np.full(self.W, math.inf)              # accuracy requested with the point in flight
        self.answered_k = np.full(self.W, -1, dtype=np.int64)  # a(j): iteration of worker j's latest answered point
        self.cycle_k = 0                                       # iteration of the last critical iteration
        self.n_cycle_waits = 0
        self.coordination = Coordinations(self.n, self.m, self.owners, params)
        self.init_outcome()
        self.trace = Trace()

    # -- derived quantities -------------------------------------------------------------------
    def tolerance(self) -> float:
        return max(self.p.atol, self.p.rtol * max(1.0, abs(self.f_up)))

    def eta_request(self) -> float:
        """On-demand accuracy per component: kappa * alpha * gap / (2m), tightened when the gap
        stalls at the oracles' accuracy (:mod:`mpiopt.bundle.accuracy`)."""
        return self.accuracy.request(self.gap)

    @property
    def n_cuts(self) -> int:
        return int(self.model.count)

    # -- driver interface -----------------------------------------------------------------------
    def start(self) -> list[Request]:
        """The first synchronous round: every oracle at x1."""
        self.phase = "init"
        self.x_next = self.x1.copy()
        return self._send_all(self.x1, coord_id=-1)

    def receive(self, answers: Sequence[Answer]) -> None:
        """Process a batch of answers (cuts, bounds) and take one step when the variant says so."""
        if self.done:
            for a in answers:
                self.idle[a.worker] = True
                self.sent.pop(a.worker, None)
            return
        busy_seq = self.sent_seq[~self.idle]
        oldest = busy_seq.min() if busy_seq.size else -1
        self._laggard_answered = any(self.sent_seq[a.worker] == oldest for a in answers)
        if self.phase == "init" or self.p.variant == "sync":
            # a synchronous round: its cuts enter the model in worker order once every worker has
            # answered, so the run does not depend on the order in which the answers arrived
            self.held.extend(answers)
            if len(self.held) < self.W:
                return
            answers, self.held = sorted(self.held, key=lambda a: a.worker), []
        points = [self._absorb(a) for a in answers]
        if self.phase == "init":
            if self.round_seen.all():
                self._finish_first_round()
                self._step()
        elif self.p.variant == "sync":
            if self.round_seen.all():
                self._improve_upper(self.x_next, float(self.round_fu.sum()))
                self._step()
        else:
            coord_done = False
            if self.p.variant == "upper_model":
                self._upper_model_bound(points)
            else:
                for c in self.coordination.pop_complete():
                    self._improve_upper(c.z, float(c.fu.sum()))
                    coord_done = True
            self.since_step += len(answers)
            if self.p.qp_lazy:
                # an oracle that has not evaluated the newest point yet gets it without a new QP
                ready = coord_done or self.idle.all() or self.since_step >= self.W or (
                    self.since_step >= self.p.min_batch and any(
                        self.sent_k[w] == self.k and self._coordination_for(int(w)) is None
                        for w in np.flatnonzero(self.idle)))
            else:
                ready = self.since_step >= min(self.p.min_batch, self.W) or coord_done or self.idle.all()
            if ready and not (self.p.coord_blocking and self.coords):
                self.since_step = 0
                self._step()
            if self.p.variant == "coordination" and not self.done:
                self.coordination.maybe_start(self.x_next, self.idle, self.latest_fu, self.f_up, self.gap,
                                              self._laggard_answered)

    def dispatch(self) -> list[Request]:
        """Points for the idle workers (sync: all at once when a new x+ is ready)."""
        if self.done or self.phase == "init":
            return []
        if self.p.variant == "sync":
            if self.pending and self.idle.all():
                self.pending = False
                return self._send_all(self.x_next, -1)
            return []
        out = []
        for w in np.flatnonzero(self.idle):
            c = self._coordination_for(int(w))
            if c is not None:
                out.append(self._send(int(w), c.z, c.id))
            elif not (self.p.coord_blocking and self.coords) and self.sent_k[w] != self.k:
                out.append(self._send(int(w), self.x_next, -1))
        return out

    def _coordination_for(self, w: int) -> Coordination | None:
        return self.coordination.for_worker(w)

    @property
    def coords(self) -> list[Coordination]:
        """The coordinations in flight, oldest first."""
        return self.coordination.active

    @property
    def n_coords(self) -> int:
        return self.coordination.started

    # -- internals ------------------------------------------------------------------------------
    def _send(self, w: int, x: np.ndarray, coord_id: int) -> Request:
        self.idle[w] = False
        self.sent_k[w] = self.k
        self.n_sent += 1
        self.sent_seq[w] = self.n_sent
        self.sent[w] = (self.k, coord_id, x)
        self.sent_eta[w] = self.eta_request()
        return Request(w, self.k, coord_id, self.sent_eta[w], x)

    def _send_all(self, x: np.ndarray, coord_id: int) -> list[Request]:
        self.round_seen[:] = False
        return [self._send(w, x, coord_id) for w in range(self.W)]

    def _absorb(self, a: Answer) -> np.ndarray:
        """Cuts, upper-model points and per-round/coordination values from one answer; returns its point."""
        it, cid, z = self.sent.pop(a.worker)
        self.answered_k[a.worker] = it
        self.idle[a.worker] = True
        comps = np.asarray(a.comps, dtype=np.int64)
        fl, fu = np.asarray(a.fl, dtype=np.float64), np.asarray(a.fu, dtype=np.float64)
        G = np.asarray(a.G, dtype=np.float64).reshape(comps.size, self.n)
        self.model.add(comps, G, fl, z)
        self.evals[comps] += 1
        self.answers += 1
        self.latest_fu[comps] = fu
        self.accuracy.record(comps, fl, fu, float(self.sent_eta[a.worker]))
        if self.umodel is not None:
            self.umodel.add(comps, fu, z)
        if self.phase == "init" or self.p.variant == "sync":
            self.round_fl[comps] = fl
            self.round_fu[comps] = fu
            self.round_g[comps] = G
            self.round_seen[comps] = True
        self.coordination.record(cid, comps, fu)
        return z

    def _finish_first_round(self) -> None:
        """f_up = f(x1); f_low = min_X of the aggregated linearisation at x1 (and the LP)."""
        x1 = self.x1
        self._improve_upper(x1, float(self.round_fu.sum()))
        g1 = self.round_g.sum(axis=0)
        self.f_low = float(self.round_fl.sum() - g1 @ x1) + box_min_linear(g1, self.lower, self.upper)
        if self.p.lp_start:
            self._lp_bound()
        self.gap_ref = self.gap
        self.phase = "run"

    def _improve_upper(self, x: np.ndarray, value: float) -> None:
        if value < self.f_up:
            self.f_up = value
            self.x_best = np.array(x, dtype=np.float64)

    def _upper_model_bound(self, points: Sequence[np.ndarray]) -> None:
        """f_up = min(f_up, fbar(y)) for y in {last iterate, centre, answered points}."""
        Y = np.vstack([self.x_next, self.xc, *points])
        vals = self.umodel.values(Y)
        j = int(np.argmin(vals))
        self._improve_upper(Y[j], float(vals[j]))

    def _lp_value(self) -> float | None:
        """min_X fv by the exact LP (a certified lower bound on it; None on LP failure)."""
        import time
        t = time.perf_counter()
        v = self.lp.solve(self.model)
        self.lp_seconds += time.perf_counter() - t
        self.n_lp += 1
        return v

    def _lp_bound(self) -> float | None:
        """f_low = max(f_low, min_X fv) with the exact LP; returns min_X fv (None on LP failure)."""
        v = self._lp_value()
        if v is not None and v > self.f_low:
            self.f_low = min(v, self.f_up)
        return v

    def _certify_infeasible(self, res: QPResult, G: np.ndarray, e: np.ndarray, comp: np.ndarray) -> QPResult:
        """An infeasible level QP claims lev < min_X fv: the exact LP checks the claim (then f_low = lev
        is certified). When the LP finds min_X fv <= lev, the other QP solver decides; if it rejects
        the level too, the LP value (itself a certified bound) settles it. When the LP fails, the
        other QP solver's agreement is accepted and counted as uncertified."""
        v = self._lp_value()
        if v is not None and v > self.lev:
            self.n_certified += 1
            return res
        alt = self.qp.solve_other(G, e, comp, self.xc, self.lev)
        self.qp_seconds += alt.seconds
        if alt.status == OPTIMAL:
            return alt
        if v is None:
            self.n_uncertified += 1
            return res if alt.status == INFEASIBLE else alt
        if v > self.f_low:                   # the level is within the solvers' tolerances of min_X fv
            self.f_low = min(v, self.f_up)
            return QPResult(SETTLED, solver="lp")
        return QPResult(FAILED, solver=f"{res.solver}+{alt.solver}",
                        info={"level": self.lev, "lp_min": v, "reason": "infeasibility not confirmed by the LP"})

    def _stop_test(self) -> bool:
        if self.gap <= self.tolerance():
            self.finish(R.CONVERGED, "gap", f"gap {self.gap:.3e} <= tolerance {self.tolerance():.3e}")
            return True
        if not self.exact and self.accuracy.give_up(self.gap):
            self.finish(R.INEXACT, "inexactness",
                        f"gap {self.gap:.3e} > tolerance {self.tolerance():.3e}: the oracles cannot answer more "
                        f"accurately (2 sum(eta)/alpha = {self.accuracy.best_bound():.3e} at their best)")
            return True
        if self.k >= self.p.max_iter:
            self.finish(R.MAX_ITER, "max_iter", f"reached max_iter={self.p.max_iter} QPs")
            return True
        return False

    def _step(self) -> None:
        """Critical test, level, QP (repeated while infeasible), lower bounds."""
        self.steps += 1
        p = self.p
        while not self._stop_test():
            critical = self.gap <= (1 - p.alpha) * self.gap_ref and self._everyone_answered_this_cycle()
            critical = critical or self.last_infeasible
            if critical:
                self.cycle += 1
                self.cycle_k = self.k
                self.gap_ref = self.gap
                self.xc = self.x_best.copy()
                self.model.compress(self.lam, p.max_cuts)
                self.lam = None
                self.lev_prev = math.inf
                self.last_infeasible = False
            elif self.lam is not None and self.model.counts().max() > p.cut_cap * p.max_cuts:
                # drop inactive cuts of the last QP (x+ stays its projection; newer cuts are kept)
                keep = np.ones(self.model.count)
                keep[:self.lam.size] = self.lam
                self.model.compress(keep, p.max_cuts)
                self.lam = None
                self.n_midcycle_compressions += 1
            self.lev = min(self.lev_prev, self.f_up - p.alpha * self.gap)
            self.lev_prev = self.lev
            G, e, comp = self.model.rows
            res = self.qp.solve(G, e, comp, self.xc, self.lev)
            self.qp_seconds += res.seconds
            self.k += 1
            if res.status == INFEASIBLE and p.certify_infeasible:
                res = self._certify_infeasible(res, G, e, comp)
            if res.status in (INFEASIBLE, SETTLED):
                self.n_infeasible += 1
                if res.status == INFEASIBLE:
                    self.f_low = max(self.f_low, min(self.lev, self.f_up))
                self.last_infeasible = True
                self.trace.add(self.k, self.cycle, self.f_low, self.f_up, self.lev, math.nan, critical, 1)
                continue
            if res.status == FAILED:
                self.finish(R.FAILED, "qp_failed", f"level QP failed ({res.solver}: {res.info})")
                return
            if self.model.value(res.x) > self.lev + 1e-9 * max(1.0, abs(self.lev)):
                # the QP solver accepted the level within its tolerance: settle it with the exact LP
                self.n_lp_checks += 1
                v = self._lp_bound()
                if v is not None and v > self.lev:
                    self.n_infeasible += 1
                    self.last_infeasible = True
                    self.trace.add(self.k, self.cycle, self.f_low, self.f_up, self.lev, math.nan, critical, 1)
                    continue
            self.x_next = res.x
            self.lam = res.lam
            self.pending = True
            self.f_low = max(self.f_low, min(aggregate_bound(G, e, comp, res.lam, self.m, self.lower, self.upper),
                                             self.f_up))
            if p.lp_every and self.k % p.lp_every == 0:
                self._lp_bound()
            self.trace.add(self.k, self.cycle, self.f_low, self.f_up, self.lev,
                           float(np.linalg.norm(self.x_next - self.xc)), critical, 0)
            self._stop_test()
            return

    def _everyone_answered_this_cycle(self) -> bool:
        """The paper's test min_j a(j) >= k_cycle (option ``cycle_wait``): every worker has answered a
        point of the current cycle (a(j): the iteration of worker j's latest answered point)."""
        if not self.p.cycle_wait or self.answered_k.min() >= self.cycle_k:
            return True
        self.n_cycle_waits += 1
        return False

    # -- checkpoint (mpiopt.bundle.master_state) ---------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue (taken while no request is in flight)."""
        return master_state(self)

    def load_state_dict(self, st: dict[str, Any]) -> None:
        load_master_state(self, st)
