"""Matrix-factorization problems: ``movielens`` (real MovieLens files) and ``synthetic_mf``
(low rank plus noise with Zipf-like row/column popularity, 1e5 to 1e8 ratings).

    min_{A, B, u, v} (1/(2 nnz)) sum_{(i,j) in Omega} (M_ij - mu - a_i.b_j - u_i - v_j)^2
                     + L2 attached to ratings (l2 on a_i, b_j; bias_l2 on u_i, v_j)

(mu: the global training mean with ``problem.center``, else 0; u, v: row and column biases with
``problem.bias``, else 0.) A prediction is mu + a_i.b_j + u_i + v_j (:func:`mpiopt.mf.model.predict`).

After :meth:`setup` each rank holds an arbitrary shard of the training (and test) ratings with
0-based ``rows``/``cols``; solvers route them to the owners of their row blocks
(:class:`mpiopt.mf.model.DistMF`). Global per-row/column counts are known on every rank.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from mpi4py import MPI

from .. import options as O
from ..errors import InputError
from ..options import Option
from ..registry import register_problem
from .base import Problem, settings

GEN_CHUNK = 1 << 18     # generated ratings per generator (rank-count independent data)
LATENT_MAX = 1 << 16    # the largest factorization rank k accepted (files: the data size is unknown before set-up)
BIAS_L2 = 0.1           # default bias L2 (chosen by a sweep on generated MovieLens-like data, docs/hamsi.md)


def hash_uniform(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) numbers keyed by (a, b, seed) (splitmix64): the same split at any rank count."""
    with np.errstate(over="ignore"):
        z = (np.asarray(a, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ np.asarray(b, dtype=np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
             ^ np.uint64((seed * 0x632BE59BD9B4E019 + 0x1234567) % (1 << 64)))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


class MFProblem(Problem):
    """Ratings matrix M (m x n) observed on Omega, factored as A B^T with A m x k, B n x k."""

    kind_name = "matrix factorization"
    options = (
        Option("latent_dim", 10, "rank k of the factorization", int, low=1, high=LATENT_MAX),
        Option("l2", 0.1, "L2 weight lam, attached to ratings (keeps partial separability)", float, low=0.0),
        Option("reg", "rating", "L2 form: rating (lam/2 (|a_i|^2+|b_j|^2) per rating, weighted-lambda) "
               "or uniform (lam/2 (|A|^2+|B|^2) in total)", str, choices=("rating", "uniform")),
        Option("transpose", False, "factor columns x rows (items x users, as the reference code does)", bool),
        Option("center", True, "subtract the global training mean (predictions are mean + a_i.b_j); "
               "the hamsi-mf preset turns it off", bool),
        Option("bias", True, "row and column biases u_i, v_j (predictions mean + a_i.b_j + u_i + v_j); "
               "the hamsi-mf preset turns them off", bool),
        Option("bias_l2", BIAS_L2, "L2 weight of the biases, attached to ratings like l2", float, low=0.0),
    )

    m: int
    n: int
    nnz: int
    nnz_test: int

    @classmethod
    def shape_estimate(cls, opts: dict[str, Any]) -> tuple[int, int] | None:
        """(rows, columns) of the ratings matrix known from ``opts`` before set-up; None for files."""
        return None

    def setup(self) -> None:
        r, c, v, tr, tc, tv, m, n = self._load()
        self.row_ids = getattr(self, "user_ids", None)     # original ids of rows / columns, if any
        self.col_ids = getattr(self, "item_ids", None)
        if self.opts["transpose"]:
            r, c, tr, tc, m, n = c, r, tc, tr, n, m
            self.row_ids, self.col_ids = self.col_ids, self.row_ids
        self.rows, self.cols, self.vals = r, c, v
        self.test_rows, self.test_cols, self.test_vals = tr, tc, tv
        self.m, self.n = int(m), int(n)
        comm = self.comm
        tot = comm.allreduce_array([v.size, tv.size], dtype=np.int64)
        self.nnz, self.nnz_test = int(tot[0]), int(tot[1])
        if self.nnz == 0:
            raise InputError(f"problem {self.name}: no training ratings")
        from ..mf.layout import count_into
        counts = np.zeros(self.m + self.n, np.int64)
        count_into(r, counts[:self.m])
        count_into(c, counts[self.m:])
        comm.Allreduce(MPI.IN_PLACE, counts, tag="setup")
        self.row_counts, self.col_counts = counts[:self.m], counts[self.m:]
        self.offset = 0.0
        if self.opts["center"]:
            # summed in float64 as a float64 array is (float32 stars: same values, same order)
            total = float(v.sum()) if v.dtype == np.float64 else float(v.astype(np.float64).sum())
            self.offset = comm.allreduce_scalar(total, tag="setup") / self.nnz
            self.vals = v = narrow_values(v, self.offset)
            self.test_vals = tv = narrow_values(tv, self.offset)
        big = np.finfo(np.float64).max
        lo = comm.allreduce_array([v.min() if v.size else big, tv.min() if tv.size else big], op=MPI.MIN)
        hi = comm.allreduce_array([v.max() if v.size else -big, tv.max() if tv.size else -big], op=MPI.MAX)
        self.rating_min, self.rating_max = float(min(lo)), float(max(hi))

    def _load(self):
        raise NotImplementedError

    def take_ratings(self) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """Hand this rank's (rows, cols, vals) of the training and test ratings over to the caller
        and drop them here, so that a solver holds the ratings once."""
        train = (self.rows, self.cols, self.vals)
        test = (self.test_rows, self.test_cols, self.test_vals)
        self.rows = self.cols = self.vals = self.test_rows = self.test_cols = self.test_vals = None
        return train, test

    def describe(self) -> str:
        return (f"{self.name}: {self.m} x {self.n}, {self.nnz} training ratings, {self.nnz_test} held out, "
                f"k={self.opts['latent_dim']}, l2={self.opts['l2']} ({self.opts['reg']})"
                + (f", centred on {self.offset:.4g}" if self.offset else "")
                + (f"; {self.data_note}" if getattr(self, "data_note", "") else ""))


def _empty():
    return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0)


def narrow_index(a: np.ndarray) -> np.ndarray:
    """Indices as int32 (when they fit)."""
    a = np.asarray(a)
    return a.astype(np.int32) if a.dtype != np.int32 and (a.size == 0 or int(a.max()) < 2 ** 31) else a


def narrow_values(v: np.ndarray, offset: float) -> np.ndarray:
    """``v - offset`` in float64, in place when ``v`` already is float64 (no second copy)."""
    v = np.asarray(v)
    if v.dtype != np.float64:
        v = v.astype(np.float64)
    v -= offset
    return v


def random_split(u, i, v, seed: int, fraction: float) -> tuple[np.ndarray, ...]:
    """(u, i, v) split by :func:`hash_uniform` of (u, i) < ``fraction`` into the kept and the held-out
    ratings, each in the given order; the kept ones compacted in place (no copies of the data)."""
    from ..mf import layout
    word = np.uint64((seed * 0x632BE59BD9B4E019 + 0x1234567) % (1 << 64))
    nt = layout.count_split(u, i, word, fraction)
    tu, ti, tv = np.empty(nt, u.dtype), np.empty(nt, i.dtype), np.empty(nt, v.dtype)
    kept = layout.split_inplace(u, i, v, word, fraction, tu, ti, tv)
    return u[:kept], i[:kept], v[:kept], tu, ti, tv


def to_positions(ids: np.ndarray, a: np.ndarray, piece: int = 1 << 20) -> np.ndarray:
    """Positions of ``a``'s entries in the sorted ``ids`` as int32 (when they fit), written over ``a``
    when it is int32 (piece by piece: no int64 copy of the data)."""
    out = a if (a.dtype == np.int32 and ids.size < 2 ** 31) else np.empty(a.size, np.int32 if ids.size < 2 ** 31 else np.int64)
    for lo in range(0, a.size, piece):
        out[lo:lo + piece] = np.searchsorted(ids, a[lo:lo + piece])
    return out


@register_problem("movielens")
class MovieLens(MFProblem):
    """MovieLens ratings (ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-latest) read by byte ranges."""

    summary = "matrix factorization of MovieLens ratings (u.data, ratings.dat, ratings.csv; users x items)"
    options = (
        O.path("ml-* folder or ratings file (u.data, u1.base, ratings.dat, ratings.csv, or the reference "
               "code's text format: '2' / 'm n' / 'nnz' / 'i j value' lines)"),
        Option("split", "random", "held-out set: random (seeded, test_fraction), none, or an ml-100k split "
               "name such as u1 or ua (reads <name>.base/<name>.test next to the data)", str),
        Option("test_path", None, "explicit held-out ratings file (same format)", str, nullable=True),
        Option("test_fraction", 0.2, "random split: fraction held out", float, low=0.0, high=1.0, high_open=True),
        O.seed(0, "seed of the random split"),
        *MFProblem.options,
    )

    def _load(self):
        from ..data.movielens import compact_ids, is_reference_format, read_ratings, read_reference, resolve_path
        o, comm = self.opts, self.comm
        if not o["path"]:
            raise InputError("problem.path: movielens needs the ml-* folder or ratings file (no download)")
        if os.path.isfile(o["path"]) and is_reference_format(o["path"]):
            r, c, v, tr, tc, tv, m, n = self._load_reference(read_reference)
            return narrow_index(r), narrow_index(c), v, narrow_index(tr), narrow_index(tc), tv, m, n
        split = str(o["split"])
        test_file = o["test_path"]
        if split not in ("random", "none") and not test_file:
            folder = o["path"] if os.path.isdir(o["path"]) else os.path.dirname(o["path"])
            base, test_file = os.path.join(folder, f"{split}.base"), os.path.join(folder, f"{split}.test")
            for f in (base, test_file):
                if not os.path.isfile(f):
                    raise InputError(f"problem.split={split}: {f} not found")
            train_file = base
        else:
            train_file = resolve_path(o["path"])
        if test_file and not os.path.isfile(test_file):
            raise InputError(f"problem.test_path {test_file}: not found")
        self.source = train_file
        given = os.path.basename(os.path.normpath(o["path"]))
        if test_file and not o["test_path"]:
            self.data_note = (f"problem.split={split}: training {train_file}, held out {test_file}"
                              + (f" (problem.path {given} itself not read)" if os.path.isfile(o["path"]) else ""))
        elif test_file:
            self.data_note = f"training {train_file}, held out {test_file} (problem.test_path)"
        elif split == "random" and o["test_fraction"] > 0:
            self.data_note = (f"ratings {train_file}, random split: {o['test_fraction']:g} held out "
                              f"(problem.seed={o['seed']})")
        else:
            self.data_note = f"ratings {train_file}, no held-out set"
        u, i, v = read_ratings(train_file, comm)
        if test_file:
            tu, ti, tv = read_ratings(test_file, comm)
        elif split == "random" and o["test_fraction"] > 0:
            u, i, v, tu, ti, tv = random_split(u, i, v, int(o["seed"]), float(o["test_fraction"]))
        else:
            tu, ti, tv = _empty()
        users = compact_ids([u, tu], comm)
        items = compact_ids([i, ti], comm)
        self.user_ids, self.item_ids = users, items
        return (to_positions(users, u), to_positions(items, i), v, to_positions(users, tu),
                to_positions(items, ti), tv, users.size, items.size)


    def _load_reference(self, read_reference):
        """The reference code's text format: indices kept as given (empty rows included)."""
        o, comm = self.opts, self.comm
        self.source = o["path"]
        self.data_note = (f"ratings {o['path']} (reference format), " + (
            f"held out {o['test_path']}" if o["test_path"] else
            f"random split: {o['test_fraction']:g} held out (problem.seed={o['seed']})"
            if o["split"] == "random" and o["test_fraction"] > 0 else "no held-out set"))
        r, c, v, m, n = read_reference(o["path"], comm)
        if o["test_path"]:
            tr, tc, tv, tm, tn = read_reference(o["test_path"], comm)
            if (tm, tn) != (m, n):
                raise InputError(f"problem.test_path {o['test_path']}: {tm} x {tn}, training data is {m} x {n}")
        elif o["split"] == "random" and o["test_fraction"] > 0:
            test = hash_uniform(r, c, o["seed"]) < o["test_fraction"]
            tr, tc, tv = r[test], c[test], v[test]
            r, c, v = r[~test], c[~test], v[~test]
        else:
            tr, tc, tv = _empty()
        return r, c, v, tr, tc, tv, m, n


@register_problem("synthetic_mf")
class SyntheticMF(MFProblem):
    """Low-rank-plus-noise ratings with Zipf-like row/column popularity; identical at any rank count."""

    summary = "generated low-rank + noise ratings with skewed (Zipf-like) row/column counts, any size"
    options = (
        Option("n_ratings", 100000, "number of ratings (train + test)", int, low=1),
        Option("n_rows", 0, "rows (0: n_ratings/50)", int, low=0),
        Option("n_cols", 0, "columns (0: n_ratings/200)", int, low=0),
        Option("rank", 5, "rank of the planted matrix", int, low=1),
        Option("noise", 0.3, "standard deviation of the additive noise", float, low=0.0),
        Option("mean", 3.5, "offset added to every rating", float),
        Option("zipf", 0.8, "popularity exponent: row/column i drawn with weight (i+1)^-zipf", float, low=0.0),
        Option("test_fraction", 0.1, "fraction held out (seeded hash of row, column)", float, low=0.0, high=1.0, high_open=True),
        O.seed(0, "seed of the generated data"),
        *MFProblem.options,
    )
    # peak resident memory of a solver run, measured (docs/hamsi.md): the ratings stored once
    # (16 bytes) plus set-up transients (two int32 arrays) and slack, per rating; plus the vectors
    # over the factors (x, gradient, direction, safeguard copies, hamsi's 2M = 10 L-BFGS vectors)
    BYTES_PER_RATING = 28.0
    FACTOR_VECTORS = 18

    @classmethod
    def shape_estimate(cls, opts):
        N = int(opts["n_ratings"])
        return opts["n_rows"] or max(20, N // 50), opts["n_cols"] or max(10, N // 200)

    @classmethod
    def memory_estimate(cls, opts, n_ranks):
        N = int(opts["n_ratings"])
        m, n = cls.shape_estimate(opts)
        factors = cls.FACTOR_VECTORS * 8.0 * (m + n) * (int(opts["latent_dim"]) + 1)
        planted = 3 * 8.0 * (m + n) * int(opts["rank"])     # U, V and their popularity-ordered copies, every rank
        per_rank = (cls.BYTES_PER_RATING * N + factors) / max(1, n_ranks) + planted + 3 * 8.0 * (m + n)
        return per_rank, settings(opts, "n_ratings", "n_rows", "n_cols", "rank", "latent_dim")

    def _tables(self):
        """(N, m, n, U, V, prow, pcol, crow, ccol): the planted factors and the popularity tables."""
        o = self.opts
        N = int(o["n_ratings"])
        m = o["n_rows"] or max(20, N // 50)
        n = o["n_cols"] or max(10, N // 200)
        seed, rk = int(o["seed"]), int(o["rank"])
        U = self._factor(seed, 1, m, rk)
        V = self._factor(seed, 2, n, rk)
        prow = np.random.default_rng([seed, 3]).permutation(m)
        pcol = np.random.default_rng([seed, 4]).permutation(n)
        crow = np.cumsum((np.arange(1, m + 1, dtype=np.float64)) ** -o["zipf"])
        ccol = np.cumsum((np.arange(1, n + 1, dtype=np.float64)) ** -o["zipf"])
        return N, m, n, U, V, prow, pcol, crow, ccol

    def _load(self):
        """This rank's chunks (c = rank, rank + P, ..), generated by the compiled
        :func:`mpiopt.mf.layout.generate_chunk` straight into int32/float64 arrays (the training
        ratings into their final arrays, the held-out ones, a small fraction, per chunk)."""
        from ..mf import layout
        o, comm = self.opts, self.comm
        layout.compile_once(comm)
        N, m, n, U, V, prow, pcol, crow, ccol = self._tables()
        seed = int(o["seed"])
        rg, cg = layout.guide_table(crow), layout.guide_table(ccol)
        seed_word = np.uint64((seed * 0x632BE59BD9B4E019 + 0x1234567) % (1 << 64))
        nchunks = -(-N // GEN_CHUNK)
        mine = range(comm.rank, nchunks, comm.size)
        total = sum(min(GEN_CHUNK, N - c * GEN_CHUNK) for c in mine)
        Up, Vp = U[prow], V[pcol]                     # popularity order: the hot rows stay in cache
        del U, V
        r, c_, v = np.empty(total, np.int32), np.empty(total, np.int32), np.empty(total)
        tf = float(o["test_fraction"])
        tbuf = [np.empty(GEN_CHUNK if tf > 0 else 0, dt) for dt in (np.int32, np.int32, np.float64)]
        tr, tc, tv = [], [], []
        pos = 0
        for c in mine:
            cnt = min(GEN_CHUNK, N - c * GEN_CHUNK)
            kept, nt = layout.generate_chunk(np.random.default_rng([seed, 5, c]), cnt, crow, *rg, prow, ccol, *cg,
                                             pcol, Up, Vp, float(o["mean"]), float(o["noise"]), tf, seed_word,
                                             r, c_, v, pos, *tbuf)
            pos += kept
            if nt:
                tr.append(tbuf[0][:nt].copy())
                tc.append(tbuf[1][:nt].copy())
                tv.append(tbuf[2][:nt].copy())
        r, c_, v = r[:pos], c_[:pos], v[:pos]
        if tr:
            return r, c_, v, np.concatenate(tr), np.concatenate(tc), np.concatenate(tv), m, n
        return (r, c_, v, *_empty(), m, n)

    def chunk_reference(self, c: int) -> tuple[np.ndarray, ...]:
        """Chunk ``c`` generated with numpy (the reference of the compiled generator):
        (rows, cols, vals, test rows, test cols, test vals)."""
        o = self.opts
        N, m, n, U, V, prow, pcol, crow, ccol = self._tables()
        seed = int(o["seed"])
        cnt = min(GEN_CHUNK, N - c * GEN_CHUNK)
        rng = np.random.default_rng([seed, 5, c])
        i = prow[np.minimum(np.searchsorted(crow, rng.random(cnt) * crow[-1]), m - 1)]
        j = pcol[np.minimum(np.searchsorted(ccol, rng.random(cnt) * ccol[-1]), n - 1)]
        val = o["mean"] + np.einsum("ij,ij->i", U[i], V[j]) + o["noise"] * rng.standard_normal(cnt)
        test = hash_uniform(i, j, seed) < o["test_fraction"] if o["test_fraction"] > 0 else np.zeros(cnt, bool)
        return i[~test], j[~test], val[~test], i[test], j[test], val[test]

    @staticmethod
    def _factor(seed: int, which: int, rows: int, rk: int) -> np.ndarray:
        from ..mf.init import random_rows
        return random_rows(seed + 7919 * which, 99, 0, rows, rk, 1.0 / np.sqrt(np.sqrt(rk)))
