"""Packed sign codes, the bit-sliced majority vote and the MPI vote aggregators (mpiopt.kernels.codec,
mpiopt.comm.signs, mpiopt.solvers.sign_engine)."""
import numpy as np
import pytest

from mpiopt.kernels import BLOCK
from mpiopt.kernels.codec import (StepTable, bitsliced_count, decision_values, n_words, pack_bits, sign_planes,
                                    tie_bits, unpack_bits, vote)
from mpiopt.solvers.sign_engine import AGGREGATORS


def numpy_vote(codes: np.ndarray, tie: str, rand_flags: np.ndarray | None = None) -> np.ndarray:
    """The plain definition: sign of the column sums, ties by the rule."""
    s = codes.astype(np.int64).sum(axis=0)
    v = np.sign(s)
    if tie == "plus":
        v[s == 0] = 1
    elif tie == "shared_random":
        v[s == 0] = np.where(rand_flags[s == 0], -1, 1)
    return v.astype(np.int8)


def code(m: np.ndarray, encoding: str) -> np.ndarray:
    """The value each rank's code stands for: 1-bit sgn with sgn(0) = +, ternary sgn."""
    c = np.sign(m).astype(np.int8)
    if encoding == "1bit":
        c[c == 0] = 1
    return c


def test_pack_unpack_round_trip_every_length():
    rng = np.random.default_rng(0)
    for n in range(0, 300):
        flags = rng.random(n) < 0.5
        words = pack_bits(flags)
        assert words.dtype == np.uint64 and words.size == n_words(n)
        assert np.array_equal(unpack_bits(words, n), flags)
        assert not np.unpackbits(words.view(np.uint8))[n:].any(), f"padding bits set for n={n}"
        # into a larger preallocated buffer: padding cleared, content the same
        buf = np.full(n_words(n, 4) + 4, np.uint64(2**64 - 1), dtype=np.uint64)
        pack_bits(flags, buf)
        assert np.array_equal(unpack_bits(buf, n), flags)
        assert not np.unpackbits(buf.view(np.uint8))[n:].any()


def test_bit_convention_one_means_negative_big_endian():
    m = np.array([-1.0, 2.0, -0.0, 0.0, -3.0, 5.0, 7.0, -1e-300, 4.0])
    planes = np.zeros((2, n_words(m.size)), dtype=np.uint64)
    sign_planes(m, "1bit", planes[:1])
    b = planes[0].view(np.uint8)
    assert b[0] == 0b10001001          # -1, -3, -1e-300 negative; -0.0 counts as + (no code for 0)
    assert b[1] == 0b00000000          # 4.0, then zero padding
    sign_planes(m, "ternary", planes)
    assert planes[0].view(np.uint8)[0] == 0b10001001
    assert planes[1].view(np.uint8)[0] == 0b11001111   # nonzero plane: +-0.0 are zero
    assert planes[1].view(np.uint8)[1] == 0b10000000


def test_nonfinite_message_raises():
    out = np.zeros((1, 1), dtype=np.uint64)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="element 2"):
            sign_planes(np.array([1.0, -1.0, bad]), "1bit", out)


