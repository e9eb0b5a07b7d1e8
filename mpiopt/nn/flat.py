"""Parameters and gradients of a torch module as views into two flat float32 buffers.

``FlatModel(module)`` moves every parameter into ``flat`` (``p.data`` is a view of a slice) and
gives each parameter a ``p.grad`` view of ``grad``, so a minibatch gradient lands in one vector
without concatenation and an RMA ``Get`` into ``flat_np`` updates the model in place.
The order is ``module.parameters()`` order. Floating-point buffers (BatchNorm running mean and
variance) are views of ``stats`` (``named_buffers()`` order), which directly follows ``flat`` in one
buffer ``state`` = [parameters | statistics], so one RMA ``Get`` reads both; integer buffers
(``num_batches_tracked``) stay outside.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorSlot:
    """Where one parameter tensor lives in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int
    size: int


class FlatModel:
    """Wrap ``module`` so that its parameters/gradients are views of ``flat``/``grad``."""

    def __init__(self, module: Any):
        import torch
        self.module = module
        params = list(module.named_parameters())
        self.slots: list[TensorSlot] = []
        off = 0
        for name, p in params:
            self.slots.append(TensorSlot(name, tuple(p.shape), off, p.numel()))
            off += p.numel()
        self.n = off
        bufs = [(name, b) for name, b in module.named_buffers() if b.is_floating_point()]
        self.stat_slots: list[TensorSlot] = []
        for name, b in bufs:
            self.stat_slots.append(TensorSlot(name, tuple(b.shape), off - self.n, b.numel()))
            off += b.numel()
        self.n_stats = off - self.n
        self.state = torch.zeros(self.n + self.n_stats, dtype=torch.float32)
        self.flat = self.state[:self.n]
        self.stats = self.state[self.n:]
        self.grad = torch.zeros(self.n, dtype=torch.float32)
        with torch.no_grad():
            for (name, p), s in zip(params, self.slots):
                view = self.flat[s.offset:s.offset + s.size].view(s.shape)
                view.copy_(p.data)
                p.data = view
                p.grad = self.grad[s.offset:s.offset + s.size].view(s.shape)
        self.params = [p for _, p in params]
        self.flat_np: np.ndarray = self.flat.numpy()
        self.grad_np: np.ndarray = self.grad.numpy()
        with torch.no_grad():
            for (name, b), s in zip(bufs, self.stat_slots):
                view = self.stats[s.offset:s.offset + s.size].view(s.shape)
                view.copy_(b)
                b.data = view
        self.stats_np: np.ndarray = self.stats.numpy()
        self.state_np: np.ndarray = self.state.numpy()

    # -- layout ---------------------------------------------------------------------------
    def layout_hash(self) -> str:
        """Hash of (names, shapes) of parameters and statistics: equal on every rank iff the flat
        layouts agree."""
        text = ";".join(f"{s.name}:{'x'.join(map(str, s.shape))}" for s in [*self.slots, *self.stat_slots])
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def zero_grad(self) -> None:
        """Zero the gradient buffer in place (the views stay attached)."""
        self.grad.zero_()

    def views_intact(self) -> bool:
        """Whether every ``p.data``/``p.grad`` is still a view of the flat buffers."""
        base_f = self.flat.data_ptr()
        base_g = self.grad.data_ptr()
        for p, s in zip(self.params, self.slots):
            if p.data_ptr() != base_f + 4 * s.offset:
                return False
            if p.grad is None or p.grad.data_ptr() != base_g + 4 * s.offset:
                return False
        return True

    def set_trainable(self, lo: int, hi: int) -> None:
        """Only tensors that overlap ``[lo, hi)`` get gradients (partial backward for PASSM); a
        tensor cut by ``lo`` or ``hi`` gets its whole gradient, of which the caller uses a part."""
        for p, s in zip(self.params, self.slots):
            p.requires_grad_(s.offset < hi and lo < s.offset + s.size)

    def load(self, x: np.ndarray, stats: np.ndarray | None = None) -> None:
        """Set the parameters to ``x`` and, if given, the statistics to ``stats`` (in place)."""
        self.flat_np[:] = x
        if stats is not None and self.n_stats:
            self.stats_np[:] = stats

    def stats_intact(self) -> bool:
        """Whether every floating-point buffer is still a view of ``stats``."""
        base = self.stats.data_ptr()
        bufs = [b for _, b in self.module.named_buffers() if b.is_floating_point()]
        return all(b.data_ptr() == base + 4 * s.offset for b, s in zip(bufs, self.stat_slots))

    def buffers_vector(self) -> np.ndarray:
        """Module buffers (e.g. BatchNorm running statistics) as one float64 vector."""
        bufs = [b.detach().double().reshape(-1).numpy() for _, b in self.module.named_buffers()]
        return np.concatenate(bufs) if bufs else np.zeros(0)

    def load_buffers_vector(self, vec: np.ndarray) -> None:
        import torch
        off = 0
        with torch.no_grad():
            for _, b in self.module.named_buffers():
                n = b.numel()
                b.copy_(torch.from_numpy(np.asarray(vec[off:off + n])).view_as(b).to(b.dtype))
                off += n


def partition_elements(n: int, parts: int) -> list[tuple[int, int]]:
    """Split ``n`` elements into ``parts`` contiguous ranges whose sizes differ by at most one
    (tensors may be cut anywhere): blocks balanced by parameter count."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    cuts = [(j * int(n)) // parts for j in range(parts + 1)]
    return [(cuts[j], cuts[j + 1]) for j in range(parts)]


def partition_tensors(sizes: list[int] | np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Split tensors (element counts, in order) into ``parts`` contiguous groups, never splitting a
    tensor, minimising the largest group. Returns ``parts`` element ranges ``(lo, hi)``; groups are
    non-empty when there are at least ``parts`` tensors (else the last ones are empty)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    nt = int(sizes.size)
    if parts < 1:
        raise ValueError("parts must be >= 1")
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    k = min(parts, nt)
    if k == 0:
        return [(0, 0)] * parts
    # best[j, i]: smallest possible largest group when the first i tensors form j groups
    INF = np.iinfo(np.int64).max
    best = np.full((k + 1, nt + 1), INF, dtype=np.int64)
    cut = np.zeros((k + 1, nt + 1), dtype=np.int64)
    best[0, 0] = 0
    for j in range(1, k + 1):
        for i in range(j, nt + 1):
            prev = np.arange(j - 1, i)                      # last group is tensors prev..i-1
            cost = np.maximum(best[j - 1, prev], bounds[i] - bounds[prev])
            a = int(np.argmin(cost))
            best[j, i], cut[j, i] = cost[a], prev[a]
    ends = [nt]
    for j in range(k, 0, -1):
        ends.append(int(cut[j, ends[-1]]))
    ends = ends[::-1]                                       # 0 = e_0 < e_1 < ... < e_k = nt
    out = [(int(bounds[ends[j]]), int(bounds[ends[j + 1]])) for j in range(k)]
    out += [(int(bounds[-1]), int(bounds[-1]))] * (parts - k)
    return out
