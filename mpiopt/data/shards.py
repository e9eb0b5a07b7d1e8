"""Byte-range sharding of text files: each rank reads only the whole lines that start in its range."""
from __future__ import annotations

import os

from ..preflight import open_input


def byte_range(path: str, rank: int, size: int, start: int = 0) -> tuple[int, int]:
    """[lo, hi) byte range of ``rank``'s shard of ``path`` from byte ``start`` on (e.g. after a header);
    a line belongs to the shard where it starts."""
    total = os.path.getsize(path) - start
    return start + total * rank // size, start + total * (rank + 1) // size


def read_lines_bytes(path: str, lo: int, hi: int) -> bytes:
    """The bytes of the whole lines that start in [lo, hi)."""
    with open_input(path) as fh:
        if lo > 0:
            fh.seek(lo - 1)
            if fh.read(1) != b"\n":
                fh.readline()  # the line in progress belongs to the previous shard
        start = fh.tell()
        if start >= hi:
            return b""
        fh.seek(hi - 1)                 # the end of the line holding byte hi-1: one read, no second copy
        if fh.read(1) not in (b"\n", b""):
            fh.readline()
        end = fh.tell()
        fh.seek(start)
        return fh.read(end - start)


def read_shard_bytes(path: str, rank: int, size: int) -> bytes:
    """The whole lines that start in ``rank``'s byte range of ``path``."""
    return read_lines_bytes(path, *byte_range(path, rank, size))
