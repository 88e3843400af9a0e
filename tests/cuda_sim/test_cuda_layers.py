"""Layers and synchronized batch norm on the CUDA backend, against their CPU results."""
import numpy as np
import pytest

import numbabn as nbn
from devices import host, to_device


def _pair(layer_cls, c, **kwargs):
    cpu = layer_cls(c, **kwargs)
    gpu = layer_cls(c, **kwargs).to("cuda")
    return cpu, gpu


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (37, 5)])
def test_layer_on_device_matches_cpu(rng, shape):
    cls = nbn.BatchNorm2d if len(shape) == 4 else nbn.BatchNorm1d
    cpu, gpu = _pair(cls, shape[1], momentum=0.2, dtype=np.float64)
    assert not isinstance(gpu.weight, np.ndarray) and not isinstance(gpu.running_var, np.ndarray)
    for _ in range(2):
        x = rng.standard_normal(shape) * 2 + 1
        dy = rng.standard_normal(shape)
        np.testing.assert_allclose(host(gpu(to_device(x))), cpu(x), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(host(gpu.backward(to_device(dy))), cpu.backward(dy),
                                   rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(host(gpu.grad_weight), cpu.grad_weight, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(host(gpu.running_mean), cpu.running_mean, rtol=1e-12)
    np.testing.assert_allclose(host(gpu.running_var), cpu.running_var, rtol=1e-12)
    cpu.eval()
    gpu.eval()
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(host(gpu(to_device(x))), cpu(x), rtol=1e-10, atol=1e-12)
    state = gpu.state_dict()
    assert isinstance(state["running_var"], np.ndarray)
    back = gpu.to("cpu")
    assert isinstance(back.running_mean, np.ndarray)


def test_sync_batch_norm_on_device_single_process(rng):
    mpi4py = pytest.importorskip("mpi4py")
    from mpi4py import MPI

    assert mpi4py
    x = rng.standard_normal((6, 3, 40)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    rm, rv = to_device(np.zeros(3, np.float32)), to_device(np.ones(3, np.float32))
    y, mean, invstd = nbn.sync_batch_norm_forward(to_device(x), comm=MPI.COMM_SELF,
                                                  running_mean=rm, running_var=rv)
    y_ref, mean_ref, invstd_ref = nbn.batch_norm_forward(x)
    np.testing.assert_allclose(host(y), y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(host(rm), 0.1 * mean_ref, rtol=1e-5, atol=1e-6)
    dx, dw, db = nbn.sync_batch_norm_backward(to_device(dy), to_device(x), mean, invstd,
                                              comm=MPI.COMM_SELF)
    dx_ref, dw_ref, db_ref = nbn.batch_norm_backward(dy, x, mean_ref, invstd_ref)
    np.testing.assert_allclose(host(dx), dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(host(dw), dw_ref, rtol=1e-5, atol=1e-5)
