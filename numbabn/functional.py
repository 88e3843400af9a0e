r"""The functional API: batch normalization as plain functions of arrays.

Every function validates all of its inputs before it touches any buffer, so a
call that raises leaves ``running_mean``, ``running_var`` and ``out`` exactly
as they were.  The channel axis is ``axis`` (1 for ``(N, C, ...)``, -1 for
channels-last); every other axis is reduced over.
"""
import numpy as np

from . import _validate as v
from ._dispatch import select_backend


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


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
               training=False, momentum=0.1, eps=1e-5, *, axis=1, out=None, device="auto"):
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

    Parameters
    ----------
    x : array_like of float16, float32 or float64, rank >= 2
    running_mean, running_var : ndarray of shape (C,), optional
        Required when ``training`` is False.  Updated in place in training.
    weight, bias : array_like of shape (C,), optional
        :math:`\gamma` and :math:`\beta`; None means 1 and 0.
    training : bool
    momentum : float in [0, 1]
        Weight of the new batch in the running averages (PyTorch's
        convention; Keras's ``momentum=0.99`` is ``momentum=0.01`` here).
    eps : float > 0
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
    running_mean = _channel_input(backend, "running_mean", running_mean, lay, convert=False)
    running_var = _channel_input(backend, "running_var", running_var, lay, convert=False)
    weight = _channel_input(backend, "weight", weight, lay)
    bias = _channel_input(backend, "bias", bias, lay)
    eps = v.eps_value(eps)
    out = v.out_array(out, x.shape, x.dtype)
    if training:
        v.training_count(lay, x.shape)
        momentum = _check_running(running_mean, running_var, momentum)
        y, _, _ = _forward_train(
            backend, x, lay, weight, bias, eps, out, running_mean, running_var, momentum)
        return y
    if running_mean is None or running_var is None:
        raise ValueError(
            "running_mean and running_var are required when training=False "
            "(inference normalizes with the running statistics)"
        )
    return backend.forward_infer(x, lay, running_mean, running_var, weight, bias, eps, out)


def batch_norm_forward(x, weight=None, bias=None, *, eps=1e-5, axis=1, out=None,
                       running_mean=None, running_var=None, momentum=0.1, device="auto"):
    r"""Training-mode forward that also returns the statistics backward needs.

    .. math::

        \mu = \frac{1}{M}\sum x, \quad
        \sigma^{-1} = \frac{1}{\sqrt{\frac{1}{M}\sum (x-\mu)^2 + \epsilon}}, \quad
        y = (x - \mu)\,\sigma^{-1}\gamma + \beta

    When ``running_mean`` and ``running_var`` are given they are updated in
    place exactly as by :func:`batch_norm` in training mode (this is what a
    layer needs: one call that normalizes, saves and tracks).

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
    mean, invstd : ndarray of shape (C,)
        float64 for float64 input, else float32.
    """
    backend = select_backend(device, x, None, out)
    x = _float_input(backend, "x", x)
    lay = v.layout(x.shape, axis)
    weight, bias, running_mean, running_var, eps, out, momentum = _training_inputs(
        backend, lay, x, weight, bias, running_mean, running_var, eps, out, momentum)
    v.training_count(lay, x.shape)
    return _forward_train(backend, x, lay, weight, bias, eps, out, running_mean, running_var,
                          momentum)


def _forward_train(backend, x, lay, weight, bias, eps, out, running_mean, running_var, momentum):
    """``backend.forward_train``, with big-endian running buffers updated through native copies."""
    rm, rv = _native_buffer(running_mean), _native_buffer(running_var)
    result = backend.forward_train(x, lay, weight, bias, eps, out, rm, rv, momentum)
    _write_back(running_mean, rm)
    _write_back(running_var, rv)
    return result


def _update_running(backend, running_mean, running_var, mean, m2, count, momentum):
    """``backend.update_running`` for buffers of either byte order (here and in the MPI layer)."""
    rm, rv = _native_buffer(running_mean), _native_buffer(running_var)
    backend.update_running(rm, rv, mean, m2, count, momentum)
    _write_back(running_mean, rm)
    _write_back(running_var, rv)


def _training_inputs(backend, lay, x, weight, bias, running_mean, running_var, eps, out,
                     momentum):
    """Check a training forward's arguments other than ``x`` (here and in the MPI layer)."""
    weight = _channel_input(backend, "weight", weight, lay)
    bias = _channel_input(backend, "bias", bias, lay)
    running_mean = _channel_input(backend, "running_mean", running_mean, lay, convert=False)
    running_var = _channel_input(backend, "running_var", running_var, lay, convert=False)
    eps = v.eps_value(eps)
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


def batch_norm_backward(dy, x, mean, invstd, weight=None, *, axis=1, training=True,
                        out=None, device="auto"):
    r"""Gradients of batch normalization: ``(dx, dweight, dbias)``.

    With :math:`\hat x = (x - \mu)\sigma^{-1}` and M values per channel,

    .. math::

        \frac{\partial L}{\partial\beta} = \sum dy, \qquad
        \frac{\partial L}{\partial\gamma} = \sum dy\,\hat x, \qquad
        dx = \gamma\sigma^{-1}\Big(dy - \frac{1}{M}\sum dy
             - \hat x\,\frac{1}{M}\sum dy\,\hat x\Big).

    With ``training=False`` the statistics are treated as constants (an
    inference-mode forward), and :math:`dx = \gamma\sigma^{-1} dy`.

    Parameters
    ----------
    dy, x : arrays of the same shape and dtype
    mean, invstd : array_like of shape (C,)
        As returned by :func:`batch_norm_forward` (or running statistics).
    weight : array_like of shape (C,), optional

    Returns
    -------
    dx : ndarray, shape and dtype of ``x``
    dweight, dbias : ndarray of shape (C,)
        In ``weight``'s dtype; without weight, float64 for float64 input, else float32.
    """
    backend = select_backend(device, x, dy, out)
    x = _float_input(backend, "x", x)
    lay = v.layout(x.shape, axis)
    dy, mean, invstd, weight, out = _backward_inputs(
        backend, lay, x, dy, mean, invstd, weight, out)
    return backend.backward(dy, x, lay, mean, invstd, weight, bool(training), out)


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
