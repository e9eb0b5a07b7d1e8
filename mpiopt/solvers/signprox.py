"""``signprox``: one-bit proximal stochastic optimisation with majority-voted packed signs
(Xu and Kamilov, ICASSP 2019), distributed over ranks that each hold a data shard.

    x_0 identical on all ranks
    for t = 0, 1, ..., T-1:
        gam = gamma(t)
        g_p = minibatch gradient of the smooth part on rank p's shard
        m_p = x - prox_{gam r}(x - gam g_p)          # scaled gradient mapping, never sent
        e_p = sign code of m_p (1-bit or ternary), packed 8 per byte
        v   = vote(e_1..e_P) in {-1, 0, +1}^n         # identical on every rank
        x  -= gam * v                                 # same op on same bytes: replicas identical
    return polish(x)

With one rank this is the single-node SignProx rule x <- x - gam * sgn(G(x)). The loop is
:class:`~mpiopt.solvers.sign_vote.SignVoteSolver`; this module supplies the message.
"""
from __future__ import annotations

import numpy as np

from ..kernels import MSG_MAPPING, MSG_MAPPING_L1
from ..options import Option
from ..prox import ElasticNet, elastic_net_weights, gradient_mapping, n_components, prox_component
from ..registry import register_solver
from .prox_sgd import DEMO_PROBLEM
from .sign_vote import SignVoteSolver, sign_options


@register_solver("signprox")
class SignProx(SignVoteSolver):
    summary = ("SignProx: sign of the proximal gradient mapping, 1 bit per element, "
               "majority vote over ranks on packed words")
    demo_settings = {"solver.max_iter": 500, "solver.step0": 0.1, **DEMO_PROBLEM}
    options = sign_options(polish="band") + (
        Option("randomness", "minibatch", "where the noise comes from: minibatch (minibatch gradient of the smooth "
               "part, exact prox) or sampled_prox (exact gradient of the rank's data, prox averaged over "
               "prox_samples sampled components of r = (1/K) sum_k r_k; TV has K = 2 (1-D) or 4 (2-D), other "
               "regularisers K = 1, i.e. the exact prox)", str, choices=("minibatch", "sampled_prox")),
        Option("prox_samples", 1, "sampled_prox: components drawn per iteration and rank (with replacement)",
               int, low=1),
    )

    @classmethod
    def memory_estimate(cls, problem_cls, cfg, n_ranks):
        """The minibatch and the prox_samples component draws of an iteration."""
        batch, what = super().memory_estimate(problem_cls, cfg, n_ranks)
        return batch + 8.0 * cfg["solver"]["prox_samples"], f"{what}, solver.prox_samples={cfg['solver']['prox_samples']}"

    def __init__(self, problem, options, ctx):
        self.sampled = options["randomness"] == "sampled_prox"
        self.K = n_components(problem.regularizer) if self.sampled else 1
        super().__init__(problem, options, ctx)

    def batch_grad_kernels(self) -> list:
        return [] if self.sampled else super().batch_grad_kernels()

    def local_gradient(self) -> np.ndarray:
        if not self.sampled:
            return super().local_gradient()
        p, g = self.problem, self.g          # exact gradient of this rank's part of the smooth term
        if p.n_local:
            p.local_loss_grad(self.x, None, grad_out=g)
            g /= p.n_local
        else:
            g[:] = 0.0
        return g

    def message(self, x: np.ndarray, g: np.ndarray, gam: float, out: np.ndarray,
                work: np.ndarray) -> np.ndarray:
        """m = x - prox_{gam r}(x - gam g): the scaled proximal gradient mapping; with sampled prox
        components m = x - (1/B) sum_b prox_{gam r_kb}(x - gam g)."""
        reg = self.problem.regularizer
        if self.K == 1:
            return gradient_mapping(reg, x, g, gam, out, work)
        B = self.opts["prox_samples"]
        np.multiply(g, -gam, out=work)
        work += x                                            # u = x - gam g
        out[:] = 0.0
        comp = np.empty_like(work)
        for k in self.streams.rng.integers(0, self.K, size=B):
            out += prox_component(reg, work, gam, int(k), out=comp)
        out /= B
        np.subtract(x, out, out=out)
        return out

    def message_elementwise(self) -> bool:
        return self.K == 1 and bool(self.problem.regularizer.elementwise)

    def message_kernel(self):
        """The compiled mapping: elastic net / L1 / zero regularisers (the float operations of
        :func:`mpiopt.prox.gradient_mapping`: the fused L1 form when l2 = 0, else the generic order)."""
        reg = self.problem.regularizer
        w = elastic_net_weights(reg)
        if w is None:
            return None
        fused_l1 = isinstance(reg, ElasticNet) and w[1] == 0
        return (MSG_MAPPING_L1 if fused_l1 else MSG_MAPPING, *w)
