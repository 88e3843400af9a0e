"""Arrays from other libraries: CuPy and PyTorch CUDA tensors, without copies.

These need a real GPU; they are skipped under the simulator and where the
library is not installed.  Numba device arrays are used by every other test.
"""
import numpy as np
import pytest

import numbabn as nbn
import reference as ref
from numbabn.cuda import _runtime as rt

pytestmark = pytest.mark.skipif(rt.SIMULATED, reason="needs a real GPU")


def _pointer(a):
    return a.__cuda_array_interface__["data"][0]


def test_cupy_arrays(rng):
    cp = pytest.importorskip("cupy")
    x_host = rng.standard_normal((8, 4, 50)).astype(np.float32)
    x = cp.asarray(x_host)
    w, b = cp.asarray(rng.standard_normal(4).astype(np.float32)), cp.zeros(4, cp.float32)
    rm, rv = cp.zeros(4, cp.float32), cp.ones(4, cp.float32)
    out = cp.empty_like(x)
    y = nbn.batch_norm(x, rm, rv, w, b, training=True, out=out)
    y_ref, mean_ref, _, _ = ref.forward_train(x_host, cp.asnumpy(w), cp.asnumpy(b))
    assert y is out
    np.testing.assert_allclose(cp.asnumpy(out), y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cp.asnumpy(rm), 0.1 * mean_ref, rtol=1e-5, atol=1e-6)
    y, mean, invstd = nbn.batch_norm_forward(x)
    wrapped = cp.asarray(y)  # no copy: the result exposes __cuda_array_interface__
    assert _pointer(wrapped) == _pointer(y)


def test_torch_cuda_tensors(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    x_host = rng.standard_normal((8, 4, 6, 6)).astype(np.float32)
    x = torch.as_tensor(x_host, device="cuda")
    rm, rv = torch.zeros(4, device="cuda"), torch.ones(4, device="cuda")
    y = nbn.batch_norm(x, rm, rv, training=True, momentum=0.1)
    expected = torch.nn.functional.batch_norm(
        x, torch.zeros(4, device="cuda"), torch.ones(4, device="cuda"), training=True)
    y_t = torch.as_tensor(y, device="cuda")
    assert y_t.data_ptr() == _pointer(y)
    torch.testing.assert_close(y_t, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rm, x.mean(dim=(0, 2, 3)) * 0.1, rtol=1e-5, atol=1e-6)
    out = torch.empty_like(x)
    assert nbn.batch_norm(x, rm, rv, out=out) is out
    # a channels_last tensor is read in place, and the result keeps that memory order
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y = torch.as_tensor(nbn.batch_norm_forward(x_cl)[0], device="cuda")
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    nhwc = x.permute(0, 2, 3, 1).contiguous()  # or its (N, H, W, C) view with axis=-1
    y = nbn.batch_norm_forward(nhwc, axis=-1)[0]
    torch.testing.assert_close(torch.as_tensor(y, device="cuda").permute(0, 3, 1, 2), expected,
                               rtol=1e-5, atol=1e-5)
