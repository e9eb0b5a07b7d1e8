"""``MFSolver``: what the matrix-factorization solvers share (grid, init, per-epoch evaluation,
stopping rules, early stopping on held-out RMSE, result and checkpoint of the factors)."""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from .. import result as R
from ..errors import CheckpointError, InputError
from ..options import Option
from ..problems.mf import MFProblem
from ..solvers.base import Solver
from .init import read_factors
from .model import DistMF


def common_options(max_epochs: int = 50, init_scale: float = 0.1, patience: int = 5,
                   tol: float = 1e-6) -> tuple[Option, ...]:
    """Options every MF solver has."""
    return (
        Option("max_epochs", max_epochs, "number of data passes (epochs)", int, low=0),
        Option("blocks", 0, "blocks per dimension nb (0: one per rank); a multiple of the rank count. "
               "A fixed nb gives the same iterates at any rank count dividing it", int, low=0),
        Option("init", "random", "initial factors: random (N(0, init_scale^2), same at any rank count), "
               "mt19937 (the reference code's N(0,1) draw from std::mt19937(run.seed), A then B; use "
               "--seed 1453 for its default), or a .npz/.h5 file with W (rows x k) and H (columns x k)", str),
        Option("init_scale", init_scale, "standard deviation of random initial factors", float, low=0.0),
        Option("target_rmse", 0.0, "stop when the training RMSE is <= this (0: off)", float, low=0.0),
        Option("target_test_rmse", 0.0, "stop when the held-out RMSE is <= this (0: off)", float, low=0.0),
        Option("patience", patience, "stop after this many epochs without a better held-out RMSE and "
               "return the best factors (0: off)", int, low=0),
        Option("tol", tol, "stop when the objective changed less than tol (relative) over 5 epochs (0: off)",
               float, low=0.0),
    )


