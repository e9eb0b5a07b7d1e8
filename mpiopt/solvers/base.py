"""The solver template every registered solver follows.

A solver writes one iteration as in its paper (:meth:`Solver.step`), the values of a history row
(:meth:`Solver.values`) and the result (:meth:`Solver.finish`); :meth:`Solver.solve` owns the
rest: the iteration budget, history records, the user callback, the collective stop/checkpoint
poll and the stop message.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple

from ..comm import Comm
from ..context import RunContext
from ..options import Option
from ..problems.base import Problem
from ..result import CALLBACK_STOP, CONVERGED, MAX_ITER, OptimizeResult, stop_message

Callback = Callable[[OptimizeResult], Any]


class Stop(NamedTuple):
    """Why a solver stops: a status code (:mod:`mpiopt.result`) and a message."""
    status: int
    message: str


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

    def __init__(self, problem: Problem, options: dict[str, Any], ctx: RunContext):
        self.problem = problem
        self.opts = options
        self.ctx = ctx
        self.comm: Comm = ctx.comm
        self.nit = 0
        self._callback: Callback | None = None
        self._callback_stop = False

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
        while self.nit < T:
            got = self.step()
            self.nit += 1
            self.ctx.stop.heartbeat()
            if self.record_due(got, T):
                self.record()
            if got is not None:
                stop = got
                break
            polled = self.poll(self.nit)
            if polled is not None:
                stop = Stop(polled, stop_message(polled))
                break
        self.ctx.history.close()
        return self.finish(stop)

    # -- helpers for subclasses ----------------------------------------------------------
    def record(self) -> None:
        """Collective: record a history row of :meth:`values` at ``self.nit``."""
        vals = self.values()
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
