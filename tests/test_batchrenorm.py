"""Batch renormalization against a float64 NumPy reference of the paper's Algorithm 1.

The reference (``algorithm1`` below) is written from Ioffe (2017), Algorithm 1, with the
running-variance update of the issue (PyTorch's momentum, unbiased variance); it shares no
code with numbabn.  Gradients are checked against finite differences of the forward with
r and d held constant (the paper's stop-gradient).
"""
import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numbabn as nbn
from conftest import tolerance

DTYPES = [np.float32, np.float64, np.float16]
# One case per loop order of the CPU kernels, serial and parallel (>= 32 Ki elements).
SHAPES_AXES = [
    ((6, 3), 1),  # rows, serial
    ((5, 4, 7), 1),  # rows, B > 1
    ((3, 4, 40), 1),  # blocks, serial
    ((2, 3, 600), 1),  # planes, serial
    ((2, 3, 4, 5), -1),  # channels-last
    ((3000, 24), 1),  # rows, parallel
    ((64, 24, 40), 1),  # blocks, parallel
    ((4, 8, 1200), 1),  # planes, parallel
]


def algorithm1(x, running_mean, running_var, weight, bias, eps, rmax, dmax, momentum, axis=1):
    """Ioffe (2017), Algorithm 1, in float64: ``(y, mu, sigma, r, d, new_mean, new_var)``."""
    x = np.asarray(x, np.float64)
    axis %= x.ndim
    axes = tuple(i for i in range(x.ndim) if i != axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    m = x.size // x.shape[axis]
    mu = x.mean(axis=axes)
    var = ((x - mu.reshape(shape)) ** 2).sum(axis=axes) / m
    sigma = np.sqrt(var + eps)
    rm = np.asarray(running_mean, np.float64)
    rs = np.sqrt(np.asarray(running_var, np.float64) + eps)
    r = np.clip(sigma / rs, 1.0 / rmax, rmax)  # stop_gradient(clip(σ_B / σ))
    d = np.clip((mu - rm) / rs, -dmax, dmax)  # stop_gradient(clip((μ_B − μ) / σ))
    xhat = (x - mu.reshape(shape)) / sigma.reshape(shape) * r.reshape(shape) + d.reshape(shape)
    gamma = np.ones_like(mu) if weight is None else np.asarray(weight, np.float64)
    beta = np.zeros_like(mu) if bias is None else np.asarray(bias, np.float64)
    y = gamma.reshape(shape) * xhat + beta.reshape(shape)
    new_mean = rm + momentum * (mu - rm)
    new_var = np.asarray(running_var, np.float64) + momentum * (
        var * m / (m - 1) - np.asarray(running_var, np.float64))
    return y, mu, sigma, r, d, new_mean, new_var


def problem(rng, shape, axis, dtype, spread=1.0):
    """Data, parameters and running buffers whose statistics differ from the batch's."""
    c = shape[axis]
    x = (0.5 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    w = rng.uniform(0.5, 1.5, c).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    rm = (0.5 + spread * rng.standard_normal(c)).astype(np.float32)
    rv = (4.0 * np.exp(spread * rng.standard_normal(c))).astype(np.float32)
    return x, w, b, rm, rv


# ---------------------------------------------------------------- forward against Algorithm 1


@pytest.mark.parametrize("shape, axis", SHAPES_AXES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clipping", ["active", "inactive"])
def test_forward_matches_algorithm1(rng, shape, axis, dtype, clipping):
    x, w, b, rm, rv = problem(rng, shape, axis, dtype, spread=1.5)
    rmax, dmax = (1.3, 0.2) if clipping == "active" else (np.inf, np.inf)
    y_ref, mu, sigma, r_ref, d_ref, rm_ref, rv_ref = algorithm1(
        x, rm, rv, w, b, 1e-5, rmax, dmax, 0.2, axis)
    raw_r = sigma / np.sqrt(rv.astype(np.float64) + 1e-5)
    clipped = (raw_r > rmax) | (raw_r < 1 / rmax)
    assert clipped.any() == (clipping == "active")  # the case is what it claims to be
    rm_before = rm.copy()
    y, mean, invstd, r, d = nbn.batch_renorm_forward(
        x, rm, rv, w, b, momentum=0.2, rmax=rmax, dmax=dmax, axis=axis)
    tol = tolerance(dtype)
    stats = np.float64 if dtype == np.float64 else np.float32
    assert y.dtype == dtype and y.shape == x.shape
    assert all(v.dtype == stats and v.shape == mu.shape for v in (mean, invstd, r, d))
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol * np.abs(y_ref).max())
    # The statistics are float32 for float16 input: held to float32's tolerance, not y's.
    stol = max(tolerance(stats), 1e-6)
    np.testing.assert_allclose(mean, mu, rtol=stol, atol=stol)
    np.testing.assert_allclose(invstd, 1 / sigma, rtol=stol)
    np.testing.assert_allclose(r, r_ref, rtol=stol)
    np.testing.assert_allclose(d, d_ref, rtol=stol, atol=stol)
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-5)
    assert not np.array_equal(rm, rm_before)


def test_clipping_bounds_are_reached(rng):
    x = rng.standard_normal((50, 3)) * np.array([10.0, 0.1, 1.0]) + np.array([0.0, 0.0, 9.0])
    rm, rv = np.zeros(3), np.ones(3)
    _, _, _, r, d = nbn.batch_renorm_forward(x, rm, rv, rmax=2.0, dmax=1.5)
    np.testing.assert_array_equal(r[:2], [2.0, 0.5])
    assert d[2] == 1.5 and abs(d[0]) < 1.5


def test_several_steps_with_the_running_buffers(rng):
    c = 5
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    rm_ref, rv_ref = rm.astype(np.float64), rv.astype(np.float64)
    w = rng.uniform(0.5, 2.0, c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    clipped_steps = 0
    for step in range(8):
        x = (3.0 + 2.0 * rng.standard_normal((4, c, 6))).astype(np.float32)  # small batches
        y_ref, _, sigma, r_ref, d_ref, rm_ref, rv_ref = algorithm1(
            x, rm_ref, rv_ref, w, b, 1e-5, 1.5, 1.0, 0.3)
        raw = sigma / np.sqrt(rv + 1e-5)
        clipped_steps += bool(((raw > 1.5) | (raw < 1 / 1.5)).any())
        y = nbn.batch_renorm(x, rm, rv, w, b, training=True, momentum=0.3, rmax=1.5, dmax=1.0)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(rm, rm_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rv, rv_ref, rtol=1e-5)
    assert 0 < clipped_steps < 8  # both regimes visited


def test_unclipped_training_output_is_the_inference_transform(rng):
    """With no clipping, y = γ (x − μ̂)/σ̂ + β: inference with the old buffers."""
    x, w, b, rm, rv = problem(rng, (20, 4, 3), 1, np.float64)
    y_infer = nbn.batch_norm(x, rm, rv, w, b, training=False)
    y = nbn.batch_renorm(x, rm.copy(), rv.copy(), w, b, training=True, rmax=np.inf, dmax=np.inf)
    np.testing.assert_allclose(y, y_infer, rtol=1e-10, atol=1e-10)


def test_large_offset_keeps_its_variance(rng):
    x = (1e4 + rng.standard_normal((256, 3, 16))).astype(np.float32)
    rm, rv = np.full(3, 1e4, np.float32), np.ones(3, np.float32)
    y, mean, invstd, r, d = nbn.batch_renorm_forward(x, rm, rv)
    y_ref, mu, sigma, r_ref, d_ref, _, _ = algorithm1(x, np.full(3, 1e4), np.ones(3), None, None,
                                                      1e-5, 3.0, 5.0, 0.1)
    np.testing.assert_allclose(invstd, 1 / sigma, rtol=1e-6)
    np.testing.assert_allclose(r, r_ref, rtol=1e-6)
    np.testing.assert_allclose(y, y_ref, atol=1e-4)


def test_inference_is_batch_norm(rng):
    x, w, b, rm, rv = problem(rng, (7, 3, 5), 1, np.float32)
    np.testing.assert_array_equal(
        nbn.batch_renorm(x, rm, rv, w, b), nbn.batch_norm(x, rm, rv, w, b))


def test_nan_stays_in_its_channel(rng):
    x, w, b, rm, rv = problem(rng, (8, 3, 4), 1, np.float32)
    x[2, 1, 3] = np.nan
    y, _, _, r, d = nbn.batch_renorm_forward(x, rm, rv, w, b)
    assert np.isnan(y[:, 1]).all() and np.isnan(r[1]) and np.isnan(d[1])
    assert np.isfinite(y[:, [0, 2]]).all()
    assert np.isnan(rm[1]) and np.isfinite(rm[[0, 2]]).all()


# ---------------------------------------------------------------- rmax = 1, dmax = 0 is batch norm


@pytest.mark.parametrize("shape, axis", SHAPES_AXES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_rmax_1_dmax_0_is_batch_norm_bit_for_bit(rng, shape, axis, dtype, affine):
    x, w, b, rm, rv = problem(rng, shape, axis, dtype)
    if not affine:
        w = b = None
    rm_bn, rv_bn = rm.copy(), rv.copy()
    y_bn, mean_bn, invstd_bn = nbn.batch_norm_forward(
        x, w, b, running_mean=rm_bn, running_var=rv_bn, momentum=0.2, axis=axis)
    y, mean, invstd, r, d = nbn.batch_renorm_forward(
        x, rm, rv, w, b, momentum=0.2, rmax=1.0, dmax=0.0, axis=axis)
    for ours, theirs in ((y, y_bn), (mean, mean_bn), (invstd, invstd_bn), (rm, rm_bn),
                         (rv, rv_bn)):
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)
    assert (r == 1).all() and (d == 0).all()
    dy = rng.standard_normal(shape).astype(dtype)
    for ours, theirs in zip(nbn.batch_renorm_backward(dy, x, mean, invstd, r, d, w, axis=axis),
                            nbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis)):
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)


