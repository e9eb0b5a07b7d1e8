"""Pinned trajectories: deterministic solvers end bit-identical to the digests recorded before the
architecture refactor (same seed, same rank count, same numpy).

Regenerate (only when a change is *meant* to alter iterates): ``python tests/test_pinned.py --write``.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import run_mpi  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "pinned_trajectories.json"

# name -> (ranks, CLI arguments); small, fast, deterministic runs of every deterministic solver
CASES: dict[str, tuple[int, list[str]]] = {
    "prox_sgd": (2, ["prox_sgd", "--problem", "logistic", "--set", "solver.max_iter=60", "problem.n_samples=400",
                     "problem.n_features=50", "run.history_every=10"]),
    "prox_sgd_lasso": (2, ["prox_sgd", "--problem", "lasso", "--set", "solver.max_iter=40", "problem.n_samples=300",
                           "problem.n_features=40", "solver.schedule=const", "solver.step0=0.1",
                           "run.history_every=1"]),
    "signprox": (2, ["signprox", "--problem", "logistic", "--set", "solver.max_iter=60", "problem.n_samples=400",
                     "problem.n_features=70", "run.history_every=10"]),
    "signprox_ternary_ef": (2, ["signprox", "--problem", "logistic", "--set", "solver.max_iter=40",
                                "problem.n_samples=400", "problem.n_features=70", "solver.encoding=ternary",
                                "solver.error_feedback=true", "run.history_every=1"]),
    "signsgd_mv": (2, ["signsgd_mv", "--problem", "logistic", "--set", "solver.max_iter=40", "problem.n_samples=400",
                       "problem.n_features=70", "run.history_every=1"]),
    "sign_then_prox": (2, ["sign_then_prox", "--problem", "logistic", "--set", "solver.max_iter=40",
                           "problem.n_samples=400", "problem.n_features=70", "run.history_every=1"]),
    "hamsi": (2, ["hamsi", "--problem", "synthetic_mf", "--set", "problem.n_ratings=4000", "solver.max_epochs=6"]),
    "hamsi_preset": (2, ["hamsi", "--problem", "synthetic_mf", "--set", "problem.n_ratings=20000",
                         "solver.max_epochs=5", "solver.preset=hamsi-mf",
                         "problem.latent_dim=5"]),
    "mf_gd": (2, ["mf_gd", "--problem", "synthetic_mf", "--set", "problem.n_ratings=4000", "solver.max_epochs=5"]),
    "mf_gd_strata": (2, ["mf_gd", "--problem", "synthetic_mf", "--set", "problem.n_ratings=4000",
                         "solver.max_epochs=5", "solver.mode=strata"]),
    "dsgd": (2, ["dsgd", "--problem", "synthetic_mf", "--set", "problem.n_ratings=4000", "solver.max_epochs=5"]),
    "level_bundle_sync": (3, ["level_bundle", "--problem", "polyhedral", "--set", "problem.n=12", "problem.m=4",
                              "solver.variant=sync", "solver.rtol=1e-5"]),
    "projected_subgradient": (3, ["projected_subgradient", "--problem", "polyhedral", "--set", "problem.n=12",
                                  "problem.m=4", "solver.max_iter=80"]),
}


def digest(path: Path) -> dict[str, str]:
    """sha256 of every /solution dataset and of the history's objective-like series, plus nit."""
    import h5py
    out: dict[str, str] = {}
    with h5py.File(path, "r") as f:
        for name in sorted(f["solution"]):
            out[f"solution/{name}"] = hashlib.sha256(np.ascontiguousarray(f["solution"][name][()]).tobytes()).hexdigest()
        for name in ("objective", "gap", "certified_gap", "rmse", "f_up", "f_low", "upper_bound", "lower_bound"):
            if "history" in f and name in f["history"]:
                vals = np.asarray(f["history"][name][()], dtype=np.float64)
                out[f"history/{name}"] = hashlib.sha256(vals.tobytes()).hexdigest()
        out["nit"] = str(int(f.attrs["nit"]))
    return out


def run_case(name: str, tmp: Path) -> dict[str, str]:
    n, args = CASES[name]
    out = tmp / f"{name}.h5"
    p = run_mpi([*args, "--seed", "3", "--out", str(out), "--set", "run.progress=none"], n=n, timeout=180)
    assert p.returncode == 0, p.output
    return digest(out)


def _pinned() -> dict:
    return json.loads(DATA.read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_pinned_trajectory(name, tmp_path):
    pinned = _pinned()
    if name not in pinned["cases"]:
        pytest.fail(f"no pinned digest for {name}: regenerate with python tests/test_pinned.py --write")
    got = run_case(name, tmp_path)
    want = pinned["cases"][name]
    if np.__version__ != pinned["numpy"]:
        # another numpy may change summation order: the keys must still match
        assert set(got) == set(want)
        return
    assert got == want, f"{name}: iterates changed against the pinned trajectory"


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile
    res = {"numpy": np.__version__, "cases": {}}
    with tempfile.TemporaryDirectory() as d:
        for name in sorted(CASES):
            res["cases"][name] = run_case(name, Path(d))
            print(name, res["cases"][name].get("nit"), flush=True)
    DATA.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
