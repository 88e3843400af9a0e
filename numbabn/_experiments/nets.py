"""What the experiments share: normalization layers by name, SGD, a markdown table and the
command-line plumbing (progress bar, BLAS threads).

The building blocks of the digits demo (``Linear``, ``ReLU``, ``cross_entropy``,
``load_digits``, ``ProgressBar``) are reused from :mod:`numbabn._demo`.
"""
import math

import numbabn as nbn
from numbabn._demo import Linear, ProgressBar, ReLU, cross_entropy, load_digits  # noqa: F401


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
        return nbn.LayerNorm(features)
    if name == "GroupNorm":
        return nbn.GroupNorm(GROUPS, features)
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
