"""Sharded reading of svmlight/LIBSVM files: each rank parses only its byte range."""
from __future__ import annotations

import io
import os

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from ..preflight import check_input_file, open_input
from .shards import byte_range, read_lines_bytes


def read_shard(path: str, rank: int, size: int, n_features: int | None = None,
               zero_based: bool = False, key: str = "problem.path") -> tuple[sp.csr_matrix, np.ndarray]:
    """Read this rank's lines of a LIBSVM file as (CSR matrix, labels). Errors name file and line."""
    from sklearn.datasets import load_svmlight_file

    if not os.path.exists(path):
        raise InputError(f"{key} {path}: file not found")
    if os.path.isdir(path):
        raise InputError(f"{key} {path}: is a folder, expected an svmlight/LIBSVM file")
    check_input_file(path, key)
    lo, hi = byte_range(path, rank, size)
    if hi <= lo:
        return sp.csr_matrix((0, n_features or 0)), np.zeros(0)
    try:
        X, y = load_svmlight_file(io.BytesIO(read_lines_bytes(path, lo, hi)), n_features=n_features,
                                  zero_based=zero_based, dtype=np.float64)
    except (ValueError, RuntimeError) as exc:
        line, text = locate_bad_line(path, lo, hi, zero_based, n_features)
        if line is not None:
            raise InputError(f"{path}:{line}: malformed svmlight line {text!r}") from None
        raise InputError(f"{path}: cannot parse svmlight data ({exc})") from None
    X = X.tocsr()
    if not (np.isfinite(X.data).all() and np.isfinite(y).all()):
        row = int(np.flatnonzero(~np.isfinite(y))[0]) if not np.isfinite(y).all() else \
            int(np.searchsorted(X.indptr, int(np.flatnonzero(~np.isfinite(X.data))[0]), side="right") - 1)
        line = line_of_row(path, lo, hi, row)
        raise InputError(f"{path}:{line}: NaN or Inf value in data")
    return X, y


def _first_line_number(path: str, lo: int) -> int:
    """1-based number of the first line that starts at or after byte ``lo``."""
    if lo == 0:
        return 1
    count = 0
    with open_input(path) as fh:
        remaining = lo
        while remaining > 0:
            block = fh.read(min(1 << 20, remaining))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
        # the line containing byte lo-1 belongs to the previous shard unless lo-1 is a newline
        fh.seek(lo - 1)
        prev = fh.read(1)
    return count + 1 + (0 if prev == b"\n" else 1)


def _shard_lines(path: str, lo: int, hi: int):
    """Yield (line_number, text) of the lines starting in [lo, hi)."""
    with open_input(path) as fh:
        fh.seek(lo)
        number = _first_line_number(path, lo)
        if lo > 0:
            fh.seek(lo - 1)
            if fh.read(1) != b"\n":
                fh.readline()  # finish the line owned by the previous shard
        while fh.tell() < hi:
            raw = fh.readline()
            if not raw:
                break
            yield number, raw.decode("utf-8", errors="replace").rstrip("\r\n")
            number += 1


def _line_ok(text: str, zero_based: bool, n_features: int | None) -> bool:
    body = text.split("#", 1)[0].strip()
    if not body:
        return True
    parts = body.split()
    try:
        float(parts[0].split(",")[0])
    except ValueError:
        return False
    last = -1
    for tok in parts[1:]:
        if tok.startswith("qid:"):
            continue
        if tok.count(":") != 1:
            return False
        idx, val = tok.split(":")
        try:
            i = int(idx)
            float(val)
        except ValueError:
            return False
        i = i if zero_based else i - 1
        if i < 0 or i <= last or (n_features is not None and i >= n_features):
            return False
        last = i
    return True


def locate_bad_line(path: str, lo: int, hi: int, zero_based: bool, n_features: int | None) -> tuple[int | None, str]:
    for number, text in _shard_lines(path, lo, hi):
        if not _line_ok(text, zero_based, n_features):
            return number, text[:80]
    return None, ""


def line_of_row(path: str, lo: int, hi: int, row: int) -> int | None:
    """Line number of the ``row``-th data line of the shard (blank and comment lines skipped)."""
    seen = -1
    for number, text in _shard_lines(path, lo, hi):
        if text.split("#", 1)[0].strip():
            seen += 1
            if seen == row:
                return number
    return None
