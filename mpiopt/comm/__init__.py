"""The MPI layer: every MPI call of mpiopt goes through this package.

- :mod:`.core`   ``Comm``: polite (non-spinning) collectives with byte accounting.
- :mod:`.stats`  ``CommStats``: bytes on the wire per collective, from the algorithmic formulas.
- :mod:`.abort`  run a function so that an exception on any rank aborts the whole job.
- :mod:`.check`  collective input validation: one clear error, printed once, on every rank.
"""
from .core import Comm, mark_progress, polite_wait, polite_waitall, seconds_since_progress, world
from .stats import CommStats
from .check import collective_check
from .abort import abort_on_exception, report_exception

__all__ = ["Comm", "CommStats", "world", "polite_wait", "polite_waitall", "collective_check",
           "mark_progress", "seconds_since_progress",
           "abort_on_exception", "report_exception"]
