"""Layer rules on the CUDA backend that test_cuda_layers.py does not cover: the cumulative
average, backward through frozen statistics, loading state into a device layer, placement."""
import numpy as np
import pytest

import numbabn as nbn
from devices import host, to_device

TOL = dict(rtol=1e-9, atol=1e-10)


def test_cumulative_average_eval_backward_and_state_on_device(rng):
    shape = (2, 3, 2, 2)
    cpu = nbn.BatchNorm2d(3, momentum=None, dtype=np.float64)
    gpu = nbn.BatchNorm2d(3, momentum=None, dtype=np.float64).to("cuda")
    for step in range(2):
        x = rng.standard_normal(shape) + step
        gpu(to_device(x))
        cpu(x)
    assert gpu.num_batches_tracked == 2
    np.testing.assert_allclose(host(gpu.running_var), cpu.running_var, **TOL)

    cpu.eval()
    gpu.eval()
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    np.testing.assert_allclose(host(gpu(to_device(x))), cpu(x), **TOL)
    # frozen statistics: dx = dy * weight / sqrt(running_var + eps)
    np.testing.assert_allclose(host(gpu.backward(to_device(dy))), cpu.backward(dy), **TOL)
    np.testing.assert_allclose(host(gpu.grad_weight), cpu.grad_weight, **TOL)

    state = {key: np.asarray(value) for key, value in cpu.state_dict().items()}
    state["running_mean"] = state["running_mean"] + 1.0
    gpu.load_state_dict(state)
    assert not isinstance(gpu.running_mean, np.ndarray)  # loaded onto the device
    back = gpu.to("cpu")
    for key, value in state.items():
        np.testing.assert_array_equal(back.state_dict()[key], value)


def test_host_input_into_a_device_layer_is_refused(rng):
    bn = nbn.BatchNorm1d(3).to("cuda")
    with pytest.raises(ValueError, match="host array"):
        bn(rng.standard_normal((4, 3)).astype(np.float32))
    assert bn.num_batches_tracked == 0
