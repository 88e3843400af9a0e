"""Helpers of the CUDA suite: device transfers, and the main suite's tolerances.

``tests/conftest.py`` is shadowed here by this directory's own conftest (both
import as ``conftest``), so its ``tolerance`` is loaded from its file.
"""
import importlib.util
from pathlib import Path

import numpy as np

from numbabn.cuda import _runtime as rt


def _main_conftest():
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("numbabn_tests_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tolerance = _main_conftest().tolerance


def to_device(a):
    return rt.cuda.to_device(np.ascontiguousarray(a))


def host(a):
    """NumPy copy of a device array (Numba or simulator)."""
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)
