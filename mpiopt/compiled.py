"""numba's ``njit`` with the on-disk cache, and a fall-back for installs where nothing can be cached.

numba writes compiled machine code next to the module (``__pycache__``) or, where that is not
writable, under ``NUMBA_CACHE_DIR`` or the user's cache directory. Where none of these is writable
(a read-only install with no writable home), ``njit(cache=True)`` raises at decoration time;
:func:`njit` then compiles without the cache (in every process) and warns once.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

_cache_ok = True


def njit(**options: Any) -> Callable[[Callable], Callable]:
    """``numba.njit(cache=True, **options)``, or without the cache (one warning per process) when
    numba finds no writable cache location."""
    import numba

    def decorate(fn: Callable) -> Callable:
        global _cache_ok
        if _cache_ok:
            try:
                return numba.njit(cache=True, **options)(fn)
            except RuntimeError:
                _cache_ok = False
                warnings.warn("numba: no writable cache directory (set NUMBA_CACHE_DIR); the kernels are "
                              "compiled in every process", RuntimeWarning, stacklevel=2)
        return numba.njit(cache=False, **options)(fn)
    return decorate
