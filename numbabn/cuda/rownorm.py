r"""Layer norm and RMS norm kernels on CUDA: per-row statistics, a per-element affine.

The input is a C-contiguous (R, D) device array.  Forward: one block per row;
its threads walk the row in steps of the block size (neighbouring threads,
neighbouring addresses), reduce in float64 and merge in a shared-memory tree
(``syncthreads``, no warp shuffles, so the simulator runs them):

.. math::

    \mu = \frac{1}{D}\sum_j x_j, \qquad
    \sigma^{-1} = \Big(\frac{1}{D}\sum_j (x_j - \mu)^2 + \epsilon\Big)^{-1/2}

(two passes over the row, the second about the mean; RMS norm: one pass,
:math:`\mu = 0`), then :math:`y = (x - \mu)\sigma^{-1}\gamma + \beta` in the
accumulation type (float32 for float16/float32 input, with the mean split into
a float32 head and tail so offset data loses nothing; float64 otherwise).

Backward: a fixed grid of blocks, each taking rows ``blockIdx.x``,
``blockIdx.x + gridDim.x``, ...; per row the block reduces
:math:`\sum g` and :math:`\sum g\hat x` (:math:`g = dy\,\gamma`), then writes

.. math::

    dx = \sigma^{-1}\Big(g - \frac{1}{D}\sum g - \hat x\,\frac{1}{D}\sum g\hat x\Big)

(no :math:`\sum g` term for RMS norm).  Each thread also adds
:math:`dy\,\hat x` and :math:`dy` of its columns into its block's float64
partial row (no other thread writes those columns of that block), and a
second small kernel adds the blocks' partials column by column, in block
order, into dγ and dβ.
"""
import math

from numba import float32, float64

from ._merge import block_sum
from ._runtime import cuda


def _build(acc):
    """The kernels for one accumulation type of the elementwise arithmetic."""

    @cuda.jit
    def forward(x, w, has_w, b, has_b, eps, centered, y, stats):
        """One block per row; ``stats[0, r]``, ``stats[1, r]`` = mean, rstd."""
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        T = cuda.blockDim.x
        D = x.shape[1]
        mean = float64(0)
        if centered:
            s = float64(0)
            j = t
            while j < D:
                s += float64(x[r, j])
                j += T
            total, _ = block_sum(s, float64(0), 0, t, 1, T)
            mean = total / D
            cuda.syncthreads()  # the tree's shared memory is reused below
        mhi = acc(mean)
        mlo = acc(mean - float64(mhi))
        q = float64(0)
        j = t
        while j < D:
            d = float64((acc(x[r, j]) - mhi) - mlo)
            q += d * d
            j += T
        m2, _ = block_sum(q, float64(0), 0, t, 1, T)
        rstd = 1.0 / math.sqrt(m2 / D + eps)
        sc = acc(rstd)
        j = t
        while j < D:
            v = ((acc(x[r, j]) - mhi) - mlo) * sc
            if has_w:
                v = v * acc(w[j])
            if has_b:
                v = v + acc(b[j])
            y[r, j] = v
            j += T
        if t == 0:
            stats[0, r] = mean
            stats[1, r] = rstd

    @cuda.jit
    def backward(dy, x, mean, rstd, w, has_w, centered, dx, part):
        """Rows ``blockIdx.x + k * gridDim.x``; ``part[block, 0/1, j]`` += dy*xhat, dy."""
        t = cuda.threadIdx.x
        T = cuda.blockDim.x
        blk = cuda.blockIdx.x
        R, D = x.shape
        j = t
        while j < D:
            part[blk, 0, j] = 0.0
            part[blk, 1, j] = 0.0
            j += T
        r = blk
        while r < R:
            mu = float64(mean[r]) if centered else float64(0)
            mhi = acc(mu)
            mlo = acc(mu - float64(mhi))
            sc = acc(rstd[r])
            sg = float64(0)
            sgx = float64(0)
            j = t
            while j < D:
                g0 = acc(dy[r, j])
                xh = ((acc(x[r, j]) - mhi) - mlo) * sc
                g = g0 * acc(w[j]) if has_w else g0
                sg += float64(g)
                sgx += float64(g * xh)
                part[blk, 0, j] += float64(g0 * xh)
                part[blk, 1, j] += float64(g0)
                j += T
            sg, sgx = block_sum(sg, sgx, 0, t, 1, T)
            a = acc(sg / D) if centered else acc(0)
            c = acc(sgx / D)
            j = t
            while j < D:
                g0 = acc(dy[r, j])
                xh = ((acc(x[r, j]) - mhi) - mlo) * sc
                g = g0 * acc(w[j]) if has_w else g0
                dx[r, j] = sc * ((g - a) - xh * c)
                j += T
            cuda.syncthreads()  # the tree's shared memory is reused by the next row
            r += cuda.gridDim.x

    return forward, backward


@cuda.jit
def column_sums(part, grads):
    """``grads[i, j] = sum over blocks of part[:, i, j]``, in block order (one thread a column)."""
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    blocks, _, D = part.shape
    if j >= D:
        return
    s0 = float64(0)
    s1 = float64(0)
    for k in range(blocks):
        s0 += part[k, 0, j]
        s1 += part[k, 1, j]
    grads[0, j] = s0
    grads[1, j] = s1


#: Kernels by accumulation type (float32 serves float16 and float32 input).
KERNELS = {float32: _build(float32), float64: _build(float64)}
