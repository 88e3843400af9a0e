"""CPU benchmarks: training forward, inference, backward and moments.

Parameterised over shape, layout (channels-first ``axis=1`` or channels-last
``axis=-1``), dtype and operation.  The default parameter lists are short so
that ``asv run --quick`` takes a few minutes; ``NUMBABN_BENCH_FULL=1`` selects
the shapes of the performance issue (and float64).

Only the public API is used, so the suite also measures older commits.
"""
import numpy as np

import numbabn as nbn

from ._env import FULL, SMOKE

if FULL:
    SHAPES = ["32x64x56x56", "64x256x14x14", "8x32x128x128", "4x512x7x7", "256x1024",
              "16384x512", "64x64x112x112"]
    DTYPES = ["float32", "float64"]
elif SMOKE:
    SHAPES = ["16x64x14x14"]
    DTYPES = ["float32"]
else:
    SHAPES = ["16x32x28x28", "16x64x14x14", "256x1024"]  # planes, blocks, rows layouts
    DTYPES = ["float32"]
LAYOUTS = ["channels_first", "channels_last"]
OPS = ["train", "infer", "backward", "moments"]


class BatchNormCPU:
    """One numbabn call per timing; inputs are built and the kernels compiled in ``setup``."""

    params = (SHAPES, LAYOUTS, DTYPES, OPS)
    param_names = ["shape", "layout", "dtype", "op"]
    timeout = 300

    def setup(self, shape, layout, dtype, op):
        dims = tuple(int(d) for d in shape.split("x"))
        channels_last = layout == "channels_last"
        if channels_last and len(dims) < 3:
            raise NotImplementedError("2-D inputs have one layout")  # asv: skipped
        if channels_last:
            dims = (dims[0], *dims[2:], dims[1])
        axis = -1 if channels_last else 1
        rng = np.random.default_rng(0)
        # Real values (not zeros), so page faults and zero pages stay out of the timing.
        x = rng.standard_normal(dims, dtype=np.float32).astype(dtype)
        dy = rng.standard_normal(dims, dtype=np.float32).astype(dtype)
        C = dims[axis]
        w = (1.0 + 0.1 * rng.standard_normal(C)).astype(dtype)
        b = (0.1 * rng.standard_normal(C)).astype(dtype)
        running_mean, running_var = np.zeros(C, dtype), np.ones(C, dtype)
        _, mean, invstd = nbn.batch_norm_forward(x, w, b, axis=axis)
        self.call = {
            "train": lambda: nbn.batch_norm(x, running_mean, running_var, w, b, training=True,
                                            axis=axis),
            "infer": lambda: nbn.batch_norm(x, running_mean, running_var, w, b, axis=axis),
            "backward": lambda: nbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis),
            "moments": lambda: nbn.channel_moments(x, axis=axis),
        }[op]
        self.call()  # compile (or load from Numba's cache) before anything is timed

    def time_batch_norm(self, shape, layout, dtype, op):
        self.call()

    def peakmem_batch_norm(self, shape, layout, dtype, op):
        self.call()
