r"""Group norm's kernels where the affine is per channel inside a statistics row.

Two views, as in :mod:`numbabn._engine`:

- NCHW, (1, N*G, L) with L = (C/G)*B: a row is one (sample, group), C/G
  segments of B values, one per channel.  Each thread takes a piece of whole
  rows, reduces a row (the engine's :func:`numbabn.cpu.rows.row_moments`,
  one pass about a shift) and normalizes it, segment by segment, while it is
  still in cache, in the compute dtype with the mean split into a head and a
  tail of that dtype (as layer norm, :mod:`numbabn.cpu.rownorm`),

  .. math::

      y = ((x - \mu_{hi}) - \mu_{lo})\,(\gamma_c\sigma^{-1}) + \beta_c;

  its backward reduces each segment to :math:`S_c = \sum dy` and
  :math:`P_c = \sum dy\,(x - \mu)` (batch norm's per-piece sums), forms the
  row's :math:`S^\gamma = \sum_c \gamma_c S_c`, :math:`P^\gamma = \sum_c \gamma_c P_c`
  and writes :math:`dx = \gamma_c\sigma^{-1} dy - \sigma^{-3} P^\gamma/M\,(x - \mu)
  - \sigma^{-1} S^\gamma/M`, again while the row is in cache.
- channels-last, (N, A, C): each sample is batch norm's rows layout with the
  groups as channels (:func:`numbabn.cpu.moments._moments_rows`), normalized
  with per-column coefficients by the rows layout's loop.

Rows and pieces are cut by the shape only, so results do not depend on the
thread count; every kernel has a serial twin for small inputs.
"""
import numpy as np
from numba import njit, prange, uint64

from . import formulas
from ._chunks import row_pieces, serial
from .backward import _piece_sums
from .forward import affine_from_moments
from .moments import _moments_rows, _moments_rows_serial
from .normalize import normalize_rows_piece
from .rownorm import row_cut
from .rows import lanes, row_moments


@njit(nogil=True, cache=True, error_model="numpy")
def _train_piece(x2, r0, r1, cpg, weight, bias, eps, y2, mean, m2, invstd):
    """Rows ``r0:r1`` of the (N*G, L) view: statistics, then each channel's segment."""
    L = x2.shape[1]
    B = L // cpg
    G = weight.size // cpg
    acc1, acc2 = lanes()
    tv = np.empty(4, x2.dtype)  # mean head and tail, then the segment's scale and shift
    for r in range(r0, r1):
        mu, q = row_moments(x2, r, acc1, acc2, tv)
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
    return kernel(x3[0], cpg, weight, bias, eps, y3[0])


@njit(nogil=True, cache=True)
def _backward_row(dy3, x3, r, cpg, mean, invstd, weight, dx3, seg_s, seg_p):
    """dx of row ``r``; its per-segment (S, P) go to ``seg_s[r]``, ``seg_p[r]``."""
    L = x3.shape[2]
    B = L // cpg
    G = weight.size // cpg
    c0 = (r % G) * cpg
    mu = mean[r]
    acc = np.empty((2, 32 if B >= 128 else 8))
    s_g = 0.0
    p_g = 0.0
    for j in range(cpg):
        s, p = _piece_sums(dy3, x3, 0, 1, r, mu, j * B, (j + 1) * B, acc, None, None, None)
        seg_s[r, j] = s
        seg_p[r, j] = p
        s_g += weight[c0 + j] * s
        p_g += weight[c0 + j] * p
    rs = invstd[r]
    k_x = -rs * rs * rs * (p_g / L)
    k_0 = -rs * (s_g / L)
    ur = uint64(r)
    for j in range(cpg):
        k_dy = rs * weight[c0 + j]
        first = uint64(j * B)
        for b in range(B):
            i = first + uint64(b)
            dx3[0, ur, i] = k_dy * dy3[0, ur, i] + k_x * (x3[0, ur, i] - mu) + k_0


@njit(nogil=True, parallel=True, cache=True)
def _backward_rows(dy3, x3, cpg, mean, invstd, weight, dx3):
    R = x3.shape[1]
    seg_s, seg_p = np.empty((R, cpg)), np.empty((R, cpg))
    for r in prange(R):
        _backward_row(dy3, x3, r, cpg, mean, invstd, weight, dx3, seg_s, seg_p)
    return seg_s, seg_p


@njit(nogil=True, cache=True)
def _backward_rows_serial(dy3, x3, cpg, mean, invstd, weight, dx3):
    R = x3.shape[1]
    seg_s, seg_p = np.empty((R, cpg)), np.empty((R, cpg))
    for r in range(R):
        _backward_row(dy3, x3, r, cpg, mean, invstd, weight, dx3, seg_s, seg_p)
    return seg_s, seg_p


def backward_rows(dy3, x3, cpg, mean, invstd, weight, dx3):
    """NCHW group norm backward on (1, N*G, L) views: writes dx; returns per-channel (S, P).

    ``S`` and ``P`` have shape (N*G, C/G): row r, channel ``(r % G) * cpg + j``.
    """
    kernel = _backward_rows_serial if serial(x3.size) else _backward_rows
    return kernel(dy3, x3, cpg, mean, invstd, weight, dx3)


@njit(nogil=True, cache=True)
def _sample_coefficients(mean, m2, count, cpg, weight, bias, eps, invstd):
    """Per-column scale and shift of one channels-last sample; per-group invstd into ``invstd``."""
    C = weight.size
    scale, shift = np.empty(C), np.empty(C)
    for c in range(C):
        g = c // cpg
        r, s, t = affine_from_moments(mean[g], m2[g], count, weight[c], bias[c], eps)
        invstd[g] = r
        scale[c] = s
        shift[c] = t
    return scale, shift


@njit(nogil=True, parallel=True, cache=True)
def _train_samples(x3, cpg, weight, bias, eps, y3):
    N, A, C = x3.shape
    G = C // cpg
    mean, m2, invstd = np.empty((N, G)), np.empty((N, G)), np.empty((N, G))
    rows, pieces = row_pieces(A, C)
    for n in range(N):
        mean[n], m2[n] = _moments_rows(x3[n], cpg)
        scale, shift = _sample_coefficients(mean[n], m2[n], float(A * cpg), cpg, weight, bias,
                                            eps, invstd[n])
        for k in prange(pieces):
            normalize_rows_piece(x3[n], k * rows, min((k + 1) * rows, A), scale, shift, y3[n],
                                 None, None)
    return mean, m2, invstd


@njit(nogil=True, cache=True)
def _train_samples_serial(x3, cpg, weight, bias, eps, y3):
    N, A, C = x3.shape
    G = C // cpg
    mean, m2, invstd = np.empty((N, G)), np.empty((N, G)), np.empty((N, G))
    for n in range(N):
        mean[n], m2[n] = _moments_rows_serial(x3[n], cpg)
        scale, shift = _sample_coefficients(mean[n], m2[n], float(A * cpg), cpg, weight, bias,
                                            eps, invstd[n])
        normalize_rows_piece(x3[n], 0, A, scale, shift, y3[n], None, None)
    return mean, m2, invstd


def train_samples(x3, cpg, weight, bias, eps, y3):
    """Channels-last group norm forward on (N, A, C) views: ``(mean, m2, invstd)`` of shape (N, G)."""
    kernel = _train_samples_serial if serial(x3.size) else _train_samples
    return kernel(x3, cpg, weight, bias, eps, y3)
