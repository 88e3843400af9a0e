r"""Group norm's kernels where the affine is per channel inside a statistics row.

Two views, as in :mod:`numbabn._engine`:

- NCHW, (1, N*G, L) with L = (C/G)*B: a row is one (sample, group), C/G
  segments of B values, one per channel.  Each thread takes a piece of whole
  rows, reduces a row (the engine's :func:`numbabn.cpu.rows.row_moments`,
  one pass about the mean of its first values, a second from cache where the
  first channel's mean is not the row's) and normalizes it, segment by
  segment, while it is
  still in cache, in the compute dtype with the mean split into a head and a
  tail of that dtype (as layer norm, :mod:`numbabn.cpu.rownorm`),

  .. math::

      y = ((x - \mu_{hi}) - \mu_{lo})\,(\gamma_c\sigma^{-1}) + \beta_c;

  its backward reduces each segment to :math:`S_c = \sum dy` and
  :math:`P_c = \sum dy\,(x - \mu)` (:func:`numbabn.cpu.rows.gradient_sums`,
  in the row's dtype by groups of four, then float64), forms the
  row's :math:`S^\gamma = \sum_c \gamma_c S_c`, :math:`P^\gamma = \sum_c \gamma_c P_c`
  and writes :math:`dx = \gamma_c\sigma^{-1} dy - \sigma^{-3} P^\gamma/M\,(x - \mu)
  - \sigma^{-1} S^\gamma/M`, again while the row is in cache.
- channels-last, (N, A, C): each sample is A rows of C channels.  Its rows
  are read once, in pieces, about a shift per column :math:`c_j` (the mean of
  up to ``COLUMN_SHIFT_ROWS`` rows), as :func:`numbabn.cpu.rows.row_moments` reads
  a row: :math:`S_1 = \sum (x - c_j)` and :math:`S_2 = \sum (x - c_j)^2` per
  column, so :math:`\mu_j = c_j + S_1/A` and :math:`M_{2,j} = S_2 - S_1^2/A`,
  and a group's columns are Chan-merged.  Where a column's shift misses
  (:math:`S_1^2 > A S_2/4`) or a sum is not finite, the sample is reduced in
  two passes instead (batch norm's rows layout with the groups as channels,
  :func:`numbabn.cpu.moments._moments_rows`).  The sample is then normalized
  in the compute dtype as :math:`y = (x - \mu_{hi})\,s + t` with
  :math:`s = \gamma_c\sigma^{-1}` and :math:`t = \beta_c - (\mu - \mu_{hi})\,s`:
  the mean's tail folded into the shift, three vectors per column.
  With at least as many samples as threads, each thread takes whole samples
  (one parallel region, a sample normalized while it is in its L2 cache);
  otherwise a sample's pieces are shared out.

Rows and pieces are cut by the shape only, so results do not depend on the
thread count; every kernel has a serial twin for small inputs.
"""
import numba
import numpy as np
from numba import float64, njit, prange, uint64

from . import formulas
from ._arrays import unless_in_place
from ._chunks import row_pieces, serial
from ._stack import stack_empty
from .epilogue import into, view
from .moments import _moments_rows, _moments_rows_serial
from .rownorm import row_cut
from .rows import (LANES, SHORT_LANES, gradient_sums, head_shift, row_moments,
                   shifted_moments)


