r"""Layer norm and RMS norm kernels: per-row statistics, a per-element affine.

An input is read as a C-contiguous (R, D) array: R rows (the leading axes),
each normalized over its D values (the normalized shape).  Every kernel is
fused per row: a row is reduced and then normalized (forward) or
differentiated (backward) while it is still in the L1/L2 cache, so memory
sees each row once on the way in and once on the way out.

Forward, per row (``centered``: layer norm; otherwise RMS norm)

.. math::

    \mu = \frac{1}{D}\sum_j x_j, \qquad
    \sigma^{-1} = \Big(\frac{1}{D}\sum_j (x_j - \mu)^2 + \epsilon\Big)^{-1/2}, \qquad
    y_j = (x_j - \mu)\,\sigma^{-1}\gamma_j + \beta_j,

with :math:`\mu = 0` and :math:`\beta = 0` for RMS norm (then
:math:`\sigma^{-1}` is :math:`1/\mathrm{rms}`).  Backward, with
:math:`\hat x = (x - \mu)\sigma^{-1}` and :math:`g = dy\,\gamma`,

.. math::

    dx_j = \sigma^{-1}\Big(g_j - \frac{1}{D}\sum_k g_k
           - \hat x_j \frac{1}{D}\sum_k g_k \hat x_k\Big),
    \qquad d\gamma_j = \sum_{\text{rows}} dy_j \hat x_j, \qquad
    d\beta_j = \sum_{\text{rows}} dy_j,

without the :math:`\frac{1}{D}\sum g` term for RMS norm.

Precision.  Row statistics are float64: layer norm's are the engine's
(:func:`numbabn.cpu.rows.row_moments`: one pass about a shift near the mean,
a second where the shift misses; never :math:`E[x^2]-E[x]^2`), RMS norm's
the sum of squares, groups of four squares added in the row's dtype (positive
terms, a few units in the last place) before they reach a float64 lane.
The elementwise arithmetic runs in the compute dtype (float32 for float16
and float32 input, as PyTorch's ``opmath``), with the mean split into a
float32 head and tail, :math:`x - \mu = (x - \mu_{hi}) - \mu_{lo}`: for data
far from zero (1e4 + N(0, 1)) the difference is formed from exact float32
values, so nothing cancels catastrophically.

Work is cut into pieces of whole rows by the shape alone (:func:`row_cut`);
the column sums of the backward (dγ, dβ) are added in the compute dtype over
blocks of ``COLUMN_BLOCK`` rows of a piece, kept per piece in float64 and
added in piece order at the end, so the results do not depend on the thread
count and the parallel and serial twins agree bit for bit.
"""
import numpy as np
from numba import njit, prange, uint64

from . import formulas
from ._arrays import unless_in_place
from ._stack import stack_empty
from .epilogue import into
from .rows import LANES, centred_square_sum, head_shift, lane_total, row_moments

#: A piece of work holds about this many elements (whole rows; at least one row).
PIECE_ELEMENTS = 1 << 16

#: The backward adds a column's dγ and dβ terms in x's dtype over this many rows of a
#: piece, then into float64 (a few units in the last place, as the row sums' groups of four).
COLUMN_BLOCK = 8

#: At most this many pieces: each one costs 2 * D float64 of column partials
#: in the backward (and their merge), so very wide inputs get taller pieces.
MAX_PIECES = 64


