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

_KERNELS = ("_clip", "_message", "sign_message_pack", "vote_words", "apply_words", "prox_step_en")  # callees first
_compiled = False


def compile_kernels() -> None:
    """Import numba and replace the kernels below by their compiled versions (once per process; the
    machine code itself is compiled on first call or loaded from the on-disk cache). Until then they
    are plain Python functions with the same results (slow), so processes that never run a kernel
    never import numba."""
    global _compiled
    if _compiled or not HAVE_NUMBA:
        return
    from numba import njit
    g = globals()
    for name in _KERNELS:
        # error_model="numpy": float division as in numpy (no Python ZeroDivisionError branch)
        g[name] = njit(cache=True, nogil=True, error_model="numpy")(g[name])
    _compiled = True


# message kinds of sign_message_pack
MSG_MAPPING_L1 = 0   # x - prox(x - t g) for elastic net with l2 = 0 (lasso penalty, or none): t g + clip(x - t g, -a, a)
MSG_MAPPING = 1      # x - prox(x - t g) for elastic net / zero regulariser, the generic order of operations
MSG_GRADIENT = 2     # g (+ l1 sign(x)) (+ l2 x): the sign baselines

_NO_F = np.zeros(0)
_NO_W = np.zeros(0, dtype=np.uint64)


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


def sign_message_pack(kind, x, g, t, a, has_l1, l1, dd, has_l2, l2, ef, has_ef, ternary, neg, nz, bad):
    """One pass: m_i = message(x_i, g_i) (with error feedback p_i = m_i + e_i, stored back into e),
    finiteness check, sign bits packed into uint64 words (numpy packbits order, 1 = negative; ternary:
    nonzero plane too). Returns the index of the first non-finite element (its value in bad[0]) or -1.
    Padding bits of the last word are zero; words past the last are not touched. The message is made
    64 elements at a time into a stack buffer by a loop specialised to ``kind``, then packed."""
    n = x.size
    nw = (n + 63) // 64
    buf = np.empty(64)
    na = -a
    for w in range(nw):
        lo = w * 64
        k = min(n, lo + 64) - lo
        if kind == 0:
            for j in range(k):
                tg = g[lo + j] * t
                buf[j] = tg + _clip(x[lo + j] - tg, na, a)
        elif kind == 1:
            for j in range(k):
                xi = x[lo + j]
                v = g[lo + j] * (-t) + xi
                if has_l1:
                    v = v - _clip(v, na, a)
                if has_l2:
                    v = v / dd
                buf[j] = xi - v
        else:
            for j in range(k):
                buf[j] = _message(kind, x[lo + j], g[lo + j], t, a, has_l1, l1, dd, has_l2, l2)
        if has_ef:
            for j in range(k):
                p = buf[j] + ef[lo + j]
                ef[lo + j] = p
                buf[j] = p
        acc = 0.0                      # stays 0 unless some p is NaN or inf (p * 0 is NaN then)
        for j in range(k):
            acc += buf[j] * 0.0
        for j in range(k, 64):         # padding of the last word: codes 0
            buf[j] = 0.0
        wn = np.uint64(0)
        wz = np.uint64(0)
        for q in range(8):             # byte q of the word: elements 8q..8q+7, the first in the top bit
            bn = 0
            bz = 0
            for r in range(8):
                p = buf[8 * q + r]
                bn |= (p < 0.0) << (7 - r)
                bz |= (p != 0.0) << (7 - r)
            wn |= np.uint64(bn) << np.uint64(8 * q)
            wz |= np.uint64(bz) << np.uint64(8 * q)
        if acc != 0.0:                 # NaN: report the first non-finite element of this word
            for j in range(k):
                if not math.isfinite(buf[j]):
                    bad[0] = buf[j]
                    return lo + j
        neg[w] = wn
        if ternary:
            nz[w] = wz
    return -1


def vote_words(neg_rows, nz_rows, ternary, tie, rand, out_neg, out_nz):
    """Majority vote on packed words (bit-sliced counters per word, as :func:`sign_codec.vote`):
    P rows of W words -> decision planes (out_neg, out_nz). tie: 0 zero, 1 plus, 2 shared_random."""
    P, W = neg_rows.shape
    nplanes = 1
    while (P >> nplanes) > 0:
        nplanes += 1
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)
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
        if tie == 0:
            out_neg[w] = gt
            out_nz[w] = ~eq
        elif tie == 1:
            out_neg[w] = gt
            out_nz[w] = ones
        else:
            out_neg[w] = gt | (eq & rand[w])
            out_nz[w] = ones


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
