"""Problems given as a sum of convex oracles: min over a box X of f(x) = sum_i f^i(x).

An oracle problem declares the box, the number of components ``m``, Lipschitz constants and a
delay model, and builds one :class:`Oracle` per component. An oracle answers at a point z with
``(fl, g, fu)``: ``fl + <g, . - z> <= f^i`` everywhere and ``fl <= f^i(z) <= fu`` (exact oracles
return ``fl == fu``). ``eta`` is the accuracy fu - fl the master asks for (an inexact oracle may
use it, an exact one ignores it).

Plugging in your own oracle (see docs/level_bundle.md)::

    from mpiopt.problems.oracle import Oracle, OracleProblem
    from mpiopt.registry import register_problem

    class MyOracle(Oracle):
        def __init__(self, i): self.i = i
        def __call__(self, z, eta):
            v, g = ...                     # value and a subgradient of f^i at z
            return v, g, v

    @register_problem("my_sum")
    class MySum(OracleProblem):
        def setup(self):
            self.init_box(n=10, m=4, lower=-1.0, upper=1.0, lipschitz=[...])
        def make_oracle(self, i): return MyOracle(i)

and run it with ``--plugin mymodule.py --problem my_sum``.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..options import Option
from .base import Problem


class Oracle:
    """One component f^i. Subclasses implement :meth:`__call__`."""

    def __call__(self, z: np.ndarray, eta: float) -> tuple[float, np.ndarray, float]:
        """Return ``(fl, g, fu)`` at ``z`` with accuracy ``fu - fl`` about ``eta`` or better."""
        raise NotImplementedError


DELAY_OPTIONS: tuple[Option, ...] = (
    Option("delay_mean", 0.0, "mean emulated oracle time mu0 in seconds (0: no delay)", float, low=0.0),
    Option("delay_spread", 1.0, "oracle i has mean mu0*spread^(i/(m-1)): heterogeneous workers", float, low=1.0),
    Option("delay_noise", 0.0, "s of the log-normal noise on each call (0.3 mild, 1.0 heavy-tailed)", float, low=0.0),
    Option("delay_seed", 0, "seed of the delay draws", int, low=0),
)


class DelayModel:
    """Per-call emulated oracle time: mu_i * LogNormal(-s^2/2, s), mu_i = mu0*spread^(i/(m-1)); one seeded
    stream per component, so a component's k-th delay does not depend on timing or rank layout."""

    def __init__(self, m: int, mean: float = 0.0, spread: float = 1.0, noise: float = 0.0, seed: int = 0):
        self.m = int(m)
        self.mean, self.spread, self.noise, self.seed = float(mean), float(spread), float(noise), int(seed)
        expo = np.arange(self.m) / max(1, self.m - 1)
        self.mu = self.mean * self.spread ** expo
        self.rngs = [np.random.default_rng([self.seed, i, 0xDE1A]) for i in range(self.m)]

    def draw(self, i: int) -> float:
        """The next delay of component ``i`` (seconds)."""
        if self.mean <= 0:
            return 0.0
        s = self.noise
        factor = math.exp(self.rngs[i].normal(-0.5 * s * s, s)) if s > 0 else 1.0
        return float(self.mu[i] * factor)

    def state(self, comps: Sequence[int]) -> dict[int, str]:
        """The streams of components ``comps`` (JSON text per component, for checkpoints)."""
        return {int(i): json.dumps(self.rngs[int(i)].bit_generator.state) for i in comps}

    def load_state(self, states: Sequence[str]) -> None:
        """Restore the streams from :meth:`state` texts in component order ('' leaves one as it is)."""
        for r, st in zip(self.rngs, states):
            if st:
                r.bit_generator.state = json.loads(st)


