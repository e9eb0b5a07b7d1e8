"""Problems: data + objective, found by name (``--problem NAME``)."""
from .base import CompositeProblem, Problem

__all__ = ["Problem", "CompositeProblem"]
