r"""Batch renormalization (Ioffe, 2017) as plain functions of arrays.

Batch norm normalizes a training batch with its own statistics and an
inference batch with the running ones; on small or non-i.i.d. batches the two
disagree and the trained network does worse at inference.  Batch
renormalization corrects the training output towards the running statistics
with two per-channel factors that are constants for the gradient:

.. math::

    \sigma_B = \sqrt{\sigma^2_B + \epsilon},\qquad
    \sigma_R = \sqrt{\hat\sigma^2 + \epsilon},\qquad
    r = \mathrm{clip}\Big(\frac{\sigma_B}{\sigma_R}, \frac{1}{r_{max}}, r_{max}\Big),\qquad
    d = \mathrm{clip}\Big(\frac{\mu_B - \hat\mu}{\sigma_R}, -d_{max}, d_{max}\Big),

.. math::

    y = \gamma\Big(\frac{x - \mu_B}{\sigma_B}\,r + d\Big) + \beta .

Unclipped, :math:`y = \gamma (x - \hat\mu)/\sigma_R + \beta`: the inference
transform.  ``rmax = 1, dmax = 0`` is batch norm, bit for bit.

Every function validates all of its inputs before it touches any buffer, as
:mod:`numbabn.functional` does.
"""
import numbers

import numpy as np

from . import _renorm_math as rm
from . import _validate as v
from ._dispatch import is_device_array, select_backend
from ._memory_order import channels_in_stored_order
from .functional import (
    _backward_inputs,
    _channel_input,
    _empty_batch,
    _float_input,
    _training_inputs,
)


def rmax_value(rmax):
    """``rmax``: a real number >= 1 (``inf`` disables the clipping of r)."""
    if isinstance(rmax, bool) or not isinstance(rmax, numbers.Real):
        raise TypeError(f"rmax must be a real number >= 1, got {rmax!r}")
    if not rmax >= 1.0:  # also rejects NaN
        raise ValueError(f"rmax must be >= 1, got {rmax!r}")
    return float(rmax)


def dmax_value(dmax):
    """``dmax``: a real number >= 0 (``inf`` disables the clipping of d)."""
    if isinstance(dmax, bool) or not isinstance(dmax, numbers.Real):
        raise TypeError(f"dmax must be a real number >= 0, got {dmax!r}")
    if not dmax >= 0.0:
        raise ValueError(f"dmax must be >= 0, got {dmax!r}")
    return float(dmax)


@channels_in_stored_order("x", ("out",))
def batch_renorm(x, running_mean, running_var, weight=None, bias=None, training=False,
                 momentum=0.1, eps=1e-5, *, rmax=3.0, dmax=5.0, axis=1, out=None,
                 device="auto"):
    r"""Batch renormalization, in the calling convention of ``torch.nn.functional.batch_norm``.

    In training mode each channel is normalized with its batch statistics
    and corrected by r and d towards the running statistics (see the module
    docstring for the math), then ``running_mean``/``running_var`` are
    updated in place exactly as by :func:`numbabn.batch_norm`.  In inference
    mode it is batch norm's inference: :math:`y = \gamma (x - \hat\mu) /
    \sqrt{\hat\sigma^2 + \epsilon} + \beta`.

    Parameters
    ----------
    x : array_like of float16, float32 or float64, rank >= 2
    running_mean, running_var : ndarray of shape (C,)
        Required in both modes (in training they define r and d).  Updated
        in place in training, after r and d are formed from their old values.
    weight, bias : array_like of shape (C,), optional
        :math:`\gamma` and :math:`\beta`; None means 1 and 0.
    training : bool
    momentum : float
        Weight of the new batch in the running averages (PyTorch's convention).
    eps : float
        > 0 when training, >= 0 otherwise (batch norm's checks).
    rmax : float >= 1, keyword-only
        r is clipped to :math:`[1/r_{max}, r_{max}]`; ``inf`` does not clip.
    dmax : float >= 0, keyword-only
        d is clipped to :math:`[-d_{max}, d_{max}]`; ``inf`` does not clip.
    axis : int, keyword-only
        The channel axis; negative values count from the end.
    out : ndarray, keyword-only, optional
        Written with the result and returned; same shape and dtype as ``x``
        (may be ``x`` itself).
    device : {"auto", "cpu", "cuda"}, keyword-only
        As in :func:`numbabn.batch_norm`.

    Returns
    -------
    y : ndarray
        Same shape and dtype as ``x``.

    Raises
    ------
    ValueError
        Missing running buffers, ``rmax < 1``, ``dmax < 0``, and every check
        of :func:`numbabn.batch_norm`; always before anything is written.

    Shape
    -----
    ``x``: (A..., C, B...) with C on ``axis``; ``y``: the same.
    """
    if training:
        return batch_renorm_forward(
            x, running_mean, running_var, weight, bias, momentum=momentum, eps=eps, rmax=rmax,
            dmax=dmax, axis=axis, out=out, device=device)[0]
    backend = select_backend(device, x, None, out)
    x = _float_input(backend, "x", x)
    lay = v.layout(x.shape, axis)
    running_mean = _channel_input(backend, "running_mean", running_mean, lay)
    running_var = _channel_input(backend, "running_var", running_var, lay)
    weight = _channel_input(backend, "weight", weight, lay)
    bias = _channel_input(backend, "bias", bias, lay)
    eps = v.batch_norm_eps(eps, False)
    out = v.out_array(out, x.shape, x.dtype)
    v.momentum_value(momentum)
    rmax_value(rmax)
    dmax_value(dmax)
    _require_running(running_mean, running_var, "inference normalizes with them")
    return backend.forward_infer(x, lay, running_mean, running_var, weight, bias, eps, out)


