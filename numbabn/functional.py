r"""The functional API: batch normalization as plain functions of arrays.

Every function validates all of its inputs before it touches any buffer, so a
call that raises leaves ``running_mean``, ``running_var`` and ``out`` exactly
as they were.  The channel axis is ``axis`` (1 for ``(N, C, ...)``, -1 for
channels-last); every other axis is reduced over.
"""
import math
import numbers

import numpy as np

from . import _engine
from . import _validate as v
from ._dispatch import check_placement, is_device_array, select_backend
from ._memory_order import channels_in_stored_order
from ._validate import stats_dtype

#: The activations batch norm's functions and layers fuse.
ACTIVATIONS = (None, "relu", "leaky_relu")


def _float_input(backend, name, a, convert=True):
    """``a`` as an array of a supported float dtype, converted to native byte order if needed.

    A big-endian host array (``>f4``, as FITS files hold) becomes a native copy,
    as the kernels would make one anyway; results are then native too.
    """
    if type(a) is np.ndarray:  # the common case: nothing to convert
        dtype = v.float_dtype(name, a.dtype)
        return a if dtype is a.dtype or not convert else _native_copy(name, a, dtype)
    try:
        a = backend.asarray(a)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of floats, got {type(a).__name__}") from err
    dtype = v.float_dtype(name, a.dtype)
    return a if dtype == a.dtype or not convert else _native_copy(name, a, dtype)


def _native_copy(name, a, dtype):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} is a device array in non-native byte order ({a.dtype}); "
                        "convert it to native byte order first")
    return a.astype(dtype)


def _native_buffer(buffer):
    """A running buffer the kernels can update: itself, or a native copy for ``>f4`` ones.

    A copy is written back by :func:`_write_back` once the call has succeeded.
    """
    if buffer is None or not isinstance(buffer, np.ndarray) or buffer.dtype.isnative:
        return buffer
    return buffer.astype(v.native(buffer.dtype))


def _write_back(buffer, updated):
    if updated is not buffer:
        buffer[...] = updated


def _channel_input(backend, name, vec, lay, convert=True):
    """Convert and check an optional per-channel vector.

    Running buffers are updated in place, so they keep their byte order
    (``convert=False``); :func:`_update_running` works on native copies.
    """
    if vec is None:
        return None
    return v.channel_vector(name, _float_input(backend, name, vec, convert), lay.C)


