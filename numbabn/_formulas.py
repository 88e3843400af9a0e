r"""Every per-channel formula of the family, written once as plain scalar Python.

The functions use arithmetic and ``sqrt`` only, so one source serves three
compilers:

- host vectors (:mod:`numbabn._channel_math`, the MPI layer, the engine):
  :func:`for_numpy` returns a copy of a formula whose ``sqrt`` is NumPy's, so
  it runs elementwise on (C,) arrays;
- CPU kernels: ``numba.njit`` (:mod:`numbabn.cpu.formulas`);
- CUDA kernels: ``numba.cuda.jit(device=True)`` (:mod:`numbabn.cuda.formulas`).

Division and square root are correctly rounded in all three (IEEE 754), so a
formula gives the same bits wherever it runs.

.. math::

    \sigma^{-1} = \frac{1}{\sqrt{\mathrm{var} + \epsilon}}, \qquad
    \mathrm{scale} = \gamma\,\sigma^{-1}, \quad \mathrm{shift} = \beta - \mu\,\mathrm{scale},

    k_{dy} = \gamma\sigma^{-1}, \quad k_x = -k_{dy}\,\sigma^{-2}\,\frac{P}{M}, \quad
    k_0 = -k_{dy}\,\frac{S}{M}

(:math:`S = \sum dy`, :math:`P = \sum dy\,(x - \mu)`, M values per channel),
and Chan, Golub and LeVeque's merge of two ``(count, mean, M2)`` summaries
(:func:`chan_merge`).
"""
import math
import types

import numpy as np

#: The square root the formulas call: math.sqrt for the compiled copies, see for_numpy.
sqrt = math.sqrt


def chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    r"""Merge two ``(count, mean, M2)`` summaries with Chan's pairwise update.

    .. math::

        n = n_a + n_b,\quad \delta = \bar x_b - \bar x_a,\quad
        \bar x = \frac{n_a \bar x_a + n_b \bar x_b}{n},\quad
        M_2 = M_{2,a} + M_{2,b} + \delta^2 \frac{n_a n_b}{n}

    (Chan, Golub and LeVeque, 1979).  The counts are scalars; the means and
    M2 may be scalars or per-channel arrays.  An empty side returns the other
    side unchanged.
    """
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    n = n_a + n_b
    delta = mean_b - mean_a
    # The weighted mean (not mean_a + delta * n_b / n) keeps an infinite
    # piece mean infinite, as a plain sum would, instead of turning it to NaN.
    mean = (n_a * mean_a + n_b * mean_b) / n
    m2 = m2_a + m2_b + delta * delta * (n_a * (n_b / n))
    return n, mean, m2


def invstd(var, eps):
    r""":math:`\sigma^{-1} = 1 / \sqrt{\mathrm{var} + \epsilon}`."""
    return 1.0 / sqrt(var + eps)


def affine(mean, inv, weight, bias):
    r"""``(scale, shift)`` with :math:`y = x\,\mathrm{scale} + \mathrm{shift}`."""
    scale = inv * weight
    return scale, bias - mean * scale


def backward_coefficients(inv, weight, sum_dy, sum_dy_xmu, m):
    r"""``(k_dy, k_x, k_0)`` of ``dx = k_dy*dy + k_x*(x - mean) + k_0`` (training statistics)."""
    k_dy = inv * weight
    return k_dy, -k_dy * inv * inv * (sum_dy_xmu / m), -k_dy * (sum_dy / m)


def renorm_correction(mean, var, running_mean, running_var, eps, rmax, dmax):
    r"""Batch renormalization's ``(invstd, r, d)`` of one channel (Ioffe, 2017).

    .. math::

        \sigma_B = \sqrt{\mathrm{var} + \epsilon},\quad
        \sigma_R = \sqrt{\hat\sigma^2 + \epsilon},\quad
        r = \mathrm{clip}(\sigma_B/\sigma_R, 1/r_{max}, r_{max}),\quad
        d = \mathrm{clip}((\mu_B - \hat\mu)/\sigma_R, -d_{max}, d_{max})

    The clips let NaN through, as ``numpy.clip`` does.
    """
    sigma = sqrt(var + eps)
    sigma_r = sqrt(running_var + eps)
    r = sigma / sigma_r
    if r < 1.0 / rmax:
        r = 1.0 / rmax
    elif r > rmax:
        r = rmax
    d = (mean - running_mean) / sigma_r
    if d < -dmax:
        d = -dmax
    elif d > dmax:
        d = dmax
    return 1.0 / sigma, r, d


def for_numpy(formula):
    """A copy of ``formula`` whose ``sqrt`` is NumPy's: it then runs on arrays, elementwise."""
    namespace = dict(formula.__globals__, sqrt=np.sqrt)
    return types.FunctionType(formula.__code__, namespace, formula.__name__,
                              formula.__defaults__, formula.__closure__)
