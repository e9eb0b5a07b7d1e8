"""The signprox solver and its sign baselines end to end: convergence to F*, bit-identical replicas,
bit-identical resume, the naive sign-then-prox failure, TV denoising, bad input, the demo."""
import re

import numpy as np
import pytest

from conftest import run_mpi
from mpiopt.io import load_result

SPARSE = ["problem.n_samples=4000", "problem.n_features=200", "problem.density=0.05", "problem.l1=0.01"]


def _run(tmp_path, solver, sets, n=2, name="out", extra=(), timeout=240):
    out = tmp_path / f"{name}.h5"
    p = run_mpi([solver, "--problem", "logistic", "--out", out, *extra, "--set", "run.progress=none", *sets],
                n=n, timeout=timeout, cwd=tmp_path)
    assert p.returncode == 0, p.output
    return load_result(str(out)), p


@pytest.mark.parametrize("ranks", [1, 4])
def test_converges_near_reference_optimum(tmp_path, ranks):
    T = 400
    res, _ = _run(tmp_path, "signprox", ["problem.dataset=breast_cancer", f"solver.max_iter={T}",
                                         "solver.step0=0.05"], n=ranks)
    fstar = res["reference_objective"]
    assert res["fun"] - fstar < 1e-2
    h = res.history
    assert h["gap"][-1] < 0.2 * h["gap"][0]
    # bytes on the wire from what was sent: 30 features -> one 8-byte word per message
    assert h["bytes_iter"][-1] == (ranks - 1) * 8
    assert h["bytes_sent"][-1] == T * (ranks - 1) * 8


@pytest.mark.mpi(ranks=4, timeout=180)
def test_replicas_bit_identical_after_many_iterations_at_4_ranks():
    from mpi4py import MPI

    from mpiopt.api import minimize
    from mpiopt.comm import Comm

    comm = Comm(MPI.COMM_WORLD)
    popts = {"problem.n_samples": 2000, "problem.n_features": 300, "problem.density": 0.05, "problem.l1": 0.01,
             "problem.reference": "no"}
    combos = [("1bit", "allgather", "zero", False), ("1bit", "twophase", "shared_random", True),
              ("ternary", "int8_allreduce", "zero", True), ("ternary", "twophase", "plus", False)]
    for encoding, aggregator, tie, ef in combos:
        res = minimize("signprox", "logistic", {
            **popts, "run.seed": 3, "run.debug": True, "solver.max_iter": 60, "solver.encoding": encoding,
            "solver.aggregator": aggregator, "solver.tie": tie, "solver.error_feedback": ef,
            "solver.check_every": 7, "solver.mapping_norm": False, "solver.step0": 0.05})
        xs = comm.allgather_obj(res.x_raw.tobytes())
        assert all(b == xs[0] for b in xs), (encoding, aggregator, tie)
        assert np.count_nonzero(res.x_raw) > 0
        # every coordinate moved by whole steps: x is a signed sum of the gammas
        assert res.nit == 60


@pytest.mark.mpi(ranks=2, timeout=180)
def test_blockwise_message_equals_whole_vector_message(monkeypatch):
    """The cache-blocked path (message made and packed block by block) gives bit-identical iterates."""

    import mpiopt.solvers.sign_engine as signs
    from mpiopt.registry import register_solver
    from mpiopt.solvers.signprox import SignProx
    from mpiopt.runner import build_run, resolve_spec
    from mpiopt.solvers.signsgd_mv import SignSGDMV

    monkeypatch.setattr(signs, "BLOCK", 64)      # 300 variables -> 5 blocks, the last one partial

    @register_solver("test_whole_vector_signprox")
    class WholeVector(SignProx):
        def message_elementwise(self) -> bool:
            return False

    @register_solver("test_whole_vector_signsgd_mv")
    class WholeVectorMV(SignSGDMV):
        def message_elementwise(self) -> bool:
            return False

    popts = {"problem.n_samples": 1000, "problem.n_features": 300, "problem.density": 0.05, "problem.l1": 0.01,
             "problem.reference": "no"}
    for fast, slow, encoding in (("signprox", "test_whole_vector_signprox", "1bit"),
                                 ("signprox", "test_whole_vector_signprox", "ternary"),
                                 ("signsgd_mv", "test_whole_vector_signsgd_mv", "1bit")):
        xs = []
        for name in (fast, slow):
            values = {**popts, "run.seed": 4, "solver.max_iter": 40, "solver.encoding": encoding,
                      "solver.mapping_norm": False, "solver.step0": 0.05}
            run = build_run(resolve_spec(name, "logistic", [(k, v, "test") for k, v in values.items()],
                                         default_out=False), quiet=True, install_signals=False)
            assert run.solver.blockwise == (name == fast)
            res = run.execute()
            xs.append(res.x_raw)
        assert np.array_equal(xs[0], xs[1]), (fast, encoding)
        assert np.count_nonzero(xs[0] != 0) > 0


