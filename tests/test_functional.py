"""batch_norm, batch_norm_forward and channel_moments against the float64 reference."""
import numpy as np
import pytest

import numbabn as nbn
import reference as ref
from conftest import assert_within_ulp, tolerance

SHAPES_AXES = [
    ((8, 3), 1),
    ((4, 5, 7), 1),
    ((4, 6, 5, 5), 1),  # NCHW, small planes (rows loop order)
    ((3, 4, 20, 20), 1),  # NCHW, large planes
    ((2, 3, 3, 4, 5), 1),
    ((4, 5, 5, 6), -1),  # channels-last
    ((2, 40000, 3), 2),  # channels-last, B == 1 rows, many pieces
    ((1, 2, 40000), 1),  # one plane split into several pieces
    ((5, 4, 3), 0),  # channel axis first
]
DTYPES = [np.float32, np.float64]


def data(rng, shape, dtype, offset=0.0):
    return (offset + rng.standard_normal(shape) * 2.0 + 0.5).astype(dtype)


def params(rng, c, dtype=np.float32):
    return rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)


@pytest.mark.parametrize("shape, axis", SHAPES_AXES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_train_matches_reference(rng, shape, axis, dtype):
    x = data(rng, shape, dtype)
    c = shape[axis]
    w, b = params(rng, c)
    y, mean, invstd = nbn.batch_norm_forward(x, w, b, axis=axis)
    y_ref, mean_ref, invstd_ref, _ = ref.forward_train(x, w, b, axis=axis)
    tol = tolerance(dtype)
    assert y.dtype == dtype and y.shape == x.shape
    assert mean.dtype == invstd.dtype == (np.float64 if dtype == np.float64 else np.float32)
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(mean, mean_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=tol)


@pytest.mark.parametrize("shape, axis", SHAPES_AXES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_training_updates_running_stats(rng, shape, axis, dtype):
    x = data(rng, shape, dtype)
    c = shape[axis]
    w, b = params(rng, c, dtype)
    rm = rng.standard_normal(c).astype(dtype)
    rv = rng.uniform(0.5, 2.0, c).astype(dtype)
    rm0, rv0 = rm.astype(np.float64), rv.astype(np.float64)
    y = nbn.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, eps=1e-3, axis=axis)
    y_ref, mean_ref, _, var_unbiased = ref.forward_train(x, w, b, eps=1e-3, axis=axis)
    tol = tolerance(dtype)
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(rm, 0.8 * rm0 + 0.2 * mean_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(rv, 0.8 * rv0 + 0.2 * var_unbiased, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape, axis", SHAPES_AXES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_inference_uses_running_stats(rng, shape, axis, dtype):
    x = data(rng, shape, dtype)
    c = shape[axis]
    w, b = params(rng, c)
    rm = rng.standard_normal(c).astype(np.float32)
    rv = rng.uniform(0.5, 2.0, c).astype(np.float32)
    rm_before, rv_before = rm.copy(), rv.copy()
    y = nbn.batch_norm(x, rm, rv, w, b, axis=axis)
    y_ref = ref.forward_infer(x, rm, rv, w, b, axis=axis)
    tol = tolerance(dtype)
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    np.testing.assert_array_equal(rm, rm_before)
    np.testing.assert_array_equal(rv, rv_before)


def test_training_without_running_stats_and_without_affine(rng):
    x = data(rng, (6, 3, 4), np.float64)
    y = nbn.batch_norm(x, training=True)
    np.testing.assert_allclose(y, ref.forward_train(x)[0], rtol=1e-12, atol=1e-12)


def test_momentum_zero_and_one(rng):
    x = data(rng, (6, 3, 4), np.float64)
    _, mean_ref, _, var_ref = ref.forward_train(x)
    rm, rv = np.full(3, 7.0), np.full(3, 9.0)
    nbn.batch_norm(x, rm, rv, training=True, momentum=0.0)
    np.testing.assert_array_equal(rm, 7.0)
    np.testing.assert_array_equal(rv, 9.0)
    nbn.batch_norm(x, rm, rv, training=True, momentum=1.0)
    np.testing.assert_allclose(rm, mean_ref, rtol=1e-12)
    np.testing.assert_allclose(rv, var_ref, rtol=1e-12)


class TestWorkedExample:
    """x = [1, 2, 3, 4, 5], gamma = 2, beta = 1: mu = 3, biased var = 2.

    The widely copied values x_hat_1 = -1.2247, y_1 = -1.4494 divide by
    sqrt(8/3), inconsistent with var = 2; the correct ones are
    x_hat = (x - 3) / sqrt(2 + 1e-5).
    """

    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0]).reshape(5, 1)
    w = np.array([2.0])
    b = np.array([1.0])

    def test_statistics(self):
        mean, var = nbn.channel_moments(self.x)
        np.testing.assert_allclose(mean, [3.0], rtol=1e-15)
        np.testing.assert_allclose(var, [2.0], rtol=1e-15)

    def test_normalized_values(self):
        y = nbn.batch_norm(self.x, training=True, eps=1e-5).ravel()
        np.testing.assert_allclose(y, [-1.41421, -0.70711, 0.0, 0.70711, 1.41421], atol=1e-5)
        np.testing.assert_allclose(y, (self.x.ravel() - 3) / np.sqrt(2 + 1e-5), rtol=1e-14)
        assert abs(y[0] - (-1.2247)) > 0.1

    def test_output_values(self):
        y = nbn.batch_norm(self.x, weight=self.w, bias=self.b, training=True).ravel()
        np.testing.assert_allclose(y, [-1.82843, -0.41421, 1.0, 2.41421, 3.82843], atol=2e-5)
        np.testing.assert_allclose(
            y, 2 * (self.x.ravel() - 3) / np.sqrt(2 + 1e-5) + 1, rtol=1e-14
        )
        assert abs(y[0] - (-1.4494)) > 0.1


def test_float16_input_float32_accumulation(rng):
    x = data(rng, (16, 4, 9, 9), np.float16)
    w, b = params(rng, 4)
    y, mean, invstd = nbn.batch_norm_forward(x, w, b)
    y_ref, mean_ref, invstd_ref, _ = ref.forward_train(x, w, b)
    assert y.dtype == np.float16 and mean.dtype == np.float32 and invstd.dtype == np.float32
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-5)
    np.testing.assert_allclose(y.astype(np.float64), y_ref, rtol=2e-3, atol=4e-3)


