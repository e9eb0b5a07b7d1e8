"""HDF5 layer: result files (live SWMR history), checkpoints (atomic, pointer, pruning, refusal)."""
import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from mpiopt.errors import CheckpointError, InputError
from mpiopt.io import CheckpointManager, ResultWriter, load_checkpoint, load_result
from mpiopt.io.checkpoint import atomic_write_bytes


def _writer(path):
    return ResultWriter(str(path), {"format": "mpiopt-result", "format_version": 1, "solver": "s",
                                    "problem": "p", "config": {"solver": {"a": 1}}, "n_ranks": 2})


def test_result_roundtrip_and_live_swmr_reader(tmp_path):
    path = tmp_path / "r.h5"
    w = _writer(path)
    w.declare_series("snapshots", (3,), np.float32)
    for i in range(5):
        w.append({"iteration": i, "time": 0.1 * i, "objective": 1.0 / (i + 1)})
    w.append_series("snapshots", np.ones(3))
    w.flush()
    # another process reads the file while it is open for writing
    code = textwrap.dedent(f"""
        from mpiopt.io import load_result
        r = load_result({str(path)!r})
        print(len(r.history["iteration"]), r.attrs["solver"], r.groups["snapshots"].shape)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "s", "(1,", "3)"]
    w.append({"iteration": 5, "time": 0.5})          # missing column -> NaN
    w.close({"status": "max_iter", "success": True}, {"x": np.arange(4.0)})
    r = load_result(str(path))
    assert list(r.history)[:2] == ["iteration", "time"]
    assert r.history["iteration"].tolist() == [0, 1, 2, 3, 4, 5]
    assert np.isnan(r.history["objective"][-1])
    assert r.solution["x"].tolist() == [0, 1, 2, 3]
    assert r.config == {"solver": {"a": 1}} and r.attrs["success"] is True
    assert "objective" in r.table()


def test_load_result_refuses_other_files(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f.attrs["format"] = "something"
    with pytest.raises(InputError, match="not an mpiopt result"):
        load_result(str(p))
    with pytest.raises(InputError, match="not found"):
        load_result(str(tmp_path / "nope.h5"))


def test_checkpoints_atomic_latest_prune_and_refusal(tmp_path):
    m = CheckpointManager(str(tmp_path / "ck"), keep=2)
    state = {"x": np.arange(5.0), "t": 3, "nested": {"u": np.ones(2), "name": "a"}, "rng": ["{}", "{}"], "none": None}
    for it in (10, 20, 30):
        m.save(it, {"solver": "s", "problem": "p", "n_ranks": 2, "config": json.dumps({})}, state,
               {"iteration": np.array([it]), "objective": np.array([1.0])})
    names = sorted(os.listdir(tmp_path / "ck"))
    assert names == ["ckpt-000000020.h5", "ckpt-000000030.h5", "latest"], names
    assert m.latest().endswith("ckpt-000000030.h5")
    ck = load_checkpoint(m.latest(), "s", "p")
    assert ck.iteration == 30 and ck.state["t"] == 3 and ck.state["nested"]["name"] == "a"
    assert ck.state["none"] is None and ck.state["rng"] == ["{}", "{}"]
    assert np.array_equal(ck.state["x"], np.arange(5.0))
    with pytest.raises(CheckpointError, match="from solver 's', not 'q'"):
        load_checkpoint(m.latest(), "q", "p")
    with pytest.raises(CheckpointError, match="from problem 'p', not 'z'"):
        load_checkpoint(m.latest(), "s", "z")
    with h5py.File(m.latest(), "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(m.latest(), "s", "p")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(str(junk))


def test_atomic_write_leaves_old_content_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "latest"
    atomic_write_bytes(str(p), b"old\n")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(str(p), b"new\n")
    assert p.read_bytes() == b"old\n"
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp")] == []
