"""The driver shared by the methods with one master rank and oracle ranks (``level_bundle``,
``projected_subgradient``): rank 0 runs a master object (:class:`mpiopt.bundle.protocol.Master`),
ranks 1..P-1 answer for the components they own (component i belongs to oracle rank 1 + i mod (P-1)).

    rank 0:    MasterRank.run_mpi()     (mpiopt.solvers.master_rank)
    rank r>0:  run_oracle_rank()        (mpiopt.solvers.oracle_rank)
    one rank:  MasterRank.run_in_process()   in-process oracles under the discrete-event simulator
               (delays virtual, not slept)

A method subclasses :class:`MasterOracleSolver` and builds its master in :meth:`make_master`; the
driver owns the history rows, the bounds window read by the oracles, the collective checkpoints
and stops (``ctx.history``, ``ctx.checkpoints``, ``ctx.stop``) and the result.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import result as R
from ..bundle.protocol import Master, redistribute_workers
from ..comm.rma import SeqlockRecord
from ..errors import CheckpointError, InputError
from ..problems.oracle import OracleProblem
from .base import Solver, Stop
from .master_rank import MasterRank
from .oracle_rank import run_oracle_rank

BOUNDS_FIELDS = ["iteration", "f_low", "f_up", "gap", "level", "status", "n_evals", "eta"]


def owners_of(m: int, workers: int) -> list[np.ndarray]:
    """Components owned by each worker: i -> worker i mod W."""
    return [np.arange(w, m, workers) for w in range(workers)]


class MasterOracleSolver(Solver):
    """Base of the master/oracle methods; subclasses implement :meth:`make_master`."""

    progress_in_iterations = False      # True: the progress bar counts to max_iter
    collective_records = False          # rows on rank 0; the master checks every oracle answer (Master.admit)
    problem_kind = OracleProblem
    default_problem = "polyhedral"
    min_ranks = 1

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
        self.master: Master | None = self.make_master() if self.comm.rank == 0 else None
        self.last_ckpt = 0                 # master step of the last checkpoint
        self.busy = 0.0                    # master seconds in QPs, LPs and dispatch
        self.wall0 = 0.0
        self.worker_idle = 0.0

    def make_master(self) -> Master:
        raise NotImplementedError

    @property
    def batch(self) -> bool:
        """Asynchronous masters: hand all answers that arrived together to one master step."""
        return True

    @property
    def callback_stopped(self) -> bool:
        return self._callback_stop

    # -- solve ----------------------------------------------------------------------------------
    def solve(self, callback=None) -> R.OptimizeResult:
        self._callback = callback
        comm, ctx = self.comm, self.ctx
        # a method that stops on its gap shows progress as the gap (the bar's values), not as a share of
        # an iteration cap it rarely reaches
        total = int(self.opts["max_iter"]) if self.progress_in_iterations else None
        ctx.history.setup(total, default_every=1, unit=self.progress_unit)
        if comm.rank == 0:
            ctx.history.declare_series("oracle_calls", (self.problem.m,), np.int64)
        self.bounds = SeqlockRecord(comm, BOUNDS_FIELDS, host=0)
        self.wall0 = time.perf_counter()
        if comm.size == 1:
            MasterRank(self).run_in_process()
        elif comm.rank == 0:
            MasterRank(self).run_mpi()
        else:
            self.worker_idle = run_oracle_rank(self)
        ctx.history.close()
        res = self.finish(Stop(R.NO_STOP, ""))
        self.bounds.free()
        return res

    def apply_poll(self, iteration: int, checkpoint: bool, status: int) -> int | None:
        """Every rank, together: checkpoint now if asked, then the status to stop with (None: go on)."""
        if checkpoint and self.ctx.checkpoints.enabled:
            self.ctx.checkpoints.save(iteration, self.state_dict)
            self.last_ckpt = iteration
        return None if status == R.NO_STOP else int(status)

    # -- history (rank 0) --------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        M = self.master
        wall = max(time.perf_counter() - self.wall0, 1e-9)
        fstar = self.problem.reference_objective
        # certified_gap = f_up - f_low (the bracket of f*); gap_to_fstar = F(x_best) - F* (needs the reference)
        vals = dict(objective=M.f_up, lower_bound=M.f_low, upper_bound=M.f_up, certified_gap=M.gap,
                    rel_certified_gap=M.rel_gap(), level=M.lev, qps=M.k, cycle=M.cycle,
                    oracle_calls=float(M.evals.sum()), master_busy=self.busy / wall, n_cuts=float(M.n_cuts))
        if fstar is not None:
            vals["gap_to_fstar"] = M.f_up - fstar
        return vals

    def record(self) -> None:
        """A history row at the master's step count, and the per-oracle call counts."""
        M = self.master
        vals = self.values()
        self.notify(M.steps, M.x_best, vals.pop("objective"), **vals)
        self.ctx.history.append_series("oracle_calls", M.evals)

    def result_extras(self, master: Master) -> dict[str, Any]:
        """Method-specific result fields (rank 0); also stored in the result file's group."""
        return {}

    # -- result ------------------------------------------------------------------------------------
    def finish(self, stop: Stop) -> R.OptimizeResult:
        """Collective: every rank returns the master's result (the stop is the master's own)."""
        comm, p, M = self.comm, self.problem, self.master
        n = p.n_vars
        buf = np.empty(n + 6)
        msg = None
        if comm.rank == 0:
            code = R.FAILED if M.status is None else M.status
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
            worker_idle = [i / wall for i in idle[1:]] if idle and len(idle) > 1 else []
            group = {"oracle_calls": M.evals.copy(), "worker_idle": np.asarray(worker_idle, dtype=np.float64),
                     "master_busy": float(self.busy / wall), "cycles": int(M.cycle), "stop_rule": str(M.stop_rule),
                     "infeasible_qps": int(M.n_infeasible), "qps": int(qps), "lower_bound": float(f_low),
                     "upper_bound": float(f_up), **self.result_extras(M)}
            extra.update(group, worker_idle=worker_idle, solution={"x": x, "oracle_calls": M.evals.copy()},
                         extra_groups={"level_bundle": group})
        return R.make_result(x, float(f_up), int(steps), int(code), msg, **extra)

    # -- checkpoints -------------------------------------------------------------------------------
    def _my_components(self) -> np.ndarray:
        if self.comm.size == 1:
            return np.arange(self.problem.m)
        return self.owners[self.comm.rank - 1] if self.comm.rank > 0 else np.arange(0)

    def state_dict(self) -> dict[str, Any] | None:
        parts = self.comm.gather_obj(self.problem.delays.state(self._my_components()))
        if self.comm.rank != 0:
            return None
        rngs = [""] * self.problem.m
        for part in parts:
            for i, st in part.items():
                rngs[i] = st
        return {"master": self.master.state_dict(), "delay_rngs": rngs, "busy": self.busy,
                "n_workers": self.W}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore; a checkpoint of another oracle-rank count continues with the components spread over
        this run's oracle ranks (the same components: the cuts, bounds and centre stay valid)."""
        old_w = int(state["n_workers"])
        if not 1 <= old_w <= self.problem.m:
            raise CheckpointError(f"checkpoint has n_workers={old_w}, the problem {self.problem.m} components")
        if self.master is not None:
            master = state["master"]
            if old_w != self.W:
                master = redistribute_workers(master, self.master.per_worker_state, owners_of(self.problem.m, old_w),
                                              self.owners)
            self.master.load_state_dict(master)
            self.busy = float(state["busy"])
            self.last_ckpt = self.master.steps
        self.problem.delays.load_state(state["delay_rngs"])