def test_in_place_and_out(rng):
    x, w, b, rm, rv = problem(rng, (9, 4, 20), 1, np.float32)
    strided = np.asfortranarray(x)  # non-contiguous input: the same bits
    expected = nbn.batch_renorm(x, rm.copy(), rv.copy(), w, b, training=True, rmax=1.2, dmax=0.3)
    out = np.empty_like(x)
    assert nbn.batch_renorm(x, rm.copy(), rv.copy(), w, b, True, out=out, rmax=1.2,
                            dmax=0.3) is out
    np.testing.assert_array_equal(out, expected)
    nbn.batch_renorm(x, rm.copy(), rv.copy(), w, b, True, out=x, rmax=1.2, dmax=0.3)
    np.testing.assert_array_equal(x, expected)
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(
        nbn.batch_renorm(strided, rm.copy(), rv.copy(), w, b, True, rmax=1.2, dmax=0.3), expected)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("shape", [(4, 8, 1200), (3000, 24), (64, 24, 40)])
def test_results_do_not_depend_on_the_thread_count(rng, shape):
    x, w, b, rm, rv = problem(rng, shape, 1, np.float32)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            results.append(nbn.batch_renorm_forward(x, rm.copy(), rv.copy(), w, b, rmax=1.1))
    finally:
        numba.set_num_threads(before)
    for a, b_ in zip(*results):
        np.testing.assert_array_equal(a, b_)


