"""Provenance recorded in every result file: package versions, git commit, timestamps."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess

from . import __version__


def versions() -> dict[str, str]:
    """Versions of mpiopt, Python, numpy, scipy, h5py, HDF5, mpi4py and the MPI library."""
    import h5py
    import mpi4py
    import numpy
    import scipy
    from mpi4py import MPI
    return {"mpiopt": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
            "scipy": scipy.__version__, "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
            "mpi4py": mpi4py.__version__, "mpi_library": MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0]}


def git_commit() -> str | None:
    """The checkout's commit (``-dirty`` when tracked files changed), or None outside a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty else "")


def now() -> str:
    """Local time, ISO 8601 with the UTC offset, to the second."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")
