"""level_bundle over MPI: master rank 0, oracle ranks, STOP/POLL protocol, bounds window, CLI runs."""
import textwrap

import h5py
import numpy as np
import pytest

from conftest import run_mpi

POLY = ["--problem", "polyhedral", "--set", "problem.n=12", "problem.m=6", "problem.rows=20"]


def read(path):
    with h5py.File(path, "r") as f:
        h = {k: f["history"][k][()] for k in f["history"]}
        return dict(f.attrs), h, f["solution/x"][()], f["solution/oracle_calls"][()]


@pytest.mark.parametrize("variant", ["sync", "upper_model", "coordination"])
def test_cli_variants_bracket_fstar(tmp_path, variant):
    out = tmp_path / "r.h5"
    p = run_mpi(["level_bundle", *POLY, f"solver.variant={variant}", "problem.delay_mean=0.003",
                 "problem.delay_spread=3", "problem.delay_noise=1.0", "--out", out, "-q"], n=4, timeout=120)
    assert p.returncode == 0, p.output
    attrs, h, x, calls = read(out)
    fstar = attrs["reference_objective"]
    assert attrs["status"] == "converged" and "stop rule: gap" in attrs["message"]
    assert np.all(h["lower_bound"] <= fstar + 1e-7) and h["upper_bound"][-1] >= fstar - 1e-7
    assert np.all(np.diff(h["lower_bound"]) >= 0) and np.all(np.diff(h["upper_bound"]) <= 0)
    assert h["certified_gap"][-1] <= 1e-6 * abs(h["upper_bound"][-1]) + 1e-12
    assert calls.sum() == h["oracle_calls"][-1] and calls.min() >= 1
    assert 0 < h["master_busy"][-1] < 1
    if variant == "sync":
        assert calls.min() == calls.max()
    # the resolved per-variant defaults are recorded (the config says alpha = none)
    with h5py.File(out, "r") as f:
        assert f["oracle_calls"].shape == (len(h["iteration"]), 6)
        g = f["level_bundle"]
        resolved = {k: g.attrs[k] if k in g.attrs else g[k][()] for k in ("alpha", "qp_lazy")}
    assert resolved["alpha"] == {"coordination": 0.95}.get(variant, 0.5)
    assert bool(resolved["qp_lazy"]) == (variant == "coordination")


