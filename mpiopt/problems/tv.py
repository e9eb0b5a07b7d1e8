"""Total-variation image denoising from K noisy copies sharded by rank:

    min_x (1/K) sum_k 0.5 ||x - y_k||^2 + lam * TV_aniso(x)

The clean image is a generated piecewise-constant phantom or a user image (.npy or PNG); copy k is
clean + noise * N(0, 1) keyed by (seed, k), so the data are the same at any rank count.
"""
from __future__ import annotations

import os

import numpy as np

from .. import options as O
from ..errors import InputError
from ..options import Option
from ..prox import TotalVariation, prox_tv2d
from ..registry import register_problem
from .base import CompositeProblem


def phantom(size: int) -> np.ndarray:
    """A piecewise-constant test image in [0, 1]: background, rectangle, disk and small squares."""
    img = np.zeros((size, size))
    i, j = np.mgrid[0:size, 0:size] / max(1, size - 1)
    img[(i > 0.15) & (i < 0.85) & (j > 0.1) & (j < 0.55)] = 0.6
    img[(i - 0.5) ** 2 + (j - 0.72) ** 2 < 0.18 ** 2] = 1.0
    img[(i > 0.3) & (i < 0.45) & (j > 0.2) & (j < 0.35)] = 0.2
    img[(i > 0.6) & (i < 0.7) & (j > 0.25) & (j < 0.45)] = 0.9
    return img


def load_image(path: str) -> np.ndarray:
    """A 2-D float image from .npy or PNG (colour -> mean of channels), scaled to [0, 1]."""
    if not os.path.exists(path):
        raise InputError(f"problem.image {path}: file not found")
    try:
        if path.lower().endswith(".npy"):
            img = np.load(path, allow_pickle=False)
        else:
            import matplotlib.image as mpimg  # lazy: matplotlib is heavy
            img = mpimg.imread(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
        raise InputError(f"problem.image {path}: cannot read the image ({exc})") from None
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    if img.ndim != 2 or min(img.shape) < 2:
        raise InputError(f"problem.image {path}: expected a 2-D image, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise InputError(f"problem.image {path}: NaN or Inf pixels")
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else img - lo


@register_problem("tv_denoise")
class TVDenoise(CompositeProblem):
    summary = "anisotropic TV denoising of a generated phantom or a .npy/PNG image, noisy copies sharded by rank"
    options = (
        Option("image", None, "clean image (.npy or PNG); none: generated phantom", str, nullable=True),
        Option("size", 64, "phantom: side in pixels", int, low=2),
        Option("n_copies", 8, "number of noisy copies (the samples), spread over the ranks", int, low=1),
        Option("noise", 0.2, "noise standard deviation", float, low=0.0),
        Option("lam", 0.05, "TV weight", float, low=0.0),
        Option("tv_iter", 30, "FGP iterations per TV prox", int, low=1),
        O.seed(0),
        Option("reference", "yes", "compute F* (prox of the mean copy, 2000 FGP iterations)", str, choices=("yes", "no")),
    )

    @classmethod
    def memory_estimate(cls, opts, n_ranks):
        if opts["image"]:
            return None
        pixels = float(opts["size"]) ** 2
        copies = -(-opts["n_copies"] // max(1, n_ranks))
        return 8.0 * pixels * (copies + 30), f"problem.size={opts['size']}, problem.n_copies={opts['n_copies']}"

    def setup(self) -> None:
        o, comm = self.opts, self.comm
        self.clean = load_image(o["image"]) if o["image"] else phantom(o["size"])
        self.shape = self.clean.shape
        self.n_vars = int(self.clean.size)
        K = o["n_copies"]
        lo, hi = K * comm.rank // comm.size, K * (comm.rank + 1) // comm.size
        self.Y = np.empty((hi - lo, self.n_vars))
        for r, k in enumerate(range(lo, hi)):
            rng = np.random.default_rng([o["seed"], 0x7F, k])
            self.Y[r] = self.clean.ravel() + o["noise"] * rng.standard_normal(self.n_vars)
        self.n_local = hi - lo
        self.n_samples = K
        self.regularizer = TotalVariation(o["lam"], self.shape, o["tv_iter"])

    def local_loss_grad(self, x, idx=None, grad_out=None):
        Y = self.Y if idx is None else self.Y[idx]
        k = Y.shape[0]
        loss = 0.5 * float(((Y - x) ** 2).sum())
        g = k * x - Y.sum(axis=0)
        if grad_out is not None:
            grad_out[:] = g
            g = grad_out
        return loss, g

    def mean_copy(self) -> np.ndarray:
        """Collective: the average of all K copies."""
        return self.comm.sum_ordered(self.Y.sum(axis=0), tag="eval") / self.n_samples

    def compute_reference(self) -> None:
        if self.opts["reference"] == "no":
            return
        self.reference_x = prox_tv2d(self.mean_copy().reshape(self.shape), self.opts["lam"], 2000).ravel()
        self.reference_objective = self.objective(self.reference_x)

    def psnr(self, x: np.ndarray) -> float:
        """PSNR of ``x`` against the clean image (peak = its range)."""
        mse = float(np.mean((x.reshape(self.shape) - self.clean) ** 2))
        peak = float(self.clean.max() - self.clean.min()) or 1.0
        return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)

    def metrics(self, x: np.ndarray) -> dict[str, float]:
        """Extra history values: PSNR of the iterate."""
        return {"psnr": self.psnr(x)}

    def describe(self) -> str:
        src = self.opts["image"] or f"phantom {self.opts['size']}x{self.opts['size']}"
        return (f"tv_denoise: {src}, {self.n_samples} copies, noise {self.opts['noise']}, lam {self.opts['lam']}; "
                f"PSNR of one copy {self.psnr(self.Y[0]) if self.n_local else float('nan'):.2f} dB")
