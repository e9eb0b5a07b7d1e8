"""The batch scripts of ``jobs/`` on a real multi-node Slurm: slurmctld plus one slurmd per emulated node
(``tests/slurm.py`` with ``nodes=4`` on ``mpiopt.testing.cluster``), so ``sbatch -N 2``/``-N 4`` jobs get
several nodes, ``srun`` places ranks on different hosts and MPI traffic crosses the emulated links.

Needs root (daemons, network namespaces) and the packages of ``.ci/setup-system.sh``; skips with the reason outside CI, fails under ``CI``.
The daemons and nodes are started once for the module and removed in the fixture's teardown.
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_mpi
from mpiopt.io import load_result

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]

SMALL = "--set solver.max_iter=200 problem.n_samples=2000 problem.n_features=20 run.progress=none"
FAULTY = ROOT / "tests" / "plugins" / "faulty.py"


@pytest.fixture(scope="module")
def slurm():
    import slurm as S
    from mpiopt.testing.cluster import unavailable_reason
    yield from S.running_cluster("the multi-node Slurm tests start Slurm daemons and create network namespaces, "
                                 "which needs root", unavailable_reason, start_timeout=90, cpus=2, nodes=4)


def job_env(tmp: Path, **extra: str) -> dict:
    """The job's environment; MPIOPT_PYTHON is a wrapper that logs each rank's host before the run."""
    wrapper = tmp / "python-on-node"
    wrapper.write_text(f"#!/bin/sh\necho \"$SLURM_JOB_ID $SLURM_STEP_ID $SLURM_PROCID $(hostname)\" >> {tmp}/ranks.log\n"
                       f"exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    env = {"MPIOPT_RESULTS": str(tmp / "results"), "MPIOPT_SCRATCH": str(tmp / "scratch"),
           "MPIOPT_PYTHON": str(wrapper), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    env.update(extra)
    return env


def job_output(tmp: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')}" for p in sorted(tmp.glob("*.out")))


def rank_hosts(tmp: Path, job: int) -> dict[int, str]:
    """Rank -> host of the job's last run step, from the wrapper's log."""
    rows = [line.split() for line in (tmp / "ranks.log").read_text().splitlines()]
    rows = [r for r in rows if len(r) == 4 and r[0] == str(job)]
    last = max(int(r[1]) for r in rows)
    return {int(r[2]): r[3] for r in rows if int(r[1]) == last}


def expand(slurm, nodelist: str) -> list[str]:
    return slurm.scontrol("show", "hostnames", nodelist).split()


def assert_completed(recs: list[dict], tmp: Path) -> None:
    states = [r["JobState"] for r in recs]
    assert all(s == "COMPLETED" for s in states), f"states {states}\n{job_output(tmp)}"
    assert all(r["ExitCode"] == "0:0" for r in recs), [r["ExitCode"] for r in recs]


def assert_across_nodes(slurm, rec: dict, tmp: Path, n_nodes: int) -> None:
    job = int(rec["JobId"])
    nodes = expand(slurm, rec["NodeList"])
    assert len(nodes) == n_nodes == int(rec["NumNodes"]), rec
    hosts = rank_hosts(tmp, job)
    assert sorted(set(hosts.values())) == sorted(nodes), (hosts, nodes)      # one rank per node
    log = (tmp / f"{rec['JobName']}-{job}.out").read_text()
    placed = re.findall(r"rank:host ((?:\d+:\S+ ?)+)", log)[-1].split()       # the script's placement line
    assert sorted(p.split(":", 1)[1] for p in placed) == sorted(hosts.values()), (placed, hosts)


SOLVERS = {"prox_sgd": 4, "signprox": 2, "hamsi": 2, "level_bundle": 2, "async_subgradient": 2}  # -> nodes


def test_every_solver_script_across_nodes(slurm, tmp_path):
    """Each solver's script with -N 2 or -N 4 (one rank per node) completes with its ranks on as many
    hosts, and the ranks' traffic crossed the emulated links."""
    before = slurm.net.counters()
    jobs = {}
    for s, n in SOLVERS.items():
        d = tmp_path / s
        d.mkdir()
        variant = f"{n} {s} logistic {SMALL}" if s == "prox_sgd" else f"{n} {s} - --max-time 3 --set run.progress=none"
        jobs[s] = (slurm.sbatch(ROOT / "jobs" / f"{s}.sbatch", f"--nodes={n}", "--ntasks-per-node=1",
                                f"--ntasks={n}", env=job_env(d, MPIOPT_VARIANT=variant), cwd=d), d, n)
    for s, (job, d, n) in jobs.items():
        recs = slurm.wait(job, timeout=300)
        assert_completed(recs, d)
        assert_across_nodes(slurm, recs[0], d, n)
        problem = "logistic" if s == "prox_sgd" else "demo"
        res = load_result(str(d / "results" / f"{s}-{problem}-n{n}-{job}.h5"))
        assert res["solver"] == s and res["n_ranks"] == n and res["status"] != "running"
    links = slurm.net.counters() - before
    assert all(b > 10_000 for b in links.up), links.as_dict()        # every node sent MPI traffic


