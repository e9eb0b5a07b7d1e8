"""Input classes of the bad-input contract, each fixed at one root:

1. data files are data, never code (CIFAR-10 batches through a restricted unpickler);
2. a result file never chooses the code or the data files ``mpiopt-report --evaluate`` loads;
3. no hang on inputs: FIFOs, devices and oversized config files are refused by stat, before any open;
4. late or unclear errors come early: out-of-range seeds, empty or folder-like ``--out``, non-UTF-8
   config files, data files changed since the checkpoint a run resumes;
5. out-of-range and odd values of every option type.

Every command case is a real run under mpirun, bounded by a timeout, and asserts the contract of
tests/test_faults.py: exit 2, exactly one ``mpiopt: error:`` line naming the key or file, no traceback,
nothing the user owns changed or left behind.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import run_mpi  # noqa: E402
from test_faults import QUICK, Case, assert_contract, make_checkpoint, run_case, snapshot, write_svm  # noqa: E402

from mpiopt.errors import InputError  # noqa: E402

MARKER = "PWNED"


# -- CIFAR-10 batches: real format and malicious ones ------------------------------------------------
class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the original CIFAR-10 batches (protocol 2): byte and
    ASCII strings as ``str`` (BINSTRING), arrays through ``numpy.core.multiarray._reconstruct``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_str8(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    def save_bytes(self, obj: bytes) -> None:
        self._save_str8(obj)

    def save_str(self, obj: str) -> None:
        if obj.isascii():
            self._save_str8(obj.encode("ascii"))
        else:
            super().save_str(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def real_format_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    d = {b"batch_label": b"training batch 1 of 5", b"labels": [int(v) for v in labels],
         b"data": np.ascontiguousarray(images, np.uint8).reshape(len(images), 3072),
         b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(d)
    raw = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"_codecs" not in raw
    return raw


class _Call:
    """Pickles as a call of ``fn(*args)`` (what a malicious pickle does when loaded)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def malicious_batch(folder: Path, how: str = "os.system") -> bytes:
    marker = str(folder / MARKER)
    payload = {"os.system": _Call(os.system, f"touch {marker}"),
               "builtins.exec": _Call(exec, f"open({marker!r}, 'w').close()"),
               "subprocess.call": _Call(__import__("subprocess").call, ["touch", marker])}[how]
    return pickle.dumps({b"data": payload, b"labels": [0]}, protocol=2)


def cifar_folder(folder: Path, n: int = 16, evil: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        if evil and name == "data_batch_1":
            (folder / name).write_bytes(malicious_batch(folder.parent, evil))
        else:
            (folder / name).write_bytes(real_format_batch(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
                                                          rng.integers(0, 10, n)))
    return folder


def test_real_format_batches_load(tmp_path):
    """A batch in the original (Python 2, protocol 2) format and one of write_batch (numpy's own pickle)."""
    from mpiopt.data.cifar import load_cifar10, read_batch, write_batch
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 7)
    (tmp_path / "b").write_bytes(real_format_batch(X, y))
    Xb, yb = read_batch(str(tmp_path / "b"))
    assert np.array_equal(Xb, X) and np.array_equal(yb, y) and Xb.dtype == np.uint8 and yb.dtype == np.int64
    for protocol in (2, 4, 5):
        d = {b"data": X.reshape(7, 3072), b"labels": [int(v) for v in y], b"batch_label": b"x", b"filenames": [b"a"] * 7}
        (tmp_path / f"p{protocol}").write_bytes(pickle.dumps(d, protocol=protocol))
        assert np.array_equal(read_batch(str(tmp_path / f"p{protocol}"))[0], X)
    write_batch(str(tmp_path / "w"), X, y)
    assert np.array_equal(read_batch(str(tmp_path / "w"))[1], y)
    cifar_folder(tmp_path / "c" / "cifar-10-batches-py", n=4)
    Xt, yt = load_cifar10(str(tmp_path / "c"), "train")
    assert Xt.shape == (20, 3, 32, 32) and yt.shape == (20,)


