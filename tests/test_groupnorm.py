"""group_norm / instance_norm against the float64 reference, PyTorch, and their rules."""
import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numbabn as nbn
from numbabn.cpu import _chunks
from reference_samples import group_backward, group_forward, instance_running, loss_gradient_fd

from conftest import assert_within_ulp, tolerance

# (shape, axis, groups): NCHW rows (fused per (sample, group)), channels-last samples,
# an axis in the middle (the engine's composition of batch-norm kernels), rank 2.
LAYOUTS = [
    ((4, 6, 5, 3), 1, 3),
    ((3, 8, 7, 7), 1, 2),        # segments of 49 values: the backward's short lanes and a tail
    ((3, 5, 4, 8), -1, 2),
    ((3, 4, 6, 5), 2, 3),
    ((5, 8), 1, 4),
    ((2, 12, 70, 50), 1, 4),     # large enough for the parallel kernels
    ((2, 40, 50, 12), -1, 3),
]


def _data(rng, shape, dtype, offset=0.0):
    return (offset + 2.0 * rng.standard_normal(shape) + 0.5).astype(dtype)


def _affine(rng, c, dtype):
    return rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)


def _close(actual, expected, dtype, scale=1.0):
    tol = tolerance(dtype)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=tol,
                               atol=tol * scale)


@pytest.mark.parametrize("shape, axis, groups", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_group_norm_forward_and_backward(rng, shape, axis, groups, dtype):
    x = _data(rng, shape, dtype)
    w, b = _affine(rng, shape[axis], dtype)
    y, mean, invstd = nbn.group_norm_forward(x, groups, w, b, axis=axis)
    y_ref, mean_ref, invstd_ref, _ = group_forward(x, groups, w, b, axis=axis)
    assert y.dtype == dtype and y.shape == x.shape
    assert mean.shape == invstd.shape == (shape[0], groups)
    assert mean.dtype == invstd.dtype == dtype
    _close(y, y_ref, dtype, 10)
    _close(mean, mean_ref, dtype, 10)
    _close(invstd, invstd_ref, dtype)
    dy = _data(rng, shape, dtype)
    dx, dw, db = nbn.group_norm_backward(dy, x, mean, invstd, groups, w, axis=axis)
    dx_ref, dw_ref, db_ref = group_backward(dy, x, groups, w, axis=axis)
    assert dx.dtype == dtype and dw.dtype == dtype and dw.shape == (shape[axis],)
    _close(dx, dx_ref, dtype, 10)
    _close(dw, dw_ref, dtype, np.abs(dw_ref).max() + 1)
    _close(db, db_ref, dtype, np.abs(db_ref).max() + 1)


@pytest.mark.parametrize("shape, axis, groups", LAYOUTS[:3])
def test_serial_and_parallel_kernels_give_the_same_bits(rng, monkeypatch, shape, axis, groups):
    if numba.get_num_threads() < 2:  # one thread: every kernel is the serial one
        pytest.skip("needs two Numba threads")
    x = _data(rng, shape, np.float32)
    dy = _data(rng, shape, np.float32)
    w, b = _affine(rng, shape[axis], np.float32)
    results = []
    for limit in (0, 1 << 30):  # everything parallel, then everything serial
        monkeypatch.setattr(_chunks, "SERIAL_MAX_ELEMENTS", limit)
        y, m, s = nbn.group_norm_forward(x, groups, w, b, axis=axis)
        results.append((y, m, s) + nbn.group_norm_backward(dy, x, m, s, groups, w, axis=axis))
    for a, b_ in zip(*results):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nchw_groups_whose_channels_differ_in_mean(rng, dtype):
    # A group's first channel sits 40 spreads away from the others: a row's first values
    # miss its mean, the row is read again, and the rest of its piece takes spread shifts.
    # Rows of both kinds within one piece, every piece parallel; float64 reference.
    x = 1e3 + rng.standard_normal((16, 8, 40, 40))
    x[:, ::4] += 40.0
    x[5:9] = 1e3 + rng.standard_normal((4, 8, 40, 40))  # groups whose channels agree
    x = x.astype(dtype)
    w, b = _affine(rng, 8, dtype)
    y, mean, invstd = nbn.group_norm_forward(x, 2, w, b)
    y_ref, mean_ref, invstd_ref, _ = group_forward(x, 2, w, b)
    _close(y, y_ref, dtype, 10)
    _close(mean, mean_ref, dtype, 1e3)
    _close(invstd, invstd_ref, dtype)


def test_offset_data_keeps_its_variance(rng):
    x = (1e4 + rng.standard_normal((4, 8, 32, 32))).astype(np.float32)
    for axis, xa in ((1, x), (-1, np.ascontiguousarray(np.moveaxis(x, 1, -1)))):
        _, _, invstd = nbn.group_norm_forward(xa, 2, eps=1e-5, axis=axis)
        _, _, invstd_ref, _ = group_forward(xa, 2, eps=1e-5, axis=axis)
        np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-6)


