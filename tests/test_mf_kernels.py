"""Compiled MF block kernels (mpiopt.mf.fused) against their numpy references.

- against the numpy reference implementations (einsum predictions, BLAS dot for the sum of squares,
  scipy sparse products): agreement to rtol 1e-12 (those sum in another order);
- against a numpy formula that sums in the kernels' order (ratings in storage order, k in column
  order): bit-identical (so no reassociation or FMA contraction happens in the compiled code);
- edge cases: empty blocks, a single rating, float32 ratings, biases, L2 in both forms.
"""
from __future__ import annotations

import numpy as np
import pytest

from mpiopt.mf.kernels import RatingBlock

RTOL = 1e-12


def _block(rng, nnz, n_rows, n_cols, vdtype=np.float64):
    i = rng.integers(0, n_rows, nnz)
    j = rng.integers(0, n_cols, nnz)
    v = rng.integers(1, 11, nnz).astype(vdtype) / 2 if vdtype == np.float32 else rng.normal(0, 1.5, nnz)
    return RatingBlock(i, j, v, n_rows, n_cols)


def _factors(rng, blk, k, bias):
    w = k + bias
    return rng.normal(0, 0.7, (blk.n_rows, w)), rng.normal(0, 0.7, (blk.n_cols, w))


def _ordered(blk, A, B, k, inv_nnz):
    """Residuals, sse and gradient of the data term summed in the kernels' order (numpy, exact)."""
    i, j = blk.i, blk.j
    p = np.zeros(blk.nnz)
    for c in range(k):
        p = p + A[i, c] * B[j, c]
    if A.shape[1] > k:
        p = p + (A[i, k] + B[j, k])
    r = p - blk.v
    sse = np.cumsum(r * r)[-1] if blk.nnz else 0.0
    rs = r * inv_nnz
    gA, gB = np.zeros_like(A), np.zeros_like(B)
    for t in range(blk.nnz):            # storage order, as the kernel
        gA[i[t], :k] += rs[t] * B[j[t], :k]
        gB[j[t], :k] += rs[t] * A[i[t], :k]
        if A.shape[1] > k:
            gA[i[t], k] += rs[t]
            gB[j[t], k] += rs[t]
    return r, sse, gA, gB


CASES = [(k, bias, reg, vd) for k in (1, 4, 10) for bias in (0, 1) for reg in (None, "rating", "uniform")
         for vd in (np.float64, np.float32)]


@pytest.mark.parametrize("k,bias,reg,vdtype", CASES)
def test_compiled_kernels_match_numpy_reference(k, bias, reg, vdtype):
    rng = np.random.default_rng(k * 7 + bias)
    blk = _block(rng, 700, 40, 25, vdtype)
    blk.k = k
    if reg:
        blk.set_reg(0.3, 900, reg, np.full(40, 30), np.full(25, 40), lam_bias=0.05 if bias else 0.0)
    A, B = _factors(rng, blk, k, bias)
    inv = 1 / 900
    f, sse = blk.loss(A, B, inv)
    fr, sser = blk.loss_reference(A, B, inv)
    assert f == pytest.approx(fr, rel=RTOL) and sse == pytest.approx(sser, rel=RTOL)
    f2, sse2, gA, gB = blk.loss_grad(A, B, inv)
    f3, sse3, gAr, gBr = blk.loss_grad_reference(A, B, inv)
    assert f2 == f and sse2 == sse
    np.testing.assert_allclose(gA, gAr, rtol=RTOL, atol=1e-15)
    np.testing.assert_allclose(gB, gBr, rtol=RTOL, atol=1e-15)
    lo, hi = -1.0, 1.0
    got = blk.sq_errors(A, B, lo, hi)
    want = blk.sq_errors_reference(A, B, lo, hi)
    np.testing.assert_allclose(got, want, rtol=RTOL)
    assert blk.sq_errors(A, B) == (sse, sse)


