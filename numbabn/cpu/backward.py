r"""Batch-norm backward on an (A, C, B) array, in two kernels.

With :math:`\hat x = (x - \mu)\,\sigma^{-1}` and :math:`M = A B` values per
channel, the reduce kernel forms, in float64 and in one pass over ``dy`` and
``x``,

.. math::

    S_c = \sum dy, \qquad P_c = \sum dy\,(x - \mu_c),

so that :math:`\partial L/\partial\beta = S` and
:math:`\partial L/\partial\gamma = \sigma^{-1} P`.  The apply kernel then
writes, for per-channel coefficients chosen by the caller,

.. math::

    dx = k^{dy}_c\,dy + k^{x}_c\,(x - \mu_c) + k^{0}_c .

For training-mode statistics :math:`k^{dy} = \gamma\sigma^{-1}`,
:math:`k^{x} = -k^{dy}\sigma^{-2} P / M`, :math:`k^{0} = -k^{dy} S / M`; with
frozen statistics only :math:`k^{dy}` is non-zero.

:func:`backward` does both in one kernel call: with whole channels per thread
(planes layout) or blocks of whole channels (blocks layout, planes shorter
than BLOCKS_MAX_B) a channel is differentiated right after it is reduced, while
``dy`` and ``x`` are still in cache, so memory sees about 3 x bytes instead of
5 x.  Channels too large for the cache are pipelined instead: a channel's dx is
written while the next channel is read for its sums.  The sums are accumulated
in the same pieces and order as by :func:`backward_reduce`, so the fused and
the split paths agree bit for bit.
"""
import numpy as np
from numba import float64, njit, prange, uint64

from . import formulas
from ._arrays import rows_view, unless_in_place
from ._chunks import (
    BLOCKS_MAX_B, CHANNEL_JOBS_MIN_C, ROWS_MAX_B, channel_blocks, channel_pieces, channel_runs,
    job_index, lanes_for, piece_bounds, plane_pieces, row_pieces, serial,
)
from .epilogue import grad, into, keep, view
from .moments import segment_sum


