"""Opening HDF5 files that mpiopt reads (checkpoints, results, HDF5 data inputs) safely.

:func:`open_hdf5` is the one way mpiopt opens an HDF5 file for reading: the file is opened without
following a planted symbolic link (where asked), and before anything is read its whole structure is
checked (:func:`verify_hdf5`): no external links, no soft links that leave the file's own objects,
no user-defined links, no datasets whose bytes live in another file (external storage) or that are
assembled from other files (virtual datasets), and no dataset or attribute that declares more data
than the file can hold or this node's memory allows. Each refusal is one line naming the file and
the object.
"""
from __future__ import annotations

import math
import os
import stat
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from .fs import describe_os_error

# the largest expansion of stored bytes a reader accepts: gzip (deflate) packs at most ~1032:1
MAX_EXPANSION = 1100
# declared sizes up to this many bytes are accepted whatever the file size (fill values, tiny files)
_SMALL = 64 << 20
_MAX_SOFT_DEPTH = 16


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n:.0f} bytes"


def _available_memory() -> int | None:
    from ..preflight import available_memory
    return available_memory()


def _declared_bytes(shape: tuple[int, ...] | None, dtype: np.dtype) -> int:
    if not shape:
        return int(dtype.itemsize)
    return int(math.prod(int(s) for s in shape)) * int(dtype.itemsize)


def verify_hdf5(f: h5py.File, label: str, error: type[Exception] = InputError,
                memory: int | None = None) -> None:
    """Check an open file's whole structure before anything in it is read; raise ``error`` with
    ``label: ...`` (one line) on the first thing mpiopt refuses to read: an external link, a soft
    link that does not point to an object of this file, a user-defined link, a dataset with
    external storage or a virtual dataset, a dataset or attribute declaring more bytes than the file
    can hold (``MAX_EXPANSION`` times its size) or, over all datasets, more than ``memory`` bytes
    (default: this node's available memory)."""
    try:
        file_size = os.fstat(f.id.get_vfd_handle()).st_size
    except Exception:  # noqa: BLE001 - a driver without a file descriptor: use the size HDF5 reports
        file_size = f.id.get_filesize()
    bound = max(_SMALL, file_size * MAX_EXPANSION)
    memory = _available_memory() if memory is None else memory
    total = 0
    seen: set[tuple[int, Any]] = set()

    def check_attrs(obj: Any, where: str) -> None:
        for name in obj.attrs:
            aid = obj.attrs.get_id(name)
            n = _declared_bytes(aid.shape, aid.dtype)
            if n > bound:
                raise error(f"{label}: attribute {name!r} of {where} declares {_gib(n)}, more than a file of "
                            f"{_gib(file_size)} can hold; not read")

    def check_dataset(ds: h5py.Dataset, where: str) -> None:
        nonlocal total
        plist = ds.id.get_create_plist()
        if plist.get_layout() == h5py.h5d.VIRTUAL:
            raise error(f"{label}: dataset {where} is a virtual dataset (its data lives in other files); "
                        f"mpiopt reads only data stored in the file itself")
        if plist.get_external_count() > 0:
            raise error(f"{label}: dataset {where} uses external storage (its bytes live in another file); "
                        f"mpiopt reads only data stored in the file itself")
        n = _declared_bytes(ds.shape, ds.dtype)
        if n > bound:
            raise error(f"{label}: dataset {where} declares {int(np.prod(ds.shape or (1,))):,} elements "
                        f"({_gib(n)}), more than a file of {_gib(file_size)} can hold; not read")
        total += n
        if memory is not None and total > memory:
            raise error(f"{label}: its datasets declare {_gib(total)} in all (at {where}), more than the "
                        f"{_gib(memory)} of memory available on this node; not read")

    def resolve_soft(target: str, where: str, depth: int = 0) -> None:
        """A soft link must name an object of this file, reached through hard (or such soft) links only."""
        if depth > _MAX_SOFT_DEPTH:
            raise error(f"{label}: soft link {where} goes round in a loop; not read")
        if not target.startswith("/"):
            parent = where.rsplit("/", 1)[0] or "/"
            target = parent.rstrip("/") + "/" + target
        node: Any = f
        path = ""
        for part in [p for p in target.split("/") if p and p != "."]:
            if not isinstance(node, h5py.Group):
                raise error(f"{label}: soft link {where} points to {target}, which is not in this file; not read")
            link = node.get(part, default=None, getlink=True)
            path += "/" + part
            if link is None:
                raise error(f"{label}: soft link {where} points to {target}, which is not in this file; not read")
            if isinstance(link, h5py.SoftLink):
                resolve_soft(link.path, path, depth + 1)
            elif not isinstance(link, h5py.HardLink):
                raise error(f"{label}: soft link {where} points through {path}, a link to another file; not read")
            node = node[part]

    def visit(group: h5py.Group, prefix: str) -> None:
        for name in group:
            where = f"{prefix}{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise error(f"{label}: {where} is an external link (to {link.filename}); mpiopt does not follow "
                            f"links to other files")
            if isinstance(link, h5py.SoftLink):
                resolve_soft(link.path, where)
                continue           # its target is checked where it is hard-linked
            if not isinstance(link, h5py.HardLink):
                raise error(f"{label}: {where} is a user-defined link; mpiopt does not follow it")
            obj = group[name]
            info = h5py.h5o.get_info(obj.id)
            key = (info.fileno, info.addr)
            if key in seen:
                continue
            seen.add(key)
            check_attrs(obj, where)
            if isinstance(obj, h5py.Group):
                visit(obj, where + "/")
            elif isinstance(obj, h5py.Dataset):
                check_dataset(obj, where)

    try:
        check_attrs(f, "/")
        visit(f, "/")
    except error:
        raise
    except Exception as exc:  # noqa: BLE001 - a structure HDF5 cannot walk is damage, one line
        raise error(f"{label}: damaged HDF5 structure ({type(exc).__name__}: {describe_os_error(exc)})") from None