@channels_in_stored_order("x", ("out", "residual"))
def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
               training=False, momentum=0.1, eps=1e-5, *, axis=1, out=None, device="auto",
               activation=None, negative_slope=0.01, residual=None):
    r"""Batch normalization with PyTorch's ``torch.nn.functional.batch_norm`` semantics.

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \, \gamma + \beta

    In training mode the mean and (biased) variance are those of the batch,
    per channel; when running buffers are given they are updated in place,

    .. math::

        \hat\mu \leftarrow (1 - m)\,\hat\mu + m\,\mu_B, \qquad
        \hat\sigma^2 \leftarrow (1 - m)\,\hat\sigma^2 + m\,\frac{M}{M-1}\sigma_B^2,

    with the unbiased batch variance (M values per channel).  In inference
    mode the running buffers are used as the statistics.

    An activation and a residual add can be fused into the same pass over
    memory (one read of ``x`` and ``residual``, one write of ``y``):

    .. math::

        y = \mathrm{act}\big(\mathrm{BN}(x) + r\big), \qquad
        \mathrm{act} \in \{\mathrm{id},\ \max(\cdot, 0),\
        \mathrm{LeakyReLU}_\alpha\}.

    The add and the activation are done in ``x``'s dtype after the normalized
    value is rounded to it, so the result is bit for bit
    ``act(batch_norm(x) + r)`` computed in three steps.

    Parameters
    ----------
    x : array_like of float16, float32 or float64, rank >= 2
    running_mean, running_var : ndarray of shape (C,), optional
        Required when ``training`` is False.  Updated in place in training.
    weight, bias : array_like of shape (C,), optional
        :math:`\gamma` and :math:`\beta`; None means 1 and 0.
    training : bool
    momentum : float
        Weight of the new batch in the running averages (PyTorch's
        convention; Keras's ``momentum=0.99`` is ``momentum=0.01`` here).
        Any real number, as PyTorch takes it.
    eps : float
        > 0 when training, >= 0 otherwise (PyTorch's checks, ``ValueError``).
    axis : int, keyword-only
        The channel axis; negative values count from the end.
    out : ndarray, keyword-only, optional
        Written with the result and returned; same shape and dtype as ``x``.
    device : {"auto", "cpu", "cuda"}, keyword-only
        "auto" runs where ``x`` lives: CUDA for a device array (anything with
        ``__cuda_array_interface__``; results are Numba device arrays), else
        the CPU.  "cuda" with a NumPy ``x`` copies it to the GPU and returns
        NumPy arrays.  Small host vectors (weight, bias, running buffers) go
        with a device ``x`` automatically; ``dy`` and ``out`` must live where
        ``x`` does.
    activation : {None, "relu", "leaky_relu"}, keyword-only
        Applied after the residual add.
    negative_slope : float >= 0, keyword-only, default 0.01
        Leaky ReLU's slope :math:`\alpha` for negative values.  Must not be
        negative: the backward recovers the activation's mask from the sign
        of ``y`` (as PyTorch's in-place leaky ReLU requires too).
    residual : array, keyword-only, optional
        Added to the normalized value before the activation; the shape and
        dtype of ``x``, on the same device.  ``out=residual`` is allowed.

    Returns
    -------
    y : ndarray
        Same shape and dtype as ``x`` (float16 is computed in float32).

    Shape
    -----
    ``x``: (A..., C, B...) with C on ``axis``; ``y``: the same.
    """
    backend = select_backend(device, x, None, out)
    x = _float_input(backend, "x", x)
    lay = v.layout(x.shape, axis)
    act = None
    if activation is not None or residual is not None:
        act, residual = _fusion_inputs(backend, x, activation, negative_slope, residual)
    running_mean = _channel_input(backend, "running_mean", running_mean, lay, convert=False)
    running_var = _channel_input(backend, "running_var", running_var, lay, convert=False)
    weight = _channel_input(backend, "weight", weight, lay)
    bias = _channel_input(backend, "bias", bias, lay)
    eps = v.batch_norm_eps(eps, training)
    out = v.out_array(out, x.shape, x.dtype)
    fused = act is not None or residual is not None
    if training:
        momentum = _check_running(running_mean, running_var, momentum)
        if lay.count == 0:
            return _empty_batch(backend, x, lay, out)[0]
        v.training_count(lay, x.shape)
        fusion = {"act": act, "residual": residual} if fused else {}
        y, _, _ = _forward_train(
            backend, x, lay, weight, bias, eps, out, running_mean, running_var, momentum,
            **fusion)
        return y
    if running_mean is None or running_var is None:
        raise ValueError(
            "running_mean and running_var are required when training=False "
            "(inference normalizes with the running statistics)"
        )
    if fused:
        return backend.forward_infer(x, lay, running_mean, running_var, weight, bias, eps, out,
                                     act=act, residual=residual)
    return backend.forward_infer(x, lay, running_mean, running_var, weight, bias, eps, out)


def _activation(activation, negative_slope):
    """Check the activation; return the kernels' code for it.

    The code is None (no activation), True (ReLU) or the negative slope as a
    float (leaky ReLU): the CPU kernels compile a different loop for each type.
    """
    if activation is None:
        return None
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if activation == "relu":
        return True
    if isinstance(negative_slope, (bool, np.bool_)) or not isinstance(negative_slope,
                                                                        numbers.Real):
        raise TypeError(f"negative_slope must be a real number, got {negative_slope!r}")
    if not (negative_slope >= 0 and math.isfinite(negative_slope)):
        raise ValueError(
            f"negative_slope must be a finite number >= 0, got {negative_slope!r} (the "
            "backward recovers the activation's mask from the sign of its output)")
    return float(negative_slope)


