"""File-system primitives of the HDF5 layer: errno text, exclusive creation, atomic replacement.

Every file mpiopt writes is first created exclusively under a fresh name in the target folder
(``O_CREAT | O_EXCL | O_NOFOLLOW``: a name planted there, a symbolic link included, is never opened
through) and then renamed into place, which replaces a link rather than writing through it. New
files get the permissions the process's umask gives (``0666 & ~umask``), like every other tool.
"""
from __future__ import annotations

import os
import re
import socket
import tempfile

from ..errors import OutputError


def describe_os_error(exc: BaseException) -> str:
    """``strerror (errno N)`` of an OSError, also when HDF5 wrapped it in its message."""
    if isinstance(exc, OSError) and exc.errno:
        return f"{exc.strerror or os.strerror(exc.errno)} (errno {exc.errno})"
    text = str(exc)
    m = re.search(r"errno = (\d+)", text)
    if m:
        n = int(m.group(1))
        return f"{os.strerror(n)} (errno {n})"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def umask() -> int:
    """The process's umask (read without changing it where /proc tells it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)     # pragma: no cover - systems without /proc
    os.umask(old)
    return old


def file_mode() -> int:
    """Permissions of a new file: ``0666`` less the umask (the same rule for results and checkpoints)."""
    return 0o666 & ~umask()


def tmp_prefix() -> str:
    """Prefix of this process's temporary files: ``.tmp-<host>-<pid>-`` (so stale ones can be found)."""
    host = socket.gethostname().split(".")[0].replace("-", "_") or "host"
    return f".tmp-{host}-{os.getpid()}-"


def fsync_dir(folder: str) -> None:
    """fsync a folder (so a rename in it survives a crash); silently skipped where not possible."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def create_exclusive(path: str, mode: int | None = None) -> int:
    """Create ``path`` as a new file (``O_CREAT | O_EXCL | O_NOFOLLOW``) and return its descriptor;
    an existing name, also a symbolic link, raises FileExistsError. ``mode``: default the umask's."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                 0o666 if mode is None else mode)
    return fd


def temporary_in(folder: str, suffix: str = ".part") -> tuple[int, str]:
    """A fresh temporary file in ``folder`` (exclusive, never a planted name), with the umask's
    permissions: ``(fd, path)``."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=tmp_prefix(), suffix=suffix)
    try:
        os.fchmod(fd, file_mode())
    except OSError:  # pragma: no cover - a file system without modes
        pass
    return fd, tmp


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix
    (fresh temporary file in the same folder, fsync, rename, fsync of the folder); a symbolic link
    at ``path`` is replaced, never written through. On failure nothing is left behind and
    :class:`~mpiopt.errors.OutputError` names the file and the errno."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = temporary_in(folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {describe_os_error(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
    except BaseException as exc:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: cannot write: {describe_os_error(exc)}") from None
        raise
