"""Compiling the numba kernels once per job instead of once per rank.

numba compiles a kernel the first time it is called with a new type signature and, with
``cache=True``, writes the machine code next to the module (``__pycache__``) or, where that is not
writable, under ``NUMBA_CACHE_DIR`` (default: a per-user cache directory). A process that finds a
matching cache entry loads it in milliseconds. Left alone, every rank of a cold job compiles the
same kernels at the same time (P times the work on shared cores); :func:`compile_once` lets the
ranks compile the kernels in turn (in parallel, each kernel once), then one rank per node loads
or compiles what is missing (a node-local cache directory), then everyone loads.
"""
from __future__ import annotations

from typing import Callable, Sequence

from mpi4py import MPI

from .core import Comm


def compile_once(comm: Comm, warm: Sequence[Callable[[], None]]) -> None:
    """Collective: run every function of ``warm`` (calls that compile or load the kernels a run
    needs) so that each kernel is compiled once per job: function i on rank i mod P first (in
    parallel), then all of them on the first rank of every node, then on the remaining ranks, with
    barriers in between. Waiting ranks sleep (polite barrier)."""
    if comm.size == 1:
        for w in warm:
            w()
        return
    for w in warm[comm.rank::comm.size]:
        w()
    comm.Barrier()
    local = comm.mpi.Split_type(MPI.COMM_TYPE_SHARED)
    leader = local.Get_rank() == 0
    local.Free()
    if leader:
        for w in warm:
            w()
    comm.Barrier()
    if not leader:
        for w in warm:
            w()