def _full_size_like(backend, name, a, x):
    """Check an array that must have ``x``'s shape and dtype and live where it lives."""
    check_placement(x, **{name: a})
    a = _float_input(backend, name, a)
    v.same_shape(name, a, x.shape)
    if a.dtype != x.dtype:
        raise TypeError(f"{name} and x must have the same dtype, got {a.dtype} and {x.dtype}")
    return a


def _fusion_inputs(backend, x, activation, negative_slope, residual):
    """Checked ``(act, residual)`` of a forward with a fused activation and residual."""
    act = _activation(activation, negative_slope)
    if residual is not None:
        residual = _full_size_like(backend, "residual", residual, x)
    return act, residual



@channels_in_stored_order("x", ("out", "residual"))
def batch_norm_forward(x, weight=None, bias=None, *, eps=1e-5, axis=1, out=None,
                       running_mean=None, running_var=None, momentum=0.1, device="auto",
                       activation=None, negative_slope=0.01, residual=None):
    r"""Training-mode forward that also returns the statistics backward needs.

    .. math::

        \mu = \frac{1}{M}\sum x, \quad
        \sigma^{-1} = \frac{1}{\sqrt{\frac{1}{M}\sum (x-\mu)^2 + \epsilon}}, \quad
        y = (x - \mu)\,\sigma^{-1}\gamma + \beta

    When ``running_mean`` and ``running_var`` are given they are updated in
    place exactly as by :func:`batch_norm` in training mode (this is what a
    layer needs: one call that normalizes, saves and tracks).

    ``activation``, ``negative_slope`` and ``residual`` fuse
    :math:`y = \mathrm{act}(\mathrm{BN}(x) + r)` as in :func:`batch_norm`;
    keep ``y`` for :func:`batch_norm_backward`, which needs it with an
    activation.

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
    mean, invstd : ndarray of shape (C,)
        float64 for float64 input, else float32.
    """
    backend = select_backend(device, x, None, out)
    x = _float_input(backend, "x", x)
    lay = v.layout(x.shape, axis)
    act = None
    if activation is not None or residual is not None:
        act, residual = _fusion_inputs(backend, x, activation, negative_slope, residual)
    weight, bias, running_mean, running_var, eps, out, momentum = _training_inputs(
        backend, lay, x, weight, bias, running_mean, running_var, eps, out, momentum)
    if lay.count == 0:
        return _empty_batch(backend, x, lay, out)
    v.training_count(lay, x.shape)
    fusion = {"act": act, "residual": residual} if act is not None or residual is not None else {}
    return _forward_train(backend, x, lay, weight, bias, eps, out, running_mean, running_var,
                          momentum, **fusion)


def _forward_train(backend, x, lay, weight, bias, eps, out, running_mean, running_var, momentum,
                   **fusion):
    """``backend.forward_train``, with big-endian running buffers updated through native copies.

    ``fusion`` (``act``, ``residual``) is passed on only when something is fused.
    """
    rm, rv = _native_buffer(running_mean), _native_buffer(running_var)
    result = backend.forward_train(x, lay, weight, bias, eps, out, rm, rv, momentum, **fusion)
    _write_back(running_mean, rm)
    _write_back(running_var, rv)
    return result


def _update_running(backend, running_mean, running_var, mean, m2, count, momentum):
    """``backend.update_running`` for buffers of either byte order (here and in the MPI layer)."""
    rm, rv = _native_buffer(running_mean), _native_buffer(running_var)
    backend.update_running(rm, rv, mean, m2, count, momentum)
    _write_back(running_mean, rm)
    _write_back(running_var, rv)


