r"""Batch normalization layers (``torch.nn.BatchNorm1d/2d/3d``): running statistics, forward, backward.

:class:`_NormBase` holds what every member with running statistics shares
(batch norm here, instance norm in :mod:`numbabn.instancenorm`): the affine
parameters, the running buffers, their resets and the momentum rule.  The
layers are built on :mod:`numbabn.functional` and compute their own
gradients: call the layer, then :meth:`BatchNorm.backward`.

Every batch-statistics computation of :class:`BatchNorm` goes through two
methods, :meth:`BatchNorm._batch_forward` and :meth:`BatchNorm._batch_backward`;
a subclass that reduces statistics elsewhere (across MPI ranks, for example)
overrides those two and inherits everything else.
"""
import numpy as np

from . import _channel_math as cm
from . import _validate as v
from . import functional as F
from ._module import Module, check_axis, check_count, to_host


class _NormBase(Module):
    r"""Affine parameters and running statistics of a per-channel normalization.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float
        Added to the variance inside the square root.
    momentum : float or None
        Weight of the new batch in the running estimates; None for a
        cumulative average (factor :math:`1/n` for the n-th tracked batch).
    affine : bool
        Learn :math:`\gamma` (``weight``, initialised to 1) and, unless
        ``bias=False``, :math:`\beta` (``bias``, initialised to 0).
    track_running_stats : bool
        Keep ``running_mean`` (zeros), ``running_var`` (ones) and
        ``num_batches_tracked`` (0).  Without, all three are None.
    bias : bool, keyword-only, default True
        With ``affine``, also learn the bias (PyTorch's ``bias=False`` keeps
        only the weight; the state dict then has no ``bias`` key).
    axis : int, keyword-only, default 1
        The channel axis of the input (-1 for channels-last).
    dtype : float16, float32 or float64, keyword-only, default float32
        Dtype of the parameters and running buffers.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, bias=True, axis=1, dtype=np.float32):
        super().__init__(dtype=dtype)
        self.num_features = check_count("num_features", num_features)
        self.axis = check_axis(axis)
        self.eps = v.eps_value(eps)
        self.momentum = None if momentum is None else v.momentum_value(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        c = self.num_features
        self.register_affine(c, self.affine, bias)
        tracked = self.track_running_stats
        self.register_buffer("running_mean", np.zeros(c, self.dtype) if tracked else None)
        self.register_buffer("running_var", np.ones(c, self.dtype) if tracked else None)
        self.register_buffer("num_batches_tracked", 0 if tracked else None)

    def reset_running_stats(self):
        """running_mean = 0, running_var = 1, num_batches_tracked = 0 (when tracked)."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked = 0

    def reset_parameters(self):
        """Reset the running statistics, then weight = 1 and bias = 0 (when affine)."""
        self.reset_running_stats()
        if self.weight is not None:
            self.weight[...] = 1
        if self.bias is not None:
            self.bias[...] = 0

    def _momentum_factor(self):
        """The running-average factor for the next tracked batch."""
        if self.momentum is None:
            return 1.0 / (self.num_batches_tracked + 1)
        return self.momentum

    def _set_grads(self, dweight, dbias):
        """Store the gradients of the parameters the layer has (overwritten, not accumulated)."""
        if self.weight is not None:
            self.grad_weight = dweight
        if self.bias is not None:
            self.grad_bias = dbias

    def __repr__(self):
        return (
            f"{type(self).__name__}({self.num_features}, eps={self.eps}, "
            f"momentum={self.momentum}, affine={self.affine}, "
            f"bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats})"
        )


