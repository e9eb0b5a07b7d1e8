"""The bad-input and fault battery: every case asserts the run's contract.

- the exit code (2 bad usage/config/input, 1 other failure, 128+N after signal N);
- one line naming what is wrong (``mpiopt: error: ...`` once, or ``rank R: ...`` from the failing ranks);
- no traceback without ``-v``;
- nothing the user owns is changed (every file in the case's folder keeps its bytes; no file appears
  where a run failed before writing anything; an aborted job may leave only its live ``OUT.part``);
- no hang (every case has a time limit and ends by itself well inside it).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ROOT, find_mpirun, mpi_env, run_mpi  # noqa: E402

FAULTY = str(ROOT / "tests" / "plugins" / "faulty.py")
QUICK = ["--set", "solver.max_iter=20", "problem.n_samples=200", "problem.n_features=10", "run.progress=none"]


# -- helpers --------------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (caches left out)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("mpiopt: error:") or re.match(r"rank \d+: ", ln)]


def assert_contract(p, code: int, pattern: str, before: dict, after: dict, allow_new: Callable[[str], bool] = None):
    out = p.stdout + p.stderr
    assert p.returncode == code, f"exit {p.returncode}, expected {code}:\n{out[-3000:]}"
    assert re.search(pattern, out), f"no line matching {pattern!r}:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    lines = error_lines(out)
    if code == 2:
        assert len([ln for ln in lines if ln.startswith("mpiopt: error:")]) == 1, out[-3000:]
    assert lines and all(len(ln) < 400 for ln in lines), out[-3000:]
    for name, digest in before.items():
        assert after.get(name) == digest, f"{name} was changed or removed by a failed run"
    new = [n for n in after if n not in before and not (allow_new and allow_new(n))]
    assert not new, f"a failed run left files behind: {new}"


def write_svm(path: Path, rows: int = 60, bad_line: int | None = None) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(rows):
        feats = " ".join(f"{j + 1}:{rng.standard_normal():.4f}" for j in range(5))
        lines.append(f"{1 if rng.random() < 0.5 else -1} {feats}")
    if bad_line is not None:
        lines[bad_line - 1] = "1 3:abc 5:oops"
    path.write_text("\n".join(lines) + "\n")


def make_checkpoint(folder: Path, solver: str = "prox_sgd") -> Path:
    """A real checkpoint of a short run (its latest pointer too)."""
    p = run_mpi([solver, *QUICK, "--checkpoint-dir", folder, "--checkpoint-every", "5",
                 "--out", folder.parent / f"ck-{solver}.h5"], n=1, timeout=180)
    assert p.returncode == 0, p.output
    (folder.parent / f"ck-{solver}.h5").unlink()
    return Path(sorted(folder.glob("ckpt-*.h5"))[-1])


@dataclass
class Case:
    args: list
    code: int
    pattern: str
    setup: Callable[[Path], None] | None = None
    n: int = 1
    env: dict = field(default_factory=dict)


def _config(text: str) -> Callable[[Path], None]:
    return lambda d: (d / "run.toml").write_text(text)


def _ckpt_then(fn: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        make_checkpoint(d / "ck")
        fn(d)
    return setup


def _flip_bytes(d: Path) -> None:
    ck = sorted((d / "ck").glob("ckpt-*.h5"))[-1]
    with h5py.File(ck, "r") as f:
        ds = f["state"]["x"]
        off = ds.id.get_offset()
    raw = bytearray(ck.read_bytes())
    for i in range(off, off + 16):
        raw[i] ^= 0xFF
    ck.write_bytes(bytes(raw))


def _flip_attr(d: Path) -> None:
    """Change a scalar of the state (the iteration counter) without touching the checksummed arrays."""
    ck = sorted((d / "ck").glob("ckpt-*.h5"))[-1]
    with h5py.File(ck, "r+") as f:
        f["state"].attrs["t"] = 7


def _module_plugin(d: Path) -> None:
    (d / "mymod_plugin.py").write_text((ROOT / "tests" / "plugins" / "faulty.py").read_text())


CASES: dict[str, Case] = {
    # -- the command line and the config ---------------------------------------------------------
    "unknown_solver": Case(["nosuch"], 2, r"unknown solver 'nosuch'"),
    "unknown_problem": Case(["prox_sgd", "--problem", "nosuch"], 2, r"unknown problem 'nosuch'"),
    "incompatible_problem": Case(["prox_sgd", "--problem", "polyhedral"], 2, r"needs a composite"),
    "unknown_key": Case(["prox_sgd", "--set", "solver.nope=1"], 2, r"solver\.nope"),
    "unknown_section": Case(["prox_sgd", "--set", "solve.max_iter=1"], 2, r"solve\.max_iter"),
    "bad_int": Case(["prox_sgd", "--set", "solver.max_iter=abc"], 2, r"solver\.max_iter.*integer"),
    "negative_int": Case(["prox_sgd", "--set", "solver.max_iter=-5"], 2, r"solver\.max_iter.*>= 0"),
    "nan_value": Case(["prox_sgd", "--set", "solver.step0=nan"], 2, r"solver\.step0.*NaN"),
    "inf_value": Case(["prox_sgd", "--set", "solver.step0=inf"], 2, r"solver\.step0.*finite"),
    "overflow_value": Case(["prox_sgd", "--set", "problem.l1=1e400"], 2, r"problem\.l1.*finite"),
    "inf_l2_lasso": Case(["prox_sgd", "--problem", "lasso", "--set", "problem.l2=Infinity"], 2, r"problem\.l2.*finite"),
    "bad_choice": Case(["prox_sgd", "--set", "solver.schedule=weird"], 2, r"not one of sqrt, const"),
    "set_without_equals": Case(["prox_sgd", "--set", "solver.max_iter"], 2, r"expected KEY=VALUE"),
    "bad_flag": Case(["prox_sgd", "--no-such-flag"], 2, r"unrecognized arguments"),
    "bad_checkpoint_every": Case(["prox_sgd", "--checkpoint-every", "10x", "--checkpoint-dir", "ck"], 2,
                                 r"checkpoint.every.*10x"),
    "bad_max_time": Case(["prox_sgd", "--max-time", "-3"], 2, r"run\.max_time"),
    "bad_seed": Case(["prox_sgd", "--seed", "minus"], 2, r"run\.seed.*integer"),
    "config_missing": Case(["--config", "nope.toml"], 2, r"config file nope\.toml: not found"),
    "config_syntax": Case(["--config", "run.toml"], 2, r"config file run\.toml.*line 2",
                          _config("[solver]\nmax_iter = = 3\n")),
    "config_unknown_table": Case(["--config", "run.toml"], 2, r"config file run\.toml",
                                 _config("[solvr]\nmax_iter = 3\n")),
    "config_wrong_type": Case(["--config", "run.toml"], 2, r"solver\.max_iter.*config file run\.toml|config file run\.toml.*max_iter",
                              _config("[run]\nsolver = \"prox_sgd\"\n[solver]\nmax_iter = \"many\"\n")),
    "config_is_folder": Case(["--config", "."], 2, r"config file \."),
    # -- data files ----------------------------------------------------------------------------------
    "data_missing": Case(["prox_sgd", "--problem", "logistic", "--set", "problem.path=nope.svm"], 2, r"nope\.svm"),
    "data_malformed": Case(["prox_sgd", "--problem", "logistic", "--set", "problem.path=d.svm"], 2, r"d\.svm:7",
                           lambda d: write_svm(d / "d.svm", bad_line=7), n=2),
    "data_empty": Case(["prox_sgd", "--problem", "logistic", "--set", "problem.path=d.svm"], 2, r"d\.svm",
                       lambda d: (d / "d.svm").write_text("")),
    "data_is_folder": Case(["prox_sgd", "--problem", "logistic", "--set", "problem.path=."], 2, r"problem\.path|\. "),
    "bad_input_one_rank": Case(["prox_sgd", "--problem", "faulty", "--plugin", FAULTY,
                                "--set", "problem.bad_input_rank=1"], 2, r"faulty\.dat:4", n=2),
    # -- sizes ---------------------------------------------------------------------------------------
    "huge_generated": Case(["prox_sgd", "--set", "problem.n_samples=1e12"], 2, r"problem\.n_samples.*available", n=2),
    "huge_features": Case(["prox_sgd", "--set", "problem.n_features=1e11", "problem.density=0.5"], 2,
                          r"problem\.n_features.*available"),
    "huge_ratings": Case(["hamsi", "--problem", "synthetic_mf", "--set", "problem.n_ratings=1e12"], 2,
                         r"problem\.n_ratings.*available"),
    # -- output and checkpoint paths -------------------------------------------------------------------
    "out_is_folder": Case(["prox_sgd", "--out", "."], 2, r"--out \.: is a folder"),
    "out_missing_folder": Case(["prox_sgd", "--out", "nope/r.h5"], 2, r"folder .*nope does not exist"),
    "out_is_data": Case(["prox_sgd", "--problem", "logistic", "--set", "problem.path=d.svm", "--out", "d.svm"], 2,
                        r"is an input of this run \(problem\.path\)", lambda d: write_svm(d / "d.svm")),
    "out_is_config": Case(["--config", "run.toml", "--out", "run.toml"], 2, r"input of this run \(--config\)",
                          _config("[run]\nsolver = \"prox_sgd\"\n")),
    "out_is_resume": Case(["prox_sgd", *QUICK, "--resume", "ck/ckpt-000000020.h5", "--out", "ck/ckpt-000000020.h5"],
                          2, r"input of this run \(--resume\)", _ckpt_then(lambda d: None)),
    "out_is_latest": Case(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--out", "ck/latest"], 2,
                          r"would overwrite a checkpoint file", _ckpt_then(lambda d: None)),
    "ckdir_is_file": Case(["prox_sgd", "--checkpoint-dir", "f.txt"], 2, r"exists and is not a folder",
                          lambda d: (d / "f.txt").write_text("mine\n")),
    "ckdir_under_file": Case(["prox_sgd", "--checkpoint-dir", "f.txt/ck"], 2, r"cannot be created",
                             lambda d: (d / "f.txt").write_text("mine\n")),
    # -- checkpoints and pointers ----------------------------------------------------------------------
    "resume_latest_no_dir": Case(["prox_sgd", "--resume", "latest"], 2, r"needs --checkpoint-dir"),
    "resume_missing": Case(["prox_sgd", "--resume", "nope.h5"], 2, r"nope\.h5: checkpoint not found"),
    "resume_folder": Case(["prox_sgd", "--resume", "."], 2, r"is a folder"),
    "resume_text_file": Case(["prox_sgd", "--resume", "f.txt"], 2, r"f\.txt: not a readable HDF5",
                             lambda d: (d / "f.txt").write_text("not a checkpoint\n")),
    "resume_result_file": Case(["prox_sgd", *QUICK, "--resume", "r.h5"], 2, r"not an mpiopt checkpoint",
                               lambda d: _result_file(d / "r.h5")),
    "resume_other_solver": Case(["signprox", *QUICK, "--resume", "ck/ckpt-000000020.h5"], 2,
                                r"from solver 'prox_sgd'", _ckpt_then(lambda d: None)),
    "resume_other_problem_setting": Case(["prox_sgd", *QUICK, "--set", "problem.l1=0.5", "--resume",
                                          "ck/ckpt-000000020.h5"], 2, r"problem\.l1", _ckpt_then(lambda d: None)),
    "corrupted_dataset": Case(["prox_sgd", *QUICK, "--resume", "ck/ckpt-000000020.h5"], 2,
                              r"ckpt-000000020\.h5: checkpoint is (corrupted|damaged)", _ckpt_then(_flip_bytes), n=2),
    "corrupted_attribute": Case(["prox_sgd", *QUICK, "--resume", "ck/ckpt-000000020.h5"], 2,
                                r"ckpt-000000020\.h5: checkpoint is corrupted", _ckpt_then(_flip_attr)),
    "latest_empty": Case(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--resume", "latest"], 2,
                         r"ck/latest is empty", _ckpt_then(lambda d: (d / "ck" / "latest").write_text(""))),
    "latest_dangling": Case(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--resume", "latest"], 2,
                            r"does not exist", _ckpt_then(lambda d: (d / "ck" / "latest").write_text("ckpt-000000999.h5\n"))),
    "latest_binary": Case(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--resume", "latest"], 2,
                          r"not a text file", _ckpt_then(lambda d: (d / "ck" / "latest").write_bytes(b"\xff\xfe\x00\x81"))),
    "latest_folder": Case(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--resume", "latest"], 2,
                          r"ck/latest is not a file", _ckpt_then(lambda d: ((d / "ck" / "latest").unlink(),
                                                                             (d / "ck" / "latest").mkdir()))),
    # -- plug-ins ----------------------------------------------------------------------------------------
    "plugin_module_missing": Case(["prox_sgd", "--plugin", "no_such_plugin_mod"], 2,
                                  r"no module named 'no_such_plugin_mod'"),
    "plugin_env_missing": Case(["prox_sgd"], 2, r"no_such_env_mod", env={"MPIOPT_PLUGINS": "no_such_env_mod"}),
    "plugin_file_missing": Case(["prox_sgd", "--plugin", "nope/plug.py"], 2, r"file not found"),
    "plugin_syntax_error": Case(["prox_sgd", "--plugin", "bad.py"], 2, r"bad\.py:2: syntax error",
                                lambda d: (d / "bad.py").write_text("x = 1\ndef (:\n")),
    "plugin_raises": Case(["prox_sgd", "--plugin", "boom.py"], 2, r"importing it raised RuntimeError: boom",
                          lambda d: (d / "boom.py").write_text("raise RuntimeError('boom')\n")),
    # -- failures during the run ----------------------------------------------------------------------------
    "exception_mid_run": Case(["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set",
                               "problem.fail_rank=1", "problem.fail_at=5", "--out", "old.h5"], 1,
                              r"rank 1: RuntimeError: injected failure", lambda d: (d / "old.h5").write_bytes(b"old"), n=2),
    "hang_watchdog": Case(["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", "problem.fail_rank=1",
                           "problem.hang_at=5", "run.hang_timeout=3", "--out", "old.h5"], 1,
                          r"rank \d: no progress for \d+ s", lambda d: (d / "old.h5").write_bytes(b"old"), n=2),
}


def _result_file(path: Path) -> None:
    p = run_mpi(["prox_sgd", *QUICK, "--out", path], n=1, timeout=180)
    assert p.returncode == 0, p.output


def run_case(case, tmp_path: Path, allow_new: Callable[[str], bool] | None = None) -> None:
    """Set up ``case`` in ``tmp_path``, run it (bounded in time) and assert the contract."""
    if case.setup is not None:
        case.setup(tmp_path)
    before = snapshot(tmp_path)
    t0 = time.monotonic()
    p = run_mpi(case.args, n=case.n, timeout=120, cwd=tmp_path, env=case.env)
    assert time.monotonic() - t0 < 110
    assert_contract(p, case.code, case.pattern, before, snapshot(tmp_path), allow_new=allow_new)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_and_faults(name, tmp_path):
    case = CASES[name]
    # an aborted job cannot delete its live OUT.part (MPI_Abort kills rank 0); the next run replaces it
    run_case(case, tmp_path, allow_new=(lambda n: n.endswith(".h5.part")) if case.code == 1 else None)


def test_plugin_by_module_name_loads(tmp_path):
    """--plugin and MPIOPT_PLUGINS with a module name import it from the Python path."""
    _module_plugin(tmp_path)
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for extra, e in ((["--plugin", "mymod_plugin"], env), ([], {**env, "MPIOPT_PLUGINS": "mymod_plugin"})):
        p = run_mpi(["prox_sgd", "--problem", "faulty", *extra, "--set", "solver.max_iter=5", "run.progress=none",
                     "--out", "r.h5"], n=2, timeout=120, cwd=tmp_path, env=e)
        assert p.returncode == 0, p.output
        assert (tmp_path / "r.h5").exists()


def test_traceback_only_with_verbose(tmp_path):
    p = run_mpi(["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", "problem.fail_rank=0",
                 "problem.fail_at=3", "-v"], n=2, timeout=120, cwd=tmp_path)
    assert p.returncode == 1 and "Traceback" in p.output and "rank 0: RuntimeError" in p.output


def test_failed_run_keeps_the_previous_result(tmp_path):
    """A run that fails mid-way leaves the previous result file as it was (the new one was OUT.part, which
    rank 0 removes when the failure is its own)."""
    out = tmp_path / "r.h5"
    p = run_mpi(["prox_sgd", *QUICK, "--out", out], n=2, timeout=120)
    assert p.returncode == 0, p.output
    before = out.read_bytes()
    for rank in (1, 0):
        p = run_mpi(["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", f"problem.fail_rank={rank}",
                     "problem.fail_at=8", "--out", out], n=2, timeout=120)
        assert p.returncode == 1, p.output
        assert out.read_bytes() == before
    assert not list(tmp_path.glob("*.part")), "rank 0's own failure did not remove its .part file"


def test_sigterm_with_a_rank_stuck_in_user_code_ends_the_job(tmp_path):
    """SIGTERM always ends the job in bounded time: a rank stuck in a plug-in loop cannot checkpoint,
    so after run.term_grace the ranks say so and the job exits 128+15. The signal is sent only once
    rank 1 is in its loop (it says so with a marker file): sent earlier, the job would stop in
    order at its next poll, without the message. The line itself cannot be lost: a rank that ends
    the job waits until the launcher has read it before it aborts."""
    marker = tmp_path / "stuck"
    cmd = [find_mpirun(), "-n", "2", sys.executable, "-m", "mpiopt.run", "prox_sgd", "--problem", "faulty",
           "--plugin", FAULTY, "--set", "problem.fail_rank=1", "problem.hang_at=5", f"problem.hang_marker={marker}",
           "run.term_grace=2", "run.progress=lines", "--checkpoint-dir", "ck", "--out", "r.h5"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not marker.exists() and p.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), "rank 1 never reached its loop"
        t0 = time.monotonic()
        os.killpg(p.pid, signal.SIGTERM)
        out, err = p.communicate(timeout=90)
    except (subprocess.TimeoutExpired, AssertionError):
        os.killpg(p.pid, signal.SIGKILL)
        raise
    assert time.monotonic() - t0 < 60
    assert p.returncode == 143, out + err
    assert "run.term_grace" in err and "Traceback" not in err


def _root_tmpfs(tmp_path: Path, size: str) -> Path:
    """A small tmpfs under tmp_path (needs root); under CI a missing root fails instead of skipping."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if os.environ.get("CI"):
            pytest.fail("the disk-full tests need root to mount a small tmpfs (CI runs as root)")
        pytest.skip("needs root to mount a small tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs: {r.stderr}")
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    return mnt


