"""Compiled (numba) set-up kernels of the MF grid and of ``synthetic_mf``: generating ratings
straight into their arrays, and routing/sorting them by out-of-place counting-sort scatters (one
sequential or near-sequential pass per array, no int64 temporaries).

The order they produce is exactly that of the numpy versions they replace (stable sorts; the
generator draws the same random streams in the same order), so data and iterates are unchanged.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from ..compiled import njit


# -- synthetic_mf generator ----------------------------------------------------------------------
def guide_table(cum: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Index table of the increasing table ``cum`` for :func:`_search`: (lo, h, 1/h) with G = cum.size
    buckets of width h; any value in [k h, (k+1) h) has its answer in [lo[k], lo[k+1]]."""
    G = max(1, cum.size)
    h = float(cum[-1]) / G
    edges = np.arange(G + 1, dtype=np.float64) * h
    edges[-1] = np.inf
    lo = np.searchsorted(cum, edges, side="left").astype(np.int64)
    return lo, h, (1.0 / h if h > 0 else 0.0)


@njit(nogil=True)
def _search(cum, lo, h, inv_h, x):
    """``np.searchsorted(cum, x, side='left')`` through the index table (the same answer; the bucket
    edges k h are computed as in :func:`guide_table`)."""
    G = lo.size - 1
    k = min(int(x * inv_h), G - 1)
    if k < 0:
        k = 0
    while k + 1 < G and x >= (k + 1) * h:
        k += 1
    while k > 0 and x < k * h:
        k -= 1
    a, b = lo[k], lo[k + 1]
    while a < b:
        mid = (a + b) >> 1
        if cum[mid] < x:
            a = mid + 1
        else:
            b = mid
    return a


@njit(nogil=True)
def _einsum_dot(U, V, i, j):
    """Row dot product U[i].V[j] summed as numpy's ``einsum('ij,ij->i')`` does on x86-64 (two lanes,
    blocks of eight in reverse pair order, lanes added last): the same bits."""
    rk = U.shape[1]
    a0 = 0.0
    a1 = 0.0
    c = 0
    while rk - c >= 8:
        for p in range(3, -1, -1):
            a0 += U[i, c + 2 * p] * V[j, c + 2 * p]
            a1 += U[i, c + 2 * p + 1] * V[j, c + 2 * p + 1]
        c += 8
    while c < rk:
        a0 += U[i, c] * V[j, c]
        if c + 1 < rk:
            a1 += U[i, c + 1] * V[j, c + 1]
        c += 2
    return a0 + a1


@njit(nogil=True)
def hash_uniform_one(a, b, seed_word):
    """One number of :func:`mpiopt.problems.mf.hash_uniform` (splitmix64 of (a, b, seed))."""
    z = (np.uint64(a) * np.uint64(0x9E3779B97F4A7C15)) ^ (np.uint64(b) * np.uint64(0xC2B2AE3D27D4EB4F)) ^ seed_word
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return float(z >> np.uint64(11)) * 2.0 ** -53


@njit(nogil=True)
def generate_chunk(rng, cnt, crow, rlo, rh, rinv, prow, ccol, clo, ch, cinv, pcol, Up, Vp,
                   mean, noise, test_fraction, seed_word, rows, cols, vals, pos, trows, tcols, tvals):
    """One chunk of ``synthetic_mf``: ``cnt`` ratings drawn from ``rng`` (rows, then columns, then
    the noise, as the numpy version). ``Up``/``Vp``: the planted factors in popularity order
    (``U[prow]``, ``V[pcol]``: the popular rows are read from a small, cached part). Training
    ratings are written to rows/cols/vals from ``pos`` (the arrays need room for ``cnt`` there),
    held-out ones to trows/tcols/tvals from 0. Returns (training ratings written, held-out ones)."""
    m = prow.size
    n = pcol.size
    tot_r = crow[-1]
    tot_c = ccol[-1]
    for t in range(cnt):                     # popularity ranks first, the permuted ids at the end
        rows[pos + t] = min(_search(crow, rlo, rh, rinv, rng.random() * tot_r), m - 1)
    for t in range(cnt):
        cols[pos + t] = min(_search(ccol, clo, ch, cinv, rng.random() * tot_c), n - 1)
    for t in range(cnt):
        a, b = rows[pos + t], cols[pos + t]
        vals[pos + t] = (mean + _einsum_dot(Up, Vp, a, b)) + noise * rng.standard_normal()
        rows[pos + t] = prow[a]
        cols[pos + t] = pcol[b]
    if test_fraction <= 0.0:
        return cnt, 0
    w = pos
    nt = 0
    for t in range(pos, pos + cnt):
        i, j, v = rows[t], cols[t], vals[t]
        if hash_uniform_one(i, j, seed_word) < test_fraction:
            trows[nt], tcols[nt], tvals[nt] = i, j, v
            nt += 1
        else:
            rows[w], cols[w], vals[w] = i, j, v
            w += 1
    return w - pos, nt


@njit(nogil=True)
def split_inplace(rows, cols, vals, seed_word, fraction, trows, tcols, tvals):
    """Move the ratings whose :func:`hash_uniform_one` of (row, col) is below ``fraction`` to
    trows/tcols/tvals (room for them needed: :func:`count_split`) and compact the others in place,
    both in their given order. Returns the number kept."""
    w = 0
    nt = 0
    for t in range(rows.size):
        i, j, v = rows[t], cols[t], vals[t]
        if hash_uniform_one(i, j, seed_word) < fraction:
            trows[nt], tcols[nt], tvals[nt] = i, j, v
            nt += 1
        else:
            rows[w], cols[w], vals[w] = i, j, v
            w += 1
    return w


