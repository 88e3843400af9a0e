r"""Folding inference-mode batch norm into the weights of the layer before it.

At inference batch norm is a fixed per-channel affine map,

.. math::

    \mathrm{BN}(z) = (z - \hat\mu)\,s + \beta, \qquad
    s = \frac{\gamma}{\sqrt{\hat\sigma^2 + \epsilon}},

so when it follows a linear map :math:`z = W x + b` (a fully connected layer
or a convolution, whose output channel ``c`` is row ``c`` of ``W``) the two
are one linear map,

.. math::

    W' = s \odot_{\text{out}} W, \qquad b' = (b - \hat\mu)\,s + \beta,

and batch norm costs nothing at inference.  These are the functions of
``torch.nn.utils.fusion`` (same names, argument order and results) for NumPy
arrays: the arithmetic is float64, the results are rounded once into the
weights' dtype (the bias into ``b``'s dtype, or the weights' dtype without
``b``).
"""
import numpy as np

from ._module import to_host
from ._validate import batch_norm_eps, float_dtype

#: The layers :func:`fold_batch_norm` folds into, by the axis of their weight
#: that holds the output channels.
KINDS = {"linear": 0, "conv": 0, "conv_transpose": 1}


def _host_float(name, a, *, optional=False):
    if a is None:
        if optional:
            return None
        raise ValueError(f"{name} is required")
    a = np.asarray(to_host(a))
    float_dtype(name, a.dtype)
    return a


def _vector(name, a, channels, default):
    """A per-channel float64 vector of ``channels`` values (or of one, broadcast)."""
    if a is None:
        return np.full(channels, default)
    a = _host_float(name, a)
    if a.ndim != 1 or a.shape[0] not in (channels, 1):
        raise ValueError(f"{name} must have shape ({channels},), got {a.shape}")
    return np.broadcast_to(a.astype(np.float64), (channels,))


def _fold(w, b, rm, rv, eps, gamma, beta, out_axis, who):
    w = _host_float(f"{who}_w", w)
    if w.ndim < 2:
        raise ValueError(f"{who}_w must have rank 2 or more, got shape {w.shape}")
    b = _host_float(f"{who}_b", b, optional=True)
    rm = _host_float("bn_rm", rm)
    if rm.ndim != 1:
        raise ValueError(f"bn_rm must be a vector, got shape {rm.shape}")
    out = w.shape[out_axis]
    # PyTorch broadcasts a one-channel batch norm over every output channel.
    if rm.shape[0] not in (out, 1):
        raise ValueError(
            f"batch norm has {rm.shape[0]} channels but {who}_w has {out} output channels "
            f"(axis {out_axis} of shape {w.shape})"
        )
    eps = batch_norm_eps(eps, False)
    rm = _vector("bn_rm", rm, out, None)
    rv = _vector("bn_rv", _host_float("bn_rv", rv), out, None)
    gamma = _vector("bn_w", gamma, out, 1.0)
    beta = _vector("bn_b", beta, out, 0.0)
    if b is not None and (b.ndim != 1 or b.shape[0] != out):
        raise ValueError(f"{who}_b must have shape ({out},), got {b.shape}")
    shape = [1] * w.ndim
    shape[out_axis] = out
    b64 = np.zeros(out) if b is None else b.astype(np.float64)
    # var + eps <= 0 (eps = 0, or a running variance below zero after a momentum outside
    # [0, 1]) gives inf and NaN, as PyTorch's, without NumPy's warnings.
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = gamma / np.sqrt(rv + eps)
        w_fused = (w.astype(np.float64) * scale.reshape(shape)).astype(w.dtype)
        b_fused = ((b64 - rm) * scale + beta).astype(w.dtype if b is None else b.dtype)
    return w_fused, b_fused


