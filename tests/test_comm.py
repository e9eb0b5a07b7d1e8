"""The MPI layer: polite collectives, byte accounting, collective input checks."""
import numpy as np
import pytest

from mpiopt.comm import CommStats
from mpiopt.comm.stats import allgather_bytes, allreduce_bytes, alltoall_bytes


def test_byte_formulas():
    assert allreduce_bytes(400, 1) == 0
    assert allreduce_bytes(400, 4) == pytest.approx(600.0)
    assert allgather_bytes(100, 4) == 300
    assert alltoall_bytes(400, 4) == pytest.approx(300.0)
    s = CommStats()
    s.add("a", 10.4)
    s.add("a", 5)
    s.add("b", 1)
    assert s.bytes_sent == 16 and s.calls_by_op["a"] == 2
    t = CommStats()
    t.load(s.as_dict())
    assert t.as_dict() == s.as_dict()


@pytest.mark.mpi(ranks=[2, 4], timeout=60)
def test_polite_collectives_match_mpi():
    from mpi4py import MPI
    from mpiopt.comm import Comm
    c = Comm(MPI.COMM_WORLD)
    x = np.arange(10, dtype=np.float64) * (c.rank + 1)
    out = np.empty_like(x)
    c.Allreduce(x, out)
    ref = np.arange(10) * sum(range(1, c.size + 1))
    assert np.array_equal(out, ref)
    assert c.stats.bytes_sent == round(2 * (c.size - 1) / c.size * x.nbytes)
    g = np.empty((c.size, 3))
    c.Allgather(np.full(3, float(c.rank)), g)
    assert np.array_equal(g[:, 0], np.arange(c.size))
    tot = c.sum_ordered(np.array([0.1 * c.rank, 1.0]))
    assert tot[1] == c.size
    rows = c.gatherv_rows(np.full((c.rank + 1, 2), c.rank, dtype=np.int32))
    if c.rank == 0:
        assert rows.shape == (c.size * (c.size + 1) // 2, 2)
        assert rows[-1, 0] == c.size - 1
    else:
        assert rows is None
    right, left = (c.rank + 1) % c.size, (c.rank - 1) % c.size
    recv = np.empty(4)
    c.Sendrecv(np.full(4, float(c.rank)), right, recv, left)
    assert (recv == left).all()


@pytest.mark.mpi(ranks=3, timeout=60)
def test_collective_check_raises_everywhere():
    from mpi4py import MPI
    from mpiopt.comm import Comm, collective_check
    from mpiopt.errors import InputError
    c = Comm(MPI.COMM_WORLD)

    def bad_on_rank_1():
        if c.rank == 1:
            raise InputError("data.txt:7: bad line")
        return c.rank

    with pytest.raises(InputError, match="data.txt:7"):
        collective_check(c, bad_on_rank_1)
    assert collective_check(c, lambda: c.rank) == c.rank
