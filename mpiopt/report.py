"""Tables and convergence plots from result files: ``python -m mpiopt.report RESULT.h5 [MORE.h5 | FOLDER ...]``.

Reads any mpiopt result file through :func:`mpiopt.io.load_result` (also files still being written,
through SWMR), so it works for every solver: it plots whatever history columns a run recorded,
against iterations, time and, when recorded, bytes sent. Several runs are overlaid, labelled by what
differs between them (solver, problem, rank count, config values). Writes ``summary.csv``,
``summary.md`` and one PNG + PDF figure per history metric into ``--out-dir``.
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
from .io.results import Result, load_result

X_AXES = ("iteration", "time", "bytes_sent")
# run.* keys that say where/how a run was stored or shown, not what it computed: never in labels
_NOISE_KEYS = {"run.out", "run.checkpoint_dir", "run.resume", "run.progress", "run.report_every",
               "run.checkpoint_every", "run.keep_checkpoints", "run.poll_every", "run.history_every",
               "run.debug"}
_METRIC_LABELS = {
    "objective": "objective F(x)", "fun": "objective F(x)", "gap": "F(x) - F*", "rel_gap": "(F(x) - F*) / |F*|",
    "nnz": "nonzeros of x", "psnr": "PSNR [dB]", "rmse": "RMSE", "test_rmse": "held-out RMSE",
    "train_rmse": "training RMSE", "accuracy": "accuracy", "test_accuracy": "test accuracy", "loss": "loss",
    "f_low": "lower bound f_low", "f_up": "upper bound f_up",
}
_LOG_METRICS = {"gap", "rel_gap", "grad_norm", "gap_rel", "delta", "step"}


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
        v = self.history.get(column)
        if v is None or len(v) == 0:
            return math.nan
        finite = v[np.isfinite(v)] if v.dtype.kind == "f" else v
        return float(finite[-1]) if len(finite) else math.nan


@dataclass
class Figure:
    """What :func:`plot_runs` drew for one metric: files written and, per panel, the x axis name,
    axis labels and the number of points of every line."""

    metric: str
    paths: list[str]
    panels: list[dict[str, Any]] = field(default_factory=list)


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


def make_labels(results: Sequence[Result], ignore: Iterable[str] = ()) -> list[str]:
    """Legend labels: the solver, plus problem, rank count and config values where runs differ
    (config keys in ``ignore`` left out). ``solver.*`` keys are compared only between runs of the
    same solver."""
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
    keys = sorted({k for f in flats for k in f} - _NOISE_KEYS - set(ignore))
    for k in keys:
        if k.startswith("solver."):
            for i in range(n):
                same = [j for j in range(n) if solvers[j] == solvers[i] and k in flats[j]]
                if k in flats[i] and varies([flats[j][k] for j in same]):
                    parts[i].append(f"{k.split('.', 1)[1]}={_fmt_value(flats[i][k])}")
        else:
            have = [i for i in range(n) if k in flats[i]]
            if len(have) == n and varies([flats[i][k] for i in have]):
                for i in range(n):
                    parts[i].append(f"{k.split('.', 1)[1]}={_fmt_value(flats[i][k])}")
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
CORE_COLUMNS = ("label", "solver", "problem", "ranks", "status", "iterations", "objective", "gap", "time_s",
                "mb_sent_rank0")


def summary_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per run: core columns, then ``final_<metric>`` for every history metric, then the file."""
    metrics = history_metrics(runs)
    rows = []
    for run in runs:
        a = run.attrs
        hist = run.history
        it = hist.get("iteration")
        nit = a.get("nit", int(it[-1]) if it is not None and len(it) else 0)
        fun = a.get("fun", math.nan)
        if not isinstance(fun, (int, float)) or not math.isfinite(float(fun)):
            fun = run.final("objective") if "objective" in hist else run.final("fun")
        fstar = a.get("reference_objective")
        gap = run.final("gap") if "gap" in hist else (
            float(fun) - float(fstar) if isinstance(fstar, (int, float)) and math.isfinite(float(fun)) else math.nan)
        t = a.get("wall_time")
        if not isinstance(t, (int, float)):
            t = run.final("time")
        sent = a.get("bytes_sent_rank0")
        if not isinstance(sent, (int, float)):
            sent = run.final("bytes_sent")
        row = {"label": run.label, "solver": a.get("solver", ""), "problem": a.get("problem", ""),
               "ranks": a.get("n_ranks", ""), "status": a.get("status", ""), "iterations": int(nit),
               "objective": float(fun), "gap": float(gap), "time_s": float(t),
               "mb_sent_rank0": float(sent) / 1e6 if isinstance(sent, (int, float)) else math.nan}
        for m in metrics:
            row[f"final_{m}"] = run.final(m)
        row["seed"] = a.get("seed", "")
        row["resumed"] = bool(a.get("resumed_from"))
        row["file"] = run.result.path
        rows.append(row)
    return rows


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.6g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = CORE_COLUMNS) -> str:
    """Aligned text table of ``columns`` for the terminal."""
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


