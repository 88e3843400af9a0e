"""Group and instance norm, functions and layers, against PyTorch (skipped without it),
on PyTorch's own sample inputs for these functions and over training steps."""
import numpy as np
import pytest

import numbabn as nbn

torch = pytest.importorskip("torch")

S = 5  # PyTorch's OpInfo "small" size


def _t(a, grad=False):
    return None if a is None else torch.tensor(a, requires_grad=grad)


def _np(t):
    return t.detach().numpy()


def _make(rng, shape):
    return rng.uniform(-9, 9, shape)  # make_tensor's default range


# PyTorch's sample_inputs_group_norm: (shape, groups, eps), every weight/bias permutation.
GROUP_SAMPLES = [((1, 6, 3), 2, 0.5), ((2, 6, 3), 2, -0.5), ((1, 3), 1, 1e-5),
                 ((0, 2), 1, 1e-5), ((S, S, S), 1, 0.5), ((1, 2), 1, 1e-5)]


@pytest.mark.parametrize("shape, groups, eps", GROUP_SAMPLES)
@pytest.mark.parametrize("with_weight, with_bias", [(True, True), (True, False),
                                                    (False, True), (False, False)])
def test_group_norm_on_torch_samples(rng, shape, groups, eps, with_weight, with_bias):
    x = _make(rng, shape)
    c = shape[1]
    w = _make(rng, c) if with_weight else None
    b = _make(rng, c) if with_bias else None
    xt, wt, bt = _t(x, True), _t(w, w is not None), _t(b, b is not None)
    yt = torch.nn.functional.group_norm(xt, groups, wt, bt, eps)
    y, mean, invstd = nbn.group_norm_forward(x, groups, w, b, eps=eps)
    np.testing.assert_allclose(y, _np(yt), rtol=1e-10, atol=1e-10)
    if w is None and b is not None:
        return  # PyTorch 2.13's backward fails there ("tensor does not have a device")
    dy = _make(rng, shape)
    yt.backward(torch.tensor(dy))
    dx, dw, db = nbn.group_norm_backward(dy, x, mean, invstd, groups, w)
    np.testing.assert_allclose(dx, _np(xt.grad), rtol=1e-9, atol=1e-9)
    if w is not None:
        np.testing.assert_allclose(dw, _np(wt.grad), rtol=1e-9, atol=1e-9)
    if b is not None:
        np.testing.assert_allclose(db, _np(bt.grad), rtol=1e-9, atol=1e-9)


# PyTorch's sample_inputs_instance_norm: (shape, momentum, eps, use_input_stats).
INSTANCE_SAMPLES = [((S, S, S), 0.5, 0.6, True), ((3, 2, 4), -1.2, 1e-5, True),
                    ((3, 2, 4), 0.0, 1e-5, True), ((3, 2, 3, 4), -1.0, 0.5, True),
                    ((3, 2, 3, 4), 0.5, 0.5, False)]


