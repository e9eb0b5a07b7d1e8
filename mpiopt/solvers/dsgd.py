"""``dsgd``: stratified SGD for matrix factorization (Gemulla, Nijkamp, Haas, Sismanis, KDD 2011)
on the HAMSI block grid.

    for each epoch: for each stratum s (seeded order):
        every rank, for each of its blocks (rb, (rb - s) mod nb) in parallel:
            SGD over the block's ratings in a seeded random order, minibatches of b ratings:
                e = a_i.b_j (+ u_i + v_j) - M_ij;  a_i -= lr (e b_j + lam_i a_i);  b_j -= lr (e a_i + lam_j b_j)
                (with biases: u_i -= lr (e + lamb_i u_i);  v_j -= lr (e + lamb_j v_j))
        (updates in a minibatch are computed at the same point; a row or column met several
         times in one minibatch moves by the mean of its updates)
    lr = lr0 / (1 + decay * epoch)

One solver step is one epoch. The column block a rank updates comes from its home rank and goes
back after the stratum (same ring exchange as HAMSI). Random streams are keyed by (seed, epoch,
stratum, block), not by rank: there is no generator state to checkpoint, and a fixed
``solver.blocks`` gives the same iterates at any rank count.
"""
from __future__ import annotations

import numpy as np

from ..options import Option
from ..registry import register_solver
from .base import Stop
from .mf_base import MFSolver, common_options


