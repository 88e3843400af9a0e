r"""Normalizations with per-sample statistics and no running estimates: layer, RMS and group
normalization (``torch.nn.LayerNorm``, ``RMSNorm``, ``GroupNorm``).

Every forward normalizes with the statistics of its own input, in training
and in eval mode alike.  Each layer is a short class over the functional API
(:mod:`numbabn.functional`, :mod:`numbabn.functional_rows`) on the shared
base :class:`numbabn._module.Module` (parameters, state dict, ``to()``): call
the layer, then its ``backward(dy)``, which returns dx and sets
``grad_weight`` (and ``grad_bias``).
"""
import numpy as np

from . import _validate as v
from . import functional as F
from . import functional_rows as FR
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
                                               eps=self.eps, axis=self.axis,
                                               out=self._output_buffer("y", x))
        self._saved = (x, mean, invstd)
        return self._keep_output("y", y)

    def backward(self, dy):
        r"""Gradient with respect to the last forward's input (:func:`numbabn.group_norm_backward`).

        Sets ``grad_weight`` and ``grad_bias`` (overwritten, not accumulated).
        """
        dy = self._backward_input(dy)
        x, mean, invstd = self._saved
        dx, dweight, dbias = F.group_norm_backward(dy, x, mean, invstd, self.num_groups,
                                                   self.weight, axis=self.axis,
                                                   out=self._output_buffer("dx", x))
        if self.weight is not None:
            self.grad_weight = dweight
        if self.bias is not None:
            self.grad_bias = dbias
        return self._keep_output("dx", dx)

    def __repr__(self):
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine})")


class _RowNorm(Module):
    """What LayerNorm and RMSNorm share: the normalized shape, the per-element weight,
    the saved forward and the gradients."""

    def __init__(self, normalized_shape, eps, elementwise_affine, bias, *, dtype):
        super().__init__(dtype=dtype)
        self.normalized_shape = v.normalized_shape_value(normalized_shape)
        self.eps = eps
        self.elementwise_affine = bool(elementwise_affine)
        if bias is None:  # RMS norm: a weight and no bias at all
            self.register_parameter(
                "weight",
                np.ones(self.normalized_shape, self.dtype) if self.elementwise_affine else None)
        else:
            self.register_affine(self.normalized_shape, self.elementwise_affine, bias)

    def reset_parameters(self):
        """weight = 1 and bias = 0 (where present)."""
        for name in self._parameter_names:
            value = getattr(self, name)
            if value is not None:
                value[...] = 1 if name == "weight" else 0

    def _input(self, x):
        self._saved = None  # a forward that fails leaves nothing for backward to use
        x = self._host_or_device(x)
        self._check_placement(x)
        return x

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class LayerNorm(_RowNorm):
    r"""Layer normalization over the trailing ``normalized_shape`` axes (``torch.nn.LayerNorm``).

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \odot \gamma + \beta

    The mean and (biased) variance are those of each row (each sample's
    values over the normalized axes), in training and eval mode alike, so the
    batch size does not matter.  :math:`\gamma` and :math:`\beta` have one
    value per element of ``normalized_shape``.

    Parameters
    ----------
    normalized_shape : int or tuple of ints
        The trailing axes normalized together.
    eps : float, default 1e-5
    elementwise_affine : bool, default True
        Learn ``weight`` (ones) and, unless ``bias=False``, ``bias`` (zeros).
    bias : bool, default True
    dtype : float16, float32 or float64, keyword-only, default float32
        Dtype of the parameters.

    Attributes
    ----------
    weight, bias : ndarray of shape ``normalized_shape`` or None
    grad_weight, grad_bias : ndarray of shape ``normalized_shape`` or None
        Set (overwritten, not accumulated) by :meth:`backward`.

    Shape
    -----
    Input: (\*, \*normalized_shape); output: the same.
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *,
                 dtype=np.float32):
        super().__init__(normalized_shape, v.eps_value(eps), elementwise_affine, bool(bias),
                         dtype=dtype)

    def forward(self, x):
        """Normalize ``x``; the input (a reference, not a copy) is kept for :meth:`backward`."""
        x = self._input(x)
        y, mean, invstd = FR.layer_norm_forward(
            x, self.normalized_shape, self.weight, self.bias, eps=self.eps,
            out=self._output_buffer("y", x))
        self._saved = (x, mean, invstd)
        return self._keep_output("y", y)

    def backward(self, dy):
        r"""dx of the last forward; sets ``grad_weight`` :math:`= \sum dy\,\hat x` and
        ``grad_bias`` :math:`= \sum dy` (sums over the rows) where the layer has them."""
        dy = self._backward_input(dy)
        x, mean, invstd = self._saved
        dx, dweight, dbias = FR.layer_norm_backward(
            dy, x, mean, invstd, self.normalized_shape, self.weight,
            out=self._output_buffer("dx", x))
        if self.weight is not None:
            self.grad_weight = dweight
        if self.bias is not None:
            self.grad_bias = dbias
        return self._keep_output("dx", dx)


class RMSNorm(_RowNorm):
    r"""Root-mean-square normalization over the trailing axes (``torch.nn.RMSNorm``).

    .. math::

        y = \frac{x}{\sqrt{\frac{1}{D}\sum_j x_j^2 + \epsilon}} \odot \gamma

    over the D values of each row; ``eps=None`` means ``np.finfo(x.dtype).eps``.

    Parameters
    ----------
    normalized_shape : int or tuple of ints
    eps : float or None, default None
    elementwise_affine : bool, default True
        Learn ``weight`` (ones).
    dtype : float16, float32 or float64, keyword-only, default float32

    Attributes
    ----------
    weight : ndarray of shape ``normalized_shape`` or None
    grad_weight : ndarray of shape ``normalized_shape`` or None

    Shape
    -----
    Input: (\*, \*normalized_shape); output: the same.
    """

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, *,
                 dtype=np.float32):
        super().__init__(normalized_shape, None if eps is None else v.eps_value(eps),
                         elementwise_affine, None, dtype=dtype)

    def forward(self, x):
        """Normalize ``x``; the input (a reference, not a copy) is kept for :meth:`backward`."""
        x = self._input(x)
        y, invrms = FR.rms_norm_forward(x, self.normalized_shape, self.weight, eps=self.eps,
                                        out=self._output_buffer("y", x))
        self._saved = (x, invrms)
        return self._keep_output("y", y)

    def backward(self, dy):
        r"""dx of the last forward; sets ``grad_weight`` :math:`= \sum dy\,\hat x` when affine."""
        dy = self._backward_input(dy)
        x, invrms = self._saved
        dx, dweight = FR.rms_norm_backward(dy, x, invrms, self.normalized_shape, self.weight,
                                           out=self._output_buffer("dx", x))
        if self.weight is not None:
            self.grad_weight = dweight
        return self._keep_output("dx", dx)
