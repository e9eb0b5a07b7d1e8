"""Pre-flight checks of a run, before any heavy work: every path the run reads or writes, the
memory its problem needs, and that the run never writes over one of its own inputs.

Each check raises :class:`~mpiopt.errors.InputError` with one line naming the key or file; the run
builder calls them collectively (one message, exit 2, nothing written).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import stat
from typing import IO, Any, Iterable

from .errors import InputError


# -- the files a run reads: regular files only, checked with stat before any open -------------------
def _named(path: str, key: str | None) -> str:
    return f"{key} {path}" if key else str(path)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _refuse_special(path: str, key: str | None, mode: int) -> None:
    raise InputError(f"{_named(path, key)}: is a {_kind(mode)}, not a regular file; give a regular file "
                     "(reading a pipe or device may block or never end)")


def check_input_file(path: str, key: str | None = None, *, folder_ok: bool = False,
                     missing_ok: bool = False) -> os.stat_result | None:
    """``path`` names a regular file (or, with ``folder_ok``, a folder), by ``stat`` alone: it is never
    opened, so a FIFO, a device or a socket is refused without blocking. ``missing_ok``: a missing
    path returns None (the reader names it). Errors are one line naming ``key`` and ``path``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise InputError(f"{_named(path, key)}: not found") from None
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"{_named(path, key)}: cannot be read ({why})") from None
    if stat.S_ISDIR(st.st_mode):
        if folder_ok:
            return st
        raise InputError(f"{_named(path, key)}: is a folder, expected a file")
    if not stat.S_ISREG(st.st_mode):
        _refuse_special(path, key, st.st_mode)
    return st


