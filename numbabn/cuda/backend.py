"""The CUDA backend: the functions of :mod:`numbabn.cpu.backend`, on a GPU.

Placement rules (the public functions document them):

* a device ``x`` (anything with ``__cuda_array_interface__``) is used where it
  is, without a copy, and results are Numba device arrays (which expose
  ``__cuda_array_interface__``); an ``out=`` device array is written and
  returned as given.  Device arrays are C-contiguous or channels-last (the
  channel axis innermost in memory, as PyTorch's ``channels_last``; read as
  their contiguous (A*B, C, 1) view, results in the same memory order);
* a NumPy ``x`` (``device="cuda"``) is copied in, and results come back as
  NumPy arrays;
* per-channel vectors may be on either side: host ones are copied in (one
  transfer for all of them), host running buffers are copied back after the
  update, device running buffers are updated in place on the device.

A training forward is three launches (reduce, per-channel finalize,
normalize), a backward three (reduce, finalize, apply), an inference one.
A fused activation and residual add ride in the normalize launch; a backward
through an activation adds one launch that masks ``dy`` first.
``welford`` and ``backward_reduce`` return host float64 arrays, as the CPU
backend does, for callers (MPI) that merge statistics across processes.
Every check runs before the first copy or launch.
"""
import threading
from typing import NamedTuple

import numpy as np
from numba import float32, float64

from .. import _channel_math as cm
from .._dispatch import check_placement
from .._validate import Layout, stats_dtype
from . import _grid, elementwise, finalize, reduce, rownorm
from . import _runtime as rt

name = "cuda"

#: Arithmetic type of the elementwise kernels by input dtype (reductions are float64).
_ACCUMULATOR = {np.dtype(np.float16): float32, np.dtype(np.float32): float32,
                np.dtype(np.float64): float64}


def asarray(a):
    """A device view of a device array (no copy), else a NumPy array."""
    return rt.device_view(a) if rt.is_device_array(a) else np.asarray(a)


def to_device(a):
    """``a`` on the device: a device array as it is (a view), a host one copied, dtype kept."""
    return rt.device_view(a) if rt.is_device_array(a) else rt.to_device(np.asarray(a))


def empty(shape, dtype):
    """A new uninitialised device array."""
    return rt.empty(shape, dtype)


def to_backend(a):
    """A host array as this backend returns results: copied to the device."""
    return rt.to_device(np.ascontiguousarray(a))


# -- placement --------------------------------------------------------------------

class _Plan(NamedTuple):
    """How the kernels see a call's full-size arrays."""

    lay: Layout  # the (A, C, B) view the kernels read
    host: bool  # x is a NumPy array: it is copied in and results go back to the host
    channels_last: bool  # device arrays whose channel axis is innermost in memory


def channels_last_order(shape, strides, itemsize, axis):
    """True if memory holds the array's axes, ``axis`` moved last, C-contiguously."""
    expected = itemsize
    for i in [axis] + [i for i in reversed(range(len(shape))) if i != axis]:
        if shape[i] != 1 and strides[i] != expected:
            return False
        expected *= shape[i]
    return True


def _memory_order(a, lay):
    if rt.is_c_contiguous(a):
        return "C"
    if channels_last_order(a.shape, a.strides, a.dtype.itemsize, lay.axis):
        return "channels-last"
    return None


def _plan(lay, x, **arrays):
    """Check the memory of the full-size arrays; raises before any copy or launch.

    Device arrays must be C-contiguous or, all of them alike, in channels-last
    order (the channel axis innermost, as a PyTorch ``channels_last`` tensor):
    those are read as their contiguous (A*B, C, 1) view.
    """
    check_placement(x, **arrays)
    if not rt.is_device_array(x):
        return _Plan(lay, True, False)
    orders = {}
    for label, a in (("x", x), *arrays.items()):
        if a is None:
            continue
        orders[label] = _memory_order(rt.device_view(a), lay)
        if orders[label] is None:
            raise ValueError(
                f"{label} is a device array that is neither C-contiguous nor channels-last "
                "(channel axis innermost); make a contiguous copy first"
            )
        if orders[label] != orders["x"]:
            raise ValueError(
                f"{label} is {orders[label]} in memory but x is {orders['x']}; "
                "they must share one memory order"
            )
    if orders["x"] == "C":
        return _Plan(lay, False, False)
    return _Plan(Layout(lay.A * lay.B, lay.C, 1, lay.axis), False, True)


