"""A non-editable install into a fresh virtual environment runs under mpirun from any folder."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, run_mpi
from mpiopt.io import load_result


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fresh_venv_install_runs_from_repo_root_and_elsewhere(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    # a copy of the checkout (without build artefacts) so the build does not touch the work tree
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "*.egg-info", "__pycache__", "build", "*.h5"))
    out = subprocess.run([py, "-m", "pip", "install", "--quiet", f"{src}[mpich]"], capture_output=True, text=True,
                         timeout=800)
    assert out.returncode == 0, out.stdout + out.stderr
    env = {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv), "PYTHONPATH": ""}
    where = subprocess.run([py, "-c", "import mpiopt; print(mpiopt.__file__)"], cwd=tmp_path, env={**os.environ, **env},
                           capture_output=True, text=True, timeout=60)
    assert str(venv) in where.stdout, where.stdout + where.stderr
    for cwd in (src, tmp_path / "elsewhere"):
        cwd.mkdir(exist_ok=True)
        p = run_mpi(["--set", "solver.max_iter=30", "-q"], n=4, cwd=cwd, env=env, python=py, timeout=300)
        assert p.returncode == 0, p.output
        r = load_result(str(cwd / "mpiopt-demo.h5"))
        assert r.attrs["n_ranks"] == 4 and r.attrs["status"] == "max_iter"
    # a plain install (no extras) runs every solver that does not need torch, and the report tool;
    # a torch solver without torch is one line naming the extra, exit 2, before any work
    work = tmp_path / "elsewhere"
    has_torch = subprocess.run([py, "-c", "import torch"], capture_output=True, timeout=120).returncode == 0
    assert not has_torch, "the plain install pulled in torch"
    p = run_mpi(["async_subgradient", "-q"], n=2, cwd=work, env=env, python=py, timeout=300)
    assert p.returncode == 2, p.output
    assert "needs the Python package 'torch'" in p.output and "pip install 'mpiopt[torch]'" in p.output, p.output
    assert "Traceback" not in p.output and not (work / "async_subgradient-digits.h5").exists()
    p = run_mpi(["level_bundle", "--set", "problem.n=10", "problem.m=3", "solver.rtol=1e-4", "-q",
                 "--out", "lb.h5"], n=2, cwd=work, env=env, python=py, timeout=300)
    assert p.returncode == 0, p.output
    for script, args in (("mpiopt-report", ["lb.h5", "mpiopt-demo.h5", "--out-dir", "rep"]),
                         ("mpiopt-jobs", ["--help"]), ("mpiopt-run", ["--version"])):
        cp = subprocess.run([str(venv / "bin" / script), *args], cwd=work, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=300)
        assert cp.returncode == 0, f"{script}: {cp.stdout}{cp.stderr}"
    assert list((work / "rep").glob("*.png")), "the report tool drew no plot"
