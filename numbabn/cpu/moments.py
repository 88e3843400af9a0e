r"""Per-channel moments of an (A, C, B) array: count, mean and M2.

Each piece of work (see :mod:`numbabn.cpu._chunks`) is reduced with an exact
two-pass computation while it sits in cache (in the rows layout, each chunk of
four rows is, see :func:`rows_piece_moments`),

.. math::

    \bar x_k = \frac{1}{n_k}\sum_{i \in k} x_i, \qquad
    M_{2,k} = \sum_{i \in k} (x_i - \bar x_k)^2,

and the pieces of one channel are merged in a fixed order with Chan, Golub and
LeVeque's pairwise update (Chan et al., 1979),

.. math::

    n = n_a + n_b,\quad \delta = \bar x_b - \bar x_a,\quad
    \bar x = \frac{n_a \bar x_a + n_b \bar x_b}{n},\quad
    M_2 = M_{2,a} + M_{2,b} + \delta^2 \frac{n_a n_b}{n}.

Everything accumulates in float64.  ``E[x^2] - E[x]^2`` is never formed, so a
large common offset (``1e4 + N(0, 1)``) costs no accuracy.
"""
import numpy as np
from numba import float64, njit, prange, uint64

from . import formulas
from .epilogue import into, store
from ._chunks import (
    BLOCKS_MAX_B, ROWS_MAX_B, channel_blocks, channel_pieces, lanes_for, piece_bounds, row_pieces,
    serial,
)


#: Chan's merge of two (count, mean, M2) summaries, compiled for the kernels.
chan_merge = formulas.chan_merge


