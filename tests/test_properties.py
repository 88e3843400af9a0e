"""Property tests over shapes (1-element axes, B == 1), axes and dtypes."""
import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

import numbabn as nbn
import reference as ref
from conftest import tolerance


@st.composite
def problems(draw, min_count=2):
    ndim = draw(st.integers(2, 5))
    shape = draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim))
    axis = draw(st.integers(-ndim, ndim - 1))
    count = int(np.prod(shape)) // shape[axis]
    if count < min_count:
        shape[(axis + 1) % ndim if ndim > 1 else 0] += min_count
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    offset = draw(st.sampled_from([0.0, 100.0]))
    rng = np.random.default_rng(seed)
    x = (offset + rng.standard_normal(shape) * rng.uniform(0.1, 10)).astype(dtype)
    return x, axis


@given(problems())
def test_forward_train(problem):
    x, axis = problem
    c = x.shape[axis]
    w = np.linspace(0.5, 2, c)
    b = np.linspace(-1, 1, c)
    y, mean, invstd = nbn.batch_norm_forward(x, w, b, axis=axis)
    y_ref, mean_ref, invstd_ref, _ = ref.forward_train(x, w, b, axis=axis)
    tol = tolerance(x.dtype)
    np.testing.assert_allclose(mean, mean_ref, rtol=tol, atol=tol * np.abs(mean_ref).max())
    if x.dtype == np.float32:
        # float32 data are exact in float64, where the statistics and y are computed and
        # then rounded once: half an ulp measured, one allowed (offset / sigma up to 1000).
        eps = np.finfo(np.float32).eps
        np.testing.assert_allclose(invstd, invstd_ref, rtol=eps)
        np.testing.assert_allclose(y, y_ref, rtol=eps, atol=eps * np.abs(y_ref).max())
        return
    # float64: the offset's cancellation in x - mean costs up to ~1e-13 legitimately.
    np.testing.assert_allclose(invstd, invstd_ref, rtol=tol * 10)
    np.testing.assert_allclose(y, y_ref, rtol=tol * 10, atol=tol * 10)


@given(problems(min_count=1))
def test_inference(problem):
    x, axis = problem
    c = x.shape[axis]
    rm = np.linspace(-1, 1, c)
    rv = np.linspace(0.5, 3, c)
    y = nbn.batch_norm(x, rm, rv, axis=axis)
    tol = tolerance(x.dtype)
    y_ref = ref.forward_infer(x, rm, rv, axis=axis)
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol * np.abs(y_ref).max())


@given(problems(min_count=1))
def test_moments(problem):
    x, axis = problem
    mean, var = nbn.channel_moments(x, axis=axis)
    mean_ref, var_ref = ref.moments(x, axis=axis)
    tol = tolerance(x.dtype)
    np.testing.assert_allclose(mean, mean_ref, rtol=tol, atol=tol * np.abs(mean_ref).max())
    np.testing.assert_allclose(var, var_ref, rtol=tol * 10, atol=tol * var_ref.max())


@given(problems(), st.booleans())
@example((np.array([[107.08013247], [92.54889887]]), 1), True)  # dx cancels to ~1e-9
def test_backward(problem, training):
    x, axis = problem
    rng = np.random.default_rng(0)
    dy = rng.standard_normal(x.shape).astype(x.dtype)
    c = x.shape[axis]
    w = np.linspace(0.5, 2, c).astype(x.dtype)
    _, mean, invstd = nbn.batch_norm_forward(x, axis=axis)
    dx, dw, db = nbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis, training=training)
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, mean, invstd, w, axis=axis, training=training)
    tol = tolerance(x.dtype) * 10
    # Absolute errors are measured against the size of the terms that are summed
    # or cancelled, not of the result: with two values per channel, dx is a
    # difference of terms of size |gamma * invstd * dy| that is ~1e-9 of them.
    shape = ref.channel_shape(x.ndim, axis)
    dy_abs = np.abs(dy.astype(np.float64))
    xhat_abs = np.abs((x - mean.reshape(shape).astype(np.float64)) * invstd.reshape(shape))
    term_dx = np.abs(w.astype(np.float64) * invstd).max() * dy_abs.max()
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol * term_dx)
    np.testing.assert_allclose(dw, dw_ref, rtol=tol, atol=tol * (dy_abs * xhat_abs).sum())
    np.testing.assert_allclose(db, db_ref, rtol=tol, atol=tol * dy_abs.sum())
