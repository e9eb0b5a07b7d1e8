"""async_subgradient over MPI RMA windows: lost updates, PASSM ownership, busy host, consistent
snapshots, checkpoint state; end-to-end runs of every method and of the ddp baseline."""
import time

import numpy as np
import pytest

from conftest import run_mpi


def _build(comm, solver_name, solver_opts, run_opts=None, width=4, problem="digits", problem_opts=None):
    """A run of a solver on digits with a small CNN, assembled by the run builder (no result file)."""
    from mpiopt.runner import build_run, resolve_spec
    values = [("problem.width", width, "test")]
    values += [(f"problem.{k}", v, "test") for k, v in (problem_opts or {}).items()]
    values += [(f"solver.{k}", v, "test") for k, v in solver_opts.items()]
    values += [(f"run.{k}", v, "test") for k, v in (run_opts or {}).items()]
    return build_run(resolve_spec(solver_name, problem, values, default_out=False), comm, quiet=True)


def _solver(comm, method, **solver_opts):
    return _build(comm, "async_subgradient", {"method": method, **solver_opts}).solver


@pytest.mark.mpi(ranks=3, timeout=90)
def test_accumulate_and_locked_writes_lose_no_update():
    from mpi4py import MPI
    from mpiopt.comm import Comm
    from mpiopt.comm.shared_model import Control, HostedVector, UPDATES, SAMPLES
    c = Comm(MPI.COMM_WORLD)
    R, n = 150, 5000
    vec = HostedVector(c, n, shared=False)
    ctl = Control(c, shared=False)
    ones = np.ones(n, np.float32)
    for _ in range(R):                        # HW: lock-free element-atomic adds from every rank
        vec.add(ones)
        ctl.count_update(7)
    word = HostedVector(c, 1, shared=True)
    v = np.empty(1, np.float32)
    for _ in range(40):                       # ASSM: read-modify-write under the CAS lock
        with ctl.writing(consistent=True, locked=True):
            word.read(v)
            word.win.put(0, v + 1)
    c.Barrier()
    if c.rank == 0:
        assert (vec.win.local == R * c.size).all()
        assert ctl.win.local[UPDATES] == R * c.size and ctl.win.local[SAMPLES] == 7 * R * c.size
        assert word.win.local[0] == 40 * c.size
    c.Barrier()
    word.free(); ctl.free(); vec.free()


@pytest.mark.mpi(ranks=3, timeout=120)
def test_hw_plain_writes_lose_updates_atomic_and_locked_writes_do_not():
    """hw (plain get-add-put, no atomics) loses concurrent updates and its write counter sees it;
    atomic writes and writes under the lock lose none. Reads under the lock never overlap a write."""
    from mpi4py import MPI
    from mpiopt.comm import Comm
    from mpiopt.comm.shared_model import Control, HostedModel
    c = Comm(MPI.COMM_WORLD)
    n, R = 100000, 60
    out = {}
    for name, kw in (("plain", dict(writes="plain")), ("atomic", dict(writes="atomic")),
                     ("locked", dict(writes="plain", lock_reads=True, lock_writes=True))):
        ctl = Control(c, shared=True)
        m = HostedModel(c, n, ctl, shared=True, **kw)
        ones, x = np.ones(n, np.float32), np.empty(n, np.float32)
        c.Barrier()
        for _ in range(R):
            m.read(x)
            m.write(ones, 0, n, 1)
        c.Barrier()
        made = c.size * R
        lost = int(c.allreduce_scalar(float(made - m.applied()) if c.rank == 0 else 0.0))
        x = m.gather()
        overlapped = int(c.allreduce_scalar(float(m.overlaps.overlapped)))
        if c.rank == 0:
            assert ctl.counters() == (made, made)
            out[name] = (lost, int(made - x.min()), overlapped)
        c.Barrier()
        m.free(); ctl.free()
    if c.rank == 0:
        assert out["atomic"][:2] == (0, 0) and out["locked"] == (0, 0, 0), out
        lost, worst, _ = out["plain"]
        assert lost > 0 and worst > 0, out                 # 3 ranks racing on 2 cores: some writes overwritten


def test_background_evaluation_keeps_the_snapshot_period():
    """Evaluating a snapshot must not hold up the snapshot rank: submit returns at once, results
    come back in order."""
    from mpiopt.solvers.async_subgradient.host import BackgroundEvaluator

    class Model:
        flat_np = np.zeros(3, np.float32)

    def slow(model):
        time.sleep(0.2)
        return (float(model.flat_np[0]), 0.0, 0.0, 0.0)

    ev = BackgroundEvaluator(slow, Model())
    t = time.perf_counter()
    for i in range(3):
        ev.submit(i, np.full(3, i, np.float32))
    assert time.perf_counter() - t < 0.1
    done = ev.finished(wait=True)
    assert [tag for tag, _, _ in done] == [0, 1, 2] and [r[0] for _, r, _ in done] == [0.0, 1.0, 2.0]
    assert all(secs >= 0.19 for _, _, secs in done)
    ev.close()


