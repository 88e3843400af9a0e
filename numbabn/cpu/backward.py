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
"""
import numpy as np
from numba import njit, prange

from ._chunks import ROWS_MAX_B, job_index, plane_pieces, rows_per_piece


@njit(parallel=True, cache=True)
def _reduce_planes(dy, x, mean):
    A, C, B = x.shape
    pieces, length = plane_pieces(B)
    part_s = np.empty((C, A * pieces))
    part_p = np.empty((C, A * pieces))
    for job in prange(A * C * pieces):
        a, c, k = job_index(job, C, pieces)
        mu = mean[c]
        g = dy[a, c]
        v = x[a, c]
        s0 = 0.0
        s1 = 0.0
        p0 = 0.0
        p1 = 0.0
        b = k * length
        stop = min(b + length, B)
        while b + 2 <= stop:
            s0 += g[b]
            s1 += g[b + 1]
            p0 += g[b] * (v[b] - mu)
            p1 += g[b + 1] * (v[b + 1] - mu)
            b += 2
        while b < stop:
            s0 += g[b]
            p0 += g[b] * (v[b] - mu)
            b += 1
        part_s[c, a * pieces + k] = s0 + s1
        part_p[c, a * pieces + k] = p0 + p1
    sum_dy = np.empty(C)
    sum_dy_xmu = np.empty(C)
    for c in prange(C):
        s = 0.0
        p = 0.0
        for j in range(A * pieces):
            s += part_s[c, j]
            p += part_p[c, j]
        sum_dy[c] = s
        sum_dy_xmu[c] = p
    return sum_dy, sum_dy_xmu


@njit(parallel=True, cache=True)
def _reduce_rows(dy, x, mean):
    A, C, B = x.shape
    rows = rows_per_piece(C, B)
    pieces = (A + rows - 1) // rows
    part_s = np.zeros((pieces, C))
    part_p = np.zeros((pieces, C))
    for k in prange(pieces):
        s = part_s[k]
        p = part_p[k]
        for a in range(k * rows, min((k + 1) * rows, A)):
            for c in range(C):
                for b in range(B):
                    g = dy[a, c, b]
                    s[c] += g
                    p[c] += g * (x[a, c, b] - mean[c])
    sum_dy = np.empty(C)
    sum_dy_xmu = np.empty(C)
    for c in prange(C):
        s = 0.0
        p = 0.0
        for k in range(pieces):
            s += part_s[k, c]
            p += part_p[k, c]
        sum_dy[c] = s
        sum_dy_xmu[c] = p
    return sum_dy, sum_dy_xmu


@njit(parallel=True, cache=True)
def _apply_planes(dy, x, mean, k_dy, k_x, k_0, dx):
    A, C, B = x.shape
    pieces, length = plane_pieces(B)
    for job in prange(A * C * pieces):
        a, c, k = job_index(job, C, pieces)
        mu = mean[c]
        u = k_dy[c]
        w = k_x[c]
        z = k_0[c]
        g = dy[a, c]
        v = x[a, c]
        out = dx[a, c]
        for b in range(k * length, min((k + 1) * length, B)):
            out[b] = u * g[b] + w * (v[b] - mu) + z


@njit(parallel=True, cache=True)
def _apply_rows(dy, x, mean, k_dy, k_x, k_0, dx):
    A, C, B = x.shape
    rows = rows_per_piece(C, B)
    pieces = (A + rows - 1) // rows
    for k in prange(pieces):
        for a in range(k * rows, min((k + 1) * rows, A)):
            for c in range(C):
                for b in range(B):
                    dx[a, c, b] = k_dy[c] * dy[a, c, b] + k_x[c] * (x[a, c, b] - mean[c]) + k_0[c]


def backward_reduce(dy3, x3, mean):
    """Per-channel float64 ``(sum(dy), sum(dy * (x - mean)))``."""
    A, C, B = x3.shape
    if A * B == 0:
        return np.zeros(C), np.zeros(C)
    if B < ROWS_MAX_B:
        return _reduce_rows(dy3, x3, mean)
    return _reduce_planes(dy3, x3, mean)


def backward_apply(dy3, x3, mean, k_dy, k_x, k_0, dx3):
    """Write ``k_dy*dy + k_x*(x - mean) + k_0`` (per channel) into ``dx3``."""
    if x3.size == 0:
        return
    if x3.shape[2] < ROWS_MAX_B:
        _apply_rows(dy3, x3, mean, k_dy, k_x, k_0, dx3)
    else:
        _apply_planes(dy3, x3, mean, k_dy, k_x, k_0, dx3)
