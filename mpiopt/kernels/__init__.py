"""Kernels shared by the solvers: numpy building blocks and numba-compiled passes.

- :mod:`.vector`  cache blocking (``BLOCK``, ``blocks``) and finiteness tests (numpy).
- :mod:`.codec`   the numpy reference of the sign path: packing, bit-sliced vote, step table.
- :mod:`.sign`    compiled message / check / pack pass and the one-pass apply of a decision.
- :mod:`.vote`    compiled majority vote on packed words.
- :mod:`.prox`    compiled elastic-net prox step.
- :mod:`.csr`     compiled sparse minibatch gradient on CSR data.

A compiled kernel is reached only through :func:`get` (``get("vote_words")(...)``): it compiles the
kernels on first use, so no caller can hold a slow uncompiled version. numba (``@njit(cache=True)``,
no fastmath) is imported only then. ``MPIOPT_JIT=0`` makes the callers choose the numpy paths
(for comparisons, or where numba is unavailable); the tests compare the two bit for bit.
A kernel's on-disk cache is keyed on its own source file: after changing a helper another file's
kernels call (``prox.clip``), clear the cache (``__pycache__/*.nbi``).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable

from . import csr, prox, sign, vote
from .prox import Prox, prox_params
from .sign import (MSG_GRADIENT, MSG_MAPPING, MSG_MAPPING_L1, NO_F, NO_I, NO_W, Code, Decision, Message, code_of,
                   decision_of, message_params)
from .vector import BLOCK, all_finite, blocks, first_nonfinite

__all__ = ["BLOCK", "blocks", "all_finite", "first_nonfinite", "HAVE_NUMBA", "JIT", "compile_kernels", "get",
           "MSG_MAPPING_L1", "MSG_MAPPING", "MSG_GRADIENT", "NO_F", "NO_W", "NO_I", "Message", "Code",
           "Decision", "Prox", "message_params", "prox_params", "code_of", "decision_of"]

#: numba is installed (checked without importing it: numba is imported only when a kernel is needed)
HAVE_NUMBA = importlib.util.find_spec("numba") is not None

#: the compiled kernels are used (numba installed, little-endian words, MPIOPT_JIT not "0")
JIT = HAVE_NUMBA and sys.byteorder == "little" and os.environ.get("MPIOPT_JIT", "1") != "0"

_MODULES = (prox, sign, vote, csr)
#: name -> numba source of every kernel (the Python functions, slow but with the same results)
_SOURCES: dict[str, Callable] = {fn.__name__: fn for m in _MODULES for fn in m.KERNELS}
_compiled: dict[str, Callable] = {}


def compile_kernels() -> None:
    """Import numba and make the compiled versions of the kernels (once per process; the machine code
    itself is compiled on a kernel's first call or loaded from the on-disk cache). A no-op without
    numba. The helpers the kernels call are registered for compiled callers and stay plain Python
    functions."""
    if _compiled or not HAVE_NUMBA:
        return
    from numba.extending import register_jitable

    from ..compiled import njit
    # error_model="numpy": float division as in numpy (no Python ZeroDivisionError branch)
    for m in _MODULES:
        for fn in m.HELPERS:
            register_jitable(error_model="numpy")(fn)
    _compiled.update({name: njit(nogil=True, error_model="numpy")(fn) for name, fn in _SOURCES.items()})


def get(name: str) -> Callable:
    """The kernel ``name`` (e.g. ``"vote_words"``), compiled (:func:`compile_kernels` on first use);
    without numba its Python version (same results, slow)."""
    if not _compiled:
        compile_kernels()
    fn = _compiled.get(name) or _SOURCES.get(name)
    if fn is None:
        raise KeyError(f"no kernel named {name!r} (kernels: {', '.join(sorted(_SOURCES))})")
    return fn