def test_gradients_match_finite_differences(rng):
    x = rng.standard_normal((2, 4, 3))
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    dy = rng.standard_normal(x.shape)
    for groups in (2, 4):
        _, mean, invstd = nbn.group_norm_forward(x, groups, w, b)
        dx, dw, db = nbn.group_norm_backward(dy, x, mean, invstd, groups, w)
        fd = loss_gradient_fd(lambda x_, w_, b_: group_forward(x_, groups, w_, b_)[0],
                              x, w, b, dy)
        for got, want in zip((dx, dw, db), fd):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channels_last_sample_whose_shift_misses_is_read_twice(rng, dtype):
    """Channels-last statistics run in one pass about sampled rows; atypical samples go again."""
    from numbabn.cpu import groups as kernels

    x = (0.5 + rng.standard_normal((2, 64, 64, 8))).astype(dtype)
    rows = x.reshape(2, -1, 8)                # the kernels' (N, A, C) view
    A = rows.shape[1]
    sampled = np.arange(kernels.COLUMN_SHIFT_ROWS) * (A // kernels.COLUMN_SHIFT_ROWS)
    rows[0, sampled, :4] = 300.0              # sample 0, group 0: every sampled row far off

    def one_pass_accepts(x2):
        shift = kernels._column_shifts(x2)
        s1, s2 = np.empty((1, 8)), np.empty((1, 8))
        kernels._column_sums(x2, 0, A, shift, s1[0], s2[0])
        return kernels._group_moments(shift, s1, s2, A, 4, np.empty(2), np.empty(2))

    assert not one_pass_accepts(rows[0]) and one_pass_accepts(rows[1])
    y, mean, invstd = nbn.group_norm_forward(x, 2, axis=-1)
    y_ref, mean_ref, invstd_ref, _ = group_forward(x, 2, axis=-1)
    tol = tolerance(dtype)
    np.testing.assert_allclose(mean, mean_ref, rtol=tol)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=tol / 10)
    np.testing.assert_allclose(y, y_ref, rtol=10 * tol, atol=10 * tol)


