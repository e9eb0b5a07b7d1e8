"""Compiled (numba) kernels of one rating block: one pass over the block's ratings, no temporaries.

Factor rows are ``[a_1 .. a_k]`` or, with biases, ``[a_1 .. a_k, bias]`` (width k+1); the
prediction of rating (i, j) is ``a_i[:k].b_j[:k] (+ bias_i + bias_j)``. Ratings are stored sorted
by row. Sums run in rating order (the dot product over k in column order), so a block gives the
same bits wherever it is computed: iterates do not depend on the rank count for a fixed grid.
``fastmath`` is off (it would let the compiler reorder those sums).

The numpy versions in :class:`mpiopt.mf.kernels.RatingBlock` (``*_reference``) are the reference
implementations the tests compare these kernels with.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from ..compiled import njit


@njit(nogil=True)
def _reg(A, B, k, reg_r, reg_c, regb_r, regb_c, gA, gB, grad):
    """0.5 sum_i reg_r[i] |a_i[:k]|^2 (+ bias terms) + same for B; adds the gradient if ``grad``."""
    w = A.shape[1]
    f = 0.0
    if reg_r.size:
        for i in range(A.shape[0]):
            s = 0.0
            for c in range(k):
                s += A[i, c] * A[i, c]
                if grad:
                    gA[i, c] += reg_r[i] * A[i, c]
            f += reg_r[i] * s
        for j in range(B.shape[0]):
            s = 0.0
            for c in range(k):
                s += B[j, c] * B[j, c]
                if grad:
                    gB[j, c] += reg_c[j] * B[j, c]
            f += reg_c[j] * s
    if w > k and regb_r.size:
        for i in range(A.shape[0]):
            f += regb_r[i] * A[i, k] * A[i, k]
            if grad:
                gA[i, k] += regb_r[i] * A[i, k]
        for j in range(B.shape[0]):
            f += regb_c[j] * B[j, k] * B[j, k]
            if grad:
                gB[j, k] += regb_c[j] * B[j, k]
    return 0.5 * f


@njit(nogil=True)
def loss_grad(ii, jj, v, A, B, k, inv_nnz, reg_r, reg_c, regb_r, regb_c, gA, gB, resid, use_resid):
    """(objective part, sse) of the block; its gradient into gA (rows x w) and gB (cols x w).
    ``use_resid``: the residuals of these same factors are in ``resid`` (skips the predictions).
    A row's gradient is accumulated in a local row while the row's ratings run (same sums, same
    order as adding into gA rating by rating; ratings grouped by row make it one load/store per row)."""
    w = A.shape[1]
    bias = w > k
    gA[:, :] = 0.0
    gB[:, :] = 0.0
    acc = np.empty(w)
    sse = 0.0
    n = v.size
    t = 0
    while t < n:
        i = ii[t]
        for c in range(w):
            acc[c] = gA[i, c]
        while t < n and ii[t] == i:
            j = jj[t]
            if use_resid:
                r = resid[t]
            else:
                p = 0.0
                for c in range(k):
                    p += A[i, c] * B[j, c]
                if bias:
                    p += A[i, k] + B[j, k]
                r = p - v[t]
            sse += r * r
            r *= inv_nnz
            for c in range(k):
                acc[c] += r * B[j, c]
                gB[j, c] += r * A[i, c]
            if bias:
                acc[k] += r
                gB[j, k] += r
            t += 1
        for c in range(w):
            gA[i, c] = acc[c]
    f = 0.5 * inv_nnz * sse
    f += _reg(A, B, k, reg_r, reg_c, regb_r, regb_c, gA, gB, True)
    return f, sse


@njit(nogil=True)
def loss(ii, jj, v, A, B, k, inv_nnz, reg_r, reg_c, regb_r, regb_c, resid, keep):
    """(objective part, sse) of the block; the residuals into ``resid`` if ``keep``."""
    w = A.shape[1]
    bias = w > k
    sse = 0.0
    for t in range(v.size):
        i = ii[t]
        j = jj[t]
        p = 0.0
        for c in range(k):
            p += A[i, c] * B[j, c]
        if bias:
            p += A[i, k] + B[j, k]
        r = p - v[t]
        if keep:
            resid[t] = r
        sse += r * r
    f = 0.5 * inv_nnz * sse
    f += _reg(A, B, k, reg_r, reg_c, regb_r, regb_c, A, B, False)
    return f, sse


@njit(nogil=True)
def sq_errors(ii, jj, v, A, B, k, lo, hi):
    """(sum of squared errors, same with predictions clipped to [lo, hi])."""
    w = A.shape[1]
    bias = w > k
    sse = 0.0
    ssc = 0.0
    for t in range(v.size):
        i = ii[t]
        j = jj[t]
        p = 0.0
        for c in range(k):
            p += A[i, c] * B[j, c]
        if bias:
            p += A[i, k] + B[j, k]
        r = p - v[t]
        sse += r * r
        q = min(max(p, lo), hi) - v[t]
        ssc += q * q
    return sse, ssc


@njit(nogil=True)
def _add_mean(F, idx, G, n, scale, acc, cnt):
    """F[r] += scale * (mean of the rows G[t] with idx[t] == r), t < n; each row's sum in t order.
    ``acc`` (rows of F x w) and ``cnt`` (rows of F) are zero on entry and left zero."""
    w = F.shape[1]
    for t in range(n):
        r = idx[t]
        if cnt[r] == 0:
            for c in range(w):
                acc[r, c] = G[t, c]
        else:
            for c in range(w):
                acc[r, c] += G[t, c]
        cnt[r] += 1
    for t in range(n):
        r = idx[t]
        if cnt[r]:
            f = scale / cnt[r]
            for c in range(w):
                F[r, c] += acc[r, c] * f
                acc[r, c] = 0.0
            cnt[r] = 0


@njit(nogil=True)
def sgd_block(ii, jj, v, perm, A, B, k, lr, bs, lam, lam_b, lam_r, lamb_r, lam_c, lamb_c):
    """Minibatch SGD over one block (``dsgd``): ratings in the order ``perm``, ``bs`` at a time; in a
    minibatch every update is computed at the same point, and a row or column met several times
    moves by the mean of its updates (a_i -= lr (e b_j + lam_i a_i), b_j -= lr (e a_i + lam_j b_j);
    bias columns: u_i -= lr (e + lamb_i u_i)). ``lam``/``lam_b`` > 0 switch the L2 terms on."""
    w = A.shape[1]
    bias = w > k
    nb_ = min(bs, perm.size)
    gA = np.empty((nb_, w))
    gB = np.empty((nb_, w))
    bi = np.empty(nb_, np.int64)
    bj = np.empty(nb_, np.int64)
    accA = np.zeros((A.shape[0], w))
    accB = np.zeros((B.shape[0], w))
    cntA = np.zeros(A.shape[0], np.int64)
    cntB = np.zeros(B.shape[0], np.int64)
    for lo in range(0, perm.size, bs):
        n = min(bs, perm.size - lo)
        for t in range(n):
            q = perm[lo + t]
            i = ii[q]
            j = jj[q]
            bi[t] = i
            bj[t] = j
            p = 0.0
            for c in range(k):
                p += A[i, c] * B[j, c]
            if bias:
                p += A[i, k] + B[j, k]
            e = p - v[q]
            for c in range(k):
                gA[t, c] = e * B[j, c]
                gB[t, c] = e * A[i, c]
            if bias:
                gA[t, k] = e
                gB[t, k] = e
            if lam > 0:
                for c in range(k):
                    gA[t, c] += lam_r[i] * A[i, c]
                    gB[t, c] += lam_c[j] * B[j, c]
            if bias and lam_b > 0:
                gA[t, k] += lamb_r[i] * A[i, k]
                gB[t, k] += lamb_c[j] * B[j, k]
        _add_mean(A, bi, gA, n, -lr, accA, cntA)
        _add_mean(B, bj, gB, n, -lr, accB, cntB)


@njit(nogil=True)
def tile_positions(j, tile, ntiles, pos):
    """Stable counting sort of ratings by column tile ``j // tile``: ``pos[t]`` (preallocated) is
    rating t's place when stored tile by tile, storage order kept within a tile."""
    edges = np.zeros(ntiles + 1, dtype=np.int64)
    for t in range(j.size):
        edges[j[t] // tile + 1] += 1
    for b in range(ntiles):
        edges[b + 1] += edges[b]
    for t in range(j.size):
        b = j[t] // tile
        pos[t] = edges[b]
        edges[b] += 1


@njit(nogil=True)
def scatter_back(a, pos, tmp):
    """a <- a placed at ``pos`` (through ``tmp``, at least as long as ``a``)."""
    for t in range(a.size):
        tmp[pos[t]] = a[t]
    for t in range(a.size):
        a[t] = tmp[t]


@njit(nogil=True)
def axpy(a, x, y):
    """y += a * x without a temporary (the product rounded, then added: as numpy's two passes)."""
    for i in range(y.size):
        y[i] += x[i] * a


def warm_ups() -> list[Callable[[], None]]:
    """One call per kernel that compiles (or loads from the cache) every signature the solvers use."""
    i = np.zeros(1, np.int32)
    A = np.zeros((1, 2))
    e = np.zeros(0)
    vals = (np.zeros(1), np.zeros(1, np.float32))

    def each_value_type(fn: Callable[[np.ndarray], None]) -> Callable[[], None]:
        def run() -> None:
            for v in vals:
                fn(v)
        return run

    def scatters() -> None:
        for ot in (np.int32, np.int64):
            p = np.zeros(1, ot)
            tile_positions(i, 1, 1, p)
            for a in (i, np.zeros(1), np.zeros(1, np.float32)):
                scatter_back(a, p, a.copy())

    return [each_value_type(lambda v: loss_grad(i, i, v, A, A, 1, 1.0, e, e, e, e, A.copy(), A.copy(), e, False)),
            each_value_type(lambda v: loss(i, i, v, A, A, 1, 1.0, e, e, e, e, e, False)),
            each_value_type(lambda v: sq_errors(i, i, v, A, A, 1, 0.0, 1.0)),
            each_value_type(lambda v: sgd_block(i, i, v, np.zeros(1, np.int64), A.copy(), A.copy(), 1, 0.1, 1,
                                                0.0, 0.0, e, e, e, e)),
            scatters,
            lambda: axpy(1.0, e, e)]


def warm_up() -> None:
    """Compile (or load from the cache) every kernel signature the solvers use, in this process."""
    for w in warm_ups():
        w()

