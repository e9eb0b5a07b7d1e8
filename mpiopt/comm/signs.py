"""The sign-vote collectives: they move the ranks' packed sign words (or int8 codes) and count the
bytes; what the words mean, how they are voted on and applied is the sign solvers' business
(:mod:`mpiopt.solvers.sign_engine`).

- ``allgather``: Allgather of the packed planes (every rank then votes on all P rows).
- ``twophase``: Alltoall of chunks, rank j votes on chunk j (a function of the caller's), Allgather
  of the packed decision chunks.
- ``int8_allreduce``: Allreduce(SUM) of int8 codes in {-1, 0, +1} (P <= 127).

Bytes are counted by :class:`~mpiopt.comm.stats.CommStats` from the buffers actually sent.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
from mpi4py import MPI

from .core import Comm

AGGREGATORS = ("allgather", "twophase", "int8_allreduce")

#: ``vote(rows, start, count)``: the decision planes (neg, nz) of received rows (P x planes x words)
#: whose first word is word ``start`` of the whole plane
ChunkVote = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]


class SignExchange:
    """The buffers and collectives of one aggregator ``method`` for ``planes`` packed planes of
    ``words`` uint64 words (twophase: ``words`` = P chunks of whole words; ``out_planes`` decision
    planes travel back) or, for ``int8_allreduce``, ``n`` int8 codes. ``send``/``codes``: what this
    rank fills; ``last_bytes``: bytes it sent in the last exchange."""

    def __init__(self, comm: Comm, method: str, planes: int, words: int, n: int, out_planes: int = 1):
        if method not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {method!r}")
        if method == "int8_allreduce" and comm.size > 127:
            raise ValueError("int8_allreduce needs at most 127 ranks")
        P = comm.size
        self.comm, self.method, self.planes, self.words, self.out_planes = comm, method, planes, words, out_planes
        self.chunk = words // P if method == "twophase" else 0
        if method == "twophase" and self.chunk * P != words:
            raise ValueError(f"twophase: {words} words are not {P} equal chunks")
        self.send = np.zeros((planes, words), dtype=np.uint64)
        self.last_bytes = 0
        if method == "allgather":
            self.recv = np.empty((P, planes, words), dtype=np.uint64)
        elif method == "twophase":
            c = self.chunk
            self._a2a_send = np.empty((P, planes, c), dtype=np.uint64)
            self._a2a_recv = np.empty((P, planes, c), dtype=np.uint64)
            self._mine = np.empty((out_planes, c), dtype=np.uint64)
            self._gath = np.empty((P, out_planes, c), dtype=np.uint64)
            self.decision = np.empty((out_planes, words), dtype=np.uint64)
        else:
            self.codes = np.empty(n, dtype=np.int8)
            self.sums = np.empty(n, dtype=np.int8)
        #: bytes of one rank's message
        self.payload_bytes = self.send.nbytes if method != "int8_allreduce" else n

    def _counted(self, before: int) -> None:
        self.last_bytes = self.comm.stats.bytes_sent - before

    def allgather(self) -> np.ndarray:
        """Collective (allgather): every rank's planes, P x planes x words."""
        before = self.comm.stats.bytes_sent
        self.comm.Allgather(self.send, self.recv, tag="sign_allgather")
        self._counted(before)
        return self.recv

    def twophase(self, vote: ChunkVote) -> np.ndarray:
        """Collective (twophase): rank j receives chunk j of every rank's planes, ``vote`` decides it,
        the decision chunks are gathered: the decision planes, out_planes x words."""
        comm, P, c = self.comm, self.comm.size, self.chunk
        before = comm.stats.bytes_sent
        np.copyto(self._a2a_send, self.send.reshape(self.planes, P, c).transpose(1, 0, 2))
        comm.Alltoall(self._a2a_send, self._a2a_recv, tag="sign_alltoall")
        mneg, mnz = vote(self._a2a_recv, comm.rank * c, c)
        self._mine[0] = mneg
        if self.out_planes == 2:
            self._mine[1] = mnz
        comm.Allgather(self._mine, self._gath, tag="sign_allgather")
        np.copyto(self.decision.reshape(self.out_planes, P, c), self._gath.transpose(1, 0, 2))
        self._counted(before)
        return self.decision

    def allreduce_codes(self) -> np.ndarray:
        """Collective (int8_allreduce): the sums of every rank's int8 codes."""
        before = self.comm.stats.bytes_sent
        self.comm.Allreduce(self.codes, self.sums, op=MPI.SUM, tag="sign_int8_allreduce")
        self._counted(before)
        return self.sums


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