@pytest.mark.parametrize("how", ["os.system", "builtins.exec", "subprocess.call"])
def test_malicious_batch_is_refused_not_run(tmp_path, how):
    from mpiopt.data.cifar import read_batch
    (tmp_path / "b").write_bytes(malicious_batch(tmp_path, how))
    with pytest.raises(InputError) as exc:
        read_batch(str(tmp_path / "b"))
    msg = str(exc.value)
    assert "\n" not in msg and str(tmp_path / "b") in msg and "not a CIFAR-10 python batch" in msg, msg
    time.sleep(0.2)
    assert not (tmp_path / MARKER).exists(), "the pickle ran its command"


def test_odd_batches_are_one_line(tmp_path):
    """Pickles that name allowed objects in odd ways, truncated files, wrong contents."""
    from mpiopt.data.cifar import read_batch
    good = real_format_batch(np.zeros((2, 3, 32, 32), np.uint8), np.array([1, 2]))
    obj_array = pickle.dumps({b"data": np.array([None, 1], dtype=object), b"labels": [0, 1]}, protocol=2)
    cases = {"truncated": good[:len(good) // 2], "empty": b"", "text": b"hello\n",
             "object_array": obj_array, "not_dict": pickle.dumps([1, 2], protocol=2),
             "labels_out_of_range": pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [11]}),
             "float_data": pickle.dumps({b"data": np.zeros((1, 3072)), b"labels": [1]})}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(InputError) as exc:
            read_batch(str(tmp_path / name))
        assert "\n" not in str(exc.value) and name in str(exc.value), (name, str(exc.value))


def test_no_pickle_or_code_loading_of_data_in_the_package():
    """No module of the package unpickles, evals or torch.loads data other than through the restricted
    CIFAR-10 unpickler."""
    import re
    root = Path(__file__).resolve().parent.parent / "mpiopt"
    bad = []
    for f in root.rglob("*.py"):
        text = f.read_text()
        for pat in (r"pickle\.loads?\(", r"allow_pickle\s*=\s*True", r"(?<![\w.])eval\(", r"(?<![\w.])exec\(",
                    r"torch\.load\((?![^)]*weights_only\s*=\s*True)", r"yaml\.load\(", r"marshal\.loads?\("):
            for m in re.finditer(pat, text):
                bad.append(f"{f.relative_to(root)}: {m.group(0)}")
    assert not bad, bad


