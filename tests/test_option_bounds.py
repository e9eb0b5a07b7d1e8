"""Every integer option of every registered solver and problem: an impossible size is refused before
set-up with one InputError naming the key (a declared upper bound or the memory check), or the option
is explicitly allowed to be unbounded (an iteration count, a seed, ...) with the reason here."""
from __future__ import annotations

import os
from typing import Any

import pytest

from mpiopt import options as O
from mpiopt import registry
from mpiopt import runner
from mpiopt.errors import InputError
from mpiopt.preflight import available_memory, check_memory, check_requirements

from conftest import run_mpi
from test_faults import assert_contract, snapshot

HUGE = 2 ** 62
NODE_MEMORY = 64 << 30        # when this machine does not say how much memory it has

# Options without an upper bound by design, and why an impossible value is no size.
UNBOUNDED: dict[str, str] = {
    "seed": "a seed: any int64 names a random stream",
    "delay_seed": "a seed of the simulated delays",
    "max_iter": "an iteration budget (run.max_time bounds the wall time)",
    "max_epochs": "an epoch budget (run.max_time bounds the wall time)",
    "patience": "epochs without improvement before early stopping: a budget, no storage",
    "lp_every": "a period in QPs (larger than max_iter: only the first LP)",
    "coord_every": "a period in oracle answers (larger than any run: no coordination)",
    "check_every": "a period in iterations of the replica check",
    "tv_iter": "FGP iterations per TV prox: work per iteration, no storage (run.max_time bounds the time)",
    "n_train": "the first n training images: more than the data set is all of it",
    "n_test": "the first n test images: more than the data set is all of it",
    "eval_samples": "test images of an evaluation: clipped to the test set",
    "train_eval_samples": "training images of an evaluation: clipped to the training set",
    "group_size": "features per group: more than the features is one group",
    "min_batch": "answers before a QP: clipped to the idle oracles",
    "coord_max": "a cap on coordinations in flight (at most one per answer round)",
    "report_every": "a period in iterations of the progress lines",
    "history_every": "a period in iterations of the history records",
    "poll_every": "a period in iterations of the collective stop/checkpoint poll",
    "keep_checkpoints": "a cap on the checkpoints kept (only those written are stored)",
}
# Per owner: "solver:NAME.key" or "problem:NAME.key" (the same key meaning something else there).
UNBOUNDED_AT: dict[str, str] = {}


def _cases() -> list[tuple[str, str, str, str]]:
    """(solver, problem, section, option) for every integer option of every solver and problem."""
    registry.load_builtins()
    cases = []
    for name, cls in sorted(registry.SOLVERS.items()):
        for o in cls.options:
            if o.kind is int:
                cases.append((name, cls.default_problem, "solver", o.name))
    for pname, pcls in sorted(registry.PROBLEMS.items()):
        solver = next((n for n, s in sorted(registry.SOLVERS.items()) if s.check_problem(pcls) is None), None)
        for o in pcls.options:
            if o.kind is int:
                cases.append((solver, pname, "problem", o.name))
    for o in O.RUN_OPTIONS:
        if o.kind is int:
            cases.append(("prox_sgd", "logistic", "run", o.name))
    return cases


CASES = _cases()


def pre_setup_checks(solver: str, problem: str, values: list[tuple[str, Any, str]]) -> None:
    """What build_run checks before problem.setup, in-process, for the fewest ranks the solver runs on."""
    spec = runner.resolve_spec(solver, problem, values, default_out=False)
    solver_cls, problem_cls = registry.get_solver(solver), registry.get_problem(problem)
    n_ranks = max(1, solver_cls.min_ranks)
    check_requirements(solver_cls, problem_cls)
    solver_cls.check_config(spec.config, n_ranks)
    runner.preflight(spec, problem_cls, n_ranks, write_result=False)
    estimate = solver_cls.run_memory_estimate(problem_cls, spec.config, n_ranks)
    check_memory(estimate, n_ranks, available_memory() or NODE_MEMORY)


def _option(solver: str, problem: str, section: str, name: str):
    if section == "run":
        return next(o for o in O.RUN_OPTIONS if o.name == name)
    cls = registry.get_solver(solver) if section == "solver" else registry.get_problem(problem)
    return next(o for o in cls.options if o.name == name)


def _owner(solver: str, problem: str, section: str, name: str) -> str:
    return f"{section}:{ {'solver': solver, 'problem': problem, 'run': 'run'}[section]}.{name}"


def test_allow_list_names_integer_options():
    names = {c[3] for c in CASES}
    owners = {_owner(*c) for c in CASES}
    assert not set(UNBOUNDED) - names, f"stale allow-list entries: {set(UNBOUNDED) - names}"
    assert not set(UNBOUNDED_AT) - owners, f"stale allow-list entries: {set(UNBOUNDED_AT) - owners}"


@pytest.mark.parametrize("solver,problem,section,name", CASES, ids=[_owner(*c) for c in CASES])
def test_impossible_sizes_are_refused_before_setup(solver, problem, section, name):
    owner = _owner(solver, problem, section, name)
    key = f"{section}.{name}"
    opt = _option(solver, problem, section, name)
    try:
        pre_setup_checks(solver, problem, [])
    except InputError as exc:
        if "needs the Python package" in str(exc) and not os.environ.get("CI"):
            pytest.skip(str(exc))     # under CI every extra is installed: a missing one fails
        raise
    values = [HUGE] + ([int(opt.high) + 1] if opt.high is not None else [])
    for value in values:
        if value > HUGE and opt.high is None:
            continue
        try:
            pre_setup_checks(solver, problem, [(key, value, "--set")])
        except InputError as exc:
            assert key in str(exc), f"{key}={value}: the error does not name the key: {exc}"
            assert "\n" not in str(exc)
            assert owner not in UNBOUNDED_AT and name not in UNBOUNDED, f"{key} is refused: drop it from the allow-list"
        else:
            assert (name in UNBOUNDED or owner in UNBOUNDED_AT) and opt.high is None, \
                f"{owner}={value} passes every check before set-up: give it high= or a memory estimate"


# What crashed set-up ("array is too big", exit 1) or hung before these checks: one real run each.
REAL_RUNS = [
    ("hamsi", "solver.blocks"),
    ("mf_gd", "problem.rank"),
    ("level_bundle", "solver.max_cuts"),
    ("level_bundle", "problem.rows"),
]


@pytest.mark.parametrize("solver,key", REAL_RUNS, ids=[f"{s}-{k}" for s, k in REAL_RUNS])
def test_real_run_refuses_an_impossible_size(solver, key, tmp_path):
    before = snapshot(tmp_path)
    p = run_mpi([solver, "--set", f"{key}={2 ** 63 - 1}", "--out", "r.h5"], n=1, timeout=180, cwd=tmp_path)
    assert_contract(p, 2, rf"mpiopt: error: .*{key}=9223372036854775807.*needs about", before, snapshot(tmp_path))
