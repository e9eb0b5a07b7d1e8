"""Pre-flight checks of a run, before any heavy work: every path the run reads or writes, the
memory its problem needs, and that the run never writes over one of its own inputs.

Each check raises :class:`~mpiopt.errors.InputError` with one line naming the key or file; the run
builder calls them collectively (one message, exit 2, nothing written).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Iterable

from .errors import InputError


def _folder(path: str) -> str:
    return os.path.dirname(os.path.abspath(path)) or "."


def check_output_file(path: str, key: str = "--out") -> None:
    """``path`` can be written as a file: not a folder, its folder exists and is writable."""
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
    plug-in files and every existing path among the problem's settings."""
    out: dict[str, str] = {}
    if config_file:
        out["--config"] = config_file
    resume = cfg["run"].get("resume")
    if resume and resume != "latest":
        out["--resume"] = resume
    for p in plugins:
        if os.path.isfile(p):
            out["--plugin"] = p
    for k, v in cfg["problem"].items():
        if isinstance(v, str) and v and os.path.exists(v):
            out[f"problem.{k}"] = v
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
        if name == "latest" or (name.startswith("ckpt-") and name.endswith(".h5")):
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
