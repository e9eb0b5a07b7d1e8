"""Python entry point: run a registered solver on a problem inside an existing MPI program."""
from __future__ import annotations

from typing import Any, Callable

from . import options as O
from . import registry
from .comm import Comm, collective_check, world
from .context import RunContext
from .result import OptimizeResult


def minimize(solver: str, problem: str, options: dict[str, Any] | None = None, *,
             comm: Comm | None = None, callback: Callable[[OptimizeResult], Any] | None = None,
             return_problem: bool = False) -> OptimizeResult | tuple[OptimizeResult, Any]:
    """Collective: solve ``problem`` with ``solver`` on every rank of ``comm`` (default COMM_WORLD).

    ``options`` uses dotted keys, e.g. ``{"solver.max_iter": 100, "problem.l1": 1e-3, "run.seed": 1}``.
    No result file is written; the history is in ``result.history`` (rank 0) when recorded.
    """
    comm = comm or world()
    solver_cls = registry.get_solver(solver)
    problem_cls = registry.get_problem(problem)
    why = solver_cls.check_problem(problem_cls)
    if why:
        from .errors import InputError
        raise InputError(why)
    values = [(k, v, "options") for k, v in (options or {}).items()]
    cfg = O.resolve({"solver": solver_cls.options, "problem": problem_cls.options, "run": O.RUN_OPTIONS}, values)
    solver_cls.check_config(cfg, comm.size)
    prob = problem_cls(cfg["problem"], comm)
    collective_check(comm, prob.setup)
    prob.compute_reference()
    comm.stats.reset()  # setup and reference traffic is not the solver's
    ctx = RunContext(comm, cfg["run"], solver=solver, problem=problem, config=cfg, quiet=True)
    res = solver_cls(prob, cfg["solver"], ctx).solve(callback=callback)
    res["history"] = ctx.history_arrays()
    return (res, prob) if return_problem else res
