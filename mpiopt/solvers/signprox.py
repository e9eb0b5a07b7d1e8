"""``signprox``: one-bit proximal stochastic optimisation with majority-voted packed signs
(Xu and Kamilov, ICASSP 2019; distributed form of spec signprox.md sec. 3).

    x_0 identical on all ranks; each rank p holds a data shard
    for t = 0, 1, ..., T-1:
        gam = gamma(t)
        g_p = minibatch gradient of the smooth part on rank p's shard
        m_p = x - prox_{gam r}(x - gam g_p)          # scaled gradient mapping, never sent
        e_p = sign code of m_p (1-bit or ternary), packed 8 per byte
        v   = vote(e_1..e_P) in {-1, 0, +1}^n         # identical on every rank
        x  -= gam * v                                 # same op on same bytes: replicas identical
    return polish(x)

With one rank this is the single-node SignProx rule x <- x - gam * sgn(G(x)).
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from .. import options as O
from .. import result as R
from ..comm.signs import AGGREGATORS, ENCODINGS, TIE_RULES, SignAggregator, replicas_identical, sign_bytes
from ..errors import CheckpointError, InputError
from ..options import Option
from ..prox import gradient_mapping
from ..problems.base import CompositeProblem
from ..registry import register_solver
from .base import Solver


def sign_step_size(step0: float, t: int, schedule: str, horizon: int) -> float:
    """gamma(t): ``sqrt`` step0/sqrt(t+1); ``const`` step0; ``theory`` step0/sqrt(T) (T = horizon)."""
    if schedule == "sqrt":
        return step0 / math.sqrt(t + 1)
    if schedule == "theory":
        return step0 / math.sqrt(max(1, horizon))
    return step0


SIGN_OPTIONS: tuple[Option, ...] = (
    O.max_iter(1000),
    O.step0(0.05, "gamma0: every coordinate moves by gamma per step, so it sets the accuracy scale"),
    O.batch_size(64),
    Option("schedule", "sqrt", "step schedule: sqrt (gamma0/sqrt(t+1)), const (gamma0), theory "
           "(gamma0/sqrt(T) with batch growing with T, see theory_batch)", str, choices=("sqrt", "const", "theory")),
    Option("theory_batch", 1.0, "theory schedule: batch per rank = max(batch_size, ceil(theory_batch * T))",
           float, low=0.0, low_open=True),
    Option("encoding", "1bit", "sign code: 1bit (0.125 B/element) or ternary (sign + nonzero planes, 0.25 B/element)",
           str, choices=ENCODINGS),
    Option("aggregator", "auto", "vote: allgather (every rank counts), twophase (Alltoall + Allgather), "
           "int8_allreduce; auto = allgather up to 16 ranks, twophase above", str, choices=("auto", *AGGREGATORS)),
    Option("tie", "zero", "vote ties: zero (no move), plus (+1), shared_random (counter-based random sign)",
           str, choices=TIE_RULES),
    Option("error_feedback", False, "add the compression error of the last message to the next one "
           "(EF memory per rank, kept in checkpoints)", bool),
    Option("polish", "band", "final polish: none, prox (x <- prox_{gamma_T r}(x)) or band (zero |x_i| <= gamma_T)",
           str, choices=("none", "prox", "band")),
    Option("mapping_norm", True, "record ||G(x)||_1 of the full-batch uncompressed mapping at history rows", bool),
    Option("check_every", 100, "with run.debug: verify every N iterations that the replicas are "
           "bit-identical (Allgather of a hash)", int, low=1),
)


@register_solver("signprox")
class SignProx(Solver):
    summary = ("SignProx: sign of the proximal gradient mapping, 1 bit per element, "
               "majority vote over ranks on packed words")
    problem_kind = CompositeProblem
    default_problem = "logistic"
    demo_settings = {"solver.max_iter": 500, "solver.step0": 0.1, "problem.n_samples": 20000,
                     "problem.n_features": 1000, "problem.density": 0.05, "problem.support": 0.05,
                     "problem.l1": 2e-3}
    options = SIGN_OPTIONS

    # -- the algorithm's two hooks (baselines override them) --------------------------------------
    def message(self, x: np.ndarray, g: np.ndarray, gam: float, out: np.ndarray,
                work: np.ndarray) -> np.ndarray:
        """The vector whose signs are sent: m = x - prox_{gam r}(x - gam g) (``work``: scratch like out)."""
        return gradient_mapping(self.problem.regularizer, x, g, gam, out, work)

    def message_elementwise(self) -> bool:
        """True if message() may be computed on slices (then it is made and packed block by block)."""
        return bool(getattr(self.problem.regularizer, "elementwise", False))

    def after_vote(self, x: np.ndarray, gam: float) -> None:
        """Local step after x -= gam * v (none for SignProx)."""

    # -- setup ---------------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: dict[str, dict[str, Any]], n_ranks: int) -> None:
        s = cfg["solver"]
        if s["aggregator"] == "int8_allreduce" and n_ranks > 127:
            raise InputError(f"solver.aggregator=int8_allreduce: at most 127 ranks (got {n_ranks})")

    def __init__(self, problem, options, ctx):
        super().__init__(problem, options, ctx)
        p, o, comm = problem, options, self.comm
        self.x = p.x0()
        self.n = p.n_vars
        self.t = 0
        self.seed = int(ctx.cfg.get("seed", 0))
        self.rng = np.random.default_rng([self.seed, comm.rank, 0x5169])
        method = o["aggregator"]
        if method == "auto":
            method = "allgather" if comm.size <= 16 else "twophase"
        self.method = method
        self.agg = SignAggregator(comm, self.n, o["encoding"], method, o["tie"], self.seed, self.x.dtype)
        self.g = np.empty(self.n)
        self.ef = np.zeros(self.n) if o["error_feedback"] else None
        # the message is made, checked and packed in cache-sized blocks unless it needs the whole
        # vector (non-separable prox, error feedback, int8 codes)
        self.blockwise = self.ef is None and method != "int8_allreduce" and self.message_elementwise()
        self.m = None if self.blockwise else np.empty(self.n)
        self.work = None if self.blockwise else np.empty(self.n)
        T = o["max_iter"]
        self.batch = (max(o["batch_size"], math.ceil(o["theory_batch"] * T)) if o["schedule"] == "theory"
                      else o["batch_size"])
        self.debug = bool(ctx.cfg.get("debug", False))

    def gamma(self, t: int) -> float:
        o = self.opts
        return sign_step_size(o["step0"], t, o["schedule"], o["max_iter"])

    # -- main loop ----------------------------------------------------------------------------------
    def solve(self, callback=None) -> R.OptimizeResult:
        p, o, comm, ctx, agg = self.problem, self.opts, self.comm, self.ctx, self.agg
        self._callback = callback
        T = o["max_iter"]
        ctx.setup_schedule(T, default_history_every=max(1, T // 50))
        x, g, m = self.x, self.g, self.m
        status, msg = R.MAX_ITER, f"reached max_iter={T}"
        if self.t == 0:
            self._notify(0)
        while self.t < T:
            gam = self.gamma(self.t)
            if p.n_local:
                p.batch_grad(x, self.rng.integers(0, p.n_local, size=self.batch), out=g)
            else:
                g[:] = 0.0
            if self.blockwise:
                agg.encode_blocks(lambda lo, hi, out, work: self.message(x[lo:hi], g[lo:hi], gam, out, work))
            else:
                self.message(x, g, gam, m, self.work)
                if self.ef is not None:
                    m += self.ef
                agg.encode(m)
            if self.ef is not None:   # memory = what the scaled sign (||m||_1/k) sgn(m) leaves out
                k = max(1, agg.own_nonzeros())
                np.subtract(m, agg.own_deltas(float(np.abs(m).sum()) / k), out=self.ef)
            agg.aggregate(self.t)
            agg.apply(x, gam)
            self.after_vote(x, gam)
            self.t += 1
            if self.debug and self.t % o["check_every"] == 0 and not replicas_identical(comm, x):
                raise RuntimeError(f"replicas differ at iteration {self.t}")
            if ctx.due(self.t, T):
                self._notify(self.t)
            stop = self.poll(self.t)
            if stop is not None:
                status, msg = stop, R.stop_message(stop)
                break
        ctx.close_progress()
        if self.debug and not replicas_identical(comm, x):
            raise RuntimeError(f"replicas differ at the end (iteration {self.t})")
        xp = self.polished(x)
        fun = p.objective(xp)
        fun_raw = p.objective(x)
        fstar = p.reference_objective
        return R.make_result(
            xp, fun, self.t, status, msg, x_raw=x.copy(), fun_raw=fun_raw,
            solution={"x": xp, "x_raw": x.copy()},
            nnz=int(np.count_nonzero(xp)), nnz_raw=int(np.count_nonzero(x)),
            bytes_sent=sign_bytes(comm), bytes_sent_all=comm.stats.bytes_sent, bytes_per_iteration=agg.last_bytes,
            payload_bytes_per_element=agg.payload_bytes / max(1, self.n), aggregator=self.method,
            mapping_norm_l1=self.mapping_norm(x), reference_objective=fstar,
            gap=None if fstar is None else fun - fstar,
            **(p.metrics(xp) if hasattr(p, "metrics") else {}))

    # -- outputs ------------------------------------------------------------------------------------
    def polished(self, x: np.ndarray) -> np.ndarray:
        """The reported solution: polish(x) with gamma_T = gamma of the last iteration."""
        mode = self.opts["polish"]
        gam = self.gamma(max(0, self.t - 1))
        if mode == "prox":
            return self.problem.regularizer.prox(x.copy(), gam)
        out = x.copy()
        if mode == "band":
            out[np.abs(out) <= gam] = 0.0
        return out

    def mapping_norm(self, x: np.ndarray) -> float:
        """Collective: ||G(x)||_1 = ||x - prox_{gam r}(x - gam grad d(x))||_1 / gam, full batch."""
        gam = self.gamma(max(0, self.t - 1))
        _, g = self.problem.full_grad(x)
        u = self.problem.regularizer.prox(x - gam * g, gam)
        return float(np.abs(x - u).sum() / gam)

    def _notify(self, it: int) -> None:
        p, fstar = self.problem, self.problem.reference_objective
        f = p.objective(self.x)
        vals: dict[str, float] = {"bytes_sent": sign_bytes(self.comm), "bytes_iter": self.agg.last_bytes,
                                  "nnz": np.count_nonzero(self.x), "step": self.gamma(max(0, it - 1))}
        if fstar is not None:
            vals["gap"] = f - fstar
        if self.opts["polish"] != "none":
            xp = self.polished(self.x)
            fp = p.objective(xp)
            vals["objective_polished"] = fp
            vals["nnz_polished"] = np.count_nonzero(xp)
            if fstar is not None:
                vals["gap_polished"] = fp - fstar
        if self.opts["mapping_norm"]:
            vals["mapping_norm_l1"] = self.mapping_norm(self.x)
        metrics = getattr(p, "metrics", None)   # optional problem-specific values (e.g. PSNR)
        if metrics is not None:
            vals.update(metrics(self.x))
        self.notify(it, self.x, f, **vals)

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        rngs = self.comm.gather_obj(json.dumps(self.rng.bit_generator.state))
        ef = self.comm.gatherv_rows(self.ef[None, :]) if self.ef is not None else None
        if self.comm.rank != 0:
            return None
        state = {"x": self.x.copy(), "t": self.t, "rng": rngs, "n_ranks": self.comm.size}
        if ef is not None:
            state["error_feedback"] = ef
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        x = np.asarray(state["x"], dtype=np.float64)
        if x.shape != self.x.shape:
            raise CheckpointError(f"checkpoint x has {x.size} variables, problem has {self.x.size}")
        self.x[:] = x
        self.t = int(state["t"])
        same = int(state["n_ranks"]) == self.comm.size
        if same:
            self.rng.bit_generator.state = json.loads(state["rng"][self.comm.rank])
        else:  # another rank count: fresh streams keyed by the iteration
            self.rng = np.random.default_rng([self.seed, self.comm.rank, 0x5169, self.t])
        if self.ef is not None:
            ef = state.get("error_feedback")
            if ef is not None and same:
                self.ef[:] = np.asarray(ef)[self.comm.rank]
            else:  # memory of another rank layout cannot be split: restart it
                self.ef[:] = 0.0
