r"""Reduction kernels: per-channel partial summaries of an (A, C, B) input.

Two loop orders cover the three work shapes of the (A, C, B) view:

* **planes** (B large, NCHW): a grid of (C, splits) one-dimensional blocks.
  Block (c, s) walks channel c's flat index :math:`j = aB + b` from
  :math:`sT + t` in steps of :math:`T \cdot \mathrm{splits}`, so neighbouring
  threads read neighbouring addresses and a small C still fills the GPU.
* **rows** (small B: 2-D input, channels-last, many channels with tiny B):
  the input is an (A, K) matrix with :math:`K = CB` columns; a
  two-dimensional block has ``width`` threads across columns (coalesced) and
  ``height`` across rows, and the grid's y dimension splits the rows.

Each thread reduces its values in float64, whatever the input dtype: the
moments kernels apply Welford's
update to groups of four values (Chan's formula with :math:`n_b = 4`, which
keeps four loads in flight and amortises the division), the backward kernels
form :math:`\sum dy` and :math:`\sum dy\,(x - \mu)`.  The block then merges
its threads in float64 in shared memory and writes one partial per block and
column: ``part[s, c]`` (planes) or ``part[s, k]`` (rows), merged per channel
by :mod:`numbabn.cuda.finalize`.

float64 because float32 accumulators cannot hold the mean of offset data
finely enough: with them the variance of ``1e4 + N(0, 1)`` in float32 came
out 7e-5 relative off (the issue asks for 1e-5); the cost is a conversion and
a few float64 operations per value, which a data-centre GPU hides behind the
memory traffic.
"""
from numba import float64

from ._merge import advance, block_merge, block_sum, chan_merge
from ._runtime import cuda