@pytest.mark.parametrize("k,bias", [(1, 0), (5, 0), (10, 1), (3, 1)])
def test_compiled_kernels_bit_identical_to_kernel_order_numpy(k, bias):
    rng = np.random.default_rng(11 + k)
    blk = _block(rng, 500, 30, 20)
    blk.k = k
    A, B = _factors(rng, blk, k, bias)
    inv = 1 / 777
    r, sse, gA, gB = _ordered(blk, A, B, k, inv)
    f, s1 = blk.loss(A, B, inv, keep=True)
    assert s1 == sse and f == 0.5 * inv * sse
    np.testing.assert_array_equal(blk._resid, r)
    _, s2, cA, cB = blk.loss_grad(A, B, inv)
    assert s2 == sse
    np.testing.assert_array_equal(cA, gA)
    np.testing.assert_array_equal(cB, gB)
    # the residuals kept by loss(keep=True) give the same bits as recomputing them
    blk.loss(A, B, inv, keep=True)
    _, s3, dA, dB = blk.loss_grad(A, B, inv, reuse=True)
    assert s3 == sse and np.array_equal(dA, gA) and np.array_equal(dB, gB)
    # without a preceding keep, reuse is ignored (residuals recomputed)
    _, s4, eA, _ = blk.loss_grad(A, B, inv, reuse=True)
    assert s4 == sse and np.array_equal(eA, gA)


@pytest.mark.parametrize("bias", [0, 1])
def test_gradient_kernel_rows_not_grouped(bias):
    """The gradient kernel keeps a row's gradient in a local accumulator while the row's ratings run;
    ratings whose rows come back later (not grouped by row) must give the same bits as adding rating
    by rating in storage order."""
    rng = np.random.default_rng(21 + bias)
    k = 4
    i = rng.integers(0, 9, 300)                   # unsorted: rows recur in separate runs
    j = rng.integers(0, 7, 300)
    blk = RatingBlock(i.astype(np.int32), j.astype(np.int32), rng.normal(0, 1.5, 300), 9, 7, k=k,
                      sorted_rows=True)           # kept in the given order
    assert np.any(np.diff(blk.i) < 0)
    A, B = _factors(rng, blk, k, bias)
    r, sse, gA, gB = _ordered(blk, A, B, k, 1 / 300)
    _, s, cA, cB = blk.loss_grad(A, B, 1 / 300)
    assert s == sse
    np.testing.assert_array_equal(cA, gA)
    np.testing.assert_array_equal(cB, gB)


@pytest.mark.parametrize("bias", [0, 1])
def test_empty_block_and_single_rating(bias):
    rng = np.random.default_rng(3)
    k = 3
    empty = RatingBlock(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), 4, 5, k=k)
    empty.set_reg(0.2, 10, "rating", np.full(4, 2), np.full(5, 2), lam_bias=0.1)
    A, B = rng.normal(size=(4, k + bias)), rng.normal(size=(5, k + bias))
    f, sse, gA, gB = empty.loss_grad(A, B, 0.1)
    f0, sse0, gA0, gB0 = empty.loss_grad_reference(A, B, 0.1)
    assert sse == 0.0 and f == f0 == 0.0             # no ratings in the block: its L2 weights are 0
    assert np.array_equal(gA, gA0) and not gA.any() and not gB.any()
    assert empty.loss(A, B, 0.1) == (0.0, 0.0) and empty.sq_errors(A, B, 1, 5) == (0.0, 0.0)
    one = RatingBlock(np.array([2]), np.array([4]), np.array([3.5]), 4, 5, k=k)
    one.set_reg(0.2, 10, "rating", np.full(4, 2), np.full(5, 2), lam_bias=0.1)
    pred = A[2, :k] @ B[4, :k] + (A[2, k] + B[4, k] if bias else 0.0)
    f, sse, gA, gB = one.loss_grad(A, B, 0.1)
    assert sse == pytest.approx((pred - 3.5) ** 2, rel=1e-15)
    fr, _, gAr, gBr = one.loss_grad_reference(A, B, 0.1)
    assert f == pytest.approx(fr, rel=1e-14)
    np.testing.assert_allclose(gA, gAr, rtol=1e-14)
    np.testing.assert_allclose(gB, gBr, rtol=1e-14)
    assert gA[[0, 1, 3]].sum() == 0.0 and gB[:4].sum() == 0.0      # untouched rows/columns
    sc = one.sq_errors(A, B, 1.0, 5.0)
    assert sc[1] == pytest.approx((min(max(pred, 1.0), 5.0) - 3.5) ** 2)


