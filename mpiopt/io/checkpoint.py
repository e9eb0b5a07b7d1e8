"""Checkpoints: ``ckpt-<iteration>.h5`` written atomically, a ``latest`` pointer, the last K kept."""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from ..errors import CheckpointError
from .tree import decode_attr, read_tree, write_tree

CKPT_FORMAT = "mpiopt-checkpoint"
CKPT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.h5$")


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class Checkpoint:
    """A checkpoint read back: ``meta`` (solver, problem, iteration, config, n_ranks, ...),
    ``state`` (the solver's nested dict), ``history`` (column -> array), ``path``."""

    path: str
    meta: dict[str, Any]
    state: dict[str, Any]
    history: dict[str, np.ndarray]

    @property
    def iteration(self) -> int:
        return int(self.meta["iteration"])


class CheckpointManager:
    """Writes and finds checkpoints in one folder (called on one rank)."""

    def __init__(self, folder: str, keep: int = 3):
        self.folder = folder
        self.keep = keep

    def ensure_folder(self) -> None:
        os.makedirs(self.folder, exist_ok=True)

    def save(self, iteration: int, meta: dict[str, Any], state: dict[str, Any],
             history: dict[str, np.ndarray] | None = None) -> str:
        """Write ``ckpt-<iteration>.h5`` atomically (temp file, fsync, rename, fsync folder), move
        the ``latest`` pointer, and delete all but the newest ``keep`` checkpoints."""
        self.ensure_folder()
        final = os.path.join(self.folder, f"ckpt-{iteration:09d}.h5")
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-ckpt-", suffix=".h5")
        os.close(fd)
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = CKPT_FORMAT
                f.attrs["format_version"] = CKPT_VERSION
                f.attrs["iteration"] = int(iteration)
                for k, v in meta.items():
                    f.attrs[k] = v if isinstance(v, (str, int, float, np.integer, np.floating)) else "json:" + json.dumps(v)
                write_tree(f.create_group("state"), state)
                hg = f.create_group("history")
                for k, v in (history or {}).items():
                    hg.create_dataset(k, data=np.asarray(v))
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.folder)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        atomic_write_bytes(os.path.join(self.folder, "latest"), (os.path.basename(final) + "\n").encode())
        self._prune()
        return final

    def list(self) -> list[str]:
        if not os.path.isdir(self.folder):
            return []
        names = sorted(n for n in os.listdir(self.folder) if _NAME.match(n))
        return [os.path.join(self.folder, n) for n in names]

    def _prune(self) -> None:
        files = self.list()
        for p in files[: max(0, len(files) - self.keep)]:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def latest(self) -> str | None:
        """Path of the newest complete checkpoint, or None."""
        pointer = os.path.join(self.folder, "latest")
        if os.path.exists(pointer):
            with open(pointer) as fh:
                name = fh.read().strip()
            path = os.path.join(self.folder, name)
            if os.path.exists(path):
                return path
        files = self.list()
        return files[-1] if files else None


def load_checkpoint(path: str, solver: str | None = None, problem: str | None = None) -> Checkpoint:
    """Read a checkpoint; refuse one of another solver, problem or an unknown format version."""
    if not os.path.exists(path):
        raise CheckpointError(f"--resume {path}: checkpoint not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CheckpointError(f"--resume {path}: not a readable HDF5 checkpoint ({exc})") from None
    with f:
        meta = {k: decode_attr(v) for k, v in f.attrs.items()}
        if meta.get("format") != CKPT_FORMAT:
            raise CheckpointError(f"--resume {path}: not an mpiopt checkpoint (format={meta.get('format')!r})")
        if int(meta.get("format_version", -1)) != CKPT_VERSION:
            raise CheckpointError(f"--resume {path}: checkpoint format version {meta.get('format_version')} "
                                  f"is not supported (this mpiopt reads version {CKPT_VERSION})")
        if solver is not None and meta.get("solver") != solver:
            raise CheckpointError(f"--resume {path}: checkpoint is from solver {meta.get('solver')!r}, not {solver!r}")
        if problem is not None and meta.get("problem") != problem:
            raise CheckpointError(f"--resume {path}: checkpoint is from problem {meta.get('problem')!r}, not {problem!r}")
        state = read_tree(f["state"])
        history = {k: f["history"][k][()] for k in f["history"]}
    return Checkpoint(path=path, meta=meta, state=state, history=history)
