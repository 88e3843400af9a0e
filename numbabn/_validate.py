"""Every input check of the public API, with clear messages.

The checks look only at ``shape``, ``dtype`` and ``ndim`` (and flags where an
array has them), so they serve host and device arrays alike.  Nothing here
writes anything: a call that fails a check leaves every buffer untouched.
"""
import math
import numbers
from typing import NamedTuple

import numpy as np

#: Floating dtypes the kernels serve.  float16 is computed in float32.
SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

# The checks below first test the common case by identity (native dtypes are
# singletons, ``type(v) is float``), which costs a few nanoseconds, and only
# then run the general check that raises the message.
_F16, _F32, _F64 = SUPPORTED_DTYPES


class Layout(NamedTuple):
    """An input seen as (A, C, B): axes before the channel, channels, axes after."""

    A: int
    C: int
    B: int
    axis: int

    @property
    def count(self):
        """Values per channel, ``A * B``."""
        return self.A * self.B


def native(dtype):
    """``dtype`` in the machine's byte order (``>f4`` is float32 on a little-endian machine)."""
    dtype = np.dtype(dtype)
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def float_dtype(name, dtype):
    """Return the native dtype of a float16/32/64 ``dtype``, else raise ``TypeError``.

    Either byte order is accepted (data read from FITS, netCDF or HDF5 files
    is often big-endian).  The dtype returned is the native one, which is what
    the kernels read: a caller converts its array when the two differ.
    """
    if dtype is _F32 or dtype is _F64 or dtype is _F16:
        return dtype
    found = np.dtype(dtype)
    dtype = native(found)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, float32 or float64), got {found}"
        )
    return dtype


def stats_dtype(dtype):
    """Dtype of saved statistics and default gradients: float64 for float64, else float32."""
    if dtype is _F64 or dtype is _F32:
        return dtype
    return _F64 if native(dtype) == _F64 else _F32


def compute_dtype(dtype):
    """Dtype the kernels read and write, native: float16 is widened to float32."""
    if dtype is _F32 or dtype is _F64:
        return dtype
    dtype = native(dtype)
    return _F32 if dtype == _F16 else dtype


#: Layouts already checked, by (shape, axis) with a plain-int axis (a few per model).
_layouts = {}


def layout(shape, axis):
    """Check ``axis`` against ``shape`` (rank >= 2) and return the (A, C, B) layout."""
    cacheable = type(shape) is tuple and type(axis) is int
    if cacheable:
        lay = _layouts.get((shape, axis))
        if lay is not None:
            return lay
    lay = _check_layout(shape, axis)
    if cacheable and len(_layouts) < 1024:
        _layouts[shape, axis] = lay
    return lay


def _check_layout(shape, axis):
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"expected an input of rank 2 or more, got shape {tuple(shape)}")
    if type(axis) is not int and (
        isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral)
    ):
        raise TypeError(f"axis must be an integer, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an input of rank {ndim}")
    axis = int(axis) % ndim
    return Layout(
        A=math.prod(shape[:axis]), C=int(shape[axis]), B=math.prod(shape[axis + 1:]), axis=axis
    )


def channel_vector(name, v, channels):
    """Check an optional per-channel vector (weight, bias, running or saved statistics)."""
    if v is None:
        return None
    float_dtype(name, v.dtype)
    if v.ndim != 1 or v.shape[0] != channels:
        raise ValueError(
            f"{name} must have shape ({channels},) for {channels} channels, got {tuple(v.shape)}"
        )
    return v


def writeable(name, a):
    """Raise ``ValueError`` if ``a`` is a read-only NumPy array."""
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        raise ValueError(f"{name} is read-only; it must be writeable to be updated in place")


def same_shape(name, a, shape):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")


def out_array(out, shape, dtype):
    """Check an ``out=`` buffer: an array of the input's shape and dtype, writeable."""
    if out is None:
        return None
    if not hasattr(out, "shape") or not hasattr(out, "dtype"):
        raise ValueError(f"out must be an array, got {type(out).__name__}")
    same_shape("out", out, shape)
    if native(out.dtype) != native(dtype):  # either byte order: the result is converted into it
        raise ValueError(f"out must have dtype {np.dtype(dtype)}, got {np.dtype(out.dtype)}")
    writeable("out", out)
    return out


def eps_value(eps):
    if type(eps) is float and 0.0 < eps < math.inf:
        return eps
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {eps!r}")
    if not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def momentum_value(momentum):
    if type(momentum) is float and 0.0 <= momentum <= 1.0:
        return momentum
    if isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum must be a real number in [0, 1], got {momentum!r}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    return float(momentum)


def ddof_value(ddof):
    if isinstance(ddof, (bool, np.bool_)) or not isinstance(ddof, numbers.Integral) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative integer, got {ddof!r}")
    return int(ddof)


def training_count(lay, shape, where=""):
    """Training needs more than one value per channel (PyTorch's rule and message).

    ``where`` is appended to the message (the MPI layer names the global batch).
    """
    if lay.count <= 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {tuple(shape)}"
            + where
        )
