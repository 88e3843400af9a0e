r"""The engine's statistics of contiguous rows: exact float64 mean and M2 of each row of (R, L).

Every member of the family whose statistics run along contiguous memory
(instance and group norm in NCHW, layer and RMS norm) reduces rows of an
(R, L) view.  A row is batch norm's channel of the (1, R, L) view, so its
statistics are :func:`numbabn.cpu.moments.channel_planes_moments`' exactly:
pieces of at most ``PIECE_ELEMENTS`` values reduced in two passes while they
sit in cache,

.. math::

    \bar x_k = \frac{1}{n_k}\sum_{i \in k} x_i, \qquad
    M_{2,k} = \sum_{i \in k} (x_i - \bar x_k)^2,

merged in order with Chan's update.  One code path, one rounding behaviour,
for every member.
"""
import numpy as np
from numba import njit, prange

from ._chunks import serial
from .moments import channel_planes_moments


@njit(cache=True)
def row_moments(x3, r):
    """``(mean, M2)`` in float64 of row ``r`` of a (1, R, L) view (see the module docstring).

    Call it from inside a kernel that goes on to use the row while it is in
    cache (normalize it, or differentiate it).
    """
    return channel_planes_moments(x3, r, None)


@njit(parallel=True, cache=True)
def _rows_moments(x3):
    R = x3.shape[1]
    mean, m2 = np.empty(R), np.empty(R)
    for r in prange(R):
        mean[r], m2[r] = row_moments(x3, r)
    return mean, m2


@njit(cache=True)
def _rows_moments_serial(x3):
    R = x3.shape[1]
    mean, m2 = np.empty(R), np.empty(R)
    for r in range(R):
        mean[r], m2[r] = row_moments(x3, r)
    return mean, m2


def rows_moments(x2):
    """Per-row float64 ``(mean, M2)`` of a C-contiguous (R, L) array (float32 or float64)."""
    x3 = x2.reshape(1, x2.shape[0], x2.shape[1])
    kernel = _rows_moments_serial if serial(x2.size) else _rows_moments
    return kernel(x3)