@njit(nogil=True, cache=True, error_model="numpy")
def _train_piece(x2, r0, r1, cpg, weight, bias, eps, y2, mean, m2, invstd):
    """Rows ``r0:r1`` of the (N*G, L) view: statistics, then each channel's segment.

    A row's shift is the mean of its first values, its first channel's
    (:func:`numbabn.cpu.rows.head_shift`), read next anyway; where the
    channels differ in mean and it misses, the row is summed again from cache
    about values spread along it.  Taking spread values first, a cache miss
    each ahead of the sequential reads, cost every row 15-30% where x comes
    from memory (float32 32x256x28x28, 8x128x64x64).
    ``y2`` None: into ``x2``.
    """
    y2 = into(x2, y2)
    L = x2.shape[1]
    B = L // cpg
    G = weight.size // cpg
    acc1, acc2 = stack_empty(LANES), stack_empty(LANES)
    tv = np.empty(4, x2.dtype)  # mean head and tail, then the segment's scale and shift
    for r in range(r0, r1):
        mu, q = row_moments(x2, r, head_shift(x2, r), acc1, acc2, tv)
        mean[r], m2[r] = mu, q
        mhi = tv[0]
        mlo = tv[1]
        rs = formulas.invstd(q / L, eps)  # once per row; each segment only scales it
        invstd[r] = rs
        c0 = (r % G) * cpg
        ur = uint64(r)
        for j in range(cpg):
            tv[2] = rs * weight[c0 + j]
            tv[3] = bias[c0 + j]
            scale = tv[2]
            shift = tv[3]
            first = uint64(j * B)
            for b in range(B):
                i = first + uint64(b)
                y2[ur, i] = ((x2[ur, i] - mhi) - mlo) * scale + shift


@njit(nogil=True, parallel=True, cache=True)
def _train_rows(x2, cpg, weight, bias, eps, y2):
    R = x2.shape[0]
    mean, m2, invstd = np.empty(R), np.empty(R), np.empty(R)
    rows, pieces = row_cut(R, x2.shape[1])
    for k in prange(pieces):
        _train_piece(x2, k * rows, min((k + 1) * rows, R), cpg, weight, bias, eps, y2, mean, m2,
                     invstd)
    return mean, m2, invstd


@njit(nogil=True, cache=True)
def _train_rows_serial(x2, cpg, weight, bias, eps, y2):
    R = x2.shape[0]
    mean, m2, invstd = np.empty(R), np.empty(R), np.empty(R)
    _train_piece(x2, 0, R, cpg, weight, bias, eps, y2, mean, m2, invstd)
    return mean, m2, invstd


def train_rows(x3, cpg, weight, bias, eps, y3):
    """NCHW group norm forward on the (1, N*G, (C/G)*B) view: ``(mean, m2, invstd)`` per row.

    ``weight``/``bias`` are float64 vectors of the C channels.
    """
    kernel = _train_rows_serial if serial(x3.size) else _train_rows
    return kernel(x3[0], cpg, weight, bias, eps, unless_in_place(y3[0], x3[0]))


@njit(nogil=True, cache=True, error_model="numpy")
def _backward_piece(dy2, x2, r0, r1, cpg, mean, invstd, weight, dx2, seg_s, seg_p):
    r"""dx of rows ``r0:r1`` (into ``dy2`` when ``dx2`` is None); a row's per-segment (S, P)
    go to ``seg_s[r]``, ``seg_p[r]``.

    In the row's dtype, as the forward: :math:`x - \mu` as ``(x - mhi) - mlo``,
    the segments' sums by :func:`numbabn.cpu.rows.gradient_sums`, and dx
    with coefficients rounded to the dtype.  Segments shorter than
    ``8 * LANES`` are summed in ``SHORT_LANES`` lanes; each lane count is
    compiled in a loop of its own (a count chosen at run time inside one loop
    made 7x7 planes 1.2x slower).
    """
    if x2.shape[1] // cpg >= 8 * LANES:
        _backward_piece_in(dy2, x2, r0, r1, cpg, mean, invstd, weight, dx2, seg_s, seg_p, LANES)
    else:
        _backward_piece_in(dy2, x2, r0, r1, cpg, mean, invstd, weight, dx2, seg_s, seg_p,
                           SHORT_LANES)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _backward_piece_in(dy2, x2, r0, r1, cpg, mean, invstd, weight, dx2, seg_s, seg_p, n_lanes):
    """:func:`_backward_piece` with segment sums in ``n_lanes`` lanes (a constant where inlined)."""
    dx2 = into(dy2, dx2)
    L = x2.shape[1]
    B = L // cpg
    G = weight.size // cpg
    acc1, acc2 = stack_empty(n_lanes), stack_empty(n_lanes)
    tv = np.empty(5, x2.dtype)  # mean head and tail, then k_x, k_0 and a segment's k_dy
    for r in range(r0, r1):
        c0 = (r % G) * cpg
        tv[0] = mean[r]
        tv[1] = mean[r] - float64(tv[0])
        mhi = tv[0]
        mlo = tv[1]
        s_g = 0.0
        p_g = 0.0
        for j in range(cpg):
            s, p = gradient_sums(dy2, x2, r, j * B, (j + 1) * B, mhi, mlo, acc1, acc2,
                                 n_lanes)
            seg_s[r, j] = s
            seg_p[r, j] = p
            s_g += weight[c0 + j] * s
            p_g += weight[c0 + j] * p
        rs = invstd[r]
        tv[2] = -rs * rs * rs * (p_g / L)
        tv[3] = -rs * (s_g / L)
        k_x = tv[2]
        k_0 = tv[3]
        ur = uint64(r)
        for j in range(cpg):
            tv[4] = rs * weight[c0 + j]
            k_dy = tv[4]
            first = uint64(j * B)
            for b in range(B):
                i = first + uint64(b)
                dx2[ur, i] = k_dy * dy2[ur, i] + k_x * ((x2[ur, i] - mhi) - mlo) + k_0