@pytest.mark.mpi(ranks=3, timeout=90)
def test_default_methods_are_the_papers():
    """hw: plain writes; assm: reads and writes under the lock; passm: blocks balanced by count."""
    from mpi4py import MPI
    from mpiopt.comm import Comm
    c = Comm(MPI.COMM_WORLD)
    hw = _solver(c, "hw")
    assert hw.model.writes == "plain" and not hw.model.lock_reads and not hw.model.lock_writes
    hw.free()
    assm = _solver(c, "assm")
    assert assm.model.lock_reads and assm.model.lock_writes
    assm.free()
    p = _solver(c, "passm")
    sizes = [b - a for a, b in p.model.ranges]
    assert max(sizes) - min(sizes) <= 1
    p.free()


@pytest.mark.mpi(ranks=3, timeout=90)
def test_passm_blocks_change_only_by_their_owner():
    from mpi4py import MPI
    from mpiopt.comm import Comm
    from mpiopt.comm.shared_model import BlockVector
    c = Comm(MPI.COMM_WORLD)
    # plumbing: every rank owns one block and adds 1 in place R times while reading the others
    ranges = [(0, 1000), (1000, 1500), (1500, 4000)]
    bv = BlockVector(c, 4000, ranges, owners=[0, 1, 2], shared=True)
    buf = np.zeros(4000, np.float32)
    for _ in range(60):
        with bv.writing() as mine:
            mine += 1
        bv.read_others(buf)
    c.Barrier()
    bv.read_all(buf, consistent=True)
    assert (buf == 60).all() and bv.ver.local[0] == 120
    c.Barrier()
    bv.free()
    # the solver: only worker 1 trains; x changes inside its block and nowhere else
    s = _solver(c, "passm", momentum=0.5)
    w = s.worker
    x0 = s.model.gather()
    if c.rank == 1:
        for _ in range(3):
            w.step()
        assert w.k == 3 and np.abs(w.u).sum() > 0
    if c.rank == 2:
        assert w.k == 0 and not w.u.any()
    c.Barrier()
    x1 = s.model.gather()
    lo, hi = c.bcast_obj((w.lo, w.hi) if c.rank == 1 else None, root=1)
    if c.rank == 0:
        changed = np.flatnonzero(x1 != x0)
        assert changed.size > 0 and changed.min() >= lo and changed.max() < hi
        assert (lo, hi) == s.model.ranges[0] and s.model.owners == [1, 2]
    assert s.lost_updates() == 0
    s.free()


