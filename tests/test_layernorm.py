"""Layer norm (functions, kernels, layer) against an independent float64 reference."""
import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numbabn as nbn
import reference_rows as ref
from _rows_common import SHAPES, inputs, tolerance
from numbabn.cpu import rownorm


@pytest.mark.parametrize("shape, k", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_forward_and_backward_match_reference(rng, shape, k, dtype):
    x, dy, nshape, w, b = inputs(rng, shape, k, dtype)
    y, mean, invstd = nbn.layer_norm_forward(x, nshape, w, b)
    y_ref, mean_ref, invstd_ref = ref.layer_norm(x, k, w, b)
    tol = tolerance(dtype)
    stats = np.float64 if dtype == np.float64 else np.float32
    assert y.dtype == dtype and y.shape == x.shape
    assert mean.dtype == invstd.dtype == stats and mean.shape == shape[:len(shape) - k]
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(mean, mean_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=tol, atol=tol)
    dx, dw, db = nbn.layer_norm_backward(dy, x, mean, invstd, nshape, w)
    dx_ref, dw_ref, db_ref = ref.layer_norm_backward(dy, x, mean, invstd, k, w)
    assert dx.dtype == dtype and dw.shape == db.shape == nshape and dw.dtype == dtype
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol)
    # A column sums R = x.size / w.size rows: rounding errors grow like sqrt(R) in absolute terms.
    gtol = tol * max(1, x.size // max(w.size, 1)) ** 0.5
    np.testing.assert_allclose(dw, dw_ref, rtol=tol, atol=gtol)
    np.testing.assert_allclose(db, db_ref, rtol=tol, atol=gtol)


def test_plain_layer_norm_and_int_normalized_shape(rng):
    x = rng.standard_normal((6, 10))
    np.testing.assert_allclose(nbn.layer_norm(x, 10), ref.layer_norm(x, 1)[0], rtol=1e-12,
                               atol=1e-12)
    dx, dw, db = nbn.layer_norm_backward(x, x, *nbn.layer_norm_forward(x, [10])[1:], 10)
    assert dw.dtype == db.dtype == np.float64 and dw.shape == (10,)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_gradients_without_weight_have_the_statistics_dtype(rng, dtype):
    """No weight to take the dtype of: dweight/dbias (and RMS norm's dweight) are float64
    for float64 input, else float32, as the saved statistics."""
    x, dy, nshape, _, _ = inputs(rng, (5, 7), 1, dtype)
    stats = np.float64 if dtype == np.float64 else np.float32
    _, mean, invstd = nbn.layer_norm_forward(x, nshape)
    _, dw, db = nbn.layer_norm_backward(dy, x, mean, invstd, nshape)
    assert dw.dtype == db.dtype == stats
    _, invrms = nbn.rms_norm_forward(x, nshape)
    assert nbn.rms_norm_backward(dy, x, invrms, nshape)[1].dtype == stats


def test_negative_variance_plus_eps_is_nan():
    """eps < 0 is taken as PyTorch takes it: a row whose variance + eps < 0 is NaN, the
    others are normalized."""
    x = np.array([[0.0, 0.2], [0.0, 2.0]])  # variances 0.01 and 1
    y, _, invstd = nbn.layer_norm_forward(x, 2, eps=-0.5)
    assert np.isnan(invstd[0]) and np.isnan(y[0]).all()
    np.testing.assert_allclose(y[1], [-1 / 0.5 ** 0.5, 1 / 0.5 ** 0.5], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_offset(rng, dtype):
    """1e4 + N(0, 1): the statistics and the result stay exact to the dtype's precision."""
    x, dy, nshape, w, b = inputs(rng, (64, 300), 1, dtype, offset=1e4)
    y, mean, invstd = nbn.layer_norm_forward(x, nshape, w, b)
    y_ref, mean_ref, invstd_ref = ref.layer_norm(x, 1, w, b)
    tol = tolerance(dtype)
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    # The saved mean is the float64 mean rounded once to its dtype: within an ulp of ~1e4,
    # far tighter than rtol=tol would be (1e-5 * 1e4 = 0.1, a tenth of sigma).
    np.testing.assert_allclose(mean, mean_ref, rtol=np.finfo(mean.dtype).eps, atol=tol)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=tol)
    # Backward against the reference with the same (saved) statistics.
    dx, dw, db = nbn.layer_norm_backward(dy, x, mean, invstd, nshape, w)
    dx_ref, dw_ref, _ = ref.layer_norm_backward(dy, x, mean, invstd, 1, w)
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(dw, dw_ref, rtol=tol, atol=tol * 64 ** 0.5)


def test_finite_differences():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 2, 4))
    w = rng.uniform(0.5, 1.5, (2, 4))
    b = rng.standard_normal((2, 4))
    dy = rng.standard_normal(x.shape)

    def loss(x_, w_, b_):
        return float((dy * ref.layer_norm(x_, 2, w_, b_)[0]).sum())

    fx, fw, fb = ref.finite_differences(loss, x.copy(), w.copy(), b.copy())
    _, mean, invstd = nbn.layer_norm_forward(x, (2, 4), w, b)
    dx, dw, db = nbn.layer_norm_backward(dy, x, mean, invstd, (2, 4), w)
    np.testing.assert_allclose(dx, fx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, fw, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, fb, rtol=1e-6, atol=1e-7)