@njit(nogil=True, parallel=True, cache=True)
def _backward_rows(dy2, x2, cpg, mean, invstd, weight, dx2):
    R = x2.shape[0]
    seg_s, seg_p = np.empty((R, cpg)), np.empty((R, cpg))
    rows, pieces = row_cut(R, x2.shape[1])
    for k in prange(pieces):
        _backward_piece(dy2, x2, k * rows, min((k + 1) * rows, R), cpg, mean, invstd, weight,
                        dx2, seg_s, seg_p)
    return seg_s, seg_p


@njit(nogil=True, cache=True)
def _backward_rows_serial(dy2, x2, cpg, mean, invstd, weight, dx2):
    R = x2.shape[0]
    seg_s, seg_p = np.empty((R, cpg)), np.empty((R, cpg))
    _backward_piece(dy2, x2, 0, R, cpg, mean, invstd, weight, dx2, seg_s, seg_p)
    return seg_s, seg_p


def backward_rows(dy3, x3, cpg, mean, invstd, weight, dx3):
    """NCHW group norm backward on (1, N*G, L) views: writes dx; returns per-channel (S, P).

    ``S`` and ``P`` have shape (N*G, C/G): row r, channel ``(r % G) * cpg + j``.
    Instance norm's NCHW backward too (one channel per group).
    """
    kernel = _backward_rows_serial if serial(x3.size) else _backward_rows
    return kernel(dy3[0], x3[0], cpg, mean, invstd, weight, unless_in_place(dx3[0], dy3[0]))


# --- channels-last: (N, A, C), each sample A rows of C channels ---------------------------

#: A channels-last column's shift is the mean of up to this many rows of its sample.
#: A shift from k rows of N(0, 1)-like data misses (S1^2 > A S2 / 4, a shift more
#: than sigma / sqrt(3) off) with probability P(|Z| > sqrt(k / 3)): 1e-3 a column
#: for 32 rows, where one missed column sends its whole sample through two more
#: passes (two samples in eight of 8x64x64x128 float32, the forward 1.3x slower);
#: 7e-11 for 128 rows, which cost a read of 128 of the sample's rows.
COLUMN_SHIFT_ROWS = 128


@njit(nogil=True, cache=True, error_model="numpy")
def _column_shifts(x2):
    """Per column of a sample: the mean of up to ``COLUMN_SHIFT_ROWS`` rows at an even
    stride, in x's dtype."""
    A, C = x2.shape
    k = min(A, COLUMN_SHIFT_ROWS)
    stride = A // k
    total = np.zeros(C)
    for s in range(k):
        row = x2[s * stride]
        for j in range(C):
            total[j] += float64(row[j])
    shift = np.empty(C, x2.dtype)
    for j in range(C):
        shift[j] = total[j] / k
    return shift


