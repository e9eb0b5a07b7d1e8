"""Exceptions and exit codes shared by the whole package."""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class MpioptError(Exception):
    """Base class of mpiopt's own errors."""


class InputError(MpioptError):
    """Bad usage, configuration, data file or value: reported in one line, exit code 2."""


class OutputError(MpioptError, OSError):
    """Writing a result or checkpoint failed (disk full, permissions): one line naming the file, exit 1."""


class CheckpointError(InputError):
    """A checkpoint that cannot be used for this run (other solver/problem/format)."""
