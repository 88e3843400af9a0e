"""The backend interface, written down: what :mod:`numbabn.cpu.backend` and
:mod:`numbabn.cuda.backend` both provide.

The public functions (:mod:`numbabn.functional`, :mod:`numbabn._engine`, the
MPI layer) validate their inputs, pick a backend with
:func:`numbabn._dispatch.select_backend` and call only these functions.  Every
array argument has been checked; ``lay`` is the (A, C, B) view the call
works on (:class:`numbabn._validate.Layout`), ``slay`` a per-sample layout
(:class:`numbabn._validate.SampleLayout`).  Per-channel vectors may be None
(weight 1, bias 0).  A test checks that both backends conform, signatures
included.
"""
from typing import Protocol, runtime_checkable


@runtime_checkable
class Backend(Protocol):
    """A module that runs normalization kernels on one kind of device."""

    name: str

    def asarray(self, a):
        """An array-like as this backend reads it (device arrays stay where they are)."""

    def empty(self, shape, dtype):
        """A new uninitialised array where this backend computes."""

    def to_backend(self, a):
        """A host array as this backend returns results (device arrays on CUDA)."""

    def require_c_order(self, x, what):
        """Raise ``ValueError`` when ``x`` cannot be cut into per-sample views in place."""

    def welford(self, x, lay):
        """Per-channel ``(count, mean, m2)``: float64 host arrays."""

    def stream_moments(self, x, lay):
        """``welford`` for data read once (the accumulator, Dask): equal to float64 rounding.

        May read memory once where ``welford`` reads it twice, so its bits may differ.
        """

    def moments(self, x, lay, ddof):
        """Per-channel ``(mean, var)`` in the saved-statistics dtype."""

    def normalize(self, x, lay, mean, invstd, weight, bias, out):
        """``y = (x - mean) * invstd * weight + bias`` with per-channel vectors."""

    def forward_infer(self, x, lay, running_mean, running_var, weight, bias, eps, out,
                      act=None, residual=None):
        """Inference: normalize with running statistics (activation and residual fused)."""

    def forward_train(self, x, lay, weight, bias, eps, out, running_mean, running_var,
                      momentum, act=None, residual=None):
        """Training forward: ``(y, mean, invstd)``; running buffers (if any) updated last.

        ``act`` (an activation code) and ``residual`` are fused into the store:
        ``y = act(BN(x) + residual)``.
        """

    def forward_train_moments(self, x, lay, weight, bias, eps, out):
        """Training forward without running buffers: ``(y, mean, m2)``, float64 host statistics."""

    def update_running(self, running_mean, running_var, mean, m2, count, momentum):
        """Blend float64 batch statistics into running buffers (PyTorch's rule)."""

    def backward_reduce(self, dy, x, lay, mean):
        """Per-channel float64 host ``(sum(dy), sum(dy * (x - mean)))``."""

    def backward_apply(self, dy, x, lay, mean, invstd, weight, sum_dy, sum_dy_xmu, count,
                       training, out):
        """dx from reduced sums."""

    def backward_apply_coefficients(self, dy, x, lay, mean, k_dy, k_x, k_0, out):
        """``dx = k_dy * dy + k_x * (x - mean) + k_0`` with per-channel float64 coefficients."""

    def backward(self, dy, x, lay, mean, invstd, weight, training, out, act=None, y=None,
                 residual=False):
        """Batch-norm backward: ``(dx, dweight, dbias)``, plus ``dresidual`` when ``residual``;
        with ``act``, ``dy`` goes through the activation's mask read from ``y``."""

    def renorm_forward_train(self, x, lay, weight, bias, eps, out, running_mean, running_var,
                             momentum, rmax, dmax):
        """Batch renormalization's training forward: ``(y, mean, invstd, r, d)``; running
        buffers (required) read for r and d, then updated last."""

    def group_train(self, x, slay, weight, bias, eps, out):
        """Group norm forward with backend-specific kernels ``(y, mean, m2)``, or None."""

    def group_backward(self, dy, x, slay, mean, invstd, weight, out):
        """Group norm backward with backend-specific kernels ``(dx, dweight, dbias)``, or None."""

    def row_norm_forward(self, x, R, D, weight, bias, eps, centered, out):
        """Layer norm (``centered``) or RMS norm of x's R rows of D values: ``(y, mean, rstd)``,
        statistics (R,) in the saved-statistics dtype (``mean`` None for RMS norm)."""

    def row_norm_backward(self, dy, x, R, D, mean, rstd, weight, centered, grad_dtype, out):
        """Layer norm or RMS norm backward: ``(dx, dweight, dbias)``, gradients (D,) of
        ``grad_dtype`` (``mean`` None for RMS norm)."""


#: The names every backend module defines (the Protocol's members).
MEMBERS = tuple(
    name for name in Backend.__dict__
    if not name.startswith("_") and name not in ("name",)
) + ("name",)
