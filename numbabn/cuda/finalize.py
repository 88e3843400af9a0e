r"""Per-channel kernels between the reduce and apply passes (float64, one block per channel).

They merge the partials the reduction kernels wrote (``part[s, c * Bp + b]``
for ``s < splits``, ``b < Bp``; ``Bp`` is 1 for the planes kernels and B for
the rows kernels) and do on the device what :mod:`numbabn._channel_math` does
on the host, so that a training step needs no host round trip.  The threads
of channel c's block merge strided subsets of its partials, then a shared
tree merges the threads (a channel split over a thousand blocks is not merged
by one thread); thread 0 writes the results:

.. math::

    \sigma^{-1} = \frac{1}{\sqrt{M_2/M + \epsilon}}, \qquad
    \hat\mu \leftarrow (1-m)\hat\mu + m\mu, \qquad
    \hat\sigma^2 \leftarrow (1-m)\hat\sigma^2 + m\frac{M_2}{M-1},

and for backward, with :math:`S = \sum dy`, :math:`P = \sum dy(x-\mu)`,
:math:`k_{dy} = \gamma\sigma^{-1}`, :math:`k_x = -k_{dy}\sigma^{-2}P/M`,
:math:`k_0 = -k_{dy}S/M` (both zero for frozen statistics).
"""
import math

from . import formulas
from ._merge import block_merge, block_sum, chan_merge
from ._runtime import cuda


@cuda.jit(device=True)
def merge_channel(part_n, part_mean, part_m2, Bp):
    """Merge the partials of channel ``blockIdx.x``; every thread gets ``(n, mean, M2)``."""
    c = cuda.blockIdx.x
    t = cuda.threadIdx.x
    n = 0.0
    mean = 0.0
    m2 = 0.0
    for e in range(t, part_n.shape[0] * Bp, cuda.blockDim.x):
        s = e // Bp
        k = c * Bp + (e - s * Bp)
        n, mean, m2 = chan_merge(n, mean, m2, part_n[s, k], part_mean[s, k], part_m2[s, k])
    return block_merge(n, mean, m2, 0, t, 1, cuda.blockDim.x)


@cuda.jit(device=True)
def sum_channel(part_a, part_b, Bp):
    """Sum the partials of channel ``blockIdx.x``; every thread gets both sums."""
    c = cuda.blockIdx.x
    t = cuda.threadIdx.x
    sa = 0.0
    sb = 0.0
    for e in range(t, part_a.shape[0] * Bp, cuda.blockDim.x):
        s = e // Bp
        k = c * Bp + (e - s * Bp)
        sa += part_a[s, k]
        sb += part_b[s, k]
    return block_sum(sa, sb, 0, t, 1, cuda.blockDim.x)


@cuda.jit
def welford_stats(part_n, part_mean, part_m2, Bp, out):
    """``out[0] = mean``, ``out[1] = M2`` (float64, shape (2, C))."""
    c = cuda.blockIdx.x
    _, mean, m2 = merge_channel(part_n, part_mean, part_m2, Bp)
    if cuda.threadIdx.x == 0:
        out[0, c] = mean
        out[1, c] = m2


@cuda.jit
def moment_stats(part_n, part_mean, part_m2, Bp, ddof, out):
    """``out[0] = mean``, ``out[1] = M2 / (n - ddof)``; NaN where ``n <= ddof``."""
    c = cuda.blockIdx.x
    n, mean, m2 = merge_channel(part_n, part_mean, part_m2, Bp)
    if cuda.threadIdx.x == 0:
        out[0, c] = mean
        out[1, c] = m2 / (n - ddof) if n > ddof else math.nan


@cuda.jit
def train_stats(part_n, part_mean, part_m2, Bp, eps, momentum, update_running,
                running_mean, running_var, saved, coef):
    """Batch statistics of a training step.

    ``saved[0], saved[1]`` = mean, invstd in the saved dtype; ``coef`` the same
    in float64 for the normalize kernel; running buffers blended when asked.
    """
    c = cuda.blockIdx.x
    n, mean, m2 = merge_channel(part_n, part_mean, part_m2, Bp)
    if cuda.threadIdx.x == 0:
        invstd = formulas.invstd(m2 / n, eps)
        saved[0, c] = mean
        saved[1, c] = invstd
        coef[0, c] = mean
        coef[1, c] = invstd
        if update_running:
            keep = 1.0 - momentum
            running_mean[c] = keep * running_mean[c] + momentum * mean
            running_var[c] = keep * running_var[c] + momentum * (m2 / (n - 1.0))


@cuda.jit
def sum_stats(part_dy, part_dyx, Bp, out):
    r"""``out[0]`` = :math:`\sum dy`, ``out[1]`` = :math:`\sum dy(x-\mu)` (float64, (2, C))."""
    c = cuda.blockIdx.x
    s_dy, s_dyx = sum_channel(part_dy, part_dyx, Bp)
    if cuda.threadIdx.x == 0:
        out[0, c] = s_dy
        out[1, c] = s_dyx


@cuda.jit
def backward_stats(part_dy, part_dyx, Bp, count, invstd, weight, has_weight, training,
                   grads, coef):
    """``grads[0], grads[1]`` = dweight, dbias; ``coef[0:3]`` = k_dy, k_x, k_0 (float64)."""
    c = cuda.blockIdx.x
    s_dy, s_dyx = sum_channel(part_dy, part_dyx, Bp)
    if cuda.threadIdx.x == 0:
        inv = float(invstd[c])
        grads[0, c] = s_dyx * inv
        grads[1, c] = s_dy
        k_dy, k_x, k_0 = formulas.backward_coefficients(
            inv, float(weight[c]) if has_weight else 1.0, s_dy, s_dyx, count)
        coef[0, c] = k_dy
        coef[1, c] = k_x if training else 0.0
        coef[2, c] = k_0 if training else 0.0
