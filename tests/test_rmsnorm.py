"""RMS norm (functions, kernels, layer) against an independent float64 reference."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numbabn as nbn
import reference_rows as ref
from _rows_common import SHAPES, inputs, tolerance


@pytest.mark.parametrize("shape, k", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_forward_and_backward_match_reference(rng, shape, k, dtype):
    x, dy, nshape, w, _ = inputs(rng, shape, k, dtype)
    y, invrms = nbn.rms_norm_forward(x, nshape, w, eps=1e-6)
    y_ref, invrms_ref = ref.rms_norm(x, k, w, 1e-6)
    tol = tolerance(dtype)
    assert y.dtype == dtype and invrms.shape == shape[:len(shape) - k]
    assert invrms.dtype == (np.float64 if dtype == np.float64 else np.float32)
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(invrms, invrms_ref, rtol=tol)
    dx, dw = nbn.rms_norm_backward(dy, x, invrms, nshape, w)
    dx_ref, dw_ref = ref.rms_norm_backward(dy, x, invrms, k, w)
    assert dx.dtype == dtype and dw.shape == nshape
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol)
    # A column sums R = x.size / w.size rows: rounding errors grow like sqrt(R) in absolute terms.
    gtol = tol * max(1, x.size // max(w.size, 1)) ** 0.5
    np.testing.assert_allclose(dw, dw_ref, rtol=tol, atol=gtol)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_default_eps_is_the_dtype_epsilon(dtype):
    x = np.zeros((2, 3), dtype)
    x[0, 0] = 1e-4
    y = nbn.rms_norm(x, 3)
    eps = np.finfo(dtype).eps
    y_ref, _ = ref.rms_norm(x, 1, None, eps)
    np.testing.assert_allclose(y, y_ref, rtol=tolerance(dtype))
    # The layer's eps=None is the same default: at x ~ 1e-4, eps = 1e-6 would change y.
    layer = nbn.RMSNorm(3, elementwise_affine=False, dtype=dtype)
    assert layer.eps is None
    np.testing.assert_array_equal(layer(x), y)


def test_large_offset(rng):
    x, dy, nshape, w, _ = inputs(rng, (64, 300), 1, np.float32, offset=1e4)
    y, invrms = nbn.rms_norm_forward(x, nshape, w)
    np.testing.assert_allclose(y, ref.rms_norm(x, 1, w, np.finfo(np.float32).eps)[0],
                               rtol=1e-5, atol=1e-5)
    dx, dw = nbn.rms_norm_backward(dy, x, invrms, nshape, w)
    dx_ref, dw_ref = ref.rms_norm_backward(dy, x, invrms, 1, w)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5 * 64 ** 0.5)


def test_finite_differences():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 2, 4))
    w = rng.uniform(0.5, 1.5, (2, 4))
    dy = rng.standard_normal(x.shape)

    def loss(x_, w_):
        return float((dy * ref.rms_norm(x_, 2, w_, 1e-3)[0]).sum())

    fx, fw = ref.finite_differences(loss, x.copy(), w.copy())
    _, invrms = nbn.rms_norm_forward(x, (2, 4), w, eps=1e-3)
    dx, dw = nbn.rms_norm_backward(dy, x, invrms, (2, 4), w)
    np.testing.assert_allclose(dx, fx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, fw, rtol=1e-6, atol=1e-7)


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
    x, dy, nshape, w, _ = inputs(rng, shape, k, dtype, offset)
    if not affine:
        w = None
    y, invrms = nbn.rms_norm_forward(x, nshape, w, eps=1e-5)
    tol = tolerance(dtype)
    np.testing.assert_allclose(y, ref.rms_norm(x, k, w, 1e-5)[0], rtol=tol, atol=tol)
    dx, dw = nbn.rms_norm_backward(dy, x, invrms, nshape, w)
    dx_ref, dw_ref = ref.rms_norm_backward(dy, x, invrms, k, w)
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol)
    gtol = tol * max(1, int(np.prod(lead))) ** 0.5
    np.testing.assert_allclose(dw, dw_ref, rtol=tol, atol=gtol)


def test_out_in_place_and_non_contiguous(rng):
    x, dy, nshape, w, _ = inputs(rng, (20, 30), 1, np.float32)
    expected, invrms = nbn.rms_norm_forward(x, nshape, w)
    xc = x.copy()
    assert nbn.rms_norm(xc, nshape, w, out=xc) is xc
    np.testing.assert_array_equal(xc, expected)
    dx_expected, _ = nbn.rms_norm_backward(dy, x, invrms, nshape, w)
    dyc = dy.copy()
    assert nbn.rms_norm_backward(dyc, x, invrms, nshape, w, out=dyc)[0] is dyc
    np.testing.assert_array_equal(dyc, dx_expected)
    xt = np.asfortranarray(x)
    np.testing.assert_array_equal(nbn.rms_norm(xt, nshape, w), expected)


def test_one_element_per_row_empty_and_nan():
    x = np.array([[2.0], [-3.0], [0.0]])
    y = nbn.rms_norm(x, 1, eps=0.0)
    np.testing.assert_array_equal(y[:2], [[1.0], [-1.0]])
    assert np.isnan(y[2, 0])  # 0 / sqrt(0): NaN, as PyTorch
    y, invrms = nbn.rms_norm_forward(np.ones((0, 3), np.float32), 3)
    assert y.shape == (0, 3) and invrms.shape == (0,)
    x = np.ones((3, 4), np.float32)
    x[1, 1] = np.nan
    y = nbn.rms_norm(x, 4)
    assert np.all(np.isnan(y[1])) and np.all(np.isfinite(y[[0, 2]]))


def test_errors_before_anything_is_written(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match=r"Given normalized_shape=\[4\]"):
        nbn.rms_norm(x, 4, out=out)
    with pytest.raises(ValueError, match="Expected weight to be of same shape"):
        nbn.rms_norm(x, 5, np.ones(4, np.float32), out=out)
    with pytest.raises(TypeError, match="floating"):
        nbn.rms_norm(x.astype(np.int64), 5)
    _, invrms = nbn.rms_norm_forward(x, 5)
    with pytest.raises(ValueError, match="invrms must have shape"):
        nbn.rms_norm_backward(x, x, invrms[:2], 5, out=out)
    with pytest.raises(ValueError, match="invrms is required"):
        nbn.rms_norm_backward(x, x, None, 5, out=out)
    np.testing.assert_array_equal(out, 7.0)


def test_layer(rng, tmp_path):
    layer = nbn.RMSNorm((2, 5), eps=1e-4, dtype=np.float64)
    layer.weight[...] = rng.uniform(0.5, 1.5, (2, 5))
    x = rng.standard_normal((3, 2, 5))
    dy = rng.standard_normal(x.shape)
    y_ref, invrms = ref.rms_norm(x, 2, layer.weight, 1e-4)
    np.testing.assert_allclose(layer(x), y_ref, rtol=1e-12, atol=1e-12)
    dx_ref, dw_ref = ref.rms_norm_backward(dy, x, invrms, 2, layer.weight)
    np.testing.assert_allclose(layer.backward(dy), dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grad_weight, dw_ref, rtol=1e-10, atol=1e-12)
    assert list(layer.state_dict()) == ["weight"]
    assert nbn.RMSNorm(5, elementwise_affine=False).state_dict() == {}
    nbn.save(tmp_path / "rms.npz", layer)
    other = nbn.RMSNorm((2, 5), dtype=np.float64)
    other.load_state_dict(nbn.load(tmp_path / "rms.npz"))
    np.testing.assert_array_equal(other.weight, layer.weight)
