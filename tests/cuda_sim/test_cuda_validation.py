"""Bad input on the CUDA path: a clear error before any copy or kernel, nothing written."""
import numpy as np
import pytest

import numbabn as nbn
from devices import channels_last, host, to_device
from numbabn.cuda import backend


@pytest.fixture
def no_kernels(monkeypatch):
    """Make any kernel launch fail the test: errors must come before them."""
    def launched(*args, **kwargs):
        raise AssertionError("a kernel was launched before the error")

    for name in ("_moment_partials", "_sum_partials", "_normalize", "_apply"):
        monkeypatch.setattr(backend, name, launched)


def _buffers(c=3):
    return to_device(np.zeros(c, np.float32)), to_device(np.ones(c, np.float32))


@pytest.mark.parametrize("case", [
    "out_on_host", "out_wrong_dtype", "weight_wrong_shape", "training_eps_zero", "int_x",
    "one_value_per_channel", "running_wrong_shape", "non_contiguous_x", "dy_on_host",
    "channels_last_out",
])
def test_errors_before_any_kernel(rng, no_kernels, case):
    x = rng.standard_normal((4, 3, 40)).astype(np.float32)
    xd = to_device(x)
    rm, rv = _buffers()
    out = to_device(np.full(x.shape, 7.0, np.float32))
    kwargs = dict(training=True)
    expected = ValueError
    if case == "out_on_host":
        kwargs["out"] = np.zeros_like(x)
    elif case == "out_wrong_dtype":
        kwargs["out"] = to_device(np.zeros(x.shape, np.float64))
    elif case == "weight_wrong_shape":
        kwargs["weight"] = np.ones(4, np.float32)
    elif case == "training_eps_zero":
        kwargs["eps"] = 0.0
    elif case == "int_x":
        xd = to_device(np.ones((4, 3, 5), np.int32))
        expected = TypeError
    elif case == "one_value_per_channel":
        xd = to_device(np.ones((1, 3), np.float32))
    elif case == "running_wrong_shape":
        rm = to_device(np.zeros(4, np.float32))
    elif case == "non_contiguous_x":
        xd = to_device(np.ones((4, 3, 80), np.float32))[:, :, ::2]
    elif case == "channels_last_out":
        kwargs["out"] = channels_last(np.full(x.shape, 7.0, np.float32))
    if case == "dy_on_host":
        with pytest.raises(ValueError, match="dy is on the host"):
            nbn.batch_norm_backward(np.ones_like(x), xd, np.zeros(3), np.ones(3))
    else:
        with pytest.raises(expected):
            nbn.batch_norm(xd, rm, rv, **kwargs)
    np.testing.assert_array_equal(host(rm), 0.0)
    np.testing.assert_array_equal(host(rv), 1.0)
    np.testing.assert_array_equal(host(out), 7.0)


def test_host_out_with_device_x_message(rng):
    xd = to_device(rng.standard_normal((4, 3)).astype(np.float32))
    with pytest.raises(ValueError, match="out is on the host but x is a CUDA device array"):
        nbn.batch_norm_forward(xd, out=np.zeros((4, 3), np.float32))


def test_device_x_with_device_cpu_is_refused(rng):
    xd = to_device(rng.standard_normal((4, 3)))
    with pytest.raises(ValueError, match="device='cpu'"):
        nbn.channel_moments(xd, device="cpu")
