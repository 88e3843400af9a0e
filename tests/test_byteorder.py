"""Big-endian (non-native) float input is accepted everywhere and gives the native results."""
import numpy as np
import pytest

import numbabn as nbn
from numbabn import _accumulate
from numbabn import _validate as v

#: The byte order that is not this machine's.
OTHER = ">" if np.little_endian else "<"


def swapped(a):
    """``a`` with the same values in the other byte order."""
    out = np.asarray(a).astype(np.asarray(a).dtype.newbyteorder(OTHER))
    assert not out.dtype.isnative
    return out


@pytest.fixture(params=[np.float32, np.float64])
def data(request, rng):
    dtype = request.param
    x = (1e4 + rng.standard_normal((6, 4, 5, 3))).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(4)).astype(dtype)
    b = (0.1 * rng.standard_normal(4)).astype(dtype)
    return x, dy, w, b


def test_validation_accepts_either_byte_order():
    for name in ("f2", "f4", "f8"):
        native = np.dtype(name)
        assert v.float_dtype("x", np.dtype(OTHER + name)) == native
        assert v.float_dtype("x", np.dtype(OTHER + name)).isnative
        assert v.compute_dtype(np.dtype(OTHER + name)).isnative
    assert v.compute_dtype(np.dtype(OTHER + "f2")) == np.float32
    assert v.stats_dtype(np.dtype(OTHER + "f8")) == np.float64
    assert v.stats_dtype(np.dtype(OTHER + "f4")) == np.float32
    with pytest.raises(TypeError, match=r"got >i4|got <i4"):
        v.float_dtype("x", np.dtype(OTHER + "i4"))


def test_functional_forward_and_moments(data):
    x, _, w, b = data
    y, mean, invstd = nbn.batch_norm_forward(x, w, b)
    ys, means, invstds = nbn.batch_norm_forward(swapped(x), swapped(w), swapped(b))
    assert ys.dtype == x.dtype and ys.dtype.isnative
    np.testing.assert_array_equal(ys, y)
    np.testing.assert_array_equal(means, mean)
    np.testing.assert_array_equal(invstds, invstd)
    for got, want in zip(nbn.channel_moments(swapped(x), ddof=1), nbn.channel_moments(x, ddof=1)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_functional_running_buffers_updated_in_place(data):
    x, _, w, b = data
    rm, rv = np.zeros(4, x.dtype), np.ones(4, x.dtype)
    rms, rvs = swapped(rm), swapped(rv)
    y = nbn.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3)
    ys = nbn.batch_norm(swapped(x), rms, rvs, w, b, training=True, momentum=0.3)
    np.testing.assert_array_equal(ys, y)
    assert not rms.dtype.isnative  # the caller's buffers, written in place
    np.testing.assert_array_equal(rms, rm)
    np.testing.assert_array_equal(rvs, rv)
    rms2, rvs2 = swapped(np.zeros(4, x.dtype)), swapped(np.ones(4, x.dtype))
    nbn.batch_norm_forward(swapped(x), running_mean=rms2, running_var=rvs2, momentum=0.3)
    np.testing.assert_array_equal(rms2, rm)
    # inference with big-endian running statistics
    np.testing.assert_array_equal(nbn.batch_norm(swapped(x), rms, rvs, swapped(w), swapped(b)),
                                  nbn.batch_norm(x, rm, rv, w, b))


def test_failed_call_leaves_big_endian_buffers_untouched(data):
    x, _, _, _ = data
    rms, rvs = swapped(np.zeros(4, x.dtype)), swapped(np.ones(4, x.dtype))
    with pytest.raises(ValueError):
        nbn.batch_norm(swapped(x), rms, rvs, np.ones(5), training=True)
    np.testing.assert_array_equal(rms, 0.0)
    np.testing.assert_array_equal(rvs, 1.0)