def test_float16_large_sums_do_not_overflow(rng):
    """65504 is float16's maximum: the sum of 1e5 values near 1000 must not be it."""
    x = (1000 + rng.standard_normal((100000, 1))).astype(np.float16)
    mean, var = nbn.channel_moments(x, axis=1)
    mean_ref, var_ref = ref.moments(x, axis=1)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-6)
    np.testing.assert_allclose(var, var_ref, rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_out_is_written_and_returned(rng, dtype):
    x = data(rng, (4, 3, 5, 5), dtype)
    out = np.full_like(x, np.nan)
    y = nbn.batch_norm(x, training=True, out=out)
    assert y is out
    np.testing.assert_allclose(out, ref.forward_train(x)[0], rtol=tolerance(dtype),
                               atol=tolerance(dtype))


def test_out_non_contiguous(rng):
    x = data(rng, (4, 3, 5), np.float64)
    big = np.full((4, 3, 10), np.nan)
    out = big[:, :, ::2]
    y = nbn.batch_norm(x, training=True, out=out)
    assert y is out
    np.testing.assert_allclose(big[:, :, ::2], ref.forward_train(x)[0], rtol=1e-12, atol=1e-12)
    assert np.isnan(big[:, :, 1::2]).all()


def test_in_place(rng):
    x = data(rng, (4, 3, 5, 5), np.float32)
    expected = ref.forward_train(x)[0]
    y = nbn.batch_norm(x, training=True, out=x)
    assert y is x
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make_view", [
    lambda a: a[:, :, ::2],
    lambda a: a.transpose(0, 1, 3, 2),
    lambda a: np.asfortranarray(a),
    lambda a: a[::-1],
])
def test_non_contiguous_inputs(rng, make_view):
    base = data(rng, (4, 3, 6, 6), np.float32)
    x = make_view(base)
    y, mean, invstd = nbn.batch_norm_forward(x)
    y_c, mean_c, invstd_c = nbn.batch_norm_forward(np.ascontiguousarray(x))
    np.testing.assert_array_equal(y, y_c)
    np.testing.assert_allclose(y, ref.forward_train(x)[0], rtol=1e-5, atol=1e-5)


def test_read_only_input(rng):
    x = data(rng, (4, 3, 5), np.float32)
    x.flags.writeable = False
    y = nbn.batch_norm(x, training=True)
    np.testing.assert_allclose(y, ref.forward_train(x)[0], rtol=1e-5, atol=1e-5)


