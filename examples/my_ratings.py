"""Your own matrix-factorization data as a plug-in: ratings from any source, split into training and
held-out sets, factored by hamsi, mf_gd or dsgd.

    mpirun -n 2 python -m mpiopt.run hamsi --problem my_ratings --plugin examples/my_ratings.py \
        --set solver.max_epochs=30 solver.patience=0

(For MovieLens files, or any file of ``user item rating`` lines, the built-in ``movielens`` problem
reads it directly: ``--problem movielens --set problem.path=ratings.csv``.)
"""
import numpy as np

from mpiopt import register_problem
from mpiopt.options import Option
from mpiopt.problems.mf import MFProblem


@register_problem("my_ratings")
class MyRatings(MFProblem):
    summary = "ratings of a small block-structured preference model (plug-in example)"
    options = (Option("users", 300, "number of users (rows)", int, low=2),
               Option("items", 120, "number of items (columns)", int, low=2),
               *MFProblem.options)

    def _load(self):
        """Return this rank's share of (rows, cols, vals) for training and for the held-out test,
        0-based, and the matrix size. Any split of the ratings over the ranks will do."""
        m, n = self.opts["users"], self.opts["items"]
        rng = np.random.default_rng(42)                       # the same data on every rank ...
        taste, genre = rng.integers(0, 4, m), rng.integers(0, 4, n)
        r, c = np.nonzero(rng.random((m, n)) < 0.2)
        v = np.clip(np.where(taste[r] == genre[c], 4.5, 2.5) + 0.5 * rng.standard_normal(r.size), 1, 5)
        test = rng.random(r.size) < 0.1
        mine = (np.arange(r.size) % self.comm.size) == self.comm.rank   # ... and each rank keeps its share
        tr, te = mine & ~test, mine & test
        return (r[tr].astype(np.int64), c[tr].astype(np.int64), v[tr], r[te].astype(np.int64),
                c[te].astype(np.int64), v[te], m, n)
