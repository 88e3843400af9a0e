r"""Layer normalization and RMS normalization as plain functions of arrays.

Both normalize each row of an input over its trailing axes (the
``normalized_shape``), whatever the batch size, and scale (and for layer
norm, shift) each element of the normalized shape by its own weight.  The
input is read as (R, D): R rows, the product of the leading axes, and D
values per row, the product of ``normalized_shape``.  PyTorch's semantics
(``torch.nn.functional.layer_norm`` / ``rms_norm``, ``torch.native_layer_norm``).

Every function checks all of its arguments before it writes anything: a call
that raises leaves ``out`` as it was.
"""
import numpy as np

from . import _validate as v
from ._dispatch import select_backend
from .functional import _float_input


def _affine(backend, name, vec, shape):
    if vec is None:
        return None
    return v.affine_vector(name, _float_input(backend, name, vec), shape)


def _forward_inputs(backend, x, normalized_shape, weight, bias, out):
    x = _float_input(backend, "x", x)
    shape = v.normalized_shape_value(normalized_shape)
    rows = v.rows_layout(x.shape, shape)
    weight = _affine(backend, "weight", weight, shape)
    bias = _affine(backend, "bias", bias, shape)
    out = v.out_array(out, x.shape, x.dtype)
    return x, shape, rows, weight, bias, out


def _statistics(backend, name, a, rows):
    if a is None:
        raise ValueError(f"{name} is required")
    return v.row_statistics(name, _float_input(backend, name, a), rows)


def _rms_eps(eps, dtype):
    """``eps=None`` is the machine epsilon of the input's dtype (PyTorch's default)."""
    return float(np.finfo(dtype).eps) if eps is None else v.eps_value(eps)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None,
               device="auto"):
    r"""Layer normalization with ``torch.nn.functional.layer_norm``'s semantics.

    Each row (the values over the trailing ``normalized_shape`` axes) is
    normalized by its own mean and biased variance,

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \odot \gamma + \beta,

    with :math:`\gamma` and :math:`\beta` of shape ``normalized_shape``
    (one per element, not per channel).  Statistics are float64 (two passes
    over each row: the mean, then the squares about it).

    Parameters
    ----------
    x : array_like of float16, float32 or float64
    normalized_shape : int or tuple of ints
        The trailing axes of ``x`` to normalize over.
    weight, bias : array_like of shape ``normalized_shape``, optional
        :math:`\gamma` and :math:`\beta`; None means 1 and 0.
    eps : float
        Added to the variance (any real number, as PyTorch).
    out : ndarray, keyword-only, optional
        Written with the result and returned; same shape and dtype as ``x``
        (may be ``x`` itself).
    device : {"auto", "cpu", "cuda"}, keyword-only
        As for :func:`numbabn.batch_norm`.

    Returns
    -------
    y : ndarray, shape and dtype of ``x`` (float16 is computed in float32)

    Shape
    -----
    ``x``: (\*, \*normalized_shape); ``y``: the same.
    """
    return layer_norm_forward(x, normalized_shape, weight, bias, eps=eps, out=out,
                              device=device)[0]


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, *, eps=1e-5, out=None,
                       device="auto"):
    r"""Layer normalization that also returns what the backward needs: ``(y, mean, invstd)``.

    .. math::

        \mu = \frac{1}{D}\sum_j x_j, \quad
        \sigma^{-1} = \Big(\frac{1}{D}\sum_j (x_j - \mu)^2 + \epsilon\Big)^{-1/2}, \quad
        y = (x - \mu)\,\sigma^{-1} \odot \gamma + \beta

    over the D values of each row (``torch.native_layer_norm``).

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
    mean, invstd : ndarray of shape ``x.shape[:x.ndim - len(normalized_shape)]``
        float64 for float64 input, else float32.
    """
    backend = select_backend(device, x, None, out)
    x, shape, rows, weight, bias, out = _forward_inputs(
        backend, x, normalized_shape, weight, bias, out)
    eps = v.eps_value(eps)
    y, mean, rstd = backend.row_norm_forward(x, rows.R, rows.D, weight, bias, eps, True, out)
    return y, mean.reshape(rows.lead), rstd.reshape(rows.lead)