def test_resume_is_bit_identical(tmp_path):
    sets = [*SPARSE, "solver.max_iter=40", "solver.encoding=ternary", "solver.error_feedback=true",
            "solver.tie=shared_random", "solver.aggregator=twophase", "run.history_every=5"]
    ck = tmp_path / "ck"
    full, _ = _run(tmp_path, "signprox", sets, name="full",
                   extra=["--checkpoint-dir", ck, "--checkpoint-every", "20", "--seed", "7"])
    first = ck / "ckpt-000000020.h5"
    assert first.exists(), sorted(p.name for p in ck.iterdir())
    resumed, p = _run(tmp_path, "signprox", sets, name="resumed", extra=["--resume", first, "--seed", "7"])
    assert "resumed from" in p.output
    a, b = full.solution["x_raw"], resumed.solution["x_raw"]
    assert a.tobytes() == b.tobytes()
    assert full.history["bytes_sent"][-1] == resumed.history["bytes_sent"][-1]
    # the error-feedback memory matters: without it the run differs
    other, _ = _run(tmp_path, "signprox", [s for s in sets if "error_feedback" not in s], name="noef",
                    extra=["--seed", "7"])
    assert other.solution["x_raw"].tobytes() != a.tobytes()


def test_sign_then_prox_fails_with_l1_where_signprox_does_not(tmp_path):
    sets = [*SPARSE, "solver.max_iter=300", "solver.step0=0.05"]
    sp, _ = _run(tmp_path, "signprox", sets, name="sp")
    naive, _ = _run(tmp_path, "sign_then_prox", sets, name="naive")
    fstar = sp["reference_objective"]
    gap_sp, gap_naive = sp["fun"] - fstar, naive["fun"] - fstar
    assert gap_sp < 0.02
    assert gap_naive > 5 * gap_sp
    assert np.count_nonzero(sp.solution["x"]) < 0.5 * 200      # sparse after the band polish
    assert np.count_nonzero(naive.solution["x"]) == 200        # no exact zeros at all


def test_tv_denoising_raises_psnr(tmp_path):
    out = tmp_path / "tv.h5"
    p = run_mpi(["signprox", "--problem", "tv_denoise", "--out", out, "--set", "run.progress=none",
                 "problem.size=32", "solver.max_iter=150", "solver.step0=0.05", "solver.polish=none"],
                n=2, timeout=240, cwd=tmp_path)
    assert p.returncode == 0, p.output
    noisy = float(re.search(r"PSNR of one copy ([\d.]+) dB", p.output).group(1))
    res = load_result(str(out))
    assert res.history["psnr"][-1] > noisy + 3.0
    assert res.history["gap"][-1] < 0.05 * res.history["gap"][0]


def test_bad_input_exits_2_naming_the_key(tmp_path):
    p = run_mpi(["signprox", "--problem", "logistic", "--set", "solver.encoding=2bit"], n=2, timeout=60, cwd=tmp_path)
    assert p.returncode == 2 and "solver.encoding" in p.output
    p = run_mpi(["signprox", "--problem", "logistic", "--set", "problem.reg=weighted_l1",
                 f"problem.weights={tmp_path / 'nope.npy'}"], n=2, timeout=60, cwd=tmp_path)
    assert p.returncode == 2 and "nope.npy: file not found" in p.stderr
    assert p.stderr.count("error") == 1                        # printed once, not once per rank


