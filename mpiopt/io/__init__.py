"""The HDF5 layer: result files (with a live SWMR history), atomic checkpoints, owner locks
(:mod:`mpiopt.io.lock`) and the one safe way to open an HDF5 file for reading (:func:`open_hdf5`).

Named ``mpiopt.io`` inside the package: a top-level ``io`` package would shadow the standard library.
"""
from .results import FORMAT, FORMAT_VERSION, Result, ResultWriter, load_result
from .checkpoint import CKPT_FORMAT, CKPT_VERSION, Checkpoint, CheckpointManager, load_checkpoint
from .safe import open_hdf5

__all__ = ["FORMAT", "FORMAT_VERSION", "Result", "ResultWriter", "load_result",
           "CKPT_FORMAT", "CKPT_VERSION", "Checkpoint", "CheckpointManager", "load_checkpoint", "open_hdf5"]
