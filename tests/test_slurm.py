"""The batch scripts of ``jobs/`` on a real single-node Slurm (started by ``tests/slurm.py``; the packages
come from ``.ci/setup-system.sh``).

Needs root (to run the daemons) and the Debian slurmctld/slurmd/slurm-client/munge packages; skips with
the reason otherwise, fails under ``CI``. The daemons are started once for this module and stopped by pid in the fixture teardown.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_mpi
from mpiopt.io import load_result

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(400)]

SMALL = "--set solver.max_iter=300 problem.n_samples=2000 problem.n_features=20 run.progress=none"


@pytest.fixture(scope="module")
def slurm():
    # CI runs as root on a machine that reaches Debian's packages: there the Slurm tests must run, and
    # any reason they cannot is a failure. Only a developer's non-root or offline machine skips them.
    import slurm as S
    yield from S.running_cluster("the Slurm tests start slurmctld/slurmd/munge, which needs root",
                                 cpus=16)


def job_env(tmp: Path, **extra: str) -> dict:
    env = {"MPIOPT_RESULTS": str(tmp / "results"), "MPIOPT_SCRATCH": str(tmp / "scratch"),
           "MPIOPT_PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    env.update(extra)
    return env


def job_output(tmp: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')}" for p in sorted(tmp.glob("*.out")))


def assert_completed(recs: list[dict], tmp: Path) -> None:
    states = [r["JobState"] for r in recs]
    assert all(s == "COMPLETED" for s in states), f"states {states}\n{job_output(tmp)}"
    assert all(r["ExitCode"] == "0:0" for r in recs), [r["ExitCode"] for r in recs]


def test_single_job_completes_with_srun(slurm, tmp_path):
    job = slurm.sbatch(ROOT / "jobs" / "prox_sgd.sbatch", env=job_env(
        tmp_path, MPIOPT_VARIANT=f"2 prox_sgd logistic {SMALL}"), cwd=tmp_path)
    recs = slurm.wait(job, timeout=120)
    assert_completed(recs, tmp_path)
    assert recs[0]["JobName"] == "mpiopt-prox_sgd"
    out = tmp_path / f"mpiopt-prox_sgd-{job}.out"  # --output=%x-%j.out in the submit dir
    assert out.exists(), sorted(p.name for p in tmp_path.iterdir())
    assert "srun --mpi=pmi2" in out.read_text()
    res = load_result(str(tmp_path / "results" / f"prox_sgd-logistic-n2-{job}.h5"))
    assert res["status"] == "max_iter" and res["nit"] == 300 and res["n_ranks"] == 2
    assert res.config["run"]["checkpoint_dir"] == str(tmp_path / "scratch" / f"mpiopt-{job}" / "checkpoints")


def test_sweep_array_with_mpirun_in_allocation(slurm, tmp_path):
    variants = tmp_path / "variants.txt"
    variants.write_text("# ranks solver problem args\n"
                        f"1 prox_sgd lasso --seed 0 {SMALL}\n"
                        f"2 prox_sgd lasso --seed 1 {SMALL}\n")
    job = slurm.sbatch(ROOT / "jobs" / "sweep.sbatch", "--array=0-1", "--ntasks=2", env=job_env(
        tmp_path, MPIOPT_VARIANTS_FILE=str(variants), MPIOPT_LAUNCHER="mpirun"), cwd=tmp_path)
    recs = slurm.wait(job, timeout=150, n_tasks=2)
    assert_completed(recs, tmp_path)
    folder = tmp_path / "results" / f"mpiopt-sweep-{job}"
    names = sorted(p.name for p in folder.glob("*.h5"))
    assert names == [f"prox_sgd-lasso-n1-{job}_0.h5", f"prox_sgd-lasso-n2-{job}_1.h5"], names
    seeds = sorted(load_result(str(folder / n))["seed"] for n in names)
    assert seeds == [0, 1]
    assert (tmp_path / f"mpiopt-sweep-{job}_1.out").exists()
    # the report tool reads the whole sweep folder
    from mpiopt.report import main as report_main
    assert report_main([str(folder), "--out-dir", str(tmp_path / "report"), "--no-plots", "--quiet"]) == 0
    rows = (tmp_path / "report" / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and "prox_sgd" in rows[1] and "lasso" in rows[2]


def test_time_limit_warning_and_preemption_resume_from_checkpoints(slurm, tmp_path):
    """One job, stopped twice, finishing bit-identical to a run never stopped:
    1. the --signal=B:USR1@N time-limit warning (sent at once here with scancel): the script asks the
       run to checkpoint, then requeues its own job;
    2. preemption-like ``scontrol requeue``: Slurm sends SIGTERM, the run checkpoints, Slurm requeues.
    Each time the requeued job resumes from the latest checkpoint (--resume latest)."""
    # 2 ms per gradient call: about 6 s of work, so the signals always come before the end
    max_iter = 3000
    plugin = ROOT / "tests" / "plugins" / "faulty.py"
    args = (f"--plugin {plugin} --set solver.max_iter={max_iter} problem.slow=0.002 "
            "run.progress=none run.history_every=100")
    job = slurm.sbatch(ROOT / "jobs" / "prox_sgd.sbatch", env=job_env(
        tmp_path, MPIOPT_VARIANT=f"2 prox_sgd faulty {args}", MPIOPT_CHECKPOINT_EVERY="300"), cwd=tmp_path)
    ckdir = tmp_path / "scratch" / f"mpiopt-{job}" / "checkpoints"

    def wait_checkpoint_after(n_before: int) -> int:
        def more() -> bool:
            return len(list(ckdir.glob("ckpt-*.h5"))) > n_before or slurm.state(job) not in ("PENDING", "RUNNING")
        slurm.wait_for(more, 90, "a new checkpoint")
        assert slurm.state(job) == "RUNNING", f"job not running:\n{job_output(tmp_path)}"
        return len(list(ckdir.glob("ckpt-*.h5")))

    def latest_iteration() -> int:
        return max(int(p.stem.split("-")[1]) for p in ckdir.glob("ckpt-*.h5"))

    # 1. time-limit warning -> checkpoint, exit 143, self-requeue
    wait_checkpoint_after(0)
    slurm.scancel("--signal=USR1", "--batch", str(job))
    slurm.start_requeued_now(job, restarts=1)
    it1 = latest_iteration()
    assert 0 < it1 < max_iter
    log = job_output(tmp_path)
    assert "SIGUSR1" in log and "requeueing job" in log and "run exited with 143" in log, log
    # 2. preemption: scontrol requeue of the running job, after it wrote a checkpoint of its own
    slurm.wait_for(lambda: "restart 1" in job_output(tmp_path), 60, "the first restart")
    slurm.wait_for(lambda: latest_iteration() > it1 or slurm.state(job) != "RUNNING", 90, "a checkpoint after resume")
    slurm.scontrol("requeue", str(job))
    slurm.start_requeued_now(job, restarts=2)
    recs = slurm.wait(job, timeout=150)
    assert_completed(recs, tmp_path)
    assert int(recs[0]["Restarts"]) == 2, recs[0]
    log = job_output(tmp_path)
    assert "restart 2" in log and log.count("resumed from") == 2, log
    res = load_result(str(tmp_path / "results" / f"prox_sgd-faulty-n2-{job}.h5"))
    assert res["status"] == "max_iter" and res["nit"] == max_iter and "ckpt-" in res["resumed_from"]
    # the twice-resumed run is bit-identical to one that was never interrupted
    ref = tmp_path / "ref.h5"
    p = run_mpi(["prox_sgd", "--problem", "faulty", *args.split(), "--out", str(ref), "-q"], n=2, timeout=120)
    assert p.returncode == 0, p.output
    expect = load_result(str(ref))
    assert np.array_equal(res.solution["x"], expect.solution["x"])
    assert np.array_equal(res.history["iteration"], expect.history["iteration"])
    assert np.array_equal(res.history["objective"], expect.history["objective"])


def test_failing_run_is_failed_not_hanging(slurm, tmp_path):
    job = slurm.sbatch(ROOT / "jobs" / "prox_sgd.sbatch", env=job_env(
        tmp_path, MPIOPT_VARIANT="2 prox_sgd logistic --set problem.path=/nonexistent/data.svm"), cwd=tmp_path)
    recs = slurm.wait(job, timeout=90)
    assert recs[0]["JobState"] == "FAILED" and recs[0]["ExitCode"] == "2:0", recs[0]
    assert "/nonexistent/data.svm" in job_output(tmp_path)


OTHER_SOLVERS = ("signprox", "hamsi", "level_bundle", "async_subgradient")


def test_every_solver_script_runs_its_demo(slurm, tmp_path):
    """Each solver's script runs its demo for a few seconds under Slurm."""
    from mpiopt import registry
    registry.load_builtins()
    present = [s for s in OTHER_SOLVERS if s in registry.SOLVERS]
    assert present == list(OTHER_SOLVERS), f"missing solvers: {set(OTHER_SOLVERS) - set(present)}"
    jobs = {}
    for s in present:
        ranks = max(2, registry.SOLVERS[s].min_ranks)
        d = tmp_path / s
        d.mkdir()
        jobs[s] = (slurm.sbatch(ROOT / "jobs" / f"{s}.sbatch", f"--ntasks={ranks}", env=job_env(
            d, MPIOPT_VARIANT=f"{ranks} {s} - --max-time 3 --set run.progress=none"), cwd=d), d)
    files = []
    for s, (job, d) in jobs.items():
        recs = slurm.wait(job, timeout=240)
        assert_completed(recs, d)
        files.append(d / "results" / f"{s}-demo-n{max(2, registry.SOLVERS[s].min_ranks)}-{job}.h5")
        res = load_result(str(files[-1]))
        assert res["solver"] == s and res["status"] != "running"
    # the report tool reads these different histories side by side
    from mpiopt.report import Run, history_metrics, plot_runs, report
    rows, _, _ = report([str(f) for f in files], str(tmp_path / "report"), plots=False)
    assert [r["solver"] for r in rows] == present
    runs = [Run(load_result(str(f)), s) for f, s in zip(files, present)]
    figures = plot_runs(runs, str(tmp_path / "report"), metrics=history_metrics(runs)[:2], formats=("png",))
    assert figures and all(f.paths and any(sum(p["points"]) for p in f.panels) for f in figures)
