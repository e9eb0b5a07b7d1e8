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

The master logic is :class:`mpiopt.bundle.master.LevelBundleMaster`; messaging is
:mod:`mpiopt.comm.master`; the bounds window is :class:`mpiopt.comm.rma.SeqlockRecord`.
With one rank the master runs with in-process oracles under the discrete-event simulator
(delays virtual, not slept).
"""
from __future__ import annotations

import json
import time
import traceback
from typing import Any

import numpy as np

from .. import options as O
from .. import result as R
from ..bundle.master import VARIANTS, Answer, LevelBundleMaster, Params
from ..comm.master import HEADER_ANSWER, POLL, STOP, MasterChannel, WorkerChannel
from ..errors import CheckpointError, InputError
from ..options import Option
from ..problems.oracle import OracleProblem, polite_delay
from ..registry import register_solver
from .base import Solver

BOUNDS_FIELDS = ["iteration", "f_low", "f_up", "gap", "level", "status", "n_evals", "eta"]
STATUS_CODES = {"converged": R.CONVERGED, "max_iter": R.MAX_ITER, "failed": R.FAILED, "stopped": R.CALLBACK_STOP,
                "max_time": R.MAX_TIME}


def owners_of(m: int, workers: int) -> list[np.ndarray]:
    """Components owned by each worker: i -> worker i mod W."""
    return [np.arange(w, m, workers) for w in range(workers)]


@register_solver("level_bundle")
class LevelBundle(Solver):
    summary = ("asynchronous level bundle method for sums of convex oracles on a box: master rank 0 with "
               "bounds and level QP (DAQP), oracle ranks answering point-to-point (variants sync, "
               "upper_model, coordination)")
    problem_kind = OracleProblem
    default_problem = "polyhedral"
    demo_settings = {"solver.variant": "coordination", "problem.n": 30, "problem.m": 6,
                     "problem.delay_mean": 0.005, "problem.delay_spread": 3.0, "problem.delay_noise": 1.0}
    min_ranks = 1
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
        Option("cut_cap", 2.0, "between critical iterations, drop the last QP's inactive cuts when a bundle "
               "exceeds cut_cap*max_cuts", float, low=1.0),
    )

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: dict[str, dict[str, Any]], n_ranks: int) -> None:
        m = cfg["problem"].get("m")
        if m is not None and n_ranks > 1 and n_ranks - 1 > m:
            raise InputError(f"problem.m={m}: {n_ranks - 1} oracle ranks for {m} components; "
                             f"use mpirun -n {m + 1} or fewer (or raise problem.m)")

    def __init__(self, problem: OracleProblem, options: dict[str, Any], ctx: Any):
        super().__init__(problem, options, ctx)
        p = problem
        self.W = self.comm.size - 1 if self.comm.size > 1 else p.m
        if self.W > p.m:
            raise InputError(f"problem.m={p.m}: {self.W} oracle ranks for {p.m} components "
                             f"(use at most mpirun -n {p.m + 1})")
        self.owners = owners_of(p.m, self.W)
        self.master = self.make_master() if self.comm.rank == 0 else None
        self.last_ckpt = 0
        self.busy = 0.0
        self.wall0 = 0.0

    def make_master(self) -> Any:
        o, p = self.opts, self.problem
        params = Params(variant=o["variant"], alpha=o["alpha"], atol=o["atol"], rtol=o["rtol"],
                        max_cuts=o["max_cuts"], lp_every=o["lp_every"], lp_start=o["lp_start"], batch=o["batch"],
                        coord_every=o["coord_every"], coord_promising=o["coord_promising"],
                        coord_blocking=o["coord_blocking"], coord_laggard=o["coord_laggard"],
                        kappa=o["kappa"], eps_prox=o["eps_prox"],
                        qp_solver=o["qp_solver"], max_iter=o["max_iter"], upper_points=o["upper_points"],
                        cut_cap=o["cut_cap"], min_batch=o["min_batch"], coord_max=o["coord_max"],
                        coord_rule=o["coord_rule"], qp_lazy=o["qp_lazy"])
        return LevelBundleMaster(p.n_vars, p.m, p.lower, p.upper, p.lipschitz, self.owners, params,
                                 x0=p.x0(), exact=p.exact)

    @property
    def batch(self) -> bool:
        return bool(self.opts.get("batch", True))

    # -- solve ----------------------------------------------------------------------------------
    def solve(self, callback=None) -> R.OptimizeResult:
        from ..comm.rma import SeqlockRecord
        self._callback = callback
        comm, ctx = self.comm, self.ctx
        ctx.setup_schedule(self.opts.get("max_iter", 1000), default_history_every=1)
        if comm.rank == 0 and ctx.writer is not None:
            ctx.writer.declare_series("oracle_calls", (self.problem.m,), np.int64)
        self.bounds = SeqlockRecord(comm, BOUNDS_FIELDS, host=0)
        self.wall0 = time.perf_counter()
        self.worker_idle = 0.0
        if comm.size == 1:
            self._run_inprocess()
        elif comm.rank == 0:
            self._run_master()
        else:
            self._run_worker()
        ctx.close_progress()
        res = self._final_result()
        self.bounds.free()
        return res

    # -- rank 0 ----------------------------------------------------------------------------------
    def _run_master(self) -> None:
        M, ctx = self.master, self.ctx
        ch = MasterChannel(self.comm, self.problem.n_vars, [o.size for o in self.owners])
        self.channel = ch
        send = lambda reqs: [ch.send_point(r.worker, r.iter_id, r.coord_id, r.eta, r.x) for r in reqs]  # noqa: E731
        send(M.start() if M.phase == "new" else M.dispatch())
        poll_status: int | None = None
        want: tuple[bool, int | None] | None = None        # (checkpoint, stop status) awaiting quiescence
        while not M.done:
            ready = ch.wait_answers(deadline=time.perf_counter() + 0.05)
            groups = [ready] if self.batch else [[w] for w in ready]
            for group in groups:
                answers = []
                for w in group:
                    a = self._decode(w, ch.answer(w))
                    if a is None:                        # the oracle raised
                        M.stop("failed", f"oracle rank {w + 1} failed: {ch.error_text(w)}")
                        break
                    answers.append(a)
                if M.done:
                    break
                self._master_step(lambda: M.receive(answers))
                if M.done:
                    break
                if want is None:
                    want = self._external_request()
                if want is None:
                    send(self._timed(M.dispatch))
            if M.done:
                break
            if want is None:
                want = self._external_request()
            if want is not None and not ch.busy.any():    # quiescent: every rank polls together
                ckpt, stop = want
                want = None
                ch.poll_all(M.steps)
                poll_status = self._joint_poll(M.steps, ckpt, stop)
                if poll_status is not None:
                    M.stop(R.STATUS_NAMES.get(poll_status, "stopped"), R.stop_message(poll_status))
                    break
                send(self._timed(M.dispatch))
        if poll_status is None:
            ch.stop_all()
        self._publish()

    def _timed(self, fn):
        t = time.perf_counter()
        out = fn()
        self.busy += time.perf_counter() - t
        return out

    def _master_step(self, fn) -> None:
        M = self.master
        s0 = M.steps
        self._timed(fn)
        if M.steps != s0 or M.done:
            self._publish()
            if self.ctx.due(M.steps) or M.done:
                self._record()

    def _external_request(self) -> tuple[bool, int | None] | None:
        """(checkpoint?, stop status) when the time budget, a signal, the callback or the checkpoint
        schedule asks for a joint poll; None otherwise."""
        ctx, M = self.ctx, self.master
        stop = None
        if ctx.signal_received:
            stop = R.INTERRUPTED
        elif self._callback_stop:
            stop = R.CALLBACK_STOP
        elif ctx.elapsed() >= ctx.max_time:
            stop = R.MAX_TIME
        ckpt = ctx.checkpoint_due(M.steps, self.last_ckpt) or stop == R.INTERRUPTED
        if stop is None and not ckpt:
            return None
        return ckpt, stop

    def _joint_poll(self, iteration: int, ckpt: bool, stop: int | None) -> int | None:
        """Rank 0's half of the POLL: broadcast the decision, checkpoint together."""
        flags = np.array([float(ckpt), -99.0 if stop is None else float(stop)])
        self.comm.Bcast(flags, root=0, tag="control")
        return self._apply_poll(iteration, flags)

    def _apply_poll(self, iteration: int, flags: np.ndarray) -> int | None:
        if flags[0] and self.ctx.checkpoints is not None:
            self.ctx.save_checkpoint(iteration, self.state_dict)
            self.last_ckpt = iteration
        return None if flags[1] == -99.0 else int(flags[1])

    def _decode(self, w: int, buf: np.ndarray) -> Answer | None:
        if buf[2] < 0:
            return None
        n, k = self.problem.n_vars, self.owners[w].size
        body = buf[HEADER_ANSWER:].reshape(k, 3 + n)
        return Answer(w, int(buf[0]), int(buf[1]), body[:, 0].astype(np.int64), body[:, 1].copy(),
                      body[:, 2].copy(), body[:, 3:].copy())

    def _publish(self) -> None:
        M = self.master
        self.bounds.publish(iteration=M.steps, f_low=M.f_low, f_up=M.f_up, gap=M.gap, level=M.lev,
                            status=float(STATUS_CODES.get(M.status, -99) if M.done else -99),
                            n_evals=float(M.evals.sum()), eta=M.eta_request() if hasattr(M, "eta_request") else 0.0)

    def _record(self) -> None:
        M, ctx = self.master, self.ctx
        wall = max(time.perf_counter() - self.wall0, 1e-9)
        fstar = self.problem.reference_objective
        vals = dict(lower_bound=M.f_low, upper_bound=M.f_up, gap=M.gap, rel_gap=M.rel_gap(), level=M.lev,
                    qps=M.k, cycle=M.cycle, oracle_calls=float(M.evals.sum()), master_busy=self.busy / wall,
                    n_cuts=float(getattr(getattr(M, "model", None), "count", 0)))
        if fstar is not None:
            vals["error"] = M.f_up - fstar
        self.notify(M.steps, M.x_best, M.f_up, **vals)
        if ctx.writer is not None:
            ctx.writer.append_series("oracle_calls", M.evals)

    # -- oracle ranks ----------------------------------------------------------------------------
    def _run_worker(self) -> None:
        p, comm = self.problem, self.comm
        w = comm.rank - 1
        mine = self.owners[w]
        ch = WorkerChannel(comm, p.n_vars, mine.size)
        oracles, setup_error = [], None
        try:
            oracles = [p.make_oracle(int(i)) for i in mine]
        except Exception as exc:  # noqa: BLE001 - reported to the master at the first point
            setup_error = f"{type(exc).__name__}: {exc}"
        n = p.n_vars
        failed = False
        while True:
            kind, it, cid, eta, x = ch.recv()
            if kind == STOP:
                break
            if kind == POLL:
                flags = np.empty(2)
                self.comm.Bcast(flags, root=0, tag="control")
                if self._apply_poll(it, flags) is not None:
                    break
                continue
            if failed:               # already reported; answer nothing more useful
                ch.send_error(it, "oracle rank failed earlier")
                continue
            try:
                if setup_error:
                    raise RuntimeError(setup_error)
                if not p.exact:      # on-demand accuracy: the freshest gap from the bounds window
                    eta = min(eta, self.bounds.read()["eta"])
                buf = ch.answer_buffer()
                buf[:HEADER_ANSWER] = (it, cid, 0)
                body = buf[HEADER_ANSWER:].reshape(mine.size, 3 + n)
                delay = 0.0
                for j, i in enumerate(mine):
                    fl, g, fu = oracles[j](x, eta)
                    body[j, 0], body[j, 1], body[j, 2] = i, fl, fu
                    body[j, 3:] = g
                    delay += p.delays.draw(int(i))
                if not np.isfinite(body).all():
                    raise FloatingPointError("oracle returned a non-finite value or subgradient")
                polite_delay(delay)
                ch.send_answer()
            except Exception as exc:  # noqa: BLE001 - the master stops everyone cleanly
                failed = True
                tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
                ch.send_error(it, f"{tb} (component(s) {mine.tolist()})")
        ch.finish()
        self.worker_idle = ch.idle_seconds

    # -- one rank: in-process oracles under the simulator ------------------------------------------
    def _run_inprocess(self) -> None:
        from ..bundle.simulate import simulate
        M, p = self.master, self.problem
        oracles = [p.make_oracle(i) for i in range(p.m)]

        def on_step(t: float) -> bool:
            self._publish()
            if self.ctx.due(M.steps) or M.done:
                self._record()
            req = self._external_request()
            if req is None:
                return False
            ckpt, stop = req
            if ckpt and M.idle.all():
                self._apply_poll(M.steps, np.array([1.0, -99.0]))
            return stop is not None

        simulate(M, oracles, p.delays, batch=self.batch, qp_cost="measured", on_step=on_step)
        self.busy = M.qp_seconds + M.lp_seconds
        if M.status == "stopped":
            st = R.INTERRUPTED if self.ctx.signal_received else (
                R.CALLBACK_STOP if self._callback_stop else R.MAX_TIME)
            M.status = R.STATUS_NAMES[st]
            M.message = R.stop_message(st)
        self._publish()

    # -- result ------------------------------------------------------------------------------------
    def _final_result(self) -> R.OptimizeResult:
        comm, p = self.comm, self.problem
        n = p.n_vars
        buf = np.empty(n + 6)
        msg = None
        M = self.master
        if comm.rank == 0:
            code = STATUS_CODES.get(M.status, None)
            if code is None:
                code = {v: k for k, v in R.STATUS_NAMES.items()}.get(M.status, R.FAILED)
            buf[:n] = M.x_best
            buf[n:] = (M.f_up, M.f_low, M.steps, code, M.k, M.evals.sum())
            msg = f"{M.message} [stop rule: {M.stop_rule}]"
        comm.Bcast(buf, root=0, tag="result")
        msg = comm.bcast_obj(msg)
        idle = comm.gather_obj(self.worker_idle)
        x = buf[:n].copy()
        f_up, f_low, steps, code, qps, nev = buf[n:]
        wall = max(time.perf_counter() - self.wall0, 1e-9)
        extra: dict[str, Any] = dict(lower_bound=float(f_low), upper_bound=float(f_up), gap=float(f_up - f_low),
                                     qps=int(qps), n_evals=int(nev), reference_objective=p.reference_objective)
        if comm.rank == 0:
            extra.update(oracle_calls=M.evals.copy(), master_busy=self.busy / wall, cycles=int(M.cycle),
                         stop_rule=M.stop_rule, infeasible_qps=int(M.n_infeasible),
                         worker_idle=[i / wall for i in idle[1:]] if idle and len(idle) > 1 else [],
                         solution={"x": x, "oracle_calls": M.evals.copy()})
            extra["extra_groups"] = {"level_bundle": {
                "oracle_calls": M.evals.copy(), "worker_idle": np.asarray(extra["worker_idle"], dtype=np.float64),
                "master_busy": float(extra["master_busy"]), "cycles": int(M.cycle), "stop_rule": str(M.stop_rule),
                "infeasible_qps": int(M.n_infeasible), "qps": int(qps), "lower_bound": float(f_low),
                "upper_bound": float(f_up)}}
            params = getattr(M, "p", None)       # the resolved per-variant defaults (config says none)
            if params is not None:
                extra.update(alpha=float(params.alpha), qp_lazy=bool(params.qp_lazy))
                extra["extra_groups"]["level_bundle"].update(alpha=extra["alpha"], qp_lazy=extra["qp_lazy"])
        return R.make_result(x, float(f_up), int(steps), int(code), msg, **extra)

    # -- checkpoints -------------------------------------------------------------------------------
    def _my_components(self) -> np.ndarray:
        if self.comm.size == 1:
            return np.arange(self.problem.m)
        return self.owners[self.comm.rank - 1] if self.comm.rank > 0 else np.arange(0)

    def state_dict(self) -> dict[str, Any] | None:
        dm = self.problem.delays
        mine = {int(i): json.dumps(dm.rngs[i].bit_generator.state) for i in self._my_components()}
        parts = self.comm.gather_obj(mine)
        if self.comm.rank != 0:
            return None
        rngs = [""] * self.problem.m
        for part in parts:
            for i, st in part.items():
                rngs[i] = st
        return {"master": self.master.state_dict(), "delay_rngs": rngs, "busy": self.busy,
                "n_workers": self.W, "variant": self.opts.get("variant", "sync")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["n_workers"]) != self.W:
            raise CheckpointError(f"checkpoint was written with {state['n_workers']} oracle ranks, this run "
                                  f"has {self.W} (use mpirun -n {int(state['n_workers']) + 1})")
        if self.master is not None:
            self.master.load_state_dict(state["master"])
            self.busy = float(state["busy"])
        for r, st in zip(self.problem.delays.rngs, state["delay_rngs"]):
            if st:
                r.bit_generator.state = json.loads(st)
