"""Python entry point: run a registered solver on a problem inside an existing MPI program."""
from __future__ import annotations

from typing import Any, Callable

from .comm import Comm
from .result import OptimizeResult
from .runner import build_run, resolve_spec


def minimize(solver: str, problem: str, options: dict[str, Any] | None = None, *,
             comm: Comm | None = None, callback: Callable[[OptimizeResult], Any] | None = None,
             return_problem: bool = False, out: str | None = None,
             install_signals: bool = True) -> OptimizeResult | tuple[OptimizeResult, Any]:
    """Collective: solve ``problem`` with ``solver`` on every rank of ``comm`` (default COMM_WORLD).

    ``options`` uses dotted keys, e.g. ``{"solver.max_iter": 100, "problem.l1": 1e-3, "run.seed": 1}``.
    No result file is written unless ``out`` (or ``run.out``) names one; the history is in
    ``result.history`` (rank 0). Checkpoints and resume work as on the command line
    (``run.checkpoint_dir``, ``run.resume``). SIGTERM/SIGINT stop the run at the next poll
    (``install_signals=False`` leaves the handlers alone).
    """
    values = [(k, v, "options") for k, v in (options or {}).items()]
    if out is not None:
        values.append(("run.out", out, "out="))
    spec = resolve_spec(solver, problem, values, default_out=False)
    run = build_run(spec, comm, quiet=True, install_signals=install_signals)
    res = run.execute(callback=callback)
    return (res, run.problem) if return_problem else res
