"""Shared inputs for the layer norm and RMS norm tests."""
import numpy as np

#: (input shape, normalized rank): one row, one element per row, several normalized axes.
SHAPES = [((7, 33), 1), ((3, 4, 40), 1), ((2, 3, 5, 6), 2), ((5, 70), 1), ((1, 1000), 1),
          ((9, 1), 1), ((4, 2, 3), 3), ((130,), 1), ((600, 130), 1)]


def tolerance(dtype):
    return {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5,
            np.dtype(np.float16): 2e-3}[np.dtype(dtype)]


def inputs(rng, shape, k, dtype, offset=0.0):
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    nshape = shape[len(shape) - k:]
    w = rng.uniform(0.5, 1.5, nshape).astype(dtype)
    b = rng.uniform(-0.5, 0.5, nshape).astype(dtype)
    return x, dy, nshape, w, b