def open_hdf5(path: str, label: str | None = None, *, error: type[Exception] = InputError,
              what: str = "file", follow_symlinks: bool = True, swmr: bool = False,
              memory: int | None = None) -> h5py.File:
    """Open ``path`` read-only and :func:`verify_hdf5` it; returns the open file (use ``with``).

    ``label`` starts every error line (default: ``path``); ``error`` is the exception raised (one
    line); ``what`` names the kind in "not a readable HDF5 <what>". With ``follow_symlinks=False``
    a path that is a symbolic link is refused, and the file HDF5 opened is checked to be the one
    found without following links. ``swmr``: open for reading while a writer appends (SWMR), falling
    back to a plain open for files written without it."""
    label = label or path
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise error(f"{label}: not found") from None
    except OSError as exc:
        raise error(f"{label}: cannot be read: {describe_os_error(exc)}") from None
    if stat.S_ISLNK(st.st_mode):
        if not follow_symlinks:
            raise error(f"{label}: is a symbolic link; mpiopt does not read a {what} through a link "
                        f"(give the file itself)")
        try:
            st = os.stat(path)
        except OSError as exc:
            raise error(f"{label}: cannot be read: {describe_os_error(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{label}: is a folder, not an HDF5 {what}")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{label}: is not a regular file")
    try:
        if swmr:
            try:
                f = h5py.File(path, "r", swmr=True, libver="latest")
            except OSError:
                f = h5py.File(path, "r")
        else:
            f = h5py.File(path, "r")
    except OSError as exc:
        raise error(f"{label}: not a readable HDF5 {what} ({describe_os_error(exc)})") from None
    try:
        try:
            opened = os.fstat(f.id.get_vfd_handle())
            same = (opened.st_dev, opened.st_ino) == (st.st_dev, st.st_ino)
        except Exception:  # noqa: BLE001 - no descriptor to compare: nothing more to check
            same = True
        if not same:
            raise error(f"{label}: the file changed while it was opened (replaced or linked elsewhere); not read")
        verify_hdf5(f, label, error, memory)
    except BaseException:
        f.close()
        raise
    return f