@pytest.mark.parametrize("shape, momentum, eps, use_input_stats", INSTANCE_SAMPLES)
def test_instance_norm_on_torch_samples(rng, shape, momentum, eps, use_input_stats):
    c = shape[1]
    x, w, b = _make(rng, shape), _make(rng, c), _make(rng, c)
    rm, rv = rng.uniform(0, 9, c), rng.uniform(0, 9, c)
    rmt, rvt = torch.tensor(rm), torch.tensor(rv)
    yt = torch.nn.functional.instance_norm(_t(x), rmt, rvt, _t(w), _t(b), use_input_stats,
                                           momentum, eps)
    y = nbn.instance_norm(x, rm, rv, w, b, use_input_stats, momentum, eps)
    np.testing.assert_allclose(y, _np(yt), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(rm, rmt.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rv, rvt.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_group_norm_layer_matches_torch_over_steps(rng, axis, dtype):
    ours = nbn.GroupNorm(4, 8, eps=1e-5, axis=axis, dtype=dtype)
    theirs = torch.nn.GroupNorm(4, 8, eps=1e-5, dtype=torch.float64)
    theirs.weight.data = torch.tensor(rng.standard_normal(8))
    theirs.bias.data = torch.tensor(rng.standard_normal(8))
    ours.load_state_dict({k: v.numpy().astype(dtype) for k, v in theirs.state_dict().items()})
    tol = 1e-5 if dtype == np.float32 else 1e-10
    for _ in range(3):
        x = (3 + rng.standard_normal((4, 8, 5, 6))).astype(dtype)
        xt = torch.tensor(x.astype(np.float64), requires_grad=True)
        yt = theirs(xt)
        xo = x if axis == 1 else np.ascontiguousarray(np.moveaxis(x, 1, -1))
        y = ours(xo)
        y = y if axis == 1 else np.moveaxis(y, -1, 1)
        np.testing.assert_allclose(y, _np(yt), rtol=tol, atol=tol)
        dy = rng.standard_normal(x.shape)
        yt.backward(torch.tensor(dy))
        dyo = dy.astype(dtype) if axis == 1 else np.ascontiguousarray(
            np.moveaxis(dy, 1, -1)).astype(dtype)
        dx = ours.backward(dyo)
        dx = dx if axis == 1 else np.moveaxis(dx, -1, 1)
        np.testing.assert_allclose(dx, _np(xt.grad), rtol=tol, atol=tol)
        np.testing.assert_allclose(ours.grad_weight, _np(theirs.weight.grad), rtol=tol,
                                   atol=tol * 10)
        np.testing.assert_allclose(ours.grad_bias, _np(theirs.bias.grad), rtol=tol,
                                   atol=tol * 10)
        theirs.zero_grad()


@pytest.mark.parametrize("ours_cls, torch_cls, shape", [
    (nbn.InstanceNorm1d, torch.nn.InstanceNorm1d, (4, 3, 7)),
    (nbn.InstanceNorm1d, torch.nn.InstanceNorm1d, (3, 7)),          # no batch axis
    (nbn.InstanceNorm2d, torch.nn.InstanceNorm2d, (4, 3, 5, 6)),
    (nbn.InstanceNorm2d, torch.nn.InstanceNorm2d, (3, 5, 6)),
    (nbn.InstanceNorm3d, torch.nn.InstanceNorm3d, (2, 3, 4, 3, 2)),
])
@pytest.mark.parametrize("affine, track, momentum", [
    (False, False, 0.2), (True, True, 0.2), (True, False, 0.2), (False, True, None)])
def test_instance_norm_layers_match_torch_over_steps_and_eval(rng, ours_cls, torch_cls, shape,
                                                              affine, track, momentum):
    ours = ours_cls(3, affine=affine, track_running_stats=track, momentum=momentum,
                    dtype=np.float64)
    theirs = torch_cls(3, affine=affine, track_running_stats=track, momentum=momentum,
                       dtype=torch.float64)
    if affine:
        theirs.weight.data = torch.tensor(rng.standard_normal(3))
        theirs.bias.data = torch.tensor(rng.standard_normal(3))
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    for training in (True, True, False):
        ours.train(training)
        theirs.train(training)
        x = 2 + rng.standard_normal(shape)
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt)
        np.testing.assert_allclose(ours(x), _np(yt), rtol=1e-10, atol=1e-10)
        dy = rng.standard_normal(shape)
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(ours.backward(dy), _np(xt.grad), rtol=1e-9, atol=1e-9)
        if affine:
            np.testing.assert_allclose(ours.grad_weight, _np(theirs.weight.grad), rtol=1e-9,
                                       atol=1e-9)
            np.testing.assert_allclose(ours.grad_bias, _np(theirs.bias.grad), rtol=1e-9,
                                       atol=1e-9)
            theirs.zero_grad()
        for key, value in theirs.state_dict().items():
            np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), rtol=1e-12)


@pytest.mark.parametrize("make", [
    lambda m: m.BatchNorm2d(4, bias=False),
    lambda m: m.InstanceNorm2d(4, affine=True, bias=False),
    lambda m: m.GroupNorm(2, 4, bias=False),
    lambda m: m.GroupNorm(2, 4, affine=False),
    lambda m: m.InstanceNorm1d(4, track_running_stats=True),
])
def test_state_keys_match_torch(make):
    ours, theirs = make(nbn), make(torch.nn)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})


