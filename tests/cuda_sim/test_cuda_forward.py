"""CUDA forward, inference and moments against the float64 reference."""
import numpy as np
import pytest

import numbabn as nbn
import reference as ref

from numbabn.cuda import _grid, config
from numbabn.cuda import _runtime as rt
from numbabn._validate import layout
from devices import channels_last, host, host_channels_last, to_device, tolerance

# Each shape exercises one loop order with several blocks (see test_shapes_span_blocks).
SHAPES_AXES = [
    ((3, 2, 40), 1),  # planes: one channel split across blocks
    ((37, 5), 1),  # rows, B == 1
    ((6, 7, 3), 1),  # rows, many channels with tiny B
    ((2, 3, 4, 5), -1),  # channels-last
]
DTYPES = [np.float32, np.float64, np.float16]


def data(rng, shape, dtype, offset=0.5):
    return (offset + 2.0 * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.skipif(not rt.SIMULATED, reason="launch sizes are patched down only in the simulator")
def test_shapes_span_blocks():
    """The test shapes launch several blocks in the reduction and elementwise grids."""
    for shape, axis in SHAPES_AXES:
        lay = layout(shape, axis)
        if _grid.uses_rows(lay):
            grid, block = _grid.rows(lay.A, lay.C * lay.B)
        else:
            grid, block = _grid.planes(lay)
            assert grid[1] > 1, shape  # a channel split across blocks
        assert grid[0] * grid[1] > 1, shape
        egrid, _ = _grid.elementwise(lay.A, lay.C * lay.B)
        assert egrid[0] * egrid[1] > 1, shape
    assert config.THREADS_PER_BLOCK == 16


@pytest.mark.parametrize("shape, axis", SHAPES_AXES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_train_on_device(rng, shape, axis, dtype):
    x = data(rng, shape, dtype)
    c = shape[axis]
    w = rng.uniform(0.5, 1.5, c).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    rm0 = rng.standard_normal(c).astype(np.float32)
    rv0 = rng.uniform(0.5, 2.0, c).astype(np.float32)
    rm, rv = to_device(rm0), to_device(rv0)
    y, mean, invstd = nbn.batch_norm_forward(
        to_device(x), to_device(w), b, axis=axis, running_mean=rm, running_var=rv, momentum=0.3
    )
    y_ref, mean_ref, invstd_ref, var_unbiased = ref.forward_train(x, w, b, axis=axis)
    tol = tolerance(dtype)
    assert not isinstance(y, np.ndarray) and y.shape == x.shape and y.dtype == dtype
    assert mean.dtype == (np.float64 if dtype == np.float64 else np.float32)
    np.testing.assert_allclose(host(y), y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(mean), mean_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(invstd), invstd_ref, rtol=tol)
    # running buffers: updated in place on the device, unbiased variance
    np.testing.assert_allclose(host(rm), 0.7 * rm0 + 0.3 * mean_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(host(rv), 0.7 * rv0 + 0.3 * var_unbiased, rtol=max(tol, 1e-6))


def test_float32_accuracy_normal_data(rng):
    """<= 1e-6 relative error for float32 on normal data (issue 3)."""
    x = rng.standard_normal((4, 3, 50)).astype(np.float32)
    y, mean, invstd = nbn.batch_norm_forward(to_device(x))
    y_ref, mean_ref, invstd_ref, _ = ref.forward_train(x)
    assert np.max(np.abs(host(y) - y_ref)) / np.max(np.abs(y_ref)) <= 1e-6
    np.testing.assert_allclose(host(invstd), invstd_ref, rtol=1e-6)


@pytest.mark.parametrize("shape, axis", [((40, 2, 60), 1), ((1200, 2), 1)])
def test_variance_of_offset_data(rng, monkeypatch, shape, axis):
    """``1e4 + N(0, 1)`` in float32 keeps its variance to 1e-6 relative (no E[x²]−E[x]²,
    float64 accumulators), through the reductions' main loop of four values a thread
    (smaller shapes give each thread fewer and never reach it)."""
    from numbabn.cuda import reduce

    calls = []
    if rt.SIMULATED:  # device functions are Python there: count the main loop's steps
        add4 = reduce.add4
        monkeypatch.setattr(reduce, "add4", lambda *a: (calls.append(1), add4(*a))[1])
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    _, var = nbn.channel_moments(to_device(x), axis=axis)
    _, var_ref = ref.moments(x, axis)
    np.testing.assert_allclose(host(var), var_ref, rtol=1e-6)
    assert calls or not rt.SIMULATED


@pytest.mark.parametrize("shape, axis", SHAPES_AXES)
@pytest.mark.parametrize("ddof", [0, 1])
def test_channel_moments(rng, shape, axis, ddof):
    x = data(rng, shape, np.float64)
    mean, var = nbn.channel_moments(to_device(x), axis=axis, ddof=ddof)
    mean_ref, var_ref = ref.moments(x, axis, ddof)
    np.testing.assert_allclose(host(mean), mean_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(host(var), var_ref, rtol=1e-10)


@pytest.mark.parametrize("shape, axis", SHAPES_AXES)
@pytest.mark.parametrize("device_buffers", [True, False])
def test_inference(rng, shape, axis, device_buffers):
    x = data(rng, shape, np.float32)
    c = shape[axis]
    rm = rng.standard_normal(c).astype(np.float32)
    rv = rng.uniform(0.5, 2.0, c).astype(np.float32)
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    place = to_device if device_buffers else (lambda a: a)
    y = nbn.batch_norm(to_device(x), place(rm), place(rv), place(w), place(b), axis=axis)
    y_ref = ref.forward_infer(x, rm, rv, w, b, axis=axis)
    np.testing.assert_allclose(host(y), y_ref, rtol=1e-5, atol=1e-5)


def test_host_running_buffers_with_device_x(rng):
    """Host running buffers are updated in place (copied back after the kernels)."""
    x = data(rng, (6, 3, 40), np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    nbn.batch_norm(to_device(x), rm, rv, training=True, momentum=0.5)
    _, mean_ref, _, var_unbiased = ref.forward_train(x)
    np.testing.assert_allclose(rm, 0.5 * mean_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rv, 0.5 + 0.5 * var_unbiased, rtol=1e-6)


def test_numpy_input_with_device_cuda_returns_numpy(rng):
    x = data(rng, (4, 3, 40), np.float32)
    out = np.full_like(x, np.nan)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y = nbn.batch_norm(x, rm, rv, training=True, out=out, device="cuda")
    y_ref, mean_ref, _, _ = ref.forward_train(x)
    assert y is out
    np.testing.assert_allclose(out, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm, 0.1 * mean_ref, rtol=1e-6, atol=1e-6)
    y, mean, invstd = nbn.batch_norm_forward(x, device="cuda")
    assert all(isinstance(a, np.ndarray) for a in (y, mean, invstd))
    mean, var = nbn.channel_moments(x, device="cuda")
    assert isinstance(var, np.ndarray)


@pytest.mark.parametrize("shape, axis", [((3, 2, 40), 1), ((6, 7, 3), 1)])
def test_out_on_device_and_in_place(rng, shape, axis):
    x = data(rng, shape, np.float32)
    y_ref, _, _, _ = ref.forward_train(x, axis=axis)
    out = to_device(np.full_like(x, np.nan))
    y, _, _ = nbn.batch_norm_forward(to_device(x), out=out, axis=axis)
    assert y is out
    np.testing.assert_allclose(host(out), y_ref, rtol=1e-5, atol=1e-5)
    xd = to_device(x)
    y, _, _ = nbn.batch_norm_forward(xd, out=xd, axis=axis)
    np.testing.assert_allclose(host(xd), y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_propagates_to_its_channel_only(rng):
    x = data(rng, (3, 3, 40), np.float32)
    x[1, 1, 7] = np.nan
    rm, rv = to_device(np.zeros(3, np.float32)), to_device(np.ones(3, np.float32))
    y = host(nbn.batch_norm(to_device(x), rm, rv, training=True))
    assert np.isnan(y[:, 1]).all()
    assert np.isfinite(y[:, [0, 2]]).all()
    assert np.isnan(host(rm)[1]) and np.isfinite(host(rm)[[0, 2]]).all()
    xr = data(rng, (37, 5), np.float32)
    xr[30, 2] = np.inf
    y = host(nbn.batch_norm_forward(to_device(xr))[0])
    assert not np.isfinite(y[:, 2]).any() and np.isfinite(y[:, [0, 1, 3, 4]]).all()


def test_welford_and_normalize_interface_for_mpi(rng):
    """welford returns host float64; normalize takes host float64 statistics."""
    from numbabn.cuda import backend

    x = data(rng, (3, 2, 40), np.float32)
    lay = layout(x.shape, 1)
    count, mean, m2 = backend.welford(to_device(x), lay)
    mean_ref, var_ref = ref.moments(x)
    assert count == 120 and mean.dtype == m2.dtype == np.float64
    assert isinstance(mean, np.ndarray) and isinstance(m2, np.ndarray)
    np.testing.assert_allclose(m2 / count, var_ref, rtol=1e-6)
    invstd = 1.0 / np.sqrt(m2 / count + 1e-5)
    y = backend.normalize(to_device(x), lay, mean, invstd, None, None, None)
    np.testing.assert_allclose(host(y), ref.forward_train(x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (5, 2, 40)])
def test_channels_last_memory_without_copy(rng, shape):
    """A (N, C, ...) device array with the channel axis innermost in memory (PyTorch's
    channels_last) is read in place; results keep that memory order."""
    x = data(rng, shape, np.float32)
    w = rng.uniform(0.5, 1.5, shape[1]).astype(np.float32)
    xd = channels_last(x)
    assert not xd.is_c_contiguous()
    rm, rv = to_device(np.zeros(shape[1], np.float32)), to_device(np.ones(shape[1], np.float32))
    y, mean, invstd = nbn.batch_norm_forward(xd, w, running_mean=rm, running_var=rv)
    y_ref, mean_ref, invstd_ref, _ = ref.forward_train(x, w)
    assert y.strides == xd.strides
    np.testing.assert_allclose(host_channels_last(y), y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(host(mean), mean_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(host(rm), 0.1 * mean_ref, rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dw, db = nbn.batch_norm_backward(channels_last(dy), xd, mean, invstd, w)
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, host(mean), host(invstd), w)
    np.testing.assert_allclose(host_channels_last(dx), dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(host(dw), dw_ref, rtol=1e-5, atol=1e-5)
    out = channels_last(np.full(shape, np.nan, np.float32))
    assert nbn.batch_norm(xd, rm, rv, w, out=out) is out
    y_inf = ref.forward_infer(x, host(rm), host(rv), w)
    np.testing.assert_allclose(host_channels_last(out), y_inf, rtol=1e-5, atol=1e-5)
    _, var = nbn.channel_moments(xd)
    np.testing.assert_allclose(host(var), ref.moments(x)[1], rtol=1e-5)
