"""CIFAR-10 from the standard python batches (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``:
pickled dicts with b"data" (n x 3072 uint8: 1024 R, 1024 G, 1024 B, each 32x32 row-major) and
b"labels") in a user-given folder (the folder itself or its ``cifar-10-batches-py`` child).
Never downloads. A batch is data, never code: it is read with an unpickler that builds only what real
batches hold (dicts, lists, bytes, str, numbers and numpy arrays through numpy's own reconstructors)
and refuses any other object a pickle names, without calling it."""
from __future__ import annotations

import io
import os
import pickle
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from ..preflight import read_input

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
BATCH_MAX_BYTES = 256 << 20        # a real batch has 30.7 MB; a larger file is refused unread


def _folder(path: str) -> str:
    if not os.path.isdir(path):
        raise InputError(f"problem.path {path}: not a folder")
    sub = os.path.join(path, "cifar-10-batches-py")
    return sub if os.path.isdir(sub) else path


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of bytes use it: str -> bytes in latin-1, nothing else."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not a bytes literal")
    return text.encode("latin-1")


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    """The objects a CIFAR-10 batch pickle may name: numpy's array and dtype reconstructors (under the
    module names numpy 1 and numpy 2 write) and the latin-1 encoder of protocol-2 bytes."""
    arr = np.zeros(1, np.uint8)
    reconstruct = arr.__reduce_ex__(2)[0]         # numpy's _reconstruct
    frombuffer = arr.__reduce_ex__(5)[0]          # numpy's _frombuffer (protocol 5)
    out: dict[tuple[str, str], Callable[..., Any]] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                                      ("_codecs", "encode"): _latin1}
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        out[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return out


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds only the objects of :func:`_allowed_globals` (plus the built-in
    containers and scalars that need no lookup); any other name is refused before it is imported."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        obj = self._allowed.get((module, name))
        if obj is None:
            raise _Refused(f"{module}.{name}")
        return obj


class _Refused(pickle.UnpicklingError):
    pass


def _unpickle(data: bytes, path: str) -> Any:
    try:
        return BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as exc:
        raise InputError(f"{path}: not a CIFAR-10 python batch: it names {exc}, which a data batch never "
                         "holds (refused, not run)") from None
    except MemoryError:
        raise InputError(f"{path}: not a CIFAR-10 python batch (asks for more memory than there is)") from None
    except Exception as exc:  # noqa: BLE001 - any malformed pickle is bad input, named once
        msg = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise InputError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}{': ' + msg if msg else ''})") \
            from None


def read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: images (n, 3, 32, 32) uint8 and labels (n,) int64."""
    if not os.path.lexists(path):
        raise InputError(f"{path}: CIFAR-10 batch not found")
    d = _unpickle(read_input(path, None, BATCH_MAX_BYTES), path)
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise InputError(f"{path}: not a CIFAR-10 python batch (needs b'data' and b'labels')")
    raw, raw_labels = d[b"data"], d[b"labels"]
    if not isinstance(raw, np.ndarray) or raw.dtype.kind not in "ui":
        raise InputError(f"{path}: b'data' is not an integer array")
    if not isinstance(raw_labels, (list, np.ndarray)) or \
            (isinstance(raw_labels, list) and not all(type(v) is int for v in raw_labels)):
        raise InputError(f"{path}: b'labels' is not a list of integers")
    try:
        labels = np.asarray(raw_labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{path}: b'labels' is not a list of integers") from None
    data = raw
    if data.ndim != 2 or data.shape[1] != 3072:
        raise InputError(f"{path}: b'data' has shape {data.shape}, expected (n, 3072)")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise InputError(f"{path}: {labels.shape[0] if labels.ndim else 0} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise InputError(f"{path}: label out of range 0-9")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise InputError(f"{path}: pixel values out of range 0-255")
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels


def write_batch(path: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write a batch in the CIFAR-10 python format (for tests and small subsets)."""
    d = {b"batch_label": b"mpiopt", b"data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), 3072),
         b"labels": [int(v) for v in labels], b"filenames": [b"x"] * len(labels)}
    with open(path, "wb") as fh:
        pickle.dump(d, fh, protocol=2)


def load_cifar10(path: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, 32, 32) uint8 and labels (n,) int64 of ``split`` ("train" or "test")."""
    folder = _folder(path)
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    parts = [read_batch(os.path.join(folder, n)) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