def test_demo_runs(tmp_path):
    p = run_mpi(["signprox", "--set", "run.progress=none"], n=2, timeout=180, cwd=tmp_path)
    assert p.returncode == 0, p.output
    m = re.search(r"objective - F\* = ([-\d.e+]+)", p.output)
    assert m and float(m.group(1)) < 0.05


def test_svmlight_file_sparse_ternary(tmp_path):
    import scipy.sparse as sp
    from sklearn.datasets import dump_svmlight_file
    rng = np.random.default_rng(5)
    X = sp.random(600, 40, density=0.1, format="csr", random_state=rng, data_rvs=rng.standard_normal)
    w = np.zeros(40)
    w[:6] = rng.normal(size=6) * 2
    y = np.where(X @ w + 0.1 * rng.standard_normal(600) > 0, 1, -1)
    path = tmp_path / "data.svm"
    dump_svmlight_file(X, y, str(path), zero_based=False)
    res, _ = _run(tmp_path, "signprox", [f"problem.path={path}", "problem.n_features=40", "problem.l1=0.005",
                                         "solver.encoding=ternary", "solver.max_iter=300", "solver.step0=0.1"],
                  n=3, name="svm")
    assert res["fun"] - res["reference_objective"] < 0.02
    assert res.history["bytes_iter"][-1] == 2 * 16          # 2 ranks x 2 planes x one 8-byte word


def test_sgn0_drift_of_one_bit_raw_gradients_and_its_cures(tmp_path):
    """Spec pitfall 1: features absent from the data have exactly zero gradients; a 1-bit sign of
    the raw gradient codes them '+', so signsgd_mv (r ignored) drifts by -gamma per step there.
    The ternary code does not move them; SignProx's mapping keeps them in a band around 0."""
    import scipy.sparse as sp
    from sklearn.datasets import dump_svmlight_file
    rng = np.random.default_rng(6)
    X = sp.random(400, 30, density=0.2, format="csr", random_state=rng, data_rvs=rng.standard_normal)
    X = (X @ sp.diags((np.arange(30) < 20).astype(float))).tocsr()   # features 21..30 never occur
    X.eliminate_zeros()
    y = np.where(X[:, :5].sum(axis=1).A1 > 0, 1, -1)
    path = tmp_path / "absent.svm"
    dump_svmlight_file(X, y, str(path), zero_based=False)
    T, step0 = 50, 0.05
    base = [f"problem.path={path}", "problem.n_features=30", "problem.l1=0.01", f"solver.max_iter={T}",
            f"solver.step0={step0}", "solver.schedule=const"]
    drift, _ = _run(tmp_path, "signsgd_mv", [*base, "solver.reg=ignore"], name="drift")
    assert np.allclose(drift.solution["x"][20:], -T * step0)
    tern, _ = _run(tmp_path, "signsgd_mv", [*base, "solver.reg=ignore", "solver.encoding=ternary"], name="tern")
    assert (tern.solution["x"][20:] == 0).all()
    sp_, _ = _run(tmp_path, "signprox", base, name="sp")
    assert (np.abs(sp_.solution["x_raw"][20:]) <= step0 + 1e-12).all()
    assert (sp_.solution["x"][20:] == 0).all()


def test_step_schedules():
    from mpiopt.solvers.sign_vote import sign_step_size
    assert sign_step_size(0.1, 0, "sqrt", 100) == 0.1
    assert sign_step_size(0.1, 3, "sqrt", 100) == pytest.approx(0.05)
    assert sign_step_size(0.1, 7, "const", 100) == 0.1
    assert sign_step_size(0.1, 7, "heuristic", 100) == pytest.approx(0.01)
    assert sign_step_size(0.1, 7, "theory", 100) == sign_step_size(0.1, 7, "heuristic", 100)   # old name


