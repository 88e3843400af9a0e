r"""Elementwise kernels: normalize and backward apply, over an (A, K) view, K = C*B.

One thread owns a column ``k`` (channel ``k // B``, computed once), reads its
channel's coefficients once, and walks rows ``a`` in steps of the grid's
height: neighbouring threads touch neighbouring addresses in every layout,
and no thread divides per element.  Each element costs one fused
multiply-add in the accumulation type,

.. math::

    y = x\,s_c + h_c, \qquad s_c = \gamma_c\sigma_c^{-1},\quad h_c = \beta_c - \mu_c s_c,

and backward apply :math:`dx = k_{dy}\,dy + k_x (x - \mu) + k_0`.
"""
import math

from numba import float32, float64

from ._runtime import cuda


def _build(acc):
    """The elementwise kernels for one accumulation type (float32 or float64)."""

    @cuda.jit
    def normalize(x, B, mean, spread, spread_is_var, eps, weight, has_weight, bias,
                  has_bias, y):
        """``y = (x - mean) * invstd * weight + bias``; ``spread`` is invstd or a variance."""
        A, K = x.shape
        k = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if k >= K:
            return
        c = k // B
        invstd = float(spread[c])
        if spread_is_var:
            invstd = 1.0 / math.sqrt(invstd + eps)
        scale = invstd * float(weight[c]) if has_weight else invstd
        shift = -float(mean[c]) * scale
        if has_bias:
            shift += float(bias[c])
        s = acc(scale)
        h = acc(shift)
        stride = cuda.blockDim.y * cuda.gridDim.y
        a = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
        while a + 3 * stride < A:
            v0 = acc(x[a, k])
            v1 = acc(x[a + stride, k])
            v2 = acc(x[a + 2 * stride, k])
            v3 = acc(x[a + 3 * stride, k])
            y[a, k] = v0 * s + h
            y[a + stride, k] = v1 * s + h
            y[a + 2 * stride, k] = v2 * s + h
            y[a + 3 * stride, k] = v3 * s + h
            a += 4 * stride
        while a < A:
            y[a, k] = acc(x[a, k]) * s + h
            a += stride

    @cuda.jit
    def backward_apply(dy, x, B, mean, coef, training, dx):
        """``dx = k_dy*dy + k_x*(x - mean) + k_0`` with ``coef[0:3]`` = k_dy, k_x, k_0."""
        A, K = x.shape
        k = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if k >= K:
            return
        c = k // B
        k_dy = acc(coef[0, c])
        k_x = acc(coef[1, c])
        k_0 = acc(coef[2, c])
        mu = acc(mean[c])
        stride = cuda.blockDim.y * cuda.gridDim.y
        a = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
        if training:
            while a + stride < A:
                g0 = acc(dy[a, k])
                g1 = acc(dy[a + stride, k])
                x0 = acc(x[a, k])
                x1 = acc(x[a + stride, k])
                dx[a, k] = k_dy * g0 + k_x * (x0 - mu) + k_0
                dx[a + stride, k] = k_dy * g1 + k_x * (x1 - mu) + k_0
                a += 2 * stride
            if a < A:
                dx[a, k] = k_dy * acc(dy[a, k]) + k_x * (acc(x[a, k]) - mu) + k_0
        else:
            while a < A:
                dx[a, k] = k_dy * acc(dy[a, k])
                a += stride

    return normalize, backward_apply


#: ``KERNELS[float32 or float64] = (normalize, backward_apply)``.
KERNELS = {float32: _build(float32), float64: _build(float64)}
