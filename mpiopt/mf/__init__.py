"""Shared matrix-factorization machinery of the ``hamsi``, ``mf_gd`` and ``dsgd`` solvers.

- :mod:`.cuts`     balanced row/column cuts, stratum of a block, the cyclic stratum order.
- :mod:`.kernels`  one rating block: residuals, loss, gradient (sparse products, no Python loops).
- :mod:`.lbfgs`    the compact (Byrd-Nocedal-Schnabel) L-BFGS inverse Hessian on distributed slices.
- :mod:`.init`     rank-count independent random factors and factors read from .npz/.h5 files.
- :mod:`.model`    ``DistMF``: the block grid over MPI ranks, factors, ring fetches of column
                   blocks, stratum gradients, RMSE, gather/scatter in global order.
"""
