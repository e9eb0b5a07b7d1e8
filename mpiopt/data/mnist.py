"""MNIST from the standard idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``) in a user-given
folder. Never downloads. Format: big-endian int32 header (magic 2051: count, rows, cols; magic
2049: count), then uint8 data, row-major."""
from __future__ import annotations

import gzip
import math
import os
import zlib
from typing import Any

import numpy as np

from ..errors import InputError
from ..preflight import check_input_file, open_input

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IDX_MAX_BYTES = 4 << 30      # MNIST's images file holds 47 MB; a header declaring more than this is refused
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find(folder: str, name: str) -> str:
    for cand in (name, name + ".gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(folder, cand)
        if os.path.lexists(p):
            check_input_file(p)
            return p
    raise InputError(f"problem.path {folder}: MNIST file {name}[.gz] not found")


def _read_exactly(fh: Any, n: int, path: str) -> bytes:
    """``n`` bytes of ``fh``, or fewer at the end of the file (one extra byte tells a longer file)."""
    try:
        return fh.read(n)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None


def read_idx(path: str) -> np.ndarray:
    """An idx file as a uint8 array: (count, rows, cols) for images, (count,) for labels. Only as many
    bytes as the header declares (at most :data:`IDX_MAX_BYTES`) are read, compressed or not."""
    raw = open_input(path)
    try:
        fh = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
        data = _read_exactly(fh, 8, path)
        if len(data) < 8:
            raise InputError(f"{path}: too short for an idx header ({len(data)} bytes)")
        magic = int.from_bytes(data[0:4], "big")
        if magic == IMAGES_MAGIC:
            data += _read_exactly(fh, 8, path)
            if len(data) < 16:
                raise InputError(f"{path}: too short for an idx image header")
            n, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
            shape: tuple[int, ...] = (n, rows, cols)
        elif magic == LABELS_MAGIC:
            shape = (int.from_bytes(data[4:8], "big"),)
        else:
            raise InputError(f"{path}: bad idx magic number {magic} (expected {IMAGES_MAGIC} or {LABELS_MAGIC})")
        need = math.prod(shape)
        if need > IDX_MAX_BYTES:
            raise InputError(f"{path}: header declares {need} data bytes, more than the {IDX_MAX_BYTES >> 30} GiB "
                             "an idx file may have")
        body = _read_exactly(fh, need + 1, path)
    finally:
        raw.close()
    if len(body) < need:
        raise InputError(f"{path}: header says {need} data bytes, file has {len(body)}")
    if len(body) > need:
        raise InputError(f"{path}: header says {need} data bytes, the file has more")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


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
