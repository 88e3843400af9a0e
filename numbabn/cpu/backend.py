"""The CPU backend: host arrays in, host arrays out.

It turns validated NumPy arrays into the C-contiguous (A, C, B) views the
kernels read, runs the kernels and does the per-channel float64 arithmetic in
between.  Every function here assumes its inputs were checked by
:mod:`numbabn._validate`.
"""
import numpy as np

from .. import _channel_math as cm
from .._validate import Layout, stats_dtype
from ._arrays import destination, finish, kernel_view
from . import backward as _backward
from . import formulas
from . import forward as _forward
from . import groups as _groups
from . import moments as _moments
from . import normalize as _normalize
from . import streaming as _streaming
from ._chunks import BLOCKS_MAX_B, serial

name = "cpu"

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def asarray(a):
    """Host view of an array-like (no copy for NumPy arrays)."""
    return np.asarray(a)


def empty(shape, dtype):
    """A new uninitialised host array."""
    return np.empty(shape, dtype)


def require_c_order(x, what):
    """Host inputs of any memory order are read (copied where needed): nothing to check."""


def to_backend(a):
    """A host array as this backend returns results (as it is)."""
    return a


def _as_float64(v):
    return None if v is None else np.asarray(v, dtype=np.float64)


def _view3(a, lay):
    """C-contiguous (A, C, B) view in the compute dtype (copies only if needed)."""
    return kernel_view(a, (lay.A, lay.C, lay.B))


def _output3(out, lay, dtype, *inputs):
    """Where a kernel writes the (A, C, B) result (see :func:`numbabn.cpu._arrays.destination`)."""
    return destination(out, (lay.A, lay.C, lay.B), dtype, *inputs)


def welford(x, lay):
    """Per-channel float64 ``(count, mean, m2)`` of ``x``."""
    mean, m2 = _moments.moments(_view3(x, lay))
    return lay.count, mean, m2


def stream_moments(x, lay):
    """Per-channel float64 ``(count, mean, m2)`` of data read once (see :mod:`numbabn.cpu.streaming`).

    Long planes are read once about a sampled shift; other layouts take
    :func:`welford`, whose kernels read them once already.
    """
    if lay.B < BLOCKS_MAX_B or lay.count == 0:
        return welford(x, lay)
    x3 = _view3(x, lay)
    mean, m2, _ = _streaming.one_pass_moments(x3, serial(x3.size))
    return lay.count, mean, m2


def moments(x, lay, ddof):
    count, mean, m2 = welford(x, lay)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = m2 / (count - ddof) if count > ddof else np.full_like(m2, np.nan)
        if count == 0:
            mean = np.full_like(mean, np.nan)
    dtype = stats_dtype(x.dtype)
    return mean.astype(dtype), var.astype(dtype)


def normalize(x, lay, mean, invstd, weight, bias, out):
    """``y = (x - mean) * invstd * weight + bias`` with given per-channel statistics."""
    x3 = _view3(x, lay)
    scale, shift = cm.affine_coefficients(
        _as_float64(mean), _as_float64(invstd), _as_float64(weight), _as_float64(bias)
    )
    y3, direct = _output3(out, lay, x3.dtype, x3)
    _normalize.normalize(x3, scale, shift, y3)
    return finish(y3, direct, x, out)


def _vector_or(v, fill, C):
    """A per-channel float64 vector, ``fill`` everywhere when ``v`` is None."""
    return np.full(C, fill) if v is None else np.asarray(v, dtype=np.float64)


def forward_train(x, lay, weight, bias, eps, out, running_mean, running_var, momentum,
                  act=None, residual=None):
    """Training forward; ``act`` (see :mod:`numbabn.cpu.epilogue`) and
    ``residual`` are fused into the store: ``y = act(BN(x) + residual)``."""
    x3 = _view3(x, lay)
    weight, bias = _vector_or(weight, 1.0, lay.C), _vector_or(bias, 0.0, lay.C)
    if act is None and residual is None:
        y3, direct = _output3(out, lay, x3.dtype, x3)
        mean, m2, invstd = _forward.forward_train(x3, weight, bias, eps, y3)
    else:
        r3, y3, direct = _fused_output(x3, residual, out, lay)
        mean, m2, invstd = _forward.forward_train_fused(x3, weight, bias, eps, y3, act, r3)
    y = finish(y3, direct, x, out)
    if running_mean is not None:
        update_running(running_mean, running_var, mean, m2, lay.count, momentum)
    dtype = stats_dtype(x.dtype)
    return y, mean.astype(dtype, copy=False), invstd.astype(dtype, copy=False)


def forward_train_moments(x, lay, weight, bias, eps, out):
    """Training forward without running buffers: ``(y, mean, m2)``, statistics as float64 host arrays."""
    x3 = _view3(x, lay)
    y3, direct = _output3(out, lay, x3.dtype, x3)
    mean, m2, _ = _forward.forward_train(
        x3, _vector_or(weight, 1.0, lay.C), _vector_or(bias, 0.0, lay.C), eps, y3)
    return finish(y3, direct, x, out), mean, m2
