"""numba sources of the sparse minibatch gradient on CSR data (call them through
:func:`mpiopt.kernels.get`).

scipy's A[idx] @ x and A[idx].T @ c, in the same float operations and order (csr_matvec: a running
sum from 0.0 per row; csc_matvec of the transpose: y[j] += a * c row by row into zeros), without the
row copy and the dense result: the gradient touches only the batch's columns."""
from __future__ import annotations


def csr_rows_dot(indptr, indices, data, rows, x, out):
    """out[r] = A[rows[r]] . x for CSR A (sum in stored order, from 0.0)."""
    for r in range(rows.size):
        i = rows[r]
        s = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            s += data[k] * x[indices[k]]
        out[r] = s


def csr_rows_scatter(indptr, indices, data, rows, coef, g, mark, touched, prev, div):
    """The sparse mean gradient into g, which is zero outside ``touched[:prev]`` (the last call's
    columns): those are zeroed first, then g[j] += A[rows[r], j] * coef[r] for every stored entry,
    rows in order; columns seen for the first time (mark[j] == 0) are marked and listed in
    ``touched``; finally g[j] /= div on them. Returns the number of distinct columns touched."""
    for c in range(prev):
        j = touched[c]
        g[j] = 0.0
        mark[j] = 0
    cnt = 0
    for r in range(rows.size):
        i = rows[r]
        c = coef[r]
        for k in range(indptr[i], indptr[i + 1]):
            j = indices[k]
            g[j] += data[k] * c
            if mark[j] == 0:
                mark[j] = 1
                touched[cnt] = j
                cnt += 1
    for c in range(cnt):
        j = touched[c]
        g[j] = g[j] / div
    return cnt


#: compiled entry points and the helpers they call (compiled only as callees)
KERNELS = (csr_rows_dot, csr_rows_scatter)
HELPERS = ()