def _empty_batch(backend, x, lay, out):
    """A training forward of an empty batch, as PyTorch: an empty result, running buffers as
    they were; the statistics of nothing are NaN."""
    if out is None:
        out = backend.empty(x.shape, x.dtype) if is_device_array(x) else np.empty_like(x)
    nan = np.full(lay.C, np.nan, stats_dtype(x.dtype))
    stats = (backend.to_backend(nan), backend.to_backend(nan)) if is_device_array(x) else (
        nan, nan.copy())
    return (out,) + stats


def _training_inputs(backend, lay, x, weight, bias, running_mean, running_var, eps, out,
                     momentum):
    """Check a training forward's arguments other than ``x`` (here and in the MPI layer)."""
    weight = _channel_input(backend, "weight", weight, lay)
    bias = _channel_input(backend, "bias", bias, lay)
    running_mean = _channel_input(backend, "running_mean", running_mean, lay, convert=False)
    running_var = _channel_input(backend, "running_var", running_var, lay, convert=False)
    eps = v.batch_norm_eps(eps, True)
    out = v.out_array(out, x.shape, x.dtype)
    momentum = _check_running(running_mean, running_var, momentum)
    return weight, bias, running_mean, running_var, eps, out, momentum


def _check_running(running_mean, running_var, momentum):
    """Checks for running buffers that a training call will update; returns momentum."""
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")
    momentum = v.momentum_value(momentum)
    if running_mean is not None:
        v.writeable("running_mean", running_mean)
        v.writeable("running_var", running_var)
    return momentum


@channels_in_stored_order("x", ("dy", "y", "out"))
def batch_norm_backward(dy, x, mean, invstd, weight=None, *, activation=None,
                        negative_slope=0.01, y=None, residual=False, axis=1, training=True,
                        out=None, device="auto"):
    r"""Gradients of batch normalization: ``(dx, dweight, dbias)``, and ``dresidual``.

    With :math:`\hat x = (x - \mu)\sigma^{-1}` and M values per channel,

    .. math::

        \frac{\partial L}{\partial\beta} = \sum dy, \qquad
        \frac{\partial L}{\partial\gamma} = \sum dy\,\hat x, \qquad
        dx = \gamma\sigma^{-1}\Big(dy - \frac{1}{M}\sum dy
             - \hat x\,\frac{1}{M}\sum dy\,\hat x\Big).

    With ``training=False`` the statistics are treated as constants (an
    inference-mode forward), and :math:`dx = \gamma\sigma^{-1} dy`.

    After a fused forward :math:`y = \mathrm{act}(\mathrm{BN}(x) + r)`, ``dy``
    is the gradient of ``y``: it is first taken through the activation,

    .. math::

        g = dy \cdot \mathrm{act}'(y) =
        \begin{cases} dy & y > 0 \\ 0\ \text{(ReLU)},\ \alpha\,dy\
        \text{(leaky ReLU)} & \text{otherwise,} \end{cases}

    as the kernels read it (no mask is stored: the sign of the forward's
    output ``y`` gives it), and the formulas above use ``g`` for ``dy``.  The
    residual's gradient is ``g``.

    Parameters
    ----------
    dy, x : arrays of the same shape and dtype
    mean, invstd : array_like of shape (C,)
        As returned by :func:`batch_norm_forward` (or running statistics).
    weight : array_like of shape (C,), optional
    activation : {None, "relu", "leaky_relu"}, keyword-only
        The forward's fused activation.
    negative_slope : float >= 0, keyword-only, default 0.01
    y : array, keyword-only
        The forward's output; required with an activation (shape and dtype of ``x``).
    residual : bool, keyword-only, default False
        Also return the residual's gradient (the forward added one).

    Returns
    -------
    dx : ndarray, shape and dtype of ``x``
    dweight, dbias : ndarray of shape (C,)
        In ``weight``'s dtype; without weight, float64 for float64 input, else float32.
    dresidual : ndarray, shape and dtype of ``x``
        Only with ``residual=True``: ``g`` (``dy`` itself without an activation).
    """
    backend = select_backend(device, x, dy, out)
    x = _float_input(backend, "x", x)
    lay = v.layout(x.shape, axis)
    act = None if activation is None else _activation(activation, negative_slope)
    if act is not None:
        if y is None:
            raise ValueError(
                "y (the forward's output) is required with an activation: its sign gives "
                "the activation's mask")
        y = _full_size_like(backend, "y", y, x)
    dy, mean, invstd, weight, out = _backward_inputs(
        backend, lay, x, dy, mean, invstd, weight, out)
    if act is None and not residual:
        return backend.backward(dy, x, lay, mean, invstd, weight, bool(training), out)
    return backend.backward(dy, x, lay, mean, invstd, weight, bool(training), out, act=act,
                            y=y, residual=bool(residual))


