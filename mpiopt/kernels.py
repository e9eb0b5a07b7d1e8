"""Vectorised building blocks shared by the solvers: cache blocking and a fast finiteness test.

Cache blocking walks a long vector in blocks that fit in the L2 cache, so that a chain of elementwise
numpy operations reads and writes main memory once instead of once per operation (about 2x faster
than whole-vector passes at n = 1e7 on these machines)."""
from __future__ import annotations

from typing import Iterator

import numpy as np

#: elements per block (a multiple of 64, so block edges fall on whole bytes and words of a bit plane);
#: 32768 float64 = 256 KiB per array, a few arrays stay in a 1-2 MiB L2 cache.
BLOCK = 1 << 15


def blocks(n: int, size: int = BLOCK) -> Iterator[tuple[int, int]]:
    """The half-open ranges [lo, hi) covering 0..n in steps of ``size``."""
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


def all_finite(v: np.ndarray) -> bool:
    """True iff no element of the float vector ``v`` is NaN or inf (fast path: one BLAS dot product)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.dot(v, v)):
            return True
    return bool(np.isfinite(v).all())     # the dot may overflow for huge finite values


def first_nonfinite(v: np.ndarray) -> int | None:
    """Index of the first NaN/inf element of ``v``, or None."""
    if all_finite(v):
        return None
    return int(np.flatnonzero(~np.isfinite(v))[0])


# -- compiled kernels of the sign path ---------------------------------------------------------------
# numba (@njit(cache=True), no fastmath: every float operation is the one the numpy reference does,
# in the same order, so results are bit-identical to it and across rank counts). The numpy versions
# stay the reference implementations (mpiopt.comm.sign_codec, mpiopt.prox); tests compare the two.
# MPIOPT_JIT=0 selects the numpy paths (for comparisons, or where numba is unavailable).
import importlib.util  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

#: numba is installed (checked without importing it: numba is imported only when a kernel is needed)
HAVE_NUMBA = importlib.util.find_spec("numba") is not None

#: the compiled kernels are used (numba installed, little-endian words, MPIOPT_JIT not "0")
JIT = HAVE_NUMBA and sys.byteorder == "little" and os.environ.get("MPIOPT_JIT", "1") != "0"

_KERNELS = ("_clip", "_message", "_pack_pass", "_pack_columns", "sign_message_pack", "_apply_pack_pass", "apply_message_pack",
            "apply_at_rows", "_decide", "_vote_small", "vote_words", "apply_words", "prox_step_en", "csr_rows_dot", "csr_rows_scatter")  # callees first
_compiled = False


def compile_kernels() -> None:
    """Import numba and replace the kernels below by their compiled versions (once per process; the
    machine code itself is compiled on first call or loaded from the on-disk cache). Until then they
    are plain Python functions with the same results (slow), so processes that never run a kernel
    never import numba."""
    global _compiled
    if _compiled or not HAVE_NUMBA:
        return
    from .compiled import njit
    g = globals()
    for name in _KERNELS:
        # error_model="numpy": float division as in numpy (no Python ZeroDivisionError branch)
        g[name] = njit(nogil=True, error_model="numpy")(g[name])
    _compiled = True


# message kinds of sign_message_pack
MSG_MAPPING_L1 = 0   # x - prox(x - t g) for elastic net with l2 = 0 (lasso penalty, or none): t g + clip(x - t g, -a, a)
MSG_MAPPING = 1      # x - prox(x - t g) for elastic net / zero regulariser, the generic order of operations
MSG_GRADIENT = 2     # g (+ l1 sign(x)) (+ l2 x): the sign baselines

_NO_F = np.zeros(0)
_NO_W = np.zeros(0, dtype=np.uint64)
_NO_I = np.zeros(0, dtype=np.int64)


def _clip(u, lo, hi):
    # numpy's clip: min(max(u, lo), hi), NaN propagated
    if u != u:
        return u
    c = u if u > lo else lo
    return c if c < hi else hi


def _message(kind, xi, gi, t, a, has_l1, l1, dd, has_l2, l2):
    if kind == 0:
        tg = gi * t
        return tg + _clip(xi - tg, -a, a)
    if kind == 1:
        v = gi * (-t) + xi
        if has_l1:
            v = v - _clip(v, -a, a)
        if has_l2:
            v = v / dd
        return xi - v
    m = gi
    if has_l1:
        s = 0.0
        if xi > 0:
            s = 1.0
        elif xi < 0:
            s = -1.0
        elif xi != xi:
            s = xi
        m = m + s * l1
    if has_l2:
        m = m + l2 * xi
    return m


def _pack_pass(kind, x, g, use_g, t, a, has_l1, l1, dd, has_l2, l2, ef, has_ef, ternary, neg, nz, bad):
    # the pass of sign_message_pack; use_g False: g is taken as +0.0 everywhere (not read)
    n = x.size
    nw = (n + 63) // 64
    buf = np.empty(64)
    na = -a
    for w in range(nw):
        lo = w * 64
        k = min(n, lo + 64) - lo
        if kind == 0:
            if use_g:
                for j in range(k):
                    tg = g[lo + j] * t
                    buf[j] = tg + _clip(x[lo + j] - tg, na, a)
            else:
                tg = 0.0 * t
                for j in range(k):
                    buf[j] = tg + _clip(x[lo + j] - tg, na, a)
        elif kind == 1:
            for j in range(k):
                xi = x[lo + j]
                v = (g[lo + j] if use_g else 0.0) * (-t) + xi
                if has_l1:
                    v = v - _clip(v, na, a)
                if has_l2:
                    v = v / dd
                buf[j] = xi - v
        else:
            for j in range(k):
                buf[j] = _message(kind, x[lo + j], g[lo + j] if use_g else 0.0, t, a, has_l1, l1, dd, has_l2, l2)
        if has_ef:
            for j in range(k):
                p = buf[j] + ef[lo + j]
                ef[lo + j] = p
                buf[j] = p
        # finiteness: p - p is 0 for finite p, NaN for NaN/inf; an OR over the word (no float sum: the
        # loop vectorises). Bit i of byte q (numpy's packbits order) is element 8q + 7 - i: shift j ^ 7.
        nonfinite = False
        wn = np.uint64(0)
        for j in range(k):
            p = buf[j]
            nonfinite |= (p - p) != 0.0
            wn |= np.uint64(p < 0.0) << np.uint64(j ^ 7)
        if nonfinite:                  # report the first non-finite element of this word
            for j in range(k):
                if not math.isfinite(buf[j]):
                    bad[0] = buf[j]
                    return lo + j
        neg[w] = wn
        if ternary:
            wz = np.uint64(0)
            for j in range(k):
                wz |= np.uint64(buf[j] != 0.0) << np.uint64(j ^ 7)
            nz[w] = wz
    return -1


def _pack_columns(kind, x, g, cols, t, a, has_l1, l1, dd, has_l2, l2, ternary, neg, nz):
    """Make the messages of the elements ``cols`` again with their g and set their bits (a sparse g
    is +0.0 elsewhere); False, leaving the planes partly patched, at the first non-finite message."""
    one = np.uint64(1)
    for c in range(cols.size):
        j = cols[c]
        m = _message(kind, x[j], g[j], t, a, has_l1, l1, dd, has_l2, l2)
        if not math.isfinite(m):
            return False
        w = j >> 6
        bit = one << np.uint64((j & 63) ^ 7)
        neg[w] = (neg[w] | bit) if m < 0.0 else (neg[w] & ~bit)
        if ternary:
            nz[w] = (nz[w] | bit) if m != 0.0 else (nz[w] & ~bit)
    return True


def sign_message_pack(kind, x, g, t, a, has_l1, l1, dd, has_l2, l2, ef, has_ef, ternary, neg, nz, bad, cols,
                      sparse):
    """One pass: m_i = message(x_i, g_i) (with error feedback p_i = m_i + e_i, stored back into e),
    finiteness check, sign bits packed into uint64 words (numpy packbits order, 1 = negative; ternary:
    nonzero plane too). Returns the index of the first non-finite element (its value in bad[0]) or -1.
    Padding bits of the last word are zero; words past the last are not touched. The message is made
    64 elements at a time into a stack buffer by a loop specialised to ``kind``, then packed.
    ``sparse`` (no error feedback): g is +0.0 outside the indices ``cols`` (duplicates allowed): the
    pass reads x only, then the elements of ``cols`` are made again with their g and their bits set;
    if any message is non-finite, the whole pass is redone reading g (the same result as not sparse)."""
    if not sparse or has_ef:
        return _pack_pass(kind, x, g, True, t, a, has_l1, l1, dd, has_l2, l2, ef, has_ef, ternary, neg, nz, bad)
    i = _pack_pass(kind, x, g, False, t, a, has_l1, l1, dd, has_l2, l2, ef, False, ternary, neg, nz, bad)
    if i >= 0 or not _pack_columns(kind, x, g, cols, t, a, has_l1, l1, dd, has_l2, l2, ternary, neg, nz):
        return _pack_pass(kind, x, g, True, t, a, has_l1, l1, dd, has_l2, l2, ef, False, ternary, neg, nz, bad)
    return -1


def _apply_pack_pass(kind, x, t, a, has_l1, l1, dd, has_l2, l2, ternary, neg, nz, bad, dneg, dnz, has_dnz,
                     gamma, done):
    # x <- x - gamma v of a pending decision (v from the packed planes dneg/dnz, as apply_words; not where
    # the bit of ``done`` is set, which is cleared), then the message with g = +0.0, checked and packed:
    # one pass. Never stops early (every x is updated); returns the first non-finite message or -1.
    n = x.size
    nw = (n + 63) // 64
    buf = np.empty(64)
    na = -a
    t0 = 0.0 * t
    t1 = 0.0 * (-t)
    zero = gamma - gamma
    one = np.uint64(1)
    first = -1
    for w in range(nw):
        lo = w * 64
        k = min(n, lo + 64) - lo
        wneg = dneg[w]
        wnz = dnz[w] if has_dnz else np.uint64(0xFFFFFFFFFFFFFFFF)
        wdone = done[w]
        done[w] = np.uint64(0)
        for j in range(k):
            s = np.uint64(j ^ 7)
            xi = x[lo + j]
            d = -gamma if (wneg >> s) & one else gamma
            d = d if (wnz >> s) & one else zero
            y = xi - d
            xi = xi if (wdone >> s) & one else y
            x[lo + j] = xi
            if kind == 0:
                buf[j] = t0 + _clip(xi - t0, na, a)
            elif kind == 1:
                v = t1 + xi
                if has_l1:
                    v = v - _clip(v, na, a)
                if has_l2:
                    v = v / dd
                buf[j] = xi - v
            else:
                buf[j] = _message(kind, xi, 0.0, t, a, has_l1, l1, dd, has_l2, l2)
        nonfinite = False
        wn = np.uint64(0)
        for j in range(k):
            p = buf[j]
            nonfinite |= (p - p) != 0.0
            wn |= np.uint64(p < 0.0) << np.uint64(j ^ 7)
        if nonfinite and first < 0:
            for j in range(k):
                if not math.isfinite(buf[j]):
                    bad[0] = buf[j]
                    first = lo + j
                    break
        neg[w] = wn
        if ternary:
            wz = np.uint64(0)
            for j in range(k):
                wz |= np.uint64(buf[j] != 0.0) << np.uint64(j ^ 7)
            nz[w] = wz
    return first


def apply_message_pack(kind, x, g, t, a, has_l1, l1, dd, has_l2, l2, ternary, neg, nz, bad, cols, dneg, dnz,
                       has_dnz, gamma, done):
    """The last iteration's step and this iteration's message in one pass over x: x <- x - gamma v for
    the pending decision (dneg, dnz as :func:`apply_words`; elements whose bit in ``done`` is set were
    updated already, see :func:`apply_at_rows`), then :func:`sign_message_pack` of the updated x with a
    sparse g (+0.0 outside ``cols``), no error feedback. The same x and planes as apply_words followed by
    sign_message_pack."""
    i = _apply_pack_pass(kind, x, t, a, has_l1, l1, dd, has_l2, l2, ternary, neg, nz, bad, dneg, dnz, has_dnz,
                         gamma, done)
    if i >= 0 or not _pack_columns(kind, x, g, cols, t, a, has_l1, l1, dd, has_l2, l2, ternary, neg, nz):
        return _pack_pass(kind, x, g, True, t, a, has_l1, l1, dd, has_l2, l2, x, False, ternary, neg, nz, bad)
    return -1


def apply_at_rows(indptr, indices, rows, x, dneg, dnz, has_dnz, gamma, done):
    """x_j <- x_j - gamma v_j (the pending decision, as :func:`apply_words`) at the columns of the CSR
    rows ``rows`` (each once: its bit in ``done`` is set), so that a minibatch gradient can be taken
    there before :func:`apply_message_pack` updates the rest."""
    one = np.uint64(1)
    zero = gamma - gamma
    for r in range(rows.size):
        i = rows[r]
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            w = j >> 6
            s = np.uint64((j & 63) ^ 7)
            if (done[w] >> s) & one:
                continue
            done[w] |= one << s
            d = -gamma if (dneg[w] >> s) & one else gamma
            if has_dnz:
                d = d if (dnz[w] >> s) & one else zero
            x[j] = x[j] - d


def _decide(w, gt, eq, tie, rand, out_neg, out_nz):
    # word w of the decision from its "more negative" and "tied" masks, by the tie rule
    # (0: zero, 1: +1, else the random bit of rand)
    if tie == 0:
        out_neg[w] = gt
        out_nz[w] = ~eq
    elif tie == 1:
        out_neg[w] = gt
        out_nz[w] = np.uint64(0xFFFFFFFFFFFFFFFF)
    else:
        out_neg[w] = gt | (eq & rand[w])
        out_nz[w] = np.uint64(0xFFFFFFFFFFFFFFFF)


def _vote_small(neg_rows, P, tie, rand, out_neg, out_nz):
    # vote_words for 1-bit codes and P <= 7: the same counters (3 bit planes) kept in registers
    W = neg_rows.shape[1]
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    zero = np.uint64(0)
    c = P // 2
    for w in range(W):
        c0 = zero
        c1 = zero
        c2 = zero
        for r in range(P):
            a = neg_rows[r, w]
            t0 = c0 & a
            c0 ^= a
            t1 = c1 & t0
            c1 ^= t0
            c2 ^= t1
        gt = zero
        eq = ones
        if (c >> 2) & 1:
            eq &= c2
        else:
            gt |= eq & c2
            eq &= ~c2
        if (c >> 1) & 1:
            eq &= c1
        else:
            gt |= eq & c1
            eq &= ~c1
        if c & 1:
            eq &= c0
        else:
            gt |= eq & c0
            eq &= ~c0
        if P % 2:
            eq = zero
        _decide(w, gt, eq, tie, rand, out_neg, out_nz)


def vote_words(neg_rows, nz_rows, ternary, tie, rand, out_neg, out_nz):
    """Majority vote on packed words (bit-sliced counters per word, as :func:`sign_codec.vote`):
    P rows of W words -> decision planes (out_neg, out_nz). tie: 0 zero, 1 plus, 2 shared_random."""
    P, W = neg_rows.shape
    nplanes = 1
    while (P >> nplanes) > 0:
        nplanes += 1
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    if not ternary and P <= 7:
        _vote_small(neg_rows, P, tie, rand, out_neg, out_nz)
        return
    cn = np.zeros(nplanes, dtype=np.uint64)
    cp = np.zeros(nplanes, dtype=np.uint64)
    for w in range(W):
        gt = np.uint64(0)
        eq = ones
        if not ternary:
            for k in range(nplanes):
                cn[k] = np.uint64(0)
            for r in range(P):
                carry = neg_rows[r, w]
                for k in range(nplanes):
                    c2 = cn[k] & carry
                    cn[k] ^= carry
                    carry = c2
            c = P // 2
            if c >> nplanes:
                eq = np.uint64(0)
            else:
                for k in range(nplanes - 1, -1, -1):
                    if (c >> k) & 1:
                        eq &= cn[k]
                    else:
                        gt |= eq & cn[k]
                        eq &= ~cn[k]
            if P % 2:
                eq = np.uint64(0)
        else:
            for k in range(nplanes):
                cn[k] = np.uint64(0)
                cp[k] = np.uint64(0)
            for r in range(P):
                a = neg_rows[r, w] & nz_rows[r, w]
                b = nz_rows[r, w] & ~neg_rows[r, w]
                for k in range(nplanes):
                    c2 = cn[k] & a
                    cn[k] ^= a
                    a = c2
                    c3 = cp[k] & b
                    cp[k] ^= b
                    b = c3
            for k in range(nplanes - 1, -1, -1):
                gt |= cn[k] & ~cp[k] & eq
                eq &= ~(cn[k] ^ cp[k])
        _decide(w, gt, eq, tie, rand, out_neg, out_nz)


def apply_words(x, neg, nz, has_nz, gamma, ef, has_ef, prox, a, has_l1, dd, has_l2):
    """x -= gamma * v from the packed decision (v = -1 where neg, 0 where nz is 0, else +1), as the
    step table does; with error feedback also e -= gamma * v; with ``prox`` then x <- prox(x) of the
    elastic net (v - clip(v, -a, a) if l1, / dd if l2), all in one pass (byte by byte: constant
    shifts, no branches in the common case)."""
    n = x.size
    nb = neg.view(np.uint8)
    zb = nz.view(np.uint8) if has_nz else nb
    zero = gamma - gamma
    na = -a
    for b in range((n + 7) // 8):
        lo = 8 * b
        k = min(8, n - lo)
        byte = nb[b]
        zbyte = zb[b] if has_nz else np.uint8(255)
        for j in range(k):
            d = -gamma if (byte >> (7 - j)) & 1 else gamma
            d = d if (zbyte >> (7 - j)) & 1 else zero
            y = x[lo + j] - d
            if prox:
                if has_l1:
                    y = y - _clip(y, na, a)
                if has_l2:
                    y = y / dd
            x[lo + j] = y
            if has_ef:
                ef[lo + j] = ef[lo + j] - d


def prox_step_en(x, d, t, a, has_l1, dd, has_l2):
    """x <- prox_{t r}(x - t d) for the elastic net in one pass (``d`` float32 or float64), the float
    operations of :func:`mpiopt.prox.prox_step`: w = d*t (float64), v = x - w, soft threshold, / dd."""
    for i in range(x.size):
        v = x[i] - np.float64(d[i]) * t
        if has_l1:
            v = v - _clip(v, -a, a)
        if has_l2:
            v = v / dd
        x[i] = v


# -- the sparse minibatch gradient (CSR data) -----------------------------------------------------------
# scipy's A[idx] @ x and A[idx].T @ c, in the same float operations and order (csr_matvec: a running sum
# from 0.0 per row; csc_matvec of the transpose: y[j] += a * c row by row into zeros), without the
# row copy and the dense result: the gradient touches only the batch's columns.

def csr_rows_dot(indptr, indices, data, rows, x, out):
    """out[r] = A[rows[r]] . x for CSR A (sum in stored order, from 0.0)."""
    for r in range(rows.size):
        i = rows[r]
        s = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            s += data[k] * x[indices[k]]
        out[r] = s


def csr_rows_scatter(indptr, indices, data, rows, coef, g, mark, touched, prev, div):
    """The sparse mean gradient into g, which is zero outside ``touched[:prev]`` (the last call's
    columns): those are zeroed first, then g[j] += A[rows[r], j] * coef[r] for every stored entry,
    rows in order; columns seen for the first time (mark[j] == 0) are marked and listed in
    ``touched``; finally g[j] /= div on them. Returns the number of distinct columns touched."""
    for c in range(prev):
        j = touched[c]
        g[j] = 0.0
        mark[j] = 0
    cnt = 0
    for r in range(rows.size):
        i = rows[r]
        c = coef[r]
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            g[j] += data[k] * c
            if mark[j] == 0:
                mark[j] = 1
                touched[cnt] = j
                cnt += 1
    for c in range(cnt):
        j = touched[c]
        g[j] = g[j] / div
    return cnt
