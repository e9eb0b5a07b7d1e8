"""Sign-vote aggregators: the collectives that combine the ranks' packed sign messages
(codec in :mod:`mpiopt.comm.sign_codec`) into one decision, identical on every rank.

- ``allgather``: Allgather the packed planes, every rank counts all P votes.
- ``twophase``: Alltoall of chunks, rank j votes on chunk j, Allgather of the packed decision;
  the decision is 1 plane (1-bit, tie rule plus/shared_random or odd P) or 2 planes (carries 0).
- ``int8_allreduce``: Allreduce(SUM) of int8 codes in {-1, 0, +1} (P <= 127), then sign.

Bytes are counted by :class:`~mpiopt.comm.stats.CommStats` from the buffers actually sent.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Literal, Sequence

import numpy as np
from mpi4py import MPI

from .. import kernels as K
from ..kernels import BLOCK, blocks
from .core import Comm
from .jit import compile_once
from .sign_codec import (ALL_ONES, ENCODINGS, StepTable, TIE_RULES, check_finite, decision_values, n_words,
                         pack_bits, sign_planes, tie_bits, vote)

AGGREGATORS = ("allgather", "twophase", "int8_allreduce")


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
                 dtype: np.dtype = np.float64, warm: Sequence[Callable[[], None]] = ()):
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
        self.dtype = np.dtype(dtype)
        #: compiled kernels: fused message/check/pack, vote on words, one-pass apply (see mpiopt.kernels);
        #: ``warm``: the caller's other kernels (e.g. the gradient's), compiled in the same round
        self.jit = K.JIT and method != "int8_allreduce"
        fns = tuple(warm)
        if self.jit:
            K.compile_kernels()
            vw = self.chunk if method == "twophase" else W
            self._vote_out = (np.empty(vw, dtype=np.uint64), np.empty(vw, dtype=np.uint64))
            self._bad = np.zeros(1)
            fns = (self._warm_pack, self._warm_vote, self._warm_apply) + fns
        if fns:
            compile_once(comm, fns)

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

    def encode_message(self, kind: int, x: np.ndarray, g: np.ndarray, t: float, l1: float = 0.0, l2: float = 0.0,
                       ef: np.ndarray | None = None, cols: np.ndarray | None = None) -> None:
        """Compiled path: make the message of ``kind`` (:data:`mpiopt.kernels.MSG_MAPPING_L1` ...) from
        x and g with step t and elastic-net weights (l1, l2), check it and pack its signs, in one pass.
        With ``ef`` the message is p = m + e and p is stored into ``ef``; :meth:`apply` with the same
        ``ef`` then leaves e = p - gamma * v there. ``cols`` (int64): g is +0.0 outside these indices
        (a sparse minibatch gradient), so the pass need not read g."""
        send = self.send
        nz = send[1] if self.planes == 2 else K._NO_W
        bad = K.sign_message_pack(kind, x, g, t, t * l1, l1 > 0, l1, 1.0 + t * l2, l2 > 0, l2,
                                  K._NO_F if ef is None else ef, ef is not None, self.planes == 2, send[0], nz,
                                  self._bad, K._NO_I if cols is None else cols, cols is not None)
        if bad >= 0:
            raise ValueError(f"non-finite value {self._bad[0]} at element {bad}: cannot code its sign")

    def apply_and_encode(self, kind: int, x: np.ndarray, g: np.ndarray, t: float, l1: float, l2: float,
                         cols: np.ndarray, gamma: float, done: np.ndarray) -> None:
        """Compiled path, one pass: x -= gamma * v with the last decision (except the elements whose bit
        in ``done`` is set: :meth:`apply_at_rows` did them; the bits are cleared), then
        :meth:`encode_message` of the new x with g zero outside ``cols``. Equal to :meth:`apply`
        followed by :meth:`encode_message`."""
        send = self.send
        nz = send[1] if self.planes == 2 else K._NO_W
        dnz = self.nz if self.nz is not None else K._NO_W
        bad = K.apply_message_pack(kind, x, g, t, t * l1, l1 > 0, l1, 1.0 + t * l2, l2 > 0, l2, self.planes == 2,
                                   send[0], nz, self._bad, cols, self.neg, dnz, self.nz is not None,
                                   x.dtype.type(gamma), done)
        if bad >= 0:
            raise ValueError(f"non-finite value {self._bad[0]} at element {bad}: cannot code its sign")

    def apply_at_rows(self, indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, x: np.ndarray,
                      gamma: float, done: np.ndarray) -> None:
        """x -= gamma * v with the last decision at the columns of CSR rows ``rows`` only, marking them
        in the bit plane ``done`` (see :meth:`apply_and_encode`)."""
        dnz = self.nz if self.nz is not None else K._NO_W
        K.apply_at_rows(indptr, indices, rows, x, self.neg, dnz, self.nz is not None, x.dtype.type(gamma), done)

    # compile (or load from the cache) every kernel signature this aggregator calls
    def _warm_pack(self) -> None:
        x = np.zeros(100)
        send = np.zeros((self.planes, 2), dtype=np.uint64)
        nz = send[1] if self.planes == 2 else K._NO_W
        for ef in (K._NO_F, x.copy()):
            K.sign_message_pack(K.MSG_MAPPING_L1, x, x, 0.1, 0.0, False, 0.0, 1.0, False, 0.0, ef, ef.size > 0,
                                self.planes == 2, send[0], nz, self._bad, K._NO_I, False)

    def _warm_vote(self) -> None:
        rows = np.zeros((max(1, self.comm.size), self.planes, 2), dtype=np.uint64)
        rnz = rows[:, 1, :] if self.planes == 2 else rows[:, 0, :]
        out = (np.zeros(2, dtype=np.uint64), np.zeros(2, dtype=np.uint64))
        K.vote_words(rows[:, 0, :], rnz, self.planes == 2, 0, np.zeros(2, dtype=np.uint64), *out)

    def _warm_apply(self) -> None:
        x = np.zeros(100)
        dec = np.zeros((2, 2), dtype=np.uint64)
        xd = np.zeros(100, dtype=self.dtype)
        for nzp in (dec[1], K._NO_W):
            for ef in (K._NO_F, x.copy()):
                K.apply_words(xd, dec[0], nzp, nzp.size > 0, self.dtype.type(0.0), ef, ef.size > 0, False, 0.0,
                              False, 1.0, False)

    def decision_deltas(self, gamma: float) -> np.ndarray:
        """gamma * v for the last decision, as a vector of length n (an internal buffer, overwritten by
        the next call): exactly the step :meth:`apply` subtracts."""
        return self.table.deltas(self.neg, self.nz, gamma)

    # vote ----------------------------------------------------------------------------------
    def _rand(self, t: int, start: int, count: int) -> np.ndarray | None:
        if self.tie != "shared_random":
            return None
        return tie_bits(self.seed, t, self.words, start, count)

    def aggregate(self, t: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Collective: the decision planes (neg, nz or None) of iteration ``t``."""
        comm = self.comm
        before = comm.stats.bytes_sent
        if self.method == "allgather":
            comm.Allgather(self.send, self.recv, tag="sign_allgather")
            neg, nz = self._vote(self.recv, t, 0, self.words)
        elif self.method == "twophase":
            P, c = comm.size, self.chunk
            np.copyto(self._a2a_send, self.send.reshape(self.planes, P, c).transpose(1, 0, 2))
            comm.Alltoall(self._a2a_send, self._a2a_recv, tag="sign_alltoall")
            r = self._a2a_recv
            mneg, mnz = self._vote(r, t, comm.rank * c, c)
            self._mine[0] = mneg
            if self.out_planes == 2:
                self._mine[1] = mnz
            comm.Allgather(self._mine, self._gath, tag="sign_allgather")
            np.copyto(self._dec.reshape(self.out_planes, P, c), self._gath.transpose(1, 0, 2))
            neg = self._dec[0]
            nz = self._dec[1] if self.out_planes == 2 else np.full_like(neg, ALL_ONES)
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
                self._dec[1] = ALL_ONES
            neg, nz = self._dec[0], self._dec[1]
        self.last_bytes = comm.stats.bytes_sent - before
        self.neg, self.nz = neg, (nz if self.carries_zero else None)
        return self.neg, self.nz

    def _vote(self, rows: np.ndarray, t: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Vote on received planes ``rows`` (P x planes x words)."""
        rand = self._rand(t, start, count)
        if not self.jit:
            return vote(rows[:, 0, :], rows[..., 1, :] if self.planes == 2 else None, self.tie, rand)
        nz = rows[:, 1, :] if self.planes == 2 else rows[:, 0, :]
        K.vote_words(rows[:, 0, :], nz, self.planes == 2, TIE_RULES.index(self.tie),
                     K._NO_W if rand is None else rand, *self._vote_out)
        return self._vote_out

    def apply(self, x: np.ndarray, gamma: float, ef: np.ndarray | None = None,
              prox: tuple[float, float] | None = None) -> np.ndarray:
        """x -= gamma * v with the last decision (same float ops on every rank). Compiled path only:
        with ``ef`` also e -= gamma * v; with ``prox`` = (l1, l2) then x <- prox of the elastic net
        with step gamma, in the same pass."""
        if not self.jit:
            if ef is not None or prox is not None:
                raise ValueError("apply with ef/prox needs the compiled kernels")
            return self.table.apply(x, self.neg, self.nz, gamma)
        nz = self.nz if self.nz is not None else K._NO_W
        l1, l2 = prox if prox is not None else (0.0, 0.0)
        K.apply_words(x, self.neg, nz, self.nz is not None, x.dtype.type(gamma), K._NO_F if ef is None else ef,
                      ef is not None, prox is not None, gamma * l1, l1 > 0, 1.0 + gamma * l2, l2 > 0)
        return x

    def values(self) -> np.ndarray:
        """The last decision as int8 in {-1, 0, +1}."""
        nz = self.nz if self.nz is not None else np.full_like(self.neg, ALL_ONES)
        return decision_values(self.neg, nz, self.n)


def apply_encode_warmers(ternary: bool, index_dtypes: tuple[np.dtype, np.dtype]) -> list[Callable[[], None]]:
    """Calls that compile (or load) the kernels of :meth:`SignAggregator.apply_and_encode` and
    :meth:`SignAggregator.apply_at_rows` (CSR index dtypes ``index_dtypes``), for
    :func:`~mpiopt.comm.jit.compile_once` (the ``warm`` argument of :class:`SignAggregator`)."""
    def pack() -> None:
        x, w = np.zeros(100), np.zeros(2, dtype=np.uint64)
        for dnz in (w, K._NO_W):
            K.apply_message_pack(K.MSG_MAPPING_L1, x, x, 0.1, 0.0, False, 0.0, 1.0, False, 0.0, ternary, w,
                                 w if ternary else K._NO_W, np.zeros(1), K._NO_I, w, dnz, dnz.size > 0, 0.0, w)

    def rows() -> None:
        w = np.zeros(2, dtype=np.uint64)
        for dnz in (w, K._NO_W):
            K.apply_at_rows(np.zeros(2, dtype=index_dtypes[0]), np.zeros(0, dtype=index_dtypes[1]),
                            np.zeros(1, dtype=np.int64), np.zeros(1), w, dnz, dnz.size > 0, 0.0, w)
    return [pack, rows]


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