def _backward_inputs(backend, lay, x, dy, mean, invstd, weight, out):
    """Check a backward's arguments other than ``x`` (here and in the MPI layer)."""
    dy = _float_input(backend, "dy", dy)
    v.same_shape("dy", dy, x.shape)
    if dy.dtype != x.dtype:
        raise TypeError(f"dy and x must have the same dtype, got {dy.dtype} and {x.dtype}")
    mean = _channel_input(backend, "mean", mean, lay)
    invstd = _channel_input(backend, "invstd", invstd, lay)
    weight = _channel_input(backend, "weight", weight, lay)
    if mean is None or invstd is None:
        raise ValueError("mean and invstd are required")
    out = v.out_array(out, x.shape, x.dtype)
    return dy, mean, invstd, weight, out


@channels_in_stored_order("x", ())
def channel_moments(x, *, axis=1, ddof=0, device="auto"):
    r"""Per-channel mean and variance, computed stably (Welford/Chan, never E[x²]−E[x]²).

    .. math::

        \mu_c = \frac{1}{M}\sum x, \qquad \mathrm{var}_c = \frac{1}{M - \mathrm{ddof}}\sum (x - \mu_c)^2

    Returns
    -------
    mean, var : ndarray of shape (C,)
        float64 for float64 input, else float32.  NaN where ``M - ddof <= 0``.
    """
    backend = select_backend(device, x)
    x = _float_input(backend, "x", x)
    lay = v.layout(x.shape, axis)
    ddof = v.ddof_value(ddof)
    return backend.moments(x, lay, ddof)


# ---------------------------------------------------------------------------------------------
# Per-sample members: group norm and instance norm (statistics per sample and group/channel)


def _sample_input(backend, x, axis, groups, min_rank):
    x = _float_input(backend, "x", x)
    slay = v.sample_layout(x.shape, axis, groups, min_rank)
    backend.require_c_order(x, "group and instance norm")
    return x, slay


def _sample_forward_inputs(backend, x, axis, groups, min_rank, weight, bias, running_mean,
                           running_var, eps, out):
    """Check a per-sample member's forward arguments; running buffers may be None."""
    x, slay = _sample_input(backend, x, axis, groups, min_rank)
    vectors = [_channel_input(backend, name, vec, slay, convert) for name, vec, convert in (
        ("weight", weight, True), ("bias", bias, True), ("running_mean", running_mean, False),
        ("running_var", running_var, False))]
    return (x, slay, *vectors, v.eps_value(eps), v.out_array(out, x.shape, x.dtype))


def _sample_stats(backend, name, a, slay):
    """Check saved (N, G) statistics; return them as a host float64 array."""
    if a is None:
        raise ValueError("mean and invstd are required")
    a = _float_input(backend, name, a)
    v.same_shape(name, a, (slay.N, slay.G))
    return _engine.host64(a)


