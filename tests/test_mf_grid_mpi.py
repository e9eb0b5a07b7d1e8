"""The distributed block grid under real MPI ranks (pytest-isolate-mpi)."""
from __future__ import annotations

import numpy as np
import pytest


def _grid(nb_per_rank: int):
    from mpi4py import MPI
    from mpiopt import options as O, registry
    from mpiopt.comm import Comm
    from mpiopt.mf.model import DistMF
    c = Comm(MPI.COMM_WORLD)
    pc = registry.get_problem("synthetic_mf")
    cfg = O.resolve({"problem": pc.options}, [("problem.n_ratings", 6000, "t"), ("problem.latent_dim", 3, "t"),
                                              ("problem.test_fraction", 0.2, "t")])
    p = pc(cfg["problem"], c)
    p.setup()
    return c, p, DistMF(c, p, nb_per_rank * c.size, 3, lam=0.1)


@pytest.mark.mpi(ranks=[2, 4], timeout=120)
@pytest.mark.parametrize("q", [2])          # two blocks per rank: multi-block ring packing
def test_grid_routes_every_rating_once_and_ring_fetch_matches_global(q):
    c, p, mf = _grid(q)
    # every training and test rating lands in exactly one block of its row owner
    n_train = sum(b.nnz for row in mf.blocks for b in row)
    n_test = sum(b.nnz for row in mf.test_blocks for b in row)
    tot = c.allreduce_array([n_train, n_test], dtype=np.int64)
    assert tot.tolist() == [p.nnz, p.nnz_test]
    # gather/scatter round trip in global order
    mf.init_random(5, 1.0)
    full = c.bcast_obj(mf.gather(mf.x))
    assert np.array_equal(mf.scatter(full), mf.x)
    W, H = mf.split_global(full)
    # each stratum's ring fetch delivers exactly the global B rows of the partner column blocks
    for s in range(mf.nb):
        Bs = mf.fetch(s, mf.x)
        for t, b in enumerate(mf.groups):
            cb = (b - s) % mf.nb
            assert np.array_equal(Bs[t], H[mf.ccuts[cb]:mf.ccuts[cb + 1]])
    # the distributed full gradient equals a dense computation on the gathered data
    g = np.zeros_like(mf.x)
    parts = mf.full_loss_grad(mf.x, g)
    f = float(mf.reduce(parts[:, :1])[0])
    rows = np.concatenate(c.allgather_obj(p.rows))
    cols = np.concatenate(c.allgather_obj(p.cols))
    vals = np.concatenate(c.allgather_obj(p.vals))
    r = np.einsum("ij,ij->i", W[rows], H[cols]) - vals
    gW, gH = np.zeros_like(W), np.zeros_like(H)
    np.add.at(gW, rows, r[:, None] * H[cols] + 0.1 * W[rows])
    np.add.at(gH, cols, r[:, None] * W[rows] + 0.1 * H[cols])
    want = np.concatenate([gW.ravel(), gH.ravel()]) / p.nnz
    gfull = c.bcast_obj(mf.gather(g))
    np.testing.assert_allclose(gfull, want, rtol=1e-10, atol=1e-14)
    assert f == pytest.approx((0.5 * r @ r + 0.05 * (np.bincount(rows, minlength=p.m) @ (W * W).sum(1)
                                                     + np.bincount(cols, minlength=p.n) @ (H * H).sum(1))) / p.nnz,
                              rel=1e-12)
    # block-ordered reductions give the same bits on every rank
    ev = mf.evaluate(mf.x)
    allev = c.allgather_obj(ev)
    assert all(e == ev for e in allev)
    assert ev["rmse"] == pytest.approx(np.sqrt(r @ r / p.nnz), rel=1e-12)
