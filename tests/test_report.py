"""``python -m mpiopt.report``: summary tables, convergence plots, live (SWMR) files, folders."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import mpi_env, run_mpi
from mpiopt.io import FORMAT, FORMAT_VERSION, ResultWriter, load_result
from mpiopt.report import Run, aggregate_seeds, collect, make_labels, plot_runs, report

DPI = 110


def fake_result(path: Path, solver: str = "prox_sgd", problem: str = "lasso", ranks: int = 2, n: int = 30,
                step0: float = 0.5, bytes_per_it: float | None = 800.0, finish: bool = True, seed: int = 0,
                extra_cols: dict | None = None, offset: float = 0.0, max_iter: int | None = None) -> dict:
    """A result file written with the real ResultWriter; returns its history columns."""
    cfg = {"solver": {"max_iter": n - 1 if max_iter is None else max_iter, "step0": step0}, "problem": {"n_samples": 100},
           "run": {"seed": seed, "out": str(path), "checkpoint_dir": None}}
    w = ResultWriter(str(path), {"format": FORMAT, "format_version": FORMAT_VERSION, "solver": solver,
                                 "problem": problem, "config": cfg, "n_ranks": ranks, "seed": seed,
                                 "status": "running", "reference_objective": 1.0})
    it = np.arange(n)
    hist = {"iteration": it, "time": 0.01 * it + 0.001, "objective": 1.0 + offset + 2.0 / (1.0 + it) ** (1 + step0)}
    hist["gap"] = hist["objective"] - 1.0
    if bytes_per_it is not None:
        hist["bytes_sent"] = bytes_per_it * it
    for k, f in (extra_cols or {}).items():
        hist[k] = f(it)
    for i in range(n):
        w.append({k: float(v[i]) for k, v in hist.items()})
    if finish:
        w.close({"status": "max_iter", "nit": n - 1, "fun": float(hist["objective"][-1]), "wall_time": 0.5,
                 "bytes_sent_rank0": int(bytes_per_it or 0) * n}, {"x": np.zeros(3)})
    else:
        w.flush()
        w.abandon()
    return hist


def report_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpiopt.report", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=mpi_env())


def png_pixels(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg
    return mpimg.imread(str(path))


def test_labels_name_what_differs(tmp_path):
    fake_result(tmp_path / "a.h5", step0=0.5)
    fake_result(tmp_path / "b.h5", step0=0.1)
    fake_result(tmp_path / "c.h5", solver="signprox", ranks=4)
    res = [load_result(str(tmp_path / f"{c}.h5")) for c in "abc"]
    labels = make_labels(res)
    assert labels[0] == "prox_sgd (2 ranks, step0=0.5)"
    assert labels[1] == "prox_sgd (2 ranks, step0=0.1)"
    assert labels[2] == "signprox (4 ranks)"  # step0 compared only among runs of the same solver
    assert make_labels(res[:1]) == ["prox_sgd (lasso, 2 ranks)"]
    # identical configs get the file name to tell them apart
    fake_result(tmp_path / "d.h5", step0=0.5)
    labels = make_labels([res[0], load_result(str(tmp_path / "d.h5"))])
    assert labels[0] != labels[1] and labels[1].endswith("[d]")


def test_real_runs_table_csv_markdown_and_plots(tmp_path):
    """Two real prox_sgd runs (different step0) side by side: tables and overlaid plots."""
    for step0 in (0.5, 0.05):
        p = run_mpi(["prox_sgd", "--problem", "logistic", "--set", "solver.max_iter=60", "problem.n_samples=500",
                     "problem.n_features=10", f"solver.step0={step0}", "run.progress=none",
                     "--out", tmp_path / f"s{step0}.h5", "-q"], n=2, timeout=120)
        assert p.returncode == 0, p.output
    out = tmp_path / "rep"
    cp = report_cli(tmp_path / "s0.5.h5", tmp_path / "s0.05.h5", "--out-dir", out)
    assert cp.returncode == 0, cp.stderr
    assert "prox_sgd (step0=0.5)" in cp.stdout and "prox_sgd (step0=0.05)" in cp.stdout
    assert "max_iter" in cp.stdout
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["label"] for r in rows] == ["prox_sgd (step0=0.5)", "prox_sgd (step0=0.05)"]
    for r, step0 in zip(rows, (0.5, 0.05)):
        res = load_result(str(tmp_path / f"s{step0}.h5"))
        assert r["solver"] == "prox_sgd" and r["problem"] == "logistic" and r["ranks"] == "2"
        assert int(r["iterations"]) == 60 and r["status"] == "max_iter"
        assert float(r["objective"]) == pytest.approx(res["fun"], rel=1e-12)
        # the history's "gap" of a proximal solver is F - F*: named gap_to_fstar (issue 15: one name, one meaning)
        assert float(r["final_gap_to_fstar"]) == pytest.approx(res.history["gap"][-1], rel=1e-12)
        assert float(r["gap_to_fstar"]) == pytest.approx(res["fun"] - res["reference_objective"], rel=1e-9)
        assert float(r["mb_algorithm_rank0"]) == pytest.approx(res["bytes_algorithm_rank0"] / 1e6)
    md = (out / "summary.md").read_text().splitlines()
    assert md[0].startswith("| label | solver | problem | ranks | status") and len(md) == 4
    # by default only the proximal family's key plots (issue 15: focused default; nnz on request)
    assert sorted(p.name for p in out.iterdir()) == ["gap_to_fstar.pdf", "gap_to_fstar.png", "objective.pdf",
                                                     "objective.png", "summary.csv", "summary.md"]
    for metric in ("gap_to_fstar", "objective"):
        assert (out / f"{metric}.pdf").read_bytes()[:4] == b"%PDF"
        img = png_pixels(out / f"{metric}.png")
        assert img.shape[:2] == (round(3.6 * DPI), round(4.2 * 3 * DPI))  # three panels: iteration, time, bytes
        assert img[..., :3].std() > 0.05  # not a blank canvas


def test_axes_hold_the_history(tmp_path):
    h1 = fake_result(tmp_path / "a.h5", n=25, bytes_per_it=1e6)
    h2 = fake_result(tmp_path / "b.h5", n=40, step0=0.1, bytes_per_it=3e4)
    runs = [Run(load_result(str(tmp_path / f"{c}.h5")), lab) for c, lab in zip("ab", ("A", "B"))]
    figs = plot_runs(runs, str(tmp_path / "p"), metrics=["gap"], formats=("png",), dpi=DPI)
    assert len(figs) == 1 and figs[0].metric == "gap"
    panels = figs[0].panels
    assert [p["x"] for p in panels] == ["iteration", "time", "bytes_sent"]
    assert panels[0]["xlabel"] == "iteration" and panels[1]["xlabel"] == "wall time [s]"
    assert panels[2]["xlabel"] == "bytes sent by rank 0 [MB]" and panels[2]["logx"]  # 33x apart: log x
    assert all(p["ylabel"] == "F(x) - F*" and p["log"] for p in panels)
    assert panels[0]["points"] == [len(h1["gap"]), len(h2["gap"])]
    assert panels[2]["points"] == [len(h1["gap"]) - 1, len(h2["gap"]) - 1]  # bytes 0 at iteration 0: off a log axis
    # the drawn lines are the history: re-draw and read the matplotlib lines back
    from matplotlib.figure import Figure
    import mpiopt.report as rep
    drawn = {}
    orig_savefig = Figure.savefig

    def grab(self, *a, **k):
        drawn["lines"] = [(ax.get_xlabel(), ln.get_label(), ln.get_xdata(), ln.get_ydata())
                          for ax in self.axes for ln in ax.get_lines()]
        return orig_savefig(self, *a, **k)
    Figure.savefig = grab
    try:
        rep.plot_runs(runs, str(tmp_path / "q"), metrics=["objective"], formats=("png",))
    finally:
        Figure.savefig = orig_savefig
    it_lines = [d for d in drawn["lines"] if d[0] == "iteration"]
    assert [d[1] for d in it_lines] == ["A", "B"]
    assert np.array_equal(it_lines[1][2], h2["iteration"]) and np.array_equal(it_lines[1][3], h2["objective"])


def test_no_bytes_column_gives_two_panels_and_other_metrics(tmp_path):
    fake_result(tmp_path / "a.h5", bytes_per_it=None, extra_cols={"test_rmse": lambda it: 1.0 + 0.1 / (1 + it)})
    rows, figs, notes = report([str(tmp_path / "a.h5")], str(tmp_path / "r"), formats=("png",), metrics="all")
    assert {f.metric for f in figs} == {"gap_to_fstar", "objective", "test_rmse"}  # issue 15: quantity names
    rmse = next(f for f in figs if f.metric == "test_rmse")
    assert [p["x"] for p in rmse.panels] == ["iteration", "time"] and rmse.panels[0]["ylabel"] == "held-out RMSE"
    img = png_pixels(tmp_path / "r" / "test_rmse.png")
    assert img.shape[:2] == (round(3.6 * DPI), round(4.2 * 2 * DPI))
    assert rows[0]["final_test_rmse"] == pytest.approx(1.0 + 0.1 / 30)
    assert math.isnan(rows[0]["mb_sent_rank0"]) or rows[0]["mb_sent_rank0"] == 0


def test_live_file_is_read_while_the_writer_appends(tmp_path):
    """SWMR: another process reports on a result file the writer still has open."""
    path = tmp_path / "live.h5"
    w = ResultWriter(str(path), {"format": FORMAT, "format_version": FORMAT_VERSION, "solver": "prox_sgd",
                                 "problem": "lasso", "config": {"run": {"seed": 0}}, "n_ranks": 4,
                                 "status": "running"})
    try:
        for i in range(10):
            w.append({"iteration": i, "time": 0.1 * i, "objective": 5.0 - 0.1 * i})
        w.flush()
        cp = report_cli(path, "--out-dir", tmp_path / "r1", "--formats", "png")
        assert cp.returncode == 0, cp.stderr
        row = next(csv.DictReader((tmp_path / "r1" / "summary.csv").open()))
        assert row["status"] == "running" and row["iterations"] == "9"
        assert float(row["objective"]) == pytest.approx(4.1)
        assert png_pixels(tmp_path / "r1" / "objective.png").shape[1] == round(4.2 * 2 * DPI)
        for i in range(10, 25):
            w.append({"iteration": i, "time": 0.1 * i, "objective": 5.0 - 0.1 * i})
        w.flush()
        cp = report_cli(path, "--out-dir", tmp_path / "r2", "--no-plots")
        assert cp.returncode == 0, cp.stderr
        row = next(csv.DictReader((tmp_path / "r2" / "summary.csv").open()))
        assert row["iterations"] == "24" and float(row["objective"]) == pytest.approx(2.6)
    finally:
        w.close({"status": "max_iter", "nit": 24, "fun": 2.6})
    assert load_result(str(path))["status"] == "max_iter"


def test_folder_of_sweep_results_skips_other_files(tmp_path, capsys):
    sweep = tmp_path / "results" / "mpiopt-sweep-77"
    sweep.mkdir(parents=True)
    for task, seed in enumerate((0, 1, 2)):
        fake_result(sweep / f"prox_sgd-lasso-n2-77_{task}.h5", seed=seed)
    ck = sweep / "ckpt"
    ck.mkdir()
    import h5py
    with h5py.File(ck / "ckpt-000000010.h5", "w") as f:
        f.attrs["format"] = "mpiopt-checkpoint"
    (sweep / "notes.txt").write_text("not a result")
    results, notes = collect([str(tmp_path / "results")])
    assert len(results) == 3 and len(notes) == 1 and "ckpt-000000010.h5" in notes[0]
    from mpiopt.report import main
    assert main([str(tmp_path / "results"), "--out-dir", str(tmp_path / "r"), "--no-plots"]) == 0
    out = capsys.readouterr()
    assert "skipped" in out.err and out.out.count("prox_sgd (seed=") == 3
    rows = list(csv.DictReader((tmp_path / "r" / "summary.csv").open()))
    assert [r["label"] for r in rows] == ["prox_sgd (seed=0)", "prox_sgd (seed=1)", "prox_sgd (seed=2)"]


@pytest.mark.parametrize("args, needle", [
    (["missing.h5"], "missing.h5: not found"),
    (["empty_dir"], "no mpiopt result files"),
    (["notres.h5"], "not an mpiopt result file"),
    (["a.h5", "--metrics", "nope"], "--metrics: nope not in any history"),
    (["a.h5", "--formats", "gif"], "--formats: gif not supported"),
    ([], "no result file given"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, args, needle):
    (tmp_path / "empty_dir").mkdir()
    import h5py
    with h5py.File(tmp_path / "notres.h5", "w") as f:
        f.attrs["format"] = "something-else"
    fake_result(tmp_path / "a.h5")
    monkeypatch.chdir(tmp_path)
    from mpiopt.report import main
    assert main([*args, "--out-dir", str(tmp_path / "r")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpiopt.report: error:") and needle in lines[0], lines


def test_docs_example_plot_is_a_real_png():
    img_path = Path(__file__).resolve().parent.parent / "docs" / "img" / "report-gap.png"
    img = png_pixels(img_path)
    assert img.shape[0] > 200 and img.shape[1] > 600 and img[..., :3].std() > 0.05
    assert "img/report-gap.png" in (img_path.parent.parent / "report.md").read_text()


def test_mean_over_seeds_draws_one_line_with_a_band(tmp_path):
    hists = [fake_result(tmp_path / f"s{seed}.h5", seed=seed, offset=0.1 * seed, n=20 + 5 * seed, max_iter=99)
             for seed in (0, 1, 2)]
    fake_result(tmp_path / "other.h5", step0=0.1, max_iter=99)
    results = [load_result(str(tmp_path / f)) for f in ("s0.h5", "s1.h5", "s2.h5", "other.h5")]
    runs = aggregate_seeds(results)
    assert [r.label for r in runs] == ["prox_sgd (step0=0.5, 3 seeds)", "prox_sgd (step0=0.1)"]
    agg = runs[0]
    assert agg.n_seeds == 3 and np.array_equal(agg.history["iteration"], np.arange(20))  # common iterations
    objs = np.stack([h["objective"][:20] for h in hists])
    assert np.allclose(agg.history["objective"], objs.mean(axis=0))
    assert np.array_equal(agg.band["objective"][0], objs.min(axis=0))
    assert np.array_equal(agg.band["objective"][1], objs.max(axis=0))
    assert runs[1].mean_history is None and runs[1].history["objective"].shape == (30,)
    from matplotlib.figure import Figure
    drawn = {}
    orig = Figure.savefig

    def grab(self, *a, **k):
        ax = self.axes[0]
        drawn["lines"] = [(ln.get_label(), ln.get_ydata()) for ln in ax.get_lines()]
        drawn["bands"] = len(ax.collections)
        return orig(self, *a, **k)
    Figure.savefig = grab
    try:
        plot_runs(runs, str(tmp_path / "p"), metrics=["objective"], formats=("png",))
    finally:
        Figure.savefig = orig
    assert [d[0] for d in drawn["lines"]] == [runs[0].label, runs[1].label]
    assert np.allclose(drawn["lines"][0][1], objs.mean(axis=0)) and drawn["bands"] == 1
    from mpiopt.report import main
    assert main([str(tmp_path), "--mean-over-seeds", "--metrics", "objective", "--formats", "png",
                 "--out-dir", str(tmp_path / "r"), "-q"]) == 0
    assert png_pixels(tmp_path / "r" / "objective.png")[..., :3].std() > 0.05


# -- issue 15: one meaning per name, each family's quality figure, focused default plots ----------------------
def write_result(path: Path, solver: str, hist: dict, attrs: dict | None = None, problem: str = "p",
                 solver_cfg: dict | None = None, problem_cfg: dict | None = None, ranks: int = 2) -> Path:
    """A finished result file with the given history columns and final attributes."""
    cfg = {"solver": solver_cfg or {}, "problem": problem_cfg or {}, "run": {"seed": 0, "out": str(path)}}
    w = ResultWriter(str(path), {"format": FORMAT, "format_version": FORMAT_VERSION, "solver": solver,
                                 "problem": problem, "config": cfg, "n_ranks": ranks, "seed": 0, "status": "running",
                                 **{k: v for k, v in (attrs or {}).items() if k == "reference_objective"}})
    n = len(hist["iteration"])
    for i in range(n):
        w.append({k: float(v[i]) for k, v in hist.items()})
    w.close({"status": "max_iter", "nit": int(hist["iteration"][-1]), "wall_time": 1.0,
             **{k: v for k, v in (attrs or {}).items() if k != "reference_objective"}}, {"x": np.zeros(2)})
    return path


def bundle_history(n: int = 40, renamed: bool = False) -> dict:
    """A level_bundle-like history: certified gap f_up - f_low (large) apart from F - F* (small)."""
    it = np.arange(n)
    f_up = 10.0 + 5.0 * 0.8 ** it
    f_low = 10.0 - 20.0 * 0.9 ** it
    h = {"iteration": it, "time": 0.1 * it, "objective": f_up, "lower_bound": f_low, "upper_bound": f_up,
         "level": 0.5 * (f_up + f_low), "n_cuts": 1.0 + it}
    if renamed:
        h.update(certified_gap=f_up - f_low, rel_certified_gap=(f_up - f_low) / f_up, gap_to_fstar=f_up - 10.0)
    else:
        h.update(gap=f_up - f_low, rel_gap=(f_up - f_low) / f_up, error=f_up - 10.0)
    return h


@pytest.mark.parametrize("renamed", [False, True])
def test_bundle_certified_gap_and_gap_to_fstar_are_separate(tmp_path, renamed):
    h = bundle_history(renamed=renamed)
    write_result(tmp_path / "lb.h5", "level_bundle", h, {"fun": float(h["objective"][-1]), "reference_objective": 10.0})
    rows, figs, _ = report([str(tmp_path / "lb.h5")], str(tmp_path / "r"), formats=("png",))
    row = rows[0]
    assert row["gap_to_fstar"] == pytest.approx(5.0 * 0.8 ** 39)             # F - F*
    assert row["certified_gap"] == pytest.approx(5.0 * 0.8 ** 39 + 20.0 * 0.9 ** 39)  # f_up - f_low, not mixed
    assert row["final_certified_gap"] == pytest.approx(row["certified_gap"])
    assert row["final_gap_to_fstar"] == pytest.approx(row["gap_to_fstar"])
    assert "gap" not in row and "final_gap" not in row and "final_error" not in row
    assert [(f.metric, f.panels[0]["ylabel"]) for f in figs] == [
        ("certified_gap", "certified gap f_up - f_low"), ("gap_to_fstar", "F(x) - F*")]
    assert all(p["log"] for f in figs for p in f.panels)
    assert sorted(p.name for p in (tmp_path / "r").glob("*.png")) == ["certified_gap.png", "gap_to_fstar.png"]
    # the old history name "gap" asked for by name: drawn as what it means in this history
    figs = plot_runs([Run(load_result(str(tmp_path / "lb.h5")), "lb")], str(tmp_path / "q"),
                     metrics=["gap" if not renamed else "certified_gap"], formats=("png",))
    assert figs[0].quantity == "certified_gap" and figs[0].panels[0]["ylabel"] == "certified gap f_up - f_low"
    # --metrics all: relative certified gap labelled as such, never as (F - F*)/|F*|
    figs = plot_runs([Run(load_result(str(tmp_path / "lb.h5")), "lb")], str(tmp_path / "a"), metrics="all",
                     formats=("png",))
    labels = {f.quantity: f.panels[0]["ylabel"] for f in figs}
    assert labels["rel_certified_gap"].startswith("relative certified gap") and "rel_gap_to_fstar" not in labels


def test_projected_subgradient_table_shows_f_minus_fstar_not_the_certified_gap(tmp_path):
    """The issue's case: 12.5 (certified gap) was shown in the table's gap column for F - F* = 8e-3."""
    it = np.arange(50)
    h = {"iteration": it, "time": 0.1 * it, "objective": 34.02 + 0.008 + 1.0 / (1 + it), "lower_bound": 21.5 + 0 * it,
         "upper_bound": 34.028 + 1.0 / (1 + it)}
    h["gap"] = h["upper_bound"] - h["lower_bound"]
    h["error"] = h["objective"] - 34.02
    write_result(tmp_path / "ps.h5", "projected_subgradient", h, {"fun": 34.028, "reference_objective": 34.02})
    from mpiopt.report import main
    assert main([str(tmp_path / "ps.h5"), "--no-plots", "--out-dir", str(tmp_path / "r")]) == 0
    row = next(csv.DictReader((tmp_path / "r" / "summary.csv").open()))
    assert float(row["gap_to_fstar"]) == pytest.approx(0.008) and float(row["certified_gap"]) > 12
    md = (tmp_path / "r" / "summary.md").read_text().splitlines()[0]
    assert "| gap_to_fstar |" in md and "| certified_gap |" in md and "| gap |" not in md


def test_a_history_name_meaning_two_things_is_refused(tmp_path):
    h = bundle_history()
    write_result(tmp_path / "lb.h5", "level_bundle", h, {"fun": 11.0, "reference_objective": 10.0})
    fake_result(tmp_path / "px.h5")
    from mpiopt.report import main
    out = tmp_path / "r"
    assert main([str(tmp_path / "lb.h5"), str(tmp_path / "px.h5"), "--metrics", "gap", "--out-dir", str(out)]) == 2
    assert main([str(tmp_path / "lb.h5"), str(tmp_path / "px.h5"), "--metrics", "gap_to_fstar", "--formats", "png",
                 "--out-dir", str(out), "-q"]) == 0
    assert (out / "gap_to_fstar.png").exists()


def signprox_history(n: int = 30) -> dict:
    it = np.arange(n)
    obj = 1.0 + 1.0 / (1 + it)
    pol = 1.0 + 0.5 / (1 + it)
    return {"iteration": it, "time": 0.01 * it, "bytes_sent": 100.0 * it, "objective": obj, "gap": obj - 1.0,
            "objective_polished": pol, "gap_polished": pol - 1.0, "step": 0.1 / np.sqrt(1 + it),
            "nnz": 50.0 - it, "nnz_polished": 20.0 + 0 * it}


def test_signprox_table_pairs_polished_with_polished(tmp_path):
    h = signprox_history()
    write_result(tmp_path / "sp.h5", "signprox", h, {"fun": float(h["objective_polished"][-1]),
                                                     "reference_objective": 1.0, "bytes_algorithm_rank0": 2900,
                                                     "bytes_diagnostics_rank0": 5000, "bytes_sent_rank0": 7900})
    rows, figs, _ = report([str(tmp_path / "sp.h5")], str(tmp_path / "r"), formats=("png",))
    r = rows[0]
    assert r["objective"] == pytest.approx(h["objective_polished"][-1])
    assert r["gap_to_fstar"] == pytest.approx(h["gap_polished"][-1])          # the same (polished) x
    assert r["objective_raw"] == pytest.approx(h["objective"][-1])
    assert r["gap_to_fstar_raw"] == pytest.approx(h["gap"][-1])
    assert r["final_gap_to_fstar_polished"] == pytest.approx(h["gap_polished"][-1])
    # bytes: the algorithm's own traffic apart from evaluations/checks
    assert r["mb_algorithm_rank0"] == pytest.approx(2900e-6) and r["mb_diagnostics_rank0"] == pytest.approx(5000e-6)
    assert r["mb_sent_rank0"] == pytest.approx(7900e-6)
    # key plots of the proximal family; the polished x dashed in the same figure; no step plot by default
    assert [f.metric for f in figs] == ["gap_to_fstar", "objective"]
    gap = figs[0]
    assert [p["x"] for p in gap.panels] == ["iteration", "time", "bytes_sent"]
    assert gap.panels[0]["points"] == [30] and gap.panels[0]["companion_points"] == [30]
    assert gap.legend == [r["label"], "dashed: polished x"]


def test_old_files_bytes_from_history(tmp_path):
    """Files without the algorithm/diagnostics split: the history's bytes_sent is the algorithm's count."""
    fake_result(tmp_path / "a.h5", bytes_per_it=100.0, n=11)
    rows, _, _ = report([str(tmp_path / "a.h5")], str(tmp_path / "r"), plots=False)
    assert rows[0]["mb_algorithm_rank0"] == pytest.approx(1000e-6)
    assert math.isnan(rows[0]["mb_diagnostics_rank0"]) and rows[0]["mb_sent_rank0"] == pytest.approx(1100e-6)


def mf_history(n: int = 8) -> dict:
    ep = np.arange(n)
    return {"iteration": ep, "time": 1.0 + 0.5 * ep, "epoch": ep.astype(float), "objective": 5.0 / (1 + ep),
            "rmse": 1.0 / (1 + 0.1 * ep), "test_rmse": 1.0 + 0.01 * (ep - 4) ** 2, "sigma": 1e-3 + 0 * ep,
            "pairs": np.minimum(ep, 3).astype(float), "step_time": 0.5 + 0 * ep}


def test_mf_quality_figures_and_epoch_axis(tmp_path):
    h = mf_history()
    write_result(tmp_path / "old.h5", "hamsi", h, {"fun": float(h["objective"][-1])}, problem="synthetic_mf")
    write_result(tmp_path / "new.h5", "mf_gd", h, {"fun": float(h["objective"][-1]), "test_rmse": 1.0,
                                                   "best_test_rmse": 1.0, "best_epoch": 4}, problem="synthetic_mf")
    rows, figs, _ = report([str(tmp_path / "old.h5"), str(tmp_path / "new.h5")], str(tmp_path / "r"))
    old, new = rows
    # older files: from the history (final = last epoch; best with its epoch)
    assert old["test_rmse"] == pytest.approx(h["test_rmse"][-1])
    assert old["best_test_rmse"] == pytest.approx(1.0) and old["best_epoch"] == 4
    # newer files: the solver's quality attributes
    assert new["test_rmse"] == 1.0 and new["best_test_rmse"] == 1.0 and new["best_epoch"] == 4
    assert math.isnan(old["gap_to_fstar"]) and math.isnan(old["certified_gap"])
    # MF key plots against epochs; no epoch-vs-iteration, sigma or step_time figure
    assert [f.metric for f in figs] == ["test_rmse", "rmse"]
    assert [p["xlabel"] for p in figs[0].panels] == ["epoch", "wall time [s]"]
    assert figs[0].panels[0]["ylabel"] == "held-out RMSE" and figs[1].panels[0]["ylabel"] == "training RMSE"
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "rmse.pdf", "rmse.png", "summary.csv", "summary.md", "test_rmse.pdf", "test_rmse.png"]
    assert (tmp_path / "r" / "test_rmse.pdf").read_bytes()[:4] == b"%PDF"
    # --metrics all: every quantity that changes; constants (sigma, step_time) and progress columns never
    runs = [Run(load_result(str(tmp_path / "old.h5")), "old")]
    got = [f.metric for f in plot_runs(runs, str(tmp_path / "a"), metrics="all", formats=("png",))]
    assert set(got) == {"test_rmse", "rmse", "objective", "pairs"}
    # asked for by name, a constant is drawn
    assert [f.metric for f in plot_runs(runs, str(tmp_path / "b"), metrics=["sigma"], formats=("png",))] == ["sigma"]
    with pytest.raises(Exception, match="--metrics: epoch not in any history"):
        plot_runs(runs, str(tmp_path / "c"), metrics=["epoch"], formats=("png",))


def test_torch_accuracy_against_epochs(tmp_path):
    it = np.arange(0, 2000, 100)
    epoch = it * 64 / 1797.0                      # samples / N: fractional epochs
    acc = 0.9 - 0.5 * np.exp(-it / 400.0)
    h = {"iteration": it, "time": 0.05 * it, "epoch": epoch, "objective": 1.0 - acc, "test_loss": 1.1 - acc,
         "test_accuracy": acc, "train_accuracy": acc + 0.01, "updates_per_s": 100.0 + 0 * it}
    write_result(tmp_path / "t.h5", "async_subgradient", h, {"fun": float(h["objective"][-1]),
                                                             "test_accuracy": float(acc[-1])}, problem="digits")
    from matplotlib.figure import Figure
    drawn = {}
    orig = Figure.savefig

    def grab(self, *a, **k):
        drawn.setdefault("y", self.axes[0].get_lines()[0].get_ydata())
        drawn.setdefault("x", self.axes[0].get_lines()[0].get_xdata())
        return orig(self, *a, **k)
    Figure.savefig = grab
    try:
        rows, figs, _ = report([str(tmp_path / "t.h5")], str(tmp_path / "r"), formats=("png",))
    finally:
        Figure.savefig = orig
    assert rows[0]["test_accuracy"] == pytest.approx(acc[-1]) and rows[0]["best_test_accuracy"] == pytest.approx(acc[-1])
    assert rows[0]["best_epoch"] == pytest.approx(epoch[-1])
    assert [f.metric for f in figs] == ["test_accuracy", "test_loss"]
    p0 = figs[0].panels[0]
    assert p0["x"] == "epoch" and p0["xlabel"] == "epoch" and p0["ylabel"] == "test accuracy [%]"
    assert np.allclose(drawn["x"], epoch) and np.allclose(drawn["y"], 100 * acc)   # in percent


def test_titles_and_legends(tmp_path):
    fake_result(tmp_path / "a.h5", step0=0.5)
    fake_result(tmp_path / "b.h5", step0=0.1)
    fake_result(tmp_path / "c.h5", solver="signprox")
    one = report([str(tmp_path / "a.h5")], str(tmp_path / "r1"), formats=("png",))[1]
    assert one[0].title == "F(x) - F*: prox_sgd (lasso, 2 ranks)" and one[0].legend == []   # one run: no legend
    rows, figs, _ = report([str(tmp_path / f"{c}.h5") for c in "abc"], str(tmp_path / "r3"), formats=("png",))
    for f in figs:
        assert "run(s)" not in f.title and f.title.endswith("on lasso, 2 ranks")
        assert f.legend == ["prox_sgd (step0=0.5)", "prox_sgd (step0=0.1)", "signprox"]
    # the legend sits below the panels, outside every axes
    import matplotlib.image  # noqa: F401  (matplotlib present)
    from matplotlib.figure import Figure
    boxes = {}
    orig = Figure.savefig

    def grab(self, *a, **k):
        self.canvas.draw()
        r = self.canvas.get_renderer()
        boxes["legend"] = self.legends[0].get_window_extent(r)
        boxes["axes"] = [ax.get_tightbbox(r) for ax in self.axes]
        return orig(self, *a, **k)
    Figure.savefig = grab
    try:
        plot_runs([Run(load_result(str(tmp_path / f"{c}.h5")), lab) for c, lab in zip("abc", "ABC")],
                  str(tmp_path / "p"), metrics=["gap_to_fstar"], formats=("png",))
    finally:
        Figure.savefig = orig
    assert all(boxes["legend"].y1 <= ax.y0 + 1 for ax in boxes["axes"])


def test_default_report_cli_is_focused(tmp_path):
    for c, step0 in zip("abc", (0.5, 0.1, 0.2)):
        fake_result(tmp_path / f"{c}.h5", step0=step0, n=200, extra_cols={"nnz": lambda it: 100 - it % 7})
    cp = report_cli(*(tmp_path / f"{c}.h5" for c in "abc"), "--out-dir", tmp_path / "r")
    assert cp.returncode == 0, cp.stderr
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "gap_to_fstar.pdf", "gap_to_fstar.png", "objective.pdf", "objective.png", "summary.csv", "summary.md"]
    assert "gap_to_fstar" in cp.stdout and "mb_algorithm_rank0: MB sent by rank 0 for the algorithm" in cp.stdout
    cp = report_cli(*(tmp_path / f"{c}.h5" for c in "abc"), "--out-dir", tmp_path / "all", "--metrics", "all",
                    "--formats", "png")
    assert cp.returncode == 0, cp.stderr
    assert sorted(p.name for p in (tmp_path / "all").glob("*.png")) == [
        "gap_to_fstar.png", "nnz.png", "objective.png"]
