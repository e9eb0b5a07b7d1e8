"""The sign-vote engine of the sign solvers: how a rank's message is coded (1-bit or ternary planes,
int8 codes), how the ranks' codes are voted on (tie rules, the compiled or the numpy vote) and how
the decision is applied (with error feedback, a fused prox, or deferred into the next message pass).
The collectives that move the words are :class:`mpiopt.comm.signs.SignExchange`; the kernels are
:mod:`mpiopt.kernels` (numpy reference: :mod:`mpiopt.kernels.codec`).
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import numpy as np

from .. import kernels as K
from ..comm.core import Comm
from ..comm.jit import compile_once
from ..comm.signs import AGGREGATORS, SignExchange
from ..kernels import BLOCK, blocks
from ..kernels.codec import (ALL_ONES, ENCODINGS, StepTable, TIE_RULES, check_finite, decision_values, n_words,
                             pack_bits, sign_planes, tie_bits, vote)

__all__ = ["AGGREGATORS", "ENCODINGS", "TIE_RULES", "SignAggregator", "apply_encode_warmers", "n_words"]


def _raise_nonfinite(i: int, bad: np.ndarray) -> None:
    if i >= 0:
        raise ValueError(f"non-finite value {bad[0]} at element {i}: cannot code its sign")


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
        self.comm, self.n, self.encoding, self.method, self.tie, self.seed = comm, n, encoding, method, tie, seed
        P = comm.size
        self.planes = 1 if encoding == "1bit" else 2
        # twophase chunks: whole words, a multiple of 4 (tie-break stream alignment)
        self.chunk = n_words(n, 4 * P) // P if method == "twophase" else 0
        self.words = self.chunk * P if method == "twophase" else n_words(n)
        # the decision carries zeros unless ties cannot occur or resolve to a sign
        self.carries_zero = tie == "zero" and (encoding == "ternary" or P % 2 == 0)
        self.out_planes = 2 if self.carries_zero else 1
        self.xchg = SignExchange(comm, method, self.planes, self.words, n, self.out_planes)
        self.send = self.xchg.send
        self.payload_bytes = self.xchg.payload_bytes
        self._work = np.empty(n, dtype=np.bool_)
        self.table = StepTable(n, dtype)
        self._blk: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if method == "int8_allreduce":
            self._dec = np.zeros((2, self.words), dtype=np.uint64)
        self.neg: np.ndarray | None = None
        self.nz: np.ndarray | None = None
        self.dtype = np.dtype(dtype)
        #: compiled kernels: fused message/check/pack, vote on words, one-pass apply (see mpiopt.kernels);
        #: ``warm``: the caller's other kernels (e.g. the gradient's), compiled in the same round
        self.jit = K.JIT and method != "int8_allreduce"
        fns = tuple(warm)
        if self.jit:
            vw = self.chunk if method == "twophase" else self.words
            self._vote_out = (np.empty(vw, dtype=np.uint64), np.empty(vw, dtype=np.uint64))
            self._bad = np.zeros(1)
            self._code = K.code_of(self.send, self._bad)
            self._pack, self._vote_words = K.get("sign_message_pack"), K.get("vote_words")
            self._apply_words = K.get("apply_words")
            fns = (self._warm_pack, self._warm_vote, self._warm_apply) + fns
        if fns:
            compile_once(comm, fns)

    @property
    def last_bytes(self) -> int:
        """Bytes this rank sent in the last :meth:`aggregate`."""
        return self.xchg.last_bytes

    # message ------------------------------------------------------------------------------
    def encode(self, m: np.ndarray) -> None:
        """Code this rank's message ``m`` (length n, finite)."""
        if self.method == "int8_allreduce":
            check_finite(m)
            c = self.xchg.codes
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
        i = self._pack(K.message_params(kind, t, l1, l2), x, g, K.NO_F if ef is None else ef, ef is not None,
                       K.NO_I if cols is None else cols, cols is not None, self._code)
        _raise_nonfinite(i, self._bad)

    def decision(self) -> K.Decision:
        """The last decision as the kernels take it."""
        return K.decision_of(self.neg, self.nz)

    def apply_and_encode(self, kind: int, x: np.ndarray, g: np.ndarray, t: float, l1: float, l2: float,
                         cols: np.ndarray, gamma: float, done: np.ndarray) -> None:
        """Compiled path, one pass: x -= gamma * v with the last decision (except the elements whose bit
        in ``done`` is set: :meth:`apply_at_rows` did them; the bits are cleared), then
        :meth:`encode_message` of the new x with g zero outside ``cols``. Equal to :meth:`apply`
        followed by :meth:`encode_message`."""
        i = K.get("apply_message_pack")(K.message_params(kind, t, l1, l2), x, g, cols, self._code,
                                        self.decision(), x.dtype.type(gamma), done)
        _raise_nonfinite(i, self._bad)

    def apply_at_rows(self, indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, x: np.ndarray,
                      gamma: float, done: np.ndarray) -> None:
        """x -= gamma * v with the last decision at the columns of CSR rows ``rows`` only, marking them
        in the bit plane ``done`` (see :meth:`apply_and_encode`)."""
        K.get("apply_at_rows")(indptr, indices, rows, x, self.decision(), x.dtype.type(gamma), done)

    # compile (or load from the cache) every kernel signature this aggregator calls
    def _warm_pack(self) -> None:
        x = np.zeros(100)
        code = K.code_of(np.zeros((self.planes, 2), dtype=np.uint64), self._bad)
        for ef in (K.NO_F, x.copy()):
            self._pack(K.message_params(K.MSG_MAPPING_L1, 0.1), x, x, ef, ef.size > 0, K.NO_I, False, code)

    def _warm_vote(self) -> None:
        rows = np.zeros((max(1, self.comm.size), self.planes, 2), dtype=np.uint64)
        rnz = rows[:, 1, :] if self.planes == 2 else rows[:, 0, :]
        out = (np.zeros(2, dtype=np.uint64), np.zeros(2, dtype=np.uint64))
        self._vote_words(rows[:, 0, :], rnz, self.planes == 2, 0, np.zeros(2, dtype=np.uint64), *out)

    def _warm_apply(self) -> None:
        x = np.zeros(100)
        dec = np.zeros((2, 2), dtype=np.uint64)
        xd = np.zeros(100, dtype=self.dtype)
        for nzp in (dec[1], None):
            for ef in (K.NO_F, x.copy()):
                self._apply_words(xd, K.decision_of(dec[0], nzp), self.dtype.type(0.0), ef, ef.size > 0, False,
                                  K.prox_params(0.0, 0.0, 0.0))

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
        if self.method == "allgather":
            neg, nz = self._vote(self.xchg.allgather(), t, 0, self.words)
        elif self.method == "twophase":
            dec = self.xchg.twophase(lambda rows, start, count: self._vote(rows, t, start, count))
            neg = dec[0]
            nz = dec[1] if self.out_planes == 2 else np.full_like(neg, ALL_ONES)
        else:
            neg, nz = self._sign_of_sums(self.xchg.allreduce_codes(), t)
        self.neg, self.nz = neg, (nz if self.carries_zero else None)
        return self.neg, self.nz

    def _sign_of_sums(self, s: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        """The decision planes of summed int8 codes ``s`` by the tie rule."""
        w = self._work
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
        return self._dec[0], self._dec[1]

    def _vote(self, rows: np.ndarray, t: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Vote on received planes ``rows`` (P x planes x words)."""
        rand = self._rand(t, start, count)
        if not self.jit:
            return vote(rows[:, 0, :], rows[..., 1, :] if self.planes == 2 else None, self.tie, rand)
        nz = rows[:, 1, :] if self.planes == 2 else rows[:, 0, :]
        self._vote_words(rows[:, 0, :], nz, self.planes == 2, TIE_RULES.index(self.tie),
                         K.NO_W if rand is None else rand, *self._vote_out)
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
        l1, l2 = prox if prox is not None else (0.0, 0.0)
        self._apply_words(x, self.decision(), x.dtype.type(gamma), K.NO_F if ef is None else ef, ef is not None,
                          prox is not None, K.prox_params(gamma, l1, l2))
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
        code = K.code_of(np.zeros((2 if ternary else 1, 2), dtype=np.uint64), np.zeros(1))
        for dnz in (w, None):
            K.get("apply_message_pack")(K.message_params(K.MSG_MAPPING_L1, 0.1), x, x, K.NO_I, code,
                                        K.decision_of(w, dnz), 0.0, w)

    def rows() -> None:
        w = np.zeros(2, dtype=np.uint64)
        for dnz in (w, None):
            K.get("apply_at_rows")(np.zeros(2, dtype=index_dtypes[0]), np.zeros(0, dtype=index_dtypes[1]),
                                   np.zeros(1, dtype=np.int64), np.zeros(1), K.decision_of(w, dnz), 0.0, w)
    return [pack, rows]
