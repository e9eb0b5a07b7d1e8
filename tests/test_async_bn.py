"""async_subgradient with BatchNorm: shared running statistics (solver.bn=shared) in the shared state
against local ones, their snapshots, checkpoints and the offline evaluation of stored snapshots."""
import numpy as np
import pytest
from conftest import run_mpi


def _build(comm, solver_opts, run_opts=None, width=4, model="cnn_bn"):
    from mpiopt.runner import build_run, resolve_spec
    values = [("problem.width", width, "test"), ("problem.model", model, "test")]
    values += [(f"solver.{k}", v, "test") for k, v in solver_opts.items()]
    values += [(f"run.{k}", v, "test") for k, v in (run_opts or {}).items()]
    return build_run(resolve_spec("async_subgradient", "digits", values, default_out=False), comm, quiet=True)


def _comm():
    from mpi4py import MPI

    from mpiopt.comm import Comm
    return Comm(MPI.COMM_WORLD)


@pytest.mark.mpi(ranks=3, timeout=150)
@pytest.mark.parametrize("method,extra", [("hw", {"hw_writes": "atomic"}), ("assm", {}), ("passm", {})])
def test_shared_statistics_are_the_initial_ones_plus_every_workers_increments(method, extra):
    """Every worker's forward pass moves the statistics it read; its change (momentum * (batch -
    read)) is added to the shared copy. With writes that lose nothing the shared statistics are the
    initial ones plus the sum of all workers' increments, and every worker reads the same values."""
    c = _comm()
    s = _build(c, {"method": method, "bn": "shared", **extra}).solver
    w, flat = s.worker, s.flat
    assert flat.n_stats == 24 and s.shared_stats and s.model.n_stats == 24
    s0 = flat.stats_np.astype(np.float64).copy()
    total = np.zeros(flat.n_stats)
    c.Barrier()
    if s.is_worker:
        for _ in range(12):
            w.step()
            total += w.stats_delta
        assert np.abs(total).sum() > 0
    c.Barrier()
    totals = c.gather_obj(total)
    shared = s.model.gather_stats()
    if c.rank == 0:
        expect = s0 + sum(totals)
        assert np.allclose(shared, expect, rtol=0, atol=2e-5), np.abs(shared - expect).max()
        assert not np.allclose(shared, s0, atol=1e-3)
    if s.is_worker:                            # what a worker reads is the shared state
        s.model.read(flat.state_np)
    seen = c.allgather_obj(flat.stats_np.copy() if s.is_worker else None)
    ref = c.bcast_obj(shared)
    assert all(np.array_equal(v, ref) for v in seen if v is not None)
    assert s.lost_updates() == 0
    s.free()


@pytest.mark.mpi(ranks=3, timeout=240)
def test_shared_statistics_equal_on_every_worker_and_in_the_snapshot_local_ones_differ():
    """After a run: with bn=shared every worker holds the shared statistics after its read, they are
    the result's and the last snapshot's, and the snapshot evaluation used them (no recalibration);
    with bn=local (the solver before shared statistics) each worker kept its own, and they differ."""
    c = _comm()
    seen = {}
    for bn in ("shared", "local"):
        run = _build(c, {"method": "hw", "bn": bn, "max_epochs": 3}, {"snapshot_every": 0.2, "seed": 1})
        res, s = run.execute(), run.solver
        assert res.status == 1 and np.isfinite(res.fun)
        stats = c.allgather_obj(s.flat.stats_np.copy() if s.is_worker else None)   # each worker's model
        seen[bn] = [v for v in stats if v is not None]
        if bn == "shared":
            final = res.solution["bn_stats"]
            assert final.shape == (24,) and res.extra_groups["summary"]["n_stats"] == 24
            if c.rank == 0:
                ev = s.host.eval_model
                assert np.array_equal(ev.stats_np, final)         # the final evaluation used them
                assert int(ev.module[1].num_batches_tracked) == 0  # ... as they were: no recalibration
        else:
            assert "bn_stats" not in res.solution
            assert res.extra_groups["summary"]["read_bytes_per_update"] == 4 * s.flat.n
    assert len(seen["shared"]) == 2 and len(seen["local"]) == 2
    assert np.array_equal(seen["shared"][0], seen["shared"][1])
    assert not np.allclose(seen["local"][0], seen["local"][1], atol=1e-4)


