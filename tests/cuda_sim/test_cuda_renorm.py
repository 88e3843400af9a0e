"""Batch renormalization on the CUDA backend: against the CPU (itself checked against
Ioffe's Algorithm 1 in tests/test_batchrenorm.py) and bit for bit against CUDA batch norm
at rmax = 1, dmax = 0."""
import numpy as np
import pytest

import numbabn as nbn
from devices import channels_last, host, host_channels_last, to_device, tolerance

SHAPES_AXES = [
    ((3, 2, 40), 1),  # planes: one channel split across blocks
    ((37, 5), 1),  # rows, B == 1
    ((6, 7, 3), 1),  # rows, many channels with tiny B
    ((2, 3, 4, 5), -1),  # channels-last
]


def problem(rng, shape, axis, dtype):
    c = shape[axis]
    x = (0.5 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    w = rng.uniform(0.5, 1.5, c).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    rm = (0.5 + 1.5 * rng.standard_normal(c)).astype(np.float32)
    rv = (4.0 * np.exp(1.5 * rng.standard_normal(c))).astype(np.float32)
    return x, w, b, rm, rv


@pytest.mark.parametrize("shape, axis", SHAPES_AXES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_forward_and_backward_match_the_cpu(rng, shape, axis, dtype):
    x, w, b, rm, rv = problem(rng, shape, axis, dtype)
    rm_c, rv_c = rm.copy(), rv.copy()
    rm_d, rv_d = to_device(rm), to_device(rv)  # device buffers: updated in place
    y, mean, invstd, r, d = nbn.batch_renorm_forward(
        to_device(x), rm_d, rv_d, to_device(w), b, momentum=0.3, rmax=1.3, dmax=0.4, axis=axis)
    y_c, mean_c, invstd_c, r_c, d_c = nbn.batch_renorm_forward(
        x, rm_c, rv_c, w, b, momentum=0.3, rmax=1.3, dmax=0.4, axis=axis)
    assert not isinstance(y, np.ndarray) and y.dtype == dtype
    bounds = r_c.dtype.type(1.3), r_c.dtype.type(1 / 1.3)
    assert np.isin(r_c, bounds).any()  # clipping takes part
    tol = tolerance(dtype)
    np.testing.assert_allclose(host(y), y_c, rtol=tol, atol=tol * np.abs(y_c).max())
    for ours, cpu in ((mean, mean_c), (invstd, invstd_c), (r, r_c), (d, d_c)):
        assert ours.dtype == cpu.dtype
        np.testing.assert_allclose(host(ours), cpu, rtol=max(tol, 1e-6), atol=max(tol, 1e-6))
    np.testing.assert_allclose(host(rm_d), rm_c, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(host(rv_d), rv_c, rtol=1e-6)
    dy = rng.standard_normal(shape).astype(dtype)
    grads = nbn.batch_renorm_backward(to_device(dy), to_device(x), mean, invstd, r, d, w,
                                      axis=axis)
    grads_c = nbn.batch_renorm_backward(dy, x, mean_c, invstd_c, r_c, d_c, w, axis=axis)
    for ours, cpu in zip(grads, grads_c):
        assert not isinstance(ours, np.ndarray) and ours.dtype == cpu.dtype
        scale = np.abs(cpu.astype(np.float64)).max()
        np.testing.assert_allclose(host(ours), cpu, rtol=tol * 10, atol=tol * 10 * scale)


@pytest.mark.parametrize("shape, axis", SHAPES_AXES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rmax_1_dmax_0_is_cuda_batch_norm_bit_for_bit(rng, shape, axis, dtype):
    x, w, b, rm, rv = problem(rng, shape, axis, dtype)
    rm_bn, rv_bn = to_device(rm), to_device(rv)
    rm_rn, rv_rn = to_device(rm), to_device(rv)
    xd = to_device(x)
    y_bn, mean_bn, invstd_bn = nbn.batch_norm_forward(
        xd, w, b, running_mean=rm_bn, running_var=rv_bn, momentum=0.2, axis=axis)
    y, mean, invstd, r, d = nbn.batch_renorm_forward(
        xd, rm_rn, rv_rn, w, b, momentum=0.2, rmax=1.0, dmax=0.0, axis=axis)
    for ours, theirs in ((y, y_bn), (mean, mean_bn), (invstd, invstd_bn), (rm_rn, rm_bn),
                         (rv_rn, rv_bn)):
        np.testing.assert_array_equal(host(ours), host(theirs))
    dyd = to_device(rng.standard_normal(shape).astype(dtype))
    for ours, theirs in zip(nbn.batch_renorm_backward(dyd, xd, mean, invstd, r, d, w, axis=axis),
                            nbn.batch_norm_backward(dyd, xd, mean, invstd, w, axis=axis)):
        np.testing.assert_array_equal(host(ours), host(theirs))


def test_host_input_with_device_cuda_and_host_buffers(rng):
    x, w, b, rm, rv = problem(rng, (5, 3, 4), 1, np.float32)
    rm_c, rv_c = rm.copy(), rv.copy()
    y = nbn.batch_renorm(x, rm, rv, w, b, training=True, rmax=1.2, device="cuda")
    y_c = nbn.batch_renorm(x, rm_c, rv_c, w, b, training=True, rmax=1.2)
    assert isinstance(y, np.ndarray)
    np.testing.assert_allclose(y, y_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm, rm_c, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rv, rv_c, rtol=1e-6)
    y_inf = nbn.batch_renorm(x, rm, rv, w, b, device="cuda")
    np.testing.assert_allclose(y_inf, nbn.batch_norm(x, rm, rv, w, b), rtol=1e-5, atol=1e-5)


def test_channels_last_device_input(rng):
    x, w, b, rm, rv = problem(rng, (2, 3, 4, 5), 1, np.float32)
    rm_c, rv_c = rm.copy(), rv.copy()
    y = nbn.batch_renorm(channels_last(x), rm, rv, w, b, training=True, rmax=1.2, dmax=0.3)
    y_c = nbn.batch_renorm(x, rm_c, rv_c, w, b, training=True, rmax=1.2, dmax=0.3)
    np.testing.assert_allclose(host_channels_last(y), y_c, rtol=1e-5, atol=1e-5)


def test_bad_rmax_on_device_writes_nothing(rng):
    x, w, b, rm, rv = problem(rng, (5, 3), 1, np.float32)
    rm_d = to_device(rm)
    with pytest.raises(ValueError, match="rmax"):
        nbn.batch_renorm_forward(to_device(x), rm_d, to_device(rv), rmax=0.5)
    np.testing.assert_array_equal(host(rm_d), rm)


def test_layer_on_device_matches_cpu(rng):
    cpu = nbn.BatchRenorm1d(5, momentum=0.2, rmax=1.2, dmax=0.3, warmup_steps=1,
                            dtype=np.float64)
    gpu = nbn.BatchRenorm1d(5, momentum=0.2, rmax=1.2, dmax=0.3, warmup_steps=1,
                            dtype=np.float64).to("cuda")
    for step in range(3):
        x = rng.standard_normal((9, 5)) * 2 + step
        dy = rng.standard_normal((9, 5))
        np.testing.assert_allclose(host(gpu(to_device(x))), cpu(x), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(host(gpu.backward(to_device(dy))), cpu.backward(dy),
                                   rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(host(gpu.grad_weight), cpu.grad_weight, rtol=1e-9,
                                   atol=1e-10)
    np.testing.assert_allclose(host(gpu.running_var), cpu.running_var, rtol=1e-12)
    gpu.eval(), cpu.eval()
    x = rng.standard_normal((9, 5))
    np.testing.assert_allclose(host(gpu(to_device(x))), cpu(x), rtol=1e-10, atol=1e-12)
    assert isinstance(gpu.state_dict()["running_mean"], np.ndarray)
    gpu.train(), cpu.train()
    gpu(to_device(x)), cpu(x)
    assert gpu.r is not None
    gpu.to("cpu")
    assert gpu.r is None and gpu.d is None and isinstance(gpu.running_mean, np.ndarray)
    np.testing.assert_allclose(gpu(x), cpu(x), rtol=1e-10, atol=1e-12)
