"""One-bit and ternary sign messages: packing, bit-sliced majority vote, vote aggregators.

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

Aggregators (all give bit-identical decisions for equal inputs and tie rule):

- ``allgather``: Allgather the packed planes, every rank counts all P votes.
- ``twophase``: Alltoall of chunks, rank j votes on chunk j, Allgather of the packed decision;
  the decision is 1 plane (1-bit, tie rule plus/shared_random or odd P) or 2 planes (carries 0).
- ``int8_allreduce``: Allreduce(SUM) of int8 codes in {-1, 0, +1} (P <= 127), then sign.

Bytes are counted by :class:`~mpiopt.comm.stats.CommStats` from the buffers actually sent.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Literal

import numpy as np
from mpi4py import MPI

from ..kernels import BLOCK, blocks, first_nonfinite
from .core import Comm

WORD_BITS = 64
TIE_RULES = ("zero", "plus", "shared_random")
AGGREGATORS = ("allgather", "twophase", "int8_allreduce")
ENCODINGS = ("1bit", "ternary")
_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


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
    eq = np.full_like(planes[0], _ONES)
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
    eq = np.full_like(a[0], _ONES)
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
    return out_neg, np.full_like(out_neg, _ONES)


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


# -- aggregators ----------------------------------------------------------------------------------
class SignAggregator:
    """Combine the ranks' packed sign messages into one decision, identical on every rank.

    ``encode(m)`` codes this rank's message; ``aggregate(t)`` returns the decision planes (neg, nz)
    (nz is None when every element is nonzero); ``apply(x, gamma)`` performs x -= gamma * v.
    ``payload_bytes``: bytes of one message; ``last_bytes``: bytes this rank sent in the last
    :meth:`aggregate` (from ``comm.stats``).
    """

    def __init__(self, comm: Comm, n: int, encoding: Literal["1bit", "ternary"] = "1bit",
                 method: Literal["allgather", "twophase", "int8_allreduce"] = "allgather",
                 tie: Literal["zero", "plus", "shared_random"] = "zero", seed: int = 0,
                 dtype: np.dtype = np.float64):
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}")
        if method not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {method!r}")
        if tie not in TIE_RULES:
            raise ValueError(f"unknown tie rule {tie!r}")
        if method == "int8_allreduce" and comm.size > 127:
            raise ValueError("int8_allreduce needs at most 127 ranks")
        self.comm, self.n, self.encoding, self.method, self.tie, self.seed = comm, n, encoding, method, tie, seed
        P = comm.size
        self.planes = 1 if encoding == "1bit" else 2
        # twophase chunks: whole words, a multiple of 4 (tie-break stream alignment)
        self.chunk = n_words(n, 4 * P) // P if method == "twophase" else 0
        self.words = self.chunk * P if method == "twophase" else n_words(n)
        W = self.words
        self.send = np.zeros((self.planes, W), dtype=np.uint64)
        self._work = np.empty(n, dtype=np.bool_)
        self.table = StepTable(n, dtype)
        self._blk: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.payload_bytes = self.send.nbytes if method != "int8_allreduce" else n
        # the decision carries zeros unless ties cannot occur or resolve to a sign
        self.carries_zero = tie == "zero" and (encoding == "ternary" or P % 2 == 0)
        if method == "allgather":
            self.recv = np.empty((P, self.planes, W), dtype=np.uint64)
        elif method == "twophase":
            self.out_planes = 2 if self.carries_zero else 1
            self._a2a_send = np.empty((P, self.planes, self.chunk), dtype=np.uint64)
            self._a2a_recv = np.empty((P, self.planes, self.chunk), dtype=np.uint64)
            self._mine = np.empty((self.out_planes, self.chunk), dtype=np.uint64)
            self._gath = np.empty((P, self.out_planes, self.chunk), dtype=np.uint64)
            self._dec = np.empty((self.out_planes, W), dtype=np.uint64)
        else:
            self.codes = np.empty(n, dtype=np.int8)
            self.sums = np.empty(n, dtype=np.int8)
            self._dec = np.zeros((2, W), dtype=np.uint64)
        self.last_bytes = 0
        self.neg: np.ndarray | None = None
        self.nz: np.ndarray | None = None

    # message ------------------------------------------------------------------------------
    def encode(self, m: np.ndarray) -> None:
        """Code this rank's message ``m`` (length n, finite)."""
        if self.method == "int8_allreduce":
            check_finite(m)
            c = self.codes
            np.less(m, 0.0, out=self._work)
            if self.encoding == "1bit":
                np.subtract(1, 2 * self._work.view(np.int8), out=c)
            else:
                np.greater(m, 0.0, out=c.view(np.bool_))
                c -= self._work.view(np.int8)
        else:
            sign_planes(m, self.encoding, self.send, self._work)

    def encode_blocks(self, message: Callable[[int, int, np.ndarray, np.ndarray], np.ndarray]) -> None:
        """Code a message produced block by block: ``message(lo, hi, out, work)`` writes elements
        [lo, hi) into ``out`` (``work``: scratch of the same size) and returns it. The message is
        never stored whole: each block is made, checked and packed while it is in cache."""
        if self.method == "int8_allreduce":
            raise ValueError("encode_blocks: int8_allreduce codes whole messages (use encode)")
        if self._blk is None:
            k = min(self.n, BLOCK)
            self._blk = (np.empty(k), np.empty(k), np.empty(k, dtype=np.bool_))
        out, work, flags = self._blk
        planes = [p.view(np.uint8) for p in self.send]
        for lo, hi in blocks(self.n, out.size):
            k = hi - lo
            m = message(lo, hi, out[:k], work[:k])
            check_finite(m, lo)
            f = flags[:k]
            b0, b1 = lo // 8, -(-hi // 8)
            np.less(m, 0.0, out=f)
            planes[0][b0:b1] = np.packbits(f)
            if self.planes == 2:
                np.not_equal(m, 0.0, out=f)
                planes[1][b0:b1] = np.packbits(f)

    def own_deltas(self, gamma: float) -> np.ndarray:
        """gamma * (this rank's own coded signs), e.g. for error feedback; call after :meth:`encode`."""
        if self.method == "int8_allreduce":
            return self.codes.astype(self.table.dtype) * self.table.dtype.type(gamma)
        return self.table.deltas(self.send[0], self.send[1] if self.planes == 2 else None, gamma).copy()

    def own_nonzeros(self) -> int:
        """Number of nonzero codes in this rank's message (n for 1-bit)."""
        if self.encoding == "1bit":
            return self.n
        if self.method == "int8_allreduce":
            return int(np.count_nonzero(self.codes))
        return int(np.unpackbits(self.send[1].view(np.uint8)).sum())

    # vote ----------------------------------------------------------------------------------
    def _rand(self, t: int, start: int, count: int) -> np.ndarray | None:
        if self.tie != "shared_random":
            return None
        return tie_bits(self.seed, t, self.words, start, count)

    def aggregate(self, t: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Collective: the decision planes (neg, nz or None) of iteration ``t``."""
        comm = self.comm
        before = comm.stats.bytes_sent
        nz_in = lambda a: a[..., 1, :] if self.planes == 2 else None  # noqa: E731
        if self.method == "allgather":
            comm.Allgather(self.send, self.recv, tag="sign_allgather")
            neg, nz = vote(self.recv[:, 0, :], nz_in(self.recv), self.tie, self._rand(t, 0, self.words))
        elif self.method == "twophase":
            P, c = comm.size, self.chunk
            np.copyto(self._a2a_send, self.send.reshape(self.planes, P, c).transpose(1, 0, 2))
            comm.Alltoall(self._a2a_send, self._a2a_recv, tag="sign_alltoall")
            r = self._a2a_recv
            mneg, mnz = vote(r[:, 0, :], nz_in(r), self.tie, self._rand(t, comm.rank * c, c))
            self._mine[0] = mneg
            if self.out_planes == 2:
                self._mine[1] = mnz
            comm.Allgather(self._mine, self._gath, tag="sign_allgather")
            np.copyto(self._dec.reshape(self.out_planes, P, c), self._gath.transpose(1, 0, 2))
            neg = self._dec[0]
            nz = self._dec[1] if self.out_planes == 2 else np.full_like(neg, _ONES)
        else:
            comm.Allreduce(self.codes, self.sums, op=MPI.SUM, tag="sign_int8_allreduce")
            s, w = self.sums, self._work
            np.less(s, 0, out=w)
            pack_bits(w, self._dec[0])
            np.equal(s, 0, out=w)
            if self.tie == "zero":
                np.logical_not(w, out=w)
                pack_bits(w, self._dec[1])
            else:
                tie = pack_bits(w, np.zeros(self.words, dtype=np.uint64))
                if self.tie == "shared_random":
                    self._dec[0] |= tie & self._rand(t, 0, self.words)
                self._dec[1] = _ONES
            neg, nz = self._dec[0], self._dec[1]
        self.last_bytes = comm.stats.bytes_sent - before
        self.neg, self.nz = neg, (nz if self.carries_zero else None)
        return self.neg, self.nz

    def apply(self, x: np.ndarray, gamma: float) -> np.ndarray:
        """x -= gamma * v with the last decision (same float ops on every rank)."""
        return self.table.apply(x, self.neg, self.nz, gamma)

    def values(self) -> np.ndarray:
        """The last decision as int8 in {-1, 0, +1}."""
        nz = self.nz if self.nz is not None else np.full_like(self.neg, _ONES)
        return decision_values(self.neg, nz, self.n)


def sign_bytes(comm: Comm) -> int:
    """Bytes this rank sent in sign-vote collectives so far (tags ``sign_*`` of ``comm.stats``)."""
    return int(sum(b for op, b in comm.stats.bytes_by_op.items() if op.startswith("sign_")))


# -- replica consistency --------------------------------------------------------------------------
def digest(x: np.ndarray) -> int:
    """64-bit hash of the bytes of ``x``."""
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(x).view(np.uint8), digest_size=8).digest(),
                          "little") & 0x7FFFFFFFFFFFFFFF


def replicas_identical(comm: Comm, x: np.ndarray) -> bool:
    """Collective: True iff ``x`` is bit-identical on every rank (Allgather of a 64-bit hash)."""
    h = np.array([digest(x)], dtype=np.int64)
    out = np.empty(comm.size, dtype=np.int64)
    comm.Allgather(h, out, tag="checksum")
    return bool((out == out[0]).all())
