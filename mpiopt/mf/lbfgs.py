"""Compact L-BFGS inverse Hessian (Byrd, Nocedal, Schnabel 1994) on distributed slices.

    H = sigma I + [S  sigma Y] N [S^T; sigma Y^T],
    N = [[R^-T (D + sigma Y^T Y) R^-1, -R^-T], [-R^-1, 0]],
    R = upper triangle of S^T Y (pairs oldest first), D = diag(S^T Y).

Each rank holds the rows of S, Y for the variables it owns. ``H g`` needs the 2M numbers
[S^T g; Y^T g] summed over ranks (one small reduction); N (2M x 2M) is rebuilt redundantly on every
rank from bit-identical reduced numbers, so all ranks take identical decisions.

:meth:`CompactLBFGS.apply_shifted` applies the other step form, ``(B + beta I)^-1 g`` with
``B = H^-1`` the direct model

    B = delta I - [delta S  Y] [[delta S^T S, L], [L^T, -D]]^-1 [delta S^T; Y^T],  delta = 1/sigma,

(L the strictly lower triangle of S^T Y), with the eigenvalues of B clipped to [lo, hi]: writing
U = [delta S  Y] = Q W^T (Q orthonormal, from the eigenvectors of the 2M x 2M Gram matrix U^T U),
B = delta I + Q K Q^T, so B's spectrum is delta off range(U) and delta + eig(K) on it. Every
eigenvalue mu is clipped, and (B + beta I)^-1 g costs the same 2M-number reduction and 2M axpys
as H g. For any beta > 0 and lo >= 0 its norm is at most |g| / (lo + beta) <= |g| / beta.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.linalg as sla

from ..errors import CheckpointError
from .fused import axpy

# reduce(partials (q, L)) -> (L,) global sums, identical bits on every rank
Reducer = Callable[[np.ndarray], np.ndarray]


class CompactLBFGS:
    """Ring of the last ``M`` accepted curvature pairs on this rank's slice (``segments`` are the
    [lo, hi) parts of the local vector whose partial dot products are reduced separately)."""

    def __init__(self, n_local: int, M: int, sigma0: float, tau: float,
                 segments: list[tuple[int, int]], reduce: Reducer, rule: str = "reference",
                 track_ss: bool = False):
        """``rule="reference"``: accept if s.y/|y| > tau, sigma <- min(sigma, s.y/y.y) (the reference
        code). ``rule="scaled"``: accept if s.y > tau |s| |y| (scale free), sigma <- s.y/y.y of the
        newest pair (the usual L-BFGS scaling). ``track_ss``: also keep S^T S (M more numbers in
        each update's reduction), needed by :meth:`apply_shifted`."""
        self.rule = rule
        self.track_ss = bool(track_ss)
        self.M, self.n = int(M), int(n_local)
        self.sigma0, self.tau = float(sigma0), float(tau)
        self.segments = segments
        self.reduce = reduce
        self.S = np.zeros((self.M, self.n))
        self.Y = np.zeros((self.M, self.n))
        self.reset()

    def reset(self) -> None:
        """Forget every pair (back to warm-up)."""
        self.sigma = self.sigma0
        self.mem = 0              # accepted pairs so far
        self.head = 0             # slot of the next pair
        self.SY = np.zeros((self.M, self.M))   # by slot: SY[a, b] = s_a . y_b
        self.YY = np.zeros((self.M, self.M))
        self.SS = np.zeros((self.M, self.M))
        self.N: np.ndarray | None = None
        self.shift: tuple | None = None       # (bounds, delta, T, mu) of apply_shifted

    @property
    def ready(self) -> bool:
        """True once M pairs were accepted (the model is used from then on)."""
        return self.mem >= self.M

    def _slots(self) -> np.ndarray:
        """Slots of the stored pairs, oldest first."""
        cnt = min(self.mem, self.M)
        return (self.head - cnt + np.arange(cnt)) % self.M

    def _seg_dots(self, mat: np.ndarray, slots, v: np.ndarray) -> np.ndarray:
        """(q, len(slots)) partial dot products mat[slot] . v per segment (no copies of mat)."""
        out = np.empty((len(self.segments), len(slots)))
        for t, (lo, hi) in enumerate(self.segments):
            vs = v[lo:hi]
            for c, a in enumerate(slots):
                out[t, c] = np.dot(mat[a, lo:hi], vs)
        return out

    def update(self, s: np.ndarray, y: np.ndarray) -> bool:
        """Offer the pair (s, y) (local slices). Accept if s.y/|y| > tau; one reduction of 3M+2
        numbers. Returns whether it was accepted."""
        M = self.M
        q = len(self.segments)
        parts = np.empty((q, 3 * M + 3 + (M if self.track_ss else 0)))
        for t, (lo, hi) in enumerate(self.segments):
            st, yt = s[lo:hi], y[lo:hi]
            parts[t, 0] = np.dot(st, yt)
            parts[t, 1] = np.dot(yt, yt)
            parts[t, 2] = np.dot(st, st)
        allslots = range(M)
        parts[:, 3:3 + M] = self._seg_dots(self.S, allslots, y)          # s_a . y_new
        parts[:, 3 + M:3 + 2 * M] = self._seg_dots(self.Y, allslots, s)  # s_new . y_a
        parts[:, 3 + 2 * M:3 + 3 * M] = self._seg_dots(self.Y, allslots, y)       # y_a . y_new
        if self.track_ss:
            parts[:, 3 + 3 * M:] = self._seg_dots(self.S, allslots, s)   # s_a . s_new
        tot = self.reduce(parts)
        sy, yy, ss = float(tot[0]), float(tot[1]), float(tot[2])
        scale = np.sqrt(yy) * (np.sqrt(ss) if self.rule == "scaled" else 1.0)
        if not (yy > 0 and np.isfinite(sy) and sy / scale > self.tau):
            return False
        self.sigma = sy / yy if self.rule == "scaled" else min(self.sigma, sy / yy)
        tot = tot[1:]
        slot = self.head
        self.S[slot] = s
        self.Y[slot] = y
        # new row/column of S^T Y and Y^T Y (old slot contents are overwritten)
        self.SY[:, slot] = tot[2:2 + M]       # s_a . y_new
        self.SY[slot, :] = tot[2 + M:2 + 2 * M]  # s_new . y_a
        self.SY[slot, slot] = sy
        self.YY[:, slot] = tot[2 + 2 * M:2 + 3 * M]
        self.YY[slot, :] = tot[2 + 2 * M:2 + 3 * M]
        self.YY[slot, slot] = yy
        if self.track_ss:
            self.SS[:, slot] = tot[2 + 3 * M:]
            self.SS[slot, :] = tot[2 + 3 * M:]
            self.SS[slot, slot] = ss
        self.head = (self.head + 1) % M
        self.mem += 1
        if self.ready:
            self._build_N()
        return True

    def _build_N(self) -> None:
        sl = self._slots()
        SY = self.SY[np.ix_(sl, sl)]
        YY = self.YY[np.ix_(sl, sl)]
        R = np.triu(SY)
        D = np.diag(np.diag(SY))
        m = len(sl)
        Rinv = sla.solve_triangular(R, np.eye(m), lower=False)
        N = np.zeros((2 * m, 2 * m))
        N[:m, :m] = Rinv.T @ (D + self.sigma * YY) @ Rinv
        N[:m, m:] = -Rinv.T
        N[m:, :m] = -Rinv
        self.N = N
        self.shift = None

    def _build_shift(self, lo: float, hi: float) -> tuple:
        """Clipped eigen-structure of the direct model B (small matrices only, same on every rank)."""
        sl = self._slots()
        m = len(sl)
        SY = self.SY[np.ix_(sl, sl)]
        SS = self.SS[np.ix_(sl, sl)]
        YY = self.YY[np.ix_(sl, sl)]
        delta = 1.0 / self.sigma
        G = np.block([[delta * delta * SS, delta * SY], [delta * SY.T, YY]])        # U^T U
        Mid = np.block([[delta * SS, np.tril(SY, -1)], [np.tril(SY, -1).T, -np.diag(np.diag(SY))]])
        w, Vg = np.linalg.eigh(G)
        keep = w > 1e-12 * max(w.max(), 0.0)
        Wh = Vg[:, keep] * np.sqrt(w[keep])                  # U = Q Wh^T
        try:
            C = -np.linalg.solve(Mid, np.eye(2 * m))
        except np.linalg.LinAlgError:
            C = np.zeros((2 * m, 2 * m))                     # degenerate pairs: B = delta I
        K = Wh.T @ C @ Wh
        lam, V = np.linalg.eigh(0.5 * (K + K.T))
        T = (Vg[:, keep] / np.sqrt(w[keep])) @ V             # t = T diag(c) T^T (U^T g)
        mu = np.clip(delta + lam, lo, hi)
        self.shift = ((lo, hi), float(np.clip(delta, lo, hi)), T, mu)
        return self.shift

    def spectrum(self, lo: float = 0.0, hi: float = np.inf) -> tuple[float, np.ndarray]:
        """(eigenvalue of B off range(U), eigenvalues of B on range(U)), clipped to [lo, hi]."""
        _, d, _, mu = self._build_shift(lo, hi)
        return d, mu

    def apply_shifted(self, g: np.ndarray, beta: float, lo: float = 0.0, hi: float = np.inf,
                      out: np.ndarray | None = None) -> np.ndarray:
        """(B + beta I)^-1 g with B = H^-1 clipped to eigenvalues in [lo, hi] (collective: one
        reduction of 2M numbers). Needs ``track_ss``."""
        if not self.track_ss:
            raise ValueError("apply_shifted needs CompactLBFGS(track_ss=True)")
        sh = self.shift
        if sh is None or sh[0] != (lo, hi):
            sh = self._build_shift(lo, hi)
        _, d0, T, mu = sh
        sl = [int(a) for a in self._slots()]
        m = len(sl)
        parts = np.concatenate([self._seg_dots(self.S, sl, g), self._seg_dots(self.Y, sl, g)], axis=1)
        p = self.reduce(parts)
        p[:m] *= 1.0 / self.sigma                            # U^T g, U = [delta S, Y]
        c = 1.0 / (mu + beta) - 1.0 / (d0 + beta)
        t = T @ (c * (T.T @ p))
        out = np.multiply(g, 1.0 / (d0 + beta), out=out)
        for i, a in enumerate(sl):
            axpy(t[i] / self.sigma, self.S[a], out)
        for i, a in enumerate(sl):
            axpy(t[m + i], self.Y[a], out)
        return out

    def apply(self, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """H g for the local slice ``g`` (collective: one reduction of 2M numbers)."""
        sl = [int(a) for a in self._slots()]
        m = len(sl)
        parts = np.concatenate([self._seg_dots(self.S, sl, g), self._seg_dots(self.Y, sl, g)], axis=1)
        p = self.reduce(parts)
        p[m:] *= self.sigma
        w = self.N @ p
        out = np.multiply(g, self.sigma, out=out)
        for c, a in enumerate(sl):     # 2M axpys: elementwise, same bits at any rank count
            axpy(w[c], self.S[a], out)
        for c, a in enumerate(sl):
            axpy(self.sigma * w[m + c], self.Y[a], out)
        return out

    def dense(self) -> np.ndarray:
        """The dense H of a single-rank model (tests)."""
        n = self.n
        return np.column_stack([self.apply(e) for e in np.eye(n)])

    # -- checkpoints -----------------------------------------------------------------
    def small_state(self) -> dict:
        return {"sigma": self.sigma, "mem": self.mem, "head": self.head, "SY": self.SY.copy(),
                "YY": self.YY.copy(), **({"SS": self.SS.copy()} if self.track_ss else {})}

    def load_small_state(self, st: dict) -> None:
        self.sigma = float(st["sigma"])
        self.mem = int(st["mem"])
        self.head = int(st["head"])
        self.SY = np.array(st["SY"], dtype=np.float64).reshape(self.M, self.M)
        self.YY = np.array(st["YY"], dtype=np.float64).reshape(self.M, self.M)
        if self.track_ss:
            if "SS" not in st:
                raise CheckpointError("checkpoint was written with solver.step_form=reference; resume it with the "
                                      "same step form (the paper form needs S'S, which that run did not keep)")
            self.SS = np.array(st["SS"], dtype=np.float64).reshape(self.M, self.M)
        self.N = None
        if self.ready:
            self._build_N()