def _kernel_array(a, plan):
    """``a`` as the kernels read it: a C-contiguous (A, C, B) device array."""
    lay = plan.lay
    if not rt.is_device_array(a):
        return rt.to_device(a).reshape(lay.A, lay.C, lay.B)
    a = rt.device_view(a)
    if plan.channels_last:
        item = a.dtype.itemsize
        return rt.alias(a, (lay.A, lay.C, 1), (lay.C * item, item, item))
    return a.reshape(lay.A, lay.C, lay.B)


def _vectors_on_device(*vectors):
    """Per-channel vectors on the device; host ones go in one float64 transfer."""
    host = [i for i, v in enumerate(vectors) if v is not None and not rt.is_device_array(v)]
    result = [None if v is None else rt.device_view(v) if rt.is_device_array(v) else None
              for v in vectors]
    if host:
        stacked = rt.to_device(np.stack([np.asarray(vectors[i], np.float64) for i in host]))
        for row, i in enumerate(host):
            result[i] = stacked[row]
    return result


def _host64(v):
    if v is None:
        return None
    if rt.is_device_array(v):
        v = rt.device_view(v).copy_to_host()
    return np.asarray(v, dtype=np.float64)


def _destination(x, out, plan):
    """Where a kernel writes a full-size result: ``out`` itself when it is on the device."""
    if out is not None and rt.is_device_array(out):
        return _kernel_array(out, plan)
    return rt.empty((plan.lay.A, plan.lay.C, plan.lay.B), x.dtype)


def _deliver(result, x, out, plan):
    """Hand a full-size kernel result back: as ``out``, as NumPy, or in x's memory order."""
    if out is not None and not plan.host:
        return out
    if plan.channels_last:
        return rt.alias(result, x.shape, rt.device_view(x).strides)
    result = result.reshape(x.shape)
    if not plan.host:
        return result
    array = result.copy_to_host()
    if out is None:
        return array
    out[...] = array
    return out


def _deliver_vector(v, plan):
    return v.copy_to_host() if plan.host else v


# -- workspace --------------------------------------------------------------------

_local = threading.local()


def _workspace(*shapes):
    """float64 device views of the given shapes, carved from one reused buffer.

    Kernels of one thread run in order on one stream, so a call can reuse the
    scratch of the previous one; each Python thread has its own buffer.  The
    views of a given list of shapes are kept too (making them costs host time).
    """
    views = getattr(_local, "views", {}).get(shapes)
    if views is not None:
        return views
    sizes = [int(np.prod(s)) for s in shapes]
    buffer = getattr(_local, "buffer", None)
    if buffer is None or buffer.size < sum(sizes):
        buffer = rt.empty(max(sum(sizes), 2 * (0 if buffer is None else buffer.size)), np.float64)
        _local.buffer = buffer
        _local.views = {}
    views, start = [], 0
    for shape, size in zip(shapes, sizes):
        views.append(buffer[start:start + size].reshape(shape))
        start += size
    if len(_local.views) > 64:  # many distinct shapes: start over rather than grow
        _local.views = {}
    _local.views[shapes] = views
    return views


# -- launches ---------------------------------------------------------------------

def _partial_shape(lay):
    """(grid, block, partials shape, Bp) of the reduction serving ``lay``."""
    if _grid.uses_rows(lay):
        grid, block = _grid.rows(lay.A, lay.C * lay.B)
        return grid, block, (grid[1], lay.C * lay.B), lay.B
    grid, block = _grid.planes(lay)
    return grid, block, (grid[1], lay.C), 1


