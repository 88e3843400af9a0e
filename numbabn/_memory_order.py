"""Inputs whose channels are stored in another place than the one they are seen at.

PyTorch's ``channels_last`` tensors reach NumPy (``tensor.numpy()``,
``np.from_dlpack``) as (N, C, H, W) arrays whose channels are stored last,
and ``np.moveaxis`` makes the same views from NHWC arrays.  The kernels read
C-contiguous memory, so such a view used to be copied (a transposing copy)
and its result copied back: 7-25x slower than the same data given as NHWC
with ``axis=-1``.

:func:`channels_in_stored_order` wraps a public function so that it reads such
an input where it lies: the arrays are seen in their stored order (a view,
no copy), ``axis`` becomes the stored position of the channels, and the
results are seen in the caller's order again.  A result therefore has the
memory layout of ``x`` (as ``np.empty_like`` gives, and as PyTorch keeps
``channels_last``); the numbers are those of the same data stored that way.
"""
import functools
import inspect

import numpy as np

#: The stored channel positions looked for: last (channels-last memory seen as (N, C, ...)),
#: or 1 (NCHW memory seen as channels-last, e.g. ``np.moveaxis(x, 1, -1)``).
_STORED_POSITIONS = (-1, 1)


def stored_channel_axis(x, axis):
    """The axis ``x``'s channels would have in its stored order, or None.

    Not None only for a host array of rank 3 or more that is not C-contiguous
    but becomes so once its channel axis (not the batch axis 0) is moved to
    the last position or to position 1.
    """
    if type(x) is not np.ndarray or x.ndim < 3 or x.flags.c_contiguous:
        return None
    if type(axis) is not int or not -x.ndim <= axis < x.ndim:
        return None  # left to the function, which explains what is wrong
    axis %= x.ndim
    if axis == 0:
        return None
    for stored in _STORED_POSITIONS:
        stored %= x.ndim
        if stored != axis and np.moveaxis(x, axis, stored).flags.c_contiguous:
            return stored
    return None


def channels_in_stored_order(x="x", arrays=("out",)):
    """Decorator: read ``x`` and the same-shaped ``arrays`` in their stored order.

    Parameters
    ----------
    x : str
        The name of the input whose layout decides.
    arrays : tuple of str
        Other parameters that take arrays of ``x``'s shape (``dy``, ``out``,
        ``y``, ``residual``); each is seen in the same order as ``x``.

    The wrapped function's own checks still run: a call is reordered only when
    every one of ``arrays`` given is a host array of ``x``'s shape, so that an
    error names the shapes the caller passed.  Results of ``x``'s rank are
    seen in the caller's order again; ``out`` itself is returned where the
    function returns it.  A C-contiguous ``x`` costs one flag test.
    """
    def decorate(function):
        signature = inspect.signature(function)
        x_position = list(signature.parameters).index(x)
        default_axis = signature.parameters["axis"].default

        @functools.wraps(function)
        def call(*args, **kwargs):
            data = args[x_position] if len(args) > x_position else kwargs.get(x)
            if type(data) is not np.ndarray or data.flags.c_contiguous:
                return function(*args, **kwargs)
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                return function(*args, **kwargs)  # raises the function's own TypeError
            given = bound.arguments
            axis = given.get("axis", default_axis)
            stored = stored_channel_axis(data, axis)
            if stored is None or not all(
                given.get(name) is None
                or (type(given[name]) is np.ndarray and given[name].shape == data.shape)
                for name in arrays
            ):
                return function(*args, **kwargs)
            axis %= data.ndim
            for name in (x,) + tuple(arrays):
                if given.get(name) is not None:
                    given[name] = np.moveaxis(given[name], axis, stored)
            given["axis"] = stored
            result = function(*bound.args, **bound.kwargs)
            return _caller_order(result, data.ndim, axis, stored, kwargs.get("out"))

        return call

    return decorate


def _caller_order(result, ndim, axis, stored, out):
    """``result`` (an array or a tuple of them) with its full-rank arrays seen in the
    caller's order; the first is ``out`` itself when one was given."""
    single = not isinstance(result, tuple)
    items = [result] if single else list(result)
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray) and item.ndim == ndim:
            items[i] = out if (i == 0 and out is not None) else np.moveaxis(item, stored, axis)
    return items[0] if single else tuple(items)
