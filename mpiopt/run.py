"""Command line: ``[mpirun -n P] python -m mpiopt.run [SOLVER] [--problem NAME] [options]``.

Without a solver it runs the built-in demo (prox_sgd on a generated logistic problem) and writes
``mpiopt-demo.h5``. Exit codes: 0 converged or budget reached; 2 bad usage, config or input;
1 any other failure; 128+signal when stopped by SIGTERM/SIGINT (after a final checkpoint).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import __version__
from . import options as O
from . import registry
from . import result as R
from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CheckpointError, InputError

DEMO_SOLVER = "prox_sgd"
DEMO_OUT = "mpiopt-demo.h5"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # raise instead of printing on every rank and exiting
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m mpiopt.run", add_help=False,
                description="Run an mpiopt solver on a problem (under mpirun/srun for several ranks).")
    p.add_argument("solver", nargs="?", help="solver name (default: the demo)")
    p.add_argument("--problem", help="problem name (default: the solver's demo problem)")
    p.add_argument("--config", help="TOML file with [solver], [problem], [run] tables")
    p.add_argument("--set", dest="sets", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set solver.max_iter=100 problem.l1=1e-3")
    p.add_argument("--out", help="result file (HDF5)")
    p.add_argument("--checkpoint-dir", help="folder for checkpoints")
    p.add_argument("--checkpoint-every", help="checkpoint period: N iterations or Ns seconds")
    p.add_argument("--resume", help="'latest' (in --checkpoint-dir; starts fresh if none) or a checkpoint path")
    p.add_argument("--max-time", type=str, help="wall-time budget in seconds")
    p.add_argument("--seed", type=str, help="seed of the solver's random streams")
    p.add_argument("--plugin", action="append", default=[], help="module or .py file registering solvers/problems")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks, and output from every rank")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.add_argument("-h", "--help", action="store_true", help="show help (with SOLVER or --problem: their options)")
    p.add_argument("--version", action="store_true", help="print versions and exit")
    return p


@dataclass
class RunSpec:
    solver: str
    problem: str
    config: dict[str, dict[str, Any]]
    demo: bool = False
    notes: list[str] = field(default_factory=list)


def _solver_sections(solver_cls: type, problem_cls: type) -> dict[str, Sequence[O.Option]]:
    return {"solver": solver_cls.options, "problem": problem_cls.options, "run": O.RUN_OPTIONS}


def resolve_spec(args: argparse.Namespace) -> RunSpec:
    """Solver, problem and the resolved config from defaults, demo settings, TOML, --set and flags."""
    file_flat: dict[str, Any] = {}
    if args.config:
        file_flat = O.flatten_config(O.load_toml(args.config), f"config file {args.config}")
    # names may come from the file: top-level solver = "..." (no [solver] table) or [run] solver = "..."
    file_solver = file_flat.pop("run.solver", None) or file_flat.pop("solver", None)
    file_problem = file_flat.pop("run.problem", None) or file_flat.pop("problem", None)
    solver_name = args.solver or file_solver
    problem_name = args.problem or file_problem
    demo = solver_name is None
    solver_name = solver_name or DEMO_SOLVER
    solver_cls = registry.get_solver(str(solver_name))
    use_demo_settings = problem_name is None
    problem_name = problem_name or solver_cls.default_problem
    problem_cls = registry.get_problem(str(problem_name))
    why = solver_cls.check_problem(problem_cls)
    if why:
        raise InputError(why)
    values: list[tuple[str, Any, str]] = []
    if use_demo_settings:
        values += [(k, v, f"demo settings of {solver_name}") for k, v in solver_cls.demo_settings.items()]
    values += [(k, v, f"config file {args.config}") for k, v in file_flat.items()]
    for group in args.sets:
        for item in group:
            key, value = O.parse_assignment(item)
            values.append((key, value, "--set"))
    flag_map = {"out": "run.out", "checkpoint_dir": "run.checkpoint_dir", "checkpoint_every": "run.checkpoint_every",
                "resume": "run.resume", "max_time": "run.max_time", "seed": "run.seed"}
    for attr, key in flag_map.items():
        v = getattr(args, attr)
        if v is not None:
            values.append((key, v, f"--{attr.replace('_', '-')}"))
    owners = {"solver": f"solver {solver_name!r}", "problem": f"problem {problem_name!r}", "run": "run"}
    cfg = O.resolve(_solver_sections(solver_cls, problem_cls), values, owners)
    if cfg["run"]["out"] is None:
        cfg["run"]["out"] = DEMO_OUT if demo else f"{solver_name}-{problem_name}.h5"
    from .context import _parse_every
    _parse_every(str(cfg["run"]["checkpoint_every"]))
    if cfg["run"]["resume"] and not cfg["run"]["checkpoint_dir"] and cfg["run"]["resume"] == "latest":
        raise InputError("--resume latest needs --checkpoint-dir (or run.checkpoint_dir)")
    return RunSpec(str(solver_name), str(problem_name), cfg, demo=demo)


# -- help -------------------------------------------------------------------------------------
def _options_text(title: str, prefix: str, opts: Sequence[O.Option]) -> str:
    lines = [title]
    for o in opts:
        lines.append(f"  {prefix}.{o.describe()}")
    if not opts:
        lines.append("  (none)")
    return "\n".join(lines)


def help_text(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    registry.load_builtins()
    parts = []
    if args.solver:
        s = registry.get_solver(args.solver)
        compat = [n for n, pc in sorted(registry.PROBLEMS.items()) if s.check_problem(pc) is None]
        parts.append(f"solver {s.name}: {s.summary}\n  problems: {', '.join(compat)} (default {s.default_problem})"
                     f"\n  ranks: at least {s.min_ranks}")
        parts.append(_options_text("options (--set solver.KEY=VALUE):", "solver", s.options))
    if args.problem:
        pc = registry.get_problem(args.problem)
        parts.append(f"problem {pc.name}: {pc.summary}")
        parts.append(_options_text("options (--set problem.KEY=VALUE):", "problem", pc.options))
    if parts:
        return "\n\n".join(parts) + "\n"
    width = max(map(len, [*registry.SOLVERS, *registry.PROBLEMS])) + 2
    solvers = "\n".join(f"  {n.ljust(width)}{c.summary}" for n, c in sorted(registry.SOLVERS.items()))
    problems = "\n".join(f"  {n.ljust(width)}{c.summary}" for n, c in sorted(registry.PROBLEMS.items()))
    return (parser.format_help()
            + "\nsolvers (python -m mpiopt.run SOLVER --help for its options):\n" + solvers
            + "\n\nproblems (python -m mpiopt.run --problem NAME --help):\n" + problems
            + "\n\n" + _options_text("run options (--set run.KEY=VALUE; flags above set the same keys):", "run", O.RUN_OPTIONS)
            + "\n\nconfig files: TOML with tables [solver], [problem], [run]; [run] may name solver = \"...\" and"
              " problem = \"...\";\n--set overrides the file, flags override --set."
              "\nexit codes: 0 converged or budget reached, 2 bad usage/config/input, 1 other failure,"
              " 128+N stopped by signal N.\n"
              "\nexamples:\n  mpirun -n 4 python -m mpiopt.run                      # the demo, writes mpiopt-demo.h5\n"
              "  mpirun -n 4 python -m mpiopt.run prox_sgd --problem lasso --set solver.max_iter=500\n"
              "  mpirun -n 4 python -m mpiopt.run prox_sgd --problem logistic --set problem.path=a9a"
              " --checkpoint-dir ckpt --checkpoint-every 60s --resume latest\n")


# -- provenance -----------------------------------------------------------------------------
def versions() -> dict[str, str]:
    import h5py
    import mpi4py
    import numpy
    import scipy
    from mpi4py import MPI
    return {"mpiopt": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
            "scipy": scipy.__version__, "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
            "mpi4py": mpi4py.__version__, "mpi_library": MPI.Get_library_version().strip().splitlines()[0]}


def git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _config_lines(cfg: dict[str, dict[str, Any]]) -> str:
    lines = []
    for sec in ("solver", "problem", "run"):
        lines.append(f"[{sec}]")
        for k, v in cfg[sec].items():
            lines.append(f"  {k} = {json.dumps(v) if not isinstance(v, float) else repr(v)}")
    return "\n".join(lines)


# -- the run ------------------------------------------------------------------------------------
def execute(spec: RunSpec, verbose: bool = False, quiet: bool = False) -> int:
    """Run ``spec`` on MPI.COMM_WORLD; returns the process exit code."""
    from .comm import collective_check, world
    from .context import RunContext
    from .io.checkpoint import CheckpointManager, load_checkpoint
    from .io.results import FORMAT, FORMAT_VERSION, ResultWriter

    comm = world()
    rank = comm.rank
    say = (lambda msg: print(msg, flush=True)) if (rank == 0 and not quiet) else (lambda msg: None)
    solver_cls = registry.get_solver(spec.solver)
    problem_cls = registry.get_problem(spec.problem)
    cfg = spec.config
    run = cfg["run"]
    if comm.size < solver_cls.min_ranks:
        raise InputError(f"solver {spec.solver!r} needs at least {solver_cls.min_ranks} ranks "
                         f"(mpirun -n {solver_cls.min_ranks} ...), got {comm.size}")
    solver_cls.check_config(cfg, comm.size)

    say(f"mpiopt {__version__}: {'demo: ' if spec.demo else ''}{spec.solver} on {spec.problem}, {comm.size} rank(s)")
    say(_config_lines(cfg))

    # 1. resume target (every rank reads the same file), before any heavy work
    ckpts = CheckpointManager(run["checkpoint_dir"], run["keep_checkpoints"]) if run["checkpoint_dir"] else None

    def find_resume():
        target = run["resume"]
        if not target:
            return None
        if target == "latest":
            assert ckpts is not None
            path = ckpts.latest()
            if path is None:
                return None
        else:
            path = target
        ck = load_checkpoint(path, spec.solver, spec.problem)
        old = json.loads(ck.meta.get("config", "{}"))
        for key, val in cfg["problem"].items():
            if old.get("problem", {}).get(key, val) != val:
                raise CheckpointError(f"--resume {path}: checkpoint has problem.{key}="
                                      f"{old['problem'][key]!r}, this run {val!r}")
        return ck
    resume = collective_check(comm, find_resume)
    if run["resume"] == "latest" and resume is None:
        say(f"no checkpoint in {run['checkpoint_dir']}: starting a new run")

    # 2. data: each rank loads or generates its shard; one error message for all ranks
    problem = problem_cls(cfg["problem"], comm)
    t_setup = time.perf_counter()
    collective_check(comm, problem.setup)
    say(f"problem: {problem.describe()} (set up in {time.perf_counter() - t_setup:.2f}s)")
    if verbose:
        local = getattr(problem, "n_local", None)
        print(f"[rank {rank}] set up in {time.perf_counter() - t_setup:.2f}s"
              + (f", {local} local samples" if local is not None else ""), flush=True)
    problem.compute_reference()
    comm.stats.reset()  # setup and reference traffic is not the solver's
    if problem.reference_objective is not None:
        say(f"reference objective F* = {problem.reference_objective:.10g}")

    # 3. the result file (rank 0), created only after every input was validated
    writer = None
    started = _now()
    if rank == 0:
        attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "solver": spec.solver,
                 "problem": spec.problem, "config": cfg, "n_ranks": comm.size, "seed": run["seed"],
                 "status": "running", "success": False, "message": "running", "started": started,
                 "resumed_from": resume.path if resume is not None else "",
                 **{f"version_{k}": v for k, v in versions().items()}}
        commit = git_commit()
        if commit:
            attrs["git_commit"] = commit
        if problem.reference_objective is not None:
            attrs["reference_objective"] = float(problem.reference_objective)
    def open_writer():
        nonlocal writer
        if rank == 0:
            writer = ResultWriter(run["out"], attrs)
    collective_check(comm, open_writer)

    ctx = RunContext(comm, run, solver=spec.solver, problem=spec.problem, config=cfg, writer=writer,
                     checkpoints=ckpts, resume=resume, verbose=verbose, quiet=quiet)
    solver = solver_cls(problem, cfg["solver"], ctx)
    if resume is not None:
        collective_check(comm, lambda: solver.load_state_dict(resume.state))
        say(f"resumed from {resume.path} at iteration {resume.iteration}")
    ctx.install_signal_handlers()
    comm.Barrier()
    t0 = time.perf_counter()
    try:
        res = solver.solve()
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    wall = ctx.elapsed()
    ctx.close_progress()

    if rank == 0:
        final = {"status": R.STATUS_NAMES.get(res.status, str(res.status)), "status_code": int(res.status),
                 "success": bool(res.success), "message": str(res.message), "wall_time": wall,
                 "run_time": time.perf_counter() - t0, "finished": _now(), "nit": int(res.nit),
                 "fun": float(res.fun) if res.fun is not None else float("nan"),
                 "bytes_sent_rank0": int(comm.stats.bytes_sent)}
        if ctx.last_checkpoint:
            final["last_checkpoint"] = ctx.last_checkpoint
        solution = res.get("solution") or ({"x": res.x} if res.get("x") is not None else {})
        writer.close(final, solution, res.get("extra_groups"))
    comm.Barrier()
    if rank == 0 and not quiet:
        lines = [f"status: {R.STATUS_NAMES.get(res.status, res.status)} ({res.message})",
                 f"iterations: {res.nit}   wall time: {wall:.2f}s   objective: {res.fun:.10g}"]
        if problem.reference_objective is not None and res.fun is not None:
            lines.append(f"F* = {problem.reference_objective:.10g}   objective - F* = {res.fun - problem.reference_objective:.3e}")
        if comm.stats.bytes_sent:
            lines.append(f"bytes sent by rank 0: {comm.stats.bytes_sent:,}")
        if ctx.last_checkpoint:
            lines.append(f"last checkpoint: {ctx.last_checkpoint}")
        lines.append(f"result: {os.path.abspath(run['out'])}  (read it with mpiopt.io.load_result)")
        print("\n".join(lines), flush=True)
    if res.status == R.INTERRUPTED:
        return 128 + (ctx.signal_received or 15)
    if res.status == R.FAILED:
        return EXIT_FAILURE
    return EXIT_OK


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    parser = build_parser()
    from .comm import world
    comm = world()
    try:
        args = parser.parse_args(argv)
        for plugin in args.plugin:
            registry.load_plugin(plugin)
        registry.load_builtins()
        if args.version:
            if comm.rank == 0:
                print("\n".join(f"{k}: {v}" for k, v in versions().items()))
            return EXIT_OK
        if args.help:
            text = help_text(args, parser)
            if comm.rank == 0:
                print(text, end="")
            return EXIT_OK
        spec = resolve_spec(args)
        return execute(spec, verbose=args.verbose, quiet=args.quiet)
    except InputError as exc:
        # every rank reaches the same conclusion (argument parsing and collective checks)
        if comm.rank == 0:
            print(f"mpiopt: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m mpiopt.run``: any exception on any rank aborts the whole job."""
    from .comm import abort_on_exception
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    return abort_on_exception(lambda: _main(argv), verbose=verbose)


if __name__ == "__main__":
    sys.exit(main())