def open_input(path: str, key: str | None = None) -> IO[bytes]:
    """Open the regular file ``path`` for binary reading (after :func:`check_input_file`). The open
    itself does not block (``O_NONBLOCK``) and the opened file is checked again, so a FIFO swapped in
    between is refused too."""
    check_input_file(path, key)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(f"{_named(path, key)}: cannot be read ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        _refuse_special(path, key, mode)
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_input(path: str, key: str | None, limit: int) -> bytes:
    """The bytes of the regular file ``path``, refused unread when it holds more than ``limit`` bytes."""
    st = check_input_file(path, key)
    if st is not None and st.st_size > limit:
        raise InputError(f"{_named(path, key)}: {st.st_size} bytes, more than the {limit >> 20} MiB a file of "
                         "this kind may have")
    with open_input(path, key) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{_named(path, key)}: more than the {limit >> 20} MiB a file of this kind may have")
    return data


def named_paths(cfg: dict[str, dict[str, Any]], sections: Iterable[str] = ("problem", "solver")) -> dict[str, str]:
    """``{"problem.path": "data/a9a", ...}``: every setting of ``sections`` whose value names an existing
    file system entry (without following it further than ``lstat``)."""
    out: dict[str, str] = {}
    for sec in sections:
        for k, v in cfg.get(sec, {}).items():
            if isinstance(v, str) and v and "\x00" not in v and os.path.lexists(v):
                out[f"{sec}.{k}"] = v
    return out


def check_inputs(cfg: dict[str, dict[str, Any]]) -> None:
    """Every file the run's settings name (solver.*, problem.*, --resume, the ``latest`` pointer) that
    exists is a regular file or a folder (stat only; a missing one is named by its reader)."""
    for key, path in named_paths(cfg).items():
        check_input_file(path, key, folder_ok=True, missing_ok=True)
    run = cfg["run"]
    resume = run.get("resume")
    if resume and resume != "latest":
        check_input_file(resume, "--resume", folder_ok=True, missing_ok=True)
    elif resume == "latest" and run.get("checkpoint_dir"):
        check_input_file(os.path.join(run["checkpoint_dir"], "latest"), "--resume latest", folder_ok=True,
                         missing_ok=True)


# -- identities of the data files (size, mtime, sampled content hash) -------------------------------
_SAMPLE = 1 << 14          # bytes hashed at each of the sampled places of a file
_SAMPLES = 16              # places sampled between its head and its tail
_HEAD = 1 << 18            # bytes hashed at the start and at the end
_FOLDER_FILES = 64         # files of a data folder (two levels) taken into its identity


def file_identity(path: str) -> dict[str, Any]:
    """What identifies a data file's content cheaply: its size, mtime and a SHA-256 of its first and last
    256 KiB and 16 blocks of 16 KiB between them (the whole file when smaller). A folder: the identities
    of its first 64 regular files (two levels; unreadable ones left out)."""
    st = check_input_file(path, folder_ok=True)
    assert st is not None
    if stat.S_ISDIR(st.st_mode):
        files: dict[str, Any] = {}
        for root, dirs, names in os.walk(path):
            depth = os.path.relpath(root, path).count(os.sep) + (root != path)
            if depth >= 1:
                dirs[:] = []
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(root, name)
                if len(files) < _FOLDER_FILES and os.path.isfile(full) and not name.startswith("."):
                    try:
                        files[os.path.relpath(full, path)] = file_identity(full)
                    except (InputError, OSError):
                        pass
        return {"files": files}
    h = hashlib.sha256()
    size = st.st_size
    with open_input(path) as fh:
        if size <= 2 * _HEAD + _SAMPLES * _SAMPLE:
            while True:
                block = fh.read(1 << 20)
                if not block:
                    break
                h.update(block)
        else:
            offsets = [0] + [_HEAD + (size - 2 * _HEAD) * k // (_SAMPLES + 1) for k in range(1, _SAMPLES + 1)]
            for off in offsets:
                fh.seek(off)
                h.update(fh.read(_HEAD if off == 0 else _SAMPLE))
            fh.seek(size - _HEAD)
            h.update(fh.read(_HEAD))
    return {"size": size, "mtime_ns": st.st_mtime_ns, "sha256_sampled": h.hexdigest()}


def input_identities(cfg: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{"problem.path": identity, ...}`` of every existing file or folder the problem's and the
    solver's settings name (one that cannot be read is left out: its reader names it)."""
    out: dict[str, Any] = {}
    for key, path in named_paths(cfg).items():
        try:
            out[key] = {"path": path, **file_identity(path)}
        except (InputError, OSError):
            pass
    return out


def _identity_change(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str | None:
    if "files" in old or "files" in new:
        of, nf = old.get("files", {}), new.get("files", {})
        for name in sorted(set(of) | set(nf)):
            if name not in nf:
                return f"{prefix}{name} was removed"
            if name not in of:
                return f"{prefix}{name} was added"
            why = _identity_change(of[name], nf[name], f"{prefix}{name}: ")
            if why:
                return why
        return None
    if old.get("size") != new.get("size"):
        return f"{prefix}size {old.get('size')} -> {new.get('size')} bytes"
    if old.get("sha256_sampled") != new.get("sha256_sampled"):
        return f"{prefix}content differs"
    if old.get("mtime_ns") != new.get("mtime_ns"):
        return f"{prefix}modified since (mtime)"
    return None


def check_inputs_unchanged(recorded: str | dict | None, cfg: dict[str, dict[str, Any]], where: str) -> None:
    """Refuse when a data file recorded by a checkpoint (``recorded``: its identities, JSON or dict)
    differs now at the same setting (size, mtime or sampled content)."""
    if not recorded:
        return
    old = json.loads(recorded) if isinstance(recorded, str) else recorded
    for key, ident in old.items():
        sec, _, name = key.partition(".")
        path = cfg.get(sec, {}).get(name)
        if not isinstance(path, str) or not path or not isinstance(ident, dict):
            continue
        if not os.path.exists(path):
            raise InputError(f"{where}: {key} {path} was read by the checkpointed run and is gone")
        why = _identity_change(ident, file_identity(path))
        if why:
            raise InputError(f"{where}: {key} {path} changed since the checkpoint ({why}); resume with the data "
                             "it was written from, or start a new run without --resume")


def _folder(path: str) -> str:
    return os.path.dirname(os.path.abspath(path)) or "."


def check_output_file(path: str, key: str = "--out") -> None:
    """``path`` can be written as a file: a file name (not empty, not ending in a separator), not a
    folder, its folder exists and is writable."""
    if not path or not str(path).strip():
        raise InputError(f"{key}: empty file name; give a result file, e.g. {key} result.h5")
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise InputError(f"{key} {path}: ends with a path separator; give a file name, "
                         f"e.g. {os.path.join(path, 'result.h5')}")
    if os.path.isdir(path):
        raise InputError(f"{key} {path}: is a folder; give a file name, e.g. {os.path.join(path, 'result.h5')}")
    folder = _folder(path)
    if not os.path.isdir(folder):
        raise InputError(f"{key} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{key} {path}: folder {folder} is not writable")
    if os.path.exists(path) and not os.path.isfile(path):
        raise InputError(f"{key} {path}: exists and is not a regular file")


def check_checkpoint_dir(path: str, key: str = "--checkpoint-dir") -> None:
    """``path`` is a writable folder, or can be created as one."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise InputError(f"{key} {path}: exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{key} {path}: folder is not writable")
        return
    parent = os.path.dirname(os.path.abspath(path.rstrip(os.sep))) or "."
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{key} {path}: cannot be created ({parent} is not a writable folder)")


def input_paths(cfg: dict[str, dict[str, Any]], config_file: str | None = None,
                plugins: Iterable[str] = ()) -> dict[str, str]:
    """The files this run reads, by where they were given: the config file, the checkpoint to resume,
    plug-in files and every existing path among the problem's and the solver's settings."""
    out: dict[str, str] = {}
    if config_file:
        out["--config"] = config_file
    resume = cfg["run"].get("resume")
    if resume and resume != "latest":
        out["--resume"] = resume
    for p in plugins:
        if os.path.isfile(p):
            out["--plugin"] = p
    out.update(named_paths(cfg))
    return out


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_an_input(out: str, inputs: dict[str, str], key: str = "--out") -> None:
    """The result file is none of the run's input files."""
    for where, path in inputs.items():
        if os.path.isfile(path) and os.path.exists(out) and _same(out, path):
            raise InputError(f"{key} {out}: is an input of this run ({where}); choose another result file")


def check_checkpoint_dir_not_input(ckpt_dir: str | None, out: str | None) -> None:
    """The result file is not one of the checkpoint folder's own files."""
    if not ckpt_dir or not out or not os.path.isdir(ckpt_dir):
        return
    if _same(_folder(out), ckpt_dir):
        name = os.path.basename(out)
        from .io.checkpoint import LOCK_NAME
        if name in ("latest", LOCK_NAME) or (name.startswith("ckpt-") and name.endswith(".h5")):
            raise InputError(f"--out {out}: would overwrite a checkpoint file of --checkpoint-dir {ckpt_dir}")


def available_memory() -> int | None:
    """Bytes of memory available on this node (MemAvailable, or the cgroup limit if lower)."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as fh:
                text = fh.read().strip()
            if text.isdigit() and avail is not None:
                avail = min(avail, int(text))
        except OSError:
            pass
    return avail


def _gb(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GB" if n >= 2 ** 27 else f"{n / 2 ** 20:.0f} MB"


def check_memory(estimate: tuple[float, str] | None, ranks_on_node: int, available: int | None) -> None:
    """Refuse a run whose problem needs more memory than this node has available."""
    if estimate is None or available is None:
        return
    per_rank, what = estimate
    need = per_rank * ranks_on_node
    if need > available:
        raise InputError(f"{what}: needs about {_gb(per_rank)} per rank ({_gb(need)} for the {ranks_on_node} "
                         f"rank(s) on this node), this node has {_gb(available)} available")


def check_requirements(*classes: type) -> None:
    """Every optional package a solver or problem class declares in ``requires`` (pairs of module
    and pip extra) is importable; else one line naming the extra to install."""
    for cls in classes:
        for module, extra in getattr(cls, "requires", ()):
            if importlib.util.find_spec(module) is None:
                kind = "solver" if hasattr(cls, "problem_kind") else "problem"
                raise InputError(f"{kind} {cls.name!r} needs the Python package {module!r}, which is not installed: "
                                 f"pip install 'mpiopt[{extra}]' (or your site's {module} build)")
