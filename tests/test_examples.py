"""The plug-in examples of docs/plugins.md run as documented, and what a run prints in batch mode."""
import pytest

from conftest import ROOT, run_mpi
from mpiopt.io import load_result

EXAMPLES = {
    "my_problem": (2, ["prox_sgd", "--problem", "my_quadratic", "--set", "solver.max_iter=300"]),
    # patience off: hamsi's held-out RMSE rises during its warm-up on this small set before it falls
    "my_ratings": (2, ["hamsi", "--problem", "my_ratings", "--set", "solver.max_epochs=30", "solver.patience=0"]),
    "my_torch_model": (3, ["async_subgradient", "--problem", "my_torch_model", "--set", "solver.max_epochs=3"]),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_plugin_runs(name, tmp_path):
    if name == "my_torch_model":
        pytest.importorskip("torch")
    n, args = EXAMPLES[name]
    out = tmp_path / "r.h5"
    p = run_mpi([*args, "--plugin", ROOT / "examples" / f"{name}.py", "--set", "run.progress=none", "--out", out],
                n=n, timeout=300)
    assert p.returncode == 0, p.output
    a = load_result(str(out)).attrs
    if name == "my_problem":       # F* from compute_reference: the gap is reported and small
        assert 0 <= a["fun"] - a["reference_objective"] < 0.2
    elif name == "my_ratings":     # the held-out RMSE beats predicting the mean rating (about 1.1 here)
        assert a["test_rmse"] < 0.9
    else:                          # three separable classes: better than chance (1/3)
        assert a["test_accuracy"] > 0.5


def test_batch_progress_lines_show_how_far_and_how_good(tmp_path):
    """Batch mode (no terminal, CI=true as under sbatch): plain progress lines on rank 0 only. A method
    that stops on its gap shows the certified gap, not a share of an iteration cap; the summary names
    the quality figure and the algorithm's bytes apart from evaluations."""
    p = run_mpi(["level_bundle", "--set", "problem.n=20", "problem.m=4", "run.progress=auto", "run.report_every=5",
                 "--out", tmp_path / "lb.h5"], n=3, timeout=300, env={"CI": "true"})
    assert p.returncode == 0, p.output
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("[") and " iter " in ln]
    assert len(lines) >= 2, p.stdout
    assert all("certified_gap=" in ln and "/100000" not in ln for ln in lines), lines
    assert "\r" not in p.stdout and "it/s" not in p.stdout + p.stderr      # no progress bar in batch mode
    assert "bytes sent:" in p.stdout and "by the algorithm" in p.stdout
    p = run_mpi(["hamsi", "--problem", "synthetic_mf", "--set", "problem.n_ratings=20000", "solver.max_epochs=4",
                 "--out", tmp_path / "mf.h5"], n=2, timeout=300, env={"CI": "true"})
    assert p.returncode == 0, p.output
    assert any(ln.startswith("[") and "epoch=" in ln and "test_rmse=" in ln for ln in p.stdout.splitlines()), p.stdout
    assert "quality: test_rmse = " in p.stdout and "best_epoch" in p.stdout
    a = load_result(str(tmp_path / "mf.h5")).attrs
    assert a["test_rmse"] > 0 and a["best_test_rmse"] <= a["test_rmse"] and "bytes_algorithm_total" in a
