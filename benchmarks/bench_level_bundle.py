"""Benchmark of ``level_bundle``: sync vs the asynchronous variants (upper_model, coordination) and the
plain projected subgradient method on ``block_lp_dual``.

    python benchmarks/bench_level_bundle.py [--quick] [--no-sim] [--no-real]

Launches nothing itself for part A and ``mpirun`` itself for part B (run it WITHOUT mpirun):

A. Simulated grid (in-process discrete-event simulation: the real master logic, QPs and HiGHS
   oracles; oracle times virtual, drawn from the seeded delay model with mean 1 s; the master's real
   QP seconds are added to the virtual clock). m = 8, 16; oracle time spread 1, 3, 10; log-normal
   noise 0.3, 1.0. Reports virtual time to relative gap 1e-3 / 1e-4 / 1e-6, speed-up T_sync/T_variant,
   evaluations per oracle, master busy fraction, and whether [f_low, f_up] brackets f* (primal LP).
   The subgradient baseline has no certified gap: its time is to relative error (f_best - f*)/|f*|.
B. Real MPI runs (``mpirun -n m+1``, oracle delays slept on the oracle ranks): sync vs coordination
   vs projected subgradient at heavy-tailed delays, wall time to the same gaps and master busy fraction.
C. (``--inexact``) Inexact oracles: block_lp_dual with binary blocks (MIP oracles answering to the
   requested accuracy), simulated with virtual QP cost 0: the status, the gap reached against the gap
   asked for, how often the accuracy requests were tightened, QPs, exact LPs and certified infeasible QPs.
D. (``--starts``) The start without a synchronous first round: upper_model and coordination with
   ``start=sync`` and ``start=async`` on the part-A problem (n = 60, m = 8, 16, spread 1, 10, noise 0.3,
   1.0), simulated with virtual QP cost 0 (the machine's load does not enter): virtual time of the
   first QP (the first new iterate), time to relative gap 1e-4 / 1e-6, whether f* is bracketed.
E. (``--real-starts``) The same comparison on real ranks (``mpirun -n 4``, slept delays 1 : 3.2 : 10).

``--cycle-wait`` adds, in part A, coordination and upper_model with the option ``cycle_wait`` (the
test min_j a(j) >= k before a new cycle) beside the defaults.

--quick: n = 60, spreads 1 and 10, a short real run at m = 8; the full run (n = 200, all spreads, real runs
at m = 8 and 16) takes hours on a 2-core machine.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GAPS = (1e-3, 1e-4, 1e-6)
ALPHA = [None]                   # None: each variant's default (sync 0.5, coordination 0.95)
VARIANTS = ("sync", "upper_model", "coordination")


def make_problem(n: int, m: int, seed: int = 0, **sets):
    from mpiopt.comm import world
    from mpiopt.options import resolve
    from mpiopt.problems.block_lp import BlockLPDual
    values = [("problem.n", n, "bench"), ("problem.m", m, "bench"), ("problem.seed", seed, "bench")]
    values += [(f"problem.{k}", v, "bench") for k, v in sets.items()]
    cfg = resolve({"problem": BlockLPDual.options}, values)["problem"]
    p = BlockLPDual(cfg, world())
    p.setup()
    p.compute_reference()
    return p


def first_time(times, values, tol) -> float:
    for t, v in zip(times, values):
        if v <= tol:
            return float(t)
    return math.inf


def simulate_one(p, variant: str, spread: float, noise: float, max_time: float, seed: int = 1,
                 alpha: float | None = None, qp_cost: float | str = "measured", **params) -> dict:
    from mpiopt.bundle.master import LevelBundleMaster, Params
    from mpiopt.bundle.simulate import simulate
    from mpiopt.bundle.subgradient import SubgradientMaster
    from mpiopt.problems.oracle import DelayModel
    owners = [[i] for i in range(p.m)]
    fstar = p.reference_objective
    if variant == "subgradient":
        M = SubgradientMaster(p.n_vars, p.m, p.lower, p.upper, owners, fstar=fstar, max_iter=10**6, x0=p.x0())
    else:
        M = LevelBundleMaster(p.n_vars, p.m, p.lower, p.upper, p.lipschitz, owners,
                              Params(variant=variant, rtol=1e-6, alpha=alpha, **params), x0=p.x0(), exact=p.exact,
                              floors=[p.accuracy_floor(i) for i in range(p.m)])
    t = time.perf_counter()
    r = simulate(M, [p.make_oracle(i) for i in range(p.m)], DelayModel(p.m, 1.0, spread, noise, seed=seed),
                 qp_cost=qp_cost, max_time=max_time)
    h = r.history
    if variant == "subgradient":
        measure = [(fu - fstar) / abs(fstar) for fu in h["f_up"]]
    else:
        measure = h["rel_gap"]
    out = {f"t{g:.0e}": first_time(h["time"], measure, g) for g in GAPS}
    first_qp = next((t for t, k in zip(h["time"], h["k"]) if k >= 1), math.inf)
    out.update(time=r.time, first_qp=first_qp, evals=M.evals.copy(), busy=r.busy / max(r.time, 1e-12), qps=M.k,
               bracket=None if fstar is None else
               bool(M.f_low <= fstar + 1e-7 * abs(fstar) and fstar <= M.f_up + 1e-7 * abs(fstar)),
               wall=time.perf_counter() - t, status=M.status, gap=M.gap, rel_gap=M.rel_gap(),
               tightened=getattr(getattr(M, "accuracy", None), "tightened", 0), n_lp=M.n_lp,
               certified=getattr(M, "n_certified", 0), tol=M.tolerance() if hasattr(M, "tolerance") else math.nan)
    return out


def fmt(t: float) -> str:
    return "   inf" if not math.isfinite(t) else f"{t:6.1f}"


def part_a(quick: bool, alpha: float | None = None, variants: list | None = None,
           qp_cost: float | str = "measured", cycle_wait: bool = False) -> list[dict]:
    n = 60 if quick else 200
    ms = (8, 16)
    spreads = (1.0, 10.0) if quick else (1.0, 3.0, 10.0)
    noises = (0.3, 1.0)
    rows = []
    print(f"\nA. simulated (virtual oracle time, mean 1 s; master time per QP: {qp_cost}), block_lp_dual n={n}, "
          f"alpha={alpha or 'variant default'}")
    print("   m spread noise  solver         t(1e-3) t(1e-4) t(1e-6)  speedup@1e-4  evals/oracle(min-max)  busy  QPs  brackets f*")
    for m in ms:
        p = make_problem(n, m)
        for spread in spreads:
            for noise in noises:
                ref = None
                waits = ("upper_model+wait", "coordination+wait") if cycle_wait else ()
                for v in (*VARIANTS, *waits, "subgradient"):
                    if variants and v.split("+")[0] not in variants and v != "sync":
                        continue
                    cap = 4 * (ref["time"] if ref else 1e9)
                    r = simulate_one(p, v.split("+")[0], spread, noise, max_time=cap, alpha=alpha, qp_cost=qp_cost,
                                     **({"cycle_wait": True} if v.endswith("+wait") else {}))
                    if v == "sync":
                        ref = r
                    sp = ref["t1e-04"] / r["t1e-04"] if math.isfinite(r["t1e-04"]) else 0.0
                    ev = r["evals"]
                    print(f"  {m:2d} {spread:5.0f} {noise:5.1f}  {v:13s} {fmt(r['t1e-03'])}  {fmt(r['t1e-04'])}  "
                          f"{fmt(r['t1e-06'])}  {sp:10.2f}x  {ev.mean():8.1f} ({ev.min()}-{ev.max()})  "
                          f"{r['busy']:5.1%} {r['qps']:5d}  {r['bracket'] if v != 'subgradient' else '-'}",
                          flush=True)
                    rows.append(dict(m=m, spread=spread, noise=noise, solver=v, **r))
    return rows


def part_c(seeds=(0, 1, 2, 3)) -> list[dict]:
    """Inexact MIP oracles: does a run that reports success close the gap it was asked for?"""
    from mpiopt.result import STATUS_NAMES
    rows = []
    print("\nC. inexact oracles (block_lp_dual n=20, m=4, block_size=12, integer blocks), simulated, QP cost 0, "
          "rtol 1e-6")
    print("  seed  solver        status     gap        asked      tightened  QPs  LPs  certified  virtual t")
    for seed in seeds:
        p = make_problem(20, 4, seed, integer=True, block_size=12)
        for v in ("sync", "coordination"):
            r = simulate_one(p, v, 3.0, 1.0, max_time=math.inf, seed=5, qp_cost=0.0)
            print(f"  {seed:4d}  {v:12s}  {STATUS_NAMES[r['status']]:9s}  {r['gap']:.3e}  {r['tol']:.3e}  "
                  f"{r['tightened']:9d}  {r['qps']:4d} {r['n_lp']:4d}  {r['certified']:9d}  {r['time']:8.1f}", flush=True)
            rows.append(dict(seed=seed, solver=v, **r))
    return rows


def part_d(seeds=(1,)) -> list[dict]:
    """start=sync vs start=async for the asynchronous variants, simulated at virtual QP cost 0."""
    rows = []
    print("\nD. start without a synchronous first round (block_lp_dual n=60, warm_start=false), simulated, QP cost 0; "
          "virtual s")
    print("   m spread noise seed  variant        first QP sync/async   t(1e-4) sync/async  t(1e-6) sync/async  "
          "brackets f*")
    for m in (8, 16):
        # warm_start=false: each block solve starts cold, so an oracle's answer does not depend on its call
        # history (a warm-started block LP was seen ending with HiGHS status Unknown after a run of cost changes)
        p = make_problem(60, m, warm_start=False)
        for spread in (1.0, 10.0):
            for noise in (0.3, 1.0):
                for seed in seeds:
                    for v in ("upper_model", "coordination"):
                        r = {st: simulate_one(p, v, spread, noise, max_time=math.inf, seed=seed, qp_cost=0.0, start=st)
                             for st in ("sync", "async")}
                        a, b = r["sync"], r["async"]
                        print(f"  {m:2d} {spread:5.0f} {noise:5.1f} {seed:4d}  {v:13s} {fmt(a['first_qp'])} / "
                              f"{fmt(b['first_qp'])}      {fmt(a['t1e-04'])} / {fmt(b['t1e-04'])}   "
                              f"{fmt(a['t1e-06'])} / {fmt(b['t1e-06'])}   {a['bracket']} / {b['bracket']}", flush=True)
                        rows.append(dict(m=m, spread=spread, noise=noise, seed=seed, variant=v, sync=a, asyn=b))
    return rows


def real_run(solver: str, variant: str | None, n: int, m: int, mu0: float, spread: float, noise: float,
             out: str, max_time: float, extra: tuple = ()) -> dict:
    import h5py
    sets = [f"problem.n={n}", f"problem.m={m}", f"problem.delay_mean={mu0}", f"problem.delay_spread={spread}",
            f"problem.delay_noise={noise}", "problem.delay_seed=1"]
    if variant:
        sets.append(f"solver.variant={variant}")
        if ALPHA[0] is not None:
            sets.append(f"solver.alpha={ALPHA[0]}")
    else:
        sets.append("solver.max_iter=1000000")
    sets += list(extra)
    cmd = ["mpirun", "-n", str(m + 1), sys.executable, "-m", "mpiopt.run", solver, "--problem", "block_lp_dual",
           "--set", *sets, "--out", out, "--max-time", str(max_time), "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
    try:
        proc.wait(timeout=max_time + 300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise
    with h5py.File(out, "r") as f:
        h = {k: f["history"][k][()] for k in f["history"]}
        fstar = float(f.attrs["reference_objective"])
        calls = f["solution/oracle_calls"][()]
        wall = float(f.attrs["wall_time"])
    measure = (h.get("rel_certified_gap", h.get("rel_gap")) if variant else (h["upper_bound"] - fstar) / abs(fstar))
    res = {f"t{g:.0e}": first_time(h["time"], measure, g) for g in GAPS}
    first_qp = next((float(t) for t, k in zip(h["time"], h["qps"]) if k >= 1), math.inf) if "qps" in h else math.nan
    res.update(wall=wall, busy=float(h["master_busy"][-1]), evals=calls, first_qp=first_qp,
               bracket=bool(h["lower_bound"][-1] <= fstar + 1e-7 * abs(fstar) <= h["upper_bound"][-1] + 2e-7 * abs(fstar)))
    return res


def part_b(quick: bool, configs: list | None = None, only: list | None = None) -> list[dict]:
    if not configs:
        configs = [(60, 8, 0.02, 1.0, 1.0)] if quick else [(60, 8, 0.05, 1.0, 1.0), (200, 16, 0.1, 3.0, 1.0)]
    rows = []
    print("\nB. real MPI runs (mpirun -n m+1; oracle delays slept on the oracle ranks; wall seconds)")
    print("   n  m   mu0 spread noise  solver         t(1e-3) t(1e-4) t(1e-6)  speedup@1e-4  evals/oracle  master busy  brackets f*")
    with tempfile.TemporaryDirectory() as tmp:
        for n, m, mu0, spread, noise in configs:
            ref = None
            half = (f"solver.min_batch={m // 2}",)
            for solver, variant, extra in (("level_bundle", "sync", ()), ("level_bundle", "coordination", ()),
                                           ("level_bundle", "coordination", half),
                                           ("level_bundle", "upper_model", ()), ("projected_subgradient", None, ())):
                name = (variant or "subgradient") + (f" mb={m // 2}" if extra else "")
                if only and (variant or "subgradient") + ("_mb" if extra else "") not in only:
                    continue
                cap = 3 * ref["wall"] if ref else 900.0
                r = real_run(solver, variant, n, m, mu0, spread, noise, os.path.join(tmp, "r.h5"), cap, extra)
                if ref is None:
                    ref = r
                sp = ref["t1e-04"] / r["t1e-04"] if math.isfinite(r["t1e-04"]) else 0.0
                print(f"  {n:3d} {m:2d} {mu0:5.2f} {spread:5.0f} {noise:5.1f}  {name:13s} {fmt(r['t1e-03'])}  "
                      f"{fmt(r['t1e-04'])}  {fmt(r['t1e-06'])}  {sp:10.2f}x  {r['evals'].mean():8.1f}  "
                      f"{r['busy']:10.1%}   {r['bracket'] if variant else '-'}", flush=True)
                rows.append(dict(n=n, m=m, solver=name, **r))
    return rows


def part_e(repeats: int = 3) -> list[dict]:
    """start=sync vs start=async on real ranks: block_lp_dual n=20, m=3 (block_size 10), three oracle
    ranks with mean delays 0.03, 0.095, 0.3 s (spread 10, no noise); runs alternate sync/async."""
    rows = []
    print("\nE. start=sync vs start=async, real MPI runs (mpirun -n 4), block_lp_dual n=20 m=3, mu0 0.03 s, spread 10; "
          "wall s")
    print("  rep  variant        start  first QP  t(1e-4)  t(1e-6)  wall   brackets f*")
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            for v in ("upper_model", "coordination"):
                for st in ("sync", "async"):
                    r = real_run("level_bundle", v, 20, 3, 0.03, 10.0, 0.0, os.path.join(tmp, "r.h5"), 300.0,
                                 ("problem.block_size=10", f"solver.start={st}"))
                    print(f"  {rep:3d}  {v:13s} {st:6s} {r['first_qp']:8.3f}  {fmt(r['t1e-04'])}   {fmt(r['t1e-06'])}  "
                          f"{r['wall']:5.2f}  {r['bracket']}", flush=True)
                    rows.append(dict(rep=rep, variant=v, start=st, **r))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (minutes instead of hours)")
    ap.add_argument("--no-sim", action="store_true", help="skip part A (simulated grid)")
    ap.add_argument("--no-real", action="store_true", help="skip part B (real mpirun runs)")
    ap.add_argument("--real-config", action="append", default=[], metavar="N,M,MU0,SPREAD,NOISE",
                    help="part B configuration (repeatable), e.g. 200,16,0.1,3,1.0")
    ap.add_argument("--solvers", nargs="*", default=None,
                    help="part B: run only these (sync coordination coordination_mb upper_model subgradient)")
    ap.add_argument("--alpha", type=float, default=None,
                    help="level parameter of every level-bundle run (default: each variant's default)")
    ap.add_argument("--qp-cost", default="measured",
                    help="part A: virtual seconds per QP/LP, or 'measured' (the master's real QP/LP seconds)")
    ap.add_argument("--variants", nargs="*", default=None,
                    help="part A: run only these besides sync (upper_model coordination subgradient)")
    ap.add_argument("--cycle-wait", action="store_true",
                    help="part A: also run upper_model and coordination with solver.cycle_wait=true")
    ap.add_argument("--inexact", action="store_true", help="run part C (inexact MIP oracles) and nothing else")
    ap.add_argument("--starts", action="store_true", help="run part D (start=sync vs start=async) and nothing else")
    ap.add_argument("--seeds", type=int, nargs="*", default=[1], help="part D: delay seeds")
    ap.add_argument("--real-starts", action="store_true",
                    help="run part E (start=sync vs start=async on real ranks) and nothing else")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ALPHA[0] = args.alpha
    if args.inexact:
        part_c()
        return
    if args.starts:
        part_d(tuple(args.seeds))
        return
    if args.real_starts:
        part_e()
        return
    if not args.no_sim:
        part_a(args.quick, args.alpha, args.variants,
               args.qp_cost if args.qp_cost == "measured" else float(args.qp_cost), args.cycle_wait)
    if not args.no_real:
        configs = []
        for text in args.real_config:
            n, m, mu0, spread, noise = text.split(",")
            configs.append((int(n), int(m), float(mu0), float(spread), float(noise)))
        part_b(args.quick, configs, args.solvers)


if __name__ == "__main__":
    main()
