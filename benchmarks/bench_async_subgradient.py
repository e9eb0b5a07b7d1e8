"""async_subgradient benchmark: SGD, HW, ASSM, PASSM and the ddp baseline on the small CNN.

Run from a shell (it launches ``mpirun`` itself for every rank count):

    python benchmarks/bench_async_subgradient.py --quick          # sgd@1, the variants @4, passm@2, ddp@1,2,4
    python benchmarks/bench_async_subgradient.py                  # every method at 1, 2, 4 ranks, 3 repeats
    python benchmarks/bench_async_subgradient.py --variants-only  # the write/read variants below @4 only
    python benchmarks/bench_async_subgradient.py --mnist DIR      # MNIST idx files instead of digits
    python benchmarks/bench_async_subgradient.py --rma            # read/write modes alone, 3 writers
    python benchmarks/bench_async_subgradient.py --bn             # shared vs local BatchNorm statistics
                                                                  # (cnn_bn, every variant @4, both in one run)
    python benchmarks/bench_async_subgradient.py --bn-rma         # their RMA cost alone (cnn_bn and ResNet18 sizes)

Variants (the defaults are the paper's methods; the others are what the solver did before):

    hw           plain get-add-put writes, lock-free reads (the paper's HW: updates can be lost)
    hw-atomic    element-atomic Accumulate writes (solver.hw_writes=atomic: no update lost)
    assm         reads and writes under the lock (the paper's ASSM: consistent state)
    assm-wlock   writes under the lock, lock-free reads (solver.assm_lock_reads=false)
    passm        blocks balanced by parameter count (tensors cut where needed)
    passm-tensors  whole tensors per block (solver.passm_split=tensors)

Per variant it reports what it costs (RMA wall time per update, updates/s) and loses: lost updates
(writes made minus writes applied, from the write counter that rides along in every write) and the
share of reads that overlapped a write (possibly torn: a write began before the read ended and had
not finished when it began; passm: a block's version word odd or changed across its read).

Each run trains from the same initial weights until a snapshot (async; rank 0 evaluates the shared
model every ``--snapshot-every`` s) or an evaluation (ddp; rank 0, the time it takes is subtracted)
reaches ``--target`` test accuracy. Reported per configuration (median over repeats):
time to target (training wall time from the first evaluation), epochs to target, updates per
second, RMA fraction of the workers' iteration time (wall clock and thread CPU time: on an overloaded
machine the first system call after a compute burst may wait milliseconds for a core, which wall
clock charges to whatever call comes first) and RMA wall time per update, lost updates
(writes made minus writes applied; must be 0), and the cores the workers actually got (their thread
CPU time over wall time, summed: on a shared machine this, not the rank count, bounds the speed-up).
Async ranks = 1 host/snapshot rank + workers
(1 rank: one process does everything). Ratios: time of 1-rank sgd / time of X, and of the best
ddp / time of X (> 1: X is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)                    # the checkout's mpiopt, installed or not


VARIANTS = {
    "hw": ("hw", []), "hw-atomic": ("hw", ["solver.hw_writes=atomic"]),
    "assm": ("assm", []), "assm-wlock": ("assm", ["solver.assm_lock_reads=false"]),
    "passm": ("passm", []), "passm-tensors": ("passm", ["solver.passm_split=tensors"]),
    "sgd": ("sgd", []),
}


def run_one(solver: str, method: str | None, ranks: int, args: argparse.Namespace, seed: int, out: str,
            extra_sets: tuple[str, ...] = ()) -> dict:
    problem = ["--problem", "mnist", "--set", f"problem.path={args.mnist}"] if args.mnist else \
        ["--problem", "digits", "--set"]
    sets = [f"problem.model={args.model}", f"problem.width={args.width}", f"solver.max_epochs={args.max_epochs}",
            f"solver.target_accuracy={args.target}", f"solver.gamma={args.gamma}",
            f"run.snapshot_every={args.snapshot_every}", f"run.max_time={args.max_time}"]
    if method:
        base, extra = VARIANTS[method]
        sets += [f"solver.method={base}", *extra]
    if args.mnist and args.n_train:
        sets.append(f"problem.n_train={args.n_train}")
    sets += list(extra_sets)
    cmd = ["mpirun", "-n", str(ranks), sys.executable, "-m", "mpiopt.run", solver, *problem, *sets,
           "--seed", str(seed), "--out", out, "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.max_time + 240,
                       start_new_session=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    from mpiopt.io import load_result
    r = load_result(out)
    h = r.history
    t = h["train_time"] - h["train_time"][0]
    hit = np.flatnonzero(h["test_accuracy"] >= args.target)
    s = r.groups.get("summary", {})
    rec = {"time_to_target": float(t[hit[0]]) if hit.size else float("nan"),
           "epochs_to_target": float(h["epoch"][hit[0]]) if hit.size else float("nan"),
           "final_accuracy": float(h["test_accuracy"][-1]), "wall": float(t[-1]),
           "updates": int(s.get("updates", r.attrs["nit"])), "lost_updates": s.get("lost_updates", 0),
           "block_epochs_to_target": float(h["block_epoch"][hit[0]]) if (hit.size and "block_epoch" in h)
           else float("nan"),
           "overlapped_reads": float(s.get("overlapped_reads", 0)) / max(1, s.get("reads", 0))
           if "reads" in s else float("nan"),
           "read_bytes_per_update": float(s.get("read_bytes_per_update", float("nan"))),
           "write_bytes_per_update": float(s.get("write_bytes_per_update", float("nan")))}
    rec["updates_per_s"] = float(s["updates_per_s"]) if "updates_per_s" in s else rec["updates"] / max(1e-9, rec["wall"])
    workers = r.groups.get("workers", {})
    if workers:
        cs = sum(w["comm_seconds"] for w in workers.values())
        cp = sum(w["compute_seconds"] for w in workers.values())
        ks = sum(w["k"] for w in workers.values())
        ccs = sum(w["comm_cpu_seconds"] for w in workers.values())
        ccp = sum(w["compute_cpu_seconds"] for w in workers.values())
        rec["comm_fraction"] = cs / max(1e-12, cs + cp)
        rec["comm_cpu_fraction"] = ccs / max(1e-12, ccs + ccp)
        rec["rma_us_per_update"] = 1e6 * cs / max(1, ks)
        # cores the workers actually got: thread CPU time / wall time of their iterations, summed
        rec["worker_cores"] = sum((w["comm_cpu_seconds"] + w["compute_cpu_seconds"]) /
                                  max(1e-9, w["comm_seconds"] + w["compute_seconds"]) for w in workers.values())
    else:
        rec["comm_fraction"] = rec["comm_cpu_fraction"] = rec["rma_us_per_update"] = float("nan")
        rec["worker_cores"] = float("nan")
    return rec


RMA_MODES = {"hw plain": dict(writes="plain"), "hw atomic": dict(writes="atomic"),
             "assm (locked r+w)": dict(writes="atomic", lock_reads=True, lock_writes=True),
             "assm (locked w)": dict(writes="atomic", lock_writes=True)}


def rma_worker(sizes: list[int], seconds: float) -> None:
    """Under mpirun: every rank but 0 reads and writes the hosted vector back to back for
    ``seconds`` per mode and size (rank 0 only hosts); rank 0 prints cost and losses."""
    import time
    from mpi4py import MPI
    from mpiopt.comm import Comm
    from mpiopt.comm.shared_model import Control, HostedModel
    c = Comm(MPI.COMM_WORLD)
    if c.rank == 0:
        print(f"# {c.size - 1} writers back to back, {seconds:g} s per row; us per read / write (median of "
              f"writers' means); lost = writes made - applied; overlapped = reads with a write in flight")
        print(f"{'mode':18s} {'n':>9s} {'read us':>9s} {'write us':>9s} {'writes':>8s} {'lost':>7s} {'overlapped':>10s}")
    for n in sizes:
        for name, kw in RMA_MODES.items():
            ctl = Control(c, shared=True)
            m = HostedModel(c, n, ctl, shared=True, **kw)
            x, d = np.empty(n, np.float32), np.ones(n, np.float32)
            c.Barrier()
            tr = tw = 0.0
            k = 0
            if c.rank:
                t_end = time.perf_counter() + seconds
                while time.perf_counter() < t_end:
                    t0 = time.perf_counter()
                    m.read(x)
                    t1 = time.perf_counter()
                    m.write(d, 0, n, 1)
                    tw += time.perf_counter() - t1
                    tr += t1 - t0
                    k += 1
            c.Barrier()
            rows = c.gather_obj((k, tr / max(1, k), tw / max(1, k), m.overlaps.overlapped, m.overlaps.reads))
            if c.rank == 0:
                w = rows[1:]
                made = sum(r[0] for r in w)
                lost = made - m.applied()
                ov = sum(r[3] for r in w) / max(1, sum(r[4] for r in w))
                print(f"{name:18s} {n:9d} {1e6 * np.median([r[1] for r in w]):9.1f} "
                      f"{1e6 * np.median([r[2] for r in w]):9.1f} {made:8d} {lost:7d} {100 * ov:9.1f}%", flush=True)
            c.Barrier()
            m.free()
            ctl.free()


def bn_rma_worker(seconds: float, rounds: int) -> None:
    """Under mpirun: every rank but 0 reads and writes a bare shared model of the cnn_bn (width 16)
    and ResNet18 sizes with and without shared BatchNorm statistics, back to back, ``seconds`` per
    cell, in each method's write mode, ``rounds`` times over all cells (local and shared alternate, so
    both see the same load); rank 0 prints the median over rounds of the us per read and per write
    (each round: median of the workers' means), the shared/local ratios and the bytes moved."""
    import time
    from mpi4py import MPI
    from mpiopt.comm import Comm
    from mpiopt.comm.shared_model import BlockModel, Control, HostedModel
    from mpiopt.nn.flat import FlatModel, partition_elements
    from mpiopt.nn.models import build_model
    c = Comm(MPI.COMM_WORLD)
    sizes = {name: (f.n, f.n_stats) for name, f in
             (("cnn_bn w16", FlatModel(build_model("cnn_bn", (1, 8, 8), 10))),
              ("resnet18", FlatModel(build_model("resnet18", (3, 32, 32), 10))))}
    modes = {"hw (plain)": dict(writes="plain"), "hw-atomic": dict(writes="atomic"),
             "assm (locked r+w)": dict(writes="atomic", lock_reads=True, lock_writes=True), "passm": None}
    workers = list(range(1, c.size))
    if c.rank == 0:
        print(f"# {c.size - 1} workers back to back, {seconds:g} s per cell, {rounds} round(s); us per read / write: "
              f"median over rounds of the median of the workers' means; bytes per update from the model's own count")
    cells: dict[tuple[str, str, str], list[tuple[float, float, int]]] = {}
    info: dict[tuple[str, str, str], tuple[int, int, int, int]] = {}
    grid = [(mname, mode, bn) for _ in range(rounds) for mname in sizes for mode in modes for bn in ("local", "shared")]
    for mname, mode, bn in grid:
        n, m = sizes[mname]
        k_stats = m if bn == "shared" else 0
        kw = modes[mode]
        ctl = Control(c, shared=True)
        if kw is None:
            model = BlockModel(c, n, partition_elements(n, len(workers)), workers, ctl, shared=True, n_stats=k_stats)
        else:
            model = HostedModel(c, n, ctl, shared=True, n_stats=k_stats, **kw)
        lo, hi = model.writable(c.rank in workers)
        x = np.zeros(n + k_stats, np.float32)              # [parameters | statistics], as FlatModel.state
        d, sd = np.full(hi - lo, 1e-6, np.float32), np.full(m, 1e-6, np.float32)
        c.Barrier()
        tr = tw = 0.0
        k = 0
        if c.rank:
            t_end = time.perf_counter() + seconds
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                model.read(x)
                t1 = time.perf_counter()
                model.write(d, lo, hi, 1, sd if k_stats else None)
                tw += time.perf_counter() - t1
                tr += t1 - t0
                k += 1
        c.Barrier()
        rows = c.gather_obj((k, tr / max(1, k), tw / max(1, k)))
        if c.rank == 0:
            w = rows[1:]
            cells.setdefault((mname, mode, bn), []).append(
                (float(np.median([r[1] for r in w])), float(np.median([r[2] for r in w])), sum(r[0] for r in w)))
            info[(mname, mode, bn)] = (n, k_stats, *model.bytes_per_update())
        c.Barrier()
        model.free()
        ctl.free()
    if c.rank == 0:
        print(f"{'model':11s} {'mode':18s} {'bn':7s} {'n':>9s} {'stats':>6s} {'read us':>9s} {'write us':>9s} "
              f"{'read B':>10s} {'write B':>10s} {'updates':>8s} {'shared/local r+w':>17s}")
        for (mname, mode, bn), vals in cells.items():
            n, k_stats, rb, wb = info[(mname, mode, bn)]
            rd, wr = np.median([v[0] for v in vals]), np.median([v[1] for v in vals])
            ratio = ""
            if bn == "shared":
                loc = cells[(mname, mode, "local")]
                ratio = f"{(rd + wr) / (np.median([v[0] for v in loc]) + np.median([v[1] for v in loc])):17.2f}"
            print(f"{mname:11s} {mode:18s} {bn:7s} {n:9d} {k_stats:6d} {1e6 * rd:9.1f} {1e6 * wr:9.1f} {rb:10d} "
                  f"{wb:10d} {sum(v[2] for v in vals):8d} {ratio}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer configurations, one repeat")
    ap.add_argument("--mnist", help="folder of the MNIST idx files (default: scikit-learn digits)")
    ap.add_argument("--n-train", type=int, default=0, help="MNIST: use the first n training images")
    ap.add_argument("--model", default="cnn", help="problem.model: cnn (default), mlp or resnet18")
    ap.add_argument("--width", type=int, default=16, help="model width (cnn: 16 is the small CNN; mlp: hidden units)")
    ap.add_argument("--target", type=float, default=0.92, help="target test accuracy")
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--max-epochs", type=float, default=40)
    ap.add_argument("--max-time", type=float, default=120)
    ap.add_argument("--snapshot-every", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=0, help="runs per configuration (default 1 quick, 3 full)")
    ap.add_argument("--json", help="write the raw records here")
    ap.add_argument("--variants-only", action="store_true", help="only the read/write variants at 4 ranks")
    ap.add_argument("--rma", action="store_true", help="only the read/write modes on a bare vector (mpirun -n 4)")
    ap.add_argument("--rma-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rma-seconds", type=float, default=2.0)
    ap.add_argument("--bn", action="store_true", help="shared vs local BatchNorm statistics: problem.model=cnn_bn, "
                    "sgd@1 and every variant @4 with solver.bn=local and solver.bn=shared")
    ap.add_argument("--bn-rma", action="store_true", help="the RMA cost of shared statistics alone (mpirun -n 4)")
    ap.add_argument("--bn-rma-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=3, help="--bn-rma: rounds over all cells (medians)")
    args = ap.parse_args()
    if args.rma_worker:
        rma_worker([10_000, 100_000, 1_000_000], args.rma_seconds)
        return
    if args.bn_rma_worker:
        bn_rma_worker(args.rma_seconds, args.rounds)
        return
    if args.bn_rma:
        cmd = ["mpirun", "-n", "4", sys.executable, os.path.abspath(__file__), "--bn-rma-worker",
               "--rma-seconds", str(args.rma_seconds), "--rounds", str(args.rounds)]
        subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT), check=True)
        return
    if args.rma:
        cmd = ["mpirun", "-n", "4", sys.executable, os.path.abspath(__file__), "--rma-worker",
               "--rma-seconds", str(args.rma_seconds)]
        subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT), check=True)
        return
    repeats = args.repeats or (1 if args.quick else 3)
    variants4 = [("async_subgradient", v, 4) for v in VARIANTS if v != "sgd"]
    if args.bn:
        args.model = "cnn_bn"
        configs = [("async_subgradient", v, r, (f"solver.bn={bn}",)) for v, r in [("sgd", 1)] +
                   [(v, 4) for v in VARIANTS if v != "sgd"] for bn in ("local", "shared")]
    elif args.variants_only:
        configs = [("async_subgradient", "sgd", 1), *variants4]
    elif args.quick:
        configs = [("async_subgradient", "sgd", 1), *variants4, ("async_subgradient", "passm", 2),
                   ("ddp", None, 1), ("ddp", None, 2), ("ddp", None, 4)]
    else:
        configs = [("async_subgradient", "sgd", 1)]
        configs += [("async_subgradient", m, r) for m in ("hw", "assm", "passm") for r in (1, 2, 4)]
        configs += [("ddp", None, r) for r in (1, 2, 4)]
    data = f"MNIST at {args.mnist}" if args.mnist else "scikit-learn digits (1438 train / 359 test)"
    print(f"# async_subgradient benchmark: {args.model} width {args.width} on {data}; target test accuracy {args.target}; "
          f"{repeats} repeat(s); {os.cpu_count()} CPUs", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for solver, method, ranks, *more in configs:
            extra = tuple(more[0]) if more else ()
            name = f"{method or 'ddp'}@{ranks}" + "".join(f" {e.split('.')[-1]}" for e in extra)
            recs = []
            for rep in range(repeats):
                recs.append(run_one(solver, method, ranks, args, seed=rep,
                                    out=os.path.join(tmp, f"{name.replace(' ', '_')}-{rep}.h5"), extra_sets=extra))
            med = {k: float(np.median([r[k] for r in recs])) for k in recs[0]}
            med["name"], med["ranks"] = name, ranks
            rows.append(med)
            print(f"  {name:16s} time-to-target {med['time_to_target']:7.2f}s  epochs {med['epochs_to_target']:5.1f} "
                  f"(per block {med['block_epochs_to_target']:5.1f})  "
                  f"upd/s {med['updates_per_s']:7.1f}  RMA wall {100 * med['comm_fraction']:5.1f}% "
                  f"cpu {100 * med['comm_cpu_fraction']:5.1f}% "
                  f"({med['rma_us_per_update']:7.0f} us/update)  cores {med['worker_cores']:4.2f}  lost {int(med['lost_updates'])} "
                  f"of {int(med['updates'])}  overlapped reads {100 * med['overlapped_reads']:5.1f}%  "
                  f"final acc {med['final_accuracy']:.3f}  bytes/update read {med['read_bytes_per_update']:.0f} "
                  f"write {med['write_bytes_per_update']:.0f}", flush=True)
    if args.bn:
        print("\n# shared / local BatchNorm statistics, same variant, same run (> 1: shared costs more)")
        print(f"{'variant':16s} {'RMA us/update':>14s} {'updates/s':>10s} {'time to target':>15s} {'bytes/update':>13s}")
        for r in rows:
            if r["name"].endswith("bn=shared"):
                loc = next(q for q in rows if q["name"] == r["name"].replace("bn=shared", "bn=local"))
                by_s = r["read_bytes_per_update"] + r["write_bytes_per_update"]
                by_l = loc["read_bytes_per_update"] + loc["write_bytes_per_update"]
                print(f"{r['name'].split()[0]:16s} {r['rma_us_per_update'] / loc['rma_us_per_update']:14.2f} "
                      f"{r['updates_per_s'] / loc['updates_per_s']:10.2f} "
                      f"{r['time_to_target'] / loc['time_to_target']:15.2f} {by_s / max(1.0, by_l):13.4f}")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1)
        return
    base = next(r for r in rows if r["name"] == "sgd@1")["time_to_target"]
    ddps = [r["time_to_target"] for r in rows if r["name"].startswith("ddp")]
    ddp_best = min(ddps) if ddps else float("nan")
    print("\n# ratios (> 1: faster than the reference)")
    print(f"{'config':16s} {'sgd@1 / X':>10s} {'best ddp / X':>13s}")
    for r in rows:
        print(f"{r['name']:16s} {base / r['time_to_target']:10.2f} {ddp_best / r['time_to_target']:13.2f}")
    p4 = next((r for r in rows if r["name"] == "passm@4"), None)
    if p4 is not None:
        print(f"\ntarget 1: passm@4 faster than sgd@1: {p4['time_to_target'] < base} "
              f"({base / p4['time_to_target']:.2f}x); than best ddp: {p4['time_to_target'] < ddp_best} "
              f"({ddp_best / p4['time_to_target']:.2f}x)")
        asyn = [r for r in rows if not r["name"].startswith("ddp")]
        print(f"target 2: RMA fraction of iteration time, worst async config: wall "
              f"{100 * max(r['comm_fraction'] for r in asyn):.1f}%, CPU {100 * max(r['comm_cpu_fraction'] for r in asyn):.1f}%"
              f" (goal < 10%)")
    lost = {r["name"]: int(r["lost_updates"]) for r in rows if not r["name"].startswith("ddp")}
    print(f"lost updates: {lost}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
