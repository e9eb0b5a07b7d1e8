"""Offline evaluation of the model snapshots a training run stored in its result file.

``async_subgradient`` stores every snapshot vector in ``/snapshots`` (and, with shared BatchNorm
statistics, the statistics in ``/snapshot_stats``). :func:`evaluate_snapshots` evaluates each
snapshot of a loaded result file on the run's problem exactly as the run would have
(test loss/accuracy, loss/accuracy on the fixed training subset; BatchNorm statistics from the
snapshot when they were shared, recalibrated on fixed training batches when they were local), so a
run can set ``solver.snapshot_eval=off`` and be evaluated afterwards:
``mpiopt-report --evaluate RESULT.h5`` (which rebuilds the problem from the file's config with
:func:`mpiopt.solvers.async_subgradient.offline.evaluate_file`).

A result file is data: it never chooses what code or files the evaluation loads. The problem must be
built in or registered by a ``--plugin`` the user names, and every file or folder the problem reads is
taken from the command line (``--set problem.path=...``), never from the file's config
(:func:`evaluation_settings`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .. import options as O
from ..errors import InputError

Setting = tuple[str, Any, str]       # (dotted key, value, where it came from), as options.resolve takes


def path_options(options: Sequence[O.Option]) -> list[str]:
    """Names of the options that can name a file or folder: free-form strings (no choices)."""
    return [o.name for o in options if o.kind is str and o.choices is None]


def evaluation_settings(path: str, problem_name: str, options: Sequence[O.Option], file_config: dict[str, Any],
                        given: Iterable[Setting] = ()) -> dict[str, Any]:
    """The problem settings to evaluate the result file ``path`` with: the file's ``problem`` settings
    (validated like a config file), then ``given`` (the user's ``--set problem.KEY=VALUE``). Every
    setting that can name a file (:func:`path_options`) and is set in the file must be given: the data
    read is the user's choice, not the file's; else one line saying which flags to pass."""
    given = list(given)
    named = {k.split(".", 1)[1] for k, _, _ in given if k.startswith("problem.")}
    for k, _, src in given:
        if not k.startswith("problem."):
            raise InputError(f"{src} {k}: --evaluate takes only problem.KEY=VALUE settings")
    known = {o.name for o in options}
    file_cfg = {k: v for k, v in (file_config or {}).items() if k in known}
    missing = [(k, file_cfg[k]) for k in path_options(options)
               if k not in named and isinstance(file_cfg.get(k), str) and file_cfg[k]]
    if missing:
        flags = " ".join(f"--set problem.{k}=..." for k, _ in missing)
        names = ", ".join(f"problem.{k}={O.show(v, 120)}" for k, v in missing)
        raise InputError(f"{path}: its config names {names}; --evaluate reads data only from paths given on the "
                         f"command line: pass {flags} (the same path to use it)")
    values = [(f"problem.{k}", v, f"config of {path}") for k, v in file_cfg.items()] + given
    return O.resolve({"problem": options}, values, {"problem": f"problem {problem_name!r}"})["problem"]

COLUMNS = ("snapshot", "iteration", "time", "epoch", "bn", "train_loss", "train_accuracy", "test_loss",
           "test_accuracy", "eval_seconds")


def evaluate_snapshots(result: Any, problem: Any, eval_samples: int | None = None, every: int = 1,
                       on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate every ``every``-th snapshot of ``result`` (a loaded result file; the last snapshot
    always) on ``problem`` (the run's torch problem, set up). ``eval_samples``: test images used
    (default: the run's ``solver.eval_samples``; 0: all). Returns one row per snapshot
    (:data:`COLUMNS`); ``on_row`` is called with each as it is done."""
    import time

    from .flat import FlatModel
    from .models import has_batchnorm
    from .train import Evaluator

    if every < 1:
        raise InputError(f"every={every}: must be >= 1")
    if eval_samples is not None and eval_samples < 0:
        raise InputError(f"eval_samples={eval_samples}: must be >= 0 (0: all test images)")
    path = getattr(result, "path", "result")
    snaps = result.groups.get("snapshots")
    if snaps is None or len(snaps) == 0:
        raise InputError(f"{path}: no /snapshots (run with solver.save_snapshots=true)")
    o = result.config.get("solver", {})
    stats = result.groups.get("snapshot_stats")
    shared = o.get("bn") == "shared" and stats is not None and np.asarray(stats).shape[-1] > 0
    flat = FlatModel(problem.build_model())
    if snaps.shape[1] != flat.n:
        raise InputError(f"{path}: snapshots have {snaps.shape[1]} parameters, the model {flat.n}")
    if shared and stats.shape[1] != flat.n_stats:
        raise InputError(f"{path}: snapshot_stats have {stats.shape[1]} values, the model {flat.n_stats}")
    bn = "shared" if shared else ("recalibrated" if has_batchnorm(flat.module) else "none")
    evaluate = Evaluator(problem, int(o.get("eval_samples", 0) if eval_samples is None else eval_samples),
                         int(o.get("train_eval_samples", 1000)), int(o.get("bn_batches", 8)),
                         int(o.get("batch_size", 64)), recalibrate=not shared)
    if shared and len(stats) < len(snaps):                 # a live file caught between the two appends
        snaps = snaps[:len(stats)]
    h = result.history
    by_snapshot = {int(k): i for i, k in enumerate(h.get("snapshot", []))}
    idx = list(range(0, len(snaps), every))
    if idx[-1] != len(snaps) - 1:
        idx.append(len(snaps) - 1)
    rows = []
    for k in idx:
        t0 = time.perf_counter()
        flat.load(snaps[k], stats[k] if shared else None)
        tr_loss, tr_acc, te_loss, te_acc = evaluate(flat)
        i = by_snapshot.get(k)
        row: dict[str, Any] = {"snapshot": k, "bn": bn, "train_loss": tr_loss, "train_accuracy": tr_acc,
                               "test_loss": te_loss, "test_accuracy": te_acc,
                               "eval_seconds": time.perf_counter() - t0}
        for col in ("iteration", "time", "epoch"):
            row[col] = float(h[col][i]) if (i is not None and col in h) else float("nan")
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`evaluate_snapshots` as aligned text columns."""
    lines = ["  ".join(f"{c:>14s}" for c in COLUMNS)]
    for r in rows:
        lines.append("  ".join(f"{r[c]:>14}" if isinstance(r[c], str) else f"{r[c]:14.6g}" for c in COLUMNS))
    return "\n".join(lines)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`evaluate_snapshots` as CSV text."""
    out = [",".join(COLUMNS)]
    for r in rows:
        out.append(",".join(str(r[c]) if isinstance(r[c], (str, int)) else repr(float(r[c])) for c in COLUMNS))
    return "\n".join(out) + "\n"
