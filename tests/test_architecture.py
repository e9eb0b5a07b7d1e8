"""The package's layering rules, checked on the source (no MPI needed).

- only ``mpiopt/comm/`` uses MPI beyond constants (``MPI.IN_PLACE``, ``MPI.SUM``, ...) and touches
  window memory;
- no module imports a private name (``_x``) from another module;
- the lower layers (comm, io, mf, bundle, nn, data, and the single-purpose modules) never import
  ``mpiopt.solvers`` or ``mpiopt.problems``;
- no solver class is longer than about 250 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "mpiopt"
MODULES = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)
MPI_CONSTANTS = {"IN_PLACE", "SUM", "MAX", "MIN", "PROD", "LAND", "LOR", "BAND", "BOR", "BXOR", "MAXLOC",
                 "MINLOC", "REPLACE", "NO_OP", "ANY_SOURCE", "ANY_TAG", "UNDEFINED", "Status", "Request",
                 "Get_library_version", "Wtime", "THREAD_FUNNELED", "THREAD_MULTIPLE"}
UPPER = ("solvers", "problems")
LOWER = ("comm", "io", "mf", "bundle", "nn", "data")
MAX_SOLVER_CLASS_LINES = 260


def rel(p: Path) -> str:
    return str(p.relative_to(PKG.parent))


def tree(p: Path) -> ast.Module:
    return ast.parse(p.read_text(), filename=str(p))


def layer(p: Path) -> str:
    parts = p.relative_to(PKG).parts
    return parts[0] if len(parts) > 1 else p.stem


def resolve(p: Path, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` in file ``p``."""
    if node.level == 0:
        return node.module or ""
    pkg = list(p.relative_to(PKG.parent).with_suffix("").parts)[:-node.level]
    return ".".join(pkg + ([node.module] if node.module else []))


def test_mpi_beyond_constants_only_in_comm():
    bad = []
    for p in MODULES:
        if layer(p) == "comm":
            continue
        for node in ast.walk(tree(p)):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "MPI"
                    and node.attr not in MPI_CONSTANTS):
                bad.append(f"{rel(p)}:{node.lineno}: MPI.{node.attr}")
    assert not bad, "MPI used outside mpiopt/comm/:\n" + "\n".join(bad)


def test_no_window_memory_outside_comm():
    bad = []
    for p in MODULES:
        if layer(p) == "comm":
            continue
        for node in ast.walk(tree(p)):
            if isinstance(node, ast.Attribute) and node.attr in ("win", "local") and isinstance(node.value, ast.Attribute):
                bad.append(f"{rel(p)}:{node.lineno}: .{node.value.attr}.{node.attr}")
    assert not bad, "window memory touched outside mpiopt/comm/:\n" + "\n".join(bad)


def test_no_private_imports():
    bad = []
    for p in MODULES:
        for node in ast.walk(tree(p)):
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(f"{rel(p)}:{node.lineno}: from {resolve(p, node)} import {a.name}")
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)


def test_lower_layers_do_not_import_solvers_or_problems():
    bad = []
    for p in MODULES:
        if layer(p) in UPPER or layer(p) not in LOWER + ("prox", "kernels", "options", "result", "history",
                                                         "stopping", "checkpointing", "context", "rng",
                                                         "provenance", "progress", "errors"):
            continue
        for node in ast.walk(tree(p)):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [resolve(p, node)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                if any(n == f"mpiopt.{u}" or n.startswith(f"mpiopt.{u}.") for u in UPPER):
                    bad.append(f"{rel(p)}:{node.lineno}: imports {n}")
    assert not bad, "imports from a lower layer up to solvers/ or problems/:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", [p for p in MODULES if layer(p) == "solvers"], ids=lambda p: str(p.relative_to(PKG)))
def test_solver_classes_are_short(path):
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in tree(path).body
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_SOLVER_CLASS_LINES]
    assert not long, f"{rel(path)}: " + ", ".join(long)