@njit(nogil=True, cache=True)
def _sum(x, a0, a1, c, start, stop, acc, shift, normalize):
    r"""Over ``x[a0:a1, c, start:stop]``: ``sum((v - shift)**2)``, or ``sum(v)`` when ``shift`` is None.

    Float64 throughout, with ``L = len(acc)`` independent lanes: in each
    plane, lane ``l`` adds the elements ``start + l``, ``start + l + L``, ...,
    the leftover elements of each plane go to one scalar sum, and the lanes are
    added to it in a fixed order at the end.  A loop over independent lanes
    vectorizes without reassociating any sum (fastmath stays off).  The array
    is indexed directly (no views, whose reference counts cost more than a
    short plane) with unsigned indices, so Numba emits no negative-index
    wraparound that would turn vector loads into gathers.

    ``normalize`` is None, or ``(c2, scale, shift2, y, act, r)``: the same loop then
    also writes ``y[a, c2, i] = x[a, c2, i] * scale + shift2`` (with the fused
    activation and residual of :mod:`numbabn.cpu.epilogue`) at every index
    it reads, so another channel is normalized while this one is read from
    memory (the pipelined training forward).  The sum is the same either way.
    """
    uc = uint64(c)
    n = stop - start
    L = acc.shape[0]
    first = uint64(start)
    full = n - n % L
    if normalize is not None:  # unpacked once: no reference counting inside the loops
        c2, scale, shift2, y, act, res = normalize
        y = into(x, y)  # in place (see numbabn.cpu._arrays.unless_in_place)
        u2 = uint64(c2)
    for lane in range(L):
        acc[lane] = 0.0
    total = 0.0
    for a in range(a0, a1):
        ua = uint64(a)
        for r in range(n // L):
            base = first + uint64(r * L)
            for lane in range(L):
                if shift is None:
                    acc[lane] += x[ua, uc, base + uint64(lane)]
                else:
                    d = x[ua, uc, base + uint64(lane)] - shift
                    acc[lane] += d * d
            if normalize is not None:
                for lane in range(L):
                    i = base + uint64(lane)
                    store(y, (ua, u2, i), x[ua, u2, i] * scale + shift2, act, res)
        for j in range(full, n):
            i = first + uint64(j)
            if shift is None:
                total += x[ua, uc, i]
            else:
                d = x[ua, uc, i] - shift
                total += d * d
            if normalize is not None:
                store(y, (ua, u2, i), x[ua, u2, i] * scale + shift2, act, res)
    for lane in range(L):
        total += acc[lane]
    return total


@njit(nogil=True, cache=True)
def _piece_moments(x, a0, a1, c, start, stop, acc, normalize):
    """Two-pass mean and M2 of ``x[a0:a1, c, start:stop]``; ``acc`` is lane scratch space.

    ``normalize`` (see :func:`_sum`) rides along with the first pass, the one
    that reads from memory.
    """
    mean = _sum(x, a0, a1, c, start, stop, acc, None, normalize) / ((a1 - a0) * (stop - start))
    return mean, _sum(x, a0, a1, c, start, stop, acc, mean, None)


@njit(nogil=True, cache=True)
def channel_planes_moments(x, c, normalize):
    """Mean and M2 of channel ``c`` of an (A, C, B) array: its pieces merged in order.

    With ``normalize = (c2, scale, shift, y, act, r)`` channel ``c2`` (of the same
    shape) is normalized into ``y`` in the same loops; see :func:`_sum`.
    """
    A, C, B = x.shape
    group, pieces = channel_pieces(A, B)
    acc = np.empty(lanes_for(B))
    n, mu, q = 0.0, 0.0, 0.0
    for j in range(pieces):
        a0, a1, start, stop = piece_bounds(j, A, B, group)
        m, s = _piece_moments(x, a0, a1, c, start, stop, acc, normalize)
        n, mu, q = chan_merge(n, mu, q, float((a1 - a0) * (stop - start)), m, s)
    return mu, q


@njit(nogil=True, parallel=True, cache=True)
def _moments_planes(x):
    """Whole channels shared out over threads."""
    C = x.shape[1]
    mean = np.empty(C)
    m2 = np.empty(C)
    for c in prange(C):
        mean[c], m2[c] = channel_planes_moments(x, c, None)
    return mean, m2


@njit(nogil=True, cache=True)
def _moments_planes_serial(x):
    C = x.shape[1]
    mean = np.empty(C)
    m2 = np.empty(C)
    for c in range(C):
        mean[c], m2[c] = channel_planes_moments(x, c, None)
    return mean, m2


# --- rows: (A, W) views with W = C * B < 16 * C columns ---------------------------------

@njit(nogil=True, cache=True)
def rows_piece_moments(x2, a0, a1, mean, m2):
    r"""Column means and M2 of rows ``a0:a1`` of ``x2`` in one pass, written into ``mean``/``m2``.

    Rows are taken four at a time.  The four values of a column in such a
    chunk are reduced exactly (their mean :math:`m`, then
    :math:`q = \sum (v - m)^2`) and merged into the column's running
    :math:`(n, \bar x, M_2)` with Chan's update in weighted-mean form,

    .. math::

        n' = n + 4, \quad \bar x' = \frac{n}{n'}\bar x + \frac{4}{n'} m, \quad
        M_2' = M_2 + q + (m - \bar x)^2 \frac{4 n}{n'},

    whose weights depend only on the chunk, so the loop along the row
    vectorizes with scalar weights.  The piece is read once (a two-pass
    reduction reads it twice); leftover rows are one last, smaller chunk.  The
    weighted-mean form keeps an infinite mean infinite (PyTorch's result)
    where ``mean += delta * w`` would turn it into NaN.
    """
    W = x2.shape[1]
    quad_end = a0 + (a1 - a0) // 4 * 4
    n = 0.0
    for a in range(a0, quad_end, 4):
        r0, r1, r2, r3 = x2[a], x2[a + 1], x2[a + 2], x2[a + 3]
        if n == 0.0:
            for j in range(W):
                mean[j], m2[j] = _four_moments(
                    float64(r0[j]), float64(r1[j]), float64(r2[j]), float64(r3[j]))
        else:
            total = n + 4.0
            keep, take = n / total, 4.0 / total
            spread = n * take
            for j in range(W):
                m, q = _four_moments(
                    float64(r0[j]), float64(r1[j]), float64(r2[j]), float64(r3[j]))
                mean[j], m2[j] = _merge_chunk(mean[j], m2[j], m, q, keep, take, spread)
        n += 4.0
    rest = a1 - quad_end
    if rest == 0:
        return
    # One to three rows left: rows past a1 - 1 repeat the last one and are not used.
    r0, r1, r2 = x2[quad_end], x2[min(quad_end + 1, a1 - 1)], x2[min(quad_end + 2, a1 - 1)]
    total = n + rest
    keep, take = n / total, rest / total
    for j in range(W):
        m, q = _rest_moments(rest, float64(r0[j]), float64(r1[j]), float64(r2[j]))
        if n == 0.0:
            mean[j], m2[j] = m, q
        else:
            mean[j], m2[j] = _merge_chunk(mean[j], m2[j], m, q, keep, take, n * take)


@njit(nogil=True, cache=True)
def _four_moments(v0, v1, v2, v3):
    """Exact mean and M2 of four values."""
    m = ((v0 + v1) + (v2 + v3)) * 0.25
    d0, d1, d2, d3 = v0 - m, v1 - m, v2 - m, v3 - m
    return m, (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)


@njit(nogil=True, cache=True)
def _rest_moments(rest, v0, v1, v2):
    """Exact mean and M2 of the first ``rest`` (1 to 3) of three values, added left to right.

    ``rest`` is the same for every column, so the branches leave the column loop
    (unswitched) and each version vectorizes.
    """
    if rest == 1:
        d0 = v0 - v0  # NaN for an infinite value, as every other chunk gives
        return v0, d0 * d0
    if rest == 2:
        m = (v0 + v1) / 2.0
        d0, d1 = v0 - m, v1 - m
        return m, d0 * d0 + d1 * d1
    m = (v0 + v1 + v2) / 3.0
    d0, d1, d2 = v0 - m, v1 - m, v2 - m
    return m, d0 * d0 + d1 * d1 + d2 * d2


@njit(nogil=True, cache=True)
def _merge_chunk(mean, m2, m, q, keep, take, spread):
    """Chan's update of a running (mean, M2) by a chunk (m, q), with the chunk's weights."""
    delta = m - mean
    return keep * mean + take * m, m2 + (q + delta * delta * spread)


@njit(nogil=True, cache=True)
def merge_row_pieces(part_mean, part_m2, rows, A, B):
    """Chan-merge the pieces of each column in order, then the B columns of each channel.

    All pieces of one piece index have the same count, so the merge runs
    along the columns (vectorized) with scalar weights.
    """
    pieces, W = part_mean.shape
    mean = part_mean[0].copy()
    m2 = part_m2[0].copy()
    n = float(min(rows, A))
    for k in range(1, pieces):
        n_b = float(min(rows, A - k * rows))
        total = n + n_b
        weight = n * (n_b / total)
        for j in range(W):
            delta = part_mean[k, j] - mean[j]
            mean[j] = (n * mean[j] + n_b * part_mean[k, j]) / total
            m2[j] = m2[j] + part_m2[k, j] + delta * delta * weight
        n = total
    if B == 1:
        return mean, m2
    C = W // B
    channel_mean = np.empty(C)
    channel_m2 = np.empty(C)
    for c in range(C):
        count, mu, q = n, mean[c * B], m2[c * B]
        for b in range(1, B):
            count, mu, q = chan_merge(count, mu, q, n, mean[c * B + b], m2[c * B + b])
        channel_mean[c] = mu
        channel_m2[c] = q
    return channel_mean, channel_m2


@njit(nogil=True, parallel=True, cache=True)
def _moments_rows(x2, B):
    A, W = x2.shape
    rows, pieces = row_pieces(A, W)
    part_mean = np.empty((pieces, W))
    part_m2 = np.empty((pieces, W))
    for k in prange(pieces):
        rows_piece_moments(x2, k * rows, min((k + 1) * rows, A), part_mean[k], part_m2[k])
    return merge_row_pieces(part_mean, part_m2, rows, A, B)


@njit(nogil=True, cache=True)
def _moments_rows_serial(x2, B):
    A, W = x2.shape
    rows, pieces = row_pieces(A, W)
    part_mean = np.empty((pieces, W))
    part_m2 = np.empty((pieces, W))
    for k in range(pieces):
        rows_piece_moments(x2, k * rows, min((k + 1) * rows, A), part_mean[k], part_m2[k])
    return merge_row_pieces(part_mean, part_m2, rows, A, B)


# --- blocks: channels c0:c1 of the (A, C * B) view, 16 <= B < 512 ------------------------

@njit(nogil=True, cache=True)
def column_sums(x2, a0, a1, off, col):
    """``col[j] = sum(x2[a0:a1, off + j])`` in float64 for ``j < len(col)``, rows four at a time.

    As :func:`rows_piece_moments`: ``col += (r0 + r1) + (r2 + r3)``, an order
    fixed by the shape alone; the loop runs along the rows, so it vectorizes.
    """
    W = col.size
    for j in range(W):
        col[j] = 0.0
    quad_end = a0 + (a1 - a0) // 4 * 4
    for a in range(a0, quad_end, 4):
        r0 = x2[a, off:off + W]
        r1 = x2[a + 1, off:off + W]
        r2 = x2[a + 2, off:off + W]
        r3 = x2[a + 3, off:off + W]
        for j in range(W):
            col[j] += (float64(r0[j]) + float64(r1[j])) + (float64(r2[j]) + float64(r3[j]))
    for a in range(quad_end, a1):
        row = x2[a, off:off + W]
        for j in range(W):
            col[j] += row[j]


@njit(nogil=True, cache=True)
def column_squares(x2, a0, a1, off, centre, col):
    """``col[j] = sum((x2[a0:a1, off + j] - centre[j])**2)`` in float64, rows four at a time."""
    W = col.size
    for j in range(W):
        col[j] = 0.0
    quad_end = a0 + (a1 - a0) // 4 * 4
    for a in range(a0, quad_end, 4):
        r0 = x2[a, off:off + W]
        r1 = x2[a + 1, off:off + W]
        r2 = x2[a + 2, off:off + W]
        r3 = x2[a + 3, off:off + W]
        for j in range(W):
            mu = centre[j]
            d0 = r0[j] - mu
            d1 = r1[j] - mu
            d2 = r2[j] - mu
            d3 = r3[j] - mu
            col[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    for a in range(quad_end, a1):
        row = x2[a, off:off + W]
        for j in range(W):
            d = row[j] - centre[j]
            col[j] += d * d


@njit(nogil=True, cache=True)
def segment_sum(v, start, length):
    """``sum(v[start:start + length])`` with four independent partial sums, added in a fixed order.

    Unsigned indices, as in :func:`_sum`: with signed ones every load carries
    a negative-index check, which more than doubles the time of a short sum.
    """
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    first = uint64(start)
    for r in range(length // 4):
        i = first + uint64(4 * r)
        s0 += v[i]
        s1 += v[i + uint64(1)]
        s2 += v[i + uint64(2)]
        s3 += v[i + uint64(3)]
    total = (s0 + s1) + (s2 + s3)
    for j in range(length // 4 * 4, length):
        total += v[first + uint64(j)]
    return total


@njit(nogil=True, cache=True)
def block_moments(x2, B, c0, c1, mean, m2):
    """Mean and M2 of channels ``c0:c1`` of the (A, C * B) view, written into ``mean``/``m2``.

    Each group of rows (:func:`numbabn.cpu._chunks.channel_blocks`) is reduced
    with an exact two pass computation, column sums first and then the B
    columns of each channel; the groups of a channel are merged in order with
    Chan's formula.
    """
    A = x2.shape[0]
    _, _, rows, groups = channel_blocks(A, x2.shape[1] // B, B)
    col, centre = np.empty((c1 - c0) * B), np.empty((c1 - c0) * B)
    off = c0 * B
    for g in range(groups):
        a0 = g * rows
        a1 = min(a0 + rows, A)
        n = float((a1 - a0) * B)
        column_sums(x2, a0, a1, off, col)
        for k in range(c1 - c0):
            mu = segment_sum(col, k * B, B) / n
            for b in range(B):
                centre[k * B + b] = mu
        column_squares(x2, a0, a1, off, centre, col)
        for k in range(c1 - c0):
            mu = centre[k * B]
            q = segment_sum(col, k * B, B)
            if g == 0:
                mean[c0 + k] = mu
                m2[c0 + k] = q
            else:
                _, mean[c0 + k], m2[c0 + k] = chan_merge(
                    float(a0 * B), mean[c0 + k], m2[c0 + k], n, mu, q)


@njit(nogil=True, parallel=True, cache=True)
def _moments_blocks(x2, B):
    A, W = x2.shape
    C = W // B
    per, blocks, _, _ = channel_blocks(A, C, B)
    mean = np.empty(C)
    m2 = np.empty(C)
    for k in prange(blocks):
        block_moments(x2, B, k * per, min((k + 1) * per, C), mean, m2)
    return mean, m2


@njit(nogil=True, cache=True)
def _moments_blocks_serial(x2, B):
    A, W = x2.shape
    C = W // B
    per, blocks, _, _ = channel_blocks(A, C, B)
    mean = np.empty(C)
    m2 = np.empty(C)
    for k in range(blocks):
        block_moments(x2, B, k * per, min((k + 1) * per, C), mean, m2)
    return mean, m2


def moments(x3):
    """Per-channel ``(mean, m2)`` in float64 of a C-contiguous (A, C, B) array.

    The count is ``A * B``.  An empty reduction gives mean 0 and M2 0, the
    neutral element of Chan's merge (a distributed rank without rows).
    """
    A, C, B = x3.shape
    if A * B == 0:
        return np.zeros(C), np.zeros(C)
    one_thread = serial(x3.size)
    if B < ROWS_MAX_B:
        kernel = _moments_rows_serial if one_thread else _moments_rows
        return kernel(x3.reshape(A, C * B), B)
    if B < BLOCKS_MAX_B:
        kernel = _moments_blocks_serial if one_thread else _moments_blocks
        return kernel(x3.reshape(A, C * B), B)
    return (_moments_planes_serial if one_thread else _moments_planes)(x3)