def test_bitsliced_count_is_popcount_per_position():
    rng = np.random.default_rng(1)
    for k in (1, 2, 3, 7, 8, 15):
        rows = rng.integers(0, 2**63, size=(k, 5), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        planes = bitsliced_count(rows)
        bits = np.unpackbits(rows.view(np.uint8), axis=1)
        count = bits.sum(axis=0)
        got = sum(np.unpackbits(p.view(np.uint8)).astype(int) << i for i, p in enumerate(planes))
        assert np.array_equal(got, count)


@pytest.mark.parametrize("encoding", ["1bit", "ternary"])
@pytest.mark.parametrize("tie", ["zero", "plus", "shared_random"])
def test_packed_vote_matches_numpy_vote_for_1_to_5_ranks(encoding, tie):
    rng = np.random.default_rng([2, len(tie), len(encoding)])
    for P in range(1, 6):
        for n in (1, 63, 64, 65, 1000, 4099):
            m = rng.integers(-1, 2, size=(P, n)).astype(np.float64)   # many exact ties and zeros
            m *= rng.random((P, n)) + 0.5
            W = n_words(n, 4)
            planes = np.zeros((P, 2, W), dtype=np.uint64)
            for p in range(P):
                sign_planes(m[p], encoding, planes[p])
            rand = tie_bits(11, 7, W)
            neg, nz = vote(planes[:, 0], planes[:, 1] if encoding == "ternary" else None, tie, rand)
            got = decision_values(neg, nz, n)
            want = numpy_vote(np.stack([code(r, encoding) for r in m]), tie, unpack_bits(rand, n))
            assert np.array_equal(got, want), (P, n)
            if tie != "zero" or (encoding == "1bit" and P % 2):
                assert not (got == 0).any()


def test_tie_bits_same_for_any_chunking():
    full = tie_bits(5, 3, 64)
    parts = np.concatenate([tie_bits(5, 3, 64, s, 16) for s in range(0, 64, 16)])
    assert np.array_equal(full, parts)
    assert not np.array_equal(full, tie_bits(5, 4, 64))      # keyed by the iteration
    with pytest.raises(ValueError):
        tie_bits(5, 3, 64, 2, 4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sign_bit_injection_equals_float_update(dtype):
    rng = np.random.default_rng(3)
    for n in (1, 8, 9, 1001, 2 * BLOCK + 13):      # the last: apply runs in 3 cache blocks
        v = rng.integers(-1, 2, size=n)
        W = n_words(n, 4)
        neg = pack_bits(v < 0, np.zeros(W, dtype=np.uint64))
        nz = pack_bits(v != 0, np.zeros(W, dtype=np.uint64))
        x = rng.standard_normal(n).astype(dtype)
        gam = 0.0371
        want = x - dtype(gam) * v.astype(dtype)
        got = StepTable(n, dtype).apply(x.copy(), neg, nz, gam)
        assert np.array_equal(got, want)
        v1 = np.where(v == 0, 1, v)
        got1 = StepTable(n, dtype).apply(x.copy(), neg, None, gam)
        assert np.array_equal(got1, x - dtype(gam) * v1.astype(dtype))


@pytest.mark.mpi(ranks=[1, 2, 3, 4, 5], timeout=120)
def test_aggregators_agree_with_numpy_vote_and_count_bytes():
    from mpi4py import MPI

    from mpiopt.comm import Comm
    from mpiopt.solvers.sign_engine import SignAggregator

    comm = Comm(MPI.COMM_WORLD)
    P = comm.size
    n = 3001
    rng = np.random.default_rng([4, comm.rank])
    m = rng.integers(-1, 2, size=n) * (rng.random(n) + 0.5)
    m[:50] = 1.0 if comm.rank % 2 else -1.0          # forced ties at even P
    everyone = np.stack(comm.allgather_obj(m))
    for encoding in ("1bit", "ternary"):
        codes = np.stack([code(r, encoding) for r in everyone])
        for tie in ("zero", "plus", "shared_random"):
            W = n_words(n)
            want = numpy_vote(codes, tie, unpack_bits(tie_bits(9, 13, W), n))
            for method in AGGREGATORS:
                agg = SignAggregator(comm, n, encoding, method, tie, seed=9)
                agg.encode(m)
                agg.aggregate(13)
                got = agg.values()
                assert np.array_equal(got, want), (encoding, tie, method)
                # x -= gam * v identical to the float definition
                x = np.linspace(-1, 1, n)
                assert np.array_equal(agg.apply(x.copy(), 0.25), x - 0.25 * want)
                planes = 1 if encoding == "1bit" else 2
                if P == 1:
                    assert agg.last_bytes == 0
                elif method == "allgather":
                    assert agg.payload_bytes == planes * 8 * n_words(n)
                    assert agg.last_bytes == (P - 1) * agg.payload_bytes
                elif method == "twophase":
                    chunk_bytes = 8 * agg.chunk
                    back = agg.out_planes * chunk_bytes * (P - 1)
                    assert agg.last_bytes == round((P - 1) / P * planes * chunk_bytes * P) + back
                else:
                    assert agg.last_bytes == round(2 * (P - 1) / P * n)


@pytest.mark.parametrize("encoding", ["1bit", "ternary"])
def test_blockwise_encoding_equals_whole_vector_encoding(encoding):
    from mpi4py import MPI

    from mpiopt.comm import Comm
    from mpiopt.solvers.sign_engine import SignAggregator

    comm = Comm(MPI.COMM_SELF)
    rng = np.random.default_rng(11)
    for n in (5, 64, 1001, 2 * BLOCK + 13):
        m = rng.standard_normal(n)
        m[rng.random(n) < 0.2] = 0.0
        m[:3] = [-0.0, 0.0, -1e-300]
        whole = SignAggregator(comm, n, encoding)
        whole.encode(m)
        blocked = SignAggregator(comm, n, encoding)
        seen = []

        def message(lo, hi, out, work):
            seen.append((lo, hi))
            np.copyto(out, m[lo:hi])
            return out

        blocked.encode_blocks(message)
        assert np.array_equal(blocked.send, whole.send)
        assert seen == [(lo, min(n, lo + BLOCK)) for lo in range(0, n, BLOCK)]
    bad = np.ones(BLOCK + 100)
    bad[BLOCK + 7] = np.nan
    agg = SignAggregator(comm, bad.size, encoding)
    with pytest.raises(ValueError, match=f"element {BLOCK + 7}"):
        agg.encode_blocks(lambda lo, hi, out, work: bad[lo:hi])