# ---------------------------------------------------------------- backward


def _fd_gradients(x, w, b, r, d, dy, eps=1e-5, h=1e-6):
    """Finite differences of L = Σ dy·y with r and d constants (the stop-gradient)."""
    def loss(x_, w_, b_):
        mu = x_.mean(axis=0)
        sigma = np.sqrt(((x_ - mu) ** 2).mean(axis=0) + eps)
        return float((dy * (w_ * ((x_ - mu) / sigma * r + d) + b_)).sum())

    grads = []
    for target in (x, w, b):
        g = np.zeros_like(target)
        for i in np.ndindex(target.shape):
            old = target[i]
            target[i] = old + h
            up = loss(x, w, b)
            target[i] = old - h
            down = loss(x, w, b)
            target[i] = old
            g[i] = (up - down) / (2 * h)
        grads.append(g)
    return grads


@pytest.mark.parametrize("rmax, dmax", [(1.2, 0.3), (np.inf, np.inf), (3.0, 5.0)])
def test_gradients_match_finite_differences(rng, rmax, dmax):
    x, w, b, rm, rv = problem(rng, (7, 3), 1, np.float64, spread=1.5)
    rm, rv = rm.astype(np.float64), rv.astype(np.float64)
    _, mean, invstd, r, d = nbn.batch_renorm_forward(x, rm, rv, w, b, rmax=rmax, dmax=dmax)
    dy = rng.standard_normal(x.shape)
    dx, dw, db = nbn.batch_renorm_backward(dy, x, mean, invstd, r, d, w)
    fd = _fd_gradients(x.copy(), w.copy(), b.copy(), r, d, dy)
    for ours, numeric in zip((dx, dw, db), fd):
        np.testing.assert_allclose(ours, numeric, rtol=1e-6, atol=1e-7)
    assert not np.allclose(r, 1.0)  # r takes part


