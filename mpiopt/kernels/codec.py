"""The sign codec: one-bit and ternary sign messages packed into uint64 words, the bit-sliced
majority vote on packed words, and the step table that applies a decision. Pure numpy, no MPI
(the collectives that move these words are in :mod:`mpiopt.comm.signs`, the policy that uses them in
:mod:`mpiopt.solvers.sign_engine`).

Conventions (fixed by tests):

- 1-bit code: bit = signbit(m), so **1 means negative**; ``numpy.packbits`` big-endian bit order,
  zero padding. ``-0.0`` is normalised to ``+0.0`` first, so an exact zero is coded as "+".
- ternary code: two bit-planes, ``neg`` (m < 0) and ``nz`` (m != 0).
- A packed plane is a row of uint64 words (``n`` bits rounded up to whole words); votes are counted
  on the words with bit-sliced adders, never by unpacking to +-1 floats.
- A vote decision is the pair of planes (neg, nz): v_i = 0 where nz_i = 0, else -1 where neg_i = 1,
  else +1. Ties (equal numbers of + and - votes) follow the tie rule: ``zero`` (v = 0), ``plus``
  (v = +1) or ``shared_random`` (a bit from a counter-based Philox stream keyed by (seed, t, word),
  equal on every rank without communication).
"""
from __future__ import annotations

import numpy as np

from .vector import BLOCK, blocks, first_nonfinite

WORD_BITS = 64
TIE_RULES = ("zero", "plus", "shared_random")
ENCODINGS = ("1bit", "ternary")
ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


