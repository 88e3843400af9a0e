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
from numba import njit, prange

from ._chunks import ROWS_MAX_B, job_index, plane_pieces, rows_per_piece


@njit(parallel=True, cache=True)
def _normalize_planes(x, scale, shift, y):
    A, C, B = x.shape
    pieces, length = plane_pieces(B)
    for job in prange(A * C * pieces):
        a, c, k = job_index(job, C, pieces)
        s = scale[c]
        t = shift[c]
        xs = x[a, c]
        ys = y[a, c]
        for b in range(k * length, min((k + 1) * length, B)):
            ys[b] = xs[b] * s + t


@njit(parallel=True, cache=True)
def _normalize_rows(x, scale, shift, y):
    A, C, B = x.shape
    rows = rows_per_piece(C, B)
    pieces = (A + rows - 1) // rows
    for k in prange(pieces):
        for a in range(k * rows, min((k + 1) * rows, A)):
            for c in range(C):
                for b in range(B):
                    y[a, c, b] = x[a, c, b] * scale[c] + shift[c]


def normalize(x3, scale, shift, y3):
    """Write ``x3 * scale[c] + shift[c]`` into ``y3`` (both C-contiguous)."""
    if x3.size == 0:
        return
    if x3.shape[2] < ROWS_MAX_B:
        _normalize_rows(x3, scale, shift, y3)
    else:
        _normalize_planes(x3, scale, shift, y3)
