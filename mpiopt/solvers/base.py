"""The solver interface every registered solver implements."""
from __future__ import annotations

from typing import Any, Callable, ClassVar

from ..comm import Comm
from ..context import RunContext
from ..options import Option
from ..problems.base import Problem
from ..result import CALLBACK_STOP, OptimizeResult

Callback = Callable[[OptimizeResult], Any]


class Solver:
    """Base class. Subclasses set the class attributes and implement :meth:`solve`,
    :meth:`state_dict` and :meth:`load_state_dict`.

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

    def __init__(self, problem: Problem, options: dict[str, Any], ctx: RunContext):
        self.problem = problem
        self.opts = options
        self.ctx = ctx
        self.comm: Comm = ctx.comm
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
    def solve(self, callback: Callback | None = None) -> OptimizeResult:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any] | None:
        """Collective: everything needed to continue, arrays in global order; full dict on rank 0."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Collective: restore from ``state`` (as read back from a checkpoint, on every rank)."""
        raise NotImplementedError

    # -- helpers for subclasses ----------------------------------------------------------
    def notify(self, iteration: int, x: Any, fun: float, **values: Any) -> None:
        """Record a history row and call the user callback (every rank)."""
        self.ctx.record(iteration, **({"objective": fun} if fun is not None else {}), **values)
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