class MFSolver(Solver):
    """Base of ``hamsi``, ``mf_gd`` and ``dsgd``. Subclasses implement :meth:`run_epoch` (one data
    pass) and may extend :meth:`extra_state` / :meth:`load_extra_state`."""

    problem_kind = MFProblem
    default_problem = "synthetic_mf"
    uses_l2 = True

    @classmethod
    def check_config(cls, cfg: dict[str, dict[str, Any]], n_ranks: int) -> None:
        nb = cfg["solver"]["blocks"]
        if nb and nb % n_ranks:
            raise InputError(f"solver.blocks={nb} must be a multiple of the rank count {n_ranks}")

    def __init__(self, problem, options, ctx):
        super().__init__(problem, options, ctx)
        o = options
        nb = o["blocks"] or self.comm.size
        self.k = int(problem.opts["latent_dim"])
        self.lam = float(problem.opts["l2"]) if self.uses_l2 else 0.0
        self.mf = DistMF(self.comm, problem, nb, self.k, self.lam, problem.opts["reg"])
        self.seed = int(ctx.cfg.get("seed", 0))
        if o["init"] == "random":
            self.mf.init_random(self.seed, o["init_scale"])
        elif o["init"] == "mt19937":
            from .init import reference_normals
            full = reference_normals(self.seed, self.mf.n_vars)
            self.mf.init_from(*self.mf.split_global(full))
        else:
            W, H = read_factors(o["init"], self.mf.m, self.mf.n, self.k)
            self.mf.init_from(W, H)
        self.epoch = 0
        self.step_time = 0.0
        self.eval_time = 0.0
        self.best_x: np.ndarray | None = None
        self.best_score = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.objectives: list[float] = []
        self.last_eval: dict[str, float] = {}

    # -- to implement ----------------------------------------------------------------------
    def run_epoch(self) -> tuple[int, str] | None:
        """One data pass on ``self.mf.x``; return (status, message) to stop early, else None."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """Collective: solver-specific state (global order) merged into the checkpoint on rank 0."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def after_eval(self, ev: dict[str, float]) -> dict[str, float]:
        """Hook after the per-epoch evaluation (e.g. roll back a diverged epoch); returns the
        evaluation to record."""
        return ev

    # -- the loop --------------------------------------------------------------------------
    def solve(self, callback=None) -> R.OptimizeResult:
        o, ctx = self.opts, self.ctx
        self._callback = callback
        E = o["max_epochs"]
        ctx.setup_schedule(E, default_history_every=1)
        status, msg = R.MAX_ITER, f"reached max_epochs={E}"
        if self.epoch == 0:
            self._record(self._evaluate())
        while self.epoch < E:
            t0 = time.perf_counter()
            stop = self.run_epoch()
            self.step_time += time.perf_counter() - t0
            self.epoch += 1
            ev = self.after_eval(self._evaluate())
            self._record(ev)
            if stop is not None:
                status, msg = stop
                break
            stop = self._check_stop(ev)
            if stop is not None:
                status, msg = stop
                break
            polled = self.poll(self.epoch)
            if polled is not None:
                status, msg = polled, R.stop_message(polled)
                break
        ctx.close_progress()
        return self._finish(status, msg)

    def _evaluate(self) -> dict[str, float]:
        t0 = time.perf_counter()
        ev = self.mf.evaluate(self.mf.x)
        self.eval_time += time.perf_counter() - t0
        return ev

    def _record(self, ev: dict[str, float]) -> None:
        self.last_eval = ev
        vals = {k: v for k, v in ev.items() if k != "objective"}
        self.notify(self.epoch, self.mf.x, ev["objective"], epoch=self.epoch, step_time=self.step_time, **vals)

    def _check_stop(self, ev: dict[str, float]) -> tuple[int, str] | None:
        o = self.opts
        f = ev["objective"]
        if not math.isfinite(f) or not math.isfinite(ev["rmse"]):
            return R.FAILED, f"non-finite objective at epoch {self.epoch}"
        self.objectives.append(f)
        if o["target_rmse"] and ev["rmse"] <= o["target_rmse"]:
            return R.CONVERGED, f"training RMSE {ev['rmse']:.6g} <= target_rmse {o['target_rmse']}"
        if "test_rmse" in ev:
            if o["target_test_rmse"] and ev["test_rmse"] <= o["target_test_rmse"]:
                return R.CONVERGED, f"held-out RMSE {ev['test_rmse']:.6g} <= target_test_rmse {o['target_test_rmse']}"
            if o["patience"]:
                if ev["test_rmse"] < self.best_score:
                    self.best_score, self.best_epoch, self.bad_epochs = ev["test_rmse"], self.epoch, 0
                    self.best_x = self.mf.x.copy()
                else:
                    self.bad_epochs += 1
                    if self.bad_epochs >= o["patience"]:
                        self.mf.x[...] = self.best_x
                        return R.CONVERGED, (f"no better held-out RMSE for {o['patience']} epochs; "
                                             f"returning epoch {self.best_epoch} (test RMSE {self.best_score:.6g})")
        if o["tol"] and len(self.objectives) > 5:
            old = self.objectives[-6]
            if abs(old - f) <= o["tol"] * max(abs(old), 1e-300):
                return R.CONVERGED, f"objective changed by less than tol={o['tol']} over 5 epochs"
        return None

    def _finish(self, status: int, msg: str) -> R.OptimizeResult:
        full = self.mf.gather(self.mf.x)
        ev = self.last_eval if status != R.CONVERGED or self.best_epoch < 0 else self.mf.evaluate(self.mf.x)
        extra: dict[str, Any] = {"epochs": self.epoch, "rmse": ev.get("rmse"), "step_time": self.step_time,
                                 "eval_time": self.eval_time, "bytes_sent": self.comm.stats.bytes_sent}
        if "test_rmse" in ev:
            extra["test_rmse"] = ev["test_rmse"]
        solution = None
        if full is not None:
            W, H = self.mf.split_global(full)
            solution = {"W": W.copy(), "H": H.copy(),
                        "offset": np.array([getattr(self.problem, "offset", 0.0)])}
            for name in ("row_ids", "col_ids"):
                ids = getattr(self.problem, name, None)
                if ids is not None:
                    solution[name] = np.asarray(ids)
        return R.make_result(full, ev.get("objective"), self.epoch, status, msg, solution=solution, **extra)

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self):
        x = self.mf.gather(self.mf.x)
        has_best = self.best_x is not None
        best = self.mf.gather(self.best_x) if has_best else None
        extra = self.extra_state()
        if self.comm.rank != 0:
            return None
        st = {"x": x, "epoch": self.epoch, "step_time": self.step_time, "eval_time": self.eval_time,
              "best_score": self.best_score, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
              "objectives": np.asarray(self.objectives, dtype=np.float64), "n_ranks": self.comm.size,
              "blocks": self.mf.nb, "last_eval": dict(self.last_eval)}
        if has_best:
            st["best_x"] = best
        st.update(extra)
        return st

    def load_state_dict(self, state) -> None:
        x = np.asarray(state["x"], dtype=np.float64)
        if x.size != self.mf.n_vars:
            raise CheckpointError(f"checkpoint has {x.size} factor entries, this problem {self.mf.n_vars}")
        self.mf.x[...] = self.mf.scatter(x)
        self.epoch = int(state["epoch"])
        self.step_time = float(state["step_time"])
        self.eval_time = float(state["eval_time"])
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.objectives = [float(v) for v in np.asarray(state["objectives"]).ravel()]
        self.last_eval = {k: float(v) for k, v in dict(state.get("last_eval", {})).items()}
        self.best_x = self.mf.scatter(state["best_x"]) if "best_x" in state else None
        self.load_extra_state(state)