@pytest.mark.mpi(ranks=3, timeout=150)
@pytest.mark.parametrize("method", ["hw", "passm"])
def test_checkpoint_restores_the_shared_statistics(method):
    import tempfile

    from mpiopt.errors import CheckpointError
    from mpiopt.io.checkpoint import CheckpointManager, load_checkpoint
    c = _comm()
    s = _build(c, {"method": method}).solver               # bn=shared is the default
    if s.is_worker:
        for _ in range(4):
            s.worker.step()
    c.Barrier()
    state = s.state_dict()
    folder = c.bcast_obj(tempfile.mkdtemp() if c.rank == 0 else None)
    if c.rank == 0:
        CheckpointManager(folder).save(8, {"solver": "async_subgradient", "problem": "digits"}, state)
    c.Barrier()
    back = load_checkpoint(CheckpointManager(folder).latest(), "async_subgradient", "digits").state
    t = _build(c, {"method": method}).solver
    fresh = t.model.gather_stats()
    t.load_state_dict(back)
    a, b = s.model.gather_stats(), t.model.gather_stats()
    if c.rank == 0:
        assert np.array_equal(a, b) and not np.array_equal(a, fresh)
    if t.is_worker:
        t.model.read(t.flat.state_np)
    got = c.allgather_obj(t.flat.stats_np.copy() if t.is_worker else None)
    ref = c.bcast_obj(a)
    assert all(np.array_equal(v, ref) for v in got if v is not None)
    u = _build(c, {"method": method, "bn": "local"}).solver    # a local run ignores shared statistics
    u.load_state_dict(back)
    assert u.model.n_stats == 0 and u.counters() == s.counters()
    del back["bn_stats"]                                        # a local run's checkpoint into a shared run
    with pytest.raises(CheckpointError, match="bn_stats"):
        t.load_state_dict(back)
    s.free(); t.free(); u.free()


