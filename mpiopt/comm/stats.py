"""Bytes-on-the-wire accounting per rank, from the standard algorithmic formulas."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

# operations that evaluate, check or report rather than run the algorithm (objective values for the
# history, input checks, replica checksums, data set-up, reference optima, result gathering, snapshots)
DIAGNOSTIC_OPS = frozenset({"eval", "control", "checksum", "setup", "reference", "result", "snapshot"})


@dataclass
class CommStats:
    """Counts bytes this rank sends, per operation name, and the number of calls.

    Formulas (P ranks, ``nbytes`` the buffer size): Allreduce (ring) 2(P-1)/P·nbytes; Allgather
    (ring) (P-1)·nbytes of the rank's block; Alltoall (P-1)/P·nbytes of the send buffer;
    Bcast/Reduce (P-1)/P·nbytes on average; point-to-point: what the rank sends; RMA: bytes moved.
    """

    bytes_by_op: dict = field(default_factory=lambda: defaultdict(int))
    calls_by_op: dict = field(default_factory=lambda: defaultdict(int))
    time_by_op: dict = field(default_factory=lambda: defaultdict(float))

    def add(self, op: str, nbytes: float, seconds: float = 0.0) -> None:
        self.bytes_by_op[op] += int(round(nbytes))
        self.calls_by_op[op] += 1
        self.time_by_op[op] += seconds

    @property
    def bytes_sent(self) -> int:
        return int(sum(self.bytes_by_op.values()))

    @property
    def algorithm_bytes(self) -> int:
        """Bytes of the algorithm's own traffic (everything but :data:`DIAGNOSTIC_OPS`; RMA included)."""
        return int(sum(b for op, b in self.bytes_by_op.items() if op not in DIAGNOSTIC_OPS))

    @property
    def diagnostic_bytes(self) -> int:
        """Bytes of evaluations, checks and reporting (:data:`DIAGNOSTIC_OPS`)."""
        return int(sum(b for op, b in self.bytes_by_op.items() if op in DIAGNOSTIC_OPS))

    def reset(self) -> None:
        self.bytes_by_op.clear()
        self.calls_by_op.clear()
        self.time_by_op.clear()

    def as_dict(self) -> dict:
        return {op: {"bytes": self.bytes_by_op[op], "calls": self.calls_by_op[op],
                     "seconds": self.time_by_op[op]} for op in sorted(self.bytes_by_op)}

    def load(self, state: dict) -> None:
        self.reset()
        for op, rec in state.items():
            self.bytes_by_op[op] = int(rec["bytes"])
            self.calls_by_op[op] = int(rec["calls"])
            self.time_by_op[op] = float(rec["seconds"])


def allreduce_bytes(nbytes: int, size: int) -> float:
    return 2.0 * (size - 1) / size * nbytes if size > 1 else 0.0


def allgather_bytes(nbytes_per_rank: int, size: int) -> float:
    return float((size - 1) * nbytes_per_rank)


def alltoall_bytes(nbytes_total: int, size: int) -> float:
    return (size - 1) / size * nbytes_total if size > 1 else 0.0


def bcast_bytes(nbytes: int, size: int) -> float:
    return (size - 1) / size * nbytes if size > 1 else 0.0
