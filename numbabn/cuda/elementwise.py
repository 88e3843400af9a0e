r"""Elementwise kernels: normalize and backward apply, over an (A, K) view, K = C*B.

One thread owns a column ``k`` (channel ``k // B``, computed once), reads its
channel's coefficients once, and walks rows ``a`` in steps of the grid's
height: neighbouring threads touch neighbouring addresses in every layout,
and no thread divides per element.  Each element costs one fused
multiply-add in the accumulation type,

.. math::

    y = x\,s_c + h_c, \qquad s_c = \gamma_c\sigma_c^{-1},\quad h_c = \beta_c - \mu_c s_c,

and backward apply :math:`dx = k_{dy}\,dy + k_x (x - \mu) + k_0`.

The fused variants (their own kernels, so the plain ones stay as they are)
end each element with one device function, :func:`epilogue`: an optional
residual add and activation, ``y = act(v + r)``, in the accumulation type
(which is the data's dtype for float32 and float64, so the result is the
composition's bit for bit).  Activation codes: 0 none, 1 ReLU, 2 leaky ReLU.
The backward through an activation is :func:`mask_grad`'s
``g = dy * act'(y)``, written once and read by the plain backward kernels.
"""

from numba import float32, float64

from . import formulas
from ._runtime import cuda

#: Activation codes of the fused kernels.
NONE, RELU, LEAKY_RELU = 0, 1, 2


def activation_code(act):
    """``(code, slope)`` from the functional API's activation (None, True for ReLU, or a slope)."""
    if act is None:
        return NONE, 0.0
    if act is True:
        return RELU, 0.0
    return LEAKY_RELU, float(act)



@cuda.jit(device=True)
def coefficients(c, mean, spread, spread_is_var, eps, weight, has_weight, bias, has_bias):
    """Channel ``c``'s float64 ``(scale, shift)``; ``spread`` holds invstd or a variance."""
    inv = float(spread[c])
    if spread_is_var:
        inv = formulas.invstd(inv, eps)
    return formulas.affine(float(mean[c]), inv, float(weight[c]) if has_weight else 1.0,
                           float(bias[c]) if has_bias else 0.0)


def _build(acc):
    """The elementwise kernels for one accumulation type (float32 or float64)."""
    zero = acc(0)

    @cuda.jit(device=True)
    def epilogue(w, act, slope):
        """The activation of a value ``w`` that already holds the residual."""
        if act == RELU:
            return zero if w < zero else w  # a NaN stays NaN, as np.maximum and torch.relu
        if act == LEAKY_RELU:
            return w if w > zero else w * slope
        return w

    @cuda.jit
    def normalize(x, B, mean, spread, spread_is_var, eps, weight, has_weight, bias,
                  has_bias, y):
        """``y = (x - mean) * invstd * weight + bias``; ``spread`` is invstd or a variance."""
        A, K = x.shape
        k = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if k >= K:
            return
        c = k // B
        scale, shift = coefficients(c, mean, spread, spread_is_var, eps, weight, has_weight,
                                    bias, has_bias)
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

    @cuda.jit
    def normalize_fused(x, B, mean, spread, spread_is_var, eps, weight, has_weight, bias,
                        has_bias, act, slope, r, has_r, y):
        """``y = act((x - mean) * invstd * weight + bias + r)``: normalize, then the epilogue."""
        A, K = x.shape
        k = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if k >= K:
            return
        c = k // B
        scale, shift = coefficients(c, mean, spread, spread_is_var, eps, weight, has_weight,
                                    bias, has_bias)
        s = acc(scale)
        h = acc(shift)
        a_slope = acc(slope)
        stride = cuda.blockDim.y * cuda.gridDim.y
        a = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
        while a < A:
            v = acc(x[a, k]) * s + h
            if has_r:
                v = v + acc(r[a, k])
            y[a, k] = epilogue(v, act, a_slope)
            a += stride

    @cuda.jit
    def mask_grad(dy, y, act, slope, g):
        """``g = dy`` where ``y > 0``; else 0 (ReLU, also where y is NaN: dy) or ``dy * slope``."""
        A, K = y.shape
        k = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if k >= K:
            return
        a_slope = acc(slope)
        stride = cuda.blockDim.y * cuda.gridDim.y
        a = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
        while a < A:
            d = acc(dy[a, k])
            v = y[a, k]
            if act == RELU:
                g[a, k] = zero if v <= 0 else d
            else:
                g[a, k] = d if v > 0 else d * a_slope
            a += stride

    return normalize, backward_apply, normalize_fused, mask_grad


#: ``KERNELS[float32 or float64] = (normalize, backward_apply, normalize_fused, mask_grad)``.
KERNELS = {float32: _build(float32), float64: _build(float64)}
