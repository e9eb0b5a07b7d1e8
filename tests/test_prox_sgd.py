"""prox_sgd and the linear problems: data independent of rank count, sharded files, convergence."""
import numpy as np
import pytest
import scipy.sparse as sp

from mpiopt.data.svmlight import read_shard


def _write_svm(path, n=57, d=9, seed=0):
    rng = np.random.default_rng(seed)
    lines = ["# a comment line\n"]
    for i in range(n):
        idx = np.sort(rng.choice(d, size=rng.integers(1, d), replace=False))
        feats = " ".join(f"{j + 1}:{rng.normal():.6f}" for j in idx)
        lines.append(f"{1 if rng.random() < 0.4 else -1} {feats}\n")
        if i == 20:
            lines.append("\n")
    path.write_text("".join(lines))


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_svmlight_shards_cover_file_exactly_once(tmp_path, size):
    from sklearn.datasets import load_svmlight_file
    p = tmp_path / "d.svm"
    _write_svm(p)
    X, y = load_svmlight_file(str(p), n_features=9)
    parts = [read_shard(str(p), r, size, n_features=9) for r in range(size)]
    Xs = sp.vstack([q[0] for q in parts]).toarray()
    ys = np.concatenate([q[1] for q in parts])
    assert np.array_equal(Xs, X.toarray()) and np.array_equal(ys, y)


def test_svmlight_bad_line_number_in_later_shard(tmp_path):
    from mpiopt.errors import InputError
    p = tmp_path / "d.svm"
    _write_svm(p, n=40)
    lines = p.read_text().splitlines(keepends=True)
    lines[35] = "1 3:0.5 2:0.25\n"   # indices not ascending
    p.write_text("".join(lines))
    errors = []
    for r in range(3):
        try:
            read_shard(str(p), r, 3, n_features=9)
        except InputError as exc:
            errors.append(str(exc))
    assert errors == [f"{p}:36: malformed svmlight line '1 3:0.5 2:0.25'"]


@pytest.mark.mpi(ranks=[1, 3], timeout=120)
def test_generated_data_is_independent_of_rank_count():
    from mpi4py import MPI
    from mpiopt.comm import Comm
    from mpiopt.problems.linear import Logistic
    from mpiopt.options import resolve
    c = Comm(MPI.COMM_WORLD)
    cfg = resolve({"problem": Logistic.options}, [("problem.n_samples", 2500, "t"), ("problem.n_features", 30, "t"),
                                                  ("problem.density", 0.2, "t")])["problem"]
    p = Logistic(cfg, c)
    p.setup()
    A = c.gatherv_rows(p.A.toarray())
    y = c.gatherv_rows(p.y)
    if c.rank == 0:
        rng_ref = Logistic(cfg, Comm(MPI.COMM_SELF))
        rng_ref.setup()
        assert np.array_equal(A, rng_ref.A.toarray()) and np.array_equal(y, rng_ref.y)
        assert set(np.unique(y)) == {-1.0, 1.0}


@pytest.mark.mpi(ranks=[1, 4], timeout=180)
def test_prox_sgd_converges_to_reference_and_is_deterministic():
    from mpiopt.api import minimize
    opts = {"problem.n_samples": 3000, "problem.n_features": 40, "problem.l1": 0.01, "solver.max_iter": 600,
            "solver.batch_size": 128, "solver.step0": 0.3, "solver.schedule": "const"}
    res, prob = minimize("prox_sgd", "lasso", opts, return_problem=True)
    fstar = prob.reference_objective
    assert res.status == 1 and res.success and res.nit == 600
    assert res.fun - fstar >= -1e-9, "F* must be a lower bound"
    assert res.fun - fstar < 2e-3 * max(1.0, abs(fstar)), (res.fun, fstar)
    # the reference minimiser satisfies the L1 optimality conditions
    _, g = prob.full_grad(prob.reference_x)
    w = prob.reference_x
    assert np.all(np.abs(g[w == 0]) <= 0.01 + 1e-5)
    assert np.allclose(g[w != 0], -0.01 * np.sign(w[w != 0]), atol=1e-5)
    again = minimize("prox_sgd", "lasso", opts)
    assert np.array_equal(res.x, again.x)
    other = minimize("prox_sgd", "lasso", {**opts, "run.seed": 1})
    assert not np.array_equal(res.x, other.x)


@pytest.mark.mpi(ranks=2, timeout=120)
def test_callback_stop_iteration_stops_all_ranks():
    from mpi4py import MPI
    from mpiopt.api import minimize
    rank = MPI.COMM_WORLD.rank
    seen = []

    def cb(r):
        seen.append(r.nit)
        if rank == 1 and r.nit >= 40:
            raise StopIteration

    res = minimize("prox_sgd", "lasso", {"solver.max_iter": 1000, "run.history_every": 10}, callback=cb)
    assert res.status == 3 and res.nit == 40 and seen[-1] == 40


@pytest.mark.mpi(ranks=[1, 2], timeout=180)
def test_group_lasso_reference_satisfies_kkt_and_prox_sgd_reaches_it():
    """F* for group lasso (FISTA reference) is a certified optimum: the KKT conditions hold, the
    value does not depend on the rank count, and prox_sgd converges to it."""
    from mpiopt.api import minimize

    popts = {"n_samples": 2000, "n_features": 100, "density": 0.2, "l1": 0.01, "reg": "group_lasso", "group_size": 5}
    res, p = minimize("prox_sgd", "logistic", {**{f"problem.{k}": v for k, v in popts.items()},
                                               "solver.max_iter": 3000, "solver.step0": 2.0,
                                               "solver.batch_size": 256, "run.seed": 0}, return_problem=True)
    comm = p.comm
    x, fstar = p.reference_x, p.reference_objective
    _, g = p.full_grad(x)
    X, Gr = x.reshape(-1, 5), g.reshape(-1, 5)
    lam = 0.01 * np.sqrt(5)
    norms = np.linalg.norm(X, axis=1)
    on = norms > 0
    assert 0 < on.sum() < on.size                       # some groups active, some zero
    assert np.abs(Gr[on] + lam * X[on] / norms[on, None]).max() < 1e-8
    assert np.linalg.norm(Gr[~on], axis=1).max() <= lam + 1e-8
    assert comm.allgather_obj(fstar) == [fstar] * comm.size
    assert fstar == pytest.approx(0.5686069455, abs=1e-8)   # the same at 1 and 2 ranks (data are rank-count free)
    assert fstar <= res.fun < fstar + 2e-3
