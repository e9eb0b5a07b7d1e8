"""One block of ratings (local row and column indices) and its kernels.

A block stores its ratings grouped by row (input order kept within a row); a block with many
columns by column tile, then by row (its B rows stay in cache). The kernels that run every
iteration are compiled (:mod:`.fused`: one pass over the ratings, no temporaries); the numpy
versions (``*_reference``: chunked gathers, sparse-dense products in scipy) are kept as reference
implementations for the tests and for checking the compiled ones.

Factor matrices ``A`` (rows x w) and ``B`` (columns x w) have w = k columns, or k+1 with biases: the
last column then holds the row (column) bias and the prediction is a_i[:k].b_j[:k] + a_i[k] + b_j[k].
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import fused

_CHUNK_ELEMS = 1 << 16   # gathered factor entries per chunk (512 kB per operand: stays in cache)
# column tile: the B and gradient rows of one tile's columns take at most this many bytes (they
# stay in a core's L2 cache while the tile's ratings run); blocks with fewer columns are not tiled
TILE_BYTES = 1 << 20
_NONE = np.zeros(0)


class RatingBlock:
    """Ratings ``(i, j, v)`` of one block with local indices ``0 <= i < n_rows``, ``0 <= j < n_cols``.

    ``k`` is the number of factor columns (None: every column; k+1 columns mean biases).
    ``reg_rows``/``reg_cols`` (optional) are per-row/column L2 weights of this block, in objective
    units: the block's loss is ``sum r^2 / (2 nnz) + (reg_rows.|a_i[:k]|^2 + reg_cols.|b_j[:k]|^2) / 2``
    plus ``(reg_bias_rows.a_i[k]^2 + reg_bias_cols.b_j[k]^2) / 2`` with biases.
    ``sorted_rows``: the ratings already come grouped by row (no sort, arrays kept as given).
    A block whose column factors exceed :data:`TILE_BYTES` is stored by column tile, then by row
    (in place, :meth:`tile_columns`): the kernels' random reads of B rows then hit a core's cache."""

    def __init__(self, i: np.ndarray, j: np.ndarray, v: np.ndarray, n_rows: int, n_cols: int,
                 k: int | None = None, sorted_rows: bool = False):
        if sorted_rows:
            self.i, self.j, self.v = i, j, v
        else:
            order = np.argsort(np.asarray(i, dtype=np.int64), kind="stable")
            self.i = np.ascontiguousarray(np.asarray(i)[order], dtype=np.int32)
            self.j = np.ascontiguousarray(np.asarray(j)[order], dtype=np.int32)
            v = np.asarray(v)
            self.v = np.ascontiguousarray(v[order], dtype=v.dtype if v.dtype == np.float32 else np.float64)
        self.n_rows, self.n_cols = int(n_rows), int(n_cols)
        self.k = k
        self.nnz = int(self.v.size)
        self.reg_rows: np.ndarray | None = None
        self.reg_cols: np.ndarray | None = None
        self.reg_bias_rows: np.ndarray | None = None
        self.reg_bias_cols: np.ndarray | None = None
        self._R: sp.csr_matrix | None = None
        self._resid: np.ndarray | None = None    # residuals of the last loss(keep=True), made on demand
        self._resid_kept = False
        self.tiles = 1
        self.tile_columns()

    def tile_columns(self) -> None:
        """Reorder the ratings (in place) by column tile, keeping the row order within a tile, when
        the block's B rows and their gradient (w = k+1 columns assumed) exceed TILE_BYTES. The tile
        size depends only on the block's shape: same order at any rank count for a fixed grid."""
        w = (self.k or 1) + 1
        cols = max(1, TILE_BYTES // (16 * w))
        ntiles = -(-self.n_cols // cols)
        if ntiles <= 1 or self.nnz == 0:
            return
        pos = np.empty(self.nnz, np.int32 if self.nnz < 2 ** 31 else np.int64)
        fused.tile_positions(self.j, cols, ntiles, pos)
        tmp = np.empty(self.nnz * max(self.i.itemsize, self.v.itemsize), np.uint8)   # scratch for each array in turn
        for a in (self.i, self.j, self.v):
            fused.scatter_back(a, pos, tmp.view(a.dtype)[:a.size])
        self.tiles = ntiles

    @property
    def row_counts(self) -> np.ndarray:
        return np.bincount(self.i, minlength=self.n_rows).astype(np.int64)

    @property
    def col_counts(self) -> np.ndarray:
        return np.bincount(self.j, minlength=self.n_cols).astype(np.int64)

    def _k(self, A: np.ndarray) -> int:
        return A.shape[1] if self.k is None else self.k

    def set_reg(self, lam: float, nnz_total: int, mode: str, row_total: np.ndarray | None = None,
                col_total: np.ndarray | None = None, lam_bias: float = 0.0) -> None:
        """L2 attached to ratings: ``rating`` (weighted-lambda: lam*cnt/nnz per row/column) or
        ``uniform`` (lam*cnt_block/cnt_total/nnz, i.e. lam/2 |A|^2 / nnz over all blocks);
        ``lam_bias`` the same for the bias column."""
        rc, cc = self.row_counts, self.col_counts
        if mode == "uniform":
            assert row_total is not None and col_total is not None
            wr = rc / np.maximum(row_total, 1) / nnz_total
            wc = cc / np.maximum(col_total, 1) / nnz_total
        else:
            wr, wc = rc / nnz_total, cc / nnz_total
        self.reg_rows, self.reg_cols = (lam * wr, lam * wc) if lam > 0 else (None, None)
        self.reg_bias_rows, self.reg_bias_cols = (lam_bias * wr, lam_bias * wc) if lam_bias > 0 else (None, None)

    def _regs(self):
        n = _NONE
        return (n if self.reg_rows is None else self.reg_rows, n if self.reg_cols is None else self.reg_cols,
                n if self.reg_bias_rows is None else self.reg_bias_rows,
                n if self.reg_bias_cols is None else self.reg_bias_cols)

    # -- compiled kernels (every iteration) -------------------------------------------------------
    def loss(self, A: np.ndarray, B: np.ndarray, inv_nnz: float, keep: bool = False) -> tuple[float, float]:
        """(objective part, sum of squared residuals) of this block. ``keep``: leave the residuals
        for a following :meth:`loss_grad` at the same factors (``reuse=True``)."""
        if keep and self._resid is None:
            self._resid = np.empty(self.nnz)
        f, sse = fused.loss(self.i, self.j, self.v, A, B, self._k(A), inv_nnz, *self._regs(),
                            self._resid if keep else _NONE, keep)
        if keep:
            self._resid_kept = True
        return f, sse

    def loss_grad(self, A: np.ndarray, B: np.ndarray, inv_nnz: float, reuse: bool = False,
                  gA: np.ndarray | None = None, gB: np.ndarray | None = None
                  ) -> tuple[float, float, np.ndarray, np.ndarray]:
        """(objective part, sse, dA, dB) of this block at factors ``A`` (n_rows x w), ``B`` (n_cols x w),
        written into ``gA``/``gB`` when given. ``reuse``: the caller guarantees the last
        ``loss(keep=True)`` was at these same factors."""
        gA = np.empty_like(A) if gA is None else gA
        gB = np.empty_like(B) if gB is None else gB
        use = bool(reuse and self._resid_kept)
        f, sse = fused.loss_grad(self.i, self.j, self.v, A, B, self._k(A), inv_nnz, *self._regs(), gA, gB,
                                 self._resid if use else _NONE, use)
        self._resid_kept = False
        return f, sse, gA, gB

    def sq_errors(self, A: np.ndarray, B: np.ndarray, lo: float | None = None,
                  hi: float | None = None) -> tuple[float, float]:
        """(sum of squared errors, same with predictions clipped to [lo, hi])."""
        return fused.sq_errors(self.i, self.j, self.v, A, B, self._k(A),
                               -np.inf if lo is None else lo, np.inf if hi is None else hi)

    # -- numpy reference implementations -----------------------------------------------------------
    @property
    def R(self) -> sp.csr_matrix:
        """CSR matrix with this block's pattern (reference kernels only)."""
        if self._R is None:
            indptr = np.zeros(self.n_rows + 1, dtype=np.int32 if self.nnz < 2**31 else np.int64)
            np.cumsum(self.row_counts, out=indptr[1:])
            # CSR position of each rating (None: storage order is already grouped by row)
            self._csr = None if not np.any(np.diff(self.i) < 0) else np.argsort(self.i, kind="stable")
            jj = self.j if self._csr is None else self.j[self._csr]
            self._R = sp.csr_matrix((np.zeros(self.nnz), jj.copy(), indptr),
                                    shape=(self.n_rows, self.n_cols), copy=False)
        return self._R

    def predict_reference(self, A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Predictions of every rating (chunked gathers, no per-rating Python loop)."""
        out = np.empty(self.nnz) if out is None else out
        k = self._k(A)
        step = max(256, _CHUNK_ELEMS // max(k, 1))
        for lo in range(0, self.nnz, step):
            hi = min(lo + step, self.nnz)
            i, j = self.i[lo:hi], self.j[lo:hi]
            out[lo:hi] = np.einsum("ij,ij->i", A[i, :k], B[j, :k], optimize=False)
            if A.shape[1] > k:
                out[lo:hi] += A[i, k] + B[j, k]
        return out

    def reg_value_reference(self, A: np.ndarray, B: np.ndarray) -> float:
        k = self._k(A)
        f = 0.0
        if self.reg_rows is not None:
            f += float(self.reg_rows @ np.einsum("ij,ij->i", A[:, :k], A[:, :k])) + \
                float(self.reg_cols @ np.einsum("ij,ij->i", B[:, :k], B[:, :k]))
        if self.reg_bias_rows is not None and A.shape[1] > k:
            f += float(self.reg_bias_rows @ A[:, k] ** 2) + float(self.reg_bias_cols @ B[:, k] ** 2)
        return 0.5 * f

    def loss_reference(self, A: np.ndarray, B: np.ndarray, inv_nnz: float) -> tuple[float, float]:
        r = self.predict_reference(A, B)
        r -= self.v
        sse = float(r @ r)
        return 0.5 * inv_nnz * sse + self.reg_value_reference(A, B), sse

    def loss_grad_reference(self, A: np.ndarray, B: np.ndarray, inv_nnz: float
                            ) -> tuple[float, float, np.ndarray, np.ndarray]:
        k = self._k(A)
        R = self.R
        r = self.predict_reference(A, B)
        r -= self.v
        sse = float(r @ r)
        r *= inv_nnz
        R.data[:] = r if self._csr is None else r[self._csr]
        gA, gB = np.zeros_like(A), np.zeros_like(B)
        gA[:, :k] = np.asarray(R @ B[:, :k])
        gB[:, :k] = np.asarray(R.T @ A[:, :k])
        if A.shape[1] > k:
            gA[:, k] = np.asarray(R.sum(axis=1)).ravel()
            gB[:, k] = np.asarray(R.sum(axis=0)).ravel()
        if self.reg_rows is not None:
            gA[:, :k] += self.reg_rows[:, None] * A[:, :k]
            gB[:, :k] += self.reg_cols[:, None] * B[:, :k]
        if self.reg_bias_rows is not None and A.shape[1] > k:
            gA[:, k] += self.reg_bias_rows * A[:, k]
            gB[:, k] += self.reg_bias_cols * B[:, k]
        return 0.5 * inv_nnz * sse + self.reg_value_reference(A, B), sse, gA, gB

    def sq_errors_reference(self, A: np.ndarray, B: np.ndarray, lo: float | None = None,
                            hi: float | None = None) -> tuple[float, float]:
        p = self.predict_reference(A, B)
        r = p - self.v
        sse = float(r @ r)
        if lo is None:
            return sse, sse
        np.clip(p, lo, hi, out=p)
        p -= self.v
        return sse, float(p @ p)
