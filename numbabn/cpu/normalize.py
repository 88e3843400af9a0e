r"""Per-channel affine map of an (A, C, B) array, ``y = x * scale[c] + shift[c]``.

Training and inference forward both end here, with

.. math::

    \mathrm{scale}_c = \gamma_c / \sqrt{\sigma_c^2 + \epsilon}, \qquad
    \mathrm{shift}_c = \beta_c - \mu_c \, \mathrm{scale}_c .

The arithmetic is done in float64 (``scale`` and ``shift`` are float64), so the
cancellation between ``x * scale`` and ``shift`` on data with a large offset
loses nothing visible at float32 precision; the result is rounded once when
stored into ``y``.
"""
import numpy as np
from numba import njit, prange, uint64

from . import formulas
from ._arrays import rows_view, unless_in_place
from ._chunks import CHANNEL_JOBS_MIN_C, ROWS_MAX_B, job_index, plane_pieces, row_pieces, serial
from .epilogue import into, store, view


@njit(nogil=True, cache=True, error_model="numpy")  # a variance of -eps gives inf, not ZeroDivisionError
def infer_coefficients(mean, var, weight, bias, has_bias, eps):
    """Per-channel float64 ``(scale, shift)`` from running statistics, in one loop.

    The formulas of :mod:`numbabn._formulas` (``weight`` holds ones for a
    missing weight, a bias of None adds nothing), without the host's
    temporaries.
    """
    C = mean.size
    scale = np.empty(C)
    shift = np.empty(C)
    for c in range(C):
        scale[c], shift[c] = formulas.affine(mean[c], formulas.invstd(var[c], eps), weight[c],
                                             bias[c] if has_bias else 0.0)
    return scale, shift


@njit(nogil=True, cache=True)
def normalize_channel(x, c, s, t, y, act, r):
    """``y[:, c] = x[:, c] * s + t`` for one channel of (A, C, B) arrays.

    Direct unsigned indexing, no per-plane views (see :func:`numbabn.cpu.moments._sum`).
    ``act`` and ``r`` are the fused activation and residual (None for none; see
    :mod:`numbabn.cpu.epilogue`), and ``y`` None writes into ``x`` (see
    :func:`numbabn.cpu._arrays.unless_in_place`), as in every function here.
    """
    y = into(x, y)
    A, C, B = x.shape
    uc = uint64(c)
    for a in range(A):
        ua = uint64(a)
        for b in range(B):
            ub = uint64(b)
            store(y, (ua, uc, ub), x[ua, uc, ub] * s + t, act, r)


@njit(nogil=True, cache=True)
def normalize_rows_piece(x2, a0, a1, scale, shift, y2, act, r2):
    """Rows ``a0:a1`` of (A, W) arrays, with W-wide ``scale``/``shift`` (vectorizes along rows)."""
    y2 = into(x2, y2)
    W = x2.shape[1]
    for a in range(a0, a1):
        xr = x2[a]
        yr = y2[a]
        rr = view(r2, a)
        for j in range(W):
            store(yr, j, xr[j] * scale[j] + shift[j], act, rr)


@njit(nogil=True, cache=True)
def normalize_block(x2, B, c0, scale, shift, y2, act, r2):
    """Channels ``c0:c0 + len(scale)`` of (A, C * B) arrays, row by row, channel by channel.

    Unsigned indices, as in :func:`normalize_channel`.
    """
    y2 = into(x2, y2)
    for a in range(x2.shape[0]):
        ua = uint64(a)
        for k in range(scale.size):
            s = scale[k]
            t = shift[k]
            first = uint64((c0 + k) * B)
            for b in range(B):
                i = first + uint64(b)
                store(y2, (ua, i), x2[ua, i] * s + t, act, r2)


@njit(nogil=True, parallel=True, cache=True)
def _normalize_planes(x, scale, shift, y, act, r):
    y = into(x, y)
    A, C, B = x.shape
    pieces, length = plane_pieces(B)
    for job in prange(A * C * pieces):
        a, c, k = job_index(job, C, pieces)
        s = scale[c]
        t = shift[c]
        # Slices indexed from 0 vectorize with plain loads (see moments.lane_blocks).
        xs = x[a, c, k * length:(k + 1) * length]
        ys = y[a, c, k * length:(k + 1) * length]
        rs = view(r, (a, c, slice(k * length, (k + 1) * length)))
        for b in range(xs.shape[0]):
            store(ys, b, xs[b] * s + t, act, rs)


