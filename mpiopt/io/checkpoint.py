"""Checkpoints: ``ckpt-<iteration>.h5`` written atomically, a ``latest`` pointer, the last K kept."""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from ..errors import CheckpointError, InputError, OutputError
from ..procs import pid_alive
from .fs import atomic_write_bytes, describe_os_error, fsync_dir, tmp_prefix as _tmp_prefix
from .lock import OwnerLock, acquire
from .safe import open_hdf5
from .tree import decode_attr, read_tree, write_tree

CKPT_FORMAT = "mpiopt-checkpoint"
CKPT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.h5$")
_TMP = re.compile(r"^\.tmp-(?P<host>[^.]+?)-(?P<pid>\d+)-.*$")
LOCK_NAME = "mpiopt.lock"    # the folder's owner lock while a run uses it
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


KEY_ENV = "MPIOPT_CHECKPOINT_KEY"     # secret of the job: checkpoints are signed with HMAC-SHA256
_SHA = "sha256:"
_HMAC = "hmac-sha256:"


def checkpoint_key() -> bytes | None:
    """The signing key from the environment (``MPIOPT_CHECKPOINT_KEY``), or None when unset/empty."""
    key = os.environ.get(KEY_ENV, "")
    return key.encode() if key else None


def content_digest(f: h5py.File, key: bytes | None = None) -> str:
    """SHA-256 (with ``key``: HMAC-SHA256) over every attribute (decoded) and every dataset's bytes of
    an open checkpoint, in a fixed order; the root attribute ``digest`` itself is left out. Returns
    the hex digest."""
    h = hmac.new(key, digestmod=hashlib.sha256) if key else hashlib.sha256()

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


def sign(f: h5py.File, key: bytes | None = None) -> str:
    """The ``digest`` attribute for ``f``: ``hmac-sha256:<hex>`` with a key, else ``sha256:<hex>``."""
    return (_HMAC if key else _SHA) + content_digest(f, key)


def check_digest(f: h5py.File, label: str, key: bytes | None = None) -> None:
    """Refuse (:class:`~mpiopt.errors.CheckpointError`) a checkpoint without a digest, with one that
    does not match its content, signed while no key is set, or unsigned while a key is set."""
    raw = f.attrs.get("digest")
    if raw is None:
        raise CheckpointError(f"{label}: checkpoint has no digest (every mpiopt checkpoint has one); not loaded")
    value = decode_attr(raw)
    if not isinstance(value, str):
        raise CheckpointError(f"{label}: checkpoint is corrupted (its digest is not text)")
    if value.startswith(_HMAC):
        if key is None:
            raise CheckpointError(f"{label}: checkpoint is signed (HMAC-SHA256); set {KEY_ENV} to the key of the "
                                  f"run that wrote it to resume it")
        expected, given = content_digest(f, key), value[len(_HMAC):]
        what = "does not match its signature (edited, or another key)"
    else:
        if key is not None:
            raise CheckpointError(f"{label}: checkpoint is not signed, but {KEY_ENV} is set: only checkpoints "
                                  f"signed with that key are resumed")
        expected, given = content_digest(f), value[len(_SHA):] if value.startswith(_SHA) else value
        what = "content does not match its digest"
    if not hmac.compare_digest(expected, given):
        raise CheckpointError(f"{label}: checkpoint is corrupted ({what})")


def _rmdir_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError:
        pass


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
        self._lock: OwnerLock | None = None
        self._created = False

    def ensure_folder(self) -> None:
        os.makedirs(self.folder, exist_ok=True)

    def acquire_lock(self) -> OwnerLock:
        """Hold the folder for this run (``DIR/mpiopt.lock``, see :mod:`mpiopt.io.lock`): a folder another
        live run holds raises :class:`~mpiopt.errors.InputError` naming it and its owner. Creates the
        folder if needed (removed again by :meth:`release_lock` if it stayed empty)."""
        created = not os.path.isdir(self.folder)
        try:
            self.ensure_folder()
        except OSError as exc:
            raise InputError(f"--checkpoint-dir {self.folder}: cannot be created: {describe_os_error(exc)}") from None
        try:
            self._lock, _ = acquire(os.path.join(self.folder, LOCK_NAME), f"--checkpoint-dir {self.folder}")
        except BaseException:
            if created:
                _rmdir_if_empty(self.folder)
            raise
        self._created = created
        return self._lock

    def release_lock(self) -> None:
        """Give the folder back (idempotent); a folder this run created and left empty is removed."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()
            if self._created:
                _rmdir_if_empty(self.folder)

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
            f.attrs["digest"] = sign(f, checkpoint_key())
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
        try:
            st = os.lstat(pointer)
        except OSError as exc:
            raise CheckpointError(f"--resume latest: {pointer}: {describe_os_error(exc)}") from None
        if stat.S_ISLNK(st.st_mode):
            raise CheckpointError(f"--resume latest: {pointer} is a symbolic link, not the pointer mpiopt writes; "
                                  f"not followed{hint}")
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"--resume latest: {pointer} is not a file{hint}")
        try:
            fd = os.open(pointer, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as fh:
                raw = fh.read(4096)
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise CheckpointError(f"--resume latest: {pointer} is not a text file{hint}") from None
        except OSError as exc:
            raise CheckpointError(f"--resume latest: {pointer}: {describe_os_error(exc)}") from None
        if not name:
            raise CheckpointError(f"--resume latest: {pointer} is empty{hint}")
        if not _NAME.match(name):
            raise CheckpointError(f"--resume latest: {pointer} names something that is not a checkpoint file of this "
                                  f"folder (its content is not shown){hint}")
        path = os.path.join(self.folder, name)
        if not os.path.lexists(path):
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
            check_digest(f, label, checkpoint_key())
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
