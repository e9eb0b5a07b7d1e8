"""Tables and convergence plots from result files: ``python -m mpiopt.report RESULT.h5 [MORE.h5 | FOLDER ...]``.

Reads any mpiopt result file through :func:`mpiopt.io.load_result` (also files still being written,
through SWMR). History columns are mapped onto named quantities with one meaning each
(:data:`QUANTITIES`: ``gap_to_fstar`` is F(x) - F*, ``certified_gap`` is f_up - f_low, ...), whatever
name the solver recorded them under. By default only the key quantities of the runs' solver family
are drawn (F - F* and the objective for proximal methods, certified gap and F - F* for bundle methods,
test and training RMSE for matrix factorization, test accuracy and loss for torch training) against
iterations or epochs, wall time and, when recorded, the algorithm's bytes; ``--metrics all`` draws
every quantity that changes. Several runs are overlaid, labelled by what differs between them.
Writes ``summary.csv``, ``summary.md`` and one PNG + PDF figure per quantity into ``--out-dir``.
"""
from __future__ import annotations

import argparse
import csv
import io as _io
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import EXIT_OK, EXIT_USAGE, InputError
from .io.fs import atomic_write_bytes
from .io.results import Result, load_result

# history columns that are x axes or counters of progress, never a figure of their own
X_AXES = ("iteration", "time", "bytes_sent")
PROGRESS_COLUMNS = {"iteration", "time", "bytes_sent", "epoch", "block_epoch", "snapshot", "snapshot_time",
                    "train_time", "cycle", "qps"}
# run.* keys that say where/how a run was stored or shown, not what it computed: never in labels
_NOISE_KEYS = {"run.out", "run.checkpoint_dir", "run.resume", "run.progress", "run.report_every",
               "run.checkpoint_every", "run.keep_checkpoints", "run.poll_every", "run.history_every",
               "run.debug"}


@dataclass(frozen=True)
class Quantity:
    """A named quantity: axis label (with units), log y axis by default, plot scale (e.g. 100 for %)."""

    name: str
    label: str
    log: bool = False
    scale: float = 1.0


QUANTITIES: dict[str, Quantity] = {q.name: q for q in (
    Quantity("objective", "objective F(x)"),
    Quantity("gap_to_fstar", "F(x) - F*", log=True),
    Quantity("rel_gap_to_fstar", "(F(x) - F*) / |F*|", log=True),
    Quantity("certified_gap", "certified gap f_up - f_low", log=True),
    Quantity("rel_certified_gap", "relative certified gap (f_up - f_low) / max(1, |f_up|)", log=True),
    Quantity("lower_bound", "lower bound f_low"),
    Quantity("upper_bound", "upper bound f_up"),
    Quantity("objective_polished", "objective F(x) of the polished x"),
    Quantity("gap_to_fstar_polished", "F(x) - F* of the polished x", log=True),
    Quantity("nnz", "nonzeros of x"),
    Quantity("nnz_polished", "nonzeros of the polished x"),
    Quantity("mapping_norm_l1", "prox-gradient mapping norm ||G(x)||_1", log=True),
    Quantity("grad_norm", "gradient norm", log=True),
    Quantity("step", "step size", log=True),
    Quantity("bytes_iter", "bytes per iteration, rank 0"),
    Quantity("psnr", "PSNR [dB]"),
    Quantity("rmse", "training RMSE"),
    Quantity("train_rmse", "training RMSE"),
    Quantity("test_rmse", "held-out RMSE"),
    Quantity("test_rmse_clipped", "held-out RMSE, predictions clipped to the rating range"),
    Quantity("test_accuracy", "test accuracy [%]", scale=100.0),
    Quantity("train_accuracy", "training accuracy [%]", scale=100.0),
    Quantity("accuracy", "accuracy [%]", scale=100.0),
    Quantity("test_loss", "test loss"),
    Quantity("loss", "loss"),
    Quantity("step_time", "time of the last epoch [s]"),
    Quantity("updates_per_s", "updates per second [1/s]"),
    Quantity("oracle_calls", "oracle calls"),
    Quantity("n_cuts", "cuts in the model"),
    Quantity("level", "level"),
    Quantity("master_busy", "busy fraction of the master"),
    Quantity("pairs", "stored curvature pairs"),
)}
# history names that mean a quantity under another name ("gap" and "rel_gap": see column_map)
_ALIASES = {"fun": "objective", "error": "gap_to_fstar", "gap_polished": "gap_to_fstar_polished",
            "f_low": "lower_bound", "f_up": "upper_bound", "lower": "lower_bound", "upper": "upper_bound"}
# the family's key quantities, drawn by default
FAMILIES = {"bundle": ("certified_gap", "gap_to_fstar"), "torch": ("test_accuracy", "test_loss"),
            "mf": ("test_rmse", "rmse"), "proximal": ("gap_to_fstar", "objective"), "other": ("objective",)}
