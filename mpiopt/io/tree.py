"""Store nested dicts of arrays and scalars in HDF5 groups, and read them back."""
from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np

_COMPRESS_MIN = 4096  # elements; smaller arrays are stored contiguous


def dataset_kwargs(arr: np.ndarray) -> dict:
    """Chunked, gzip + shuffle + fletcher32 for large arrays (HDF5 conventions in docs/mpi.md)."""
    if arr.size >= _COMPRESS_MIN and arr.dtype.kind in "biuf":
        return dict(compression="gzip", compression_opts=1, shuffle=True, fletcher32=True, chunks=True)
    return {}


def write_tree(group: h5py.Group, obj: dict) -> None:
    """Arrays -> datasets, dicts -> groups, scalars/strings/None/lists -> attributes (JSON for
    lists and None)."""
    for key, value in obj.items():
        key = str(key)
        if isinstance(value, dict):
            write_tree(group.create_group(key), value)
        elif isinstance(value, np.ndarray):
            group.create_dataset(key, data=value, **dataset_kwargs(value))
        elif isinstance(value, (bool, np.bool_)):
            group.attrs[key] = np.bool_(value)
        elif isinstance(value, (int, float, np.integer, np.floating, str)):
            group.attrs[key] = value
        else:
            group.attrs[key] = "json:" + json.dumps(value)


def read_tree(group: h5py.Group) -> dict:
    """Inverse of :func:`write_tree`."""
    out: dict[str, Any] = {}
    for key, value in group.attrs.items():
        out[key] = decode_attr(value)
    for key, item in group.items():
        out[key] = read_tree(item) if isinstance(item, h5py.Group) else item[()]
    return out


def decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
