"""``DistMF``: ratings and factors of a matrix factorization spread over MPI ranks.

Grid: ``nb`` balanced row blocks and ``nb`` balanced column blocks (``nb`` a multiple of the rank
count P, q = nb/P). Rank r owns row blocks b = r + tP (t = 0..q-1) with all their ratings and their
rows of the left factor A, and is the *home* of column blocks with the same indices (their rows of
B). Block (rb, cb) belongs to stratum s = (rb - cb) mod nb; in stratum s row block rb meets column
block (rb - s) mod nb, all of whose homes are the single rank (r - s) mod P: one ring exchange
brings every B value a rank needs for a stratum, and one more returns gradients (or values).

Local vectors (x, gradients, L-BFGS pairs) are laid out group by group: [A_0, B_0, A_1, B_1, ..],
row-major. Every reduction that steers the iteration sums per-*block* partials in global block
order (:func:`mpiopt.comm.ring.block_sum`), and every kernel runs block by block, so a fixed
``nb`` gives bit-identical iterates at any rank count dividing it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..comm import Comm
from ..comm.jit import compile_once
from ..comm.ring import alltoallv_grouped, block_sum, gather_to_root, ring_exchange
from .cuts import balanced_cuts
from .init import random_rows
from . import fused, layout
from .kernels import RatingBlock


class DistMF:
    """Block grid, this rank's ratings (train and test) and factor layout."""

    def __init__(self, comm: Comm, problem: Any, nb: int, k: int, lam: float = 0.0, reg: str = "rating",
                 bias: bool = False, bias_l2: float = 0.0, take: bool = False):
        """``bias``: factor rows get one more column, the row (column) bias, regularized by ``bias_l2``
        (same form as ``lam``). ``take``: take the ratings over from the problem (``take_ratings``)
        so that they are held once."""
        P, r = comm.size, comm.rank
        assert nb % P == 0, "nb must be a multiple of the rank count"
        compile_once(comm, fused.warm_ups() + layout.warm_ups())
        self.comm, self.P, self.rank, self.nb, self.q, self.k = comm, P, r, nb, nb // P, int(k)
        self.bias = bool(bias)
        self.w = self.k + (1 if self.bias else 0)     # stored columns per factor row
        self.m, self.n = int(problem.m), int(problem.n)
        self.nnz, self.nnz_test = int(problem.nnz), int(problem.nnz_test)
        self.inv_nnz = 1.0 / max(self.nnz, 1)
        self.rating_range = (float(problem.rating_min), float(problem.rating_max))
        self.rcuts = balanced_cuts(problem.row_counts, nb)
        self.ccuts = balanced_cuts(problem.col_counts, nb)
        self.groups = [r + t * P for t in range(self.q)]
        self.ma = [int(self.rcuts[b + 1] - self.rcuts[b]) for b in self.groups]
        self.nc = [int(self.ccuts[b + 1] - self.ccuts[b]) for b in self.groups]
        w = self.w
        self.seg: list[tuple[int, int]] = []
        pos = 0
        for t in range(self.q):
            hi = pos + (self.ma[t] + self.nc[t]) * w
            self.seg.append((pos, hi))
            pos = hi
        self.n_local = pos
        self.n_vars = (self.m + self.n) * w
        self.x = np.zeros(self.n_local)
        owned = bool(take and hasattr(problem, "take_ratings"))
        if owned:
            train, test = (list(a) for a in problem.take_ratings())
        else:
            train = [problem.rows, problem.cols, problem.vals]
            test = [problem.test_rows, problem.test_cols, problem.test_vals]
        self.blocks = self._make_blocks(train, owned, lam, reg, problem, bias_l2)
        self.test_blocks = None
        if self.nnz_test:
            self.test_blocks = self._make_blocks(test, owned, 0.0, reg, problem, 0.0)
        del test
        self._plans = [self._plan(s) for s in range(nb)]

    # -- setup -------------------------------------------------------------------------
    def _make_blocks(self, data: list, owned: bool, lam, reg, problem, lam_bias) -> list[list[RatingBlock]]:
        """Route the ratings ``data`` = [rows, cols, vals] (emptied: the arrays are consumed) to the
        owners of their row blocks and store them once, block by block (stratum-major), grouped by
        row within a block; local indices in int32. Routing and sorting are out-of-place counting-sort
        scatters of one array at a time (:mod:`.layout`): the peak is the ratings plus one int32
        position array and one copy of the widest array."""
        P, nb, q = self.P, self.nb, self.q
        idx_t = np.int32 if max(self.m, self.n) < 2 ** 31 else np.int64
        rows, cols, vals = data
        data.clear()
        vt = np.float32 if np.asarray(vals).dtype == np.float32 else np.float64

        def mine(a, dt):                   # an array this function may sort in place
            a2 = np.ascontiguousarray(a, dtype=dt)
            return a2.copy() if (a2 is a and not owned) else a2
        rows, cols, vals = mine(rows, idx_t), mine(cols, idx_t), mine(vals, vt)
        n = rows.size
        pos_t = np.int32 if n < 2 ** 31 else np.int64
        if P > 1:                                       # group by owner rank (stable), send
            pos = np.empty(n, pos_t)
            counts = np.diff(layout.owner_positions(rows, self.rcuts, P, pos))
            arrays = [vals, rows, cols]
            del vals, rows, cols
            for a in range(3):                          # each array freed once grouped, each group once sent
                send = layout.scattered(arrays[a], pos)
                arrays[a] = None
                arrays[a] = alltoallv_grouped(self.comm, send, counts)
                del send
            vals, rows, cols = arrays
            del pos, arrays
            n = rows.size
            pos_t = np.int32 if n < 2 ** 31 else np.int64
        # by block, then by row (stable): out-of-place scatters, one array at a time
        pos = np.empty(n, pos_t)
        edges = layout.block_row_positions(rows, cols, self.rcuts, self.ccuts, nb, P, q,
                                           np.asarray(self.groups, dtype=np.int64), pos)
        rows = layout.scattered(rows, pos)
        cols = layout.scattered(cols, pos)
        vals = layout.scattered(vals, pos)
        del pos
        out: list[list[RatingBlock]] = []
        for s in range(nb):
            row = []
            for t in range(q):
                lo, hi = int(edges[s * q + t]), int(edges[s * q + t + 1])
                b = self.groups[t]
                c = (b - s) % nb
                i, j = rows[lo:hi], cols[lo:hi]
                i -= idx_t(self.rcuts[b])            # local indices, in place
                j -= idx_t(self.ccuts[c])
                blk = RatingBlock(i, j, vals[lo:hi], self.ma[t], int(self.ccuts[c + 1] - self.ccuts[c]),
                                  k=self.k, sorted_rows=True)
                if lam > 0 or lam_bias > 0:
                    blk.set_reg(lam, self.nnz, reg,
                                problem.row_counts[self.rcuts[b]:self.rcuts[b + 1]],
                                problem.col_counts[self.ccuts[c]:self.ccuts[c + 1]], lam_bias)
                row.append(blk)
            out.append(row)
        return out

    def _plan(self, s: int) -> dict:
        P, nb, r = self.P, self.nb, self.rank
        dest, src = (r + s) % P, (r - s) % P
        send_groups = [((dest + t * P - s) % nb) // P for t in range(self.q)]
        recv_cols = [int(self.ccuts[(b - s) % nb + 1] - self.ccuts[(b - s) % nb]) for b in self.groups]
        return {"dest": dest, "src": src, "send": send_groups, "recv_cols": recv_cols, "local": dest == r}

    # -- views -------------------------------------------------------------------------
    def A(self, vec: np.ndarray, t: int) -> np.ndarray:
        lo, _ = self.seg[t]
        return vec[lo:lo + self.ma[t] * self.w].reshape(self.ma[t], self.w)

    def B(self, vec: np.ndarray, t: int) -> np.ndarray:
        lo, hi = self.seg[t]
        return vec[lo + self.ma[t] * self.w:hi].reshape(self.nc[t], self.w)

    # -- ring exchanges ----------------------------------------------------------------
    def fetch(self, s: int, vec: np.ndarray) -> list[np.ndarray]:
        """The column blocks this rank meets in stratum ``s`` (values of ``vec`` at their homes)."""
        pl = self._plans[s]
        if pl["local"]:
            return [self.B(vec, tp) for tp in pl["send"]]
        send = np.concatenate([self.B(vec, tp).ravel() for tp in pl["send"]])
        sizes = [c * self.w for c in pl["recv_cols"]]
        recv = np.empty(sum(sizes))
        ring_exchange(self.comm, send, pl["dest"], recv, pl["src"], tag="ring_values")
        out, pos = [], 0
        for c, sz in zip(pl["recv_cols"], sizes):
            out.append(recv[pos:pos + sz].reshape(c, self.w))
            pos += sz
        return out

    def send_home(self, s: int, bufs: list[np.ndarray], out: np.ndarray, accumulate: bool = False) -> None:
        """Return per-column-block arrays of stratum ``s`` to their homes, written (or added) into
        the B part of ``out`` there."""
        pl = self._plans[s]
        if pl["local"]:
            for t, tp in enumerate(pl["send"]):
                dst = self.B(out, tp)
                if np.shares_memory(dst, bufs[t]):
                    continue
                if accumulate:
                    dst += bufs[t]
                else:
                    dst[...] = bufs[t]
            return
        send = np.concatenate([b.ravel() for b in bufs]) if bufs else np.empty(0)
        sizes = [self.nc[tp] * self.w for tp in pl["send"]]
        recv = np.empty(sum(sizes))
        ring_exchange(self.comm, send, pl["src"], recv, pl["dest"], tag="ring_grads")
        pos = 0
        for tp, sz in zip(pl["send"], sizes):
            dst = self.B(out, tp)
            part = recv[pos:pos + sz].reshape(dst.shape)
            if accumulate:
                dst += part
            else:
                dst[...] = part
            pos += sz

    # -- losses and gradients ------------------------------------------------------------
    def stratum_loss_grad(self, s: int, vec: np.ndarray, g: np.ndarray, accumulate: bool = False,
                          reuse: bool = False) -> np.ndarray:
        """Gradient of the stratum-``s`` objective at ``vec`` into ``g`` (A parts and, via the
        ring, B parts). Returns (q, 2) per-block partials [objective, sse]. ``reuse``: residuals
        kept by the last ``stratum_loss(s, vec, keep=True)`` at this same ``vec`` are used."""
        Bs = self.fetch(s, vec)
        parts = np.zeros((self.q, 2))
        gbufs = []
        for t in range(self.q):
            out = None if accumulate else self.A(g, t)
            f, sse, gA, gB = self.blocks[s][t].loss_grad(self.A(vec, t), Bs[t], self.inv_nnz, reuse, gA=out)
            parts[t] = f, sse
            if accumulate:
                self.A(g, t)[...] += gA
            gbufs.append(gB)
        self.send_home(s, gbufs, g, accumulate)
        return parts

    def stratum_loss(self, s: int, vec: np.ndarray, keep: bool = False) -> np.ndarray:
        """(q, 2) per-block partials [objective, sse] of stratum ``s`` at ``vec``."""
        Bs = self.fetch(s, vec)
        parts = np.zeros((self.q, 2))
        for t in range(self.q):
            parts[t] = self.blocks[s][t].loss(self.A(vec, t), Bs[t], self.inv_nnz, keep)
        return parts

    def full_loss_grad(self, vec: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Full objective gradient (all strata, summed in stratum order); returns (q, 2) partials."""
        g[...] = 0.0
        parts = np.zeros((self.q, 2))
        for s in range(self.nb):
            parts += self.stratum_loss_grad(s, vec, g, accumulate=True)
        return parts

    def reduce(self, parts: np.ndarray, tag: str = "blocksum") -> np.ndarray:
        """Sum (q, L) per-block partials over all blocks in block order (same bits everywhere)."""
        return block_sum(self.comm, parts, self.nb, tag=tag)

    def evaluate(self, vec: np.ndarray, train: dict[int, np.ndarray] | None = None) -> dict[str, float]:
        """Objective, training RMSE and (if a test set exists) held-out RMSE raw and clipped.
        ``train``: stratum -> this rank's (q, 2) per-block [objective, sse] of that stratum's
        training ratings at ``vec``, already computed by the caller (those passes are skipped)."""
        train = train or {}
        parts = np.zeros((self.q, 4))
        for s in range(self.nb):
            need = s not in train
            if not need and self.test_blocks is None:
                parts[:, :2] += train[s]
                continue
            Bs = self.fetch(s, vec)
            for t in range(self.q):
                A = self.A(vec, t)
                parts[t, :2] += self.blocks[s][t].loss(A, Bs[t], self.inv_nnz) if need else train[s][t]
                if self.test_blocks is not None:
                    parts[t, 2:4] += self.test_blocks[s][t].sq_errors(A, Bs[t], *self.rating_range)
        tot = self.reduce(parts, tag="eval")
        out = {"objective": float(tot[0]), "rmse": float(np.sqrt(tot[1] / max(self.nnz, 1)))}
        if self.test_blocks is not None:
            out["test_rmse"] = float(np.sqrt(tot[2] / self.nnz_test))
            out["test_rmse_clipped"] = float(np.sqrt(tot[3] / self.nnz_test))
        return out

    def dot(self, u: np.ndarray, v: np.ndarray) -> float:
        """Global u.v over the distributed vectors (block-ordered sum)."""
        parts = np.array([[np.dot(u[lo:hi], v[lo:hi])] for lo, hi in self.seg]).reshape(self.q, 1)
        return float(self.reduce(parts)[0])

    # -- global order ------------------------------------------------------------------
    def global_index(self, rank: int) -> np.ndarray:
        """Global flat index ([A row-major; B row-major]) of every local entry of ``rank``."""
        k, parts = self.w, []
        for t in range(self.q):
            b = rank + t * self.P
            parts.append(np.arange(self.rcuts[b] * k, self.rcuts[b + 1] * k, dtype=np.int64))
            parts.append(self.m * k + np.arange(self.ccuts[b] * k, self.ccuts[b + 1] * k, dtype=np.int64))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def gather(self, vec: np.ndarray) -> np.ndarray | None:
        """Collective: the global vector on rank 0 (None elsewhere)."""
        pieces = gather_to_root(self.comm, vec)
        if pieces is None:
            return None
        full = np.empty(self.n_vars)
        for r, piece in enumerate(pieces):
            full[self.global_index(r)] = piece
        return full

    def scatter(self, full: np.ndarray) -> np.ndarray:
        """This rank's slice of a global vector available on every rank."""
        return np.ascontiguousarray(np.asarray(full, dtype=np.float64).ravel()[self.global_index(self.rank)])

    def split_global(self, full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(W, H) = (A, B) views of a global flat vector (w columns: factors, then the bias if any)."""
        mk = self.m * self.w
        return full[:mk].reshape(self.m, self.w), full[mk:].reshape(self.n, self.w)

    # -- init --------------------------------------------------------------------------
    def init_random(self, seed: int, scale: float) -> None:
        """N(0, scale^2) factors from row-chunk keyed generators (same at any rank count); biases 0."""
        k = self.k
        for t, b in enumerate(self.groups):
            self.A(self.x, t)[:, :k] = random_rows(seed, 0, int(self.rcuts[b]), int(self.rcuts[b + 1]), k, scale)
            self.B(self.x, t)[:, :k] = random_rows(seed, 1, int(self.ccuts[b]), int(self.ccuts[b + 1]), k, scale)
            self.A(self.x, t)[:, k:] = 0.0
            self.B(self.x, t)[:, k:] = 0.0

    def init_from(self, W: np.ndarray, H: np.ndarray, row_bias: np.ndarray | None = None,
                  col_bias: np.ndarray | None = None) -> None:
        """Factors given in global order (on every rank): W (m x k), H (n x k); biases 0 unless given."""
        k = self.k
        for t, b in enumerate(self.groups):
            A, B = self.A(self.x, t), self.B(self.x, t)
            A[:, :k] = W[self.rcuts[b]:self.rcuts[b + 1], :k]
            B[:, :k] = H[self.ccuts[b]:self.ccuts[b + 1], :k]
            if self.bias:
                A[:, k] = 0.0 if row_bias is None else row_bias[self.rcuts[b]:self.rcuts[b + 1]]
                B[:, k] = 0.0 if col_bias is None else col_bias[self.ccuts[b]:self.ccuts[b + 1]]

    def describe(self) -> str:
        return (f"{self.m} x {self.n}, {self.nnz} ratings ({self.nnz_test} held out), "
                f"{self.nb}x{self.nb} blocks, k={self.k}" + (" + biases" if self.bias else ""))


def predict(solution: dict, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Predicted ratings of (rows[t], cols[t]) (0-based, in the factored orientation) from a result's
    ``solution`` (``W``, ``H``, ``offset`` and, with biases, ``row_bias``/``col_bias``):
    ``offset + W[i] . H[j] + row_bias[i] + col_bias[j]``."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    W, H = np.asarray(solution["W"]), np.asarray(solution["H"])
    out = np.einsum("ij,ij->i", W[rows], H[cols]) + float(np.asarray(solution.get("offset", [0.0])).ravel()[0])
    if "row_bias" in solution:
        out += np.asarray(solution["row_bias"])[rows] + np.asarray(solution["col_bias"])[cols]
    return out