# -- plots -------------------------------------------------------------------------------------
def history_metrics(runs: Sequence[Run]) -> list[str]:
    """History columns worth a figure: numeric, not an x axis, with at least one finite value."""
    out: list[str] = []
    for run in runs:
        for k, v in run.history.items():
            if k in X_AXES or k in out or v.dtype.kind not in "fiu":
                continue
            if np.isfinite(v.astype(np.float64)).any():
                out.append(k)
    first = [m for m in ("gap", "objective", "fun") if m in out]
    return first + [m for m in out if m not in first]


def _bytes_scale(max_bytes: float) -> tuple[float, str]:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if max_bytes >= scale:
            return scale, unit
    return 1.0, "bytes"


def _use_log(metric: str, ys: Iterable[np.ndarray]) -> bool:
    vals = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.array([])
    if vals.size == 0 or (vals <= 0).any():
        return False
    return metric in _LOG_METRICS or (vals.max() / vals.min() > 100.0)


def plot_runs(runs: Sequence[Run], out_dir: str, metrics: Sequence[str] | None = None,
              formats: Sequence[str] = ("png", "pdf"), prefix: str = "", dpi: int = 110,
              title: str | None = None) -> list[Figure]:
    """One figure per metric with a panel per x axis (iteration, time, bytes sent when recorded),
    every run a line. Written as ``<out_dir>/<prefix><metric>.<fmt>``; returns what was drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    all_metrics = history_metrics(runs)
    if metrics:
        unknown = [m for m in metrics if m not in all_metrics]
        if unknown:
            raise InputError(f"--metrics: {', '.join(unknown)} not in any history (have: {', '.join(all_metrics)})")
        all_metrics = list(metrics)
    os.makedirs(out_dir, exist_ok=True)
    has_bytes = any("bytes_sent" in r.history and np.nanmax(r.history["bytes_sent"], initial=0) > 0 for r in runs)
    xs = ["iteration", "time"] + (["bytes_sent"] if has_bytes else [])
    bmax = max((np.nanmax(r.history["bytes_sent"], initial=0) for r in runs if "bytes_sent" in r.history), default=0)
    bscale, bunit = _bytes_scale(float(bmax))
    xlabels = {"iteration": "iteration", "time": "wall time [s]", "bytes_sent": f"bytes sent by rank 0 [{bunit}]"}
    bmaxes = [float(np.nanmax(r.history["bytes_sent"], initial=0)) for r in runs if "bytes_sent" in r.history]
    log_bytes = len(bmaxes) > 1 and min(bmaxes) > 0 and max(bmaxes) / min(bmaxes) > 10.0
    figures = []
    for metric in all_metrics:
        fig = MplFigure(figsize=(4.2 * len(xs), 3.6), dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(xs), squeeze=False)[0]
        info = Figure(metric=metric, paths=[])
        ys_all = [r.history[metric].astype(np.float64) for r in runs if metric in r.history]
        log = _use_log(metric, ys_all)
        for ax, xname in zip(axes, xs):
            lines = []
            for k, run in enumerate(runs):
                h = run.history
                if metric not in h or xname not in h or len(h[metric]) == 0:
                    continue
                x = h[xname].astype(np.float64) / (bscale if xname == "bytes_sent" else 1.0)
                y = h[metric].astype(np.float64)
                ok = np.isfinite(x) & np.isfinite(y) & ((y > 0) if log else True)
                if xname == "bytes_sent" and log_bytes:
                    ok &= x > 0
                if not ok.any():
                    continue
                ax.plot(x[ok], y[ok], label=run.label, color=f"C{k % 10}", lw=1.4,
                        marker="o" if ok.sum() <= 12 else None, ms=3)
                if metric in run.band:
                    lo, hi = (b.astype(np.float64) for b in run.band[metric])
                    lo = np.where(np.isfinite(lo) & ((lo > 0) if log else True), lo, y)
                    hi = np.where(np.isfinite(hi), hi, y)
                    ax.fill_between(x[ok], lo[ok], hi[ok], color=f"C{k % 10}", alpha=0.2, lw=0)
                lines.append(int(ok.sum()))
            ax.set_xlabel(xlabels[xname])
            ax.set_ylabel(_METRIC_LABELS.get(metric, metric))
            if log:
                ax.set_yscale("log")
            if xname == "bytes_sent" and log_bytes:
                ax.set_xscale("log")
            ax.grid(True, alpha=0.3, which="both" if log else "major")
            info.panels.append({"x": xname, "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                                "points": lines, "log": log, "logx": xname == "bytes_sent" and log_bytes})
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            axes[-1].legend(handles, labels, fontsize="small", loc="best")
        fig.suptitle(title or f"{_METRIC_LABELS.get(metric, metric)}: {len(runs)} run(s)")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in metric)
        for fmt in formats:
            path = os.path.join(out_dir, f"{prefix}{safe}.{fmt}")
            fig.savefig(path, format=fmt)
            info.paths.append(path)
        figures.append(info)
    return figures


# -- command line -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mpiopt.report",
        description="Summary table (terminal, CSV, Markdown) and convergence plots (PNG, PDF) of mpiopt result "
                    "files; folders are searched for result files. Files still being written are read live.",
        epilog="examples:\n  python -m mpiopt.report run.h5\n"
               "  python -m mpiopt.report signprox.h5 prox_sgd.h5 --out-dir cmp --metrics gap\n"
               "  python -m mpiopt.report results/mpiopt-sweep-1234/ --no-plots\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="RESULT.h5|FOLDER")
    p.add_argument("-o", "--out-dir", default="report", help="folder for summary.csv, summary.md and plots "
                   "(default: report)")
    p.add_argument("--metrics", help="comma-separated history columns to plot (default: all)")
    p.add_argument("--formats", default="png,pdf", help="plot formats (default: png,pdf)")
    p.add_argument("--prefix", default="", help="prefix of the plot file names")
    p.add_argument("--title", help="figure title")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--mean-over-seeds", action="store_true",
                   help="plot runs that differ only in run.seed as one mean line with a min-max band")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    return p


def report(paths: Sequence[str], out_dir: str = "report", metrics: Sequence[str] | None = None,
           formats: Sequence[str] = ("png", "pdf"), plots: bool = True, prefix: str = "",
           title: str | None = None, mean_over_seeds: bool = False
           ) -> tuple[list[dict[str, Any]], list[Figure], list[str]]:
    """Read ``paths``, write ``summary.csv``/``summary.md`` and the plots into ``out_dir``.
    Returns the summary rows, the figures and notes (skipped files)."""
    results, notes = collect(paths)
    runs = [Run(r, lab) for r, lab in zip(results, make_labels(results))]
    rows = summary_rows(runs)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "summary.csv"), "w", encoding="utf-8") as fh:
        fh.write(to_csv(rows))
    with open(os.path.join(out_dir, "summary.md"), "w", encoding="utf-8") as fh:
        fh.write(to_markdown(rows, [*CORE_COLUMNS, "file"]))
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad:
        raise InputError(f"--formats: {', '.join(bad)} not supported (png, pdf, svg)")
    if plots and mean_over_seeds:
        runs = aggregate_seeds(results)
    figures = plot_runs(runs, out_dir, metrics, formats, prefix, title=title) if plots else []
    return rows, figures, notes


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m mpiopt.report``."""
    ns = build_parser().parse_args(argv)
    try:
        metrics = [m.strip() for m in ns.metrics.split(",") if m.strip()] if ns.metrics else None
        formats = [f.strip().lower() for f in ns.formats.split(",") if f.strip()]
        rows, figures, notes = report(ns.paths, ns.out_dir, metrics, formats, not ns.no_plots, ns.prefix, ns.title,
                                      ns.mean_over_seeds)
    except InputError as exc:
        print(f"mpiopt.report: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for note in notes:
        print(f"mpiopt.report: {note}", file=sys.stderr)
    if not ns.quiet:
        print(format_table(rows))
        print(f"\nwrote {os.path.join(ns.out_dir, 'summary.csv')}, {os.path.join(ns.out_dir, 'summary.md')}"
              + (f" and {sum(len(f.paths) for f in figures)} plot file(s) of "
                 f"{', '.join(f.metric for f in figures)}" if figures else ""))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
