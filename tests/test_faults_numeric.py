"""Numerical failures end as status ``failed`` (exit 1) in every solver family, and master/oracle
checkpoints continue at another rank count. Real MPI runs of the CLI."""
from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import ROOT, run_mpi

PLUGIN = str(ROOT / "tests" / "plugins" / "nan_numeric.py")
OLD = b"previous result"
SMALL = ["problem.n_samples=2000", "problem.n_features=100", "solver.max_iter=60"]
MF = ["problem.n_ratings=5000"]
POLY = ["--problem", "polyhedral", "--set", "problem.n=12", "problem.m=6", "problem.rows=20"]
FAILED_LINE = re.compile(r"^(status: failed \(numerical failure: .+ at [\w ]+ \d+.*|"
                         r"rank \d+: \w+Error: numerical failure: .+)$", re.M)


def write_ratings(path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = [f"{rng.integers(1, 100)}\t{rng.integers(1, 80)}\t{1e300 if i % 50 == 0 else rng.integers(1, 6)}\t"
             f"{880000000 + i}" for i in range(3000)]
    path.write_text("\n".join(lines) + "\n")


def write_svmlight(path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(400):
        feats = sorted(rng.choice(30, 5, replace=False) + 1)
        rows.append(f"{1 if i % 2 else -1} " + " ".join(f"{j}:{1e300 if (i + j) % 7 == 0 else rng.random():.4f}"
                                                     for j in feats))
    path.write_text("\n".join(rows) + "\n")


CASES = {
    # proximal / sign family
    "prox_sgd_step0": (["prox_sgd", "--set", *SMALL, "solver.step0=1e300"], 2, "objective is nan"),
    "signsgd_mv_step0": (["signsgd_mv", "--set", *SMALL, "solver.step0=1e300"], 2, "objective is nan"),
    "sign_then_prox_step0": (["sign_then_prox", "--set", *SMALL, "solver.step0=1e300"], 2, "objective is nan"),
    "signprox_step0_polish": (["signprox", "--set", *SMALL, "solver.step0=1e300", "solver.polish=band"], 2,
                              "objective is nan"),
    "prox_sgd_nan_loss": (["prox_sgd", "--problem", "nan_loss", "--plugin", PLUGIN, "--set", "solver.max_iter=50"],
                          2, "objective is nan|iterate is nan"),
    "signprox_nan_loss": (["signprox", "--problem", "nan_loss", "--plugin", PLUGIN, "--set", "solver.max_iter=50"],
                          2, "sign message is not finite"),
    "prox_sgd_svmlight_1e300": (["prox_sgd", "--problem", "logistic", "--set", "problem.path=big.svm",
                                 "solver.max_iter=40"], 2, "is -?(nan|inf)"),
    # matrix factorization
    "mf_gd_step0_no_safeguard": (["mf_gd", "--set", *MF, "solver.max_epochs=5", "solver.step0=1e300",
                                  "solver.safeguard=false"], 2, "objective is (nan|inf) at epoch 1"),
    "dsgd_lr": (["dsgd", "--set", *MF, "solver.max_epochs=5", "solver.lr=1e10"], 2, "objective is nan at epoch 1"),
    "hamsi_tiny_eta": (["hamsi", "--set", *MF, "solver.max_epochs=30", "solver.eta=1e-12", "solver.safeguard=false"],
                       2, "objective is nan at epoch"),
    "hamsi_ratings_1e300": (["hamsi", "--problem", "movielens", "--set", "problem.path=u.data", "solver.max_epochs=3"],
                            2, "objective is inf at epoch 0; at the starting point"),
    # master / oracle
    "level_bundle_nan_value_mpi": (["level_bundle", "--problem", "nan_oracle", "--plugin", PLUGIN, "--set",
                                    "problem.reference=false"], 3, "oracle value of component 0 is nan"),
    "level_bundle_nan_value_one_rank": (["level_bundle", "--problem", "nan_oracle", "--plugin", PLUGIN, "--set",
                                         "problem.reference=false"], 1, "oracle value of component 0 is nan"),
    "projected_subgradient_nan_subgradient": (["projected_subgradient", "--problem", "nan_oracle", "--plugin", PLUGIN,
                                               "--set", "problem.reference=false", "solver.step=diminishing",
                                               "problem.nan_what=subgradient"], 3,
                                              "oracle subgradient of component 0 is nan"),
    # torch training
    **{f"async_{m}_gamma": (["async_subgradient", "--set", f"solver.method={m}", "solver.max_epochs=1",
                             "solver.gamma=1e300"], 2, "is (nan|inf) at update") for m in ("sgd", "hw", "assm", "passm")},
    "ddp_gamma": (["ddp", "--set", "solver.max_epochs=1", "solver.gamma=1e300"], 2, "iterate is (nan|inf) at iteration 1"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_numerical_failure_is_status_failed(name, tmp_path):
    args, n, pattern = CASES[name]
    write_ratings(tmp_path / "u.data")
    write_svmlight(tmp_path / "big.svm")
    (tmp_path / "old.h5").write_bytes(OLD)
    p = run_mpi([*args, "--out", "old.h5", "--set", "run.progress=none"], n=n, timeout=240, cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 1, f"exit {p.returncode}:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    lines = FAILED_LINE.findall(out)
    assert lines, f"no numerical-failure line:\n{out[-3000:]}"
    assert re.search(pattern, lines[0]), f"{lines[0]!r} does not match {pattern!r}"
    assert "converged" not in lines[0] and "stationary" not in out
    data = (tmp_path / "old.h5").read_bytes()
    if data != OLD:                          # a result was written: it says failed
        with h5py.File(tmp_path / "old.h5", "r") as f:
            assert f.attrs["status"] == "failed" and not f.attrs["success"], dict(f.attrs)
            assert "numerical failure" in f.attrs["message"]


def test_mf_gd_default_still_ends_normally(tmp_path):
    """The Armijo 'stationary' test does not turn an ordinary run into a failure."""
    p = run_mpi(["mf_gd", "--set", *MF, "solver.max_epochs=5", "run.progress=none", "--out", "r.h5"], n=2,
                timeout=240, cwd=tmp_path)
    assert p.returncode == 0, p.output
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f.attrs["status"] in ("max_iter", "converged") and f.attrs["success"]


def read_bundle(path: Path) -> tuple[dict, dict, np.ndarray]:
    with h5py.File(path, "r") as f:
        return dict(f.attrs), {k: f["history"][k][()] for k in f["history"]}, f["solution/x"][()]


@pytest.mark.parametrize("solver,extra", [("level_bundle", ["solver.variant=sync"]),
                                          ("level_bundle", ["solver.variant=upper_model"]),
                                          ("projected_subgradient", ["solver.max_iter=60"])])
def test_master_oracle_checkpoint_continues_at_another_rank_count(solver, extra, tmp_path):
    """Checkpoint at 3 ranks (2 oracle ranks), resume at 2 and at 4: the same iterate, then it goes on."""
    common = [solver, *POLY, *extra, "run.progress=none"]
    a = run_mpi([*common, "run.keep_checkpoints=20", "--out", tmp_path / "a.h5", "--checkpoint-dir", tmp_path / "ck",
                 "--checkpoint-every", "4"], n=3, timeout=180)
    assert a.returncode == 0, a.output
    ck = sorted((tmp_path / "ck").glob("ckpt-*.h5"))[0]
    step = int(ck.stem.split("-")[1])
    attrs_a, ha, xa = read_bundle(tmp_path / "a.h5")
    for n in (2, 4):
        b = run_mpi([*common, "--out", tmp_path / f"b{n}.h5", "--resume", ck], n=n, timeout=180)
        assert b.returncode == 0, b.output
        assert "oracle ranks" not in b.output
        attrs_b, hb, xb = read_bundle(tmp_path / f"b{n}.h5")
        assert attrs_b["resumed_from"].endswith(ck.name) and attrs_b["n_ranks"] == n
        upto = ha["iteration"] <= step        # the history up to the checkpoint: the same iterates
        k = int(upto.sum())
        assert k >= 1 and np.array_equal(hb["iteration"][:k], ha["iteration"][upto])
        assert np.array_equal(hb["upper_bound"][:k], ha["upper_bound"][upto])
        assert np.array_equal(hb["lower_bound"][:k], ha["lower_bound"][upto])
        assert hb["iteration"][-1] > step     # it went on from there
        assert attrs_b["status"] == attrs_a["status"] and attrs_b["success"]
        if attrs_a["status"] == "converged":
            assert abs(attrs_b["fun"] - attrs_a["fun"]) <= 1e-4 * max(1.0, abs(attrs_a["fun"]))
        assert hb["upper_bound"][-1] <= hb["upper_bound"][k - 1]


def test_redistribute_workers_takes_the_smallest_count_of_the_new_owners_components():
    from mpiopt.bundle.protocol import redistribute_workers
    from mpiopt.solvers.master_oracle import owners_of
    st = {"answered_k": np.array([7, 4]), "f_up": 1.5}
    out = redistribute_workers(st, ("answered_k",), owners_of(6, 2), owners_of(6, 3))
    # old: worker 0 has 0,2,4 (7), worker 1 has 1,3,5 (4); new: {0,3} {1,4} {2,5}
    assert out["answered_k"].tolist() == [4, 4, 4] and out["f_up"] == 1.5
    back = redistribute_workers(out, ("answered_k",), owners_of(6, 3), owners_of(6, 6))
    assert back["answered_k"].tolist() == [4] * 6
    assert st["answered_k"].tolist() == [7, 4]          # the input is left as it was


def test_in_process_failure_is_a_failed_result_and_polish_does_not_hide_it():
    from mpiopt.api import minimize
    opts = {"problem.n_samples": 500, "problem.n_features": 20, "solver.max_iter": 30, "solver.step0": 1e300}
    for solver in ("prox_sgd", "signprox"):
        res = minimize(solver, "logistic", dict(opts))
        assert res.status == -1 and res.success is False, (solver, res.status, res.message)
        assert res.message.startswith("numerical failure: ") and " at iteration " in res.message