def test_array_like_input():
    x = [[1.0, 2.0], [3.0, 5.0], [4.0, 0.5]]
    y = nbn.batch_norm(x, training=True)
    np.testing.assert_allclose(y, ref.forward_train(np.array(x))[0], rtol=1e-12)


# "last" puts NaN/Inf after values already reduced: in a later chunk of rows
# ((12, 4): the third chunk of four) or in the leftover rows ((6, 4), channels-last).
@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("shape, axis", [((4, 3, 5, 5), 1), ((6, 4), 1), ((12, 4), 1),
                                         ((3, 5, 5, 4), -1), ((4, 3, 7, 7), 1)])
def test_nan_and_inf_propagate_to_their_channel(rng, shape, axis, where):
    x = data(rng, shape, np.float32)
    idx = [0 if where == "first" else -1] * len(shape)
    idx[axis] = 1
    x[tuple(idx)] = np.nan
    idx[axis] = 2
    x[tuple(idx)] = np.inf
    rm, rv = np.zeros(shape[axis], np.float32), np.ones(shape[axis], np.float32)
    y = nbn.batch_norm(x, rm, rv, training=True, axis=axis)
    ym = np.moveaxis(y, axis, 0)
    assert np.isnan(ym[1]).all() and np.isnan(ym[2]).all()
    assert np.isfinite(ym[0]).all()
    assert np.isnan(rm[1]) and np.isnan(rv[1]) and np.isinf(rm[2])
    assert np.isfinite(rm[0]) and np.isfinite(rv[0])


class TestChannelMoments:
    def test_large_offset_acceptance(self, rng):
        """float32 1e4 + N(0, 1), 1e6 values per channel: variance within 1e-6 relative."""
        x = (1e4 + rng.standard_normal((1000, 2, 1000))).astype(np.float32)
        mean, var = nbn.channel_moments(x)
        mean_ref, var_ref = ref.moments(x)
        np.testing.assert_allclose(var, var_ref, rtol=1e-6)
        np.testing.assert_allclose(mean, mean_ref, rtol=1e-7)

    def test_float64_offset_where_the_naive_formula_fails(self, rng):
        """1e8 + N(0, 1) in float64: E[x^2] - E[x]^2 loses every digit (x^2 ~ 1e16 has an
        ulp of 2); the shifted, merged sums keep the variance to about 1e-8."""
        x = 1e8 + rng.standard_normal((4000, 2))
        mean, var = nbn.channel_moments(x)
        mean_ref, var_ref = ref.moments(x)
        naive = (x * x).mean(axis=0) - x.mean(axis=0) ** 2
        assert np.abs(naive / var_ref - 1).max() > 1e-2  # the formula this test rules out
        np.testing.assert_allclose(var, var_ref, rtol=1e-8)
        np.testing.assert_allclose(mean, mean_ref, rtol=1e-14)  # both summed in float64

    # channels-last and 2-D (rows layout); 7 x 7 and 250-element planes (blocks layout,
    # the second with 16 groups of rows merged per channel)
    @pytest.mark.parametrize("shape, axis", [((100000, 3), 1), ((50, 3, 4, 5), -1),
                                             ((20000, 3, 7, 7), 1), ((4000, 2, 250), 1)])
    def test_large_offset_other_layouts(self, rng, shape, axis):
        x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
        _, var = nbn.channel_moments(x, axis=axis)
        np.testing.assert_allclose(var, ref.moments(x, axis=axis)[1], rtol=1e-6)

    def test_ddof(self, rng):
        x = data(rng, (7, 3, 2), np.float64)
        mean, var = nbn.channel_moments(x, ddof=1)
        mean_ref, var_ref = ref.moments(x, ddof=1)
        np.testing.assert_allclose(var, var_ref, rtol=1e-12)

    def test_ddof_at_least_count_gives_nan(self):
        _, var = nbn.channel_moments(np.ones((2, 3)), ddof=2)
        assert np.isnan(var).all()

    def test_empty_batch_gives_nan(self):
        mean, var = nbn.channel_moments(np.ones((0, 3)))
        assert np.isnan(mean).all() and np.isnan(var).all()

    def test_dtypes(self):
        assert nbn.channel_moments(np.ones((2, 3), np.float16))[0].dtype == np.float32
        assert nbn.channel_moments(np.ones((2, 3), np.float32))[1].dtype == np.float32
        assert nbn.channel_moments(np.ones((2, 3), np.float64))[1].dtype == np.float64


