"""numba sources of the sign-path kernels (call them through :func:`mpiopt.kernels.get`): the
fused message / finiteness check / sign packing pass and the one-pass apply of a decision (the vote
on packed words is in :mod:`mpiopt.kernels.vote`).

No fastmath: every float operation is the one the numpy reference does (:mod:`mpiopt.kernels.codec`,
:mod:`mpiopt.prox`), in the same order, so results are bit-identical to it and across rank counts.
Arguments are grouped in small tuples (structs for numba): :data:`Message` (what the message is made
of), :data:`Code` (the planes a pass writes) and :data:`Decision` (a vote's planes), made by
:func:`message_params`, :func:`code_of` and :func:`decision_of`. They are plain tuples, not named
ones: numba's C dispatcher types plain tuples itself, named ones cost a few microseconds per call."""
from __future__ import annotations

import math
import numpy as np

from .prox import Prox, clip, prox_params

# message kinds (the first element of a Message)
MSG_MAPPING_L1 = 0   # x - prox(x - t g) for elastic net with l2 = 0 (lasso penalty, or none): t g + clip(x - t g, -a, a)
MSG_MAPPING = 1      # x - prox(x - t g) for elastic net / zero regulariser, the generic order of operations
MSG_GRADIENT = 2     # g (+ l1 sign(x)) (+ l2 x): the sign baselines

#: empty arrays standing for an absent argument (float, word and index arrays)
NO_F = np.zeros(0)
NO_W = np.zeros(0, dtype=np.uint64)
NO_I = np.zeros(0, dtype=np.int64)


#: (kind, l1, l2, prox): the message of kind ``MSG_*`` with the elastic-net weights (l1, l2) and the
#: prox of step t (:data:`~mpiopt.kernels.prox.Prox`; its t is the step of the message)
Message = tuple[int, float, float, Prox]
#: (neg, nz, ternary, bad): the sign plane (1 = negative), the nonzero plane (ternary codes; else
#: :data:`NO_W`) a pass writes, and ``bad`` (one float: the first non-finite message)
Code = tuple[np.ndarray, np.ndarray, bool, np.ndarray]
#: (neg, nz, has_nz): a vote's planes, v = -1 where ``neg``, 0 where ``nz`` is 0 (only if ``has_nz``;
#: else ``nz`` is :data:`NO_W` and no element is 0), +1 elsewhere
Decision = tuple[np.ndarray, np.ndarray, bool]


def message_params(kind: int, t: float, l1: float = 0.0, l2: float = 0.0) -> Message:
    """The :data:`Message` of ``kind`` with step ``t`` and elastic-net weights (l1, l2)."""
    return (int(kind), float(l1), float(l2), prox_params(t, l1, l2))


def code_of(planes: np.ndarray, bad: np.ndarray) -> Code:
    """The :data:`Code` writing into ``planes`` (1 row: 1-bit; 2 rows: ternary)."""
    ternary = planes.shape[0] == 2
    return (planes[0], planes[1] if ternary else NO_W, ternary, bad)


def decision_of(neg: np.ndarray, nz: np.ndarray | None) -> Decision:
    """The :data:`Decision` of the planes (neg, nz or None)."""
    return (neg, NO_W if nz is None else nz, nz is not None)


def _message(msg, xi, gi):
    kind, l1, l2, p = msg
    t, a, has_l1, dd, has_l2 = p
    if kind == 0:
        tg = gi * t
        return tg + clip(xi - tg, -a, a)
    if kind == 1:
        v = gi * (-t) + xi
        if has_l1:
            v = v - clip(v, -a, a)
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


def _pack_pass(msg, x, g, use_g, ef, has_ef, code):
    # the pass of sign_message_pack; use_g False: g is taken as +0.0 everywhere (not read)
    kind, _, _, prox = msg
    t, a, has_l1, dd, has_l2 = prox
    neg, nz, ternary, bad = code
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
                    buf[j] = tg + clip(x[lo + j] - tg, na, a)
            else:
                tg = 0.0 * t
                for j in range(k):
                    buf[j] = tg + clip(x[lo + j] - tg, na, a)
        elif kind == 1:
            for j in range(k):
                xi = x[lo + j]
                v = (g[lo + j] if use_g else 0.0) * (-t) + xi
                if has_l1:
                    v = v - clip(v, na, a)
                if has_l2:
                    v = v / dd
                buf[j] = xi - v
        else:
            for j in range(k):
                buf[j] = _message(msg, x[lo + j], g[lo + j] if use_g else 0.0)
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


