"""``async_subgradient``: asynchronous stochastic subgradient training of a torch model.

Every worker c runs Algorithm 1 of Kungurtsev, Egan, Chatterjee and Alistarh (2019) on one shared
parameter vector x::

    k_c = 0; u = 0
    loop until stop:
        xhat = read(x)                      # hw: lock-free; assm: under the lock; passm: own block local
        B    = minibatch drawn uniformly from all training data
        g    = subgradient of the batch loss at xhat (passm: own block I^c only)
        g   += wd * xhat + l1 * sign(xhat)
        u    = m * u + g;  k_c += 1
        x   += -(1 - m) * alpha_c * gamma / sqrt(k_c) * u

Modules: :mod:`.worker` (Algorithm 1 and its telemetry), :mod:`.host` (the snapshot rank and the
decision to stop or checkpoint), :mod:`.solver` (options, roles, collective phases, result). The MPI
plumbing of the shared model is :mod:`mpiopt.comm.shared_model`.
"""
from .solver import METHODS, AsyncSubgradient

__all__ = ["METHODS", "AsyncSubgradient"]
