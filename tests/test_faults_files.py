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

FAILING = str(ROOT / "tests" / "plugins" / "nan_numeric.py")
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


# -- 1. planted symbolic links are never written through or followed --------------------------------------
def _plant(d: Path, name: str) -> Path:
    victim = d / "victim.txt"
    victim.write_text("the user's file\n")
    (d / name).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(victim, d / name)
    return victim


@pytest.mark.parametrize("name", ["out.h5.part", "ck/latest", "ck/ckpt-000000010.h5", "ck/mpiopt.lock"])
def test_planted_symlink_is_replaced_not_written_through(tmp_path, name):
    victim = _plant(tmp_path, name)
    before = victim.read_bytes()
    p = run_mpi(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--checkpoint-every", "5", "--out", "out.h5"],
                n=2, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.output
    assert victim.read_bytes() == before
    out = tmp_path / "out.h5"
    assert out.is_file() and not out.is_symlink()
    assert not (tmp_path / "out.h5.part").exists() and not (tmp_path / "out.h5.part").is_symlink()
    assert not (tmp_path / "ck" / "latest").is_symlink()
    assert not [n for n in os.listdir(tmp_path / "ck") if n.startswith(".tmp") or n == "mpiopt.lock"]
    from mpiopt.io import load_result
    assert load_result(str(out)).attrs["status"] != "running"


def test_latest_symlink_is_not_followed_and_content_is_not_quoted(tmp_path):
    checkpoint_run(tmp_path)
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:SECRET-CONTENT:/root:/bin/bash\n")
    (tmp_path / "ck" / "latest").unlink()
    os.symlink(secret, tmp_path / "ck" / "latest")
    before = snapshot(tmp_path)
    p = run_mpi(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--resume", "latest"], n=2, timeout=120, cwd=tmp_path)
    assert_contract(p, 2, r"ck/latest is a symbolic link", before, snapshot(tmp_path))
    assert "SECRET" not in p.output and "root:x" not in p.output
    # a pointer that is a regular file with foreign content: named, its content never quoted
    (tmp_path / "ck" / "latest").unlink()
    (tmp_path / "ck" / "latest").write_text("root:x:0:0:SECRET-CONTENT\n")
    before = snapshot(tmp_path)
    p = run_mpi(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--resume", "latest"], n=2, timeout=120, cwd=tmp_path)
    assert_contract(p, 2, r"ck/latest names something that is not a checkpoint file", before, snapshot(tmp_path))
    assert "SECRET" not in p.output and "root:x" not in p.output


def test_checkpoint_reached_through_a_symlink_is_refused(tmp_path):
    ck = checkpoint_run(tmp_path)
    os.symlink(ck, tmp_path / "link.h5")
    before = snapshot(tmp_path)
    p = run_mpi(["prox_sgd", *QUICK, "--resume", "link.h5", "--out", "new.h5"], n=1, timeout=120, cwd=tmp_path)
    assert_contract(p, 2, r"--resume link\.h5: is a symbolic link", before, snapshot(tmp_path))
    # and through the latest pointer: a ckpt-*.h5 that is a link
    ck.rename(tmp_path / "elsewhere.h5")
    os.symlink(tmp_path / "elsewhere.h5", ck)
    before = snapshot(tmp_path)
    p = run_mpi(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--resume", "latest", "--out", "new.h5"], n=1,
                timeout=120, cwd=tmp_path)
    assert_contract(p, 2, r"ckpt-000000020\.h5: is a symbolic link", before, snapshot(tmp_path))


def test_live_part_is_readable_while_the_run_goes(tmp_path):
    """OUT.part (now created exclusively, with its owner record in the HDF5 user block) is read live."""
    from mpiopt.io import load_result
    args = ["prox_sgd", "--problem", "nan_loss", "--plugin", FAILING, "--set", "problem.nan_at=0",
            "problem.slow=0.05", "solver.max_iter=60", "run.history_every=1", "run.progress=none", "--out", "r.h5"]
    seen = {}

    def live() -> bool:
        if (tmp_path / "r.h5.part").exists():
            try:
                r = load_result(str(tmp_path / "r.h5"))
            except Exception:  # noqa: BLE001 - not yet in SWMR mode
                return False
            if len(r.history.get("iteration", ())) >= 3:
                seen["n"], seen["status"] = len(r.history["iteration"]), r.attrs["status"]
                return True
        return False
    p = run_mpi(args, n=2, timeout=120, cwd=tmp_path, signal_when=live, sig=signal.SIGTERM)
    assert seen and seen["status"] == "running", (seen, p.output)
    assert p.returncode == 143, p.output
    assert load_result(str(tmp_path / "r.h5")).attrs["status"] == "interrupted"


# -- 2. a run that ends failed never replaces the previous result ---------------------------------------------
@pytest.mark.parametrize("nan_at", [1, 8])
def test_failed_status_keeps_the_previous_result(tmp_path, nan_at):
    result_run(tmp_path / "r.h5")
    before = snapshot(tmp_path)
    p = run_mpi(["prox_sgd", "--problem", "nan_loss", "--plugin", FAILING, "--set", f"problem.nan_at={nan_at}",
                 "solver.max_iter=30", "run.history_every=1", "run.progress=none", "--checkpoint-dir", "ck2",
                 "--out", "r.h5"],
                n=2, timeout=120, cwd=tmp_path)
    out = p.output
    assert p.returncode == 1, out
    assert re.search(r"status: failed", out) and "Traceback" not in out, out
    assert snapshot(tmp_path) == before, "a failed run changed or left files"
    assert not (tmp_path / "r.h5.part").exists() and not (tmp_path / "ck2").exists()


# -- 3. one checkpoint folder, two runs ------------------------------------------------------------------------
def _slow(out: str, ck: str = "ck", iters: int = 80) -> list:
    return ["prox_sgd", "--problem", "nan_loss", "--plugin", FAILING, "--set", "problem.nan_at=0",
            "problem.slow=0.05", f"solver.max_iter={iters}", "run.progress=none", "--checkpoint-dir", ck,
            "--checkpoint-every", "10", "--out", out]


def _second_while_first_runs(tmp_path: Path, first: list, second: list, held: Path, env: dict | None = None):
    from conftest import find_mpirun
    cmd = [find_mpirun(), "-n", "2", sys.executable, "-m", "mpiopt.run", *map(str, first)]
    a = subprocess.Popen(cmd, cwd=tmp_path, env=mpi_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not held.exists() and time.monotonic() < deadline and a.poll() is None:
            time.sleep(0.1)
        assert held.exists(), "the first run never took its lock"
        b = run_mpi(second, n=2, timeout=120, cwd=tmp_path, env=env)
        out_a, err_a = a.communicate(timeout=120)
    except BaseException:
        os.killpg(a.pid, signal.SIGKILL)
        a.communicate()
        raise
    return a.returncode, out_a + err_a, b


def test_second_run_on_a_held_checkpoint_folder_is_refused(tmp_path):
    from mpiopt.io import load_result
    code_a, out_a, b = _second_while_first_runs(tmp_path, _slow("a.h5"), _slow("b.h5"), tmp_path / "ck" / "mpiopt.lock")
    lines = error_lines(b.output)
    assert b.returncode == 2 and len(lines) == 1 and "Traceback" not in b.output, b.output
    assert re.search(r"--checkpoint-dir ck: in use by another run \(pid \d+ on [^,]+, started ", lines[0]), lines
    assert not (tmp_path / "b.h5").exists() and not (tmp_path / "b.h5.part").exists()
    assert code_a == 0, out_a
    r = load_result(str(tmp_path / "a.h5"))
    assert (tmp_path / r.attrs["last_checkpoint"]).exists(), "the result names a checkpoint that does not exist"
    assert not (tmp_path / "ck" / "mpiopt.lock").exists(), "the lock was not released"


def test_stale_lock_of_a_dead_run_is_taken_over(tmp_path):
    import socket
    from mpiopt.io.lock import encode_record, owner_record
    (tmp_path / "ck").mkdir()
    rec = {**owner_record(), "pid": 999999, "host": socket.gethostname()}
    (tmp_path / "ck" / "mpiopt.lock").write_bytes(encode_record(rec))
    p = run_mpi(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--checkpoint-every", "5", "--out", "r.h5"],
                n=2, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.output
    assert re.search(r"took over ck/mpiopt\.lock from a run that is gone \(pid 999999", p.output), p.output
    assert not (tmp_path / "ck" / "mpiopt.lock").exists()


def test_lock_of_a_live_run_elsewhere_is_refused(tmp_path):
    from mpiopt.io.lock import encode_record, owner_record
    (tmp_path / "ck").mkdir()
    rec = {**owner_record(), "pid": 4242, "host": "node-elsewhere-17", "slurm_job_id": "98765"}
    (tmp_path / "ck" / "mpiopt.lock").write_bytes(encode_record(rec))
    before = snapshot(tmp_path)
    p = run_mpi(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--out", "r.h5"], n=2, timeout=120, cwd=tmp_path)
    assert_contract(p, 2, r"--checkpoint-dir ck: in use by another run \(pid 4242 on node-elsewhere-17, "
                          r"Slurm job 98765", before, snapshot(tmp_path))


def test_lock_is_released_after_failure_and_signal(tmp_path):
    p = run_mpi(["prox_sgd", "--problem", "nan_loss", "--plugin", FAILING, "--set", "problem.nan_at=12",
                 "solver.max_iter=30", "run.progress=none", "--checkpoint-dir", "ck", "--checkpoint-every", "5",
                 "--out", "r.h5"], n=2, timeout=120, cwd=tmp_path)
    assert p.returncode == 1, p.output
    assert not (tmp_path / "ck" / "mpiopt.lock").exists() and (tmp_path / "ck" / "latest").exists()
    p = run_mpi(_slow("r.h5"), n=2, timeout=120, cwd=tmp_path, sig=signal.SIGTERM,
                signal_when=lambda: (tmp_path / "r.h5.part").exists() and (tmp_path / "ck" / "mpiopt.lock").exists())
    assert p.returncode == 143, p.output
    assert not (tmp_path / "ck" / "mpiopt.lock").exists() and (tmp_path / "r.h5").exists()


# -- 4. one --out, two runs, HDF5's own locking switched off ---------------------------------------------------
@pytest.mark.parametrize("env", [{"HDF5_USE_FILE_LOCKING": "FALSE"}, {}], ids=["hdf5_locking_off", "hdf5_locking_on"])
def test_second_run_on_a_held_output_is_refused(tmp_path, env):
    from mpiopt.io import load_result
    code_a, out_a, b = _second_while_first_runs(tmp_path, _slow("out.h5", "ck1"), _slow("out.h5", "ck2"),
                                                tmp_path / "out.h5.part", env=env)
    lines = error_lines(b.output)
    assert b.returncode == 2 and len(lines) == 1 and "Traceback" not in b.output, b.output
    assert re.search(r"--out out\.h5: in use by another run \(pid \d+ on .*\); its lock is out\.h5\.part", lines[0]), lines
    assert "errno = 11" not in b.output
    assert code_a == 0, out_a
    r = load_result(str(tmp_path / "out.h5"))
    assert r.attrs["status"] != "running" and len(r.history["iteration"]) > 0


# -- 5. SIGTERM during the final result write -----------------------------------------------------------------
def test_sigterm_during_the_final_write_finishes_the_write(tmp_path):
    from mpiopt.io import load_result
    (tmp_path / "r.h5").write_bytes(b"previous result")
    p = run_mpi(["prox_sgd", *QUICK, "--plugin", ROOT / "tests" / "plugins" / "term_at_final_write.py",
                 "--out", "r.h5"], n=2, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.output        # the run had ended (max_iter): its exit code, not 143
    r = load_result(str(tmp_path / "r.h5"))
    assert r.attrs["status"] == "max_iter" and "x" in r.solution
    assert not (tmp_path / "r.h5.part").exists()


# -- 6. checkpoint digests: mandatory, optionally keyed -------------------------------------------------------
def _edit_state(ck: Path) -> None:
    with h5py.File(ck, "r+") as f:
        f["state"]["x"][0] = 123.0


def test_checkpoint_without_digest_is_refused(tmp_path):
    ck = checkpoint_run(tmp_path)
    with h5py.File(ck, "r+") as f:
        del f.attrs["digest"]
        f["state"]["x"][0] = 123.0
    before = snapshot(tmp_path)
    p = run_mpi(["prox_sgd", *QUICK, "--resume", CKPT, "--out", "new.h5"], n=1, timeout=120, cwd=tmp_path)
    assert_contract(p, 2, r"ckpt-000000020\.h5: checkpoint has no digest", before, snapshot(tmp_path))


def test_keyed_checkpoints_refuse_a_deliberate_edit(tmp_path):
    key = {"MPIOPT_CHECKPOINT_KEY": "s3cret-of-the-job"}
    p = run_mpi(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--checkpoint-every", "5", "--out", "a.h5"],
                n=1, timeout=180, cwd=tmp_path, env=key)
    assert p.returncode == 0, p.output
    ck = tmp_path / CKPT
    with h5py.File(ck, "r") as f:
        assert str(f.attrs["digest"]).startswith("hmac-sha256:")
    resume = ["prox_sgd", *QUICK, "--resume", CKPT, "--out", "new.h5"]
    # the right key resumes
    p = run_mpi(resume, n=1, timeout=120, cwd=tmp_path, env=key)
    assert p.returncode == 0, p.output
    (tmp_path / "new.h5").unlink()
    # no key: a signed checkpoint cannot be checked, so it is not loaded
    before = snapshot(tmp_path)
    p = run_mpi(resume, n=1, timeout=120, cwd=tmp_path, env={"MPIOPT_CHECKPOINT_KEY": ""})
    assert_contract(p, 2, r"checkpoint is signed \(HMAC-SHA256\); set MPIOPT_CHECKPOINT_KEY", before, snapshot(tmp_path))
    # an edit with the digest recomputed without the key (what anyone can do) is refused
    _edit_state(ck)
    recompute_digest(ck)
    before = snapshot(tmp_path)
    p = run_mpi(resume, n=1, timeout=120, cwd=tmp_path, env=key)
    assert_contract(p, 2, r"checkpoint is not signed, but MPIOPT_CHECKPOINT_KEY is set", before, snapshot(tmp_path))
    # signed with another key: refused
    from mpiopt.io.checkpoint import sign
    with h5py.File(ck, "r+") as f:
        f.attrs["digest"] = sign(f, b"another key")
    before = snapshot(tmp_path)
    p = run_mpi(resume, n=1, timeout=120, cwd=tmp_path, env=key)
    assert_contract(p, 2, r"checkpoint is corrupted \(does not match its signature", before, snapshot(tmp_path))
    assert "s3cret" not in p.output


# -- 7. one rule for file modes: the umask ---------------------------------------------------------------------
@pytest.mark.parametrize("mask,mode", [(0o027, 0o640), (0o002, 0o664)])
def test_results_and_checkpoints_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        p = run_mpi(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--checkpoint-every", "5", "--out", "r.h5"],
                    n=2, timeout=120, cwd=tmp_path)
    finally:
        os.umask(old)
    assert p.returncode == 0, p.output
    files = [tmp_path / "r.h5", *sorted((tmp_path / "ck").iterdir())]
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in files}
    assert set(modes.values()) == {oct(mode)}, modes


def test_out_onto_the_checkpoint_folders_lock_is_refused(tmp_path):
    before = snapshot(tmp_path)
    (tmp_path / "ck").mkdir()
    p = run_mpi(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--out", "ck/mpiopt.lock"], n=1, timeout=120,
                cwd=tmp_path)
    assert_contract(p, 2, r"would overwrite a checkpoint file", before, snapshot(tmp_path))


def test_report_replaces_planted_links_in_its_out_dir_never_writes_through(tmp_path):
    """The report tool's summary and plot files are written by rename: a link planted at one of their
    names is replaced, and the file it pointed at keeps its bytes."""
    from mpiopt.report import report
    out = tmp_path / "r.h5"
    p = run_mpi(["prox_sgd", *QUICK, "--out", out], n=1, timeout=180)
    assert p.returncode == 0, p.output
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    rep = tmp_path / "rep"
    rep.mkdir()
    for name in ("summary.csv", "summary.md", "objective.png"):
        (rep / name).symlink_to(victim)
    report([str(out)], out_dir=str(rep), metrics=["objective"], formats=["png"])
    assert victim.read_text() == "mine\n"
    for name in ("summary.csv", "summary.md"):
        assert not (rep / name).is_symlink() and (rep / name).stat().st_size > 0
    assert not any(p.is_symlink() for p in rep.iterdir())
