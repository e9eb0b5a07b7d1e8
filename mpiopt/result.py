"""The result object every solver returns (scipy.optimize style)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

# Status codes shared by all solvers.
#: a tolerance test fired
CONVERGED = 0
#: iteration / epoch budget used up
MAX_ITER = 1
#: wall-time budget used up
MAX_TIME = 2
#: the callback raised StopIteration
CALLBACK_STOP = 3
#: SIGTERM / SIGINT
INTERRUPTED = 4
#: inexact oracles cannot answer accurately enough for the tolerance (gap not closed)
INEXACT = 5
#: numerical failure (NaN, divergence)
FAILED = -1
#: "no stop": the one sentinel where a status must be a number (flags on the wire)
NO_STOP = -100

#: status code -> the name written to result files (``status`` attribute) and printed in summaries
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
    solver-specific fields. ``success`` is true when the run converged or used up its budget.

    Attributes:
        x: the final variables as one vector in global order (solvers with structured variables, such
            as the factors of matrix factorization, also return them by name in ``solution``).
        fun: the final objective value (the training loss for the torch solvers).
        nit: the solver's count of what it did: iterations, epochs or updates.
        status: one of the status codes of this module (:data:`CONVERGED`, :data:`MAX_ITER`,
            :data:`MAX_TIME`, :data:`CALLBACK_STOP`, :data:`INTERRUPTED`, :data:`INEXACT`,
            :data:`FAILED`).
        success: ``status`` is :data:`CONVERGED`, :data:`MAX_ITER` or :data:`MAX_TIME`.
        message: why the run stopped, in words.
    """

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


def nonfinite(value: Any) -> float | None:
    """The first NaN or infinity in ``value`` (a number or an array of numbers), or None if there is none."""
    if value is None or isinstance(value, (bool, str)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        return None if math.isfinite(v) else v
    a = np.asarray(value)
    if a.dtype.kind not in "fc" or a.size == 0:
        return None
    a = a.ravel()
    if a.dtype.kind == "c":
        a = np.concatenate([a.real, a.imag])
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.dot(a, a)):        # fast path: one BLAS pass (may overflow for huge finite values)
            return None
    bad = np.flatnonzero(~np.isfinite(a))
    return float(a[bad[0]]) if bad.size else None


def failure_message(quantity: str, value: float, iteration: int, hint: str = "", unit: str = "iteration") -> str:
    """The message of a numerical failure: "numerical failure: objective is nan at iteration 12; try a
    smaller solver.step0" (``hint``: what to try, may be empty)."""
    text = f"numerical failure: {quantity} is {value} at {unit} {iteration}"
    return f"{text}; {hint}" if hint else text
