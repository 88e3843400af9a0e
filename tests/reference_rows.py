"""Float64 NumPy reference for layer norm and RMS norm, written from the formulas.

It shares no code with numbabn: plain NumPy reductions over the trailing
axes, two-pass variance, the textbook gradients, finite differences.
"""
import numpy as np


def _axes(x, k):
    return tuple(range(x.ndim - k, x.ndim))


def layer_norm(x, k, weight=None, bias=None, eps=1e-5):
    """``(y, mean, invstd)`` in float64 over the last ``k`` axes (statistics keep no axes)."""
    x = np.asarray(x, np.float64)
    axes = _axes(x, k)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * invstd
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    lead = x.shape[:x.ndim - k]
    return y, mean.reshape(lead), invstd.reshape(lead)


def rms_norm(x, k, weight=None, eps=1e-6):
    """``(y, invrms)`` in float64 over the last ``k`` axes."""
    x = np.asarray(x, np.float64)
    axes = _axes(x, k)
    invrms = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    y = x * invrms
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    return y, invrms.reshape(x.shape[:x.ndim - k])


def layer_norm_backward(dy, x, mean, invstd, k, weight=None):
    """Textbook gradient of layer norm: ``(dx, dweight, dbias)`` in float64."""
    dy, x = np.asarray(dy, np.float64), np.asarray(x, np.float64)
    axes = _axes(x, k)
    keep = x.shape[:x.ndim - k] + (1,) * k
    mean = np.asarray(mean, np.float64).reshape(keep)
    invstd = np.asarray(invstd, np.float64).reshape(keep)
    w = np.ones(x.shape[x.ndim - k:]) if weight is None else np.asarray(weight, np.float64)
    xhat = (x - mean) * invstd
    g = dy * w
    lead = tuple(range(x.ndim - k))
    dx = invstd * (g - g.mean(axis=axes, keepdims=True)
                   - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    return dx, (dy * xhat).sum(axis=lead), dy.sum(axis=lead)


def rms_norm_backward(dy, x, invrms, k, weight=None):
    """Textbook gradient of RMS norm: ``(dx, dweight)`` in float64."""
    dy, x = np.asarray(dy, np.float64), np.asarray(x, np.float64)
    axes = _axes(x, k)
    keep = x.shape[:x.ndim - k] + (1,) * k
    r = np.asarray(invrms, np.float64).reshape(keep)
    w = np.ones(x.shape[x.ndim - k:]) if weight is None else np.asarray(weight, np.float64)
    xhat = x * r
    g = dy * w
    dx = r * (g - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    return dx, (dy * xhat).sum(axis=tuple(range(x.ndim - k)))


def finite_differences(loss, *arrays, h=1e-6):
    """Central differences of ``loss(*arrays)`` with respect to each array (tiny float64 only)."""
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + h
            up = loss(*arrays)
            a[i] = old - h
            down = loss(*arrays)
            a[i] = old
            g[i] = (up - down) / (2 * h)
        grads.append(g)
    return grads
