"""Disaggregated cutting-plane model (one bundle of cuts per component) and Lipschitz upper models.

A cut of component i taken at z is the affine minorant l(x) = e + <g, x> of f^i with
``g`` the (approximate) subgradient and ``e = f_low^i(z) - <g, z>``. The model value is
``fv(x) = sum_i max_{cuts of i} l(x) <= f(x)``.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class CutModel:
    """All cuts of all m components in one growable table (rows ``G``, offsets ``e``, owner ``comp``).

    ``stamp`` is a global insertion counter, so "oldest" and "newest" are well defined and the
    table is identical after a checkpoint round trip."""

    def __init__(self, n: int, m: int, capacity: int = 64):
        self.n, self.m = int(n), int(m)
        cap = max(int(capacity), 2 * self.m)
        self.G = np.empty((cap, self.n))
        self.e = np.empty(cap)
        self.comp = np.empty(cap, dtype=np.int64)
        self.stamp = np.empty(cap, dtype=np.int64)
        self.count = 0
        self.next_stamp = 0
        self.version = 0          # bumped whenever cuts are removed (an LP model must be rebuilt)

    # -- views ------------------------------------------------------------------------------
    @property
    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(G, e, comp)`` views of the live cuts."""
        k = self.count
        return self.G[:k], self.e[:k], self.comp[:k]

    def counts(self) -> np.ndarray:
        """Number of cuts per component."""
        return np.bincount(self.comp[:self.count], minlength=self.m)

    # -- updates ----------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = self.G.shape[0]
        if need <= cap:
            return
        new = max(need, 2 * cap)
        for name in ("G", "e", "comp", "stamp"):
            old = getattr(self, name)
            arr = np.empty((new, *old.shape[1:]), dtype=old.dtype)
            arr[:self.count] = old[:self.count]
            setattr(self, name, arr)

    def add(self, comps: np.ndarray, g: np.ndarray, fl: np.ndarray, z: np.ndarray) -> None:
        """Add one cut per row: component ``comps[j]``, subgradient ``g[j]``, lower value ``fl[j]`` at
        point ``z`` (one point for all rows, or one row of ``z`` per cut)."""
        comps = np.atleast_1d(np.asarray(comps, dtype=np.int64))
        g = np.atleast_2d(g)
        k = comps.size
        self._grow(self.count + k)
        s = slice(self.count, self.count + k)
        self.G[s] = g
        zz = np.atleast_2d(z)
        self.e[s] = np.asarray(fl, dtype=np.float64) - np.einsum("ij,ij->i", g, np.broadcast_to(zz, g.shape))
        self.comp[s] = comps
        self.stamp[s] = np.arange(self.next_stamp, self.next_stamp + k)
        self.next_stamp += k
        self.count += k

    def keep(self, mask: np.ndarray) -> int:
        """Keep only the live cuts where ``mask`` is true (order preserved); returns the number dropped."""
        mask = np.asarray(mask, dtype=bool)
        k = int(mask.sum())
        dropped = self.count - k
        if dropped:
            for arr in (self.G, self.e, self.comp, self.stamp):
                arr[:k] = arr[:self.count][mask]
            self.count = k
            self.version += 1
        return dropped

    def compress(self, lam: np.ndarray | None, max_cuts: int) -> int:
        """Per component keep the cuts with positive multipliers and the newest cut, then the newest of
        the others, up to ``max_cuts`` per component (active cuts are never dropped). Returns the
        number of cuts dropped."""
        G, e, comp = self.rows
        k = self.count
        stamp = self.stamp[:k]
        active = np.zeros(k, dtype=bool) if lam is None or len(lam) != k else np.asarray(lam) > 0
        # newest cut per component
        order = np.lexsort((-stamp, comp))                 # by component, newest first
        first = np.ones(k, dtype=bool)
        first[1:] = comp[order][1:] != comp[order][:-1]
        protected = active.copy()
        protected[order[first]] = True
        # rank of each unprotected cut among its component's unprotected cuts, newest first
        cnt_prot = np.bincount(comp[protected], minlength=self.m)
        free = order[~protected[order]]
        rank_in_comp = np.zeros(free.size, dtype=np.int64)
        if free.size:
            fc = comp[free]
            starts = np.r_[0, np.flatnonzero(fc[1:] != fc[:-1]) + 1]
            seg = np.repeat(starts, np.diff(np.r_[starts, fc.size]))
            rank_in_comp = np.arange(free.size) - seg
        budget = np.maximum(max_cuts - cnt_prot, 0)
        mask = protected.copy()
        mask[free] = rank_in_comp < budget[comp[free]]
        return self.keep(mask)

    def drop_inactive(self, lam: np.ndarray, max_cuts: int) -> int:
        """Between critical iterations: drop the cuts inactive in the last QP (multipliers ``lam`` of the
        first ``lam.size`` cuts; newer cuts are kept) down to ``max_cuts`` per component."""
        keep = np.ones(self.count)
        keep[:lam.size] = lam
        return self.compress(keep, max_cuts)

    # -- evaluation -------------------------------------------------------------------------
    def component_values(self, x: np.ndarray) -> np.ndarray:
        """max over each component's cuts at ``x`` (-inf for a component without cuts)."""
        G, e, comp = self.rows
        vals = G @ x + e
        out = np.full(self.m, -np.inf)
        np.maximum.at(out, comp, vals)
        return out

    def value(self, x: np.ndarray) -> float:
        """The model fv(x) = sum_i max_j l_ij(x)."""
        return float(self.component_values(x).sum())

    # -- checkpoint -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        G, e, comp = self.rows
        return {"G": G.copy(), "e": e.copy(), "comp": comp.copy(), "stamp": self.stamp[:self.count].copy(),
                "next_stamp": int(self.next_stamp), "version": int(self.version)}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        G = np.asarray(st["G"], dtype=np.float64).reshape(-1, self.n)
        k = G.shape[0]
        self.count = 0
        self._grow(k)
        self.G[:k] = G
        self.e[:k] = st["e"]
        self.comp[:k] = st["comp"]
        self.stamp[:k] = st["stamp"]
        self.count = k
        self.next_stamp = int(st["next_stamp"])
        self.version = int(st["version"]) + 1