def test_functional_backward_and_out(data):
    x, dy, w, b = data
    y, mean, invstd = nbn.batch_norm_forward(x, w, b)
    grads = nbn.batch_norm_backward(dy, x, mean, invstd, w)
    grads_s = nbn.batch_norm_backward(swapped(dy), swapped(x), swapped(mean), swapped(invstd),
                                      swapped(w))
    for got, want in zip(grads_s, grads):
        np.testing.assert_array_equal(got, want)
    out = swapped(np.empty_like(x))
    assert nbn.batch_norm_forward(swapped(x), w, b, out=out)[0] is out
    np.testing.assert_array_equal(out, y)


def test_layers(data):
    x, dy, _, _ = data
    layer, layer_s = nbn.BatchNorm2d(4, dtype=x.dtype), nbn.BatchNorm2d(4, dtype=x.dtype)
    np.testing.assert_array_equal(layer_s(swapped(x)), layer(x))
    np.testing.assert_array_equal(layer_s.backward(swapped(dy)), layer.backward(dy))
    np.testing.assert_array_equal(layer_s.running_var, layer.running_var)
    layer.eval(), layer_s.eval()
    np.testing.assert_array_equal(layer_s(swapped(x)), layer(x))
    state = {k: swapped(val) if val.dtype.kind == "f" else val
             for k, val in layer.state_dict().items()}
    other = nbn.BatchNorm2d(4, dtype=x.dtype)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.running_mean, layer.running_mean)
    big = nbn.BatchNorm2d(4, dtype=np.dtype(OTHER + "f4"))
    assert big.running_mean.dtype == np.float32 and big.running_mean.dtype.isnative


def test_accumulator(data):
    x, _, _, _ = data
    acc, acc_s = nbn.ChannelMoments(), nbn.ChannelMoments(dtype=np.dtype(OTHER + "f8"))
    acc.update(x[:2]).update(x[2:])
    acc_s.update(swapped(x[:2])).update(swapped(x[2:]))
    assert acc_s.mean.dtype.isnative
    np.testing.assert_array_equal(acc_s.mean, acc.mean)
    np.testing.assert_array_equal(acc_s.var(), acc.var())


def test_accumulator_converts_a_big_endian_memmap_slab_by_slab(rng, tmp_path, monkeypatch):
    x = (1e4 + rng.standard_normal((32, 3, 256))).astype(np.float32)
    path = tmp_path / "big_endian.f32"
    x.astype(">f4").tofile(path)  # as a FITS file stores it
    mm = np.memmap(path, dtype=">f4", mode="r", shape=x.shape)
    slab_rows = 4
    monkeypatch.setattr(_accumulate, "SLAB_BYTES", slab_rows * 3 * 256 * 4)
    converted = []
    real_view3 = _accumulate.select_backend("cpu", x)._view3

    def view3(a, lay):
        out = real_view3(a, lay)
        if out.dtype != a.dtype:
            converted.append(a.shape[0])
        return out

    monkeypatch.setattr(_accumulate.select_backend("cpu", x), "_view3", view3)
    acc = nbn.ChannelMoments().update(mm)
    assert converted == [slab_rows] * 8  # never the whole file at once
    np.testing.assert_allclose(acc.var(), nbn.ChannelMoments().update(x).var(), rtol=1e-12)
    del mm


def test_sync_batch_norm_big_endian_running_buffers(data):
    MPI = pytest.importorskip("mpi4py.MPI")
    x, _, w, b = data
    rm, rv = np.zeros(4, x.dtype), np.ones(4, x.dtype)
    rms, rvs = swapped(rm), swapped(rv)
    y, _, _ = nbn.sync_batch_norm_forward(x, w, b, comm=MPI.COMM_SELF, running_mean=rm,
                                          running_var=rv)
    ys, _, _ = nbn.sync_batch_norm_forward(swapped(x), w, b, comm=MPI.COMM_SELF,
                                           running_mean=rms, running_var=rvs)
    np.testing.assert_array_equal(ys, y)
    np.testing.assert_array_equal(rms, rm)
    np.testing.assert_array_equal(rvs, rv)
