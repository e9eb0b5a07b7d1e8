"""Solvers, found by name (``python -m mpiopt.run SOLVER``)."""
from .base import Solver

__all__ = ["Solver"]
