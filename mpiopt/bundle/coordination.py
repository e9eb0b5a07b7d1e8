"""Scarce coordinations (variant ``coordination``): points z_c that every oracle evaluates, so that
f_up can take sum_i fu^i(z_c) once all m components have answered z_c.

Start rules: ``count`` (one at a time: after ``coord_every`` answers, or when the oracles' latest
values look promising, sum_i fu^i <= f_up - alpha gap / 2; with ``coord_laggard`` a due one waits
until the oracle with the oldest point in flight has answered) or ``idle`` (as soon as an idle worker
has none left to evaluate); at most ``coord_max`` in flight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass
class Coordination:
    """A coordination point z and the components' upper values there (f_up = sum fu once all are seen)."""
    id: int
    z: np.ndarray
    seen: np.ndarray
    fu: np.ndarray


class Coordinations:
    """The coordinations in flight (oldest first) and the start rule; ``params`` is the master's
    :class:`~mpiopt.bundle.master.Params`."""

    def __init__(self, n: int, m: int, owners: Sequence[np.ndarray], params: Any):
        self.n, self.m, self.owners, self.p = n, m, owners, params
        self.every = params.coord_every or 2 * m
        self.active: list[Coordination] = []
        self.started = 0                 # coordinations started so far (ids 1, 2, ...)
        self.since = 0                   # answers since the last one started

    def for_worker(self, w: int) -> Coordination | None:
        """The oldest coordination in flight that worker ``w`` has not answered yet."""
        for c in self.active:
            if not c.seen[self.owners[w]].all():
                return c
        return None

    def record(self, cid: int, comps: np.ndarray, fu: np.ndarray) -> None:
        """An answer to coordination ``cid`` (every answer counts towards the next start)."""
        self.since += 1
        for c in self.active:
            if c.id == cid:
                c.fu[comps] = fu
                c.seen[comps] = True

    def pop_complete(self) -> list[Coordination]:
        """The coordinations every component has answered (removed from the ones in flight)."""
        done = [c for c in self.active if c.seen.all()]
        for c in done:
            self.active.remove(c)
        return done

    def maybe_start(self, z: np.ndarray, idle: np.ndarray, latest_fu: np.ndarray, f_up: float, gap: float,
                    laggard_answered: bool) -> None:
        p = self.p
        if len(self.active) >= max(1, p.coord_max):
            return
        if p.coord_rule == "idle":
            due = any(self.for_worker(int(w)) is None for w in np.flatnonzero(idle))
        else:
            if self.active:
                return
            promising = (p.coord_promising and np.isfinite(latest_fu).all()
                         and latest_fu.sum() <= f_up - p.alpha * gap / 2)
            due = self.since >= self.every or promising
            if due and p.coord_laggard and not laggard_answered and self.since < 4 * self.every:
                return                       # wait until the oracle with the oldest point in flight is free
        if due:
            self.started += 1
            self.active.append(Coordination(self.started, z.copy(), np.zeros(self.m, dtype=bool), np.zeros(self.m)))
            self.since = 0

    def state_dict(self) -> dict[str, Any]:
        return {"n_coords": self.started, "since_coord": self.since,
                "coord_ids": np.array([c.id for c in self.active], dtype=np.int64),
                "coord_z": np.array([c.z for c in self.active], dtype=np.float64).reshape(-1),
                "coord_seen": np.array([c.seen for c in self.active], dtype=np.int64).reshape(-1),
                "coord_fu": np.array([c.fu for c in self.active], dtype=np.float64).reshape(-1)}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.started = int(st.get("n_coords", 0))
        self.since = int(st.get("since_coord", 0))
        ids = np.asarray(st.get("coord_ids", []), dtype=np.int64).reshape(-1)
        Z = np.asarray(st.get("coord_z", []), dtype=np.float64).reshape(ids.size, self.n)
        seen = np.asarray(st.get("coord_seen", []), dtype=np.int64).reshape(ids.size, self.m)
        fu = np.asarray(st.get("coord_fu", []), dtype=np.float64).reshape(ids.size, self.m)
        self.active = [Coordination(int(i), Z[j].copy(), seen[j].astype(bool), fu[j].copy())
                       for j, i in enumerate(ids)]