# -- command-line cases ---------------------------------------------------------------------------------
def _fifo(name: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(d / name)
    return setup


def _config(text: str | bytes) -> Callable[[Path], None]:
    return lambda d: (d / "run.toml").write_bytes(text if isinstance(text, bytes) else text.encode())


def _movielens_folder_with_fifo(d: Path) -> None:
    (d / "ml").mkdir()
    os.mkfifo(d / "ml" / "u.data")


def _mnist_fifo(d: Path) -> None:
    from mpiopt.data.mnist import write_idx
    (d / "mn").mkdir()
    os.mkfifo(d / "mn" / "train-images-idx3-ubyte")
    write_idx(str(d / "mn" / "train-labels-idx1-ubyte"), np.zeros(4, np.uint8))


def _latest_fifo(d: Path) -> None:
    make_checkpoint(d / "ck")
    (d / "ck" / "latest").unlink()
    os.mkfifo(d / "ck" / "latest")


def _mnist_gz_bomb(d: Path) -> None:
    """An images header declaring 2**32 images of 2**16 x 2**16 pixels."""
    import gzip
    (d / "mn").mkdir()
    with gzip.open(d / "mn" / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(b"".join(int(v).to_bytes(4, "big") for v in (2051, 2 ** 32 - 1, 2 ** 16, 2 ** 16)))
    from mpiopt.data.mnist import write_idx
    write_idx(str(d / "mn" / "train-labels-idx1-ubyte"), np.zeros(4, np.uint8))


def _init_h5_external(d: Path) -> None:
    with h5py.File(d / "other.h5", "w") as f:
        f["W"] = np.zeros((2, 2))
    with h5py.File(d / "f.h5", "w") as f:
        f["W"] = h5py.ExternalLink("other.h5", "W")
        f["H"] = np.zeros((2, 2))


def _init_npz_pickle(d: Path) -> None:
    np.savez(d / "f.npz", W=np.array([_Call(os.system, f"touch {d / MARKER}")], dtype=object), H=np.zeros(2))


SVM = ["prox_sgd", "--problem", "logistic", "--set", "problem.path=d.svm", "solver.max_iter=5", "run.progress=none"]
TORCH = ["async_subgradient", "--set", "solver.max_epochs=1", "problem.model=mlp", "problem.width=4",
         "run.progress=none"]

CASES: dict[str, Case] = {
    # 3. hangs: non-regular files are refused by stat before any open; config files are bounded
    "config_fifo": Case(["prox_sgd", "--config", "run.toml"], 2, r"config file run\.toml: is a FIFO", _fifo("run.toml")),
    "config_dev_zero": Case(["prox_sgd", "--config", "/dev/zero"], 2, r"config file /dev/zero: is a device"),
    "config_too_large": Case(["prox_sgd", "--config", "run.toml"], 2, r"config file run\.toml: \d+ bytes, more than",
                             _config(b"# padding\n" * 500_000)),
    "svm_fifo": Case(SVM, 2, r"problem\.path d\.svm: is a FIFO", _fifo("d.svm"), n=2),
    "ratings_fifo": Case(["hamsi", "--problem", "movielens", "--set", "problem.path=u.data"], 2,
                         r"problem\.path u\.data: is a FIFO", _fifo("u.data"), n=2),
    "ratings_folder_fifo": Case(["hamsi", "--problem", "movielens", "--set", "problem.path=ml"], 2,
                                r"ml/u\.data: is a FIFO", _movielens_folder_with_fifo, n=2),
    "test_path_fifo": Case(["hamsi", "--problem", "movielens", "--set", "problem.path=u.data",
                            "problem.test_path=t.data"], 2, r"problem\.test_path t\.data: is a FIFO",
                           lambda d: (write_ratings(d / "u.data"), os.mkfifo(d / "t.data"))),
    "mnist_fifo": Case([*TORCH, "--problem", "mnist", "--set", "problem.path=mn"], 2,
                       r"train-images-idx3-ubyte: is a FIFO", _mnist_fifo),
    "mnist_gz_bomb": Case([*TORCH, "--problem", "mnist", "--set", "problem.path=mn"], 2,
                          r"train-images-idx3-ubyte\.gz: header declares \d+ data bytes", _mnist_gz_bomb),
    "weights_device": Case(["prox_sgd", "--set", "problem.reg=weighted_l1", "problem.weights=/dev/zero"], 2,
                           r"problem\.weights /dev/zero: is a device"),
    "init_h5_external_link": Case(["hamsi", "--set", "solver.init=f.h5", "solver.max_epochs=1"], 2,
                                  r"solver\.init f\.h5: .*external link", _init_h5_external),
    "init_npz_pickled": Case(["hamsi", "--set", "solver.init=f.npz", "solver.max_epochs=1"], 2,
                             r"solver\.init f\.npz: cannot read", _init_npz_pickle),
    "init_fifo": Case(["hamsi", "--set", "solver.init=f.h5", "solver.max_epochs=1"], 2,
                      r"solver\.init f\.h5: is a FIFO", _fifo("f.h5")),
    "resume_fifo": Case(["prox_sgd", *QUICK, "--resume", "ck.h5"], 2, r"--resume ck\.h5: is a FIFO", _fifo("ck.h5")),
    "latest_fifo": Case(["prox_sgd", *QUICK, "--checkpoint-dir", "ck", "--resume", "latest"], 2,
                        r"ck/latest: is a FIFO", _latest_fifo),
    "plugin_fifo": Case(["prox_sgd", "--plugin", "p.py"], 2, r"--plugin p\.py: is a FIFO", _fifo("p.py")),
    # 4. errors before set-up, naming file and place
    "seed_beyond_uint64": Case(["prox_sgd", *QUICK, "--seed", "18446744073709551617"], 2, r"--seed: run\.seed: .*out of range"),
    "out_empty": Case(["prox_sgd", *QUICK, "--out", ""], 2, r"--out: run\.out: must not be empty"),
    "out_trailing_separator": Case(["prox_sgd", *QUICK, "--out", "newdir/"], 2, r"--out newdir/: ends with a path separator"),
    "out_missing_folder": Case(["prox_sgd", *QUICK, "--out", "newdir/r.h5"], 2, r"folder .*newdir does not exist"),
    "config_not_utf8": Case(["prox_sgd", "--config", "run.toml"], 2, r"config file run\.toml: byte 24 \(line 2\) is 0xff",
                            _config(b"[solver]\nmax_iter = 3 # \xff\xfe\n")),
    "config_nul_string": Case(["prox_sgd", "--config", "run.toml"], 2, r"config file run\.toml: run\.out: contains a NUL",
                              _config('[run]\nout = "a\\u0000b.h5"\n')),
    "config_deep_nesting": Case(["prox_sgd", "--config", "run.toml"], 2, r"config file run\.toml: .*nested too deeply",
                                _config("x = " + "[" * 20000 + "]" * 20000 + "\n")),
    "config_int_too_long": Case(["prox_sgd", "--config", "run.toml"], 2, r"config file run\.toml: .*digits",
                                _config("[solver]\nmax_iter = " + "9" * 5000 + "\n")),
    # 5. odd values of every option type, from --set, the config file and dedicated flags
    "int_beyond_int64_set": Case(["prox_sgd", "--set", "solver.max_iter=9223372036854775808"], 2,
                                 r"--set: solver\.max_iter: 9223372036854775808 is out of range"),
    "int_beyond_int64_file": Case(["prox_sgd", "--config", "run.toml"], 2,
                                  r"config file run\.toml: solver\.max_iter: .* out of range",
                                  _config("[solver]\nmax_iter = 1e30\n")),
    "int_digits_set": Case(["prox_sgd", "--set", "solver.max_iter=" + "9" * 5000], 2,
                           r"--set: solver\.max_iter: expected an integer"),
    "float_from_huge_int": Case(["prox_sgd", "--set", "problem.l1=" + "9" * 400], 2,
                                r"--set: problem\.l1: must be a finite number"),
    "float_nan_file": Case(["prox_sgd", "--config", "run.toml"], 2, r"config file run\.toml: solver\.step0: NaN",
                           _config("[solver]\nstep0 = nan\n")),
    "float_inf_file": Case(["prox_sgd", "--config", "run.toml"], 2, r"config file run\.toml: problem\.l1: must be a finite",
                           _config("[problem]\nl1 = -inf\n")),
    "negative_count": Case(["prox_sgd", "--set", "run.keep_checkpoints=-1"], 2, r"--set: run\.keep_checkpoints: must be >= 1"),
    "empty_string_set": Case(["prox_sgd", "--set", "run.checkpoint_dir="], 2, r"--set: run\.checkpoint_dir: must not be empty"),
    "empty_string_file": Case(["prox_sgd", "--config", "run.toml"], 2, r"config file run\.toml: problem\.path: must not be empty",
                              _config('[run]\nproblem = "logistic"\n[problem]\npath = " "\n')),
    "duration_huge": Case(["prox_sgd", "--set", "run.term_grace=1e300"], 2, r"--set: run\.term_grace: must be <="),
    "duration_nan": Case(["prox_sgd", "--set", "run.hang_timeout=nan"], 2, r"--set: run\.hang_timeout: NaN"),
    "max_time_negative": Case(["prox_sgd", "--max-time=-inf"], 2, r"--max-time: run\.max_time: must be > 0"),
    "every_beyond_int64": Case(["prox_sgd", "--checkpoint-every", "1e30", "--checkpoint-dir", "ck"], 2,
                               r"--checkpoint-every: run\.checkpoint_every: expected N iterations"),
    "every_seconds_inf": Case(["prox_sgd", "--checkpoint-every", "infs", "--checkpoint-dir", "ck"], 2,
                              r"run\.checkpoint_every: expected N iterations"),
    "bool_odd": Case(["prox_sgd", "--set", "run.debug=maybe"], 2, r"--set: run\.debug: expected true or false"),
    "string_for_array": Case(["prox_sgd", "--config", "run.toml"], 2, r"config file run\.toml: run\.out: expected a string",
                             _config("[run]\nout = [1, 2]\n")),
    "long_key_and_bool_shown_short": Case(["prox_sgd", "--set", "run.debug=" + "y" * 5000, "solver." + "k" * 5000 + "=1"],
                                          2, r"--set: run\.debug: expected true or false, got 'y{50,60}\.\.\."),
    "long_unknown_key_shown_short": Case(["prox_sgd", "--set", "solver." + "k" * 5000 + "=1"], 2,
                                         r"unknown key 'solver\.k{40,60}\.\.\.: solver 'prox_sgd' has no option"),
    "long_value_shown_short": Case(["prox_sgd", "--set", "solver.schedule=" + "x" * 5000], 2,
                                   r"--set: solver\.schedule: 'x{50,60}\.\.\. is not one of"),
}


def write_ratings(path: Path, n: int = 300) -> None:
    from mpiopt.data.movielens import write_movielens_like
    write_movielens_like(str(path), n_users=30, n_items=20, n_ratings=n)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_cases(name, tmp_path):
    run_case(CASES[name], tmp_path)


# -- 4. a data file changed at the same path since the checkpoint -----------------------------------------
def test_resume_refuses_a_data_file_changed_since_the_checkpoint(tmp_path):
    write_svm(tmp_path / "d.svm", rows=80)
    args = ["prox_sgd", "--problem", "logistic", "--set", "problem.path=d.svm", "solver.max_iter=10", "run.progress=none",
            "--checkpoint-dir", "ck", "--checkpoint-every", "5"]
    p = run_mpi([*args, "--out", "a.h5"], n=2, timeout=180, cwd=tmp_path)
    assert p.returncode == 0, p.output
    import h5py as _h5
    with _h5.File(sorted((tmp_path / "ck").glob("ckpt-*.h5"))[-1], "r") as f:
        ident = json.loads(f.attrs["inputs"])["problem.path"]
    assert ident["size"] == (tmp_path / "d.svm").stat().st_size and len(ident["sha256_sampled"]) == 64
    # unchanged: the resume goes on
    p = run_mpi([*args[:-4], "solver.max_iter=15", "--checkpoint-dir", "ck", "--resume", "latest", "--out", "b.h5"],
                n=2, timeout=180, cwd=tmp_path)
    assert p.returncode == 0 and "resumed from" in p.output, p.output
    # same size, one value changed in place (same line count, same length)
    text = (tmp_path / "d.svm").read_text().splitlines()
    text[40] = text[40].replace("1:", "2:", 1) if "1:-" not in text[40] else text[40].replace("1:-", "1:+", 1)
    (tmp_path / "d.svm").write_text("\n".join(text) + "\n")
    for how, pattern in (("same size", r"problem\.path d\.svm changed since the checkpoint \((content differs|modified)"),
                         ("other size", r"problem\.path d\.svm changed since the checkpoint \(size \d+ -> \d+ bytes")):
        if how == "other size":
            write_svm(tmp_path / "d.svm", rows=90)
        before = snapshot(tmp_path)
        p = run_mpi([*args[:-4], "solver.max_iter=20", "--checkpoint-dir", "ck", "--resume", "latest", "--out", "c.h5"],
                    n=2, timeout=180, cwd=tmp_path)
        assert_contract(p, 2, pattern, before, snapshot(tmp_path))
        assert "set up in" not in p.output        # refused before the problem was set up


def test_resume_refuses_a_changed_file_in_a_data_folder(tmp_path):
    (tmp_path / "ml").mkdir()
    write_ratings(tmp_path / "ml" / "u.data")
    args = ["hamsi", "--problem", "movielens", "--set", "problem.path=ml", "problem.latent_dim=2", "solver.max_epochs=2",
            "run.progress=none", "--checkpoint-dir", "ck", "--checkpoint-every", "1"]
    p = run_mpi([*args, "--out", "a.h5"], n=2, timeout=180, cwd=tmp_path)
    assert p.returncode == 0, p.output
    os.utime(tmp_path / "ml" / "u.data", ns=(1, 1))        # touched: same bytes, other mtime
    before = snapshot(tmp_path)
    p = run_mpi([*args, "--resume", "latest", "--out", "b.h5"], n=2, timeout=180, cwd=tmp_path)
    assert_contract(p, 2, r"problem\.path ml changed since the checkpoint \(u\.data: modified", before, snapshot(tmp_path))


# -- 1 and 2. mpiopt-report --evaluate loads no code and no data the user did not name -------------------
@pytest.fixture(scope="module")
def cifar_result(tmp_path_factory):
    """A real async_subgradient run on CIFAR-10-format batches with evaluation left for afterwards."""
    d = tmp_path_factory.mktemp("cifar")
    cifar_folder(d / "good")
    p = run_mpi([*TORCH, "--problem", "cifar10", "--set", "problem.path=good", "solver.snapshot_eval=off",
                 "solver.batch_size=16", "--out", "r.h5"], n=1, timeout=240, cwd=d)
    assert p.returncode == 0, p.output
    return d


def _crafted(d: Path, problem_path: str, problem: str | None = None) -> Path:
    """A copy of the result file whose config names another data folder (and problem)."""
    out = d / f"crafted-{abs(hash((problem_path, problem)))}.h5"
    out.write_bytes((d / "r.h5").read_bytes())
    with h5py.File(out, "r+") as f:
        cfg = json.loads(f.attrs["config"])
        cfg["problem"]["path"] = problem_path
        f.attrs["config"] = json.dumps(cfg)
        if problem:
            f.attrs["problem"] = problem
    return out


def _report(args: list, cwd: Path):
    return run_mpi(["--evaluate", *args, "-o", "rep"], n=1, module="mpiopt.report", timeout=180, cwd=cwd)


def _assert_report_refused(p, pattern: str, before: dict, after: dict) -> None:
    out = p.stdout + p.stderr
    assert p.returncode == 2, out[-3000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("mpiopt.report: error:")]
    assert len(lines) == 1 and len(lines[0]) < 400 and "Traceback" not in out, out[-3000:]
    import re
    assert re.search(pattern, lines[0]), (pattern, lines[0])
    assert before == after, "a refused --evaluate changed or left files"


def test_evaluate_takes_data_paths_only_from_the_command_line(cifar_result):
    d = cifar_result
    cifar_folder(d / "evil", evil="os.system")
    crafted = _crafted(d, str(d / "evil"))
    before = snapshot(d)
    # the file's config names a folder: refused unread, saying which flag to pass
    p = _report([crafted], d)
    _assert_report_refused(p, r"its config names problem\.path=.*evil.*pass --set problem\.path=", before, snapshot(d))
    p = _report([d / "r.h5"], d)
    _assert_report_refused(p, r"problem\.path='good'.*--set problem\.path=", before, snapshot(d))
    # the user names the malicious folder: its pickle is refused, not run
    p = _report([crafted, "--set", "problem.path=evil"], d)
    _assert_report_refused(p, r"evil/data_batch_1: not a CIFAR-10 python batch: it names (posix|os)\.system",
                           before, snapshot(d))
    assert not (d / MARKER).exists(), "the crafted batch ran its command"
    # the user names the good folder: evaluated
    p = _report([crafted, "--set", "problem.path=good"], d)
    assert p.returncode == 0 and (d / "rep" / f"evaluation-{crafted.stem}.csv").exists(), p.output


def test_evaluate_loads_no_plugin_the_file_names(cifar_result, tmp_path):
    d = cifar_result
    crafted = _crafted(d, "good", problem="planted_problem")
    before = snapshot(d)
    p = _report([crafted, "--set", "problem.path=good"], d)
    _assert_report_refused(p, r"problem 'planted_problem' of the run is not built in; pass --plugin", before,
                           snapshot(d))
    p = run_mpi([d / "r.h5", "--set", "problem.path=good"], n=1, module="mpiopt.report", timeout=120, cwd=tmp_path)
    assert p.returncode == 2 and "only with --evaluate" in p.output, p.output
