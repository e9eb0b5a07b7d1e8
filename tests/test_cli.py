"""End-to-end: the command line under mpirun (demo, help, bad input, aborts, signals, resume)."""
import os
import re
import signal
import time

import numpy as np
import pytest

from conftest import ROOT, run_mpi
from mpiopt.io import load_result

FAULTY = str(ROOT / "tests" / "plugins" / "faulty.py")


def test_demo_writes_result_file(tmp_path):
    """The default job: signprox, then its baseline prox_sgd on the same problem and budget, side by side."""
    p = run_mpi([], n=2, cwd=tmp_path, timeout=180)
    assert p.returncode == 0, p.output
    assert p.stdout.count("status:") == 2, "only rank 0 prints, one summary per run"
    assert "mpiopt-demo.h5" in p.stdout and "default job: signprox beside its baseline prox_sgd" in p.stdout
    assert re.search(r"signprox sent [\d.]+x fewer bytes for [\d.]+x the gap to F\*", p.stdout), p.stdout
    base = load_result(str(tmp_path / "mpiopt-demo-prox_sgd.h5"))
    assert base.attrs["solver"] == "prox_sgd" and base.config["problem"] == load_result(
        str(tmp_path / "mpiopt-demo.h5")).config["problem"]
    assert base.config["solver"]["max_iter"] == 500
    r = load_result(str(tmp_path / "mpiopt-demo.h5"))
    a = r.attrs
    assert a["format"] == "mpiopt-result" and a["format_version"] == 1
    assert a["solver"] == "signprox" and a["problem"] == "logistic" and a["n_ranks"] == 2
    assert a["status"] == "max_iter" and a["success"] is True and a["seed"] == 0
    assert a["wall_time"] > 0 and a["started"] <= a["finished"]
    for k in ("version_mpiopt", "version_numpy", "version_mpi4py", "version_mpi_library"):
        assert a[k]
    assert r.config["solver"]["max_iter"] == 500 and r.config["run"]["out"] == "mpiopt-demo.h5"
    n = len(r.history["iteration"])
    assert n > 10 and all(len(v) == n for v in r.history.values())
    assert {"iteration", "time", "objective", "gap", "bytes_sent"} <= set(r.history)
    assert np.all(np.diff(r.history["bytes_sent"]) > 0)
    assert r.history["objective"][-1] < r.history["objective"][0]
    assert np.isclose(r.history["gap"][-1], r.history["objective"][-1] - a["reference_objective"])
    assert r.solution["x"].shape == (1000,)      # the family's shared demo problem: 1000 sparse features


def test_help_lists_solvers_problems_and_options(tmp_path):
    p = run_mpi(["--help"], n=2, cwd=tmp_path)
    assert p.returncode == 0
    assert "prox_sgd" in p.stdout and "logistic" in p.stdout and "lasso" in p.stdout
    assert "run.max_time" in p.stdout and p.stdout.count("usage:") == 1
    p = run_mpi(["prox_sgd", "--help"], n=1, cwd=tmp_path)
    assert "solver.step0 = 0.5" in p.stdout and "solver.batch_size = 64" in p.stdout
    p = run_mpi(["--problem", "logistic", "--help"], n=1, cwd=tmp_path)
    assert "problem.l1 = 0.001" in p.stdout and "problem.path" in p.stdout


def _svm_files(tmp_path):
    good = tmp_path / "good.svm"
    good.write_text("".join(f"{1 if i % 2 else -1} 1:{i * 0.1:.2f} 3:1.5\n" for i in range(40)))
    bad = tmp_path / "bad.svm"
    lines = [f"1 1:0.5 2:{i}\n" for i in range(30)]
    lines[22] = "1 1:0.5 2:oops\n"
    bad.write_text("".join(lines))
    nan = tmp_path / "nan.svm"
    lines = [f"-1 1:0.5 2:{i}\n" for i in range(30)]
    lines[3] = "1 1:nan\n"
    nan.write_text("".join(lines))
    trunc = tmp_path / "trunc.svm"
    trunc.write_text("".join(f"1 1:0.5 2:{i}\n" for i in range(20)) + "1 1:0.5 2:")
    return good, bad, nan, trunc


