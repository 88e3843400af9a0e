r"""Per-channel arithmetic between the reduce and apply kernels (float64, C values).

These few vector operations are the same for every backend that finalizes on
the host, and for the MPI layer, which merges statistics across processes
before it applies them.
"""
import numpy as np


def chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    r"""Merge two ``(count, mean, M2)`` summaries with Chan's pairwise update.

    .. math::

        n = n_a + n_b,\quad \delta = \bar x_b - \bar x_a,\quad
        \bar x = \frac{n_a \bar x_a + n_b \bar x_b}{n},\quad
        M_2 = M_{2,a} + M_{2,b} + \delta^2 \frac{n_a n_b}{n}

    (Chan, Golub and LeVeque, 1979).  The counts are scalars; the means and
    M2 may be scalars or per-channel arrays.  Plain Python, so the CPU kernels
    compile it with ``njit`` and the MPI layer calls it on (C,) vectors: one
    formula, one rounding behaviour.  An empty side returns the other side
    unchanged.
    """
    n = n_a + n_b
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    delta = mean_b - mean_a
    # The weighted mean (not mean_a + delta * n_b / n) keeps an infinite
    # piece mean infinite, as a plain sum would, instead of turning it to NaN.
    mean = (n_a * mean_a + n_b * mean_b) / n
    m2 = m2_a + m2_b + delta * delta * (n_a * (n_b / n))
    return n, mean, m2


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
    r""":math:`\sigma^{-1} = 1 / \sqrt{\mathrm{var} + \epsilon}`."""
    return 1.0 / np.sqrt(var + eps)


def affine_coefficients(mean, invstd, weight, bias):
    r"""Return ``(scale, shift)`` with :math:`y = x\,\mathrm{scale} + \mathrm{shift}`.

    :math:`\mathrm{scale} = \gamma \sigma^{-1}`,
    :math:`\mathrm{shift} = \beta - \mu\,\mathrm{scale}`; ``weight``/``bias``
    of None mean 1 and 0.
    """
    scale = invstd if weight is None else invstd * weight
    shift = -mean * scale
    if bias is not None:
        shift += bias
    return scale, shift


def backward_coefficients(invstd, weight, sum_dy, sum_dy_xmu, count, training):
    r"""Coefficients ``(k_dy, k_x, k_0)`` of ``dx = k_dy*dy + k_x*(x - mean) + k_0``.

    Training (statistics depend on x):
    :math:`dx = \gamma\sigma^{-1}\left(dy - \frac{S}{M} - \hat x\,\frac{\sigma^{-1}P}{M}\right)`
    with :math:`S = \sum dy`, :math:`P = \sum dy\,(x-\mu)`.  Frozen statistics:
    :math:`dx = \gamma\sigma^{-1} dy`.
    """
    k_dy = invstd if weight is None else invstd * weight
    if not training:
        zeros = np.zeros_like(k_dy)
        return k_dy, zeros, zeros
    m = float(max(count, 1))
    k_x = -k_dy * invstd * invstd * (sum_dy_xmu / m)
    k_0 = -k_dy * (sum_dy / m)
    return k_dy, k_x, k_0


def blend_running(running, batch, momentum):
    """``running <- (1 - momentum) * running + momentum * batch``, in place.

    Two in-place ufuncs give the same roundings as the expression (the product
    in ``running``'s dtype, the sum in float64 rounded once into ``running``)
    without its temporaries.
    """
    running *= 1.0 - momentum
    running += momentum * batch