def test_matches_torch_when_installed(rng):
    torch = pytest.importorskip("torch")
    x = data(rng, (8, 5, 6, 7), np.float32)
    w, b = params(rng, 5)
    rm, rv = np.zeros(5, np.float32), np.ones(5, np.float32)
    trm, trv = torch.zeros(5), torch.ones(5)
    y = nbn.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3)
    ty = torch.nn.functional.batch_norm(torch.from_numpy(x), trm, trv, torch.from_numpy(w),
                                        torch.from_numpy(b), training=True, momentum=0.3)
    np.testing.assert_allclose(y, ty.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-5)
    y = nbn.batch_norm(x, rm, rv, w, b)
    ty = torch.nn.functional.batch_norm(torch.from_numpy(x), trm, trv, torch.from_numpy(w),
                                        torch.from_numpy(b))
    np.testing.assert_allclose(y, ty.numpy(), rtol=1e-5, atol=1e-5)


def test_forward_with_running_buffers_matches_batch_norm(rng):
    x = data(rng, (6, 3, 4, 4), np.float32)
    w, b = params(rng, 3)
    rm1, rv1 = np.zeros(3, np.float32), np.ones(3, np.float32)
    rm2, rv2 = rm1.copy(), rv1.copy()
    y1 = nbn.batch_norm(x, rm1, rv1, w, b, training=True, momentum=0.25)
    y2, mean, invstd = nbn.batch_norm_forward(x, w, b, running_mean=rm2, running_var=rv2,
                                              momentum=0.25)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(rm1, rm2)
    np.testing.assert_array_equal(rv1, rv2)
    assert not (rm2 == 0).all()


def test_float16_train_infer_and_backward_within_an_ulp(rng):
    """float16 is computed in float32 and rounded once (float16 arithmetic measured up to
    274 ulp on y)."""
    x = (rng.standard_normal((16, 4, 9, 9)) * 2 + 0.5).astype(np.float16)
    w, b = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    y, mean, invstd = nbn.batch_norm_forward(x, w, b)
    assert_within_ulp(y, ref.forward_train(x, w, b)[0], np.float16)
    rm, rv = rng.standard_normal(4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    assert_within_ulp(nbn.batch_norm(x, rm, rv, w, b), ref.forward_infer(x, rm, rv, w, b),
                       np.float16)
    dy = rng.standard_normal(x.shape).astype(np.float16)
    for training in (True, False):
        dx = nbn.batch_norm_backward(dy, x, mean, invstd, w, training=training)[0]
        assert_within_ulp(dx, ref.backward(dy, x, mean, invstd, w, training=training)[0],
                           np.float16)


@pytest.mark.parametrize("shape, axis", [((4096, 8), 1), ((16, 8, 8, 8), -1), ((64, 8, 3), 1),
                                         ((8, 6, 40, 40), 1)])
def test_large_offset_outputs_and_gradients_in_every_layout(rng, shape, axis):
    """float32 1e4 + N(0, 1): y, sigma^-1 and dx to an ulp of their scale, in the rows,
    channels-last, planes and blocks layouts; dweight/dbias within eps of their sums of |terms|."""
    eps = np.finfo(np.float32).eps
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    c = shape[axis]
    w, b = np.linspace(0.5, 2, c).astype(np.float32), np.linspace(-1, 1, c).astype(np.float32)
    y, mean, invstd = nbn.batch_norm_forward(x, w, b, axis=axis)
    y_ref, _, invstd_ref, _ = ref.forward_train(x, w, b, axis=axis)
    np.testing.assert_allclose(y, y_ref, rtol=eps, atol=eps * np.abs(y_ref).max())
    np.testing.assert_allclose(invstd, invstd_ref, rtol=eps)
    dx, dw, db = nbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis)
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, mean, invstd, w, axis=axis)
    np.testing.assert_allclose(dx, dx_ref, rtol=eps, atol=eps * np.abs(dx_ref).max())
    axes = ref.reduce_axes(x.ndim, axis)
    xhat = np.abs(ref.affine(x, mean.astype(float), invstd.astype(float), None, None, axis))
    assert (np.abs(dw - dw_ref) <= eps * (np.abs(dy) * xhat).sum(axes)).all()
    assert (np.abs(db - db_ref) <= eps * np.abs(dy).sum(axes)).all()
