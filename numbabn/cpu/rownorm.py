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

Precision.  Row statistics are float64, in independent lanes added in a
fixed order: layer norm's are two passes over the row while it is in cache,
the mean, then the squares about it (never :math:`E[x^2]-E[x]^2`); RMS
norm's is the sum of squares.  Groups of four values are added before they
reach a lane (exactly, for the float32 sums of the mean; in the row's dtype
for squares, positive terms, a few units in the last place), so the lanes
see a quarter of the loads and stores.  These are not the engine's
:func:`numbabn.cpu.rows.row_moments`, which allocates lane scratch per row
and updates a lane per value (the batch-norm kernels' bits depend on that):
on rows of 768 float32 values it made the whole forward 1.4 times slower,
on rows of 64 three times.
The elementwise arithmetic runs in the compute dtype (float32 for float16
and float32 input, as PyTorch's ``opmath``), with the mean split into a
float32 head and tail, :math:`x - \mu = (x - \mu_{hi}) - \mu_{lo}`: for data
far from zero (1e4 + N(0, 1)) the difference is formed from exact float32
values, so nothing cancels catastrophically.

Work is cut into pieces of whole rows by the shape alone (:func:`row_cut`);
the column sums of the backward (dγ, dβ) are kept per piece and added in
piece order at the end, so the results do not depend on the thread count
and the parallel and serial twins agree bit for bit.
"""
import numpy as np
from numba import njit, prange, uint64

#: Independent float64 accumulators of a row sum (vectorizes without fastmath).
LANES = 16

#: A piece of work holds about this many elements (whole rows; at least one row).
PIECE_ELEMENTS = 1 << 16

#: At most this many pieces: each one costs 2 * D float64 of column partials
#: in the backward (and their merge), so very wide inputs get taller pieces.
MAX_PIECES = 64


@njit(cache=True, error_model="numpy")
def row_cut(R, D):
    """``(rows_per_piece, pieces)`` of an (R, D) input: a function of the shape only."""
    if R == 0:
        return 1, 0
    pieces = min(max((R * max(D, 1) + PIECE_ELEMENTS - 1) // PIECE_ELEMENTS, 1), MAX_PIECES, R)
    rows = (R + pieces - 1) // pieces
    return rows, (R + rows - 1) // rows


@njit(cache=True, error_model="numpy")
def _centred_square_sum(xr, mhi, mlo, acc):
    r"""Float64 :math:`\sum_j ((x_j - m_{hi}) - m_{lo})^2` over one row, in ``len(acc)`` lanes.

    The difference is formed in the row's dtype (exact for float32 data near
    the mean) and squared there; groups of four squares go into float64 lanes.
    With ``mhi = mlo = 0`` this is the sum of squares of RMS norm.  Lanes are
    added in a fixed order.
    """
    D = xr.shape[0]
    L = acc.shape[0]
    for lane in range(L):
        acc[lane] = 0.0
    step = 4 * L
    full = D - D % step
    for k in range(D // step):
        base = uint64(k * step)  # unsigned: no negative-index wraparound, so no gathers
        for lane in range(L):
            i = base + uint64(lane)
            d0 = (xr[i] - mhi) - mlo
            d1 = (xr[i + uint64(L)] - mhi) - mlo
            d2 = (xr[i + uint64(2 * L)] - mhi) - mlo
            d3 = (xr[i + uint64(3 * L)] - mhi) - mlo
            # Four squares summed in the row's dtype (positive terms: a relative error of
            # a few units in the last place, far below the result's), then in float64.
            acc[lane] += np.float64((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3))
    total = 0.0
    for j in range(full, D):
        d = np.float64((xr[j] - mhi) - mlo)
        total += d * d
    for lane in range(L):
        total += acc[lane]
    return total


@njit(cache=True, error_model="numpy")
def _row_sum(xr, acc):
    """Float64 sum of one row, in ``len(acc)`` lanes added in a fixed order."""
    D = xr.shape[0]
    L = acc.shape[0]
    for lane in range(L):
        acc[lane] = 0.0
    step = 4 * L
    full = D - D % step
    u1, u2, u3 = uint64(L), uint64(2 * L), uint64(3 * L)  # unsigned: no wraparound checks
    for k in range(D // step):
        base = uint64(k * step)
        for lane in range(L):
            i = base + uint64(lane)
            # float32 values add exactly in float64 (pairs, then pairs of pairs but for
            # exponents far apart): the groups of four lose nothing that matters, and
            # the lanes see a quarter of the loads and stores.
            acc[lane] += ((np.float64(xr[i]) + np.float64(xr[i + u1]))
                          + (np.float64(xr[i + u2]) + np.float64(xr[i + u3])))
    total = 0.0
    for j in range(full, D):
        total += np.float64(xr[j])
    for lane in range(L):
        total += acc[lane]
    return total


@njit(cache=True, error_model="numpy")
def row_statistics(xr, centered, eps, acc, tv):
    """``(mean, rstd)`` in float64 of one contiguous row; ``tv`` (4 values of the row's
    dtype) receives ``(mean_hi, mean_lo, rstd)`` rounded to that dtype for the elementwise
    loops.

    Layer norm (``centered``): two passes over the row (in cache), the mean,
    then the squares about it.  RMS norm: one pass, the sum of squares (mean
    reported as 0).
    """
    D = xr.shape[0]
    mean = 0.0
    tv[0] = 0.0
    tv[1] = 0.0
    if centered:
        mean = _row_sum(xr, acc) / D
        tv[0] = mean
        tv[1] = mean - np.float64(tv[0])
    m2 = _centred_square_sum(xr, tv[0], tv[1], acc)
    rstd = 1.0 / np.sqrt(m2 / D + eps)
    tv[2] = rstd
    return mean, rstd


@njit(cache=True, error_model="numpy")
def _forward_piece(x, r0, r1, w, b, eps, centered, y, mean, rstd):
    """Rows ``r0:r1``: statistics, then ``y = ((x - mu_hi) - mu_lo) * rstd * w + b``."""
    acc = np.empty(LANES)
    tv = np.empty(4, x.dtype)
    D = x.shape[1]
    for r in range(r0, r1):
        xr = x[r]
        yr = y[r]
        mean[r], rstd[r] = row_statistics(xr, centered, eps, acc, tv)
        mhi = tv[0]
        mlo = tv[1]
        s = tv[2]
        if centered:
            for j in range(D):
                yr[j] = ((xr[j] - mhi) - mlo) * s * w[j] + b[j]
        else:
            for j in range(D):
                yr[j] = xr[j] * s * w[j]


@njit(parallel=True, cache=True, error_model="numpy")
def _forward_parallel(x, w, b, eps, centered, y, mean, rstd):
    R = x.shape[0]
    rows, pieces = row_cut(R, x.shape[1])
    for k in prange(pieces):
        _forward_piece(x, k * rows, min((k + 1) * rows, R), w, b, eps, centered, y, mean, rstd)


@njit(cache=True, error_model="numpy")
def _forward_serial(x, w, b, eps, centered, y, mean, rstd):
    R = x.shape[0]
    rows, pieces = row_cut(R, x.shape[1])
    for k in range(pieces):
        _forward_piece(x, k * rows, min((k + 1) * rows, R), w, b, eps, centered, y, mean, rstd)


def forward(x2, w, b, eps, centered, y2, parallel):
    """Normalize the rows of ``x2`` into ``y2``; returns float64 ``(mean, rstd)`` per row.

    ``x2``, ``y2``: C-contiguous (R, D) of one compute dtype (``y2`` may be
    ``x2``); ``w``, ``b``: contiguous (D,) of that dtype (ones and zeros for
    absent ones; ``b`` is not read for RMS norm).
    """
    R = x2.shape[0]
    mean = np.empty(R)
    rstd = np.empty(R)
    kernel = _forward_parallel if parallel else _forward_serial
    kernel(x2, w, b, eps, centered, y2, mean, rstd)
    return mean, rstd


@njit(cache=True, error_model="numpy")
def _backward_sums(dyr, xr, w, mhi, mlo, s, acc_g, acc_gx):
    r"""Float64 ``(sum(g), sum(g * xhat))`` over one row, ``g = dy * w``.

    Groups of four terms are added in the row's dtype (their rounding is that
    of ``g`` itself), then go into ``len(acc_g)`` float64 lanes added in a
    fixed order.
    """
    D = xr.shape[0]
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
            g0 = dyr[i0] * w[i0]
            g1 = dyr[i1] * w[i1]
            g2 = dyr[i2] * w[i2]
            g3 = dyr[i3] * w[i3]
            h0 = ((xr[i0] - mhi) - mlo) * s
            h1 = ((xr[i1] - mhi) - mlo) * s
            h2 = ((xr[i2] - mhi) - mlo) * s
            h3 = ((xr[i3] - mhi) - mlo) * s
            acc_g[lane] += np.float64((g0 + g1) + (g2 + g3))
            acc_gx[lane] += np.float64((g0 * h0 + g1 * h1) + (g2 * h2 + g3 * h3))
    sg = 0.0
    sgx = 0.0
    for j in range(full, D):
        g = dyr[j] * w[j]
        sg += np.float64(g)
        sgx += np.float64(g * (((xr[j] - mhi) - mlo) * s))
    for lane in range(L):
        sg += acc_g[lane]
        sgx += acc_gx[lane]
    return sg, sgx


@njit(cache=True, error_model="numpy")
def _backward_piece(dy, x, r0, r1, mean, rstd, w, centered, dx, cw, cb):
    """Rows ``r0:r1``: dx row by row (both passes while the row is in cache), and this
    piece's column sums ``cw += dy * xhat``, ``cb += dy`` (float64, zeroed by the caller),
    formed in the second pass with the ``xhat`` that dx needs."""
    D = x.shape[1]
    acc_g = np.empty(LANES)
    acc_gx = np.empty(LANES)
    tv = np.empty(4, x.dtype)
    for r in range(r0, r1):
        xr = x[r]
        dyr = dy[r]
        dxr = dx[r]
        tv[0] = mean[r] if centered else 0.0
        tv[1] = mean[r] - np.float64(tv[0]) if centered else 0.0
        tv[2] = rstd[r]
        mhi = tv[0]
        mlo = tv[1]
        s = tv[2]
        sg, sgx = _backward_sums(dyr, xr, w, mhi, mlo, s, acc_g, acc_gx)
        tv[3] = sgx / D
        c = tv[3]
        tv[3] = sg / D if centered else 0.0
        a = tv[3]
        for j in range(D):
            g0 = dyr[j]
            xh = ((xr[j] - mhi) - mlo) * s
            dxr[j] = s * ((g0 * w[j] - a) - xh * c)
            cw[j] += np.float64(g0 * xh)
            cb[j] += np.float64(g0)


@njit(parallel=True, cache=True, error_model="numpy")
def _backward_parallel(dy, x, mean, rstd, w, centered, dx, partials):
    R = x.shape[0]
    rows, pieces = row_cut(R, x.shape[1])
    for k in prange(pieces):
        _backward_piece(dy, x, k * rows, min((k + 1) * rows, R), mean, rstd, w, centered, dx,
                        partials[k, 0], partials[k, 1])


@njit(cache=True, error_model="numpy")
def _backward_serial(dy, x, mean, rstd, w, centered, dx, partials):
    R = x.shape[0]
    rows, pieces = row_cut(R, x.shape[1])
    for k in range(pieces):
        _backward_piece(dy, x, k * rows, min((k + 1) * rows, R), mean, rstd, w, centered, dx,
                        partials[k, 0], partials[k, 1])


@njit(cache=True, error_model="numpy")
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
    kernel(dy2, x2, mean, rstd, w, centered, dx2, partials)
    return _merge_columns(partials)
