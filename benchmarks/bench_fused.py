"""CPU benchmarks of batch norm with a fused activation and residual add.

Each fused call is timed next to its unfused composition (numbabn's batch
norm, then NumPy in place), both writing into a given buffer, so asv shows
the fusion's gain as two series.  Default shapes are short (planes, blocks
and rows layouts); ``NUMBABN_BENCH_FULL=1`` selects the performance issue's
shapes.
"""
import numpy as np

import numbabn as nbn

from ._env import FULL, SMOKE

if FULL:
    SHAPES = ["32x64x56x56", "64x256x14x14", "8x32x128x128", "4x512x7x7", "256x1024",
              "16384x512", "64x64x112x112"]
elif SMOKE:
    SHAPES = ["16x64x14x14"]
else:
    SHAPES = ["16x32x28x28", "16x64x14x14", "256x1024"]
OPS = ["relu", "res_relu", "infer_res_relu", "bwd_relu"]
VARIANTS = ["fused", "unfused"]


class FusedBatchNormCPU:
    """float32, channels-first; inputs built and kernels compiled in ``setup``."""

    params = (SHAPES, OPS, VARIANTS)
    param_names = ["shape", "op", "variant"]
    timeout = 300

    def setup(self, shape, op, variant):
        dims = tuple(int(d) for d in shape.split("x"))
        rng = np.random.default_rng(0)
        x = rng.standard_normal(dims, dtype=np.float32)
        z = rng.standard_normal(dims, dtype=np.float32)
        dy = rng.standard_normal(dims, dtype=np.float32)
        C = dims[1]
        w = (1.0 + 0.1 * rng.standard_normal(C)).astype(np.float32)
        b = (0.1 * rng.standard_normal(C)).astype(np.float32)
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
        out, tmp = np.empty_like(x), np.empty_like(x)
        out.fill(0)
        tmp.fill(0)
        y, mean, invstd = nbn.batch_norm_forward(x, w, b, activation="relu")

        def unfused(training, residual):
            nbn.batch_norm(x, rm, rv, w, b, training=training, out=out)
            if residual:
                np.add(out, z, out=out)
            np.maximum(out, 0, out=out)

        def bwd_unfused():
            np.multiply(dy, y > 0, out=tmp)
            nbn.batch_norm_backward(tmp, x, mean, invstd, w, out=out)

        calls = {
            ("relu", "fused"): lambda: nbn.batch_norm(
                x, rm, rv, w, b, training=True, activation="relu", out=out),
            ("relu", "unfused"): lambda: unfused(True, False),
            ("res_relu", "fused"): lambda: nbn.batch_norm(
                x, rm, rv, w, b, training=True, activation="relu", residual=z, out=out),
            ("res_relu", "unfused"): lambda: unfused(True, True),
            ("infer_res_relu", "fused"): lambda: nbn.batch_norm(
                x, rm, rv, w, b, activation="relu", residual=z, out=out),
            ("infer_res_relu", "unfused"): lambda: unfused(False, True),
            ("bwd_relu", "fused"): lambda: nbn.batch_norm_backward(
                dy, x, mean, invstd, w, activation="relu", y=y, out=out),
            ("bwd_relu", "unfused"): bwd_unfused,
        }
        self.call = calls[op, variant]
        self.call()  # compile (or load from Numba's cache) before anything is timed

    def time_fused(self, shape, op, variant):
        self.call()
