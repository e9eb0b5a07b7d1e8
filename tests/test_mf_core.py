"""Matrix-factorization machinery at one rank: cuts, strata, kernels, compact L-BFGS, data files."""
from __future__ import annotations

import numpy as np
import pytest

from mpiopt.api import minimize
from mpiopt.errors import InputError
from mpiopt.mf.cuts import (balanced_cuts, balanced_cuts_loop, stratum_at, stratum_order_reference)


def _problem(n_ratings=3000, k=3, **extra):
    from mpiopt.comm import world
    from mpiopt import options as O, registry
    pc = registry.get_problem("synthetic_mf")
    vals = [("n_ratings", n_ratings), ("latent_dim", k), ("seed", 3)] + list(extra.items())
    cfg = O.resolve({"problem": pc.options}, [(f"problem.{a}", b, "test") for a, b in vals])
    p = pc(cfg["problem"], world())
    p.setup()
    return p


def test_balanced_cuts_match_reference_loop_and_known_vector():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        c = rng.integers(0, 6, size=rng.integers(1, 40))
        if rng.random() < 0.3:
            c[rng.integers(0, c.size)] += 50
        nb = int(rng.integers(1, 8))
        assert np.array_equal(balanced_cuts(c, nb), balanced_cuts_loop(c, nb))
    # a row that overshoots the target is cut before when that is closer to the target
    assert list(balanced_cuts(np.array([3, 3, 10, 1, 1]), 2)) == [0, 2, 5]
    assert list(balanced_cuts(np.array([5, 4, 1, 8]), 2)) == [0, 2, 4]


def test_stratum_order_closed_form():
    for C in (1, 2, 3, 4, 7):
        assert stratum_order_reference(60, C) == [stratum_at(e, C) for e in range(60)]
    # a cycle is C+1 steps starting and ending with the same stratum
    C = 4
    order = [stratum_at(e, C) for e in range(3 * (C + 1))]
    for c in range(3):
        assert order[c * (C + 1)] == order[c * (C + 1) + C]


def test_strata_conflict_free_and_cover_every_rating_once():
    from mpiopt.comm import world
    from mpiopt.mf.model import DistMF
    p = _problem()
    for nb in (1, 3, 4):
        mf = DistMF(world(), p, nb, 3)
        seen = []
        for s in range(nb):
            rows_used, cols_used = set(), set()
            for t, b in enumerate(mf.groups):
                c = (b - s) % nb
                blk = mf.blocks[s][t]
                gi = blk.i.astype(np.int64) + mf.rcuts[b]
                gj = blk.j.astype(np.int64) + mf.ccuts[c]
                assert not rows_used & set(gi.tolist()) and not cols_used & set(gj.tolist())
                rows_used |= set(gi.tolist())
                cols_used |= set(gj.tolist())
                assert ((gi >= mf.rcuts[b]) & (gi < mf.rcuts[b + 1])).all()
                assert ((gj >= mf.ccuts[c]) & (gj < mf.ccuts[c + 1])).all()
                seen.append(np.column_stack([gi, gj, blk.v]))
        got = np.concatenate(seen)
        want = np.column_stack([p.rows, p.cols, p.vals])
        key = lambda a: a[np.lexsort((a[:, 2], a[:, 1], a[:, 0]))]
        assert got.shape == want.shape and np.array_equal(key(got), key(want))