@pytest.mark.mpi(ranks=3, timeout=90)
def test_busy_window_host_does_not_stall_reads_or_writes():
    from mpi4py import MPI
    from mpiopt.comm import Comm
    from mpiopt.comm.shared_model import BlockVector, Control, HostedVector
    c = Comm(MPI.COMM_WORLD)
    n = 20000
    vec = HostedVector(c, n, shared=False)
    ctl = Control(c, shared=False)
    bv = BlockVector(c, n, [(0, n // 2), (n // 2, n)], owners=[0, 1], shared=False)
    c.Barrier()
    if c.rank == 0:                          # hosts the vector, the control words and block 0
        t = time.perf_counter()
        a = np.random.default_rng(0).random((300, 300))
        while time.perf_counter() - t < 1.0:  # 1 s of computation outside MPI
            a = a @ a
            a /= np.abs(a).max()
    else:
        x = np.empty(n, np.float32)
        d = np.full(n, 0.5, np.float32)
        worst = 0.0
        t_end = time.perf_counter() + 1.0
        while time.perf_counter() < t_end:
            t1 = time.perf_counter()
            vec.read(x)
            with ctl.writing(consistent=True, locked=True):
                vec.add(d)
            ctl.count_update(1)
            bv.read_block(0, x[: n // 2], consistent=True)
            worst = max(worst, time.perf_counter() - t1)
        assert worst < 0.3, f"an operation waited {worst:.2f}s for a busy host"
    c.Barrier()
    bv.free(); ctl.free(); vec.free()


@pytest.mark.mpi(ranks=3, timeout=90)
def test_consistent_snapshots_never_mix_versions():
    from mpi4py import MPI
    from mpiopt.comm import Comm
    from mpiopt.comm.shared_model import BlockVector, Control, HostedVector
    c = Comm(MPI.COMM_WORLD)
    n = 200000
    vec = HostedVector(c, n, shared=True)
    ctl = Control(c, shared=True)
    bv = BlockVector(c, 2 * n, [(0, n), (n, 2 * n)], owners=[1, 2], shared=True)
    stop = Control(c, shared=True)            # word 0 of another control window: writers stop when set
    c.Barrier()
    if c.rank == 0:
        mixed_hosted = mixed_block = 0
        seen = set()
        part = np.empty(n, np.float32)
        for _ in range(25):
            with ctl.paused():                # pause-flag protocol
                snap = vec.host_copy()
            mixed_hosted += snap.min() != snap.max()
            seen.add(float(snap[0]))
            for j in range(2):                # per-block version words
                bv.read_block(j, part, consistent=True)
                mixed_block += part.min() != part.max()
            time.sleep(0.01)
        stop.write(0, 1)
        assert mixed_hosted == 0 and mixed_block == 0
        assert len(seen) > 3                  # the writers really were writing meanwhile
    else:
        ones = np.ones(n, np.float32)
        while stop.read(0) == 0:
            with ctl.writing(consistent=True, locked=False):
                vec.add(ones)                 # +1 everywhere: a consistent copy is constant
            with bv.writing() as mine:        # a slow in-place update: torn unless checked
                for q in range(0, n, n // 4):
                    mine[q:q + n // 4] += 1
                    time.sleep(2e-4)
    c.Barrier()
    stop.free(); bv.free(); ctl.free(); vec.free()


@pytest.mark.mpi(ranks=3, timeout=120)
@pytest.mark.parametrize("method", ["hw", "passm"])
def test_checkpoint_state_restores_parameters_momentum_counters_rng(method):
    from mpi4py import MPI
    from mpiopt.comm import Comm
    from mpiopt.io.checkpoint import CheckpointManager, load_checkpoint
    c = Comm(MPI.COMM_WORLD)
    s = _solver(c, method, sampling="shuffle")
    if s.is_worker:
        for _ in range(3):
            s.worker.step()
    c.Barrier()
    state = s.state_dict()
    folder = c.bcast_obj(__import__("tempfile").mkdtemp() if c.rank == 0 else None)
    if c.rank == 0:                           # through a real checkpoint file
        CheckpointManager(folder).save(6, {"solver": "async_subgradient", "problem": "digits"}, state)
    c.Barrier()
    back = load_checkpoint(CheckpointManager(folder).latest(), "async_subgradient", "digits").state
    t = _solver(c, method, sampling="shuffle")
    sw, tw = s.worker, t.worker
    assert tw.k == 0 and not tw.u.any()
    t.load_state_dict(back)
    assert tw.k == sw.k and np.array_equal(tw.u, sw.u) and tw.alpha == sw.alpha
    assert tw.rng.bit_generator.state == sw.rng.bit_generator.state and tw.perm_pos == sw.perm_pos
    assert np.array_equal(tw.perm, sw.perm)
    xs, xt = s.model.gather(), t.model.gather()
    assert t.counters() == s.counters() == (6, 6 * 64)
    if c.rank == 0:
        assert np.array_equal(xs, xt) and not np.array_equal(xs, s.flat.flat_np)
    if s.is_worker:                           # the restored worker continues exactly as the original
        a, b = sw.sample(), tw.sample()
        assert np.array_equal(a, b)
    assert t.lost_updates() == 0
    s.free(); t.free()


@pytest.mark.mpi(ranks=2, timeout=240)
def test_each_method_decreases_the_loss_on_digits_at_2_ranks():
    from mpi4py import MPI
    from mpiopt.comm import Comm
    c = Comm(MPI.COMM_WORLD)
    for method in ("sgd", "hw", "assm", "passm"):
        run = _build(c, "async_subgradient", {"method": method, "max_epochs": 5},
                     {"snapshot_every": 0.5, "seed": 3}, width=8)
        res, s = run.execute(), run.solver
        assert res.status == 1 and res.epochs >= 5 and res.lost_updates == 0, method
        assert res.test_accuracy > 0.6, (method, res.test_accuracy)
        summary = res.extra_groups["summary"]
        assert summary["method"] == method and summary["updates"] == res.nit
        assert res.extra_groups["workers"]["rank1"]["k"] == res.nit          # one worker at 2 ranks
        if c.rank == 0:
            f = res.history["objective"]
            assert f[-1] < 0.6 * f[0], (method, f)
            assert s.n_snapshots == len(f) >= 2


@pytest.mark.mpi(ranks=2, timeout=240)
def test_ddp_baseline_trains_and_is_reproducible():
    from mpi4py import MPI
    from mpiopt.comm import Comm
    c = Comm(MPI.COMM_WORLD)
    xs = []
    for _ in range(2):
        run = _build(c, "ddp", {"max_epochs": 8}, {"snapshot_every": 0.5, "seed": 3}, width=8)
        res = run.execute()
        assert res.status == 1 and res.test_accuracy > 0.6 and res.epochs >= 8
        if c.rank == 0:
            f = res.history["objective"]
            assert f[-1] < 0.6 * f[0], f
        xs.append(res.x)
    assert np.array_equal(xs[0], xs[1])                                  # deterministic for a seed


@pytest.mark.mpi(ranks=2, timeout=180)
def test_resnet18_on_cifar_batches_with_local_batchnorm():
    """The paper's network on CIFAR-10-format files with solver.bn=local: BatchNorm statistics stay
    local to the worker and the snapshot rank recalibrates them for the snapshot's own weights
    (shared statistics: tests/test_async_bn.py)."""
    import tempfile
    from mpi4py import MPI
    from mpiopt.comm import Comm
    from mpiopt.data.cifar import write_batch
    c = Comm(MPI.COMM_WORLD)
    folder = c.bcast_obj(tempfile.mkdtemp() if c.rank == 0 else None)
    if c.rank == 0:
        rng = np.random.default_rng(0)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            write_batch(f"{folder}/{name}", rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 16))
    c.Barrier()
    run = _build(c, "async_subgradient", {"method": "hw", "max_epochs": 1, "batch_size": 16, "bn_batches": 2,
                                          "bn": "local"},
                 {"snapshot_every": 0}, width=4, problem="cifar10", problem_opts={"path": folder})
    s = run.solver
    assert s.flat.n > 10000 and len(s.flat.slots) == 62
    res = run.execute()
    assert res.status == 1 and res.lost_updates == 0 and res.nit >= 5 and np.isfinite(res.fun)
    if c.rank == 0:                            # snapshot model: statistics of the recalibration batches
        bn = s.host.eval_model.module.bn1
        assert int(bn.num_batches_tracked) == 2 and float(bn.running_var.mean()) != 1.0
    else:                                      # the worker's own statistics moved with its batches
        assert int(s.flat.module.bn1.num_batches_tracked) == res.nit


# -- end to end through the CLI --------------------------------------------------------------------
def test_demo_checkpoints_and_resumes_and_bad_input_exits_2(tmp_path):
    """The demo (passm, digits, 3 ranks) with checkpoints, then resumed to more epochs."""
    from mpiopt.io import load_result
    ck = tmp_path / "ck"
    base = ["async_subgradient", "--checkpoint-dir", ck, "--checkpoint-every", "40", "--set",
            "solver.snapshot_mode=consistent", "run.snapshot_every=0.5"]
    p = run_mpi([*base, "solver.max_epochs=3", "--out", tmp_path / "a.h5"], n=3, timeout=120)
    assert p.returncode == 0 and "status: max_iter" in p.output, p.output
    assert (ck / "latest").exists()
    a = load_result(str(tmp_path / "a.h5"))
    assert a.config["solver"]["method"] == "passm" and a.config["problem"]["model"] == "cnn"
    assert a.groups["snapshots"].shape[0] == len(a.history["objective"])   # one saved vector per snapshot
    assert np.array_equal(a.groups["snapshots"][-1], a.solution["x"])
    w = a.groups["workers"]["rank1"]
    assert w["k"] > 0 and set(w) >= {"time", "train_loss", "updates_per_s", "comm_fraction", "epoch"}
    assert a.history["test_accuracy"][-1] > a.history["test_accuracy"][0]
    p = run_mpi([*base, "solver.max_epochs=5", "--resume", "latest", "--out", tmp_path / "b.h5"], n=3, timeout=120)
    assert p.returncode == 0 and "resumed from" in p.output, p.output
    b = load_result(str(tmp_path / "b.h5"))
    assert b.history["epoch"][-1] >= 5 and b.history["epoch"][0] == 0      # history carried over
    assert b.history["iteration"][-1] > a.history["iteration"][-1] - 40 and b.groups["summary"]["lost_updates"] == 0
    p = run_mpi(["async_subgradient", "--problem", "mnist", "--out", tmp_path / "c.h5"], n=2, timeout=60)
    assert p.returncode == 2 and p.output.count("problem.path") == 1, p.output
