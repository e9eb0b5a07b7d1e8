"""MovieLens rating files, read in byte ranges by rank (no rank holds the whole file).

Formats (detected from the file name): ml-100k ``u.data`` / ``u1.base`` / ``u1.test``
(``user<TAB>item<TAB>rating<TAB>timestamp``), ml-1m/ml-10m ``ratings.dat`` (``::``), ml-20m/25m/latest
``ratings.csv`` (header ``userId,movieId,rating,timestamp``). The reference code's text format
(``2`` / ``m n`` / ``nnz`` / ``i j value`` lines, 1-based) can be written by :func:`write_reference`.
Malformed lines raise :class:`InputError` naming the file and the 1-based line number.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from ..comm import collective_check
from ..errors import InputError
from ..preflight import check_input_file, open_input
from .shards import byte_range, read_lines_bytes, read_shard_bytes

FOLDER_FILES = ("u.data", "ratings.dat", "ratings.csv")
PARSE_PIECE = 1 << 20     # bytes of text parsed at a time (the parser's temporaries: ~10x that)


def resolve_path(path: str, key: str = "problem.path") -> str:
    """The ratings file of ``path`` (a regular file, or an ml-* folder holding one of FOLDER_FILES)."""
    if not os.path.exists(path):
        raise InputError(f"{key} {path}: not found")
    if os.path.isdir(path):
        for name in FOLDER_FILES:
            cand = os.path.join(path, name)
            if os.path.lexists(cand):
                check_input_file(cand, key)
                return cand
        raise InputError(f"{key} {path}: folder has none of {', '.join(FOLDER_FILES)}")
    check_input_file(path, key)
    return path


def separator(path: str) -> bytes:
    """Field separator from the file name."""
    name = os.path.basename(path).lower()
    if name.endswith(".dat"):
        return b"::"
    if name.endswith(".csv"):
        return b","
    return b"\t"   # u.data, u1.base, u1.test, ua.base, ...


def _check_line(text: str, nsep: str, show: str | None = None) -> str | None:
    """Why a line is malformed (None if fine)."""
    parts = text.split(nsep)
    if len(parts) != 4:
        sh = (show or nsep).replace("\t", "<TAB>")
        return f"expected 4 fields user{sh}item{sh}rating{sh}timestamp, got {len(parts)}"
    try:
        u, i = int(parts[0]), int(parts[1])
    except ValueError:
        return "user and item ids must be integers"
    if u < 0 or i < 0:
        return "negative id"
    try:
        r = float(parts[2])
    except ValueError:
        return f"rating {parts[2]!r} is not a number"
    if not np.isfinite(r):
        return "rating is NaN or Inf"
    try:
        float(parts[3])
    except ValueError:
        return f"timestamp {parts[3]!r} is not a number"
    return None


def parse_ratings(data: bytes, sep: bytes, path: str, first_line: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user ids, item ids, ratings) of complete lines ``data``; ``first_line`` numbers the first.

    Fast path: separators become tabs, numbers are parsed in C, field counts are checked per line
    with vectorized searches. On any doubt the lines are scanned one by one to name the bad one."""
    if not data:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    text = data.replace(b"\r", b"")
    if sep != b"\t":
        if b"\t" in text:
            return _slow_scan(text, sep, path, first_line)
        text = text.replace(sep, b"\t")
    if not text.endswith(b"\n"):
        text += b"\n"
    buf = np.frombuffer(text, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    tabs = np.flatnonzero(buf == 9)
    per_line = np.bincount(np.searchsorted(nl, tabs), minlength=nl.size)
    line_len = np.diff(np.concatenate([[-1], nl])) - 1
    if (per_line != 3).any() or (line_len <= 0).any():
        return _slow_scan(text, b"\t", path, first_line, sep)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            vals = np.fromstring(text, dtype=np.float64, sep=" ")  # noqa: NPY201 - C parser, whitespace-separated
        except (ValueError, DeprecationWarning):
            return _slow_scan(text, b"\t", path, first_line, sep)
    if vals.size != 4 * nl.size:
        return _slow_scan(text, b"\t", path, first_line, sep)
    vals = vals.reshape(-1, 4)
    u, i, r = vals[:, 0], vals[:, 1], vals[:, 2]
    bad = ~((u == np.floor(u)) & (i == np.floor(i)) & (u >= 0) & (i >= 0) & np.isfinite(r) & np.isfinite(vals[:, 3]))
    if bad.any():
        return _slow_scan(text, b"\t", path, first_line, sep)
    return u.astype(np.int64), i.astype(np.int64), r.copy()


def _slow_scan(text: bytes, sep: bytes, path: str, first_line: int, shown_sep: bytes | None = None):
    """Name the first malformed line (``text`` split by ``sep``; shown with ``shown_sep``)."""
    nsep = sep.decode()
    show = (shown_sep or sep).decode()
    lines = text.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for n, raw in enumerate(lines):
        line = raw.decode("utf-8", errors="replace")
        why = _check_line(line, nsep, show) if line.strip() else "empty line"
        if why is not None:
            shown = line.replace(nsep, show) if show != nsep else line
            raise InputError(f"{path}:{first_line + n}: malformed rating line {shown[:60]!r}: {why}")
    raise InputError(f"{path}: cannot parse ratings (line {first_line}..)")  # pragma: no cover


def read_ratings(path: str, comm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collective: this rank's (user ids, item ids, ratings) of ``path`` (original ids).

    Each rank reads and parses only its byte range; line numbers in errors are global."""
    sep = separator(path)
    data = read_shard_bytes(path, comm.rank, comm.size)
    header = 0
    if comm.rank == 0 and data and sep == b",":
        first = data.split(b"\n", 1)[0]
        if first[:1].isalpha():                 # ratings.csv header userId,movieId,rating,timestamp
            header = 1
            data = data.split(b"\n", 1)[1] if b"\n" in data else b""
    nlines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    counts = comm.allgather_obj(nlines + header)
    first_line = 1 + sum(counts[:comm.rank]) + header
    # a bad line in one rank's shard is reported by every rank (no rank runs ahead into the next
    # collective while another one fails)
    return collective_check(comm, lambda: parse_pieces(data, sep, path, first_line))


def parse_pieces(data: bytes, sep: bytes, path: str, first_line: int,
                 piece: int = PARSE_PIECE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`parse_ratings` on pieces of about ``piece`` bytes (whole lines), written into the
    final arrays: ids as int32 (int64 if an id needs it), ratings as float32 when every rating is
    one exactly (stars, half stars), else float64. The parser's temporaries are bounded by the
    piece instead of growing with the shard (about 140 bytes per rating when parsed at once)."""
    n_max = data.count(b"\n") + 1
    u, i = np.empty(n_max, np.int32), np.empty(n_max, np.int32)
    v = np.empty(n_max, np.float32)
    pos, lo, line = 0, 0, first_line
    while lo < len(data):
        hi = data.find(b"\n", min(lo + piece, len(data)) - 1)
        hi = len(data) if hi < 0 else hi + 1
        chunk = data[lo:hi]
        pu, pi, pv = parse_ratings(chunk, sep, path, line)
        line += chunk.count(b"\n")
        lo = hi
        n = pv.size
        if u.dtype == np.int32 and n and max(int(pu.max()), int(pi.max())) >= 2 ** 31:
            u, i = u.astype(np.int64), i.astype(np.int64)
        if v.dtype == np.float32 and not np.array_equal(pv.astype(np.float32), pv):
            v = v.astype(np.float64)
        u[pos:pos + n], i[pos:pos + n], v[pos:pos + n] = pu, pi, pv
        pos += n
    return u[:pos], i[:pos], v[:pos]


def compact_ids(local_ids: list[np.ndarray], comm) -> np.ndarray:
    """Sorted union of ids over ranks (small: one entry per distinct user or item)."""
    mine = np.unique(np.concatenate(local_ids)) if local_ids else np.zeros(0, np.int64)
    allids = comm.allgather_obj(mine)
    return np.unique(np.concatenate(allids)) if allids else mine


def write_movielens(path: str, users: np.ndarray, items: np.ndarray, ratings: np.ndarray,
                    sep: str = "\t") -> None:
    """Write ratings in a MovieLens layout (1-based ids given as is, timestamp 0)."""
    with open(path, "w") as fh:
        if path.endswith(".csv"):
            fh.write("userId,movieId,rating,timestamp\n")
        for u, i, r in zip(users, items, ratings):
            fh.write(f"{int(u)}{sep}{int(i)}{sep}{r:g}{sep}0\n")


def write_reference(path: str, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, m: int, n: int) -> None:
    """Write the reference code's text format (0-based indices in, 1-based out)."""
    with open(path, "w") as fh:
        fh.write(f"2\n{m} {n}\n{len(vals)}\n")
        np.savetxt(fh, np.column_stack([np.asarray(rows) + 1, np.asarray(cols) + 1, vals]), fmt="%d %d %.17g")


# -- the reference code's text format ------------------------------------------------------------
def is_reference_format(path: str) -> bool:
    """True when the file starts with the reference header line ``2`` (number of dimensions)."""
    try:
        with open_input(path) as fh:
            return fh.readline(64).strip() == b"2"
    except (OSError, InputError):
        return False


def read_reference(path: str, comm) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Collective: this rank's (rows, cols, values) (0-based) and (m, n) of a reference-format file
    (``2`` / ``m n`` / ``nnz`` / nnz lines ``i j value``, 1-based). Each rank parses a byte range."""
    with open_input(path) as fh:
        head = [fh.readline(4096) for _ in range(3)]
        body_start = fh.tell()
    try:
        m, n = (int(t) for t in head[1].split())
        nnz = int(head[2].strip())
    except ValueError:
        raise InputError(f"{path}:2: reference header must be 'm n' then 'nnz' on line 3") from None
    data = read_lines_bytes(path, *byte_range(path, comm.rank, comm.size, start=body_start))
    text = data.replace(b"\r", b"")
    if text and not text.endswith(b"\n"):
        text += b"\n"
    nlines = text.count(b"\n")
    counts = comm.allgather_obj(nlines)
    first_line = 4 + sum(counts[:comm.rank])
    if sum(counts) != nnz:
        raise InputError(f"{path}:3: header says {nnz} entries, the file has {sum(counts)} lines")
    return collective_check(comm, lambda: _parse_reference(text, path, first_line, m, n))


def _parse_reference(text: bytes, path: str, first_line: int, m: int, n: int):
    if not text:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), m, n
    buf = np.frombuffer(text, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    ws = (buf == 32) | (buf == 9) | (buf == 10)
    starts = np.flatnonzero(~ws & np.concatenate([[True], ws[:-1]]))
    per_line = np.bincount(np.searchsorted(nl, starts), minlength=nl.size)
    vals = None
    if (per_line == 3).all():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                vals = np.fromstring(text, dtype=np.float64, sep=" ")  # noqa: NPY201
            except (ValueError, DeprecationWarning):
                vals = None
    if vals is not None and vals.size == 3 * nl.size:
        v3 = vals.reshape(-1, 3)
        i, j, v = v3[:, 0], v3[:, 1], v3[:, 2]
        good = (i == np.floor(i)) & (j == np.floor(j)) & (i >= 1) & (i <= m) & (j >= 1) & (j <= n) & np.isfinite(v)
        if good.all():
            return i.astype(np.int64) - 1, j.astype(np.int64) - 1, v.copy(), m, n
    for k, raw in enumerate(text.split(b"\n")[:nl.size]):
        line = raw.decode("utf-8", errors="replace")
        parts = line.split()
        why = None
        if len(parts) != 3:
            why = f"expected 3 fields 'i j value', got {len(parts)}"
        else:
            try:
                a, b, c = int(parts[0]), int(parts[1]), float(parts[2])
                if not (1 <= a <= m and 1 <= b <= n):
                    why = f"index out of range 1..{m} x 1..{n}"
                elif not np.isfinite(c):
                    why = "value is NaN or Inf"
            except ValueError:
                why = "indices must be integers and the value a number"
        if why:
            raise InputError(f"{path}:{first_line + k}: malformed entry {line[:60]!r}: {why}")
    raise InputError(f"{path}: cannot parse entries (line {first_line}..)")  # pragma: no cover


def write_movielens_like(path: str, n_users: int = 943, n_items: int = 1682, n_ratings: int = 100000,
                         seed: int = 0, rank: int = 5) -> None:
    """Write generated ratings with the statistics of MovieLens-100k to ``path`` (``u.data`` layout):
    skewed user activity and item popularity (Zipf-like, every user at least 20 ratings), integer
    stars 1-5 with mean about 3.5 and standard deviation about 1.1, from a planted model
    ``3.5 + user bias + item bias + u_i.v_j + noise`` rounded and clipped. Duplicate pairs are dropped."""
    rng = np.random.default_rng([seed, 0x4D4C])
    ua = rng.permutation(n_users)
    ip = rng.permutation(n_items)
    wu = (np.arange(1, n_users + 1, dtype=np.float64) ** -0.6)[ua]
    wi = (np.arange(1, n_items + 1, dtype=np.float64) ** -0.75)[ip]
    base = np.repeat(np.arange(n_users), 20)
    users = np.concatenate([base, rng.choice(n_users, 3 * n_ratings, p=wu / wu.sum())])
    items = rng.choice(n_items, users.size, p=wi / wi.sum())
    key = users.astype(np.int64) * n_items + items
    _, first = np.unique(key, return_index=True)          # first occurrence of each pair
    keep = np.sort(first)[:max(n_ratings, 0)]              # the per-user minimum comes first
    users, items = users[keep], items[keep]
    bu = rng.normal(0, 0.35, n_users)
    bi = rng.normal(0, 0.45, n_items) - 0.4 * (wi < np.quantile(wi, 0.5))    # rare items rated lower
    U = rng.normal(0, (0.35 / rank) ** 0.25, (n_users, rank))
    V = rng.normal(0, (0.35 / rank) ** 0.25, (n_items, rank))
    r = 3.55 + bu[users] + bi[items] + np.einsum("ij,ij->i", U[users], V[items]) + rng.normal(0, 0.75, users.size)
    stars = np.clip(np.rint(r), 1, 5)
    order = rng.permutation(users.size)
    write_movielens(path, users[order] + 1, items[order] + 1, stars[order])
