"""The package's layering rules, checked on the source (no MPI needed).

- only ``mpiopt/comm/`` uses MPI beyond constants (``MPI.IN_PLACE``, ``MPI.SUM``, ...) and touches
  window memory;
- no module imports a private name (``_x``) from another module;
- the lower layers (comm, io, mf, bundle, nn, data, and the single-purpose modules) never import
  ``mpiopt.solvers`` or ``mpiopt.problems``;
- no solver class is longer than about 250 lines;
- solvers and ``mpiopt/prox.py`` call the declared hooks of problems and regularizers
  (:mod:`mpiopt.protocols`), never probe them with ``getattr``/``hasattr``;
- no two modules import each other (imports under ``TYPE_CHECKING`` and inside functions included);
- ``mpiopt/comm/`` (words, windows, messages) imports nothing from ``mpiopt.kernels``, ``mpiopt.solvers``
  or ``mpiopt.problems``.
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


def test_comm_imports_no_kernels_solvers_or_problems():
    bad = []
    for p in MODULES:
        if layer(p) != "comm":
            continue
        for node in ast.walk(tree(p)):
            # ``from mpiopt import kernels`` counts as an import of mpiopt.kernels
            names = ([f"{resolve(p, node)}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            bad += [f"{rel(p)}:{node.lineno}: imports {n}" for n in names
                    if any(n == f"mpiopt.{u}" or n.startswith(f"mpiopt.{u}.") for u in ("kernels",) + UPPER)]
    assert not bad, "mpiopt/comm/ imports a layer above it:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", [p for p in MODULES if layer(p) == "solvers"], ids=lambda p: str(p.relative_to(PKG)))
def test_solver_classes_are_short(path):
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in tree(path).body
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_SOLVER_CLASS_LINES]
    assert not long, f"{rel(path)}: " + ", ".join(long)


# -- declared hooks, not probing --------------------------------------------------------------------
#: names that stand for a problem or a regularizer in solvers/ and prox.py (``p = self.problem``, ``reg``)
PROBED = {"problem", "p", "prob", "problem_cls", "reg", "regularizer", "r"}
PROBES = {"getattr", "hasattr"}


def probes(source: str, filename: str = "<source>") -> list[str]:
    """``getattr``/``hasattr`` calls whose object mentions a problem or a regularizer: a name in
    :data:`PROBED` as a variable, or as an attribute anywhere in the object's expression
    (``self.problem``, ``self.problem.regularizer``, ``p``, ``reg``)."""
    bad = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in PROBES
                and node.args):
            continue
        names = {n.id for n in ast.walk(node.args[0]) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(node.args[0]) if isinstance(n, ast.Attribute)}
        if names & PROBED:
            bad.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return bad


def test_probe_rule_catches_probing_and_passes_declared_hooks():
    caught = probes("a = getattr(self.problem, 'metrics', None)\n"
                    "b = hasattr(p, 'offset')\n"
                    "c = getattr(self.problem.regularizer, 'elementwise', False)\n"
                    "d = getattr(reg, 'n_components', 1)\n")
    assert [line.split(":")[1] for line in caught] == ["1", "2", "3", "4"], caught
    assert probes("x = getattr(self, '_x', None)\ny = self.problem.metrics(x)\n"
                  "z = reg.elementwise\nw = getattr(args, 'attr')\n") == []


def test_no_getattr_probing_of_problems_or_regularizers():
    files = [p for p in MODULES if layer(p) == "solvers" or rel(p) == "mpiopt/prox.py"]
    assert any(rel(p) == "mpiopt/prox.py" for p in files) and len(files) > 10
    bad = [b for p in files for b in probes(p.read_text(), rel(p))]
    assert not bad, ("problems/regularizers probed instead of calling the hooks of mpiopt.protocols:\n"
                     + "\n".join(bad))


# -- no import circles -----------------------------------------------------------------------------
def module_name(p: Path) -> str:
    parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(p: Path, known: set[str]) -> set[str]:
    """The package's modules that ``p`` imports anywhere in its source (``from pkg import mod``:
    the module ``pkg.mod``; ``from mod import name``: ``mod``)."""
    out = set()
    for node in ast.walk(tree(p)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = resolve(p, node)
            for a in node.names:
                if f"{base}.{a.name}" in known:
                    out.add(f"{base}.{a.name}")
                elif base in known:
                    out.add(base)
    out.discard(module_name(p))
    return out


def mutual_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and a in graph.get(b, ()))


def test_mutual_import_rule_sees_type_checking_and_function_imports():
    assert mutual_imports({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == ["a <-> b"]
    p = PKG / "solvers" / "oracle_rank.py"
    known = {module_name(q) for q in MODULES}
    assert "mpiopt.problems.oracle" in imported_modules(p, known)
    assert "mpiopt.comm.master" in imported_modules(p, known)


def test_no_two_modules_import_each_other():
    known = {module_name(p) for p in MODULES}
    graph = {module_name(p): imported_modules(p, known) for p in MODULES}
    assert sum(len(v) for v in graph.values()) > 100     # the graph is really read
    pairs = mutual_imports(graph)
    assert not pairs, "modules importing each other (TYPE_CHECKING imports included):\n" + "\n".join(pairs)


# -- the written contracts --------------------------------------------------------------------------
def test_base_classes_carry_every_hook_of_their_protocol():
    from mpiopt import protocols as PR
    from mpiopt.problems.base import CompositeProblem
    from mpiopt.prox import RegularizerBase
    for proto, base in ((PR.Regularizer, RegularizerBase), (PR.CompositeProblemProtocol, CompositeProblem)):
        methods = [n for n, v in vars(proto).items() if callable(v) and not n.startswith("_")]
        missing = [n for n in methods if not callable(getattr(base, n, None))]
        assert methods and not missing, f"{base.__name__} lacks {missing} of {proto.__name__}"
    reg = RegularizerBase()
    assert (reg.elementwise, reg.convex, reg.n_components, reg.reference_optimum(None)) == (False, False, 1, None)
    assert CompositeProblem.supports_sparse_batch_grad(None) is False and CompositeProblem.metrics(None, None) == {}
