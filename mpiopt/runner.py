"""The run builder: the one way a run is assembled, from names and settings to a result.

    spec = resolve_spec(solver, problem, values)     # defaults < demo < file < --set < flags
    run  = build_run(spec, comm)                     # collective: checks, resume target, problem,
                                                     # result file, context, solver
    res  = run.execute(callback)                     # solve, final result file, summary

The command line (:mod:`mpiopt.run`), :func:`mpiopt.api.minimize`, the tests and the benchmarks
all go through here.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from . import __version__
from . import options as O
from . import registry
from . import result as R
from .errors import EXIT_FAILURE, EXIT_OK, CheckpointError, InputError
from .options import Every
from .preflight import (available_memory, check_checkpoint_dir, check_checkpoint_dir_not_input, check_input_file,
                        check_inputs, check_inputs_unchanged, check_memory, check_not_an_input, check_output_file,
                        check_requirements, input_identities, input_paths)
from .provenance import git_commit, now, versions

DEMO_SOLVER = "signprox"          # the default job: SignProx, then its baseline (DEMO_BASELINE)
DEMO_BASELINE = "prox_sgd"
DEMO_OUT = "mpiopt-demo.h5"

Value = tuple[str, Any, str]          # (dotted key, value, where it came from)


@dataclass
class RunSpec:
    """What to run: solver and problem names and the resolved config (``solver``/``problem``/``run``)."""
    solver: str
    problem: str
    config: dict[str, dict[str, Any]]
    demo: bool = False
    notes: list[str] = field(default_factory=list)
    config_file: str | None = None
    plugins: list[str] = field(default_factory=list)


def sections(solver_cls: type, problem_cls: type) -> dict[str, Sequence[O.Option]]:
    return {"solver": solver_cls.options, "problem": problem_cls.options, "run": O.RUN_OPTIONS}


def resolve_spec(solver: str | None = None, problem: str | None = None, values: Iterable[Value] = (), *,
                 config_file: str | None = None, default_out: bool = True) -> RunSpec:
    """Solver, problem and the resolved config from defaults, demo settings, a TOML file and ``values``
    (later values win). With no solver the built-in demo runs; with no problem the solver's demo."""
    registry.load_builtins()
    file_flat: dict[str, Any] = {}
    if config_file:
        file_flat = O.flatten_config(O.load_toml(config_file), f"config file {config_file}")
    # names may come from the file: top-level solver = "..." (no [solver] table) or [run] solver = "..."
    file_solver = file_flat.pop("run.solver", None) or file_flat.pop("solver", None)
    file_problem = file_flat.pop("run.problem", None) or file_flat.pop("problem", None)
    solver_name = solver or file_solver
    problem_name = problem or file_problem
    demo = solver_name is None
    solver_name = str(solver_name or DEMO_SOLVER)
    solver_cls = registry.get_solver(solver_name)
    use_demo_settings = problem_name is None
    problem_name = str(problem_name or solver_cls.default_problem)
    problem_cls = registry.get_problem(problem_name)
    why = solver_cls.check_problem(problem_cls)
    if why:
        raise InputError(why)
    vals: list[Value] = []
    if use_demo_settings:
        vals += [(k, v, f"demo settings of {solver_name}") for k, v in solver_cls.demo_settings.items()]
    vals += [(k, v, f"config file {config_file}") for k, v in file_flat.items()]
    vals += list(values)
    owners = {"solver": f"solver {solver_name!r}", "problem": f"problem {problem_name!r}", "run": "run"}
    cfg = O.resolve(sections(solver_cls, problem_cls), vals, owners)
    run = cfg["run"]
    if run["out"] is None and default_out:
        run["out"] = DEMO_OUT if demo else f"{solver_name}-{problem_name}.h5"
    if run["resume"] == "latest" and not run["checkpoint_dir"]:
        raise InputError("--resume latest needs --checkpoint-dir (or run.checkpoint_dir)")
    return RunSpec(solver_name, problem_name, cfg, demo=demo, config_file=config_file)


def config_lines(cfg: dict[str, dict[str, Any]]) -> str:
    """The resolved config as TOML-like lines (printed at the start of a run)."""
    lines = []
    for sec in ("solver", "problem", "run"):
        lines.append(f"[{sec}]")
        for k, v in cfg[sec].items():
            lines.append(f"  {k} = {json.dumps(v) if not isinstance(v, float) else repr(v)}")
    return "\n".join(lines)


