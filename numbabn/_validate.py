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
    """eps: any real number, as PyTorch takes it (its own sample inputs use eps=-0.5);
    where variance + eps is negative, sigma^-1 and the results are NaN, where it is
    zero, infinite, as PyTorch's."""
    if type(eps) is float:
        return eps
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {eps!r}")
    return float(eps)


def batch_norm_eps(eps, training):
    """eps of batch norm (and batch renorm), checked as PyTorch's ``batch_norm`` does: > 0
    when training, >= 0 when normalizing with running statistics (NaN passes both)."""
    eps = eps_value(eps)
    if training and eps <= 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    return eps


def momentum_value(momentum):
    """momentum: any real number, as PyTorch takes it (its sample inputs use -1.2 and
    -1.0): ``running = (1 - momentum) * running + momentum * batch``."""
    if type(momentum) is float:
        return momentum
    if isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum must be a real number, got {momentum!r}")
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


# -- layer norm and RMS norm -----------------------------------------------------------

def normalized_shape_value(normalized_shape):
    """``normalized_shape`` (an int or a sequence of ints >= 0) as a tuple of ints."""
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(
            normalized_shape, (bool, np.bool_)):
        normalized_shape = (normalized_shape,)
    try:
        dims = tuple(normalized_shape)
    except TypeError:
        raise TypeError(
            f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}"
        ) from None
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral):
            raise TypeError(f"normalized_shape must hold integers, got {normalized_shape!r}")
    dims = tuple(int(d) for d in dims)
    if not dims:
        raise ValueError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at "
            "least one element, but got normalized_shape = []"
        )
    if min(dims) < 0:
        raise ValueError(f"normalized_shape must hold sizes >= 0, got {list(dims)}")
    return dims


class Rows(NamedTuple):
    """An input seen as (R, D): R rows (the leading axes), D values normalized together."""

    R: int
    D: int
    lead: tuple  # the leading axes: the shape of the per-row statistics


def rows_layout(shape, normalized_shape):
    """Check that ``normalized_shape`` (a checked tuple) is the trailing part of ``shape``."""
    shape = tuple(int(s) for s in shape)
    k = len(normalized_shape)
    if len(shape) < k or shape[len(shape) - k:] != normalized_shape:
        expected = "".join(f", {d}" for d in normalized_shape)
        raise ValueError(
            f"Given normalized_shape={list(normalized_shape)}, expected input with shape "
            f"[*{expected}], but got input of size{list(shape)}"
        )
    lead = shape[:len(shape) - k]
    return Rows(R=math.prod(lead), D=math.prod(normalized_shape), lead=lead)


def affine_vector(name, v, normalized_shape):
    """Check an optional per-element weight or bias of shape ``normalized_shape``."""
    if v is None:
        return None
    float_dtype(name, v.dtype)
    if tuple(v.shape) != tuple(normalized_shape):
        raise ValueError(
            f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
            f"{list(v.shape)} and normalized_shape = {list(normalized_shape)}"
        )
    return v


def row_statistics(name, v, rows):
    """Check saved per-row statistics: shape ``rows.lead`` (or that with trailing 1s,
    as ``torch.native_layer_norm`` returns them)."""
    float_dtype(name, v.dtype)
    shape = tuple(v.shape)
    k = len(shape) - len(rows.lead)
    if shape != rows.lead and not (k > 0 and shape[:len(rows.lead)] == rows.lead
                                   and all(s == 1 for s in shape[len(rows.lead):])):
        raise ValueError(
            f"{name} must have shape {rows.lead} (one value per row), got {shape}"
        )
    return v


class SampleLayout(NamedTuple):
    """A per-sample member's input (N, pre..., C, post...) with C in G groups of C // G.

    Statistics are taken per (sample, group) over ``A * (C // G) * B``
    values: A = the product of the axes between the batch and the channel
    axis, B = the product of the axes after the channel axis.
    """

    N: int
    A: int
    C: int
    B: int
    G: int
    axis: int

    @property
    def count(self):
        """Values per (sample, group)."""
        return self.A * (self.C // self.G) * self.B


#: Per-sample layouts already checked, by (shape, axis, groups, min_rank) of plain ints.
_sample_layouts = {}


def sample_layout(shape, axis, groups, min_rank):
    """Check ``axis`` (not the batch axis 0) and ``groups`` against ``shape``.

    ``groups`` None means one group per channel (instance norm).
    """
    key = (shape, axis, groups, min_rank)
    cacheable = type(shape) is tuple and type(axis) is int and type(groups) in (int, type(None))
    if cacheable:
        slay = _sample_layouts.get(key)
        if slay is not None:
            return slay
    slay = _check_sample_layout(shape, axis, groups, min_rank)
    if cacheable and len(_sample_layouts) < 1024:
        _sample_layouts[key] = slay
    return slay


def _check_sample_layout(shape, axis, groups, min_rank):
    ndim = len(shape)
    if ndim < min_rank:
        raise ValueError(
            f"expected an input of rank {min_rank} or more (N, C, ...), got shape {tuple(shape)}"
        )
    lay = layout(shape, axis)
    if lay.axis == 0:
        raise ValueError("axis 0 is the batch axis; the channel axis must be another one")
    n = int(shape[0])
    a = lay.A // n if n else math.prod(shape[1:lay.axis])
    if groups is None:
        groups = lay.C
    elif isinstance(groups, (bool, np.bool_)) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"num_groups must be an integer, got {groups!r}")
    elif groups < 1:
        raise ValueError(f"num_groups must be at least 1, got {groups}")
    elif lay.C % groups:
        raise ValueError(
            "Expected number of channels in input to be divisible by num_groups, but got "
            f"input of shape {list(shape)} and num_groups={groups}"
        )
    return SampleLayout(N=n, A=a, C=lay.C, B=lay.B, G=int(groups), axis=lay.axis)