@pytest.mark.parametrize("shape, axis", SHAPES_AXES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_matches_the_formula(rng, shape, axis, dtype):
    x, w, b, rm, rv = problem(rng, shape, axis, dtype, spread=1.5)
    _, mean, invstd, r, d = nbn.batch_renorm_forward(x, rm, rv, w, b, rmax=1.3, dmax=0.4,
                                                     axis=axis)
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = nbn.batch_renorm_backward(dy, x, mean, invstd, r, d, w, axis=axis)
    # The formulas, in float64, from the saved statistics.
    ax = axis % x.ndim
    axes = tuple(i for i in range(x.ndim) if i != ax)
    shp = [1] * x.ndim
    shp[ax] = -1
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    mu, inv = mean.astype(np.float64).reshape(shp), invstd.astype(np.float64).reshape(shp)
    r64, d64 = r.astype(np.float64).reshape(shp), d.astype(np.float64).reshape(shp)
    xhat = (x64 - mu) * inv
    mean_dy = dy64.mean(axis=axes, keepdims=True)
    mean_dy_xhat = (dy64 * xhat).mean(axis=axes, keepdims=True)
    dx_ref = w.astype(np.float64).reshape(shp) * r64 * inv * (dy64 - mean_dy - xhat * mean_dy_xhat)
    dw_ref = (dy64 * (xhat * r64 + d64)).sum(axis=axes)
    tol = tolerance(dtype)
    scale = np.abs(dx_ref).max()
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(dw, dw_ref, rtol=tol * 10, atol=tol * np.abs(dw_ref).max())
    np.testing.assert_allclose(db, dy64.sum(axis=axes), rtol=tol * 10, atol=tol * 10)
    assert dw.dtype == w.dtype and db.dtype == w.dtype


def test_backward_without_weight_has_the_stats_dtype(rng):
    x, _, _, rm, rv = problem(rng, (6, 2, 3), 1, np.float16)
    _, mean, invstd, r, d = nbn.batch_renorm_forward(x, rm, rv)
    dx, dw, db = nbn.batch_renorm_backward(np.ones_like(x), x, mean, invstd, r, d)
    assert dx.dtype == np.float16 and dw.dtype == np.float32 and db.dtype == np.float32


# ---------------------------------------------------------------- bad input, nothing written


@pytest.mark.parametrize("kwargs, match", [
    ({"rmax": 0.5}, "rmax must be >= 1"),
    ({"rmax": float("nan")}, "rmax must be >= 1"),
    ({"dmax": -0.1}, "dmax must be >= 0"),
    ({"dmax": float("nan")}, "dmax must be >= 0"),
    ({"eps": 0.0}, "eps must be positive during training"),
    ({"eps": -1.0}, "eps must be positive during training"),
])
def test_bad_parameters_raise_before_any_write(rng, kwargs, match):
    x, w, b, rm, rv = problem(rng, (5, 3), 1, np.float32)
    rm0, rv0 = rm.copy(), rv.copy()
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match=match):
        nbn.batch_renorm_forward(x, rm, rv, w, b, out=out, **kwargs)
    with pytest.raises(ValueError, match=match):
        nbn.batch_renorm(x, rm, rv, w, b, True, out=out, **kwargs)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    assert (out == 7.0).all()


def test_parameter_types(rng):
    x, _, _, rm, rv = problem(rng, (5, 3), 1, np.float32)
    with pytest.raises(TypeError, match="rmax"):
        nbn.batch_renorm_forward(x, rm, rv, rmax="3")
    with pytest.raises(TypeError, match="dmax"):
        nbn.batch_renorm_forward(x, rm, rv, dmax=True)
    with pytest.raises(TypeError):
        nbn.batch_renorm_forward(x.astype(np.int32), rm, rv)
    assert nbn.batch_renorm_forward(x, rm, rv, rmax=1, dmax=0)[0].dtype == np.float32


