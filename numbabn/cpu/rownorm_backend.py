"""The CPU backend's layer norm and RMS norm: host arrays in, host arrays out.

Inputs arrive checked (by :mod:`numbabn.functional_rows`) and are read as
C-contiguous (R, D) arrays in the compute dtype (float16 is widened to
float32, non-contiguous input is copied); :mod:`numbabn.cpu.rownorm` does the
work.  Statistics come back as ``(R,)`` vectors, gradients as ``(D,)``.
"""
import numpy as np

from .._validate import stats_dtype
from . import rownorm
from ._arrays import destination, finish, kernel_view
from ._chunks import serial


def _vector(v, fill, D, dtype):
    """A contiguous (D,) vector of ``dtype``; ``fill`` everywhere when ``v`` is None."""
    if v is None:
        return np.full(D, fill, dtype)
    return np.ascontiguousarray(np.asarray(v).reshape(D), dtype=dtype)


def row_norm_forward(x, R, D, weight, bias, eps, centered, out):
    """Layer norm (``centered``) or RMS norm of the rows of ``x``: ``(y, mean, rstd)``.

    ``mean`` and ``rstd`` are (R,) in the statistics dtype (``mean`` is None
    for RMS norm).
    """
    x2 = kernel_view(x, (R, D))
    dtype = x2.dtype
    y2, direct = destination(out, (R, D), dtype, x2)
    if x2.size:
        mean, rstd = rownorm.forward(
            x2, _vector(weight, 1, D, dtype), _vector(bias, 0, D, dtype), eps, centered, y2,
            not serial(x2.size))
    else:  # no rows, or empty rows (PyTorch: mean 0, rstd NaN)
        mean = np.zeros(R)
        rstd = np.full(R, np.nan)
    y = finish(y2, direct, x, out)
    sd = stats_dtype(x.dtype)
    return y, (mean.astype(sd) if centered else None), rstd.astype(sd)


def row_norm_backward(dy, x, R, D, mean, rstd, weight, centered, grad_dtype, out):
    """Gradients of layer norm (``centered``) or RMS norm: ``(dx, dweight, dbias)``.

    ``dweight`` and ``dbias`` are (D,) of ``grad_dtype``; ``mean`` is None
    for RMS norm.
    """
    dy2 = kernel_view(dy, (R, D))
    x2 = kernel_view(x, (R, D))
    dtype = x2.dtype
    dx2, direct = destination(out, (R, D), dtype, dy2, x2)
    if x2.size:
        mean64 = (np.zeros(R) if mean is None
                  else np.ascontiguousarray(np.asarray(mean).reshape(R), np.float64))
        rstd64 = np.ascontiguousarray(np.asarray(rstd).reshape(R), np.float64)
        dweight, dbias = rownorm.backward(
            dy2, x2, mean64, rstd64, _vector(weight, 1, D, dtype), centered, dx2,
            not serial(x2.size))
    else:
        dweight, dbias = np.zeros(D), np.zeros(D)
    return (finish(dx2, direct, dy, out), dweight.astype(grad_dtype, copy=False),
            dbias.astype(grad_dtype, copy=False))
