"""Fused activation and residual add: batch_norm(..., activation=, residual=) and its backward.

The fused calls must equal the unfused composition bit for bit (the add and
the activation are done in x's dtype after the normalized value is rounded,
as the composition does), on every CPU loop order (rows, blocks, planes,
pipelined planes; serial and parallel), and the float64 reference within
tolerance.
"""
import numba
import numpy as np
import pytest

import numbabn as nbn
from numbabn.cpu import _chunks

import reference as ref
from conftest import tolerance

# rows (B < 16), blocks (16 <= B < 512), planes; channels-last; 2-D.
SHAPES = [((40, 6, 3), 1), ((6, 5, 7, 9), 1), ((3, 4, 700), 1), ((5, 3, 4, 6), -1),
          ((50, 7), 1)]
ACTIVATIONS = [(None, 0.01), ("relu", 0.01), ("leaky_relu", 0.2), ("leaky_relu", 0.0)]


def _act(y, activation, slope):
    """The unfused activation, in y's dtype (NumPy's rounding)."""
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "leaky_relu":
        return np.where(y > 0, y, y * y.dtype.type(slope))
    return y


def _mask(dy, y, activation, slope):
    """The unfused gradient through the activation (PyTorch's threshold/leaky backward)."""
    if activation == "relu":
        return np.where(y <= 0, dy.dtype.type(0), dy)
    if activation == "leaky_relu":
        return np.where(y > 0, dy, dy * dy.dtype.type(slope))
    return dy


def _inputs(rng, shape, axis, dtype):
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    z = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    w = rng.standard_normal(c).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    return x, z, dy, w, b


def _check_all(x, z, dy, w, b, axis):
    """Every fused call against its composition, bit for bit."""
    y0, mean, invstd = nbn.batch_norm_forward(x, w, b, axis=axis)
    rm, rv = mean.astype(np.float64), 1.0 / invstd.astype(np.float64) ** 2
    infer0 = nbn.batch_norm(x, rm, rv, w, b, axis=axis)
    for activation, slope in ACTIVATIONS:
        for r in (None, z):
            if activation is None and r is None:
                continue
            kw = dict(activation=activation, negative_slope=slope, residual=r, axis=axis)
            y, m, i = nbn.batch_norm_forward(x, w, b, **kw)
            expected = _act(y0 if r is None else y0 + r, activation, slope)
            np.testing.assert_array_equal(y, expected)
            np.testing.assert_array_equal(m, mean)
            np.testing.assert_array_equal(i, invstd)
            np.testing.assert_array_equal(
                nbn.batch_norm(x, rm, rv, w, b, **kw),
                _act(infer0 if r is None else infer0 + r, activation, slope))
            for training in (True, False):
                g = _mask(dy, y, activation, slope)
                expected = nbn.batch_norm_backward(g, x, mean, invstd, w, axis=axis,
                                                   training=training)
                got = nbn.batch_norm_backward(
                    dy, x, mean, invstd, w, activation=activation, negative_slope=slope, y=y,
                    residual=True, axis=axis, training=training)
                assert len(got) == 4
                for e, f in zip(expected, got):
                    np.testing.assert_array_equal(f, e)
                np.testing.assert_array_equal(got[3], g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis", SHAPES)
def test_fused_equals_composition_serial(rng, monkeypatch, shape, axis, dtype):
    monkeypatch.setattr(_chunks, "SERIAL_MAX_ELEMENTS", 1 << 40)
    _check_all(*_inputs(rng, shape, axis, dtype), axis)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
@pytest.mark.parametrize("shape, axis", SHAPES)
def test_fused_equals_composition_parallel(rng, monkeypatch, shape, axis):
    monkeypatch.setattr(_chunks, "SERIAL_MAX_ELEMENTS", 0)
    _check_all(*_inputs(rng, shape, axis, np.float32), axis)


@pytest.mark.parametrize("one_thread", [True, False])
def test_fused_equals_composition_pipelined_planes(rng, monkeypatch, one_thread):
    # Every channel counts as too large for the cache: the pipelined kernels run.
    monkeypatch.setattr(_chunks, "PIPELINE_MIN_CHANNEL_BYTES", {4: 0, 8: 0})
    monkeypatch.setattr(_chunks, "SERIAL_MAX_ELEMENTS", 1 << 40 if one_thread else 0)
    _check_all(*_inputs(rng, (3, 5, 40000), 1, np.float32), 1)


@pytest.mark.parametrize("activation, slope", ACTIVATIONS)
@pytest.mark.parametrize("shape, axis", [((6, 5, 7, 9), 1), ((40, 6, 3), -1)])
def test_fused_against_float64_reference(rng, shape, axis, activation, slope):
    x, z, dy, w, b = _inputs(rng, shape, axis, np.float64)
    y, mean, invstd = nbn.batch_norm_forward(x, w, b, axis=axis, activation=activation,
                                             negative_slope=slope, residual=z)
    y_ref, mean_ref, invstd_ref, _ = ref.forward_train(x, w, b, axis=axis)
    pre = y_ref + z
    expected = np.where(pre > 0, pre, 0.0 if activation == "relu" else slope * pre)
    if activation is None:
        expected = pre
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)
    dx, dw, db, dz = nbn.batch_norm_backward(
        dy, x, mean, invstd, w, activation=activation, negative_slope=slope, y=y, residual=True,
        axis=axis)
    g = dy if activation is None else np.where(pre > 0, dy, 0.0 if activation == "relu"
                                               else slope * dy)
    for got, exp in zip((dx, dw, db), ref.backward(g, x, mean_ref, invstd_ref, w, axis=axis)):
        np.testing.assert_allclose(got, exp, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dz, g, rtol=0, atol=0)


