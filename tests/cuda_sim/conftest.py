"""The CUDA suite: runs under the CUDA simulator (CI) or on a real GPU.

It needs its own process: ``NUMBA_ENABLE_CUDASIM=1`` must be set before
numba is first imported (``tests/test_cuda_dispatch.py`` starts it).  Under
the simulator, every CUDA thread is a Python thread, so the launch tunables
are patched down: tiny inputs then span several blocks in every grid
dimension.

Two changes to the simulator itself, in this process only:

- Its ``cuda.shared.array`` creates a block's array lazily, on the first
  thread's call, with a check and then a store: two threads switched between
  them each make an array of their own, and a block's tree merge reads
  uninitialised memory.  :func:`_shared_array` makes the first store win for
  every thread (``dict.setdefault`` is atomic under the GIL).
- Python hands the GIL over every 5 ms by default, and the simulator's
  scheduler polls its threads in a busy loop: most of the suite's time went
  to that loop waiting out switch intervals.  A 50 us interval took the suite
  from 400 s to 39 s here and, before the first fix, turned the rare
  shared-array race into wrong results in every few runs (10 us: 8 wrong
  outputs in 6 trials of 3 group norm shapes); with the fix, none in 36
  trials at 10 us and three whole runs of the suite at 50 us.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

from numbabn._dispatch import cuda_available
from numbabn.cuda import _runtime as rt
from numbabn.cuda import config

SIMULATED = rt.SIMULATED
HERE = Path(__file__).resolve().parent

#: The GIL switch interval under the simulator (Python's default is 5 ms).
SIMULATOR_SWITCH_INTERVAL_S = 5e-5


def _shared_array(self, shape, dtype):
    """``FakeCUDAShared.array`` without its race: one array per block and call site."""
    if shape == 0:  # dynamic shared memory: one buffer made up front, no race
        return _simulator_shared_array(self, shape, dtype)
    if isinstance(dtype, types.Type):
        dtype = numpy_support.as_dtype(dtype)
    caller = sys._getframe(1)
    site = (caller.f_code.co_filename, caller.f_lineno)
    array = self._allocations.get(site)
    if array is None:
        array = self._allocations.setdefault(site, np.empty(shape, dtype))
    return array


if SIMULATED:
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    _simulator_shared_array = kernelapi.FakeCUDAShared.array
    kernelapi.FakeCUDAShared.array = _shared_array
    sys.setswitchinterval(SIMULATOR_SWITCH_INTERVAL_S)


def pytest_collection_modifyitems(items):
    if not cuda_available():
        skip = pytest.mark.skip(reason="neither a CUDA GPU nor the CUDA simulator is available")
        for item in items:
            if HERE in item.path.parents:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    if SIMULATED:
        monkeypatch.setattr(config, "THREADS_PER_BLOCK", 16)
        monkeypatch.setattr(config, "MIN_VALUES_PER_THREAD", 2)
        monkeypatch.setattr(config, "ROWS_PER_THREAD", 2)
        monkeypatch.setattr(config, "FINALIZE_THREADS", 4)

