"""Property tests over shapes (1-element axes, B == 1), axes and dtypes."""
import numpy as np
from hypothesis import given
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
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol * np.abs(dx_ref).max())
    np.testing.assert_allclose(dw, dw_ref, rtol=tol, atol=tol * np.abs(dw_ref).max())
    np.testing.assert_allclose(db, db_ref, rtol=tol, atol=tol * np.abs(db_ref).max())