@njit(nogil=True, cache=True)
def _piece_sums(dy, x, a0, a1, c, mu, start, stop, acc, apply, act, y):
    """``(sum(dy), sum(dy * (x - mu)))`` over ``[a0:a1, c, start:stop]``, in float64.

    ``acc`` is (2, L) lane scratch space; lanes, leftovers and direct unsigned
    indexing as in :func:`numbabn.cpu.moments._sum`.  ``apply`` is None, or
    ``(c2, mu2, u, w, z, dx, dr)``: the same loop then also writes channel ``c2``'s
    ``dx = u * dy + w * (x - mu2) + z`` at every index it reads (the pipelined
    backward; see :func:`_backward_run`).  The sums are the same either way.

    ``act`` and ``y`` fuse an activation's backward: ``dy`` is read through
    its derivative at the forward's output ``y`` (None: plain ``dy``), and the
    masked gradient is also written into ``dr`` (None: not kept); see
    :mod:`numbabn.cpu.epilogue`.  The same arguments in every function here.
    """
    uc = uint64(c)
    n = stop - start
    L = acc.shape[1]
    first = uint64(start)
    full = n - n % L
    if apply is not None:  # unpacked once: no reference counting inside the loops
        c2, mu2, u, w, z, dx, dr = apply
        dx = into(dy, dx)  # in place (see numbabn.cpu._arrays.unless_in_place)
        u2 = uint64(c2)
    acc_s = acc[0]
    acc_p = acc[1]
    for lane in range(L):
        acc_s[lane] = 0.0
        acc_p[lane] = 0.0
    s = 0.0
    p = 0.0
    for a in range(a0, a1):
        ua = uint64(a)
        for r in range(n // L):
            base = first + uint64(r * L)
            for lane in range(L):
                i = base + uint64(lane)
                g = grad(dy, (ua, uc, i), y, act)
                acc_s[lane] += g
                acc_p[lane] += g * (x[ua, uc, i] - mu)
            if apply is not None:
                for lane in range(L):
                    i = base + uint64(lane)
                    g2 = grad(dy, (ua, u2, i), y, act)
                    dx[ua, u2, i] = u * g2 + w * (x[ua, u2, i] - mu2) + z
                    keep(dr, (ua, u2, i), g2)
        for j in range(full, n):
            i = first + uint64(j)
            g = grad(dy, (ua, uc, i), y, act)
            s += g
            p += g * (x[ua, uc, i] - mu)
            if apply is not None:
                g2 = grad(dy, (ua, u2, i), y, act)
                dx[ua, u2, i] = u * g2 + w * (x[ua, u2, i] - mu2) + z
                keep(dr, (ua, u2, i), g2)
    for lane in range(L):
        s += acc_s[lane]
        p += acc_p[lane]
    return s, p


@njit(nogil=True, cache=True)
def channel_planes_sums(dy, x, c, mu, apply, act, y):
    """``(S, P)`` of channel ``c`` of (A, C, B) arrays: piece sums added in order.

    ``apply`` (see :func:`_piece_sums`) differentiates another channel in the same loops.
    """
    A, C, B = x.shape
    group, pieces = channel_pieces(A, B)
    acc = np.empty((2, lanes_for(B)))
    s = 0.0
    p = 0.0
    for j in range(pieces):
        a0, a1, start, stop = piece_bounds(j, A, B, group)
        ds, dp = _piece_sums(dy, x, a0, a1, c, mu, start, stop, acc, apply, act, y)
        s += ds
        p += dp
    return s, p


@njit(nogil=True, cache=True)
def coefficients(invstd, weight, sum_dy, sum_dy_xmu, m, training):
    """``(k_dy, k_x, k_0)`` of one channel (:func:`numbabn._formulas.backward_coefficients`)."""
    if not training:
        return invstd * weight, 0.0, 0.0
    return formulas.backward_coefficients(invstd, weight, sum_dy, sum_dy_xmu, m)


@njit(nogil=True, cache=True)
def apply_channel(dy, x, c, mu, u, w, z, dx, act, y, dr):
    """dx of one channel (direct unsigned indexing, as :func:`numbabn.cpu.moments._sum`).

    ``dx`` None writes into ``dy`` (see :func:`numbabn.cpu._arrays.unless_in_place`), as
    in every function here.
    """
    dx = into(dy, dx)
    A, C, B = x.shape
    uc = uint64(c)
    for a in range(A):
        ua = uint64(a)
        for b in range(B):
            ub = uint64(b)
            g = grad(dy, (ua, uc, ub), y, act)
            dx[ua, uc, ub] = u * g + w * (x[ua, uc, ub] - mu) + z
            keep(dr, (ua, uc, ub), g)


@njit(nogil=True, cache=True)
def merge_row_sums(part_s, part_p, B):
    """Per-channel sums: pieces added in order, then the B columns of each channel."""
    pieces, W = part_s.shape
    s = part_s[0].copy()
    p = part_p[0].copy()
    for k in range(1, pieces):
        for j in range(W):
            s[j] += part_s[k, j]
            p[j] += part_p[k, j]
    if B == 1:
        return s, p
    C = W // B
    sum_dy = np.zeros(C)
    sum_dy_xmu = np.zeros(C)
    for c in range(C):
        for b in range(B):
            sum_dy[c] += s[c * B + b]
            sum_dy_xmu[c] += p[c * B + b]
    return sum_dy, sum_dy_xmu


@njit(nogil=True, cache=True)
def apply_rows_piece(dy2, x2, a0, a1, mean, k_dy, k_x, k_0, dx2, act, y2, dr2):
    """dx over rows ``a0:a1`` with W-wide coefficients (vectorizes along rows)."""
    dx2 = into(dy2, dx2)
    W = x2.shape[1]
    for a in range(a0, a1):
        g = dy2[a]
        v = x2[a]
        out = dx2[a]
        yr = view(y2, a)
        dr = view(dr2, a)
        for j in range(W):
            gj = grad(g, j, yr, act)
            out[j] = k_dy[j] * gj + k_x[j] * (v[j] - mean[j]) + k_0[j]
            keep(dr, j, gj)


@njit(nogil=True, cache=True)
def column_sums(dy2, x2, a0, a1, off, centre, col_s, col_p, act, y2):
    """Column sums of ``dy`` and ``dy * (x - centre)`` over rows ``a0:a1``, columns ``off:off + W``.

    Rows four at a time, as in :func:`numbabn.cpu.moments.column_sums`, so the
    float64 column accumulators are loaded and stored a quarter as often.
    The rows layout passes whole rows (``off = 0``, W = C * B), the blocks
    layout the columns of a block of channels.
    """
    W = col_s.size
    for j in range(W):
        col_s[j] = 0.0
        col_p[j] = 0.0
    quad_end = a0 + (a1 - a0) // 4 * 4
    for a in range(a0, quad_end, 4):
        g0 = dy2[a, off:off + W]
        g1 = dy2[a + 1, off:off + W]
        g2 = dy2[a + 2, off:off + W]
        g3 = dy2[a + 3, off:off + W]
        v0 = x2[a, off:off + W]
        v1 = x2[a + 1, off:off + W]
        v2 = x2[a + 2, off:off + W]
        v3 = x2[a + 3, off:off + W]
        h0 = view(y2, (a, slice(off, off + W)))
        h1 = view(y2, (a + 1, slice(off, off + W)))
        h2 = view(y2, (a + 2, slice(off, off + W)))
        h3 = view(y2, (a + 3, slice(off, off + W)))
        for j in range(W):
            # Every load before the first store: the store could alias dy or x, so a
            # load after it would be repeated (and converted to float64 again).
            mu = centre[j]
            d0, d1 = float64(grad(g0, j, h0, act)), float64(grad(g1, j, h1, act))
            d2, d3 = float64(grad(g2, j, h2, act)), float64(grad(g3, j, h3, act))
            p = (d0 * (v0[j] - mu) + d1 * (v1[j] - mu)) + (d2 * (v2[j] - mu) + d3 * (v3[j] - mu))
            col_s[j] += (d0 + d1) + (d2 + d3)
            col_p[j] += p
    for a in range(quad_end, a1):
        g = dy2[a, off:off + W]
        v = x2[a, off:off + W]
        h = view(y2, (a, slice(off, off + W)))
        for j in range(W):
            d = float64(grad(g, j, h, act))
            p = d * (v[j] - centre[j])
            col_s[j] += d
            col_p[j] += p


@njit(nogil=True, cache=True)
def _block_centre(mean, c0, c1, B):
    """Each column's channel mean, for channels ``c0:c1``."""
    centre = np.empty((c1 - c0) * B)
    for k in range(c1 - c0):
        for b in range(B):
            centre[k * B + b] = mean[c0 + k]
    return centre


@njit(nogil=True, cache=True)
def block_sums(dy2, x2, B, c0, c1, mean, sum_dy, sum_dy_xmu, act, y2):
    """``(S, P)`` of channels ``c0:c1`` of the (A, C * B) views, written into ``sum_dy``/``sum_dy_xmu``.

    Per group of rows (:func:`numbabn.cpu._chunks.channel_blocks`): column
    sums about each column's channel mean, then the B columns of each
    channel; groups are added in order.
    """
    A = x2.shape[0]
    _, _, rows, groups = channel_blocks(A, x2.shape[1] // B, B)
    W = (c1 - c0) * B
    # Filled by a function of its own: filled here, inline, the column sums
    # below compiled about 20% slower.
    centre = _block_centre(mean, c0, c1, B)
    col_s, col_p = np.empty(W), np.empty(W)
    off = c0 * B
    for g in range(groups):
        column_sums(dy2, x2, g * rows, min((g + 1) * rows, A), off, centre, col_s, col_p, act, y2)
        for k in range(c1 - c0):
            s = segment_sum(col_s, k * B, B)
            p = segment_sum(col_p, k * B, B)
            if g == 0:
                sum_dy[c0 + k] = s
                sum_dy_xmu[c0 + k] = p
            else:
                sum_dy[c0 + k] += s
                sum_dy_xmu[c0 + k] += p


@njit(nogil=True, cache=True)
def apply_block(dy2, x2, B, c0, mean, k_dy, k_x, k_0, dx2, act, y2, dr2):
    """dx of channels ``c0:c0 + len(k_dy)`` of the (A, C * B) views, per-channel coefficients.

    Row by row, channel by channel, with unsigned indices (see
    :func:`numbabn.cpu.moments._sum`): no per-column coefficient arrays to fill.
    """
    dx2 = into(dy2, dx2)
    for a in range(x2.shape[0]):
        ua = uint64(a)
        for k in range(k_dy.size):
            mu = mean[c0 + k]
            u = k_dy[k]
            w = k_x[k]
            z = k_0[k]
            first = uint64((c0 + k) * B)
            for b in range(B):
                i = first + uint64(b)
                g = grad(dy2, (ua, i), y2, act)
                dx2[ua, i] = u * g + w * (x2[ua, i] - mu) + z
                keep(dr2, (ua, i), g)


# --- reduce ------------------------------------------------------------------------------

@njit(nogil=True, parallel=True, cache=True)
def _reduce_channels(dy, x, mean):
    C = x.shape[1]
    sum_dy = np.empty(C)
    sum_dy_xmu = np.empty(C)
    for c in prange(C):
        sum_dy[c], sum_dy_xmu[c] = channel_planes_sums(dy, x, c, mean[c], None, None, None)
    return sum_dy, sum_dy_xmu


@njit(nogil=True, cache=True)
def _reduce_channels_serial(dy, x, mean):
    C = x.shape[1]
    sum_dy = np.empty(C)
    sum_dy_xmu = np.empty(C)
    for c in range(C):
        sum_dy[c], sum_dy_xmu[c] = channel_planes_sums(dy, x, c, mean[c], None, None, None)
    return sum_dy, sum_dy_xmu


@njit(nogil=True, parallel=True, cache=True)
def _reduce_rows(dy2, x2, B, mean, act, y2):
    A, W = x2.shape
    rows, pieces = row_pieces(A, W)
    mean_w = np.repeat(mean, B)
    part_s = np.empty((pieces, W))
    part_p = np.empty((pieces, W))
    for k in prange(pieces):
        column_sums(dy2, x2, k * rows, min((k + 1) * rows, A), 0, mean_w, part_s[k], part_p[k],
                    act, y2)
    return merge_row_sums(part_s, part_p, B)


@njit(nogil=True, cache=True)
def _reduce_rows_serial(dy2, x2, B, mean, act, y2):
    A, W = x2.shape
    rows, pieces = row_pieces(A, W)
    mean_w = np.repeat(mean, B)
    part_s = np.empty((pieces, W))
    part_p = np.empty((pieces, W))
    for k in range(pieces):
        column_sums(dy2, x2, k * rows, min((k + 1) * rows, A), 0, mean_w, part_s[k], part_p[k],
                    act, y2)
    return merge_row_sums(part_s, part_p, B)


@njit(nogil=True, parallel=True, cache=True)
def _reduce_blocks(dy2, x2, B, mean):
    A, W = x2.shape
    C = W // B
    per, blocks, _, _ = channel_blocks(A, C, B)
    sum_dy, sum_dy_xmu = np.empty(C), np.empty(C)
    for k in prange(blocks):
        block_sums(dy2, x2, B, k * per, min((k + 1) * per, C), mean, sum_dy, sum_dy_xmu, None,
                   None)
    return sum_dy, sum_dy_xmu


@njit(nogil=True, cache=True)
def _reduce_blocks_serial(dy2, x2, B, mean):
    A, W = x2.shape
    C = W // B
    per, blocks, _, _ = channel_blocks(A, C, B)
    sum_dy, sum_dy_xmu = np.empty(C), np.empty(C)
    for k in range(blocks):
        block_sums(dy2, x2, B, k * per, min((k + 1) * per, C), mean, sum_dy, sum_dy_xmu, None,
                   None)
    return sum_dy, sum_dy_xmu


# --- apply -------------------------------------------------------------------------------

@njit(nogil=True, parallel=True, cache=True)
def _apply_planes(dy, x, mean, k_dy, k_x, k_0, dx):
    dx = into(dy, dx)
    A, C, B = x.shape
    pieces, length = plane_pieces(B)
    for job in prange(A * C * pieces):
        a, c, k = job_index(job, C, pieces)
        mu = mean[c]
        u = k_dy[c]
        w = k_x[c]
        z = k_0[c]
        piece = slice(k * length, (k + 1) * length)
        g = dy[a, c, piece]
        v = x[a, c, piece]
        out = dx[a, c, piece]
        for b in range(v.shape[0]):
            out[b] = u * g[b] + w * (v[b] - mu) + z


@njit(nogil=True, parallel=True, cache=True)
def _apply_channels(dy, x, mean, k_dy, k_x, k_0, dx):
    for c in prange(x.shape[1]):
        apply_channel(dy, x, c, mean[c], k_dy[c], k_x[c], k_0[c], dx, None, None, None)


@njit(nogil=True, cache=True)
def _apply_channels_serial(dy, x, mean, k_dy, k_x, k_0, dx):
    for c in range(x.shape[1]):
        apply_channel(dy, x, c, mean[c], k_dy[c], k_x[c], k_0[c], dx, None, None, None)


@njit(nogil=True, parallel=True, cache=True)
def _apply_rows(dy2, x2, mean_w, k_dy, k_x, k_0, dx2):
    A, W = x2.shape
    rows, pieces = row_pieces(A, W)
    for k in prange(pieces):
        apply_rows_piece(dy2, x2, k * rows, min((k + 1) * rows, A), mean_w, k_dy, k_x, k_0, dx2,
                         None, None, None)


@njit(nogil=True, cache=True)
def _apply_rows_serial(dy2, x2, mean_w, k_dy, k_x, k_0, dx2):
    apply_rows_piece(dy2, x2, 0, x2.shape[0], mean_w, k_dy, k_x, k_0, dx2, None, None, None)


# --- reduce and apply in one call --------------------------------------------------------

@njit(nogil=True, cache=True)
def _backward_run(dy, x, c0, c1, mean, invstd, weight, training, dx, sum_dy, sum_dy_xmu,
                  pipelined, act, y, dr):
    """Channels ``c0:c1`` in order: reduce a channel, then write its dx.

    Not pipelined, a channel's dx is written right after it is reduced, while
    it is still in cache.  Pipelined (channels too large to stay in cache),
    channel ``c``'s dx is written in the loops that read channel ``c + 1`` for
    its sums.  The sums and dx are the same bits either way.
    """
    A, C, B = x.shape
    m = float(max(A * B, 1))
    s, p = channel_planes_sums(dy, x, c0, mean[c0], None, act, y)
    for c in range(c0, c1):
        sum_dy[c], sum_dy_xmu[c] = s, p
        u, w, z = coefficients(invstd[c], weight[c], s, p, m, training)
        if c + 1 == c1:
            apply_channel(dy, x, c, mean[c], u, w, z, dx, act, y, dr)
        elif pipelined:
            s, p = channel_planes_sums(dy, x, c + 1, mean[c + 1], (c, mean[c], u, w, z, dx, dr),
                                       act, y)
        else:
            apply_channel(dy, x, c, mean[c], u, w, z, dx, act, y, dr)
            s, p = channel_planes_sums(dy, x, c + 1, mean[c + 1], None, act, y)


@njit(nogil=True, parallel=True, cache=True)
def _backward_planes(dy, x, mean, invstd, weight, training, dx, per, pipelined, act, y, dr):
    C = x.shape[1]
    sum_dy, sum_dy_xmu = np.empty(C), np.empty(C)
    for k in prange((C + per - 1) // per):
        _backward_run(dy, x, k * per, min((k + 1) * per, C), mean, invstd, weight, training, dx,
                      sum_dy, sum_dy_xmu, pipelined, act, y, dr)
    return sum_dy, sum_dy_xmu


@njit(nogil=True, cache=True)
def _backward_planes_serial(dy, x, mean, invstd, weight, training, dx, per, pipelined, act,
                            y, dr):
    C = x.shape[1]
    sum_dy, sum_dy_xmu = np.empty(C), np.empty(C)
    for k in range((C + per - 1) // per):
        _backward_run(dy, x, k * per, min((k + 1) * per, C), mean, invstd, weight, training, dx,
                      sum_dy, sum_dy_xmu, pipelined, act, y, dr)
    return sum_dy, sum_dy_xmu


@njit(nogil=True, cache=True)
def _rows_coefficients(sum_dy, sum_dy_xmu, A, B, invstd, weight, training):
    """Per-column (W = C * B) backward coefficients."""
    C = sum_dy.size
    k_dy = np.empty(C * B)
    k_x = np.empty(C * B)
    k_0 = np.empty(C * B)
    m = float(max(A * B, 1))
    for c in range(C):
        u, w, z = coefficients(invstd[c], weight[c], sum_dy[c], sum_dy_xmu[c], m, training)
        for b in range(B):
            k_dy[c * B + b] = u
            k_x[c * B + b] = w
            k_0[c * B + b] = z
    return k_dy, k_x, k_0


@njit(nogil=True, parallel=True, cache=True)
def _backward_rows(dy2, x2, B, mean, invstd, weight, training, dx2, act, y2, dr2):
    A, W = x2.shape
    sum_dy, sum_dy_xmu = _reduce_rows(dy2, x2, B, mean, act, y2)
    k_dy, k_x, k_0 = _rows_coefficients(sum_dy, sum_dy_xmu, A, B, invstd, weight, training)
    # Same pieces and threads as the reduction (static schedule), often still in cache.
    rows, pieces = row_pieces(A, W)
    mean_w = np.repeat(mean, B)
    for k in prange(pieces):
        apply_rows_piece(dy2, x2, k * rows, min((k + 1) * rows, A), mean_w, k_dy, k_x, k_0, dx2,
                         act, y2, dr2)
    return sum_dy, sum_dy_xmu


@njit(nogil=True, cache=True)
def _backward_rows_serial(dy2, x2, B, mean, invstd, weight, training, dx2, act, y2, dr2):
    A, W = x2.shape
    sum_dy, sum_dy_xmu = _reduce_rows_serial(dy2, x2, B, mean, act, y2)
    k_dy, k_x, k_0 = _rows_coefficients(sum_dy, sum_dy_xmu, A, B, invstd, weight, training)
    apply_rows_piece(dy2, x2, 0, A, np.repeat(mean, B), k_dy, k_x, k_0, dx2, act, y2, dr2)
    return sum_dy, sum_dy_xmu


@njit(nogil=True, cache=True)
def _backward_block(dy2, x2, B, c0, c1, mean, invstd, weight, training, dx2, sum_dy, sum_dy_xmu,
                    act, y2, dr2):
    """Reduce channels ``c0:c1`` of the (A, C * B) views, then write their dx while in cache."""
    block_sums(dy2, x2, B, c0, c1, mean, sum_dy, sum_dy_xmu, act, y2)
    m = float(max(x2.shape[0] * B, 1))
    k_dy, k_x, k_0 = np.empty(c1 - c0), np.empty(c1 - c0), np.empty(c1 - c0)
    for k in range(c1 - c0):
        c = c0 + k
        k_dy[k], k_x[k], k_0[k] = coefficients(
            invstd[c], weight[c], sum_dy[c], sum_dy_xmu[c], m, training)
    apply_block(dy2, x2, B, c0, mean, k_dy, k_x, k_0, dx2, act, y2, dr2)


@njit(nogil=True, parallel=True, cache=True)
def _backward_blocks(dy2, x2, B, mean, invstd, weight, training, dx2, act, y2, dr2):
    A, W = x2.shape
    C = W // B
    per, blocks, _, _ = channel_blocks(A, C, B)
    sum_dy, sum_dy_xmu = np.empty(C), np.empty(C)
    for k in prange(blocks):
        _backward_block(dy2, x2, B, k * per, min((k + 1) * per, C), mean, invstd, weight,
                        training, dx2, sum_dy, sum_dy_xmu, act, y2, dr2)
    return sum_dy, sum_dy_xmu


@njit(nogil=True, cache=True)
def _backward_blocks_serial(dy2, x2, B, mean, invstd, weight, training, dx2, act, y2, dr2):
    A, W = x2.shape
    C = W // B
    per, blocks, _, _ = channel_blocks(A, C, B)
    sum_dy, sum_dy_xmu = np.empty(C), np.empty(C)
    for k in range(blocks):
        _backward_block(dy2, x2, B, k * per, min((k + 1) * per, C), mean, invstd, weight,
                        training, dx2, sum_dy, sum_dy_xmu, act, y2, dr2)
    return sum_dy, sum_dy_xmu


# --- entry points ------------------------------------------------------------------------

def backward_reduce(dy3, x3, mean):
    """Per-channel float64 ``(sum(dy), sum(dy * (x - mean)))``."""
    A, C, B = x3.shape
    if A * B == 0:
        return np.zeros(C), np.zeros(C)
    one_thread = serial(x3.size)
    if B < ROWS_MAX_B:
        kernel = _reduce_rows_serial if one_thread else _reduce_rows
        return kernel(rows_view(dy3), rows_view(x3), B, mean, None, None)
    if B < BLOCKS_MAX_B:
        kernel = _reduce_blocks_serial if one_thread else _reduce_blocks
        return kernel(rows_view(dy3), rows_view(x3), B, mean)
    return (_reduce_channels_serial if one_thread else _reduce_channels)(dy3, x3, mean)


def backward_apply(dy3, x3, mean, k_dy, k_x, k_0, dx3):
    """Write ``k_dy*dy + k_x*(x - mean) + k_0`` (per channel) into ``dx3``."""
    if x3.size == 0:
        return
    A, C, B = x3.shape
    one_thread = serial(x3.size)
    dx3 = unless_in_place(dx3, dy3)
    if B < ROWS_MAX_B:
        kernel = _apply_rows_serial if one_thread else _apply_rows
        kernel(rows_view(dy3), rows_view(x3), *(np.repeat(v, B) for v in (mean, k_dy, k_x, k_0)),
               rows_view(dx3))
    elif one_thread:
        _apply_channels_serial(dy3, x3, mean, k_dy, k_x, k_0, dx3)
    else:
        kernel = _apply_channels if C >= CHANNEL_JOBS_MIN_C else _apply_planes
        kernel(dy3, x3, mean, k_dy, k_x, k_0, dx3)


# The plain calls, without the fusion arguments (see numbabn.cpu.normalize).

@njit(nogil=True, cache=True)
def _backward_rows_plain(dy2, x2, B, mean, invstd, weight, training, dx2):
    return _backward_rows(dy2, x2, B, mean, invstd, weight, training, dx2, None, None, None)


@njit(nogil=True, cache=True)
def _backward_rows_serial_plain(dy2, x2, B, mean, invstd, weight, training, dx2):
    return _backward_rows_serial(dy2, x2, B, mean, invstd, weight, training, dx2, None, None,
                                 None)


@njit(nogil=True, cache=True)
def _backward_blocks_plain(dy2, x2, B, mean, invstd, weight, training, dx2):
    return _backward_blocks(dy2, x2, B, mean, invstd, weight, training, dx2, None, None, None)


@njit(nogil=True, cache=True)
def _backward_blocks_serial_plain(dy2, x2, B, mean, invstd, weight, training, dx2):
    return _backward_blocks_serial(dy2, x2, B, mean, invstd, weight, training, dx2, None, None,
                                   None)


@njit(nogil=True, cache=True)
def _backward_planes_plain(dy, x, mean, invstd, weight, training, dx, per, pipelined):
    return _backward_planes(dy, x, mean, invstd, weight, training, dx, per, pipelined, None,
                            None, None)


@njit(nogil=True, cache=True)
def _backward_planes_serial_plain(dy, x, mean, invstd, weight, training, dx, per, pipelined):
    return _backward_planes_serial(dy, x, mean, invstd, weight, training, dx, per, pipelined,
                                   None, None, None)



def backward(dy3, x3, mean, invstd, weight, training, dx3):
    """Reduce and apply in one call; returns float64 ``(sum_dy, sum_dy_xmu)``.

    ``mean``, ``invstd`` and ``weight`` are float64 vectors (ones stand for a
    missing weight).  ``x3`` must not be empty.
    """
    B = x3.shape[2]
    one_thread = serial(x3.size)
    dx3 = unless_in_place(dx3, dy3)
    if B < ROWS_MAX_B:
        kernel = _backward_rows_serial_plain if one_thread else _backward_rows_plain
        return kernel(rows_view(dy3), rows_view(x3), B, mean, invstd, weight, training,
                      rows_view(dx3))
    if B < BLOCKS_MAX_B:
        kernel = _backward_blocks_serial_plain if one_thread else _backward_blocks_plain
        return kernel(rows_view(dy3), rows_view(x3), B, mean, invstd, weight, training,
                      rows_view(dx3))
    kernel = _backward_planes_serial_plain if one_thread else _backward_planes_plain
    A, C, B = x3.shape
    per, pipelined = channel_runs(A, C, B, x3.itemsize, one_thread)
    return kernel(dy3, x3, mean, invstd, weight, training, dx3, per, pipelined)


def backward_fused(dy3, x3, mean, invstd, weight, training, dx3, act, y3, dr3):
    """:func:`backward` through a fused activation and residual.

    With an activation ``act`` the forward's output ``y3`` masks ``dy3`` as it
    is read, and ``dr3`` (None: not kept) receives the masked gradient (see
    :mod:`numbabn.cpu.epilogue`).  The loop orders are those of :func:`backward`.
    """
    B = x3.shape[2]
    one_thread = serial(x3.size)
    dx3 = unless_in_place(dx3, dy3)
    if B < BLOCKS_MAX_B:
        if B < ROWS_MAX_B:
            kernel = _backward_rows_serial if one_thread else _backward_rows
        else:
            kernel = _backward_blocks_serial if one_thread else _backward_blocks
        return kernel(rows_view(dy3), rows_view(x3), B, mean, invstd, weight, training,
                      rows_view(dx3), act, rows_view(y3), rows_view(dr3))
    kernel = _backward_planes_serial if one_thread else _backward_planes
    A, C, B = x3.shape
    per, pipelined = channel_runs(A, C, B, x3.itemsize, one_thread)
    return kernel(dy3, x3, mean, invstd, weight, training, dx3, per, pipelined, act, y3, dr3)
