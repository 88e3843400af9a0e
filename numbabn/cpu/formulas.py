"""The formulas of :mod:`numbabn._formulas`, compiled for the CPU kernels.

``error_model="numpy"``: a zero under a square root gives inf, as NumPy and
CUDA give, not ZeroDivisionError.
"""
import numpy as np
from numba import njit

from .. import _formulas

_compile = njit(nogil=True, cache=True, error_model="numpy")

chan_merge = _compile(_formulas.chan_merge)
invstd = _compile(_formulas.invstd)
affine = _compile(_formulas.affine)
backward_coefficients = _compile(_formulas.backward_coefficients)
renorm_correction = _compile(_formulas.renorm_correction)


@_compile
def product(a, b):
    """``a * b`` elementwise, without NumPy's floating-point warnings: a backward's
    ``0 * inf`` (sigma^-1 infinite where eps <= 0) is NaN, as in PyTorch."""
    return a * b


@_compile
def invstd_map(var, eps):
    """:func:`invstd` of every value of a float64 array (any shape, C order out): host
    statistics' sigma^-1 in one pass, a zero ``var + eps`` inf and a negative one NaN
    without NumPy's warnings, and no ``np.errstate`` to pay on every call."""
    out = np.empty_like(var)
    for i in range(var.size):
        out.flat[i] = invstd(var.flat[i], eps)
    return out
