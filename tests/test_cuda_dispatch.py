"""Dispatch and the CUDA entry points, tested without a GPU (and without kernels)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numbabn as nbn
from numbabn import _dispatch

ROOT = Path(__file__).resolve().parents[1]


class FakeDeviceArray:
    """Quacks like a CUDA array as far as placement is concerned."""

    __cuda_array_interface__ = {"shape": (4, 3), "typestr": "<f4", "data": (0, False),
                                "version": 3}
    shape, dtype, ndim = (4, 3), np.dtype(np.float32), 2


class RaisingInterface:
    @property
    def __cuda_array_interface__(self):
        raise AttributeError("host tensor")


def test_is_device_array():
    assert _dispatch.is_device_array(FakeDeviceArray())
    assert not _dispatch.is_device_array(np.zeros(3))
    assert not _dispatch.is_device_array(None)
    assert not _dispatch.is_device_array([1.0, 2.0])
    assert not _dispatch.is_device_array(RaisingInterface())


@pytest.mark.parametrize("call", [
    lambda: nbn.batch_norm_forward(FakeDeviceArray(), out=np.zeros((4, 3), np.float32)),
    lambda: nbn.batch_norm_forward(np.zeros((4, 3), np.float32), out=FakeDeviceArray()),
    lambda: nbn.batch_norm_backward(np.zeros((4, 3), np.float32), FakeDeviceArray(),
                                    np.zeros(3), np.ones(3)),
])
def test_mixed_placement_is_a_value_error(call):
    with pytest.raises(ValueError, match="must live where x lives"):
        call()


def test_cuda_unavailable_error(monkeypatch):
    monkeypatch.setattr(_dispatch, "_cuda_problem", lambda: "no GPU in this test")
    assert nbn.cuda_available() is False
    with pytest.raises(nbn.CudaUnavailableError, match="no GPU in this test"):
        nbn.batch_norm_forward(np.zeros((4, 3)), device="cuda")
    with pytest.raises(nbn.CudaUnavailableError):
        nbn.channel_moments(FakeDeviceArray())
    assert issubclass(nbn.CudaUnavailableError, RuntimeError)


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, **env), timeout=300)


def test_row_stack_alias_restored_before_numba_cuda_loads():
    """numba-cuda 0.30 needs np.row_stack, which NumPy 2.5 removed: simulate its absence."""
    code = (
        "import numpy as np, sys\n"
        "if hasattr(np, 'row_stack'): del np.row_stack\n"
        "import numbabn as nbn\n"
        "assert 'numba.cuda' not in sys.modules\n"
        "x = np.arange(12.0).reshape(4, 3)\n"
        "y, mean, invstd = nbn.batch_norm_forward(x, device='cuda')\n"
        "assert np.row_stack is np.vstack and 'numba.cuda' in sys.modules\n"
        "np.testing.assert_allclose(mean, [4.5, 5.5, 6.5])\n"
        "print('ok')\n"
    )
    proc = _run(code, NUMBA_ENABLE_CUDASIM="1")
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


def test_cuda_suite_under_simulator():
    """The CUDA suite (tests/cuda_sim) in its own process under the CUDA simulator."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
         "tests/cuda_sim"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"),
    )
    assert proc.returncode == 0, (
        f"CUDA simulator suite failed (exit {proc.returncode}):\n"
        f"{proc.stdout[-12000:]}\n{proc.stderr[-4000:]}"
    )
    assert " passed" in proc.stdout, proc.stdout[-2000:]


def test_channels_last_order():
    from numbabn.cuda.backend import channels_last_order

    shape = (2, 3, 4, 5)  # N, C, H, W stored as N, H, W, C (float32)
    assert channels_last_order(shape, (240, 4, 60, 12), 4, axis=1)
    assert not channels_last_order(shape, (240, 80, 20, 4), 4, axis=1)  # C-contiguous
    assert not channels_last_order(shape, (480, 8, 120, 24), 4, axis=1)  # strided
    assert channels_last_order((2, 1, 4, 5), (80, 999, 20, 4), 4, axis=1)  # size-1 axes: any stride
    assert channels_last_order((2, 3, 1, 1), (24, 8, 99, 99), 8, axis=1)
    assert channels_last_order((2, 3, 4), (48, 4, 12), 4, axis=1)
    assert not channels_last_order((2, 3, 4), (64, 4, 12), 4, axis=1)  # gap between samples


def test_threads_per_block_is_checked(monkeypatch):
    from numbabn._validate import layout
    from numbabn.cuda import _grid, config

    monkeypatch.setattr(config, "THREADS_PER_BLOCK", 48)
    with pytest.raises(ValueError, match="power of two"):
        _grid.planes(layout((4, 3, 40), 1))
    monkeypatch.setattr(config, "THREADS_PER_BLOCK", 2 * config.MAX_THREADS)
    with pytest.raises(ValueError, match="power of two"):
        _grid.elementwise(4, 3)


def test_threads_from_environment():
    code = "from numbabn.cuda import config; print(config.THREADS_PER_BLOCK)"
    assert _run(code, NUMBABN_CUDA_THREADS="64").stdout.strip() == "64"
    bad = _run(code, NUMBABN_CUDA_THREADS="100")
    assert bad.returncode != 0 and "power of two" in bad.stderr
