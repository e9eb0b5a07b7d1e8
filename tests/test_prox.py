"""Every proximal operator of mpiopt.prox against its definition argmin_u t*r(u) + 0.5||u - v||^2."""
import itertools

import numpy as np
import pytest
from scipy.optimize import minimize

from mpiopt import prox as P
from mpiopt.errors import InputError

RNG = np.random.default_rng(0)


def prox_objective(r, v, t):
    return lambda u: t * r.value(u) + 0.5 * float(np.sum((u - v) ** 2))


def brute_force(r, v, t, constraints=None, bounds=None):
    """Minimise the prox objective with scipy from several starts (small n only)."""
    f = prox_objective(r, v, t)
    best = None
    for start in (v, np.zeros_like(v), v * 0.5):
        if constraints is not None or bounds is not None:
            res = minimize(lambda u: 0.5 * np.sum((u - v) ** 2) + t * _smooth_part(r, u),
                           start, method="SLSQP", constraints=constraints or (), bounds=bounds,
                           options={"ftol": 1e-14, "maxiter": 1000})
        else:
            res = minimize(f, start, method="Powell", options={"xtol": 1e-12, "ftol": 1e-15, "maxiter": 100000})
        if best is None or res.fun < best.fun:
            best = res
    return best.x


def _smooth_part(r, u):
    return r.l1 * np.abs(u).sum() if isinstance(r, P.Box) else 0.0


def check_is_minimiser(r, v, t, u, tol=1e-7):
    """u attains the prox objective's minimum: no brute-force or random perturbation does better."""
    f = prox_objective(r, v, t)
    fu = f(u)
    assert np.isfinite(fu)
    for _ in range(200):
        w = u + RNG.normal(scale=10 ** RNG.uniform(-6, 0), size=u.size)
        assert f(w) >= fu - tol, "a random perturbation improves on the prox"
    return fu


@pytest.mark.parametrize("t", [0.3, 1.7])
def test_separable_operators_match_brute_force(t):
    v = RNG.normal(size=7) * 2
    w = np.array([0.0, 1.0, 2.0, 0.5, 1.0, 0.0, 3.0])
    for r in (P.L1(0.8), P.ElasticNet(0.5, 0.7), P.WeightedL1(0.6, w), P.L2Norm(0.9), P.GroupLasso(0.5, [0, 0, 1, 1, 1, 2, 2]),
              P.Zero()):
        u = r.prox(v, t)
        ref = brute_force(r, v, t)
        assert prox_objective(r, v, t)(u) <= prox_objective(r, v, t)(ref) + 1e-9, r
        assert np.allclose(u, ref, atol=1e-5), r
        check_is_minimiser(r, v, t, u)


def test_soft_threshold_and_in_place():
    v = np.array([-3.0, -0.5, 0.0, 0.2, 2.0])
    assert np.array_equal(P.soft_threshold(v, 1.0), [-2.0, 0.0, 0.0, 0.0, 1.0])
    x = v.copy()
    out = P.L1(1.0).prox(x, 1.0, out=x)
    assert out is x and np.array_equal(x, [-2.0, 0.0, 0.0, 0.0, 1.0])
    assert P.L1(1.0).prox(v.astype(np.float32), 1.0).dtype == np.float32


def test_moreau_identity_l1_and_l2():
    # v = prox_{t r}(v) + t prox_{r*/t}(v/t); r* of lam||.||_1 is the indicator of the inf-ball of
    # radius lam, of lam||.||_2 the indicator of the 2-ball of radius lam (prox = projection).
    v, t, lam = RNG.normal(size=50) * 3, 0.7, 1.3
    assert np.allclose(P.L1(lam).prox(v, t) + t * np.clip(v / t, -lam, lam), v)
    assert np.allclose(P.L2Norm(lam).prox(v, t) + t * P.L2Ball(lam).prox(v / t, 1.0), v)


def test_box_and_nonnegative_match_constrained_solver():
    v = RNG.normal(size=6) * 2
    for r, bounds in ((P.Box(-0.5, 0.8), [(-0.5, 0.8)] * 6), (P.NonNegative(0.4), [(0, None)] * 6),
                      (P.NonNegative(), [(0, None)] * 6)):
        u = r.prox(v, 0.9)
        ref = brute_force(r, v, 0.9, bounds=bounds)
        assert np.allclose(u, ref, atol=1e-6), r
    assert np.array_equal(P.NonNegative(0.4).prox(v, 0.5), np.maximum(v - 0.2, 0))
    assert P.Box(0, 1).value(np.array([0.5, 2.0])) == np.inf