class Run:
    """An assembled run: problem set up, context and solver built, resume state loaded.
    Use :func:`build_run`; :meth:`execute` is collective."""

    def __init__(self, spec: RunSpec, comm: Any, problem: Any, solver: Any, ctx: Any, writer: Any,
                 resume: Any, say: Callable[[str], None], quiet: bool):
        self.spec, self.comm, self.problem, self.solver, self.ctx = spec, comm, problem, solver, ctx
        self.writer, self.resume, self.say, self.quiet = writer, resume, say, quiet
        self.wall_time = 0.0
        self.bytes_total = [0, 0]
        self.setup_time = 0.0       # seconds of the build: checks, problem set-up, reference optimum

    def execute(self, callback: Callable | None = None) -> R.OptimizeResult:
        """Collective: solve, write the final result file (rank 0), print the summary (rank 0).

        A run that ends ``failed`` leaves the previous result file as it was (its ``.part`` is
        removed). The signal handlers installed by :func:`build_run` stay until the result is in
        place (a signal during the final write only lets it finish), then they are removed; the
        checkpoint folder is given back on every path out of here."""
        comm, ctx = self.comm, self.ctx
        try:
            comm.Barrier()
            ctx.stop.begin_solve()      # every rank has finished set-up: the watchdog's limit is hang_timeout
            t0 = time.perf_counter()
            res = self.solver.solve(callback=callback)
            self._finish(res, t0)
        except BaseException:
            if self.writer is not None:
                self.writer.abandon()
            raise
        finally:
            ctx.stop.restore_signal_handlers()
            release_checkpoint_lock(ctx.checkpoints.manager if ctx.checkpoints is not None else None)
        self._summary(res)
        return res

    def _finish(self, res: R.OptimizeResult, t0: float) -> None:
        comm, ctx = self.comm, self.ctx
        self.wall_time = ctx.elapsed()
        ctx.history.close()
        st = comm.stats
        mine = [st.algorithm_bytes, st.diagnostic_bytes]
        self.bytes_total = [int(v) for v in (comm.allreduce_array(mine, tag="result") if comm.size > 1 else mine)]
        res["history"] = ctx.history.arrays()
        if self.writer is not None and res.status == R.FAILED:
            self.writer.abandon()          # a failed run never replaces the previous result
        elif self.writer is not None:
            final = {"status": R.STATUS_NAMES.get(res.status, str(res.status)), "status_code": int(res.status),
                     "success": bool(res.success), "message": str(res.message), "wall_time": self.wall_time,
                     "run_time": time.perf_counter() - t0, "finished": now(), "nit": int(res.nit),
                     "fun": float(res.fun) if res.fun is not None else float("nan"),
                     "bytes_sent_rank0": int(comm.stats.bytes_sent),
                     "bytes_algorithm_rank0": mine[0], "bytes_diagnostics_rank0": mine[1],
                     "bytes_algorithm_total": self.bytes_total[0], "bytes_diagnostics_total": self.bytes_total[1],
                     "setup_time": self.setup_time,
                     **{k: float(res[k]) for k in ("fun_raw",) if res.get(k) is not None},
                     **{k: v for k, v in (res.get("quality") or {}).items() if v is not None}}
            if ctx.checkpoints.last_path:
                final["last_checkpoint"] = ctx.checkpoints.last_path
            solution = res.get("solution") or ({"x": res.x} if res.get("x") is not None else {})
            self.writer.close(final, solution, res.get("extra_groups"))
        comm.Barrier()

    def _summary(self, res: R.OptimizeResult) -> None:
        fstar = self.problem.reference_objective
        lines = [f"status: {R.STATUS_NAMES.get(res.status, res.status)} ({res.message})",
                 f"iterations: {res.nit}   wall time: {self.wall_time:.2f}s   objective: {res.fun:.10g}"]
        if fstar is not None and res.fun is not None:
            lines.append(f"F* = {fstar:.10g}   objective - F* = {res.fun - fstar:.3e}")
        quality = res.get("quality") or {}
        if quality:
            lines.append("quality: " + "   ".join(f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}"
                                                  for k, v in quality.items() if v is not None))
        st, (alg, diag) = self.comm.stats, self.bytes_total
        if alg or diag:
            lines.append(f"bytes sent: {alg:,} by the algorithm, {diag:,} for evaluations and checks (all ranks; "
                         f"rank 0: {st.algorithm_bytes:,} and {st.diagnostic_bytes:,}; RMA counted at the origin)")
        if self.ctx.checkpoints.last_path:
            lines.append(f"last checkpoint: {self.ctx.checkpoints.last_path}")
        if self.writer is not None and res.status == R.FAILED:
            lines.append(f"result: not written (the run failed); {os.path.abspath(self.writer.path)} is as it was")
        elif self.writer is not None:
            lines.append(f"result: {os.path.abspath(self.writer.path)}  (read it with mpiopt.io.load_result)")
        self.say("\n".join(lines))

    def exit_code(self, res: R.OptimizeResult) -> int:
        """The process exit code for ``res``: 0, 1 (failed) or 128+signal (interrupted)."""
        if res.status == R.INTERRUPTED:
            return 128 + (self.ctx.stop.signal_received or 15)
        if res.status == R.FAILED:
            return EXIT_FAILURE
        return EXIT_OK