# -- end to end through the CLI --------------------------------------------------------------------
def test_shared_statistics_snapshots_resume_and_offline_evaluation(tmp_path):
    """cnn_bn, 3 ranks, bn=shared (default): /snapshot_stats beside /snapshots, the final statistics
    in /solution, a checkpoint with them and a resume; evaluating the stored snapshots offline gives
    the in-run figures exactly; a run with snapshot_eval=off is evaluated afterwards with
    mpiopt-report --evaluate."""
    from mpiopt.io import load_result
    from mpiopt.io.checkpoint import CheckpointManager, load_checkpoint
    from mpiopt.solvers.async_subgradient.offline import evaluate_file
    ck = tmp_path / "ck"
    base = ["async_subgradient", "--problem", "digits", "--set", "problem.model=cnn_bn", "problem.width=4", "solver.method=hw",
            "run.snapshot_every=0.3"]
    p = run_mpi([*base, "solver.max_epochs=3", "--checkpoint-dir", ck, "--checkpoint-every", "30",
                 "--out", tmp_path / "a.h5"], n=3, timeout=150)
    assert p.returncode == 0 and "status: max_iter" in p.output, p.output
    a = load_result(str(tmp_path / "a.h5"))
    assert a.config["solver"]["bn"] == "shared" and a.groups["summary"]["bn"] == "shared"
    snaps, stats = a.groups["snapshots"], a.groups["snapshot_stats"]
    assert stats.shape == (snaps.shape[0], 24) and snaps.shape[0] == len(a.history["test_accuracy"])
    assert np.array_equal(stats[-1], a.solution["bn_stats"]) and not np.array_equal(stats[0], stats[-1])
    state = load_checkpoint(CheckpointManager(str(ck)).latest(), "async_subgradient", "digits").state
    assert np.asarray(state["bn_stats"]).shape == (24,) and not np.array_equal(state["bn_stats"], stats[0])
    rows = evaluate_file(str(tmp_path / "a.h5"))
    assert [r["snapshot"] for r in rows] == list(range(snaps.shape[0])) and rows[0]["bn"] == "shared"
    assert [r["test_accuracy"] for r in rows] == list(a.history["test_accuracy"])
    assert [r["test_loss"] for r in rows] == list(a.history["test_loss"])
    p = run_mpi([*base, "solver.max_epochs=5", "--checkpoint-dir", ck, "--resume", "latest",
                 "--out", tmp_path / "b.h5"], n=3, timeout=150)
    assert p.returncode == 0 and "resumed from" in p.output, p.output
    b = load_result(str(tmp_path / "b.h5"))
    assert b.history["epoch"][-1] >= 5 and b.groups["snapshot_stats"].shape[1] == 24
    # evaluation off during the run, afterwards from the file
    p = run_mpi([*base, "solver.max_epochs=2", "solver.snapshot_eval=off", "--out", tmp_path / "c.h5"], n=3,
                timeout=150)
    assert p.returncode == 0, p.output
    h = load_result(str(tmp_path / "c.h5")).history
    assert np.isnan(h["test_accuracy"][:-1]).all() and np.isfinite(h["test_accuracy"][-1]) and len(h["epoch"]) >= 2
    p = run_mpi(["--evaluate", tmp_path / "c.h5", "-o", tmp_path / "rep"], n=1, module="mpiopt.report", timeout=120)
    assert p.returncode == 0, p.output
    lines = (tmp_path / "rep" / "evaluation-c.csv").read_text().splitlines()
    assert lines[0].startswith("snapshot,iteration") and len(lines) == 1 + len(h["epoch"])
    last = dict(zip(lines[0].split(","), lines[-1].split(",")))
    assert float(last["test_accuracy"]) == h["test_accuracy"][-1] and last["bn"] == "shared"
    assert all(0 < float(dict(zip(lines[0].split(","), r.split(",")))["test_accuracy"]) <= 1 for r in lines[1:])
    p = run_mpi([*base, "solver.snapshot_eval=off", "solver.target_accuracy=0.9", "--out", tmp_path / "d.h5"],
                n=1, timeout=60)
    assert p.returncode == 2 and p.output.count("solver.snapshot_eval=off") == 1, p.output


PLUGIN = '''
from mpiopt import register_problem
from mpiopt.problems.torch_models import Digits


@register_problem("digits_cma_bn")
class DigitsCmaBn(Digits):
    summary = "digits with cnn_bn whose BatchNorm layers keep a cumulative average (momentum=None)"

    def build_model(self):
        import torch
        model = super().build_model()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        return model
'''


def test_one_rank_shared_statistics_and_bad_batchnorm_momentum(tmp_path):
    """One rank (host and worker in one process) keeps the statistics in its window like the others;
    a BatchNorm with momentum=None (cumulative average over a local count) is refused with bn=shared."""
    from mpiopt.io import load_result
    p = run_mpi(["async_subgradient", "--problem", "digits", "--set", "problem.model=cnn_bn", "problem.width=4",
                 "solver.method=sgd", "solver.max_epochs=2", "run.snapshot_every=0.2", "--out", tmp_path / "a.h5"],
                n=1, timeout=120)
    assert p.returncode == 0, p.output
    a = load_result(str(tmp_path / "a.h5"))
    assert np.array_equal(a.groups["snapshot_stats"][-1], a.solution["bn_stats"])
    assert not np.array_equal(a.groups["snapshot_stats"][0], a.solution["bn_stats"])
    plugin = tmp_path / "cma_bn.py"
    plugin.write_text(PLUGIN)
    base = ["async_subgradient", "--plugin", plugin, "--problem", "digits_cma_bn", "--set", "problem.model=cnn_bn",
            "problem.width=4", "solver.max_epochs=1", "run.snapshot_every=0"]
    p = run_mpi([*base, "--out", tmp_path / "b.h5"], n=1, timeout=120)
    assert p.returncode == 2 and p.output.count("momentum=None") == 1, p.output
    p = run_mpi([*base, "solver.bn=local", "--out", tmp_path / "c.h5"], n=1, timeout=120)
    assert p.returncode == 0, p.output
