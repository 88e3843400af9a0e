r"""Training forward in one kernel call: statistics, per-channel coefficients and the normalized output.

For every channel the kernel reduces the data to (mean, M2) exactly as
:mod:`numbabn.cpu.moments` does (same pieces, same merge order, so the
statistics are bit-identical), then finalizes in float64

.. math::

    \sigma^{-1} = \frac{1}{\sqrt{M_2 / M + \epsilon}}, \qquad
    \mathrm{scale} = \gamma\,\sigma^{-1}, \qquad
    \mathrm{shift} = \beta - \mu\,\mathrm{scale}

(the formulas of :mod:`numbabn._channel_math`) and writes
``y = x * scale + shift``.

Three loop orders:

- planes (B >= BLOCKS_MAX_B): each thread takes whole
  channels and normalizes a channel right after reducing it, while it is still
  in cache, so memory sees about 2 x bytes instead of 3 x; channels too large
  for the cache are pipelined: a channel is normalized while the next one is
  read for its statistics;
- blocks (ROWS_MAX_B <= B < BLOCKS_MAX_B): the same, with blocks of whole
  channels reduced and normalized along rows of the (A, C * B) view, so no
  loop is as short as one plane;
- rows (B < ROWS_MAX_B): one parallel pass reduces blocks of rows into
  (C * B)-wide partial statistics, the partials are merged in order, and a
  second parallel pass over the same blocks (the same thread gets the same
  block, often still in its cache) normalizes.

Each has a serial twin for small inputs.
"""
import numpy as np
from numba import njit, prange

from .._channel_math import blend_running
from . import formulas
from ._arrays import rows_view, unless_in_place
from ._chunks import BLOCKS_MAX_B, ROWS_MAX_B, channel_blocks, channel_runs, row_pieces, serial
from .moments import _moments_rows, _moments_rows_serial, block_moments, channel_planes_moments
from .normalize import normalize_block, normalize_channel, normalize_rows_piece


@njit(nogil=True, cache=True)
def affine_from_moments(mu, m2, count, weight, bias, eps):
    """``(invstd, scale, shift)`` of one channel (the formulas of :mod:`numbabn._formulas`)."""
    r = formulas.invstd(m2 / count, eps)
    scale, shift = formulas.affine(mu, r, weight, bias)
    return r, scale, shift


@njit(nogil=True, cache=True)
def _train_run(x, c0, c1, weight, bias, eps, y, mean, m2, invstd, pipelined, act, res):
    """Channels ``c0:c1`` in order: reduce a channel, then normalize it.

    Not pipelined, a channel is normalized right after it is reduced, while it
    is still in cache.  Pipelined (channels too large to stay in cache),
    channel ``c`` is normalized in the loops that read channel ``c + 1`` for
    its reduction, so that reading one from memory overlaps with the other.
    The statistics and outputs are the same bits either way.  ``act`` and
    ``res`` are the fused activation and residual (see :mod:`numbabn.cpu.epilogue`).
    """
    A, C, B = x.shape
    count = float(A * B)
    mu, q = channel_planes_moments(x, c0, None)
    for c in range(c0, c1):
        r, s, t = affine_from_moments(mu, q, count, weight[c], bias[c], eps)
        mean[c], m2[c], invstd[c] = mu, q, r
        if c + 1 == c1:
            normalize_channel(x, c, s, t, y, act, res)
        elif pipelined:
            mu, q = channel_planes_moments(x, c + 1, (c, s, t, y, act, res))
        else:
            normalize_channel(x, c, s, t, y, act, res)
            mu, q = channel_planes_moments(x, c + 1, None)


