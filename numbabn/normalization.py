r"""Normalizations with per-sample statistics and no running estimates: group norm.

(Layer and RMS normalization, the other members of this family, live here too
as they arrive.)  The layers are built on :mod:`numbabn.functional` and the
shared base :mod:`numbabn._module`.
"""
import numpy as np

from . import _validate as v
from . import functional as F
from ._module import Module, check_axis, check_count


class GroupNorm(Module):
    r"""Group normalization (``torch.nn.GroupNorm``).

    The C channels are split into ``num_groups`` groups of consecutive
    channels; every (sample, group) is normalized with its own mean and
    biased variance, then each channel gets its own affine:

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \, \gamma + \beta

    The statistics never depend on the other samples, so the layer behaves
    the same in training and eval mode, at any batch size.

    Parameters
    ----------
    num_groups : int
        G, a divisor of ``num_channels``.
    num_channels : int
        C.
    eps : float, default 1e-5
    affine : bool, default True
        Learn :math:`\gamma` (``weight``, ones) and :math:`\beta` (``bias``, zeros).
    bias : bool, keyword-only, default True
        With ``affine``, also learn the bias (as PyTorch's ``bias=False``).
    axis : int, keyword-only, default 1
        The channel axis (-1 for channels-last); axis 0 is the batch.
    dtype : float16, float32 or float64, keyword-only, default float32

    Shape
    -----
    Input: (N, C, ...) (C on ``axis``); output: the same.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, bias=True, axis=1,
                 dtype=np.float32):
        super().__init__(dtype=dtype)
        self.num_groups = check_count("num_groups", num_groups)
        self.num_channels = check_count("num_channels", num_channels)
        if self.num_channels % self.num_groups:
            raise ValueError(
                f"num_channels must be divisible by num_groups, got num_channels="
                f"{self.num_channels} and num_groups={self.num_groups}"
            )
        self.eps = v.eps_value(eps)
        self.affine = bool(affine)
        self.axis = check_axis(axis)
        c = self.num_channels
        self.register_affine(c, self.affine, bias)

    def reset_parameters(self):
        """weight = 1, bias = 0."""
        if self.weight is not None:
            self.weight[...] = 1
        if self.bias is not None:
            self.bias[...] = 0

    def forward(self, x):
        """Normalize ``x``; the input (a reference) and the statistics are kept for :meth:`backward`."""
        self._saved = None
        x = self._host_or_device(x)
        if x.ndim < 2 or not -x.ndim <= self.axis < x.ndim or self.axis % x.ndim == 0:
            raise ValueError(
                f"expected an input of rank >= 2 with channels on axis {self.axis}, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[self.axis] != self.num_channels:
            raise ValueError(
                f"expected {self.num_channels} channels on axis {self.axis}, "
                f"got input of shape {tuple(x.shape)}"
            )
        self._check_placement(x)
        y, mean, invstd = F.group_norm_forward(x, self.num_groups, self.weight, self.bias,
                                               eps=self.eps, axis=self.axis)
        self._saved = (x, mean, invstd)
        return y

    def backward(self, dy):
        r"""Gradient with respect to the last forward's input (:func:`numbabn.group_norm_backward`).

        Sets ``grad_weight`` and ``grad_bias`` (overwritten, not accumulated).
        """
        if self._saved is None:
            raise RuntimeError("backward called before forward: call the layer on an input first")
        x, mean, invstd = self._saved
        dy = self._host_or_device(dy)
        if tuple(dy.shape) != tuple(x.shape):
            raise ValueError(
                f"dy must have the shape of the forward's input {tuple(x.shape)}, "
                f"got {tuple(dy.shape)}"
            )
        dx, dweight, dbias = F.group_norm_backward(dy, x, mean, invstd, self.num_groups,
                                                   self.weight, axis=self.axis)
        if self.weight is not None:
            self.grad_weight = dweight
        if self.bias is not None:
            self.grad_bias = dbias
        return dx

    def __repr__(self):
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine})")
