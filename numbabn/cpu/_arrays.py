"""How the CPU backend hands host arrays to kernels and results back: one set of rules.

A kernel reads C-contiguous arrays in the compute dtype (float16 widened to
float32) and writes either into the caller's ``out=`` or a fresh buffer.
"""
import numpy as np

from .._validate import compute_dtype


def kernel_view(a, shape):
    """C-contiguous view of ``a`` as ``shape`` in the compute dtype (copies only if needed)."""
    dtype = compute_dtype(a.dtype)
    if a.dtype is not dtype or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=dtype)
    return a.reshape(shape)


def destination(out, shape, dtype, *inputs):
    """Where a kernel writes: ``(buffer, direct)``.

    ``out`` itself is used (``direct``) when it is C-contiguous in the compute
    dtype and, for each input, is either that input's own buffer (an in-place
    call, safe because every kernel reads an element before writing it) or
    shares no memory with it.  Otherwise the kernel writes a fresh buffer.
    """
    if (
        out is not None
        and out.flags.c_contiguous
        and out.dtype == dtype
        and all(not np.may_share_memory(out, a) or same_buffer(out, a) for a in inputs)
    ):
        return out.reshape(shape), True
    return np.empty(shape, dtype=dtype), False


def unless_in_place(out, a):
    """``out`` as a kernel takes it: None when it is ``a``'s own buffer, else ``out``.

    A kernel given None writes into ``a`` itself (:func:`numbabn.cpu.epilogue.into`,
    chosen when Numba compiles).  Given ``a`` twice, its loops would test at run
    time that the two arrays do not overlap, find that they do, and take their
    scalar versions: in place ran 1.3-2.4x slower than a separate ``out=``.
    """
    # Views of different owners first: two attribute reads, where same_buffer builds two
    # __array_interface__ dicts (a few microseconds, on every call).  That test can only
    # send a call to the general loops, which are right for any output.
    # (NumPy points a view's base at the object that owns its memory.)
    out_base, a_base = out.base, a.base
    if (out if out_base is None else out_base) is not (a if a_base is None else a_base):
        return out
    return None if same_buffer(out, a) else out


def rows_view(a3):
    """The (A, C * B) view of an optional (A, C, B) array."""
    if a3 is None:
        return None
    A, C, B = a3.shape
    return a3.reshape(A, C * B)


def same_buffer(a, b):
    return a is b or (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.size == b.size
    )


def finish(result, direct, like, out):
    """Return the result in ``like``'s dtype and shape, copied into ``out`` if needed."""
    if out is None:
        return result.reshape(like.shape).astype(like.dtype, copy=False)
    if not direct:
        out[...] = result.reshape(out.shape)
    return out
