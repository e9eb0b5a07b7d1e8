"""Command line: ``[mpirun -n P] python -m mpiopt.run [SOLVER] [--problem NAME] [options]``.

Without a solver it runs the default job: SignProx and its uncompressed baseline prox_sgd on one
generated logistic problem with the same budget, side by side (``mpiopt-demo.h5`` and
``mpiopt-demo-prox_sgd.h5``). Exit codes: 0 converged or budget reached; 2 bad usage, config or input;
1 any other failure; 128+signal when stopped by SIGTERM/SIGINT (after a final checkpoint).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from . import options as O
from . import registry
from .errors import EXIT_OK, EXIT_USAGE, InputError
from .provenance import versions
from .runner import DEMO_BASELINE, RunSpec, build_run, resolve_spec


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


def spec_from_args(args: argparse.Namespace, solver: str | None = None) -> RunSpec:
    """The run spec of parsed command-line arguments (precedence: file < --set < dedicated flags);
    ``solver`` replaces the one named on the command line."""
    values: list[tuple[str, Any, str]] = []
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
    spec = resolve_spec(solver or args.solver, args.problem, values, config_file=args.config)
    spec.plugins = list(args.plugin)
    return spec


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
        if s.demo_settings:
            demo = " ".join(f"{k}={v}" for k, v in s.demo_settings.items())
            parts.append(f"demo (python -m mpiopt.run {s.name}, no --problem): {s.default_problem} with\n  {demo}")
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
              "\nexamples:\n  mpirun -n 4 python -m mpiopt.run                      # the default job: signprox beside prox_sgd\n"
              "  mpirun -n 4 python -m mpiopt.run prox_sgd --problem lasso --set solver.max_iter=500\n"
              "  mpirun -n 4 python -m mpiopt.run prox_sgd --problem logistic --set problem.path=a9a"
              " --checkpoint-dir ckpt --checkpoint-every 60s --resume latest\n")


def _run_one(args: argparse.Namespace, spec: RunSpec, comm: Any, problem: Any = None) -> tuple[Any, int]:
    run = build_run(spec, comm, verbose=args.verbose, quiet=args.quiet, problem=problem)
    res = run.execute()
    if args.quiet and comm.rank == 0 and run.writer is not None:   # -q still says where the result went
        print(f"result: {os.path.abspath(run.writer.path)}", flush=True)
    return (run, res), run.exit_code(res)


def run_default_job(args: argparse.Namespace, spec: RunSpec, comm: Any) -> int:
    """The default job (no solver named): SignProx, then its uncompressed baseline on the same problem
    with the same budget, and a side-by-side summary: what one bit per element costs and saves."""
    out = spec.config["run"]["out"]
    stem, ext = os.path.splitext(out)
    base_spec = spec_from_args(args, solver=DEMO_BASELINE)
    base_spec.demo = True
    base_spec.config["run"]["out"] = f"{stem}-{DEMO_BASELINE}{ext or '.h5'}"
    runs, code = [], 0
    problem = None
    for s in (spec, base_spec):
        (run, res), c = _run_one(args, s, comm, problem=problem)   # one data set, set up once
        problem = run.problem
        runs.append((s, run, res))
        code = max(code, c)
        if c != 0:
            return code
    if comm.rank == 0 and not args.quiet:
        print(demo_comparison(runs), flush=True)
    return code


def demo_comparison(runs: list) -> str:
    """The default job's closing table: gap to F*, the algorithm's bytes and the wall time of each run."""
    rows = []
    for s, run, res in runs:
        fstar = run.problem.reference_objective
        gap = res.fun - fstar if fstar is not None else float("nan")
        rows.append((s.solver, gap, res.get("bytes_sent", run.comm.stats.algorithm_bytes), run.wall_time,
                     run.writer.path if run.writer is not None else "-"))
    lines = [f"\ndefault job: {rows[0][0]} beside its baseline {rows[1][0]} (same problem, "
             f"{runs[0][2].nit} iterations, {runs[0][1].comm.size} rank(s))",
             f"  {'solver':<10} {'F - F*':>10} {'bytes sent (rank 0)':>20} {'wall time':>10}  result file"]
    for name, gap, nbytes, wall, path in rows:
        lines.append(f"  {name:<10} {gap:>10.3e} {nbytes / 1e6:>17.3f} MB {wall:>9.2f}s  {path}")
    (_, g1, b1, *_), (_, g0, b0, *_) = rows
    if b1 and g0 > 0:
        lines.append(f"  {rows[0][0]} sent {b0 / b1:.1f}x fewer bytes for {g1 / g0:.2f}x the gap to F* "
                     f"(its solution band-polished; python -m mpiopt.report {rows[0][4]} {rows[1][4]} draws both)")
    return "\n".join(lines)


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
        spec = spec_from_args(args)
        if spec.demo:
            return run_default_job(args, spec, comm)
        return _run_one(args, spec, comm)[1]
    except InputError as exc:
        # every rank reaches the same conclusion (argument parsing and collective checks)
        if comm.rank == 0:
            print(f"mpiopt: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m mpiopt.run``: any exception on any rank aborts the whole job."""
    from .comm import abort_on_exception
    from .stopping import hold_signals_until_exit, ignore_signals_at_exit
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    return abort_on_exception(lambda: _main(argv), verbose=verbose, hold=hold_signals_until_exit,
                              release=ignore_signals_at_exit)


if __name__ == "__main__":
    sys.exit(main())