class UpperModel:
    """Lipschitz upper models fbar^i(x) = min_z fu^i(z) + L_i ||x - z|| over the last ``max_points``
    points z evaluated by each oracle (a valid upper bound of f^i on X when L_i bounds the subgradients)."""

    def __init__(self, n: int, m: int, lipschitz: np.ndarray, max_points: int = 50):
        self.n, self.m, self.cap = int(n), int(m), int(max_points)
        self.L = np.asarray(lipschitz, dtype=np.float64)
        self.Z = np.zeros((self.m, self.cap, self.n))
        self.fu = np.full((self.m, self.cap), np.inf)
        self.count = np.zeros(self.m, dtype=np.int64)      # points ever added per component

    def add(self, comps: np.ndarray, fu: np.ndarray, z: np.ndarray) -> None:
        comps = np.atleast_1d(np.asarray(comps, dtype=np.int64))
        slots = self.count[comps] % self.cap
        self.Z[comps, slots] = z
        self.fu[comps, slots] = fu
        self.count[comps] += 1

    def values(self, Y: np.ndarray) -> np.ndarray:
        """fbar(y) = sum_i fbar^i(y) for each row y of ``Y`` (inf while a component has no point)."""
        Y = np.atleast_2d(Y)
        d = np.linalg.norm(self.Z[None, :, :, :] - Y[:, None, None, :], axis=-1)   # (ny, m, cap)
        comp_vals = np.min(self.fu[None] + self.L[None, :, None] * d, axis=2)      # (ny, m)
        return comp_vals.sum(axis=1)

    def best(self, Y: np.ndarray) -> tuple[np.ndarray, float]:
        """The row y of ``Y`` with the least fbar(y), and fbar(y)."""
        vals = self.values(Y)
        j = int(np.argmin(vals))
        return Y[j], float(vals[j])

    def state_dict(self) -> dict[str, Any]:
        return {"Z": self.Z.copy(), "fu": self.fu.copy(), "count": self.count.copy()}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.Z[:] = np.asarray(st["Z"]).reshape(self.Z.shape)
        self.fu[:] = np.asarray(st["fu"]).reshape(self.fu.shape)
        self.count[:] = st["count"]
