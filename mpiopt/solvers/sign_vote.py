"""``SignVoteSolver``: what SignProx and its sign baselines share.

Every rank makes a message from its minibatch gradient, sends only its packed signs, and applies
the majority vote of all ranks' signs as a step of size gamma; the replicas stay bit-identical
because every rank applies the same float operations to the same bytes. The solvers differ only
in the message (and, for one baseline, a local step after the vote).
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from .. import options as O
from .. import result as R
from .. import kernels as K
from ..comm.signs import replicas_identical, sign_bytes
from ..errors import CheckpointError, InputError
from ..options import Option
from ..problems.base import CompositeProblem
from ..rng import RankStreams
from .base import Solver, Stop, minibatch_estimate
from .sign_engine import AGGREGATORS, ENCODINGS, TIE_RULES, SignAggregator, apply_encode_warmers, n_words


def sign_step_size(step0: float, t: int, schedule: str, horizon: int) -> float:
    """gamma(t): ``sqrt`` step0/sqrt(t+1); ``const`` step0; ``heuristic`` (old name ``theory``)
    step0/sqrt(T) (T = horizon)."""
    if schedule == "sqrt":
        return step0 / math.sqrt(t + 1)
    if schedule in ("heuristic", "theory"):
        return step0 / math.sqrt(max(1, horizon))
    return step0


def batch_per_rank(o: dict[str, Any]) -> int:
    """Minibatch per rank: batch_size, or with the heuristic schedule max(batch_size, ceil(c T))."""
    grow = o["theory_batch"] if o["theory_batch"] is not None else o["heuristic_batch"]
    if o["schedule"] in ("heuristic", "theory"):
        return max(o["batch_size"], math.ceil(grow * o["max_iter"]))
    return o["batch_size"]


def batch_estimate(cfg: dict[str, dict[str, Any]]) -> tuple[float, str]:
    """Memory of the minibatch per rank (:func:`batch_per_rank`) and the settings that set it."""
    o = cfg["solver"]
    keys = ("batch_size", "max_iter") if o["schedule"] in ("heuristic", "theory") else ("batch_size",)
    return minibatch_estimate(cfg, batch_per_rank(o), *keys)


def mapping_norm_l1(problem: CompositeProblem, x: np.ndarray, gam: float) -> float:
    """Collective: ||G(x)||_1 = ||x - prox_{gam r}(x - gam grad d(x))||_1 / gam, full batch."""
    _, g = problem.full_grad(x)
    u = problem.regularizer.prox(x - gam * g, gam)
    return float(np.abs(x - u).sum() / gam)


def check_replicas(comm: Any, x: np.ndarray, where: str) -> None:
    """Collective (debug runs): raise RuntimeError naming ``where`` unless every rank holds the same ``x``."""
    if not replicas_identical(comm, x):
        raise RuntimeError(f"replicas differ at {where}")


def polish(x: np.ndarray, mode: str, gam: float, regularizer: Any) -> np.ndarray:
    """A copy of ``x`` polished by ``mode``: ``prox`` (the regularizer's prox with step ``gam``),
    ``band`` (entries with ``|x_i| <= gam`` set to 0) or ``none``."""
    if mode == "prox":
        return regularizer.prox(x.copy(), gam)
    out = x.copy()
    if mode == "band":
        out[np.abs(out) <= gam] = 0.0
    return out


def sign_options(polish: str = "band") -> tuple[Option, ...]:
    """The options every sign-vote solver has (``polish``: its default final polish)."""
    return (
        O.max_iter(1000),
        O.step0(0.05, "gamma0: every coordinate moves by gamma per step, so it sets the accuracy scale"),
        O.batch_size(64),
        Option("schedule", "sqrt", "step schedule: sqrt (gamma0/sqrt(t+1)), const (gamma0), heuristic "
               "(gamma0/sqrt(T) with the batch growing with T, see heuristic_batch; not derived from the "
               "problem's constants; 'theory' is an old name for it)", str,
               choices=("sqrt", "const", "heuristic", "theory")),
        Option("heuristic_batch", 1.0, "heuristic schedule: batch per rank = max(batch_size, "
               "ceil(heuristic_batch * T))", float, low=0.0, low_open=True),
        Option("theory_batch", None, "old name of heuristic_batch (overrides it when set)", float, low=0.0,
               low_open=True, nullable=True),
        Option("encoding", "1bit", "sign code: 1bit (0.125 B/element) or ternary (sign + nonzero planes, "
               "0.25 B/element)", str, choices=ENCODINGS),
        Option("aggregator", "auto", "vote: allgather (every rank counts), twophase (Alltoall + Allgather), "
               "int8_allreduce; auto = allgather up to 16 ranks, twophase above", str,
               choices=("auto", *AGGREGATORS)),
        Option("tie", "zero", "vote ties: zero (no move), plus (+1), shared_random (counter-based random sign)",
               str, choices=TIE_RULES),
        Option("error_feedback", False, "send the signs of p = message + memory and keep in the memory what "
               "the applied step left out, p - step * vote (memory per rank, kept in checkpoints)", bool),
        Option("ef_step", "gamma", "with error_feedback, the size of the applied step: gamma (every coordinate "
               "moves gamma) or mean_l1 (the mean over ranks of ||p||_1 / (nonzero codes), the scaled sign "
               "of EF-signSGD; one scalar Allgather per iteration)", str, choices=("gamma", "mean_l1")),
        Option("polish", polish, "final polish: none, prox (x <- prox_{gamma_T r}(x)) or band "
               "(zero |x_i| <= gamma_T)", str, choices=("none", "prox", "band")),
        Option("mapping_norm", True, "record ||G(x)||_1 of the full-batch uncompressed mapping at history rows",
               bool),
        Option("check_every", 100, "with run.debug: verify every N iterations that the replicas are "
               "bit-identical (Allgather of a hash)", int, low=1),
    )


class SignVoteSolver(Solver):
    """Base of the sign-vote solvers. Subclasses implement :meth:`message` and may override
    :meth:`message_elementwise` and :meth:`after_vote`."""

    problem_kind = CompositeProblem
    default_problem = "logistic"
    options = sign_options()
    # a history row costs ~3 passes over the data: 15 rows per run keep them near 5 % (measured, benchmark (c))
    history_points = 15
    diagnostics_seconds = 0.0
    failure_hint = "try a smaller solver.step0"
    last_step = 0.0                            # the step size applied at the last iteration

    # -- the hooks ------------------------------------------------------------------------------
    def message(self, x: np.ndarray, g: np.ndarray, gam: float, out: np.ndarray,
                work: np.ndarray) -> np.ndarray:
        """Write the vector whose signs are sent into ``out`` and return it (``work``: scratch)."""
        raise NotImplementedError

    def message_elementwise(self) -> bool:
        """True if message() may be computed on slices (then it is made and packed block by block)."""
        return True

    def after_vote(self, x: np.ndarray, gam: float) -> None:
        """Local step after x -= gam * v (none by default)."""

    def message_kernel(self) -> tuple[int, float, float] | None:
        """(kind, l1, l2) of the compiled message kernel equal to :meth:`message`, or None (numpy path)."""
        return None

    def after_vote_kernel(self) -> tuple[float, float] | None | bool:
        """False: no step after the vote; (l1, l2): :meth:`after_vote` is the elastic-net prox (fused into
        the apply); None: a step the compiled apply cannot do."""
        return False

    # -- setup ---------------------------------------------------------------------------------------
    memory_estimate = classmethod(lambda cls, problem_cls, cfg, n_ranks: batch_estimate(cfg))

    @classmethod
    def check_config(cls, cfg: dict[str, dict[str, Any]], n_ranks: int) -> None:
        if cfg["solver"]["aggregator"] == "int8_allreduce" and n_ranks > 127:
            raise InputError(f"solver.aggregator=int8_allreduce: at most 127 ranks (got {n_ranks})")

    def __init__(self, problem, options, ctx):
        super().__init__(problem, options, ctx)
        o, comm = options, self.comm
        self.x = problem.x0()
        self.n = problem.n_vars
        self.streams = RankStreams(comm, ctx.seed, 0x5169)
        self.method = method = (o["aggregator"] if o["aggregator"] != "auto"
                                else ("allgather" if comm.size <= 16 else "twophase"))
        # the minibatch gradient: compiled and sparse (O(batch nonzeros)) on CSR data, see batch_grad_kernels
        warm = self.batch_grad_kernels()
        self.sparse_grad = bool(warm)
        self.cols: np.ndarray | None = None   # with the sparse gradient: g is zero outside these columns
        self.ef = np.zeros(self.n) if o["error_feedback"] else None
        # compiled path: message, check and packing in one pass, apply (+ memory, + prox) in one pass
        kern, after = self.message_kernel(), self.after_vote_kernel()
        jit = K.JIT and method != "int8_allreduce"
        self.kernel = kern if (jit and kern is not None and after is not None and self.message_elementwise()) else None
        self.after_prox = after if self.kernel is not None and after is not False else None
        # with the sparse gradient and a plain step, the step of iteration t is applied in the message pass
        # of t+1 (at the batch's columns first, for the gradient): one pass over x per iteration, not two
        self.defer = self.kernel is not None and self.sparse_grad and self.ef is None and self.after_prox is None
        self.pending: float | None = None      # deferred step size (the decision is the aggregator's last)
        self.done = np.zeros(n_words(self.n, 4 * comm.size) if self.defer else 0, dtype=np.uint64)
        if self.defer:
            warm += apply_encode_warmers(o["encoding"] == "ternary", tuple(a.dtype for a in problem.csr_structure()))
        self.agg = SignAggregator(comm, self.n, o["encoding"], method, o["tie"], ctx.seed, self.x.dtype, warm=warm)
        self.g = np.empty(self.n)
        # numpy path: the message is made, checked and packed in cache-sized blocks unless it needs the
        # whole vector (non-separable prox, error feedback, int8 codes)
        self.blockwise = self.kernel is not None or (self.ef is None and method != "int8_allreduce"
                                                     and self.message_elementwise())
        self.m = None if self.blockwise else np.empty(self.n)
        self.work = None if self.blockwise else np.empty(self.n)
        self.path = "compiled" if self.kernel is not None else ("blocked" if self.blockwise else "whole-vector")
        self.batch = batch_per_rank(o)

    def gamma(self, t: int) -> float:
        return sign_step_size(self.opts["step0"], t, self.opts["schedule"], self.opts["max_iter"])

    def batch_grad_kernels(self) -> list:
        """Collective: the problem's compiled sparse minibatch gradient on where it has one (CSR data,
        kernels on); returns the calls that compile its kernels, [] when off."""
        p = self.problem
        return p.use_sparse_batch_grad() if p.supports_sparse_batch_grad() else []

    # -- one iteration --------------------------------------------------------------------------------
    def local_gradient(self) -> np.ndarray:
        """Minibatch gradient of the smooth part on this rank's shard (zero without local data); with
        the sparse gradient a buffer of the problem's (zero outside the batch's columns)."""
        p, g = self.problem, self.g
        if p.n_local:
            idx = self.streams.rng.integers(0, p.n_local, size=self.batch)
            if self.pending is not None:       # x at the batch's columns: the deferred step applied there
                self.agg.apply_at_rows(*p.csr_structure(), idx, self.x, self.pending, self.done)
            if self.sparse_grad:
                g, self.cols = p.batch_grad_sparse(self.x, idx)
                return g
            p.batch_grad(self.x, idx, out=g)
        else:
            g[:] = 0.0
        self.cols = None
        return g

    def encode(self, g: np.ndarray, gam: float) -> None:
        """Make this rank's message from ``g`` and pack its signs (with error feedback the message is
        p = m + e, the memory added first; p is kept until :meth:`update` has seen the vote)."""
        x, agg = self.x, self.agg
        if self.pending is not None and g is not self.g:
            kind, l1, l2 = self.kernel
            agg.apply_and_encode(kind, x, g, gam, l1, l2, self.cols, self.pending, self.done)
            self.pending = None
            return
        self.flush()
        if self.kernel is not None:
            kind, l1, l2 = self.kernel
            agg.encode_message(kind, x, g, gam, l1, l2, self.ef, self.cols if g is not self.g else None)
            return
        if self.blockwise:
            agg.encode_blocks(lambda lo, hi, out, work: self.message(x[lo:hi], g[lo:hi], gam, out, work))
            return
        m = self.message(x, g, gam, self.m, self.work)
        if self.ef is not None:
            m += self.ef
        agg.encode(m)

    def applied_step(self, gam: float) -> float:
        """The step size applied to the vote: gamma, or with ``ef_step=mean_l1`` the mean over ranks of
        ||p_p||_1 / k_p (k_p: nonzero codes), summed in rank order so that every rank gets the same bits."""
        if self.ef is None or self.opts["ef_step"] == "gamma":
            return gam
        p = self.ef if self.kernel is not None else self.m          # this rank's message p = m + e
        k = self.n if self.opts["encoding"] == "1bit" else max(1, int(np.count_nonzero(p)))
        return float(self.comm.sum_ordered(np.array([np.abs(p).sum() / k]), tag="sign_scale")[0]) / self.comm.size

    def update(self, gam: float) -> None:
        """x -= gamma * v; with error feedback (EF-SGD, Karimireddy et al. 2019) the memory keeps what
        the applied step left out of this rank's message p, e <- p - gamma * v (averaged over the
        ranks, x_t - mean(e_t) then moves by exactly the mean uncompressed message); then the local
        step of :meth:`after_vote`. The compiled path does all of it in one pass."""
        if self.defer:
            self.pending = gam
            return
        if self.kernel is not None:
            self.agg.apply(self.x, gam, self.ef, self.after_prox)
            return
        self.agg.apply(self.x, gam)
        if self.ef is not None:
            np.subtract(self.m, self.agg.decision_deltas(gam), out=self.ef)
        self.after_vote(self.x, gam)

    def flush(self) -> None:
        """Apply a deferred step (before anything reads x: history rows, checkpoints, the end)."""
        if self.pending is not None:
            self.agg.apply(self.x, self.pending)
            self.pending = None

    def step(self) -> Stop | None:
        gam = self.gamma(self.nit)
        g = self.local_gradient()              # g_p
        try:
            self.encode(g, gam)                # e_p = packed sign code of m_p (+ memory)
        except ValueError as exc:              # a NaN/inf in this rank's message: the job ends from here
            raise FloatingPointError(f"numerical failure: this rank's sign message is not finite at iteration "
                                     f"{self.nit + 1} ({exc}); {self.failure_hint}") from None
        self.agg.aggregate(self.nit)           # v = vote(e_1..e_P), the same on every rank
        self.last_step = self.applied_step(gam)
        self.update(self.last_step)            # x -= gam * v (memory e_p = p_p - gam * v)
        if self.ctx.debug and (self.nit + 1) % self.opts["check_every"] == 0:
            self.flush()
            check_replicas(self.comm, self.x, f"iteration {self.nit + 1}")
        return None

    def numeric_checks(self) -> dict[str, Any]:
        """The applied step (x moves by it in every coordinate; the objective is checked at history rows)."""
        return {"step size": self.last_step}

    # -- outputs ------------------------------------------------------------------------------------
    def record(self) -> None:
        """A history row, its cost accumulated in ``diagnostics_seconds`` (reported in the result)."""
        t0 = time.perf_counter()
        self.flush()
        super().record()
        self.diagnostics_seconds += time.perf_counter() - t0

    def polished(self, x: np.ndarray) -> np.ndarray:
        """The reported solution: :func:`polish` with gamma_T = gamma of the last iteration."""
        return polish(x, self.opts["polish"], self.gamma(max(0, self.nit - 1)), self.problem.regularizer)

    def mapping_norm(self, x: np.ndarray) -> float:
        """Collective: ||G(x)||_1 of the full-batch mapping with the last step (:func:`mapping_norm_l1`)."""
        return mapping_norm_l1(self.problem, x, self.gamma(max(0, self.nit - 1)))

    def values(self) -> dict[str, Any]:
        p, fstar, it = self.problem, self.problem.reference_objective, self.nit
        f = p.objective(self.x)
        vals: dict[str, Any] = {"objective": f, "bytes_sent": sign_bytes(self.comm), "bytes_iter": self.agg.last_bytes,
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
        vals.update(p.metrics(self.x))          # optional problem-specific values (e.g. PSNR)
        return vals

    def finish(self, stop: Stop) -> R.OptimizeResult:
        self.flush()
        p, x, comm = self.problem, self.x, self.comm
        if self.ctx.debug:
            check_replicas(comm, x, f"the end (iteration {self.nit})")
        xp = self.polished(x)
        fun = p.objective(xp)
        fun_raw = p.objective(x)
        fstar = p.reference_objective
        return R.make_result(
            xp, fun, self.nit, stop.status, stop.message, x_raw=x.copy(), fun_raw=fun_raw,
            solution={"x": xp, "x_raw": x.copy()},
            nnz=int(np.count_nonzero(xp)), nnz_raw=int(np.count_nonzero(x)),
            bytes_sent=sign_bytes(comm), bytes_sent_all=comm.stats.bytes_sent, bytes_per_iteration=self.agg.last_bytes,
            payload_bytes_per_element=self.agg.payload_bytes / max(1, self.n), aggregator=self.method,
            mapping_norm_l1=self.mapping_norm(x), reference_objective=fstar, kernels=self.path,
            randomness=self.opts.get("randomness", "minibatch"),
            diagnostics_seconds=self.diagnostics_seconds,
            gap=None if fstar is None else fun - fstar,
            **p.metrics(xp))

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any] | None:
        self.flush()
        rngs = self.streams.state()
        ef = self.comm.gatherv_rows(self.ef[None, :]) if self.ef is not None else None
        if self.comm.rank != 0:
            return None
        state = {"x": self.x.copy(), "t": self.nit, "rng": rngs, "n_ranks": self.comm.size}
        if ef is not None:
            state["error_feedback"] = ef
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        x = np.asarray(state["x"], dtype=np.float64)
        if x.shape != self.x.shape:
            raise CheckpointError(f"checkpoint x has {x.size} variables, problem has {self.x.size}")
        self.x[:] = x
        self.nit = int(state["t"])
        same = self.streams.load(state["rng"], state["n_ranks"], self.nit)
        if self.ef is not None:
            ef = state.get("error_feedback")
            if ef is not None and same:
                self.ef[:] = np.asarray(ef)[self.comm.rank]
            else:  # memory of another rank layout cannot be split: restart it
                self.ef[:] = 0.0
