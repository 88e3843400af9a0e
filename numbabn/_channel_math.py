r"""Per-channel arithmetic between the reduce and apply kernels (float64, C values).

These few vector operations are the same for every backend that finalizes on
the host, and for the MPI layer, which merges statistics across processes
before it applies them.
"""
import numpy as np


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
    """``running <- (1 - momentum) * running + momentum * batch``, in place."""
    running[...] = (1.0 - momentum) * running + momentum * batch