def _find_resume(spec: RunSpec, ckpts: Any) -> Any:
    from .io.checkpoint import load_checkpoint
    run = spec.config["run"]
    target = run["resume"]
    if not target:
        return None
    if target == "latest":
        path = ckpts.latest()
        if path is None:
            return None
        check_input_file(path, "--resume latest", folder_ok=True, missing_ok=True)
    else:
        path = target
    ck = load_checkpoint(path, spec.solver, spec.problem)
    old = json.loads(ck.meta.get("config", "{}"))
    for key, val in spec.config["problem"].items():
        if old.get("problem", {}).get(key, val) != val:
            raise CheckpointError(f"--resume {path}: checkpoint has problem.{key}="
                                  f"{old['problem'][key]!r}, this run {val!r}")
    check_inputs_unchanged(ck.meta.get("inputs"), spec.config, f"--resume {path}")
    return ck


def preflight(spec: RunSpec, problem_cls: type, n_ranks: int, write_result: bool = True) -> None:
    """Every path the run reads or writes, before any heavy work (InputError naming it)."""
    run = spec.config["run"]
    check_inputs(spec.config)
    inputs = input_paths(spec.config, spec.config_file, spec.plugins)
    if write_result and run["out"]:
        check_output_file(run["out"])
        check_not_an_input(run["out"], inputs)
        check_checkpoint_dir_not_input(run["checkpoint_dir"], run["out"])
    if run["checkpoint_dir"]:
        check_checkpoint_dir(run["checkpoint_dir"])


def build_run(spec: RunSpec, comm: Any = None, *, verbose: bool = False, quiet: bool = False,
              write_result: bool = True, problem: Any = None, install_signals: bool = True) -> Run:
    """Collective: check every input, find the resume target, set up the problem, create the result
    file (rank 0, when ``write_result``), build the context and the solver and load the resume state.
    Bad input raises :class:`InputError` on every rank before any heavy work.

    ``problem``: an already set-up problem of ``spec.problem`` with the same ``problem.*`` settings
    to reuse (sweeps and benchmarks that run several solvers on one data set).
    ``install_signals``: SIGTERM/SIGINT handlers from now on (a signal during set-up stops the run at
    its first poll; the grace period bounds it), removed when the run ends or the build fails."""
    from .stopping import StopPolicy

    comm_ = comm
    run_cfg = spec.config["run"]
    stop = StopPolicy(time.perf_counter, run_cfg["max_time"], run_cfg["poll_every"],
                      rank=(comm_.rank if comm_ is not None else _world_rank()),
                      term_grace=run_cfg["term_grace"], hang_timeout=run_cfg["hang_timeout"],
                      setup_timeout=run_cfg["setup_timeout"])
    if install_signals:
        stop.install_signal_handlers()
    try:
        return _build_run(spec, comm, verbose=verbose, quiet=quiet, write_result=write_result, problem=problem,
                          stop=stop)
    except BaseException:
        stop.restore_signal_handlers()
        raise


def _world_rank() -> int:
    from .comm import world
    return world().rank


def _build_run(spec: RunSpec, comm: Any, *, verbose: bool, quiet: bool, write_result: bool, problem: Any,
               stop: Any) -> Run:
    from .comm import collective_check, world
    from .io.checkpoint import CheckpointManager

    t_build = time.perf_counter()
    comm = comm or world()
    rank = comm.rank
    say: Callable[[str], None] = ((lambda msg: print(msg, flush=True)) if (rank == 0 and not quiet)
                                  else (lambda msg: None))
    solver_cls = registry.get_solver(spec.solver)
    problem_cls = registry.get_problem(spec.problem)
    cfg = spec.config
    run = cfg["run"]
    check_requirements(solver_cls, problem_cls)
    if comm.size < solver_cls.min_ranks:
        raise InputError(f"solver {spec.solver!r} needs at least {solver_cls.min_ranks} ranks "
                         f"(mpirun -n {solver_cls.min_ranks} ...), got {comm.size}")
    solver_cls.check_config(cfg, comm.size)
    Every.parse(run["checkpoint_every"], "run.checkpoint_every")
    collective_check(comm, lambda: preflight(spec, problem_cls, comm.size, write_result))
    estimate = solver_cls.run_memory_estimate(problem_cls, cfg, comm.size, with_problem=problem is None)
    ranks_here = comm.node_size()
    collective_check(comm, lambda: check_memory(estimate, ranks_here, available_memory()))

    say(f"mpiopt {__version__}: {'demo: ' if spec.demo else ''}{spec.solver} on {spec.problem}, {comm.size} rank(s)")
    say(config_lines(cfg))

    # 1. hold the checkpoint folder (rank 0): a second run on it is refused here
    ckpts = CheckpointManager(run["checkpoint_dir"], run["keep_checkpoints"]) if run["checkpoint_dir"] else None
    writers: list[Any] = []       # the result file, once created: abandoned if the build fails

    def take_folder():
        if rank == 0 and ckpts is not None:
            note = ckpts.acquire_lock().note
            if note:
                say(note)
    try:
        collective_check(comm, take_folder)
        return _build_rest(spec, comm, cfg, run, rank, say, verbose, quiet, problem, stop, ckpts, writers,
                           t_build, problem_cls, solver_cls, write_result)
    except BaseException:
        for w in writers:
            w.abandon()
        release_checkpoint_lock(ckpts)
        raise


