r"""Batch renormalization's training forward in one kernel call (the fused kernels of
:mod:`numbabn.cpu.forward` with another finalize).

Per channel the statistics are reduced exactly as batch norm reduces them
(the same pieces and merges, so the same bits), then finalized in float64 with
the running estimates as they are before the step:

.. math::

    \sigma_B = \sqrt{M_2/M + \epsilon},\quad \sigma_R = \sqrt{\hat\sigma^2 + \epsilon},\quad
    r = \mathrm{clip}(\sigma_B/\sigma_R, 1/r_{max}, r_{max}),\quad
    d = \mathrm{clip}((\mu_B - \hat\mu)/\sigma_R, -d_{max}, d_{max}),

.. math::

    \mathrm{scale} = \sigma_B^{-1}\,(\gamma r),\qquad
    \mathrm{shift} = (\beta + \gamma d) - \mu_B\,\mathrm{scale},

and ``y = x * scale + shift`` is written while the channel is in cache.  With
``rmax = 1, dmax = 0`` every expression is batch norm's (``γ·1 = γ``,
``β + γ·0 = β``), so the output is batch norm's bit for bit.  The three loop
orders (planes, blocks, rows) and their serial twins are those of
:mod:`numbabn.cpu.forward`; see there for when each is used.
"""
import numpy as np
from numba import njit, prange

from . import formulas
from ._chunks import BLOCKS_MAX_B, ROWS_MAX_B, channel_blocks, channel_runs, row_pieces, serial
from .moments import _moments_rows, _moments_rows_serial, block_moments, channel_planes_moments
from .normalize import normalize_block, normalize_channel, normalize_rows_piece


@njit(nogil=True, cache=True)
def renorm_affine(mu, m2, count, run_mean, run_var, weight, bias, eps, rmax, dmax):
    """``(invstd, r, d, scale, shift)`` of one channel (float64)."""
    invstd, r, d = formulas.renorm_correction(mu, m2 / count, run_mean, run_var, eps, rmax,
                                              dmax)
    scale = invstd * (weight * r)
    return invstd, r, d, scale, (bias + weight * d) - mu * scale


@njit(nogil=True, cache=True)
def _finalize(c, mu, q, count, p, stats):
    """Finalize channel ``c`` into ``stats`` (rows mean, m2, invstd, r, d); ``(scale, shift)``.

    ``p`` = (running_mean, running_var, weight, bias, eps, rmax, dmax).
    """
    run_mean, run_var, weight, bias, eps, rmax, dmax = p
    invstd, r, d, s, t = renorm_affine(mu, q, count, run_mean[c], run_var[c], weight[c],
                                       bias[c], eps, rmax, dmax)
    stats[0, c] = mu
    stats[1, c] = q
    stats[2, c] = invstd
    stats[3, c] = r
    stats[4, c] = d
    return s, t


@njit(nogil=True, cache=True)
def _renorm_run(x, c0, c1, p, y, stats, pipelined):
    """Channels ``c0:c1`` in order, as :func:`numbabn.cpu.forward._train_run`."""
    A, C, B = x.shape
    count = float(A * B)
    mu, q = channel_planes_moments(x, c0, None)
    for c in range(c0, c1):
        s, t = _finalize(c, mu, q, count, p, stats)
        if c + 1 == c1:
            normalize_channel(x, c, s, t, y, None, None)
        elif pipelined:
            mu, q = channel_planes_moments(x, c + 1, (c, s, t, y, None, None))
        else:
            normalize_channel(x, c, s, t, y, None, None)
            mu, q = channel_planes_moments(x, c + 1, None)


