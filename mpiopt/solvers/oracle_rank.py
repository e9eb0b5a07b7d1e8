"""An oracle rank's role in the master/oracle methods: answer for the components it owns.

    loop:
        x, eta = next message from rank 0        STOP: leave; POLL: checkpoint/stop with every rank
        eta = min(eta, the master's freshest request)      (inexact oracles: on-demand accuracy)
        (fl, g, fu) of every owned component at x, emulated oracle time   (OracleBlock)
        send the answer                          an exception: report it, answer nothing more
"""
from __future__ import annotations

import traceback
from typing import Any, Protocol, Sequence

import numpy as np

from ..comm import Comm
from ..comm.master import HEADER_ANSWER, POLL, STOP, WorkerChannel
from ..problems.oracle import OracleBlock, OracleProblem


class OracleRankHost(Protocol):
    """What an oracle rank uses of its solver (a :class:`~mpiopt.solvers.master_oracle.MasterOracleSolver`)."""

    problem: OracleProblem
    comm: Comm
    owners: Sequence[np.ndarray]
    bounds: Any            # the bounds record rank 0 publishes (a SeqlockRecord)

    def apply_poll(self, iteration: int, checkpoint: bool, status: int) -> int | None: ...


def run_oracle_rank(solver: OracleRankHost) -> float:
    """Serve rank 0 until STOP (or a stop decided at a POLL); returns the seconds spent waiting."""
    p, comm = solver.problem, solver.comm
    mine = solver.owners[comm.rank - 1]
    ch = WorkerChannel(comm, p.n_vars, mine.size)
    block, setup_error = None, None
    try:
        block = OracleBlock(p, mine)
    except Exception as exc:  # noqa: BLE001 - reported to the master at the first point
        setup_error = f"{type(exc).__name__}: {exc}"
    failed = False
    while True:
        kind, it, cid, eta, x = ch.recv()
        if kind == STOP:
            break
        if kind == POLL:
            if solver.apply_poll(it, bool(cid), int(eta)) is not None:
                break
            continue
        if failed:               # already reported; answer nothing more useful
            ch.send_error(it, "oracle rank failed earlier")
            continue
        try:
            if setup_error:
                raise RuntimeError(setup_error)
            if not p.exact:      # on-demand accuracy: the freshest request from the bounds window
                eta = min(eta, solver.bounds.read()["eta"])
            buf = ch.answer_buffer()
            buf[:HEADER_ANSWER] = (it, cid, 0)
            block.answer(x, eta, buf[HEADER_ANSWER:].reshape(mine.size, 3 + p.n_vars))
            ch.send_answer()
        except Exception as exc:  # noqa: BLE001 - the master stops everyone cleanly
            failed = True
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            ch.send_error(it, f"{tb} (component(s) {mine.tolist()})")
    ch.finish()
    return ch.idle_seconds
