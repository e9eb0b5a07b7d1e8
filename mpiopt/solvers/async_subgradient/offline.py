"""Offline evaluation of a finished (or running) ``async_subgradient`` result file: the problem is
rebuilt from the file's config and every stored snapshot is evaluated with
:func:`mpiopt.nn.evaluate.evaluate_snapshots` (``mpiopt-report --evaluate RESULT.h5``)."""
from __future__ import annotations

from typing import Any, Callable

from ... import registry
from ...errors import InputError
from ...io import load_result
from ...nn.evaluate import evaluate_snapshots
from ...problems.torch_models import TorchModelProblem


def evaluate_file(path: str, eval_samples: int | None = None, every: int = 1,
                  on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Test/train loss and accuracy of every ``every``-th snapshot in the result file ``path``
    (rows as :func:`mpiopt.nn.evaluate.evaluate_snapshots`)."""
    res = load_result(path)
    registry.load_builtins()
    name = str(res.attrs.get("problem", ""))
    try:
        problem_cls = registry.get_problem(name)
    except Exception as exc:  # noqa: BLE001 - unknown name: one-line input error
        raise InputError(f"{path}: problem {name!r} of the run is not available ({exc})") from None
    if not issubclass(problem_cls, TorchModelProblem) or "problem" not in res.config:
        raise InputError(f"{path}: not a torch model training run (problem {name!r})")
    problem = problem_cls(res.config["problem"], None)       # the data load needs no MPI
    problem.setup()
    return evaluate_snapshots(res, problem, eval_samples, every, on_row)