def test_running_buffers_are_required(rng):
    x, _, _, rm, rv = problem(rng, (5, 3), 1, np.float32)
    for args in ((None, None), (rm, None), (None, rv)):
        with pytest.raises(ValueError, match="running_mean and running_var"):
            nbn.batch_renorm_forward(x, *args)
        with pytest.raises(ValueError, match="running_mean and running_var"):
            nbn.batch_renorm(x, *args, training=True)
        with pytest.raises(ValueError, match="running_mean and running_var"):
            nbn.batch_renorm(x, *args, training=False)


def test_shape_checks_before_any_write(rng):
    x, w, b, rm, rv = problem(rng, (5, 3), 1, np.float32)
    rm0 = rm.copy()
    with pytest.raises(ValueError, match="weight"):
        nbn.batch_renorm_forward(x, rm, rv, w[:2], b)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nbn.batch_renorm_forward(x[:1], rm, rv)
    ro = rv.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        nbn.batch_renorm_forward(x, rm, ro)
    np.testing.assert_array_equal(rm, rm0)
    _, mean, invstd, r, d = nbn.batch_renorm_forward(x, rm, rv)
    with pytest.raises(ValueError, match="r and d are required"):
        nbn.batch_renorm_backward(x, x, mean, invstd, None, d)
    with pytest.raises(ValueError, match="shape"):
        nbn.batch_renorm_backward(x, x, mean, invstd, r[:2], d)


# ---------------------------------------------------------------- layers


def test_layer_trains_like_the_functional_api(rng):
    x, _, _, _, _ = problem(rng, (6, 4, 5), 1, np.float32)
    layer = nbn.BatchRenorm1d(4, momentum=0.2, rmax=1.5, dmax=0.5)
    layer.weight[...] = rng.uniform(0.5, 1.5, 4)
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()
    y = layer(x)
    y_f, mean, invstd, r, d = nbn.batch_renorm_forward(
        x, rm, rv, layer.weight, layer.bias, momentum=0.2, rmax=1.5, dmax=0.5)
    np.testing.assert_array_equal(y, y_f)
    np.testing.assert_array_equal(layer.running_mean, rm)
    np.testing.assert_array_equal(layer.r, r)
    assert layer.num_batches_tracked == 1
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = layer.backward(dy)
    dx_f, dw_f, db_f = nbn.batch_renorm_backward(dy, x, mean, invstd, r, d, layer.weight)
    np.testing.assert_array_equal(dx, dx_f)
    np.testing.assert_array_equal(layer.grad_weight, dw_f)
    np.testing.assert_array_equal(layer.grad_bias, db_f)


def test_warmup_steps_are_batch_norm_then_renorm(rng):
    renorm = nbn.BatchRenorm1d(3, rmax=1.1, dmax=0.1, warmup_steps=2)
    bn = nbn.BatchNorm1d(3)
    for step in range(4):
        x = (step + 2.0 * rng.standard_normal((5, 3))).astype(np.float32)
        y, y_bn = renorm(x), bn(x)
        if step < 2:
            np.testing.assert_array_equal(y, y_bn)
            assert (renorm.r == 1).all() and (renorm.d == 0).all()
        else:
            assert not np.allclose(y, y_bn)
        np.testing.assert_array_equal(renorm.running_mean, bn.running_mean)
        np.testing.assert_array_equal(renorm.running_var, bn.running_var)


