"""Group and instance norm on the CUDA backend (device arrays), against their CPU results."""
import numpy as np
import pytest

import numbabn as nbn
from devices import host, to_device


@pytest.mark.parametrize("shape, axis, groups", [((3, 4, 5), 1, 2), ((2, 3, 2, 4), -1, 2),
                                                 ((2, 3, 4, 2), 2, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_group_norm_on_device_matches_cpu(rng, shape, axis, groups, dtype):
    tol = 1e-5 if dtype == np.float32 else 1e-10
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    y, mean, invstd = nbn.group_norm_forward(to_device(x), groups, w, to_device(b), axis=axis)
    y_cpu, mean_cpu, invstd_cpu = nbn.group_norm_forward(x, groups, w, b, axis=axis)
    assert not isinstance(y, np.ndarray) and not isinstance(mean, np.ndarray)
    np.testing.assert_allclose(host(y), y_cpu, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(invstd), invstd_cpu, rtol=tol)
    dx, dw, db = nbn.group_norm_backward(to_device(dy), to_device(x), mean, invstd, groups, w,
                                         axis=axis)
    ref = nbn.group_norm_backward(dy, x, mean_cpu, invstd_cpu, groups, w, axis=axis)
    for got, want in zip((dx, dw, db), ref):
        np.testing.assert_allclose(host(got), want, rtol=tol * 10, atol=tol * 10)
    out = to_device(np.zeros_like(x))
    assert nbn.group_norm(to_device(x), groups, w, b, axis=axis, out=out) is out
    np.testing.assert_allclose(host(out), y_cpu, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape, axis", [((2, 3, 5), 1), ((2, 4, 3), -1)])
def test_instance_norm_on_device_updates_device_buffers(rng, shape, axis):
    x = rng.standard_normal(shape) + 2
    c = shape[axis]
    rm, rv = np.zeros(c), np.ones(c)
    rm_d, rv_d = to_device(rm), to_device(rv)
    y, mean, invstd = nbn.instance_norm_forward(to_device(x), axis=axis, running_mean=rm_d,
                                                running_var=rv_d, momentum=0.3)
    y_cpu, mean_cpu, invstd_cpu = nbn.instance_norm_forward(x, axis=axis, running_mean=rm,
                                                            running_var=rv, momentum=0.3)
    np.testing.assert_allclose(host(y), y_cpu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(host(rm_d), rm, rtol=1e-12)
    np.testing.assert_allclose(host(rv_d), rv, rtol=1e-12)
    dy = rng.standard_normal(shape)
    dx, dw, db = nbn.instance_norm_backward(to_device(dy), to_device(x), mean, invstd,
                                            axis=axis)
    ref = nbn.instance_norm_backward(dy, x, mean_cpu, invstd_cpu, axis=axis)
    for got, want in zip((dx, dw, db), ref):
        np.testing.assert_allclose(host(got), want, rtol=1e-9, atol=1e-10)


def test_layers_on_device_match_cpu(rng):
    for make, shape in ((lambda: nbn.GroupNorm(2, 4, dtype=np.float64), (3, 4, 5)),
                        (lambda: nbn.InstanceNorm1d(4, affine=True, track_running_stats=True,
                                                    dtype=np.float64), (3, 4, 5))):
        cpu, gpu = make(), make().to("cuda")
        x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
        np.testing.assert_allclose(host(gpu(to_device(x))), cpu(x), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(host(gpu.backward(to_device(dy))), cpu.backward(dy),
                                   rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(host(gpu.grad_weight), cpu.grad_weight, rtol=1e-9,
                                   atol=1e-10)
        for key, value in cpu.state_dict().items():
            np.testing.assert_allclose(gpu.state_dict()[key], value, rtol=1e-12)


def test_channels_last_device_memory_is_refused_with_advice(rng):
    from devices import channels_last

    x = channels_last(rng.standard_normal((2, 4, 3, 3)))
    with pytest.raises(ValueError, match="axis=-1"):
        nbn.group_norm(x, 2)
