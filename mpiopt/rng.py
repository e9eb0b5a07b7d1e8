"""Per-rank random streams and their checkpointing, shared by every stochastic solver."""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from .comm import Comm


class RankStreams:
    """One numpy Generator per rank, keyed by ``(seed, rank, tag)``.

    :meth:`state` gathers every rank's state (collective) for a checkpoint; :meth:`load` restores
    it at the same rank count, and at another rank count starts fresh streams keyed by the
    iteration (a stream cannot be split or merged across ranks).
    """

    def __init__(self, comm: Comm, seed: int, tag: int):
        self.comm = comm
        self.seed = int(seed)
        self.tag = int(tag)
        self.rng = np.random.default_rng([self.seed, comm.rank, self.tag])

    def state(self) -> list[str] | None:
        """Collective: every rank's generator state (JSON), on rank 0; None elsewhere."""
        return self.comm.gather_obj(json.dumps(self.rng.bit_generator.state))

    def load(self, states: Any, n_ranks: int, iteration: int) -> bool:
        """Restore this rank's stream from ``states`` (as saved by :meth:`state` with ``n_ranks`` ranks).
        Returns True if restored exactly, False if fresh streams were started (other rank count)."""
        if int(n_ranks) == self.comm.size:
            self.rng.bit_generator.state = json.loads(states[self.comm.rank])
            return True
        self.rng = np.random.default_rng([self.seed, self.comm.rank, self.tag, int(iteration)])
        return False
