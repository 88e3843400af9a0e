r"""Per-channel moments of an (A, C, B) array: count, mean and M2.

Each piece of work (see :mod:`numbabn.cpu._chunks`) is reduced with an exact
two-pass computation while it sits in cache,

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
from numba import njit, prange

from .. import _channel_math
from ._chunks import ROWS_MAX_B, job_index, plane_pieces, rows_per_piece


#: Chan's merge of two (count, mean, M2) summaries, compiled for the kernels.
chan_merge = njit(cache=True)(_channel_math.chan_merge)


@njit(cache=True)
def _segment_moments(v, start, stop):
    """Two-pass mean and M2 of ``v[start:stop]`` (four independent sums)."""
    n = stop - start
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    i = start
    while i + 4 <= stop:
        s0 += v[i]
        s1 += v[i + 1]
        s2 += v[i + 2]
        s3 += v[i + 3]
        i += 4
    while i < stop:
        s0 += v[i]
        i += 1
    mean = ((s0 + s1) + (s2 + s3)) / n
    q0 = 0.0
    q1 = 0.0
    q2 = 0.0
    q3 = 0.0
    i = start
    while i + 4 <= stop:
        d0 = v[i] - mean
        d1 = v[i + 1] - mean
        d2 = v[i + 2] - mean
        d3 = v[i + 3] - mean
        q0 += d0 * d0
        q1 += d1 * d1
        q2 += d2 * d2
        q3 += d3 * d3
        i += 4
    while i < stop:
        d0 = v[i] - mean
        q0 += d0 * d0
        i += 1
    return mean, (q0 + q1) + (q2 + q3)


@njit(parallel=True, cache=True)
def _moments_planes(x):
    A, C, B = x.shape
    pieces, length = plane_pieces(B)
    part_mean = np.empty((C, A * pieces))
    part_m2 = np.empty((C, A * pieces))
    for job in prange(A * C * pieces):
        a, c, k = job_index(job, C, pieces)
        start = k * length
        stop = min(start + length, B)
        m, q = _segment_moments(x[a, c], start, stop)
        part_mean[c, a * pieces + k] = m
        part_m2[c, a * pieces + k] = q
    mean = np.empty(C)
    m2 = np.empty(C)
    for c in prange(C):
        n, mu, q = 0.0, 0.0, 0.0
        for j in range(A * pieces):
            k = j % pieces
            size = min(length, B - k * length)
            n, mu, q = chan_merge(n, mu, q, float(size), part_mean[c, j], part_m2[c, j])
        mean[c] = mu
        m2[c] = q
    return mean, m2


@njit(parallel=True, cache=True)
def _moments_rows(x):
    A, C, B = x.shape
    rows = rows_per_piece(C, B)
    pieces = (A + rows - 1) // rows
    part_mean = np.zeros((pieces, C))
    part_m2 = np.zeros((pieces, C))
    for k in prange(pieces):
        a0 = k * rows
        a1 = min(a0 + rows, A)
        s = part_mean[k]
        for a in range(a0, a1):
            for c in range(C):
                for b in range(B):
                    s[c] += x[a, c, b]
        inv_n = 1.0 / ((a1 - a0) * B)
        for c in range(C):
            s[c] *= inv_n
        q = part_m2[k]
        for a in range(a0, a1):
            for c in range(C):
                for b in range(B):
                    d = x[a, c, b] - s[c]
                    q[c] += d * d
    mean = np.empty(C)
    m2 = np.empty(C)
    for c in prange(C):
        n, mu, q = 0.0, 0.0, 0.0
        for k in range(pieces):
            size = (min((k + 1) * rows, A) - k * rows) * B
            n, mu, q = chan_merge(n, mu, q, float(size), part_mean[k, c], part_m2[k, c])
        mean[c] = mu
        m2[c] = q
    return mean, m2


def moments(x3):
    """Per-channel ``(mean, m2)`` in float64 of a C-contiguous (A, C, B) array.

    The count is ``A * B``.  An empty reduction gives mean 0 and M2 0, the
    neutral element of Chan's merge (a distributed rank without rows).
    """
    A, C, B = x3.shape
    if A * B == 0:
        return np.zeros(C), np.zeros(C)
    if B < ROWS_MAX_B:
        return _moments_rows(x3)
    return _moments_planes(x3)