@cuda.jit(device=True)
def add4(n, mean, m2, v0, v1, v2, v3):
    """Welford's update for four values at once."""
    m4 = ((v0 + v1) + (v2 + v3)) * float64(0.25)
    d0 = v0 - m4
    d1 = v1 - m4
    d2 = v2 - m4
    d3 = v3 - m4
    q4 = (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    return chan_merge(n, mean, m2, float64(4), m4, q4)


@cuda.jit(device=True)
def plane_walk(A, B):
    """Where a planes-kernel thread starts in its channel's flat index ``j = a * B + b``.

    Returns ``(j, a, b, stride, da, db, total)``: the thread steps ``j`` by
    ``stride = da * B + db`` (with :func:`advance`) while ``j < total = A * B``.
    """
    stride = cuda.blockDim.x * cuda.gridDim.y
    da = stride // B
    j = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    a = j // B
    return j, a, j - a * B, stride, da, stride - da * B, A * B


@cuda.jit
def moments_planes(x, part_n, part_mean, part_m2):
    """Partials of x (A, C, B); grid (C, splits), 1-D blocks; parts (splits, C)."""
    A, C, B = x.shape
    c = cuda.blockIdx.x
    s = cuda.blockIdx.y
    t = cuda.threadIdx.x
    j, a, b, stride, da, db, total = plane_walk(A, B)
    n = float64(0)
    mean = float64(0)
    m2 = float64(0)
    while j + 3 * stride < total:
        v0 = float64(x[a, c, b])
        a, b = advance(a, b, da, db, B)
        v1 = float64(x[a, c, b])
        a, b = advance(a, b, da, db, B)
        v2 = float64(x[a, c, b])
        a, b = advance(a, b, da, db, B)
        v3 = float64(x[a, c, b])
        a, b = advance(a, b, da, db, B)
        n, mean, m2 = add4(n, mean, m2, v0, v1, v2, v3)
        j += 4 * stride
    while j < total:
        n, mean, m2 = chan_merge(n, mean, m2, float64(1), float64(x[a, c, b]), float64(0))
        a, b = advance(a, b, da, db, B)
        j += stride
    n, mean, m2 = block_merge(n, mean, m2, 0, t, 1, cuda.blockDim.x)
    if t == 0:
        part_n[s, c] = n
        part_mean[s, c] = mean
        part_m2[s, c] = m2


@cuda.jit(device=True)
def row_walk():
    """Where a rows-kernel thread works: ``(k, a, stride)``.

    Its column ``k``, its first row ``a`` and the row step ``stride``.
    """
    height = cuda.blockDim.y
    k = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    a = cuda.blockIdx.y * height + cuda.threadIdx.y
    return k, a, height * cuda.gridDim.y


@cuda.jit
def moments_rows(x, part_n, part_mean, part_m2):
    """Partials of the columns of x (A, K); 2-D blocks, grid (columns, splits)."""
    A, K = x.shape
    k, a, stride = row_walk()
    n = float64(0)
    mean = float64(0)
    m2 = float64(0)
    if k < K:
        while a + 3 * stride < A:
            v0 = float64(x[a, k])
            v1 = float64(x[a + stride, k])
            v2 = float64(x[a + 2 * stride, k])
            v3 = float64(x[a + 3 * stride, k])
            n, mean, m2 = add4(n, mean, m2, v0, v1, v2, v3)
            a += 4 * stride
        while a < A:
            n, mean, m2 = chan_merge(n, mean, m2, float64(1), float64(x[a, k]), float64(0))
            a += stride
    lane = cuda.threadIdx.x
    row = cuda.threadIdx.y
    n, mean, m2 = block_merge(n, mean, m2, lane, row, cuda.blockDim.x, cuda.blockDim.y)
    if row == 0 and k < K:
        part_n[cuda.blockIdx.y, k] = n
        part_mean[cuda.blockIdx.y, k] = mean
        part_m2[cuda.blockIdx.y, k] = m2


@cuda.jit
def sums_planes(dy, x, mean, part_dy, part_dyx):
    r"""Partial :math:`\sum dy`, :math:`\sum dy\,(x-\mu)` of (A, C, B) inputs."""
    A, C, B = x.shape
    c = cuda.blockIdx.x
    s = cuda.blockIdx.y
    t = cuda.threadIdx.x
    j, a, b, stride, da, db, total = plane_walk(A, B)
    mu = float64(mean[c])
    s_dy = float64(0)
    s_dyx = float64(0)
    while j + stride < total:
        g0 = float64(dy[a, c, b])
        x0 = float64(x[a, c, b])
        a, b = advance(a, b, da, db, B)
        g1 = float64(dy[a, c, b])
        x1 = float64(x[a, c, b])
        a, b = advance(a, b, da, db, B)
        s_dy += g0 + g1
        s_dyx += g0 * (x0 - mu) + g1 * (x1 - mu)
        j += 2 * stride
    if j < total:
        g0 = float64(dy[a, c, b])
        s_dy += g0
        s_dyx += g0 * (float64(x[a, c, b]) - mu)
    s_dy, s_dyx = block_sum(s_dy, s_dyx, 0, t, 1, cuda.blockDim.x)
    if t == 0:
        part_dy[s, c] = s_dy
        part_dyx[s, c] = s_dyx


@cuda.jit
def sums_rows(dy, x, B, mean, part_dy, part_dyx):
    r"""Column partials of :math:`dy`, :math:`dy\,(x-\mu)` for (A, K) inputs, K = C*B."""
    A, K = x.shape
    k, a, stride = row_walk()
    s_dy = float64(0)
    s_dyx = float64(0)
    if k < K:
        mu = float64(mean[k // B])
        while a + stride < A:
            g0 = float64(dy[a, k])
            g1 = float64(dy[a + stride, k])
            x0 = float64(x[a, k])
            x1 = float64(x[a + stride, k])
            s_dy += g0 + g1
            s_dyx += g0 * (x0 - mu) + g1 * (x1 - mu)
            a += 2 * stride
        if a < A:
            g0 = float64(dy[a, k])
            s_dy += g0
            s_dyx += g0 * (float64(x[a, k]) - mu)
    lane = cuda.threadIdx.x
    row = cuda.threadIdx.y
    s_dy, s_dyx = block_sum(s_dy, s_dyx, lane, row, cuda.blockDim.x, cuda.blockDim.y)
    if row == 0 and k < K:
        part_dy[cuda.blockIdx.y, k] = s_dy
        part_dyx[cuda.blockIdx.y, k] = s_dyx