def test_biased_gradient_matches_finite_differences():
    from mpiopt import options as O, registry
    from mpiopt.comm import world
    from mpiopt.mf.model import DistMF
    pc = registry.get_problem("synthetic_mf")
    cfg = O.resolve({"problem": pc.options}, [("problem.n_ratings", 400, "t"), ("problem.latent_dim", 2, "t"),
                                              ("problem.n_rows", 15, "t"), ("problem.n_cols", 9, "t")])
    p = pc(cfg["problem"], world())
    p.setup()
    mf = DistMF(world(), p, 3, 2, lam=0.3, bias=True, bias_l2=0.2)
    mf.init_random(1, 0.5)
    mf.x += np.random.default_rng(2).normal(0, 0.3, mf.x.size)     # biases away from 0 too
    x = mf.x.copy()
    g = np.zeros_like(x)
    f = float(mf.reduce(mf.full_loss_grad(x, g)[:, :1])[0])
    assert f == pytest.approx(mf.evaluate(x)["objective"], rel=1e-12)
    for idx in range(x.size):
        h = 1e-6
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd = (mf.evaluate(xp)["objective"] - mf.evaluate(xm)["objective"]) / (2 * h)
        assert g[idx] == pytest.approx(fd, rel=1e-5, abs=1e-9)
    W, H = mf.split_global(mf.gather(x))
    r = np.einsum("ij,ij->i", W[p.rows, :2], H[p.cols, :2]) + W[p.rows, 2] + H[p.cols, 2] - p.vals
    rc, cc = np.bincount(p.rows, minlength=p.m), np.bincount(p.cols, minlength=p.n)
    want = (0.5 * r @ r + 0.15 * (rc @ (W[:, :2] ** 2).sum(1) + cc @ (H[:, :2] ** 2).sum(1))
            + 0.1 * (rc @ W[:, 2] ** 2 + cc @ H[:, 2] ** 2)) / p.nnz
    assert f == pytest.approx(want, rel=1e-12)


def test_result_has_biases_and_predictions_use_them(tmp_path):
    from mpiopt.api import minimize
    from mpiopt.mf.model import predict
    opts = {"problem.n_ratings": 3000, "problem.latent_dim": 2, "solver.max_epochs": 3, "problem.test_fraction": 0.2}
    res, p = minimize("hamsi", "synthetic_mf", opts, return_problem=True)
    sol = res.solution
    assert sol["W"].shape == (p.m, 2) and sol["row_bias"].shape == (p.m,) and sol["col_bias"].shape == (p.n,)
    assert np.abs(sol["row_bias"]).max() > 0
    i, j = np.array([0, 3]), np.array([1, 2])
    want = sol["offset"][0] + (sol["W"][i] * sol["H"][j]).sum(1) + sol["row_bias"][i] + sol["col_bias"][j]
    np.testing.assert_allclose(predict(sol, i, j), want, rtol=1e-15)
    # the reference-code preset has no biases
    pre = minimize("hamsi", "synthetic_mf", {**opts, "solver.preset": "hamsi-mf"})
    assert "row_bias" not in pre.solution
    # mf_gd and dsgd fit biases too
    for solver in ("mf_gd", "dsgd"):
        r = minimize(solver, "synthetic_mf", opts)
        assert np.abs(r.solution["col_bias"]).max() > 0, solver


@pytest.mark.parametrize("bias,lam,bs,vdtype", [(0, 0.0, 1, np.float64), (0, 0.05, 7, np.float64),
                                                (1, 0.05, 64, np.float64), (1, 0.0, 1000, np.float32),
                                                (1, 0.1, 32, np.float64)])
