r"""Batch normalization layers: parameters, running statistics, forward, backward, state.

The layers follow ``torch.nn.BatchNorm1d/2d/3d`` (names, defaults, checks,
running-statistics rules) and are built on :mod:`numbabn.functional`.  They
hold NumPy arrays (or device arrays after ``to("cuda")``) and compute their
own gradients: call the layer, then :meth:`BatchNorm.backward`.

Every batch-statistics computation goes through two methods,
:meth:`BatchNorm._batch_forward` and :meth:`BatchNorm._batch_backward`; a
subclass that reduces statistics elsewhere (across MPI ranks, for example)
overrides those two and inherits everything else.
"""
import numbers

import numpy as np

from . import _channel_math as cm
from . import _dispatch
from . import _validate as v
from . import functional as F

#: state_dict keys, in PyTorch's order.
PARAMETER_KEYS = ("weight", "bias")
BUFFER_KEYS = ("running_mean", "running_var", "num_batches_tracked")


class BatchNorm:
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
    momentum : float in [0, 1] or None, default 0.1
        Weight of the new batch in the running estimates; None for a
        cumulative average.
    affine : bool, default True
        Learn :math:`\gamma` (``weight``, initialised to 1) and :math:`\beta`
        (``bias``, initialised to 0).  Without, both are None.
    track_running_stats : bool, default True
        Keep ``running_mean`` (zeros), ``running_var`` (ones) and
        ``num_batches_tracked`` (0).  Without, all three are None.
    axis : int, keyword-only, default 1
        The channel axis of the input (-1 for channels-last).
    dtype : float16, float32 or float64, keyword-only, default float32
        Dtype of the parameters and running buffers.

    Attributes
    ----------
    weight, bias : ndarray of shape (C,) or None
    running_mean, running_var : ndarray of shape (C,) or None
    num_batches_tracked : int or None
    grad_weight, grad_bias : ndarray of shape (C,) or None
        Set (overwritten, not accumulated) by :meth:`backward`.
    training : bool
    device : {"cpu", "cuda"}

    Shape
    -----
    Input: (A..., C, B...) with C on ``axis``; output: the same.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, axis=1, dtype=np.float32):
        if isinstance(num_features, (bool, np.bool_)) or not isinstance(
            num_features, numbers.Integral
        ):
            raise TypeError(f"num_features must be an integer, got {num_features!r}")
        if num_features < 1:
            raise ValueError(f"num_features must be at least 1, got {num_features}")
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"axis must be an integer, got {axis!r}")
        self.num_features = int(num_features)
        self.eps = v.eps_value(eps)
        self.momentum = None if momentum is None else v.momentum_value(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.axis = int(axis)
        self.dtype = v.float_dtype("dtype", dtype)
        self.device = "cpu"
        self.training = True

        c = self.num_features
        self.weight = np.ones(c, self.dtype) if self.affine else None
        self.bias = np.zeros(c, self.dtype) if self.affine else None
        self.grad_weight = None
        self.grad_bias = None
        if self.track_running_stats:
            self.running_mean = np.zeros(c, self.dtype)
            self.running_var = np.ones(c, self.dtype)
            self.num_batches_tracked = 0
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self._saved = None

    # ------------------------------------------------------------------ modes and resets

    def train(self, mode=True):
        """Set training mode (batch statistics, running estimates updated); returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Set inference mode (running estimates normalize); returns self."""
        return self.train(False)

    def reset_running_stats(self):
        """running_mean = 0, running_var = 1, num_batches_tracked = 0 (when tracked)."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked = 0

    def reset_parameters(self):
        """Reset the running statistics, then weight = 1 and bias = 0 (when affine)."""
        self.reset_running_stats()
        if self.affine:
            self.weight[...] = 1
            self.bias[...] = 0

    # ------------------------------------------------------------------ forward

    def _check_input_dim(self, x):
        if x.ndim < 2:
            raise ValueError(f"expected at least 2D input (got {x.ndim}D input)")

    def _check_input(self, x):
        if not _dispatch.is_device_array(x) and not isinstance(x, np.ndarray):
            x = np.asarray(x)
        self._check_input_dim(x)
        lay = v.layout(x.shape, self.axis)
        if lay.C != self.num_features:
            raise ValueError(
                f"expected {self.num_features} channels on axis {self.axis}, "
                f"got input of shape {tuple(x.shape)}"
            )
        on_device = _dispatch.is_device_array(x)
        if on_device != (self.device == "cuda"):
            where = "a CUDA device array" if on_device else "a host array"
            raise ValueError(
                f"the input is {where} but the layer's parameters are on {self.device!r}; "
                f"move one of them (layer.to(...))"
            )
        return x

    def _momentum_factor(self):
        """The running-average factor for the next tracked batch."""
        if self.momentum is None:
            return 1.0 / (self.num_batches_tracked + 1)
        return self.momentum

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        """Normalize ``x``; in training mode also update the running estimates.

        The input (a reference, not a copy) and the statistics are kept for
        :meth:`backward`: do not modify ``x`` in place before calling it.
        """
        self._saved = None  # a forward that fails leaves nothing for backward to use
        x = self._check_input(x)
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats:
            update = self.training and self.track_running_stats
            y, mean, invstd = self._batch_forward(
                x,
                self.running_mean if update else None,
                self.running_var if update else None,
                self._momentum_factor() if update else 0.0,
            )
            if update:  # counted only once the batch went through
                self.num_batches_tracked += 1
            self._saved = (x, mean, invstd, True)
            return y
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         training=False, eps=self.eps, axis=self.axis)
        # The statistics are constants of this forward: snapshot them (C values) for backward.
        mean = np.array(_to_host(self.running_mean), dtype=np.float64)
        invstd = cm.invstd_from_var(np.array(_to_host(self.running_var), np.float64), self.eps)
        self._saved = (x, self._to_device(mean), self._to_device(invstd), False)
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

        Raises
        ------
        RuntimeError
            When no forward came before.
        ValueError
            When ``dy`` does not have the shape of the forward's input.
        """
        if self._saved is None:
            raise RuntimeError("backward called before forward: call the layer on an input first")
        x, mean, invstd, batch_stats = self._saved
        if not _dispatch.is_device_array(dy) and not isinstance(dy, np.ndarray):
            dy = np.asarray(dy)
        if tuple(dy.shape) != tuple(x.shape):
            raise ValueError(
                f"dy must have the shape of the forward's input {tuple(x.shape)}, "
                f"got {tuple(dy.shape)}"
            )
        if batch_stats:
            dx, dweight, dbias = self._batch_backward(dy, x, mean, invstd)
        else:
            dx, dweight, dbias = F.batch_norm_backward(
                dy, x, mean, invstd, self.weight, axis=self.axis, training=False
            )
        if self.affine:
            self.grad_weight, self.grad_bias = dweight, dbias
        return dx

    # ------------------------------------------------------------------ the two overridable steps

    def _batch_forward(self, x, running_mean, running_var, momentum):
        """Training-mode forward with batch statistics: ``(y, mean, invstd)``.

        ``running_mean``/``running_var`` are None when they are not updated;
        ``momentum`` is the resolved running-average factor.
        """
        return F.batch_norm_forward(
            x, self.weight, self.bias, eps=self.eps, axis=self.axis,
            running_mean=running_mean, running_var=running_var, momentum=momentum,
        )

    def _batch_backward(self, dy, x, mean, invstd):
        """Backward through batch statistics: ``(dx, dweight, dbias)``."""
        return F.batch_norm_backward(dy, x, mean, invstd, self.weight, axis=self.axis)

    # ------------------------------------------------------------------ state

    def state_dict(self):
        """Copies of the parameters and buffers under PyTorch's key names.

        Returns
        -------
        dict
            ``weight``, ``bias`` (when affine), ``running_mean``,
            ``running_var`` and ``num_batches_tracked`` (a 0-d int64 array;
            when tracking), as host NumPy arrays.
        """
        state = {}
        for key in self._state_keys():
            value = getattr(self, key)
            if key == "num_batches_tracked":
                state[key] = np.array(value, dtype=np.int64)
            else:
                state[key] = _to_host(value).copy()
        return state

    def load_state_dict(self, state_dict):
        """Copy parameters and buffers from ``state_dict`` (as made by :meth:`state_dict`).

        The keys must be exactly those of :meth:`state_dict`, each vector of
        shape (C,) with a floating dtype that converts to the layer's dtype
        without loss, and ``num_batches_tracked`` a non-negative integer.  A
        PyTorch BatchNorm's state with its tensors converted by ``.numpy()``
        qualifies.  Everything is checked before anything is written: a
        refused state leaves the layer unchanged.

        Raises
        ------
        ValueError
            Missing or unexpected keys, wrong shapes, negative count.
        TypeError
            Non-floating vectors, lossy float conversions, non-integer count.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        expected = self._state_keys()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict.keys() if k not in expected]
        if missing or unexpected:
            raise ValueError(
                f"error loading state into {type(self).__name__}: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        checked = {key: self._checked_state_value(key, state_dict[key]) for key in expected}
        for key, value in checked.items():
            if key == "num_batches_tracked":
                self.num_batches_tracked = value
            elif self.device == "cpu":
                getattr(self, key)[...] = value  # in place: references users hold stay valid
            else:
                setattr(self, key, self._to_device(value))

    def _state_keys(self):
        keys = PARAMETER_KEYS if self.affine else ()
        return keys + (BUFFER_KEYS if self.track_running_stats else ())

    def _checked_state_value(self, key, value):
        value = np.asarray(_to_host(value))
        if key == "num_batches_tracked":
            if value.shape not in ((), (1,)) or not np.issubdtype(value.dtype, np.integer):
                raise TypeError(
                    f"num_batches_tracked must be an integer scalar, got {value.dtype} "
                    f"array of shape {value.shape}"
                )
            count = int(value.reshape(()))
            if count < 0:
                raise ValueError(f"num_batches_tracked must be >= 0, got {count}")
            return count
        if value.dtype.kind != "f":
            raise TypeError(f"{key} must have a floating dtype, got {value.dtype}")
        if not np.can_cast(value.dtype, self.dtype, casting="safe"):
            raise TypeError(
                f"{key} has dtype {value.dtype}, which does not convert to the layer's "
                f"{self.dtype} without loss; build the layer with dtype={value.dtype} "
                f"or cast the state first"
            )
        if value.shape != (self.num_features,):
            raise ValueError(
                f"{key} must have shape ({self.num_features},), got {value.shape}"
            )
        return value.astype(self.dtype)

    # ------------------------------------------------------------------ device

    def to(self, device):
        """Move parameters and buffers to ``"cpu"`` or ``"cuda"``; returns self.

        Raises :class:`numbabn.CudaUnavailableError` when CUDA cannot be used.
        The saved forward context and gradients are dropped.
        """
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == self.device:
            return self
        move = _to_cuda if device == "cuda" else _to_host
        names = ("weight", "bias", "running_mean", "running_var")
        moved = {n: move(getattr(self, n)) for n in names if getattr(self, n) is not None}
        for name, value in moved.items():
            setattr(self, name, value)
        self.device = device
        self._saved = None
        self.grad_weight = self.grad_bias = None
        return self

    def _to_device(self, host_array):
        """``host_array`` where the layer's arrays live."""
        return host_array if self.device == "cpu" else _to_cuda(host_array)

    def __repr__(self):
        return (
            f"{type(self).__name__}({self.num_features}, eps={self.eps}, "
            f"momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats})"
        )


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


def _to_cuda(a):
    """A device copy of a host array; raises CudaUnavailableError where CUDA cannot be used."""
    return _dispatch.select_backend("cuda", None).to_device(a)


def _to_host(a):
    """A host array for a host or device array (device arrays are copied)."""
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a
