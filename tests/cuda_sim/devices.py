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


def channels_last(x):
    """A device copy of NumPy ``x`` (N, C, ...) whose memory is channels-last, as (N, C, ...)."""
    moved = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    d = to_device(moved)
    strides = np.moveaxis(np.empty(moved.shape, x.dtype), -1, 1).strides
    return rt.alias(d, x.shape, strides)


def host_channels_last(y):
    """NumPy (N, C, ...) copy of a channels-last device array (copy_to_host wants contiguity)."""
    moved_shape = (y.shape[0],) + tuple(y.shape[2:]) + (y.shape[1],)
    contiguous = np.empty(moved_shape, y.dtype).strides
    return np.moveaxis(rt.alias(y, moved_shape, contiguous).copy_to_host(), -1, 1)
