"""The plug-in examples of docs/plugins.md run as documented, and what a run prints in batch mode."""
import numpy as np
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


BOX_L1 = {"problem.reg": "box_l1", "problem.l1": 0.01, "problem.n_samples": 1500, "problem.n_features": 20,
          "problem.support": 0.5, "problem.noise": 0.1}


def box_l1_kkt_violation(x: np.ndarray, g: np.ndarray, lam: float, cap: float, tol: float = 1e-12) -> float:
    """The largest violation of 0 in g + lam d|x| + N_[-cap, cap](x), coordinate by coordinate."""
    s = np.sign(x)
    interior = (np.abs(x) > tol) & (np.abs(x) < cap - tol)
    at_cap = np.abs(x) >= cap - tol
    zero = np.abs(x) <= tol
    viol = np.zeros_like(x)
    viol[interior] = np.abs(g[interior] + lam * s[interior])
    viol[zero] = np.maximum(np.abs(g[zero]) - lam, 0.0)
    viol[at_cap] = np.maximum(s[at_cap] * (g[at_cap] + lam * s[at_cap]), 0.0)   # -(g + lam s) points outward
    return float(viol.max())


def test_my_prox_example_through_the_cli_reaches_a_kkt_optimum(tmp_path):
    """examples/my_prox.py (one class, one decorator) is a regulariser of the linear problems: its
    reference optimum (prox-gradient hook of a convex class) satisfies the KKT conditions of
    lasso + box-constrained L1, computed here directly from the data, and prox_sgd run through the
    CLI on 2 ranks reports the same F* and ends feasible, close to it."""
    from mpiopt.api import minimize
    from mpiopt.registry import REGULARIZERS, load_plugin

    load_plugin(str(ROOT / "examples" / "my_prox.py"))
    try:
        cls = REGULARIZERS["box_l1"]
        _, p = minimize("prox_sgd", "lasso", {**BOX_L1, "solver.max_iter": 1}, return_problem=True)
    finally:                                             # the registry stays as other tests expect it
        REGULARIZERS.pop("box_l1", None)
    assert type(p.regularizer) is cls
    x, fstar = p.reference_x, p.reference_objective
    A, y = p.A, p.y                                      # one rank: all the data
    g = A.T @ (A @ x - y) / A.shape[0]                   # the gradient of (1/2N)||Ax - y||^2, directly
    cap = cls.cap
    assert np.abs(x).max() <= cap
    assert (np.abs(x) >= cap - 1e-12).any() and (x == 0).any()     # both constraints are active somewhere
    assert box_l1_kkt_violation(x, g, 0.01, cap) < 1e-7
    direct = 0.5 * float(np.mean((A @ x - y) ** 2)) + 0.01 * float(np.abs(x).sum())
    assert fstar == pytest.approx(direct, rel=1e-12)

    out = tmp_path / "r.h5"
    args = ["prox_sgd", "--problem", "lasso", "--plugin", ROOT / "examples" / "my_prox.py", "--set",
            *(f"{k}={v}" for k, v in BOX_L1.items()), "solver.max_iter=2000", "run.progress=none", "--out", out]
    run = run_mpi(args, n=2, timeout=300)
    assert run.returncode == 0, run.output
    r = load_result(str(out))
    assert r.attrs["reference_objective"] == pytest.approx(fstar, rel=1e-9)
    assert np.abs(r.solution["x"]).max() <= cap
    assert 0 <= r.attrs["fun"] - fstar < 1e-3
