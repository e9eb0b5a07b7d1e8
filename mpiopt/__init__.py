"""mpiopt: MPI-based distributed optimization (SignProx, HAMSI, level bundle, async subgradient).

Entry points: ``python -m mpiopt.run`` (command line), :func:`mpiopt.api.minimize` (Python),
:func:`mpiopt.io.load_result` (reading result files).
"""
import os as _os

# One BLAS/OpenMP thread per rank unless the user says otherwise: ranks share the cores, and
# threaded BLAS changes summation order (bit-identical results need a fixed thread count).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")
# MPI is initialised FUNNELED (only the main thread calls MPI) unless the user says otherwise:
# under mpi4py's default THREAD_MULTIPLE, MPICH calls sched_yield inside every Win_flush/Test
# (about 4 per RMA operation, counted with strace), and on a loaded machine each yield can hand
# the core away for milliseconds: async_subgradient's RMA share of wall time fell from 28 % to 2.7 %.
_os.environ.setdefault("MPI4PY_RC_THREAD_LEVEL", "funneled")

__version__ = "0.1.0"

from .registry import register_problem, register_solver  # noqa: E402
from .result import OptimizeResult  # noqa: E402

__all__ = ["__version__", "register_problem", "register_solver", "OptimizeResult"]
