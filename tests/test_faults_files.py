"""File-safety faults: planted links, failed runs, shared folders and outputs, signals during the final
write, checkpoint digests, file modes, HDF5 links/external storage/virtual datasets, declared sizes.

Every case runs the real CLI under mpirun (or the report tool) and asserts the run's contract: the
exit code, one error line, no traceback, and the bytes of every file the user owns unchanged.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT, mpi_env, run_mpi  # noqa: E402
from test_faults import QUICK, assert_contract, error_lines, snapshot  # noqa: E402

FAILING = str(ROOT / "tests" / "plugins" / "failing.py")
CKPT = "ck/ckpt-000000020.h5"


def checkpoint_run(d: Path, extra: tuple = ()) -> Path:
    """A real checkpoint folder ``d/ck`` of a short run (ckpt-000000020.h5 is the newest)."""
    p = run_mpi(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--checkpoint-every", "5", "--out", "ck-run.h5",
                 *extra], n=1, timeout=180, cwd=d)
    assert p.returncode == 0, p.output
    (d / "ck-run.h5").unlink()
    return d / CKPT


def result_run(path: Path, cwd: Path | None = None) -> None:
    p = run_mpi(["prox_sgd", *QUICK, "--out", path], n=1, timeout=180, cwd=cwd)
    assert p.returncode == 0, p.output


def report_cli(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpiopt.report", *map(str, args)], capture_output=True,
                          text=True, timeout=180, cwd=cwd, env=mpi_env())


def recompute_digest(path: Path) -> None:
    """What a deliberate edit does: change the file, then recompute its (unkeyed) digest."""
    from mpiopt.io.checkpoint import content_digest
    with h5py.File(path, "r+") as f:
        f.attrs["digest"] = content_digest(f)


# -- 8. HDF5 external storage, external links, soft links, virtual datasets --------------------------------
def _ck_external_storage(d: Path) -> None:
    ck = checkpoint_run(d)
    (d / "secret.bin").write_bytes(np.arange(10, dtype=np.float64).tobytes())
    with h5py.File(ck, "r+") as f:
        n = f["state"]["x"].shape
        del f["state"]["x"]
        f["state"].create_dataset("x", shape=n, dtype="f8", external=[(str(d / "secret.bin"), 0, 80)])
    recompute_digest(ck)


def _ck_external_link(d: Path) -> None:
    ck = checkpoint_run(d)
    with h5py.File(d / "other.h5", "w") as f:
        f["x"] = np.zeros(10)
    with h5py.File(ck, "r+") as f:
        del f["state"]["x"]
        f["state"]["x"] = h5py.ExternalLink(str(d / "other.h5"), "/x")
    recompute_digest(ck)


def _ck_virtual(d: Path) -> None:
    ck = checkpoint_run(d)
    with h5py.File(d / "other.h5", "w") as f:
        f["x"] = np.zeros(10)
    with h5py.File(ck, "r+") as f:
        del f["state"]["x"]
        lay = h5py.VirtualLayout(shape=(10,), dtype="f8")
        lay[:] = h5py.VirtualSource(str(d / "other.h5"), "x", shape=(10,))
        f["state"].create_virtual_dataset("x", lay)
    recompute_digest(ck)


def _ck_soft_outside(d: Path) -> None:
    ck = checkpoint_run(d)
    with h5py.File(ck, "r+") as f:
        f["state"]["link"] = h5py.SoftLink("/no/such/object")   # the structure check comes before the digest


@pytest.mark.parametrize("setup,pattern", [
    (_ck_external_storage, r"ckpt-000000020\.h5: dataset /state/x uses external storage"),
    (_ck_external_link, r"ckpt-000000020\.h5: /state/x is an external link"),
    (_ck_virtual, r"ckpt-000000020\.h5: dataset /state/x is a virtual dataset"),
    (_ck_soft_outside, r"ckpt-000000020\.h5: soft link /state/link points to /no/such/object"),
], ids=["external_storage", "external_link", "virtual", "soft_outside"])
def test_checkpoint_pointing_at_other_files_is_refused(tmp_path, setup, pattern):
    setup(tmp_path)
    before = snapshot(tmp_path)
    p = run_mpi(["prox_sgd", *QUICK, "--resume", CKPT, "--out", "new.h5"], n=2, timeout=120, cwd=tmp_path)
    assert_contract(p, 2, pattern, before, snapshot(tmp_path))


def test_load_result_and_report_refuse_links_to_other_files(tmp_path):
    from mpiopt.errors import InputError
    from mpiopt.io import load_result
    result_run(tmp_path / "r.h5")
    with h5py.File(tmp_path / "victim.h5", "w") as f:
        f["x"] = np.arange(5.0)
    with h5py.File(tmp_path / "r.h5", "r+") as f:
        f["solution"]["leak"] = h5py.ExternalLink(str(tmp_path / "victim.h5"), "/x")
    with pytest.raises(InputError, match=r"r\.h5: /solution/leak is an external link"):
        load_result(str(tmp_path / "r.h5"))
    before = snapshot(tmp_path)
    p = report_cli(tmp_path / "r.h5", "--no-plots", "-o", tmp_path / "rep")
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("mpiopt.report: error:")]
    assert p.returncode == 2 and len(lines) == 1 and "external link" in lines[0], p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("rep/")} == before


# -- 9. declared sizes against what the file can hold ---------------------------------------------------------
def test_report_refuses_a_huge_declared_dataset_before_allocating(tmp_path):
    result_run(tmp_path / "r.h5")
    with h5py.File(tmp_path / "r.h5", "r+") as f:
        del f["solution"]["x"]
        f["solution"].create_dataset("x", shape=(4_000_000_000,), dtype="f8")   # 29.8 GiB, never written
    assert os.path.getsize(tmp_path / "r.h5") < 10 ** 7
    p = report_cli(tmp_path / "r.h5", "--no-plots", "-o", tmp_path / "rep")
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("mpiopt.report: error:")]
    assert p.returncode == 2 and len(lines) == 1, p.stdout + p.stderr
    assert re.search(r"dataset /solution/x declares 4,000,000,000 elements \(29\.8 GiB\)", lines[0]), lines
    assert "Traceback" not in p.stderr and "MemoryError" not in p.stderr


def test_checkpoint_with_a_huge_declared_dataset_is_refused(tmp_path):
    ck = checkpoint_run(tmp_path)
    with h5py.File(ck, "r+") as f:
        del f["history"]["objective"]
        f["history"].create_dataset("objective", shape=(4_000_000_000,), dtype="f8")
    # the digest is left stale on purpose: the structure and size check comes before any read
    before = snapshot(tmp_path)
    p = run_mpi(["prox_sgd", *QUICK, "--resume", CKPT, "--out", "new.h5"], n=1, timeout=120, cwd=tmp_path)
    assert_contract(p, 2, r"dataset /history/objective declares 4,000,000,000 elements", before, snapshot(tmp_path))