def _fused_output(x3, residual, out, lay):
    """``(r3, y3, direct)``: the residual's view, and where a fused forward writes.

    ``out`` may be the residual's own buffer, as it may be x's.
    """
    if residual is None:
        return (None, *_output3(out, lay, x3.dtype, x3))
    r3 = _view3(residual, lay)
    return (r3, *_output3(out, lay, x3.dtype, x3, r3))


def update_running(running_mean, running_var, mean, m2, count, momentum):
    """Blend float64 batch statistics (mean and M2 of ``count`` values) into the running buffers."""
    _forward.update_running(running_mean, running_var, mean, m2, count, momentum)


def _native_vector(v):
    """A per-channel vector as the compiled finalize steps read it: float32 and float64 as they
    are (the arithmetic is float64 either way), float16 widened to float64."""
    if (v.dtype is _F32 or v.dtype is _F64) and v.flags.c_contiguous:
        return v
    return np.ascontiguousarray(v, dtype=np.float64)


def forward_infer(x, lay, running_mean, running_var, weight, bias, eps, out, act=None,
                  residual=None):
    x3 = _view3(x, lay)
    scale, shift = _normalize.infer_coefficients(
        _native_vector(running_mean), _native_vector(running_var),
        np.ones(lay.C) if weight is None else _native_vector(weight),
        np.zeros(lay.C) if bias is None else _native_vector(bias),
        bias is not None, eps)
    if act is None and residual is None:
        y3, direct = _output3(out, lay, x3.dtype, x3)
        _normalize.normalize(x3, scale, shift, y3)
    else:
        r3, y3, direct = _fused_output(x3, residual, out, lay)
        _normalize.normalize_fused(x3, scale, shift, y3, act, r3)
    return finish(y3, direct, x, out)


def backward_reduce(dy, x, lay, mean):
    """Per-channel float64 ``(sum(dy), sum(dy * (x - mean)))``."""
    return _backward.backward_reduce(_view3(dy, lay), _view3(x, lay), _as_float64(mean))


def backward_apply(dy, x, lay, mean, invstd, weight, sum_dy, sum_dy_xmu, count, training, out):
    """dx from the reduced sums; ``count`` is the number of values per channel."""
    k_dy, k_x, k_0 = cm.backward_coefficients(
        _as_float64(invstd), _as_float64(weight), sum_dy, sum_dy_xmu, count, training
    )
    return backward_apply_coefficients(dy, x, lay, mean, k_dy, k_x, k_0, out)


def backward_apply_coefficients(dy, x, lay, mean, k_dy, k_x, k_0, out):
    """``dx = k_dy * dy + k_x * (x - mean) + k_0`` with per-channel float64 coefficients."""
    dy3 = _view3(dy, lay)
    x3 = _view3(x, lay)
    dx3, direct = _output3(out, lay, dy3.dtype, dy3, x3)
    _backward.backward_apply(dy3, x3, _as_float64(mean), k_dy, k_x, k_0, dx3)
    return finish(dx3, direct, dy, out)


def backward(dy, x, lay, mean, invstd, weight, training, out, act=None, y=None,
             residual=False):
    """``(dx, dweight, dbias)``, and ``dresidual`` fourth when ``residual``.

    With an activation ``act``, ``dy`` is masked by the forward's output ``y``
    as the kernels read it, and ``dresidual`` (the masked gradient) is written
    in the same pass as ``dx``.  Without one, ``dresidual`` is ``dy`` itself
    (a copy when ``out`` overwrites ``dy``).
    """
    if act is not None or residual:
        return _backward_fused(dy, x, lay, mean, invstd, weight, training, out, act, y,
                               residual)
    dy3 = _view3(dy, lay)
    x3 = _view3(x, lay)
    dx3, direct = _output3(out, lay, dy3.dtype, dy3, x3)
    invstd = _as_float64(invstd)
    if x3.size == 0:
        sum_dy, sum_dy_xmu = np.zeros(lay.C), np.zeros(lay.C)
    else:
        sum_dy, sum_dy_xmu = _backward.backward(
            dy3, x3, _as_float64(mean), invstd, _vector_or(weight, 1.0, lay.C), training, dx3)
    dx = finish(dx3, direct, dy, out)
    grad_dtype = weight.dtype if weight is not None else stats_dtype(x.dtype)
    # Both are fresh float64 vectors: no copy needed when the gradients are float64.
    # An empty batch has no x-hat (its statistics may be NaN): its dweight is 0.
    dweight = (formulas.product(sum_dy_xmu, invstd) if x3.size else sum_dy_xmu).astype(
        grad_dtype, copy=False)
    return dx, dweight, sum_dy.astype(grad_dtype, copy=False)


# Layer norm and RMS norm (per-row statistics, per-element affine).
from .rownorm_backend import row_norm_backward, row_norm_forward  # noqa: E402,F401


# -- group norm where the affine is per channel inside a statistics row ------------------

