"""SignProx benchmark: communication and convergence against the uncompressed fp32 baseline.

Run from a shell (it launches ``mpirun`` itself for the rank counts it needs):

    python benchmarks/bench_signprox.py            # full: n = 1e6, 1e7 at 2 and 4 ranks; T = 1000
    python benchmarks/bench_signprox.py --quick    # fewer repetitions, T = 400

(a) communication: one whole iteration without the gradient (message with prox, pack, vote
    collective, apply; cache-blocked as in the solver) for each aggregator, against the fp32 path of
    prox_sgd (cast to fp32, Allreduce, x <- prox(x - step g), also cache-blocked), and both without
    cache blocking for reference. Medians and best of R repetitions; bytes this rank sent per
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


def worker_comm(n: int, reps: int) -> None:
    from mpi4py import MPI

    from mpiopt.comm import Comm
    from mpiopt.comm.signs import SignAggregator, sign_bytes
    from mpiopt.kernels import all_finite
    from mpiopt.prox import L1, gradient_mapping, prox_step

    comm = Comm(MPI.COMM_WORLD)
    rng = np.random.default_rng([1, comm.rank])
    reg = L1(1e-3)
    g = rng.standard_normal(n)
    x0 = np.random.default_rng(2).standard_normal(n) * 0.01
    gam = 1e-3

    def timed(step, comm_tags) -> dict:
        times, ctimes = [], []
        step()  # warm-up: page faults, MPI buffers
        for _ in range(reps):
            comm.Barrier()
            c0 = sum(comm.stats.time_by_op[t] for t in comm_tags)
            b0 = comm.stats.bytes_sent
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
            ctimes.append(sum(comm.stats.time_by_op[t] for t in comm_tags) - c0)
            nbytes = comm.stats.bytes_sent - b0
        mx = comm.allreduce_array([float(np.median(times)), min(times), float(np.median(ctimes)), min(ctimes)],
                                  op=MPI.MAX)
        return {"median_ms": 1e3 * mx[0], "best_ms": 1e3 * mx[1], "comm_median_ms": 1e3 * mx[2],
                "comm_best_ms": 1e3 * mx[3], "bytes_per_iter": int(nbytes), "bytes_per_elem": nbytes / n}

    # fp32 baseline: prox_sgd's iteration without the gradient (cast, Allreduce, x <- prox(x - step g)
    # block by block, finiteness check), exactly the calls prox_sgd makes
    x = x0.copy()
    wire = np.empty(n, dtype=np.float32)
    scratch = np.empty(n)

    def fp32_step():
        wire[:] = g
        comm.Allreduce(MPI.IN_PLACE, wire, tag="gradient")
        prox_step(reg, x, wire, gam, scratch)
        all_finite(x)

    rec = timed(fp32_step, ["gradient"])
    _emit(comm, {"kind": "comm", "n": n, "P": comm.size, "method": "fp32_allreduce", **rec, "payload_per_elem": 4.0})

    # the same with whole-vector passes (prox_sgd before cache blocking), for reference
    x = x0.copy()
    gg = np.empty(n)

    def fp32_unblocked_step():
        wire[:] = g
        comm.Allreduce(MPI.IN_PLACE, wire, tag="gradient")
        gg[:] = wire
        np.subtract(x, gam * gg, out=x)
        reg.prox(x, gam, out=x)
        np.isfinite(x).all()

    rec = timed(fp32_unblocked_step, ["gradient"])
    _emit(comm, {"kind": "comm", "n": n, "P": comm.size, "method": "fp32_allreduce_unblocked", **rec,
                 "payload_per_elem": 4.0})

    tags = ["sign_allgather", "sign_alltoall", "sign_int8_allreduce"]
    for encoding, method in (("1bit", "allgather"), ("1bit", "twophase"), ("1bit", "int8_allreduce"),
                             ("ternary", "allgather"), ("ternary", "twophase"), ("1bit", "allgather_unblocked")):
        agg = SignAggregator(comm, n, encoding, method.replace("_unblocked", ""), "zero", seed=0)
        x = x0.copy()
        whole = method == "int8_allreduce" or method.endswith("_unblocked")
        m = np.empty(n) if whole else None
        work = np.empty(n) if whole else None

        def sign_step():
            # signprox's iteration without the gradient: message with prox, code, vote, apply
            if whole:
                gradient_mapping(reg, x, g, gam, m, work)
                agg.encode(m)
            else:
                agg.encode_blocks(lambda lo, hi, out, w: gradient_mapping(reg, x[lo:hi], g[lo:hi], gam, out, w))
            agg.aggregate(0)
            agg.apply(x, gam)

        rec = timed(sign_step, tags)
        _emit(comm, {"kind": "comm", "n": n, "P": comm.size, "method": f"{encoding}_{method}", **rec,
                     "payload_per_elem": agg.payload_bytes / n, "sign_bytes_total": sign_bytes(comm)})
        del agg


def worker_conv(T: int, n_samples: int, n_features: int) -> None:
    from mpi4py import MPI

    from mpiopt.comm import Comm
    from mpiopt.context import RunContext
    from mpiopt.problems.linear import Logistic
    from mpiopt.registry import get_solver, load_builtins

    load_builtins()
    comm = Comm(MPI.COMM_WORLD)
    popts = {o.name: o.default for o in Logistic.options}
    popts.update(n_samples=n_samples, n_features=n_features, density=0.05, support=0.05, l1=2e-3)
    problem = Logistic(popts, comm)
    problem.setup()
    problem.compute_reference()
    fstar = problem.reference_objective
    nnz_star = int(np.count_nonzero(np.abs(problem.reference_x) > 1e-8))
    _emit(comm, {"kind": "problem", "fstar": fstar, "nnz_star": nnz_star, "n": n_features, "N": n_samples,
                 "P": comm.size, "T": T})
    # label -> (solver, step0 grid, extra options)
    grids = {"prox_sgd": ("prox_sgd", [2.0, 4.0, 8.0, 16.0, 32.0], {}),
             "signprox": ("signprox", [0.025, 0.05, 0.1, 0.2], {}),
             "signprox_2phase": ("signprox", [0.1, 0.2], {"aggregator": "twophase", "tie": "shared_random"}),
             "signprox_ternary": ("signprox", [0.1, 0.2], {"encoding": "ternary"}),
             "signsgd_mv": ("signsgd_mv", [0.025, 0.05, 0.1, 0.2], {}),
             "sign_then_prox": ("sign_then_prox", [0.025, 0.05, 0.1], {})}
    for label, (name, steps, extra) in grids.items():
        cls = get_solver(name)
        for step0 in steps:
            comm.stats.reset()
            ctx = RunContext(comm, {"seed": 0, "progress": "none", "history_every": max(1, T // 20)}, quiet=True)
            sopts = {o.name: o.default for o in cls.options}
            sopts.update(max_iter=T, step0=step0, **extra)
            if "mapping_norm" in sopts:
                sopts["mapping_norm"] = False
            t0 = time.perf_counter()
            res = cls(problem, sopts, ctx).solve()
            wall = time.perf_counter() - t0
            alg = {op: b for op, b in comm.stats.bytes_by_op.items() if op == "gradient" or op.startswith("sign_")}
            hist = ctx.history
            _emit(comm, {"kind": "conv", "solver": label, "step0": step0, "gap": res.fun - fstar,
                         "gap_raw": res.get("fun_raw", res.fun) - fstar, "nnz": int(np.count_nonzero(res.x)),
                         "bytes": int(sum(alg.values())), "wall": wall,
                         "hist_iter": hist.get("iteration", []), "hist_gap": hist.get("gap", [])})


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
    print("\n(a) whole iteration without the gradient, as the solvers run it:"
          "\n    sign = message with prox, made and packed block by block + vote collective + apply (signprox);"
          "\n    fp32 = cast + Allreduce + x <- prox(x - step g) block by block + finiteness check (prox_sgd)."
          "\n    *_unblocked = the same with whole-vector numpy passes (both solvers before cache blocking)."
          "\n    ms = max over ranks of the per-rank median (best) of the repetitions; comm = time inside the"
          "\n    collective (includes waiting for the other ranks); B/elem = bytes this rank sent per element."
          "\n    speedup = fp32_allreduce (blocked prox_sgd step) / method; target: >= 2 at n = 1e7, P = 4.")
    print(f"{'n':>9} {'P':>2} {'method':<26} {'median ms':>10} {'best ms':>9} {'comm med':>9} {'local med':>9} "
          f"{'B/elem sent':>11} {'payload B/el':>12} {'speedup med':>11} {'speedup best':>12} {'bytes x':>8}")
    rows = []
    for (n, P) in sorted({(r["n"], r["P"]) for r in records}):
        grp = [r for r in records if r["n"] == n and r["P"] == P]
        base = next(r for r in grp if r["method"] == "fp32_allreduce")
        for r in grp:
            sp_med = base["median_ms"] / r["median_ms"]
            sp_best = base["best_ms"] / r["best_ms"]
            bx = base["bytes_per_iter"] / r["bytes_per_iter"] if r["bytes_per_iter"] else float("nan")
            local = r["median_ms"] - r["comm_median_ms"]
            rows.append({**r, "speedup_median": sp_med, "speedup_best": sp_best, "bytes_ratio": bx,
                         "local_median_ms": local})
            print(f"{n:>9.0e} {P:>2} {r['method']:<26} {r['median_ms']:>10.1f} {r['best_ms']:>9.1f} "
                  f"{r['comm_median_ms']:>9.1f} {local:>9.1f} {r['bytes_per_elem']:>11.4f} "
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
