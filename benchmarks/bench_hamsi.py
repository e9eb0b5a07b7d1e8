"""HAMSI against mf_gd and dsgd on one problem at 1, 2 and 4 ranks.

    python benchmarks/bench_hamsi.py [--quick] [--ml PATH] [--ranks 1,2,4] [--epochs E] [--k K]
                                     [--reference-binary PATH [--reference-args ARGS]]
    python benchmarks/bench_hamsi.py --libmf-binary PATH [--libmf-args ARGS]
    python benchmarks/bench_hamsi.py --scale 1e7,3e7 [--ranks 2] [--k 10] [--epochs 2]
    python benchmarks/bench_hamsi.py --sweep

Launches ``mpirun -n P python -m mpiopt.run SOLVER ...`` itself (do not run it under mpirun).
Data: synthetic_mf with 1e6 ratings and k=50 (--quick: 2e5 ratings, k=20), and MovieLens when
--ml points to an ml-* folder or ratings file. Reports, per solver and rank count, epochs and step
time (evaluation excluded) to a target training RMSE and a target held-out RMSE (default halfway
from the initial value to the best value reached), time per epoch, speed-up over 1 rank, HAMSI's
epochs and time to mf_gd's final training RMSE, and the time per epoch against two
memory-bandwidth bounds measured with a numpy copy.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SOLVERS = ("hamsi", "mf_gd", "dsgd")


def copy_bandwidth(mb: int = 256, repeats: int = 5) -> float:
    """Bytes per second of a numpy array copy (read + write counted)."""
    a = np.ones(mb * (1 << 20) // 8)
    b = np.empty_like(a)
    np.copyto(b, a)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best


def run(solver: str, n: int, problem: list[str], epochs: int, out: str, timeout: float) -> dict:
    cmd = ["mpirun", "-n", str(n), sys.executable, "-m", "mpiopt.run", solver, *problem,
           "--set", f"solver.max_epochs={epochs}", "solver.patience=0", "solver.tol=0", "run.progress=none",
           "--out", out, "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        print(f"  {solver} at {n} ranks failed ({p.returncode}): {p.stderr.strip()[-500:]}", flush=True)
        return {}
    from mpiopt.io import load_result
    r = load_result(out)
    h = {k: np.asarray(v) for k, v in r.history.items()}
    return {"h": h, "wall": wall, "bytes": float(r.attrs.get("bytes_sent_rank0", 0))}


def first_reach(h: dict, key: str, target: float) -> tuple[float, float]:
    """(epochs, step seconds) at the first record with h[key] <= target."""
    if key not in h:
        return math.nan, math.nan
    hit = np.flatnonzero(h[key] <= target)
    if hit.size == 0:
        return math.nan, math.nan
    i = int(hit[0])
    return float(h["epoch"][i]), float(h["step_time"][i])


def fmt(v: float, spec: str = ".3g") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def bench(label: str, problem: list[str], nnz: int, m: int, n: int, k: int, ranks: list[int],
          epochs: int, bw: float, tmp: str, timeout: float, targets: tuple[float, float] = (0.0, 0.0)) -> None:
    print(f"\n== {label}: {nnz:.3g} ratings (train+test), {m} x {n}, k={k}, {epochs} epochs ==", flush=True)
    res: dict[tuple[str, int], dict] = {}
    for solver in SOLVERS:
        for P in ranks:
            out = os.path.join(tmp, f"{label}-{solver}-{P}.h5")
            r = run(solver, P, problem, epochs, out, timeout)
            if r:
                res[solver, P] = r
                h = r["h"]
                print(f"  ran {solver:6s} P={P}: final rmse {h['rmse'][-1]:.4f}"
                      f" test {h.get('test_rmse', [math.nan])[-1]:.4f}, step time {h['step_time'][-1]:.2f}s,"
                      f" wall {r['wall']:.1f}s", flush=True)
    if not res:
        return
    def halfway(key: str) -> float:
        vals = [r["h"][key] for r in res.values() if key in r["h"]]
        if not vals:
            return math.nan
        start = float(vals[0][0])
        best = min(float(np.nanmin(v)) for v in vals)
        return start - 0.5 * (start - best)
    target = targets[0] or halfway("rmse")
    ttarget = targets[1] or halfway("test_rmse")
    print(f"\n  targets: training RMSE {target:.4f}, held-out RMSE {ttarget:.4f}"
          f"{'' if targets[0] else ' (halfway from the initial value to the best value of all runs)'}")
    print(f"  {'solver':7s} {'P':>2s} {'ep->train':>9s} {'s->train':>9s} {'ep->test':>9s} {'s->test':>8s}"
          f" {'s/epoch':>8s} {'speedup':>8s} {'rmse':>7s} {'test':>7s}")
    per_epoch: dict[tuple[str, int], float] = {}
    for (solver, P), r in res.items():
        h = r["h"]
        per_epoch[solver, P] = h["step_time"][-1] / max(h["epoch"][-1], 1)
    for (solver, P), r in res.items():
        h = r["h"]
        e1, t1 = first_reach(h, "rmse", target)
        e2, t2 = first_reach(h, "test_rmse", ttarget)
        base = per_epoch.get((solver, ranks[0]))
        sp = base / per_epoch[solver, P] if base else math.nan
        print(f"  {solver:7s} {P:2d} {fmt(e1, '.0f'):>9s} {fmt(t1):>9s} {fmt(e2, '.0f'):>9s} {fmt(t2):>8s}"
              f" {per_epoch[solver, P]:8.3f} {sp:8.2f} {h['rmse'][-1]:7.4f} {h.get('test_rmse', [math.nan])[-1]:7.4f}")
    # HAMSI vs mf_gd (the paper's claim) at each rank count
    for P in ranks:
        if ("hamsi", P) in res and ("mf_gd", P) in res:
            eh, th = first_reach(res["hamsi", P]["h"], "rmse", res["mf_gd", P]["h"]["rmse"][-1])
            eg, tg = float(res["mf_gd", P]["h"]["epoch"][-1]), float(res["mf_gd", P]["h"]["step_time"][-1])
            print(f"  P={P}: hamsi reaches mf_gd's final training RMSE {res['mf_gd', P]['h']['rmse'][-1]:.4f} in "
                  f"{fmt(eh, '.0f')} epochs / {fmt(th)} s vs {eg:.0f} / {tg:.3g} s: ratio epochs {fmt(eh / eg)},"
                  f" time {fmt(th / tg)}")
    # bandwidth bound at 1 rank
    train = nnz  # upper estimate (the held-out part is not visited per epoch)
    K = (m + n) * k
    strict = train * 16 + 3 * K * 8
    gather = train * (16 + 4 * k * 8)
    print(f"\n  memory bandwidth (numpy copy): {bw / 1e9:.2f} GB/s")
    print(f"  bound A, ratings + factors once per epoch ({strict / 1e6:.0f} MB): {strict / bw * 1e3:.1f} ms")
    print(f"  bound B, ratings once + 4 factor rows per rating ({gather / 1e6:.0f} MB): {gather / bw * 1e3:.1f} ms")
    for solver in SOLVERS:
        if (solver, 1) in per_epoch:
            t = per_epoch[solver, 1]
            print(f"  {solver:7s} 1 rank: {t * 1e3:.0f} ms/epoch = {t / (strict / bw):.1f}x bound A, "
                  f"{t / (gather / bw):.1f}x bound B")


def rss_now() -> float:
    """Resident set size of this process now (bytes)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def vm_hwm() -> float:
    """Peak resident set size of this process so far (bytes, VmHWM)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024.0
    return math.nan


def state_vectors(solver) -> list:
    """The solver's arrays over the factors (x, gradient, direction, safeguard copies, L-BFGS pairs)."""
    n = solver.mf.n_local
    seen, out = set(), []
    for owner in (solver, solver.mf, getattr(solver, "H", None)):
        for val in vars(owner).values() if owner is not None else ():
            if isinstance(val, np.ndarray) and val.size >= n and val.size % n == 0 and id(val) not in seen:
                seen.add(id(val))
                out.append(val)
    return out


