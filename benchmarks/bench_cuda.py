"""asv benchmarks of the CUDA backend (skipped without a GPU).

Numba device arrays, float32, CUDA synchronized inside each timed call.
The default shapes are short; ``NUMBABN_BENCH_FULL=1`` runs all of issue 3's.
"""
import numpy as np

import numbabn as nbn

from ._env import FULL

_SHORT = [(32, 64, 56, 56), (256, 1024)]
_FULL = [(32, 64, 56, 56), (64, 256, 14, 14), (256, 1024), (8, 32, 128, 128), (4, 512, 7, 7),
         (64, 64, 112, 112), (128, 256, 28, 28), (16384, 512)]
SHAPES = _FULL if FULL else _SHORT


def _gpu():
    """numba.cuda on a real GPU, or NotImplementedError (asv's way to skip)."""
    if not nbn.cuda_available():
        raise NotImplementedError("no CUDA GPU")
    from numbabn.cuda import _runtime

    if _runtime.SIMULATED:
        raise NotImplementedError("the CUDA simulator is not worth timing")
    return _runtime.cuda


class CudaBatchNorm:
    params = (SHAPES, ["NCHW", "NHWC"])
    param_names = ["shape", "layout"]

    def setup(self, shape, layout):
        cuda = _gpu()
        if layout == "NHWC" and len(shape) != 4:
            raise NotImplementedError("channels-last needs 4-D")
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape).astype(np.float32)
        self.axis = 1
        if layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            self.axis = -1
        c = shape[1]
        self.cuda = cuda
        self.x = cuda.to_device(x)
        self.dy = cuda.to_device(rng.standard_normal(x.shape).astype(np.float32))
        self.w = cuda.to_device(rng.uniform(0.5, 1.5, c).astype(np.float32))
        self.b = cuda.to_device(np.zeros(c, np.float32))
        self.rm = cuda.to_device(np.zeros(c, np.float32))
        self.rv = cuda.to_device(np.ones(c, np.float32))
        _, self.mean, self.invstd = nbn.batch_norm_forward(self.x, self.w, self.b, axis=self.axis)
        self.time_forward_train()
        self.time_backward()
        self.time_inference()

    def time_forward_train(self, *params):
        nbn.batch_norm_forward(self.x, self.w, self.b, axis=self.axis, running_mean=self.rm,
                               running_var=self.rv)
        self.cuda.synchronize()

    def time_backward(self, *params):
        nbn.batch_norm_backward(self.dy, self.x, self.mean, self.invstd, self.w, axis=self.axis)
        self.cuda.synchronize()

    def time_inference(self, *params):
        nbn.batch_norm(self.x, self.rm, self.rv, self.w, self.b, axis=self.axis)
        self.cuda.synchronize()
