"""Shared matrix-factorization machinery of the ``hamsi``, ``mf_gd`` and ``dsgd`` solvers.

- :mod:`.cuts`     balanced row/column cuts, stratum of a block, the cyclic stratum order.
- :mod:`.kernels`  one rating block: loss, gradient, squared errors (numpy reference versions kept).
- :mod:`.fused`    the compiled (numba) block kernels, set-up sorts and axpy.
- :mod:`.lbfgs`    the compact (Byrd-Nocedal-Schnabel) L-BFGS inverse Hessian on distributed slices.
- :mod:`.init`     rank-count independent random factors and factors read from .npz/.h5 files.
- :mod:`.model`    ``DistMF``: the block grid over MPI ranks, factors, ring fetches of column
                   blocks, stratum gradients, RMSE, gather/scatter in global order; ``predict``.

The solvers built on it live in :mod:`mpiopt.solvers` (``mf_base``, ``hamsi``, ``mf_gd``, ``dsgd``).
"""