@njit(nogil=True)
def count_split(rows, cols, seed_word, fraction):
    """How many ratings :func:`split_inplace` moves out."""
    nt = 0
    for t in range(rows.size):
        if hash_uniform_one(rows[t], cols[t], seed_word) < fraction:
            nt += 1
    return nt


@njit(nogil=True)
def count_into(idx, counts):
    """counts[idx[t]] += 1 (a bincount without an int64 copy of ``idx``)."""
    for t in range(idx.size):
        counts[idx[t]] += 1


# -- routing and sorting of the grid ---------------------------------------------------------------
@njit(nogil=True)
def owner_positions(rows, rcuts, P, pos):
    """Destination of every rating when grouped by the rank owning its row block (stable):
    ``pos`` (preallocated) gets the positions; returns the P + 1 group edges."""
    edges = np.zeros(P + 1, dtype=np.int64)
    nb = rcuts.size - 1
    for t in range(rows.size):
        edges[(np.searchsorted(rcuts, rows[t], side="right") - 1) % P + 1] += 1
    for p in range(P):
        edges[p + 1] += edges[p]
    nxt = edges[:-1].copy()
    for t in range(rows.size):
        o = (np.searchsorted(rcuts, rows[t], side="right") - 1) % P
        pos[t] = nxt[o]
        nxt[o] += 1
    return edges


@njit(nogil=True)
def _local_row(rows, t, rcuts, P, roff):
    rb = np.searchsorted(rcuts, rows[t], side="right") - 1
    return rb, roff[rb // P] + rows[t] - rcuts[rb]


@njit(nogil=True)
def block_row_positions(rows, cols, rcuts, ccuts, nb, P, q, groups, pos):
    """Destination of every rating of this rank's row blocks in the block layout: by block key
    (stratum * q + local group), then by row, then in the given order (a stable sort by row
    followed by a stable sort by block). ``groups[t]``: the row block of local group t.
    One counting sort on the key (stratum, local row): two passes over the ratings and a table of
    nb x (this rank's rows) counters. Returns the nb*q + 1 block edges."""
    roff = np.zeros(q + 1, dtype=np.int64)          # local row number lr = roff[t] + row - rcuts[b]
    for t in range(q):
        b = groups[t]
        roff[t + 1] = roff[t] + rcuts[b + 1] - rcuts[b]
    nrows = roff[q]
    nxt = np.zeros(nb * nrows + 1, dtype=pos.dtype)   # key s * nrows + lr: stratum, then group, then row
    for t in range(rows.size):
        rb, lr = _local_row(rows, t, rcuts, P, roff)
        cb = np.searchsorted(ccuts, cols[t], side="right") - 1
        nxt[((rb - cb) % nb) * nrows + lr + 1] += 1
    for u in range(nb * nrows):
        nxt[u + 1] += nxt[u]
    edges = np.empty(nb * q + 1, dtype=np.int64)
    for s in range(nb):
        for t in range(q):
            edges[s * q + t] = nxt[s * nrows + roff[t]]
    edges[nb * q] = rows.size
    for t in range(rows.size):
        rb, lr = _local_row(rows, t, rcuts, P, roff)
        cb = np.searchsorted(ccuts, cols[t], side="right") - 1
        key = ((rb - cb) % nb) * nrows + lr
        pos[t] = nxt[key]
        nxt[key] += 1
    return edges


@njit(nogil=True)
def scatter(src, pos, out):
    """out[pos[t]] = src[t]."""
    for t in range(src.size):
        out[pos[t]] = src[t]


def scattered(a: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """A new array with ``a[t]`` at ``pos[t]``."""
    out = np.empty_like(a)
    scatter(a, pos, out)
    return out


def warm_ups() -> list[Callable[[], None]]:
    """One call per kernel that compiles (or loads from the cache) every signature used."""
    i = np.zeros(1, np.int32)
    cuts = np.array([0, 1], np.int64)
    c = np.ones(1)
    lo, h, inv = guide_table(c)
    A = np.zeros((1, 1))
    ints = (np.zeros(1, np.int32), np.zeros(1, np.int64))

    def positions() -> None:
        for p in ints:
            owner_positions(i, cuts, 1, p.copy())
            block_row_positions(i, i, cuts, cuts, 1, 1, 1, cuts[:1], p.copy())

    def scatters() -> None:
        for p in ints:
            for a in (i, np.zeros(1), np.zeros(1, np.float32)):
                scatter(a, p, a.copy())

    def counts() -> None:
        for a in ints:
            count_into(a, np.zeros(1, np.int64))
            count_split(a, a, np.uint64(1), 0.5)

    def splits() -> None:
        for a in ints:
            for vt in (np.float32, np.float64):
                split_inplace(a.copy(), a.copy(), np.zeros(1, vt), np.uint64(1), 0.5, a.copy(), a.copy(),
                              np.zeros(1, vt))

    def generate() -> None:
        generate_chunk(np.random.default_rng(0), 1, c, lo, h, inv, cuts[:1], c, lo, h, inv, cuts[:1], A, A,
                       0.0, 0.0, 0.5, np.uint64(1), i.copy(), i.copy(), np.zeros(1), 0, i.copy(), i.copy(),
                       np.zeros(1))

    return [generate, positions, scatters, counts, splits]


def warm_up() -> None:
    """Compile (or load from the cache) every kernel signature used, in this process."""
    for w in warm_ups():
        w()


def compile_once(comm) -> None:
    """Collective: each kernel compiled once per job (:func:`mpiopt.comm.jit.compile_once`)."""
    from ..comm.jit import compile_once as spread
    spread(comm, warm_ups())
