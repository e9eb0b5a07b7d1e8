"""Compiled set-up kernels (mpiopt.mf.layout) against the numpy code they replace: the generator of
``synthetic_mf`` (bit-identical chunks, held-out split included) and the routing/sorting positions
(the same order as stable numpy sorts), on random and edge-case inputs. Whole runs on MPI ranks
keep their pinned trajectories (tests/test_pinned.py), so the layout of a grid is unchanged too."""
from __future__ import annotations

import numpy as np
import pytest

from mpiopt.mf import layout
from mpiopt.problems.mf import GEN_CHUNK, SyntheticMF, hash_uniform


def _problem(**over):
    p = SyntheticMF.__new__(SyntheticMF)
    p.opts = {"n_ratings": 3000, "n_rows": 0, "n_cols": 0, "seed": 0, "rank": 5, "zipf": 0.8, "mean": 3.5,
              "noise": 0.3, "test_fraction": 0.1, **over}
    return p


def _compiled_chunk(p, c):
    N, m, n, U, V, prow, pcol, crow, ccol = p._tables()
    o = p.opts
    cnt = min(GEN_CHUNK, N - c * GEN_CHUNK)
    seed = int(o["seed"])
    r, cc, v = np.empty(cnt + 7, np.int32), np.empty(cnt + 7, np.int32), np.empty(cnt + 7)
    t = [np.empty(cnt, np.int32), np.empty(cnt, np.int32), np.empty(cnt)]
    seed_word = np.uint64((seed * 0x632BE59BD9B4E019 + 0x1234567) % (1 << 64))
    kept, nt = layout.generate_chunk(np.random.default_rng([seed, 5, c]), cnt, crow, *layout.guide_table(crow),
                                     prow, ccol, *layout.guide_table(ccol), pcol, U[prow], V[pcol], float(o["mean"]),
                                     float(o["noise"]), float(o["test_fraction"]), seed_word, r, cc, v, 7, *t)
    return r[7:7 + kept], cc[7:7 + kept], v[7:7 + kept], t[0][:nt], t[1][:nt], t[2][:nt]