@pytest.mark.parametrize("reg", ["rating", "uniform"])
def test_mf_gradient_matches_finite_differences(reg):
    from mpiopt.comm import world
    from mpiopt.mf.model import DistMF
    p = _problem(400, 2, n_rows=15, n_cols=9)
    mf = DistMF(world(), p, 3, 2, lam=0.3, reg=reg)
    mf.init_random(1, 0.5)
    x = mf.x.copy()
    g = np.zeros_like(x)
    f = float(mf.reduce(mf.full_loss_grad(x, g)[:, :1])[0])
    assert f == pytest.approx(mf.evaluate(x)["objective"], rel=1e-12)
    rng = np.random.default_rng(0)
    for idx in rng.choice(x.size, 25, replace=False):
        h = 1e-6
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd = (mf.evaluate(xp)["objective"] - mf.evaluate(xm)["objective"]) / (2 * h)
        assert g[idx] == pytest.approx(fd, rel=1e-5, abs=1e-9)
    # the objective is the data term plus L2 in the documented form
    full = mf.gather(x)
    W, H = mf.split_global(full)
    r = np.einsum("ij,ij->i", W[p.rows], H[p.cols]) - p.vals
    rc, cc = np.bincount(p.rows, minlength=p.m), np.bincount(p.cols, minlength=p.n)
    wr = rc if reg == "rating" else (rc > 0)
    wc = cc if reg == "rating" else (cc > 0)
    want = (0.5 * r @ r + 0.15 * (wr @ (W * W).sum(1) + wc @ (H * H).sum(1))) / p.nnz
    assert f == pytest.approx(want, rel=1e-12)


def test_compact_lbfgs_equals_dense_bfgs_recursion():
    from mpiopt.mf.lbfgs import CompactLBFGS
    rng = np.random.default_rng(1)
    n, M = 14, 4
    Q = rng.standard_normal((n, n))
    hess = Q @ Q.T + np.eye(n)
    for rule in ("reference", "scaled"):
        L = CompactLBFGS(n, M, 500.0, 1e-6, [(0, 6), (6, n)], lambda parts: parts.sum(0), rule)
        pairs = []
        for _ in range(M + 3):   # wrap the ring
            s = rng.standard_normal(n)
            y = hess @ s
            assert L.update(s, y)
            pairs.append((s, y))
        sig = min([500.0] + [s @ y / (y @ y) for s, y in pairs]) if rule == "reference" else \
            pairs[-1][0] @ pairs[-1][1] / (pairs[-1][1] @ pairs[-1][1])
        assert L.sigma == pytest.approx(sig, rel=1e-14)
        H = sig * np.eye(n)
        for s, y in pairs[-M:]:
            rho = 1.0 / (s @ y)
            V = np.eye(n) - rho * np.outer(y, s)
            H = V.T @ H @ V + rho * np.outer(s, s)
        np.testing.assert_allclose(L.dense(), H, rtol=1e-10, atol=1e-13)
    # a pair with negative curvature is refused
    assert not L.update(np.ones(n), -np.ones(n))


def _dense_reference_lbfgs(p, W0, H0, steps, M=5, eta=0.06, gamma=0.51, sigma0=500.0, eta_gd=0.001, tau=1e-6):
    """Straightforward full-gradient L-BFGS of the reference rules (two-loop recursion)."""
    rows, cols, v, nnz = p.rows, p.cols, p.vals, p.nnz
    m, k = W0.shape

    def grad(x):
        W, H = x[:m * k].reshape(m, k), x[m * k:].reshape(-1, k)
        r = np.einsum("ij,ij->i", W[rows], H[cols]) - v
        gW, gH = np.zeros_like(W), np.zeros_like(H)
        np.add.at(gW, rows, r[:, None] * H[cols])
        np.add.at(gH, cols, r[:, None] * W[rows])
        return np.concatenate([gW.ravel(), gH.ravel()]) / nnz, np.sqrt(r @ r / nnz)

    x = np.concatenate([W0.ravel(), H0.ravel()])
    pairs, sigma, mem, rmse = [], sigma0, 0, []
    xp = gp = None
    for e in range(steps):
        g, _ = grad(x)
        if e > 0:
            s, y = x - xp, g - gp
            if s @ y / np.linalg.norm(y) > tau:
                sigma = min(sigma, s @ y / (y @ y))
                pairs = (pairs + [(s, y)])[-M:]
                mem += 1
        xp, gp = x.copy(), g.copy()
        if mem < M:
            x = x - g / (eta_gd * (e + 1)) ** gamma
        else:
            q = g.copy()
            alphas = []
            for s, y in reversed(pairs):
                a = (s @ q) / (s @ y)
                alphas.append(a)
                q -= a * y
            q *= sigma
            for (s, y), a in zip(pairs, reversed(alphas)):
                b = (y @ q) / (s @ y)
                q += (a - b) * s
            x = x - q / (eta * (e + 1)) ** gamma
        rmse.append(grad(x)[1])
    return np.array(rmse), x


