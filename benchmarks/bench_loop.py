"""Training-loop benchmarks: batch norm between NumPy matrix products.

One training step (forward and backward, float32) of each workload of
``python -m numbabn bench --loop`` (numbabn/_bench_loop.py), with numbabn's
layer and with a batch norm written in NumPy, so that a regression in how
numbabn shares the cores with NumPy's BLAS shows in asv like a kernel
regression.  The default parameters are the two small MLP workloads and the
demo's step; ``NUMBABN_BENCH_FULL=1`` adds the 512-row MLP and the conv-like
workload.
"""
from ._env import FULL, SMOKE

if FULL:
    WORKLOADS = ["mlp-512x256", "mlp-64x128", "conv-16x64x28x28", "digits-demo"]
elif SMOKE:
    WORKLOADS = ["mlp-64x128"]
else:
    WORKLOADS = ["mlp-512x256", "mlp-64x128", "digits-demo"]


class TrainingStep:
    """``time_step``: one forward + backward step of a NumPy network with a batch norm."""

    params = (WORKLOADS, ["numbabn", "numpy"])
    param_names = ["workload", "batch_norm"]
    timeout = 300

    def setup(self, workload, batch_norm):
        try:
            from numbabn import _bench_loop
        except ImportError:  # a commit from before the loop benchmarks
            raise NotImplementedError("numbabn._bench_loop is not there")
        self.step = _bench_loop.numpy_step(workload, batch_norm)
        self.step()  # compile (or load from Numba's cache) before anything is timed

    def time_step(self, workload, batch_norm):
        self.step()
