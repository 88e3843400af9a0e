r"""Instance normalization layers (``torch.nn.InstanceNorm1d/2d/3d``).

Each (sample, channel) is normalized with its own statistics; the layers are
:class:`numbabn.batchnorm._NormBase` members (affine parameters and optional
running statistics) over :func:`numbabn.instance_norm_forward` and
:func:`numbabn.instance_norm_backward`.
"""
import warnings

import numpy as np

from . import _channel_math as cm
from . import functional as F
from ._module import to_host
from .batchnorm import _NormBase


class _InstanceNorm(_NormBase):
    r"""Instance normalization of inputs with a batch axis 0 and a channel axis ``axis``.

    .. math::

        y_{n,c} = \frac{x_{n,c} - \mathrm{E}[x_{n,c}]}{\sqrt{\mathrm{Var}[x_{n,c}] + \epsilon}}
                  \,\gamma_c + \beta_c

    Statistics are taken per sample and channel over every other axis.  With
    ``track_running_stats=True`` a training forward also updates the running
    estimates with the batch mean of the instance means and of the unbiased
    instance variances (``momentum=None`` means no update, as in PyTorch),
    and an eval forward normalizes with them.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
    affine : bool, default False
        Learn :math:`\gamma` (``weight``) and :math:`\beta` (``bias``, unless ``bias=False``).
    track_running_stats : bool, default False
    bias : bool, keyword-only, default True
    axis : int, keyword-only, default 1
        The channel axis of a batched input (-1 for channels-last).
    dtype : float16, float32 or float64, keyword-only, default float32

    Shape
    -----
    Input: (N, C, ...) (with ``axis``: C on that axis) or, without the batch
    axis, the same shape without N; output: the same.
    """

    _UNBATCHED_RANK = None  # the rank of an input without the batch axis

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, *, bias=True, axis=1, dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias=bias,
                         axis=axis, dtype=dtype)

    def _batched(self, x):
        """``(x with a batch axis, True if it was added)``, after the rank and channel checks."""
        x = self._host_or_device(x)
        rank = self._UNBATCHED_RANK
        if x.ndim not in (rank, rank + 1):
            raise ValueError(
                f"expected {rank}D (unbatched) or {rank + 1}D (batched) input "
                f"(got {x.ndim}D input)"
            )
        unbatched = x.ndim == rank
        if unbatched:
            x = x.reshape((1,) + tuple(x.shape))
        axis = self.axis % x.ndim if -x.ndim <= self.axis < x.ndim else None
        if axis is None or axis == 0:
            raise ValueError(f"axis {self.axis} is not a channel axis of a {x.ndim}D input")
        channels = x.shape[axis]
        if channels != self.num_features:
            dim = axis - 1 if unbatched else axis
            if self.affine:
                raise ValueError(
                    f"expected input's size at dim={dim} to match num_features "
                    f"({self.num_features}), but got: {channels}."
                )
            warnings.warn(
                f"input's size at dim={dim} does not match num_features. You can silence "
                "this warning by not passing in num_features, which is not used because "
                "affine=False", stacklevel=3)
        self._check_placement(x)
        return x, unbatched

    def forward(self, x):
        """Normalize ``x``; in training mode with tracked statistics, update the running ones.

        The input (a reference) and the statistics are kept for :meth:`backward`.
        """
        self._saved = None
        x, unbatched = self._batched(x)
        if self.training or not self.track_running_stats:
            update = self.training and self.track_running_stats and self.momentum is not None
            y, mean, invstd = F.instance_norm_forward(
                x, self.weight, self.bias, eps=self.eps, axis=self.axis,
                running_mean=self.running_mean if update else None,
                running_var=self.running_var if update else None,
                momentum=self.momentum if update else 0.0, out=self._output_buffer("y", x))
            self._saved = (x, mean, invstd, True, unbatched)
        else:
            y = F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                use_input_stats=False, eps=self.eps, axis=self.axis,
                                out=self._output_buffer("y", x))
            mean = np.array(to_host(self.running_mean), dtype=np.float64)
            invstd = cm.invstd_from_var(np.array(to_host(self.running_var), np.float64),
                                        self.eps)
            self._saved = (x, self._to_device(mean), self._to_device(invstd), False, unbatched)
        self._keep_output("y", y)
        return y[0] if unbatched else y

    def backward(self, dy):
        r"""Gradient with respect to the last forward's input; sets ``grad_weight``/``grad_bias``.

        After a forward with instance statistics this is
        :func:`numbabn.instance_norm_backward`; after an eval forward with
        running statistics, :math:`dx = \gamma\,dy / \sqrt{\hat\sigma^2 + \epsilon}`.
        """
        unbatched = self._saved is not None and self._saved[4]
        dy = self._backward_input(dy, self._saved[0].shape[1:] if unbatched else None)
        x, mean, invstd, instance_stats, unbatched = self._saved
        if unbatched:
            dy = dy.reshape(tuple(x.shape))
        out = self._output_buffer("dx", x)
        if instance_stats:
            dx, dweight, dbias = F.instance_norm_backward(dy, x, mean, invstd, self.weight,
                                                          axis=self.axis, out=out)
        else:
            dx, dweight, dbias = F.batch_norm_backward(dy, x, mean, invstd, self.weight,
                                                       axis=self.axis, training=False, out=out)
        self._set_grads(dweight, dbias)
        self._keep_output("dx", dx)
        return dx[0] if unbatched else dx


class InstanceNorm1d(_InstanceNorm):
    """:class:`_InstanceNorm` for (N, C, L) or unbatched (C, L) input (``torch.nn.InstanceNorm1d``)."""

    _UNBATCHED_RANK = 2


class InstanceNorm2d(_InstanceNorm):
    """:class:`_InstanceNorm` for (N, C, H, W) or (C, H, W) input (``torch.nn.InstanceNorm2d``)."""

    _UNBATCHED_RANK = 3


class InstanceNorm3d(_InstanceNorm):
    """:class:`_InstanceNorm` for (N, C, D, H, W) or (C, D, H, W) input (``torch.nn.InstanceNorm3d``)."""

    _UNBATCHED_RANK = 4
