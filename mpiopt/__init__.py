"""mpiopt: MPI-based distributed optimization (SignProx, HAMSI, level bundle, async subgradient).

Entry points: ``python -m mpiopt.run`` (command line), :func:`mpiopt.api.minimize` (Python),
:func:`mpiopt.io.load_result` (reading result files).
"""
import os as _os

# One BLAS/OpenMP thread per rank unless the user says otherwise: ranks share the cores, and
# threaded BLAS changes summation order (bit-identical results need a fixed thread count).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

__version__ = "0.1.0"

from .registry import register_problem, register_solver  # noqa: E402
from .result import OptimizeResult  # noqa: E402

__all__ = ["__version__", "register_problem", "register_solver", "OptimizeResult"]
