"""``python -m numbabn check``: every available backend against a float64 NumPy reference.

The reference here is a few lines of plain NumPy written from the formulas,
so a broken kernel cannot also break its own check.
"""
import numpy as np

from . import functional as F
from ._dispatch import cuda_available

#: (shape, axis) cases: NCHW, 2-D, channels-last, one value per channel in a plane.
CASES = [((8, 16, 12, 12), 1), ((256, 64), 1), ((4, 10, 10, 16), -1), ((64, 32, 1, 1), 1)]
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


def _reference(x, w, b, dy, axis, eps):
    x = x.astype(np.float64)
    dy = dy.astype(np.float64)
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    shape = mean.shape
    xhat = (x - mean) / np.sqrt(var + eps)
    y = xhat * w.reshape(shape) + b.reshape(shape)
    m = x.size // x.shape[axis]
    g = w.reshape(shape) / np.sqrt(var + eps)
    dbias = dy.sum(axis=axes, keepdims=True)
    dweight = (dy * xhat).sum(axis=axes, keepdims=True)
    dx = g * (dy - dbias / m - xhat * dweight / m)
    return y, dx, var.ravel()


def _error(a, b):
    a = np.asarray(a, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1.0))


def run_case(device, shape, axis, dtype, seed=0):
    """Worst relative error of forward, backward and moments for one case."""
    rng = np.random.default_rng(seed)
    x = (3.0 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    w = rng.uniform(0.5, 1.5, c).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    y_ref, dx_ref, var_ref = _reference(x, w, b, dy, axis, 1e-5)
    y, mean, invstd = F.batch_norm_forward(x, w, b, axis=axis, device=device)
    dx, _, _ = F.batch_norm_backward(dy, x, mean, invstd, w, axis=axis, device=device)
    _, var = F.channel_moments(x, axis=axis, device=device)
    return max(_error(_host(y), y_ref), _error(_host(dx), dx_ref), _error(_host(var), var_ref))


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def available_devices():
    return ["cpu"] + (["cuda"] if cuda_available() else [])


def main(out=print):
    """Print a pass/fail table; return 0 if every case passed, else 1."""
    failures = 0
    out(f"{'device':<7}{'dtype':<9}{'shape':<20}{'axis':>5}{'max rel err':>14}  result")
    for device in available_devices():
        for dtype in (np.float32, np.float64):
            for shape, axis in CASES:
                err = run_case(device, shape, axis, dtype)
                ok = err <= TOLERANCE[dtype]
                failures += not ok
                out(f"{device:<7}{np.dtype(dtype).name:<9}{str(shape):<20}{axis:>5}"
                    f"{err:>14.2e}  {'pass' if ok else 'FAIL'}")
    out("all checks passed" if not failures else f"{failures} check(s) FAILED")
    return 1 if failures else 0