def _empty_sample_result(backend, x, slay, out):
    """An empty input (no sample, or nothing per sample): empty result, NaN statistics."""
    if out is None:
        out = backend.empty(x.shape, x.dtype) if is_device_array(x) else np.empty_like(x)
    nan = np.full((slay.N, slay.G), np.nan)
    return (out,) + _engine.deliver_stats(backend, x, nan, nan)


def _sample_backward_inputs(backend, dy, x, mean, invstd, weight, out, slay):
    dy = _float_input(backend, "dy", dy)
    v.same_shape("dy", dy, x.shape)
    if dy.dtype != x.dtype:
        raise TypeError(f"dy and x must have the same dtype, got {dy.dtype} and {x.dtype}")
    mean = _sample_stats(backend, "mean", mean, slay)
    invstd = _sample_stats(backend, "invstd", invstd, slay)
    weight = _channel_input(backend, "weight", weight, slay)
    out = v.out_array(out, x.shape, x.dtype)
    return dy, mean, invstd, weight, out


def _sample_backward(dy, x, mean, invstd, groups, min_rank, weight, axis, out, device):
    """The backward of a per-sample member (``groups`` None: one group per channel)."""
    backend = select_backend(device, x, dy, out)
    x, slay = _sample_input(backend, x, axis, groups, min_rank)
    dy, mean, invstd, weight, out = _sample_backward_inputs(
        backend, dy, x, mean, invstd, weight, out, slay)
    if x.size == 0:
        dx = _empty_sample_result(backend, x, slay, out)[0]
        return _sample_gradients(backend, x, weight, dx, np.zeros(slay.C), np.zeros(slay.C))
    # One channel per group: batch norm's fused backward per (sample, channel) row.
    members = _engine.backward_rows if slay.G == slay.C else _engine.backward
    dx, dweight, dbias = members(backend, dy, x, slay, mean, invstd, weight, out)
    return _sample_gradients(backend, x, weight, dx, dweight, dbias)


def _sample_gradients(backend, x, weight, dx, dweight, dbias):
    """Gradients in ``weight``'s dtype (or the saved-statistics dtype), where ``x`` lives."""
    dtype = weight.dtype if weight is not None else stats_dtype(x.dtype)
    grads = (dweight.astype(dtype), dbias.astype(dtype))
    if is_device_array(x):
        grads = tuple(backend.to_backend(g) for g in grads)
    return (dx,) + grads


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, axis=1, out=None,
               device="auto"):
    r"""Group normalization with PyTorch's ``torch.nn.functional.group_norm`` semantics.

    The C channels are split into ``num_groups`` groups of C / G consecutive
    channels; every (sample, group) is normalized with its own mean and
    biased variance over the group's channels and all other axes but the
    batch axis 0, then each channel gets its own affine:

    .. math::

        y_{n,c} = \frac{x_{n,c} - \mu_{n,g(c)}}{\sqrt{\sigma^2_{n,g(c)} + \epsilon}}\,
                  \gamma_c + \beta_c

    Parameters
    ----------
    x : array_like of float16, float32 or float64, rank >= 2
        Axis 0 is the batch axis N.
    num_groups : int
        G, a divisor of C.
    weight, bias : array_like of shape (C,), optional
        :math:`\gamma` and :math:`\beta`; None means 1 and 0.
    eps : float
        Any real number, as PyTorch takes it: where variance + eps is
        negative the group's results are NaN.
    axis : int, keyword-only
        The channel axis (1 for (N, C, ...), -1 for channels-last); not 0.
    out : ndarray, keyword-only, optional
        Written with the result and returned; may be ``x`` itself.
    device : {"auto", "cpu", "cuda"}, keyword-only
        As in :func:`batch_norm`.

    Returns
    -------
    y : ndarray, shape and dtype of ``x``

    Shape
    -----
    ``x``: (N, ..., C, ...) with C on ``axis``; ``y``: the same.
    """
    return group_norm_forward(x, num_groups, weight, bias, eps=eps, axis=axis, out=out,
                              device=device)[0]