def fuse_linear_bn_weights(linear_w, linear_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b):
    r"""Fold eval-mode batch norm into the fully connected layer before it.

    ``y = BN(x @ linear_w.T + linear_b)`` equals ``x @ w.T + b`` with

    .. math::

        s = \frac{\gamma}{\sqrt{\hat\sigma^2 + \epsilon}}, \qquad
        w = s[:, \text{None}]\,W, \qquad b = (b_{\text{lin}} - \hat\mu)\,s + \beta .

    Parameters
    ----------
    linear_w : ndarray of shape (out_features, in_features)
    linear_b : ndarray of shape (out_features,) or None
    bn_rm, bn_rv : ndarray of shape (out_features,) or (1,)
        Running mean and variance (a one-channel batch norm is broadcast, as in PyTorch).
    bn_eps : float
    bn_w, bn_b : ndarray of shape (out_features,) or (1,), or None
        :math:`\gamma` and :math:`\beta`; None means 1 and 0.

    Returns
    -------
    w : ndarray, the shape and dtype of ``linear_w``
    b : ndarray of shape (out_features,)
        In ``linear_b``'s dtype, or ``linear_w``'s without a bias.

    Notes
    -----
    Computed in float64 and rounded once (PyTorch computes in the arrays' dtype).
    """
    return _fold(linear_w, linear_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b, 0, "linear")


def fuse_conv_bn_weights(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b, transpose=False):
    r"""Fold eval-mode batch norm into the convolution before it.

    The weight's output-channel axis is scaled by
    :math:`s = \gamma / \sqrt{\hat\sigma^2 + \epsilon}` and the bias becomes
    :math:`(b - \hat\mu)\,s + \beta`.

    Parameters
    ----------
    conv_w : ndarray
        (out_channels, in_channels / groups, *kernel), or with ``transpose``
        (in_channels, out_channels / groups, *kernel): a transposed
        convolution's output channels are its weight's axis 1.  As in PyTorch,
        a grouped transposed convolution cannot be folded (axis 1 holds only
        ``out_channels / groups`` of them): its channel count does not match.
    conv_b : ndarray of shape (out_channels,) or None
    bn_rm, bn_rv, bn_eps, bn_w, bn_b
        As in :func:`fuse_linear_bn_weights`.
    transpose : bool, default False

    Returns
    -------
    w : ndarray, the shape and dtype of ``conv_w``
    b : ndarray of shape (out_channels,)
        In ``conv_b``'s dtype, or ``conv_w``'s without a bias.
    """
    return _fold(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b, 1 if transpose else 0, "conv")


def fold_batch_norm(layer, weight, bias=None, *, kind="linear"):
    r"""Fold a :class:`numbabn.BatchNorm` layer into the weights of the layer before it.

    Uses the layer's running statistics, ``eps``, ``weight`` and ``bias``
    (what its eval mode computes with), so the layer must be in eval mode and
    track running statistics, as ``torch.nn.utils.fusion.fuse_conv_bn_eval``
    requires.

    Parameters
    ----------
    layer : numbabn.BatchNorm
        In eval mode, with running statistics (host or device arrays).
    weight, bias : ndarray, bias optional
        The preceding layer's parameters.
    kind : {"linear", "conv", "conv_transpose"}, keyword-only
        The preceding layer: a fully connected layer (weight
        (out, in)), a convolution (output channels on the weight's axis 0),
        or a transposed convolution (on axis 1).

    Returns
    -------
    w, b : ndarray
        As :func:`fuse_linear_bn_weights` / :func:`fuse_conv_bn_weights` return them.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    if getattr(layer, "training", False):
        raise ValueError("folding uses the running statistics: call layer.eval() first")
    rm, rv = getattr(layer, "running_mean", None), getattr(layer, "running_var", None)
    if rm is None or rv is None:
        raise ValueError(
            "the layer keeps no running statistics (track_running_stats=False): nothing to fold")
    return _fold(weight, bias, rm, rv, layer.eps, layer.weight, layer.bias, KINDS[kind],
                 "conv" if kind != "linear" else "linear")