# drawn dashed in the same colour, in the figure of the quantity they belong to
_COMPANIONS = {"gap_to_fstar": ("gap_to_fstar_polished", "polished"), "objective": ("objective_polished", "polished")}


def column_map(history: dict[str, np.ndarray]) -> dict[str, str]:
    """Which history column holds each quantity: ``{quantity name: column}``.

    A column named as a quantity wins over an alias. ``gap`` (and ``rel_gap``) are the certified
    gap f_up - f_low in histories that carry certified bounds (``lower_bound``/``f_low``; the
    master/oracle solvers' old name) unless ``certified_gap`` is there, and F(x) - F* otherwise;
    ``error`` is F(x) - F*. Unknown columns keep their name."""
    certified = "certified_gap" not in history and any(c in history for c in ("lower_bound", "f_low"))
    out: dict[str, str] = {}
    aliased: dict[str, str] = {}
    for col in history:
        if col in PROGRESS_COLUMNS:
            continue
        if col == "gap":
            name = "certified_gap" if certified else "gap_to_fstar"
        elif col == "rel_gap":
            name = "rel_certified_gap" if certified else "rel_gap_to_fstar"
        else:
            name = _ALIASES.get(col, col)
        if name == col:
            out[name] = col
        else:
            aliased.setdefault(name, col)
    for name, col in aliased.items():
        out.setdefault(name, col)
    return out


def family_of(quantities: Iterable[str]) -> str:
    """The solver family a run's quantities say it belongs to (key of :data:`FAMILIES`)."""
    q = set(quantities)
    if q & {"certified_gap", "lower_bound"}:
        return "bundle"
    if "test_accuracy" in q:
        return "torch"
    if q & {"test_rmse", "rmse"}:
        return "mf"
    if q & {"gap_to_fstar", "objective_polished"}:
        return "proximal"
    return "other"


def quantity(name: str) -> Quantity:
    """The :class:`Quantity` of ``name`` (a plain one, labelled by its name, for unknown columns)."""
    return QUANTITIES.get(name) or Quantity(name, name.replace("_", " "))


@dataclass
class Run:
    """One result file with its label for tables and legends; or, from :func:`aggregate_seeds`,
    several runs differing only in their seed: mean ``history`` and min-max ``band`` per column."""

    result: Result
    label: str = ""
    mean_history: dict[str, np.ndarray] | None = None
    band: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    n_seeds: int = 1

    @property
    def attrs(self) -> dict[str, Any]:
        return self.result.attrs

    @property
    def history(self) -> dict[str, np.ndarray]:
        return self.mean_history if self.mean_history is not None else self.result.history

    def final(self, column: str) -> float:
        """Last finite value of a history column (NaN if none)."""
        v = self.history.get(column)
        if v is None or len(v) == 0:
            return math.nan
        finite = v[np.isfinite(v)] if v.dtype.kind == "f" else v
        return float(finite[-1]) if len(finite) else math.nan

    @property
    def columns(self) -> dict[str, str]:
        """``{quantity: history column}`` (see :func:`column_map`)."""
        return column_map(self.history)

    @property
    def family(self) -> str:
        return family_of(self.columns)

    def series(self, name: str) -> np.ndarray | None:
        """The history of quantity (or column) ``name`` as float64, or None."""
        col = self.columns.get(name, name if name in self.history else None)
        return None if col is None else self.history[col].astype(np.float64)

    def band_of(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        col = self.columns.get(name, name)
        return self.band.get(col)

    def final_of(self, name: str) -> float:
        """Last finite value of quantity ``name`` (NaN if none)."""
        col = self.columns.get(name, name if name in self.history else None)
        return math.nan if col is None else self.final(col)

    def progress_axis(self) -> str:
        """``epoch`` when the history counts epochs (MF, torch), else ``iteration``."""
        return "epoch" if "epoch" in self.history else "iteration"


@dataclass
class Figure:
    """What :func:`plot_runs` drew for one metric (the name asked for; ``quantity`` is what it
    means): files written, the title, the legend labels and, per panel, the x axis name, axis labels,
    the number of points of every line and the points left off a log axis (<= 0)."""

    metric: str
    paths: list[str]
    panels: list[dict[str, Any]] = field(default_factory=list)
    quantity: str = ""
    title: str = ""
    legend: list[str] = field(default_factory=list)


# -- reading -----------------------------------------------------------------------------------
def collect(paths: Sequence[str]) -> tuple[list[Result], list[str]]:
    """Load result files; folders are searched recursively for ``*.h5`` result files (other HDF5
    files there, such as checkpoints, are skipped with a note). Returns results and notes."""
    results: list[Result] = []
    notes: list[str] = []
    if not paths:
        raise InputError("no result file given: python -m mpiopt.report RESULT.h5 [MORE.h5 | FOLDER ...]")
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(d, f) for d, _, files in os.walk(p) for f in files
                           if f.endswith((".h5", ".hdf5")))
            n0 = len(results)
            for f in found:
                try:
                    results.append(load_result(f))
                except InputError as exc:
                    notes.append(f"skipped {f}: {exc}")
                except OSError as exc:
                    notes.append(f"skipped {f}: cannot be read as HDF5 ({exc})")
            if len(results) == n0:
                raise InputError(f"{p}: no mpiopt result files in this folder")
        else:
            try:
                results.append(load_result(p))
            except OSError as exc:
                raise InputError(f"{p}: cannot be read as HDF5 ({exc})") from None
    return results, notes