@njit(nogil=True, parallel=True, cache=True)
def _renorm_planes(x, p, y, per, pipelined):
    C = x.shape[1]
    stats = np.empty((5, C))
    for k in prange((C + per - 1) // per):
        _renorm_run(x, k * per, min((k + 1) * per, C), p, y, stats, pipelined)
    return stats


@njit(nogil=True, cache=True)
def _renorm_planes_serial(x, p, y, per, pipelined):
    C = x.shape[1]
    stats = np.empty((5, C))
    for k in range((C + per - 1) // per):
        _renorm_run(x, k * per, min((k + 1) * per, C), p, y, stats, pipelined)
    return stats


@njit(nogil=True, cache=True)
def _rows_coefficients(mean, m2, A, B, p):
    """Statistics per channel, ``scale``/``shift`` per column (W = C * B) of the rows view."""
    C = mean.size
    stats = np.empty((5, C))
    scale = np.empty(C * B)
    shift = np.empty(C * B)
    for c in range(C):
        s, t = _finalize(c, mean[c], m2[c], float(A * B), p, stats)
        for b in range(B):
            scale[c * B + b] = s
            shift[c * B + b] = t
    return stats, scale, shift


@njit(nogil=True, parallel=True, cache=True)
def _renorm_rows(x2, B, p, y2):
    A, W = x2.shape
    mean, m2 = _moments_rows(x2, B)
    stats, scale, shift = _rows_coefficients(mean, m2, A, B, p)
    rows, pieces = row_pieces(A, W)
    for k in prange(pieces):
        normalize_rows_piece(x2, k * rows, min((k + 1) * rows, A), scale, shift, y2, None,
                             None)
    return stats


@njit(nogil=True, cache=True)
def _renorm_rows_serial(x2, B, p, y2):
    A, W = x2.shape
    mean, m2 = _moments_rows_serial(x2, B)
    stats, scale, shift = _rows_coefficients(mean, m2, A, B, p)
    normalize_rows_piece(x2, 0, A, scale, shift, y2, None, None)
    return stats


@njit(nogil=True, cache=True)
def _renorm_block(x2, B, c0, c1, p, y2, stats):
    """Reduce channels ``c0:c1`` of the (A, C * B) view, then normalize them while in cache."""
    mean, m2 = np.empty(c1), np.empty(c1)
    block_moments(x2, B, c0, c1, mean, m2)
    count = float(x2.shape[0] * B)
    scale, shift = np.empty(c1 - c0), np.empty(c1 - c0)
    for k in range(c1 - c0):
        scale[k], shift[k] = _finalize(c0 + k, mean[c0 + k], m2[c0 + k], count, p, stats)
    normalize_block(x2, B, c0, scale, shift, y2, None, None)


@njit(nogil=True, parallel=True, cache=True)
def _renorm_blocks(x2, B, p, y2):
    A, W = x2.shape
    C = W // B
    per, blocks, _, _ = channel_blocks(A, C, B)
    stats = np.empty((5, C))
    for k in prange(blocks):
        _renorm_block(x2, B, k * per, min((k + 1) * per, C), p, y2, stats)
    return stats


@njit(nogil=True, cache=True)
def _renorm_blocks_serial(x2, B, p, y2):
    A, W = x2.shape
    C = W // B
    per, blocks, _, _ = channel_blocks(A, C, B)
    stats = np.empty((5, C))
    for k in range(blocks):
        _renorm_block(x2, B, k * per, min((k + 1) * per, C), p, y2, stats)
    return stats


def renorm_train(x3, running_mean, running_var, weight, bias, eps, rmax, dmax, y3):
    """Renormalize ``x3`` into ``y3``; returns float64 ``stats`` rows (mean, m2, invstd, r, d).

    ``weight``/``bias`` are float64 vectors (ones and zeros stand for None);
    the running buffers are read, not written.  Needs ``A * B >= 2``.
    """
    A, C, B = x3.shape
    p = (running_mean, running_var, weight, bias, eps, rmax, dmax)
    one_thread = serial(x3.size)
    if B < ROWS_MAX_B:
        kernel = _renorm_rows_serial if one_thread else _renorm_rows
        return kernel(x3.reshape(A, C * B), B, p, y3.reshape(A, C * B))
    if B < BLOCKS_MAX_B:
        kernel = _renorm_blocks_serial if one_thread else _renorm_blocks
        return kernel(x3.reshape(A, C * B), B, p, y3.reshape(A, C * B))
    kernel = _renorm_planes_serial if one_thread else _renorm_planes
    per, pipelined = channel_runs(A, C, B, x3.itemsize, one_thread)
    return kernel(x3, p, y3, per, pipelined)
