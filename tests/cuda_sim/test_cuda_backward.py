"""CUDA backward against the float64 reference."""
import numpy as np
import pytest

import numbabn as nbn
import reference as ref
from devices import host, to_device, tolerance
from numbabn._validate import layout

SHAPES_AXES = [((3, 2, 40), 1), ((37, 5), 1), ((6, 7, 3), 1), ((2, 3, 4, 5), -1)]


@pytest.mark.parametrize("shape, axis", SHAPES_AXES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("training", [True, False])
def test_backward_on_device(rng, shape, axis, dtype, training):
    x = (0.5 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    w = rng.uniform(0.5, 1.5, c).astype(np.float32)
    _, mean, invstd, _ = ref.forward_train(x, axis=axis)
    dx, dw, db = nbn.batch_norm_backward(
        to_device(dy), to_device(x), mean, to_device(invstd), w, axis=axis, training=training
    )
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, mean, invstd, w, axis=axis, training=training)
    tol = tolerance(dtype)
    assert dx.dtype == dtype and dw.dtype == db.dtype == np.float32
    np.testing.assert_allclose(host(dx), dx_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(dw), dw_ref, rtol=max(tol, 1e-5), atol=max(tol, 1e-5))
    np.testing.assert_allclose(host(db), db_ref, rtol=max(tol, 1e-5), atol=max(tol, 1e-5))


def test_backward_without_weight_and_numpy_input(rng):
    x = rng.standard_normal((4, 3, 40))
    dy = rng.standard_normal(x.shape)
    y, mean, invstd = nbn.batch_norm_forward(x, device="cuda")
    out = np.full_like(x, np.nan)
    dx, dw, db = nbn.batch_norm_backward(dy, x, mean, invstd, out=out, device="cuda")
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, mean, invstd)
    assert dx is out and isinstance(dw, np.ndarray) and dw.dtype == np.float64
    np.testing.assert_allclose(out, dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db, db_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape, axis", [((3, 2, 40), 1), ((37, 5), 1)])
def test_reduce_and_apply_interface_for_mpi(rng, shape, axis):
    """backward_reduce returns host float64 sums; backward_apply takes host sums."""
    from numbabn.cuda import backend

    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    lay = layout(shape, axis)
    _, mean, invstd, _ = ref.forward_train(x, axis=axis)
    xd, dyd = to_device(x), to_device(dy)
    sum_dy, sum_dy_xmu = backend.backward_reduce(dyd, xd, lay, mean)
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, mean, invstd, axis=axis)
    assert isinstance(sum_dy, np.ndarray) and sum_dy.dtype == np.float64
    np.testing.assert_allclose(sum_dy, db_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sum_dy_xmu * invstd, dw_ref, rtol=1e-6, atol=1e-6)
    dx = backend.backward_apply(dyd, xd, lay, mean, invstd, None, sum_dy, sum_dy_xmu,
                                lay.count, True, None)
    np.testing.assert_allclose(host(dx), dx_ref, rtol=1e-5, atol=1e-5)
