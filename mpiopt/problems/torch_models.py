"""Image classification with torch models: ``digits`` (scikit-learn's bundled 8x8 digits, offline),
``mnist`` (idx files at problem.path) and ``cifar10`` (python batches at problem.path).

Every rank holds the whole training set (the async methods sample each minibatch uniformly from all
data) as uint8 or float32 and normalises per batch. The model (``mlp``, ``cnn``, ``cnn_bn``, ``resnet18``) is
built with ``problem.seed``, so every rank starts from the same weights. torch is imported in
:meth:`setup`, never at module import.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import options as O
from ..errors import InputError
from ..options import Option
from ..registry import register_problem
from .base import Problem, settings


class TorchModelProblem(Problem):
    """Base of the torch classification problems: data, normalisation and the model factory."""

    kind_name = "torch model training"
    requires = (("torch", "torch"),)    # (module, pip extra): checked before any work
    default_model = "cnn"
    in_shape: tuple[int, ...] = ()
    image_shape: tuple[int, ...] = ()     # (C, H, W) of the data set's images, known before set-up
    n_classes = 10

    @classmethod
    def model_options(cls, default_model: str) -> tuple[Option, ...]:
        return (
            Option("model", default_model, "network: mlp, cnn (small), cnn_bn (the small CNN with BatchNorm) or "
                   "resnet18 (the paper's CIFAR ResNet18)", str, choices=("mlp", "cnn", "cnn_bn", "resnet18")),
            Option("width", 0, "model width (mlp hidden units, cnn/cnn_bn/resnet18 base channels; 0: default 128/16/64)",
                   int, low=0),
            Option("n_train", 0, "use only the first n training images (0: all)", int, low=0),
            Option("n_test", 0, "use only the first n test images (0: all)", int, low=0),
            O.seed(0, "seed of the model's initial weights (and of the digits train/test split)"),
        )

    def __init__(self, options: dict[str, Any], comm: Any):
        super().__init__(options, comm)
        self.X_train: np.ndarray = np.zeros(0)
        self.y_train: np.ndarray = np.zeros(0, np.int64)
        self.X_test: np.ndarray = np.zeros(0)
        self.y_test: np.ndarray = np.zeros(0, np.int64)
        self.mean = np.zeros(1, np.float32)
        self.std = np.ones(1, np.float32)
        self.scale = 1.0

    @classmethod
    def memory_estimate(cls, opts, n_ranks):
        """The model on every rank: its parameters (counted exactly: a quadratic in the width, fitted
        on three small widths) as float32, times the copies a training run keeps (weights, gradients,
        momentum, shared window, snapshots, evaluation)."""
        if not cls.image_shape:
            return None
        from ..nn.models import build_model

        def count(width):
            return sum(p.numel() for p in build_model(opts["model"], cls.image_shape, cls.n_classes, width).parameters())

        w = opts["width"]
        if not w:
            params = float(count(None))
        else:
            p4, p8, p12 = (float(count(v)) for v in (4, 8, 12))
            a = (p12 - 2 * p8 + p4) / 32.0          # params(w) = a w^2 + b w + c exactly
            b = (p8 - p4) / 4.0 - 12 * a
            c = p4 - 16 * a - 4 * b
            params = a * w * w + b * w + c
        return 8 * 4.0 * params, settings(opts, "model", "width")

    # -- data --------------------------------------------------------------------------------
    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(X_train, y_train, X_test, y_test) with images shaped (n, C, H, W)."""
        raise NotImplementedError

    def setup(self) -> None:
        Xtr, ytr, Xte, yte = self.load()
        o = self.opts
        if o["n_train"]:
            Xtr, ytr = Xtr[:o["n_train"]], ytr[:o["n_train"]]
        if o["n_test"]:
            Xte, yte = Xte[:o["n_test"]], yte[:o["n_test"]]
        if len(ytr) == 0 or len(yte) == 0:
            raise InputError(f"problem {self.name}: empty training or test set")
        self.X_train, self.y_train = np.ascontiguousarray(Xtr), np.ascontiguousarray(ytr, dtype=np.int64)
        self.X_test, self.y_test = np.ascontiguousarray(Xte), np.ascontiguousarray(yte, dtype=np.int64)
        self.in_shape = tuple(int(s) for s in self.X_train.shape[1:])
        if self.opts.get("model") == "resnet18" and self.in_shape[1:] != (32, 32):
            raise InputError(f"problem.model=resnet18 needs 32x32 images; {self.name} has "
                             f"{self.in_shape[1]}x{self.in_shape[2]}")
        import torch
        torch.set_num_threads(1)

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.y_test.shape[0])

    def _to_tensor(self, X: np.ndarray) -> Any:
        import torch
        x = torch.from_numpy(np.asarray(X, dtype=np.float32))
        if self.scale != 1.0:
            x = x * np.float32(1.0 / self.scale)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - torch.from_numpy(self.mean).view(shape)) / torch.from_numpy(self.std).view(shape)

    def train_batch(self, idx: np.ndarray) -> tuple[Any, Any]:
        """Normalised images and labels of training samples ``idx`` (torch tensors)."""
        import torch
        return self._to_tensor(self.X_train[idx]), torch.from_numpy(self.y_train[idx])

    def test_set(self, limit: int = 0) -> tuple[Any, Any]:
        import torch
        n = self.n_test if not limit else min(limit, self.n_test)
        return self._to_tensor(self.X_test[:n]), torch.from_numpy(self.y_test[:n])

    def train_subset(self, n: int, seed: int = 0) -> tuple[Any, Any]:
        """A fixed random subset of the training set (for the train loss of snapshots)."""
        idx = np.random.default_rng(seed).choice(self.n_train, size=min(n, self.n_train), replace=False)
        return self.train_batch(np.sort(idx))

    # -- model -------------------------------------------------------------------------------
    def build_model(self) -> Any:
        from ..nn.models import build_model
        return build_model(self.opts["model"], self.in_shape, self.n_classes, self.opts["width"] or None,
                           seed=self.opts["seed"])

    def describe(self) -> str:
        model = self.opts.get("model") or f"{type(self).__name__}.build_model"
        return f"{self.name}: {self.n_train} train / {self.n_test} test images {self.in_shape}, model {model}"


