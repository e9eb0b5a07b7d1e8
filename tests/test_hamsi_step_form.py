"""hamsi's two step forms: the reference code's x - H g / beta and the paper's x - (B + beta I)^-1 g
with a bounded-spectrum Hessian model B (solver.step_form=paper)."""
from __future__ import annotations

import numpy as np
import pytest

from mpiopt.api import minimize
from mpiopt.errors import InputError


def _model(n=14, M=4, seed=1, tiny=False):
    from mpiopt.mf.lbfgs import CompactLBFGS
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((n, n))
    hess = Q @ Q.T + np.eye(n)
    if tiny:       # a nearly flat direction: s.y > 0 but tiny, so H = B^-1 is huge there
        w, V = np.linalg.eigh(hess)
        w[0] = 1e-9
        hess = (V * w) @ V.T
    L = CompactLBFGS(n, M, 500.0, 1e-12, [(0, 6), (6, n)], lambda parts: parts.sum(0), "scaled", track_ss=True)
    for _ in range(M + 3):      # wrap the ring
        s = rng.standard_normal(n)
        if tiny:
            s += 50 * np.linalg.eigh(hess)[1][:, 0]
        assert L.update(s, hess @ s)
    return L, rng


def test_shifted_step_equals_dense_inverse_of_hessian_model_plus_beta():
    L, rng = _model()
    B = np.linalg.inv(L.dense())
    for beta in (1e-3, 0.3, 10.0):
        g = rng.standard_normal(L.n)
        want = np.linalg.solve(B + beta * np.eye(L.n), g)
        np.testing.assert_allclose(L.apply_shifted(g, beta), want, rtol=1e-9, atol=1e-12)
    # the spectrum of the compact form is B's spectrum
    d, mu = L.spectrum()
    np.testing.assert_allclose(np.sort(np.r_[mu, [d] * (L.n - mu.size)]), np.linalg.eigvalsh(B), rtol=1e-8)


@pytest.mark.parametrize("tiny", [False, True])
def test_paper_step_is_bounded_by_g_over_beta_where_the_reference_step_is_not(tiny):
    L, rng = _model(tiny=tiny)
    beta = 0.5
    ratios_ref, ratios_paper = [], []
    for _ in range(50):
        g = rng.standard_normal(L.n)
        ratios_ref.append(np.linalg.norm(L.apply(g)) / beta / np.linalg.norm(g))
        ratios_paper.append(np.linalg.norm(L.apply_shifted(g, beta)) / np.linalg.norm(g))
        # clipping the curvature to [lo, hi] bounds the step from both sides
        r = np.linalg.norm(L.apply_shifted(g, beta, 0.2, 3.0)) / np.linalg.norm(g)
        assert 1 / (3.0 + beta) * (1 - 1e-12) <= r <= 1 / (0.2 + beta) * (1 + 1e-12)
    assert max(ratios_paper) <= (1 / beta) * (1 + 1e-12)
    if tiny:     # along a nearly flat direction the reference form's step is far above |g| / beta
        assert max(ratios_ref) > 10 / beta


def test_hamsi_paper_step_form_converges_with_bounded_steps():
    import mpiopt.solvers.hamsi as hm
    seen = []
    orig = hm.Hamsi.direction

    def spy(self, g, d, e):
        orig(self, g, d, e)
        if self.H.ready:
            o = self.opts
            b = self.beta_scale * hm.beta(o["eta_paper"] or o["eta"], o["gamma"], e)
            seen.append(np.linalg.norm(d) * b / np.linalg.norm(g))

    opts = {"problem.n_ratings": 4000, "problem.latent_dim": 3, "solver.max_epochs": 25, "solver.blocks": 2,
            "solver.step_form": "paper", "solver.patience": 0, "solver.tol": 0}
    hm.Hamsi.direction = spy
    try:
        res = minimize("hamsi", "synthetic_mf", opts)
    finally:
        hm.Hamsi.direction = orig
    assert res.status in (0, 1) and np.isfinite(res.fun)
    assert seen and max(seen) <= 1 + 1e-12      # |d| <= |g| / beta at every model step
    obj = np.asarray(res.history["objective"])
    assert obj[-1] < 0.6 * obj[0]


def test_step_form_options_checked():
    with pytest.raises(InputError):
        minimize("hamsi", "synthetic_mf", {"problem.n_ratings": 2000, "solver.step_form": "paper",
                                           "solver.curv_min": 2.0, "solver.curv_max": 1.0})


@pytest.mark.mpi(ranks=[2, 4], timeout=240)
def test_paper_step_form_on_real_ranks_bounded_reproducible_converging():
    """step_form=paper under mpirun (2 and 4 ranks): |d| <= |g|/beta at every model step on every
    rank, two runs with the same seed and rank count end bit-identical, and the RMSE decreases."""
    import mpiopt.solvers.hamsi as hm
    from mpiopt.comm import world
    comm = world()
    seen: list[float] = []
    orig = hm.Hamsi.direction

    def spy(self, g, d, e):
        orig(self, g, d, e)
        if self.H.ready and np.linalg.norm(g) > 0:
            o = self.opts
            b = self.beta_scale * hm.beta(o["eta_paper"] or o["eta"], o["gamma"], e)
            seen.append(np.linalg.norm(d) * b / np.linalg.norm(g))

    opts = {"problem.n_ratings": 6000, "problem.latent_dim": 3, "solver.max_epochs": 20,
            "solver.step_form": "paper", "solver.patience": 0, "solver.tol": 0, "run.seed": 7}
    hm.Hamsi.direction = spy
    try:
        a = minimize("hamsi", "synthetic_mf", opts)
        n_first = len(seen)
        b = minimize("hamsi", "synthetic_mf", opts)
    finally:
        hm.Hamsi.direction = orig
    # the bound, on every rank (each checks its own steps; all ranks see every rank's verdict)
    mine = (n_first, len(seen) - n_first, max(seen, default=np.inf))
    every = comm.allgather_obj(mine)
    assert all(k1 > 0 and k2 > 0 for k1, k2, _ in every), every      # every rank took model steps in both runs
    assert all(r <= 1 + 1e-12 for _, _, r in every), every
    # bit-identical across two runs with the same seed and rank count
    assert np.array_equal(np.asarray(a.x), np.asarray(b.x)) and a.fun == b.fun
    assert seen[:n_first] == seen[n_first:]
    if comm.rank == 0:
        for key in ("objective", "rmse"):
            assert np.array_equal(np.asarray(a.history[key]), np.asarray(b.history[key]))
        rmse = np.asarray(a.history["rmse"])
        assert rmse[-1] < 0.8 * rmse[0] and np.isfinite(a.fun)
