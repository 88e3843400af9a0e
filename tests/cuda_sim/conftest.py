"""The CUDA suite: runs under the CUDA simulator (CI) or on a real GPU.

It needs its own process: ``NUMBA_ENABLE_CUDASIM=1`` must be set before
numba is first imported (``tests/test_cuda_dispatch.py`` starts it).  Under
the simulator, every CUDA thread is a Python thread, so the launch tunables
are patched down: tiny inputs then span several blocks in every grid
dimension.
"""
from pathlib import Path

import pytest

from numbabn._dispatch import cuda_available
from numbabn.cuda import _runtime as rt
from numbabn.cuda import config

SIMULATED = rt.SIMULATED
HERE = Path(__file__).resolve().parent


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