def _moment_partials(xd, lay, *extra_shapes):
    """Launch the moments reduction; returns ``(partials, Bp, extra workspace views)``."""
    grid, block, shape, bp = _partial_shape(lay)
    views = _workspace(shape, shape, shape, *extra_shapes)
    parts = views[:3]
    if _grid.uses_rows(lay):
        reduce.moments_rows[grid, block](xd.reshape(lay.A, lay.C * lay.B), *parts)
    else:
        reduce.moments_planes[grid, block](xd.reshape(lay.A, lay.C, lay.B), *parts)
    return parts, bp, views[3:]


def _sum_partials(dyd, xd, lay, mean, *extra_shapes):
    """Launch the backward reduction; returns ``(partials, Bp, extra workspace views)``."""
    grid, block, shape, bp = _partial_shape(lay)
    views = _workspace(shape, shape, *extra_shapes)
    parts = views[:2]
    if _grid.uses_rows(lay):
        k = lay.C * lay.B
        reduce.sums_rows[grid, block](dyd.reshape(lay.A, k), xd.reshape(lay.A, k), lay.B, mean,
                                      *parts)
    else:
        shape3 = (lay.A, lay.C, lay.B)
        reduce.sums_planes[grid, block](dyd.reshape(shape3), xd.reshape(shape3), mean, *parts)
    return parts, bp, views[2:]


