r"""Batch-norm statistics and normalization of Dask arrays, chunk by chunk with numbabn.

:func:`channel_moments` reduces every chunk with numbabn's exact per-channel
reduction (count, mean and M2 in float64, as :class:`numbabn.ChannelMoments`
does for a batch) and merges the summaries in Dask's tree reduction with
Chan's formula (:func:`numbabn._channel_math.chan_merge`),

.. math::

    n = n_a + n_b,\quad \delta = \bar x_b - \bar x_a,\quad
    \bar x = \frac{n_a \bar x_a + n_b \bar x_b}{n},\quad
    M_2 = M_{2,a} + M_{2,b} + \delta^2 \frac{n_a n_b}{n},

so any chunking (chunks split along the channel axis included) gives what
:func:`numbabn.channel_moments` gives on the whole array, to float64
rounding.  :func:`batch_norm` normalizes every chunk with numbabn
(``map_blocks``).  Both are lazy and run on any Dask scheduler: threads,
processes or ``dask.distributed``.

Threads: Dask runs one task per worker thread, so a worker with N threads
makes up to N numbabn calls at once, in parallel (the kernels release the
GIL).  Each task here runs numbabn's kernels on one Numba thread
(:func:`_one_numba_thread`; Numba's thread count is per calling thread, and
it is restored after the task): the parallelism comes
from the scheduler's threads and workers, which should add up to the cores.

This module needs Dask (``pip install 'numbabn[dask]'``); ``import numbabn``
does not import it.
"""
import contextlib
from functools import partial

import numba
import numpy as np

try:
    import dask.array as da
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "numbabn.dask needs dask: pip install 'numbabn[dask]' (dask[array] and distributed)"
    ) from err

from . import _channel_math as cm
from . import _validate as v
from ._accumulate import batch_moments
from .functional import batch_norm as _batch_norm

__all__ = ["channel_moments", "batch_norm"]

#: Per channel: a chunk's (or merged group's) summary, and the result (``mean``, ``var``,
#: filled by the last step).  One dtype for every step, as ``da.reduction`` wants.
_SUMMARY = np.dtype([("n", np.int64), ("mean", np.float64), ("m2", np.float64),
                     ("var", np.float64)])


