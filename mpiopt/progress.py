"""Progress display on rank 0: a tqdm bar on a terminal, plain lines in batch jobs."""
from __future__ import annotations

import os
import sys
import time
from typing import Any


def _ancestor_on_terminal(levels: int = 4) -> bool:
    """Whether a parent process (mpirun/mpiexec, the hydra proxy) writes to a terminal: under mpirun a
    rank's own stdout is a pipe even when the user watches a terminal."""
    pid = os.getppid()
    for _ in range(levels):
        if pid <= 1:
            return False
        try:
            target = os.readlink(f"/proc/{pid}/fd/1")
            if target.startswith(("/dev/pts/", "/dev/tty")):
                return True
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def _has_terminal() -> bool:
    if sys.stdout.isatty() or sys.stderr.isatty():
        return True
    if os.environ.get("CI"):
        return False
    return _ancestor_on_terminal()


# what a reader wants first in a progress line: how far (epochs) and how good (gap, accuracy, RMSE)
FIRST = ("epoch", "certified_gap", "gap", "gap_to_fstar", "test_accuracy", "test_rmse", "rmse", "objective")


def format_values(values: dict[str, Any], limit: int = 6) -> str:
    parts = []
    keys = [k for k in FIRST if k in values] + [k for k in values if k not in FIRST]
    for k, v in [(k, values[k]) for k in keys][:limit]:
        if isinstance(v, float):
            parts.append(f"{k}={v:.6g}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


class Progress:
    """``mode``: auto | bar | lines | none. Only rank 0 should create an active one."""

    def __init__(self, total: int | None, mode: str = "auto", active: bool = True, unit: str = "it",
                 start: int = 0):
        self.total = total
        self.active = active and mode != "none"
        if mode == "auto":
            mode = "bar" if _has_terminal() else "lines"
        self.mode = mode
        self._bar = None
        self._t0 = time.perf_counter()
        self._last_line = self._t0
        if self.active and mode == "bar":
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr, leave=True)
            self._pos = 0
            if start:
                self._bar.update(start)
                self._pos = start

    def quiet_for(self) -> float:
        """Seconds since the last progress line (or the start)."""
        return time.perf_counter() - self._last_line

    def update(self, iteration: int, elapsed: float, values: dict[str, Any]) -> None:
        if not self.active:
            return
        self._last_line = time.perf_counter()
        if self._bar is not None:
            self._bar.update(max(0, iteration - self._pos))
            self._pos = iteration
            self._bar.set_postfix_str(format_values(values), refresh=True)
        else:
            tot = f"/{self.total}" if self.total else ""
            print(f"[{elapsed:9.2f}s] iter {iteration}{tot}  {format_values(values)}", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def info(msg: str, rank: int = 0, verbose: bool = False) -> None:
    """Print on rank 0 (or on every rank when verbose)."""
    if rank == 0 or verbose:
        prefix = "" if rank == 0 else f"[rank {rank}] "
        print(prefix + msg, flush=True)
