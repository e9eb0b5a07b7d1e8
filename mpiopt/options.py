"""Typed options of solvers, problems and runs; resolution of TOML files and ``--set`` overrides.

Every configurable key is an :class:`Option` declared by a solver, a problem or the run itself.
A resolved configuration is a plain dict ``{"solver": {...}, "problem": {...}, "run": {...}}``.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import InputError

SECTIONS = ("solver", "problem", "run")
_MISSING = object()
INT_MIN, INT_MAX = -2 ** 63, 2 ** 63 - 1      # every integer option fits an int64 (HDF5 attributes, numpy)
DURATION_MAX = 1e9                            # seconds: the longest finite duration (timers take < 9.2e9)
CONFIG_MAX_BYTES = 4 << 20                    # a config file larger than this is refused unread


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (error messages stay one short line)."""
    try:
        text = repr(value)
    except ValueError:                       # an int too long to print
        text = f"<integer of {value.bit_length()} bits>" if isinstance(value, int) else "<value>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _int_in_range(value: int, where: str) -> int:
    if not INT_MIN <= value <= INT_MAX:
        raise InputError(f"{where}: {show(value)} is out of range (integers must lie in "
                         f"[-2**63, 2**63-1] = [{INT_MIN}, {INT_MAX}])")
    return value


@dataclass(frozen=True)
class Every:
    """A period given as ``N`` iterations or ``Ns`` seconds (``0``: never).

    Used for checkpoint periods and similar options: ``Every.parse("100")`` is every 100
    iterations, ``Every.parse("30s")`` every 30 seconds.
    """

    iterations: int = 0
    seconds: float = 0.0

    @classmethod
    def parse(cls, text: "str | int | float | Every", where: str = "value") -> "Every":
        """Parse ``N`` or ``Ns``; raise InputError naming ``where`` otherwise."""
        if isinstance(text, Every):
            return text
        t = str(text).strip().lower()
        try:
            if t.endswith("s"):
                secs = float(t[:-1])
                if not (0 <= secs <= DURATION_MAX):
                    raise ValueError
                return cls(0, secs)
            iters = int(float(t)) if _looks_like_int_float(t) else int(t)
            if not 0 <= iters <= INT_MAX:
                raise ValueError
            return cls(iters, 0.0)
        except (ValueError, OverflowError):
            raise InputError(f"{where}: expected N iterations or Ns seconds (N from 0 to 2**63-1, seconds from 0 to "
                             f"{DURATION_MAX:g}), e.g. 100 or 30s, got {show(text)}") from None

    @property
    def never(self) -> bool:
        return not self.iterations and not self.seconds

    def __str__(self) -> str:
        return f"{self.seconds:g}s" if self.seconds else str(self.iterations)


