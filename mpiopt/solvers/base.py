"""The solver template every registered solver follows.

A solver writes one iteration as in its paper (:meth:`Solver.step`), the values of a history row
(:meth:`Solver.values`) and the result (:meth:`Solver.finish`); :meth:`Solver.solve` owns the
rest: the iteration budget, history records, the user callback, the collective stop/checkpoint
poll, the stop message and the numerical checks.

Numerical checks (every solver, also those that override :meth:`Solver.solve`): a non-finite
objective at a history row (:meth:`Solver.record`, or :meth:`Solver.watch` where a solver records
its own rows), a non-finite quantity of :meth:`Solver.numeric_checks` after an iteration, or a
non-finite ``fun`` / ``fun_raw`` in the result ends the run with status FAILED, ``success`` False
and the message of :func:`numerical_failure`. The checks read values, they never change an iterate.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

from ..comm import Comm
from ..context import RunContext
from ..options import Option
from ..problems.base import Problem, settings
from ..result import (CALLBACK_STOP, CONVERGED, FAILED, INTERRUPTED, MAX_ITER, OptimizeResult, failure_message,
                      nonfinite, stop_message)

Callback = Callable[[OptimizeResult], Any]
START_HINT = "at the starting point: check the data for huge values and the initial point"


class Stop(NamedTuple):
    """Why a solver stops: a status code (:mod:`mpiopt.result`) and a message."""
    status: int
    message: str


def numerical_failure(quantity: str, value: float, iteration: int, hint: str = "", unit: str = "iteration") -> Stop:
    """The FAILED stop of a non-finite ``quantity`` (message: :func:`mpiopt.result.failure_message`)."""
    return Stop(FAILED, failure_message(quantity, value, iteration, hint, unit))


def minibatch_estimate(cfg: dict[str, dict[str, Any]], samples: float, *keys: str) -> tuple[float, str]:
    """A minibatch of ``samples`` samples of a composite problem: indices, losses and residuals, and the
    gathered rows (``problem.n_features`` x ``problem.density`` numbers each, where the problem says),
    named by the ``solver.*`` ``keys`` that set it."""
    p = cfg["problem"]
    row = float(p.get("n_features") or 0) * float(p.get("density", 1.0))
    return 8.0 * samples * (4 + 2 * row), settings(cfg["solver"], *keys, section="solver")


class Solver:
    """Base class of every solver.

    Class attributes describe the solver to the registry and the command line. A solver that
    iterates in lockstep on every rank implements :meth:`step`, :meth:`values`, :meth:`finish`,
    :meth:`state_dict` and :meth:`load_state_dict`; ``self.nit`` counts the iterations done.
    Solvers whose ranks play different roles (master/oracles, host/workers) override
    :meth:`solve` and use the same parts (``ctx.history``, ``ctx.checkpoints``, ``ctx.stop``).

    Conventions (scipy.optimize style): ``solve(callback)`` returns an :class:`OptimizeResult`
    with ``x`` (global order, on every rank unless documented), ``fun``, ``nit``, ``status``,
    ``success``, ``message`` plus solver-specific fields; ``callback(intermediate_result)`` is
    called on every rank at history records and may raise ``StopIteration`` to stop.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    problem_kind: ClassVar[type] = Problem
    default_problem: ClassVar[str] = ""
    demo_settings: ClassVar[dict[str, Any]] = {}   # --set overrides used by `mpiopt.run SOLVER` demos
    min_ranks: ClassVar[int] = 1
    deterministic: ClassVar[bool] = True
    budget_option: ClassVar[str] = "max_iter"       # the option holding the iteration budget
    history_points: ClassVar[int] = 50              # default: about this many history rows per run
    progress_unit: ClassVar[str] = "it"
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()   # (optional module, pip extra) checked before work
    failure_hint: ClassVar[str] = ""                # what to try after a numerical failure (ends its message)
    collective_records: ClassVar[bool] = True       # history rows recorded on every rank (same values)
    result_checks: ClassVar[tuple[str, ...]] = ("fun", "fun_raw")   # result fields that must be finite

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("solve")
        if own is not None and not getattr(own, "_checked", False):   # a solver's own loop: checked the same
            cls.solve = _checked_solve(own)

    def __init__(self, problem: Problem, options: dict[str, Any], ctx: RunContext):
        self.problem = problem
        self.opts = options
        self.ctx = ctx
        self.comm: Comm = ctx.comm
        self.nit = 0
        self._callback: Callback | None = None
        self._callback_stop = False
        self.failure: Stop | None = None     # the first numerical failure seen (:meth:`watch`)

    @classmethod
    def check_problem(cls, problem_cls: type) -> str | None:
        """Return why this solver cannot run ``problem_cls``, or None."""
        if not issubclass(problem_cls, cls.problem_kind):
            return (f"solver {cls.name!r} needs a {cls.problem_kind.kind_name} problem; "
                    f"{problem_cls.name!r} is a {problem_cls.kind_name} problem")
        return None

    @classmethod
    def check_config(cls, cfg: dict[str, dict[str, Any]], n_ranks: int) -> None:
        """Cross-option validation before any work; raise InputError."""

    @classmethod
    def memory_estimate(cls, problem_cls: type, cfg: dict[str, dict[str, Any]],
                        n_ranks: int) -> tuple[float, str] | None:
        """Bytes per rank of this solver's own state on ``problem_cls`` beyond what the problem's
        estimate counts, and the settings that drive it (``solver.*``/``problem.*`` keys); None: nothing."""
        return None

    @classmethod
    def run_memory_estimate(cls, problem_cls: type, cfg: dict[str, dict[str, Any]], n_ranks: int,
                            with_problem: bool = True) -> tuple[float, str] | None:
        """This solver's estimate plus the problem's (unless ``with_problem`` is false: a problem
        already set up), checked against the node's memory before set-up; None when neither is known."""
        parts = [e for e in (problem_cls.memory_estimate(cfg["problem"], n_ranks) if with_problem else None,
                             cls.memory_estimate(problem_cls, cfg, n_ranks)) if e is not None]
        if not parts:
            return None
        return sum(b for b, _ in parts), ", ".join(w for _, w in parts)

    # -- to implement ------------------------------------------------------------------
    def step(self) -> Stop | None:
        """One iteration (every rank). Return a :class:`Stop` to end the run (converged, failed)."""
        raise NotImplementedError

    def values(self) -> dict[str, Any]:
        """Collective: the values of a history row; ``objective`` is the reported F(x)."""
        raise NotImplementedError

    def finish(self, stop: Stop) -> OptimizeResult:
        """Collective: the result of a run that stopped with ``stop``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any] | None:
        """Collective: everything needed to continue, arrays in global order; full dict on rank 0."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Collective: restore from ``state`` (as read back from a checkpoint, on every rank)."""
        raise NotImplementedError

    def numeric_checks(self) -> Mapping[str, Any]:
        """Hook: this solver's own quantities that must stay finite after an iteration, by name ("iterate",
        "gradient", ...); values the same on every rank and cheap to test. Default: none (the objective of
        every history row and the result are checked anyway)."""
        return {}

    # -- overridable policy --------------------------------------------------------------
    def budget(self) -> int:
        """Iterations to run in all (counted from 0, resumes included)."""
        return int(self.opts[self.budget_option])

    def record_due(self, stop: Stop | None, budget: int) -> bool:
        """Whether to record a history row after the iteration that gave ``stop``."""
        return self.ctx.history.due(self.nit, budget) or (stop is not None and stop.status == CONVERGED)

    @property
    def x(self) -> Any:
        """The current iterate (what the callback sees)."""
        return getattr(self, "_x", None)

    @x.setter
    def x(self, value: Any) -> None:
        self._x = value

    # -- the loop --------------------------------------------------------------------------
    def solve(self, callback: Callback | None = None) -> OptimizeResult:
        """Run until the budget, a solver stop, the time budget, a signal or the callback stops it."""
        self._callback = callback
        T = self.budget()
        self.ctx.history.setup(T, default_every=max(1, T // self.history_points), unit=self.progress_unit)
        stop = Stop(MAX_ITER, f"reached {self.budget_option}={T}")
        if self.nit == 0:
            self.record()
        failed = self.failure if self.collective_records else None
        if failed is not None:
            stop = failed
        while failed is None and self.nit < T:
            got = self.step()
            if got is None or got.status != FAILED:
                got = self.check_numerics(self.nit + 1) or got
            self.nit += 1
            self.ctx.stop.heartbeat()
            if self.record_due(got, T):
                self.record()
                if got is None and self.failure is not None and self.collective_records:
                    got = self.failure
            if got is not None:
                stop = got
                break
            polled = self.poll(self.nit)
            if polled is not None:
                stop = Stop(polled, stop_message(polled))
                break
        self.ctx.history.close()
        return self.finish(stop)

    # -- numerical checks --------------------------------------------------------------------
    def watch(self, quantity: str, value: Any, iteration: int) -> Stop | None:
        """Note a value that must be finite: the first non-finite one is kept in ``self.failure`` (a FAILED
        stop naming ``quantity`` and ``iteration``) and returned; None while all are finite."""
        bad = nonfinite(value)
        if bad is None:
            return None
        if self.failure is None:
            unit = "iteration" if self.progress_unit == "it" else self.progress_unit
            hint = self.failure_hint if iteration > 0 else START_HINT
            self.failure = numerical_failure(quantity, bad, iteration, hint, unit)
        return self.failure

    def check_numerics(self, iteration: int) -> Stop | None:
        """The FAILED stop of the first non-finite quantity of :meth:`numeric_checks`, or None."""
        for name, value in self.numeric_checks().items():
            bad = self.watch(name, value, iteration)
            if bad is not None:
                return bad
        return None

    def checked_result(self, res: OptimizeResult) -> OptimizeResult:
        """``res`` as FAILED when a numerical failure was seen or a field of :attr:`result_checks` is not
        finite (a run stopped by a signal keeps its status; a run that did no iteration is not checked)."""
        if res.get("status") in (FAILED, INTERRUPTED):
            return res
        fail = self.failure if self.collective_records else None
        if fail is None and res.get("nit"):
            for key in self.result_checks:
                fail = self.watch("objective" if key == "fun" else "objective before the polish",
                                  res.get(key), int(res["nit"]))
                if fail is not None:
                    break
        if fail is not None:
            res.update(status=fail.status, success=False, message=fail.message)
        return res

    # -- helpers for subclasses ----------------------------------------------------------
    def record(self) -> None:
        """Collective: record a history row of :meth:`values` at ``self.nit`` (its objective is watched)."""
        vals = self.values()
        self.watch("objective", vals.get("objective"), self.nit)
        self.notify(self.nit, self.x, vals.pop("objective", None), **vals)

    def notify(self, iteration: int, x: Any, fun: float | None, **values: Any) -> None:
        """Record a history row and call the user callback (every rank)."""
        self.ctx.history.record(iteration, **({"objective": fun} if fun is not None else {}), **values)
        if self._callback is not None and not self._callback_stop:
            try:
                self._callback(OptimizeResult(x=x, fun=fun, nit=iteration, **values))
            except StopIteration:
                self._callback_stop = True

    def poll(self, iteration: int, force: bool = False) -> int | None:
        """Collective stop/checkpoint poll; returns a status to stop with, or None."""
        status = self.ctx.poll(iteration, self.state_dict, local_stop=self._callback_stop, force=force)
        if status is None and self._callback_stop:
            return CALLBACK_STOP
        return status


def _checked_solve(solve: Callable[..., OptimizeResult]) -> Callable[..., OptimizeResult]:
    """``solve`` followed by :meth:`Solver.checked_result` (every solver's loop, its own or the template's)."""
    @functools.wraps(solve)
    def checked(self: Solver, callback: Callback | None = None) -> OptimizeResult:
        return self.checked_result(solve(self, callback))
    checked._checked = True  # type: ignore[attr-defined]
    return checked


Solver.solve = _checked_solve(Solver.solve)  # type: ignore[method-assign]
