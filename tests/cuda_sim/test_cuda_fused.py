"""Fused activation and residual add on the CUDA backend.

The fused kernels must equal the CUDA composition (batch norm on the device,
then the add and the activation in the data's dtype) bit for bit for float32
and float64, and the float64 reference within tolerance.
"""
import numpy as np
import pytest

import numbabn as nbn
import reference as ref
from devices import channels_last, host, host_channels_last, to_device, tolerance

SHAPES_AXES = [((3, 2, 40), 1), ((37, 5), 1), ((2, 3, 4, 5), -1)]
ACTIVATIONS = [(None, 0.01), ("relu", 0.01), ("leaky_relu", 0.2)]


def _act(y, activation, slope):
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "leaky_relu":
        return np.where(y > 0, y, y * y.dtype.type(slope))
    return y


def _mask(dy, y, activation, slope):
    if activation == "relu":
        return np.where(y <= 0, dy.dtype.type(0), dy)
    if activation == "leaky_relu":
        return np.where(y > 0, dy, dy * dy.dtype.type(slope))
    return dy


def _inputs(rng, shape, axis, dtype):
    x = (0.5 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    z = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    return x, z, dy, rng.uniform(0.5, 1.5, c).astype(dtype), rng.standard_normal(c).astype(dtype)


@pytest.mark.parametrize("activation, slope", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis", SHAPES_AXES)
def test_fused_forward_and_backward_equal_composition(rng, shape, axis, dtype, activation,
                                                      slope):
    x, z, dy, w, b = _inputs(rng, shape, axis, dtype)
    xd, zd, dyd = to_device(x), to_device(z), to_device(dy)
    y0, mean, invstd = nbn.batch_norm_forward(xd, w, b, axis=axis)
    rm = np.zeros(w.size, dtype)
    rv = np.ones(w.size, dtype)
    y, m, i = nbn.batch_norm_forward(xd, w, b, axis=axis, activation=activation,
                                     negative_slope=slope, residual=zd, running_mean=rm,
                                     running_var=rv)
    expected = _act(host(y0) + z, activation, slope)
    np.testing.assert_array_equal(host(y), expected)
    np.testing.assert_array_equal(host(m), host(mean))
    assert rm.any()  # host running buffers updated
    # Against the float64 reference too.
    pre = ref.forward_train(x, w, b, axis=axis)[0] + z
    tol = tolerance(dtype)
    np.testing.assert_allclose(host(y), _act(pre, activation, slope), rtol=tol, atol=tol)
    # Inference.
    infer0 = host(nbn.batch_norm(xd, rm, rv, w, b, axis=axis))
    got = nbn.batch_norm(xd, rm, rv, w, b, axis=axis, activation=activation,
                         negative_slope=slope, residual=zd)
    np.testing.assert_array_equal(host(got), _act(infer0 + z, activation, slope))
    # Backward: through the activation, with the residual's gradient.
    g = _mask(dy, host(y), activation, slope)
    expected = nbn.batch_norm_backward(to_device(g), xd, mean, invstd, w, axis=axis)
    grads = nbn.batch_norm_backward(dyd, xd, mean, invstd, w, activation=activation,
                                    negative_slope=slope, y=y, residual=True, axis=axis)
    assert len(grads) == 4
    for e, f in zip(expected, grads):
        np.testing.assert_array_equal(host(f), host(e))
    np.testing.assert_array_equal(host(grads[3]), g)


def test_fused_channels_last_and_in_place(rng):
    x, z, dy, w, b = _inputs(rng, (2, 3, 4, 5), 1, np.float32)
    xd, zd = channels_last(x), channels_last(z)
    y = nbn.batch_norm(xd, None, None, w, b, training=True, activation="relu", residual=zd)
    expected = np.maximum(host_channels_last(nbn.batch_norm(xd, None, None, w, b,
                                                            training=True)) + z, 0)
    np.testing.assert_array_equal(host_channels_last(y), expected)
    # out= the residual itself.
    got = nbn.batch_norm(xd, None, None, w, b, training=True, activation="relu", residual=zd,
                         out=zd)
    assert got is zd
    np.testing.assert_array_equal(host_channels_last(zd), expected)
    # A residual in another memory order than x is refused before anything runs.
    with pytest.raises(ValueError, match="residual"):
        nbn.batch_norm(xd, None, None, w, b, training=True, residual=to_device(z))


def test_numpy_input_on_cuda_and_nan(rng):
    x, z, dy, w, b = _inputs(rng, (4, 3, 6), 1, np.float32)
    x[0, 1, 2] = np.nan
    z[1, 2, 3] = -np.inf
    y = nbn.batch_norm_forward(x, w, b, activation="relu", residual=z, device="cuda")[0]
    y0 = nbn.batch_norm_forward(x, w, b, device="cuda")[0]
    assert isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y, np.maximum(y0 + z, 0))
    assert np.isnan(y[:, 1]).all() and y[1, 2, 3] == 0
    out = np.full_like(x, 7)
    dx, dw, db, dz = nbn.batch_norm_backward(dy, x, *nbn.batch_norm_forward(x, w, b)[1:], w,
                                             residual=True, device="cuda", out=out)
    assert dx is out and isinstance(dz, np.ndarray)
    np.testing.assert_array_equal(dz, dy)


def test_placement_checks(rng):
    x, z, dy, w, b = _inputs(rng, (4, 3, 6), 1, np.float32)
    xd = to_device(x)
    with pytest.raises(ValueError, match="residual"):
        nbn.batch_norm(xd, None, None, w, b, training=True, residual=z)
    y, mean, invstd = nbn.batch_norm_forward(xd, w, b, activation="relu")
    with pytest.raises(ValueError, match="y"):
        nbn.batch_norm_backward(to_device(dy), xd, mean, invstd, activation="relu", y=host(y))
    with pytest.raises(ValueError, match="y"):
        nbn.batch_norm_backward(to_device(dy), xd, mean, invstd, activation="relu")


def test_layer_on_device(rng):
    x, z, dy, w, b = _inputs(rng, (4, 3, 6), 1, np.float64)
    cpu = nbn.BatchNorm1d(3, dtype=np.float64, activation="leaky_relu", negative_slope=0.1)
    gpu = nbn.BatchNorm1d(3, dtype=np.float64, activation="leaky_relu",
                          negative_slope=0.1).to("cuda")
    np.testing.assert_allclose(host(gpu(to_device(x), residual=to_device(z))),
                               cpu(x, residual=z), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(host(gpu.backward(to_device(dy))), cpu.backward(dy),
                               rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(host(gpu.grad_residual), cpu.grad_residual, rtol=0, atol=0)
