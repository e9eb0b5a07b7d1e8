"""Owner locks: a file created exclusively that says which run holds a checkpoint folder or an output.

mpiopt does not rely on HDF5's file locking (often switched off on parallel file systems with
``HDF5_USE_FILE_LOCKING=FALSE``) nor on ``flock``/``fcntl``: a lock is a file created with
``O_CREAT | O_EXCL | O_NOFOLLOW``, which is atomic on local disks, NFS, Lustre and GPFS, and which
starts with an owner record (pid, host, Slurm job and step, start time) in its first
:data:`RECORD_SIZE` bytes. For an output the lock is the live result ``OUT.part`` itself (the
record sits in the HDF5 user block, which HDF5 leaves alone); for a checkpoint folder it is
``DIR/mpiopt.lock``.

A lock whose owner is gone is taken over with a note: same host and the pid no longer runs, or the
same Slurm job at a lower restart count (a requeued job). Any other holder makes the run refuse
with one line naming the folder or file and the owner.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import InputError
from ..procs import pid_alive
from .fs import create_exclusive, describe_os_error, file_mode

MAGIC = b"mpiopt-lock 1\n"
RECORD_SIZE = 512
FRESH_SECONDS = 60       # a lock file younger than this without an owner record is still being made
_HELD: set[tuple[int, int]] = set()      # (st_dev, st_ino) of the locks this process holds


def owner_record() -> dict[str, Any]:
    """This process as a lock owner."""
    env = os.environ
    return {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job_id": env.get("SLURM_JOB_ID", ""),
            "slurm_step_id": env.get("SLURM_STEP_ID", ""), "slurm_restart_count": env.get("SLURM_RESTART_COUNT", ""),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "started_unix": time.time()}


def encode_record(rec: dict[str, Any]) -> bytes:
    raw = MAGIC + json.dumps(rec, sort_keys=True).encode() + b"\n"
    if len(raw) > RECORD_SIZE:      # pragma: no cover - a host name of hundreds of characters
        raw = raw[: RECORD_SIZE - 1] + b"\n"
    return raw.ljust(RECORD_SIZE, b"\0")


def read_record(path: str) -> tuple[dict[str, Any] | None, os.stat_result | None]:
    """The owner record at the start of ``path`` (None when it has none) and the file's status;
    never follows a symbolic link (status of the link itself, no record)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    if not stat.S_ISREG(st.st_mode):
        return None, st
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None, st
    try:
        raw = os.pread(fd, RECORD_SIZE, 0)
        fst = os.fstat(fd)
    finally:
        os.close(fd)
    if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not raw.startswith(MAGIC):
        return None, st
    try:
        rec = json.loads(raw[len(MAGIC):].split(b"\n", 1)[0].decode())
    except (UnicodeDecodeError, ValueError):
        return None, st
    return (rec if isinstance(rec, dict) else None), st


def describe_owner(rec: dict[str, Any]) -> str:
    """``pid N on HOST, Slurm job J, started T``."""
    parts = [f"pid {rec.get('pid')} on {rec.get('host')}"]
    if rec.get("slurm_job_id"):
        step = f".{rec['slurm_step_id']}" if rec.get("slurm_step_id") else ""
        parts.append(f"Slurm job {rec['slurm_job_id']}{step}")
    parts.append(f"started {rec.get('started')}")
    return ", ".join(parts)


def is_stale(rec: dict[str, Any], me: dict[str, Any] | None = None) -> bool:
    """The owner of ``rec`` is gone: same host and its pid does not run (or is this process, which
    does not hold it), or the same Slurm job at a lower restart count (the job was requeued)."""
    me = me or owner_record()
    try:
        pid = int(rec.get("pid"))
    except (TypeError, ValueError):
        return False
    if rec.get("host") == me["host"]:
        return pid == me["pid"] or _gone(pid, rec.get("started_unix"))
    job = rec.get("slurm_job_id")
    if job and job == me["slurm_job_id"]:
        try:
            return int(rec.get("slurm_restart_count") or 0) < int(me["slurm_restart_count"] or 0)
        except ValueError:
            return False
    return False


