"""Inputs whose channels are stored elsewhere than where they are seen (PyTorch's
``channels_last`` as NumPy sees it): read where they lie, results in the same layout.

Each call on such a view must give exactly the bits of the same call on the
stored array with the channel axis where it is stored, and its full-size
results must have the view's layout (a result copied back to C order would
mean the input was copied too: the 7-25x slower path this replaced).
"""
import numpy as np
import pytest

import numbabn as nbn
from numbabn._memory_order import stored_channel_axis

SHAPE = (4, 6, 5, 3)  # (N, C, H, W)


def _stored_last(rng, dtype=np.float32, shape=SHAPE):
    """``(view, stored)``: an (N, C, H, W) view of NHWC memory, and that NHWC array."""
    n, c, *spatial = shape
    stored = (3 + 2 * rng.standard_normal((n, *spatial, c))).astype(dtype)
    return np.moveaxis(stored, -1, 1), stored


def _keeps_layout(result, view):
    """True when ``result`` is laid out as ``view`` (channels stored last)."""
    return result.shape == view.shape and np.moveaxis(result, 1, -1).flags.c_contiguous


def _vectors(rng, c, dtype=np.float32):
    return tuple((1 + 0.2 * rng.standard_normal(c)).astype(dtype) for _ in range(4))


def _forward_calls(rng, dtype):
    w, b, rm, rv = _vectors(rng, SHAPE[1], dtype)
    rv = np.abs(rv)
    return {
        "batch_norm_forward": lambda x, axis: nbn.batch_norm_forward(x, w, b, axis=axis),
        "batch_norm eval": lambda x, axis: nbn.batch_norm(x, rm, rv, w, b, axis=axis),
        "batch_norm relu + residual": lambda x, axis: nbn.batch_norm_forward(
            x, w, b, axis=axis, activation="relu", residual=x[::-1]),
        "group_norm_forward": lambda x, axis: nbn.group_norm_forward(x, 3, w, b, axis=axis),
        "instance_norm_forward": lambda x, axis: nbn.instance_norm_forward(x, w, b, axis=axis),
        "instance_norm eval": lambda x, axis: nbn.instance_norm(
            x, rm, rv, w, b, use_input_stats=False, axis=axis),
        "batch_renorm_forward": lambda x, axis: nbn.batch_renorm_forward(
            x, rm.copy(), rv.copy(), w, b, axis=axis),
        "channel_moments": lambda x, axis: nbn.channel_moments(x, axis=axis),
    }


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def _same(result, expected, view):
    """Full-size arrays equal and in the view's layout; the others equal."""
    assert len(result) == len(expected)
    for got, want in zip(result, expected):
        if got.ndim == view.ndim:
            assert _keeps_layout(got, view)
            np.testing.assert_array_equal(got, np.moveaxis(want, -1, 1))
        else:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("name", list(_forward_calls(np.random.default_rng(0), np.float32)))
def test_forward_reads_channels_where_they_are_stored(name, dtype):
    rng = np.random.default_rng(1)
    view, stored = _stored_last(rng, dtype)
    call = _forward_calls(rng, dtype)[name]
    expected = _as_tuple(call(stored, -1))
    _same(_as_tuple(call(view, 1)), expected, view)


def test_residual_and_running_buffers_follow_the_view():
    """The residual is seen like x; running buffers are updated as with the stored array."""
    rng = np.random.default_rng(2)
    view, stored = _stored_last(rng)
    w, b, rm, rv = _vectors(rng, SHAPE[1])
    r_view, r_stored = _stored_last(rng)
    buffers_view, buffers_stored = (rm.copy(), rv.copy()), (rm.copy(), rv.copy())
    got = nbn.batch_norm_forward(view, w, b, axis=1, activation="relu", residual=r_view,
                                 running_mean=buffers_view[0], running_var=buffers_view[1])
    want = nbn.batch_norm_forward(stored, w, b, axis=-1, activation="relu", residual=r_stored,
                                  running_mean=buffers_stored[0],
                                  running_var=buffers_stored[1])
    _same(got, want, view)
    np.testing.assert_array_equal(buffers_view, buffers_stored)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_reads_channels_where_they_are_stored(dtype):
    rng = np.random.default_rng(3)
    view, stored = _stored_last(rng, dtype)
    dy_view, dy_stored = _stored_last(rng, dtype)
    w, b, _, _ = _vectors(rng, SHAPE[1], dtype)
    cases = {
        "batch": (lambda x, axis: nbn.batch_norm_forward(x, w, b, axis=axis),
                  lambda dy, x, m, s, axis: nbn.batch_norm_backward(dy, x, m, s, w, axis=axis)),
        "group": (lambda x, axis: nbn.group_norm_forward(x, 2, w, b, axis=axis),
                  lambda dy, x, m, s, axis: nbn.group_norm_backward(dy, x, m, s, 2, w,
                                                                    axis=axis)),
        "instance": (lambda x, axis: nbn.instance_norm_forward(x, w, b, axis=axis),
                     lambda dy, x, m, s, axis: nbn.instance_norm_backward(dy, x, m, s, w,
                                                                          axis=axis)),
    }
    for forward, backward in cases.values():
        _, mean, invstd = forward(stored, -1)
        want = backward(dy_stored, stored, mean, invstd, -1)
        _same(backward(dy_view, view, mean, invstd, 1), want, view)


