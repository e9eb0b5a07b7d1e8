"""HiGHS models built one way everywhere (the bundle's LPs and QPs, the oracle problems' LPs and MIPs).

- One thread per model by default: every rank already has its share of the cores, and one process
  must not mix thread counts (HiGHS has one scheduler per process and refuses a solve whose
  ``threads`` differs from the count it started with).
- Silent unless verbose: the version banner HiGHS prints when the first model of a process is
  created is suppressed too.
- A time limit on every solve (``time_limit`` seconds, inf: none); callers decide the fall-back
  when a solve stops at the limit (see their docstrings).

:func:`configure` sets the process-wide defaults (the solvers call it from their options).
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
from typing import Any, Iterator

_settings = {"threads": 1, "verbose": False, "time_limit": 300.0}
_created = False


def configure(*, threads: int | None = None, verbose: bool | None = None, time_limit: float | None = None) -> None:
    """Process-wide defaults for new models: threads (1), verbose (False), time limit in seconds (300)."""
    if threads is not None and threads != _settings["threads"] and _created:
        import highspy                     # one scheduler per process: restart it with the new count
        highspy.Highs.resetGlobalScheduler(True)
    for key, value in (("threads", threads), ("verbose", verbose), ("time_limit", time_limit)):
        if value is not None:
            _settings[key] = value


def settings() -> dict[str, Any]:
    return dict(_settings)


@contextlib.contextmanager
def _stdout_to_devnull() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null (C-level output included) for the duration."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):
        yield
        return
    libc = None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        if libc is not None:
            libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def new_model(*, time_limit: float | None = None, threads: int | None = None, verbose: bool | None = None) -> Any:
    """A ``highspy.Highs`` with the defaults above (arguments override them for this model)."""
    import highspy
    global _created
    verbose = _settings["verbose"] if verbose is None else verbose
    if _created or verbose:
        h = highspy.Highs()
    else:
        with _stdout_to_devnull():
            h = highspy.Highs()
    _created = True
    h.setOptionValue("output_flag", bool(verbose))
    h.setOptionValue("threads", int(_settings["threads"] if threads is None else threads))
    limit = _settings["time_limit"] if time_limit is None else time_limit
    if limit is not None and math.isfinite(limit) and limit > 0:
        h.setOptionValue("time_limit", float(limit))
    return h


def linprog_options(time_limit: float | None = None) -> dict[str, Any]:
    """``options=`` for ``scipy.optimize.linprog(method="highs")`` with the same time limit."""
    limit = _settings["time_limit"] if time_limit is None else time_limit
    opts: dict[str, Any] = {"disp": bool(_settings["verbose"])}
    if limit is not None and math.isfinite(limit) and limit > 0:
        opts["time_limit"] = float(limit)
    return opts