def _proc_start(pid: int) -> tuple[str, float] | None:
    """State letter and start time (seconds since the epoch) of process ``pid`` from /proc; None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/stat", encoding="ascii") as fh:
            btime = next(float(ln.split()[1]) for ln in fh if ln.startswith("btime"))
        return fields[0], btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _gone(pid: int, started: Any, wait: float = 3.0) -> bool:
    """Process ``pid`` on this host no longer runs: it does not exist, is a zombie, or is a newer
    process that reused the pid (started after the lock was taken). A process that is being killed
    (an aborted job) is waited for up to ``wait`` seconds."""
    t_end = time.monotonic() + wait
    while True:
        if not pid_alive(pid):
            return True
        info = _proc_start(pid)
        if info is not None:
            state, t0 = info
            if state in "ZX":
                return True
            if isinstance(started, (int, float)) and t0 > float(started) + 2.0:
                return True
        if time.monotonic() >= t_end:
            return False
        time.sleep(0.1)


@dataclass
class OwnerLock:
    """A lock held by this process (see the module docstring). ``note``: a line to print (a stale
    lock that was taken over), or empty."""

    path: str
    dev: int
    ino: int
    note: str = ""

    def held(self) -> bool:
        """The lock file at :attr:`path` is still the one this process created."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (self.dev, self.ino)

    def forget(self) -> None:
        """Stop holding it without touching the file (it was renamed into place as a result)."""
        _HELD.discard((self.dev, self.ino))

    def release(self) -> None:
        """Remove the lock file if it is still ours (idempotent)."""
        if self.held():
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self.forget()


def acquire(path: str, what: str, create: Callable[[str], Any] | None = None) -> tuple[OwnerLock, Any]:
    """Take the lock ``path`` for ``what`` (e.g. ``--checkpoint-dir ck``). ``create(path)`` makes the
    file exclusively and returns a handle (default: an empty file is created); the owner record is
    then written into its first :data:`RECORD_SIZE` bytes. Returns the lock and ``create``'s handle.

    A stale lock is taken over (:attr:`OwnerLock.note` says so), and so is a name left at ``path``
    that is no lock (a symbolic link is removed, never followed). Raises
    :class:`~mpiopt.errors.InputError` (one line naming ``what`` and the owner) when another live run
    holds it, or when ``path`` is a folder."""
    note = ""
    for _ in range(3):
        try:
            handle = create(path) if create is not None else None
            if create is None:
                os.close(create_exclusive(path, file_mode()))
        except OSError as exc:
            if not (isinstance(exc, FileExistsError) or os.path.lexists(path)):
                raise InputError(f"{what}: cannot create {path}: {describe_os_error(exc)}") from None
            rec, st = read_record(path)
            if st is None:
                continue                       # removed meanwhile: try again
            if (st.st_dev, st.st_ino) in _HELD:
                raise InputError(f"{what}: in use by a run of this process that has not ended ({path})") from None
            if rec is None:
                if stat.S_ISDIR(st.st_mode):
                    raise InputError(f"{what}: {path} exists and is a folder; remove it") from None
                if stat.S_ISREG(st.st_mode) and time.time() - st.st_mtime < FRESH_SECONDS:
                    raise InputError(f"{what}: {path} is being created by another run; try again") from None
                kind = "a symbolic link, not followed" if stat.S_ISLNK(st.st_mode) else "with no owner record"
                why = f"replaced {path} ({kind}), left by an earlier run"
            elif not is_stale(rec):
                raise InputError(f"{what}: in use by another run ({describe_owner(rec)}); its lock is {path} "
                                 f"(remove it only if that run is gone)") from None
            else:
                why = f"took over {path} from a run that is gone ({describe_owner(rec)})"
            if _take_over(path, st):
                note = f"{what}: {why}"
            continue
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                st = os.fstat(fd)
                os.pwrite(fd, encode_record(owner_record()), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if handle is not None and hasattr(handle, "close"):
                handle.close()
            try:
                os.unlink(path)
            except OSError:
                pass
            raise InputError(f"{what}: cannot write {path}: {describe_os_error(exc)}") from None
        lock = OwnerLock(path, st.st_dev, st.st_ino, note)
        _HELD.add((st.st_dev, st.st_ino))
        return lock, handle
    raise InputError(f"{what}: {path} is being taken by another run at the same time; try again")


def _take_over(path: str, st: os.stat_result) -> bool:
    """Remove the stale lock ``path`` (status ``st``) unless another run replaced it meanwhile."""
    aside = f"{path}.stale-{os.getpid()}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    now = os.lstat(aside)
    if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
        os.unlink(aside)
        return True
    try:                     # another run took it over and created a new lock meanwhile: put it back
        os.link(aside, path)
    except OSError:
        pass
    os.unlink(aside)
    return False
