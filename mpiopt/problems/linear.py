"""L1/L2-regularised logistic regression and LASSO on generated data, svmlight/LIBSVM files or
scikit-learn's bundled datasets, sharded by rank."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
from mpi4py import MPI
from scipy.special import expit

from .. import kernels as K
from .. import options as O
from ..comm import collective_check
from ..errors import InputError
from ..options import Option
from ..prox import RegularizerBase
from ..registry import REGULARIZERS, RegisteredNames, get_regularizer, register_problem
from .base import CompositeProblem
from .reference import CompositeReference

CHUNK = 1024  # generated rows come in chunks keyed by (seed, chunk): identical data at any rank count
BUNDLED = ("breast_cancer", "digits", "diabetes")
REGS = RegisteredNames(REGULARIZERS)   # every registered regularizer, plug-ins' included


def _split(n: int, rank: int, size: int) -> tuple[int, int]:
    return n * rank // size, n * (rank + 1) // size


class LinearModelProblem(CompositeProblem):
    """Data term (1/N) sum_i loss(a_i.x, y_i) with a regulariser l1||x||_1 + l2/2||x||^2."""

    options = (
        O.path("svmlight/LIBSVM file, read in byte ranges by rank (none: see problem.dataset)"),
        Option("dataset", "generated", "data when no path is given", str, choices=("generated", *BUNDLED)),
        O.seed(0),
        Option("n_samples", 10000, "generated: number of samples", int, low=1),
        Option("n_features", 0, "generated: number of features; files: 0 = from the data", int, low=0),
        Option("density", 1.0, "generated: fraction of nonzero features (< 1 gives sparse CSR)", float, low=0.0, high=1.0, low_open=True),
        Option("support", 0.1, "generated: fraction of nonzeros in the planted model", float, low=0.0, high=1.0, low_open=True),
        Option("noise", 0.1, "generated: noise level", float, low=0.0),
        Option("zero_based", False, "files: feature indices start at 0 (LIBSVM: 1)", bool),
        Option("l1", 1e-3, "L1 penalty weight", float, low=0.0),
        Option("l2", 0.0, "L2 penalty weight (l2/2 ||x||^2)", float, low=0.0),
        Option("reference", "auto", "compute F* with L-BFGS-B: auto (when nnz <= 2e7), yes, no", str, choices=("auto", "yes", "no")),
        Option("reg", "elastic_net", "regulariser: elastic_net (l1||x||_1 + l2/2||x||^2), weighted_l1 "
               "(l1 sum w_i|x_i| + l2 term), nonneg_l1 (x >= 0, l1 sum x_i), group_lasso (l1 sum sqrt(|g|)||x_g||, "
               "consecutive groups of group_size), l0 (l1 * number of nonzeros, nonconvex), or any regulariser "
               "registered by a plug-in", str, choices=REGS),
        Option("weights", None, "weighted_l1: .npy file of per-feature weights >= 0 (none: feature 0 unpenalised, "
               "1 elsewhere)", str, nullable=True),
        Option("group_size", 10, "group_lasso: features per group (consecutive)", int, low=1),
    )

    task = "regression"
    A: Any
    y: np.ndarray

    @classmethod
    def memory_estimate(cls, opts: dict[str, Any], n_ranks: int) -> tuple[float, str] | None:
        if opts.get("path") or opts.get("dataset", "generated") != "generated":
            return None
        n = opts["n_features"] or 100
        rows = -(-opts["n_samples"] // max(1, n_ranks))
        if opts["density"] < 1.0:   # CSR plus the generator's COO temporaries: about 40 bytes per nonzero
            data = 40.0 * rows * n * opts["density"]
        else:                       # dense rows, generated then stacked
            data = 16.0 * rows * n
        vectors = 8.0 * n * 40      # iterates, gradients, wire buffers, the reference solver's memory
        return data + vectors + 8.0 * rows, (f"problem.n_samples={opts['n_samples']}, "
                                            f"problem.n_features={n}, problem.density={opts['density']}")

    def setup(self) -> None:
        o = self.opts
        comm = self.comm
        if o["path"]:
            # local parsing first, checked on every rank, before the collectives that follow it
            X, y = collective_check(comm, lambda: self._read_file(o["path"]))
            self._finish_file(X, y, o["path"])
        elif o["dataset"] != "generated":
            self._load_bundled(o["dataset"])
        else:
            self._generate()
        self.n_local = self.A.shape[0]
        counts = comm.allreduce_array([self.n_local, self.A.nnz if sp.issparse(self.A) else self.A.size], dtype=np.int64)
        self.n_samples = int(counts[0])
        self.nnz_total = int(counts[1])
        if self.n_samples == 0:
            raise InputError(f"{o['path'] or o['dataset']}: no samples")
        self.regularizer = self._make_regularizer()
        self._buf = np.empty(self.n_vars)
        self._sparse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # -- the minibatch gradient on CSR data, compiled ------------------------------------------------
    def loss_coef(self, margin: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Sum of the losses and the per-sample coefficients c (gradient = A^T c) at margins A x."""
        raise NotImplementedError

    def supports_sparse_batch_grad(self) -> bool:
        return True

    def use_sparse_batch_grad(self) -> list[Callable[[], None]]:
        """Collective: turn :meth:`batch_grad_sparse` on when every rank's data are float64 CSR and
        the compiled kernels are on. Returns the calls that compile (or load) its kernels, for
        :func:`mpiopt.comm.jit.compile_once`; [] when it stays off."""
        A = self.A
        ok = K.JIT and sp.issparse(A) and A.format == "csr" and A.dtype == np.float64
        if not self.comm.allreduce_scalar(float(ok), op=MPI.MIN, tag="setup"):
            return []
        K.compile_kernels()
        n = self.n_vars
        self._sparse = (np.zeros(n), np.zeros(n, dtype=np.uint8), np.empty(0, dtype=np.int64))
        self._cnt = 0
        self._max_row = int(np.diff(A.indptr).max()) if A.shape[0] else 0

        def warm() -> None:
            ip, ix = np.zeros(2, dtype=A.indptr.dtype), np.zeros(0, dtype=A.indices.dtype)
            rows, out = np.zeros(1, dtype=np.int64), np.zeros(1)
            K.get("csr_rows_dot")(ip, ix, np.zeros(0), rows, np.zeros(1), out)
            K.get("csr_rows_scatter")(ip, ix, np.zeros(0), rows, out, np.zeros(1), np.zeros(1, dtype=np.uint8),
                                      np.zeros(1, dtype=np.int64), 0, 1.0)
        return [warm]

    def csr_structure(self) -> tuple[np.ndarray, np.ndarray]:
        """(row pointers, column indices) of this rank's CSR data (with :meth:`use_sparse_batch_grad` on)."""
        return self.A.indptr, self.A.indices

    def batch_grad_sparse(self, x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The mean gradient over local samples ``idx``, bit for bit :meth:`batch_grad`, as (g, cols):
        g a dense buffer of the problem's, zero outside the distinct columns ``cols`` of the batch, both
        valid until the next call (which zeroes those entries again). Needs :meth:`use_sparse_batch_grad`.
        Cost O(nonzeros of the batch), not O(n)."""
        if self._sparse is None:
            raise RuntimeError("batch_grad_sparse: call use_sparse_batch_grad() first (CSR data, kernels on)")
        g, mark, touched = self._sparse
        A = self.A
        rows = np.asarray(idx, dtype=np.int64)
        need = min(self.n_vars, rows.size * self._max_row)
        if touched.size < need:
            touched = np.concatenate([touched[:self._cnt], np.empty(need - self._cnt, dtype=np.int64)])
            self._sparse = (g, mark, touched)
        margin = np.empty(rows.size)
        K.get("csr_rows_dot")(A.indptr, A.indices, A.data, rows, x, margin)
        _, coef = self.loss_coef(margin, self.y[rows])
        self._cnt = K.get("csr_rows_scatter")(A.indptr, A.indices, A.data, rows,
                                              np.ascontiguousarray(coef, dtype=np.float64), g, mark, touched,
                                              self._cnt, float(max(1, rows.size)))
        return g, touched[:self._cnt]

    def _make_regularizer(self) -> RegularizerBase:
        """The regulariser named by ``problem.reg``, built by its class (InputError on bad options)."""
        return get_regularizer(self.opts.get("reg", "elastic_net")).from_options(self.opts, self.n_vars)

    def compute_reference(self) -> None:
        """Collective: F* from the regulariser's reference hook (skipped for large data)."""
        mode = self.opts["reference"]
        if mode == "no" or (mode == "auto" and self.nnz_total > 2e7):
            return
        optimum = self.regularizer.reference_optimum(
            CompositeReference(self.comm, self.local_loss_grad, self.n_vars, self.n_samples))
        if optimum is not None:   # None: no certified optimum (e.g. l0, nonconvex)
            self.reference_objective, self.reference_x = optimum

    def describe(self) -> str:
        src = self.opts["path"] or self.opts["dataset"]
        kind = "sparse" if sp.issparse(self.A) else "dense"
        return (f"{self.name}: {self.n_samples} samples x {self.n_vars} features ({kind}, {src}), "
                f"l1={self.opts['l1']}, l2={self.opts['l2']}"
                + ("" if self.opts.get("reg", "elastic_net") == "elastic_net" else f", reg={self.opts['reg']}"))

    # -- data sources -------------------------------------------------------------------
    def _read_file(self, path: str):
        from ..data.svmlight import read_shard
        return read_shard(path, self.comm.rank, self.comm.size, self.opts["n_features"] or None,
                          self.opts["zero_based"])

    def _finish_file(self, X, y, path: str) -> None:
        nf = self.opts["n_features"] or None
        if nf is None:
            nf = int(self.comm.allreduce_scalar(X.shape[1], op=__import__("mpi4py").MPI.MAX))
            X = sp.csr_matrix((X.data, X.indices, X.indptr), shape=(X.shape[0], nf))
        self.n_vars = nf
        self.A = X
        self.y = self._labels(y, path)

    def _load_bundled(self, name: str) -> None:
        from sklearn import datasets
        loader = {"breast_cancer": datasets.load_breast_cancer, "digits": datasets.load_digits,
                  "diabetes": datasets.load_diabetes}[name]
        X, y = loader(return_X_y=True)
        X = np.asarray(X, dtype=np.float64)
        std = X.std(axis=0)
        std[std == 0] = 1.0
        X = (X - X.mean(axis=0)) / std
        y = np.asarray(y, dtype=np.float64)
        if name == "digits" and self.task == "classification":
            y = np.where(y == 0, 1.0, -1.0)  # digit 0 against the rest
        if name == "diabetes" and self.task == "regression":
            y = (y - y.mean()) / y.std()
        lo, hi = _split(X.shape[0], self.comm.rank, self.comm.size)
        self.n_vars = X.shape[1]
        self.A = np.ascontiguousarray(X[lo:hi])
        self.y = self._labels(y[lo:hi], name)

    def _generate(self) -> None:
        o = self.opts
        n = o["n_features"] or 100
        self.n_vars = n
        wrng = np.random.default_rng([o["seed"], 0x77])
        w = np.zeros(n)
        k = max(1, int(round(o["support"] * n)))
        w[wrng.choice(n, k, replace=False)] = wrng.normal(size=k)
        self.planted = w
        lo, hi = _split(o["n_samples"], self.comm.rank, self.comm.size)
        blocks, labels = [], []
        for c in range(lo // CHUNK, (hi - 1) // CHUNK + 1 if hi > lo else lo // CHUNK):
            rng = np.random.default_rng([o["seed"], 0xDA7A, c])
            rows = min(CHUNK, o["n_samples"] - c * CHUNK)
            if o["density"] < 1.0:
                X = sp.random(rows, n, density=o["density"], format="csr", random_state=rng,
                              data_rvs=rng.standard_normal)
            else:
                X = rng.standard_normal((rows, n))
            y = self._make_labels(X @ w, rng)
            a, b = max(lo, c * CHUNK) - c * CHUNK, min(hi, c * CHUNK + rows) - c * CHUNK
            blocks.append(X[a:b])
            labels.append(y[a:b])
        if blocks:
            self.A = sp.vstack(blocks, format="csr") if o["density"] < 1.0 else np.vstack(blocks)
            self.y = np.concatenate(labels)
        else:
            self.A = sp.csr_matrix((0, n)) if o["density"] < 1.0 else np.zeros((0, n))
            self.y = np.zeros(0)

    def _make_labels(self, margin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return margin + self.opts["noise"] * rng.standard_normal(margin.shape)

    def _labels(self, y: np.ndarray, source: str) -> np.ndarray:
        return np.asarray(y, dtype=np.float64)


@register_problem("lasso")
class Lasso(LinearModelProblem):
    """LASSO: (1/2N) sum (a_i.x - y_i)^2 + l1||x||_1 + l2/2||x||^2 (scikit-learn's Lasso scaling)."""

    summary = "least squares + L1 (LASSO / elastic net) on generated, LIBSVM or bundled data"
    task = "regression"

    def loss_coef(self, margin, y):
        r = margin - y
        return 0.5 * float(r @ r), r

    def local_loss_grad(self, x, idx=None, grad_out=None):
        A = self.A if idx is None else self.A[idx]
        y = self.y if idx is None else self.y[idx]
        loss, r = self.loss_coef(A @ x, y)
        g = A.T @ r
        if grad_out is not None:
            grad_out[:] = g
            g = grad_out
        return loss, np.asarray(g, dtype=np.float64)


@register_problem("logistic")
class Logistic(LinearModelProblem):
    """Logistic regression: (1/N) sum log(1 + exp(-y_i a_i.x)) + l1||x||_1 + l2/2||x||^2, y in {-1,+1}."""

    summary = "logistic regression + L1/L2 on generated, LIBSVM or bundled data"
    task = "classification"
    options = tuple(o if o.name != "dataset" else Option(
        "dataset", "generated", "data when no path is given (digits: 0 vs rest)", str,
        choices=("generated", "breast_cancer", "digits")) for o in LinearModelProblem.options)

    def _make_labels(self, margin, rng):
        y = np.sign(margin + self.opts["noise"] * rng.standard_normal(margin.shape))
        y[y == 0] = 1.0
        return y

    def _labels(self, y: np.ndarray, source: str) -> np.ndarray:
        from mpi4py import MPI  # noqa: F401
        values = sorted(set(np.unique(y).tolist()))
        allv = sorted(set(v for vs in self.comm.allgather_obj(values) for v in vs))
        if len(allv) > 2:
            raise InputError(f"{source}: logistic needs two classes, found labels {allv[:6]}")
        if len(allv) == 2:
            lo_label = allv[0]
            return np.where(y == lo_label, -1.0, 1.0)
        return np.ones_like(y)

    def loss_coef(self, margin, y):
        z = y * margin
        return float(np.logaddexp(0.0, -z).sum()), -y * expit(-z)

    def local_loss_grad(self, x, idx=None, grad_out=None):
        A = self.A if idx is None else self.A[idx]
        y = self.y if idx is None else self.y[idx]
        loss, coef = self.loss_coef(A @ x, y)
        g = A.T @ coef
        if grad_out is not None:
            grad_out[:] = g
            g = grad_out
        return loss, np.asarray(g, dtype=np.float64)
