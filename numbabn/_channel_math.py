r"""Per-channel arithmetic between the reduce and apply kernels (float64, C values).

These few vector operations are the same for every backend that finalizes on
the host, and for the MPI layer, which merges statistics across processes
before it applies them.
"""
import numpy as np

from . import _formulas
from ._formulas import chan_merge  # noqa: F401  (one formula: re-exported for the host)
from .cpu.formulas import invstd_map


def chan_merge_in_order(summaries, channels):
    r"""Merge ``(count, mean, M2)`` summaries one after the other with :func:`chan_merge`.

    .. math::

        (n, \bar x, M_2) \leftarrow \mathrm{merge}\big((n, \bar x, M_2),\,
        (n_k, \bar x_k, M_{2,k})\big), \qquad k = 0, 1, \dots

    starting from the empty summary ``(0, 0, 0)``.  ``summaries`` is an
    iterable of ``(count, mean, m2)`` with scalar counts and (C,) float64
    vectors; the order is the caller's (MPI ranks in rank order, the pieces
    of a streamed batch, a Dask reduction's chunks), so the result is
    reproducible.  Returns ``(count, mean, m2)``; the vectors may be those of a
    summary when every other count is 0 (they are never written).
    """
    count, mean, m2 = 0, np.zeros(channels), np.zeros(channels)
    for n_b, mean_b, m2_b in summaries:
        count, mean, m2 = chan_merge(count, mean, m2, n_b, mean_b, m2_b)
    return count, mean, m2


def invstd_from_var(var, eps):
    r""":math:`1/\sqrt{\mathrm{var} + \epsilon}` of every value of a float64 host array.

    One formula (:func:`numbabn._formulas.invstd`), compiled.

    A zero ``var + eps`` gives inf and a negative one NaN, as PyTorch's, without
    NumPy's warnings: ``eps <= 0`` (PyTorch allows it outside batch norm's
    training) and running variances driven below zero by a momentum outside
    [0, 1] reach here.  The NumPy expression under ``np.errstate`` cost 2.6 us a
    call, :func:`numbabn.cpu.formulas.invstd_map` 0.8.
    """
    return invstd_map(var, eps)


_affine = _formulas.for_numpy(_formulas.affine)
_backward_coefficients = _formulas.for_numpy(_formulas.backward_coefficients)


def affine_coefficients(mean, invstd, weight, bias):
    r"""Return ``(scale, shift)`` with :math:`y = x\,\mathrm{scale} + \mathrm{shift}`.

    :func:`numbabn._formulas.affine` on (C,) vectors; ``weight``/``bias`` of
    None mean 1 and 0.
    """
    return _affine(mean, invstd, 1.0 if weight is None else weight,
                   0.0 if bias is None else bias)


def backward_coefficients(invstd, weight, sum_dy, sum_dy_xmu, count, training):
    r"""Coefficients ``(k_dy, k_x, k_0)`` of ``dx = k_dy*dy + k_x*(x - mean) + k_0``.

    :func:`numbabn._formulas.backward_coefficients` on (C,) vectors in
    training (statistics depend on x); frozen statistics:
    :math:`dx = \gamma\sigma^{-1} dy`.  An infinite :math:`\sigma^{-1}` (var + eps
    <= 0) gives inf and NaN (0 * inf) without NumPy's warnings, as PyTorch.
    """
    w = 1.0 if weight is None else weight
    with np.errstate(invalid="ignore", over="ignore"):
        if not training:
            k_dy = invstd * w
            zeros = np.zeros_like(k_dy)
            return k_dy, zeros, zeros
        return _backward_coefficients(invstd, w, sum_dy, sum_dy_xmu, float(max(count, 1)))


def blend_running(running, batch, momentum):
    """``running <- (1 - momentum) * running + momentum * batch``, in place.

    Two in-place ufuncs give the same roundings as the expression (the product
    in ``running``'s dtype, the sum in float64 rounded once into ``running``)
    without its temporaries.
    """
    running *= 1.0 - momentum
    running += momentum * batch
