r"""The engine's statistics of one contiguous row: float64 mean and M2, read once.

Every member whose statistics run along contiguous memory (group norm in
NCHW, layer norm, RMS norm) reduces rows: a row is reduced and then, while it
is still in the L1/L2 cache, normalized or differentiated.  Reading the row is
the expensive part, so :func:`row_moments` reads it once in the common case.

One pass about a shift.  With :math:`c` the mean of up to ``SHIFT_SAMPLES``
values of the row, its first ones (:func:`head_shift`; rounded to the row's
dtype), and :math:`d_j = x_j - c`,

.. math::

    S_1 = \sum_j d_j, \qquad S_2 = \sum_j d_j^2, \qquad
    \mu = c + \frac{S_1}{n}, \qquad M_2 = S_2 - \frac{S_1^2}{n}.

This is :math:`\sum (x - \mu)^2 = \sum (x - c)^2 - n(\mu - c)^2`, exact
algebra; its subtraction cancels only as far as the shift misses the mean,
by the fraction :math:`\rho = S_1^2 / (n S_2) = (\mu - c)^2 / (\sigma^2 + (\mu - c)^2)`.
The result is kept only when :math:`\rho \le` ``ACCEPT_CANCELLATION`` (1/4:
the shift lies within :math:`0.58\sigma` of the mean, and :math:`M_2`'s
relative error is at most 4/3 of :math:`S_2`'s).  Otherwise the row, in
cache by now, is summed once more about the mean of values spread along it
(:func:`spread_shift`): group norm's rows are runs of channels, and their
first values are the first channel's, whose mean may differ from the row's.
Where that misses too, or a sum is not finite, the row is read again with
the two-pass computation (the mean, then the squares about it,
:func:`_row_sum` and :func:`centred_square_sum`).  A sample mean of 32
values misses the mean by about :math:`\sigma/\sqrt{32}`
(:math:`\rho \approx 0.03`), so the further passes are for rows whose
sampled values are not typical of them (a channel apart, a constant border,
sorted data).  Spread values are not taken first: their loads, a cache miss
each ahead of the sequential reads, made every row 15-30% slower where x came
from memory.
:math:`E[x^2] - E[x]^2` (:math:`c = 0`) is never formed.

Precision.  :math:`d_j` is formed in the row's dtype: exact when
:math:`x_j` is within a factor of two of :math:`c` (data far from zero such as
``1e4 + N(0, 1)``), otherwise rounded relative to :math:`|d_j|` itself, not
to the offset.  Groups of four :math:`d_j` and of four :math:`d_j^2` are added
in the row's dtype (positive terms for the squares, a few units in the last
place), then in float64 lanes added in a fixed order, so the lanes see a
quarter of the loads and stores.  A loop over independent lanes vectorizes
without reassociating any sum (fastmath stays off).  The results depend on
the row alone: every thread count, cut and caller gets the same bits.
"""
import numpy as np
from numba import float64, njit, uint64

#: Independent float64 accumulators of a row sum (vectorizes without fastmath).
LANES = 16

#: Lanes of :func:`gradient_sums` over segments shorter than ``8 * LANES``.
SHORT_LANES = 4

#: The shift is the mean of at most this many values spread along the row.
SHIFT_SAMPLES = 32