def _flat_config(res: Result) -> dict[str, Any]:
    out = {}
    for sec, vals in (res.config or {}).items():
        if isinstance(vals, dict):
            for k, v in vals.items():
                out[f"{sec}.{k}"] = v
    return out


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def make_labels(results: Sequence[Result], ignore: Iterable[str] = (), max_keys: int = 3) -> list[str]:
    """Short legend labels: the solver, plus problem and rank count where runs differ, plus the
    config values (``solver.*`` first) needed to tell apart runs that would otherwise get the same
    label, at most ``max_keys`` of them (config keys in ``ignore`` left out). So ``prox_sgd`` vs
    ``signprox`` is labelled by the solver names alone, two signprox runs by their ``step0``. Runs
    still alike get their file name appended."""
    if not results:
        return []
    flats = [_flat_config(r) for r in results]
    n = len(results)

    def varies(values: list[Any]) -> bool:
        return len({repr(v) for v in values}) > 1

    solvers = [str(r.attrs.get("solver", "?")) for r in results]
    problems = [str(r.attrs.get("problem", "?")) for r in results]
    ranks = [r.attrs.get("n_ranks", "?") for r in results]
    parts: list[list[str]] = [[s] for s in solvers]
    if n == 1 or varies(problems):
        for i in range(n):
            parts[i].append(problems[i])
    if n == 1 or varies(ranks):
        for i in range(n):
            parts[i].append(f"{ranks[i]} ranks")
    keys = sorted({k for f in flats for k in f} - _NOISE_KEYS - set(ignore),
                  key=lambda k: (not k.startswith("solver."), k))
    groups: dict[str, list[int]] = {}
    for i in range(n):
        groups.setdefault(" ".join(parts[i]), []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        added = 0
        for k in keys:
            if added >= max_keys:
                break
            vals = [flats[i].get(k, "(unset)") for i in members]
            if varies(vals):
                for i, v in zip(members, vals):
                    parts[i].append(f"{k.split('.', 1)[1]}={_fmt_value(v)}")
                added += 1
    labels = [p[0] if len(p) == 1 else f"{p[0]} ({', '.join(p[1:])})" for p in parts]
    seen: dict[str, int] = {}
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
    return [lab if seen[lab] == 1 else f"{lab} [{os.path.splitext(os.path.basename(r.path))[0]}]"
            for lab, r in zip(labels, results)]


def aggregate_seeds(results: Sequence[Result]) -> list[Run]:
    """Group runs that differ only in ``run.seed``; a group of several becomes one :class:`Run`
    whose history is the mean over the group at the iterations all of them recorded, with the
    min-max band of every column. Single runs stay as they are."""
    def key(r: Result) -> str:
        cfg = {k: v for k, v in _flat_config(r).items() if k not in _NOISE_KEYS and k != "run.seed"}
        return json.dumps([r.attrs.get("solver"), r.attrs.get("problem"), str(r.attrs.get("n_ranks")), cfg],
                          sort_keys=True, default=str)
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(key(r), []).append(r)
    members = list(groups.values())
    labels = make_labels([g[0] for g in members], ignore=("run.seed",))
    runs = []
    for group, label in zip(members, labels):
        if len(group) == 1 or any("iteration" not in r.history for r in group):
            runs += [Run(r, lab) for r, lab in zip(group, make_labels(group))] if len(group) > 1 \
                else [Run(group[0], label)]
            continue
        uniq = [np.unique(r.history["iteration"], return_index=True) for r in group]
        common = uniq[0][0]
        for its, _ in uniq[1:]:
            common = np.intersect1d(common, its)
        cols = [c for c in group[0].history if c != "iteration" and all(c in r.history for r in group)]
        mean: dict[str, np.ndarray] = {"iteration": common}
        band: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for c in cols:
            stack = np.stack([r.history[c][first[np.searchsorted(its, common)]].astype(np.float64)
                              for r, (its, first) in zip(group, uniq)])
            with warnings.catch_warnings():  # all-NaN columns stay NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean[c] = np.nanmean(stack, axis=0)
                band[c] = (np.nanmin(stack, axis=0), np.nanmax(stack, axis=0))
        n = len(group)
        lab = f"{label[:-1]}, {n} seeds)" if label.endswith(")") else f"{label} ({n} seeds)"
        runs.append(Run(group[0], lab, mean_history=mean, band=band, n_seeds=n))
    return runs


# -- tables ------------------------------------------------------------------------------------
CORE_COLUMNS = ("label", "solver", "problem", "ranks", "status", "iterations", "objective", "gap_to_fstar",
                "certified_gap", "test_rmse", "best_test_rmse", "best_epoch", "test_accuracy", "time_s",
                "mb_algorithm_rank0")
# always shown; the other core columns only where some run has a value
_ID_COLUMNS = ("label", "solver", "problem", "ranks", "status", "iterations", "objective", "time_s")
COLUMN_NOTES = {
    "objective": "F(x) of the reported solution (signprox: the polished x)",
    "gap_to_fstar": "objective - F* (same x as objective; F* = the problem's reference objective)",
    "certified_gap": "f_up - f_low at the end (bundle methods' certified bound on F(x) - F*)",
    "test_rmse": "held-out RMSE of the returned factors", "best_test_rmse": "best held-out RMSE of any epoch",
    "best_epoch": "epoch of best_test_rmse (MF) or best_test_accuracy (torch)",
    "test_accuracy": "test accuracy of the returned model (fraction)",
    "time_s": "wall time [s]",
    "mb_algorithm_rank0": "MB sent by rank 0 for the algorithm (evaluations and checks excluded; "
                          "the bytes axis of the plots is the same count)",
}


def _attr_number(attrs: dict[str, Any], key: str) -> float | None:
    v = attrs.get(key)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _best(run: Run, name: str, mode: str) -> tuple[float, float]:
    """(best value, its epoch) of quantity ``name`` in the history (``mode`` min or max)."""
    y = run.series(name)
    if y is None or not np.isfinite(y).any():
        return math.nan, math.nan
    k = int(np.nanargmin(y) if mode == "min" else np.nanargmax(y))
    at = run.history.get("epoch", run.history.get("iteration"))
    return float(y[k]), (float(at[k]) if at is not None else math.nan)


def summary_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per run: :data:`CORE_COLUMNS`, then ``mb_diagnostics_rank0``, ``mb_sent_rank0`` (all
    bytes), ``objective_raw``/``gap_to_fstar_raw`` (the unpolished x, where a solver polishes),
    ``best_test_accuracy``, ``final_<quantity>`` for every quantity of any history, then the file."""
    names = history_metrics(runs)
    rows = []
    for run in runs:
        a = run.attrs
        hist = run.history
        it = hist.get("iteration")
        nit = a.get("nit", int(it[-1]) if it is not None and len(it) else 0)
        fstar = _attr_number(a, "reference_objective")
        fun = _attr_number(a, "fun")
        raw = math.nan
        if fun is not None:      # a finished run: the reported x (polished where the solver polishes)
            objective = fun
            gap = fun - fstar if fstar is not None else run.final_of("gap_to_fstar")
            if _attr_number(a, "fun_raw") is not None:
                raw = float(a["fun_raw"])
            elif "objective_polished" in run.columns:
                raw = run.final_of("objective")
        else:                    # a live file: the last history row, x as recorded
            objective = run.final_of("objective")
            gap = run.final_of("gap_to_fstar")
        raw_gap = raw - fstar if fstar is not None and math.isfinite(raw) else (
            run.final_of("gap_to_fstar") if math.isfinite(raw) else math.nan)
        cert = _attr_number(a, "certified_gap")
        t = _attr_number(a, "wall_time")
        best_rmse, rmse_epoch = _best(run, "test_rmse", "min")
        best_acc, acc_epoch = _best(run, "test_accuracy", "max")
        best_epoch = _attr_number(a, "best_epoch")
        if best_epoch is None:
            best_epoch = rmse_epoch if math.isfinite(best_rmse) else acc_epoch
        alg = _attr_number(a, "bytes_algorithm_rank0")
        if alg is None:          # older files: the history's bytes_sent is the algorithm's own count
            alg = run.final("bytes_sent") if "bytes_sent" in hist else None
        diag = _attr_number(a, "bytes_diagnostics_rank0")
        sent = _attr_number(a, "bytes_sent_rank0")
        if sent is None:
            sent = run.final("bytes_sent") if "bytes_sent" in hist else None

        def mb(v: float | None) -> float:
            return v / 1e6 if v is not None and math.isfinite(v) else math.nan

        def pick(key: str, fallback: float) -> float:
            v = _attr_number(a, key)
            return v if v is not None else fallback

        row = {"label": run.label, "solver": a.get("solver", ""), "problem": a.get("problem", ""),
               "ranks": a.get("n_ranks", ""), "status": a.get("status", ""), "iterations": int(nit),
               "objective": float(objective), "gap_to_fstar": float(gap),
               "certified_gap": cert if cert is not None else run.final_of("certified_gap"),
               "test_rmse": pick("test_rmse", run.final_of("test_rmse")),
               "best_test_rmse": pick("best_test_rmse", best_rmse), "best_epoch": float(best_epoch),
               "test_accuracy": pick("test_accuracy", run.final_of("test_accuracy")),
               "time_s": float(t if t is not None else run.final("time")),
               "mb_algorithm_rank0": mb(alg), "mb_diagnostics_rank0": mb(diag), "mb_sent_rank0": mb(sent),
               "objective_raw": float(raw), "gap_to_fstar_raw": float(raw_gap),
               "best_test_accuracy": pick("best_test_accuracy", best_acc)}
        for m in names:
            row[f"final_{m}"] = run.final_of(m)
        row["seed"] = a.get("seed", "")
        row["resumed"] = bool(a.get("resumed_from"))
        row["file"] = run.result.path
        rows.append(row)
    return rows


def _empty(v: Any) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def shown_columns(rows: Sequence[dict[str, Any]], columns: Sequence[str] = CORE_COLUMNS) -> list[str]:
    """``columns`` without those that no row has a value for (the identity columns always stay)."""
    return [c for c in columns if c in _ID_COLUMNS or c == "file" or any(not _empty(r.get(c)) for r in rows)]


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.6g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Aligned text table of ``columns`` (default: the core columns some run has) for the terminal."""
    columns = list(columns or shown_columns(rows))
    cells = [[c for c in columns]] + [[_cell(r.get(c, "")) for c in columns] for r in rows]
    width = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for k, line in enumerate(cells):
        lines.append("  ".join(s.ljust(w) if i < 5 else s.rjust(w) for i, (s, w) in enumerate(zip(line, width))))
        if k == 0:
            lines.append("  ".join("-" * w for w in width))
    return "\n".join(lines)


def to_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """GitHub Markdown table."""
    columns = list(columns or (rows[0].keys() if rows else CORE_COLUMNS))
    out = ["| " + " | ".join(columns) + " |",
           "|" + "|".join("---" if c in ("label", "solver", "problem", "status", "file") else "---:"
                          for c in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_cell(r.get(c, "")).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(out) + "\n"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text with every column (union over rows); missing values are empty."""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if isinstance(r.get(c), float) and math.isnan(r[c]) else r.get(c, "")) for c in cols})
    return buf.getvalue()


# -- which quantities ----------------------------------------------------------------------------
def history_metrics(runs: Sequence[Run]) -> list[str]:
    """Quantities of any run's history with at least one finite value (progress columns such as
    ``epoch`` and the x axes left out), the families' key quantities first."""
    out: list[str] = []
    for run in runs:
        for name, col in run.columns.items():
            v = run.history[col]
            if name in out or v.dtype.kind not in "fiu":
                continue
            if np.isfinite(v.astype(np.float64)).any():
                out.append(name)
    first = [m for fam in FAMILIES.values() for m in fam if m in out]
    first = list(dict.fromkeys(first))
    return first + [m for m in out if m not in first]


def _changes(runs: Sequence[Run], name: str) -> bool:
    """Whether quantity ``name`` takes more than one value in some run (constants are no figure)."""
    for run in runs:
        y = run.series(name)
        if y is not None:
            y = y[np.isfinite(y)]
            if y.size > 1 and np.ptp(y) > 0:
                return True
    return False


def key_metrics(runs: Sequence[Run]) -> list[str]:
    """The key quantities of the runs' solver families that some run recorded."""
    have = set(history_metrics(runs))
    fams = list(dict.fromkeys(run.family for run in runs))
    out = list(dict.fromkeys(m for fam in fams for m in FAMILIES[fam] if m in have))
    return out or [m for m in history_metrics(runs)][:1]


def select_metrics(runs: Sequence[Run], metrics: Sequence[str] | str | None = None) -> list[tuple[str, str]]:
    """``(name asked for, quantity)`` pairs to draw. ``metrics``: None or ``"key"`` (the families' key
    quantities), ``"all"`` (every quantity that changes) or names of quantities or history columns.
    A history column is resolved per run (``gap`` is ``certified_gap`` for a bundle method and
    ``gap_to_fstar`` otherwise); a name meaning different quantities in different runs is an error."""
    if metrics is None or metrics == "key" or list(metrics) == ["key"]:
        return [(m, m) for m in key_metrics(runs)]
    have = history_metrics(runs)
    if metrics == "all" or list(metrics) == ["all"]:
        return [(m, m) for m in have if _changes(runs, m)]
    out, unknown = [], []
    for name in metrics:
        if name in have:
            out.append((name, name))
            continue
        means = {q for run in runs for q, col in run.columns.items() if col == name}
        if not means:
            unknown.append(name)
        elif len(means) > 1:
            raise InputError(f"--metrics: {name} means {' in some runs and '.join(sorted(means))} in others; "
                             f"ask for one of them")
        else:
            out.append((name, means.pop()))
    if unknown:
        raise InputError(f"--metrics: {', '.join(unknown)} not in any history (have: {', '.join(have)})")
    return out


# -- plots -------------------------------------------------------------------------------------
def _bytes_scale(max_bytes: float) -> tuple[float, str]:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if max_bytes >= scale:
            return scale, unit
    return 1.0, "bytes"


def _use_log(q: Quantity, ys: Sequence[np.ndarray]) -> bool:
    """Log y for gap-like quantities (>= 80 % of the points positive; the others are left off) and
    for positive quantities spanning more than two decades."""
    vals = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.array([])
    if vals.size == 0:
        return False
    pos = vals > 0
    if q.log:
        return bool(pos.mean() >= 0.8)
    return bool(pos.all() and vals.max() / vals.min() > 100.0)


def _title(q: Quantity, runs: Sequence[Run]) -> str:
    if len(runs) == 1:
        return f"{q.label}: {runs[0].label}"
    problems = {str(r.attrs.get("problem", "?")) for r in runs}
    ranks = {str(r.attrs.get("n_ranks", "?")) for r in runs}
    settings = {json.dumps((r.result.config or {}).get("problem"), sort_keys=True, default=str) for r in runs}
    where = [f"on {problems.pop()}" + (" (settings differ)" if len(settings) > 1 else "")] \
        if len(problems) == 1 else []
    if len(ranks) == 1:
        where.append(f"{ranks.pop()} ranks")
    return f"{q.label} {', '.join(where)}" if where else q.label


def plot_runs(runs: Sequence[Run], out_dir: str, metrics: Sequence[str] | str | None = None,
              formats: Sequence[str] = ("png", "pdf"), prefix: str = "", dpi: int = 110,
              title: str | None = None) -> list[Figure]:
    """One figure per quantity (see :func:`select_metrics`) with a panel per x axis (iteration, or
    epoch where the histories count epochs; wall time; the algorithm's bytes sent by rank 0 when
    recorded), every run a line, the legend below the panels. Written as
    ``<out_dir>/<prefix><metric>.<fmt>``; returns what was drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    selected = select_metrics(runs, metrics)
    key_mode = metrics is None or metrics == "key" or list(metrics) == ["key"]
    os.makedirs(out_dir, exist_ok=True)
    figures = []
    for metric, qname in selected:
        q = quantity(qname)
        # by default a family's key quantity is drawn for the runs of that family only (an MF
        # objective does not belong next to a lasso objective)
        drawn = [(k, r) for k, r in enumerate(runs)
                 if (y := r.series(qname)) is not None and np.isfinite(y).any()
                 and (not key_mode or qname in FAMILIES[r.family])]
        druns = [r for _, r in drawn]
        prog = "epoch" if druns and all(r.progress_axis() == "epoch" for r in druns) else "iteration"
        bmaxes = [float(np.nanmax(r.history["bytes_sent"], initial=0)) for r in druns if "bytes_sent" in r.history]
        has_bytes = any(b > 0 for b in bmaxes)
        xs = [prog, "time"] + (["bytes_sent"] if has_bytes else [])
        bscale, bunit = _bytes_scale(max(bmaxes, default=0.0))
        xlabels = {prog: prog, "time": "wall time [s]",
                   "bytes_sent": f"bytes sent by rank 0 [{bunit}]"}
        log_bytes = len(bmaxes) > 1 and min(bmaxes) > 0 and max(bmaxes) / min(bmaxes) > 10.0
        comp = _COMPANIONS.get(qname)
        ys_all = [r.series(qname) for r in druns]
        if comp:
            ys_all += [y for r in druns if (y := r.series(comp[0])) is not None]
        log = _use_log(q, ys_all)
        fig = MplFigure(figsize=(4.2 * len(xs), 3.6), dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(xs), squeeze=False)[0]
        info = Figure(metric=metric, paths=[], quantity=qname)
        legend: dict[str, Any] = {}
        for ax, xname in zip(axes, xs):
            lines, dropped, extra = [], 0, []
            for k, run in drawn:
                h = run.history
                if xname not in h:
                    continue
                x = h[xname].astype(np.float64) / (bscale if xname == "bytes_sent" else 1.0)
                if xname == "time" and np.isfinite(x).any():   # from the first record: setup left out
                    x = x - x[np.isfinite(x)][0]
                keep_x = np.isfinite(x) & ((x > 0) if xname == "bytes_sent" and log_bytes else True)
                for name, style, suffix in ((qname, "-", ""), *(((comp[0], "--", f", {comp[1]}"),) if comp else ())):
                    y = run.series(name)
                    if y is None:
                        continue
                    if name != qname:   # a companion line that would hide under the main line is not drawn
                        y0 = run.series(qname)
                        both = np.isfinite(y) & np.isfinite(y0) & ((y > 0) & (y0 > 0) if log else True)
                        if not both.any():
                            continue
                        a, b = y[both], y0[both]
                        if (np.max(np.abs(np.log(a / b))) < 0.02 if log
                                else np.max(np.abs(a - b)) < 0.005 * max(np.ptp(b), 1e-300)):
                            continue
                    ok = keep_x & np.isfinite(y)
                    if log:
                        dropped += int((ok & (y <= 0)).sum())
                        ok &= y > 0
                    if not ok.any():
                        continue
                    ln, = ax.plot(x[ok], y[ok] * q.scale, style, label=run.label + suffix, color=f"C{k % 10}",
                                  lw=1.4, marker="o" if ok.sum() <= 12 else None, ms=3)
                    if name == qname:
                        legend.setdefault(ln.get_label(), ln)
                    else:
                        legend.setdefault(f"dashed: {comp[1]} x", None)
                    band = run.band_of(name)
                    if band is not None:
                        lo, hi = (b.astype(np.float64) for b in band)
                        lo = np.where(np.isfinite(lo) & ((lo > 0) if log else True), lo, y)
                        hi = np.where(np.isfinite(hi), hi, y)
                        ax.fill_between(x[ok], lo[ok] * q.scale, hi[ok] * q.scale, color=f"C{k % 10}",
                                        alpha=0.2, lw=0)
                    (lines if name == qname else extra).append(int(ok.sum()))
            ax.set_xlabel(xlabels[xname])
            ax.set_ylabel(q.label)
            if log:
                ax.set_yscale("log")
            if xname == "bytes_sent" and log_bytes:
                ax.set_xscale("log")
            ax.grid(True, alpha=0.3)
            info.panels.append({"x": xname, "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                                "points": lines, "companion_points": extra, "dropped": dropped, "log": log,
                                "logx": xname == "bytes_sent" and log_bytes})
        info.title = title or _title(q, druns)
        fig.suptitle(info.title, fontsize="medium")
        if len(legend) > 1 or None in legend.values():
            from matplotlib.lines import Line2D
            info.legend = list(legend)
            handles = [h if h is not None else Line2D([], [], ls="--", color="0.4", lw=1.4) for h in legend.values()]
            fig.legend(handles, info.legend, loc="outside lower center", fontsize="small",
                       ncols=max(1, min(len(legend), len(xs))), frameon=False)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in metric)
        for fmt in formats:
            path = os.path.join(out_dir, f"{prefix}{safe}.{fmt}")
            buf = _io.BytesIO()
            fig.savefig(buf, format=fmt)
            atomic_write_bytes(path, buf.getvalue())   # a planted link at path is replaced, never followed
            fig.set_layout_engine("none")     # laid out once: the other formats reuse it
            info.paths.append(path)
        figures.append(info)
    return figures


# -- command line -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mpiopt.report",
        description="Summary table (terminal, CSV, Markdown) and convergence plots (PNG, PDF) of mpiopt result "
                    "files; folders are searched for result files. Files still being written are read live. "
                    "By default only the key quantities of the runs' solver family are drawn.",
        epilog="quantities: " + ", ".join(QUANTITIES) + "\n\nexamples:\n  python -m mpiopt.report run.h5\n"
               "  python -m mpiopt.report signprox.h5 prox_sgd.h5 --out-dir cmp --metrics gap_to_fstar\n"
               "  python -m mpiopt.report level_bundle.h5 --metrics all\n"
               "  python -m mpiopt.report results/mpiopt-sweep-1234/ --no-plots\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="RESULT.h5|FOLDER")
    p.add_argument("-o", "--out-dir", default="report", help="folder for summary.csv, summary.md and plots "
                   "(default: report)")
    p.add_argument("--metrics", default="key",
                   help="key (default: the solver family's key quantities, e.g. F(x) - F* and the objective "
                        "for proximal methods), all (every quantity that changes), or comma-separated quantities "
                        "or history columns")
    p.add_argument("--formats", default="png,pdf", help="plot formats (default: png,pdf)")
    p.add_argument("--prefix", default="", help="prefix of the plot file names")
    p.add_argument("--title", help="figure title (default: the quantity and what the runs share)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--mean-over-seeds", action="store_true",
                   help="plot runs that differ only in run.seed as one mean line with a min-max band")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    p.add_argument("--evaluate", action="store_true",
                   help="instead: evaluate the model snapshots (/snapshots) of each torch training result file "
                        "(test and train loss/accuracy; runs with solver.snapshot_eval=off) and write "
                        "evaluation-<name>.csv to --out-dir")
    p.add_argument("--eval-samples", type=int, help="--evaluate: test images used (default: the run's "
                   "solver.eval_samples; 0: all)")
    p.add_argument("--every", type=int, default=1, help="--evaluate: every k-th snapshot (and the last)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="--evaluate: module or .py file registering the run's problem (a result file never "
                        "loads code itself)")
    p.add_argument("--set", dest="sets", action="append", nargs="+", default=[], metavar="problem.KEY=VALUE",
                   help="--evaluate: problem settings, e.g. --set problem.path=DATA (the data files are read "
                        "only from paths given here, never from the result file's config)")
    return p


def evaluate_files(paths: Sequence[str], out_dir: str, eval_samples: int | None, every: int, quiet: bool,
                   plugins: Sequence[str] = (), sets: Sequence[str] = ()) -> None:
    """``--evaluate``: evaluate the snapshots of each result file, print and write them as CSV.
    ``plugins`` (modules or files) and ``sets`` (``problem.KEY=VALUE``) are the user's: the problem's code
    and data paths never come from a result file."""
    from . import options as O
    from . import registry
    from .nn.evaluate import format_rows, to_csv
    from .solvers.async_subgradient.offline import evaluate_file
    for plugin in plugins:
        registry.load_plugin(plugin)
    settings = [(*O.parse_assignment(item), "--set") for item in sets]
    results, _ = collect(paths)
    if not results:
        raise InputError("--evaluate: no result files given")
    for r in results:
        rows = evaluate_file(r.path, eval_samples, every, settings=settings)
        os.makedirs(out_dir, exist_ok=True)      # only once there is something to write
        out = os.path.join(out_dir, f"evaluation-{os.path.splitext(os.path.basename(r.path))[0]}.csv")
        atomic_write_bytes(out, to_csv(rows).encode("utf-8"))
        if not quiet:
            print(f"{r.path}: {len(rows)} snapshot(s) evaluated\n{format_rows(rows)}\nwrote {out}\n")


def report(paths: Sequence[str], out_dir: str = "report", metrics: Sequence[str] | str | None = None,
           formats: Sequence[str] = ("png", "pdf"), plots: bool = True, prefix: str = "",
           title: str | None = None, mean_over_seeds: bool = False
           ) -> tuple[list[dict[str, Any]], list[Figure], list[str]]:
    """Read ``paths``, write ``summary.csv``/``summary.md`` and the plots into ``out_dir``.
    Returns the summary rows, the figures and notes (skipped files)."""
    results, notes = collect(paths)
    runs = [Run(r, lab) for r, lab in zip(results, make_labels(results))]
    rows = summary_rows(runs)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_bytes(os.path.join(out_dir, "summary.csv"), to_csv(rows).encode("utf-8"))
    atomic_write_bytes(os.path.join(out_dir, "summary.md"),
                       to_markdown(rows, [*shown_columns(rows), "file"]).encode("utf-8"))
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad:
        raise InputError(f"--formats: {', '.join(bad)} not supported (png, pdf, svg)")
    if plots and mean_over_seeds:
        runs = aggregate_seeds(results)
    figures = plot_runs(runs, out_dir, metrics, formats, prefix, title=title) if plots else []
    for f in figures:
        dropped = sum(p["dropped"] for p in f.panels)
        if dropped:
            notes.append(f"{f.metric}: {dropped} point(s) <= 0 left off the log axis")
    return rows, figures, notes


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m mpiopt.report``."""
    import time
    t0 = time.perf_counter()
    ns = build_parser().parse_args(argv)
    try:
        if (ns.plugin or ns.sets) and not ns.evaluate:
            raise InputError("--plugin and --set apply only with --evaluate")
        if ns.evaluate:
            evaluate_files(ns.paths, ns.out_dir, ns.eval_samples, ns.every, ns.quiet, ns.plugin,
                           [item for group in ns.sets for item in group])
            return EXIT_OK
        metrics: Sequence[str] | str = [m.strip() for m in ns.metrics.split(",") if m.strip()] or "key"
        formats = [f.strip().lower() for f in ns.formats.split(",") if f.strip()]
        rows, figures, notes = report(ns.paths, ns.out_dir, metrics, formats, not ns.no_plots, ns.prefix, ns.title,
                                      ns.mean_over_seeds)
    except InputError as exc:
        print(f"mpiopt.report: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for note in notes:
        print(f"mpiopt.report: {note}", file=sys.stderr)
    if not ns.quiet:
        cols = shown_columns(rows)
        print(format_table(rows, cols))
        print("\n" + "\n".join(f"  {c}: {COLUMN_NOTES[c]}" for c in cols if c in COLUMN_NOTES))
        print(f"\nwrote {os.path.join(ns.out_dir, 'summary.csv')}, {os.path.join(ns.out_dir, 'summary.md')}"
              + (f" and {sum(len(f.paths) for f in figures)} plot file(s) of "
                 f"{', '.join(f.metric for f in figures)}" if figures else "")
              + f" in {time.perf_counter() - t0:.1f} s")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
