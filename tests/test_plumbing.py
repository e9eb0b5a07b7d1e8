"""The run plumbing's public parts without MPI ranks: Every, History, StopPolicy, CheckpointSchedule's
rules, checkpoint digests and pointers, stale temporaries, pre-flight checks."""
from __future__ import annotations

import math
import os
import signal

import h5py
import numpy as np
import pytest

from mpiopt import result as R
from mpiopt.errors import CheckpointError, InputError
from mpiopt.history import History
from mpiopt.io.checkpoint import CheckpointManager, clean_stale_temporaries, load_checkpoint
from mpiopt.options import Every
from mpiopt.preflight import check_memory, check_not_an_input, check_output_file
from mpiopt.stopping import StopPolicy


def test_every_parses_iterations_and_seconds():
    assert Every.parse("100") == Every(100, 0.0) and Every.parse("30s") == Every(0, 30.0)
    assert Every.parse("1e3").iterations == 1000 and Every.parse("0").never and str(Every.parse("2.5s")) == "2.5s"
    for bad in ("10x", "-3", "-1s", "infs", ""):
        with pytest.raises(InputError, match="expected N iterations or Ns seconds"):
            Every.parse(bad, "run.checkpoint_every")


def test_history_rows_due_and_quality():
    clock = iter(range(100)).__next__
    h = History(0, lambda: float(clock()), every=2, progress="none", quiet=True)
    h.setup(10)
    assert [i for i in range(11) if h.due(i, 10)] == [0, 2, 4, 6, 8, 10]
    for it, acc in ((0, 0.1), (1, 0.7), (2, 0.5)):
        h.record(it, test_accuracy=acc, epoch=it / 2)
    h.record(3, objective=1.0)                      # a row without the column: NaN there, not a best
    a = h.arrays()
    assert a["iteration"].tolist() == [0, 1, 2, 3] and math.isnan(a["test_accuracy"][3])
    assert h.quality("test_accuracy", larger_is_better=True) == {
        "test_accuracy": 0.5, "best_test_accuracy": 0.7, "best_epoch": 0.5}
    assert h.quality("nope", True) == {}
    other = History(1, lambda: 0.0)                 # other ranks keep nothing
    other.record(0, objective=1.0)
    assert other.arrays() == {}


def test_stop_policy_order_and_signal_grace():
    assert StopPolicy.decide(15, True, True) == R.INTERRUPTED
    assert StopPolicy.decide(0, True, True) == R.CALLBACK_STOP
    assert StopPolicy.decide(0, False, True) == R.MAX_TIME and StopPolicy.decide(0, False, False) is None
    sp = StopPolicy(lambda: 5.0, max_time=4.0, poll_every=3, term_grace=100.0)
    assert sp.out_of_time() and sp.poll_due(6) and not sp.poll_due(7)
    before = signal.getsignal(signal.SIGTERM)
    sp.install_signal_handlers()
    try:
        os.kill(os.getpid(), signal.SIGTERM)       # handled: a flag and a pending grace timer, no exit
        assert sp.signal_received == signal.SIGTERM and sp._grace_timer is not None
    finally:
        sp.restore_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) == before and sp._grace_timer is None


def _save(folder, it=5, x=None):
    mgr = CheckpointManager(str(folder), keep=2)
    x = np.arange(6.0) if x is None else x
    return mgr, mgr.save(it, {"solver": "s", "problem": "p", "config": {"a": 1}}, {"x": x, "t": it},
                         {"iteration": np.array([0, it])})


def test_checkpoint_digest_catches_changed_content(tmp_path):
    mgr, path = _save(tmp_path)
    ck = load_checkpoint(path, "s", "p")
    assert ck.state["t"] == 5 and ck.state["x"].tolist() == list(np.arange(6.0)) and ck.iteration == 5
    with h5py.File(path, "r+") as f:
        f["state"]["x"][2] = 99.0                   # a silent change of a value
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_latest_pointer_errors_name_the_pointer(tmp_path):
    mgr, path = _save(tmp_path)
    assert mgr.latest() == path
    pointer = tmp_path / "latest"
    for content, msg in ((b"", "is empty"), (b"\xff\xfe\x81", "not a text file"),
                         (b"ckpt-000000777.h5\n", "does not exist"), (b"../../etc/passwd", "not a checkpoint file")):
        pointer.write_bytes(content)
        with pytest.raises(CheckpointError, match=msg):
            mgr.latest()
    pointer.unlink()
    assert mgr.latest() == path                     # no pointer: the newest checkpoint of the folder


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    host = os.uname().nodename.split(".")[0].replace("-", "_")
    dead = tmp_path / f".tmp-{host}-999999-abc.part"
    mine = tmp_path / f".tmp-{host}-{os.getpid()}-abc.part"
    other_host = tmp_path / ".tmp-elsewhere-999999-abc.part"
    user = tmp_path / "notes.txt"
    for p in (dead, mine, other_host, user):
        p.write_text("x")
    assert clean_stale_temporaries(str(tmp_path)) == [dead.name]
    assert mine.exists() and other_host.exists() and user.exists()


def test_preflight_paths_and_memory(tmp_path):
    data = tmp_path / "d.svm"
    data.write_text("1 1:1\n")
    with pytest.raises(InputError, match=r"input of this run \(problem.path\)"):
        check_not_an_input(str(data), {"problem.path": str(data)})
    check_not_an_input(str(tmp_path / "r.h5"), {"problem.path": str(data)})
    with pytest.raises(InputError, match="is a folder"):
        check_output_file(str(tmp_path))
    with pytest.raises(InputError, match="does not exist"):
        check_output_file(str(tmp_path / "no" / "r.h5"))
    with pytest.raises(InputError, match=r"problem.n_samples=9: needs about 2.0 GB per rank \(4.0 GB for the 2 rank"):
        check_memory((2 * 2 ** 30, "problem.n_samples=9"), 2, 3 * 2 ** 30)
    check_memory((2 ** 20, "x"), 2, 3 * 2 ** 30)
    check_memory(None, 2, 1)
