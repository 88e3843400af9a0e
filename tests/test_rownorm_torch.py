"""Layer norm and RMS norm against PyTorch (skipped without it): PyTorch's own sample
inputs for these functions and modules, its backward, and its state dicts."""
import numpy as np
import pytest

import numbabn as nbn

torch = pytest.importorskip("torch")


def _t(a, grad=False):
    return None if a is None else torch.tensor(a, requires_grad=grad)


def _np(t):
    return t.detach().numpy()


def _make(rng, shape, high=9):
    return rng.uniform(-9, high, shape)  # make_tensor's default range


# sample_inputs_layer_norm / sample_inputs_native_layer_norm: (shape, normalized_shape, eps)
LN_SAMPLES = [((1, 2, 3), (1, 2, 3), 0.5), ((2, 2, 3), (2, 3), -0.5), ((1,), (1,), 1e-5),
              ((1, 2), (2,), 1e-5), ((0, 1), (1,), 1e-5)]


@pytest.mark.parametrize("shape, nshape, eps", LN_SAMPLES)
@pytest.mark.parametrize("with_weight, with_bias", [(True, True), (True, False),
                                                    (False, True), (False, False)])
def test_layer_norm_on_torch_samples(rng, shape, nshape, eps, with_weight, with_bias):
    x = _make(rng, shape)
    w = _make(rng, nshape) if with_weight else None
    b = _make(rng, nshape) if with_bias else None
    xt, wt, bt = _t(x, True), _t(w, w is not None), _t(b, b is not None)
    yt, mt, rt = torch.native_layer_norm(xt, nshape, wt, bt, eps)
    y, mean, invstd = nbn.layer_norm_forward(x, nshape, w, b, eps=eps)
    np.testing.assert_allclose(y, _np(yt), rtol=1e-10, atol=1e-10, equal_nan=True)
    np.testing.assert_allclose(mean, _np(mt).reshape(mean.shape), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(invstd, _np(rt).reshape(invstd.shape), rtol=1e-10,
                               equal_nan=True)
    np.testing.assert_allclose(nbn.layer_norm(x, nshape, w, b, eps),
                               _np(torch.nn.functional.layer_norm(xt, nshape, wt, bt, eps)),
                               rtol=1e-10, atol=1e-10, equal_nan=True)
    dy = _make(rng, shape)
    yt.backward(_t(dy))
    dx, dw, db = nbn.layer_norm_backward(dy, x, mean, invstd, nshape, w)
    np.testing.assert_allclose(dx, _np(xt.grad), rtol=1e-9, atol=1e-9, equal_nan=True)
    if w is not None:
        np.testing.assert_allclose(dw, _np(wt.grad), rtol=1e-9, atol=1e-9, equal_nan=True)
    if b is not None:
        np.testing.assert_allclose(db, _np(bt.grad), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape, nshape, eps", LN_SAMPLES + [((1, 2), (2,), None)])
@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rms_norm_on_torch_samples(rng, shape, nshape, eps, with_weight, dtype):
    x = _make(rng, shape, high=1000).astype(dtype)
    w = _make(rng, nshape, high=1000).astype(dtype) if with_weight else None
    xt, wt = _t(x, True), _t(w, w is not None)
    yt = torch.nn.functional.rms_norm(xt, nshape, wt, eps)
    y, invrms = nbn.rms_norm_forward(x, nshape, w, eps=eps)
    tol = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, _np(yt), rtol=tol, atol=tol * np.abs(_np(yt)).max(initial=1),
                               equal_nan=True)
    dy = _make(rng, shape).astype(dtype)
    if x.size == 0:
        return
    yt.backward(_t(dy))
    dx, dw = nbn.rms_norm_backward(dy, x, invrms, nshape, w)
    finite = np.isfinite(_np(xt.grad))
    np.testing.assert_allclose(dx[finite], _np(xt.grad)[finite], rtol=tol, atol=tol)
    assert np.array_equal(np.isnan(dx), np.isnan(_np(xt.grad)))
    if w is not None and np.all(finite):
        scale = np.abs(_np(wt.grad)).max()
        np.testing.assert_allclose(dw, _np(wt.grad), rtol=tol, atol=tol * scale)


# module_inputs_torch_nn_LayerNorm / RMSNorm: (constructor args, kwargs, input shape)
MODULE_SAMPLES = [(([5], 1e-3), {}, (4, 5, 5)), (([5], 1e-3), {}, (128, 5, 5)),
                  (([5], 1e-3, False), {}, (4, 5, 5)), (([2, 2, 5], 1e-3), {}, (4, 2, 2, 5)),
                  (([2, 2, 5], 1e-3, False), {}, (4, 2, 2, 5)), (([5], 1e-3), {}, (0, 5))]
LN_MODULE_SAMPLES = MODULE_SAMPLES + [(([2, 2, 5], 1e-3), {"elementwise_affine": True,
                                                           "bias": False}, (4, 2, 2, 5))]


def _train_side_by_side(ours, theirs, rng, shape, steps=3, rtol=1e-9):
    """A few SGD steps on both layers with a converted PyTorch state; outputs, grads agree."""
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    for _ in range(steps):
        x = _make(rng, shape)
        dy = _make(rng, shape)
        xt = _t(x, True)
        yt = theirs(xt)
        yt.backward(_t(dy))
        y = ours(x)
        dx = ours.backward(dy)
        np.testing.assert_allclose(y, _np(yt), rtol=rtol, atol=rtol)
        np.testing.assert_allclose(dx, _np(xt.grad), rtol=rtol, atol=rtol)
        with torch.no_grad():
            for name, p in theirs.named_parameters():
                np.testing.assert_allclose(getattr(ours, "grad_" + name), _np(p.grad),
                                           rtol=rtol, atol=rtol)
                p -= 0.1 * p.grad
                p.grad = None
        ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})


@pytest.mark.parametrize("args, kwargs, shape", LN_MODULE_SAMPLES)
def test_layer_norm_module_samples(rng, args, kwargs, shape):
    theirs = torch.nn.LayerNorm(*args, **kwargs, dtype=torch.float64)
    ours = nbn.LayerNorm(*args, **kwargs, dtype=np.float64)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.tensor(_make(rng, tuple(p.shape))))
    _train_side_by_side(ours, theirs, rng, shape)


@pytest.mark.parametrize("args, kwargs, shape", MODULE_SAMPLES)
def test_rms_norm_module_samples(rng, args, kwargs, shape):
    theirs = torch.nn.RMSNorm(*args, **kwargs, dtype=torch.float64)
    ours = nbn.RMSNorm(*args, **kwargs, dtype=np.float64)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.tensor(_make(rng, tuple(p.shape))))
    _train_side_by_side(ours, theirs, rng, shape)


def test_float32_transformer_shape_matches_torch(rng):
    x = rng.standard_normal((4, 7, 64)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 64).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    yt = torch.nn.functional.layer_norm(torch.from_numpy(x), (64,), torch.from_numpy(w),
                                        torch.from_numpy(b))
    np.testing.assert_allclose(nbn.layer_norm(x, 64, w, b), yt.numpy(), rtol=1e-5, atol=1e-5)
    yt = torch.nn.functional.rms_norm(torch.from_numpy(x), (64,), torch.from_numpy(w))
    np.testing.assert_allclose(nbn.rms_norm(x, 64, w), yt.numpy(), rtol=1e-5, atol=1e-5)
