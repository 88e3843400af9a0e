"""CPU benchmarks of layer norm and RMS norm: forward and backward.

Short parameter lists by default (``asv run --quick`` stays short);
``NUMBABN_BENCH_FULL=1`` selects the shapes of the layer norm issue and
float64.  Only the public API is used.
"""
import numpy as np

import numbabn as nbn

from ._env import FULL, SMOKE

if FULL:
    SHAPES = ["8192x768", "64x197x768", "4096x4096"]
    DTYPES = ["float32", "float64"]
elif SMOKE:
    SHAPES = ["16x197x256"]
    DTYPES = ["float32"]
else:
    SHAPES = ["512x768", "16x197x256"]
    DTYPES = ["float32"]
OPS = ["layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward"]


class RowNormCPU:
    """One numbabn call per timing; inputs built and kernels compiled in ``setup``."""

    params = (SHAPES, DTYPES, OPS)
    param_names = ["shape", "dtype", "op"]
    timeout = 300

    def setup(self, shape, dtype, op):
        dims = tuple(int(d) for d in shape.split("x"))
        d = dims[-1]
        rng = np.random.default_rng(0)
        # Real values (not zeros), so page faults and zero pages stay out of the timing.
        x = rng.standard_normal(dims, dtype=np.float32).astype(dtype)
        dy = rng.standard_normal(dims, dtype=np.float32).astype(dtype)
        w = (1.0 + 0.1 * rng.standard_normal(d)).astype(dtype)
        b = (0.1 * rng.standard_normal(d)).astype(dtype)
        out = np.empty_like(x)
        _, mean, invstd = nbn.layer_norm_forward(x, d, w, b)
        _, invrms = nbn.rms_norm_forward(x, d, w)
        self.call = {
            "layer_norm": lambda: nbn.layer_norm(x, d, w, b, out=out),
            "layer_norm_backward": lambda: nbn.layer_norm_backward(dy, x, mean, invstd, d, w,
                                                                   out=out),
            "rms_norm": lambda: nbn.rms_norm(x, d, w, out=out),
            "rms_norm_backward": lambda: nbn.rms_norm_backward(dy, x, invrms, d, w, out=out),
        }[op]
        self.call()  # compile (or load from Numba's cache) before anything is timed

    def time_op(self, shape, dtype, op):
        self.call()

    def peakmem_op(self, shape, dtype, op):
        self.call()
