"""Training-step helpers shared by ``async_subgradient`` and ``ddp``.

The update of the asynchronous subgradient method (its Algorithm 1) on a flat vector, all numpy in place:
``g += wd * x + l1 * sign(x)``; ``u = m * u + g``; ``delta = -(1 - m) * step * u``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def step_size(gamma: float, alpha: float, k: int) -> float:
    """The step ``alpha_c * gamma / sqrt(k)`` for the worker's k-th update (k >= 1)."""
    return alpha * gamma / math.sqrt(max(1, k))


def add_penalties(g: np.ndarray, x: np.ndarray, wd: float, l1: float) -> np.ndarray:
    """``g += wd * x + l1 * sign(x)`` in place (L2 weight decay, then the L1 subgradient; sign(0)=0)."""
    if wd:
        g += np.float32(wd) * x
    if l1:
        g += np.float32(l1) * np.sign(x)
    return g


def momentum_delta(u: np.ndarray, g: np.ndarray, m: float, step: float, out: np.ndarray) -> np.ndarray:
    """``u = m*u + g`` (in place) and ``out = -(1-m)*step*u``: the increment to add to the shared x."""
    u *= np.float32(m)
    u += g
    np.multiply(u, np.float32(-(1.0 - m) * step), out=out)
    return out


def loss_and_grad(flat: Any, X: Any, y: Any) -> float:
    """Zero the flat gradient, run forward + backward of the mean cross-entropy on (X, y); the
    gradient lands in ``flat.grad``. Returns the batch loss."""
    import torch.nn.functional as F
    flat.zero_grad()
    out = flat.module(X)
    loss = F.cross_entropy(out, y)
    loss.backward()
    return float(loss.detach())


def evaluate(module: Any, X: Any, y: Any, batch: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``module`` (eval mode) on (X, y)."""
    import torch
    import torch.nn.functional as F
    was_training = module.training
    module.eval()
    total, correct, n = 0.0, 0, int(y.shape[0])
    with torch.no_grad():
        for i in range(0, n, batch):
            out = module(X[i:i + batch])
            total += float(F.cross_entropy(out, y[i:i + batch], reduction="sum"))
            correct += int((out.argmax(1) == y[i:i + batch]).sum())
    module.train(was_training)
    return total / max(1, n), correct / max(1, n)


def recalibrate_batchnorm(module: Any, batches: list[Any]) -> None:
    """Reset BatchNorm running statistics and re-estimate them with train-mode forward passes over
    ``batches`` (cumulative average, no gradients): the statistics of a snapshot's own weights."""
    import torch
    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    was_training = module.training
    module.train()
    with torch.no_grad():
        for X in batches:
            module(X)
    for bn, mom in zip(bns, saved):
        bn.momentum = mom
    module.train(was_training)


class Evaluator:
    """Test loss/accuracy and the loss/accuracy on a fixed training subset of a model. Models with
    BatchNorm get their statistics recalibrated on fixed training batches first; with
    ``restore_buffers`` the module's own statistics are put back afterwards; with
    ``recalibrate=False`` the module's statistics are used as they are (e.g. shared statistics)."""

    def __init__(self, problem: Any, eval_samples: int = 0, train_eval_samples: int = 1000,
                 bn_batches: int = 8, batch_size: int = 64, restore_buffers: bool = False,
                 recalibrate: bool = True):
        self.problem = problem
        self.test = problem.test_set(eval_samples)
        self.train = problem.train_subset(train_eval_samples, seed=1)
        self.n_bn, self.batch_size = bn_batches, batch_size
        self.bn: list[Any] | None = None
        self.restore_buffers = restore_buffers
        self.recalibrate = recalibrate

    def _bn_batches(self) -> list[Any]:
        if self.bn is None:
            p, rng = self.problem, np.random.default_rng(2)
            self.bn = [p.train_batch(rng.integers(0, p.n_train, self.batch_size))[0] for _ in range(self.n_bn)]
        return self.bn

    def __call__(self, flat: Any) -> tuple[float, float, float, float]:
        """(train_loss, train_accuracy, test_loss, test_accuracy) of ``flat`` (a FlatModel)."""
        from .models import has_batchnorm
        module = flat.module
        bn = self.recalibrate and has_batchnorm(module)
        saved = flat.buffers_vector() if (bn and self.restore_buffers) else None
        if bn:
            recalibrate_batchnorm(module, self._bn_batches())
        te_loss, te_acc = evaluate(module, *self.test)
        tr_loss, tr_acc = evaluate(module, *self.train)
        if saved is not None:
            flat.load_buffers_vector(saved)
        return tr_loss, tr_acc, te_loss, te_acc