def _fill(mnt: Path, leave: int) -> None:
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    with open(mnt / "filler.bin", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


@pytest.fixture
def small_disk(tmp_path):
    mnt = _root_tmpfs(tmp_path, "4m")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_while_checkpointing(small_disk, tmp_path):
    """A full disk at a checkpoint: one line naming the file and the errno, exit 1, the previous
    checkpoint and ``latest`` intact, no partial file left."""
    ck = small_disk / "ck"
    args = ["prox_sgd", "--set", "solver.max_iter=40", "problem.n_samples=200", "problem.n_features=20000",
            "problem.density=0.01", "run.progress=none", "--checkpoint-every", "10", "--checkpoint-dir", ck]
    p = run_mpi([*args, "--set", "solver.max_iter=10", "--out", tmp_path / "a.h5"], n=2, timeout=120)
    assert p.returncode == 0, p.output
    before = snapshot(ck)
    _fill(small_disk, 64 * 1024)
    p = run_mpi([*args, "--resume", "latest", "--out", tmp_path / "b.h5"], n=2, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert re.search(r"rank 0: OutputError: .*ckpt-000000020\.h5: cannot write: No space left on device \(errno 28\)",
                     out), out
    assert "Traceback" not in out and "Segmentation" not in out
    assert snapshot(ck) == before, "the previous checkpoints or latest changed"
    assert not [n for n in os.listdir(ck) if n.startswith(".tmp")]
    assert not (tmp_path / "b.h5").exists() and not (tmp_path / "b.h5.part").exists()


def test_disk_full_while_writing_the_result(small_disk, tmp_path):
    """A full disk under the result file: one line, exit non-zero, the previous result untouched."""
    out = small_disk / "r.h5"
    out.write_bytes(b"previous result")
    _fill(small_disk, 8 * 1024)
    p = run_mpi(["prox_sgd", "--set", "solver.max_iter=300", "problem.n_features=2000", "run.history_every=1",
                 "run.progress=none", "--out", out], n=2, timeout=120)
    text = p.stdout + p.stderr
    assert p.returncode in (1, 2), text
    assert re.search(r"r\.h5(\.part)?: .*No space left on device|r\.h5.*errno 28", text), text
    assert "Traceback" not in text and "Segmentation" not in text
    assert out.read_bytes() == b"previous result"
    assert not (small_disk / "r.h5.part").exists()


def test_killed_run_leaves_nothing_that_breaks_the_next(tmp_path):
    """SIGKILL mid-run: the previous result survives, and the next run cleans the dead run's
    temporary files and finishes."""
    out = tmp_path / "r.h5"
    out.write_bytes(b"previous result")
    ck = tmp_path / "ck"
    ck.mkdir()
    stale = ck / f".tmp-{os.uname().nodename.split('.')[0].replace('-', '_')}-999999-x.part"
    stale.write_bytes(b"left by a killed run")
    args = ["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", "problem.slow=0.02",
            "solver.max_iter=60", "run.progress=none", "--checkpoint-dir", ck, "--checkpoint-every", "10",
            "--out", out]
    p = run_mpi(args, n=2, timeout=120, sig=signal.SIGKILL,
                signal_when=lambda: len(list(ck.glob("ckpt-*.h5"))) >= 1)
    assert p.returncode != 0
    assert out.read_bytes() == b"previous result"
    p = run_mpi([*args, "--resume", "latest"], n=2, timeout=120)
    assert p.returncode == 0, p.output
    assert not stale.exists()
    assert out.read_bytes() != b"previous result" and not (tmp_path / "r.h5.part").exists()