def test_l2_ball_simplex_l1_ball_are_projections():
    v = RNG.normal(size=5) * 3
    cases = (
        (P.L2Ball(1.2), [{"type": "ineq", "fun": lambda u: 1.2 ** 2 - u @ u}], None),
        (P.Simplex(2.0), [{"type": "eq", "fun": lambda u: u.sum() - 2.0}], [(0, None)] * 5),
    )
    for r, cons, bounds in cases:
        u = r.prox(v, 1.0)
        assert r.value(u) == 0.0
        ref = brute_force(r, v, 1.0, constraints=cons, bounds=bounds)
        assert np.allclose(u, ref, atol=1e-5), r
    # l1 ball: split u = a - b, a, b >= 0, sum(a + b) <= radius
    r = P.L1Ball(1.5)
    u = r.prox(v, 1.0)
    res = minimize(lambda z: 0.5 * np.sum((z[:5] - z[5:] - v) ** 2), np.zeros(10), method="SLSQP",
                   bounds=[(0, None)] * 10, constraints=[{"type": "ineq", "fun": lambda z: 1.5 - z.sum()}],
                   options={"ftol": 1e-14, "maxiter": 1000})
    assert np.allclose(u, res.x[:5] - res.x[5:], atol=1e-5)
    inside = v / (np.abs(v).sum() * 2)
    assert np.array_equal(r.prox(inside, 1.0), inside)


def test_simplex_projection_optimality_many_sizes():
    for n in (1, 2, 10, 333):
        v = RNG.normal(size=n) * 5
        u = P.project_simplex(v, 1.0)
        assert u.min() >= 0 and abs(u.sum() - 1) < 1e-12
        # KKT: u_i = max(v_i - theta, 0) with one theta for the support
        theta = (v - u)[u > 0]
        assert np.ptp(theta) < 1e-12 and ((v - theta[0])[u == 0] <= 1e-12).all()


def test_l0_hard_threshold_by_enumeration():
    v = np.array([0.3, -1.2, 0.9, -0.05, 2.0])
    t, lam = 0.6, 0.5
    r = P.L0(lam)
    best = min((prox_objective(r, v, t)(np.where(np.array(mask), v, 0.0)), mask)
               for mask in itertools.product([0, 1], repeat=v.size))
    u = r.prox(v, t)
    assert np.array_equal(u != 0, np.array(best[1], dtype=bool))
    assert prox_objective(r, v, t)(u) == pytest.approx(best[0])


def _tv_dual_reference(v2d, lam):
    """prox of lam*TV through its dual box QP min_{|z| <= lam} 0.5||v - D^T z||^2, L-BFGS-B."""
    shape = v2d.shape
    n = v2d.size
    idx = np.arange(n).reshape(shape)
    if len(shape) == 1:
        pairs = list(zip(idx[:-1], idx[1:]))
    else:
        pairs = list(zip(idx[:-1, :].ravel(), idx[1:, :].ravel())) + list(zip(idx[:, :-1].ravel(), idx[:, 1:].ravel()))
    D = np.zeros((len(pairs), n))
    for k, (a, b) in enumerate(pairs):
        D[k, a], D[k, b] = -1.0, 1.0
    v = v2d.ravel()
    if not pairs:
        return v2d.copy()

    def fg(z):
        u = v - D.T @ z
        return 0.5 * float(u @ u), -(D @ u)
    res = minimize(fg, np.zeros(len(pairs)), jac=True, method="L-BFGS-B", bounds=[(-lam, lam)] * len(pairs),
                   options={"ftol": 1e-16, "gtol": 1e-12, "maxiter": 20000})
    return (v - D.T @ res.x).reshape(shape)


def test_tv1d_exact_against_dual_qp():
    for n in (1, 2, 3, 10, 57):
        for lam in (0.05, 0.7, 5.0):
            v = np.cumsum(RNG.normal(size=n)) + RNG.normal(size=n)
            u = P.prox_tv1d(v, lam)
            assert np.allclose(u, _tv_dual_reference(v, lam), atol=1e-6), (n, lam)
            r = P.TotalVariation(lam, (n,))
            assert np.allclose(r.prox(v, 1.0), u)


def test_tv2d_fgp_against_dual_qp():
    v = RNG.normal(size=(6, 7))
    v[:3, :4] += 2.0
    for lam in (0.1, 0.5):
        u = P.prox_tv2d(v, lam, n_iter=3000)
        ref = _tv_dual_reference(v, lam)
        assert np.abs(u - ref).max() < 1e-4
        r = P.TotalVariation(lam, v.shape, n_iter=3000)
        assert np.allclose(r.prox(v.ravel(), 1.0), u.ravel())
        assert r.value(u.ravel()) == pytest.approx(lam * P.tv2d(u))


