"""SignProx benchmark: communication and convergence against the uncompressed fp32 baseline.

Run from a shell (it launches ``mpirun`` itself for the rank counts it needs):

    python benchmarks/bench_signprox.py            # full: n = 1e6, 1e7 at 2 and 4 ranks; T = 1000
    python benchmarks/bench_signprox.py --quick    # fewer repetitions, T = 400

(a) iteration cost: ``solver.step()`` of each solver, built as ``python -m mpiopt.run`` builds it, on one
    generated sparse logistic problem with n features (64 samples per rank, ~1000 nonzeros per sample):
    signprox with each aggregator and code, signsgd_mv, against prox_sgd (fp32 Allreduce). Each step is
    split into the minibatch gradient (timed alone), the collective (time inside it, waiting included)
    and the local O(n) work (the rest). Medians and best of R repetitions; bytes this rank sent per
    iteration and per element, counted by comm.stats from the buffers actually sent.
(b) convergence: generated sparse logistic + L1 at 4 ranks; signprox, prox_sgd, signsgd_mv and
    sign_then_prox for T iterations, each with the best step0 of a small grid; objective gap
    against F* after T iterations and bytes of the algorithm's own collectives.
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
        print(TAG + json.dumps(record), flush=True)


def _build(comm, solver: str, problem_values: dict, solver_values: dict, problem=None, history_every: int = 0):
    """A run built the way ``python -m mpiopt.run`` builds it (no result file)."""
    from mpiopt.runner import build_run, resolve_spec
    values = [(f"problem.{k}", v, "bench") for k, v in problem_values.items()]
    values += [(f"solver.{k}", v, "bench") for k, v in solver_values.items()]
    values += [("run.seed", 0, "bench"), ("run.progress", "none", "bench"),
               ("run.history_every", history_every, "bench")]
    spec = resolve_spec(solver, "logistic", values, default_out=False)
    return build_run(spec, comm, quiet=True, write_result=False, problem=problem)


# the paths compared in (a): label -> (solver, solver options)
PATHS = {
    "fp32_allreduce": ("prox_sgd", {"schedule": "const", "step0": 1e-3}),
    "1bit_allgather": ("signprox", {"aggregator": "allgather", "schedule": "const", "step0": 1e-3}),
    "1bit_twophase": ("signprox", {"aggregator": "twophase", "schedule": "const", "step0": 1e-3}),
    "1bit_int8_allreduce": ("signprox", {"aggregator": "int8_allreduce", "schedule": "const", "step0": 1e-3}),
    "ternary_allgather": ("signprox", {"encoding": "ternary", "schedule": "const", "step0": 1e-3}),
    "1bit_signsgd_mv": ("signsgd_mv", {"schedule": "const", "step0": 1e-3}),
}


def worker_comm(n: int, reps: int, nnz_per_sample: int = 1000) -> None:
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
        idx = np.random.default_rng(comm.rank).integers(0, max(1, p.n_local), size=64)
        gbuf = np.empty(p.n_vars)
        comm_tags = ("gradient", "sign_allgather", "sign_alltoall", "sign_int8_allreduce")
        times, ctimes, gtimes = [], [], []
        s.step()  # warm-up: page faults, MPI buffers
        for _ in range(reps):
            comm.Barrier()
            t0 = time.perf_counter()
            p.batch_grad(s.x, idx, out=gbuf)
            gtimes.append(time.perf_counter() - t0)
            comm.Barrier()
            c0 = sum(comm.stats.time_by_op[t] for t in comm_tags)
            b0 = comm.stats.bytes_sent
            t0 = time.perf_counter()
            s.step()
            times.append(time.perf_counter() - t0)
            ctimes.append(sum(comm.stats.time_by_op[t] for t in comm_tags) - c0)
            nbytes = comm.stats.bytes_sent - b0
        med = [float(np.median(v)) for v in (times, ctimes, gtimes)]
        mx = comm.allreduce_array([med[0], min(times), med[1], min(ctimes), med[2]], op=MPI.MAX)
        payload = getattr(getattr(s, "agg", None), "payload_bytes", 4 * n) / n
        _emit(comm, {"kind": "comm", "n": n, "P": comm.size, "method": label, "median_ms": 1e3 * mx[0],
                     "best_ms": 1e3 * mx[1], "comm_median_ms": 1e3 * mx[2], "comm_best_ms": 1e3 * mx[3],
                     "grad_median_ms": 1e3 * mx[4], "bytes_per_iter": int(nbytes), "bytes_per_elem": nbytes / n,
                     "payload_per_elem": payload})
        del run, s


def worker_conv(T: int, n_samples: int, n_features: int) -> None:
    from mpi4py import MPI

    from mpiopt.comm import Comm

    comm = Comm(MPI.COMM_WORLD)
    prob_values = {"n_samples": n_samples, "n_features": n_features, "density": 0.05, "support": 0.05, "l1": 2e-3}
    # label -> (solver, step0 grid, extra options)
    grids = {"prox_sgd": ("prox_sgd", [2.0, 4.0, 8.0, 16.0, 32.0], {}),
             "signprox": ("signprox", [0.025, 0.05, 0.1, 0.2], {}),
             "signprox_2phase": ("signprox", [0.1, 0.2], {"aggregator": "twophase", "tie": "shared_random"}),
             "signprox_ternary": ("signprox", [0.1, 0.2], {"encoding": "ternary"}),
             "signsgd_mv": ("signsgd_mv", [0.025, 0.05, 0.1, 0.2], {}),
             "sign_then_prox": ("sign_then_prox", [0.025, 0.05, 0.1], {})}
    problem = None
    for label, (name, steps, extra) in grids.items():
        for step0 in steps:
            sopts = {"max_iter": T, "step0": step0, **extra}
            if name != "prox_sgd":
                sopts["mapping_norm"] = False
            run = _build(comm, name, prob_values, sopts, problem=problem, history_every=max(1, T // 20))
            if problem is None:
                problem = run.problem
                fstar = problem.reference_objective
                nnz_star = int(np.count_nonzero(np.abs(problem.reference_x) > 1e-8))
                _emit(comm, {"kind": "problem", "fstar": fstar, "nnz_star": nnz_star, "n": n_features,
                             "N": n_samples, "P": comm.size, "T": T})
            comm.stats.reset()
            t0 = time.perf_counter()
            res = run.execute(install_signals=False)
            wall = time.perf_counter() - t0
            alg = {op: b for op, b in comm.stats.bytes_by_op.items() if op == "gradient" or op.startswith("sign_")}
            hist = res.history
            _emit(comm, {"kind": "conv", "solver": label, "step0": step0, "gap": res.fun - fstar,
                         "gap_raw": res.get("fun_raw", res.fun) - fstar, "nnz": int(np.count_nonzero(res.x)),
                         "bytes": int(sum(alg.values())), "wall": wall,
                         "hist_iter": list(hist.get("iteration", [])), "hist_gap": list(hist.get("gap", []))})


# -- driver -------------------------------------------------------------------------------------------
def launch(P: int, args: list[str], timeout: float) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
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


def report_comm(records: list[dict]) -> list[dict]:
    print("\n(a) one whole iteration, solver.step() as the solvers run it:"
          "\n    sign paths = gradient + message with prox, packed block by block + vote collective + apply;"
          "\n    fp32_allreduce = gradient + cast + Allreduce + x <- prox(x - step g) (prox_sgd)."
          "\n    ms = max over ranks of the per-rank median (best) of the repetitions; grad = minibatch gradient"
          "\n    timed alone; comm = time inside the collective (includes waiting for the other ranks);"
          "\n    local = median - grad - comm; B/elem = bytes this rank sent per element."
          "\n    speedup = fp32_allreduce / method; target: >= 2 at n = 1e7, P = 4 (shared memory).")
    print(f"{'n':>9} {'P':>2} {'method':<22} {'median ms':>10} {'best ms':>9} {'grad':>7} {'comm med':>9} "
          f"{'local med':>9} {'B/elem sent':>11} {'payload B/el':>12} {'speedup med':>11} {'speedup best':>12} "
          f"{'bytes x':>8}")
    rows = []
    for (n, P) in sorted({(r["n"], r["P"]) for r in records}):
        grp = [r for r in records if r["n"] == n and r["P"] == P]
        base = next(r for r in grp if r["method"] == "fp32_allreduce")
        for r in grp:
            sp_med = base["median_ms"] / r["median_ms"]
            sp_best = base["best_ms"] / r["best_ms"]
            bx = base["bytes_per_iter"] / r["bytes_per_iter"] if r["bytes_per_iter"] else float("nan")
            local = r["median_ms"] - r["comm_median_ms"] - r["grad_median_ms"]
            rows.append({**r, "speedup_median": sp_med, "speedup_best": sp_best, "bytes_ratio": bx,
                         "local_median_ms": local})
            print(f"{n:>9.0e} {P:>2} {r['method']:<22} {r['median_ms']:>10.1f} {r['best_ms']:>9.1f} "
                  f"{r['grad_median_ms']:>7.1f} {r['comm_median_ms']:>9.1f} {local:>9.1f} {r['bytes_per_elem']:>11.4f} "
                  f"{r['payload_per_elem']:>12.4f} {sp_med:>11.2f} {sp_best:>12.2f} {bx:>8.1f}")
    return rows


def report_conv(records: list[dict]) -> dict:
    prob = next(r for r in records if r["kind"] == "problem")
    conv = [r for r in records if r["kind"] == "conv"]
    print(f"\n(b) convergence: generated sparse logistic {prob['N']} x {prob['n']}, l1 = 2e-3, P = {prob['P']}, "
          f"T = {prob['T']}, F* = {prob['fstar']:.6f} (nnz* = {prob['nnz_star']})")
    print("gap = F(reported x) - F*, reported x polished (signprox: band) ; gap raw = before the polish")
    print(f"{'solver':<16} {'step0':>7} {'gap':>10} {'gap raw':>10} {'nnz':>6} {'MB sent/rank':>13} {'wall s':>7}")
    best = {}
    for r in conv:
        print(f"{r['solver']:<16} {r['step0']:>7g} {r['gap']:>10.3e} {r['gap_raw']:>10.3e} {r['nnz']:>6} "
              f"{r['bytes'] / 1e6:>13.3f} {r['wall']:>7.1f}")
        if r["solver"] not in best or r["gap"] < best[r["solver"]]["gap"]:
            best[r["solver"]] = r
    base = best["prox_sgd"]
    print("\nbest step0 per solver, against prox_sgd (fp32 Allreduce):")
    print(f"{'solver':<16} {'step0':>7} {'gap':>10} {'gap / gap(prox_sgd)':>20} {'bytes(prox_sgd) / bytes':>24}"
          f" (target: gap ratio <= 2 at 32x fewer bytes)")
    for name, r in best.items():
        ratio_b = base["bytes"] / r["bytes"] if r["bytes"] else float("nan")
        print(f"{name:<16} {r['step0']:>7g} {r['gap']:>10.3e} {r['gap'] / base['gap']:>20.2f} {ratio_b:>24.1f}")
    sp = best["signprox"]
    print("\nraw gap (history, before polish) vs iterations at the best step0: iteration, " + ", ".join(best))
    its = sp["hist_iter"]
    for i, it in enumerate(its):
        vals = []
        for r in best.values():
            vals.append(f"{r['hist_gap'][i]:.3e}" if i < len(r["hist_gap"]) else "-")
        print(f"  {int(it):>6}  " + "  ".join(f"{v:>10}" for v in vals))
    print("gap vs bytes: bytes after iteration t = t * bytes/T (constant per iteration); e.g. at the end: "
          + ", ".join(f"{k} {r['bytes'] / 1e6:.2f} MB -> {r['gap']:.2e}" for k, r in best.items()))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and iterations")
    ap.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write all records to this JSON file")
    ap.add_argument("--skip", choices=("comm", "conv"), help="skip one part")
    a = ap.parse_args()
    if a.worker is not None:
        kind, *rest = a.worker
        if kind == "comm":
            worker_comm(int(float(rest[0])), int(rest[1]))
        else:
            worker_conv(int(rest[0]), int(rest[1]), int(rest[2]))
        return
    sys.path.insert(0, os.path.dirname(HERE))
    reps = 5 if a.quick else 15
    T = 400 if a.quick else 1000
    out: dict = {}
    if a.skip != "comm":
        recs = []
        for P in (2, 4):
            for n in (1e6, 1e7):
                recs += launch(P, ["comm", f"{n:.0f}", str(reps)], timeout=1200)
        out["comm"] = report_comm(recs)
    if a.skip != "conv":
        recs = launch(4, ["conv", str(T), "20000", "1000"], timeout=2400)
        out["conv"] = report_conv(recs)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
