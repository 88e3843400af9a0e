"""Folding eval-mode batch norm into Linear / Conv weights (numbabn.fold)."""
import numpy as np
import pytest

import numbabn
from reference import forward_infer


def _bn_params(rng, c, dtype=np.float32):
    rm = rng.normal(0.5, 2.0, c).astype(dtype)
    rv = rng.uniform(0.2, 3.0, c).astype(dtype)
    gamma = rng.normal(1.0, 0.5, c).astype(dtype)
    beta = rng.normal(0.0, 0.5, c).astype(dtype)
    return rm, rv, gamma, beta


def _conv2d(x, w, b):
    """Direct (N, Cin, H, W) x (Cout, Cin, kh, kw) 'valid' convolution in float64, stride 1."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    n, cin, h, wd = x.shape
    cout, _, kh, kw = w.shape
    y = np.zeros((n, cout, h - kh + 1, wd - kw + 1))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i:i + h - kh + 1, j:j + wd - kw + 1]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    if b is not None:
        y += b.astype(np.float64).reshape(1, -1, 1, 1)
    return y


def _conv_transpose2d(x, w, b):
    """(N, Cin, H, W) x (Cin, Cout, kh, kw) transposed convolution (stride 1, no padding)."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    n, cin, h, wd = x.shape
    _, cout, kh, kw = w.shape
    y = np.zeros((n, cout, h + kh - 1, wd + kw - 1))
    for i in range(kh):
        for j in range(kw):
            y[:, :, i:i + h, j:j + wd] += np.einsum("nchw,co->nohw", x, w[:, :, i, j])
    if b is not None:
        y += b.astype(np.float64).reshape(1, -1, 1, 1)
    return y


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_fold_matches_batch_norm(rng, with_bias, dtype):
    W = rng.normal(size=(6, 5)).astype(dtype)
    B = rng.normal(size=6).astype(dtype) if with_bias else None
    rm, rv, gamma, beta = _bn_params(rng, 6, dtype)
    x = rng.normal(size=(7, 5)).astype(dtype)
    w, b = numbabn.fuse_linear_bn_weights(W, B, rm, rv, 1e-3, gamma, beta)
    assert w.dtype == dtype and b.dtype == dtype and w.shape == W.shape and b.shape == (6,)
    z = x.astype(np.float64) @ W.T.astype(np.float64)
    if B is not None:
        z += B
    expected = forward_infer(z, rm, rv, gamma, beta, eps=1e-3)
    got = x.astype(np.float64) @ w.T.astype(np.float64) + b
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * 10)
    # And the numbabn layer in eval mode agrees.
    y = numbabn.batch_norm(z.astype(dtype), rm, rv, gamma, beta, eps=1e-3)
    np.testing.assert_allclose(got, y, rtol=5 * tol, atol=50 * tol)


def test_linear_fold_is_float64_arithmetic_rounded_once(rng):
    W = rng.normal(size=(4, 3)).astype(np.float32)
    B = rng.normal(size=4).astype(np.float32)
    rm, rv, gamma, beta = _bn_params(rng, 4)
    w, b = numbabn.fuse_linear_bn_weights(W, B, rm, rv, 1e-5, gamma, beta)
    s = gamma.astype(np.float64) / np.sqrt(rv.astype(np.float64) + 1e-5)
    np.testing.assert_array_equal(w, (W * s[:, None]).astype(np.float32))
    np.testing.assert_array_equal(b, ((B - rm.astype(np.float64)) * s + beta).astype(np.float32))


def test_linear_fold_bias_dtype_and_defaults(rng):
    W = rng.normal(size=(3, 2)).astype(np.float32)
    B = rng.normal(size=3)  # float64 bias keeps its dtype, as in PyTorch
    rm, rv, _, _ = _bn_params(rng, 3)
    w, b = numbabn.fuse_linear_bn_weights(W, B, rm, rv, 1e-5, None, None)
    assert w.dtype == np.float32 and b.dtype == np.float64
    s = 1.0 / np.sqrt(rv.astype(np.float64) + 1e-5)
    np.testing.assert_allclose(b, (B - rm) * s, rtol=1e-12)


def test_one_channel_batch_norm_broadcasts(rng):
    W = rng.normal(size=(3, 2)).astype(np.float64)
    w, b = numbabn.fuse_linear_bn_weights(W, None, np.array([1.0]), np.array([4.0]), 1e-5,
                                          np.array([2.0]), np.array([0.5]))
    s = 2.0 / np.sqrt(4.0 + 1e-5)
    np.testing.assert_allclose(w, W * s, rtol=1e-15)
    np.testing.assert_allclose(b, np.full(3, -s + 0.5), rtol=1e-15)


@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_fold_matches_batch_norm(rng, with_bias):
    W = rng.normal(size=(4, 3, 3, 2))
    B = rng.normal(size=4) if with_bias else None
    rm, rv, gamma, beta = _bn_params(rng, 4, np.float64)
    x = rng.normal(size=(2, 3, 6, 5))
    w, b = numbabn.fuse_conv_bn_weights(W, B, rm, rv, 1e-5, gamma, beta)
    expected = forward_infer(_conv2d(x, W, B), rm, rv, gamma, beta)
    np.testing.assert_allclose(_conv2d(x, w, b), expected, rtol=1e-12, atol=1e-12)


