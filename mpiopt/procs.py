"""Processes on this host: whether a pid is alive (stale temporary files, emulated-cluster state)."""
from __future__ import annotations

import os


def pid_alive(pid: int | None) -> bool:
    """True if process ``pid`` exists on this host (or may: no permission to signal it); None: unknown, alive."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