def release_checkpoint_lock(ckpts: Any) -> None:
    """Give back the checkpoint folder's lock, if this rank holds it."""
    if ckpts is not None:
        ckpts.release_lock()


def _build_rest(spec: RunSpec, comm: Any, cfg: dict, run: dict, rank: int, say: Callable[[str], None],
                verbose: bool, quiet: bool, problem: Any, stop: Any, ckpts: Any, writers: list, t_build: float,
                problem_cls: type, solver_cls: type, write_result: bool) -> Run:
    from .comm import collective_check
    from .context import RunContext
    from .io.checkpoint import clean_stale_temporaries
    from .io.results import FORMAT, FORMAT_VERSION, ResultWriter

    # 2. resume target (every rank reads the same file), before any heavy work
    if rank == 0:   # temporary files that killed runs left behind
        for folder in {run["checkpoint_dir"], os.path.dirname(os.path.abspath(run["out"])) if run["out"] else None}:
            if folder:
                clean_stale_temporaries(folder)
    resume = collective_check(comm, lambda: _find_resume(spec, ckpts))
    if run["resume"] == "latest" and resume is None:
        say(f"no checkpoint in {run['checkpoint_dir']}: starting a new run")
    # identities of the data files, recorded in each checkpoint so that a resume can refuse changed data
    identities = comm.bcast_obj(input_identities(cfg) if rank == 0 else None) if ckpts is not None else {}

    # 3. data: each rank loads or generates its shard; one error message for all ranks
    if problem is None:
        problem = problem_cls(cfg["problem"], comm)
        t_setup = time.perf_counter()
        collective_check(comm, problem.setup)
        say(f"problem: {problem.describe()} (set up in {time.perf_counter() - t_setup:.2f}s)")
        if verbose:
            local = getattr(problem, "n_local", None)
            print(f"[rank {rank}] set up in {time.perf_counter() - t_setup:.2f}s"
                  + (f", {local} local samples" if local is not None else ""), flush=True)
        problem.compute_reference()
    elif not isinstance(problem, problem_cls) or problem.opts != cfg["problem"]:
        raise InputError(f"build_run: the given problem is not {spec.problem!r} with these problem.* settings")
    comm.stats.reset()  # setup and reference traffic is not the solver's
    if problem.reference_objective is not None:
        say(f"reference objective F* = {problem.reference_objective:.10g}")

    # 4. the result file (rank 0), created only after every input was validated; OUT.part is created
    # exclusively and is the output's lock: a second run writing the same --out is refused here
    writer = None
    if write_result and run["out"]:
        attrs: dict[str, Any] = {}
        if rank == 0:
            attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "solver": spec.solver,
                     "problem": spec.problem, "config": cfg, "n_ranks": comm.size, "seed": run["seed"],
                     "status": "running", "success": False, "message": "running", "started": now(),
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
                writers.append(writer)
                if writer.note:
                    say(writer.note)
        collective_check(comm, open_writer)

    # 5. context and solver, then the resume state
    ctx = RunContext(comm, run, solver=spec.solver, problem=spec.problem, config=cfg, writer=writer,
                     checkpoints=ckpts, resume=resume, verbose=verbose, quiet=quiet, stop=stop)
    ctx.inputs = identities
    solver = solver_cls(problem, cfg["solver"], ctx)
    if resume is not None:
        collective_check(comm, lambda: solver.load_state_dict(resume.state))
        say(f"resumed from {resume.path} at iteration {resume.iteration}")
    ctx.start_clock()       # history times and wall_time count from here; set-up is setup_time
    run_obj = Run(spec, comm, problem, solver, ctx, writer, resume, say, quiet)
    run_obj.setup_time = time.perf_counter() - t_build
    return run_obj