@pytest.mark.parametrize("over", [
    {}, {"rank": 1}, {"rank": 2}, {"rank": 3}, {"rank": 8}, {"rank": 11}, {"rank": 17},
    {"test_fraction": 0.0}, {"test_fraction": 0.9}, {"zipf": 0.0}, {"zipf": 2.5},
    {"n_rows": 1, "n_cols": 1}, {"n_rows": 3, "n_cols": 200000}, {"seed": 12345, "noise": 0.0},
    {"n_ratings": 1}, {"n_ratings": GEN_CHUNK + 5, "n_rows": 7000, "n_cols": 50},
])
def test_generator_bit_identical_to_numpy(over):
    p = _problem(**over)
    N = p.opts["n_ratings"]
    for c in sorted({0, (N - 1) // GEN_CHUNK}):
        ref = p.chunk_reference(c)
        got = _compiled_chunk(p, c)
        for a, b in zip(ref, got):
            assert a.size == b.size
            assert np.array_equal(a.astype(b.dtype), b) and a.dtype.kind == b.dtype.kind


def test_search_matches_searchsorted_at_bucket_edges():
    cum = np.cumsum(np.array([5.0, 0.0, 1e-9, 3.0, 3.0, 0.5, 0.0, 7.0]))
    lo, h, inv = layout.guide_table(cum)
    xs = np.concatenate([np.arange(cum.size + 1) * h, cum, np.nextafter(cum, 0), np.nextafter(cum, 99),
                         np.random.default_rng(0).random(1000) * cum[-1], [0.0]])
    xs = xs[xs < cum[-1]]
    from numba import njit

    @njit
    def run(xs, out):
        for t in range(xs.size):
            out[t] = layout._search(cum, lo, h, inv, xs[t])
    out = np.empty(xs.size, np.int64)
    run(xs, out)
    assert np.array_equal(out, np.searchsorted(cum, xs, side="left"))


def test_hash_uniform_one_matches_numpy():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 2 ** 31, 500), rng.integers(0, 2 ** 31, 500)
    for seed in (0, 7, 2 ** 40):
        ref = hash_uniform(a, b, seed)
        word = np.uint64((seed * 0x632BE59BD9B4E019 + 0x1234567) % (1 << 64))
        got = np.array([layout.hash_uniform_one(int(x), int(y), word) for x, y in zip(a, b)])
        assert np.array_equal(ref, got)


@pytest.mark.parametrize("pt", [np.int32, np.int64])
@pytest.mark.parametrize("n,m,P", [(0, 5, 2), (1, 5, 1), (2000, 40, 3), (5000, 7, 4)])
def test_owner_positions_is_a_stable_grouping(n, m, P, pt):
    rng = np.random.default_rng(n + P)
    rows = rng.integers(0, m, n).astype(np.int32)
    rcuts = np.unique(np.concatenate([[0, m], rng.integers(0, m, 2 * P - 1)])).astype(np.int64)
    while rcuts.size - 1 < 2 * P:                    # nb = 2P blocks (some may be empty)
        rcuts = np.append(rcuts, m)
    pos = np.empty(n, pt)
    edges = layout.owner_positions(rows, rcuts, P, pos)
    owner = (np.searchsorted(rcuts, rows, side="right") - 1) % P
    order = np.argsort(owner, kind="stable")
    assert np.array_equal(np.argsort(pos), order) and np.array_equal(np.sort(pos), np.arange(n))
    assert np.array_equal(np.diff(edges), np.bincount(owner, minlength=P))


@pytest.mark.parametrize("P,q", [(1, 1), (2, 1), (2, 3), (3, 2)])
def test_block_row_positions_sort_by_block_then_row(P, q):
    rng = np.random.default_rng(P * 10 + q)
    nb, m, n = P * q, 50, 30
    rcuts = np.linspace(0, m, nb + 1).astype(np.int64)
    ccuts = np.concatenate([[0], np.sort(rng.integers(0, n, nb - 1)), [n]]).astype(np.int64)
    for rank in range(P):
        groups = np.array([rank + t * P for t in range(q)], np.int64)
        mine = np.concatenate([np.arange(rcuts[b], rcuts[b + 1]) for b in groups])
        N = 3000
        rows = rng.choice(mine, N).astype(np.int32)
        cols = rng.integers(0, n, N).astype(np.int32)
        pos = np.empty(N, np.int32)
        edges = layout.block_row_positions(rows, cols, rcuts, ccuts, nb, P, q, groups, pos)
        rb = np.searchsorted(rcuts, rows, side="right") - 1
        cb = np.searchsorted(ccuts, cols, side="right") - 1
        key = ((rb - cb) % nb) * q + rb // P
        ref = np.lexsort((np.arange(N), rows, key))           # block, then row, then given order
        assert np.array_equal(np.argsort(pos), ref)
        assert np.array_equal(np.diff(edges), np.bincount(key, minlength=nb * q))
        for dt in (np.int32, np.float64, np.float32):
            a = rng.normal(size=N).astype(dt)
            assert np.array_equal(layout.scattered(a, pos), a[ref])


@pytest.mark.parametrize("piece", [1, 7, 64, 1 << 23])
def test_movielens_pieces_parse_like_one_pass(tmp_path, piece):
    from mpiopt.data.movielens import parse_pieces, parse_ratings
    from mpiopt.errors import InputError
    rng = np.random.default_rng(piece)
    lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in zip(rng.integers(1, 900, 300), rng.integers(1, 50, 300),
                                                         rng.integers(1, 11, 300) / 2, rng.integers(0, 10 ** 9, 300))]
    data = ("\n".join(lines) + "\n").encode()
    ref = parse_ratings(data, b"\t", "u.data", 1)
    got = parse_pieces(data, b"\t", "u.data", 1, piece=piece)
    assert got[0].dtype == np.int32 and got[2].dtype == np.float32      # stars: float32, exactly
    for a, b in zip(ref, got):
        assert np.array_equal(a, b)
    odd = parse_pieces(data.replace(b"\t4.5\t", b"\t4.25001\t"), b"\t", "u.data", 1, piece=piece)
    assert odd[2].dtype == np.float64 and np.isclose(odd[2], 4.25001).any()
    big = parse_pieces(b"1\t2\t3\t4\n3000000000\t1\t2\t0\n", b"\t", "u.data", 1, piece=piece)
    assert big[0].dtype == np.int64 and big[0].tolist() == [1, 3000000000]
    bad = lines[:200] + ["1\t2\tx\t4"] + lines[200:]
    with pytest.raises(InputError, match=r"u\.data:211: malformed rating line"):
        parse_pieces(("\n".join(bad) + "\n").encode(), b"\t", "u.data", 11, piece=piece)
