"""Rank 0's role in the master/oracle methods: drive the master object, publish its bounds, record
history rows and decide the joint checkpoint/stop polls.

    send the master's first points
    until the master is done:
        answers = the answers that arrived (one batch)      (an oracle rank failed: stop, FAILED)
        master.receive(answers); publish bounds; history row when due
        a stop (time, signal, callback) or checkpoint wanted?  hold new points until every oracle is
            idle, then POLL every oracle rank: checkpoint together, stop or go on
        send master.dispatch() to the idle oracles
    STOP every oracle rank

With one rank the same master runs under the discrete-event simulator with in-process oracles.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Protocol

import numpy as np

from .. import result as R
from ..bundle.protocol import Answer, Master
from ..bundle.simulate import simulate
from ..comm.master import HEADER_ANSWER, MasterChannel
from ..context import RunContext
from .oracle_rank import OracleRankHost


class MasterRankHost(OracleRankHost, Protocol):
    """What rank 0's role uses of its solver (a :class:`~mpiopt.solvers.master_oracle.MasterOracleSolver`)."""

    ctx: RunContext
    master: Master
    batch: bool
    busy: float
    last_ckpt: int
    callback_stopped: bool

    def record(self) -> None: ...


class MasterRank:
    """The master role of ``solver`` (a :class:`~mpiopt.solvers.master_oracle.MasterOracleSolver`)."""

    def __init__(self, solver: MasterRankHost):
        self.s = solver
        self.ctx = solver.ctx
        self.M = solver.master
        self.problem = solver.problem

    # -- shared by both drivers ----------------------------------------------------------------
    def publish(self) -> None:
        """The bounds window the oracle ranks read (the freshest accuracy request among them)."""
        M = self.M
        self.s.bounds.publish(iteration=M.steps, f_low=M.f_low, f_up=M.f_up, gap=M.gap, level=M.lev,
                              status=float(M.status if M.done and M.status is not None else R.NO_STOP),
                              n_evals=float(M.evals.sum()), eta=M.eta_request())

    def after_step(self, steps_before: int) -> None:
        M = self.M
        if M.steps != steps_before or M.done:
            self.publish()
            if self.ctx.history.due(M.steps) or M.done:
                self.s.record()

    def wanted(self) -> tuple[bool, int] | None:
        """(checkpoint?, stop status or NO_STOP) when the time budget, a signal, the callback or the
        checkpoint schedule asks for a joint poll; None otherwise."""
        ctx, M = self.ctx, self.M
        stop = R.NO_STOP
        if ctx.stop.signal_received:
            stop = R.INTERRUPTED
        elif self.s.callback_stopped:
            stop = R.CALLBACK_STOP
        elif ctx.stop.out_of_time():
            stop = R.MAX_TIME
        ckpt = ctx.checkpoints.due(M.steps, self.s.last_ckpt) or stop == R.INTERRUPTED
        if stop == R.NO_STOP and not ckpt:
            return None
        return ckpt, stop

    def timed(self, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        self.s.busy += time.perf_counter() - t
        return out

    # -- MPI: oracle ranks 1..P-1 ---------------------------------------------------------------
    def run_mpi(self) -> None:
        M, s = self.M, self.s
        ch = MasterChannel(s.comm, self.problem.n_vars, [o.size for o in s.owners])

        def send(reqs) -> None:
            for r in reqs:
                ch.send_point(r.worker, r.iter_id, r.coord_id, r.eta, r.x)

        send(M.start() if M.phase == "new" else M.dispatch())
        stopped = False
        want: tuple[bool, int] | None = None         # a poll waiting for every oracle to be idle
        while not M.done:
            ready = ch.wait_answers(deadline=time.perf_counter() + 0.05)
            for group in ([ready] if s.batch else [[w] for w in ready]):
                answers = []
                for w in group:
                    a = self.decode(w, ch.answer(w))
                    if a is None:                        # the oracle raised
                        M.stop(R.FAILED, f"oracle rank {w + 1} failed: {ch.error_text(w)}")
                        break
                    answers.append(a)
                if M.done or not M.admit(answers):      # admit: a non-finite answer stops with FAILED
                    break
                s0 = M.steps
                self.timed(lambda a=answers: M.receive(a))
                self.after_step(s0)
                if M.done:
                    break
                if want is None:
                    want = self.wanted()
                if want is None:
                    send(self.timed(M.dispatch))
            if M.done:
                break
            if want is None:
                want = self.wanted()
            if want is not None and not ch.busy.any():    # quiescent: every rank polls together
                ckpt, stop = want
                want = None
                ch.poll_all(M.steps, ckpt, stop)
                status = s.apply_poll(M.steps, ckpt, stop)
                if status is not None:
                    M.stop(status, R.stop_message(status))
                    stopped = True
                    break
                send(self.timed(M.dispatch))
        if not stopped:
            ch.stop_all()
        self.publish()

    def decode(self, w: int, buf: np.ndarray) -> Answer | None:
        """Worker ``w``'s answer from its buffer (None: the worker reported an exception)."""
        if buf[2] < 0:
            return None
        n, k = self.problem.n_vars, self.s.owners[w].size
        body = buf[HEADER_ANSWER:].reshape(k, 3 + n)
        return Answer(w, int(buf[0]), int(buf[1]), body[:, 0].astype(np.int64), body[:, 1].copy(),
                      body[:, 2].copy(), body[:, 3:].copy())

    # -- one rank: in-process oracles, virtual delays -----------------------------------------------
    def run_in_process(self) -> None:
        M, p = self.M, self.problem
        oracles = [p.make_oracle(i) for i in range(p.m)]

        def on_step(t: float) -> bool:
            self.publish()
            if self.ctx.history.due(M.steps) or M.done:
                self.s.record()
            want = self.wanted()
            if want is None:
                return False
            ckpt, stop = want
            if ckpt and M.idle.all():
                self.s.apply_poll(M.steps, True, R.NO_STOP)
            if stop == R.NO_STOP:
                return False
            M.stop(stop, R.stop_message(stop))
            return True

        simulate(M, oracles, p.delays, batch=self.s.batch, qp_cost="measured", on_step=on_step)
        self.s.busy = M.qp_seconds + M.lp_seconds
        self.publish()
