r"""Device functions shared by the reduction kernels.

Summaries ``(n, mean, M2)`` are merged with Chan, Golub and LeVeque's pairwise
formula (Chan et al., 1979), in the weighted-mean form the CPU kernels use,

.. math::

    n = n_a + n_b,\quad \delta = \bar x_b - \bar x_a,\quad
    \bar x = \frac{n_a \bar x_a + n_b \bar x_b}{n},\quad
    M_2 = M_{2,a} + M_{2,b} + \delta^2 \frac{n_a n_b}{n}.

Welford's update is the case :math:`n_b = 1`.  The functions are generic in
the floating type of their arguments: threads accumulate in float32 (float16
and float32 input) or float64, block and grid merges are float64.  Block
merges are shared-memory trees with ``syncthreads`` and no warp shuffles, so
they also run under the CUDA simulator.
"""
from numba import float64

from . import formulas
from ._runtime import cuda
from .config import MAX_THREADS


#: Merge two (count, mean, M2) summaries (:func:`numbabn._formulas.chan_merge`).
chan_merge = formulas.chan_merge


@cuda.jit(device=True)
def tree_merge(sh_n, sh_mean, sh_m2, lane, row, width, height):
    """Merge the ``height`` rows of a (height, width) shared tile into row 0.

    Every thread of the block calls it (it synchronizes); ``height`` is a
    power of two.  Thread (lane, row) owns element ``row * width + lane``.
    """
    step = height // 2
    while step > 0:
        if row < step:
            i = row * width + lane
            j = i + step * width
            n, mean, m2 = chan_merge(sh_n[i], sh_mean[i], sh_m2[i], sh_n[j], sh_mean[j], sh_m2[j])
            sh_n[i] = n
            sh_mean[i] = mean
            sh_m2[i] = m2
        cuda.syncthreads()
        step //= 2


@cuda.jit(device=True)
def tree_sum(sh_a, sh_b, lane, row, width, height):
    """Sum the ``height`` rows of two (height, width) shared tiles into row 0."""
    step = height // 2
    while step > 0:
        if row < step:
            i = row * width + lane
            j = i + step * width
            sh_a[i] += sh_a[j]
            sh_b[i] += sh_b[j]
        cuda.syncthreads()
        step //= 2


@cuda.jit(device=True)
def advance(a, b, da, db, B):
    """Step a flat index ``a * B + b`` (0 <= b < B) forward by ``da * B + db``."""
    a += da
    b += db
    if b >= B:
        b -= B
        a += 1
    return a, b


@cuda.jit(device=True)
def block_merge(n, mean, m2, lane, row, width, height):
    """Merge the summaries of a (height, width) block's threads down its rows.

    Every thread of the block calls it; each gets the merged summary of its
    column ``lane``.  A 1-D block is ``lane = 0, row = t, width = 1``.
    """
    sh_n = cuda.shared.array(MAX_THREADS, float64)
    sh_mean = cuda.shared.array(MAX_THREADS, float64)
    sh_m2 = cuda.shared.array(MAX_THREADS, float64)
    i = row * width + lane
    sh_n[i] = n
    sh_mean[i] = mean
    sh_m2[i] = m2
    cuda.syncthreads()
    tree_merge(sh_n, sh_mean, sh_m2, lane, row, width, height)
    return sh_n[lane], sh_mean[lane], sh_m2[lane]


@cuda.jit(device=True)
def block_sum(a, b, lane, row, width, height):
    """Sum two values over the rows of a (height, width) block, as :func:`block_merge`."""
    sh_a = cuda.shared.array(MAX_THREADS, float64)
    sh_b = cuda.shared.array(MAX_THREADS, float64)
    i = row * width + lane
    sh_a[i] = a
    sh_b[i] = b
    cuda.syncthreads()
    tree_sum(sh_a, sh_b, lane, row, width, height)
    return sh_a[lane], sh_b[lane]
