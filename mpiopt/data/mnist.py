"""MNIST from the standard idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``) in a user-given
folder. Never downloads. Format: big-endian int32 header (magic 2051: count, rows, cols; magic
2049: count), then uint8 data, row-major."""
from __future__ import annotations

import gzip
import os

import numpy as np

from ..errors import InputError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find(folder: str, name: str) -> str:
    for cand in (name, name + ".gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(folder, cand)
        if os.path.exists(p):
            return p
    raise InputError(f"problem.path {folder}: MNIST file {name}[.gz] not found")


def _read_bytes(path: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        with open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None


def read_idx(path: str) -> np.ndarray:
    """An idx file as a uint8 array: (count, rows, cols) for images, (count,) for labels."""
    data = _read_bytes(path)
    if len(data) < 8:
        raise InputError(f"{path}: too short for an idx header ({len(data)} bytes)")
    magic = int.from_bytes(data[0:4], "big")
    if magic == IMAGES_MAGIC:
        if len(data) < 16:
            raise InputError(f"{path}: too short for an idx image header")
        n, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
        shape, head = (n, rows, cols), 16
    elif magic == LABELS_MAGIC:
        n = int.from_bytes(data[4:8], "big")
        shape, head = (n,), 8
    else:
        raise InputError(f"{path}: bad idx magic number {magic} (expected {IMAGES_MAGIC} or {LABELS_MAGIC})")
    need = int(np.prod(shape))
    if len(data) - head != need:
        raise InputError(f"{path}: header says {need} data bytes, file has {len(data) - head}")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array as an idx file (3-D: images, 1-D: labels); ``.gz`` names are gzipped."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    if a.ndim == 3:
        head = b"".join(int(v).to_bytes(4, "big") for v in (IMAGES_MAGIC, *a.shape))
    elif a.ndim == 1:
        head = LABELS_MAGIC.to_bytes(4, "big") + int(a.shape[0]).to_bytes(4, "big")
    else:
        raise ValueError("idx: expected a 3-D image or 1-D label array")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(head + a.tobytes())


def load_mnist(folder: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 28, 28) uint8 and labels (n,) int64 of ``split`` ("train" or "test")."""
    if not os.path.isdir(folder):
        raise InputError(f"problem.path {folder}: not a folder")
    img_name, lab_name = FILES[split]
    img_path, lab_path = _find(folder, img_name), _find(folder, lab_name)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3:
        raise InputError(f"{img_path}: not an idx image file")
    if labels.ndim != 1:
        raise InputError(f"{lab_path}: not an idx label file")
    if images.shape[0] != labels.shape[0]:
        raise InputError(f"{lab_path}: {labels.shape[0]} labels for {images.shape[0]} images in {img_path}")
    if labels.size and labels.max() > 9:
        raise InputError(f"{lab_path}: label {int(labels.max())} out of range 0-9")
    return images, labels.astype(np.int64)