@channels_in_stored_order("x", ("out",))
def group_norm_forward(x, num_groups, weight=None, bias=None, *, eps=1e-5, axis=1, out=None,
                       device="auto"):
    r"""Group normalization that also returns the statistics backward needs.

    .. math::

        \mu_{n,g} = \frac{1}{M}\sum_{i \in (n,g)} x_i, \quad
        \sigma^{-1}_{n,g} = \Big(\frac{1}{M}\sum_{i \in (n,g)} (x_i - \mu_{n,g})^2
                            + \epsilon\Big)^{-1/2}

    with M = (C / G) times the product of every axis but 0 and ``axis``.

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
    mean, invstd : ndarray of shape (N, num_groups)
        float64 for float64 input, else float32.
    """
    backend = select_backend(device, x, None, out)
    x, slay, weight, bias, _, _, eps, out = _sample_forward_inputs(
        backend, x, axis, num_groups, 2, weight, bias, None, None, eps, out)
    # PyTorch's check (_verify_batch_size on the grouped shape): one value in all.
    if slay.N * slay.count == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size "
            f"{list(x.shape)}"
        )
    if x.size == 0:
        return _empty_sample_result(backend, x, slay, out)
    y, mean, invstd, _ = _engine.forward_train(backend, x, slay, weight, bias, eps, out)
    return (y,) + _engine.deliver_stats(backend, x, mean, invstd)


@channels_in_stored_order("x", ("dy", "out"))
def group_norm_backward(dy, x, mean, invstd, num_groups, weight=None, *, axis=1, out=None,
                        device="auto"):
    r"""Gradients of group normalization: ``(dx, dweight, dbias)``.

    With :math:`\hat x = (x - \mu_{n,g})\sigma^{-1}_{n,g}`, :math:`g = dy\,\gamma_c`
    and M values per group,

    .. math::

        dx = \sigma^{-1}_{n,g}\Big(g - \frac{1}{M}\sum_{(n,g)} g
             - \hat x\,\frac{1}{M}\sum_{(n,g)} g\,\hat x\Big), \qquad
        \frac{\partial L}{\partial\gamma_c} = \sum_{n,\cdot} dy\,\hat x, \qquad
        \frac{\partial L}{\partial\beta_c} = \sum_{n,\cdot} dy.

    Parameters
    ----------
    dy, x : arrays of the same shape and dtype
    mean, invstd : array_like of shape (N, num_groups)
        As returned by :func:`group_norm_forward`.
    num_groups : int
    weight : array_like of shape (C,), optional

    Returns
    -------
    dx : ndarray, shape and dtype of ``x``
    dweight, dbias : ndarray of shape (C,)
        In ``weight``'s dtype; without weight, float64 for float64 input, else float32.
    """
    return _sample_backward(dy, x, mean, invstd, num_groups, 2, weight, axis, out, device)