@given(
    lead=st.lists(st.integers(0, 6), min_size=0, max_size=2),
    tail=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    dtype=st.sampled_from([np.float32, np.float64]),
    offset=st.sampled_from([0.0, -3.0, 1e4]),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_hypothesis(lead, tail, dtype, offset, affine, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(lead) + tuple(tail)
    k = len(tail)
    x, dy, nshape, w, b = inputs(rng, shape, k, dtype, offset)
    if not affine:
        w = b = None
    y, mean, invstd = nbn.layer_norm_forward(x, nshape, w, b)
    y_ref, mean_ref, invstd_ref = ref.layer_norm(x, k, w, b)
    tol = tolerance(dtype)
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(mean, mean_ref, rtol=np.finfo(mean.dtype).eps, atol=tol)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=tol)
    dx, dw, db = nbn.layer_norm_backward(dy, x, mean, invstd, nshape, w)
    dx_ref, dw_ref, db_ref = ref.layer_norm_backward(dy, x, mean, invstd, k, w)
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol)
    gtol = tol * max(1, int(np.prod(lead))) ** 0.5
    np.testing.assert_allclose(dw, dw_ref, rtol=tol, atol=gtol)
    np.testing.assert_allclose(db, db_ref, rtol=tol, atol=gtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("centered", [True, False])
def test_serial_and_parallel_kernels_are_bit_identical(rng, dtype, centered):
    x = (3 + rng.standard_normal((300, 517))).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    w = rng.uniform(0.5, 1.5, 517).astype(dtype)
    b = rng.standard_normal(517).astype(dtype)
    results = []
    for parallel in (False, True):
        y = np.empty_like(x)
        dx = np.empty_like(x)
        mean, rstd = rownorm.forward(x, w, b, 1e-5, centered, y, parallel)
        dw, db = rownorm.backward(dy, x, mean, rstd, w, centered, dx, parallel)
        results.append((y, mean, rstd, dx, dw, db))
    for a, b_ in zip(*results):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_bits_do_not_depend_on_the_thread_count(rng):
    x = rng.standard_normal((4000, 96)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            y, mean, invstd = nbn.layer_norm_forward(x, 96)
            results.append((y, mean, invstd) + nbn.layer_norm_backward(dy, x, mean, invstd, 96))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(results[0], results[-1]):
        np.testing.assert_array_equal(a, b)


def test_out_and_in_place(rng):
    x, dy, nshape, w, b = inputs(rng, (20, 30), 1, np.float32)
    expected, mean, invstd = nbn.layer_norm_forward(x, nshape, w, b)
    out = np.full_like(x, np.nan)
    assert nbn.layer_norm(x, nshape, w, b, out=out) is out
    np.testing.assert_array_equal(out, expected)
    dx_expected, dw, db = nbn.layer_norm_backward(dy, x, mean, invstd, nshape, w)
    xc = x.copy()
    assert nbn.layer_norm(xc, nshape, w, b, out=xc) is xc
    np.testing.assert_array_equal(xc, expected)
    dyc = dy.copy()
    dx, dw2, db2 = nbn.layer_norm_backward(dyc, x, mean, invstd, nshape, w, out=dyc)
    assert dx is dyc
    np.testing.assert_array_equal(dx, dx_expected)
    np.testing.assert_array_equal(dw2, dw)
    # out= of another memory order, and float16 out=
    out_f = np.asfortranarray(np.empty_like(x))
    nbn.layer_norm(x, nshape, w, b, out=out_f)
    np.testing.assert_array_equal(out_f, expected)
    x16 = x.astype(np.float16)
    out16 = np.empty_like(x16)
    assert nbn.layer_norm(x16, nshape, out=out16) is out16
    np.testing.assert_allclose(out16, ref.layer_norm(x16, 1)[0], rtol=2e-3, atol=2e-3)


def test_non_contiguous_input(rng):
    base = rng.standard_normal((12, 40, 2))
    x = base[::2, :, 1]  # strided rows and elements
    dy = rng.standard_normal(base.shape)[::2, :, 0]
    y, mean, invstd = nbn.layer_norm_forward(x, 40)
    np.testing.assert_allclose(y, ref.layer_norm(x, 1)[0], rtol=1e-12, atol=1e-12)
    xt = base[:, :, 0].T  # transposed: rows are columns in memory
    np.testing.assert_allclose(nbn.layer_norm(xt, 12), ref.layer_norm(xt, 1)[0], rtol=1e-12,
                               atol=1e-12)
    dx, dw, db = nbn.layer_norm_backward(dy, x, mean, invstd, 40)
    np.testing.assert_allclose(dx, ref.layer_norm_backward(dy, x, mean, invstd, 1)[0],
                               rtol=1e-10, atol=1e-12)


def test_one_element_per_row_and_empty_inputs():
    x = np.arange(5.0).reshape(5, 1)
    b = np.array([0.25])
    y, mean, invstd = nbn.layer_norm_forward(x, 1, np.array([2.0]), b)
    np.testing.assert_array_equal(y, np.full((5, 1), 0.25))  # PyTorch: y = bias
    np.testing.assert_array_equal(mean, x[:, 0])
    np.testing.assert_allclose(invstd, 1 / np.sqrt(1e-5))
    dx, dw, db = nbn.layer_norm_backward(np.ones_like(x), x, mean, invstd, 1)
    np.testing.assert_array_equal(dx, 0)
    y, mean, invstd = nbn.layer_norm_forward(np.ones((0, 4), np.float32), 4)
    assert y.shape == (0, 4) and mean.shape == invstd.shape == (0,)
    dx, dw, db = nbn.layer_norm_backward(np.ones((0, 4)), np.ones((0, 4)), np.ones(0),
                                         np.ones(0), 4)
    assert dx.shape == (0, 4)
    np.testing.assert_array_equal(dw, 0)
    np.testing.assert_array_equal(db, 0)
    y, mean, invstd = nbn.layer_norm_forward(np.ones((3, 0)), 0)  # PyTorch: mean 0, invstd NaN
    assert y.shape == (3, 0) and np.all(mean == 0) and np.all(np.isnan(invstd))
    y, mean, invstd = nbn.layer_norm_forward(np.array([3.0]), 1)  # one row, rank 1
    assert mean.shape == () and y[0] == 0


def test_nan_and_inf_propagate_to_their_row_only():
    x = np.ones((4, 6), np.float32) * np.arange(6, dtype=np.float32)
    x[1, 2] = np.nan
    x[2, 3] = np.inf
    y, mean, invstd = nbn.layer_norm_forward(x, 6)
    assert np.all(np.isnan(y[1])) and np.all(np.isnan(y[2]))
    assert np.all(np.isfinite(y[[0, 3]]))
    dx, dw, db = nbn.layer_norm_backward(np.ones_like(x), x, mean, invstd, 6)
    assert np.all(np.isnan(dx[1])) and np.all(np.isfinite(dx[[0, 3]]))


def test_zero_and_negative_eps_as_pytorch():
    x = np.ones((2, 3))
    assert np.all(np.isnan(nbn.layer_norm(x, 3, eps=0.0)))
    x = np.array([[0.0, 2.0]])  # variance 1
    np.testing.assert_allclose(nbn.layer_norm(x, 2, eps=-0.5), [[-np.sqrt(2), np.sqrt(2)]])


def test_errors_before_anything_is_written(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match=r"Given normalized_shape=\[4\], expected input with "
                                         r"shape \[\*, 4\], but got input of size\[4, 5\]"):
        nbn.layer_norm(x, 4, out=out)
    with pytest.raises(ValueError, match=r"normalized_shape=\[2, 4, 5\]"):
        nbn.layer_norm(x, (2, 4, 5), out=out)
    with pytest.raises(ValueError, match="Expected weight to be of same shape"):
        nbn.layer_norm(x, 5, np.ones(4, np.float32), out=out)
    with pytest.raises(ValueError, match="Expected bias to be of same shape"):
        nbn.layer_norm(x, 5, None, np.ones((1, 5), np.float32), out=out)
    with pytest.raises(ValueError, match="at least 1-dimensional"):
        nbn.layer_norm(x, (), out=out)
    with pytest.raises(TypeError, match="floating"):
        nbn.layer_norm(x.astype(np.int32), 5)
    with pytest.raises(TypeError, match="floating"):
        nbn.layer_norm(x, 5, np.ones(5, np.int64), out=out)
    with pytest.raises(TypeError, match="normalized_shape"):
        nbn.layer_norm(x, 5.0, out=out)
    with pytest.raises(TypeError, match="eps"):
        nbn.layer_norm(x, 5, eps="small", out=out)
    with pytest.raises(ValueError, match="out must have dtype"):
        nbn.layer_norm(x, 5, out=out.astype(np.float64))
    _, mean, invstd = nbn.layer_norm_forward(x, 5)
    with pytest.raises(ValueError, match="mean must have shape"):
        nbn.layer_norm_backward(x, x, mean[:3], invstd, 5, out=out)
    with pytest.raises(ValueError, match="dy must have shape"):
        nbn.layer_norm_backward(x[:3], x, mean, invstd, 5, out=out)
    with pytest.raises(TypeError, match="same dtype"):
        nbn.layer_norm_backward(x.astype(np.float64), x, mean, invstd, 5, out=out)
    with pytest.raises(ValueError, match="mean is required"):
        nbn.layer_norm_backward(x, x, None, invstd, 5, out=out)
    np.testing.assert_array_equal(out, 7.0)
    # torch.native_layer_norm's (R, 1) statistics are accepted
    dx, _, _ = nbn.layer_norm_backward(x, x, mean[:, None], invstd[:, None], 5)
    np.testing.assert_array_equal(dx, nbn.layer_norm_backward(x, x, mean, invstd, 5)[0])


# -- the layer ---------------------------------------------------------------------------

def test_layer_forward_backward_and_grads(rng):
    layer = nbn.LayerNorm((3, 8), eps=1e-3, dtype=np.float64)
    layer.weight[...] = rng.uniform(0.5, 1.5, (3, 8))
    layer.bias[...] = rng.standard_normal((3, 8))
    x = rng.standard_normal((5, 3, 8))
    dy = rng.standard_normal(x.shape)
    y = layer(x)
    y_ref, mean, invstd = ref.layer_norm(x, 2, layer.weight, layer.bias, 1e-3)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    layer.eval()  # no running statistics: eval is the same computation
    np.testing.assert_array_equal(layer(x), y)
    dx = layer.backward(dy)
    dx_ref, dw_ref, db_ref = ref.layer_norm_backward(dy, x, mean, invstd, 2, layer.weight)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grad_weight, dw_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grad_bias, db_ref, rtol=1e-10, atol=1e-12)


def test_layer_options_and_errors(rng):
    assert nbn.LayerNorm(4, elementwise_affine=False).state_dict() == {}
    layer = nbn.LayerNorm(4, bias=False)
    assert list(layer.state_dict()) == ["weight"] and layer.bias is None
    layer(np.ones((2, 4), np.float32))
    layer.backward(np.ones((2, 4), np.float32))
    assert layer.grad_weight.shape == (4,) and layer.grad_bias is None
    with pytest.raises(RuntimeError, match="before forward"):
        nbn.LayerNorm(4).backward(np.ones((2, 4)))
    with pytest.raises(ValueError, match="dy must have the shape"):
        layer.backward(np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="Given normalized_shape"):
        layer(np.ones((2, 5), np.float32))
    assert "LayerNorm((4,), eps=1e-05" in repr(nbn.LayerNorm(4))


def test_layer_state_dict_save_and_load(rng, tmp_path):
    layer = nbn.LayerNorm(6)
    layer.weight[...] = rng.standard_normal(6)
    path = tmp_path / "ln.npz"
    nbn.save(path, layer)
    other = nbn.LayerNorm(6)
    other.load_state_dict(nbn.load(path))
    np.testing.assert_array_equal(other.weight, layer.weight)
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict({"weight": np.ones(5, np.float32), "bias": np.ones(6, np.float32)})
    np.testing.assert_array_equal(other.weight, layer.weight)


def test_big_endian_input_gives_the_native_results(rng):
    x = (1e4 + rng.standard_normal((5, 12))).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 12).astype(np.float32)
    other = ">" if np.little_endian else "<"
    xs, ws = x.astype(x.dtype.newbyteorder(other)), w.astype(w.dtype.newbyteorder(other))
    y, mean, invstd = nbn.layer_norm_forward(xs, 12, ws, ws)
    expected = nbn.layer_norm_forward(x, 12, w, w)
    for got, want in zip((y, mean, invstd), expected):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(nbn.rms_norm(xs, 12, ws), nbn.rms_norm(x, 12, w))
    for got, want in zip(nbn.layer_norm_backward(xs, xs, mean, invstd, 12, ws),
                         nbn.layer_norm_backward(x, x, mean, invstd, 12, w)):
        np.testing.assert_array_equal(got, want)