def scale_worker(n_ratings: int, k: int, epochs: int, solver: str = "hamsi") -> None:
    """Under mpirun: build a run of ``solver`` on synthetic_mf through the run builder, time the
    set-up (problem generation, solver preparation, the epoch-0 evaluation) and ``epochs`` calls of
    ``solver.step()``, and report the peak resident memory per rank and per rating: after the
    set-up, after the epochs, and with every state vector resident (the L-BFGS pairs are zero pages
    until M pairs were stored, which takes more epochs than a short run makes)."""
    import resource
    from mpiopt.comm import world
    from mpiopt.mf import fused, layout
    from mpiopt.problems.mf import MFProblem
    from mpiopt.runner import build_run, resolve_spec
    comm = world()
    fused.warm_up()
    layout.warm_up()
    base = rss_now()
    phase: dict[str, float] = {}
    setup = MFProblem.setup

    def timed_setup(self):                      # the problem's part of the set-up (generation, counts)
        t, c = time.perf_counter(), time.process_time()
        setup(self)
        phase["problem_wall"], phase["problem_cpu"] = time.perf_counter() - t, time.process_time() - c
        phase["problem_hwm"] = vm_hwm()
    MFProblem.setup = timed_setup
    comm.Barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    vals = [("problem.n_ratings", n_ratings, "b"), ("problem.latent_dim", k, "b"), ("problem.test_fraction", 0.0, "b"),
            ("run.progress", "none", "b"), ("solver.max_epochs", epochs, "b"), ("solver.patience", 0, "b")]
    run = build_run(resolve_spec(solver, "synthetic_mf", vals, default_out=False), comm, quiet=True,
                    write_result=False)
    MFProblem.setup = setup
    t_build = time.perf_counter() - t0
    sv = run.solver
    sv.values()                                  # the epoch-0 evaluation (recorded before the first epoch)
    c_setup = time.process_time() - c0
    hwm_setup = vm_hwm()
    comm.Barrier()
    t_setup = time.perf_counter() - t0
    times, cpus = [], []
    for _ in range(epochs):
        comm.Barrier()
        t, c = time.perf_counter(), time.process_time()
        sv.step()
        sv.nit += 1
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    hwm_run = vm_hwm()
    vecs = state_vectors(sv)
    for v in vecs:                               # make every state page resident (the run is over)
        v[...] = 1.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
    blocks = [b for row in sv.mf.blocks for b in row]
    local = sum(b.nnz for b in blocks)
    rating_bytes = sum(b.i.nbytes + b.j.nbytes + b.v.nbytes for b in blocks)
    n_vec = sum(v.size for v in vecs) / max(sv.mf.n_local, 1)
    state_bytes = sum(v.nbytes for v in vecs)
    rows = comm.gather_obj((peak, base, local, sv.step_time, sv.eval_time, c_setup, float(np.median(cpus)),
                            hwm_setup, hwm_run, rating_bytes, state_bytes, n_vec, phase.get("problem_wall", 0.0),
                            phase.get("problem_cpu", 0.0), phase.get("problem_hwm", 0.0)))
    if comm.rank == 0:
        P = comm.size
        w = max(rows, key=lambda r: r[0])
        L = max(w[2], 1)
        print(f"RESULT {solver} n={n_ratings} P={P} k={k} build={t_build:.2f}s setup={t_setup:.2f}s "
              f"(problem {max(r[12] for r in rows):.2f}s wall / {max(r[13] for r in rows):.2f}s CPU) "
              f"epoch_med={np.median(times):.3f}s step_time={w[3] / max(epochs, 1):.3f}s "
              f"eval={w[4] / max(epochs + 1, 1):.3f}s local={w[2]} "
              f"cpu_setup_max={max(r[5] for r in rows):.2f}s cpu_epoch_med={max(r[6] for r in rows):.3f}s", flush=True)
        print(f"MEMORY busiest rank: interpreter {w[1] / 1e9:.3f} GB = {w[1] / L:.1f} B/rating; peak after the "
              f"problem {w[14] / 1e9:.3f} GB = {w[14] / L:.1f} B/rating, after the set-up {w[7] / 1e9:.3f} GB = "
              f"{w[7] / L:.1f} B/rating, after {epochs} epochs {w[8] / 1e9:.3f} GB = {w[8] / L:.1f} B/rating, with "
              f"all state resident {w[0] / 1e9:.3f} GB = {w[0] / L:.1f} B/rating ({(w[0] - w[1]) / L:.1f} above the "
              f"interpreter); ratings {w[9] / L:.1f} B/rating, {w[11]:.0f} state vectors over the factors "
              f"{w[10] / L:.1f} B/rating", flush=True)
        bw = copy_bandwidth()
        bound = w[9] / bw          # this rank's ratings read once
        ep = w[3] / max(epochs, 1)
        print(f"BOUND copy bandwidth {bw / 1e9:.2f} GB/s; ratings once per epoch {bound * 1e3:.1f} ms per rank; "
              f"step time per epoch {ep:.3f} s = {ep / bound:.1f}x, CPU per epoch (with evaluation) "
              f"{max(r[6] for r in rows):.3f} s = {max(r[6] for r in rows) / bound:.1f}x", flush=True)
        print(f"UPTIME {os.getloadavg()}", flush=True)


