"""Checkpoints: ``ckpt-<iteration>.h5`` written atomically, a ``latest`` pointer, the last K kept."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from ..errors import CheckpointError, OutputError
from ..procs import pid_alive
from .fs import atomic_write_bytes, describe_os_error, fsync_dir, tmp_prefix as _tmp_prefix
from .safe import open_hdf5
from .tree import decode_attr, read_tree, write_tree

CKPT_FORMAT = "mpiopt-checkpoint"
CKPT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.h5$")
_TMP = re.compile(r"^\.tmp-(?P<host>[^.]+?)-(?P<pid>\d+)-.*$")
STALE_SECONDS = 24 * 3600     # temporary files older than this are removed whoever left them


def clean_stale_temporaries(folder: str) -> list[str]:
    """Remove temporary files that killed runs left in ``folder``: those of dead processes on this
    host, and any older than a day. Returns the removed names."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    here = _tmp_prefix().split("-")[1]
    now = time.time()
    for name in os.listdir(folder):
        m = _TMP.match(name)
        if not m:
            continue
        path = os.path.join(folder, name)
        try:
            old = now - os.path.getmtime(path) > STALE_SECONDS
            dead = m.group("host") == here and not pid_alive(int(m.group("pid")))
            if old or dead:
                os.unlink(path)
                removed.append(name)
        except OSError:
            pass
    return removed


def content_digest(f: h5py.File) -> str:
    """sha256 over every attribute (decoded) and every dataset's bytes of an open checkpoint, in a
    fixed order; the root attribute ``digest`` itself is left out."""
    h = hashlib.sha256()

    def visit(group: h5py.Group, prefix: str) -> None:
        for k in sorted(group.attrs):
            if prefix == "/" and k == "digest":
                continue
            h.update(f"{prefix}@{k}={decode_attr(group.attrs[k])!r};".encode())
        for k in sorted(group):
            item = group[k]
            if isinstance(item, h5py.Group):
                visit(item, f"{prefix}{k}/")
            else:
                arr = np.ascontiguousarray(item[()])
                h.update(f"{prefix}{k}:{arr.dtype.str}:{arr.shape};".encode())
                h.update(arr.tobytes() if arr.dtype.kind != "O" else repr(arr.tolist()).encode())
    visit(f, "/")
    return h.hexdigest()


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
        try:
            self.ensure_folder()
        except OSError as exc:
            raise OutputError(f"checkpoint folder {self.folder}: {describe_os_error(exc)}") from None
        final = os.path.join(self.folder, f"ckpt-{iteration:09d}.h5")
        # the file is built in memory and written in one atomic step: a full disk or a kill leaves
        # the previous checkpoints and the latest pointer as they were, and no partial file
        image = io.BytesIO()
        with h5py.File(image, "w") as f:
            f.attrs["format"] = CKPT_FORMAT
            f.attrs["format_version"] = CKPT_VERSION
            f.attrs["iteration"] = int(iteration)
            for k, v in meta.items():
                f.attrs[k] = v if isinstance(v, (str, int, float, np.integer, np.floating)) else "json:" + json.dumps(v)
            write_tree(f.create_group("state"), state)
            hg = f.create_group("history")
            for k, v in (history or {}).items():
                v = np.asarray(v)
                hg.create_dataset(k, data=v, fletcher32=True, chunks=True if v.size else None)
        with h5py.File(image, "r+") as f:
            f.attrs["digest"] = content_digest(f)
        atomic_write_bytes(final, image.getvalue())
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
        """Path of the checkpoint the ``latest`` pointer names; with no pointer, the newest checkpoint
        in the folder; None when there is none. A pointer that is not a text file naming an existing
        checkpoint of this folder raises :class:`~mpiopt.errors.CheckpointError`."""
        pointer = os.path.join(self.folder, "latest")
        files = self.list()
        if not os.path.lexists(pointer):
            return files[-1] if files else None
        hint = (f"; resume a checkpoint by path (--resume {files[-1]})" if files else
                "; delete it to start a new run")
        if not os.path.isfile(pointer):
            raise CheckpointError(f"--resume latest: {pointer} is not a file{hint}")
        try:
            with open(pointer, "rb") as fh:
                raw = fh.read(4096)
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise CheckpointError(f"--resume latest: {pointer} is not a text file{hint}") from None
        except OSError as exc:
            raise CheckpointError(f"--resume latest: {pointer}: {describe_os_error(exc)}") from None
        if not name:
            raise CheckpointError(f"--resume latest: {pointer} is empty{hint}")
        if not _NAME.match(name):
            raise CheckpointError(f"--resume latest: {pointer} names {name[:80]!r}, not a checkpoint file{hint}")
        path = os.path.join(self.folder, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"--resume latest: {pointer} names {name}, which does not exist{hint}")
        return path


def load_checkpoint(path: str, solver: str | None = None, problem: str | None = None) -> Checkpoint:
    """Read a checkpoint; refuse one of another solver, problem or an unknown format version, and
    one whose content does not match its digest (corrupted)."""
    label = f"--resume {path}"
    if not os.path.lexists(path):
        raise CheckpointError(f"{label}: checkpoint not found")
    if os.path.isdir(path) and not os.path.islink(path):
        raise CheckpointError(f"{label}: is a folder; give a checkpoint file or use --resume latest")
    f = open_hdf5(path, label, error=CheckpointError, what="checkpoint", follow_symlinks=False)
    try:
        with f:
            meta = {k: decode_attr(v) for k, v in f.attrs.items()}
            if meta.get("format") != CKPT_FORMAT:
                raise CheckpointError(f"--resume {path}: not an mpiopt checkpoint (format={meta.get('format')!r})")
            if int(meta.get("format_version", -1)) != CKPT_VERSION:
                raise CheckpointError(f"--resume {path}: checkpoint format version {meta.get('format_version')} "
                                      f"is not supported (this mpiopt reads version {CKPT_VERSION})")
            if "digest" in meta and content_digest(f) != meta["digest"]:
                raise CheckpointError(f"--resume {path}: checkpoint is corrupted (content does not match its digest)")
            if solver is not None and meta.get("solver") != solver:
                raise CheckpointError(f"--resume {path}: checkpoint is from solver {meta.get('solver')!r}, not {solver!r}")
            if problem is not None and meta.get("problem") != problem:
                raise CheckpointError(f"--resume {path}: checkpoint is from problem {meta.get('problem')!r}, not {problem!r}")
            state = read_tree(f["state"])
            history = {k: f["history"][k][()] for k in f["history"]}
            int(meta["iteration"])
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any damage inside the file is one line naming it
        raise CheckpointError(f"--resume {path}: checkpoint is damaged ({type(exc).__name__}: "
                              f"{describe_os_error(exc)})") from None
    return Checkpoint(path=path, meta=meta, state=state, history=history)
