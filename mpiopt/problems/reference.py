"""Reference optima F* of composite problems, computed collectively with scipy's L-BFGS-B."""
from __future__ import annotations

from typing import Callable

import numpy as np
from mpi4py import MPI
from scipy.optimize import minimize

from ..comm import Comm
from ..protocols import Optimum, Regularizer

LocalFG = Callable[[np.ndarray], tuple[float, np.ndarray]]


def driven_minimize(comm: Comm, fg_local: LocalFG, z0: np.ndarray, bounds, **options) -> np.ndarray:
    """Minimise sum_ranks fg_local(z): rank 0 runs L-BFGS-B, every rank evaluates its part.
    Returns the minimiser on every rank."""
    n = z0.size
    buf = np.empty(n + 1)
    out = np.empty(n + 1)

    def total_fg(z: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = fg_local(z)
        out[:n] = g
        out[n] = f
        comm.Allreduce(MPI.IN_PLACE, out, tag="reference")
        return float(out[n]), out[:n].copy()

    if comm.rank == 0:
        def fun(z):
            if comm.size > 1:
                buf[0] = 1.0
                buf[1:] = z
                comm.Bcast(buf, tag="reference")
            return total_fg(z)
        res = minimize(fun, z0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 20000, "maxcor": 20, "ftol": 1e-15, "gtol": 1e-11, **options})
        z = res.x
        if comm.size > 1:
            buf[0] = 0.0
            buf[1:] = z
            comm.Bcast(buf, tag="reference")
        return z
    while True:
        comm.Bcast(buf, tag="reference")
        if buf[0] == 0.0:
            return buf[1:].copy()
        total_fg(buf[1:])


def weighted_split_optimum(comm: Comm, local_loss_grad: Callable, n_vars: int, n_samples: int,
                           lam: np.ndarray, l2: float, nonneg: bool = False) -> tuple[float, np.ndarray]:
    """Collective: min (1/N) sum loss_i(w) + sum lam_i |w_i| + l2/2||w||^2 (w >= 0 if ``nonneg``)
    by L-BFGS-B on the split w = u - v, u, v >= 0. Returns (F*, w*) on every rank."""
    def fg(z: np.ndarray) -> tuple[float, np.ndarray]:
        u, v = z[:n_vars], z[n_vars:]
        w = u - v
        loss, g = local_loss_grad(w, None)
        f = loss / n_samples
        g = g / n_samples
        if comm.rank == 0:  # the regulariser is added once
            f += float(lam @ (u + v)) + 0.5 * l2 * float(w @ w)
            g = g + l2 * w
            return f, np.concatenate([g + lam, -g + lam])
        return f, np.concatenate([g, -g])

    bounds = [(0.0, None)] * n_vars + [(0.0, 0.0 if nonneg else None)] * n_vars
    z = driven_minimize(comm, fg, np.zeros(2 * n_vars), bounds=bounds)
    w = z[:n_vars] - z[n_vars:]
    loss, _ = local_loss_grad(w, None)
    total = comm.allreduce_scalar(loss, tag="reference") / n_samples
    return total + float(lam @ np.abs(w)) + 0.5 * l2 * float(w @ w), w


def elastic_net_optimum(comm: Comm, local_loss_grad: Callable, n_vars: int, n_samples: int,
                        l1: float, l2: float) -> tuple[float, np.ndarray]:
    """Collective: min (1/N) sum loss_i(w) + l1||w||_1 + l2/2||w||^2; (F*, w*) on every rank."""
    return weighted_split_optimum(comm, local_loss_grad, n_vars, n_samples, np.full(n_vars, float(l1)), l2)


def prox_gradient_optimum(comm: Comm, local_loss_grad: Callable, n_vars: int, n_samples: int, reg,
                          l2: float = 0.0, *, rtol: float = 1e-10, max_iter: int = 50000
                          ) -> tuple[float, np.ndarray]:
    """Collective: min (1/N) sum loss_i(w) + l2/2||w||^2 + r(w) for any convex ``reg`` with a prox
    (group lasso, box, balls, simplex, ...), by FISTA with backtracking and gradient restarts.

    Stops when the gradient mapping ||w - prox(w - g/L)|| * L <= rtol * max(1, ||g||) (first-order
    optimality). Every rank runs the same iteration on sums taken in rank order (bit-identical).
    Returns (F*, w*) on every rank."""
    def fg(w: np.ndarray) -> tuple[float, np.ndarray]:
        loss, g = local_loss_grad(w, None)
        tot = comm.sum_ordered(np.concatenate([[loss], g]), tag="reference")
        return float(tot[0] / n_samples + 0.5 * l2 * (w @ w)), tot[1:] / n_samples + l2 * w

    x = np.zeros(n_vars)
    y, fy, gy = x.copy(), *fg(x)
    L, t = 1.0, 1.0
    for _ in range(max_iter):
        while True:                                   # backtracking on the smooth part
            z = reg.prox(y - gy / L, 1.0 / L)
            d = z - y
            fz, gz = fg(z)
            if fz <= fy + gy @ d + 0.5 * L * (d @ d) + 1e-15 * abs(fy):
                break
            L *= 2.0
        if np.linalg.norm(d) * L <= rtol * max(1.0, np.linalg.norm(gy)):
            x = z
            break
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        restart = d @ (z - x) < 0                     # O'Donoghue-Candes gradient restart
        y = z if restart else z + ((t - 1.0) / t_next) * (z - x)
        t = 1.0 if restart else t_next
        x = z
        fy, gy = (fz, gz) if restart else fg(y)
        L *= 0.9                                      # let the step grow again
    loss, _ = local_loss_grad(x, None)
    total = float(comm.sum_ordered(np.array([loss]), tag="reference")[0]) / n_samples
    return total + 0.5 * l2 * float(x @ x) + reg.value(x), x


class CompositeReference:
    """The reference solvers (:class:`mpiopt.protocols.ReferenceSolvers`) bound to a composite
    problem's ``local_loss_grad`` and sizes; collective, like the functions they call."""

    def __init__(self, comm: Comm, local_loss_grad: Callable, n_vars: int, n_samples: int):
        self.comm, self.local_loss_grad = comm, local_loss_grad
        self.n_vars, self.n_samples = n_vars, n_samples

    def split_l1(self, lam: np.ndarray, l2: float = 0.0, nonneg: bool = False) -> Optimum:
        """:func:`weighted_split_optimum` with per-feature L1 weights ``lam``."""
        return weighted_split_optimum(self.comm, self.local_loss_grad, self.n_vars, self.n_samples, lam, l2,
                                      nonneg=nonneg)

    def prox_gradient(self, reg: Regularizer, l2: float = 0.0) -> Optimum:
        """:func:`prox_gradient_optimum` for the convex ``reg``."""
        return prox_gradient_optimum(self.comm, self.local_loss_grad, self.n_vars, self.n_samples, reg, l2)