def test_rmax_dmax_are_checked_attributes():
    layer = nbn.BatchRenorm2d(2)
    assert (layer.rmax, layer.dmax, layer.warmup_steps) == (3.0, 5.0, 0)
    layer.rmax, layer.dmax = 2, 1  # a schedule ramping them
    assert (layer.rmax, layer.dmax) == (2.0, 1.0)
    # ... which the next forward uses: batch statistics far from the running ones, clipped.
    x = (5.0 + 4.0 * np.random.default_rng(0).standard_normal((8, 2, 3, 3))).astype(np.float32)
    ramp = nbn.BatchRenorm2d(2, rmax=1.0, dmax=0.0)
    ramp.rmax, ramp.dmax = 1.1, 0.1
    ramp(x)
    expected = nbn.batch_renorm_forward(x, np.zeros(2, np.float32), np.ones(2, np.float32),
                                        np.ones(2, np.float32), np.zeros(2, np.float32),
                                        rmax=1.1, dmax=0.1)
    np.testing.assert_array_equal(ramp.r, expected[3])
    np.testing.assert_array_equal(ramp.d, expected[4])
    assert (ramp.r == np.float32(1.1)).all() and (ramp.d == np.float32(0.1)).all()
    with pytest.raises(ValueError, match="rmax"):
        layer.rmax = 0.9
    with pytest.raises(ValueError, match="dmax"):
        layer.dmax = -1
    assert (layer.rmax, layer.dmax) == (2.0, 1.0)
    with pytest.raises(ValueError, match="rmax"):
        nbn.BatchRenorm1d(2, rmax=0.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        nbn.BatchRenorm1d(2, warmup_steps=-1)


def test_eval_is_batch_norm_inference(rng):
    layer = nbn.BatchRenorm2d(3)
    bn = nbn.BatchNorm2d(3)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    layer(x), bn(x)
    layer.eval(), bn.eval()
    np.testing.assert_array_equal(layer(x), bn(x))
    dy = np.ones_like(x)
    np.testing.assert_array_equal(layer.backward(dy), bn.backward(dy))
    np.testing.assert_array_equal(layer.grad_weight, bn.grad_weight)


def test_state_dict_is_batch_norms(rng, tmp_path):
    layer = nbn.BatchRenorm1d(4, warmup_steps=3)
    bn = nbn.BatchNorm1d(4)
    layer(rng.standard_normal((8, 4)).astype(np.float32))
    assert list(layer.state_dict()) == list(bn.state_dict())
    bn.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(bn.running_mean, layer.running_mean)
    nbn.save(tmp_path / "renorm.npz", layer)
    other = nbn.BatchRenorm1d(4, warmup_steps=3)
    other.load_state_dict(nbn.load(tmp_path / "renorm.npz"))
    assert other.num_batches_tracked == 1  # the warm-up count resumes
    # Loaded at the end of its warm-up, a layer renormalizes from its next batch on.
    state = layer.state_dict()
    state["num_batches_tracked"] = np.array(3, np.int64)
    done = nbn.BatchRenorm1d(4, rmax=1.1, dmax=0.1, warmup_steps=3)
    done.load_state_dict(state)
    x = (3.0 + 2.0 * rng.standard_normal((8, 4))).astype(np.float32)
    bn.load_state_dict(state)
    assert not np.allclose(done(x), bn(x))
    assert (done.r != 1).any()


def test_layer_input_checks_and_momentum_none(rng):
    with pytest.raises(ValueError, match="4D"):
        nbn.BatchRenorm2d(3)(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="2D or 3D"):
        nbn.BatchRenorm1d(3)(np.zeros((2, 3, 1, 1), np.float32))
    with pytest.raises(ValueError, match="5D"):
        nbn.BatchRenorm3d(3)(np.zeros((2, 3, 1, 1), np.float32))
    layer = nbn.BatchRenorm1d(2, momentum=None)
    xs = [rng.standard_normal((4, 2)).astype(np.float32) + k for k in range(3)]
    for x in xs:
        layer(x)
    np.testing.assert_allclose(layer.running_mean, np.mean([x.mean(0) for x in xs], axis=0),
                               rtol=1e-6)
    with pytest.raises(RuntimeError):
        nbn.BatchRenorm1d(2).backward(np.zeros((4, 2), np.float32))
    assert "rmax=3.0" in repr(nbn.BatchRenorm1d(2))


def test_failed_forward_changes_nothing(rng):
    layer = nbn.BatchRenorm1d(3)
    layer.rmax = 1.0
    with pytest.raises(ValueError):
        layer(np.zeros((1, 3), np.float32))
    assert layer.num_batches_tracked == 0 and (layer.running_mean == 0).all()


def test_cuda_finalize_kernel_compiles_to_ptx(monkeypatch):
    """The CUDA renorm finalize compiles for sm_90 (skipped without NVIDIA's compiler libraries;
    the simulator suite runs it, tests/cuda_sim/test_cuda_renorm.py)."""
    import types

    numba_types = pytest.importorskip("numba.types")
    from numbabn.cuda import _runtime

    if _runtime.SIMULATED:
        pytest.skip("the simulator does not compile")
    import numba.cuda.dispatcher as dispatcher

    from numbabn.cuda import renorm

    monkeypatch.setattr(dispatcher, "get_current_device",
                        lambda: types.SimpleNamespace(compute_capability=(9, 0)))
    f16, f32, f64 = numba_types.float16, numba_types.float32, numba_types.float64
    part = numba_types.Array(f64, 2, "C")
    vec = lambda t: numba_types.Array(t, 1, "A")  # noqa: E731
    args = (part, part, part, numba_types.int64, f64, f64, f64, f64, vec(f32), vec(f32),
            vec(f16), numba_types.boolean, vec(f64), numba_types.boolean,
            numba_types.Array(f32, 2, "C"), part)
    try:
        _runtime.cuda.compile_ptx(lambda a: None, numba_types.void(vec(f32)), cc=(9, 0))
    except Exception as err:  # NVVM / NVRTC libraries not installed
        pytest.skip(f"no CUDA compiler libraries here: {type(err).__name__}: {err}"[:200])
    ptx, _ = _runtime.cuda.compile_ptx(renorm.renorm_stats.py_func, numba_types.void(*args),
                                       cc=(9, 0))
    assert ".entry" in ptx


def test_empty_batch_is_batch_norms(rng):
    """N = 0 in training: an empty result and untouched buffers, as batch norm and PyTorch."""
    x = np.empty((0, 3, 4), np.float32)
    rm, rv = np.full(3, 0.5, np.float32), np.full(3, 2.0, np.float32)
    y, mean, invstd, r, d = nbn.batch_renorm_forward(x, rm, rv)
    y_bn, mean_bn, _ = nbn.batch_norm_forward(x, running_mean=rm.copy(), running_var=rv.copy())
    assert y.shape == x.shape and (rm == 0.5).all() and (rv == 2.0).all()
    np.testing.assert_array_equal(mean, mean_bn)
    assert np.isnan(r).all() and np.isnan(d).all()
    dx, dw, db = nbn.batch_renorm_backward(x, x, mean, invstd, r, d, np.ones(3, np.float32))
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dw, 0)
    np.testing.assert_array_equal(db, 0)