@dataclass(frozen=True)
class Option:
    """One configurable key.

    ``type`` is one of bool, int, float, str. ``choices`` restricts values; ``low``/``high`` bound
    numbers (inclusive unless ``low_open``/``high_open``); ``nullable`` admits ``none``.
    """

    name: str
    default: Any
    help: str
    type: type | None = None
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    allow_inf: bool | None = None      # None: only when the default is infinite (e.g. run.max_time)

    @property
    def kind(self) -> type:
        if self.type is not None:
            return self.type
        if self.default is None:
            return str
        return type(self.default)

    def coerce(self, value: Any, where: str) -> Any:
        """Return ``value`` converted to this option's type, or raise InputError naming ``where``."""
        kind = self.kind
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and kind is not str):
            if self.nullable:
                return None
            raise InputError(f"{where}: a value is required (got none)")
        if isinstance(value, str) and value.lower() in ("none", "null") and kind is str and self.nullable:
            return None
        if kind is bool:
            if isinstance(value, bool):
                out = value
            elif isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
                out = True
            elif isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
                out = False
            else:
                raise InputError(f"{where}: expected true or false, got {show(value)}")
        elif kind is int:
            if isinstance(value, bool):
                raise InputError(f"{where}: expected an integer, got {show(value)}")
            if isinstance(value, int):
                out = value
            elif isinstance(value, float) and value.is_integer():
                out = int(value)
            elif isinstance(value, str):
                try:
                    out = int(float(value)) if _looks_like_int_float(value) else int(value)
                except (ValueError, OverflowError):
                    raise InputError(f"{where}: expected an integer, got {show(value)}") from None
            else:
                raise InputError(f"{where}: expected an integer, got {show(value)}")
            out = _int_in_range(out, where)
        elif kind is float:
            if isinstance(value, bool):
                raise InputError(f"{where}: expected a number, got {show(value)}")
            if isinstance(value, (int, float)):
                try:
                    out = float(value)
                except OverflowError:
                    raise InputError(f"{where}: must be a finite number, got {show(value)} (too large)") from None
            elif isinstance(value, str):
                try:
                    out = float(value)
                except ValueError:
                    raise InputError(f"{where}: expected a number, got {show(value)}") from None
            else:
                raise InputError(f"{where}: expected a number, got {show(value)}")
            if math.isnan(out):
                raise InputError(f"{where}: NaN is not a valid value")
            allow_inf = self.allow_inf if self.allow_inf is not None else (
                isinstance(self.default, float) and math.isinf(self.default))
            if math.isinf(out) and not allow_inf:
                raise InputError(f"{where}: must be a finite number, got {show(value)}")
        elif kind is Every:
            if isinstance(value, bool):
                raise InputError(f"{where}: expected N iterations or Ns seconds, got {show(value)}")
            out = str(Every.parse(value, where))
        elif kind is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise InputError(f"{where}: expected a string, got {show(value)}")
            try:
                out = str(value)
            except ValueError:       # an int too long to print
                raise InputError(f"{where}: expected a string, got {show(value)}") from None
            if not out.strip():
                raise InputError(f"{where}: must not be empty" + (" (none: leave it unset)" if self.nullable else ""))
            if "\x00" in out:
                raise InputError(f"{where}: contains a NUL character")
        else:  # pragma: no cover - programming error
            raise TypeError(f"unsupported option type {kind}")
        if self.choices is not None and out not in self.choices:
            raise InputError(f"{where}: {show(out)} is not one of {', '.join(map(str, self.choices))}")
        if isinstance(out, (int, float)) and not isinstance(out, bool):
            if self.low is not None and (out < self.low or (self.low_open and out == self.low)):
                op = ">" if self.low_open else ">="
                raise InputError(f"{where}: must be {op} {self.low}, got {out}")
            if self.high is not None and (out > self.high or (self.high_open and out == self.high)):
                op = "<" if self.high_open else "<="
                raise InputError(f"{where}: must be {op} {self.high}, got {out}")
        return out

    def describe(self) -> str:
        kind = self.kind.__name__
        extra = []
        if self.choices:
            extra.append("one of " + "|".join(map(str, self.choices)))
        if self.low is not None and self.high is not None:
            lo = "(" if self.low_open else "["
            hi = ")" if self.high_open else "]"
            extra.append(f"range {lo}{self.low}, {self.high}{hi}")
        elif self.low is not None:
            extra.append(f"{'>' if self.low_open else '>='} {self.low}")
        elif self.high is not None:
            extra.append(f"{'<' if self.high_open else '<='} {self.high}")
        tail = f" ({'; '.join(extra)})" if extra else ""
        return f"{self.name} = {self.default!r}  [{kind}]  {self.help}{tail}"


def _looks_like_int_float(text: str) -> bool:
    try:
        v = float(text)
    except ValueError:
        return False
    return ("e" in text.lower() or "." in text) and v.is_integer()


# Common keys: solvers and problems declare the ones they honour with their own defaults.
def max_iter(default: int = 1000, help: str = "maximum number of iterations") -> Option:
    return Option("max_iter", default, help, int, low=0)


def tol(default: float = 0.0, help: str = "convergence tolerance (0 disables)") -> Option:
    return Option("tol", default, help, float, low=0.0)


def step0(default: float = 0.1, help: str = "initial step size") -> Option:
    return Option("step0", default, help, float, low=0.0, low_open=True)


def batch_size(default: int = 64, help: str = "minibatch size per rank") -> Option:
    return Option("batch_size", default, help, int, low=1)


def path(help: str = "data file or folder (none: generated data)") -> Option:
    return Option("path", None, help, str, nullable=True)


def seed(default: int = 0, help: str = "seed of the generated data") -> Option:
    return Option("seed", default, help, int, low=0)


