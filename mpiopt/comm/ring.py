"""Block-cyclic ring plumbing for matrix factorization: Alltoallv routing, ring shifts of column
blocks, and reductions summed in global *block* order (bit-identical at any rank count dividing
the block count).

Layout convention (see :mod:`mpiopt.mf.grid`): ``nb`` blocks per dimension, rank ``r`` of ``P``
owns blocks ``r, r+P, r+2P, ...`` ("groups" ``t = 0..q-1``, ``q = nb/P``).
"""
from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from .core import SPIN_SECONDS, Comm, polite_wait, polite_waitall

# A polite wait sleeps between tests of a request, and MPI moves a large message only while it is
# tested: 100 MB each way took 16 s with the default spin against 0.35 s testing all along (2 ranks,
# docs/hamsi.md). Large transfers therefore keep testing (yielding the core) for about the time
# the bytes need at this conservative rate before they fall back to sleeping.
SPIN_BYTES_PER_SECOND = 1e8


def transfer_spin(nbytes: float) -> float:
    """Seconds a wait on a transfer of ``nbytes`` keeps testing before it sleeps."""
    return SPIN_SECONDS + float(nbytes) / SPIN_BYTES_PER_SECOND


def alltoallv_grouped(comm: Comm, array: np.ndarray, send_counts: np.ndarray,
                      tag: str = "route") -> np.ndarray:
    """Send a 1-D ``array`` already grouped by destination rank (``send_counts[p]`` entries for rank
    p, in rank order) without copying it; returns the received entries (grouped by source rank)."""
    P = comm.size
    send_counts = np.asarray(send_counts, dtype=np.int64)
    if P == 1:
        return array
    recv_counts = np.empty(P, dtype=np.int64)
    comm.Alltoall(send_counts, recv_counts, tag=tag)
    sdispl = np.concatenate([[0], np.cumsum(send_counts)[:-1]])
    rdispl = np.concatenate([[0], np.cumsum(recv_counts)[:-1]])
    sendbuf = np.ascontiguousarray(array)
    recvbuf = np.empty(int(recv_counts.sum()), dtype=sendbuf.dtype)
    mpitype = MPI.Datatype.fromcode(sendbuf.dtype.char)
    req = comm.mpi.Ialltoallv([sendbuf, (send_counts, sdispl), mpitype], [recvbuf, (recv_counts, rdispl), mpitype])
    polite_wait(req, spin=transfer_spin(max(sendbuf.nbytes, recvbuf.nbytes)))
    comm.stats.add(tag, int(sendbuf.nbytes - send_counts[comm.rank] * sendbuf.itemsize))
    return recvbuf


def block_sum(comm: Comm, partials: np.ndarray, nb: int, tag: str = "blocksum") -> np.ndarray:
    """Sum per-block partial vectors over all blocks in global block order.

    ``partials`` is (q, L): row ``t`` belongs to block ``rank + t*P``. Every rank gets the same
    bits, and the result does not depend on the rank count (the sum runs b = 0, 1, .., nb-1)."""
    P = comm.size
    partials = np.ascontiguousarray(partials, dtype=np.float64)
    q, L = partials.shape
    if P == 1:
        allp = partials
    else:
        buf = np.empty((P, q, L), dtype=np.float64)
        comm.Allgather(partials, buf, tag=tag)
        allp = buf.transpose(1, 0, 2).reshape(nb, L)  # block b = r + t*P -> row t*P + r
    total = allp[0].copy()
    for b in range(1, nb):
        total += allp[b]
    return total


def ring_exchange(comm: Comm, sendbuf: np.ndarray, dest: int, recvbuf: np.ndarray, source: int,
                  tag: str = "ring") -> np.ndarray:
    """One ring step: send ``sendbuf`` to ``dest`` and receive ``recvbuf`` from ``source``
    (a local copy when both are this rank)."""
    if dest == comm.rank and source == comm.rank:
        np.copyto(recvbuf, sendbuf)
        return recvbuf
    t = time.perf_counter()
    reqs = [comm.mpi.Irecv(recvbuf, source, 0), comm.mpi.Isend(sendbuf, dest, 0)]
    polite_waitall(reqs, spin=transfer_spin(max(sendbuf.nbytes, recvbuf.nbytes)))
    comm.stats.add(tag, sendbuf.nbytes, time.perf_counter() - t)
    return recvbuf


def gather_to_root(comm: Comm, local: np.ndarray, root: int = 0) -> list[np.ndarray] | None:
    """Each rank's 1-D array on ``root`` (list in rank order); None elsewhere."""
    local = np.ascontiguousarray(local).ravel()
    if comm.size == 1:
        return [local.copy()]
    counts = comm.allgather_obj(int(local.size))
    flat = comm.gatherv_rows(local, root)
    if comm.rank != root:
        return None
    offs = np.concatenate([[0], np.cumsum(counts)])
    return [flat[offs[r]:offs[r + 1]] for r in range(comm.size)]
