"""HAMSI, mf_gd and dsgd under mpirun: rank-count independence, bit-identical resume, data errors."""
from __future__ import annotations

import numpy as np
import pytest

from mpiopt.io import load_result

from conftest import run_mpi

SMALL = ["problem.n_ratings=20000", "problem.latent_dim=4", "run.progress=none"]


def _run(tmp_path, solver, n, name, sets, extra=()):
    out = tmp_path / f"{name}.h5"
    p = run_mpi([solver, "--problem", "synthetic_mf", "--set", *SMALL, *sets, "--out", out, *extra],
                n=n, timeout=240, cwd=tmp_path)
    assert p.returncode == 0, p.output
    return load_result(str(out))


def _same(a, b) -> bool:
    return all(np.array_equal(a.solution[k], b.solution[k]) for k in ("W", "H"))


def test_mf_gd_same_factors_at_1_2_4_ranks(tmp_path):
    sets = ["solver.max_epochs=4", "solver.blocks=4", "run.seed=11"]
    r1, r2, r4 = (_run(tmp_path, "mf_gd", n, f"gd{n}", sets) for n in (1, 2, 4))
    assert _same(r1, r2) and _same(r1, r4)                      # bit-identical
    assert r1.history["rmse"][-1] < r1.history["rmse"][0]
    # the default grid (one block per rank) changes only the summation order
    d1 = _run(tmp_path, "mf_gd", 1, "gdd1", ["solver.max_epochs=4", "run.seed=11"])
    d2 = _run(tmp_path, "mf_gd", 2, "gdd2", ["solver.max_epochs=4", "run.seed=11"])
    np.testing.assert_allclose(d1.solution["W"], d2.solution["W"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(d1.history["rmse"], d2.history["rmse"], rtol=1e-12)
    # strata mode with a fixed grid, and another seed gives other factors
    s1 = _run(tmp_path, "mf_gd", 1, "gds1", ["solver.max_epochs=3", "solver.blocks=2", "solver.mode=strata"])
    s2 = _run(tmp_path, "mf_gd", 2, "gds2", ["solver.max_epochs=3", "solver.blocks=2", "solver.mode=strata"])
    assert _same(s1, s2) and not np.array_equal(s1.solution["W"], r1.solution["W"])


def test_hamsi_preset_same_trajectory_at_1_and_2_ranks(tmp_path):
    sets = ["solver.preset=hamsi-mf", "solver.max_epochs=6", "solver.blocks=2", "problem.n_rows=300",
            "problem.n_cols=200", "problem.zipf=0.3"]
    a = _run(tmp_path, "hamsi", 1, "p1", sets)
    b = _run(tmp_path, "hamsi", 2, "p2", sets)
    assert _same(a, b)
    np.testing.assert_array_equal(a.history["rmse"], b.history["rmse"])
    assert a.config["problem"]["l2"] == 0.0 and a.config["solver"]["safeguard"] is False


@pytest.mark.parametrize("solver,n", [("hamsi", 1), ("hamsi", 2), ("dsgd", 2), ("mf_gd", 2)])
def test_resume_is_bit_identical(tmp_path, solver, n):
    sets = ["solver.max_epochs=6", "problem.test_fraction=0.1"]
    straight = _run(tmp_path, solver, n, "straight", sets)
    ck = tmp_path / "ck"
    _run(tmp_path, solver, n, "first", ["solver.max_epochs=3", "problem.test_fraction=0.1"],
         ["--checkpoint-dir", ck, "--checkpoint-every", "3"])
    resumed = _run(tmp_path, solver, n, "resumed", sets, ["--checkpoint-dir", ck, "--resume", "latest"])
    assert "ckpt-000000003" in resumed.attrs["resumed_from"]       # really continued from epoch 3
    assert _same(straight, resumed)
    np.testing.assert_array_equal(straight.history["rmse"], resumed.history["rmse"])
    np.testing.assert_array_equal(straight.history["test_rmse"], resumed.history["test_rmse"])


def test_movielens_bad_line_in_second_shard_and_good_run(tmp_path):
    rng = np.random.default_rng(0)
    lines = [f"{u}\t{i}\t{r}\t88125" for u, i, r in zip(rng.integers(1, 40, 600), rng.integers(1, 30, 600),
                                                      rng.integers(1, 6, 600))]
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    p = run_mpi(["hamsi", "--problem", "movielens", "--set", f"problem.path={folder}", "solver.max_epochs=3",
                 "problem.latent_dim=3", "run.progress=none", "--out", tmp_path / "ml.h5"], n=2, cwd=tmp_path)
    assert p.returncode == 0, p.output
    r = load_result(str(tmp_path / "ml.h5"))
    assert "test_rmse" in r.history and r.solution["W"].shape[1] == 3
    assert r.solution["row_ids"].size == r.solution["W"].shape[0]      # users x items
    assert r.solution["col_ids"].size == r.solution["H"].shape[0]
    bad = list(lines)
    bad[450] = "7\t3\t4"        # line 451, read by rank 1 of 2
    (folder / "u.data").write_text("\n".join(bad) + "\n")
    p = run_mpi(["hamsi", "--problem", "movielens", "--set", f"problem.path={folder}", "run.progress=none"],
                n=2, cwd=tmp_path)
    assert p.returncode == 2, p.output
    assert p.stderr.count("u.data:451: malformed rating line") == 1, p.output


def test_bad_block_count_is_an_input_error(tmp_path):
    p = run_mpi(["hamsi", "--set", "solver.blocks=3", "run.progress=none"], n=2, cwd=tmp_path)
    assert p.returncode == 2 and "solver.blocks=3 must be a multiple of the rank count 2" in p.stderr


def test_resume_at_another_rank_count_with_fixed_blocks_is_bit_identical(tmp_path):
    """Checkpoints are in global order: 3 epochs at 2 ranks + 3 at 4 ranks == 6 epochs at 1 rank."""
    sets = ["solver.blocks=4", "problem.test_fraction=0.1"]
    straight = _run(tmp_path, "hamsi", 1, "straight", sets + ["solver.max_epochs=6"])
    ck = tmp_path / "ck"
    _run(tmp_path, "hamsi", 2, "first", sets + ["solver.max_epochs=3"], ["--checkpoint-dir", ck, "--checkpoint-every", "3"])
    resumed = _run(tmp_path, "hamsi", 4, "resumed", sets + ["solver.max_epochs=6"],
                   ["--checkpoint-dir", ck, "--resume", "latest"])
    assert "ckpt-000000003" in resumed.attrs["resumed_from"]
    assert _same(straight, resumed)
    np.testing.assert_array_equal(straight.history["rmse"], resumed.history["rmse"])