@njit(nogil=True, parallel=True, cache=True)
def _normalize_channels(x, scale, shift, y, act, r):
    for c in prange(x.shape[1]):
        normalize_channel(x, c, scale[c], shift[c], y, act, r)


@njit(nogil=True, cache=True)
def _normalize_channels_serial(x, scale, shift, y, act, r):
    for c in range(x.shape[1]):
        normalize_channel(x, c, scale[c], shift[c], y, act, r)


@njit(nogil=True, parallel=True, cache=True)
def _normalize_rows(x2, scale, shift, y2, act, r2):
    A, W = x2.shape
    rows, pieces = row_pieces(A, W)
    for k in prange(pieces):
        normalize_rows_piece(x2, k * rows, min((k + 1) * rows, A), scale, shift, y2, act, r2)


@njit(nogil=True, cache=True)
def _normalize_rows_serial(x2, scale, shift, y2, act, r2):
    normalize_rows_piece(x2, 0, x2.shape[0], scale, shift, y2, act, r2)


# The plain calls, without the fusion arguments: each None argument costs the
# dispatcher about 75 ns at every call, 1-3% of the smallest batch norms.  The
# loops are the fused kernels' own, compiled with None for the fusion.

@njit(nogil=True, cache=True)
def _normalize_rows_plain(x2, scale, shift, y2):
    _normalize_rows(x2, scale, shift, y2, None, None)


@njit(nogil=True, cache=True)
def _normalize_rows_serial_plain(x2, scale, shift, y2):
    _normalize_rows_serial(x2, scale, shift, y2, None, None)


@njit(nogil=True, cache=True)
def _normalize_channels_plain(x, scale, shift, y):
    _normalize_channels(x, scale, shift, y, None, None)


@njit(nogil=True, cache=True)
def _normalize_channels_serial_plain(x, scale, shift, y):
    _normalize_channels_serial(x, scale, shift, y, None, None)


@njit(nogil=True, cache=True)
def _normalize_planes_plain(x, scale, shift, y):
    _normalize_planes(x, scale, shift, y, None, None)



def normalize(x3, scale, shift, y3):
    """Write ``x3 * scale[c] + shift[c]`` into ``y3`` (both C-contiguous)."""
    if x3.size == 0:
        return
    A, C, B = x3.shape
    one_thread = serial(x3.size)
    y3 = unless_in_place(y3, x3)
    if B < ROWS_MAX_B:
        kernel = _normalize_rows_serial_plain if one_thread else _normalize_rows_plain
        # One coefficient per column of the (A, C * B) rows view.
        if B > 1:
            scale, shift = np.repeat(scale, B), np.repeat(shift, B)
        kernel(rows_view(x3), scale, shift, rows_view(y3))
    elif one_thread:
        _normalize_channels_serial_plain(x3, scale, shift, y3)
    else:
        kernel = _normalize_channels_plain if C >= CHANNEL_JOBS_MIN_C else _normalize_planes_plain
        kernel(x3, scale, shift, y3)


def normalize_fused(x3, scale, shift, y3, act, r3):
    """Write ``act(x3 * scale[c] + shift[c] + r3)`` into ``y3`` (all C-contiguous).

    ``act`` (see :mod:`numbabn.cpu.epilogue`) and the residual ``r3`` may be
    None; the loop orders are those of :func:`normalize`.
    """
    if x3.size == 0:
        return
    A, C, B = x3.shape
    one_thread = serial(x3.size)
    y3 = unless_in_place(y3, x3)
    if B < ROWS_MAX_B:
        kernel = _normalize_rows_serial if one_thread else _normalize_rows
        if B > 1:
            scale, shift = np.repeat(scale, B), np.repeat(shift, B)
        kernel(rows_view(x3), scale, shift, rows_view(y3), act, rows_view(r3))
    elif one_thread:
        _normalize_channels_serial(x3, scale, shift, y3, act, r3)
    else:
        kernel = _normalize_channels if C >= CHANNEL_JOBS_MIN_C else _normalize_planes
        kernel(x3, scale, shift, y3, act, r3)
