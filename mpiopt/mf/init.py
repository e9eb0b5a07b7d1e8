"""Initial factors: rank-count independent random draws and factors read from files."""
from __future__ import annotations

import math
import os

import numpy as np

from ..errors import InputError

INIT_CHUNK = 4096   # rows per generator: row chunk c of matrix id is drawn from rng([seed, id, c])


def random_rows(seed: int, matrix_id: int, lo: int, hi: int, k: int, scale: float) -> np.ndarray:
    """Rows [lo, hi) of an N(0, scale^2) factor matrix, identical whatever the split into ranges."""
    out = np.empty((max(hi - lo, 0), k))
    if hi <= lo:
        return out
    for c in range(lo // INIT_CHUNK, (hi - 1) // INIT_CHUNK + 1):
        c0 = c * INIT_CHUNK
        rows = np.random.default_rng([int(seed), int(matrix_id), c]).standard_normal((INIT_CHUNK, k))
        a, b = max(lo, c0), min(hi, c0 + INIT_CHUNK)
        out[a - lo:b - lo] = rows[a - c0:b - c0]
    if scale != 1.0:
        out *= scale
    return out


def reference_normals(seed: int, count: int) -> np.ndarray:
    """The first ``count`` draws of C++ ``std::normal_distribution<double>(0, 1)`` on
    ``std::mt19937(seed)`` as in libstdc++ (the reference code's initial factors, A then B).

    MT19937 with standard integer seeding; each uniform is (w1 + w2 2^32) / 2^64 from two 32-bit
    outputs (low word first); Marsaglia's polar method returns y*mult and keeps x*mult for the next
    call. Vectorized: pairs are drawn in bulk (rejected pairs consume their words as in C++)."""
    bg = np.random.MT19937(0)
    bg._legacy_seeding(int(seed))
    parts, have = [], 0
    while have < count:
        need = max(64, int((count - have) * 0.7) + 16)
        w = bg.random_raw(4 * need).astype(np.float64).reshape(need, 4)
        x = 2.0 * ((w[:, 0] + w[:, 1] * 2.0 ** 32) / 2.0 ** 64) - 1.0
        y = 2.0 * ((w[:, 2] + w[:, 3] * 2.0 ** 32) / 2.0 ** 64) - 1.0
        r2 = x * x + y * y
        ok = (r2 <= 1.0) & (r2 != 0.0)
        r2ok = r2[ok]
        logs = np.fromiter(map(math.log, r2ok), dtype=np.float64, count=r2ok.size)  # libm log, not SIMD
        mult = np.sqrt(-2.0 * logs / r2ok)
        pair = np.column_stack([y[ok] * mult, x[ok] * mult]).ravel()
        parts.append(pair)
        have += pair.size
    return np.concatenate(parts)[:count] if parts else np.zeros(0)


def read_factors(path: str, m: int, n: int, k: int, biases: bool = False) -> tuple:
    """Read ``W`` (m x k) and ``H`` (n x k) from an .npz file or an HDF5 file (datasets ``W``/``H``
    at the root or under ``/solution``, e.g. an mpiopt result file). With ``biases`` also
    ``row_bias``/``col_bias`` when the file has them (else None): returns (W, H, row_bias, col_bias)."""
    where = f"solver.init {path}"
    if not os.path.exists(path):
        raise InputError(f"{where}: file not found")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if "W" not in z or "H" not in z:
                    raise InputError(f"{where}: needs arrays 'W' (rows x k) and 'H' (columns x k), has {sorted(z.files)}")
                W, H = np.array(z["W"], dtype=np.float64), np.array(z["H"], dtype=np.float64)
                ub = np.array(z["row_bias"], dtype=np.float64) if "row_bias" in z else None
                vb = np.array(z["col_bias"], dtype=np.float64) if "col_bias" in z else None
        else:
            from ..io.safe import open_hdf5
            with open_hdf5(path, where, what="file of factors") as f:
                grp = f["solution"] if "W" not in f and "solution" in f else f
                if "W" not in grp or "H" not in grp:
                    raise InputError(f"{where}: needs datasets 'W' and 'H' (at / or /solution)")
                W, H = np.array(grp["W"], dtype=np.float64), np.array(grp["H"], dtype=np.float64)
                ub = np.array(grp["row_bias"], dtype=np.float64) if "row_bias" in grp else None
                vb = np.array(grp["col_bias"], dtype=np.float64) if "col_bias" in grp else None
    except (OSError, ValueError) as exc:
        raise InputError(f"{where}: cannot read ({exc})") from None
    if W.shape != (m, k) or H.shape != (n, k):
        raise InputError(f"{where}: W is {W.shape} and H is {H.shape}, expected ({m}, {k}) and ({n}, {k}) "
                         "(problem.latent_dim, problem.transpose)")
    if not (np.isfinite(W).all() and np.isfinite(H).all()):
        raise InputError(f"{where}: W or H has NaN/Inf entries")
    if not biases:
        return W, H
    if (ub is not None and ub.shape != (m,)) or (vb is not None and vb.shape != (n,)):
        raise InputError(f"{where}: row_bias/col_bias must have {m} and {n} entries")
    return W, H, ub, vb
