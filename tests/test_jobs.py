"""``python -m mpiopt.jobs`` and the scripts of ``jobs/`` without Slurm (bash + mpirun).

The same scripts run on a real Slurm in ``test_slurm.py``; here they run as plain bash scripts
with ``MPIOPT_LAUNCHER=mpirun``, which needs no root.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import ROOT, mpi_env
from mpiopt.io import load_result
from mpiopt.jobs import EXAMPLES, example_script, main as jobs_main

JOBS = ROOT / "jobs"
SOLVER_SCRIPTS = ("prox_sgd", "signprox", "hamsi", "level_bundle", "async_subgradient")


def sbatch_lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^#SBATCH --([\w-]+)(?:=(.*))?$", line)
        if m:
            out[m.group(1)] = m.group(2) or ""
    return out


def test_checked_in_scripts_are_what_the_generator_writes():
    assert sorted(EXAMPLES) == sorted([f"{s}.sbatch" for s in SOLVER_SCRIPTS] + ["sweep.sbatch"])
    for name in EXAMPLES:
        text = (JOBS / name).read_text()
        assert text == example_script(name), f"jobs/{name} is stale: run python -m mpiopt.jobs --examples jobs"
        assert os.access(JOBS / name, os.X_OK)
        assert subprocess.run(["bash", "-n", str(JOBS / name)], capture_output=True).returncode == 0
        sb = sbatch_lines(text)
        for key in ("job-name", "ntasks", "time", "output", "requeue", "signal", "open-mode"):
            assert key in sb, (name, key)
        assert sb["signal"].startswith("B:USR1@") and sb["open-mode"] == "append"
        assert "--resume latest" in text and "mpirun -n" in text
        # the srun MPI plugin is a setting (pmi2 by default), no longer hard-coded
        assert 'srun --mpi="$SRUN_MPI"' in text and "SRUN_MPI=${MPIOPT_SRUN_MPI:-pmi2}" in text
        assert sb["mem-per-cpu"] == "2G" and "# module load" in text and "bin/activate" in text
    sweep = sbatch_lines((JOBS / "sweep.sbatch").read_text())
    assert sweep["array"] == "0-17" and sweep["ntasks"] == "8"  # 2 solvers x 3 seeds x ranks 2,4,8
    assert sweep["output"] == "%x-%A_%a.out"
    assert "--array" not in (JOBS / "prox_sgd.sbatch").read_text()


def test_generator_sweep_config_inlining_and_errors(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[solver]\nmax_iter = 50\n[problem]\nn_samples = 300\n')
    out = tmp_path / "job.sbatch"
    assert jobs_main(["prox_sgd", "--problem", "lasso", "--config", str(cfg), "--seeds", "0", "1", "--ranks", "1", "2", "--variant",
                      "--set solver.step0=0.1", "--variant", "--set solver.step0=0.2", "--time", "10",
                      "--partition", "short", "-o", str(out)]) == 0
    text = out.read_text()
    sb = sbatch_lines(text)
    assert sb["array"] == "0-7" and sb["ntasks"] == "2" and sb["partition"] == "short" and sb["time"] == "10"
    variants = re.findall(r"^  '(.*)'$", text, flags=re.M)
    assert len(variants) == 8 and variants[0] == "1 prox_sgd lasso --set solver.step0=0.1 --seed 0"
    assert variants[-1] == "2 prox_sgd lasso --set solver.step0=0.2 --seed 1"
    assert "max_iter = 50" in text and "--config \"$WORK/config.toml\"" in text  # the TOML is inlined
    assert " -o " not in text.splitlines()[2] and str(out) not in text  # the recorded command omits -o FILE
    named = tmp_path / "named.toml"  # solver and problem named in the file, as python -m mpiopt.run reads them
    named.write_text('[run]\nsolver = "prox_sgd"\nproblem = "lasso"\nmax_time = 60\n[solver]\nmax_iter = 7\n')
    assert jobs_main(["--config", str(named), "--ranks", "3", "-o", str(tmp_path / "n.sbatch")]) == 0
    assert re.findall(r"^  '(.*)'$", (tmp_path / "n.sbatch").read_text(), flags=re.M) == ["3 prox_sgd lasso"]
    capsys.readouterr()
    for argv, needle in [(["prox_sgd", "--set", "solver.max_iterz=3"], "no option 'max_iterz'"),
                         (["nosuch_solver", "--problem", "lasso"], None),
                         (["prox_sgd", "--time", "soon"], "--time 'soon'"),
                         (["prox_sgd", "--checkpoint-every", "often"], "run.checkpoint_every"),
                         (["prox_sgd", "--ranks", "0"], "--ranks"),
                         ([], "no solver")]:
        rc = jobs_main(argv)
        err = capsys.readouterr().err
        if argv[:1] == ["nosuch_solver"]:  # unknown here: written with a note (another installation may have it)
            assert rc == 0 and "not registered" in err
            continue
        assert rc == 2 and err.startswith("mpiopt.jobs: error:") and needle in err, (argv, err)


def run_script(script: Path, cwd: Path, env: dict, timeout: float = 120, usr1_when=None) -> subprocess.CompletedProcess:
    """``bash SCRIPT`` outside Slurm; optionally send SIGUSR1 to the script once ``usr1_when()`` holds."""
    p = subprocess.Popen(["bash", str(script)], cwd=cwd, env=mpi_env(env), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        if usr1_when is not None:
            t_end = time.monotonic() + timeout
            while not usr1_when() and p.poll() is None and time.monotonic() < t_end:
                time.sleep(0.1)
            if p.poll() is None:
                os.kill(p.pid, signal.SIGUSR1)
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError(f"script timed out\n{out}\n{err}") from None
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_script_outside_slurm_usr1_checkpoints_and_resumes(tmp_path):
    """The time-limit warning path without Slurm: SIGUSR1 -> the run checkpoints and exits 143
    (no requeue outside Slurm); the same tag then resumes and matches an uninterrupted run."""
    # 2 ms per gradient call: the run lasts about 3 s, so the signal always comes before its end
    plugin = Path(__file__).resolve().parent / "plugins" / "faulty.py"
    args = (f"--plugin {plugin} --set solver.max_iter=1500 problem.slow=0.002 run.progress=none "
            "run.history_every=200")
    env = {"MPIOPT_LAUNCHER": "mpirun", "MPIOPT_PYTHON": sys.executable, "MPIOPT_TAG": "t1",
           "MPIOPT_VARIANT": f"2 prox_sgd faulty {args}", "MPIOPT_CHECKPOINT_EVERY": "300",
           "MPIOPT_RESULTS": str(tmp_path / "res"), "MPIOPT_SCRATCH": str(tmp_path / "scr")}
    ckdir = tmp_path / "scr" / "mpiopt-t1" / "checkpoints"
    first = run_script(JOBS / "prox_sgd.sbatch", tmp_path, env, usr1_when=lambda: any(ckdir.glob("ckpt-*.h5")))
    assert first.returncode == 143, first.stdout + first.stderr
    assert "SIGUSR1" in first.stderr and "requeueing" not in first.stdout
    out = tmp_path / "res" / "prox_sgd-faulty-n2-t1.h5"
    assert load_result(str(out))["status"] == "interrupted"
    second = run_script(JOBS / "prox_sgd.sbatch", tmp_path, env)
    assert second.returncode == 0, second.stdout + second.stderr
    res = load_result(str(out))
    assert res["status"] == "max_iter" and res["nit"] == 1500 and "ckpt-" in res["resumed_from"]
    env_ref = dict(env, MPIOPT_TAG="ref")
    ref = run_script(JOBS / "prox_sgd.sbatch", tmp_path, env_ref)
    assert ref.returncode == 0, ref.stderr
    expect = load_result(str(tmp_path / "res" / "prox_sgd-faulty-n2-ref.h5"))
    assert np.array_equal(res.solution["x"], expect.solution["x"])


def test_sweep_script_runs_a_variant_from_a_file_and_rejects_bad_task(tmp_path):
    variants = tmp_path / "v.txt"
    variants.write_text("# comment\n\n1 prox_sgd lasso --seed 3 --set solver.max_iter=20 problem.n_samples=200 "
                        "run.progress=none\n")
    env = {"MPIOPT_LAUNCHER": "mpirun", "MPIOPT_PYTHON": sys.executable, "MPIOPT_TAG": "s",
           "MPIOPT_VARIANTS_FILE": str(variants), "MPIOPT_RESULTS": str(tmp_path / "res"),
           "MPIOPT_SCRATCH": str(tmp_path / "scr")}
    p = run_script(JOBS / "sweep.sbatch", tmp_path, env)
    assert p.returncode == 0, p.stdout + p.stderr
    res = load_result(str(tmp_path / "res" / "prox_sgd-lasso-n1-s.h5"))
    assert res["seed"] == 3 and res["n_ranks"] == 1
    p = run_script(JOBS / "sweep.sbatch", tmp_path, dict(env, SLURM_ARRAY_TASK_ID="5", SLURM_ARRAY_JOB_ID="9"))
    assert p.returncode == 2 and "array task 5 but only 1 variants" in p.stderr
    p = run_script(JOBS / "sweep.sbatch", tmp_path, dict(env, MPIOPT_LAUNCHER="aprun"))
    assert p.returncode == 2 and "expected srun or mpirun" in p.stderr


def test_run_that_fails_to_start_is_launched_again(tmp_path):
    """A launch that dies before the run wrote its result file (as MPI start-up failures do) is
    retried; a run that stops with bad input (exit 2) is not."""
    mark = tmp_path / "failed-once"
    wrapper = tmp_path / "py.sh"
    wrapper.write_text(f"#!/bin/bash\nif [ ! -e {mark} ]; then touch {mark}; echo 'MPI_Init failed' >&2; exit 15; fi\n"
                       f"exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    env = {"MPIOPT_LAUNCHER": "mpirun", "MPIOPT_PYTHON": str(wrapper), "MPIOPT_TAG": "r",
           "MPIOPT_VARIANT": "1 prox_sgd lasso --set solver.max_iter=10 problem.n_samples=100 run.progress=none",
           "MPIOPT_RESULTS": str(tmp_path / "res"), "MPIOPT_SCRATCH": str(tmp_path / "scr")}
    p = run_script(JOBS / "prox_sgd.sbatch", tmp_path, env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stderr.count("failed before it started (exit 15): launch 1 of 2 more") == 1, p.stderr
    assert load_result(str(tmp_path / "res" / "prox_sgd-lasso-n1-r.h5"))["status"] == "max_iter"
    p = run_script(JOBS / "prox_sgd.sbatch", tmp_path, dict(env, MPIOPT_VARIANT="1 prox_sgd lasso --set solver.x=1"))
    assert p.returncode == 2 and "failed before it started" not in p.stderr


def test_generator_environment_memory_plugin_and_quoted_arguments(tmp_path):
    out = tmp_path / "job.sbatch"
    assert jobs_main(["prox_sgd", "--problem", "lasso", "--ranks", "4", "--srun-mpi", "pmix", "--mem", "8G",
                      "--ntasks-per-node", "2", "--module", "python/3.11", "--module", "openmpi/4.1",
                      "--venv", "/opt/my venv", "--setup", "export UCX_TLS=tcp,self",
                      "--variant", "--set 'problem.path=/data/my file.svm'", "-o", str(out)]) == 0
    text = out.read_text()
    sb = sbatch_lines(text)
    assert sb["mem"] == "8G" and "mem-per-cpu" not in sb and sb["ntasks-per-node"] == "2"
    assert "SRUN_MPI=${MPIOPT_SRUN_MPI:-pmix}" in text
    assert "module load python/3.11\nmodule load openmpi/4.1\nsource '/opt/my venv/bin/activate'\n" in text
    assert "export UCX_TLS=tcp,self" in text
    assert text.index("module load") < text.index("set -uo pipefail")
    assert subprocess.run(["bash", "-n", str(out)], capture_output=True).returncode == 0
    assert jobs_main(["prox_sgd", "--mem-per-cpu", "lots"]) == 2
    assert jobs_main(["prox_sgd", "--mem-per-cpu", "none", "-o", str(out)]) == 0
    assert "mem" not in " ".join(sbatch_lines(out.read_text()))


def test_arguments_with_spaces_reach_the_run(tmp_path):
    """A value with spaces (a data path) goes through the variant line and the script intact."""
    data = tmp_path / "my data" / "tiny file.svm"
    data.parent.mkdir()
    rng = np.random.default_rng(0)
    data.write_text("".join(f"{1 if rng.random() < 0.5 else -1} 1:{rng.random():.3f} 3:{rng.random():.3f}\n"
                            for _ in range(60)))
    script = tmp_path / "job.sbatch"
    assert jobs_main(["prox_sgd", "--problem", "logistic", "--ranks", "2", "--set", f"problem.path={data}",
                      "solver.max_iter=5", "run.progress=none", "-o", str(script)]) == 0
    assert f"'problem.path={data}'" in script.read_text()
    env = {"MPIOPT_LAUNCHER": "mpirun", "MPIOPT_PYTHON": sys.executable, "MPIOPT_TAG": "sp",
           "MPIOPT_RESULTS": str(tmp_path / "res dir"), "MPIOPT_SCRATCH": str(tmp_path / "scr")}
    p = run_script(script, tmp_path, env)
    assert p.returncode == 0, p.stdout + p.stderr
    res = load_result(str(tmp_path / "res dir" / "prox_sgd-logistic-n2-sp.h5"))
    assert res.config["problem"]["path"] == str(data) and res["nit"] == 5
    assert re.search(r"rank:host 0:\S+ 1:\S+", p.stdout), p.stdout   # the placement line
    p = run_script(script, tmp_path, dict(env, MPIOPT_EXTRA_ARGS="--set 'problem.path=/x"))
    assert p.returncode == 2 and "unbalanced quotes" in p.stderr


def test_sweep_submit_mode_asks_each_rank_count_for_its_own_size(tmp_path):
    """``bash sweep.sbatch --submit``: one sbatch per rank count, each with only its tasks and ranks,
    all writing to the folder of the first array job (a stand-in sbatch records the calls)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "calls"
    (fake / "sbatch").write_text(f"#!/bin/bash\nn=$(( $(cat {log} 2>/dev/null | wc -l) + 500 ))\n"
                                 f"echo \"$* MPIOPT_SWEEP_ID=${{MPIOPT_SWEEP_ID:-}}\" >> {log}\necho \"$n;cluster\"\n")
    (fake / "sbatch").chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}"}
    p = subprocess.run(["bash", str(JOBS / "sweep.sbatch"), "--submit", "--partition=short"], env=mpi_env(env),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 3, calls
    assert calls[0].startswith("--parsable --array=0,1,2,9,10,11 --ntasks=2 --export=ALL --partition=short ")
    assert calls[1].startswith("--parsable --array=3,4,5,12,13,14 --ntasks=4 --export=ALL,MPIOPT_SWEEP_ID=500 ")
    assert calls[2].startswith("--parsable --array=6,7,8,15,16,17 --ntasks=8 --export=ALL,MPIOPT_SWEEP_ID=500 ")
    assert all(c.split()[-2].endswith("sweep.sbatch") for c in calls), calls
    assert "mpiopt sweep 500: array job 501, tasks 3,4,5,12,13,14: 4 ranks each" in p.stdout
