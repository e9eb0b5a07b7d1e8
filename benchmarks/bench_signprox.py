"""SignProx benchmark: communication and convergence against the uncompressed fp32 baseline.

Run from a shell (it launches ``mpirun`` itself for the rank counts it needs):

    python benchmarks/bench_signprox.py            # full: n = 1e6, 1e7 at 2 and 4 ranks; T = 1000
    python benchmarks/bench_signprox.py --quick    # fewer repetitions, T = 400
    python benchmarks/bench_signprox.py --only comm --sizes 1e7 --ranks 4    # one part, one size

(a) iteration cost: ``solver.step()`` of each solver, built as ``python -m mpiopt.run`` builds it, on one
    generated sparse logistic problem with n features (64 samples per rank, ~1000 nonzeros per sample):
    signprox with each aggregator and code, signsgd_mv, against prox_sgd (fp32 Allreduce). Each step is
    split into the minibatch gradient (timed alone), the collective (time inside it, waiting included)
    and the local O(n) work (the rest). Medians and best of R repetitions; bytes this rank sent per
    iteration and per element, counted by comm.stats from the buffers actually sent.
    Every path runs twice: with the compiled kernels (default) and with the numpy reference paths
    (MPIOPT_JIT=0), both bit-identical.
(b) convergence: generated sparse logistic + L1 at 4 ranks; signprox, prox_sgd, signsgd_mv and
    sign_then_prox for T iterations. step0 is chosen per solver on run.seed=0 by the raw gap (F of the
    iterate itself, no polish) and reported on held-out seeds 1 and 2: the raw gaps (no polish on either
    side) and the gaps after the same polish for every solver, x <- prox_{gamma_T r}(x) with the solver's
    own last step gamma_T; bytes of the algorithm's own collectives.
(c) diagnostics: runs at default settings (the CLI demo of each solver and the logistic problem's
    defaults) with the default history interval and with the old one (T/50 rows): time spent in history
    rows (objective, polished objective, mapping norm) as a share of the run.
(d) start-up: ``mpirun -n P python -m mpiopt.run signprox`` (1 iteration, tiny problem) and ``... hamsi``
    (1 epoch), whole command, with a cold numba cache (empty NUMBA_CACHE_DIR), a warm one, and for signprox
    the numpy paths (MPIOPT_JIT=0).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TAG = "@@BENCH "


# -- workers (run under mpirun) ----------------------------------------------------------------------
def _emit(comm, record: dict) -> None:
    if comm.rank == 0:
        print(TAG + json.dumps(record, default=float), flush=True)


def _build(comm, solver: str, problem_values: dict, solver_values: dict, problem=None, history_every: int = 0,
           seed: int = 0):
    """A run built the way ``python -m mpiopt.run`` builds it (no result file)."""
    from mpiopt.runner import build_run, resolve_spec
    values = [(f"problem.{k}", v, "bench") for k, v in problem_values.items()]
    values += [(f"solver.{k}", v, "bench") for k, v in solver_values.items()]
    values += [("run.seed", seed, "bench"), ("run.progress", "none", "bench"),
               ("run.history_every", history_every, "bench")]
    spec = resolve_spec(solver, "logistic", values, default_out=False)
    return build_run(spec, comm, quiet=True, write_result=False, problem=problem, install_signals=False)


# the paths compared in (a): label -> (solver, solver options)
PATHS = {
    "fp32_allreduce": ("prox_sgd", {"schedule": "const", "step0": 1e-3}),
    "1bit_allgather": ("signprox", {"aggregator": "allgather", "schedule": "const", "step0": 1e-3}),
    "1bit_twophase": ("signprox", {"aggregator": "twophase", "schedule": "const", "step0": 1e-3}),
    "1bit_int8_allreduce": ("signprox", {"aggregator": "int8_allreduce", "schedule": "const", "step0": 1e-3}),
    "ternary_allgather": ("signprox", {"encoding": "ternary", "schedule": "const", "step0": 1e-3}),
    "1bit_signsgd_mv": ("signsgd_mv", {"schedule": "const", "step0": 1e-3}),
}


def worker_comm(n: int, reps: int, kernels: str = "compiled", nnz_per_sample: int = 1000) -> None:
    """Time ``solver.step()`` (one whole iteration as the solvers run it) for each path on one
    generated sparse logistic problem with ``n`` features, and split it into the minibatch gradient,
    the collective and the local O(n) work."""
    from mpi4py import MPI

    from mpiopt.comm import Comm

    comm = Comm(MPI.COMM_WORLD)
    prob_values = {"n_samples": 64 * comm.size, "n_features": n, "density": min(1.0, nnz_per_sample / n),
                   "support": 0.05, "l1": 1e-3, "reference": "no"}
    problem = None
    for label, (solver, sopts) in PATHS.items():
        run = _build(comm, solver, prob_values, {**sopts, "max_iter": 10 ** 9, "mapping_norm": False}
                     if solver != "prox_sgd" else {**sopts, "max_iter": 10 ** 9}, problem=problem)
        problem = run.problem
        s, p = run.solver, run.problem
        comm_tags = ("gradient", "sign_allgather", "sign_alltoall", "sign_int8_allreduce")
        times, ctimes, gtimes = [], [], []
        s.step()  # warm-up: page faults, MPI buffers
        for _ in range(reps):
            comm.Barrier()
            t0 = time.perf_counter()
            s.local_gradient()      # the solver's own minibatch gradient (sparse and compiled on CSR data)
            gtimes.append(time.perf_counter() - t0)
            comm.Barrier()
            c0 = sum(comm.stats.time_by_op[t] for t in comm_tags)
            b0 = comm.stats.bytes_sent
            t0 = time.perf_counter()
            s.step()
            times.append(time.perf_counter() - t0)
            ctimes.append(sum(comm.stats.time_by_op[t] for t in comm_tags) - c0)
            nbytes = comm.stats.bytes_sent - b0
        ptimes = []
        for _ in range(reps):          # one pass over x (a read of n floats), the unit of the local-work goal
            comm.Barrier()
            t0 = time.perf_counter()
            s.x.sum()
            ptimes.append(time.perf_counter() - t0)
        med = [float(np.median(v)) for v in (times, ctimes, gtimes, ptimes)]
        mx = comm.allreduce_array([med[0], min(times), med[1], min(ctimes), med[2], med[3]], op=MPI.MAX)
        payload = getattr(getattr(s, "agg", None), "payload_bytes", 4 * n) / n
        _emit(comm, {"kind": "comm", "n": n, "P": comm.size, "method": label, "kernels": kernels,
                     "median_ms": 1e3 * mx[0],
                     "best_ms": 1e3 * mx[1], "comm_median_ms": 1e3 * mx[2], "comm_best_ms": 1e3 * mx[3],
                     "grad_median_ms": 1e3 * mx[4], "pass_ms": 1e3 * mx[5], "bytes_per_iter": int(nbytes), "bytes_per_elem": nbytes / n,
                     "payload_per_elem": payload})
        del run, s


def worker_conv(T: int, n_samples: int, n_features: int, plan: str) -> None:
    """``plan``: JSON {label: [solver, [step0...], extra options, [seeds]]}."""
    from mpi4py import MPI

    from mpiopt.comm import Comm
    from mpiopt.solvers.prox_sgd import step_size
    from mpiopt.solvers.sign_vote import sign_step_size

    comm = Comm(MPI.COMM_WORLD)
    prob_values = {"n_samples": n_samples, "n_features": n_features, "density": 0.05, "support": 0.05, "l1": 2e-3}
    problem = None
    for label, (name, steps, extra, seeds) in json.loads(plan).items():
        for seed in seeds:
            for step0 in steps:
                sopts = {"max_iter": T, "step0": step0, **extra}
                if name != "prox_sgd":
                    sopts["mapping_norm"] = False
                run = _build(comm, name, prob_values, sopts, problem=problem, history_every=max(1, T // 20),
                             seed=seed)
                if problem is None:
                    problem = run.problem
                    fstar = problem.reference_objective
                    nnz_star = int(np.count_nonzero(np.abs(problem.reference_x) > 1e-8))
                    _emit(comm, {"kind": "problem", "fstar": fstar, "nnz_star": nnz_star, "n": n_features,
                                 "N": n_samples, "P": comm.size, "T": T})
                comm.stats.reset()
                t0 = time.perf_counter()
                res = run.execute()
                wall = time.perf_counter() - t0
                x_raw = res.get("x_raw", res.x)
                sched = run.spec.config["solver"]["schedule"]
                gam_T = (step_size(step0, T - 1, sched) if name == "prox_sgd"
                         else sign_step_size(step0, T - 1, sched, T))
                xp = problem.regularizer.prox(x_raw.copy(), gam_T)
                f_prox = problem.objective(xp)
                alg = {op: b for op, b in comm.stats.bytes_by_op.items() if op == "gradient" or op.startswith("sign_")}
                hist = res.history
                _emit(comm, {"kind": "conv", "solver": label, "seed": seed, "step0": step0,
                             "gap_raw": res.get("fun_raw", res.fun) - fstar, "gap_prox": f_prox - fstar,
                             "gap_reported": res.fun - fstar, "nnz_raw": int(np.count_nonzero(x_raw)),
                             "nnz_prox": int(np.count_nonzero(xp)), "bytes": int(sum(alg.values())), "wall": wall,
                             "hist_iter": list(hist.get("iteration", [])), "hist_gap": list(hist.get("gap", []))})


def worker_diag(T: int) -> None:
    """History rows at default settings: their share of the run (default interval and T/50)."""
    from mpi4py import MPI

    from mpiopt.comm import Comm
    from mpiopt.runner import build_run, resolve_spec

    comm = Comm(MPI.COMM_WORLD)
    for solver in ("signprox", "prox_sgd"):
        for setting in ("demo", "problem defaults"):
            for every in (0, "old"):
                values = [("run.seed", 0, "bench"), ("run.progress", "none", "bench")]
                spec = resolve_spec(solver, None if setting == "demo" else "logistic", values, default_out=False)
                T = spec.config["solver"]["max_iter"]
                h = max(1, T // 50) if every == "old" else 0
                spec.config["run"]["history_every"] = h
                run = build_run(spec, comm, quiet=True, write_result=False, install_signals=False)
                comm.Barrier()
                t0 = time.perf_counter()
                res = run.execute()
                wall = time.perf_counter() - t0
                d = comm.allreduce_array([res.diagnostics_seconds, wall], op=MPI.MAX)
                _emit(comm, {"kind": "diag", "solver": solver, "setting": setting, "T": T,
                             "every": run.ctx.history.every, "rows": len(res.history.get("iteration", [])),
                             "diag_s": float(d[0]), "wall_s": float(d[1]), "share": float(d[0] / d[1]),
                             "interval": "default" if every == 0 else "old T/50"})


# -- driver -------------------------------------------------------------------------------------------
def launch(P: int, args: list[str], timeout: float, env: dict | None = None) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (os.path.dirname(HERE), env.get("PYTHONPATH"))))
    cmd = ["mpirun", "-n", str(P), sys.executable, os.path.abspath(__file__), "--worker", *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, err = p.communicate()
        raise SystemExit(f"timed out: {' '.join(cmd)}\n{err[-2000:]}")
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return [json.loads(line[len(TAG):]) for line in out.splitlines() if line.startswith(TAG)]


def load() -> str:
    """The 1-minute load average (other users of the machine), printed beside every figure."""
    return f"{os.getloadavg()[0]:.1f}"


def report_comm(records: list[dict]) -> list[dict]:
    print("\n(a) one whole iteration, solver.step() as the solvers run it:"
          "\n    sign paths = gradient + message with prox, checked and packed + vote collective + vote + apply;"
          "\n    fp32_allreduce = gradient + cast + Allreduce + x <- prox(x - step g) (prox_sgd)."
          "\n    kernels: compiled (numba, default) or numpy (MPIOPT_JIT=0, the reference paths); bit-identical."
          "\n    ms = max over ranks of the per-rank median (best) of the repetitions; grad = minibatch gradient"
          "\n    timed alone; comm = time inside the collective (includes waiting for the other ranks);"
          "\n    local = median - grad - comm; B/elem = bytes this rank sent per element."
          "\n    speedup = fp32_allreduce with the same kernels / method; x numpy fp32 = fp32_allreduce with numpy"
          "\n    kernels / method. target: >= 2 at n = 1e7, P = 4 (shared memory). pass = one read of x (ms);"
          "\n    local goal: local <= fp32 local + pass (ratio <= 1).")
    print(f"{'n':>9} {'P':>2} {'kernels':<8} {'method':<20} {'median ms':>10} {'best ms':>9} {'grad':>7} "
          f"{'comm med':>9} {'local med':>9} {'B/elem sent':>11} {'speedup med':>11} {'speedup best':>12} "
          f"{'x numpy fp32':>12} {'pass':>6} {'local/(fp32 local+pass)':>23} {'load':>5}")
    rows = []
    for (n, P) in sorted({(r["n"], r["P"]) for r in records}):
        grp = [r for r in records if r["n"] == n and r["P"] == P]
        numpy_base = next((r for r in grp if r["method"] == "fp32_allreduce" and r["kernels"] == "numpy"), None)
        for kern in ("compiled", "numpy"):
            sub = [r for r in grp if r["kernels"] == kern]
            base = next((r for r in sub if r["method"] == "fp32_allreduce"), None)
            for r in sub:
                sp_med = base["median_ms"] / r["median_ms"] if base else float("nan")
                sp_best = base["best_ms"] / r["best_ms"] if base else float("nan")
                vs_np = numpy_base["median_ms"] / r["median_ms"] if numpy_base else float("nan")
                local = r["median_ms"] - r["comm_median_ms"] - r["grad_median_ms"]
                base_local = (base["median_ms"] - base["comm_median_ms"] - base["grad_median_ms"]) if base else 0
                goal = local / (base_local + r["pass_ms"]) if base else float("nan")
                rows.append({**r, "speedup_median": sp_med, "speedup_best": sp_best, "local_median_ms": local,
                             "speedup_vs_numpy_fp32": vs_np, "local_goal_ratio": goal})
                print(f"{n:>9.0e} {P:>2} {kern:<8} {r['method']:<20} {r['median_ms']:>10.1f} {r['best_ms']:>9.1f} "
                      f"{r['grad_median_ms']:>7.1f} {r['comm_median_ms']:>9.1f} {local:>9.1f} "
                      f"{r['bytes_per_elem']:>11.4f} {sp_med:>11.2f} {sp_best:>12.2f} {vs_np:>12.2f} "
                      f"{r['pass_ms']:>6.1f} {goal:>23.2f} {r['load']:>5}")
    return rows


def report_conv(records: list[dict], best_steps: dict) -> dict:
    prob = next(r for r in records if r["kind"] == "problem")
    conv = [r for r in records if r["kind"] == "conv"]
    print(f"\n(b) convergence: generated sparse logistic {prob['N']} x {prob['n']}, l1 = 2e-3, P = {prob['P']}, "
          f"T = {prob['T']}, F* = {prob['fstar']:.6f} (nnz* = {prob['nnz_star']}); randomness: minibatch gradient "
          f"(64 per rank), exact prox")
    print("step0 chosen on seed 0 by the raw gap; figures are means over the held-out seeds 1 and 2.")
    print("gap raw = F(iterate) - F* (no polish on either side); gap prox = F(prox_{gamma_T r}(iterate)) - F*, the "
          "same polish for every solver with its own last step gamma_T.")
    print(f"{'solver':<16} {'step0':>7} {'gap raw':>10} {'raw / prox_sgd':>14} {'gap prox':>10} {'prox / prox_sgd':>15} "
          f"{'nnz raw':>7} {'nnz prox':>8} {'MB sent/rank':>13} {'bytes ratio':>11}")
    agg = {}
    for r in conv:
        a = agg.setdefault(r["solver"], {"step0": r["step0"], "gap_raw": [], "gap_prox": [], "nnz_raw": [],
                                         "nnz_prox": [], "bytes": r["bytes"], "hist_iter": r["hist_iter"],
                                         "hist_gap": r["hist_gap"]})
        for k in ("gap_raw", "gap_prox", "nnz_raw", "nnz_prox"):
            a[k].append(r[k])
    for a in agg.values():
        for k in ("gap_raw", "gap_prox", "nnz_raw", "nnz_prox"):
            a[k] = float(np.mean(a[k]))
    base = agg["prox_sgd"]
    for name, a in agg.items():
        print(f"{name:<16} {a['step0']:>7g} {a['gap_raw']:>10.3e} {a['gap_raw'] / base['gap_raw']:>14.2f} "
              f"{a['gap_prox']:>10.3e} {a['gap_prox'] / base['gap_prox']:>15.2f} {a['nnz_raw']:>7.0f} "
              f"{a['nnz_prox']:>8.0f} {a['bytes'] / 1e6:>13.3f} {base['bytes'] / a['bytes']:>11.1f}")
    print("step0 grid (seed 0, raw gap): " + "; ".join(f"{k}: " + ", ".join(f"{s:g} -> {g:.2e}" for s, g in v)
                                                      for k, v in best_steps.items()))
    print("\nraw gap (history, seed 1) vs iterations: iteration, " + ", ".join(agg))
    its = base["hist_iter"]
    for i, it in enumerate(its):
        vals = [f"{a['hist_gap'][i]:.3e}" if i < len(a["hist_gap"]) else "-" for a in agg.values()]
        print(f"  {int(it):>6}  " + "  ".join(f"{v:>10}" for v in vals))
    return agg


def report_diag(records: list[dict]) -> None:
    print("\n(c) diagnostics at default settings (4 ranks): time in history rows / run time (max over ranks)")
    print(f"{'solver':<10} {'setting':<17} {'interval':<9} {'T':>5} {'every':>6} {'rows':>5} {'diag s':>7} {'run s':>7} "
          f"{'share':>6}")
    for r in records:
        print(f"{r['solver']:<10} {r['setting']:<17} {r['interval']:<9} {r['T']:>5} {r['every']:>6} {r['rows']:>5} "
              f"{r['diag_s']:>7.2f} {r['wall_s']:>7.2f} {100 * r['share']:>5.1f}%")


STARTUP = {
    "signprox": ["signprox", "--problem", "logistic", "--set", "solver.max_iter=1", "problem.n_samples=400",
                 "problem.n_features=100", "problem.reference=no", "run.progress=none"],
    "hamsi": ["hamsi", "--problem", "synthetic_mf", "--set", "solver.max_epochs=1", "problem.n_ratings=40000",
              "run.progress=none"],
}


def startup(ranks: list[int], solvers: list[str]) -> list[dict]:
    """Whole ``mpirun -n P python -m mpiopt.run SOLVER`` (1 iteration / epoch) with a cold and a warm
    numba cache, and (signprox) the numpy paths; plus the largest setup_time of the result file (data,
    solver and kernels, before the first iteration)."""
    import tempfile
    rows = []
    print("\n(d) start-up: mpirun -n P python -m mpiopt.run SOLVER ... (1 iteration / epoch; whole command)"
          "\n    cold = empty NUMBA_CACHE_DIR, warm = the same directory again; setup = the result's setup_time")
    print(f"{'solver':<9} {'P':>3} {'cache':<6} {'s':>7} {'setup s':>8} {'load':>5}")
    for solver in solvers:
        with tempfile.TemporaryDirectory() as cache:
            for P in ranks:
                for label, env in (("numpy", {"MPIOPT_JIT": "0"}), ("cold", {}), ("warm", {})):
                    if label == "numpy" and solver != "signprox":
                        continue           # the MF kernels have no numpy switch
                    if label == "cold":
                        for f in os.listdir(cache):
                            subprocess.run(["rm", "-rf", os.path.join(cache, f)], check=True)
                    e = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_CACHE_DIR=cache, **env)
                    e["PYTHONPATH"] = os.pathsep.join(filter(None, (os.path.dirname(HERE), e.get("PYTHONPATH"))))
                    with tempfile.TemporaryDirectory() as wd:
                        t0 = time.perf_counter()
                        p = subprocess.run(["mpirun", "-n", str(P), sys.executable, "-m", "mpiopt.run",
                                            *STARTUP[solver], "--out", "s.h5"], cwd=wd, env=e, capture_output=True,
                                           text=True, timeout=900)
                        wall = time.perf_counter() - t0
                        if p.returncode != 0:
                            raise SystemExit(p.stderr[-2000:])
                        setup = float("nan")
                        try:
                            import h5py
                            with h5py.File(os.path.join(wd, "s.h5"), "r") as f:
                                setup = float(f.attrs.get("setup_time", float("nan")))
                        except (OSError, ImportError, TypeError, ValueError):
                            pass
                    rows.append({"solver": solver, "P": P, "cache": label, "seconds": wall, "setup_s": setup,
                                 "load": load()})
                    print(f"{solver:<9} {P:>3} {label:<6} {wall:>7.1f} {setup:>8.1f} {rows[-1]['load']:>5}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and iterations")
    ap.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write all records to this JSON file")
    ap.add_argument("--only", nargs="*", choices=("comm", "conv", "diag", "startup"), help="run only these parts")
    ap.add_argument("--sizes", nargs="*", type=float, default=[1e6, 1e7], help="(a) problem sizes n")
    ap.add_argument("--ranks", nargs="*", type=int, default=[2, 4], help="(a) rank counts")
    ap.add_argument("--startup-ranks", nargs="*", type=int, default=[8, 40], help="(d) rank counts")
    ap.add_argument("--startup-solvers", nargs="*", default=["signprox", "hamsi"], choices=sorted(STARTUP),
                    help="(d) solvers")
    a = ap.parse_args()
    if a.worker is not None:
        kind, *rest = a.worker
        if kind == "comm":
            worker_comm(int(float(rest[0])), int(rest[1]), kernels=rest[2])
        elif kind == "conv":
            worker_conv(int(rest[0]), int(rest[1]), int(rest[2]), rest[3])
        else:
            worker_diag(0)
        return
    sys.path.insert(0, os.path.dirname(HERE))
    parts = a.only or ["comm", "conv", "diag", "startup"]
    reps = 5 if a.quick else 15
    T = 400 if a.quick else 1000
    out: dict = {}
    print(f"load average at start: {load()}")
    if "comm" in parts:
        recs = []
        for P in a.ranks:
            for n in a.sizes:
                for kern, env in (("compiled", {}), ("numpy", {"MPIOPT_JIT": "0"})):
                    recs += launch(P, ["comm", f"{n:.0f}", str(reps), kern], timeout=2400, env=env)
                    for r in recs[-len(PATHS):]:
                        r["load"] = load()
        out["comm"] = report_comm(recs)
    if "conv" in parts:
        grids = {"prox_sgd": ("prox_sgd", [4.0, 8.0, 16.0, 32.0], {}),
                 "signprox": ("signprox", [0.05, 0.1, 0.2], {}),
                 "signprox_2phase": ("signprox", [0.1, 0.2], {"aggregator": "twophase", "tie": "shared_random"}),
                 "signprox_ternary": ("signprox", [0.1, 0.2], {"encoding": "ternary"}),
                 "signprox_ef": ("signprox", [0.05, 0.1], {"error_feedback": True}),
                 "signsgd_mv": ("signsgd_mv", [0.05, 0.1, 0.2], {}),
                 "sign_then_prox": ("sign_then_prox", [0.025, 0.05], {})}
        plan = {k: [name, steps, extra, [0]] for k, (name, steps, extra) in grids.items()}
        sel = [r for r in launch(4, ["conv", str(T), "20000", "1000", json.dumps(plan)], timeout=3600)
               if r["kind"] == "conv"]
        best_steps = {k: [(r["step0"], r["gap_raw"]) for r in sel if r["solver"] == k] for k in grids}
        best = {k: min(v, key=lambda sg: sg[1])[0] for k, v in best_steps.items()}
        plan = {k: [name, [best[k]], extra, [1, 2]] for k, (name, steps, extra) in grids.items()}
        recs = launch(4, ["conv", str(T), "20000", "1000", json.dumps(plan)], timeout=3600)
        print(f"(load average after (b): {load()})")
        out["conv"] = report_conv(recs, best_steps)
    if "diag" in parts:
        recs = launch(4, ["diag"], timeout=3600)
        print(f"(load average after (c): {load()})")
        report_diag(recs)
        out["diag"] = recs
    if "startup" in parts:
        out["startup"] = startup(a.startup_ranks, a.startup_solvers)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
