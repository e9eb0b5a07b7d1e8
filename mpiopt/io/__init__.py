"""The HDF5 layer: result files (with a live SWMR history) and atomic checkpoints.

Named ``mpiopt.io`` inside the package: a top-level ``io`` package would shadow the standard library.
"""
from .results import FORMAT, FORMAT_VERSION, Result, ResultWriter, load_result
from .checkpoint import CKPT_FORMAT, CKPT_VERSION, Checkpoint, CheckpointManager, load_checkpoint

__all__ = ["FORMAT", "FORMAT_VERSION", "Result", "ResultWriter", "load_result",
           "CKPT_FORMAT", "CKPT_VERSION", "Checkpoint", "CheckpointManager", "load_checkpoint"]
