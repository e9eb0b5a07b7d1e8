"""Offline evaluation of a finished (or running) ``async_subgradient`` result file: the problem is
rebuilt from the file's config and every stored snapshot is evaluated with
:func:`mpiopt.nn.evaluate.evaluate_snapshots` (``mpiopt-report --evaluate RESULT.h5``)."""
from __future__ import annotations

from typing import Any, Callable, Iterable

from ... import registry
from ...errors import InputError
from ...io import load_result
from ...nn.evaluate import Setting, evaluate_snapshots, evaluation_settings
from ...problems.torch_models import TorchModelProblem


def evaluate_file(path: str, eval_samples: int | None = None, every: int = 1,
                  on_row: Callable[[dict[str, Any]], None] | None = None,
                  settings: Iterable[Setting] = ()) -> list[dict[str, Any]]:
    """Test/train loss and accuracy of every ``every``-th snapshot in the result file ``path``
    (rows as :func:`mpiopt.nn.evaluate.evaluate_snapshots`). The problem is a built-in one or one a
    plug-in loaded by the caller registered; ``settings`` (``problem.KEY``, value, source) give the data
    paths (:func:`mpiopt.nn.evaluate.evaluation_settings`)."""
    res = load_result(path)
    registry.load_builtins()
    name = str(res.attrs.get("problem", ""))
    if name not in registry.PROBLEMS:
        raise InputError(f"{path}: problem {name!r} of the run is not built in; pass --plugin MODULE_OR_FILE that "
                         "registers it (a result file never loads code)")
    problem_cls = registry.PROBLEMS[name]
    if not issubclass(problem_cls, TorchModelProblem) or not isinstance(res.config.get("problem"), dict):
        raise InputError(f"{path}: not a torch model training run (problem {name!r})")
    opts = evaluation_settings(path, name, problem_cls.options, res.config["problem"], settings)
    problem = problem_cls(opts, None)       # the data load needs no MPI
    problem.setup()
    return evaluate_snapshots(res, problem, eval_samples, every, on_row)
