"""Benchmarks across an emulated cluster (``mpiopt.testing.cluster``): the solvers' own benchmarks and
command line, run with their ranks on network-namespace "nodes" joined by shaped veth links.

Needs root (it builds the namespaces; they are removed at the end, also on errors and signals). Run it
from a shell, not under mpirun:

    python benchmarks/bench_cluster.py                 # every part (about 30-40 min on 2 busy cores)
    python benchmarks/bench_cluster.py --quick         # smaller sizes, fewer repetitions
    python benchmarks/bench_cluster.py --parts signprox --rates 1gbit --layouts 4x1,2x1 --sizes 1e6

Parts (layouts are NODESxRANKS_PER_NODE; "1xP shm" = the same P ranks in one node's shared memory):
  signprox  one iteration of prox_sgd (fp32 Allreduce), signprox (1-bit Allgather) and signsgd_mv, timed by
            ``bench_signprox.worker_comm`` (the shared-memory benchmark's worker, one path per mpirun) at
            1 Gbit/s and 100 Mbit/s, n = 1e6 and 1e7, layouts 4x1, 2x2, 2x1: median ms per iteration, its
            split (minibatch gradient = compute, time inside the collective = communication, rest = local
            O(n) work), the speed-up over prox_sgd and the bytes the links carried per iteration.
  mf        hamsi, mf_gd and dsgd on synthetic_mf (1e7 ratings, k = 10), 4x1 at 1 Gbit/s against 1x4 shm:
            step seconds per epoch (evaluation excluded), bytes per epoch, the ring's share of an epoch.
  bundle    level_bundle (sync, coordination) on block_lp_dual with the master on node 0 and the oracles on
            the other nodes (4x1: 3 oracles; 4x2: 7), 1 Gbit/s, against shm: seconds per master iteration
            (round trip incl. the oracles' LP solves), master busy share.
  async     async_subgradient (hw, passm) on digits: RMA share of a worker's iteration (wall and CPU time),
            updates/s, lost updates; 2x1 and 4x1 at 1 Gbit/s against the same ranks in shm.

All nodes share the machine's cores: with more ranks than cores compute is oversubscribed, so every row
carries the load average; 2x1 rows are the comparisons that are not compute-bound on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TAG = "@@BENCH "
SIGN_PATHS = ("fp32_allreduce", "1bit_allgather", "1bit_signsgd_mv")


def load_avg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def layout_of(s: str) -> tuple[int, int]:
    a, b = s.lower().split("x")
    return int(a), int(b)


# -- worker: one path of bench_signprox's iteration benchmark (runs under mpirun) ------------------
def worker_signprox(n: int, reps: int, path: str) -> None:
    sys.path[:0] = [HERE, ROOT]                       # the repository's mpiopt, installed or not
    import bench_signprox as bs                       # the shared-memory benchmark's own worker
    bs.PATHS = {path: bs.PATHS[path]}
    bs.worker_comm(n, reps)


# -- running things across the cluster or in shared memory ------------------------------------------
def run(cluster, argv: list[str], layout: tuple[int, int] | None, timeout: float, cwd: str, n_shm: int = 0):
    """argv across ``layout`` of ``cluster`` (None: ``n_shm`` ranks in this namespace's shared memory).
    Returns (Completed, link byte delta or None, load average at the start)."""
    from mpiopt.testing.cluster import default_mpirun, run_command
    load = load_avg()
    if layout is None:
        p = run_command([default_mpirun(), "-n", str(n_shm), *argv], timeout=timeout, cwd=cwd)
        links = None
    else:
        before = cluster.counters()
        p = run_command(cluster.mpirun(argv, nodes=layout[0], ppn=layout[1]), timeout=timeout, env=cluster.env(),
                        cwd=cwd)
        links = cluster.counters() - before
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} on {layout or f'1x{n_shm} shm'} failed ({p.returncode}):\n"
                           f"{p.output[-3000:]}")
    return p, links, load


def records(p) -> list[dict]:
    return [json.loads(line[len(TAG):]) for line in p.stdout.splitlines() if line.startswith(TAG)]


def lname(layout, P) -> str:
    return f"{layout[0]}x{layout[1]}" if layout else f"1x{P} shm"


# -- part: signprox vs prox_sgd ------------------------------------------------------------------------
def part_signprox(a, Cluster, out: list) -> None:
    reps = 3 if a.quick else 5
    sizes = [float(s) for s in a.sizes.split(",")]
    print(f"\n== signprox: one iteration (solver.step()), median of {reps} after one warm-up; ms = max over ranks. "
          "grad = minibatch gradient timed alone (compute), comm = inside the collective (incl. waiting), "
          "local = the rest (O(n) work: message, packing, vote, prox). link MB/it = bytes all links carried "
          f"during the run / {reps + 1} iterations (includes start-up, an upper bound). speed-up = prox_sgd ms / ms.",
          flush=True)
    hdr = (f"{'links':>8} {'layout':>8} {'n':>6} {'method':<16} {'ms/it':>8} {'grad':>7} {'comm':>8} {'local':>7} "
           f"{'B/it/rank':>10} {'link MB/it':>10} {'speed-up':>8}  load")
    print(hdr, flush=True)
    configs = [("shm", None)] + [(r, lay) for r in a.rates.split(",") for lay in map(layout_of, a.layouts.split(","))]
    with tempfile.TemporaryDirectory() as tmp:
        clusters = {}
        try:
            for rate, layout in configs:
                c = None
                if layout is not None:
                    if rate not in clusters:
                        clusters[rate] = Cluster(nodes=4, rate=None if rate == "unshaped" else rate).start()
                    c = clusters[rate]
                P = layout[0] * layout[1] if layout else 4
                for n in sizes:
                    rows = []
                    for path in SIGN_PATHS:
                        argv = [sys.executable, os.path.abspath(__file__), "--worker", "signprox", f"{n:.0f}",
                                str(reps), path]
                        p, links, load = run(c, argv, layout, 1800, tmp, n_shm=P)
                        (r,) = records(p)
                        r.update(rate=rate, layout=lname(layout, P), load=load, wall=p.wall,
                                 link_bytes=links.sent if links else None,
                                 link_up=links.up if links else None)
                        rows.append(r)
                    base = rows[0]["median_ms"]
                    for r in rows:
                        r["speedup"] = base / r["median_ms"]
                        r["local_ms"] = r["median_ms"] - r["grad_median_ms"] - r["comm_median_ms"]
                        lmb = f"{r['link_bytes'] / (reps + 1) / 1e6:10.2f}" if r["link_bytes"] is not None else f"{'-':>10}"
                        print(f"{rate:>8} {r['layout']:>8} {n:6.0e} {r['method']:<16} {r['median_ms']:8.1f} "
                              f"{r['grad_median_ms']:7.1f} {r['comm_median_ms']:8.1f} {r['local_ms']:7.1f} "
                              f"{r['bytes_per_iter']:10d} {lmb} {r['speedup']:8.2f}  {r['load']}", flush=True)
                        out.append({"part": "signprox", **r})
        finally:
            for c in clusters.values():
                c.stop()


# -- part: matrix factorisation ------------------------------------------------------------------------
def mf_epoch(path: str) -> dict:
    import h5py
    import numpy as np
    with h5py.File(path, "r") as f:
        h = {k: f["history"][k][()] for k in f["history"]}
        sent = float(f.attrs.get("bytes_sent_rank0", 0))
    ep = h["epoch"]
    epochs = float(ep[-1] - ep[0])
    step = np.diff(h["step_time"]) if "step_time" in h else np.diff(h["time"])
    return {"epochs": epochs, "s_per_epoch": float(np.median(step)), "s_per_epoch_all": step.tolist(),
            "bytes_rank0_per_epoch": sent / max(epochs, 1e-9), "rmse": float(h["rmse"][-1])}


def part_mf(a, Cluster, out: list) -> None:
    ratings = a.ratings or (1_000_000 if a.quick else 10_000_000)
    epochs = 2
    args = ["--problem", "synthetic_mf", "--set", f"problem.n_ratings={ratings}", "problem.latent_dim=10",
            f"solver.max_epochs={epochs}", "solver.patience=0", "solver.tol=0", "run.progress=none"]
    print(f"\n== mf: synthetic_mf {ratings:.0e} ratings, k = 10, {epochs} epochs; s/epoch = median step seconds per "
          "epoch (evaluation excluded); ring share = (4x1 - shm) / 4x1 per epoch. 4 ranks on 2 cores: "
          "compute-bound in both layouts.", flush=True)
    print(f"{'solver':<7} {'layout':>9} {'s/epoch':>8} {'MB/epoch rank0':>15} {'link MB/epoch':>14} {'rmse':>7} "
          f"{'ring share':>10}  load", flush=True)
    with tempfile.TemporaryDirectory() as tmp, Cluster(nodes=4, rate="1gbit") as c:
        for solver in ("hamsi", "mf_gd", "dsgd"):
            res = {}
            for layout in (None, (4, 1)):
                f = os.path.join(tmp, f"{solver}.h5")
                p, links, load = run(c, [sys.executable, "-m", "mpiopt.run", solver, *args, "--out", f, "-q"],
                                     layout, 3600, tmp, n_shm=4)
                r = {"part": "mf", "solver": solver, "layout": lname(layout, 4), "rate": "1gbit" if layout else "shm",
                     "ratings": ratings, "load": load, "wall": p.wall, **mf_epoch(f)}
                r["link_bytes_per_epoch"] = links.sent / r["epochs"] if links else None
                res[layout] = r
            shm, net = res[None], res[(4, 1)]
            net["ring_share"] = (net["s_per_epoch"] - shm["s_per_epoch"]) / net["s_per_epoch"]
            for r in (shm, net):
                lmb = f"{r['link_bytes_per_epoch'] / 1e6:14.1f}" if r["link_bytes_per_epoch"] else f"{'-':>14}"
                share = f"{r['ring_share']:10.1%}" if "ring_share" in r else f"{'-':>10}"
                print(f"{solver:<7} {r['layout']:>9} {r['s_per_epoch']:8.2f} {r['bytes_rank0_per_epoch'] / 1e6:15.1f} "
                      f"{lmb} {r['rmse']:7.4f} {share}  {r['load']}", flush=True)
                out.append(r)


# -- part: level bundle --------------------------------------------------------------------------------
def part_bundle(a, Cluster, out: list) -> None:
    import h5py
    print("\n== bundle: level_bundle on block_lp_dual (n = 60, oracles = HiGHS LPs, no emulated delay), master "
          "rank 0 on node 0, oracles on the other ranks; s/iter = wall / master iterations (one round trip: "
          "send the level point, oracles solve, answers back); master busy = share of the master's wall time "
          "spent working (not waiting).", flush=True)
    print(f"{'variant':<13} {'layout':>9} {'oracles':>7} {'iters':>6} {'wall s':>7} {'ms/iter':>8} {'master busy':>11} "
          f"{'link KB/iter':>12} {'status':<10} load", flush=True)
    with tempfile.TemporaryDirectory() as tmp, Cluster(nodes=4, rate="1gbit") as c:
        for layout in ((4, 1), (4, 2)):
            P = layout[0] * layout[1]
            for variant in ("sync", "coordination"):
                for lay in (None, layout):
                    f = os.path.join(tmp, "b.h5")
                    argv = [sys.executable, "-m", "mpiopt.run", "level_bundle", "--problem", "block_lp_dual", "--set",
                            f"problem.m={P - 1}", f"solver.variant={variant}", "run.progress=none", "--max-time", "300",
                            "--out", f, "-q"]
                    p, links, load = run(c, argv, lay, 600, tmp, n_shm=P)
                    with h5py.File(f, "r") as fh:
                        nit, wall = int(fh.attrs["nit"]), float(fh.attrs["wall_time"])
                        busy = float(fh["history/master_busy"][-1])
                        status = str(fh.attrs["status"])
                    r = {"part": "bundle", "variant": variant, "layout": lname(lay, P), "oracles": P - 1, "nit": nit,
                         "wall": wall, "ms_per_iter": 1e3 * wall / max(nit, 1), "master_busy": busy, "status": status,
                         "link_bytes_per_iter": links.sent / max(nit, 1) if links else None, "load": load,
                         "rate": "1gbit" if lay else "shm"}
                    lk = f"{r['link_bytes_per_iter'] / 1e3:12.1f}" if links else f"{'-':>12}"
                    print(f"{variant:<13} {r['layout']:>9} {P - 1:7d} {nit:6d} {wall:7.2f} {r['ms_per_iter']:8.1f} "
                          f"{busy:11.1%} {lk} {status:<10} {load}", flush=True)
                    out.append(r)


# -- part: async subgradient ---------------------------------------------------------------------------
def part_async(a, Cluster, out: list) -> None:
    import h5py
    epochs = 2 if a.quick else 4
    print(f"\n== async: async_subgradient on digits (CNN), {epochs} epochs; rank 0 hosts the model window and "
          "snapshots, the other ranks are workers. RMA share = the workers' time inside RMA calls / their "
          "iteration time (wall clock; CPU time in brackets). 2x1 = one worker alone on node 1.", flush=True)
    print(f"{'method':<6} {'layout':>9} {'workers':>7} {'updates/s':>9} {'RMA share':>9} {'(cpu)':>7} "
          f"{'lost':>5} {'link KB/update':>14}  load", flush=True)
    with tempfile.TemporaryDirectory() as tmp, Cluster(nodes=4, rate="1gbit") as c:
        for layout in ((2, 1), (4, 1)):
            P = layout[0] * layout[1]
            for method in ("hw", "passm"):
                for lay in (None, layout):
                    f = os.path.join(tmp, "a.h5")
                    argv = [sys.executable, "-m", "mpiopt.run", "async_subgradient", "--set", f"solver.method={method}",
                            f"solver.max_epochs={epochs}", "run.progress=none", "--out", f, "-q"]
                    p, links, load = run(c, argv, lay, 900, tmp, n_shm=P)
                    with h5py.File(f, "r") as fh:
                        s = dict(fh["summary"].attrs)
                    r = {"part": "async", "method": method, "layout": lname(lay, P), "workers": int(s["n_workers"]),
                         "updates": int(s["updates"]), "updates_per_s": float(s["updates_per_s"]),
                         "rma_share": float(s["comm_fraction"]), "rma_cpu_share": float(s["comm_cpu_fraction"]),
                         "lost_updates": int(s["lost_updates"]), "load": load, "rate": "1gbit" if lay else "shm",
                         "link_bytes_per_update": links.sent / max(1, int(s["updates"])) if links else None}
                    lk = f"{r['link_bytes_per_update'] / 1e3:14.1f}" if links else f"{'-':>14}"
                    print(f"{method:<6} {r['layout']:>9} {r['workers']:7d} {r['updates_per_s']:9.1f} "
                          f"{r['rma_share']:9.1%} {r['rma_cpu_share']:7.1%} {r['lost_updates']:5d} {lk}  {load}",
                          flush=True)
                    out.append(r)


PARTS = {"signprox": part_signprox, "mf": part_mf, "bundle": part_bundle, "async": part_async}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    ap.add_argument("--rates", default="1gbit,100mbit", help="signprox part: link rates")
    ap.add_argument("--layouts", default="4x1,2x2,2x1", help="signprox part: NODESxRANKS layouts")
    ap.add_argument("--sizes", default=None, help="signprox part: n values (default 1e6,1e7; --quick 1e6)")
    ap.add_argument("--ratings", type=int, default=0, help="mf part: ratings (default 1e7; --quick 1e6)")
    ap.add_argument("--json", help="also write every record to this JSON file")
    ap.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker is not None:
        kind, *rest = a.worker
        assert kind == "signprox"
        worker_signprox(int(float(rest[0])), int(rest[1]), rest[2])
        return
    a.sizes = a.sizes or ("1e6" if a.quick else "1e6,1e7")
    from mpiopt.testing.cluster import Cluster, unavailable_reason
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"bench_cluster: {reason}")
    print(f"bench_cluster: {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores shared by every emulated node, "
          f"load average (1/5/15 min) {load_avg()}", flush=True)
    out: list = []
    try:
        for part in a.parts.split(","):
            PARTS[part](a, Cluster, out)
    finally:
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(out, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