@given(
    shape=st.lists(st.integers(1, 7), min_size=2, max_size=4).map(tuple),
    axis_pick=st.integers(0, 3),
    dtype=st.sampled_from([np.float32, np.float64]),
    buffers=st.sampled_from([np.float16, np.float32, np.float64]),
    offset=st.sampled_from([0.0, 1e4]),
    rmax=st.sampled_from([1.0, 1.5, 3.0, np.inf]),
    dmax=st.sampled_from([0.0, 0.5, 5.0, np.inf]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_algorithm1(shape, axis_pick, dtype, buffers, offset, rmax, dmax, seed):
    axis = 1 + axis_pick % (len(shape) - 1) if axis_pick < 3 else -1
    if np.prod(shape) // shape[axis] < 2:
        shape = (shape[0] + 2,) + shape[1:]
    rng = np.random.default_rng(seed)
    c = shape[axis]
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    w = rng.uniform(0.5, 1.5, c).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    rm = (offset + rng.standard_normal(c)).astype(buffers)
    rv = rng.uniform(0.3, 3.0, c).astype(buffers)
    y_ref, mu, sigma, r_ref, d_ref, rm_ref, rv_ref = algorithm1(
        x, rm, rv, w, b, 1e-5, rmax, dmax, 0.1, axis)
    # float16 buffers are blended in float16 (batch norm's rule: the product (1 - m)·running is
    # rounded to float16 first), so the error scales with the terms, not with the result.
    terms_mean = np.abs(rm.astype(np.float64)) + np.abs(mu)
    terms_var = np.abs(rv.astype(np.float64)) + np.abs(rv_ref)
    y, _, invstd, r, d = nbn.batch_renorm_forward(x, rm, rv, w, b, rmax=rmax, dmax=dmax,
                                                  axis=axis)
    tol = tolerance(dtype)
    close = dict(rtol=tol, atol=tol)  # the reference sees the same rounded x and buffers
    np.testing.assert_allclose(invstd, 1 / sigma, **close)
    np.testing.assert_allclose(r, r_ref, **close)
    np.testing.assert_allclose(d, d_ref, **close)
    np.testing.assert_allclose(y, y_ref, rtol=close["rtol"],
                               atol=close["atol"] * max(1.0, np.abs(y_ref).max()))
    buffer_tol = 2e-3 if buffers == np.float16 else 1e-6
    np.testing.assert_array_less(np.abs(rm - rm_ref), buffer_tol * terms_mean + 1e-300)
    np.testing.assert_array_less(np.abs(rv - rv_ref), buffer_tol * terms_var + 1e-300)
