"""CIFAR-10 from the standard python batches (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``:
pickled dicts with b"data" (n x 3072 uint8: 1024 R, 1024 G, 1024 B, each 32x32 row-major) and
b"labels") in a user-given folder (the folder itself or its ``cifar-10-batches-py`` child).
Never downloads."""
from __future__ import annotations

import os
import pickle

import numpy as np

from ..errors import InputError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)


def _folder(path: str) -> str:
    if not os.path.isdir(path):
        raise InputError(f"problem.path {path}: not a folder")
    sub = os.path.join(path, "cifar-10-batches-py")
    return sub if os.path.isdir(sub) else path


def read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: images (n, 3, 32, 32) uint8 and labels (n,) int64."""
    try:
        with open(path, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
    except FileNotFoundError:
        raise InputError(f"{path}: CIFAR-10 batch not found") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise InputError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise InputError(f"{path}: not a CIFAR-10 python batch (needs b'data' and b'labels')")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise InputError(f"{path}: b'data' has shape {data.shape}, expected (n, 3072)")
    if labels.shape[0] != data.shape[0]:
        raise InputError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise InputError(f"{path}: label out of range 0-9")
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels


def write_batch(path: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write a batch in the CIFAR-10 python format (for tests and small subsets)."""
    d = {b"batch_label": b"mpiopt", b"data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), 3072),
         b"labels": [int(v) for v in labels], b"filenames": [b"x"] * len(labels)}
    with open(path, "wb") as fh:
        pickle.dump(d, fh)


def load_cifar10(path: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, 32, 32) uint8 and labels (n,) int64 of ``split`` ("train" or "test")."""
    folder = _folder(path)
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    parts = [read_batch(os.path.join(folder, n)) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
