r"""Batch renormalization layers (Ioffe, 2017): batch norm trained towards its running statistics.

The layers hold the parameters and running buffers of batch norm (the same
:class:`numbabn.batchnorm._NormBase`, the same state dict) and call
:mod:`numbabn.functional_renorm`.  In eval mode they are batch norm.
"""
import numpy as np

from . import _channel_math as cm
from . import functional as F
from . import functional_renorm as FR
from .batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, _NormBase
from ._module import check_count, to_host


class BatchRenorm(_NormBase):
    r"""Batch renormalization over every axis but the channel axis, for inputs of rank >= 2.

    In training mode, per channel, with the batch mean :math:`\mu_B`, the
    biased batch variance :math:`\sigma_B^2` and the running estimates
    :math:`\hat\mu, \hat\sigma^2` as they are before the step:

    .. math::

        r = \mathrm{clip}\Big(\frac{\sqrt{\sigma_B^2+\epsilon}}{\sqrt{\hat\sigma^2+\epsilon}},
            \frac{1}{r_{max}}, r_{max}\Big), \quad
        d = \mathrm{clip}\Big(\frac{\mu_B - \hat\mu}{\sqrt{\hat\sigma^2+\epsilon}},
            -d_{max}, d_{max}\Big),

    .. math::

        y = \gamma\Big(\frac{x - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}}\,r + d\Big) + \beta,

    then the running estimates are updated as batch norm updates them.  r and
    d are constants for the gradient.  For the first ``warmup_steps`` training
    batches r = 1 and d = 0 (batch norm).  In eval mode the running estimates
    normalize, as in batch norm.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
    momentum : float or None, default 0.1
        Weight of the new batch in the running estimates; None for a
        cumulative average.
    affine : bool, default True
        Learn :math:`\gamma` (``weight``) and :math:`\beta` (``bias``).
    rmax : float >= 1, keyword-only, default 3.0
    dmax : float >= 0, keyword-only, default 5.0
        Clipping bounds of r and d.  Attributes: a schedule may change them
        between steps (the paper ramps them from 1 and 0); a bad value raises
        ``ValueError`` when assigned.
    warmup_steps : int >= 0, keyword-only, default 0
        Training batches (counted by ``num_batches_tracked``, so a loaded
        state resumes the count) that run as plain batch norm.
    axis : int, keyword-only, default 1
        The channel axis of the input (-1 for channels-last).
    dtype : float16, float32 or float64, keyword-only, default float32

    Attributes
    ----------
    weight, bias : ndarray of shape (C,) or None
    running_mean, running_var : ndarray of shape (C,)
    num_batches_tracked : int
    rmax, dmax : float
    r, d : ndarray of shape (C,) or None
        The factors of the last training forward.
    grad_weight, grad_bias : ndarray of shape (C,) or None
        Set (overwritten) by :meth:`backward`.

    Shape
    -----
    Input: (A..., C, B...) with C on ``axis``; output: the same.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *, rmax=3.0,
                 dmax=5.0, warmup_steps=0, axis=1, dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, True, axis=axis, dtype=dtype)
        self.rmax = rmax
        self.dmax = dmax
        self.warmup_steps = check_count("warmup_steps", warmup_steps, least=0)
        self.r = self.d = None

    @property
    def rmax(self):
        return self._rmax

    @rmax.setter
    def rmax(self, value):
        self._rmax = FR.rmax_value(value)

    @property
    def dmax(self):
        return self._dmax

    @dmax.setter
    def dmax(self, value):
        self._dmax = FR.dmax_value(value)

    _check_input_dim = BatchNorm._check_input_dim
    _check_input = BatchNorm._check_input

    def to(self, device):
        """Move parameters and buffers (:meth:`numbabn._module.Module.to`); drops ``r``, ``d``."""
        if device != self.device:
            self.r = self.d = None
        return super().to(device)

    def forward(self, x):
        """Normalize ``x``; in training mode also update the running estimates.

        The input (a reference, not a copy) is kept for :meth:`backward`.
        """
        self._saved = None
        x = self._check_input(x)
        if not self.training:
            y = self._keep_output("y", F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                eps=self.eps, axis=self.axis, out=self._output_buffer("y", x)))
            mean = np.array(to_host(self.running_mean), dtype=np.float64)
            invstd = cm.invstd_from_var(np.array(to_host(self.running_var), np.float64), self.eps)
            self._saved = (x, self._to_device(mean), self._to_device(invstd), None, None)
            return y
        warm = self.num_batches_tracked < self.warmup_steps
        y, mean, invstd, r, d = FR.batch_renorm_forward(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            momentum=self._momentum_factor(), eps=self.eps,
            rmax=1.0 if warm else self.rmax, dmax=0.0 if warm else self.dmax, axis=self.axis,
            out=self._output_buffer("y", x))
        self.num_batches_tracked += 1
        self.r, self.d = r, d
        self._saved = (x, mean, invstd, r, d)
        return self._keep_output("y", y)

    def backward(self, dy):
        r"""Gradient of the loss with respect to the last forward's input.

        After a training forward, :math:`dx = \frac{\gamma r}{\sigma_B}\big(dy -
        \overline{dy} - \hat x_B\,\overline{dy\,\hat x_B}\big)`,
        ``grad_weight`` :math:`= \sum dy(\hat x_B r + d)`, ``grad_bias``
        :math:`= \sum dy`; after an eval forward batch norm's frozen-statistics
        gradient.

        Raises
        ------
        RuntimeError
            When no forward came before.
        ValueError
            When ``dy`` does not have the shape of the forward's input.
        """
        dy = self._backward_input(dy)
        x, mean, invstd, r, d = self._saved
        out = self._output_buffer("dx", x)
        if r is None:
            dx, dweight, dbias = F.batch_norm_backward(
                dy, x, mean, invstd, self.weight, axis=self.axis, training=False, out=out)
        else:
            dx, dweight, dbias = FR.batch_renorm_backward(
                dy, x, mean, invstd, r, d, self.weight, axis=self.axis, out=out)
        self._set_grads(dweight, dbias)
        return self._keep_output("dx", dx)

    def __repr__(self):
        return (
            f"{type(self).__name__}({self.num_features}, eps={self.eps}, "
            f"momentum={self.momentum}, affine={self.affine}, rmax={self.rmax}, "
            f"dmax={self.dmax}, warmup_steps={self.warmup_steps})"
        )


class BatchRenorm1d(BatchRenorm):
    """:class:`BatchRenorm` for (N, C) or (N, C, L) input."""

    _check_input_dim = BatchNorm1d._check_input_dim


class BatchRenorm2d(BatchRenorm):
    """:class:`BatchRenorm` for (N, C, H, W) input."""

    _check_input_dim = BatchNorm2d._check_input_dim


class BatchRenorm3d(BatchRenorm):
    """:class:`BatchRenorm` for (N, C, D, H, W) input."""

    _check_input_dim = BatchNorm3d._check_input_dim