@pytest.mark.parametrize("name", ["l1", "elastic_net", "zero", "group_lasso"])
def test_prox_step_equals_whole_vector_update(name):
    """x <- prox(x - t d) block by block (elementwise prox) is bit-identical to the plain update."""
    from mpiopt.kernels import BLOCK

    rng = np.random.default_rng(5)
    n = 2 * BLOCK + 15
    reg = {"l1": P.L1(0.3), "elastic_net": P.ElasticNet(0.2, 0.5), "zero": P.Zero(),
           "group_lasso": P.GroupLasso(0.4, np.arange(n) // 7)}[name]
    x = rng.standard_normal(n)
    d = rng.standard_normal(n).astype(np.float32)        # the fp32 wire buffer
    t = 0.37
    want = reg.prox(x - t * d.astype(np.float64), t)
    got = P.prox_step(reg, x.copy(), d, t, np.empty(n))
    assert np.array_equal(got, want)


@pytest.mark.parametrize("shape", [(9,), (10,), (5, 6), (6, 5)])
def test_tv_components_average_to_tv_and_have_exact_pair_prox(shape):
    """r = (1/K) sum_k r_k, and prox_{t r_k} is the exact 2-element TV prox on every pair of set k
    (elements in no pair of the set are left alone)."""
    from mpiopt.prox import TotalVariation, n_components, prox_tv1d
    r = TotalVariation(0.3, shape)
    K = n_components(r)
    assert K == (2 if len(shape) == 1 else 4)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(int(np.prod(shape)))
    assert np.mean([r.component_value(x, k) for k in range(K)]) == pytest.approx(r.value(x), rel=1e-12)
    t = 0.1
    for k in range(K):
        u = r.prox_component(x, t, k)
        a, b = r._pairs(x.reshape(shape), k)
        ua, ub = r._pairs(u.reshape(shape), k)
        for va, vb, pa, pb in zip(np.ravel(a), np.ravel(b), np.ravel(ua), np.ravel(ub)):
            assert np.allclose([pa, pb], prox_tv1d(np.array([va, vb]), t * K * 0.3), atol=1e-14)
        touched = np.zeros(shape, dtype=bool)
        ta, tb = r._pairs(touched, k)
        ta[...] = True
        tb[...] = True
        assert np.array_equal(u[~touched.ravel()], x[~touched.ravel()])


# -- the Regularizer contract and the registry ----------------------------------------------------------
class _Recorder:
    """ReferenceSolvers that records which solver a regulariser asks for (and with what)."""

    n_vars = 6

    def __init__(self):
        self.calls = []

    def split_l1(self, lam, l2=0.0, nonneg=False):
        self.calls.append(("split", np.asarray(lam).tolist(), l2, nonneg))
        return 0.0, np.zeros(self.n_vars)

    def prox_gradient(self, reg, l2=0.0):
        self.calls.append(("prox_gradient", type(reg).__name__, l2))
        return 0.0, np.zeros(self.n_vars)


def test_registered_regularizers_build_from_problem_options_and_pick_their_reference():
    from mpiopt.protocols import ReferenceSolvers, Regularizer
    from mpiopt.registry import REGULARIZERS, get_regularizer
    assert list(REGULARIZERS)[:5] == ["elastic_net", "weighted_l1", "nonneg_l1", "group_lasso", "l0"]
    opts = {"l1": 0.5, "l2": 0.0, "weights": None, "group_size": 2}
    want = {"elastic_net": ("split", [0.5] * 6, 0.0, False),
            "weighted_l1": ("split", [0.0] + [0.5] * 5, 0.0, False),
            "nonneg_l1": ("split", [0.5] * 6, 0.0, True),
            "group_lasso": ("prox_gradient", "GroupLasso", 0.0)}
    assert isinstance(_Recorder(), ReferenceSolvers)
    for name in ("elastic_net", "weighted_l1", "nonneg_l1", "group_lasso", "l0"):
        reg = get_regularizer(name).from_options(opts, 6)
        assert isinstance(reg, Regularizer) and reg.reg_name == name
        ref = _Recorder()
        got = reg.reference_optimum(ref)
        assert ref.calls == ([want[name]] if name in want else []) and (got is None) == (name == "l0")
    for name in ("nonneg_l1", "group_lasso", "l0"):
        with pytest.raises(InputError, match=f"problem.l2: not supported with problem.reg={name}"):
            get_regularizer(name).from_options({**opts, "l2": 0.1}, 6)
    with pytest.raises(InputError, match="unknown regularizer 'nope'"):
        get_regularizer("nope")


def test_default_hooks_of_the_base_and_of_a_duck_typed_regularizer():
    class Plain:                                   # value and prox only, no base class
        def value(self, x):
            return float(np.abs(x).sum())

        def prox(self, v, t, out=None):
            return P.soft_threshold(v, t, out)

    rng = np.random.default_rng(3)
    x, g = rng.normal(size=40), rng.normal(size=40)
    reg = P.as_regularizer(Plain())
    assert (reg.elementwise, reg.convex, P.n_components(Plain())) == (False, False, 1)
    assert reg.reference_optimum(_Recorder()) is None
    want = x - P.L1(1.0).prox(x - 0.3 * g, 0.3)
    for r in (Plain(), P.L1(1.0)):
        got = P.gradient_mapping(r, x, g, 0.3, np.empty(40), np.empty(40))
        assert np.allclose(got, want, rtol=0, atol=1e-15)
    assert np.array_equal(P.prox_component(Plain(), x, 0.3, 0), P.L1(1.0).prox(x, 0.3))
    assert P.as_regularizer(P.L1(1.0)).__class__ is P.L1