@njit(nogil=True, cache=True, error_model="numpy")
def _column_sums(x2, a0, a1, shift, s1, s2):
    r"""Per column over rows ``a0:a1``: :math:`\sum (x - c_j)` and :math:`\sum (x - c_j)^2`.

    Written into ``s1`` and ``s2`` (float64 vectors of the C columns).
    As :func:`numbabn.cpu.rows.row_moments` along a row: the differences and
    runs of four of them (and of their squares) summed in x's dtype, then
    float64.  The four rows of a run are read one after the other, each
    whole: reading them interleaved, column by column, made the pass 2.3x
    slower when x came from memory (float32, 8x4096x128, 2 threads), though
    no slower from cache.
    """
    C = x2.shape[1]
    for j in range(C):
        s1[j] = 0.0
        s2[j] = 0.0
    run1, run2 = np.empty(C, x2.dtype), np.empty(C, x2.dtype)
    quad_end = a0 + (a1 - a0) // 4 * 4
    # The 2-D array indexed directly, unsigned: row views cost reference counts per row.
    for a in range(a0, quad_end, 4):
        ua = uint64(a)
        for j in range(C):
            d = x2[ua, j] - shift[j]
            run1[j] = d
            run2[j] = d * d
        for r in range(1, 4):
            ur = ua + uint64(r)
            for j in range(C):
                d = x2[ur, j] - shift[j]
                run1[j] += d
                run2[j] += d * d
        for j in range(C):
            s1[j] += float64(run1[j])
            s2[j] += float64(run2[j])
    for a in range(quad_end, a1):
        ua = uint64(a)
        for j in range(C):
            d = float64(x2[ua, j] - shift[j])
            s1[j] += d
            s2[j] += d * d