BAD_CASES = [
    (["nosuch"], "unknown solver 'nosuch'"),
    (["prox_sgd", "--problem", "nosuch"], "unknown problem 'nosuch'"),
    (["prox_sgd", "--set", "solver.nope=1"], "unknown key 'solver.nope'"),
    (["prox_sgd", "--set", "solver.max_iter=ten"], "solver.max_iter: expected an integer"),
    (["prox_sgd", "--set", "solver.step0=-1"], "solver.step0: must be > 0.0"),
    (["prox_sgd", "--set", "problem.path=/no/such/file.svm"], "/no/such/file.svm: file not found"),
    (["prox_sgd", "--set", "problem.path={bad}"], "bad.svm:23: malformed svmlight line"),
    (["prox_sgd", "--set", "problem.path={nan}"], "nan.svm:4: NaN or Inf"),
    (["prox_sgd", "--set", "problem.path={trunc}"], "trunc.svm:21: malformed"),
    (["prox_sgd", "--resume", "latest"], "--resume latest needs --checkpoint-dir"),
    (["prox_sgd", "--config", "/no/such.toml"], "config file /no/such.toml: not found"),
    (["prox_sgd", "--checkpoint-every", "soon"], "run.checkpoint_every"),
    (["prox_sgd", "--set", "problem.reg=group_lasso", "problem.l2=0.1"], "problem.l2: not supported with problem.reg=group_lasso"),
    (["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", "problem.bad_input_rank=2"], "faulty.dat:5: bad value"),
]


@pytest.mark.parametrize("args,message", BAD_CASES, ids=[c[1][:30] for c in BAD_CASES])
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    good, bad, nan, trunc = _svm_files(tmp_path)
    args = [a.format(bad=bad, nan=nan, trunc=trunc) for a in args]
    out = tmp_path / "precious.h5"
    out.write_bytes(b"results of an earlier run")
    p = run_mpi([*args, "--out", str(out)], n=3, cwd=tmp_path, timeout=120)
    assert p.returncode == 2, p.output
    errors = [line for line in p.stderr.splitlines() if line.startswith("mpiopt: error:")]
    assert len(errors) == 1, p.stderr
    assert message in errors[0], errors[0]
    assert out.read_bytes() == b"results of an earlier run", "bad input must not touch existing results"


def test_svmlight_file_runs_sharded(tmp_path):
    good, *_ = _svm_files(tmp_path)
    p = run_mpi(["prox_sgd", "--problem", "logistic", "--set", f"problem.path={good}", "solver.max_iter=20",
                 "--out", "g.h5"], n=3, cwd=tmp_path)
    assert p.returncode == 0, p.output
    r = load_result(str(tmp_path / "g.h5"))
    assert r.solution["x"].shape == (3,) and "40 samples x 3 features" in p.stdout


def test_checkpoint_of_another_run_is_refused(tmp_path):
    ck = tmp_path / "ck"
    p = run_mpi(["prox_sgd", "--problem", "lasso", "--set", "solver.max_iter=20", "--checkpoint-dir", ck,
                 "--checkpoint-every", "10"], n=2, cwd=tmp_path)
    assert p.returncode == 0, p.output
    p = run_mpi(["prox_sgd", "--problem", "logistic", "--checkpoint-dir", ck, "--resume", "latest"], n=2, cwd=tmp_path)
    assert p.returncode == 2 and "from problem 'lasso', not 'logistic'" in p.stderr
    p = run_mpi(["prox_sgd", "--problem", "lasso", "--set", "problem.l1=0.5", "--checkpoint-dir", ck,
                 "--resume", "latest"], n=2, cwd=tmp_path)
    assert p.returncode == 2 and "problem.l1" in p.stderr