def test_dsgd_kernel_matches_numpy_reference(bias, lam, bs, vdtype):
    """dsgd's compiled minibatch SGD (fused.sgd_block) against its numpy version
    (DSGD.sgd_block_reference): same minibatches, same means of repeated rows; agreement to rtol 1e-10
    (the numpy version sums the predictions in einsum's order)."""
    from types import SimpleNamespace

    from mpiopt.mf import fused
    from mpiopt.solvers.dsgd import DSGD
    rng = np.random.default_rng(5 + bs)
    k = 4
    blk = _block(rng, 600, 12, 9, vdtype)           # few rows: many repeats inside a minibatch
    blk.k = k
    A, B = _factors(rng, blk, k, bias)
    A2, B2 = A.copy(), B.copy()
    lam_r = (rng.uniform(0, 0.2, 12) * (lam > 0), rng.uniform(0, 0.2, 12) * (lam > 0))
    lam_c = (rng.uniform(0, 0.2, 9) * (lam > 0), rng.uniform(0, 0.2, 9) * (lam > 0))
    ns = SimpleNamespace(opts={"batch_size": bs}, k=k, lam=lam, lam_b=lam if bias else 0.0,
                         mf=SimpleNamespace(bias=bool(bias)))
    DSGD.sgd_block_reference(ns, blk, A, B, 0.05, np.random.default_rng(1), lam_r, lam_c)
    perm = np.random.default_rng(1).permutation(blk.nnz)
    fused.sgd_block(blk.i, blk.j, blk.v, perm, A2, B2, k, 0.05, bs, lam, lam if bias else 0.0,
                    lam_r[0], lam_r[1], lam_c[0], lam_c[1])
    assert not np.array_equal(A, _factors(np.random.default_rng(5 + bs), blk, k, bias)[0])   # it moved
    np.testing.assert_allclose(A2, A, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(B2, B, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [0, 1])
def test_column_tiled_block(bias, monkeypatch):
    """A block with more columns than a tile is stored by column tile, then row (storage order kept
    within a tile); the compiled kernels on it agree with the numpy references (rtol 1e-12) and with
    the kernel-order numpy formula bit for bit."""
    from mpiopt.mf import kernels
    monkeypatch.setattr(kernels, "TILE_BYTES", 16 * 5 * 8)          # k=4: 8 columns per tile
    rng = np.random.default_rng(31 + bias)
    k = 4
    i = np.sort(rng.integers(0, 15, 900))
    j = rng.integers(0, 37, 900)
    v = rng.normal(0, 1.5, 900)
    blk = RatingBlock(i, j, v, 15, 37, k=k)
    assert blk.tiles == 5
    tile = blk.j // 8
    assert np.all(np.diff(tile) >= 0)                               # tile by tile
    for b in range(5):                                              # rows ascending within a tile
        assert np.all(np.diff(blk.i[tile == b]) >= 0)
    order = np.lexsort((np.arange(900), i, j // 8))                 # the same ratings, same order
    np.testing.assert_array_equal(blk.j, j[order])
    np.testing.assert_array_equal(blk.v, v[order])
    A, B = _factors(rng, blk, k, bias)
    f, sse, gA, gB = blk.loss_grad(A, B, 1 / 900)
    fr, sser, gAr, gBr = blk.loss_grad_reference(A, B, 1 / 900)
    assert f == pytest.approx(fr, rel=RTOL) and sse == pytest.approx(sser, rel=RTOL)
    np.testing.assert_allclose(gA, gAr, rtol=RTOL, atol=1e-15)
    np.testing.assert_allclose(gB, gBr, rtol=RTOL, atol=1e-15)
    _, s_o, oA, oB = _ordered(blk, A, B, k, 1 / 900)
    assert s_o == sse and np.array_equal(oA, gA) and np.array_equal(oB, gB)
    small = RatingBlock(i, j % 7, v, 15, 7, k=k)                    # 7 columns: one tile, not reordered
    assert small.tiles == 1 and np.array_equal(small.i, np.sort(i))
