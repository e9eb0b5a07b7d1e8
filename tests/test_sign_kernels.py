"""The compiled sign-path kernels (mpiopt.kernels) against their numpy reference implementations
(mpiopt.kernels.codec, mpiopt.prox): bit-identical results on random and edge-case inputs."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mpiopt import kernels as K
from mpiopt.kernels.codec import StepTable, n_words, pack_bits, sign_planes, tie_bits, vote
from mpiopt.prox import ElasticNet, L1, Zero, gradient_mapping, prox_step

pytestmark = pytest.mark.skipif(not K.HAVE_NUMBA, reason="numba not installed")
K.compile_kernels()

LENGTHS = (1, 7, 8, 63, 64, 65, 127, 1000, 4099)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint64 if a.dtype.itemsize == 8 else np.uint32)


def inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x and g with exact zeros, -0.0, ties of |x - t g| with the threshold and huge values."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * rng.choice([1e-3, 1.0, 1e3], n)
    g = rng.standard_normal(n)
    x[rng.random(n) < 0.2] = 0.0
    x[rng.random(n) < 0.1] = -0.0
    g[rng.random(n) < 0.2] = 0.0
    g[rng.random(n) < 0.1] = -0.0
    if n > 4:
        x[:4] = [0.0, -0.0, 0.05, -0.05]      # with t = 0.5, l1 = 0.1: |u| = a exactly
        g[:4] = [0.0, -0.0, 0.0, 0.0]
    return x, g


def reference_message(kind, x, g, t, l1, l2):
    out, work = np.empty_like(x), np.empty_like(x)
    if kind == K.MSG_GRADIENT:
        np.copyto(out, g)
        if l1 > 0:
            np.sign(x, out=work)
            work *= l1
            out += work
        if l2 > 0:
            out += l2 * x
        return out
    reg = Zero() if (l1, l2) == (0.0, 0.0) and kind == K.MSG_MAPPING else ElasticNet(l1, l2)
    return gradient_mapping(reg, x, g, t, out, work)


def kernel_pack(kind, x, g, t, l1, l2, ef, ternary, words):
    neg = np.full(words, np.uint64(0xDEAD), dtype=np.uint64)
    nz = np.full(words, np.uint64(0xDEAD), dtype=np.uint64) if ternary else K.NO_W
    bad = np.zeros(1)
    i = K.get("sign_message_pack")(K.message_params(kind, t, l1, l2), x, g, K.NO_F if ef is None else ef,
                                   ef is not None, K.NO_I, False, (neg, nz, ternary, bad))
    return i, bad[0], neg, nz


CASES = [(K.MSG_MAPPING_L1, 0.1, 0.0), (K.MSG_MAPPING_L1, 0.0, 0.0), (K.MSG_MAPPING, 0.1, 0.3),
         (K.MSG_MAPPING, 0.0, 0.3), (K.MSG_MAPPING, 0.0, 0.0), (K.MSG_GRADIENT, 0.0, 0.0),
         (K.MSG_GRADIENT, 0.1, 0.0), (K.MSG_GRADIENT, 0.1, 0.3)]


@pytest.mark.parametrize("kind,l1,l2", CASES)
@pytest.mark.parametrize("encoding", ["1bit", "ternary"])
def test_fused_message_pack_equals_reference(kind, l1, l2, encoding):
    ternary = encoding == "ternary"
    for n in LENGTHS:
        x, g = inputs(n, n)
        t = 0.5
        m = reference_message(kind, x, g, t, l1, l2)
        W = n_words(n) + 1                              # one word past the end must stay untouched
        planes = np.zeros((2, n_words(n)), dtype=np.uint64)
        sign_planes(m, encoding, planes)
        # plain: sign planes equal, padding bits zero, the word past the end untouched
        i, _, neg, nz = kernel_pack(kind, x, g, t, l1, l2, None, ternary, W)
        assert i == -1
        assert np.array_equal(neg[:-1], planes[0]) and neg[-1] == 0xDEAD, (n, kind)
        if ternary:
            assert np.array_equal(nz[:-1], planes[1]) and nz[-1] == 0xDEAD
        # with e = -0.0 the stored p = m + e is m bit for bit (the message itself). One exception: with
        # no L1 weight the L1 form clips to [-0.0, 0.0], where numpy's vectorised clip returns either
        # zero; only the sign of an exact-zero message can differ (no sign bit, no iterate depends on it)
        e = np.full(n, -0.0)
        kernel_pack(kind, x, g, t, l1, l2, e, ternary, W)
        assert np.array_equal(e, m)
        same = bits(e) == bits(m)
        assert same.all() or (kind == K.MSG_MAPPING_L1 and l1 == 0 and (m[~same] == 0).all()), (n, kind)
        # with a random memory: p = m + e as numpy adds it, and the planes of p
        e = np.random.default_rng(n).standard_normal(n) * 0.01
        p = m + e
        _, _, neg, nz = kernel_pack(kind, x, g, t, l1, l2, e, ternary, W)
        sign_planes(p, encoding, planes)
        assert np.array_equal(bits(e), bits(p))
        assert np.array_equal(neg[:-1], planes[0])


@pytest.mark.parametrize("kind,l1,l2", CASES[:3] + CASES[5:6])
def test_fused_message_reports_the_first_nonfinite_element(kind, l1, l2):
    for n in (5, 64, 200):
        for pos in (0, n // 2, n - 1):
            for bad in (np.nan, np.inf, -np.inf):
                for where in ("x", "g"):
                    x, g = inputs(n, pos)
                    (x if where == "x" else g)[pos] = bad
                    if pos + 3 < n:
                        g[pos + 3] = np.nan               # a later one is not reported
                    with np.errstate(invalid="ignore"):
                        m = reference_message(kind, x, g, 0.5, l1, l2)
                    i, val, _, _ = kernel_pack(kind, x, g, 0.5, l1, l2, None, False, n_words(n))
                    try:    # the reference raises naming the first non-finite element of m, if any
                        sign_planes(m, "1bit", np.zeros((1, n_words(n)), dtype=np.uint64))
                    except ValueError as e:
                        assert str(e) == f"non-finite value {val} at element {i}: cannot code its sign"
                    else:   # e.g. x = inf with the L1 mapping: t g + clip(inf, -a, a) is finite
                        assert i == -1, (n, pos, bad, where)


@pytest.mark.parametrize("encoding", ["1bit", "ternary"])
@pytest.mark.parametrize("tie", ["zero", "plus", "shared_random"])
def test_vote_on_words_equals_reference_vote(encoding, tie):
    rng = np.random.default_rng([len(tie), len(encoding)])
    ternary = encoding == "ternary"
    for P in range(1, 10):
        for n in (1, 63, 64, 65, 1000):
            W = n_words(n, 4)
            m = rng.integers(-1, 2, size=(P, n)).astype(np.float64) * (rng.random((P, n)) + 0.5)
            recv = np.zeros((P, 2 if ternary else 1, W), dtype=np.uint64)
            for p in range(P):
                sign_planes(m[p], encoding, recv[p])
            rand = tie_bits(3, P, W)
            want = vote(recv[:, 0, :], recv[:, 1, :] if ternary else None, tie, rand)
            out = (np.empty(W, dtype=np.uint64), np.empty(W, dtype=np.uint64))
            K.get("vote_words")(recv[:, 0, :], recv[:, 1, :] if ternary else recv[:, 0, :], ternary,
                                ("zero", "plus", "shared_random").index(tie),
                                rand if tie == "shared_random" else K.NO_W, *out)
            assert np.array_equal(out[0], want[0]), (P, n)
            assert np.array_equal(out[1], want[1]), (P, n)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_apply_on_words_equals_step_table(dtype):
    rng = np.random.default_rng(7)
    for n in LENGTHS + (70000,):
        v = rng.integers(-1, 2, size=n)
        W = n_words(n, 4)
        neg = pack_bits(v < 0, np.zeros(W, dtype=np.uint64))
        nz = pack_bits(v != 0, np.zeros(W, dtype=np.uint64))
        x = rng.standard_normal(n).astype(dtype)
        x[: min(n, 3)] = [-0.0, 0.0, 1e-300][: min(n, 3)]
        gam = 0.0371
        table = StepTable(n, dtype)
        for planes in ((neg, nz), (neg, None)):
            want = table.apply(x.copy(), *planes, gam)
            got = x.copy()
            K.get("apply_words")(got, K.decision_of(*planes), got.dtype.type(gam), K.NO_F, False, False,
                                 K.prox_params(0.0, 0.0, 0.0))
            assert np.array_equal(bits(got), bits(want)), (n, dtype)
        # with error feedback (float64 memory): e - gamma v, as p - deltas
        if dtype == np.float64:
            e = rng.standard_normal(n)
            want_e = e - StepTable(n).deltas(neg, nz, gam)
            got = x.copy()
            K.get("apply_words")(got, (neg, nz, True), gam, e, True, False, K.prox_params(0.0, 0.0, 0.0))
            assert np.array_equal(bits(e), bits(want_e))
            assert np.array_equal(bits(got), bits(table.apply(x.copy(), neg, nz, gam)))


@pytest.mark.parametrize("l1,l2", [(0.5, 0.0), (0.0, 0.2), (0.5, 0.2), (0.0, 0.0)])
def test_apply_then_prox_equals_apply_and_elastic_net_prox(l1, l2):
    rng = np.random.default_rng(8)
    for n in LENGTHS:
        v = rng.integers(-1, 2, size=n)
        neg = pack_bits(v < 0)
        nz = pack_bits(v != 0)
        x = rng.standard_normal(n) * 0.1
        x[: min(n, 2)] = [0.0371, -0.0371][: min(n, 2)]      # lands on 0 (and on the threshold)
        gam = 0.0371
        reg = ElasticNet(l1, l2) if (l1, l2) != (0.0, 0.0) else Zero()
        want = reg.prox(StepTable(n).apply(x.copy(), neg, nz, gam), gam)
        got = x.copy()
        K.get("apply_words")(got, (neg, nz, True), gam, K.NO_F, False, True, K.prox_params(gam, l1, l2))
        assert np.array_equal(bits(got), bits(want)), n


@pytest.mark.parametrize("reg", [L1(0.3), ElasticNet(0.3, 0.1), ElasticNet(0.0, 0.1), ElasticNet(0.0, 0.0)])
@pytest.mark.parametrize("wire", [np.float32, np.float64])
def test_prox_step_kernel_equals_blocked_numpy_prox_step(reg, wire):
    rng = np.random.default_rng(9)
    for n in (1, 65, 70000):
        x, _ = inputs(n, n + 1)
        d = rng.standard_normal(n).astype(wire)
        d[: min(n, 2)] = 0.0
        t = 0.7
        want = x.copy()
        prox_step(reg, want, d, t, np.empty(1 << 15), compiled=False)
        got = x.copy()
        K.get("prox_step_en")(got, d, K.prox_params(t, reg.l1, reg.l2))
        assert np.array_equal(bits(got), bits(want))
        got = x.copy()
        prox_step(reg, got, d, t, np.empty(1 << 15))         # the dispatching entry point
        assert np.array_equal(bits(got), bits(want))


def test_numba_is_imported_only_when_a_kernel_is_needed():
    import subprocess
    import sys
    # loading the registry imports every solver and problem module (the MF ones included): no numba
    code = ("import sys, mpiopt.prox, mpiopt.comm.signs, mpiopt.solvers.signprox; "
            "from mpiopt import registry; registry.load_builtins(); "
            "assert 'numba' not in sys.modules, 'numba imported by the registry'; "
            "from mpiopt import kernels as K; K.compile_kernels(); "
            "assert 'numba' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the compiled sparse minibatch gradient (mpiopt.problems.linear, kernels csr_rows_dot/scatter) --------
def linear_problem(name: str, n_samples: int, n_features: int, density: float):
    from mpi4py import MPI
    from mpiopt.comm import Comm
    from mpiopt.options import resolve
    from mpiopt.problems.linear import Lasso, Logistic
    cls = {"logistic": Logistic, "lasso": Lasso}[name]
    cfg = resolve({"problem": cls.options}, [("problem.n_samples", n_samples, "t"),
                                              ("problem.n_features", n_features, "t"),
                                              ("problem.density", density, "t"), ("problem.reference", "no", "t")])
    p = cls(cfg["problem"], Comm(MPI.COMM_SELF))
    p.setup()
    return p


@pytest.mark.parametrize("name", ["logistic", "lasso"])
def test_sparse_batch_grad_equals_scipy_batch_grad(name):
    p = linear_problem(name, 700, 3000, 0.001)
    assert (np.diff(p.A.indptr) == 0).any()             # rows of every length, some empty at this density
    for warm in p.use_sparse_batch_grad():
        warm()
    rng = np.random.default_rng(3)
    x = rng.standard_normal(p.n_vars)
    x[::7] = 0.0
    x[1::11] = -0.0
    for b in (1, 2, 64, 700, 2000):                      # duplicates in the batch from b = 64 on
        for rep in range(3):
            idx = rng.integers(0, p.n_local, size=b)
            want = p.batch_grad(x, idx, out=np.empty(p.n_vars))
            got, cols = p.batch_grad_sparse(x, idx)
            assert np.array_equal(bits(got), bits(want)), (b, rep)
            assert len(set(cols.tolist())) == cols.size
            assert set(cols.tolist()) == set(np.unique(p.A[idx].indices).tolist())
            x += 0.01 * want                             # the next call must not see this one's entries
    # empty rows only / empty batch: zero gradient
    empty = np.flatnonzero(np.diff(p.A.indptr) == 0)[:3]
    got, cols = p.batch_grad_sparse(x, empty)
    assert cols.size == 0 and not got.any() and np.array_equal(bits(got), bits(p.batch_grad(x, empty)))
    got, cols = p.batch_grad_sparse(x, np.zeros(0, dtype=np.int64))
    assert cols.size == 0 and not got.any()


def test_sparse_batch_grad_propagates_nan_and_inf_as_scipy_does():
    p = linear_problem("lasso", 300, 500, 0.05)
    p.use_sparse_batch_grad()
    rng = np.random.default_rng(4)
    for bad in (np.nan, np.inf, -np.inf):
        x = rng.standard_normal(p.n_vars)
        idx = rng.integers(0, p.n_local, size=40)
        x[p.A[idx[5]].indices[0]] = bad
        with np.errstate(invalid="ignore", over="ignore"):
            want = p.batch_grad(x, idx, out=np.empty(p.n_vars))
            got, _ = p.batch_grad_sparse(x, idx)
        assert np.array_equal(got, want, equal_nan=True)
        fin = np.isfinite(want)
        assert np.array_equal(bits(got[fin]), bits(want[fin])) and not fin.all()


def test_sparse_batch_grad_is_off_for_dense_data_and_without_kernels(monkeypatch):
    p = linear_problem("logistic", 50, 20, 1.0)
    assert p.use_sparse_batch_grad() == []
    with pytest.raises(RuntimeError, match="use_sparse_batch_grad"):
        p.batch_grad_sparse(np.zeros(20), np.zeros(3, dtype=np.int64))
    q = linear_problem("logistic", 50, 20, 0.5)
    monkeypatch.setattr(K, "JIT", False)
    assert q.use_sparse_batch_grad() == []


@pytest.mark.parametrize("solver,extra", [
    ("signprox", {}), ("signprox", {"solver.encoding": "ternary", "solver.error_feedback": True}),
    ("signprox", {"solver.encoding": "ternary", "run.debug": True, "solver.check_every": 7}),
    ("signprox", {"solver.aggregator": "twophase", "solver.tie": "shared_random", "problem.l2": 0.1}),
    ("signsgd_mv", {}), ("sign_then_prox", {}), ("prox_sgd", {}), ("prox_sgd", {"solver.dtype": "float64"})])
@pytest.mark.parametrize("problem", ["logistic", "lasso"])
def test_runs_with_the_sparse_gradient_equal_runs_with_scipys(solver, extra, problem, monkeypatch):
    from mpiopt.problems.linear import LinearModelProblem
    from mpiopt.runner import build_run, resolve_spec
    values = {"problem.n_samples": 500, "problem.n_features": 400, "problem.density": 0.03, "problem.l1": 0.01,
              "problem.reference": "no", "run.seed": 2, "solver.max_iter": 30, "solver.batch_size": 32,
              "run.progress": "none", **extra}
    if solver == "prox_sgd":
        values["solver.step0"] = 0.5
    xs = []
    for sparse in (True, False):
        if not sparse:
            monkeypatch.setattr(LinearModelProblem, "use_sparse_batch_grad", lambda self: [])
        run = build_run(resolve_spec(solver, problem, [(k, v, "t") for k, v in values.items()], default_out=False),
                        quiet=True, write_result=False, install_signals=False)
        assert run.solver.sparse_grad == sparse
        # the step deferred into the next message pass: the plain sign steps with the sparse gradient
        assert getattr(run.solver, "defer", False) == (sparse and solver in ("signprox", "signsgd_mv")
                                                       and "solver.error_feedback" not in extra)
        res = run.execute()
        xs.append(res.get("x_raw", res.x))
    assert np.array_equal(bits(xs[0]), bits(xs[1]))
    assert np.count_nonzero(xs[0]) > 0


@pytest.mark.parametrize("kind,l1,l2", CASES)
@pytest.mark.parametrize("encoding", ["1bit", "ternary"])
def test_sparse_message_pack_equals_dense(kind, l1, l2, encoding):
    """g zero outside cols (duplicates in cols): the pass that reads x only, then patches cols, gives
    the planes (and the first non-finite element) of the pass that reads g."""
    ternary = encoding == "ternary"
    rng = np.random.default_rng([kind, int(ternary)])
    for n in LENGTHS:
        for case in ("plain", "nan_x", "inf_g", "nan_both", "empty"):
            x, g0 = inputs(n, n + 7)
            cols = rng.integers(0, n, size=max(1, n // 5)) if case != "empty" else np.zeros(0, dtype=np.int64)
            g = np.zeros(n)
            g[cols] = g0[cols]
            if case in ("nan_x", "nan_both"):
                x[rng.integers(0, n)] = np.nan
            if case in ("inf_g", "nan_both"):
                g[cols[-1]] = np.inf
            W = n_words(n) + 1
            out = []
            for sparse in (False, True):
                neg = np.full(W, np.uint64(0xDEAD), dtype=np.uint64)
                nz = np.full(W, np.uint64(0xDEAD), dtype=np.uint64) if ternary else K.NO_W
                bad = np.zeros(1)
                with np.errstate(invalid="ignore"):
                    i = K.get("sign_message_pack")(K.message_params(kind, 0.5, l1, l2), x, g, K.NO_F, False,
                                                   cols.astype(np.int64), sparse, (neg, nz, ternary, bad))
                out.append((i, bad[0], neg, nz))
            (i0, b0, n0, z0), (i1, b1, n1, z1) = out
            assert i0 == i1 and (i0 < 0 or np.array_equal(b0, b1, equal_nan=True)), (n, case)
            if i0 < 0:
                assert np.array_equal(n0, n1), (n, case)
                assert not ternary or np.array_equal(z0, z1), (n, case)


@pytest.mark.parametrize("kind,l1,l2", CASES)
@pytest.mark.parametrize("encoding", ["1bit", "ternary"])
def test_apply_message_pack_equals_apply_then_pack(kind, l1, l2, encoding):
    """The deferred step applied in the message pass (some elements applied before by apply_at_rows)
    gives the x and the planes of apply_words followed by sign_message_pack; non-finite messages are
    reported as there."""
    ternary = encoding == "ternary"
    rng = np.random.default_rng([kind, 5])
    for n in LENGTHS:
        for case in ("plain", "zeros_in_vote", "nan_x", "inf_g"):
            x, g0 = inputs(n, n + 3)
            cols = rng.integers(0, n, size=max(1, n // 4))
            g = np.zeros(n)
            g[cols] = g0[cols]
            v = rng.integers(-1, 2, size=n) if case == "zeros_in_vote" else rng.choice([-1, 1], size=n)
            W = n_words(n, 4)
            dneg = pack_bits(v < 0, np.zeros(W, dtype=np.uint64))
            dnz = pack_bits(v != 0, np.zeros(W, dtype=np.uint64)) if case == "zeros_in_vote" else K.NO_W
            if case == "nan_x":
                x[rng.integers(0, n)] = np.nan
            if case == "inf_g":
                g[cols[0]] = np.inf
            gam = 0.0371
            want_x = x.copy()
            dec = (dneg, dnz, dnz.size > 0)
            K.get("apply_words")(want_x, dec, gam, K.NO_F, False, False, K.prox_params(0.0, 0.0, 0.0))
            out = []
            for merged in (False, True):
                xx = want_x.copy() if not merged else x.copy()
                neg = np.zeros(W, dtype=np.uint64)
                nz = np.zeros(W, dtype=np.uint64) if ternary else K.NO_W
                bad = np.zeros(1)
                msg, code = K.message_params(kind, 0.5, l1, l2), (neg, nz, ternary, bad)
                with np.errstate(invalid="ignore"):
                    if merged:
                        done = np.zeros(W, dtype=np.uint64)
                        # a CSR structure whose rows 0 and 2 cover some columns: applied first, marked
                        ip = np.array([0, 2, 2, 5], dtype=np.int32)
                        ix = np.array([0, n - 1, 1, 2, 3], dtype=np.int32) % n
                        K.get("apply_at_rows")(ip, ix, np.array([0, 2, 0]), xx, dec, gam, done)
                        assert np.array_equal(bits(xx[ix]), bits(want_x[ix]))
                        i = K.get("apply_message_pack")(msg, xx, g, cols, code, dec, gam, done)
                        assert not done.any()
                    else:
                        i = K.get("sign_message_pack")(msg, xx, g, K.NO_F, False, K.NO_I, False, code)
                out.append((i, bad[0], neg, nz, xx))
            (i0, b0, n0, z0, x0), (i1, b1, n1, z1, x1) = out
            assert np.array_equal(bits(x0), bits(x1)), (n, case)
            assert i0 == i1 and (i0 < 0 or np.array_equal(b0, b1, equal_nan=True)), (n, case)
            if i0 < 0:
                assert np.array_equal(n0, n1) and (not ternary or np.array_equal(z0, z1)), (n, case)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a read-only bind mount")
def test_a_read_only_install_runs_with_and_without_a_cache_directory(tmp_path):
    """The package on a read-only filesystem (a read-only bind mount: as root, file modes alone do not
    stop writes): with NUMBA_CACHE_DIR the kernels are cached there; with no writable cache location at
    all the run still succeeds (each process compiles, one warning), for the sign and the MF kernels."""
    import subprocess
    import sys
    src = Path(K.__file__).resolve().parent.parent
    pkg = tmp_path / "ro"
    shutil.copytree(src, pkg / "mpiopt", ignore=shutil.ignore_patterns("__pycache__"))
    run = tmp_path / "run"
    run.mkdir()
    argv = [sys.executable, "-m", "mpiopt.run", "signprox", "--problem", "logistic", "--set", "solver.max_iter=3",
            "problem.n_samples=200", "problem.n_features=300", "problem.density=0.05", "problem.reference=no",
            "run.progress=none"]
    for case in ("cache_dir", "no_cache"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
        env.update(PYTHONPATH=str(pkg), HOME=str(pkg), XDG_CACHE_HOME=str(pkg / "cache"))
        if case == "cache_dir":
            env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba")
        cmd = " ".join(["mount --bind {0} {0} && mount -o remount,bind,ro {0} &&".format(pkg),
                        *argv, "--out", str(run / f"{case}.h5")])
        p = subprocess.run(["unshare", "-m", "sh", "-c", cmd], env=env, cwd=run, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        assert (run / f"{case}.h5").exists()
        assert not (pkg / "mpiopt" / "__pycache__").exists()          # nothing written into the package
        if case == "cache_dir":
            assert any(f.name.startswith("sign.") for f in (tmp_path / "numba").rglob("*.nbi"))
        else:
            assert "no writable cache directory" in p.stderr
    # the MF kernels (decorated when their modules are imported) fall back the same way
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(PYTHONPATH=str(pkg), HOME=str(pkg), XDG_CACHE_HOME=str(pkg / "cache"))
    mf = [sys.executable, "-m", "mpiopt.run", "hamsi", "--problem", "synthetic_mf", "--set", "solver.max_epochs=1",
          "problem.n_ratings=2000", "run.progress=none", "--out", str(run / "mf.h5")]
    cmd = " ".join(["mount --bind {0} {0} && mount -o remount,bind,ro {0} &&".format(pkg), *mf])
    p = subprocess.run(["unshare", "-m", "sh", "-c", cmd], env=env, cwd=run, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (run / "mf.h5").exists() and "no writable cache directory" in p.stderr
    assert not (pkg / "mpiopt" / "__pycache__").exists()