def _pack_columns(msg, x, g, cols, code):
    """Make the messages of the elements ``cols`` again with their g and set their bits (a sparse g
    is +0.0 elsewhere); False, leaving the planes partly patched, at the first non-finite message."""
    neg, nz, ternary, _ = code
    one = np.uint64(1)
    for c in range(cols.size):
        j = cols[c]
        m = _message(msg, x[j], g[j])
        if not math.isfinite(m):
            return False
        w = j >> 6
        bit = one << np.uint64((j & 63) ^ 7)
        neg[w] = (neg[w] | bit) if m < 0.0 else (neg[w] & ~bit)
        if ternary:
            nz[w] = (nz[w] | bit) if m != 0.0 else (nz[w] & ~bit)
    return True


def sign_message_pack(msg, x, g, ef, has_ef, cols, sparse, code):
    """One pass: m_i = message(x_i, g_i) (:data:`Message`; with error feedback p_i = m_i + e_i,
    stored back into e), finiteness check, sign bits packed into uint64 words (numpy packbits order,
    1 = negative; ternary: nonzero plane too) into :data:`Code` ``code``. Returns the index of the
    first non-finite element (its value in code.bad[0]) or -1. Padding bits of the last word are
    zero; words past the last are not touched. The message is made 64 elements at a time into a
    stack buffer by a loop specialised to its kind, then packed.
    ``sparse`` (no error feedback): g is +0.0 outside the indices ``cols`` (duplicates allowed): the
    pass reads x only, then the elements of ``cols`` are made again with their g and their bits set;
    if any message is non-finite, the whole pass is redone reading g (the same result as not sparse)."""
    if not sparse or has_ef:
        return _pack_pass(msg, x, g, True, ef, has_ef, code)
    i = _pack_pass(msg, x, g, False, ef, False, code)
    if i >= 0 or not _pack_columns(msg, x, g, cols, code):
        return _pack_pass(msg, x, g, True, ef, False, code)
    return -1


def _apply_pack_pass(msg, x, code, dec, gamma, done):
    # x <- x - gamma v of a pending decision (v from the packed planes of dec, as apply_words; not where
    # the bit of ``done`` is set, which is cleared), then the message with g = +0.0, checked and packed:
    # one pass. Never stops early (every x is updated); returns the first non-finite message or -1.
    kind, _, _, prox = msg
    t, a, has_l1, dd, has_l2 = prox
    neg, nz, ternary, bad = code
    dneg, dnz, has_dnz = dec
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
                buf[j] = t0 + clip(xi - t0, na, a)
            elif kind == 1:
                v = t1 + xi
                if has_l1:
                    v = v - clip(v, na, a)
                if has_l2:
                    v = v / dd
                buf[j] = xi - v
            else:
                buf[j] = _message(msg, xi, 0.0)
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


def apply_message_pack(msg, x, g, cols, code, dec, gamma, done):
    """The last iteration's step and this iteration's message in one pass over x: x <- x - gamma v for
    the pending :data:`Decision` ``dec`` (as :func:`apply_words`; elements whose bit in ``done`` is
    set were updated already, see :func:`apply_at_rows`), then :func:`sign_message_pack` of the
    updated x with a sparse g (+0.0 outside ``cols``), no error feedback. The same x and planes as
    apply_words followed by sign_message_pack."""
    i = _apply_pack_pass(msg, x, code, dec, gamma, done)
    if i >= 0 or not _pack_columns(msg, x, g, cols, code):
        return _pack_pass(msg, x, g, True, x, False, code)
    return -1


def apply_at_rows(indptr, indices, rows, x, dec, gamma, done):
    """x_j <- x_j - gamma v_j (the pending :data:`Decision`, as :func:`apply_words`) at the columns of
    the CSR rows ``rows`` (each once: its bit in ``done`` is set), so that a minibatch gradient can be
    taken there before :func:`apply_message_pack` updates the rest."""
    dneg, dnz, has_dnz = dec
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


def apply_words(x, dec, gamma, ef, has_ef, prox, p):
    """x -= gamma * v from the packed :data:`Decision` ``dec``, as the step table does; with error
    feedback also e -= gamma * v; with ``prox`` then x <- prox(x) of the elastic net ``p``
    (:data:`~mpiopt.kernels.prox.Prox`: v - clip(v, -a, a) if l1, / dd if l2), all in one pass (byte
    by byte: constant shifts, no branches in the common case)."""
    neg, nz, has_nz = dec
    _, a, has_l1, dd, has_l2 = p
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
                    y = y - clip(y, na, a)
                if has_l2:
                    y = y / dd
            x[lo + j] = y
            if has_ef:
                ef[lo + j] = ef[lo + j] - d


#: compiled entry points and the helpers they call (compiled only as callees)
KERNELS = (sign_message_pack, apply_message_pack, apply_at_rows, apply_words)
HELPERS = (_message, _pack_pass, _pack_columns, _apply_pack_pass)
