"""numba sources of the majority vote on packed sign words (call them through
:func:`mpiopt.kernels.get`); the numpy reference is :func:`mpiopt.kernels.codec.vote`."""
from __future__ import annotations

import numpy as np


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
    """Majority vote on packed words (bit-sliced counters per word, as :func:`mpiopt.kernels.codec.vote`):
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


#: compiled entry points and the helpers they call (compiled only as callees)
KERNELS = (vote_words,)
HELPERS = (_decide, _vote_small)