RUN_OPTIONS: tuple[Option, ...] = (
    Option("seed", 0, "seed of the solver's random streams", int, low=0),
    Option("max_time", math.inf, "wall-time budget in seconds (inf: none)", float, low=0.0, low_open=True),
    Option("report_every", 0, "iterations between progress lines (0: about 10 lines per run)", int, low=0),
    Option("history_every", 0, "iterations between history records (0: solver default)", int, low=0),
    Option("out", None, "result file (HDF5); default <solver>-<problem>.h5", str, nullable=True),
    Option("checkpoint_dir", None, "folder for checkpoints (none: no checkpoints)", str, nullable=True),
    Option("checkpoint_every", "0", "checkpoint period: N iterations, or Ns seconds (e.g. 30s); 0: only at exit on a signal", Every),
    Option("keep_checkpoints", 3, "number of checkpoints kept", int, low=1),
    Option("resume", None, "'latest' or a checkpoint path", str, nullable=True),
    Option("progress", "auto", "progress display on rank 0", str, choices=("auto", "bar", "lines", "none")),
    Option("poll_every", 1, "iterations between the collective stop/checkpoint polls", int, low=1),
    Option("debug", False, "extra consistency checks (e.g. replica checksums)", bool),
    Option("term_grace", 60.0, "seconds a rank may take to checkpoint and stop after SIGTERM/SIGINT before the "
           "job is ended without a checkpoint (0: wait forever)", float, low=0.0, high=DURATION_MAX),
    Option("hang_timeout", 0.0, "end the job when a rank completes no iteration and no MPI operation for this "
           "many seconds of its own running time (a suspended job's stop is not counted; 0: off)", float, low=0.0,
           high=DURATION_MAX),
    Option("setup_timeout", 600.0, "with run.hang_timeout: the same limit during set-up (data, reference optimum, "
           "kernel compilation, plug-in set-up), never less than run.hang_timeout (0: no limit during set-up)",
           float, low=0.0, high=DURATION_MAX),
    Option("snapshot_every", 60.0, "seconds between snapshots of a shared model saved into the result file "
           "(async_subgradient; 0: only at start and end)", float, low=0.0, high=DURATION_MAX),
)


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` from ``--set``; VALUE is read as a TOML literal when it parses as one."""
    if "=" not in text:
        raise InputError(f"--set {show(text)}: expected KEY=VALUE, e.g. solver.max_iter=100")
    key, raw = text.split("=", 1)
    key = key.strip()
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, ValueError, RecursionError):   # not a TOML literal: the text itself
        value = raw
    return key, value


def load_toml(path: str) -> dict:
    """Read a TOML config file: a regular file (checked before it is opened) of at most
    :data:`CONFIG_MAX_BYTES`, UTF-8 text. Errors are one line naming the file (and the byte or line)."""
    from .preflight import read_input
    where = f"config file {path}"
    data = read_input(path, "config file", CONFIG_MAX_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{where}: byte {exc.start} (line {line}) is 0x{data[exc.start]:02x}, not UTF-8 text; "
                         "save the file as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{where}: {exc}") from None
    except RecursionError:
        raise InputError(f"{where}: arrays or tables nested too deeply") from None
    except ValueError as exc:      # e.g. an integer of more digits than Python converts
        raise InputError(f"{where}: {show(str(exc), 160)}") from None


def flatten_config(data: dict, source: str) -> dict[str, Any]:
    """Turn ``{"solver": {"a": 1}}`` into ``{"solver.a": 1}``; top-level ``solver``/``problem`` names stay as is."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in SECTIONS:
                raise InputError(f"{source}: unknown section [{key}] (expected one of {', '.join(SECTIONS)})")
            for sub, v in value.items():
                if isinstance(v, dict):
                    raise InputError(f"{source}: {key}.{sub}: nested tables are not options")
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat


def resolve(
    sections: dict[str, Sequence[Option]],
    values: Iterable[tuple[str, Any, str]],
    owners: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Apply ``(key, value, source)`` assignments in order onto the defaults of ``sections``.

    Unknown keys and bad values raise InputError naming the key and where it came from.
    """
    owners = owners or {}
    table = {sec: {o.name: o for o in opts} for sec, opts in sections.items()}
    cfg = {sec: {o.name: o.default for o in opts} for sec, opts in sections.items()}
    for key, value, source in values:
        if "." not in key:
            raise InputError(f"{source}: {show(key)} is not a dotted key like solver.max_iter")
        sec, name = key.split(".", 1)
        if sec not in table:
            raise InputError(f"{source}: unknown key {show(key)} (sections are {', '.join(SECTIONS)})")
        opt = table[sec].get(name)
        if opt is None:
            owner = owners.get(sec, sec)
            known = ", ".join(sorted(table[sec])) or "none"
            raise InputError(f"{source}: unknown key {show(key)}: {owner} has no option {show(name)} (known: {known})")
        cfg[sec][name] = opt.coerce(value, f"{source}: {key}")
    return cfg