@pytest.mark.parametrize("n", [4, 40])
def test_exception_on_one_rank_aborts_job(tmp_path, n):
    t = time.time()
    p = run_mpi(["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", f"problem.fail_rank={n - 1}",
                 "problem.fail_at=5", "solver.max_iter=100000"], n=n, cwd=tmp_path, timeout=240)
    assert p.returncode not in (0, 2), p.output
    assert f"rank {n - 1}: RuntimeError: injected failure at call 5" in p.stderr
    assert time.time() - t < 200


def test_verbose_prints_traceback(tmp_path):
    p = run_mpi(["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", "problem.fail_rank=1",
                 "problem.fail_at=3", "-v"], n=2, cwd=tmp_path)
    assert p.returncode == 1 and "Traceback" in p.stderr and "rank 1: RuntimeError" in p.stderr


def _lasso_args(out, *extra):
    return ["prox_sgd", "--problem", "lasso", "--set", "solver.max_iter=400", "problem.n_samples=4000",
            "problem.n_features=50", "--out", out, *extra]


def test_resume_is_bit_identical(tmp_path):
    p = run_mpi(_lasso_args("full.h5"), n=3, cwd=tmp_path)
    assert p.returncode == 0, p.output
    p = run_mpi(_lasso_args("part.h5", "--checkpoint-dir", "ck", "--checkpoint-every", "100"), n=3, cwd=tmp_path)
    assert p.returncode == 0, p.output
    assert sorted(os.listdir(tmp_path / "ck")) == ["ckpt-000000200.h5", "ckpt-000000300.h5", "ckpt-000000400.h5", "latest"]
    p = run_mpi(_lasso_args("resumed.h5", "--checkpoint-dir", "ck", "--resume", str(tmp_path / "ck" / "ckpt-000000200.h5")),
                n=3, cwd=tmp_path)
    assert p.returncode == 0, p.output
    assert "resumed from" in p.stdout
    full, res = load_result(str(tmp_path / "full.h5")), load_result(str(tmp_path / "resumed.h5"))
    assert np.array_equal(full.solution["x"], res.solution["x"])
    for k in ("iteration", "objective", "bytes_sent"):
        assert np.array_equal(full.history[k], res.history[k]), k


def test_sigterm_checkpoints_then_resume_latest_finishes(tmp_path):
    args = ["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", "problem.slow=0.01",
            "solver.max_iter=100000", "--checkpoint-dir", "ck", "--checkpoint-every", "2s", "--out", "run.h5"]
    # signal once a periodic checkpoint exists: the run is past start-up and its handlers are installed
    p = run_mpi(args, n=2, cwd=tmp_path, sig=signal.SIGTERM, timeout=120,
                signal_when=lambda: (tmp_path / "ck" / "latest").exists())
    assert p.returncode != 0, p.output
    assert "interrupted" in p.stdout, p.output
    latest = (tmp_path / "ck" / "latest").read_text().strip()
    it = int(latest[5:14])
    assert it > 0
    ckpts = sorted(f for f in os.listdir(tmp_path / "ck") if f.startswith("ckpt-"))
    assert len(ckpts) >= 2 and ckpts[-1] == latest, ckpts  # periodic (every 2 s) + the final one
    r = load_result(str(tmp_path / "run.h5"))
    assert r.attrs["status"] == "interrupted" and r.history["iteration"][-1] <= it
    args2 = [a if a != "solver.max_iter=100000" else f"solver.max_iter={it + 20}" for a in args]
    p = run_mpi([*args2, "--resume", "latest"], n=2, cwd=tmp_path)
    assert p.returncode == 0, p.output
    assert f"at iteration {it}" in p.stdout
    r = load_result(str(tmp_path / "run.h5"))
    assert r.attrs["nit"] == it + 20 and r.history["iteration"][0] == 0


def test_forty_ranks_oversubscribed(tmp_path):
    p = run_mpi(["prox_sgd", "--problem", "lasso", "--set", "solver.max_iter=50", "problem.n_samples=4000",
                 "--out", "forty.h5"], n=40, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.output
    assert load_result(str(tmp_path / "forty.h5")).attrs["n_ranks"] == 40
