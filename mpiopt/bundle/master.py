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
from typing import Sequence

import numpy as np

from .. import result as R
from .accuracy import OnDemandAccuracy
from .async_start import AsyncStart
from .bookkeeping import OracleBook, SyncRound, step_due
from .coordination import Coordination, Coordinations
from .lower_bounds import LevelProblem
from .master_state import load_master_state, master_state
from .model import CutModel, UpperModel
from .protocol import Answer, Master, Request, Trace

__all__ = ["VARIANTS", "Params", "Answer", "Request", "Trace", "Coordination", "LevelBundleMaster"]

VARIANTS = ("sync", "upper_model", "coordination")
STARTS = ("sync", "async")
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
    start: str = "sync"              # sync: first round at x1 waited for; async: no waiting (mpiopt.bundle.async_start)

    def resolved(self) -> "Params":
        """These parameters with the per-variant defaults filled in (ValueError: unknown variant)."""
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}")
        if self.start not in STARTS or (self.start == "async" and self.variant == "sync"):
            raise ValueError(f"start={self.start!r} with variant={self.variant!r}: start is sync or async, "
                             "and async needs an asynchronous variant (upper_model or coordination)")
        return replace(self, alpha=ALPHA_DEFAULT[self.variant] if self.alpha is None else self.alpha,
                       qp_lazy=QP_LAZY_DEFAULT[self.variant] if self.qp_lazy is None else self.qp_lazy)


