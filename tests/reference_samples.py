"""Float64 NumPy reference for group and instance normalization, written from the formulas.

It shares no code with numbabn: the channel axis is moved to 1, each sample's
channels are reshaped into groups, and plain NumPy reductions give the
statistics; the gradient is the textbook one per (sample, group).
"""
import numpy as np


def _grouped(x, groups, axis):
    """``x`` (N, ..., C, ...) as (N, G, C/G, rest) float64, channels moved to axis 1."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, 1)
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, -1), x.shape


def _ungrouped(a, moved_shape, axis):
    return np.moveaxis(a.reshape(moved_shape), 1, axis)


def _per_channel(v, groups, c):
    return np.ones(c) if v is None else np.asarray(v, np.float64).reshape(groups, c // groups)


def group_forward(x, groups, weight=None, bias=None, eps=1e-5, axis=1):
    """Returns ``(y, mean, invstd, var)`` with statistics of shape (N, G)."""
    xg, moved = _grouped(x, groups, axis)
    c = moved[1]
    mean = xg.mean(axis=(2, 3))
    var = ((xg - mean[:, :, None, None]) ** 2).mean(axis=(2, 3))
    invstd = 1.0 / np.sqrt(var + eps)
    y = (xg - mean[:, :, None, None]) * invstd[:, :, None, None]
    if weight is not None:
        y = y * np.asarray(weight, np.float64).reshape(1, groups, c // groups, 1)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(1, groups, c // groups, 1)
    return _ungrouped(y, moved, axis), mean, invstd, var


def group_backward(dy, x, groups, weight=None, eps=1e-5, axis=1):
    """Textbook gradient per (sample, group); returns ``(dx, dweight, dbias)``."""
    xg, moved = _grouped(x, groups, axis)
    dyg, _ = _grouped(dy, groups, axis)
    c = moved[1]
    _, mean, invstd, _ = group_forward(x, groups, eps=eps, axis=axis)
    xhat = (xg - mean[:, :, None, None]) * invstd[:, :, None, None]
    gamma = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    g = dyg * gamma.reshape(1, groups, c // groups, 1)
    m = xg.shape[2] * xg.shape[3]
    dx = invstd[:, :, None, None] * (
        g - g.sum(axis=(2, 3), keepdims=True) / m
        - xhat * (g * xhat).sum(axis=(2, 3), keepdims=True) / m)
    dweight = (dyg * xhat).sum(axis=(0, 3)).reshape(c)
    dbias = dyg.sum(axis=(0, 3)).reshape(c)
    return _ungrouped(dx, moved, axis), dweight, dbias


def instance_running(x, running_mean, running_var, momentum, axis=1):
    """PyTorch's running update of instance norm, in float64: new ``(mean, var)`` buffers."""
    xi = np.moveaxis(np.asarray(x, np.float64), axis, 1)
    n, c = xi.shape[:2]
    flat = xi.reshape(n, c, -1)
    mean = flat.mean(axis=2)
    var = flat.var(axis=2, ddof=1)
    rm = (1 - momentum) * np.asarray(running_mean, np.float64) + momentum * mean.mean(axis=0)
    rv = (1 - momentum) * np.asarray(running_var, np.float64) + momentum * var.mean(axis=0)
    return rm, rv


def loss_gradient_fd(forward, x, weight, bias, dy, h=1e-6):
    """Central finite differences of ``L = sum(dy * forward(x, weight, bias))`` (tiny inputs)."""
    def grad(arr):
        out = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            up = float((dy * forward(x, weight, bias)).sum())
            arr[i] = old - h
            down = float((dy * forward(x, weight, bias)).sum())
            arr[i] = old
            out[i] = (up - down) / (2 * h)
        return out

    x, weight, bias = (np.array(a, dtype=np.float64) for a in (x, weight, bias))
    return grad(x), grad(weight), grad(bias)
