r"""Per-channel finalize of batch renormalization on the device (one block per channel).

:func:`renorm_stats` merges the moment partials as
:func:`numbabn.cuda.finalize.train_stats` does, then writes on the device what
:mod:`numbabn._renorm_math` computes on the host (the same expressions, in the
same order):

.. math::

    \sigma_B = \sqrt{M_2/M + \epsilon},\quad \sigma_R = \sqrt{\hat\sigma^2 + \epsilon},\quad
    r = \mathrm{clip}(\sigma_B/\sigma_R, 1/r_{max}, r_{max}),\quad
    d = \mathrm{clip}((\mu_B - \hat\mu)/\sigma_R, -d_{max}, d_{max}),

the effective affine :math:`(\gamma r, \beta + \gamma d)` for the normalize
kernel, and the running update of batch norm (after r and d are formed).
"""
from . import formulas
from ._runtime import cuda
from .finalize import merge_channel


@cuda.jit
def renorm_stats(part_n, part_mean, part_m2, Bp, eps, momentum, rmax, dmax,
                 running_mean, running_var, weight, has_weight, bias, has_bias, saved, coef):
    """``saved[0:4]`` = mean, invstd, r, d (saved dtype); ``coef[0:4]`` = mean, invstd, γ·r,
    β + γ·d (float64); running buffers blended."""
    c = cuda.blockIdx.x
    n, mean, m2 = merge_channel(part_n, part_mean, part_m2, Bp)
    if cuda.threadIdx.x == 0:
        invstd, r, d = formulas.renorm_correction(
            mean, m2 / n, float(running_mean[c]), float(running_var[c]), eps, rmax, dmax)
        gamma = float(weight[c]) if has_weight else 1.0
        beta = float(bias[c]) if has_bias else 0.0
        saved[0, c] = mean
        saved[1, c] = invstd
        saved[2, c] = r
        saved[3, c] = d
        coef[0, c] = mean
        coef[1, c] = invstd
        coef[2, c] = gamma * r
        coef[3, c] = beta + gamma * d
        # Written as train_stats writes it (the buffer read in its own dtype), so the
        # running buffers round as batch norm's do, on a GPU and in the simulator.
        keep = 1.0 - momentum
        running_mean[c] = keep * running_mean[c] + momentum * mean
        running_var[c] = keep * running_var[c] + momentum * (m2 / (n - 1.0))