def _ref_errors(stdout: str) -> np.ndarray:
    """The reference's per-epoch training RMSE lines ("Current error is: X in E iterations")."""
    import re
    return np.array([float(x) for x in re.findall(r"Current error is: (\S+) in", stdout)])


def reference_ratio(binary: str, args: str, epochs: int, k: int, tmp: str, repeats: int = 3) -> None:
    """The C++ ``hamsi-mf`` reference against ``hamsi`` with the ``hamsi-mf`` preset on the same
    generated MovieLens-100k-like file (items as rows, 1 rank / 1 thread), ``repeats`` interleaved
    runs of each (best of them reported). ``args`` is the reference's command line with {data} {k}
    {epochs} {threads} placeholders. Prints whole-process and solver-only ratios, the evaluation's
    share, and how far the trajectories (per-epoch training RMSE, final factors) agree."""
    import re
    import resource
    from mpiopt.comm import world
    from mpiopt.data.movielens import read_ratings, write_movielens_like, write_reference
    from mpiopt.io import load_result
    d = os.path.join(tmp, "ref")
    os.makedirs(d, exist_ok=True)
    write_movielens_like(os.path.join(d, "u.data"))
    u, i, v = read_ratings(os.path.join(d, "u.data"), world())
    data = os.path.join(d, "ml.txt")
    m_items, n_users = int(i.max()), int(u.max())
    write_reference(data, i - 1, u - 1, v, m_items, n_users)        # items x users

    def cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime
    ref_cmd = [binary, *args.format(data=data, k=k, epochs=epochs, threads=1).split()]
    out = os.path.join(d, "ours.h5")

    def ours_cmd(E: int) -> list[str]:
        return [sys.executable, "-m", "mpiopt.run", "hamsi", "--problem", "movielens", "--set", f"problem.path={data}",
                "problem.split=none", f"problem.latent_dim={k}", "solver.preset=hamsi-mf", f"solver.max_epochs={E}",
                "solver.init=mt19937", "run.progress=none", "--seed", "1453", "--out", out, "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # first runs: the reference converts the text file to its binary cache (FILE.bin), numba loads or
    # compiles the kernels; neither is timed
    t = time.perf_counter()
    p = subprocess.run(ref_cmd, capture_output=True, text=True, timeout=3600, cwd=d)
    t_ref_text = time.perf_counter() - t
    subprocess.run(ours_cmd(1), capture_output=True, text=True, timeout=3600, env=env)
    rows = []
    for _ in range(repeats):
        t, c = time.perf_counter(), cpu()
        p = subprocess.run(ref_cmd, capture_output=True, text=True, timeout=3600, cwd=d)
        t_ref, c_ref = time.perf_counter() - t, cpu() - c
        m = re.search(r"Total time is:\s*(\S+)", p.stdout)
        loop_ref = float(m.group(1)) if m else math.nan
        t, c = time.perf_counter(), cpu()
        q = subprocess.run(ours_cmd(epochs), capture_output=True, text=True, timeout=3600, env=env)
        t_ours, c_ours = time.perf_counter() - t, cpu() - c
        if p.returncode or q.returncode:
            print(f"  failed: reference exit {p.returncode} {p.stderr.strip()[-300:]}; mpiopt exit {q.returncode} "
                  f"{q.stderr.strip()[-300:]}")
            return
        r = load_result(out)
        rows.append((t_ref, c_ref, loop_ref, t_ours, c_ours, float(r.attrs.get("run_time", math.nan)),
                     float(r.history["step_time"][-1]),
                     float(r.history["eval_time"][-1]) if "eval_time" in r.history else math.nan,
                     float(r.attrs.get("setup_time", math.nan))))
    best = [min(col) for col in zip(*rows)]
    t_ref, c_ref, loop_ref, t_ours, c_ours, run_ours, step_ours, eval_ours, setup_ours = best
    print(f"\n== C++ reference vs hamsi (preset hamsi-mf), {v.size} ratings, {m_items} x {n_users} (items x users), "
          f"k={k}, {epochs} epochs, 1 rank / 1 thread; best of {repeats} interleaved runs, load "
          f"{os.getloadavg()[0]:.2f} ==")
    print(f"  reference: {t_ref:.2f} s whole process (binary input cache; {t_ref_text:.2f} s the first time, "
          f"parsing the text), {loop_ref:.2f} s in its epoch loop (its 'Total time': evaluation excluded), "
          f"CPU {c_ref:.2f} s")
    print(f"  mpiopt:    {t_ours:.2f} s whole process (interpreter, imports, reading the file, set-up "
          f"{setup_ours:.2f} s), {run_ours:.2f} s in the solver (run_time: epochs + evaluation), "
          f"{step_ours:.2f} s of epochs (step time), {eval_ours:.3f} s of evaluation "
          f"({100 * eval_ours / step_ours:.1f} % of the epochs' time), CPU {c_ours:.2f} s")
    print(f"  ratios mpiopt / reference: whole process {t_ours / t_ref:.2f}; solver {run_ours:.2f} s / reference "
          f"whole process {run_ours / t_ref:.2f}; epochs only (step time / reference epoch loop) "
          f"{step_ours / loop_ref:.2f}; CPU {c_ours / c_ref:.2f}")
    # trajectories: the reference prints the training RMSE after every epoch and writes its final
    # factors (6 decimals) into hamsi1.out (items x k) and hamsi2.out (k x users) in its working folder
    ref_rmse = _ref_errors(p.stdout)
    ours_rmse = np.asarray(r.history["rmse"])[1:]         # after epochs 1..E (entry 0: the initial factors)
    n = min(ref_rmse.size, ours_rmse.size)
    if n:
        rel = np.abs(ours_rmse[:n] - ref_rmse[:n]) / np.abs(ref_rmse[:n])
        print(f"  training RMSE per epoch: {n} epochs compared, largest relative difference {rel.max():.2e} "
              f"(the reference prints 6 significant digits); final {ref_rmse[n - 1]:.6f} vs {ours_rmse[n - 1]:.6f}")
    try:
        W = np.loadtxt(os.path.join(d, "hamsi1.out"))
        H = np.loadtxt(os.path.join(d, "hamsi2.out")).T
        sol = r.solution
        dW, dH = np.abs(sol["W"] - W).max(), np.abs(sol["H"] - H).max()
        print(f"  final factors: largest absolute difference W {dW:.2e}, H {dH:.2e} (the reference writes 6 decimals; "
              f"largest entry {max(np.abs(W).max(), np.abs(H).max()):.3g})")
    except (OSError, ValueError, KeyError) as exc:
        print(f"  final factors not compared: {exc}")


def _libmf_va(stdout: str) -> np.ndarray:
    """LIBMF mf-train's per-iteration validation RMSE (third column of its "iter tr_rmse va_rmse obj" table)."""
    rows = [ln.split() for ln in stdout.splitlines()]
    return np.array([float(r[2]) for r in rows if len(r) == 4 and r[0].isdigit()])


def libmf_ratio(binary: str, args: str, target: float, tmp: str, repeats: int = 3, timeout: float = 20) -> None:
    """LIBMF's ``mf-train`` against ``hamsi`` with the project defaults on one generated
    MovieLens-100k-like train/test pair (seed 0, 20 % held out by the ``movielens`` random split,
    written as u1.base/u1.test for mpiopt and as 0-based ``user item rating`` lines for LIBMF),
    1 process / 1 thread each, ``repeats`` interleaved runs (best times reported). ``args`` is
    mf-train's command line with {iters} {train} {test} {model} placeholders. LIBMF prints no times:
    its time to the best (or ``target``) validation RMSE is the whole process of a run stopped at
    that iteration; hamsi's are the history's solver time at that epoch and the whole process."""
    from mpiopt.comm import world
    from mpiopt.data.movielens import read_ratings, write_movielens, write_movielens_like
    from mpiopt.io import load_result
    from mpiopt.problems.mf import random_split
    d = os.path.join(tmp, "libmf")
    os.makedirs(d, exist_ok=True)
    write_movielens_like(os.path.join(d, "u.data"))
    u, i, v = read_ratings(os.path.join(d, "u.data"), world())
    ku, ki, kv, tu, ti, tv = random_split(u.copy(), i.copy(), v.astype(np.float64), 0, 0.2)
    write_movielens(os.path.join(d, "u1.base"), ku, ki, kv)
    write_movielens(os.path.join(d, "u1.test"), tu, ti, tv)
    tr, te, model = os.path.join(d, "tr.txt"), os.path.join(d, "te.txt"), os.path.join(d, "libmf.model")
    for name, a, b, c in ((tr, ku, ki, kv), (te, tu, ti, tv)):
        np.savetxt(name, np.column_stack([a - 1, b - 1, c]), fmt="%d %d %g")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = os.path.join(d, "ours.h5")

    def ours(*extra: str) -> list[str]:
        return [sys.executable, "-m", "mpiopt.run", "hamsi", "--problem", "movielens", "--set", f"problem.path={d}",
                "problem.split=u1", "run.progress=none", *extra, "--out", out, "-q"]
    ours_cmd = ours()

    def libmf(iters: int) -> tuple[float, np.ndarray]:
        cmd = [binary, *args.format(iters=iters, train=tr, test=te, model=model).split()]
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=d, check=False)
        if p.returncode:
            raise RuntimeError(f"{binary} exit {p.returncode}: {(p.stdout + p.stderr).strip()[-300:]}")
        return time.perf_counter() - t, _libmf_va(p.stdout)

    def retry(iters: int) -> tuple[float, np.ndarray]:
        for _ in range(3):          # LIBMF 1.x's thread scheduler can hang now and then: time out, run again
            try:
                return libmf(iters)
            except subprocess.TimeoutExpired:
                print(f"  mf-train -t {iters}: no exit within {timeout:g} s, run again", flush=True)
        return math.nan, np.array([])

    subprocess.run(ours_cmd, capture_output=True, text=True, timeout=3600, env=env, check=False)   # numba cache warm-up
    _, va = retry(400)                                   # the validation curve (400 iterations)
    if va.size == 0:
        print("  LIBMF gave no validation RMSE lines; check --libmf-args")
        return
    it_best = int(np.argmin(va))
    hit = np.flatnonzero(va <= target)
    it_hit = int(hit[0]) if hit.size else -1
    rows = []
    for _ in range(repeats):
        lb = retry(it_best + 1)[0]
        lt = retry(it_hit + 1)[0] if it_hit >= 0 else math.nan
        t = time.perf_counter()
        q = subprocess.run(ours_cmd, capture_output=True, text=True, timeout=3600, env=env, check=False)
        t_ours = time.perf_counter() - t
        if q.returncode:
            print(f"  mpiopt exit {q.returncode}: {q.stderr.strip()[-300:]}")
            return
        r = load_result(out)
        h = r.history
        te_r, tt = np.asarray(h["test_rmse"], float), np.asarray(h["time"], float)
        eb = int(np.nanargmin(te_r))
        hh = np.flatnonzero(te_r <= target)
        t = time.perf_counter()           # whole process of a run that stops at the target (solver.target_test_rmse)
        subprocess.run(ours(f"solver.target_test_rmse={target}"), capture_output=True, text=True, timeout=3600,
                       env=env, check=False)
        t_ours_hit = time.perf_counter() - t
        rows.append((lb, lt, t_ours, float(tt[eb]), float(tt[hh[0]]) if hh.size else math.nan,
                     float(r.attrs.get("run_time", math.nan)), t_ours_hit, float(r.attrs.get("setup_time", math.nan))))
    lb, lt, t_ours, s_best, s_hit, run_ours, t_ours_hit, setup = (min(c) for c in zip(*rows))
    print(f"\n== LIBMF mf-train vs hamsi (project defaults), generated MovieLens-100k-like data, {kv.size} training / "
          f"{tv.size} held-out ratings, 1 process / 1 thread; best of {repeats} interleaved runs, load "
          f"{os.getloadavg()[0]:.2f} ==")
    print(f"  LIBMF ({args.split(' -p')[0]}): best validation RMSE {va[it_best]:.4f} at iteration {it_best + 1}; "
          f"whole process stopped there {lb:.3f} s; RMSE <= {target:g} at iteration {it_hit + 1}, whole process "
          f"{lt:.3f} s")
    print(f"  hamsi: best held-out RMSE {np.nanmin(te_r):.4f} at epoch {eb} of {te_r.size - 1}; solver time to it "
          f"{s_best:.3f} s (run_time {run_ours:.3f} s), to <= {target:g} {s_hit:.3f} s; whole process {t_ours:.2f} s "
          f"(problem set-up {setup:.2f} s, the rest interpreter, imports, numba cache load, result file), "
          f"{t_ours_hit:.2f} s stopping at <= {target:g} (solver.target_test_rmse)")
    print(f"  ratios hamsi / LIBMF: to best, solver {s_best / lb:.2f}, whole process {t_ours / lb:.2f}; "
          f"to <= {target:g}, solver {s_hit / lt:.2f}, whole process {t_ours_hit / lt:.2f}")