def test_conv_transpose_fold_matches_batch_norm(rng):
    W = rng.normal(size=(3, 5, 2, 2))  # (in, out, kh, kw)
    B = rng.normal(size=5)
    rm, rv, gamma, beta = _bn_params(rng, 5, np.float64)
    x = rng.normal(size=(2, 3, 4, 4))
    w, b = numbabn.fuse_conv_bn_weights(W, B, rm, rv, 1e-5, gamma, beta, transpose=True)
    expected = forward_infer(_conv_transpose2d(x, W, B), rm, rv, gamma, beta)
    np.testing.assert_allclose(_conv_transpose2d(x, w, b), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="output channels"):
        numbabn.fuse_conv_bn_weights(W, B, rm, rv, 1e-5, gamma, beta)  # axis 0 has 3


@pytest.mark.parametrize("kind", ["linear", "conv", "conv_transpose"])
def test_fold_batch_norm_from_layer(rng, kind):
    layer = numbabn.BatchNorm1d(4, eps=1e-4)
    layer.running_mean[...], layer.running_var[...], layer.weight[...], layer.bias[...] = (
        _bn_params(rng, 4))
    shape = {"linear": (4, 3), "conv": (4, 3, 2), "conv_transpose": (3, 4, 2)}[kind]
    W = rng.normal(size=shape).astype(np.float32)
    with pytest.raises(ValueError, match="eval"):
        numbabn.fold_batch_norm(layer, W, kind=kind)
    layer.eval()
    w, b = numbabn.fold_batch_norm(layer, W, kind=kind)
    expected = numbabn.fuse_conv_bn_weights(
        W, None, layer.running_mean, layer.running_var, 1e-4, layer.weight, layer.bias,
        transpose=kind == "conv_transpose")
    np.testing.assert_array_equal(w, expected[0])
    np.testing.assert_array_equal(b, expected[1])


def test_fold_batch_norm_checks(rng):
    layer = numbabn.BatchNorm1d(3, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="running statistics"):
        numbabn.fold_batch_norm(layer, np.ones((3, 2)))
    layer = numbabn.BatchNorm1d(3).eval()
    with pytest.raises(ValueError, match="kind"):
        numbabn.fold_batch_norm(layer, np.ones((3, 2)), kind="conv2d")
    with pytest.raises(ValueError, match="output channels"):
        numbabn.fold_batch_norm(layer, np.ones((4, 2)))
    with pytest.raises(TypeError):
        numbabn.fold_batch_norm(layer, np.ones((3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="linear_b"):
        numbabn.fold_batch_norm(layer, np.ones((3, 2)), np.ones(2))
    # Without affine parameters the fold uses gamma = 1, beta = 0.
    layer = numbabn.BatchNorm1d(3, affine=False).eval()
    layer.running_var[...] = 4.0
    w, b = numbabn.fold_batch_norm(layer, np.ones((3, 2)))
    np.testing.assert_allclose(w, np.full((3, 2), 1 / np.sqrt(4 + 1e-5)))
    np.testing.assert_array_equal(b, np.zeros(3))


@pytest.mark.parametrize("with_bias", [True, False])
def test_against_torch(rng, with_bias):
    torch = pytest.importorskip("torch")
    from torch.nn.utils import fusion

    rm, rv, gamma, beta = (torch.from_numpy(a.astype(np.float64)) for a in _bn_params(rng, 4))
    lin_w = torch.from_numpy(rng.normal(size=(4, 3)))
    lin_b = torch.from_numpy(rng.normal(size=4)) if with_bias else None
    tw, tb = fusion.fuse_linear_bn_weights(lin_w, lin_b, rm, rv, 1e-5, gamma, beta)
    w, b = numbabn.fuse_linear_bn_weights(lin_w.numpy(), None if lin_b is None else lin_b.numpy(),
                                          rm.numpy(), rv.numpy(), 1e-5, gamma.numpy(), beta.numpy())
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(b, tb.detach().numpy(), rtol=1e-14, atol=1e-15)
    for transpose, shape in ((False, (4, 2, 3, 3)), (True, (2, 4, 3, 3))):
        conv_w = torch.from_numpy(rng.normal(size=shape))
        tw, tb = fusion.fuse_conv_bn_weights(conv_w, lin_b, rm, rv, 1e-5, gamma, beta, transpose)
        w, b = numbabn.fuse_conv_bn_weights(
            conv_w.numpy(), None if lin_b is None else lin_b.numpy(), rm.numpy(), rv.numpy(),
            1e-5, gamma.numpy(), beta.numpy(), transpose=transpose)
        np.testing.assert_allclose(w, tw.detach().numpy(), rtol=1e-14)
        np.testing.assert_allclose(b, tb.detach().numpy(), rtol=1e-14, atol=1e-15)