class OracleProblem(Problem):
    """Base of sum-of-oracles problems. :meth:`setup` must call :meth:`init_box`; :meth:`make_oracle`
    builds component i's oracle (called only on the rank that answers for i)."""

    kind_name = "sum of convex oracles"
    options = DELAY_OPTIONS

    @classmethod
    def shape_estimate(cls, opts: dict[str, Any]) -> tuple[int, int] | None:
        """(variables n, components m) known from ``opts`` before set-up; None when unknown."""
        return None
    n_vars: int
    m: int
    lower: np.ndarray
    upper: np.ndarray
    lipschitz: np.ndarray
    exact: bool = True                      # oracles return fl == fu

    def init_box(self, n: int, m: int, lower: Any, upper: Any, lipschitz: Sequence[float] | np.ndarray) -> None:
        """Declare the dimension, the number of components, the box X and the Lipschitz constants."""
        self.n_vars, self.m = int(n), int(m)
        self.lower = np.broadcast_to(np.asarray(lower, dtype=np.float64), (self.n_vars,)).copy()
        self.upper = np.broadcast_to(np.asarray(upper, dtype=np.float64), (self.n_vars,)).copy()
        self.lipschitz = np.broadcast_to(np.asarray(lipschitz, dtype=np.float64), (self.m,)).copy()
        if self.m < 1 or self.n_vars < 1:
            raise InputError(f"problem {self.name}: needs n >= 1 and m >= 1 components")
        if not np.all(self.lower <= self.upper) or not np.all(np.isfinite(self.lower)) \
                or not np.all(np.isfinite(self.upper)):
            raise InputError(f"problem {self.name}: the box X must be finite with lower <= upper")
        o = self.opts
        self.delays = DelayModel(self.m, o.get("delay_mean", 0.0), o.get("delay_spread", 1.0),
                                 o.get("delay_noise", 0.0), o.get("delay_seed", 0))

    def x0(self) -> np.ndarray:
        """The first point: the centre of the box."""
        return 0.5 * (self.lower + self.upper)

    def make_oracle(self, i: int) -> Oracle:
        raise NotImplementedError

    def accuracy_floor(self, i: int) -> float:
        """The best accuracy fu - fl component i's oracle can deliver (0: whatever is asked; exact
        oracles). A run whose gap can only close below what these floors allow stops with status
        ``inexact`` (success false) instead of asking for more."""
        return 0.0

    def evaluate(self, x: np.ndarray) -> float:
        """f(x) with fresh oracles (testing and reporting; exact oracles only)."""
        if not hasattr(self, "_eval_oracles"):
            self._eval_oracles = [self.make_oracle(i) for i in range(self.m)]
        return float(sum(o(x, 0.0)[2] for o in self._eval_oracles))


class OracleBlock:
    """The components one rank answers for, with their emulated time: :meth:`answer` evaluates each
    at a point and then sleeps their drawn delays (the problem's :class:`DelayModel`)."""

    def __init__(self, problem: OracleProblem, comps: Sequence[int]):
        self.comps = np.asarray(comps, dtype=np.int64)
        self.n = problem.n_vars
        self.delays = problem.delays
        self.oracles = [problem.make_oracle(int(i)) for i in self.comps]

    def answer(self, x: np.ndarray, eta: float, out: np.ndarray) -> None:
        """Fill ``out`` (one row ``comp, fl, fu, g(n)`` per component) and emulate the oracles' time.
        A non-finite value or subgradient is sent as it is: the master stops the run with status failed
        (:meth:`mpiopt.bundle.protocol.Master.admit`)."""
        delay = 0.0
        for j, i in enumerate(self.comps):
            fl, g, fu = self.oracles[j](x, eta)
            out[j, 0], out[j, 1], out[j, 2] = i, fl, fu
            out[j, 3:] = g
            delay += self.delays.draw(int(i))
        polite_delay(delay)


def polite_delay(seconds: float) -> None:
    """Emulate oracle work: sleep (the core stays free for the ranks that compute)."""
    if seconds > 0:
        time.sleep(seconds)