@njit(nogil=True, cache=True, error_model="numpy")
def _group_moments(shift, part1, part2, A, cpg, mean, m2):
    r"""Per group of a sample, ``(mean, M2)`` into ``mean``/``m2`` from the pieces' column sums.

    Column j: :math:`\mu_j = c_j + S_1/A`, :math:`M_{2,j} = S_2 - S_1^2/A`,
    then the group's columns Chan-merged in order.  False, with nothing
    decided, when a column's shift missed (:math:`S_1^2 > A S_2/4`) or a sum
    is not finite: the sample is then reduced in two passes.
    """
    C = shift.size
    for g in range(C // cpg):
        n, mu, q = 0.0, 0.0, 0.0
        for j in range(g * cpg, (g + 1) * cpg):
            s1 = 0.0
            s2 = 0.0
            for k in range(part1.shape[0]):
                s1 += part1[k, j]
                s2 += part2[k, j]
            mean_j, m2_j, kept = shifted_moments(shift[j], s1, s2, A)
            # Squares in x's dtype may overflow where the two-pass float64 ones do not.
            if not (kept and s2 < np.inf):
                return False
            n, mu, q = formulas.chan_merge(n, mu, q, float64(A), mean_j, m2_j)
        mean[g] = mu
        m2[g] = q
    return True


@njit(nogil=True, cache=True, error_model="numpy")
def _sample_vectors(x2, mean, m2, count, cpg, weight, bias, eps, invstd):
    r"""Per column, in x2's dtype: the mean rounded to it :math:`\mu_{hi}`, the scale
    :math:`s = \gamma\sigma^{-1}` and the shift :math:`t = \beta - (\mu - \mu_{hi})\,s`
    (the mean's tail folded in, in float64); σ⁻¹ into ``invstd``."""
    C = weight.size
    hi, scale, shift = np.empty(C, x2.dtype), np.empty(C, x2.dtype), np.empty(C, x2.dtype)
    for g in range(C // cpg):
        invstd[g] = formulas.invstd(m2[g] / count, eps)
    for c in range(C):
        g = c // cpg
        hi[c] = mean[g]
        s = invstd[g] * weight[c]
        scale[c] = s
        shift[c] = bias[c] - (mean[g] - float64(hi[c])) * s
    return hi, scale, shift


@njit(nogil=True, cache=True, error_model="numpy")
def _apply_rows(x2, a0, a1, hi, scale, shift, y2):
    """``y = (x - μ_hi)·s + t`` over rows ``a0:a1``, in x's dtype (into ``x2`` when ``y2``
    is None).

    Three vectors per column, not the mean's head and tail apart as along a
    row: a row of C channels loads them all per row, and the fourth cost
    15-20% (float32, C = 128).
    """
    y2 = into(x2, y2)
    C = x2.shape[1]
    for a in range(a0, a1):
        ua = uint64(a)
        for j in range(C):
            y2[ua, j] = (x2[ua, j] - hi[j]) * scale[j] + shift[j]


@njit(nogil=True, cache=True, error_model="numpy")
def _train_sample(x2, cpg, weight, bias, eps, y2, mean, m2, invstd):
    """One channels-last sample, by one thread: statistics into ``mean``/``m2``/``invstd``, then y."""
    A, C = x2.shape
    rows, pieces = row_pieces(A, C)
    part1, part2 = np.empty((pieces, C)), np.empty((pieces, C))
    shift = _column_shifts(x2)
    for k in range(pieces):
        _column_sums(x2, k * rows, min((k + 1) * rows, A), shift, part1[k], part2[k])
    if not _group_moments(shift, part1, part2, A, cpg, mean, m2):
        mean[:], m2[:] = _moments_rows_serial(x2, cpg)
    hi, scale, shift = _sample_vectors(x2, mean, m2, float(A * cpg), cpg, weight, bias, eps,
                                       invstd)
    _apply_rows(x2, 0, A, hi, scale, shift, y2)


@njit(nogil=True, parallel=True, cache=True, error_model="numpy")
def _train_samples(x3, cpg, weight, bias, eps, y3):
    """Samples shared out over threads, each read and then normalized by one thread (in its L2)."""
    N, A, C = x3.shape
    G = C // cpg
    mean, m2, invstd = np.empty((N, G)), np.empty((N, G)), np.empty((N, G))
    for n in prange(N):
        _train_sample(x3[n], cpg, weight, bias, eps, view(y3, n), mean[n], m2[n], invstd[n])
    return mean, m2, invstd


@njit(nogil=True, cache=True, error_model="numpy")
def _train_samples_serial(x3, cpg, weight, bias, eps, y3):
    N, A, C = x3.shape
    G = C // cpg
    mean, m2, invstd = np.empty((N, G)), np.empty((N, G)), np.empty((N, G))
    for n in range(N):
        _train_sample(x3[n], cpg, weight, bias, eps, view(y3, n), mean[n], m2[n], invstd[n])
    return mean, m2, invstd


@njit(nogil=True, parallel=True, cache=True, error_model="numpy")
def _train_sample_pieces(x3, cpg, weight, bias, eps, y3):
    """Fewer samples than threads: each sample's pieces shared out (same sums, same order)."""
    N, A, C = x3.shape
    G = C // cpg
    mean, m2, invstd = np.empty((N, G)), np.empty((N, G)), np.empty((N, G))
    rows, pieces = row_pieces(A, C)
    part1, part2 = np.empty((pieces, C)), np.empty((pieces, C))
    for n in range(N):
        x2, y2 = x3[n], view(y3, n)
        shift = _column_shifts(x2)
        for k in prange(pieces):
            _column_sums(x2, k * rows, min((k + 1) * rows, A), shift, part1[k], part2[k])
        if not _group_moments(shift, part1, part2, A, cpg, mean[n], m2[n]):
            mean[n], m2[n] = _moments_rows(x2, cpg)
        hi, scale, beta = _sample_vectors(x2, mean[n], m2[n], float(A * cpg), cpg, weight,
                                          bias, eps, invstd[n])
        for k in prange(pieces):
            _apply_rows(x2, k * rows, min((k + 1) * rows, A), hi, scale, beta, y2)
    return mean, m2, invstd


def train_samples(x3, cpg, weight, bias, eps, y3):
    """Channels-last group norm forward on (N, A, C) views: ``(mean, m2, invstd)`` of shape (N, G).

    Every kernel gives the same bits: a sample's pieces are cut by its shape
    and summed in order, whichever thread reads them.
    """
    if serial(x3.size):
        kernel = _train_samples_serial
    elif x3.shape[0] >= numba.get_num_threads():
        kernel = _train_samples
    else:
        kernel = _train_sample_pieces
    return kernel(x3, cpg, weight, bias, eps, unless_in_place(y3, x3))
