"""Balanced cuts of one dimension into blocks, strata of a block grid and the cyclic stratum order
(as in the HAMSI reference code)."""
from __future__ import annotations

import numpy as np


def balanced_cuts(counts: np.ndarray, nblocks: int) -> np.ndarray:
    """Cut indices ``[0, c_1, .., m]`` (length nblocks+1) splitting rows with ``counts`` ratings into
    ``nblocks`` contiguous ranges of about equal load, following the reference code exactly:
    a block closes once its load reaches ceil(nnz/nblocks), before or after the row that crossed
    the target, whichever is closer to it. Trailing blocks may be empty."""
    cnt = np.asarray(counts, dtype=np.int64)
    m = cnt.size
    nnz = int(cnt.sum())
    L = -(-nnz // nblocks) if nnz else 1
    cuts = [0]
    if nblocks > 1 and m:
        csum = np.cumsum(cnt)
        base = 0       # cumulative count at the start of the current block
        start = 0      # first row of the current block
        while len(cuts) < nblocks:
            # first row i >= start where load = csum[i] - base >= L
            i = max(int(np.searchsorted(csum, base + L, side="left")), start)
            if i >= m:
                break
            load = int(csum[i] - base)
            prev = load - int(cnt[i])
            if prev > 0 and load - L > L - prev:
                cuts.append(i)                 # cut before i: row i opens the next block
                base = int(csum[i] - cnt[i])
                start = i + 1                  # row i was already counted: test again from i+1
            else:
                cuts.append(i + 1)             # cut after i
                base = int(csum[i])
                start = i + 1
    while len(cuts) < nblocks:
        cuts.append(m)
    cuts.append(m)
    return np.asarray(cuts, dtype=np.int64)


def balanced_cuts_loop(counts: np.ndarray, nblocks: int) -> np.ndarray:
    """The reference's row loop verbatim (used by the tests to check :func:`balanced_cuts`)."""
    cnt = [int(c) for c in counts]
    nnz = sum(cnt)
    L = -(-nnz // nblocks) if nnz else 1
    cuts, load = [0], 0
    for i, c in enumerate(cnt):
        prev = load
        load += c
        if load >= L and len(cuts) < nblocks:
            if prev > 0 and load - L > L - prev:
                cuts.append(i)
                load = c
            else:
                cuts.append(i + 1)
                load = 0
    while len(cuts) < nblocks:
        cuts.append(len(cnt))
    cuts.append(len(cnt))
    return np.asarray(cuts, dtype=np.int64)


def stratum_at(e: int, nstrata: int) -> int:
    """Stratum of inner step ``e`` in the reference's rotating order (closed form (e+1) mod C)."""
    return (e + 1) % nstrata


def stratum_order_reference(steps: int, nstrata: int) -> list[int]:
    """The reference's order array simulated step by step (tests check :func:`stratum_at`)."""
    C = nstrata
    order = list(range(C)) + [0]
    out = []
    for e in range(steps):
        if e % (C + 1) == 0:
            order[:C] = order[1:C] + order[:1]
            order[C] = order[0]
        out.append(order[e % (C + 1)])
    return out