@contextlib.contextmanager
def _one_numba_thread():
    """Run numbabn's kernels on one Numba thread in this (Dask worker) thread, then restore."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _as_dask(darr):
    if not isinstance(darr, da.Array):
        darr = da.asarray(darr)
    v.float_dtype("darr", darr.dtype)
    return darr


def _kept_shape(ndim, channel_axis, channels):
    return tuple(channels if i == channel_axis else 1 for i in range(ndim))


def _summary(count, mean, m2, ndim, channel_axis):
    out = np.zeros(len(mean), _SUMMARY)
    out["n"], out["mean"], out["m2"] = count, mean, m2
    return out.reshape(_kept_shape(ndim, channel_axis, len(mean)))


def _chunk(block, axis=None, keepdims=True, channel_axis=1, computing_meta=False):
    """(count, mean, M2) of one chunk, per channel, with the reduced axes kept as size 1."""
    if computing_meta:
        return np.empty((0,) * block.ndim, _SUMMARY)
    lay = v.layout(block.shape, channel_axis)
    with _one_numba_thread():
        count, mean, m2 = batch_moments(block, lay)
    return _summary(count, mean, m2, block.ndim, lay.axis)


def _merge_pieces(pieces, channel_axis):
    """Chan-merge the summaries along every reduced axis (in C order of the pieces)."""
    rows = np.moveaxis(pieces, channel_axis, -1)
    channels = rows.shape[-1]
    rows = rows.reshape(-1, channels)
    if channels == 0:
        return 0, np.zeros(0), np.zeros(0)
    return cm.chan_merge_in_order(((r["n"][0], r["mean"], r["m2"]) for r in rows), channels)


def _combine(pieces, axis=None, keepdims=True, channel_axis=1):
    count, mean, m2 = _merge_pieces(pieces, channel_axis)
    return _summary(count, mean, m2, pieces.ndim, channel_axis)


def _aggregate(pieces, axis=None, keepdims=False, channel_axis=1, ddof=0):
    count, mean, m2 = _merge_pieces(pieces, channel_axis)
    out = _summary(count, mean, m2, pieces.ndim, channel_axis).ravel()
    out["mean"] = mean if count > 0 else np.nan
    out["var"] = m2 / (count - ddof) if count > ddof else np.nan
    return out.reshape(_kept_shape(pieces.ndim, channel_axis, len(mean))) if keepdims else out


def _moments64(darr, lay, ddof):
    """Lazy float64 (mean, var) of a checked Dask array: one tree reduction, two outputs."""
    reduced = tuple(i for i in range(darr.ndim) if i != lay.axis)
    result = da.reduction(
        darr,
        partial(_chunk, channel_axis=lay.axis),
        partial(_aggregate, channel_axis=lay.axis, ddof=ddof),
        combine=partial(_combine, channel_axis=lay.axis),
        axis=reduced, keepdims=False, dtype=_SUMMARY, concatenate=True,
        meta=np.empty((0,), _SUMMARY), name="numbabn-channel-moments",
    )
    return result["mean"], result["var"]


def channel_moments(darr, *, axis=1, ddof=0):
    r"""Lazy per-channel mean and variance of a Dask array, exact under any chunking.

    .. math::

        \mu_c = \frac{1}{M}\sum x, \qquad
        \mathrm{var}_c = \frac{1}{M - \mathrm{ddof}}\sum (x - \mu_c)^2

    Each chunk is reduced with numbabn (float64 count, mean and M2 per
    channel) and the summaries are merged with Chan's formula in Dask's tree
    reduction; ``compute()`` gives what :func:`numbabn.channel_moments` gives
    on the whole array.  ``E[x²] − E[x]²`` is never formed.

    Parameters
    ----------
    darr : dask.array.Array (or array_like) of float16, float32 or float64
        Rank >= 2, any chunking, either byte order.
    axis : int, keyword-only
        The channel axis.
    ddof : int >= 0, keyword-only

    Returns
    -------
    mean, var : dask.array.Array of shape (C,)
        float64 for float64 input, else float32 (as :func:`numbabn.channel_moments`);
        chunked along C as ``darr`` is.  NaN where ``M - ddof <= 0``.
        Computing both at once (``dask.compute(mean, var)``) runs the
        reduction once.

    Shape
    -----
    ``darr``: (A..., C, B...) with C on ``axis``; ``mean``, ``var``: (C,).
    """
    darr = _as_dask(darr)
    lay = v.layout(tuple(darr.shape), axis)
    ddof = v.ddof_value(ddof)
    dtype = v.stats_dtype(darr.dtype)
    mean, var = _moments64(darr, lay, ddof)
    return mean.astype(dtype), var.astype(dtype)


def _normalize_block(block, mean, var, *rest, eps, axis, has_weight, has_bias):
    rest = list(rest)
    weight = rest.pop(0).ravel() if has_weight else None
    bias = rest.pop(0).ravel() if has_bias else None
    with _one_numba_thread():
        return _batch_norm(block, mean.ravel(), var.ravel(), weight, bias, training=False,
                           eps=eps, axis=axis)


def batch_norm(darr, mean, var, weight=None, bias=None, eps=1e-5, *, axis=1):
    r"""Lazy batch normalization of a Dask array with given (or computed) statistics.

    .. math::

        y = \frac{x - \mu}{\sqrt{\mathrm{var} + \epsilon}} \, \gamma + \beta

    Every chunk is normalized by numbabn (``map_blocks``), with the slice of
    the per-channel vectors that its channels need.

    Parameters
    ----------
    darr : dask.array.Array (or array_like) of float16, float32 or float64
        Rank >= 2, any chunking, either byte order.
    mean, var : array_like or dask.array.Array of shape (C,), or both None
        The statistics, e.g. from :func:`channel_moments` (lazy) or running
        estimates.  Both None: the batch statistics of ``darr`` (biased
        variance, as in training), computed in float64 with
        :func:`channel_moments`'s reduction.  For float32 data with a large
        offset, pass float64 statistics: float32 ones lose digits of the mean.
    weight, bias : array_like of shape (C,), optional
        :math:`\gamma` and :math:`\beta`; None means 1 and 0.
    eps : float
        > 0 when the statistics come from ``darr``, >= 0 when given (batch
        norm's checks for training and inference).
    axis : int, keyword-only
        The channel axis.

    Returns
    -------
    y : dask.array.Array
        Shape and chunks of ``darr``, its dtype in native byte order.

    Shape
    -----
    ``darr``: (A..., C, B...) with C on ``axis``; ``y``: the same.
    """
    darr = _as_dask(darr)
    lay = v.layout(tuple(darr.shape), axis)
    eps = v.batch_norm_eps(eps, mean is None)  # statistics of the data: training's rule
    if (mean is None) != (var is None):
        raise ValueError("mean and var must be given together (or both None to compute them)")
    if mean is None:
        mean, var = _moments64(darr, lay, 0)
    chunks = darr.chunks[lay.axis]
    index = tuple(slice(None) if i == lay.axis else None for i in range(darr.ndim))
    vectors = []
    for name, vec in (("mean", mean), ("var", var), ("weight", weight), ("bias", bias)):
        if vec is None:
            continue
        if not isinstance(vec, da.Array):
            vec = np.asarray(vec)
        v.channel_vector(name, vec, lay.C)
        vectors.append(da.asarray(vec).rechunk((chunks,))[index])
    dtype = v.native(darr.dtype)
    return da.map_blocks(
        _normalize_block, darr, *vectors, eps=eps, axis=lay.axis,
        has_weight=weight is not None, has_bias=bias is not None,
        dtype=dtype, meta=np.empty((0,) * darr.ndim, dtype), token="numbabn-batch-norm",
    )