def test_sweep_array_one_job_per_rank_count(slurm, tmp_path):
    """``bash jobs/sweep.sbatch --submit``: a 2-rank and a 4-rank array job, each task sized to its own
    variant, its ranks on 2 or 4 nodes, all results in one sweep folder."""
    variants = tmp_path / "variants.txt"
    variants.write_text("# ranks solver problem args\n"
                        f"2 prox_sgd lasso --seed 0 {SMALL}\n"
                        f"4 prox_sgd lasso --seed 1 {SMALL}\n"
                        f"2 signprox lasso --seed 2 {SMALL}\n")
    env = dict(slurm.env, **job_env(tmp_path, MPIOPT_VARIANTS_FILE=str(variants)))
    p = slurm._cmd(["bash", str(ROOT / "jobs" / "sweep.sbatch"), "--submit", "--ntasks-per-node=1"], env=env,
                   cwd=tmp_path)
    ids = [int(x) for x in re.findall(r"array job (\d+),", p.stdout)]
    assert len(ids) == 2, p.stdout + p.stderr
    sweep = ids[0]
    recs = {}
    for job, n_tasks in zip(ids, (2, 1)):
        for r in slurm.wait(job, timeout=240, n_tasks=n_tasks):
            recs[int(r["ArrayTaskId"])] = r
    assert sorted(recs) == [0, 1, 2]
    assert_completed(list(recs.values()), tmp_path)
    for task, ranks in ((0, 2), (1, 4), (2, 2)):
        r = recs[task]
        assert int(r["NumTasks"]) == ranks and int(r["NumNodes"]) == ranks, r   # not the largest size
        hosts = rank_hosts(tmp_path, int(r["JobId"]))
        assert len(set(hosts.values())) == ranks, hosts
    folder = tmp_path / "results" / f"mpiopt-sweep-{sweep}"
    names = sorted(p.name for p in folder.glob("*.h5"))
    assert names == sorted([f"prox_sgd-lasso-n2-{sweep}_0.h5", f"prox_sgd-lasso-n4-{ids[1]}_1.h5",
                            f"signprox-lasso-n2-{sweep}_2.h5"]), names


MAX_ITER = 2400
SLOW_ARGS = (f"--plugin {FAULTY} --set solver.max_iter={MAX_ITER} problem.slow=0.002 "
             "run.progress=none run.history_every=100")


def slow_job(slurm, tmp_path: Path, *place: str):
    """A 2-node prox_sgd run of about 5 s of work, checkpointing every 300 iterations."""
    tmp_path.mkdir(exist_ok=True)
    job = slurm.sbatch(ROOT / "jobs" / "prox_sgd.sbatch", "--nodes=2", "--ntasks-per-node=1", "--ntasks=2",
                       *place,
                       env=job_env(tmp_path, MPIOPT_VARIANT=f"2 prox_sgd faulty {SLOW_ARGS}",
                                   MPIOPT_CHECKPOINT_EVERY="300"), cwd=tmp_path)
    return job, tmp_path / "scratch" / f"mpiopt-{job}" / "checkpoints"


def latest_iteration(ckdir: Path) -> int:
    return max([int(p.stem.split("-")[1]) for p in ckdir.glob("ckpt-*.h5")] or [0])


def assert_bit_identical(tmp_path: Path, job: int, ref: Path) -> None:
    res = load_result(str(tmp_path / "results" / f"prox_sgd-faulty-n2-{job}.h5"))
    assert res["status"] == "max_iter" and res["nit"] == MAX_ITER and "ckpt-" in res["resumed_from"]
    expect = load_result(str(ref))
    assert np.array_equal(res.solution["x"], expect.solution["x"])
    assert np.array_equal(res.history["iteration"], expect.history["iteration"])
    assert np.array_equal(res.history["objective"], expect.history["objective"])