def test_hamsi_mf_preset_one_rank_equals_dense_full_gradient_lbfgs(tmp_path):
    p = _problem(3000, 2, n_rows=100, n_cols=60, zipf=0.3, center=False)
    rng = np.random.default_rng(5)
    W0, H0 = rng.standard_normal((p.m, 2)), rng.standard_normal((p.n, 2))
    np.savez(tmp_path / "init.npz", W=W0, H=H0)
    E = 40
    res = minimize("hamsi", "synthetic_mf", {
        "solver.preset": "hamsi-mf", "solver.max_epochs": E, "solver.init": str(tmp_path / "init.npz"),
        "problem.n_ratings": 3000, "problem.latent_dim": 2, "problem.seed": 3, "problem.n_rows": 100,
        "problem.n_cols": 60, "problem.zipf": 0.3, "problem.l2": 0.7})   # the preset drops the L2 term
    want, xe = _dense_reference_lbfgs(p, W0, H0, E)
    got = res.history["rmse"][1:]
    assert res.inner_steps == E and res.status == 1
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert want[-1] < 0.3 * want[0]            # L-BFGS engaged and made progress
    np.testing.assert_allclose(res.x, xe, rtol=1e-7, atol=1e-9)


def test_safeguard_stops_divergence_the_preset_suffers():
    opts = {"solver.max_epochs": 6, "problem.n_ratings": 2000, "problem.latent_dim": 3,
            "solver.eta_gd": 1e-7, "solver.blocks": 2}
    bad = minimize("hamsi", "synthetic_mf", {**opts, "solver.preset": "hamsi-mf"})
    good = minimize("hamsi", "synthetic_mf", {**opts, "solver.safeguard": True})
    assert bad.status == -1 and "numerical failure: objective is" in bad.message
    assert good.status in (0, 1) and np.isfinite(good.fun)
    assert good.history["objective"][-1] <= good.history["objective"][0]


def test_init_is_rank_count_independent_chunks():
    from mpiopt.mf.init import random_rows
    full = random_rows(7, 0, 0, 10000, 4, 0.1)
    parts = [random_rows(7, 0, a, b, 4, 0.1) for a, b in ((0, 3), (3, 4097), (4097, 9000), (9000, 10000))]
    assert np.array_equal(np.concatenate(parts), full)
    assert abs(full.std() - 0.1) < 0.005


def test_init_file_errors(tmp_path):
    from mpiopt.mf.init import read_factors
    np.savez(tmp_path / "a.npz", W=np.zeros((3, 2)), H=np.zeros((4, 2)))
    W, H = read_factors(str(tmp_path / "a.npz"), 3, 4, 2)
    assert W.shape == (3, 2)
    with pytest.raises(InputError, match=r"a\.npz: W is \(3, 2\)"):
        read_factors(str(tmp_path / "a.npz"), 3, 5, 2)
    with pytest.raises(InputError, match="not found"):
        read_factors(str(tmp_path / "b.npz"), 3, 4, 2)