@channels_in_stored_order("x", ("out",))
def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5, *, axis=1, out=None,
                  device="auto"):
    r"""Instance normalization with PyTorch's ``torch.nn.functional.instance_norm`` semantics.

    Every (sample, channel) is normalized with its own mean and biased
    variance over the axes other than 0 and ``axis``:

    .. math::

        y_{n,c} = \frac{x_{n,c} - \mu_{n,c}}{\sqrt{\sigma^2_{n,c} + \epsilon}}\,\gamma_c + \beta_c

    With running buffers and ``use_input_stats`` they are updated in place
    with the batch mean of the per-instance means and of the unbiased
    per-instance variances,

    .. math::

        \hat\mu \leftarrow (1 - m)\,\hat\mu + \frac{m}{N}\sum_n \mu_{n}, \qquad
        \hat\sigma^2 \leftarrow (1 - m)\,\hat\sigma^2
            + \frac{m}{N}\sum_n \frac{M}{M-1}\sigma^2_{n};

    ``use_input_stats=False`` normalizes with the running buffers instead.

    Parameters
    ----------
    x : array_like of float16, float32 or float64, rank >= 3
        Axis 0 is the batch axis N.
    running_mean, running_var : ndarray of shape (C,), optional
        Required when ``use_input_stats`` is False.
    weight, bias : array_like of shape (C,), optional
    use_input_stats : bool
    momentum : float
        Any real number, as PyTorch takes it.
    eps : float
        Any real number, as PyTorch takes it.
    axis, out, device : keyword-only
        As in :func:`group_norm`.

    Returns
    -------
    y : ndarray, shape and dtype of ``x``

    Shape
    -----
    ``x``: (N, ..., C, ...) with C on ``axis``; ``y``: the same.
    """
    if use_input_stats:
        return instance_norm_forward(
            x, weight, bias, eps=eps, axis=axis, out=out, running_mean=running_mean,
            running_var=running_var, momentum=momentum, device=device)[0]
    backend = select_backend(device, x, None, out)
    x, slay, weight, bias, running_mean, running_var, eps, out = _sample_forward_inputs(
        backend, x, axis, None, 3, weight, bias, running_mean, running_var, eps, out)
    if running_mean is None or running_var is None:
        raise ValueError(
            "running_mean and running_var are required when use_input_stats=False "
            "(they normalize instead of the instance statistics)"
        )
    lay = v.layout(x.shape, slay.axis)
    return backend.forward_infer(x, lay, running_mean, running_var, weight, bias, eps, out)


@channels_in_stored_order("x", ("out",))
def instance_norm_forward(x, weight=None, bias=None, *, eps=1e-5, axis=1, out=None,
                          running_mean=None, running_var=None, momentum=0.1, device="auto"):
    r"""Instance normalization that also returns the statistics backward needs.

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
    mean, invstd : ndarray of shape (N, C)
        float64 for float64 input, else float32.
    """
    backend = select_backend(device, x, None, out)
    x, slay, weight, bias, running_mean, running_var, eps, out = _sample_forward_inputs(
        backend, x, axis, None, 3, weight, bias, running_mean, running_var, eps, out)
    momentum = _check_running(running_mean, running_var, momentum)
    if slay.A * slay.B == 1:
        raise ValueError(
            f"Expected more than 1 spatial element when training, got input size "
            f"{list(x.shape)}"
        )
    if x.size == 0:
        return _empty_sample_result(backend, x, slay, out)
    y, mean, invstd, m2 = _engine.forward_train(backend, x, slay, weight, bias, eps, out)
    if running_mean is not None:
        # The batch mean of per-instance unbiased variances is that of their M2 over M - 1.
        _update_running(backend, running_mean, running_var, mean.mean(axis=0),
                        m2.mean(axis=0), slay.count, momentum)
    return (y,) + _engine.deliver_stats(backend, x, mean, invstd)


@channels_in_stored_order("x", ("dy", "out"))
def instance_norm_backward(dy, x, mean, invstd, weight=None, *, axis=1, out=None,
                           device="auto"):
    r"""Gradients of instance normalization: ``(dx, dweight, dbias)``.

    Batch norm's gradient per (sample, channel), with M the values of one
    instance, and the parameter gradients summed over the samples:

    .. math::

        dx = \gamma_c\sigma^{-1}_{n,c}\Big(dy - \frac{1}{M}\sum dy
             - \hat x\,\frac{1}{M}\sum dy\,\hat x\Big), \qquad
        \frac{\partial L}{\partial\gamma_c} = \sum_{n,\cdot} dy\,\hat x, \qquad
        \frac{\partial L}{\partial\beta_c} = \sum_{n,\cdot} dy.

    ``mean``/``invstd`` have shape (N, C), as returned by
    :func:`instance_norm_forward`.
    """
    return _sample_backward(dy, x, mean, invstd, None, 3, weight, axis, out, device)
