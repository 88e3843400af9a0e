r"""Per-channel moments of data read once: the streaming accumulator's and Dask's reduction.

:class:`numbabn.ChannelMoments` and :mod:`numbabn.dask` reduce batches that
come from a file or another process and are read exactly once, so the speed
of reading them is the speed of the whole job.  Batch norm's reduction
(:mod:`numbabn.cpu.moments`) reads each cache-sized piece twice (the mean,
then the squares about it; its bits are batch norm's and stay as they are);
here each channel is read once, in float64, about a shift :math:`c`, the mean
of up to ``SHIFT_SAMPLES`` values spread over the channel.  With
:math:`d = x - c` over the channel's :math:`n` values,

.. math::

    S_1 = \sum d, \qquad S_2 = \sum d^2, \qquad
    \mu = c + \frac{S_1}{n}, \qquad M_2 = S_2 - \frac{S_1^2}{n},

the identity :math:`\sum (x - \mu)^2 = \sum (x - c)^2 - n(\mu - c)^2`.  The
subtraction cancels only as far as the shift misses the mean, by the
fraction :math:`\rho = S_1^2 / (n S_2)`; the result is kept when
:math:`\rho \le` :data:`numbabn.cpu.rows.ACCEPT_CANCELLATION` (1/4, so
:math:`M_2`'s relative error is at most 4/3 of :math:`S_2`'s) and both sums
are finite.  Otherwise the channel is read again by batch norm's two-pass
reduction, which also gives NaN and Inf exactly as
:func:`numbabn.channel_moments` does.  :math:`E[x^2] - E[x]^2` is never formed.

Precision: every value is converted to float64 before the shift is taken
off, so :math:`d` and :math:`d^2` carry float64 rounding only; the sums run
in ``LANES`` independent float64 lanes added in a fixed order (a loop over
lanes vectorizes without reassociating, fastmath stays off).  The results
agree with the two-pass ones to float64 rounding (about 1e-15 relative on
``1e4 + N(0, 1)`` data), not bit for bit.

Work is cut by the shape alone: channel ``c``'s values, in memory order, into
``pieces`` runs of about ``PIECE_VALUES``; every run has the same shift, so
the runs' sums add, in order.  Results do not depend on the thread count.
Used for the planes layout (``B >= BLOCKS_MAX_B``); shorter planes keep the
batch-norm kernels, whose rows and blocks layouts read memory once already.
"""
import numpy as np
from numba import float64, njit, prange, uint64

from ._chunks import LANES
from ._stack import stack_empty
from .moments import channel_planes_moments
from .rows import SHIFT_SAMPLES, shifted_moments

#: Values of one channel reduced as one piece of work (4 MiB of float32).
PIECE_VALUES = 1 << 20


@njit(nogil=True, cache=True)
def channel_runs(A, B):
    """Number of runs each channel's ``A * B`` values are cut into (by the shape alone)."""
    return max(1, min(A, (A * B + PIECE_VALUES - 1) // PIECE_VALUES)) if A * B else 1


@njit(nogil=True, cache=True, error_model="numpy")
def _sample_shift(x, c):
    """Float64 mean of up to ``SHIFT_SAMPLES`` values of channel ``c`` at an even stride."""
    A, C, B = x.shape
    n = A * B
    k = min(n, SHIFT_SAMPLES)
    total = 0.0
    for s in range(k):
        i = s * (n // k)
        total += float64(x[uint64(i // B), uint64(c), uint64(i % B)])
    return total / k


@njit(nogil=True, cache=True, error_model="numpy")
def _run_sums(x, c, a0, a1, shift, acc1, acc2):
    r"""Float64 :math:`(\sum (x - c), \sum (x - c)^2)` over planes ``a0:a1`` of channel ``c``."""
    B = x.shape[2]
    L = LANES  # a compile-time constant: with len(acc1) this loop did not vectorize as well
    uc = uint64(c)
    for lane in range(L):
        acc1[lane] = 0.0
        acc2[lane] = 0.0
    s1 = 0.0
    s2 = 0.0
    full = B - B % L
    for a in range(a0, a1):
        ua = uint64(a)
        for r in range(B // L):
            base = uint64(r * L)
            for lane in range(L):
                d = float64(x[ua, uc, base + uint64(lane)]) - shift
                acc1[lane] += d
                acc2[lane] += d * d
        for b in range(full, B):
            d = float64(x[ua, uc, uint64(b)]) - shift
            s1 += d
            s2 += d * d
    for lane in range(L):
        s1 += acc1[lane]
        s2 += acc2[lane]
    return s1, s2


@njit(nogil=True, cache=True, error_model="numpy")
def _run(x, job, runs, shifts, part1, part2):
    """Job ``job`` = (channel, run): its sums into ``part1``/``part2[channel, run]``."""
    A = x.shape[0]
    c, k = job // runs, job % runs
    per = (A + runs - 1) // runs
    acc1, acc2 = stack_empty(LANES), stack_empty(LANES)
    part1[c, k], part2[c, k] = _run_sums(x, c, k * per, min((k + 1) * per, A), shifts[c],
                                         acc1, acc2)


@njit(nogil=True, cache=True, error_model="numpy")
def _shifts(x):
    C = x.shape[1]
    shifts = np.empty(C)
    for c in range(C):
        shifts[c] = _sample_shift(x, c)
    return shifts


@njit(nogil=True, cache=True, error_model="numpy")
def _finish(x, shifts, part1, part2):
    r"""Per channel :math:`(\mu, M_2)` from the runs' sums, and which channels must be read again."""
    A, C, B = x.shape
    n = float64(A * B)
    mean, m2 = np.empty(C), np.empty(C)
    redo = np.zeros(C, np.bool_)
    for c in range(C):
        s1 = 0.0
        s2 = 0.0
        for k in range(part1.shape[1]):
            s1 += part1[c, k]
            s2 += part2[c, k]
        mean[c], m2[c], kept = shifted_moments(shifts[c], s1, s2, n)
        # Infinite sums go to the two-pass kernel, whose NaN/Inf results are channel_moments'.
        redo[c] = not (kept and s2 < np.inf)
    return mean, m2, redo


@njit(nogil=True, parallel=True, cache=True, error_model="numpy")
def _one_pass(x):
    A, C, B = x.shape
    runs = channel_runs(A, B)
    shifts = _shifts(x)
    part1, part2 = np.empty((C, runs)), np.empty((C, runs))
    for job in prange(C * runs):
        _run(x, job, runs, shifts, part1, part2)
    return _finish(x, shifts, part1, part2)


@njit(nogil=True, cache=True, error_model="numpy")
def _one_pass_serial(x):
    A, C, B = x.shape
    runs = channel_runs(A, B)
    shifts = _shifts(x)
    part1, part2 = np.empty((C, runs)), np.empty((C, runs))
    for job in range(C * runs):
        _run(x, job, runs, shifts, part1, part2)
    return _finish(x, shifts, part1, part2)


def one_pass_moments(x3, one_thread):
    r"""Per-channel float64 ``(mean, m2, redo)`` of a C-contiguous (A, C, B) array, read once.

    ``redo[c]`` is True where the one-pass result was not kept (cancellation
    above :data:`numbabn.cpu.rows.ACCEPT_CANCELLATION`, or a non-finite sum);
    those channels' ``mean``/``m2`` have been replaced by the two-pass
    reduction's.  Needs ``A * B > 0``.
    """
    mean, m2, redo = (_one_pass_serial if one_thread else _one_pass)(x3)
    for c in np.flatnonzero(redo):
        mean[c], m2[c] = channel_planes_moments(x3, c, None)
    return mean, m2, redo