@pytest.mark.parametrize("make", [
    lambda m, dtype: m.GroupNorm(2, 4, bias=False, dtype=dtype),
    lambda m, dtype: m.InstanceNorm1d(4, affine=True, bias=False, dtype=dtype),
    lambda m, dtype: m.BatchNorm1d(4, bias=False, dtype=dtype),
])
def test_layers_without_bias_match_torch(rng, make):
    ours, theirs = make(nbn, np.float64), make(torch.nn, torch.float64)
    theirs.weight.data = torch.tensor(rng.standard_normal(4))
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x = 2 + rng.standard_normal((3, 4, 6))
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    np.testing.assert_allclose(ours(x), _np(yt), rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(x.shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(ours.backward(dy), _np(xt.grad), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ours.grad_weight, _np(theirs.weight.grad), rtol=1e-9, atol=1e-9)
    assert ours.grad_bias is None and theirs.bias is None


def test_empty_batch_in_training_matches_torch():
    for make in (lambda m: m.BatchNorm1d(3), lambda m: m.InstanceNorm1d(3),
                 lambda m: m.GroupNorm(3, 3)):
        ours, theirs = make(nbn), make(torch.nn)
        x = np.zeros((0, 3, 4), np.float32)
        y = ours(x)
        assert y.shape == tuple(theirs(torch.tensor(x)).shape)
        assert ours.backward(y).shape == x.shape
        for key, value in theirs.state_dict().items():
            np.testing.assert_array_equal(ours.state_dict()[key], value.numpy())
    rm, rv = np.zeros(3), np.ones(3)
    assert nbn.batch_norm(np.zeros((0, 3)), rm, rv, training=True).shape == (0, 3)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


def test_empty_batch_leaves_instance_norm_buffers_where_pytorch_makes_them_nan():
    """The one documented difference: PyTorch 2.13 averages zero instances' statistics into
    the running buffers (NaN; with affine=True its layer raises IndexError); numbabn keeps
    them, as PyTorch does for batch norm."""
    ours = nbn.InstanceNorm1d(3, track_running_stats=True, dtype=np.float64)
    theirs = torch.nn.InstanceNorm1d(3, track_running_stats=True, dtype=torch.float64)
    x = np.zeros((0, 3, 4))
    assert ours(x).shape == tuple(theirs(torch.tensor(x)).shape) == x.shape
    assert np.isnan(theirs.running_mean.numpy()).all()
    np.testing.assert_array_equal(ours.running_mean, 0)
    np.testing.assert_array_equal(ours.running_var, 1)
    rm, rv = np.zeros(3), np.ones(3)
    assert nbn.instance_norm(x, rm, rv).shape == x.shape
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


@pytest.mark.parametrize("eps", [0.0, -0.5, -100.0])
@pytest.mark.parametrize("constant", [False, True])
def test_eps_zero_or_negative_as_pytorch_without_warnings(rng, eps, constant):
    """eps <= 0 is PyTorch's to take: NaN where variance + eps < 0, infinite sigma^-1
    where it is 0; numbabn gives the same values and no NumPy warnings on the way."""
    import warnings

    x = np.full((3, 4, 5), 2.0) if constant else _make(rng, (3, 4, 5))
    w, b, dy = _make(rng, 4), _make(rng, 4), _make(rng, (3, 4, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xt = _t(x, True)
        yt = torch.nn.functional.group_norm(xt, 2, _t(w), _t(b), eps)
        yt.backward(torch.tensor(dy))
        y, mean, invstd = nbn.group_norm_forward(x, 2, w, b, eps=eps)
        dx = nbn.group_norm_backward(dy, x, mean, invstd, 2, w)[0]
        np.testing.assert_allclose(y, _np(yt), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dx, _np(xt.grad), rtol=1e-9, atol=1e-9)
        xt = _t(x, True)
        yt = torch.nn.functional.instance_norm(xt, None, None, _t(w), _t(b), True, 0.1, eps)
        yt.backward(torch.tensor(dy))
        y, mean, invstd = nbn.instance_norm_forward(x, w, b, eps=eps)
        dx = nbn.instance_norm_backward(dy, x, mean, invstd, w)[0]
    if constant and eps == 0.0:
        # PyTorch's instance norm takes sigma^-1 = 0 there (y = beta); numbabn infinity (NaN).
        assert np.all(np.isnan(y)) and np.allclose(_np(yt), b[None, :, None])
        return
    np.testing.assert_allclose(y, _np(yt), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, _np(xt.grad), rtol=1e-9, atol=1e-9)