@njit(nogil=True, cache=True, error_model="numpy")
def row_cut(R, D):
    """``(rows_per_piece, pieces)`` of an (R, D) input: a function of the shape only."""
    if R == 0:
        return 1, 0
    pieces = min(max((R * max(D, 1) + PIECE_ELEMENTS - 1) // PIECE_ELEMENTS, 1), MAX_PIECES, R)
    rows = (R + pieces - 1) // pieces
    return rows, (R + rows - 1) // rows


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def row_statistics(x, r, centered, eps, acc1, acc2, tv):
    """``(mean, rstd)`` in float64 of row ``r`` of ``x``; ``tv`` (4 values of the row's
    dtype) receives ``(mean_hi, mean_lo, rstd)`` rounded to that dtype for the elementwise
    loops.

    Layer norm (``centered``): the engine's :func:`numbabn.cpu.rows.row_moments`
    about the mean of the row's first values (:func:`numbabn.cpu.rows.head_shift`:
    a row's features are exchangeable, and these values are read next anyway);
    one pass, two where the shift misses.  RMS norm: one pass, the sum of
    squares (mean reported as 0).
    """
    D = x.shape[1]
    if centered:
        mean, m2 = row_moments(x, r, head_shift(x, r), acc1, acc2, tv)
    else:
        mean = 0.0
        tv[0] = 0.0
        tv[1] = 0.0
        m2 = centred_square_sum(x, r, tv[0], tv[1], acc1)
    rstd = formulas.invstd(m2 / D, eps)
    tv[2] = rstd
    return mean, rstd


@njit(nogil=True, cache=True, error_model="numpy")
def _forward_piece(x, r0, r1, w, b, eps, centered, y, mean, rstd):
    """Rows ``r0:r1``: statistics, then ``y = ((x - mu_hi) - mu_lo) * rstd * w + b``
    (into ``x`` when ``y`` is None)."""
    y = into(x, y)
    acc1, acc2 = stack_empty(LANES), stack_empty(LANES)
    tv = np.empty(4, x.dtype)
    D = x.shape[1]
    for r in range(r0, r1):
        mean[r], rstd[r] = row_statistics(x, r, centered, eps, acc1, acc2, tv)
        mhi = tv[0]
        mlo = tv[1]
        s = tv[2]
        ur = uint64(r)  # indexed directly: a row view's reference count costs more than it
        if centered:
            for j in range(D):
                uj = uint64(j)
                y[ur, uj] = ((x[ur, uj] - mhi) - mlo) * s * w[uj] + b[uj]
        else:
            for j in range(D):
                uj = uint64(j)
                y[ur, uj] = x[ur, uj] * s * w[uj]


@njit(nogil=True, parallel=True, cache=True, error_model="numpy")
def _forward_parallel(x, w, b, eps, centered, y, mean, rstd):
    R = x.shape[0]
    rows, pieces = row_cut(R, x.shape[1])
    for k in prange(pieces):
        _forward_piece(x, k * rows, min((k + 1) * rows, R), w, b, eps, centered, y, mean, rstd)


@njit(nogil=True, cache=True, error_model="numpy")
def _forward_serial(x, w, b, eps, centered, y, mean, rstd):
    R = x.shape[0]
    rows, pieces = row_cut(R, x.shape[1])
    for k in range(pieces):
        _forward_piece(x, k * rows, min((k + 1) * rows, R), w, b, eps, centered, y, mean, rstd)


def forward(x2, w, b, eps, centered, y2, parallel):
    """Normalize the rows of ``x2`` into ``y2``; returns float64 ``(mean, rstd)`` per row.

    ``x2``, ``y2``: C-contiguous (R, D) of one compute dtype (``y2`` may be
    ``x2``'s buffer); ``w``, ``b``: contiguous (D,) of that dtype (ones and zeros for
    absent ones; ``b`` is not read for RMS norm).
    """
    R = x2.shape[0]
    mean = np.empty(R)
    rstd = np.empty(R)
    kernel = _forward_parallel if parallel else _forward_serial
    kernel(x2, w, b, eps, centered, unless_in_place(y2, x2), mean, rstd)
    return mean, rstd


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _backward_sums(dy, x, r, w, mhi, mlo, s, acc_g, acc_gx):
    r"""Float64 ``(sum(g), sum(g * xhat))`` over row ``r``, ``g = dy * w``.

    Groups of four terms are added in the row's dtype (their rounding is that
    of ``g`` itself), then go into ``len(acc_g)`` float64 lanes added in a
    fixed order.
    """
    D = x.shape[1]
    ur = uint64(r)
    L = acc_g.shape[0]
    for lane in range(L):
        acc_g[lane] = 0.0
        acc_gx[lane] = 0.0
    step = 4 * L
    full = D - D % step
    uL = uint64(L)
    for k in range(D // step):
        base = uint64(k * step)
        for lane in range(L):
            i0 = base + uint64(lane)
            i1 = i0 + uL
            i2 = i1 + uL
            i3 = i2 + uL
            g0 = dy[ur, i0] * w[i0]
            g1 = dy[ur, i1] * w[i1]
            g2 = dy[ur, i2] * w[i2]
            g3 = dy[ur, i3] * w[i3]
            h0 = ((x[ur, i0] - mhi) - mlo) * s
            h1 = ((x[ur, i1] - mhi) - mlo) * s
            h2 = ((x[ur, i2] - mhi) - mlo) * s
            h3 = ((x[ur, i3] - mhi) - mlo) * s
            acc_g[lane] += np.float64((g0 + g1) + (g2 + g3))
            acc_gx[lane] += np.float64((g0 * h0 + g1 * h1) + (g2 * h2 + g3 * h3))
    sg = 0.0
    sgx = 0.0
    for j in range(full, D):
        g = dy[ur, j] * w[j]
        sg += np.float64(g)
        sgx += np.float64(g * (((x[ur, j] - mhi) - mlo) * s))
    return sg + lane_total(acc_g), sgx + lane_total(acc_gx)


@njit(nogil=True, cache=True, error_model="numpy")
def _backward_piece(dy, x, r0, r1, mean, rstd, w, centered, dx, cw, cb):
    """Rows ``r0:r1``: dx row by row (both passes while the row is in cache), and this
    piece's column sums ``cw += dy * xhat``, ``cb += dy`` (float64, zeroed by the caller),
    formed in the second pass with the ``xhat`` that dx needs.  ``dx`` None: into ``dy``.

    A column's terms are added in x's dtype over ``COLUMN_BLOCK`` rows, then into
    the float64 sums: a float64 read-modify-write per element cost 8-15% of the
    backward's time.
    """
    dx = into(dy, dx)
    D = x.shape[1]
    acc_g, acc_gx = stack_empty(LANES), stack_empty(LANES)
    tv = np.empty(4, x.dtype)
    bw = np.zeros(D, x.dtype)  # the block's column terms
    bb = np.zeros(D, x.dtype)
    for r in range(r0, r1):
        tv[0] = mean[r] if centered else 0.0
        tv[1] = mean[r] - np.float64(tv[0]) if centered else 0.0
        tv[2] = rstd[r]
        mhi = tv[0]
        mlo = tv[1]
        s = tv[2]
        sg, sgx = _backward_sums(dy, x, r, w, mhi, mlo, s, acc_g, acc_gx)
        tv[3] = sgx / D
        c = tv[3]
        tv[3] = sg / D if centered else 0.0
        a = tv[3]
        ur = uint64(r)  # indexed directly: a row view's reference count costs more than it
        for j in range(D):
            uj = uint64(j)
            g0 = dy[ur, uj]
            xh = ((x[ur, uj] - mhi) - mlo) * s
            dx[ur, uj] = s * ((g0 * w[uj] - a) - xh * c)
            bw[uj] += g0 * xh
            bb[uj] += g0
        if (r - r0) % COLUMN_BLOCK == COLUMN_BLOCK - 1 or r + 1 == r1:
            for j in range(D):
                cw[j] += np.float64(bw[j])
                cb[j] += np.float64(bb[j])
                bw[j] = 0.0
                bb[j] = 0.0


@njit(nogil=True, parallel=True, cache=True, error_model="numpy")
def _backward_parallel(dy, x, mean, rstd, w, centered, dx, partials):
    R = x.shape[0]
    rows, pieces = row_cut(R, x.shape[1])
    for k in prange(pieces):
        _backward_piece(dy, x, k * rows, min((k + 1) * rows, R), mean, rstd, w, centered, dx,
                        partials[k, 0], partials[k, 1])


@njit(nogil=True, cache=True, error_model="numpy")
def _backward_serial(dy, x, mean, rstd, w, centered, dx, partials):
    R = x.shape[0]
    rows, pieces = row_cut(R, x.shape[1])
    for k in range(pieces):
        _backward_piece(dy, x, k * rows, min((k + 1) * rows, R), mean, rstd, w, centered, dx,
                        partials[k, 0], partials[k, 1])


@njit(nogil=True, cache=True, error_model="numpy")
def _merge_columns(partials):
    """Add the pieces' column sums in piece order: float64 ``(dweight, dbias)``."""
    pieces, _, D = partials.shape
    sums = np.zeros((2, D))
    for k in range(pieces):
        for i in range(2):
            for j in range(D):
                sums[i, j] += partials[k, i, j]
    return sums[0], sums[1]


def backward(dy2, x2, mean, rstd, w, centered, dx2, parallel):
    """dx of the rows into ``dx2``; returns float64 ``(dweight, dbias)`` of shape (D,).

    ``mean`` and ``rstd`` are float64 (R,) (``mean`` is ignored, may hold
    anything, for RMS norm); ``dx2`` may be ``dy2`` or ``x2``.
    """
    R, D = x2.shape
    _, pieces = row_cut(R, D)
    partials = np.zeros((pieces, 2, D))
    kernel = _backward_parallel if parallel else _backward_serial
    kernel(dy2, x2, mean, rstd, w, centered, unless_in_place(dx2, dy2), partials)
    return _merge_columns(partials)