@register_problem("digits")
class Digits(TorchModelProblem):
    image_shape = (1, 8, 8)
    summary = "scikit-learn's bundled 8x8 digits (1797 images, offline), torch model (cnn/mlp)"
    options = (*TorchModelProblem.model_options("cnn"),
               Option("test_fraction", 0.2, "fraction of the images held out for testing", float,
                      low=0.0, high=1.0, low_open=True, high_open=True))

    def load(self):
        from sklearn.datasets import load_digits
        d = load_digits()
        X = d.images.astype(np.float32).reshape(-1, 1, 8, 8)
        y = d.target.astype(np.int64)
        perm = np.random.default_rng(self.opts["seed"]).permutation(len(y))
        n_test = max(1, int(round(self.opts["test_fraction"] * len(y))))
        te, tr = perm[:n_test], perm[n_test:]
        self.scale = 16.0
        mean = float((X[tr] / 16.0).mean())
        std = float((X[tr] / 16.0).std())
        self.mean, self.std = np.array([mean], np.float32), np.array([std], np.float32)
        return X[tr], y[tr], X[te], y[te]


@register_problem("mnist")
class Mnist(TorchModelProblem):
    image_shape = (1, 28, 28)
    summary = "MNIST from the standard idx files in problem.path (never downloads), torch model"
    options = (O.path("folder with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-*-ubyte (optionally .gz)"),
               *TorchModelProblem.model_options("cnn"))

    def load(self):
        from ..data.mnist import load_mnist
        if not self.opts["path"]:
            raise InputError("problem.path: the mnist problem needs the folder of the MNIST idx files")
        Xtr, ytr = load_mnist(self.opts["path"], "train")
        Xte, yte = load_mnist(self.opts["path"], "test")
        self.scale = 255.0
        self.mean, self.std = np.array([0.1307], np.float32), np.array([0.3081], np.float32)
        return Xtr[:, None], ytr, Xte[:, None], yte


@register_problem("cifar10")
class Cifar10(TorchModelProblem):
    image_shape = (3, 32, 32)
    summary = "CIFAR-10 from the python batches in problem.path (never downloads), ResNet18 by default"
    options = (O.path("folder with cifar-10-batches-py/ (data_batch_1..5, test_batch)"),
               *TorchModelProblem.model_options("resnet18"))

    def load(self):
        from ..data.cifar import load_cifar10
        if not self.opts["path"]:
            raise InputError("problem.path: the cifar10 problem needs the folder of the CIFAR-10 python batches")
        Xtr, ytr = load_cifar10(self.opts["path"], "train")
        Xte, yte = load_cifar10(self.opts["path"], "test")
        self.scale = 255.0
        self.mean = np.array([0.4914, 0.4822, 0.4465], np.float32)
        self.std = np.array([0.2470, 0.2435, 0.2616], np.float32)
        return Xtr, ytr, Xte, yte
