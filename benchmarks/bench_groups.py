"""CPU benchmarks of group and instance norm: forward (training statistics) and backward.

Parameterised over shape, layout and operation; short lists by default,
``NUMBABN_BENCH_FULL=1`` for the shapes of the engine issue.  The suite uses
only the public API; commits before these functions existed skip it.
"""
import numpy as np

import numbabn as nbn

from ._env import FULL

if FULL:
    SHAPES = ["32x256x28x28", "8x128x64x64", "16x64x128x128", "32x64x56x56"]
else:
    SHAPES = ["8x64x28x28"]
LAYOUTS = ["channels_first", "channels_last"]
OPS = ["forward", "backward"]


class _Member:
    """One numbabn call per timing; inputs built and kernels compiled in ``setup``."""

    params = (SHAPES, LAYOUTS, OPS)
    param_names = ["shape", "layout", "op"]
    timeout = 300

    def setup(self, shape, layout, op):
        if not hasattr(nbn, "group_norm"):
            raise NotImplementedError("this commit has no group or instance norm")
        dims = tuple(int(d) for d in shape.split("x"))
        channels_last = layout == "channels_last"
        if channels_last:
            dims = (dims[0], *dims[2:], dims[1])
        axis = -1 if channels_last else 1
        rng = np.random.default_rng(0)
        x = rng.standard_normal(dims, dtype=np.float32)
        dy = rng.standard_normal(dims, dtype=np.float32)
        c = dims[axis]
        w = (1.0 + 0.1 * rng.standard_normal(c)).astype(np.float32)
        b = (0.1 * rng.standard_normal(c)).astype(np.float32)
        forward, backward = self.functions(c)
        _, mean, invstd = forward(x, w, b, axis)
        self.call = {"forward": lambda: forward(x, w, b, axis),
                     "backward": lambda: backward(dy, x, mean, invstd, w, axis)}[op]
        self.call()

    def time_call(self, shape, layout, op):
        self.call()

    def peakmem_call(self, shape, layout, op):
        self.call()


class GroupNormCPU(_Member):
    @staticmethod
    def functions(c):
        groups = min(32, c)
        return (lambda x, w, b, axis: nbn.group_norm_forward(x, groups, w, b, axis=axis),
                lambda dy, x, m, s, w, axis: nbn.group_norm_backward(dy, x, m, s, groups, w,
                                                                     axis=axis))


class InstanceNormCPU(_Member):
    @staticmethod
    def functions(c):
        return (lambda x, w, b, axis: nbn.instance_norm_forward(x, w, b, axis=axis),
                lambda dy, x, m, s, w, axis: nbn.instance_norm_backward(dy, x, m, s, w,
                                                                        axis=axis))
