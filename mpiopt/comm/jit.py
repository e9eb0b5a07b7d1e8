"""Compiling the numba kernels once per job instead of once per rank.

numba compiles a kernel the first time it is called with a new type signature and, with
``cache=True``, writes the machine code next to the module (``__pycache__``) or, where that is not
writable, under ``NUMBA_CACHE_DIR`` (default: a per-user cache directory). A process that finds a
matching cache entry loads it in milliseconds. Left alone, every rank of a cold job compiles the
same kernels at the same time (P times the work on shared cores); :func:`compile_once` lets world
rank 0 compile first, then one rank per node (a node-local cache directory), then everyone loads.
"""
from __future__ import annotations

from typing import Callable

from mpi4py import MPI

from .core import Comm


def compile_once(comm: Comm, warm: Callable[[], None]) -> None:
    """Collective: run ``warm`` (calls that compile or load the kernels a run needs) on rank 0, then
    on the first rank of every other node, then on the remaining ranks, with barriers in between."""
    if comm.size == 1:
        warm()
        return
    if comm.rank == 0:
        warm()
    comm.Barrier()
    local = comm.mpi.Split_type(MPI.COMM_TYPE_SHARED)
    leader = local.Get_rank() == 0
    local.Free()
    if leader and comm.rank != 0:
        warm()
    comm.Barrier()
    if not leader:
        warm()