@njit(nogil=True, parallel=True, cache=True)
def _train_planes(x, weight, bias, eps, y, per, pipelined, act, res):
    C = x.shape[1]
    mean, m2, invstd = np.empty(C), np.empty(C), np.empty(C)
    for k in prange((C + per - 1) // per):
        _train_run(x, k * per, min((k + 1) * per, C), weight, bias, eps, y, mean, m2, invstd,
                   pipelined, act, res)
    return mean, m2, invstd


@njit(nogil=True, cache=True)
def _train_planes_serial(x, weight, bias, eps, y, per, pipelined, act, res):
    C = x.shape[1]
    mean, m2, invstd = np.empty(C), np.empty(C), np.empty(C)
    for k in range((C + per - 1) // per):
        _train_run(x, k * per, min((k + 1) * per, C), weight, bias, eps, y, mean, m2, invstd,
                   pipelined, act, res)
    return mean, m2, invstd


@njit(nogil=True, cache=True)
def _rows_coefficients(mean, m2, A, B, weight, bias, eps):
    """``invstd`` per channel, and ``scale``/``shift`` per column (W = C * B) of the rows view."""
    C = mean.size
    invstd = np.empty(C)
    scale = np.empty(C * B)
    shift = np.empty(C * B)
    for c in range(C):
        r, s, t = affine_from_moments(mean[c], m2[c], float(A * B), weight[c], bias[c], eps)
        invstd[c] = r
        for b in range(B):
            scale[c * B + b] = s
            shift[c * B + b] = t
    return invstd, scale, shift


@njit(nogil=True, parallel=True, cache=True)
def _train_rows(x2, B, weight, bias, eps, y2, act, r2):
    A, W = x2.shape
    mean, m2 = _moments_rows(x2, B)
    invstd, scale, shift = _rows_coefficients(mean, m2, A, B, weight, bias, eps)
    # Same pieces as the reduction, and the same piece to the same thread
    # (static schedule): a piece is often still in that thread's cache.
    rows, pieces = row_pieces(A, W)
    for k in prange(pieces):
        normalize_rows_piece(x2, k * rows, min((k + 1) * rows, A), scale, shift, y2, act, r2)
    return mean, m2, invstd


@njit(nogil=True, cache=True)
def _train_rows_serial(x2, B, weight, bias, eps, y2, act, r2):
    A, W = x2.shape
    mean, m2 = _moments_rows_serial(x2, B)
    invstd, scale, shift = _rows_coefficients(mean, m2, A, B, weight, bias, eps)
    normalize_rows_piece(x2, 0, A, scale, shift, y2, act, r2)
    return mean, m2, invstd


@njit(nogil=True, cache=True)
def _train_block(x2, B, c0, c1, weight, bias, eps, y2, mean, m2, invstd, act, r2):
    """Reduce channels ``c0:c1`` of the (A, C * B) view, then normalize them while they are in cache."""
    block_moments(x2, B, c0, c1, mean, m2)
    count = float(x2.shape[0] * B)
    scale, shift = np.empty(c1 - c0), np.empty(c1 - c0)
    for k in range(c1 - c0):
        c = c0 + k
        invstd[c], scale[k], shift[k] = affine_from_moments(
            mean[c], m2[c], count, weight[c], bias[c], eps)
    normalize_block(x2, B, c0, scale, shift, y2, act, r2)


@njit(nogil=True, parallel=True, cache=True)
def _train_blocks(x2, B, weight, bias, eps, y2, act, r2):
    A, W = x2.shape
    C = W // B
    per, blocks, _, _ = channel_blocks(A, C, B)
    mean, m2, invstd = np.empty(C), np.empty(C), np.empty(C)
    for k in prange(blocks):
        _train_block(x2, B, k * per, min((k + 1) * per, C), weight, bias, eps, y2, mean, m2, invstd,
                     act, r2)
    return mean, m2, invstd


@njit(nogil=True, cache=True)
def _train_blocks_serial(x2, B, weight, bias, eps, y2, act, r2):
    A, W = x2.shape
    C = W // B
    per, blocks, _, _ = channel_blocks(A, C, B)
    mean, m2, invstd = np.empty(C), np.empty(C), np.empty(C)
    for k in range(blocks):
        _train_block(x2, B, k * per, min((k + 1) * per, C), weight, bias, eps, y2, mean, m2, invstd,
                     act, r2)
    return mean, m2, invstd


# The plain calls, without the fusion arguments (see numbabn.cpu.normalize).

@njit(nogil=True, cache=True)
def _train_rows_plain(x2, B, weight, bias, eps, y2):
    return _train_rows(x2, B, weight, bias, eps, y2, None, None)


@njit(nogil=True, cache=True)
def _train_rows_serial_plain(x2, B, weight, bias, eps, y2):
    return _train_rows_serial(x2, B, weight, bias, eps, y2, None, None)


@njit(nogil=True, cache=True)
def _train_blocks_plain(x2, B, weight, bias, eps, y2):
    return _train_blocks(x2, B, weight, bias, eps, y2, None, None)


@njit(nogil=True, cache=True)
def _train_blocks_serial_plain(x2, B, weight, bias, eps, y2):
    return _train_blocks_serial(x2, B, weight, bias, eps, y2, None, None)


@njit(nogil=True, cache=True)
def _train_planes_plain(x, weight, bias, eps, y, per, pipelined):
    return _train_planes(x, weight, bias, eps, y, per, pipelined, None, None)


@njit(nogil=True, cache=True)
def _train_planes_serial_plain(x, weight, bias, eps, y, per, pipelined):
    return _train_planes_serial(x, weight, bias, eps, y, per, pipelined, None, None)



def forward_train(x3, weight, bias, eps, y3):
    """Normalize ``x3`` into ``y3`` with its own statistics; returns float64 ``(mean, m2, invstd)``.

    ``weight`` and ``bias`` are float64 vectors (ones and zeros stand for None).
    Training needs ``A * B >= 2``, which the public API checks.
    """
    A, C, B = x3.shape
    one_thread = serial(x3.size)
    y3 = unless_in_place(y3, x3)
    if B < ROWS_MAX_B:
        kernel = _train_rows_serial_plain if one_thread else _train_rows_plain
        return kernel(x3.reshape(A, C * B), B, weight, bias, eps, rows_view(y3))
    if B < BLOCKS_MAX_B:
        kernel = _train_blocks_serial_plain if one_thread else _train_blocks_plain
        return kernel(x3.reshape(A, C * B), B, weight, bias, eps, rows_view(y3))
    kernel = _train_planes_serial_plain if one_thread else _train_planes_plain
    per, pipelined = channel_runs(A, C, B, x3.itemsize, one_thread)
    return kernel(x3, weight, bias, eps, y3, per, pipelined)


def forward_train_fused(x3, weight, bias, eps, y3, act, r3):
    """:func:`forward_train` with ``act`` and the residual ``r3`` (the shape of ``x3``)
    fused into the store (see :mod:`numbabn.cpu.epilogue`); either may be None."""
    A, C, B = x3.shape
    one_thread = serial(x3.size)
    y3 = unless_in_place(y3, x3)
    if B < BLOCKS_MAX_B:
        if B < ROWS_MAX_B:
            kernel = _train_rows_serial if one_thread else _train_rows
        else:
            kernel = _train_blocks_serial if one_thread else _train_blocks
        return kernel(x3.reshape(A, C * B), B, weight, bias, eps, rows_view(y3), act,
                      rows_view(r3))
    kernel = _train_planes_serial if one_thread else _train_planes
    per, pipelined = channel_runs(A, C, B, x3.itemsize, one_thread)
    return kernel(x3, weight, bias, eps, y3, per, pipelined, act, r3)


@njit(nogil=True, cache=True, error_model="numpy")
def _blend_running_pair(running_mean, running_var, keep_mean, keep_var, mean, m2, count,
                        momentum):
    """Both running updates in one loop, rounded as :func:`numbabn._channel_math.blend_running`.

    ``keep_*`` is ``1 - momentum`` in the buffer's dtype: NumPy multiplies a
    buffer by a Python float in the buffer's dtype, then adds the float64
    ``momentum * batch`` in float64 and rounds once on the store.
    """
    for c in range(mean.size):
        running_mean[c] = keep_mean * running_mean[c] + momentum * mean[c]
        running_var[c] = keep_var * running_var[c] + momentum * (m2[c] / (count - 1))


_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def update_running(running_mean, running_var, mean, m2, count, momentum):
    r"""Blend the batch statistics into the running buffers, in place.

    .. math::

        \hat\mu \leftarrow (1 - m)\,\hat\mu + m\,\mu_B, \qquad
        \hat\sigma^2 \leftarrow (1 - m)\,\hat\sigma^2 + m\,\frac{M_2}{M - 1}

    One compiled loop instead of a handful of NumPy calls on C values; other
    dtypes (float16) go through :func:`numbabn._channel_math.blend_running`.
    """
    dm, dv = running_mean.dtype, running_var.dtype
    if dm in _KERNEL_DTYPES and dv in _KERNEL_DTYPES:
        keep = 1.0 - momentum
        _blend_running_pair(running_mean, running_var, dm.type(keep), dv.type(keep), mean, m2,
                            float(count), momentum)
    else:
        blend_running(running_mean, mean, momentum)
        blend_running(running_var, m2 / (count - 1), momentum)
