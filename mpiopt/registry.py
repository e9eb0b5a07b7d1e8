"""Name -> class registries of solvers, problems and regularizers (PETSc/TAO style)."""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Callable, TypeVar

from .errors import InputError

T = TypeVar("T", bound=type)

SOLVERS: dict[str, type] = {}
PROBLEMS: dict[str, type] = {}
REGULARIZERS: dict[str, type] = {}

# Every module in these packages is imported on first lookup, so a new built-in solver or problem
# is one new file. Importing them must stay cheap: no torch, no data loading at import time.
BUILTIN_PACKAGES = ("mpiopt.problems", "mpiopt.solvers")
_loaded = False


def register_solver(name: str) -> Callable[[T], T]:
    """Class decorator: make a solver available as ``name`` on the command line."""
    def deco(cls: T) -> T:
        cls.name = name
        SOLVERS[name] = cls
        return cls
    return deco


def register_problem(name: str) -> Callable[[T], T]:
    """Class decorator: make a problem available as ``--problem name``."""
    def deco(cls: T) -> T:
        cls.name = name
        PROBLEMS[name] = cls
        return cls
    return deco


def register_regularizer(name: str) -> Callable[[T], T]:
    """Class decorator: make a regularizer (a :class:`~mpiopt.prox.RegularizerBase` subclass) available
    as ``problem.reg=name``; the problem builds it with the class's ``from_options``."""
    def deco(cls: T) -> T:
        cls.reg_name = name
        REGULARIZERS[name] = cls
        return cls
    return deco


class RegisteredNames:
    """A live view of a registry's names, in registration order (an option's ``choices``: names
    registered later, e.g. by a plug-in, are accepted too)."""

    def __init__(self, registry: dict[str, type]):
        self._registry = registry

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def __iter__(self):
        return iter(list(self._registry))

    def __len__(self) -> int:
        return len(self._registry)

    def __repr__(self) -> str:
        return repr(tuple(self._registry))


def get_regularizer(name: str) -> type:
    try:
        return REGULARIZERS[name]
    except KeyError:
        raise InputError(f"unknown regularizer {name!r} (known: {', '.join(REGULARIZERS)})") from None


def load_builtins() -> None:
    """Import built-in modules and any plug-in modules named in ``MPIOPT_PLUGINS`` (comma-separated)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import pkgutil
    for pkg_name in BUILTIN_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{info.name}")
    for mod in filter(None, (m.strip() for m in os.environ.get("MPIOPT_PLUGINS", "").split(","))):
        load_plugin(mod)


def load_plugin(module: str) -> None:
    """Import a user module (dotted name or path to a .py file) that registers solvers/problems."""
    try:
        if module.endswith(".py") or os.sep in module:
            from .preflight import check_input_file
            path = os.path.abspath(module)
            if not os.path.exists(path):
                raise InputError(f"--plugin {module}: file not found")
            check_input_file(module, "--plugin")
            spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
            mod = importlib.util.module_from_spec(spec)
            assert spec.loader is not None
            spec.loader.exec_module(mod)
        else:
            importlib.import_module(module)
    except InputError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise InputError(f"--plugin {module}: no module named {exc.name!r} on the Python path") from None
        raise InputError(f"--plugin {module}: it imports {exc.name!r}, which is not installed") from None
    except SyntaxError as exc:
        raise InputError(f"--plugin {module}: {exc.filename}:{exc.lineno}: syntax error ({exc.msg})") from None
    except Exception as exc:  # noqa: BLE001 - a plug-in that fails at import is bad input, named once
        raise InputError(f"--plugin {module}: importing it raised {type(exc).__name__}: {exc}") from None


def get_solver(name: str) -> type:
    load_builtins()
    try:
        return SOLVERS[name]
    except KeyError:
        raise InputError(f"unknown solver {name!r} (known: {', '.join(sorted(SOLVERS))})") from None


def get_problem(name: str) -> type:
    load_builtins()
    try:
        return PROBLEMS[name]
    except KeyError:
        raise InputError(f"unknown problem {name!r} (known: {', '.join(sorted(PROBLEMS))})") from None