def layer_norm_backward(dy, x, mean, invstd, normalized_shape, weight=None, *, out=None,
                        device="auto"):
    r"""Gradients of layer normalization: ``(dx, dweight, dbias)``.

    With :math:`\hat x = (x - \mu)\sigma^{-1}`, :math:`g = dy \odot \gamma` and
    D values per row,

    .. math::

        dx = \sigma^{-1}\Big(g - \frac{1}{D}\sum_j g_j
             - \hat x\,\frac{1}{D}\sum_j g_j \hat x_j\Big), \qquad
        \frac{\partial L}{\partial\gamma} = \sum_{\text{rows}} dy\,\hat x, \qquad
        \frac{\partial L}{\partial\beta} = \sum_{\text{rows}} dy .

    Parameters
    ----------
    dy, x : arrays of the same shape and dtype
    mean, invstd : array_like
        As returned by :func:`layer_norm_forward`, shape
        ``x.shape[:x.ndim - len(normalized_shape)]`` (trailing axes of size 1,
        as ``torch.native_layer_norm`` returns them, are accepted).
    normalized_shape : int or tuple of ints
    weight : array_like of shape ``normalized_shape``, optional
    out : ndarray, keyword-only, optional
        Receives dx (may be ``dy`` or ``x``).

    Returns
    -------
    dx : ndarray, shape and dtype of ``x``
    dweight, dbias : ndarray of shape ``normalized_shape``
        Computed also when ``weight`` is None; in ``weight``'s dtype, else
        float64 for float64 input and float32 otherwise.
    """
    backend = select_backend(device, x, dy, out)
    x, dy, shape, rows, mean, invstd, weight, out = _backward_inputs(
        backend, dy, x, mean, invstd, normalized_shape, weight, out, True)
    grad_dtype = weight.dtype if weight is not None else v.stats_dtype(x.dtype)
    dx, dweight, dbias = backend.row_norm_backward(
        dy, x, rows.R, rows.D, mean, invstd, weight, True, grad_dtype, out)
    return dx, dweight.reshape(shape), dbias.reshape(shape)


def _backward_inputs(backend, dy, x, mean, rstd, normalized_shape, weight, out, centered):
    x = _float_input(backend, "x", x)
    dy = _float_input(backend, "dy", dy)
    shape = v.normalized_shape_value(normalized_shape)
    rows = v.rows_layout(x.shape, shape)
    v.same_shape("dy", dy, x.shape)
    if dy.dtype != x.dtype:
        raise TypeError(f"dy and x must have the same dtype, got {dy.dtype} and {x.dtype}")
    mean = _statistics(backend, "mean", mean, rows) if centered else None
    rstd = _statistics(backend, "invstd" if centered else "invrms", rstd, rows)
    weight = _affine(backend, "weight", weight, shape)
    out = v.out_array(out, x.shape, x.dtype)
    return x, dy, shape, rows, mean, rstd, weight, out


def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None, device="auto"):
    r"""RMS normalization with ``torch.nn.functional.rms_norm``'s semantics.

    .. math::

        y = \frac{x}{\sqrt{\frac{1}{D}\sum_j x_j^2 + \epsilon}} \odot \gamma

    over the D values of each row (the trailing ``normalized_shape`` axes):
    no mean is subtracted and there is no bias.

    Parameters
    ----------
    x : array_like of float16, float32 or float64
    normalized_shape : int or tuple of ints
    weight : array_like of shape ``normalized_shape``, optional
    eps : float or None
        None means ``np.finfo(x.dtype).eps``, as PyTorch.
    out : ndarray, keyword-only, optional
    device : {"auto", "cpu", "cuda"}, keyword-only

    Returns
    -------
    y : ndarray, shape and dtype of ``x``

    Shape
    -----
    ``x``: (\*, \*normalized_shape); ``y``: the same.
    """
    return rms_norm_forward(x, normalized_shape, weight, eps=eps, out=out, device=device)[0]


def rms_norm_forward(x, normalized_shape, weight=None, *, eps=None, out=None, device="auto"):
    r"""RMS normalization that also returns ``invrms`` for the backward: ``(y, invrms)``.

    .. math::

        r = \Big(\frac{1}{D}\sum_j x_j^2 + \epsilon\Big)^{-1/2}, \qquad y = x\,r \odot \gamma

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
    invrms : ndarray of shape ``x.shape[:x.ndim - len(normalized_shape)]``
        float64 for float64 input, else float32.
    """
    backend = select_backend(device, x, None, out)
    x, shape, rows, weight, _, out = _forward_inputs(
        backend, x, normalized_shape, weight, None, out)
    eps = _rms_eps(eps, x.dtype)
    y, _, rstd = backend.row_norm_forward(x, rows.R, rows.D, weight, None, eps, False, out)
    return y, rstd.reshape(rows.lead)


def rms_norm_backward(dy, x, invrms, normalized_shape, weight=None, *, out=None,
                      device="auto"):
    r"""Gradients of RMS normalization: ``(dx, dweight)``.

    With :math:`\hat x = x\,r` and :math:`g = dy \odot \gamma`,

    .. math::

        dx = r\Big(g - \hat x\,\frac{1}{D}\sum_j g_j \hat x_j\Big), \qquad
        \frac{\partial L}{\partial\gamma} = \sum_{\text{rows}} dy\,\hat x .

    Returns
    -------
    dx : ndarray, shape and dtype of ``x``
    dweight : ndarray of shape ``normalized_shape`` (also when ``weight`` is None)
    """
    backend = select_backend(device, x, dy, out)
    x, dy, shape, rows, _, invrms, weight, out = _backward_inputs(
        backend, dy, x, None, invrms, normalized_shape, weight, out, False)
    grad_dtype = weight.dtype if weight is not None else v.stats_dtype(x.dtype)
    dx, dweight, _ = backend.row_norm_backward(
        dy, x, rows.R, rows.D, None, invrms, weight, False, grad_dtype, out)
    return dx, dweight.reshape(shape)
