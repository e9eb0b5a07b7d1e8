"""The result object every solver returns (scipy.optimize style)."""
from __future__ import annotations

from typing import Any

# Status codes shared by all solvers.
CONVERGED = 0          # a tolerance test fired
MAX_ITER = 1           # iteration / epoch budget used up
MAX_TIME = 2           # wall-time budget used up
CALLBACK_STOP = 3      # the callback raised StopIteration
INTERRUPTED = 4        # SIGTERM / SIGINT
INEXACT = 5            # inexact oracles cannot answer accurately enough for the tolerance (gap not closed)
FAILED = -1            # numerical failure (NaN, divergence)
NO_STOP = -100         # "no stop": the one sentinel where a status must be a number (flags on the wire)

STATUS_NAMES = {
    CONVERGED: "converged",
    MAX_ITER: "max_iter",
    MAX_TIME: "max_time",
    CALLBACK_STOP: "callback",
    INTERRUPTED: "interrupted",
    INEXACT: "inexact",
    FAILED: "failed",
}


class OptimizeResult(dict):
    """Dict with attribute access: ``x``, ``fun``, ``nit``, ``status``, ``success``, ``message`` and
    solver-specific fields. ``success`` is true when the run converged or used up its budget."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __repr__(self) -> str:
        keys = sorted(self)
        width = max(map(len, keys)) + 1 if keys else 0
        lines = []
        for k in keys:
            v = self[k]
            text = repr(v)
            if hasattr(v, "shape") and getattr(v, "size", 0) > 6:
                text = f"array(shape={v.shape}, dtype={v.dtype})"
            lines.append(f"{k.rjust(width)}: {text}")
        return "\n".join(lines)

    def __dir__(self) -> list[str]:
        return list(self.keys())


def make_result(x: Any, fun: float, nit: int, status: int, message: str, **extra: Any) -> OptimizeResult:
    """Build a result with the common fields filled consistently."""
    return OptimizeResult(
        x=x, fun=fun, nit=nit, status=status,
        success=status in (CONVERGED, MAX_ITER, MAX_TIME),
        message=message, **extra,
    )


def stop_message(status: int) -> str:
    """The message for a stop decided by the run (budget, signal, callback)."""
    return {MAX_TIME: "reached the wall-time budget (run.max_time)",
            INTERRUPTED: "interrupted by a signal",
            CALLBACK_STOP: "stopped by the callback"}.get(status, STATUS_NAMES.get(status, "stopped"))
