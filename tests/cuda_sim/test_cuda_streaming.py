"""ChannelMoments.update with CUDA device arrays (simulator or GPU) equals the host result."""
import numpy as np
import pytest

import numbabn as nbn
from devices import channels_last, host, to_device

RTOL = 1e-12


def offset_data(rng, shape, dtype=np.float64):
    return (1e4 + rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_device_batches_equal_one_shot(rng, dtype):
    x = offset_data(rng, (12, 3, 5, 4), dtype)
    acc = nbn.ChannelMoments()
    acc.update(to_device(x[:5])).update(x[5:7]).update(to_device(x[7:]))  # device and host mixed
    mean, var = nbn.channel_moments(x.astype(np.float64))
    assert acc.count == 12 * 20
    np.testing.assert_allclose(acc.mean, mean, rtol=RTOL)
    np.testing.assert_allclose(acc.var(), var, rtol=RTOL if dtype == np.float64 else 1e-10)


def test_channels_last_device_batch(rng):
    x = offset_data(rng, (6, 3, 4, 4))
    acc = nbn.ChannelMoments().update(channels_last(x))
    np.testing.assert_allclose(acc.var(), nbn.channel_moments(x)[1], rtol=RTOL)


def test_device_batch_with_wrong_channels_leaves_state(rng):
    acc = nbn.ChannelMoments().update(to_device(offset_data(rng, (4, 3))))
    before = acc.state()
    with pytest.raises(ValueError, match="channels"):
        acc.update(to_device(np.zeros((4, 5))))
    with pytest.raises(TypeError):
        acc.update(to_device(np.zeros((4, 3), np.int32)))
    np.testing.assert_array_equal(acc.state()["m2"], before["m2"])
    assert acc.count == 4


def test_to_running_on_a_device_layer(rng):
    x = offset_data(rng, (8, 3, 5))
    layer = nbn.BatchNorm1d(3, dtype=np.float64).to("cuda")
    nbn.ChannelMoments().update(to_device(x)).to_running(layer)
    count = 40
    mean = x.mean(axis=(0, 2))
    var = ((x - mean[:, None]) ** 2).sum(axis=(0, 2)) / (count - 1)
    np.testing.assert_allclose(host(layer.running_mean), mean, rtol=1e-12)
    np.testing.assert_allclose(host(layer.running_var), var, rtol=1e-10)


def test_device_batches_are_reduced_on_the_device(rng, monkeypatch):
    """A device batch never goes through the CPU backend (no copy to the host)."""
    from numbabn.cpu import backend as cpu_backend

    def on_host(*args, **kwargs):
        raise AssertionError("a device batch was reduced by the CPU backend")

    monkeypatch.setattr(cpu_backend, "stream_moments", on_host)
    x = offset_data(rng, (6, 3, 4, 4))
    acc = nbn.ChannelMoments().update(to_device(x)).update(channels_last(x))
    assert acc.count == 2 * 6 * 16
