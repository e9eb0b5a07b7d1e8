"""What the matrix-factorization solvers (``hamsi``, ``mf_gd``, ``dsgd``) share.

- :class:`MFSolver`: the block grid, initial factors, one evaluation per epoch, the stopping rules
  (target RMSEs, early stopping on held-out RMSE, relative objective change), the result and the
  checkpoint of the factors. One :meth:`~mpiopt.solvers.base.Solver.step` is one epoch (data pass).
- :class:`StratifiedMF`: stratified steps on the cyclic stratum order with the 1/beta_GD step
  schedule, the safeguard (halve a step that raises the stratum loss) and the rollback of a
  diverged epoch. ``hamsi`` adds the L-BFGS model on top; ``mf_gd`` (strata mode) uses it as is.

The machinery itself (grid, kernels, L-BFGS, cuts, init) lives in :mod:`mpiopt.mf`.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from .. import result as R
from ..errors import CheckpointError, InputError
from ..mf.cuts import stratum_at
from ..mf.init import read_factors, reference_normals
from ..options import Option
from ..problems.mf import MFProblem
from ..problems.base import settings
from .base import Solver, Stop

SAFEGUARD_RTOL = 1e-4
SAFEGUARD_TRIES = 5
WARMUP_MAX_MULT = 2.0 ** 30
RESET_AFTER = 4          # rejections in a row that clear the curvature model (4 measured better than 2)


def beta(eta: float, gamma: float, e: int) -> float:
    """Step divisor (eta (e+1))^gamma of inner step ``e``."""
    return (eta * (e + 1)) ** gamma


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
               "return the best factors; counted once the held-out RMSE has beaten the first epoch's (0: off)",
               int, low=0),
        Option("tol", tol, "stop when the objective changed less than tol (relative) over 5 epochs (0: off)",
               float, low=0.0),
    )


# options of the stratified step schedule and its safeguard (hamsi and mf_gd)
GAMMA = Option("gamma", 0.51, "step schedule exponent", float, low=0.0)
ETA_GD = Option("eta_gd", 0.001, "warm-up gradient steps 1/(eta_gd (e+1))^gamma until M pairs are stored",
                float, low=0.0, low_open=True)
SAFEGUARD = Option("safeguard", True, "reject/halve steps that raise the stratum loss or give NaN", bool)
WARMUP_GROWTH = Option("warmup_growth", True, "with the safeguard: let the step multiplier of warm-up gradient "
                       "steps double after each accepted step (finds the scale of the 1/nnz-normalized gradient; "
                       "reset to at most 1 once the L-BFGS model is used)", bool)


class MFSolver(Solver):
    """Base of ``hamsi``, ``mf_gd`` and ``dsgd``. A subclass writes :meth:`step` (one epoch, timed
    with :meth:`timed`, ending with ``return self.end_epoch(stop)``) and may extend
    :meth:`extra_state` / :meth:`load_extra_state`, :meth:`after_eval` and :meth:`finish`."""

    problem_kind = MFProblem
    default_problem = "synthetic_mf"
    budget_option = "max_epochs"
    progress_unit = "epoch"
    uses_l2 = True

    @classmethod
    def check_config(cls, cfg: dict[str, dict[str, Any]], n_ranks: int) -> None:
        nb = cfg["solver"]["blocks"]
        if nb and nb % n_ranks:
            raise InputError(f"solver.blocks={nb} must be a multiple of the rank count {n_ranks}")

    @classmethod
    def memory_estimate(cls, problem_cls: type, cfg: dict[str, dict[str, Any]],
                        n_ranks: int) -> tuple[float, str] | None:
        """The block grid: nb per-stratum exchange plans of nb/P groups each (Python objects, about
        80 bytes a group) and the block cuts."""
        nb = float(cfg["solver"]["blocks"] or n_ranks)
        return nb * (80.0 * nb / max(1, n_ranks) + 400.0 + 32.0), settings(cfg["solver"], "blocks", section="solver")

    def __init__(self, problem, options, ctx):
        super().__init__(problem, options, ctx)
        o = options
        nb = o["blocks"] or self.comm.size
        self.k = int(problem.opts["latent_dim"])
        self.lam = float(problem.opts["l2"]) if self.uses_l2 else 0.0
        po = problem.opts
        from ..mf.model import DistMF      # here, not at the top: it imports numba (the registry loads this module)
        self.mf = DistMF(self.comm, problem, nb, self.k, self.lam, po["reg"], bias=po["bias"],
                         bias_l2=float(po["bias_l2"]) if self.uses_l2 else 0.0, take=True)
        self.seed = ctx.seed
        m, n, k = self.mf.m, self.mf.n, self.k
        if o["init"] == "random":
            self.mf.init_random(self.seed, o["init_scale"])
        elif o["init"] == "mt19937":
            full = reference_normals(self.seed, (m + n) * k)
            self.mf.init_from(full[:m * k].reshape(m, k), full[m * k:].reshape(n, k))
        else:
            self.mf.init_from(*read_factors(o["init"], m, n, k, biases=self.mf.bias))
        self.step_time = 0.0
        self.eval_time = 0.0
        self.best_x: np.ndarray | None = None
        self.best_score = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.first_score = math.inf      # held-out RMSE after the first epoch: patience counts once it is beaten
        self.restore_best = False
        self.objectives: list[float] = []
        self.last_eval: dict[str, float] = {}
        self.eval_epoch = -1          # epoch of last_eval

    @property
    def x(self) -> np.ndarray:
        """This rank's factor entries (local layout of :class:`~mpiopt.mf.model.DistMF`)."""
        return self.mf.x

    # -- hooks -------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """Collective: solver-specific state (global order) merged into the checkpoint on rank 0."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def after_eval(self, ev: dict[str, float]) -> dict[str, float]:
        """After the evaluation that ends an epoch (e.g. roll back a diverged epoch); returns the
        evaluation to record."""
        return ev

    # -- one epoch ---------------------------------------------------------------------------
    @contextmanager
    def timed(self) -> Iterator[None]:
        """Count the time of the block in ``step_time`` (evaluation and checkpoints excluded)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.step_time += time.perf_counter() - t0

    def end_epoch(self, stop: Stop | None = None) -> Stop | None:
        """Evaluate after the data pass of epoch ``nit`` and apply the stopping rules."""
        epoch = self.nit + 1
        ev = self.after_eval(self.evaluate())
        self.last_eval, self.eval_epoch = ev, epoch
        return stop if stop is not None else self.check_stop(ev, epoch)

    def record_due(self, stop, budget) -> bool:
        return True       # every epoch is evaluated (the stopping rules need it), so every one is recorded

    def evaluate(self) -> dict[str, float]:
        """Objective and RMSEs at the current factors; the time counts in ``eval_time`` except what
        :meth:`train_at_x` spends in the next epoch's own work (counted in ``step_time``)."""
        t0, s0 = time.perf_counter(), self.step_time
        ev = self.mf.evaluate(self.mf.x, train=self.train_at_x())
        self.eval_time += time.perf_counter() - t0 - (self.step_time - s0)
        return ev

    def train_at_x(self) -> dict[int, np.ndarray]:
        """Stratum -> this rank's (q, 2) per-block [objective, sse] of that stratum's training ratings
        at the current factors, for the strata the solver computes anyway (the evaluation skips
        their pass and sums the same numbers in the same order)."""
        return {}

    def values(self) -> dict[str, Any]:
        if self.eval_epoch != self.nit:
            self.last_eval, self.eval_epoch = self.evaluate(), self.nit
        ev = self.last_eval
        rest = {k: v for k, v in ev.items() if k != "objective"}
        return {"objective": ev["objective"], "epoch": self.nit, "step_time": self.step_time,
                "eval_time": self.eval_time, **rest}

    def check_stop(self, ev: dict[str, float], epoch: int) -> Stop | None:
        o = self.opts
        f = ev["objective"]
        bad = self.watch("objective", f, epoch) or self.watch("training RMSE", ev["rmse"], epoch)
        if bad is not None:
            return bad
        self.objectives.append(f)
        if o["target_rmse"] and ev["rmse"] <= o["target_rmse"]:
            return Stop(R.CONVERGED, f"training RMSE {ev['rmse']:.6g} <= target_rmse {o['target_rmse']}")
        if "test_rmse" in ev:
            if o["target_test_rmse"] and ev["test_rmse"] <= o["target_test_rmse"]:
                return Stop(R.CONVERGED, f"held-out RMSE {ev['test_rmse']:.6g} <= target_test_rmse "
                                         f"{o['target_test_rmse']}")
            if o["patience"]:
                if self.first_score == math.inf:
                    self.first_score = ev["test_rmse"]
                if ev["test_rmse"] < self.best_score:
                    self.best_score, self.best_epoch, self.bad_epochs = ev["test_rmse"], epoch, 0
                    self.best_x = self.mf.x.copy()
                elif self.best_score < self.first_score:
                    # counted only once the held-out RMSE has beaten the first epoch's: it rises for a few
                    # epochs while the factors leave the start (measured: about 10 epochs on the demos)
                    self.bad_epochs += 1
                    if self.bad_epochs >= o["patience"]:
                        self.restore_best = True         # finish() returns the best factors
                        return Stop(R.CONVERGED, f"no better held-out RMSE for {o['patience']} epochs; "
                                                 f"returning epoch {self.best_epoch} (test RMSE {self.best_score:.6g})")
        if o["tol"] and len(self.objectives) > 5:
            old = self.objectives[-6]
            if abs(old - f) <= o["tol"] * max(abs(old), 1e-300):
                return Stop(R.CONVERGED, f"objective changed by less than tol={o['tol']} over 5 epochs")
        return None

    # -- result ------------------------------------------------------------------------------
    def finish(self, stop: Stop) -> R.OptimizeResult:
        if self.restore_best:
            self.mf.x[...] = self.best_x
        full = self.mf.gather(self.mf.x)
        ev = self.last_eval if stop.status != R.CONVERGED or self.best_epoch < 0 else self.mf.evaluate(self.mf.x)
        extra: dict[str, Any] = {"epochs": self.nit, "rmse": ev.get("rmse"), "step_time": self.step_time,
                                 "eval_time": self.eval_time, "bytes_sent": self.comm.stats.bytes_sent}
        quality = self.ctx.history.quality("test_rmse", larger_is_better=False)   # best epoch (rank 0)
        if "test_rmse" in ev:
            extra["test_rmse"] = quality["test_rmse"] = ev["test_rmse"]        # of the factors returned
        solution = None
        if full is not None:
            W, H = self.mf.split_global(full)
            k = self.k
            solution = {"W": W[:, :k].copy(), "H": H[:, :k].copy(),
                        "offset": np.array([self.problem.offset])}
            if self.mf.bias:
                solution["row_bias"] = W[:, k].copy()
                solution["col_bias"] = H[:, k].copy()
            for name, ids in (("row_ids", self.problem.row_ids), ("col_ids", self.problem.col_ids)):
                if ids is not None:
                    solution[name] = np.asarray(ids)
        return R.make_result(full, ev.get("objective"), self.nit, stop.status, stop.message, solution=solution,
                             quality=quality, **extra)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self):
        x = self.mf.gather(self.mf.x)
        has_best = self.best_x is not None
        best = self.mf.gather(self.best_x) if has_best else None
        extra = self.extra_state()
        if self.comm.rank != 0:
            return None
        st = {"x": x, "epoch": self.nit, "step_time": self.step_time, "eval_time": self.eval_time,
              "best_score": self.best_score, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
              "first_score": self.first_score,
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
        self.nit = int(state["epoch"])
        self.step_time = float(state["step_time"])
        self.eval_time = float(state["eval_time"])
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.first_score = float(state.get("first_score", math.inf))
        self.objectives = [float(v) for v in np.asarray(state["objectives"]).ravel()]
        self.last_eval = {k: float(v) for k, v in dict(state.get("last_eval", {})).items()}
        self.eval_epoch = self.nit if self.last_eval else -1
        self.best_x = self.mf.scatter(state["best_x"]) if "best_x" in state else None
        self.load_extra_state(state)


class StratifiedMF(MFSolver):
    """Stratified steps ``x <- x - d``, one stratum per inner step in the cyclic order, with the
    1/beta_GD schedule, the safeguard and the rollback of a diverged epoch.

    A subclass may keep a curvature model: :meth:`observe` (sees every stratum gradient),
    :meth:`direction` (d from g), :meth:`model_ready` and :meth:`reset_model`."""

    def __init__(self, problem, options, ctx):
        super().__init__(problem, options, ctx)
        mf = self.mf
        self.safeguard = self.uses_safeguard()
        self.C = mf.nb                # strata per epoch
        self.e = 0                    # inner steps done
        self.mult = 1.0
        self.rejects = 0
        self.rollbacks = 0
        self.g = np.zeros(mf.n_local)
        self.d = np.zeros(mf.n_local)
        self.x_trial = np.zeros(mf.n_local) if self.safeguard else None
        self.x_epoch = mf.x.copy() if self.safeguard else None
        self.last_obj = math.inf
        self.fresh = False            # residuals of stratum (e+1) mod C at x are kept in the blocks
        self.g_parts: np.ndarray | None = None   # g already holds the next step's gradient at x
        self.known: dict[int, np.ndarray] = {}    # stratum -> (q, 2) partials at the current x

    def uses_safeguard(self) -> bool:
        return bool(self.opts["safeguard"])

    def strata_steps(self) -> bool:
        """Whether the epochs are made of :meth:`inner_step` calls (a subclass may step otherwise)."""
        return True

    # -- curvature model hooks (none here: plain gradient steps) -------------------------------
    def observe(self, e: int, x: np.ndarray, g: np.ndarray) -> None:
        """Sees x and the stratum gradient g of inner step ``e`` before the step."""

    def direction(self, g: np.ndarray, d: np.ndarray, e: int) -> None:
        """d = g / beta_GD(e)."""
        np.multiply(g, 1.0 / beta(self.opts["eta_gd"], self.opts["gamma"], e), out=d)

    def model_ready(self) -> bool:
        return False

    def reset_model(self) -> bool:
        """Forget the curvature model; True if there was one to forget."""
        return False

    # -- one epoch -----------------------------------------------------------------------------
    def step(self) -> Stop | None:
        """One epoch: C inner steps, on strata s_e = (e+1) mod C."""
        with self.timed():
            for _ in range(self.C):
                self.inner_step()
        return self.end_epoch()

    def inner_step(self) -> None:
        mf, e = self.mf, self.e
        x, g, d = mf.x, self.g, self.d
        s = stratum_at(e, self.C)
        parts, self.g_parts = self.g_parts, None
        if parts is None:
            # with one stratum, the safeguard's last accepted trial already holds this step's residuals
            parts = mf.stratum_loss_grad(s, x, g, reuse=self.fresh)
        self.fresh = False
        self.observe(e, x, g)
        self.direction(g, d, e)
        self.known = {}
        if not self.safeguard:
            x -= d
        else:
            self.safeguarded_update(s, parts, g, d, e)
        self.e += 1

    def safeguarded_update(self, s: int, parts: np.ndarray, g: np.ndarray, d: np.ndarray, e: int) -> None:
        """x <- x - mult d once the stratum loss does not rise; else halve mult (up to 5 times)."""
        mf, x, xt = self.mf, self.mf.x, self.x_trial
        if self.model_ready():
            self.mult = min(self.mult, 1.0)          # warm-up growth does not carry over to H g
        f0 = float(mf.reduce(parts[:, :1])[0])
        for _ in range(SAFEGUARD_TRIES + 1):
            np.multiply(d, self.mult, out=xt)
            np.subtract(x, xt, out=xt)
            trial = mf.stratum_loss(s, xt, keep=self.C == 1)
            f1 = float(mf.reduce(trial[:, :1])[0])
            if math.isfinite(f1) and f1 - f0 <= SAFEGUARD_RTOL * abs(f0):
                x[...] = xt
                self.known = {s: trial}               # stratum s at the new x (for the evaluation)
                self.fresh = self.C == 1
                cap = WARMUP_MAX_MULT if (not self.model_ready() and self.opts["warmup_growth"]) else 1.0
                self.mult = min(cap, 2.0 * self.mult)
                self.rejects = 0
                return
            self.mult *= 0.5
            self.rejects += 1
            if self.rejects == RESET_AFTER and self.reset_model():
                self.direction(g, d, e)              # back to warm-up gradient steps

    def train_at_x(self) -> dict[int, np.ndarray]:
        """Strata whose loss at the current factors is known for free: the last step's stratum (the
        safeguard's accepted trial) and the next step's stratum, whose gradient pass runs now (counted
        as step time; the next step uses it, same bits as computing it then). One stratum per epoch:
        the whole training objective; two strata with the safeguard: both."""
        if not self.strata_steps():
            return {}
        s = stratum_at(self.e, self.C)
        if self.g_parts is None:
            with self.timed():
                self.g_parts = self.mf.stratum_loss_grad(s, self.mf.x, self.g, reuse=self.fresh)
            self.fresh = False
        return {**self.known, s: self.g_parts}

    def after_eval(self, ev: dict[str, float]) -> dict[str, float]:
        if not self.safeguard:
            return ev
        f = ev["objective"]
        if not math.isfinite(f) or (math.isfinite(self.last_obj) and f > 2.0 * self.last_obj):
            # diverged epoch: back to the last epoch's factors, clear the memory, smaller steps
            self.mf.x[...] = self.x_epoch
            self.fresh = False
            self.g_parts = None
            self.known = {}
            self.reset_model()
            self.mult = 0.25
            self.rollbacks += 1
            ev = self.evaluate()
        self.x_epoch[...] = self.mf.x
        self.last_obj = ev["objective"]
        return ev

    def finish(self, stop: Stop) -> R.OptimizeResult:
        res = super().finish(stop)
        res["inner_steps"] = self.e
        res["rollbacks"] = self.rollbacks
        return res

    def extra_state(self) -> dict[str, Any]:
        return {"e": self.e, "mult": self.mult, "rejects": self.rejects, "rollbacks": self.rollbacks,
                "last_obj": self.last_obj}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.e = int(state["e"])
        self.mult = float(state["mult"])
        self.rejects = int(state["rejects"])
        self.rollbacks = int(state["rollbacks"])
        self.last_obj = float(state["last_obj"])
        self.g_parts = None
        self.known = {}
        if self.x_epoch is not None:
            self.x_epoch[...] = self.mf.x