def sweep(tmp: str, seeds: tuple[int, ...] = (0, 1)) -> None:
    """Defaults by measurement: hamsi on generated MovieLens-like data (100k ratings, 943 x 1682,
    stars 1-5, skewed counts; 20 % held out), one rank, in-process through the run builder."""
    from mpiopt.api import minimize
    from mpiopt.data.movielens import write_movielens_like
    paths = []
    for sd in seeds:
        d = os.path.join(tmp, f"mlgen{sd}")
        os.makedirs(d, exist_ok=True)
        write_movielens_like(os.path.join(d, "u.data"), seed=sd)
        paths.append(d)

    def trial(settings: dict) -> tuple[float, float, float]:
        rm, ep, tt = [], [], []
        for d in paths:
            t = time.perf_counter()
            r = minimize("hamsi", "movielens", {"problem.path": d, "run.progress": "none",
                                                "solver.max_epochs": 150, **settings})
            tt.append(time.perf_counter() - t)
            rm.append(float(np.nanmin(r.history["test_rmse"])))
            ep.append(r.nit)
        return float(np.mean(rm)), float(np.mean(ep)), float(np.mean(tt))

    print(f"\n== sweep: hamsi, generated MovieLens-like data (seeds {seeds}), best held-out RMSE (mean) ==")
    print(f"  {'settings':60s} {'test RMSE':>9s} {'epochs':>7s} {'s/run':>6s}", flush=True)
    best: tuple[float, dict] = (math.inf, {})
    grid = [{"problem.bias": False, "problem.l2": l2} for l2 in (0.05, 0.1, 0.2)]
    grid += [{"problem.l2": l2, "problem.bias_l2": bl2} for l2 in (0.05, 0.1, 0.2) for bl2 in (0.001, 0.01, 0.1)]
    for st in grid:
        rm, ep, tt = trial(st)
        print(f"  {str(st):60s} {rm:9.4f} {ep:7.1f} {tt:6.1f}", flush=True)
        if rm < best[0]:
            best = (rm, st)
    for st2 in [{"solver.init_scale": s, "solver.eta": e} for s in (0.03, 0.1, 0.3) for e in (0.03, 0.06, 0.12)]:
        st = {**best[1], **st2}
        rm, ep, tt = trial(st)
        print(f"  {str(st):60s} {rm:9.4f} {ep:7.1f} {tt:6.1f}", flush=True)