def test_float16_within_rounding(rng):
    x, z, dy, w, b = _inputs(rng, (6, 4, 5, 5), 1, np.float16)
    y = nbn.batch_norm_forward(x, w, b, activation="relu", residual=z)[0]
    assert y.dtype == np.float16
    y_ref = ref.forward_train(x, w, b)[0] + z.astype(np.float64)
    np.testing.assert_allclose(y, np.maximum(y_ref, 0), rtol=tolerance(np.float16) * 4,
                               atol=tolerance(np.float16) * 4)


def test_large_offset_with_residual(rng):
    x = (1e4 + rng.standard_normal((8, 3, 50))).astype(np.float32)
    z = rng.standard_normal(x.shape).astype(np.float32)
    y = nbn.batch_norm_forward(x, activation="relu", residual=z)[0]
    y_ref = ref.forward_train(x)[0] + z
    np.testing.assert_allclose(y, np.maximum(y_ref, 0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_nan_and_inf_propagate_as_composition(rng, activation):
    x, z, dy, w, b = _inputs(rng, (4, 3, 20), 1, np.float32)
    x[1, 0, 3] = np.nan  # channel 0 all NaN
    z[0, 1, 0] = np.inf
    z[0, 1, 1] = -np.inf
    z[2, 2, 2] = np.nan
    y0, mean, invstd = nbn.batch_norm_forward(x, w, b)
    with np.errstate(invalid="ignore"):
        expected = _act(y0 + z, activation, 0.01)
    y = nbn.batch_norm_forward(x, w, b, activation=activation, residual=z)[0]
    np.testing.assert_array_equal(y, expected)  # NaN == NaN here
    assert np.isnan(y[:, 0]).all() and np.isnan(y[2, 2, 2])
    assert y[0, 1, 0] == np.inf and y[0, 1, 1] == (0 if activation == "relu" else -np.inf)
    # Backward: a NaN output lets dy through for ReLU (PyTorch's threshold_backward).
    with np.errstate(invalid="ignore"):
        expected = nbn.batch_norm_backward(_mask(dy, y, activation, 0.01), x, mean, invstd, w)
    got = nbn.batch_norm_backward(dy, x, mean, invstd, w, activation=activation, y=y)
    for e, f in zip(expected, got):
        np.testing.assert_array_equal(f, e)


@pytest.mark.parametrize("shape, axis", [((6, 5, 7, 9), 1), ((40, 6, 3), 1), ((3, 4, 700), 1)])
def test_in_place(rng, shape, axis):
    x, z, dy, w, b = _inputs(rng, shape, axis, np.float32)
    expected = nbn.batch_norm(x, None, None, w, b, training=True, activation="relu",
                              residual=z, axis=axis)
    xc, zc = x.copy(), z.copy()
    assert nbn.batch_norm(xc, None, None, w, b, training=True, activation="relu", residual=z,
                          axis=axis, out=xc) is xc
    np.testing.assert_array_equal(xc, expected)
    assert nbn.batch_norm(x, None, None, w, b, training=True, activation="relu", residual=zc,
                          axis=axis, out=zc) is zc
    np.testing.assert_array_equal(zc, expected)
    # Backward in place over dy, with the residual's gradient kept apart.
    y, mean, invstd = nbn.batch_norm_forward(x, w, b, axis=axis, activation="relu", residual=z)
    dx, dw, db, dz = nbn.batch_norm_backward(dy, x, mean, invstd, w, activation="relu", y=y,
                                             residual=True, axis=axis)
    dyc = dy.copy()
    got = nbn.batch_norm_backward(dyc, x, mean, invstd, w, activation="relu", y=y,
                                  residual=True, axis=axis, out=dyc)
    assert got[0] is dyc
    for e, f in zip((dx, dw, db, dz), got):
        np.testing.assert_array_equal(f, e)
    # Without an activation the residual's gradient is dy, kept even when out=dy.
    dyc = dy.copy()
    got = nbn.batch_norm_backward(dyc, x, mean, invstd, w, residual=True, axis=axis, out=dyc)
    np.testing.assert_array_equal(got[3], dy)


def test_residual_only_gradient_is_dy(rng):
    x, z, dy, w, b = _inputs(rng, (6, 4, 20), 1, np.float32)
    y, mean, invstd = nbn.batch_norm_forward(x, w, b, residual=z)
    dx, dw, db, dz = nbn.batch_norm_backward(dy, x, mean, invstd, w, residual=True)
    np.testing.assert_array_equal(dz, dy)
    for e, f in zip(nbn.batch_norm_backward(dy, x, mean, invstd, w), (dx, dw, db)):
        np.testing.assert_array_equal(f, e)


def test_checks_before_anything_is_written(rng):
    x, z, dy, w, b = _inputs(rng, (6, 4, 5), 1, np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    out = np.full_like(x, 7.0)
    cases = [
        (ValueError, "activation", dict(activation="gelu")),
        (ValueError, "activation", dict(activation="ReLU")),
        (ValueError, "negative_slope", dict(activation="leaky_relu", negative_slope=-0.1)),
        (ValueError, "negative_slope", dict(activation="leaky_relu", negative_slope=np.nan)),
        (TypeError, "negative_slope", dict(activation="leaky_relu", negative_slope="0.1")),
        (ValueError, "residual", dict(residual=z[:, :, :4])),
        (TypeError, "residual", dict(residual=z.astype(np.float64))),
        (TypeError, "residual", dict(residual=z.astype(np.int32))),
    ]
    for error, match, kw in cases:
        with pytest.raises(error, match=match):
            nbn.batch_norm(x, rm, rv, w, b, training=True, out=out, **kw)
        with pytest.raises(error, match=match):
            nbn.batch_norm_forward(x, w, b, running_mean=rm, running_var=rv, out=out, **kw)
        with pytest.raises(error, match=match):
            nbn.batch_norm(x, rm, rv, w, b, out=out, **kw)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)
    np.testing.assert_array_equal(out, 7.0)
    y, mean, invstd = nbn.batch_norm_forward(x, w, b, activation="relu")
    bad = [
        (ValueError, "y", dict(activation="relu")),
        (ValueError, "y", dict(activation="relu", y=y[:3])),
        (TypeError, "y", dict(activation="relu", y=y.astype(np.float64))),
        (ValueError, "activation", dict(activation="tanh", y=y)),
    ]
    for error, match, kw in bad:
        with pytest.raises(error, match=match):
            nbn.batch_norm_backward(dy, x, mean, invstd, w, out=out, **kw)
    np.testing.assert_array_equal(out, 7.0)


def test_plain_call_unchanged_by_fusion_keywords(rng):
    x, z, dy, w, b = _inputs(rng, (6, 4, 5, 5), 1, np.float32)
    plain = nbn.batch_norm_forward(x, w, b)
    explicit = nbn.batch_norm_forward(x, w, b, activation=None, residual=None)
    for p, e in zip(plain, explicit):
        np.testing.assert_array_equal(p, e)
    grads = nbn.batch_norm_backward(dy, x, plain[1], plain[2], w, y=plain[0])
    assert len(grads) == 3  # y is ignored without an activation


# --- layers ------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu"])
def test_layer_fuses_and_differentiates(rng, activation):
    x, z, dy, w, b = _inputs(rng, (6, 4, 5, 5), 1, np.float32)
    layer = nbn.BatchNorm2d(4, activation=activation, negative_slope=0.1)
    plain = nbn.BatchNorm2d(4)
    y = layer(x, residual=z)
    y0 = plain(x)
    np.testing.assert_array_equal(y, _act(y0 + z, activation, 0.1))
    np.testing.assert_array_equal(layer.running_mean, plain.running_mean)
    np.testing.assert_array_equal(layer.running_var, plain.running_var)
    assert layer.num_batches_tracked == 1
    dx = layer.backward(dy)
    g = _mask(dy, y, activation, 0.1)
    np.testing.assert_array_equal(dx, plain.backward(g))
    np.testing.assert_array_equal(layer.grad_weight, plain.grad_weight)
    np.testing.assert_array_equal(layer.grad_bias, plain.grad_bias)
    np.testing.assert_array_equal(layer.grad_residual, g)
    # Without a residual there is no residual gradient; eval mode fuses too.
    layer(x)
    layer.backward(dy)
    assert layer.grad_residual is None
    plain(x)  # the same running statistics
    layer.eval()
    plain.eval()
    y = layer(x, residual=z)
    np.testing.assert_array_equal(y, _act(plain(x) + z, activation, 0.1))
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dx, plain.backward(_mask(dy, y, activation, 0.1)))
    np.testing.assert_array_equal(layer.grad_residual, _mask(dy, y, activation, 0.1))


def test_layer_checks():
    with pytest.raises(ValueError, match="activation"):
        nbn.BatchNorm1d(3, activation="sigmoid")
    with pytest.raises(ValueError, match="negative_slope"):
        nbn.BatchNorm1d(3, activation="leaky_relu", negative_slope=-1.0)
    layer = nbn.BatchNorm1d(3, activation="relu")
    x = np.ones((4, 3), np.float32)
    x[0] = 0
    with pytest.raises(ValueError, match="residual"):
        layer(x, residual=np.ones((4, 2), np.float32))
    assert layer.num_batches_tracked == 0
    np.testing.assert_array_equal(layer.running_mean, 0)
    with pytest.raises(RuntimeError):
        layer.backward(x)


def test_layer_against_torch(rng):
    torch = pytest.importorskip("torch")
    x, z, dy, w, b = _inputs(rng, (6, 4, 5, 5), 1, np.float64)
    layer = nbn.BatchNorm2d(4, dtype=np.float64, activation="relu")
    tbn = torch.nn.BatchNorm2d(4, dtype=torch.float64)
    tx = torch.from_numpy(x).requires_grad_()
    tz = torch.from_numpy(z).requires_grad_()
    ty = torch.relu(tbn(tx) + tz)
    ty.backward(torch.from_numpy(dy))
    y = layer(x, residual=z)
    dx = layer.backward(dy)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(layer.grad_residual, tz.grad.numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(layer.grad_weight, tbn.weight.grad.numpy(), rtol=1e-9)
    np.testing.assert_allclose(layer.running_var, tbn.running_var.numpy(), rtol=1e-12)


def test_sync_batch_norm_refuses_a_fused_training_forward(rng):
    pytest.importorskip("mpi4py")
    from mpi4py import MPI

    x, z, dy, w, b = _inputs(rng, (6, 4, 5), 1, np.float32)
    # SyncBatchNorm takes no activation argument; one converted from a fusing layer keeps it.
    layer = nbn.SyncBatchNorm.convert(nbn.BatchNorm1d(4, activation="relu"), comm=MPI.COMM_SELF)
    with pytest.raises(NotImplementedError, match="SyncBatchNorm"):
        layer(x)
    assert layer.num_batches_tracked == 0
    plain = nbn.SyncBatchNorm(4, comm=MPI.COMM_SELF)
    with pytest.raises(NotImplementedError):
        plain(x, residual=z)
    np.testing.assert_array_equal(plain(x), nbn.BatchNorm1d(4)(x))  # the plain path works
    layer.eval()  # inference needs no synchronization: it fuses
    np.testing.assert_array_equal(layer(x), np.maximum(nbn.BatchNorm1d(4).eval()(x), 0))


# --- the bench rows ----------------------------------------------------------------------

def test_bench_fused_rows_time_equal_computations():
    """The fused and unfused contenders of `python -m numbabn bench` compute the same thing."""
    from numbabn import _bench, _bench_fused

    case = _bench.parse_shapes("6x4x5x5")[0]
    inp = _bench.Inputs(case, np.float32)
    out, tmp = np.empty_like(inp.x), np.empty_like(inp.x)
    z, y, ops = _bench_fused._ops(inp, out, tmp)
    for op in _bench_fused.FUSED_OPS:
        fused = ops[op]["fused"]()
        fused = fused[0] if isinstance(fused, tuple) else fused
        ops[op]["unfused_out"]()
        np.testing.assert_array_equal(fused, out)
    results = _bench_fused.run([case], np.float32, 0.0, progress=lambda text: None)
    assert [r["op"] for r in results] == list(_bench_fused.FUSED_OPS)
    assert all(r["speedup_vs_unfused"] > 0 for r in results)
    assert "res_relu" in _bench_fused.format_table(results)
