"""batch_norm_backward against the textbook gradient and finite differences."""
import numpy as np
import pytest

import numbabn as nbn
import reference as ref
from conftest import tolerance

CASES = [
    ((8, 3), 1),
    ((4, 6, 5, 5), 1),
    ((3, 4, 20, 20), 1),
    ((4, 5, 5, 6), -1),
    ((1, 2, 40000), 1),
    ((5, 4, 3), 0),
]


@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_backward_matches_reference(rng, shape, axis, dtype, training):
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    w = rng.standard_normal(c).astype(dtype)
    _, mean, invstd = nbn.batch_norm_forward(x, w, axis=axis)
    dx, dw, db = nbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis, training=training)
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, mean, invstd, w, axis=axis, training=training)
    tol = tolerance(dtype)
    assert dx.dtype == dtype and dw.dtype == dtype and db.dtype == dtype
    scale = np.abs(dx_ref).max()
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(dw, dw_ref, rtol=tol, atol=tol * np.abs(dw_ref).max())
    np.testing.assert_allclose(db, db_ref, rtol=tol, atol=tol * np.abs(db_ref).max())


@pytest.mark.parametrize("shape, axis", [((5, 2, 3), 1), ((4, 3), 1), ((3, 2, 2, 2), -1)])
def test_backward_matches_finite_differences(rng, shape, axis):
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    c = shape[axis]
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    _, mean, invstd = nbn.batch_norm_forward(x, w, b, eps=1e-3, axis=axis)
    dx, dw, db = nbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis)
    dx_fd, dw_fd, db_fd = ref.loss_gradient_fd(x, w, b, dy, eps=1e-3, axis=axis)
    np.testing.assert_allclose(dx, dx_fd, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, dw_fd, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, db_fd, rtol=1e-6, atol=1e-7)


def test_gradient_dtypes_follow_weight(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float16)
    dy = rng.standard_normal((4, 3, 5)).astype(np.float16)
    _, mean, invstd = nbn.batch_norm_forward(x)
    dx, dw, db = nbn.batch_norm_backward(dy, x, mean, invstd)
    assert dx.dtype == np.float16 and dw.dtype == np.float32 and db.dtype == np.float32
    dx, dw, db = nbn.batch_norm_backward(dy, x, mean, invstd, np.ones(3, np.float64))
    assert dw.dtype == np.float64 and db.dtype == np.float64
    dx_ref, dw_ref, _ = ref.backward(dy, x, mean, invstd)
    np.testing.assert_allclose(dx.astype(np.float64), dx_ref, rtol=3e-3, atol=3e-3)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5)


def test_backward_out_and_in_place(rng):
    x = rng.standard_normal((4, 3, 5, 5))
    dy = rng.standard_normal((4, 3, 5, 5))
    _, mean, invstd = nbn.batch_norm_forward(x)
    dx_ref = ref.backward(dy, x, mean, invstd)[0]
    out = np.full_like(x, np.nan)
    dx, _, _ = nbn.batch_norm_backward(dy, x, mean, invstd, out=out)
    assert dx is out
    np.testing.assert_allclose(out, dx_ref, rtol=1e-10, atol=1e-12)
    dx, _, _ = nbn.batch_norm_backward(dy, x, mean, invstd, out=dy)
    assert dx is dy
    np.testing.assert_allclose(dy, dx_ref, rtol=1e-10, atol=1e-12)
    x_copy = x.copy()
    dy2 = rng.standard_normal((4, 3, 5, 5))
    dx_ref2 = ref.backward(dy2, x_copy, mean, invstd)[0]
    dx, _, _ = nbn.batch_norm_backward(dy2, x, mean, invstd, out=x)
    np.testing.assert_allclose(x, dx_ref2, rtol=1e-10, atol=1e-12)


def test_backward_matches_torch_when_installed(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((6, 4, 5, 5)).astype(np.float32)
    dy = rng.standard_normal((6, 4, 5, 5)).astype(np.float32)
    w = rng.standard_normal(4).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(w).requires_grad_()
    tb = torch.from_numpy(b).requires_grad_()
    torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True).backward(
        torch.from_numpy(dy))
    _, mean, invstd = nbn.batch_norm_forward(x, w, b)
    dx, dw, db = nbn.batch_norm_backward(dy, x, mean, invstd, w)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-5, atol=1e-5)