#: Largest accepted cancellation fraction S1^2 / (n S2) of the one-pass result.
ACCEPT_CANCELLATION = 0.25


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def lane_total(acc):
    """Sum of the lanes (a power of two of them) as a pairwise tree, in a fixed order.

    Overwrites ``acc``.  A tree is a few add latencies deep where a running
    sum is ``LANES`` deep, which counts on short rows.
    """
    n = acc.shape[0]
    while n > 1:
        n //= 2
        for lane in range(n):
            acc[lane] += acc[lane + n]
    return acc[0]


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _strided_mean(x, r, n, stride):
    """Float64 mean of the ``n`` values ``x[r, 0], x[r, stride], ..., x[r, (n-1) * stride]``."""
    ur = uint64(r)
    p0 = p1 = p2 = p3 = 0.0  # four chains: a quarter of the add latency
    k = 0
    while k + 4 <= n:
        p0 += float64(x[ur, uint64(k * stride)])
        p1 += float64(x[ur, uint64((k + 1) * stride)])
        p2 += float64(x[ur, uint64((k + 2) * stride)])
        p3 += float64(x[ur, uint64((k + 3) * stride)])
        k += 4
    while k < n:
        p0 += float64(x[ur, uint64(k * stride)])
        k += 1
    return ((p0 + p1) + (p2 + p3)) / n


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def head_shift(x, r):
    """A shift for :func:`row_moments` of a row of exchangeable values (layer norm's
    features): the float64 mean of its first ``SHIFT_SAMPLES`` values (at least one).

    Two cache lines of float32, which the sums read next anyway: this shift
    costs next to nothing, where a spread one stalls on a cache miss per value.
    """
    return _strided_mean(x, r, min(x.shape[1], SHIFT_SAMPLES), 1)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def spread_shift(x, r):
    """A shift for :func:`row_moments` of a row laid out in blocks of their own means
    (group norm's channels, each a run of the row): the float64 mean of up to
    ``SHIFT_SAMPLES`` values at an even stride along the row (at least one).

    Its loads touch a cache line each, ahead of the sequential reads; callers
    take it one row ahead, before normalizing the row in hand, so that the
    loads overlap that work instead of stalling the row's sums.
    """
    D = x.shape[1]
    n = min(D, SHIFT_SAMPLES)
    return _strided_mean(x, r, n, D // n)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def shifted_moments(c, s1, s2, n):
    r"""``(mean, M2, kept)`` of n values from their sums about a shift c (module docstring).

    :math:`\mu = c + S_1/n`, :math:`M_2 = S_2 - S_1^2/n`; ``kept`` is the
    acceptance test :math:`S_1^2 \le` ``ACCEPT_CANCELLATION`` :math:`\cdot n S_2`,
    False when a sum is NaN.  An infinite :math:`S_2` passes it (its
    :math:`M_2` is infinite); callers whose squares are rounded more coarsely
    than their two-pass fallback's also ask for a finite :math:`S_2`.
    """
    return float64(c) + s1 / n, s2 - s1 * s1 / n, s1 * s1 <= ACCEPT_CANCELLATION * n * s2


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _shifted_sums(x, r, c, acc1, acc2):
    r"""Float64 :math:`(\sum_j (x_j - c), \sum_j (x_j - c)^2)` over one row (module docstring)."""
    D = x.shape[1]
    ur = uint64(r)
    L = acc1.shape[0]
    for lane in range(L):
        acc1[lane] = 0.0
        acc2[lane] = 0.0
    step = 4 * L
    full = D - D % step
    u1, u2, u3 = uint64(L), uint64(2 * L), uint64(3 * L)  # unsigned: no wraparound checks
    for k in range(D // step):
        base = uint64(k * step)
        for lane in range(L):
            i = base + uint64(lane)
            d0 = x[ur, i] - c
            d1 = x[ur, i + u1] - c
            d2 = x[ur, i + u2] - c
            d3 = x[ur, i + u3] - c
            acc1[lane] += float64((d0 + d1) + (d2 + d3))
            acc2[lane] += float64((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3))
    s1 = 0.0
    s2 = 0.0
    for j in range(full, D):
        d = float64(x[ur, j] - c)
        s1 += d
        s2 += d * d
    return s1 + lane_total(acc1), s2 + lane_total(acc2)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def gradient_sums(dy, x, r, lo, hi, mhi, mlo, acc1, acc2, L):
    r"""Float64 :math:`(\sum dy, \sum dy\,(x - \mu))` over ``[r, lo:hi]`` of 2-D ``dy``, ``x``.

    A backward's reduction along a row, as the forward's :func:`_shifted_sums`:
    ``mhi + mlo`` is the mean split into a head and a tail of the row's dtype,
    :math:`x - \mu` is formed in that dtype as ``(x - mhi) - mlo`` (exact for
    data near the mean), and groups of four terms are added in that dtype,
    then in float64 lanes added in a fixed order.  The products in float64, a
    conversion each, ran the backward 1.9x slower (float32, rows in L2).

    ``L`` lanes (``acc1``/``acc2``: float64 scratch of ``L`` values):
    ``LANES``, or ``SHORT_LANES`` for segments shorter than ``8 * LANES``,
    where the long lane loop would leave most of a segment to the scalar
    tail.  Pass ``L`` as a constant, so that the inlined lane loop is compiled
    for it: with the count read from ``acc1`` at run time, group norm's
    backward ran 1.35-1.7x slower (float32, 32x256x14x14 and 64x256x7x7).
    """
    ur = uint64(r)
    for lane in range(L):
        acc1[lane] = 0.0
        acc2[lane] = 0.0
    step = 4 * L
    n = hi - lo
    full = lo + n - n % step
    u1, u2, u3 = uint64(L), uint64(2 * L), uint64(3 * L)
    for k in range(n // step):
        base = uint64(lo + k * step)
        for lane in range(L):
            i = base + uint64(lane)
            g0, g1 = dy[ur, i], dy[ur, i + u1]
            g2, g3 = dy[ur, i + u2], dy[ur, i + u3]
            d0 = (x[ur, i] - mhi) - mlo
            d1 = (x[ur, i + u1] - mhi) - mlo
            d2 = (x[ur, i + u2] - mhi) - mlo
            d3 = (x[ur, i + u3] - mhi) - mlo
            acc1[lane] += float64((g0 + g1) + (g2 + g3))
            acc2[lane] += float64((g0 * d0 + g1 * d1) + (g2 * d2 + g3 * d3))
    s = 0.0
    p = 0.0
    for j in range(full, hi):
        g = dy[ur, j]
        s += float64(g)
        p += float64(g * ((x[ur, j] - mhi) - mlo))
    return s + lane_total(acc1), p + lane_total(acc2)


@njit(nogil=True, cache=True, error_model="numpy")
def centred_square_sum(x, r, mhi, mlo, acc):
    r"""Float64 :math:`\sum_j ((x_j - m_{hi}) - m_{lo})^2` over one row, in ``len(acc)`` lanes.

    ``mhi + mlo`` is the mean split into a head and a tail of the row's dtype:
    the difference is formed in that dtype (exact for data near the mean) and
    squared there; groups of four squares go into float64 lanes.  With
    ``mhi = mlo = 0`` this is the sum of squares of RMS norm.
    """
    D = x.shape[1]
    ur = uint64(r)
    L = acc.shape[0]
    for lane in range(L):
        acc[lane] = 0.0
    step = 4 * L
    full = D - D % step
    u1, u2, u3 = uint64(L), uint64(2 * L), uint64(3 * L)
    for k in range(D // step):
        base = uint64(k * step)
        for lane in range(L):
            i = base + uint64(lane)
            d0 = (x[ur, i] - mhi) - mlo
            d1 = (x[ur, i + u1] - mhi) - mlo
            d2 = (x[ur, i + u2] - mhi) - mlo
            d3 = (x[ur, i + u3] - mhi) - mlo
            acc[lane] += float64((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3))
    total = 0.0
    for j in range(full, D):
        d = float64((x[ur, j] - mhi) - mlo)
        total += d * d
    return total + lane_total(acc)


@njit(nogil=True, cache=True, error_model="numpy")
def _row_sum(x, r, acc):
    """Float64 sum of one row, in ``len(acc)`` lanes added in a fixed order."""
    D = x.shape[1]
    ur = uint64(r)
    L = acc.shape[0]
    for lane in range(L):
        acc[lane] = 0.0
    step = 4 * L
    full = D - D % step
    u1, u2, u3 = uint64(L), uint64(2 * L), uint64(3 * L)
    for k in range(D // step):
        base = uint64(k * step)
        for lane in range(L):
            i = base + uint64(lane)
            # float32 values add exactly in float64 (but for exponents far apart).
            acc[lane] += ((float64(x[ur, i]) + float64(x[ur, i + u1]))
                          + (float64(x[ur, i + u2]) + float64(x[ur, i + u3])))
    total = 0.0
    for j in range(full, D):
        total += float64(x[ur, j])
    return total + lane_total(acc)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def row_moments(x, r, c, acc1, acc2, tv):
    """Float64 ``(mean, M2)`` of row ``r`` of a C-contiguous 2-D ``x`` (module docstring).

    ``c``: the row's shift, usually :func:`head_shift` of ``(x, r)`` (rounded
    here to the row's dtype).  Where it misses the mean, the row, in cache by
    now, is summed again about :func:`spread_shift` (group norm's rows, whose
    first values are one channel's), and only where that misses too (or a sum
    is not finite) is it read twice more.

    The helpers index ``x`` directly (no row views, whose reference counts
    cost more than a short row's arithmetic).

    ``acc1``/``acc2``: lane scratch of ``LANES`` float64 (kernels take it on
    their stack, :func:`numbabn.cpu._stack.stack_empty`, where it stays in
    registers); ``tv``: at least two values of the row's dtype, which receive
    ``(mean_hi, mean_lo)``, the mean split into a head and a tail of that dtype
    for the elementwise loops that follow (``x - mean`` as ``(x - mean_hi) - mean_lo``).
    """
    D = x.shape[1]
    if D > 0:
        tv[0] = c
        c = tv[0]
        s1, s2 = _shifted_sums(x, r, c, acc1, acc2)
        mean, m2, kept = shifted_moments(c, s1, s2, D)
        if not kept and s2 < np.inf:
            tv[0] = spread_shift(x, r)
            c = tv[0]
            s1, s2 = _shifted_sums(x, r, c, acc1, acc2)
            mean, m2, kept = shifted_moments(c, s1, s2, D)
        # An infinite S2 with a finite S1 gives M2 = inf here, as two passes do (squares in
        # the row's dtype both ways).
        if kept:
            tv[0] = mean
            tv[1] = mean - float64(tv[0])
            return mean, m2
    mean = _row_sum(x, r, acc1) / D
    tv[0] = mean
    tv[1] = mean - float64(tv[0])
    return mean, centred_square_sum(x, r, tv[0], tv[1], acc1)
