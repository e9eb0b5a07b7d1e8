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


@pytest.mark.mpi(ranks=4, timeout=60)
def test_rma_accumulate_loses_nothing_and_reads_do_not_wait_for_busy_host():
    import time
    from mpi4py import MPI
    from mpiopt.comm import Comm
    from mpiopt.comm.rma import SeqlockRecord, SpinLock, Window
    c = Comm(MPI.COMM_WORLD)
    w = Window(c, 8 if c.rank == 0 else 0, np.int64)
    for _ in range(200):
        w.accumulate(0, np.ones(8, dtype=np.int64))
    c.Barrier()
    if c.rank == 0:
        assert (w.local == 200 * c.size).all()
    c.Barrier()
    # lock-protected read-modify-write is exact
    lockw = Window(c, 1 if c.rank == 0 else 0, np.int64)
    lock = SpinLock(lockw, host=0)
    for _ in range(50):
        with lock:
            v = np.empty(1, np.int64)
            w.get(0, v, offset=0)
            w.put(0, v + 1, offset=0)
    c.Barrier()
    if c.rank == 0:
        assert w.local[0] == 200 * c.size + 50 * c.size
    c.Barrier()
    # the host computes for 1 s outside MPI: others' reads must not stall
    rec = SeqlockRecord(c, ["lower", "upper"], host=0)
    if c.rank == 0:
        rec.publish(lower=1.0, upper=2.0)
    c.Barrier()
    if c.rank == 0:
        t = time.perf_counter()
        a = np.random.default_rng(0).random((300, 300))
        while time.perf_counter() - t < 1.0:
            a = a @ a
            a /= np.abs(a).max()
    else:
        t = time.perf_counter()
        worst = 0.0
        for _ in range(100):
            t1 = time.perf_counter()
            got = rec.read()
            worst = max(worst, time.perf_counter() - t1)
        assert got["lower"] == 1.0 and got["upper"] == 2.0 and got["seq"] % 2 == 0
        assert worst < 0.5, f"a read waited {worst:.2f}s for a busy host"
    c.Barrier()
    rec.free()
    lockw.free()
    w.free()
