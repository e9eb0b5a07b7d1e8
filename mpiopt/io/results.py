"""Result files: ``/history`` appended live (SWMR), ``/solution`` and root attributes at the end."""
from __future__ import annotations

import errno
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from ..errors import InputError, OutputError
from .fs import describe_os_error, fsync_dir
from .lock import RECORD_SIZE, acquire
from .safe import open_hdf5
from .tree import dataset_kwargs, decode_attr, read_tree, write_tree

FORMAT = "mpiopt-result"
FORMAT_VERSION = 1


class ResultWriter:
    """Writes one result file from one rank.

    The file is created with the run's attributes; history columns are created at the first
    :meth:`flush` (keys of the rows seen so far plus declared series), then SWMR mode starts so
    that ``h5py.File(path, "r", swmr=True)`` readers see the history grow. :meth:`close` ends SWMR,
    reopens the file and writes the final attributes and ``/solution``.
    """

    def __init__(self, path: str, attrs: dict[str, Any]):
        self.path = path
        self.part = path + ".part"     # the live file; renamed onto ``path`` when the run ends
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise InputError(f"--out {path}: folder {folder} does not exist")
        # OUT.part is created exclusively (never through a planted name) and is the output's lock:
        # its HDF5 user block holds the owner record, so a second run writing OUT is refused
        self.lock, self._file = acquire(self.part, f"--out {path}", create=_create_live)
        if _identity(self._file) != (self.lock.dev, self.lock.ino):
            self._file.close()
            self.lock.forget()
            raise InputError(f"--out {path}: {self.part} was replaced while it was being created; not written")
        self.note = self.lock.note
        for k, v in attrs.items():
            _set_attr(self._file.attrs, k, v)
        self._file.create_group("history")
        self._rows: list[dict[str, float]] = []
        self._columns: list[str] | None = None
        self._series: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._series_rows: dict[str, list[np.ndarray]] = {}
        self._swmr = False
        self._n = 0

    # -- declarations before the first flush --------------------------------------------
    def declare_series(self, name: str, tail_shape: tuple[int, ...], dtype: Any = np.float32) -> None:
        """A growing dataset ``/<name>`` of shape (N, *tail_shape) (e.g. model snapshots)."""
        if self._swmr:
            raise RuntimeError("declare_series must come before the first flush")
        self._series[name] = (tuple(tail_shape), np.dtype(dtype))
        self._series_rows[name] = []

    def preload_history(self, history: dict[str, np.ndarray]) -> None:
        """Start from the history of a checkpoint (resumed run)."""
        if not history:
            return
        cols = list(history)
        n = len(next(iter(history.values())))
        for i in range(n):
            self._rows.append({c: float(history[c][i]) for c in cols})

    # -- appending ---------------------------------------------------------------------
    def append(self, row: dict[str, float]) -> None:
        self._rows.append(row)

    def append_series(self, name: str, value: np.ndarray) -> None:
        self._series_rows[name].append(np.asarray(value, dtype=self._series[name][1]))

    def _start(self) -> None:
        cols: list[str] = []
        for row in self._rows:
            for k in row:
                if k not in cols:
                    cols.append(k)
        for must in ("time", "iteration"):
            if must in cols:
                cols.remove(must)
            cols.insert(0, must)
        self._columns = cols
        h = self._file["history"]
        for c in cols:
            dt = np.int64 if c == "iteration" else np.float64
            h.create_dataset(c, shape=(0,), maxshape=(None,), dtype=dt, chunks=(1024,))
        for name, (tail, dt) in self._series.items():
            chunk_rows = max(1, min(64, (1 << 20) // max(1, int(np.prod(tail)) * dt.itemsize)))
            self._file.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dt,
                                      chunks=(chunk_rows, *tail))
        self._file.swmr_mode = True
        self._swmr = True

    def flush(self) -> None:
        """Write buffered rows; readers with SWMR see them after ``refresh()``."""
        try:
            self._flush()
        except (OSError, RuntimeError) as exc:     # h5py reports some failed writes as RuntimeError
            self.abandon()
            raise OutputError(f"{self.part}: cannot write the result file: {describe_os_error(exc)}; "
                              f"the previous {self.path} is unchanged") from None

    def _flush(self) -> None:
        if self._columns is None:
            if not self._rows and not any(self._series_rows.values()):
                return
            self._start()
        assert self._columns is not None
        if self._rows:
            extra = {k for r in self._rows for k in r} - set(self._columns)
            if extra:
                raise RuntimeError(f"history columns appeared after the first flush: {sorted(extra)}")
            m = len(self._rows)
            h = self._file["history"]
            for c in self._columns:
                col = np.array([r.get(c, math.nan) for r in self._rows],
                               dtype=np.int64 if c == "iteration" else np.float64)
                ds = h[c]
                ds.resize((self._n + m,))
                ds[self._n:] = col
            self._n += m
            self._rows.clear()
        for name, rows in self._series_rows.items():
            if rows:
                ds = self._file[name]
                n0 = ds.shape[0]
                ds.resize((n0 + len(rows), *ds.shape[1:]))
                ds[n0:] = np.stack(rows)
                rows.clear()
        self._file.flush()

    def close(self, attrs: dict[str, Any], solution: dict[str, np.ndarray] | None = None,
              extra: dict[str, Any] | None = None) -> None:
        """Flush, leave SWMR mode, write final attributes, ``/solution`` and optional groups, then
        rename the ``.part`` file onto the result path (the previous result survives until then)."""
        self.flush()
        try:
            self._file.close()
            self._check_ours()
            self._finish(attrs, solution, extra)
            fd = os.open(self.part, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (self.lock.dev, self.lock.ino):
                    raise OSError(errno.ESTALE, "the file was replaced during the run")
                os.fsync(fd)
            finally:
                os.close(fd)
            self._check_ours()
            os.replace(self.part, self.path)
            self.lock.forget()
            fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        except (OSError, RuntimeError) as exc:
            self.abandon()
            raise OutputError(f"{self.part}: cannot write the result file: {describe_os_error(exc)}; "
                              f"the previous {self.path} is unchanged") from None

    def _check_ours(self) -> None:
        if not self.lock.held():
            raise OSError(errno.ESTALE, "the file was replaced or removed during the run")

    def _finish(self, attrs: dict[str, Any], solution: dict[str, np.ndarray] | None,
                extra: dict[str, Any] | None) -> None:
        with h5py.File(self.part, "r+") as f:
            if _identity(f) != (self.lock.dev, self.lock.ino):
                raise OSError(errno.ESTALE, "the file was replaced during the run")
            for k, v in attrs.items():
                _set_attr(f.attrs, k, v)
            if solution:
                g = f.require_group("solution")
                for k, v in solution.items():
                    v = np.asarray(v)
                    g.create_dataset(k, data=v, **dataset_kwargs(v))
            if extra:
                for k, v in extra.items():
                    if isinstance(v, dict):
                        write_tree(f.require_group(k), v)
                    else:
                        v = np.asarray(v)
                        f.create_dataset(k, data=v, **dataset_kwargs(v))

    def abandon(self) -> None:
        """Close and delete the ``.part`` file of a run that failed (the previous result stays); a
        file that is no longer the one this writer created is left alone."""
        try:
            self._file.close()
        except Exception:  # noqa: BLE001
            pass
        self.lock.release()


def _create_live(path: str) -> h5py.File:
    """The live result file, created exclusively (``O_EXCL``: an existing name, a symbolic link
    included, is never opened through), with a user block for the owner record."""
    return h5py.File(path, "x", libver="latest", userblock_size=RECORD_SIZE)


def _identity(f: h5py.File) -> tuple[int, int]:
    st = os.fstat(f.id.get_vfd_handle())
    return st.st_dev, st.st_ino


def _set_attr(attrs: h5py.AttributeManager, key: str, value: Any) -> None:
    if value is None:
        attrs[key] = "json:null"
    elif isinstance(value, (dict, list, tuple)):
        attrs[key] = json.dumps(value) if key == "config" else "json:" + json.dumps(value)
    elif isinstance(value, float) and not math.isfinite(value):
        attrs[key] = value
    else:
        attrs[key] = value


@dataclass
class Result:
    """A result file read back: ``attrs`` (dict), ``history`` (column name -> 1-D array),
    ``solution`` (name -> array), ``config`` (resolved config dict), ``path``."""

    path: str
    attrs: dict[str, Any]
    history: dict[str, np.ndarray]
    solution: dict[str, np.ndarray]
    config: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.attrs[key]

    def table(self) -> str:
        """The history as aligned text columns."""
        cols = list(self.history)
        if not cols:
            return "(no history)"
        width = {c: max(len(c), 12) for c in cols}
        lines = ["  ".join(c.rjust(width[c]) for c in cols)]
        n = len(self.history[cols[0]])
        for i in range(n):
            lines.append("  ".join(f"{self.history[c][i]:{width[c]}.6g}" for c in cols))
        return "\n".join(lines)


def load_result(path: str, swmr: bool = True) -> Result:
    """Read a result file (also one still being written, through SWMR). A run writes ``PATH.part``
    and renames it onto ``PATH`` when it ends: while no ``PATH`` exists yet, the live ``PATH.part``
    is read."""
    if not os.path.lexists(path) and os.path.lexists(path + ".part"):
        path = path + ".part"
    if not os.path.lexists(path):
        raise InputError(f"result file {path}: not found")
    f = open_hdf5(path, path, what="result file", swmr=swmr)
    with f:
        attrs = {k: decode_attr(v) for k, v in f.attrs.items()}
        if attrs.get("format") != FORMAT:
            raise InputError(f"{path}: not an mpiopt result file (format={attrs.get('format')!r})")
        if int(attrs.get("format_version", -1)) > FORMAT_VERSION:
            raise InputError(f"{path}: result format version {attrs.get('format_version')} is newer than this mpiopt")
        history: dict[str, np.ndarray] = {}
        if "history" in f:
            hist = f["history"]
            lens = []
            for k in hist:
                ds = hist[k]
                if swmr:
                    try:
                        ds.refresh()
                    except Exception:  # noqa: BLE001
                        pass
                history[k] = ds[()]
                lens.append(len(history[k]))
            if lens and len(set(lens)) > 1:  # live file caught mid-append: trim to common length
                n = min(lens)
                history = {k: v[:n] for k, v in history.items()}
            order = [c for c in ("iteration", "time") if c in history]
            history = {**{c: history[c] for c in order}, **{k: v for k, v in history.items() if k not in order}}
        solution = {k: f["solution"][k][()] for k in f["solution"]} if "solution" in f else {}
        groups = {k: (read_tree(f[k]) if isinstance(f[k], h5py.Group) else f[k][()])
                  for k in f if k not in ("history", "solution")}
    cfg = attrs.get("config")
    config = json.loads(cfg) if isinstance(cfg, str) else (cfg or {})
    return Result(path=path, attrs=attrs, history=history, solution=solution, config=config, groups=groups)