def step_forms(N: int, k: int, E: int, blocks: int, seeds: list[int], settings: list[str]) -> None:
    """solver.step_form=reference against paper (one rank, solver.blocks strata, api.minimize):
    held-out RMSE (best and final) and step time per epoch (evaluation excluded), per seed."""
    from mpiopt.api import minimize
    base = {"problem.n_ratings": N, "problem.latent_dim": k, "solver.max_epochs": E, "solver.blocks": blocks,
            "solver.patience": 0, "solver.tol": 0, "run.progress": "none"}
    print(f"synthetic_mf n_ratings={N} k={k}, {E} epochs, solver.blocks={blocks}, 1 rank, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    print("| setting | seed | best test RMSE (epoch) | final test RMSE | step s/epoch |\n|---|---|---|---|---|")
    for st in settings:
        extra = dict(kv.split("=", 1) for kv in st.split(",") if kv)
        rows = []
        for seed in seeds:
            r = minimize("hamsi", "synthetic_mf", {**base, **extra, "run.seed": seed})
            h = np.asarray(r.history["test_rmse"])
            rows.append((float(h.min()), int(h.argmin()), float(h[-1]), r.step_time / max(r.nit, 1)))
            print(f"| {st or 'step_form=reference'} | {seed} | {rows[-1][0]:.4f} ({rows[-1][1]}) | {rows[-1][2]:.4f} "
                  f"| {rows[-1][3]:.3f} |", flush=True)
        b, f, t = (np.mean([r[i] for r in rows]) for i in (0, 2, 3))
        print(f"| {st or 'step_form=reference'} | mean | {b:.4f} | {f:.4f} | {t:.3f} |", flush=True)
    print(f"load {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2e5 ratings, k=20, 12 epochs")
    ap.add_argument("--ml", help="MovieLens folder or ratings file to run as well")
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--k", type=int)
    ap.add_argument("--ratings", type=float)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--target-rmse", type=float, default=0.0, help="training RMSE target (default: halfway)")
    ap.add_argument("--target-test-rmse", type=float, default=0.0, help="held-out RMSE target (default: halfway)")
    ap.add_argument("--sweep", action="store_true", help="only the defaults sweep on generated MovieLens-like data")
    ap.add_argument("--scale", help="only the scale runs: comma-separated rating counts (e.g. 1e7,3e7) on "
                    "--ranks (default 2) with k=--k (default 10), --epochs (default 2) epochs")
    ap.add_argument("--reference-binary", help="the C++ hamsi-mf binary (built outside this repository): "
                    "adds the whole-process time ratio on the same file")
    ap.add_argument("--reference-args", default="{data} -p{threads} -l{k} -i{epochs} -t100000",
                    help="the reference's command line after the binary ({data} {k} {epochs} {threads} filled in)")
    ap.add_argument("--libmf-binary", help="LIBMF's mf-train (built outside this repository): time hamsi with the "
                    "project defaults against it on a generated MovieLens-100k-like train/test pair")
    ap.add_argument("--libmf-args", default="-k 10 -l 0.1 -r 0.1 -s 1 -t {iters} -p {test} {train} {model}",
                    help="mf-train's command line ({iters} {train} {test} {model} filled in)")
    ap.add_argument("--scale-solver", default="hamsi", choices=SOLVERS, help="solver of the scale runs")
    ap.add_argument("--step-forms", nargs="*", metavar="SETTINGS",
                    help="only solver.step_form=reference against paper on synthetic_mf at 1 rank (--ratings, "
                    "--k, --epochs, --blocks, --seeds); each SETTINGS is a comma-separated list of solver "
                    "options (default: the two step forms with their defaults)")
    ap.add_argument("--blocks", type=int, default=4, help="--step-forms: solver.blocks")
    ap.add_argument("--seeds", default="0,1,2", help="--step-forms: run.seed values")
    ap.add_argument("--worker", nargs=4, metavar=("N", "K", "E", "SOLVER"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        scale_worker(int(float(a.worker[0])), int(a.worker[1]), int(a.worker[2]), a.worker[3])
        return
    if a.step_forms is not None:
        settings = a.step_forms or ["solver.step_form=reference", "solver.step_form=paper"]
        step_forms(int(a.ratings or 1e5), a.k or 10, a.epochs or 30, a.blocks,
                   [int(s) for s in a.seeds.split(",")], settings)
        return
    if a.scale:
        for N in a.scale.split(","):
            P = a.ranks if a.ranks != "1,2,4" else "2"
            cmd = ["mpirun", "-n", P, sys.executable, os.path.abspath(__file__), "--worker", N,
                   str(a.k or 10), str(a.epochs or 2), a.scale_solver]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
            print((p.stdout + p.stderr).strip()[-2000:], flush=True)
        return
    if a.sweep:
        with tempfile.TemporaryDirectory() as tmp:
            sweep(tmp)
        return
    if a.libmf_binary:
        with tempfile.TemporaryDirectory() as tmp:
            libmf_ratio(a.libmf_binary, a.libmf_args, a.target_test_rmse or 0.93, tmp)
        return
    if a.reference_binary:
        with tempfile.TemporaryDirectory() as tmp:
            reference_ratio(a.reference_binary, a.reference_args, a.epochs or 200, a.k or 10, tmp)
        return
    ranks = [int(r) for r in a.ranks.split(",")]
    N = int(a.ratings or (2e5 if a.quick else 1e6))
    k = a.k or (20 if a.quick else 50)
    E = a.epochs or (12 if a.quick else 25)
    bw = copy_bandwidth()
    with tempfile.TemporaryDirectory() as tmp:
        syn = ["--problem", "synthetic_mf", "--set", f"problem.n_ratings={N}", f"problem.latent_dim={k}"]
        bench("synthetic_mf", syn, N, max(20, N // 50), max(10, N // 200), k, ranks, E, bw, tmp, a.timeout,
              (a.target_rmse, a.target_test_rmse))
        if a.ml:
            from mpiopt.comm import world
            from mpiopt.data.movielens import read_ratings, resolve_path
            u, i, v = read_ratings(resolve_path(a.ml), world())
            ml = ["--problem", "movielens", "--set", f"problem.path={a.ml}", f"problem.latent_dim={k}"]
            bench("movielens", ml, v.size, np.unique(u).size, np.unique(i).size, k, ranks, E, bw, tmp, a.timeout,
                  (a.target_rmse, a.target_test_rmse))


if __name__ == "__main__":
    main()
