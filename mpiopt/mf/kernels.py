"""One block of ratings (local row and column indices) and its vectorized kernels.

A block stores its ratings grouped by row (input order kept within a row) as a CSR pattern, so
the gradient is two sparse-dense products (``R @ B`` and ``R.T @ A``, compiled loops in scipy)
and the predictions are chunked row-wise dot products of gathered factor rows.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

_CHUNK_ELEMS = 1 << 16   # gathered factor entries per chunk (512 kB per operand: stays in cache)


class RatingBlock:
    """Ratings ``(i, j, v)`` of one block with local indices ``0 <= i < n_rows``, ``0 <= j < n_cols``.

    ``reg_rows``/``reg_cols`` (optional) are per-row/column L2 weights of this block, in objective
    units: the block's loss is ``sum r^2 / (2 nnz) + (reg_rows.|a_i|^2 + reg_cols.|b_j|^2) / 2``."""

    def __init__(self, i: np.ndarray, j: np.ndarray, v: np.ndarray, n_rows: int, n_cols: int):
        i = np.asarray(i, dtype=np.int64)
        order = np.argsort(i, kind="stable")
        self.i = np.ascontiguousarray(i[order], dtype=np.int32)
        self.j = np.ascontiguousarray(np.asarray(j)[order], dtype=np.int32)
        self.v = np.ascontiguousarray(np.asarray(v, dtype=np.float64)[order])
        self.n_rows, self.n_cols = int(n_rows), int(n_cols)
        self.nnz = int(self.v.size)
        self.row_counts = np.bincount(self.i, minlength=self.n_rows).astype(np.int64)
        self.col_counts = np.bincount(self.j, minlength=self.n_cols).astype(np.int64)
        self.reg_rows: np.ndarray | None = None
        self.reg_cols: np.ndarray | None = None
        self._R: sp.csr_matrix | None = None
        self._pred = np.empty(self.nnz)
        self._resid_kept = False      # R.data holds unscaled residuals of the last loss(keep=True)

    @property
    def R(self) -> sp.csr_matrix:
        """CSR matrix with this block's pattern; its ``data`` is overwritten by each gradient call."""
        if self._R is None:
            indptr = np.zeros(self.n_rows + 1, dtype=np.int32 if self.nnz < 2**31 else np.int64)
            np.cumsum(self.row_counts, out=indptr[1:])
            self._R = sp.csr_matrix((np.zeros(self.nnz), self.j.copy(), indptr),
                                    shape=(self.n_rows, self.n_cols), copy=False)
        return self._R

    def set_reg(self, lam: float, nnz_total: int, mode: str, row_total: np.ndarray | None = None,
                col_total: np.ndarray | None = None) -> None:
        """L2 attached to ratings: ``rating`` (weighted-lambda: lam*cnt/nnz per row/column) or
        ``uniform`` (lam*cnt_block/cnt_total/nnz, i.e. lam/2 |A|^2 / nnz over all blocks)."""
        if lam <= 0:
            self.reg_rows = self.reg_cols = None
            return
        if mode == "uniform":
            assert row_total is not None and col_total is not None
            self.reg_rows = lam * self.row_counts / np.maximum(row_total, 1) / nnz_total
            self.reg_cols = lam * self.col_counts / np.maximum(col_total, 1) / nnz_total
        else:
            self.reg_rows = lam * self.row_counts / nnz_total
            self.reg_cols = lam * self.col_counts / nnz_total

    def predict(self, A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Predictions a_i.b_j of every rating (chunked gathers, no per-rating Python loop)."""
        out = self._pred if out is None else out
        k = A.shape[1]
        step = max(256, _CHUNK_ELEMS // max(k, 1))
        for lo in range(0, self.nnz, step):
            hi = min(lo + step, self.nnz)
            out[lo:hi] = np.einsum("ij,ij->i", A[self.i[lo:hi]], B[self.j[lo:hi]], optimize=False)
        return out

    def reg_value(self, A: np.ndarray, B: np.ndarray) -> float:
        if self.reg_rows is None:
            return 0.0
        return 0.5 * (float(self.reg_rows @ np.einsum("ij,ij->i", A, A)) +
                      float(self.reg_cols @ np.einsum("ij,ij->i", B, B)))

    def loss(self, A: np.ndarray, B: np.ndarray, inv_nnz: float, keep: bool = False) -> tuple[float, float]:
        """(objective part, sum of squared residuals) of this block. ``keep``: leave the residuals
        for a following :meth:`loss_grad` at the same factors (``reuse=True``)."""
        if self.nnz == 0:
            return self.reg_value(A, B), 0.0
        r = self.predict(A, B, out=self.R.data if keep else None)
        r -= self.v
        if keep:
            self._resid_kept = True
        sse = float(r @ r)
        return 0.5 * inv_nnz * sse + self.reg_value(A, B), sse

    def loss_grad(self, A: np.ndarray, B: np.ndarray, inv_nnz: float,
                  reuse: bool = False) -> tuple[float, float, np.ndarray, np.ndarray]:
        """(objective part, sse, dA, dB) of this block at factors ``A`` (n_rows x k), ``B`` (n_cols x k).
        ``reuse``: the caller guarantees the last ``loss(keep=True)`` was at these same factors."""
        if self.nnz == 0:
            gA = np.zeros_like(A)
            gB = np.zeros_like(B)
            sse = 0.0
        else:
            R = self.R
            if reuse and self._resid_kept:
                r = R.data
            else:
                r = self.predict(A, B, out=R.data)
                r -= self.v
            self._resid_kept = False
            sse = float(r @ r)
            r *= inv_nnz
            gA = np.asarray(R @ B)
            gB = np.asarray(R.T @ A)
        f = 0.5 * inv_nnz * sse
        if self.reg_rows is not None:
            f += self.reg_value(A, B)
            gA += self.reg_rows[:, None] * A
            gB += self.reg_cols[:, None] * B
        return f, sse, gA, gB

    def sq_errors(self, A: np.ndarray, B: np.ndarray, lo: float | None = None,
                  hi: float | None = None) -> tuple[float, float]:
        """(sum of squared errors, same with predictions clipped to [lo, hi])."""
        if self.nnz == 0:
            return 0.0, 0.0
        p = self.predict(A, B)
        r = p - self.v
        sse = float(r @ r)
        if lo is None:
            return sse, sse
        np.clip(p, lo, hi, out=p)
        p -= self.v
        return sse, float(p @ p)