def test_demo_runs_at_four_ranks_and_one_rank(tmp_path):
    p = run_mpi(["level_bundle"], n=4, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.output
    assert "status: converged" in p.stdout and "objective - F*" in p.stdout
    one = run_mpi(["level_bundle", *POLY, "solver.variant=sync", "--out", tmp_path / "one.h5", "-q"], n=1)
    assert one.returncode == 0, one.output
    attrs, h, _, calls = read(tmp_path / "one.h5")
    assert attrs["status"] == "converged" and calls.min() == calls.max()
    assert h["lower_bound"][-1] <= attrs["reference_objective"] + 1e-7 <= h["upper_bound"][-1] + 1e-7


def test_sync_resume_is_bit_identical(tmp_path):
    common = ["level_bundle", *POLY, "solver.variant=sync", "-q"]
    a = run_mpi([*common, "--out", tmp_path / "a.h5", "--checkpoint-dir", tmp_path / "ck",
                 "--checkpoint-every", "4"], n=3, timeout=120)
    assert a.returncode == 0, a.output
    ckpts = sorted(p.name for p in (tmp_path / "ck").glob("ckpt-*.h5"))
    assert ckpts
    b = run_mpi([*common, "--out", tmp_path / "b.h5", "--resume", tmp_path / "ck" / ckpts[0]], n=3, timeout=120)
    assert b.returncode == 0, b.output
    _, ha, xa, ca = read(tmp_path / "a.h5")
    attrs_b, hb, xb, cb = read(tmp_path / "b.h5")
    assert attrs_b["resumed_from"].endswith(ckpts[0])
    assert np.array_equal(xa, xb) and np.array_equal(ca, cb)
    assert np.array_equal(ha["upper_bound"], hb["upper_bound"]) and np.array_equal(ha["lower_bound"], hb["lower_bound"])


def test_failing_user_oracle_stops_every_rank(tmp_path):
    plugin = tmp_path / "failing.py"
    plugin.write_text(textwrap.dedent("""
        from mpiopt.problems.polyhedral import Polyhedral, PolyhedralOracle
        from mpiopt.registry import register_problem

        class Failing(PolyhedralOracle):
            calls = 0
            def __call__(self, z, eta):
                self.calls += 1
                if self.calls > 3:
                    raise ValueError("boom in user oracle")
                return super().__call__(z, eta)

        @register_problem("failing_poly")
        class FailingPoly(Polyhedral):
            def make_oracle(self, i):
                return Failing(*self.data[i]) if i == 1 else super().make_oracle(i)
    """))
    p = run_mpi(["level_bundle", "--plugin", plugin, "--problem", "failing_poly", "--set", "problem.m=4",
                 "solver.variant=coordination", "problem.delay_mean=0.01", "--out", tmp_path / "f.h5"],
                n=4, timeout=90)
    assert p.returncode == 1, p.output
    assert "oracle rank 2 failed" in p.stdout and "boom in user oracle" in p.stdout


def test_time_budget_with_slow_oracles_stops_cleanly(tmp_path):
    p = run_mpi(["level_bundle", *POLY, "solver.variant=upper_model", "problem.delay_mean=0.3",
                 "problem.delay_spread=4", "--max-time", "1.0", "--out", tmp_path / "t.h5", "-q"], n=3, timeout=90)
    assert p.returncode == 0, p.output
    attrs, h, _, _ = read(tmp_path / "t.h5")
    assert attrs["status"] == "max_time"
    assert h["lower_bound"][-1] <= attrs["reference_objective"] + 1e-7 <= h["upper_bound"][-1] + 1e-7


def test_too_many_ranks_is_an_input_error(tmp_path):
    p = run_mpi(["level_bundle", "--problem", "polyhedral", "--set", "problem.m=2", "--out", tmp_path / "x.h5"],
                n=4, timeout=60)
    assert p.returncode == 2 and "problem.m=2" in p.stderr, p.output


def test_inexact_mip_oracles_and_subgradient_baseline(tmp_path):
    p = run_mpi(["level_bundle", "--problem", "block_lp_dual", "--set", "problem.n=12", "problem.m=2",
                 "problem.block_size=8", "problem.integer=true", "solver.variant=coordination", "solver.rtol=1e-5",
                 "--out", tmp_path / "i.h5", "-q"], n=3, timeout=120)
    assert p.returncode == 0, p.output
    attrs, h, _, _ = read(tmp_path / "i.h5")
    assert attrs["status"] == "converged" and ("stop rule: gap" in attrs["message"] or "inexactness" in attrs["message"])
    assert np.all(h["lower_bound"] <= h["upper_bound"])
    s = run_mpi(["projected_subgradient", *POLY, "solver.max_iter=200", "--out", tmp_path / "s.h5", "-q"],
                n=3, timeout=120)
    assert s.returncode == 0, s.output
    attrs, h, _, calls = read(tmp_path / "s.h5")
    assert attrs["nit"] == 200 and calls.min() == calls.max() == 200
    assert h["lower_bound"][-1] <= attrs["reference_objective"] <= h["upper_bound"][-1]


@pytest.mark.mpi(ranks=[3], timeout=60)
def test_channel_stop_protocol_with_a_busy_worker_and_bounds_window():
    import time

    from mpi4py import MPI

    from mpiopt.comm import Comm
    from mpiopt.comm.master import EVAL, HEADER_ANSWER, STOP, MasterChannel, WorkerChannel
    from mpiopt.comm.rma import SeqlockRecord
    c = Comm(MPI.COMM_WORLD)
    n = 5
    rec = SeqlockRecord(c, ["iteration", "gap"], host=0)
    if c.rank == 0:
        rec.publish(iteration=7, gap=0.25)
        ch = MasterChannel(c, n, [1, 1])
        ch.send_point(0, 1, -1, 0.1, np.arange(n, dtype=float))
        ch.send_point(1, 1, -1, 0.1, np.arange(n, dtype=float))
        got = ch.wait_answers()
        while 0 not in got:
            got += ch.wait_answers()
        assert ch.answer(0)[HEADER_ANSWER + 3:].tolist() == (2 * np.arange(n)).tolist()
        ch.send_point(0, 2, -1, 0.1, np.ones(n))
        discarded = []
        ch.stop_all(on_discard=discarded.append)       # worker 1 (rank 2) is still sleeping
        assert 1 in discarded                           # its in-flight answer was awaited, then dropped
        assert not ch.busy.any() and all(r is None for r in ch.send_req)
    else:
        ch = WorkerChannel(c, n, 1)
        seen = []
        while True:
            kind, it, cid, eta, x = ch.recv()
            if kind == STOP:
                break
            assert kind == EVAL
            snap = rec.read()
            assert snap["iteration"] == 7 and snap["gap"] == 0.25
            if c.rank == 2:
                time.sleep(0.3)                         # busy when the master decides to stop
            buf = ch.answer_buffer()
            buf[:HEADER_ANSWER] = (it, cid, 0)
            buf[HEADER_ANSWER:HEADER_ANSWER + 3] = (c.rank - 1, 1.0, 1.0)
            buf[HEADER_ANSWER + 3:] = 2 * x
            ch.send_answer()
            seen.append(it)
        ch.finish()
        assert seen[0] == 1
    rec.free()


# -- start without a synchronous first round ----------------------------------------------------------
@pytest.mark.parametrize("variant,problem", [("coordination", ["--problem", "polyhedral", "--set", "problem.n=12"]),
                                             ("upper_model", ["--problem", "block_lp_dual", "--set", "problem.n=20",
                                                              "problem.block_size=10"])])
def test_async_start_on_real_ranks_moves_before_the_slowest_oracle(tmp_path, variant, problem):
    """solver.start=async with three oracle ranks of mean delays 1 : 3.2 : 10 (the slowest 0.5 s per
    call): the master's first new iterate is computed before the slowest oracle's first answer, f_up
    and f_low are infinite until that answer and bracket the known optimum from then on, and the run
    converges to the asked tolerance."""
    out = tmp_path / "a.h5"
    p = run_mpi(["level_bundle", *problem, "problem.m=3", f"solver.variant={variant}", "solver.start=async",
                 "problem.delay_mean=0.05", "problem.delay_spread=10", "--out", out, "-q"], n=4, timeout=240)
    assert p.returncode == 0, p.output
    attrs, h, _, calls = read(out)
    fstar = attrs["reference_objective"]
    assert attrs["status"] == "converged" and "stop rule: gap" in attrs["message"]
    with h5py.File(out, "r") as f:
        g = f["level_bundle"]
        first, start = g["first_move_oracle_calls"][()], g.attrs["start"]
    assert start == "async"
    assert first[2] == 0 and first[0] >= 1          # the slowest oracle (component 2) had not answered yet
    lo, up = h["lower_bound"], h["upper_bound"]
    fin = np.isfinite(lo)
    assert fin[-1] and np.all(np.isfinite(up) == fin)
    assert np.all(lo[fin] <= fstar + 1e-7) and np.all(up[fin] >= fstar - 1e-7)
    assert np.all(np.diff(lo[fin]) >= 0) and np.all(np.diff(up[fin]) <= 0)
    assert h["certified_gap"][-1] <= 1e-6 * max(1.0, abs(up[-1])) + 1e-12
    assert calls[0] > calls[2] >= 1


def test_async_start_needs_an_asynchronous_variant(tmp_path):
    p = run_mpi(["level_bundle", *POLY, "solver.start=async", "--out", tmp_path / "x.h5"], n=3, timeout=60)
    assert p.returncode == 2 and "solver.start=async needs an asynchronous variant" in p.stderr, p.output