def test_heuristic_schedule_keeps_the_old_name_as_an_alias():
    from mpiopt.runner import build_run, resolve_spec
    base = {"problem.n_samples": 200, "problem.n_features": 20, "problem.reference": "no", "solver.max_iter": 50}
    batches = []
    for extra in ({"solver.schedule": "heuristic"}, {"solver.schedule": "theory"},
                  {"solver.schedule": "theory", "solver.theory_batch": 2.0},
                  {"solver.schedule": "heuristic", "solver.heuristic_batch": 2.0}):
        vals = {**base, **extra}
        run = build_run(resolve_spec("signprox", "logistic", [(k, v, "t") for k, v in vals.items()],
                                     default_out=False), quiet=True)
        batches.append(run.solver.batch)
        assert run.solver.gamma(3) == pytest.approx(0.05 / np.sqrt(50))
    assert batches == [64, 64, 100, 100]


def test_tv_image_loading(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mpiopt.errors import InputError
    from mpiopt.problems.tv import load_image, phantom
    img = phantom(16)
    plt.imsave(tmp_path / "p.png", img, cmap="gray", vmin=0, vmax=1)
    got = load_image(str(tmp_path / "p.png"))
    assert got.shape == (16, 16) and abs(got.min()) < 1e-12 and abs(got.max() - 1) < 1e-12
    assert np.corrcoef(got.ravel(), img.ravel())[0, 1] > 0.99
    np.save(tmp_path / "p.npy", img * 5 + 2)
    assert np.allclose(load_image(str(tmp_path / "p.npy")), img)
    np.save(tmp_path / "bad.npy", np.zeros(5))
    with pytest.raises(InputError, match="bad.npy: expected a 2-D image"):
        load_image(str(tmp_path / "bad.npy"))
    with pytest.raises(InputError, match="missing.png: file not found"):
        load_image(str(tmp_path / "missing.png"))


@pytest.mark.parametrize("encoding", ["1bit", "ternary"])
def test_error_feedback_memory_holds_what_the_applied_step_left_out(encoding):
    """EF-SGD: with p = m + e the message sent, x moves by gamma * v and the memory becomes
    e = p - gamma * v (not p - (||p||_1/k) sgn(p), a step that is never applied). So
    x_t - e_t moves by exactly the uncompressed message m_t (the virtual SGD sequence)."""
    from mpiopt.runner import build_run, resolve_spec
    from mpiopt.solvers.signprox import SignProx

    values = {"problem.n_samples": 300, "problem.n_features": 70, "problem.density": 0.2, "problem.l1": 0.01,
              "problem.reference": "no", "run.seed": 2, "solver.max_iter": 10, "solver.error_feedback": True,
              "solver.encoding": encoding, "solver.step0": 0.05, "solver.mapping_norm": False}
    run = build_run(resolve_spec("signprox", "logistic", [(k, v, "test") for k, v in values.items()],
                                 default_out=False), quiet=True)
    s = run.solver
    assert isinstance(s, SignProx) and s.ef is not None
    grads = []
    original = s.local_gradient
    s.local_gradient = lambda: grads.append(original().copy()) or grads[-1]
    virtual = s.x - s.ef
    for t in range(8):
        x0, e0, gam = s.x.copy(), s.ef.copy(), s.gamma(t)
        s.step()
        s.nit += 1
        m = s.message(x0, grads[-1], gam, np.empty_like(x0), np.empty_like(x0))
        p = m + e0
        v = s.agg.values().astype(np.float64)
        assert np.array_equal(s.x, x0 - gam * v)
        assert np.array_equal(s.ef, p - gam * v), t
        virtual = virtual - m
        assert np.allclose(s.x - s.ef, virtual, rtol=0, atol=1e-12)


def test_sampled_prox_randomness_exact_gradient_and_prox_components():
    """randomness=sampled_prox: exact gradient of the rank's data and the prox averaged over sampled
    components of r. With an L1 regulariser (one component) nothing is random: the seed does not matter;
    with TV (4 components) the run depends on the seed and still denoises."""
    from mpiopt.api import minimize
    xs = []
    for seed in (1, 2):
        res = minimize("signprox", "logistic", {"problem.n_samples": 300, "problem.n_features": 40,
                                                "problem.reference": "no", "solver.max_iter": 30, "run.seed": seed,
                                                "solver.randomness": "sampled_prox"})
        assert res.randomness == "sampled_prox"
        xs.append(res.x_raw)
    assert np.array_equal(xs[0], xs[1])
    tv = []
    for seed in (1, 2):
        res = minimize("signprox", "tv_denoise", {"problem.size": 16, "solver.max_iter": 100, "solver.step0": 0.05,
                                                  "solver.polish": "none", "solver.randomness": "sampled_prox",
                                                  "solver.prox_samples": 2, "run.seed": seed})
        assert res.history["psnr"][-1] > res.history["psnr"][0] + 3
        tv.append(res.x_raw)
    assert not np.array_equal(tv[0], tv[1])


@pytest.mark.parametrize("encoding", ["1bit", "ternary"])
def test_sgn0_rule_of_signprox_zero_mapping_coordinates(tmp_path, encoding):
    """The documented sgn(0) rule: with the 1-bit code an exactly-zero message is sent as '+', so a
    coordinate whose mapping is 0 (x_i = 0, |g_i| <= l1; here: features absent from the data) steps to
    -gamma, where the mapping is -gamma*l1 < 0, and back: it alternates between 0 and -gamma (a
    one-sided band that the band polish removes). The ternary code sends 0 and the coordinate stays 0."""
    import scipy.sparse as sp
    from sklearn.datasets import dump_svmlight_file

    from mpiopt.api import minimize
    rng = np.random.default_rng(6)
    X = sp.random(300, 30, density=0.2, format="csr", random_state=rng, data_rvs=rng.standard_normal)
    X = (X @ sp.diags((np.arange(30) < 20).astype(float))).tocsr()   # features 21..30 never occur
    X.eliminate_zeros()
    y = np.where(X[:, :5].sum(axis=1).A1 > 0, 1, -1)
    path = tmp_path / "absent.svm"
    dump_svmlight_file(X, y, str(path), zero_based=False)
    gam = 0.05
    for T in (9, 10):
        res = minimize("signprox", "logistic", {"problem.path": str(path), "problem.n_features": 30,
                                                "problem.l1": 0.01, "solver.max_iter": T, "solver.step0": gam,
                                                "solver.schedule": "const", "solver.encoding": encoding,
                                                "solver.mapping_norm": False})
        tail = res.x_raw[20:]
        if encoding == "ternary":
            assert (tail == 0).all()
        else:   # after an odd number of steps at -gamma, after an even number back at 0
            assert (tail == (-gam if T % 2 else 0.0)).all(), (T, tail)
        assert (res.x[20:] == 0).all()


def test_error_feedback_with_the_mean_l1_step_keeps_what_that_step_left_out():
    """ef_step=mean_l1: x moves by s * v with s = ||p||_1 / n (one rank, 1-bit), and e = p - s * v."""
    from mpiopt.runner import build_run, resolve_spec
    values = {"problem.n_samples": 300, "problem.n_features": 70, "problem.density": 0.2, "problem.l1": 0.01,
              "problem.reference": "no", "run.seed": 2, "solver.max_iter": 10, "solver.error_feedback": True,
              "solver.ef_step": "mean_l1", "solver.step0": 0.05, "solver.mapping_norm": False}
    run = build_run(resolve_spec("signprox", "logistic", [(k, v, "test") for k, v in values.items()],
                                 default_out=False), quiet=True)
    s = run.solver
    grads = []
    original = s.local_gradient
    s.local_gradient = lambda: grads.append(original().copy()) or grads[-1]
    for t in range(5):
        x0, e0, gam = s.x.copy(), s.ef.copy(), s.gamma(t)
        s.step()
        s.nit += 1
        p = s.message(x0, grads[-1], gam, np.empty_like(x0), np.empty_like(x0)) + e0
        step = np.abs(p).sum() / p.size
        v = s.agg.values().astype(np.float64)
        assert np.allclose(s.x, x0 - step * v, rtol=0, atol=1e-15)
        assert np.allclose(s.ef, p - step * v, rtol=0, atol=1e-15)