def test_channels_last_shift_from_enough_rows_that_typical_data_reads_once():
    """A column's shift is the mean of COLUMN_SHIFT_ROWS sampled rows: on N(0, 1) data
    a shift from 32 rows misses about one column in a thousand (each miss reads its
    whole sample twice more); from 128 rows, none of these 4096 columns."""
    from numbabn.cpu import groups as kernels

    x = np.random.default_rng(12345).standard_normal((32, 1024, 128)).astype(np.float32)
    A, C = x.shape[1:]

    def misses(x2, shift):
        s1, s2 = np.empty((1, C)), np.empty((1, C))
        kernels._column_sums(x2, 0, A, shift, s1[0], s2[0])
        return not kernels._group_moments(shift, s1, s2, A, 4, np.empty(C // 4),
                                          np.empty(C // 4))

    def sampled_shift(x2, k):
        return x2[np.arange(k) * (A // k)].astype(np.float64).mean(axis=0).astype(x2.dtype)

    np.testing.assert_array_equal(kernels._column_shifts(x[0]),
                                  sampled_shift(x[0], kernels.COLUMN_SHIFT_ROWS))
    assert sum(misses(x2, sampled_shift(x2, 32)) for x2 in x) > 0
    assert not any(misses(x2, kernels._column_shifts(x2)) for x2 in x)


def test_channels_last_kernels_give_the_same_bits(rng):
    """By sample, by piece of a sample, serial: the same pieces summed in the same order."""
    from numbabn.cpu import groups as kernels

    x3 = (3.0 + rng.standard_normal((3, 1100, 96))).astype(np.float32)   # 2 pieces a sample
    assert kernels.row_pieces(1100, 96)[1] > 1
    x3[1, ::34, :8] = 50.0                    # sample 1, groups 0-1: the shift misses
    w, b = rng.standard_normal(96), rng.standard_normal(96)
    results = []
    for kernel in (kernels._train_samples, kernels._train_sample_pieces,
                   kernels._train_samples_serial):
        y3 = np.empty_like(x3)
        results.append(kernel(x3, 4, w, b, 1e-5, y3) + (y3,))
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            np.testing.assert_array_equal(a, b_)


@given(
    n=st.integers(1, 3), groups=st.integers(1, 3), per=st.integers(1, 3),
    spatial=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    last=st.booleans(), f32=st.booleans(), offset=st.sampled_from([0.0, 1e3]),
    affine=st.booleans(),
)
def test_group_norm_property(n, groups, per, spatial, last, f32, offset, affine):
    c = groups * per
    shape = (n, *spatial, c) if last else (n, c, *spatial)
    axis = -1 if last else 1
    dtype = np.float32 if f32 else np.float64
    rng = np.random.default_rng(n * 100 + c)
    x = _data(rng, shape, dtype, offset)
    if n * per * int(np.prod(spatial)) == 1:
        with pytest.raises(ValueError, match="more than 1 value"):
            nbn.group_norm(x, groups, axis=axis)
        return
    w, b = _affine(rng, c, dtype) if affine else (None, None)
    y, mean, invstd = nbn.group_norm_forward(x, groups, w, b, axis=axis)
    y_ref, mean_ref, invstd_ref, var_ref = group_forward(x, groups, w, b, axis=axis)
    tol = tolerance(dtype)
    # Relative to the statistics' scale: a variance far below eps is not resolved.
    np.testing.assert_allclose(mean, mean_ref, rtol=tol, atol=tol * (abs(offset) + 10))
    np.testing.assert_allclose(invstd, invstd_ref, rtol=10 * tol, atol=tol)
    # y is of the order of |w| + |b| whatever the offset, which reaches y's error only
    # through eps * offset / sigma.
    np.testing.assert_allclose(y, y_ref, rtol=10 * tol, atol=tol)


def test_one_value_per_group_gives_the_bias():
    x = np.arange(12.0).reshape(2, 6)
    b = np.arange(6.0)
    np.testing.assert_array_equal(nbn.group_norm(x, 6, bias=b), np.tile(b, (2, 1)))


@pytest.mark.parametrize("shape, axis, offset", [
    ((3, 6, 4, 4), 1, 0.0),
    ((2, 8, 32, 32), 1, 100.0),    # 4096 values a group about 100: a float16 sum overflows
    ((2, 32, 32, 8), -1, 100.0),
])
def test_float16_is_computed_in_float32(rng, shape, axis, offset):
    x = _data(rng, shape, np.float16, offset)
    y, mean, invstd = nbn.group_norm_forward(x, 2, axis=axis)
    assert y.dtype == np.float16 and mean.dtype == invstd.dtype == np.float32
    # float32 arithmetic rounded once to float16: within an ulp of the float64 result.
    assert_within_ulp(y, group_forward(x, 2, axis=axis)[0], np.float16)


@pytest.mark.parametrize("axis", [1, -1])
def test_float16_backward_and_instance_norm_are_computed_in_float32(rng, axis):
    """4096 values a group about 100: float16 sums would be off by far more than an ulp."""
    shape = (2, 8, 32, 32) if axis == 1 else (2, 32, 32, 8)
    x = _data(rng, shape, np.float16, 100.0)
    dy = _data(rng, shape, np.float16)
    w = rng.uniform(0.5, 1.5, 8).astype(np.float16)
    y, mean, invstd = nbn.group_norm_forward(x, 2, w, axis=axis)
    dx, dw, db = nbn.group_norm_backward(dy, x, mean, invstd, 2, w, axis=axis)
    dx_ref, dw_ref, db_ref = group_backward(dy, x, 2, w, axis=axis)
    # dx's terms cancel: its error is relative to their scale (one float16 ulp of it).
    scale = np.abs(dx_ref).max()
    np.testing.assert_allclose(dx, dx_ref, rtol=2 ** -10, atol=2 ** -10 * scale)
    assert_within_ulp(dw, dw_ref, np.float16)
    assert_within_ulp(db, db_ref, np.float16)
    y_in = nbn.instance_norm(x, weight=w, axis=axis)
    assert_within_ulp(y_in, group_forward(x, 8, w, axis=axis)[0], np.float16)


@pytest.mark.parametrize("axis", [1, -1])
def test_out_in_place_and_non_contiguous(rng, axis):
    base = _data(rng, (4, 6, 5, 8), np.float64)
    x = base[:, :, :, ::2] if axis == 1 else base[:, ::2]
    assert not x.flags.c_contiguous
    y_ref = group_forward(x, 2, axis=axis)[0]
    np.testing.assert_allclose(nbn.group_norm(x, 2, axis=axis), y_ref, rtol=1e-12, atol=1e-12)
    xc = np.ascontiguousarray(x)
    out = np.empty_like(xc)
    assert nbn.group_norm(xc, 2, axis=axis, out=out) is out
    np.testing.assert_allclose(out, y_ref, rtol=1e-12, atol=1e-12)
    assert nbn.group_norm(xc, 2, axis=axis, out=xc) is xc
    np.testing.assert_allclose(xc, y_ref, rtol=1e-12, atol=1e-12)


def test_nan_and_inf_stay_in_their_group(rng):
    for axis, shape in ((1, (2, 4, 6, 6)), (-1, (2, 6, 6, 4))):
        x = rng.standard_normal(shape)
        x[(0,) + (0,) * (len(shape) - 1)] = np.nan
        x[(1,) + (2,) * (len(shape) - 2) + (3,) if axis == -1 else (1, 3, 2, 2)] = np.inf
        y, mean, _ = nbn.group_norm_forward(x, 2, axis=axis)
        assert np.isnan(mean[0, 0]) and np.isfinite(mean[0, 1]) and np.isfinite(mean[1, 0])
        assert np.isnan(y[0].take([0, 1], axis=axis - 1 if axis == 1 else -1)).all()
        assert np.isfinite(y[0].take([2, 3], axis=axis - 1 if axis == 1 else -1)).all()
        assert not np.isfinite(y[1].take([2, 3], axis=axis - 1 if axis == 1 else -1)).any()


def test_errors_come_before_any_write(rng):
    x = _data(rng, (2, 6, 3), np.float32)
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match="divisible by num_groups"):
        nbn.group_norm(x, 4, out=out)
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\)"):
        nbn.group_norm(x, 3, np.ones(5, np.float32), out=out)
    with pytest.raises(TypeError, match="floating dtype"):
        nbn.group_norm(x.astype(np.int32), 3)
    with pytest.raises(ValueError, match="batch axis"):
        nbn.group_norm(x, 2, axis=0)
    with pytest.raises(ValueError, match="rank 2 or more"):
        nbn.group_norm(np.ones(4), 2)
    with pytest.raises(TypeError, match="num_groups"):
        nbn.group_norm(x, 1.5)
    with pytest.raises(ValueError, match="more than 1 value"):
        nbn.group_norm(np.ones((1, 3)), 3)
    _, m, s = nbn.group_norm_forward(x, 3)
    with pytest.raises(ValueError, match=r"mean must have shape \(2, 3\)"):
        nbn.group_norm_backward(x, x, m[:, :2], s, 3, out=out)
    with pytest.raises(TypeError, match="same dtype"):
        nbn.group_norm_backward(x.astype(np.float64), x, m, s, 3, out=out)
    np.testing.assert_array_equal(out, 7.0)


def test_empty_batch():
    x = np.zeros((0, 6, 3), np.float32)
    y, mean, invstd = nbn.group_norm_forward(x, 3)
    assert y.shape == x.shape and mean.shape == (0, 3)
    dx, dw, db = nbn.group_norm_backward(x, x, mean, invstd, 3, np.ones(6, np.float32))
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dw, 0)
    np.testing.assert_array_equal(db, 0)


# --------------------------------------------------------------------------- instance norm

INSTANCE_LAYOUTS = [((3, 4, 5), 1), ((2, 5, 4, 3), -1), ((2, 3, 4, 5), 2), ((2, 6, 80, 70), 1),
                    ((2, 40, 50, 6), -1)]


@pytest.mark.parametrize("shape, axis", INSTANCE_LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_instance_norm_with_running_statistics(rng, shape, axis, dtype):
    c = shape[axis]
    x = _data(rng, shape, dtype)
    w, b = _affine(rng, c, dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    rm_ref, rv_ref = instance_running(x, rm, rv, 0.3, axis=axis)
    y, mean, invstd = nbn.instance_norm_forward(x, w, b, axis=axis, running_mean=rm,
                                                running_var=rv, momentum=0.3)
    y_ref, mean_ref, invstd_ref, _ = group_forward(x, c, w, b, axis=axis)
    assert mean.shape == invstd.shape == (shape[0], c)
    assert mean.dtype == invstd.dtype == dtype
    _close(y, y_ref, dtype, 10)
    _close(invstd, invstd_ref, dtype)
    _close(rm, rm_ref, dtype, 10)
    _close(rv, rv_ref, dtype, 10)
    dy = _data(rng, shape, dtype)
    dx, dw, db = nbn.instance_norm_backward(dy, x, mean, invstd, w, axis=axis)
    dx_ref, dw_ref, db_ref = group_backward(dy, x, c, w, axis=axis)
    _close(dx, dx_ref, dtype, 10)
    _close(dw, dw_ref, dtype, np.abs(dw_ref).max() + 1)
    _close(db, db_ref, dtype, np.abs(db_ref).max() + 1)
    # use_input_stats=False normalizes with the (updated) running buffers, as batch norm's eval.
    y_eval = nbn.instance_norm(x, rm, rv, w, b, use_input_stats=False, axis=axis)
    np.testing.assert_array_equal(
        y_eval, nbn.batch_norm(x, rm, rv, w, b, training=False, axis=axis))


def test_instance_norm_is_group_norm_with_one_channel_per_group(rng):
    x = _data(rng, (3, 4, 6, 5), np.float64)
    w, b = _affine(rng, 4, np.float64)
    y_ref = group_forward(x, 4, w, b)[0]
    _close(nbn.instance_norm(x, weight=w, bias=b), y_ref, np.float64, 10)
    _close(nbn.group_norm(x, 4, w, b), y_ref, np.float64, 10)


def test_instance_norm_nan_stays_in_its_instance_and_reaches_the_running_mean(rng):
    x = _data(rng, (3, 4, 6), np.float64)
    x[0, 0, 0] = np.nan
    rm, rv = np.zeros(4), np.ones(4)
    y = nbn.instance_norm(x, rm, rv)
    assert np.isnan(y[0, 0]).all()
    assert np.isfinite(np.delete(y.reshape(12, 6), 0, axis=0)).all()
    # The running update averages the instances' statistics: channel 0 is NaN (PyTorch too).
    assert np.isnan(rm[0]) and np.isnan(rv[0])
    assert np.isfinite(rm[1:]).all() and np.isfinite(rv[1:]).all()


def test_instance_norm_bad_out_or_buffers_fail_before_any_write(rng):
    x = _data(rng, (2, 3, 4), np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    read_only = np.full_like(x, 7.0)
    read_only.flags.writeable = False
    frozen_rv = np.ones(3, np.float32)
    frozen_rv.flags.writeable = False
    out = np.full_like(x, 7.0)
    cases = [
        dict(out=np.full((2, 3, 5), 7.0, np.float32)),
        dict(out=np.full(x.shape, 7.0)),  # float64 for float32 data
        dict(out=read_only),
        dict(running_var=frozen_rv, out=out),
    ]
    for kwargs in cases:
        with pytest.raises(ValueError):
            nbn.instance_norm(x, **{"running_mean": rm, "running_var": rv, **kwargs})
        np.testing.assert_array_equal(rm, 0)
        np.testing.assert_array_equal(rv, 1)
        np.testing.assert_array_equal(kwargs["out"], 7.0)


def test_instance_norm_errors_come_before_any_write(rng):
    x = _data(rng, (2, 3, 4), np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        nbn.instance_norm(np.ones((2, 3, 1), np.float32), rm, rv)
    with pytest.raises(ValueError, match="rank 3 or more"):
        nbn.instance_norm(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="momentum"):
        nbn.instance_norm(x, rm, rv, momentum="0.1", out=out)
    with pytest.raises(ValueError, match="required when use_input_stats=False"):
        nbn.instance_norm(x, use_input_stats=False, out=out)
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\)"):
        nbn.instance_norm(x, rm, np.ones(4, np.float32), out=out)
    np.testing.assert_array_equal(out, 7.0)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


def test_instance_norm_empty_batch_leaves_running_buffers():
    rm, rv = np.zeros(3), np.ones(3)
    y = nbn.instance_norm(np.zeros((0, 3, 4)), rm, rv)
    assert y.shape == (0, 3, 4)
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)


def test_big_endian_input_and_buffers(rng):
    x = _data(rng, (3, 4, 5), np.float64)
    xb = x.astype(">f8")
    rm, rv = np.zeros(4, ">f8"), np.ones(4, ">f8")
    rm_native, rv_native = np.zeros(4), np.ones(4)
    out = np.empty_like(xb)
    assert nbn.instance_norm(xb, rm, rv, out=out) is out
    np.testing.assert_array_equal(out, nbn.instance_norm(x, rm_native, rv_native))
    np.testing.assert_array_equal(rm, rm_native)
    np.testing.assert_array_equal(rv, rv_native)
    np.testing.assert_array_equal(nbn.group_norm(xb, 2), nbn.group_norm(x, 2))