def test_interrupted_jobs_resume_across_nodes(slurm, tmp_path):
    """Two 2-node jobs at once, on disjoint nodes, each ending bit-identical to an uninterrupted run:

    A. stopped by the time-limit warning (USR1 to the batch shell, as ``--signal=B:USR1@N`` sends it;
       here through ``scancel --signal=USR1 --batch``): checkpoint, exit 143, the script requeues the
       job; then preempted with ``scontrol requeue`` (SIGTERM from Slurm): checkpoint, requeued by Slurm.
    B. one of its nodes fails as a whole (link down; its slurmd, step daemon and rank killed): Slurm
       marks the node DOWN, ends the run with NODE_FAIL and requeues the job (no hang); the requeued
       job starts on the nodes left and resumes from its checkpoint."""
    # A on the first two nodes; B on two nodes of its own (exclusive: none of A's), and it must be free to
    # restart on any nodes left (a --nodelist naming the failed node would keep it pending for ever)
    a, ck_a = slow_job(slurm, tmp_path / "a", f"--nodelist={','.join(slurm.nodes[:2])}")
    slurm.wait_for(lambda: slurm.state(a) == "RUNNING", 60, "job A to start")
    b, ck_b = slow_job(slurm, tmp_path / "b", "--exclusive")
    for job, ck, d in ((a, ck_a, tmp_path / "a"), (b, ck_b, tmp_path / "b")):
        slurm.wait_for(lambda: latest_iteration(ck) > 0 or slurm.state(job) not in ("PENDING", "RUNNING"), 120,
                       f"a first checkpoint of job {job}")
        assert slurm.state(job) == "RUNNING", job_output(d)

    # A: time-limit warning; at the same moment B's second node (not the batch script's) fails
    slurm.scancel("--signal=USR1", "--batch", str(a))
    victim = expand(slurm, slurm.jobs(b)[0]["NodeList"])[1]
    t0 = time.monotonic()
    slurm.kill_node(victim)
    slurm.start_requeued_now(a, restarts=1)
    it1 = latest_iteration(ck_a)
    assert 0 < it1 < MAX_ITER
    # A: preempted after a checkpoint of its second start
    slurm.wait_for(lambda: "restart 1" in job_output(tmp_path / "a"), 90, "the first restart of job A")
    slurm.wait_for(lambda: latest_iteration(ck_a) > it1 or slurm.state(a) != "RUNNING", 120,
                   "a checkpoint of job A after its resume")
    slurm.scontrol("requeue", str(a))
    slurm.start_requeued_now(a, restarts=2)

    def b_ended() -> bool:
        r = slurm.jobs(b)[0]
        return r["JobState"] != "RUNNING" or int(r.get("Restarts", 0)) >= 1
    slurm.wait_for(b_ended, 120, "job B to end after its node failed")
    rec = slurm.jobs(b)[0]
    print(f"node {victim} killed: job {rec['JobState']} {time.monotonic() - t0:.1f} s later, "
          f"restarts {rec.get('Restarts')}, node {slurm.node_state(victim)}")
    assert int(rec.get("Restarts", 0)) == 1, rec       # requeued by Slurm (NODE_FAIL), not FAILED
    assert slurm.node_state(victim).startswith("down"), slurm.node_state(victim)
    slurm.start_requeued_now(b, restarts=1, timeout=120)

    ref = tmp_path / "ref.h5"   # the same 2 ranks in one node's shared memory, never interrupted
    p = run_mpi(["prox_sgd", "--problem", "faulty", *SLOW_ARGS.split(), "--out", str(ref), "-q"], n=2, timeout=180)
    assert p.returncode == 0, p.output
    recs_b = slurm.wait(b, timeout=240)
    assert_completed(recs_b, tmp_path / "b")
    assert victim not in expand(slurm, recs_b[0]["NodeList"])
    assert "resumed from" in job_output(tmp_path / "b")
    assert_across_nodes(slurm, recs_b[0], tmp_path / "b", 2)
    assert_bit_identical(tmp_path / "b", b, ref)

    recs_a = slurm.wait(a, timeout=240)
    assert_completed(recs_a, tmp_path / "a")
    assert int(recs_a[0]["Restarts"]) == 2
    log = job_output(tmp_path / "a")
    assert "SIGUSR1" in log and "requeueing job" in log and log.count("resumed from") == 2, log
    assert_across_nodes(slurm, recs_a[0], tmp_path / "a", 2)
    assert_bit_identical(tmp_path / "a", a, ref)

    slurm.start_node(victim)                      # back in service (ReturnToService=2)
    assert slurm.node_state(victim).startswith("idle")