class LevelBundleMaster(Master):
    """Master state: bundles, bounds f_low <= f* <= f_up, level, centre, cycles, oracle bookkeeping."""

    per_worker_state = ("answered_k",)

    def __init__(self, n: int, m: int, lower: np.ndarray, upper: np.ndarray, lipschitz: np.ndarray | None,
                 owners: Sequence[Sequence[int]], params: Params, x0: np.ndarray | None = None,
                 exact: bool = True, floors: Sequence[float] | None = None):
        self.p = params = params.resolved()
        self.n, self.m = int(n), int(m)
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.owners = [np.asarray(o, dtype=np.int64) for o in owners]
        self.W = len(self.owners)
        self.exact = exact
        self.model = CutModel(self.n, self.m, capacity=self.m * (params.max_cuts + 2))
        self.umodel = (UpperModel(self.n, self.m, lipschitz, params.upper_points)
                       if params.variant == "upper_model" else None)
        self.level = LevelProblem(self.lower, self.upper, self.m, params)
        self.qp, self.bounds = self.level.qp, self.level.bounds
        x1 = 0.5 * (self.lower + self.upper) if x0 is None else np.clip(x0, self.lower, self.upper)
        # bounds, level, centre
        self.f_low, self.f_up = -math.inf, math.inf
        self.gap_ref = self.lev = self.lev_prev = math.inf
        self.x1 = x1.astype(np.float64)
        self.x_best, self.xc, self.x_next = self.x1.copy(), self.x1.copy(), self.x1.copy()
        self.lam: np.ndarray | None = None
        self.last_infeasible = False
        # counters
        self.k = 0                      # QPs solved (iterations)
        self.steps = 0                  # master steps (one per answer batch)
        self.cycle = 0                  # critical iterations
        self.n_infeasible = 0
        self.n_midcycle_compressions = 0
        self.evals = np.zeros(self.m, dtype=np.int64)
        self.answers = 0
        self.qp_seconds = 0.0
        # oracle bookkeeping
        self.phase = "new"              # new -> init (first round) -> run -> done
        self.book = OracleBook(self.W)
        self.idle = self.book.idle      # (the same array)
        self.since_step = 0
        self.pending = False            # x_next not yet sent (sync)
        self.round = SyncRound(self.n, self.m, self.W)
        self.latest_fu = np.full(self.m, math.inf)
        self.accuracy = OnDemandAccuracy(self.m, params.kappa, params.alpha, floors)
        self.latest_eta = self.accuracy.eta                    # accuracy fu - fl of the latest answers
        self.cycle_k = 0                                       # iteration of the last critical iteration
        self.n_cycle_waits = 0
        self.coordination = Coordinations(self.n, self.m, self.owners, params)
        self.early = AsyncStart(self.n, self.m, self.lower, self.upper, params) if params.start == "async" else None
        self.init_outcome()
        self.trace = Trace()

    # -- derived quantities -------------------------------------------------------------------
    def tolerance(self) -> float:
        return max(self.p.atol, self.p.rtol * max(1.0, abs(self.f_up)))

    def eta_request(self) -> float:
        """On-demand accuracy per component: kappa * alpha * gap / (2m), tightened when the gap
        stalls at the oracles' accuracy (:mod:`mpiopt.bundle.accuracy`)."""
        early = self.early is not None and self.early.active
        return self.accuracy.request(self.early.gap if early else self.gap)

    n_cuts = property(lambda self: int(self.model.count))

    n_lp = property(lambda self: self.bounds.n_lp, doc="exact LPs solved")
    lp_seconds = property(lambda self: self.bounds.lp_seconds)
    n_certified = property(lambda self: self.bounds.n_certified, doc="infeasible QPs confirmed by the exact LP")
    n_uncertified = property(lambda self: self.bounds.n_uncertified, doc="infeasible QPs accepted without the LP")

    # -- driver interface -----------------------------------------------------------------------
    def start(self) -> list[Request]:
        """Every oracle at x1 (start=sync: a synchronous first round; async: no waiting)."""
        self.phase = "init" if self.early is None else "run"
        self.x_next = self.x1.copy()
        return self._send_all(self.x1, coord_id=-1)

    def receive(self, answers: Sequence[Answer]) -> None:
        """Process a batch of answers (cuts, bounds) and take one step when the variant says so."""
        if self.done:
            for a in answers:
                self.book.drop(a.worker)
            return
        self.book.note_batch(answers)
        if self.phase == "init" or self.p.variant == "sync":
            full = self.round.hold(answers)       # a synchronous round, absorbed in worker order
            if full is None:
                return
            answers = full
        points = [self._absorb(a) for a in answers]
        if self.phase == "init":
            if self.round.complete():
                self._finish_first_round()
                self._step()
        elif self.p.variant == "sync":
            if self.round.complete():
                self.improve_upper(self.x_next, float(self.round.fu.sum()))
                self._step()
        else:
            if self.early is not None and self.early.active and self.early.complete():
                self.early.finish(self)
            coord_done = False
            if self.p.variant == "upper_model":
                self._upper_model_bound(points)
            else:
                for c in self.coordination.pop_complete():
                    self.improve_upper(c.z, float(c.fu.sum()))
                    coord_done = True
            self.since_step += len(answers)
            if step_due(self.book, self.p, self.since_step, self.k, coord_done, self.coordination):
                self.since_step = 0
                self._step()
            if self.p.variant == "coordination" and not self.done:
                self.coordination.maybe_start(self.x_next, self.idle, self.latest_fu, self.f_up, self.gap,
                                              self.book.laggard_answered)

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
            c = self.coordination.for_worker(int(w))
            if self.early is not None and self.early.active and not self.early.seen[self.owners[w]].all():
                out.append(self.book.send(int(w), 0, -1, self.eta_request(), self.x1))   # (after a resume)
            elif c is not None:
                out.append(self._send(int(w), c.z, c.id))
            elif not (self.p.coord_blocking and self.coords) and self.book.sent_k[w] != self.k:
                out.append(self._send(int(w), self.x_next, -1))
        return out

    coords = property(lambda self: self.coordination.active, doc="the coordinations in flight, oldest first")
    n_coords = property(lambda self: self.coordination.started, doc="coordinations started")

    # -- internals ------------------------------------------------------------------------------
    def _send(self, w: int, x: np.ndarray, coord_id: int) -> Request:
        return self.book.send(w, self.k, coord_id, self.eta_request(), x)

    def _send_all(self, x: np.ndarray, coord_id: int) -> list[Request]:
        self.round.seen[:] = False
        return [self._send(w, x, coord_id) for w in range(self.W)]

    def _absorb(self, a: Answer) -> np.ndarray:
        """Cuts, upper-model points and per-round/coordination values from one answer; returns its point."""
        it, cid, z = self.book.take(a.worker)
        comps = np.asarray(a.comps, dtype=np.int64)
        fl, fu = np.asarray(a.fl, dtype=np.float64), np.asarray(a.fu, dtype=np.float64)
        G = np.asarray(a.G, dtype=np.float64).reshape(comps.size, self.n)
        self.model.add(comps, G, fl, z)
        self.evals[comps] += 1
        self.answers += 1
        self.latest_fu[comps] = fu
        self.accuracy.record(comps, fl, fu, float(self.book.sent_eta[a.worker]))
        if self.umodel is not None:
            self.umodel.add(comps, fu, z)
        if self.phase == "init" or self.p.variant == "sync":
            self.round.record(comps, fl, fu, G)
        self.coordination.record(cid, comps, fu)
        if self.early is not None:
            self.early.record(comps, fu, it)
        return z

    def _finish_first_round(self) -> None:
        """f_up = f(x1); f_low = min_X of the aggregated linearisation at x1 (and the LP)."""
        self.improve_upper(self.x1, float(self.round.fu.sum()))
        self.f_low = self.round.lower_bound(self.x1, self.lower, self.upper)
        if self.p.lp_start:
            self.lp_bound()
        self.gap_ref = self.gap
        self.phase = "run"

    def improve_upper(self, x: np.ndarray, value: float) -> None:
        if value < self.f_up:
            self.f_up = value
            self.x_best = np.array(x, dtype=np.float64)

    def _upper_model_bound(self, points: Sequence[np.ndarray]) -> None:
        """f_up = min(f_up, fbar(y)) for y in {last iterate, centre, answered points}."""
        self.improve_upper(*self.umodel.best(np.vstack([self.x_next, self.xc, *points])))

    def lp_bound(self) -> None:
        """f_low = max(f_low, min_X fv) with the exact LP."""
        self.f_low, _ = self.level.lp_bound(self.model, self.f_low, self.f_up)

    def _stop_test(self) -> bool:
        stop = stop_reason(self)
        if stop is not None:
            self.finish(*stop)
        return stop is not None

    def _step(self) -> None:
        """Critical test, level, QP (repeated while infeasible), lower bounds."""
        self.steps += 1
        p = self.p
        if self.early is not None and self.early.active:
            if not self._stop_test():
                self.early.take_step(self)
            return
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
                self.model.drop_inactive(self.lam, p.max_cuts)   # x+ stays the projection; newer cuts kept
                self.lam = None
                self.n_midcycle_compressions += 1
            self.lev = min(self.lev_prev, self.f_up - p.alpha * self.gap)
            self.lev_prev = self.lev
            out = self.level.solve(self.model, self.xc, self.lev, self.f_low, self.f_up, p.certify_infeasible)
            self.qp_seconds += out.seconds
            self.k += 1
            self.f_low = out.f_low
            if out.kind == "infeasible":
                self.n_infeasible += 1
                self.last_infeasible = True
                self.trace.add(self.k, self.cycle, self.f_low, self.f_up, self.lev, math.nan, critical, 1)
                continue
            if out.kind == "failed":
                self.finish(R.FAILED, "qp_failed", out.message)
                return
            self.x_next = out.x
            self.lam = out.lam
            self.pending = True
            if p.lp_every and self.k % p.lp_every == 0:
                self.lp_bound()
            self.trace.add(self.k, self.cycle, self.f_low, self.f_up, self.lev,
                           float(np.linalg.norm(self.x_next - self.xc)), critical, 0)
            self._stop_test()
            return

    def _everyone_answered_this_cycle(self) -> bool:
        """The paper's test min_j a(j) >= k_cycle (option ``cycle_wait``): every worker has answered a
        point of the current cycle (a(j): the iteration of worker j's latest answered point)."""
        if not self.p.cycle_wait or self.book.answered_k.min() >= self.cycle_k:
            return True
        self.n_cycle_waits += 1
        return False

    # -- checkpoint: everything needed to continue, taken while no request is in flight ------------
    state_dict = master_state
    load_state_dict = load_master_state



def stop_reason(M: LevelBundleMaster) -> tuple[int, str, str] | None:
    """(status, rule, message) when ``M`` must stop now: the gap closed, the oracles cannot answer more
    accurately (inexact oracles), or max_iter; None otherwise."""
    gap, tol = M.gap, M.tolerance()
    if math.isfinite(gap) and gap <= tol:
        return R.CONVERGED, "gap", f"gap {gap:.3e} <= tolerance {tol:.3e}"
    if not M.exact and M.accuracy.give_up(gap):
        why = (f"gap {gap:.3e} > tolerance {tol:.3e}: the oracles cannot answer more "
               f"accurately (2 sum(eta)/alpha = {M.accuracy.best_bound():.3e} at their best)")
        return R.INEXACT, "inexactness", why
    if M.k >= M.p.max_iter:
        return R.MAX_ITER, "max_iter", f"reached max_iter={M.p.max_iter} QPs"
    return None