def group_train(x, slay, weight, bias, eps, out):
    """Group norm training forward with CPU-specific kernels: ``(y, mean, m2)`` ((N, G) float64).

    NCHW-like inputs (nothing between the batch and channel axes) and
    channels-last ones (nothing after the channel axis); None for other
    layouts, which the engine composes from the batch-norm kernels.
    """
    if slay.A == 1:
        lay = Layout(1, slay.N * slay.G, (slay.C // slay.G) * slay.B, 1)
        kernel = _groups.train_rows
    elif slay.B == 1:
        lay = Layout(slay.N, slay.A, slay.C, 1)
        kernel = _groups.train_samples
    else:
        return None
    x3 = _view3(x, lay)
    y3, direct = _output3(out, lay, x3.dtype, x3)
    mean, m2, _ = kernel(x3, slay.C // slay.G, _vector_or(weight, 1.0, slay.C),
                         _vector_or(bias, 0.0, slay.C), eps, y3)
    y = finish(y3, direct, x, out)
    return y, mean.reshape(slay.N, slay.G), m2.reshape(slay.N, slay.G)


def group_backward(dy, x, slay, mean, invstd, weight, out):
    """NCHW-like group norm backward: ``(dx, dweight, dbias)`` (float64), or None for other layouts.

    Instance norm (one channel per group) too, but for planes shorter than
    batch norm's planes layout: its blocks of channels do better there (0.06
    against 0.09 ms on float32 8x64x7x7).
    """
    cpg = slay.C // slay.G
    if slay.A != 1 or (cpg == 1 and slay.B < BLOCKS_MAX_B):
        return None
    lay = Layout(1, slay.N * slay.G, cpg * slay.B, 1)
    dy3, x3 = _view3(dy, lay), _view3(x, lay)
    dx3, direct = _output3(out, lay, dy3.dtype, dy3, x3)
    w = _vector_or(weight, 1.0, slay.C)
    seg_s, seg_p = _groups.backward_rows(dy3, x3, cpg, mean.reshape(-1), invstd.reshape(-1), w,
                                         dx3)
    dx = finish(dx3, direct, dy, out)
    s = seg_s.reshape(slay.N, slay.C)
    p = formulas.product(seg_p.reshape(slay.N, slay.G, cpg), invstd.reshape(slay.N, slay.G, 1))
    return dx, p.reshape(slay.N, slay.C).sum(axis=0), s.sum(axis=0)


def renorm_forward_train(x, lay, weight, bias, eps, out, running_mean, running_var, momentum,
                         rmax, dmax):
    """Batch renormalization's training forward: ``(y, mean, invstd, r, d)``.

    One fused kernel call (:mod:`numbabn.cpu.renorm`: batch norm's loops, with r
    and d folded into each channel's scale and shift), then batch norm's
    running update.
    """
    from . import renorm as _renorm

    x3 = _view3(x, lay)
    y3, direct = _output3(out, lay, x3.dtype, x3)
    stats = _renorm.renorm_train(
        x3, _native_vector(running_mean), _native_vector(running_var),
        _vector_or(weight, 1.0, lay.C), _vector_or(bias, 0.0, lay.C), eps, rmax, dmax, y3)
    y = finish(y3, direct, x, out)
    mean, m2 = stats[0], stats[1]
    update_running(running_mean, running_var, mean, m2, lay.count, momentum)
    dtype = stats_dtype(x.dtype)
    return (y, *(stats[i].astype(dtype, copy=False) for i in (0, 2, 3, 4)))
def _backward_fused(dy, x, lay, mean, invstd, weight, training, out, act, y, residual):
    """:func:`backward` through an activation (``act``, or None), with the residual's
    gradient fourth when ``residual``."""
    dy3 = _view3(dy, lay)
    x3 = _view3(x, lay)
    if act is None:  # the residual's gradient is dy (a copy when out= overwrites it)
        dresidual = dy.copy() if out is not None and np.may_share_memory(out, dy) else dy
        dx, dweight, dbias = backward(dy, x, lay, mean, invstd, weight, training, out)
        return dx, dweight, dbias, dresidual
    y3 = _view3(y, lay)
    dx3, direct = _output3(out, lay, dy3.dtype, dy3, x3, y3)
    dr3 = np.empty_like(dx3) if residual else None
    invstd = _as_float64(invstd)
    if x3.size == 0:
        sum_dy, sum_dy_xmu = np.zeros(lay.C), np.zeros(lay.C)
    else:
        sum_dy, sum_dy_xmu = _backward.backward_fused(
            dy3, x3, _as_float64(mean), invstd, _vector_or(weight, 1.0, lay.C), training, dx3,
            act, y3, dr3)
    dx = finish(dx3, direct, dy, out)
    grad_dtype = weight.dtype if weight is not None else stats_dtype(x.dtype)
    dweight = formulas.product(sum_dy_xmu, invstd) if x3.size else sum_dy_xmu  # empty: 0
    grads = (dx, dweight.astype(grad_dtype, copy=False),
             sum_dy.astype(grad_dtype, copy=False))
    return (*grads, finish(dr3, True, dy, None)) if residual else grads