def _per_channel(kernel, channels, parts):
    """``kernel`` launched with one block per channel, to merge ``parts`` (splits, C * Bp)."""
    return kernel[_grid.per_channel(channels, parts[0].size // channels)]


def _normalize(xd, lay, mean, spread, spread_is_var, eps, weight, bias, yd, act=None,
               rd=None):
    k = lay.C * lay.B
    grid, block = _grid.elementwise(lay.A, k)
    kernels = elementwise.KERNELS[_ACCUMULATOR[np.dtype(xd.dtype)]]
    args = (xd.reshape(lay.A, k), lay.B, mean, spread, spread_is_var, eps,
            mean if weight is None else weight, weight is not None,
            mean if bias is None else bias, bias is not None)
    if act is None and rd is None:
        kernels[0][grid, block](*args, yd.reshape(lay.A, k))
        return
    code, slope = elementwise.activation_code(act)
    kernels[2][grid, block](*args, code, slope, (xd if rd is None else rd).reshape(lay.A, k),
                            rd is not None, yd.reshape(lay.A, k))


def _mask(dyd, yd, lay, act, gd):
    """``gd = dy * act'(y)`` (the gradient through the activation)."""
    k = lay.C * lay.B
    grid, block = _grid.elementwise(lay.A, k)
    code, slope = elementwise.activation_code(act)
    elementwise.KERNELS[_ACCUMULATOR[np.dtype(dyd.dtype)]][3][grid, block](
        dyd.reshape(lay.A, k), yd.reshape(lay.A, k), code, slope, gd.reshape(lay.A, k))


def _apply(dyd, xd, lay, mean, coef, training, dxd):
    k = lay.C * lay.B
    grid, block = _grid.elementwise(lay.A, k)
    kernel = elementwise.KERNELS[_ACCUMULATOR[np.dtype(xd.dtype)]][1]
    kernel[grid, block](dyd.reshape(lay.A, k), xd.reshape(lay.A, k), lay.B, mean, coef,
                        training, dxd.reshape(lay.A, k))


# -- the backend interface --------------------------------------------------------

def welford(x, lay):
    """Per-channel ``(count, mean, m2)``: host float64 arrays, like the CPU backend."""
    plan = _plan(lay, x)
    if lay.count == 0 or lay.C == 0:
        return lay.count, np.zeros(lay.C), np.zeros(lay.C)
    parts, bp, (stats,) = _moment_partials(_kernel_array(x, plan), plan.lay, (2, lay.C))
    _per_channel(finalize.welford_stats, lay.C, parts)(*parts, bp, stats)
    mean, m2 = stats.copy_to_host()
    return lay.count, mean, m2


#: Data read once (the accumulator, Dask): the GPU's ``welford`` reads a batch once already.
stream_moments = welford


def moments(x, lay, ddof):
    plan = _plan(lay, x)
    dtype = stats_dtype(x.dtype)
    if lay.count == 0 or lay.C == 0:
        mean = np.full(lay.C, np.nan, dtype)
        return (mean, mean.copy()) if plan.host else (rt.to_device(mean), rt.to_device(mean))
    parts, bp, _ = _moment_partials(_kernel_array(x, plan), plan.lay)
    stats = rt.empty((2, lay.C), dtype)
    _per_channel(finalize.moment_stats, lay.C, parts)(*parts, bp, float(ddof), stats)
    return _deliver_vector(stats[0], plan), _deliver_vector(stats[1], plan)


def normalize(x, lay, mean, invstd, weight, bias, out):
    """``y = (x - mean) * invstd * weight + bias`` with given per-channel statistics."""
    return _normalize_call(x, lay, mean, invstd, False, 0.0, weight, bias, out)


def forward_infer(x, lay, running_mean, running_var, weight, bias, eps, out, act=None,
                  residual=None):
    return _normalize_call(x, lay, running_mean, running_var, True, eps, weight, bias, out,
                           act, residual)


def _normalize_call(x, lay, mean, spread, spread_is_var, eps, weight, bias, out, act=None,
                    residual=None):
    plan = _plan(lay, x, out=out, residual=residual)
    yd = _destination(x, out, plan)
    if x.size > 0:
        mean, spread, weight, bias = _vectors_on_device(mean, spread, weight, bias)
        _normalize(_kernel_array(x, plan), plan.lay, mean, spread, spread_is_var, eps, weight,
                   bias, yd, act, None if residual is None else _kernel_array(residual, plan))
    return _deliver(yd, x, out, plan)


def forward_train(x, lay, weight, bias, eps, out, running_mean, running_var, momentum,
                  act=None, residual=None):
    """Three launches: moments reduction, per-channel finalize, normalize (with ``act`` and
    ``residual`` fused into it)."""
    plan = _plan(lay, x, out=out, residual=residual)
    saved = rt.empty((2, lay.C), stats_dtype(x.dtype))
    yd = _destination(x, out, plan)
    if lay.C > 0:
        xd = _kernel_array(x, plan)
        weight, bias, run_mean, run_var = _vectors_on_device(
            weight, bias, running_mean, running_var)
        parts, bp, (coef,) = _moment_partials(xd, plan.lay, (2, lay.C))
        update = running_mean is not None
        _per_channel(finalize.train_stats, lay.C, parts)(
            *parts, bp, eps, momentum, update,
            run_mean if update else coef[0], run_var if update else coef[1], saved, coef,
        )
        _normalize(xd, plan.lay, coef[0], coef[1], False, eps, weight, bias, yd, act,
                   None if residual is None else _kernel_array(residual, plan))
        _copy_back(running_mean, run_mean)
        _copy_back(running_var, run_var)
    y = _deliver(yd, x, out, plan)
    return y, _deliver_vector(saved[0], plan), _deliver_vector(saved[1], plan)


def forward_train_moments(x, lay, weight, bias, eps, out):
    """Training forward without running buffers: ``(y, mean, m2)``, statistics as float64 host arrays.

    Reduce, then normalize with the exact float64 statistics (the host needs M2 anyway).
    """
    count, mean, m2 = welford(x, lay)
    invstd = cm.invstd_from_var(m2 / max(count, 1), eps)
    return normalize(x, lay, mean, invstd, weight, bias, out), mean, m2


def update_running(running_mean, running_var, mean, m2, count, momentum):
    """Blend host float64 batch statistics (mean and M2 of ``count`` values) into the running buffers.

    For statistics merged on the host (the MPI layer): device buffers are
    updated through the host, C values each way; host buffers in place.
    """
    for buffer, batch in ((running_mean, mean), (running_var, m2 / (count - 1))):
        if rt.is_device_array(buffer):
            view = rt.device_view(buffer)
            staged = view.copy_to_host()
            cm.blend_running(staged, batch, momentum)
            view.copy_to_device(staged)
        else:
            cm.blend_running(buffer, batch, momentum)


def _copy_back(host_buffer, device_buffer):
    """Write a device copy of a host running buffer back into it (device ones need nothing)."""
    if host_buffer is not None and not rt.is_device_array(host_buffer):
        host_buffer[...] = device_buffer.copy_to_host()


def backward_reduce(dy, x, lay, mean):
    """Per-channel ``(sum(dy), sum(dy * (x - mean)))``: host float64 arrays."""
    plan = _plan(lay, x, dy=dy)
    if lay.count == 0 or lay.C == 0:
        return np.zeros(lay.C), np.zeros(lay.C)
    (mean,) = _vectors_on_device(mean)
    parts, bp, (sums,) = _sum_partials(
        _kernel_array(dy, plan), _kernel_array(x, plan), plan.lay, mean, (2, lay.C))
    _per_channel(finalize.sum_stats, lay.C, parts)(*parts, bp, sums)
    sum_dy, sum_dy_xmu = sums.copy_to_host()
    return sum_dy, sum_dy_xmu


def backward_apply(dy, x, lay, mean, invstd, weight, sum_dy, sum_dy_xmu, count, training, out):
    """dx from reduced sums (host or device); the coefficients are formed on the host."""
    k_dy, k_x, k_0 = cm.backward_coefficients(
        _host64(invstd), _host64(weight), _host64(sum_dy), _host64(sum_dy_xmu), count, training,
    )
    return _apply_call(dy, x, lay, mean, np.stack([k_dy, k_x, k_0]), training, out)


def backward_apply_coefficients(dy, x, lay, mean, k_dy, k_x, k_0, out):
    """``dx = k_dy * dy + k_x * (x - mean) + k_0`` with per-channel host float64 coefficients."""
    return _apply_call(dy, x, lay, mean, np.stack([k_dy, k_x, k_0]), True, out)


def _apply_call(dy, x, lay, mean, coefficients, training, out):
    plan = _plan(lay, x, dy=dy, out=out)
    dxd = _destination(x, out, plan)
    if x.size > 0:
        (mean,) = _vectors_on_device(mean)
        _apply(_kernel_array(dy, plan), _kernel_array(x, plan), plan.lay, mean,
               rt.to_device(coefficients), training, dxd)
    return _deliver(dxd, x, out, plan)


def backward(dy, x, lay, mean, invstd, weight, training, out, act=None, y=None,
             residual=False):
    """Three launches: sums reduction, per-channel coefficients, apply.

    With an activation, a first launch writes ``g = dy * act'(y)``, which the
    three read as their ``dy``; it is the residual's gradient (returned fourth
    with ``residual``).  Without one, the residual's gradient is ``dy``.
    """
    plan = _plan(lay, x, dy=dy, out=out, y=None if act is None else y)
    grad_dtype = np.dtype(weight.dtype) if weight is not None else stats_dtype(x.dtype)
    dxd = _destination(x, out, plan)
    gd = None
    if act is not None:
        gd = rt.empty((plan.lay.A, plan.lay.C, plan.lay.B), x.dtype)
        if x.size > 0:
            _mask(_kernel_array(dy, plan), _kernel_array(y, plan), plan.lay, act, gd)
    elif residual:
        # dy itself, or a copy when out= is given (it may be dy's memory).
        gd = _kernel_array(dy, plan)
        if out is not None:  # it might be dy's memory
            gd, dyd = rt.empty(gd.shape, gd.dtype), gd
            gd.copy_to_device(dyd)
    if lay.count == 0 or lay.C == 0:
        grads = rt.to_device(np.zeros((2, lay.C), grad_dtype))
    else:
        grads = rt.empty((2, lay.C), grad_dtype)
        dyd = _kernel_array(dy, plan) if act is None else gd
        xd = _kernel_array(x, plan)
        mean, invstd, weight_d = _vectors_on_device(mean, invstd, weight)
        parts, bp, (coef,) = _sum_partials(dyd, xd, plan.lay, mean, (3, lay.C))
        _per_channel(finalize.backward_stats, lay.C, parts)(
            *parts, bp, float(lay.count), invstd, invstd if weight_d is None else weight_d,
            weight_d is not None, training, grads, coef,
        )
        _apply(dyd, xd, plan.lay, mean, coef, training, dxd)
    dx = _deliver(dxd, x, out, plan)
    result = (dx, _deliver_vector(grads[0], plan), _deliver_vector(grads[1], plan))
    if not residual:
        return result
    if plan.host and act is None:
        dresidual = dy.copy() if out is not None and np.may_share_memory(out, dy) else dy
    else:
        dresidual = _deliver(gd, x, None, plan)
    return (*result, dresidual)


def group_train(x, slay, weight, bias, eps, out):
    """No CUDA-specific group norm kernel: None, so the engine composes the batch-norm ones."""
    return None


def group_backward(dy, x, slay, mean, invstd, weight, out):
    """No CUDA-specific group norm kernel: None, so the engine composes the batch-norm ones."""
    return None


def require_c_order(x, what):
    """Raise ``ValueError`` unless device array ``x`` is C-contiguous (views cut it by samples)."""
    if rt.is_device_array(x) and not rt.is_c_contiguous(rt.device_view(x)):
        raise ValueError(
            f"{what} reads device arrays in C order; for a channels-last tensor pass its "
            "channels-last view (N, ..., C) with axis=-1, or make a contiguous copy"
        )


# -- layer norm and RMS norm (per-row statistics, per-element affine) ---------------

def _rows_array(a, R, D):
    """``a`` as the row kernels read it: a C-contiguous (R, D) device array (host ones copied)."""
    if rt.is_device_array(a):
        return rt.device_view(a).reshape(R, D)
    return rt.to_device(np.asarray(a)).reshape(R, D)


def _row_vectors(D, *vectors):
    """Per-element vectors (any shape of D values) on the device, flat."""
    flat = [None if v is None else v if rt.is_device_array(v) else np.asarray(v).reshape(D)
            for v in vectors]
    return [None if v is None else rt.device_view(v).reshape(D) if rt.is_device_array(v) else v
            for v in _vectors_on_device(*flat)]


def _row_threads(D):
    """Threads of a row block: a power of two, no more than the row needs (at least 2)."""
    threads = 2
    while threads < D and threads < _grid._threads():
        threads *= 2
    return threads


def _row_checks(x, **arrays):
    check_placement(x, **arrays)
    for name, a in (("x", x), *arrays.items()):
        if a is not None:
            require_c_order(a, "layer norm and RMS norm")


def _deliver_rows(result, like, out, host):
    """A full-size result: as ``out``, as NumPy (host input), or as a device array."""
    if out is not None and not host:
        return out
    result = result.reshape(like.shape)
    if not host:
        return result
    array = result.copy_to_host()
    if out is None:
        return array
    out[...] = array
    return out


def row_norm_forward(x, R, D, weight, bias, eps, centered, out):
    """Layer norm (``centered``) or RMS norm of the rows of ``x``: ``(y, mean, rstd)``.

    Two vectors of R statistics in the statistics dtype (``mean`` is None for
    RMS norm); one launch, one block per row.
    """
    _row_checks(x, out=out)
    host = not rt.is_device_array(x)
    dtype = np.dtype(x.dtype)
    yd = (rt.device_view(out).reshape(R, D) if out is not None and not host
          else rt.empty((R, D), dtype))
    sd = stats_dtype(dtype)
    if R and D:
        stats = rt.empty((2, R), sd)
        w, b = _row_vectors(D, weight, bias)
        forward = rownorm.KERNELS[_ACCUMULATOR[dtype]][0]
        forward[R, _row_threads(D)](
            _rows_array(x, R, D), yd if w is None else w, w is not None,
            yd if b is None else b, b is not None, eps, centered, yd, stats)
    else:  # PyTorch: empty rows have mean 0 and rstd NaN
        stats = rt.to_device(np.stack([np.zeros(R, sd), np.full(R, np.nan, sd)]))
    y = _deliver_rows(yd, x, out, host)
    mean = _vector_out(stats[0], host) if centered else None
    return y, mean, _vector_out(stats[1], host)


def _vector_out(v, host):
    return v.copy_to_host() if host else v


def row_norm_backward(dy, x, R, D, mean, rstd, weight, centered, grad_dtype, out):
    """Gradients of layer norm (``centered``) or RMS norm: ``(dx, dweight, dbias)``.

    Two launches: the rows (dx, and per-block column partials), then the
    column sums of the partials in block order.
    """
    _row_checks(x, dy=dy, out=out)
    host = not rt.is_device_array(x)
    dtype = np.dtype(x.dtype)
    dxd = (rt.device_view(out).reshape(R, D) if out is not None and not host
           else rt.empty((R, D), dtype))
    if R and D:
        mean_d, rstd_d, w = _row_vectors_any(R, D, mean, rstd, weight)
        blocks = min(R, _grid.MAX_GRID_Y, max(1, _grid._target_blocks()))
        part = rt.empty((blocks, 2, D), np.float64)
        backward = rownorm.KERNELS[_ACCUMULATOR[dtype]][1]
        backward[blocks, _row_threads(D)](
            _rows_array(dy, R, D), _rows_array(x, R, D), rstd_d if mean_d is None else mean_d,
            rstd_d, rstd_d if w is None else w, w is not None, centered, dxd, part)
        sums = rt.empty((2, D), np.float64)
        threads = _grid._threads()
        rownorm.column_sums[(D + threads - 1) // threads, threads](part, sums)
        grads = sums if np.dtype(grad_dtype) == np.float64 else _cast(sums, grad_dtype)
    else:
        grads = rt.to_device(np.zeros((2, D), grad_dtype))
    dx = _deliver_rows(dxd, x, out, host)
    return dx, _vector_out(grads[0], host), _vector_out(grads[1], host)


def _row_vectors_any(R, D, mean, rstd, weight):
    """Saved statistics (R values, any shape) and the weight (D values) on the device."""
    stats = [None if v is None else v if rt.is_device_array(v) else np.asarray(v).reshape(R)
             for v in (mean, rstd)]
    mean_d, rstd_d = [
        None if v is None else rt.device_view(v).reshape(R) if rt.is_device_array(v) else v
        for v in _vectors_on_device(*stats)]
    (w,) = _row_vectors(D, weight)
    return mean_d, rstd_d, w


def _cast(a, dtype):
    """A device copy of ``a`` in ``dtype`` (small: the (2, D) gradients)."""
    return rt.to_device(a.copy_to_host().astype(dtype))
def renorm_forward_train(x, lay, weight, bias, eps, out, running_mean, running_var, momentum,
                         rmax, dmax):
    """Batch renormalization: three launches (moments, renorm finalize, normalize).

    r and d fold into the normalize kernel's weight and bias (γ·r, β + γ·d);
    the running buffers are blended on the device as batch norm's finalize
    blends them.  Returns ``(y, mean, invstd, r, d)``.
    """
    from . import renorm

    plan = _plan(lay, x, out=out)
    saved = rt.empty((4, lay.C), stats_dtype(x.dtype))
    yd = _destination(x, out, plan)
    if lay.C > 0:
        xd = _kernel_array(x, plan)
        weight, bias, run_mean, run_var = _vectors_on_device(
            weight, bias, running_mean, running_var)
        parts, bp, (coef,) = _moment_partials(xd, plan.lay, (4, lay.C))
        _per_channel(renorm.renorm_stats, lay.C, parts)(
            *parts, bp, eps, momentum, float(rmax), float(dmax), run_mean, run_var,
            coef[0] if weight is None else weight, weight is not None,
            coef[0] if bias is None else bias, bias is not None, saved, coef,
        )
        _normalize(xd, plan.lay, coef[0], coef[1], False, eps, coef[2], coef[3], yd)
        _copy_back(running_mean, run_mean)
        _copy_back(running_var, run_var)
    y = _deliver(yd, x, out, plan)
    return (y, *(_deliver_vector(saved[i], plan) for i in range(4)))