class BatchNorm(_NormBase):
    r"""Batch normalization over every axis but the channel axis, for inputs of rank >= 2.

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \, \gamma + \beta

    In training mode the mean and biased variance are those of the batch, per
    channel, and the running estimates are updated with

    .. math::

        \hat x_{\text{new}} = (1 - \text{momentum})\,\hat x + \text{momentum}\,x_t,

    where the running variance receives the unbiased batch variance.  With
    ``momentum=None`` the factor is :math:`1/n` for the n-th tracked batch
    (a cumulative average).  In eval mode the running estimates normalize,
    unless ``track_running_stats=False``, which always uses batch statistics.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float, default 1e-5
        Added to the variance inside the square root.
    momentum : float or None, default 0.1
        Weight of the new batch in the running estimates; None for a
        cumulative average.
    affine : bool, default True
        Learn :math:`\gamma` (``weight``, initialised to 1) and :math:`\beta`
        (``bias``, initialised to 0).  Without, both are None.
    track_running_stats : bool, default True
        Keep ``running_mean`` (zeros), ``running_var`` (ones) and
        ``num_batches_tracked`` (0).  Without, all three are None.
    bias : bool, keyword-only, default True
        With ``affine``, also learn the bias; ``bias=False`` keeps only the
        weight (no ``bias`` key in the state dict), as in PyTorch.
    axis : int, keyword-only, default 1
        The channel axis of the input (-1 for channels-last).
    dtype : float16, float32 or float64, keyword-only, default float32
        Dtype of the parameters and running buffers.
    activation : {None, "relu", "leaky_relu"}, keyword-only
        Fused after the normalization (and after a residual add, see
        :meth:`forward`): ``y = act(BN(x) + residual)`` in one pass.
    negative_slope : float >= 0, keyword-only, default 0.01
        Leaky ReLU's slope.

    Attributes
    ----------
    weight, bias : ndarray of shape (C,) or None
    running_mean, running_var : ndarray of shape (C,) or None
    num_batches_tracked : int or None
    grad_weight, grad_bias : ndarray of shape (C,) or None
        Set (overwritten, not accumulated) by :meth:`backward`.
    grad_residual : ndarray or None
        The residual's gradient, set by :meth:`backward` after a forward
        with a residual (None otherwise).
    training : bool
    device : {"cpu", "cuda"}

    Shape
    -----
    Input: (A..., C, B...) with C on ``axis``; output: the same.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, bias=True, axis=1, dtype=np.float32,
                 activation=None, negative_slope=0.01):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias=bias,
                         axis=axis, dtype=dtype)
        F._activation(activation, negative_slope)  # checked now, not at the first call
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.grad_residual = None
        self._fusion_saved = None

    def _check_input_dim(self, x):
        if x.ndim < 2:
            raise ValueError(f"expected at least 2D input (got {x.ndim}D input)")

    def _check_input(self, x):
        x = self._host_or_device(x)
        self._check_input_dim(x)
        lay = v.layout(x.shape, self.axis)
        if lay.C != self.num_features:
            raise ValueError(
                f"expected {self.num_features} channels on axis {self.axis}, "
                f"got input of shape {tuple(x.shape)}"
            )
        self._check_placement(x)
        return x

    def forward(self, x, residual=None):
        """Normalize ``x``; in training mode also update the running estimates.

        With ``residual`` (the shape and dtype of ``x``, where ``x`` lives) and
        the layer's ``activation``, returns ``act(BN(x) + residual)``, computed
        in one pass.

        The input (a reference, not a copy) and the statistics are kept for
        :meth:`backward`: do not modify ``x`` in place before calling it (nor,
        with an activation, the returned ``y``, whose sign gives its mask).
        """
        self._saved = None  # a forward that fails leaves nothing for backward to use
        self._fusion_saved = None
        fused = getattr(self, "activation", None) is not None or residual is not None
        fusion = {}
        if fused:
            fusion = {"activation": self.activation, "negative_slope": self.negative_slope,
                      "residual": residual}
        x = self._check_input(x)
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats:
            update = self.training and self.track_running_stats
            if fused and type(self)._batch_forward is not BatchNorm._batch_forward:
                raise NotImplementedError(
                    f"{type(self).__name__} does not fuse an activation or a residual: "
                    "apply them after the layer")
            y, mean, invstd = self._batch_forward(
                x,
                self.running_mean if update else None,
                self.running_var if update else None,
                self._momentum_factor() if update else 0.0,
                out=self._output_buffer("y", x),
                **fusion,
            )
            self._keep_output("y", y)
            if update:  # counted only once the batch went through
                self.num_batches_tracked += 1
            self._saved = (x, mean, invstd, True)
            self._fusion_saved = (y, residual is not None) if fused else None
            return y
        y = self._keep_output("y", F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
            eps=self.eps, axis=self.axis, out=self._output_buffer("y", x), **fusion))
        # The statistics are constants of this forward: snapshot them (C values) for backward.
        mean = np.array(to_host(self.running_mean), dtype=np.float64)
        invstd = cm.invstd_from_var(np.array(to_host(self.running_var), np.float64), self.eps)
        self._saved = (x, self._to_device(mean), self._to_device(invstd), False)
        self._fusion_saved = (y, residual is not None) if fused else None
        return y

    # ------------------------------------------------------------------ backward

    def backward(self, dy):
        r"""Gradient of the loss with respect to the last forward's input.

        After a forward with batch statistics (training mode, or
        ``track_running_stats=False``),

        .. math::

            dx = \gamma\sigma^{-1}\Big(dy - \frac{1}{M}\sum dy
                 - \hat x\,\frac{1}{M}\sum dy\,\hat x\Big);

        after an eval forward the running statistics are constants and
        :math:`dx = \gamma\,dy / \sqrt{\hat\sigma^2 + \epsilon}`.  In both cases
        ``grad_weight`` :math:`= \sum dy\,\hat x` and ``grad_bias``
        :math:`= \sum dy` are set (overwritten) when the layer is affine.

        With an activation, ``dy`` is first taken through its derivative at
        the forward's output (see :func:`numbabn.batch_norm_backward`); after a
        forward with a residual, ``grad_residual`` is set to the gradient
        reaching the residual (else None).

        Raises
        ------
        RuntimeError
            When no forward came before.
        ValueError
            When ``dy`` does not have the shape of the forward's input.
        """
        dy = self._backward_input(dy)
        x, mean, invstd, batch_stats = self._saved
        fusion_saved = getattr(self, "_fusion_saved", None)
        self.grad_residual = None
        out = self._output_buffer("dx", x)
        if fusion_saved is not None:
            y, has_residual = fusion_saved
            grads = F.batch_norm_backward(
                dy, x, mean, invstd, self.weight, activation=self.activation,
                negative_slope=self.negative_slope, y=y, residual=has_residual,
                axis=self.axis, training=batch_stats, out=out)
            dx, dweight, dbias = grads[:3]
            if has_residual:
                self.grad_residual = grads[3]
        elif batch_stats:
            dx, dweight, dbias = self._batch_backward(dy, x, mean, invstd, out=out)
        else:
            dx, dweight, dbias = F.batch_norm_backward(
                dy, x, mean, invstd, self.weight, axis=self.axis, training=False, out=out
            )
        self._set_grads(dweight, dbias)
        return self._keep_output("dx", dx)

    # ------------------------------------------------------------------ the two overridable steps

    def _batch_forward(self, x, running_mean, running_var, momentum, out=None, **fusion):
        """Training-mode forward with batch statistics: ``(y, mean, invstd)``.

        ``running_mean``/``running_var`` are None when they are not updated;
        ``momentum`` is the resolved running-average factor; ``out``, when not
        None, is memory ``y`` may be written to (the layer's previous output,
        unreferenced; a subclass may ignore it).  ``fusion`` holds
        the activation and residual keywords when the forward fuses them (a
        subclass that does not fuse need not accept them: the layer refuses
        a fused forward for it).
        """
        return F.batch_norm_forward(
            x, self.weight, self.bias, eps=self.eps, axis=self.axis,
            running_mean=running_mean, running_var=running_var, momentum=momentum, out=out,
            **fusion,
        )

    def _batch_backward(self, dy, x, mean, invstd, out=None):
        """Backward through batch statistics: ``(dx, dweight, dbias)``; ``dx`` may go
        into ``out`` (as in :meth:`_batch_forward`)."""
        return F.batch_norm_backward(dy, x, mean, invstd, self.weight, axis=self.axis,
                                     out=out)


class BatchNorm1d(BatchNorm):
    """:class:`BatchNorm` for (N, C) or (N, C, L) input (``torch.nn.BatchNorm1d``)."""

    def _check_input_dim(self, x):
        if x.ndim not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {x.ndim}D input)")


class BatchNorm2d(BatchNorm):
    """:class:`BatchNorm` for (N, C, H, W) input (``torch.nn.BatchNorm2d``)."""

    def _check_input_dim(self, x):
        if x.ndim != 4:
            raise ValueError(f"expected 4D input (got {x.ndim}D input)")


class BatchNorm3d(BatchNorm):
    """:class:`BatchNorm` for (N, C, D, H, W) input (``torch.nn.BatchNorm3d``)."""

    def _check_input_dim(self, x):
        if x.ndim != 5:
            raise ValueError(f"expected 5D input (got {x.ndim}D input)")