@register_solver("dsgd")
class DSGD(MFSolver):
    summary = "DSGD: stratified (minibatch) SGD for matrix factorization, column blocks rotating between ranks"
    demo_settings = {"problem.n_ratings": 100000, "problem.latent_dim": 10, "solver.max_epochs": 30}
    failure_hint = "try a smaller solver.lr"
    options = (
        *common_options(max_epochs=50),
        Option("lr", 0.01, "initial learning rate lr0 (per rating)", float, low=0.0, low_open=True),
        Option("decay", 0.05, "lr = lr0 / (1 + decay * epoch)", float, low=0.0),
        Option("batch_size", 256, "ratings per vectorized minibatch inside a block (1: plain SGD, slow)", int, low=1),
    )

    @classmethod
    def memory_estimate(cls, problem_cls, cfg, n_ranks):
        """The block grid and a vectorized minibatch of batch_size ratings (indices, residuals and the
        gathered factor rows)."""
        grid, what = super().memory_estimate(problem_cls, cfg, n_ranks)
        bs, k = float(cfg["solver"]["batch_size"]), float(cfg["problem"]["latent_dim"]) + 1
        return grid + 8.0 * bs * (4 + 4 * k), f"{what}, solver.batch_size={cfg['solver']['batch_size']}"

    def __init__(self, problem, options, ctx):
        super().__init__(problem, options, ctx)
        from ..mf.fused import sgd_block     # here, not at the top: it imports numba (the registry loads this module)
        self.kernel = sgd_block
        mf = self.mf
        self.lam_b = float(problem.opts["bias_l2"]) if mf.bias else 0.0
        uniform = problem.opts["reg"] == "uniform"
        rc, cc = np.maximum(problem.row_counts, 1), np.maximum(problem.col_counts, 1)

        def per_rating(lam, counts):      # L2 weight per rating of each row/column
            return lam / counts if uniform else np.full(counts.size, lam)
        lr_, lc_ = per_rating(self.lam, rc), per_rating(self.lam, cc)
        br_, bc_ = per_rating(self.lam_b, rc), per_rating(self.lam_b, cc)
        self.row_lam = [(lr_[mf.rcuts[b]:mf.rcuts[b + 1]], br_[mf.rcuts[b]:mf.rcuts[b + 1]]) for b in mf.groups]
        self.col_lam = (lc_, bc_)

    def step(self) -> Stop | None:
        """One epoch: every stratum once, in a seeded order."""
        epoch = self.nit
        with self.timed():
            lr = self.opts["lr"] / (1.0 + self.opts["decay"] * epoch)
            for s in np.random.default_rng([self.seed, 0xD5, epoch]).permutation(self.mf.nb):
                self.stratum_step(int(s), epoch, lr)
        return self.end_epoch()

    def stratum_step(self, s: int, epoch: int, lr: float) -> None:
        """SGD on every block of stratum ``s`` (this rank's blocks; column blocks via the ring)."""
        mf = self.mf
        x = mf.x
        Bs = mf.fetch(s, x)
        for t, b in enumerate(mf.groups):
            c = (b - s) % mf.nb
            rng = np.random.default_rng([self.seed, epoch, s, b])
            cl = slice(mf.ccuts[c], mf.ccuts[c + 1])
            self.sgd_block(mf.blocks[s][t], mf.A(x, t), Bs[t], lr, rng, self.row_lam[t],
                           (self.col_lam[0][cl], self.col_lam[1][cl]))
        mf.send_home(s, Bs, x)

    def sgd_block(self, blk, A, B, lr, rng, lam_r, lam_c) -> None:
        """Minibatch SGD over one block (compiled, :func:`mpiopt.mf.fused.sgd_block`); ``lam_r``/``lam_c``:
        (factor, bias) L2 weights per rating."""
        if blk.nnz == 0:
            return
        perm = rng.permutation(blk.nnz)
        self.kernel(blk.i, blk.j, blk.v, perm, A, B, self.k, lr, self.opts["batch_size"], self.lam, self.lam_b,
                        np.ascontiguousarray(lam_r[0]), np.ascontiguousarray(lam_r[1]),
                        np.ascontiguousarray(lam_c[0]), np.ascontiguousarray(lam_c[1]))

    def sgd_block_reference(self, blk, A, B, lr, rng, lam_r, lam_c) -> None:
        """The numpy version of :meth:`sgd_block` (vectorized minibatches; the tests' reference)."""
        if blk.nnz == 0:
            return
        perm = rng.permutation(blk.nnz)
        bs, k, lam, lam_b, bias = self.opts["batch_size"], self.k, self.lam, self.lam_b, self.mf.bias
        with np.errstate(over="ignore", invalid="ignore"):   # divergence shows up as a NaN objective
            for lo in range(0, blk.nnz, bs):
                idx = perm[lo:lo + bs]
                i, j = blk.i[idx], blk.j[idx]
                Ai, Bj = A[i], B[j]
                err = np.einsum("ij,ij->i", Ai[:, :k], Bj[:, :k])
                if bias:
                    err += Ai[:, k] + Bj[:, k]
                err -= blk.v[idx]
                gA = err[:, None] * Bj
                gB = err[:, None] * Ai
                if bias:
                    gA[:, k] = err
                    gB[:, k] = err
                if lam > 0:
                    gA[:, :k] += lam_r[0][i][:, None] * Ai[:, :k]
                    gB[:, :k] += lam_c[0][j][:, None] * Bj[:, :k]
                if bias and lam_b > 0:
                    gA[:, k] += lam_r[1][i] * Ai[:, k]
                    gB[:, k] += lam_c[1][j] * Bj[:, k]
                # a row met several times in one minibatch takes the mean of its updates (a sum would
                # multiply the step by the multiplicity and diverge on popular rows/columns)
                add_mean(A, i, gA, -lr)
                add_mean(B, j, gB, -lr)


def add_mean(F: np.ndarray, idx: np.ndarray, G: np.ndarray, scale: float) -> None:
    """F[r] += scale * (mean of the rows G[idx == r]) for every distinct r in idx (sort + reduceat;
    np.add.at on 2-D rows is an order of magnitude slower)."""
    order = np.argsort(idx, kind="stable")
    s = idx[order]
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    sums = np.add.reduceat(G[order], starts, axis=0)
    cnt = np.diff(np.append(starts, s.size))
    sums *= (scale / cnt)[:, None]
    F[s[starts]] += sums
