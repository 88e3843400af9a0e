"""Float64 NumPy reference for batch normalization, written from the formulas.

It shares no code with numbabn: plain NumPy reductions over every axis but the
channel axis, two-pass variance, the textbook gradient.
"""
import numpy as np


def reduce_axes(ndim, axis):
    axis %= ndim
    return tuple(i for i in range(ndim) if i != axis)


def channel_shape(ndim, axis):
    """Shape that broadcasts a (C,) vector along ``axis``."""
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return shape


def moments(x, axis=1, ddof=0):
    x = np.asarray(x, dtype=np.float64)
    axes = reduce_axes(x.ndim, axis)
    mean = x.mean(axis=axes)
    centred = x - mean.reshape(channel_shape(x.ndim, axis))
    count = x.size // x.shape[axis]
    var = (centred**2).sum(axis=axes) / (count - ddof)
    return mean, var


def forward_train(x, weight=None, bias=None, eps=1e-5, axis=1):
    """Returns ``(y, mean, invstd, unbiased_var)`` in float64."""
    x = np.asarray(x, dtype=np.float64)
    mean, var = moments(x, axis)
    invstd = 1.0 / np.sqrt(var + eps)
    y = affine(x, mean, invstd, weight, bias, axis)
    count = x.size // x.shape[axis]
    return y, mean, invstd, var * count / (count - 1)


def forward_infer(x, running_mean, running_var, weight=None, bias=None, eps=1e-5, axis=1):
    x = np.asarray(x, dtype=np.float64)
    invstd = 1.0 / np.sqrt(np.asarray(running_var, np.float64) + eps)
    return affine(x, np.asarray(running_mean, np.float64), invstd, weight, bias, axis)


def affine(x, mean, invstd, weight, bias, axis):
    shape = channel_shape(x.ndim, axis)
    y = (x - mean.reshape(shape)) * invstd.reshape(shape)
    if weight is not None:
        y = y * np.asarray(weight, np.float64).reshape(shape)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(shape)
    return y


def backward(dy, x, mean, invstd, weight=None, axis=1, training=True):
    """Textbook gradient; returns ``(dx, dweight, dbias)`` in float64."""
    dy = np.asarray(dy, np.float64)
    x = np.asarray(x, np.float64)
    shape = channel_shape(x.ndim, axis)
    axes = reduce_axes(x.ndim, axis)
    mean = np.asarray(mean, np.float64)
    invstd = np.asarray(invstd, np.float64)
    gamma = np.ones_like(mean) if weight is None else np.asarray(weight, np.float64)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    dbias = dy.sum(axis=axes)
    dweight = (dy * xhat).sum(axis=axes)
    g = (gamma * invstd).reshape(shape)
    if not training:
        return dy * g, dweight, dbias
    m = x.size // x.shape[axis]
    dx = g * (dy - dbias.reshape(shape) / m - xhat * dweight.reshape(shape) / m)
    return dx, dweight, dbias


def loss_gradient_fd(x, weight, bias, dy, eps=1e-5, axis=1, h=1e-6):
    """Central finite differences of ``L = sum(dy * y(x, weight, bias))``.

    Returns ``(dx, dweight, dbias)``; only for tiny float64 inputs.
    """
    def loss(x_, w_, b_):
        return float((dy * forward_train(x_, w_, b_, eps, axis)[0]).sum())

    def grad(arr, f):
        g = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            up = f()
            arr[i] = old - h
            down = f()
            arr[i] = old
            g[i] = (up - down) / (2 * h)
        return g

    x, weight, bias = (np.array(a, dtype=np.float64) for a in (x, weight, bias))
    f = lambda: loss(x, weight, bias)  # noqa: E731
    return grad(x, f), grad(weight, f), grad(bias, f)
