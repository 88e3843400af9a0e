"""What the experiments share: normalization layers by name, a NumPy layer norm stand-in,
SGD, a markdown table and the command-line plumbing (progress bar, BLAS threads).

The building blocks of the digits demo (``Linear``, ``ReLU``, ``cross_entropy``,
``load_digits``, ``ProgressBar``) are reused from :mod:`numbabn._demo`.
"""
import math
import sys

import numpy as np

import numbabn as nbn
from numbabn._demo import Linear, ProgressBar, ReLU, cross_entropy, load_digits  # noqa: F401


class _NumpyLayerNorm:
    """Stand-in for ``numbabn.LayerNorm`` on (N, D) input, used only while numbabn lacks it.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per row; the textbook
    backward.  Delete once ``numbabn.LayerNorm`` is everywhere.
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *,
                 dtype=np.float32):
        d = int(normalized_shape)
        self.eps, self.training = eps, True
        self.weight = np.ones(d, dtype) if elementwise_affine else None
        self.bias = np.zeros(d, dtype) if elementwise_affine and bias else None
        self.grad_weight = self.grad_bias = None

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=1, keepdims=True)
        invstd = 1.0 / np.sqrt(((x64 - mean) ** 2).mean(axis=1, keepdims=True) + self.eps)
        self.xhat, self.invstd = (x64 - mean) * invstd, invstd
        y = self.xhat * (1.0 if self.weight is None else self.weight)
        return (y if self.bias is None else y + self.bias).astype(x.dtype)

    def backward(self, dy):
        g = dy.astype(np.float64)
        if self.weight is not None:
            self.grad_weight = (g * self.xhat).sum(axis=0).astype(self.weight.dtype)
            g = g * self.weight
        if self.bias is not None:
            self.grad_bias = dy.sum(axis=0).astype(self.bias.dtype)
        dx = self.invstd * (g - g.mean(axis=1, keepdims=True)
                            - self.xhat * (g * self.xhat).mean(axis=1, keepdims=True))
        return dx.astype(dy.dtype)


#: numbabn's LayerNorm where it exists (issue 13), else the NumPy stand-in above.
LayerNorm = getattr(nbn, "LayerNorm", None) or _NumpyLayerNorm
GroupNorm = nbn.GroupNorm

GROUPS = 8  # group norm's groups in a hidden layer (16 features each for 128)


def make_norm(name, features, **renorm):
    """A normalization layer for ``features`` features by name, or None for ``"none"``."""
    if name == "none":
        return None
    if name == "BatchNorm1d":
        return nbn.BatchNorm1d(features)
    if name == "BatchRenorm1d":
        return nbn.BatchRenorm1d(features, **renorm)
    if name == "LayerNorm":
        return LayerNorm(features)
    if name == "GroupNorm":
        return GroupNorm(GROUPS, features)
    raise ValueError(f"unknown normalization {name!r}")


def sgd_step(layers, lr):
    """``p -= lr * grad_p`` for every layer's weight and bias."""
    for layer in layers:
        if getattr(layer, "weight", None) is not None:
            layer.weight -= lr * layer.grad_weight
        if getattr(layer, "bias", None) is not None:
            layer.bias -= lr * layer.grad_bias


def set_training(layers, mode):
    for layer in layers:
        if hasattr(layer, "train"):
            layer.train(mode)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def percent(accuracy):
    return f"{accuracy:.1%}" if math.isfinite(accuracy) else "-"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def missing_extras():
    """An error message when the demo extra is not installed, else None."""
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
        import threadpoolctl  # noqa: F401
    except ImportError as err:
        return f"the demo needs scikit-learn and matplotlib: pip install 'numbabn[demo]' ({err})"
    return None


def one_blas_thread():
    """Tiny matrices: a multi-threaded BLAS only fights Numba's threads for the cores."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def stand_ins():
    """Names of the NumPy stand-ins in use (reported under the table)."""
    return ["LayerNorm"] if LayerNorm is _NumpyLayerNorm else []


def print_stand_ins(stream=sys.stdout):
    names = stand_ins()
    if names:
        print(f"(numbabn has no {', '.join(names)} yet: a NumPy stand-in ran in its place)",
              file=stream)
