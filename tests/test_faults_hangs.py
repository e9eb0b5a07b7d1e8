"""The hang and signal guarantees (README "No hang"): the watchdog counts only the time a rank ran
(a suspended job survives its resume), set-up has its own limit, a real hang still ends the job
with exit 1 under every solver, and a repeated SIGTERM/SIGINT never skips the orderly stop.

Real ranks under MPICH's mpirun; ranks are stopped and resumed with SIGSTOP/SIGCONT as a batch
system's suspend does. Time bounds are generous (a loaded 2-core machine) but bounds.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT, find_mpirun, mpi_env  # noqa: E402

pytestmark = pytest.mark.timeout(300)

FAULTY = str(ROOT / "tests" / "plugins" / "faulty.py")
BUNDLE = ["level_bundle", "--problem", "polyhedral", "--set", "problem.n=12", "problem.m=6", "problem.rows=20",
          "problem.delay_mean=0.02", "solver.rtol=0", "run.progress=none"]


class Job:
    """``mpirun -n N python -m mpiopt.run ARGS`` in its own session, its output collected."""

    def __init__(self, args: list, n: int, cwd: Path, env: dict | None = None):
        self.cmd = [find_mpirun(), "-n", str(n), sys.executable, "-m", "mpiopt.run", *map(str, args)]
        self.n, self.cwd = n, cwd
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(self.cmd, cwd=cwd, env=mpi_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True)
        self.out = self.err = ""

    def ranks(self) -> dict[int, int]:
        """{rank: pid} of the job's ranks (descendants of mpirun that carry a PMI rank)."""
        found, todo = {}, [self.p.pid]
        while todo:
            pid = todo.pop()
            try:
                kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                kids = []
            todo += kids
            for k in kids:
                try:
                    env = Path(f"/proc/{k}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                for e in env:
                    if e.startswith((b"PMI_RANK=", b"OMPI_COMM_WORLD_RANK=")):
                        found[int(e.split(b"=", 1)[1])] = k
        return found

    def all_ranks(self, timeout: float = 60) -> dict[int, int]:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            r = self.ranks()
            if len(r) == self.n:
                return r
            time.sleep(0.1)
        raise AssertionError(f"ranks not found: {r}")

    def wait_for(self, pred, timeout: float = 120) -> None:
        t_end = time.monotonic() + timeout
        while not pred():
            assert self.p.poll() is None, f"the job ended early ({self.p.returncode}):\n{self.finish(10)}"
            assert time.monotonic() < t_end, "timed out waiting"
            time.sleep(0.1)

    def signal(self, sig: int, pids) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def finish(self, timeout: float = 150) -> str:
        try:
            self.out, self.err = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            for pid in self.ranks().values():
                os.kill(pid, signal.SIGKILL)
            self.out, self.err = self.p.communicate()
            raise AssertionError(f"the job did not end within {timeout} s:\n{self.out[-2000:]}\n{self.err[-2000:]}")
        self.wall = time.monotonic() - self.t0
        return self.out + self.err


def checkpointed(folder: Path):
    return lambda: folder.is_dir() and any(p.name.startswith("ckpt-") for p in folder.iterdir())


def iterating(part: Path, rows: int = 3):
    """The run is past set-up: its live result file (SWMR ``OUT.part``) holds ``rows`` history rows."""
    def pred() -> bool:
        try:
            with h5py.File(part, "r", libver="latest", swmr=True) as f:
                h = f.get("history")
                return h is not None and any(len(h[k]) >= rows for k in h if isinstance(h[k], h5py.Dataset))
        except (OSError, KeyError, ValueError):
            return False
    return pred


def gone(pid: int, timeout: float = 20) -> bool:
    """Whether process ``pid`` has ended (or is a zombie) within ``timeout`` seconds."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def status_of(path: Path) -> tuple[str, int]:
    with h5py.File(path, "r") as f:
        return str(f.attrs["status"]), int(f.attrs["nit"])


# -- false positives: a suspended job, a stopped oracle, a long set-up ------------------------------
def test_suspend_and_resume_of_the_whole_job_survives(tmp_path):
    """Every rank stopped (SIGSTOP, as a suspended Slurm job) for 4x run.hang_timeout, then resumed:
    the watchdog does not count the stop and the run finishes."""
    job = Job(["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", "problem.slow=0.01",
               "solver.max_iter=300", "run.hang_timeout=2", "run.progress=none", "--checkpoint-dir", "ck",
               "--checkpoint-every", "50", "--out", "r.h5"], 2, tmp_path)
    job.wait_for(checkpointed(tmp_path / "ck"))
    pids = job.all_ranks().values()
    job.signal(signal.SIGSTOP, pids)
    time.sleep(8)
    job.signal(signal.SIGCONT, pids)
    out = job.finish()
    assert job.p.returncode == 0, out[-3000:]
    assert "no progress" not in out
    assert status_of(tmp_path / "r.h5") == ("max_iter", 300)


def test_stopped_oracle_resumed_does_not_end_the_job(tmp_path):
    """An asynchronous bundle master goes on while one oracle is stopped for 3x run.hang_timeout; when
    the oracle resumes, the job goes on to the end (its stop is not idle time)."""
    job = Job([*BUNDLE, "solver.variant=upper_model", "solver.max_iter=300", "run.hang_timeout=3",
               "run.history_every=1", "--out", "b.h5"], 3, tmp_path)
    job.wait_for(iterating(tmp_path / "b.h5.part"))
    oracle = [job.all_ranks()[2]]
    job.signal(signal.SIGSTOP, oracle)
    time.sleep(9)
    job.signal(signal.SIGCONT, oracle)
    out = job.finish()
    assert job.p.returncode == 0, out[-3000:]
    assert "no progress" not in out
    assert status_of(tmp_path / "b.h5")[0] == "max_iter"


def test_setup_longer_than_hang_timeout_survives(tmp_path):
    """A plug-in set-up busy for 3x run.hang_timeout on one rank (the other waits in a collective):
    set-up has its own limit, run.setup_timeout."""
    job = Job(["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", "problem.setup_rank=1",
               "problem.setup_seconds=6", "solver.max_iter=20", "run.hang_timeout=2", "run.progress=none",
               "--out", "r.h5"], 2, tmp_path)
    out = job.finish()
    assert job.p.returncode == 0, out[-3000:]
    assert status_of(tmp_path / "r.h5") == ("max_iter", 20)


def test_cold_numba_compile_longer_than_hang_timeout_survives(tmp_path):
    """An empty numba cache: set-up compiles the kernels (longer than run.hang_timeout=1 here)."""
    # hamsi: its many MF kernels take seconds to compile cold on any machine (prox_sgd's took 0.9 s on an
    # idle one, too short to prove anything)
    job = Job(["hamsi", "--problem", "synthetic_mf", "--set", "problem.n_ratings=2000", "solver.max_epochs=3",
               "run.hang_timeout=1", "run.progress=none", "--out", "r.h5"], 2, tmp_path,
              env={"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")})
    out = job.finish()
    assert job.p.returncode == 0, out[-3000:]
    with h5py.File(tmp_path / "r.h5", "r") as f:
        setup = float(f.attrs["setup_time"])
    assert setup > 1.0, f"set-up took {setup:.2f} s: the case did not exceed run.hang_timeout"


def test_setup_timeout_ends_a_stuck_setup(tmp_path):
    """A set-up stuck longer than run.setup_timeout still ends the job (exit 1, one line)."""
    job = Job(["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", "problem.setup_rank=1",
               "problem.setup_seconds=100", "run.hang_timeout=1", "run.setup_timeout=3", "run.progress=none",
               "--out", "r.h5"], 2, tmp_path)
    out = job.finish(timeout=90)
    assert job.p.returncode == 1, out[-3000:]
    assert "during set-up" in out and "run.setup_timeout=3" in out and "Traceback" not in out
    assert not (tmp_path / "r.h5").exists()


# -- a real hang: exit 1 under every solver ----------------------------------------------------------
HANGS = {
    # a plug-in loop on rank 1
    "prox_sgd": (["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", "problem.fail_rank=1",
                  "problem.hang_at=5", "run.progress=none"], 2, None),
    # an oracle stopped for good: the synchronous master waits for it
    "level_bundle": ([*BUNDLE, "solver.variant=sync", "solver.max_iter=100000"], 3, 2),
    # a worker of the locked shared model stopped for good
    "async_subgradient_assm": (["async_subgradient", "--set", "solver.method=assm", "solver.max_epochs=1000",
                                "solver.target_accuracy=0", "run.progress=none"], 3, 2),
}


@pytest.mark.parametrize("case", sorted(HANGS))
def test_real_hang_ends_the_job_with_exit_1(tmp_path, case):
    args, n, stop_rank = HANGS[case]
    job = Job([*args, "run.hang_timeout=3", "--checkpoint-dir", "ck", "--checkpoint-every", "5",
               "--out", "r.h5"], n, tmp_path)
    stopped = []
    if stop_rank is not None:
        job.wait_for(checkpointed(tmp_path / "ck"))
        stopped = [job.all_ranks()[stop_rank]]
        job.signal(signal.SIGSTOP, stopped)
    t_hang = time.monotonic()
    try:
        out = job.finish(timeout=120)
    finally:
        job.signal(signal.SIGCONT, stopped)
    assert job.p.returncode == 1, f"exit {job.p.returncode}:\n{out[-3000:]}"
    assert "no progress for" in out and "run.hang_timeout=3" in out and "Traceback" not in out, out[-3000:]
    assert time.monotonic() - t_hang < 100
    for pid in stopped:                      # the stopped rank was ended with the job (SIGKILL reaches it)
        assert gone(pid), f"rank pid {pid} outlived its job"


def test_ranks_end_themselves_when_the_launcher_does_not_answer(tmp_path):
    """mpirun and its proxy frozen (SIGSTOP: as unreachable as the launcher of a node cut off from the
    network): when the watchdog fires, no MPI_Abort is answered and nobody reads the message, yet
    every rank exits by itself (bounded waits for both), exit 1."""
    marker = tmp_path / "stuck"
    job = Job(["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", "problem.fail_rank=1",
               "problem.hang_at=5", f"problem.hang_marker={marker}", "run.hang_timeout=3", "run.progress=none",
               "--out", "r.h5"], 2, tmp_path)
    job.wait_for(marker.exists)
    ranks = job.all_ranks()
    launcher = [job.p.pid, *(int(k) for k in Path(f"/proc/{job.p.pid}/task/{job.p.pid}/children").read_text().split())]
    job.signal(signal.SIGSTOP, launcher)
    try:
        left = [r for r, pid in ranks.items() if not gone(pid, timeout=90)]
    finally:
        job.signal(signal.SIGCONT, launcher)
    out = job.finish(timeout=60)
    assert not left, f"ranks {left} did not end by themselves"
    assert job.p.returncode == 1, out[-3000:]


def test_watchdog_counts_only_running_time():
    """The tick accounting in-process: a gap far longer than the tick period (a stop) counts as one
    period; progress inside a gap restarts the count at no more than the gap's credit."""
    from mpiopt.stopping import SUSPEND_GAP, Watchdog
    w = Watchdog(rank=0, limit=5.0, setup_limit=60.0)
    assert w.period == 0.5 and w.max_gap == SUSPEND_GAP
    for k in range(8):                          # 4 s of normal ticks, no progress
        w.tick(now=0.5 * (k + 1), gap=0.5, stamp=0.0, seen=0.0)
    assert w.idle == pytest.approx(4.0) and w.expired() is None
    w.tick(now=1004.0, gap=1000.0, stamp=0.0, seen=0.0)   # stopped for 1000 s: one period
    assert w.idle == pytest.approx(4.5) and w.expired() is None
    w.tick(now=2004.0, gap=1000.0, stamp=5.0, seen=0.0)   # progress just before a long stop
    assert w.idle == pytest.approx(0.5)
    assert w.expired() is None                  # set-up: its own limit
    w.idle = 10.0
    assert w.expired() is None
    w.begin_solve()
    w.idle = 10.0
    assert "run.hang_timeout=5" in w.expired()
    w.idle, w.solving = 61.0, False
    assert "during set-up" in w.expired() and "run.setup_timeout=60" in w.expired()


# -- repeated signals ----------------------------------------------------------------------------------
# MPICH's mpirun forwards every SIGTERM, but only the first SIGINT: a second Ctrl-C to mpirun itself
# makes it kill the job at once (its "force abort", exit 255), so SIGINT repeats go to the ranks
@pytest.mark.parametrize("sig,target", [(signal.SIGTERM, "mpirun"), (signal.SIGTERM, "ranks"),
                                        (signal.SIGINT, "ranks")], ids=["SIGTERM-mpirun", "SIGTERM-ranks",
                                                                        "SIGINT-ranks"])
def test_repeated_signal_does_not_skip_the_orderly_stop(tmp_path, sig, target):
    """The signal five times, 0.3 s apart (to mpirun, which forwards each, or to every rank as Slurm
    does): the repeats are ignored, the run checkpoints, writes its result and exits 128+N, with
    no traceback."""
    ck = tmp_path / "ck"
    job = Job(["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", "problem.slow=0.01",
               "solver.max_iter=100000", "run.progress=none", "--checkpoint-dir", ck, "--checkpoint-every", "50",
               "--out", "r.h5"], 2, tmp_path)
    job.wait_for(checkpointed(ck))
    pids = [job.p.pid] if target == "mpirun" else list(job.all_ranks().values())
    for _ in range(5):
        job.signal(sig, pids)
        time.sleep(0.3)
    out = job.finish(timeout=120)
    assert job.p.returncode == 128 + sig, f"exit {job.p.returncode}:\n{out[-3000:]}"
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    status, nit = status_of(tmp_path / "r.h5")
    assert status == "interrupted" and nit > 0
    assert (ck / "latest").read_text().strip() == f"ckpt-{nit:09d}.h5"


def test_signal_before_the_run_ends_at_once_with_one_line():
    """SIGTERM while the command line is still starting (before any run has handlers): one line, exit
    128+15, no traceback."""
    code = ("import os, signal, time; from mpiopt.comm.abort import abort_on_exception\n"
            "def start():\n    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(30)\n    return 0\n"
            "abort_on_exception(start)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=mpi_env())
    assert p.returncode == 128 + signal.SIGTERM, p.stderr
    assert p.stderr.strip().splitlines() == ["rank 0: stopped by signal 15 before the run started (nothing to checkpoint)"]