# -- packing ---------------------------------------------------------------------------------
def n_words(n: int, multiple: int = 1) -> int:
    """Number of uint64 words holding ``n`` bits, rounded up to a multiple of ``multiple``."""
    w = -(-n // WORD_BITS)
    return -(-w // multiple) * multiple if w else multiple * (n > 0)


def pack_bits(flags: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Pack a bool vector (big-endian bit order, zero padding) into uint64 words (``out`` if given)."""
    n = flags.size
    if out is None:
        out = np.zeros(n_words(n), dtype=np.uint64)
    b = out.view(np.uint8)
    nb = -(-n // 8)
    if nb > b.size:
        raise ValueError(f"output of {out.size} words cannot hold {n} bits")
    b[:nb] = np.packbits(flags)
    b[nb:] = 0
    return out


def unpack_bits(words: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``n`` bits as a bool vector."""
    return np.unpackbits(words.view(np.uint8), count=n).view(np.bool_)


def check_finite(m: np.ndarray, offset: int = 0) -> None:
    """Raise ValueError naming the first NaN/inf element (``offset``: index of m[0] in the message)."""
    i = first_nonfinite(m)
    if i is not None:
        raise ValueError(f"non-finite value {m[i]} at element {offset + i}: cannot code its sign")


def sign_planes(m: np.ndarray, encoding: str, out: np.ndarray, work: np.ndarray | None = None) -> np.ndarray:
    """Code ``m`` into ``out`` (planes x words): 1-bit -> [neg]; ternary -> [neg, nz].

    Raises ValueError on NaN or inf (their sign bit is arbitrary). ``work``: optional bool buffer of
    size ``m.size`` (no float temporaries are made)."""
    check_finite(m)
    if work is None:
        work = np.empty(m.size, dtype=np.bool_)
    if encoding == "1bit":
        np.less(m, 0.0, out=work)   # = signbit(m) with -0.0 -> + (no normalisation copy needed)
        pack_bits(work, out[0])
    else:
        np.less(m, 0.0, out=work)
        pack_bits(work, out[0])
        np.not_equal(m, 0.0, out=work)
        pack_bits(work, out[1])
    return out


# -- bit-sliced counting and voting -----------------------------------------------------------
def bitsliced_count(inputs: np.ndarray) -> list[np.ndarray]:
    """Per bit position, the number of set bits over the rows of ``inputs`` (K x W uint64), as
    little-endian bit-planes (list of W-word arrays): a ripple-carry adder per input row."""
    k = inputs.shape[0]
    nplanes = max(1, int(k).bit_length())
    planes = [np.zeros(inputs.shape[1:], dtype=np.uint64) for _ in range(nplanes)]
    carry = np.empty(inputs.shape[1:], dtype=np.uint64)
    tmp = np.empty_like(carry)
    for row in inputs:
        np.copyto(carry, row)
        for p in planes:
            np.bitwise_and(p, carry, out=tmp)
            np.bitwise_xor(p, carry, out=p)
            carry, tmp = tmp, carry
    return planes


def compare_const(planes: list[np.ndarray], c: int) -> tuple[np.ndarray, np.ndarray]:
    """Bitwise (count > c, count == c) for a bit-sliced count."""
    gt = np.zeros_like(planes[0])
    eq = np.full_like(planes[0], ALL_ONES)
    if c >> len(planes):
        return gt, np.zeros_like(eq)
    tmp = np.empty_like(gt)
    for k in range(len(planes) - 1, -1, -1):
        if (c >> k) & 1:
            np.bitwise_and(eq, planes[k], out=eq)
        else:
            np.bitwise_and(eq, planes[k], out=tmp)
            np.bitwise_or(gt, tmp, out=gt)
            np.bitwise_and(eq, ~planes[k], out=eq)
    return gt, eq


def compare_counts(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Bitwise (a > b, a == b) for two bit-sliced counts with the same number of planes."""
    gt = np.zeros_like(a[0])
    eq = np.full_like(a[0], ALL_ONES)
    tmp = np.empty_like(gt)
    for k in range(len(a) - 1, -1, -1):
        np.bitwise_and(a[k], ~b[k], out=tmp)
        np.bitwise_and(tmp, eq, out=tmp)
        np.bitwise_or(gt, tmp, out=gt)
        np.bitwise_xor(a[k], b[k], out=tmp)
        np.bitwise_and(eq, ~tmp, out=eq)
    return gt, eq


def tie_bits(seed: int, t: int, n_words_total: int, start: int = 0, count: int | None = None) -> np.ndarray:
    """Words [start, start+count) of the shared tie-break stream of iteration ``t`` (Philox keyed by
    (seed, t)); identical on every rank, for any chunking. ``start`` must be a multiple of 4."""
    count = n_words_total - start if count is None else count
    if start % 4:
        raise ValueError("start must be a multiple of 4 words")
    bg = np.random.Philox(key=np.array([seed & 0xFFFFFFFFFFFFFFFF, 0x5167 << 32 | (t & 0xFFFFFFFF)],
                                       dtype=np.uint64))
    if start:
        bg.advance(start // 4)
    return bg.random_raw(count).astype(np.uint64, copy=False)


def vote(neg: np.ndarray, nz: np.ndarray | None, tie: str = "zero",
         rand: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote of P packed messages (rows of ``neg``, and of ``nz`` for ternary; P x W words).

    Returns the decision planes (neg, nz) of W words: v = sign(#plus - #minus) with the tie rule
    (``rand``: tie-break words for ``shared_random``)."""
    p = neg.shape[0]
    if nz is None:
        cnt = bitsliced_count(neg)
        out_neg, eq = compare_const(cnt, p // 2)   # neg > P/2 <=> neg > floor(P/2) for odd P
        if p % 2:
            eq[:] = 0
    else:
        cn = bitsliced_count(neg & nz)
        cp = bitsliced_count(nz & ~neg)
        out_neg, eq = compare_counts(cn, cp)
    if tie == "zero":
        return out_neg, ~eq
    if tie == "shared_random":
        if rand is None:
            raise ValueError("shared_random ties need the tie-break words")
        out_neg |= eq & rand
    return out_neg, np.full_like(out_neg, ALL_ONES)


def decision_values(neg: np.ndarray, nz: np.ndarray, n: int) -> np.ndarray:
    """The vote as int8 values in {-1, 0, +1} (for tests and diagnostics)."""
    s = 1 - 2 * unpack_bits(neg, n).astype(np.int8)
    return s * unpack_bits(nz, n).astype(np.int8)


class StepTable:
    """x -= gamma * v from packed decision planes by sign-bit injection: the bit pattern of gamma
    with the sign bit set from the ``neg`` plane, zeroed where the ``nz`` plane is 0 (no float
    arithmetic except the final subtraction; preallocated buffers, cache-sized blocks)."""

    def __init__(self, n: int, dtype: np.dtype = np.float64):
        self.n = n
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ValueError("x must be float32 or float64")
        self.uint = np.uint64 if self.dtype.itemsize == 8 else np.uint32
        self.shift = self.uint(8 * self.dtype.itemsize - 1)
        self._block = np.empty(min(n, BLOCK), dtype=self.dtype)
        self.delta: np.ndarray | None = None          # whole-vector buffer, made on first deltas()

    def _fill(self, out: np.ndarray, neg: np.ndarray, nz: np.ndarray | None, gamma: float, lo: int) -> np.ndarray:
        """out = gamma * v[lo:lo+len(out)] (``lo`` a multiple of 8)."""
        k = out.size
        d = out.view(self.uint)
        b0, b1 = lo // 8, -(-(lo + k) // 8)
        np.left_shift(np.unpackbits(neg.view(np.uint8)[b0:b1], count=k), self.shift, out=d,
                      dtype=self.uint, casting="unsafe")
        np.bitwise_or(d, np.array(gamma, dtype=self.dtype).view(self.uint), out=d)
        if nz is not None:
            np.multiply(d, np.unpackbits(nz.view(np.uint8)[b0:b1], count=k), out=d, casting="unsafe")
        return out

    def deltas(self, neg: np.ndarray, nz: np.ndarray | None, gamma: float) -> np.ndarray:
        """gamma * v as a vector of length n (an internal buffer, overwritten by the next call)."""
        if self.delta is None:
            self.delta = np.empty(self.n, dtype=self.dtype)
        return self._fill(self.delta, neg, nz, gamma, 0)

    def apply(self, x: np.ndarray, neg: np.ndarray, nz: np.ndarray | None, gamma: float) -> np.ndarray:
        """x -= gamma * v in place, block by block."""
        for lo, hi in blocks(self.n, self._block.size):
            xs = x[lo:hi]
            np.subtract(xs, self._fill(self._block[:hi - lo], neg, nz, gamma, lo), out=xs)
        return x