# -- MovieLens files --------------------------------------------------------------------------
def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_movielens_formats_and_ids(tmp_path):
    from mpiopt.comm import world
    from mpiopt.data.movielens import read_ratings
    c = world()
    u = _write(tmp_path / "u.data", ["1\t10\t5\t881250949", "3\t10\t3\t1", "2\t7\t4\t2"])
    d = _write(tmp_path / "ratings.dat", ["1::10::5::881250949", "3::10::3.5::1"])
    csv = _write(tmp_path / "ratings.csv", ["userId,movieId,rating,timestamp", "1,10,4.5,1", "2,7,0.5,2"])
    a = read_ratings(str(u), c)
    assert a[0].tolist() == [1, 3, 2] and a[1].tolist() == [10, 10, 7] and a[2].tolist() == [5, 3, 4]
    assert read_ratings(str(d), c)[2].tolist() == [5, 3.5]
    assert read_ratings(str(csv), c)[2].tolist() == [4.5, 0.5]
    res, prob = minimize("dsgd", "movielens", {"problem.path": str(tmp_path), "problem.split": "none",
                                               "solver.max_epochs": 1, "problem.latent_dim": 2},
                         return_problem=True)
    assert (prob.m, prob.n, prob.nnz) == (3, 2, 3)          # users x items, compacted ids
    assert prob.user_ids.tolist() == [1, 2, 3] and prob.item_ids.tolist() == [7, 10]
    res, prob = minimize("dsgd", "movielens", {"problem.path": str(tmp_path), "problem.split": "none",
                                               "problem.transpose": True, "solver.max_epochs": 1,
                                               "problem.latent_dim": 2}, return_problem=True)
    assert (prob.m, prob.n) == (2, 3)


@pytest.mark.parametrize("name,lines,bad_line,why", [
    ("u.data", ["1\t2\t3\t4", "1\t2\t3", "5\t6\t1\t0"], 2, "expected 4 fields"),
    ("u.data", ["1\t2\t3\t4", "1\t2\t3\t4", "1\tx\t3\t4"], 3, "integers"),
    ("u.data", ["1\t2\t3\t4", "1\t2\tnan\t4"], 2, "NaN"),
    ("u.data", ["1\t2\t3\t4", "", "1\t2\t3\t4"], 2, "empty line"),
    ("ratings.dat", ["1::2::3::4", "1::2::3::4", "1::2:3::4"], 3, "fields"),
    ("ratings.csv", ["userId,movieId,rating,timestamp", "1,2,3,4", "1,2,abc,4"], 3, "not a number"),
])
def test_movielens_malformed_lines_are_named(tmp_path, name, lines, bad_line, why):
    from mpiopt.comm import world
    from mpiopt.data.movielens import read_ratings
    f = _write(tmp_path / name, lines)
    with pytest.raises(InputError, match=rf"{name}:{bad_line}: malformed rating line .*{why}"):
        read_ratings(str(f), world())


def test_movielens_official_split_files(tmp_path):
    rng = np.random.default_rng(0)
    users, items = rng.integers(1, 30, 400), rng.integers(1, 20, 400)
    lines = [f"{u}\t{i}\t{rng.integers(1, 6)}\t0" for u, i in zip(users, items)]
    _write(tmp_path / "u.data", lines)
    _write(tmp_path / "u1.base", lines[:320])
    _write(tmp_path / "u1.test", lines[320:])
    res, prob = minimize("hamsi", "movielens", {"problem.path": str(tmp_path), "problem.split": "u1",
                                                "solver.max_epochs": 2, "problem.latent_dim": 2},
                         return_problem=True)
    assert prob.nnz == 320 and prob.nnz_test == 80 and "test_rmse" in res.history
    res2, prob2 = minimize("hamsi", "movielens", {"problem.path": str(tmp_path), "solver.max_epochs": 1,
                                                  "problem.test_fraction": 0.25, "problem.latent_dim": 2},
                           return_problem=True)
    assert prob2.nnz + prob2.nnz_test == 400 and 60 < prob2.nnz_test < 140
    with pytest.raises(InputError, match="u2.base"):
        minimize("hamsi", "movielens", {"problem.path": str(tmp_path), "problem.split": "u2"})


