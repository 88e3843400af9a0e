"""Layer norm and RMS norm on the CUDA backend, against the float64 reference (tiny shapes)."""
import sys
from pathlib import Path

import numpy as np
import pytest

import numbabn as nbn
from devices import host, to_device, tolerance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import reference_rows as ref  # noqa: E402

# (shape, normalized rank): rows longer and shorter than a block, several blocks of rows.
SHAPES = [((3, 37), 1), ((2, 3, 5), 2), ((20, 3), 1), ((1, 1), 1)]


def _inputs(rng, shape, k, dtype, offset=0.0):
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    nshape = shape[len(shape) - k:]
    return x, dy, nshape, rng.uniform(0.5, 1.5, nshape).astype(dtype), \
        rng.uniform(-0.5, 0.5, nshape).astype(dtype)


@pytest.mark.parametrize("shape, k", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_layer_norm_on_device(rng, shape, k, dtype):
    x, dy, nshape, w, b = _inputs(rng, shape, k, dtype)
    y, mean, invstd = nbn.layer_norm_forward(to_device(x), nshape, w, to_device(b))
    assert not isinstance(y, np.ndarray) and not isinstance(mean, np.ndarray)
    y_ref, mean_ref, invstd_ref = ref.layer_norm(x, k, w, b)
    tol = tolerance(dtype)
    assert y.dtype == dtype and host(mean).shape == mean_ref.shape
    np.testing.assert_allclose(host(y), y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(mean), mean_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(invstd), invstd_ref, rtol=tol)
    dx, dw, db = nbn.layer_norm_backward(to_device(dy), to_device(x), mean, invstd, nshape,
                                         to_device(w))
    dx_ref, dw_ref, db_ref = ref.layer_norm_backward(dy, x, host(mean), host(invstd), k, w)
    assert host(dw).shape == nshape and dw.dtype == dtype
    np.testing.assert_allclose(host(dx), dx_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(dw), dw_ref, rtol=10 * tol, atol=10 * tol)
    np.testing.assert_allclose(host(db), db_ref, rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("shape, k", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rms_norm_on_device(rng, shape, k, dtype):
    x, dy, nshape, w, _ = _inputs(rng, shape, k, dtype)
    y, invrms = nbn.rms_norm_forward(to_device(x), nshape, w, eps=1e-5)
    y_ref, invrms_ref = ref.rms_norm(x, k, w, 1e-5)
    tol = tolerance(dtype)
    np.testing.assert_allclose(host(y), y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(invrms), invrms_ref, rtol=tol)
    dx, dw = nbn.rms_norm_backward(to_device(dy), to_device(x), invrms, nshape)
    dx_ref, dw_ref = ref.rms_norm_backward(dy, x, host(invrms), k)
    np.testing.assert_allclose(host(dx), dx_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(dw), dw_ref, rtol=10 * tol, atol=10 * tol)


def test_numpy_input_with_device_cuda_offset_and_out(rng):
    x, dy, nshape, w, b = _inputs(rng, (6, 40), 1, np.float32, offset=1e4)
    out = np.full_like(x, np.nan)
    y, mean, invstd = nbn.layer_norm_forward(x, nshape, w, b, out=out, device="cuda")
    assert y is out and isinstance(mean, np.ndarray)
    y_ref, _, invstd_ref = ref.layer_norm(x, 1, w, b)
    np.testing.assert_allclose(out, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-5)
    dx, dw, db = nbn.layer_norm_backward(dy, x, mean, invstd, nshape, w, device="cuda")
    dx_ref, dw_ref, db_ref = ref.layer_norm_backward(dy, x, mean, invstd, 1, w)
    assert isinstance(dx, np.ndarray)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)
    # device out=, in place
    xd = to_device(x)
    assert nbn.layer_norm(xd, nshape, w, b, out=xd) is xd
    np.testing.assert_allclose(host(xd), y_ref, rtol=1e-5, atol=1e-5)


def test_errors_before_launch(rng):
    x = to_device(rng.standard_normal((4, 5)))
    with pytest.raises(ValueError, match="Given normalized_shape"):
        nbn.layer_norm(x, 4)
    with pytest.raises(ValueError, match="full-size arrays must live where x lives"):
        nbn.rms_norm(x, 5, out=np.empty((4, 5)))


def test_layers_on_device(rng):
    x = rng.standard_normal((3, 8)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    for cpu_layer, gpu_layer in ((nbn.LayerNorm(8), nbn.LayerNorm(8).to("cuda")),
                                 (nbn.RMSNorm(8), nbn.RMSNorm(8).to("cuda"))):
        y = gpu_layer(to_device(x))
        np.testing.assert_allclose(host(y), cpu_layer(x), rtol=1e-5, atol=1e-5)
        dx = gpu_layer.backward(to_device(dy))
        np.testing.assert_allclose(host(dx), cpu_layer.backward(dy), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(host(gpu_layer.grad_weight), cpu_layer.grad_weight,
                                   rtol=1e-5, atol=1e-5)
        assert list(gpu_layer.state_dict()) == list(cpu_layer.state_dict())