def test_fused_backward_moves_y_and_returns_the_residual_gradient_in_the_view_layout():
    rng = np.random.default_rng(4)
    view, stored = _stored_last(rng)
    dy_view, dy_stored = _stored_last(rng)
    w, b, _, _ = _vectors(rng, SHAPE[1])
    y, mean, invstd = nbn.batch_norm_forward(stored, w, b, axis=-1, activation="leaky_relu")
    want = nbn.batch_norm_backward(dy_stored, stored, mean, invstd, w, axis=-1,
                                   activation="leaky_relu", y=y, residual=True)
    got = nbn.batch_norm_backward(dy_view, view, mean, invstd, w, axis=1,
                                  activation="leaky_relu", y=np.moveaxis(y, -1, 1),
                                  residual=True)
    assert len(got) == 4
    _same(got, want, view)


def test_nchw_memory_seen_channels_last():
    """The other way round: NCHW memory seen as (N, H, W, C) with ``axis=-1``."""
    rng = np.random.default_rng(5)
    stored = rng.standard_normal(SHAPE).astype(np.float32)
    view = np.moveaxis(stored, 1, -1)
    assert stored_channel_axis(view, -1) == 1
    y, mean, invstd = nbn.group_norm_forward(view, 3, axis=-1)
    want = nbn.group_norm_forward(stored, 3, axis=1)
    assert np.moveaxis(y, -1, 1).flags.c_contiguous
    np.testing.assert_array_equal(np.moveaxis(y, -1, 1), want[0])
    np.testing.assert_array_equal(mean, want[1])
    np.testing.assert_array_equal(invstd, want[2])


@pytest.mark.parametrize("out_layout", ["view", "c_order"])
def test_out_is_written_and_returned(out_layout):
    rng = np.random.default_rng(6)
    view, stored = _stored_last(rng)
    want = nbn.group_norm(stored, 2, axis=-1)
    out = (_stored_last(rng)[0] if out_layout == "view"
           else np.full(SHAPE, np.nan, np.float32))
    y = nbn.group_norm(view, 2, out=out)
    assert y is out
    np.testing.assert_array_equal(out, np.moveaxis(want, -1, 1))


def test_in_place_on_the_view():
    rng = np.random.default_rng(7)
    view, stored = _stored_last(rng)
    want = nbn.instance_norm(stored.copy(), axis=-1)
    y = nbn.instance_norm(view, out=view)
    assert y is view
    np.testing.assert_array_equal(stored, want)


def test_errors_name_the_shapes_the_caller_passed():
    rng = np.random.default_rng(8)
    view, _ = _stored_last(rng)
    rm, rv = np.zeros(SHAPE[1], np.float32), np.ones(SHAPE[1], np.float32)
    before = (rm.copy(), rv.copy())
    with pytest.raises(ValueError, match=r"\(4, 6, 5, 3\)"):
        nbn.batch_norm(view, rm, rv, training=True, out=np.empty((4, 6, 5, 2), np.float32))
    with pytest.raises(ValueError, match="num_groups"):
        nbn.group_norm(view, 4)
    with pytest.raises(ValueError, match="batch axis"):
        nbn.group_norm(view, 3, axis=0)
    np.testing.assert_array_equal((rm, rv), before)


@pytest.mark.parametrize("make, axis, expected", [
    (lambda a: a, 1, None),                                    # C-contiguous: nothing to do
    (lambda a: np.moveaxis(a, 1, -1), 1, None),                # channels already last
    (lambda a: np.moveaxis(a, -1, 1), 1, 3),                   # NHWC memory seen NCHW
    (lambda a: np.moveaxis(a, -1, 1), -3, 3),                  # the same, negative axis
    (lambda a: np.moveaxis(a, -1, 1)[:, :, ::2], 1, None),     # strided: copied as before
    (lambda a: np.moveaxis(a, 0, 1), 1, None),                 # channels stored first
    (lambda a: np.moveaxis(a, -1, 1), 9, None),                # bad axis: left to the checks
    (lambda a: np.moveaxis(a, -1, 1), True, None),
])
def test_stored_channel_axis(make, axis, expected):
    a = np.zeros((2, 3, 4, 5), np.float32)
    assert stored_channel_axis(make(a), axis) == expected


def test_layers_keep_the_layout_through_forward_and_backward():
    rng = np.random.default_rng(9)
    view, stored = _stored_last(rng)
    dy_view, dy_stored = _stored_last(rng)
    for make in (lambda axis: nbn.BatchNorm2d(SHAPE[1], axis=axis),
                 lambda axis: nbn.GroupNorm(3, SHAPE[1], axis=axis)):
        on_view, on_stored = make(1), make(-1)
        y = on_view(view)
        assert _keeps_layout(y, view)
        np.testing.assert_array_equal(y, np.moveaxis(on_stored(stored), -1, 1))
        dx = on_view.backward(dy_view)
        assert _keeps_layout(dx, view)
        np.testing.assert_array_equal(dx, np.moveaxis(on_stored.backward(dy_stored), -1, 1))
        np.testing.assert_array_equal(on_view.grad_weight, on_stored.grad_weight)


def test_sync_batch_norm_reads_the_view_where_it_lies():
    MPI = pytest.importorskip("mpi4py.MPI")
    rng = np.random.default_rng(10)
    view, stored = _stored_last(rng)
    dy_view, dy_stored = _stored_last(rng)
    comm = MPI.COMM_SELF
    got = nbn.sync_batch_norm_forward(view, comm=comm)
    want = nbn.sync_batch_norm_forward(stored, comm=comm, axis=-1)
    _same(got, want, view)
    _same(nbn.sync_batch_norm_backward(dy_view, view, got[1], got[2], comm=comm),
          nbn.sync_batch_norm_backward(dy_stored, stored, want[1], want[2], comm=comm, axis=-1),
          view)