def test_run_banner_names_the_files_read_and_preset_trains_on_the_whole_file(tmp_path):
    rng = np.random.default_rng(0)
    lines = [f"{u}\t{i}\t{rng.integers(1, 6)}\t0" for u, i in zip(rng.integers(1, 30, 400), rng.integers(1, 20, 400))]
    _write(tmp_path / "u.data", lines)
    _write(tmp_path / "u1.base", lines[:320])
    _write(tmp_path / "u1.test", lines[320:])
    _, prob = minimize("hamsi", "movielens", {"problem.path": str(tmp_path / "u.data"), "problem.split": "u1",
                                              "solver.max_epochs": 1, "problem.latent_dim": 2}, return_problem=True)
    text = prob.describe()
    assert "u1.base" in text and "u1.test" in text and "u.data itself not read" in text
    _, prob = minimize("hamsi", "movielens", {"problem.path": str(tmp_path / "u.data"), "solver.max_epochs": 1,
                                              "problem.latent_dim": 2}, return_problem=True)
    assert "random split: 0.2 held out" in prob.describe()
    # the preset follows the reference: the whole file is trained on (no 80 % split)
    _, prob = minimize("hamsi", "movielens", {"problem.path": str(tmp_path / "u.data"), "solver.max_epochs": 1,
                                              "problem.latent_dim": 2, "solver.preset": "hamsi-mf"},
                       return_problem=True)
    assert prob.nnz == 400 and prob.nnz_test == 0 and "no held-out set" in prob.describe()


def test_mf_gd_help_has_its_own_texts():
    from mpiopt import registry
    opts = {o.name: o.help for o in registry.get_solver("mf_gd").options}
    assert "pairs" not in opts["eta_gd"] and "L-BFGS" not in opts["warmup_growth"]


def test_reference_init_emulates_cpp_mt19937_normal_distribution():
    from mpiopt.mf.init import reference_normals
    # std::mt19937 g(1453); std::normal_distribution<double> n(0, 1); printf("%.17g", n(g)) (libstdc++)
    want = [-0.46467933076864182, 0.2564548374064724, 0.89072666379794463, -1.1318916469365365,
            -0.30116523215126151, -0.23965951596722446]
    got = reference_normals(1453, 200001)
    assert got[:6].tolist() == want
    assert got[100000] == 1.0063876299591925 and got[200000] == 0.44387787184910982
    assert reference_normals(1453, 7).tolist() == got[:7].tolist()


def test_reference_text_format(tmp_path):
    from mpiopt.comm import world
    from mpiopt.data.movielens import read_reference, write_reference
    f = tmp_path / "data.txt"
    write_reference(str(f), np.array([0, 2, 4]), np.array([1, 0, 2]), np.array([5.0, 3.5, 1.0]), 6, 3)
    r, c, v, m, n = read_reference(str(f), world())
    assert (m, n) == (6, 3) and r.tolist() == [0, 2, 4] and c.tolist() == [1, 0, 2] and v.tolist() == [5, 3.5, 1]
    res, prob = minimize("hamsi", "movielens", {"problem.path": str(f), "problem.split": "none",
                                                "solver.preset": "hamsi-mf", "solver.max_epochs": 2,
                                                "solver.init": "mt19937", "run.seed": 1453,
                                                "problem.latent_dim": 2}, return_problem=True)
    assert (prob.m, prob.n) == (6, 3)       # empty rows kept, as in the reference
    from mpiopt.mf.init import reference_normals
    x0 = reference_normals(1453, (6 + 3) * 2)
    W0, H0 = x0[:12].reshape(6, 2), x0[12:].reshape(3, 2)
    r0 = np.einsum("ij,ij->i", W0[[0, 2, 4]], H0[[1, 0, 2]]) - np.array([5.0, 3.5, 1.0])
    assert res.history["rmse"].size == 3
    assert res.history["rmse"][0] == pytest.approx(np.sqrt(r0 @ r0 / 3), rel=1e-14)
    f.write_text("2\n6 3\n3\n1 2 5\n3 1\n5 3 1\n")
    with pytest.raises(InputError, match=r"data.txt:5: malformed entry"):
        read_reference(str(f), world())
    f.write_text("2\n6 3\n3\n1 2 5\n3 9 1\n5 3 1\n")
    with pytest.raises(InputError, match=r"data.txt:5: .*out of range"):
        read_reference(str(f), world())