@channels_in_stored_order("x", ("out",))
def batch_renorm_forward(x, running_mean, running_var, weight=None, bias=None, *, momentum=0.1,
                         eps=1e-5, rmax=3.0, dmax=5.0, axis=1, out=None, device="auto"):
    r"""Training-mode batch renormalization that also returns what backward needs.

    .. math::

        \hat x_B = \frac{x - \mu_B}{\sigma_B}, \qquad y = \gamma\,(\hat x_B\,r + d) + \beta

    with r and d formed from the running buffers as they are before this
    call, which then updates them (momentum, unbiased batch variance).

    Parameters
    ----------
    x, running_mean, running_var, weight, bias, momentum, eps, rmax, dmax, axis, out, device
        As for :func:`batch_renorm` in training mode.

    Returns
    -------
    y : ndarray, shape and dtype of ``x``
    mean, invstd : ndarray of shape (C,)
        The batch mean :math:`\mu_B` and :math:`1/\sigma_B` (float64 for
        float64 input, else float32), as :func:`numbabn.batch_norm_forward`.
    r, d : ndarray of shape (C,)
        The correction factors used, in the same dtype.

    Shape
    -----
    ``x``: (A..., C, B...) with C on ``axis``; ``y``: the same.
    """
    backend = select_backend(device, x, None, out)
    x = _float_input(backend, "x", x)
    lay = v.layout(x.shape, axis)
    weight, bias, running_mean, running_var, eps, out, momentum = _training_inputs(
        backend, lay, x, weight, bias, running_mean, running_var, eps, out, momentum)
    rmax = rmax_value(rmax)
    dmax = dmax_value(dmax)
    _require_running(running_mean, running_var, "they define r and d")
    if lay.count == 0:  # as batch norm (and PyTorch): an empty result, buffers as they were
        y, mean, invstd = _empty_batch(backend, x, lay, out)
        return y, mean, invstd, _copy(backend, invstd), _copy(backend, invstd)
    v.training_count(lay, x.shape)
    return backend.renorm_forward_train(x, lay, weight, bias, eps, out, running_mean,
                                        running_var, momentum, rmax, dmax)


def _copy(backend, stats):
    return stats.copy() if isinstance(stats, np.ndarray) else backend.to_backend(_host(stats))


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def _require_running(running_mean, running_var, why):
    if running_mean is None or running_var is None:
        raise ValueError(f"running_mean and running_var are required ({why})")


@channels_in_stored_order("x", ("dy", "out"))
def batch_renorm_backward(dy, x, mean, invstd, r, d, weight=None, *, axis=1, out=None,
                          device="auto"):
    r"""Gradients of batch renormalization: ``(dx, dweight, dbias)``.

    r and d are constants (the paper's stop-gradient), so dx is batch norm's
    with the weight :math:`\gamma r`; with M values per channel,

    .. math::

        dx = \frac{\gamma r}{\sigma_B}\Big(dy - \frac{1}{M}\sum dy
             - \hat x_B\,\frac{1}{M}\sum dy\,\hat x_B\Big), \qquad
        \frac{\partial L}{\partial\gamma} = \sum dy\,(\hat x_B r + d), \qquad
        \frac{\partial L}{\partial\beta} = \sum dy .

    Parameters
    ----------
    dy, x : arrays of the same shape and dtype
    mean, invstd, r, d : array_like of shape (C,)
        As returned by :func:`batch_renorm_forward`.
    weight : array_like of shape (C,), optional

    Returns
    -------
    dx : ndarray, shape and dtype of ``x``
    dweight, dbias : ndarray of shape (C,)
        In ``weight``'s dtype; without weight, float64 for float64 input,
        else float32 (computed also when ``weight`` is None).
    """
    backend = select_backend(device, x, dy, out)
    x = _float_input(backend, "x", x)
    lay = v.layout(x.shape, axis)
    dy, mean, invstd, weight, out = _backward_inputs(
        backend, lay, x, dy, mean, invstd, weight, out)
    r = _channel_input(backend, "r", r, lay)
    d = _channel_input(backend, "d", d, lay)
    if r is None or d is None:
        raise ValueError("r and d are required")
    r64, d64 = _host64(r), _host64(d)
    weight_r = rm.effective_weight(r64, None if weight is None else _host64(weight))
    # With a float64 weight the backend returns the float64 sums Σdy·x̂_B and Σdy.
    dx, sum_dy_xhat, sum_dy = backend.backward(dy, x, lay, mean, invstd, weight_r, True, out)
    sum_dy_xhat, sum_dy = _host64(sum_dy_xhat), _host64(sum_dy)
    grad_dtype = weight.dtype if weight is not None else v.stats_dtype(x.dtype)
    if lay.count == 0:  # nothing flowed through r and d (NaN for an empty batch)
        dweight = sum_dy_xhat.astype(grad_dtype, copy=False)
    else:
        dweight = rm.weight_gradient(sum_dy_xhat, sum_dy, r64, d64).astype(grad_dtype,
                                                                              copy=False)
    dbias = sum_dy.astype(grad_dtype, copy=False)
    if is_device_array(dx):  # a device x: the gradients go where batch norm's go
        dweight, dbias = backend.to_backend(dweight), backend.to_backend(dbias)
    return dx, dweight, dbias


def _host64(a):
    return np.asarray(_host(a), dtype=np.float64)
