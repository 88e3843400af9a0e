"""numbabn.ChannelMoments: exact streaming statistics, merges in any order, state, errors."""
import os
import pickle
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numbabn as nbn
import reference as ref
from numbabn import _accumulate
from numbabn import _channel_math as cm

#: The issue's bar: float64 data with offset 1e4, against the one-shot result.
RTOL = 1e-12


def offset_data(rng, shape, dtype=np.float64):
    return (1e4 + rng.standard_normal(shape)).astype(dtype)


def assert_matches_one_shot(acc, x, axis=1):
    mean, var = nbn.channel_moments(x, axis=axis)
    assert acc.count == x.size // x.shape[axis]
    np.testing.assert_allclose(acc.mean, mean, rtol=RTOL)
    np.testing.assert_allclose(acc.var(), var, rtol=RTOL)
    # and against the independent float64 reference
    mean_ref, var_ref = ref.moments(x, axis=axis)
    np.testing.assert_allclose(acc.mean, mean_ref, rtol=RTOL)
    np.testing.assert_allclose(acc.var(ddof=1), var_ref * acc.count / (acc.count - 1), rtol=1e-10)


@pytest.mark.parametrize("shape, axis, cuts", [
    ((50, 6, 7, 5), 1, [0, 1, 8, 8, 30, 50]),  # an empty batch, a single row
    ((97, 5), 1, [0, 3, 50, 51, 97]),
    ((40, 9, 9, 4), -1, [0, 13, 14, 40]),  # channels-last
    ((4, 30, 40), 1, [0, 1, 2, 4]),
])
def test_uneven_batches_equal_one_shot(rng, shape, axis, cuts):
    x = offset_data(rng, shape)
    acc = nbn.ChannelMoments(axis=axis)
    for a, b in zip(cuts, cuts[1:]):
        assert acc.update(x[a:b]) is acc
    assert_matches_one_shot(acc, x, axis)


def test_tiny_counts_stay_at_the_float64_floor(rng):
    """12 values per channel in batches of 3: both results sit at float64's floor for this data.

    A piece mean of data at 1e4 is rounded to half an ulp of 1e4 (9.1e-13), which
    moves a merge's M2 by about that times sigma * sqrt(n_a n_b / n) (Chan's delta
    term): a relative error of ~1e-12 / sqrt(n), so with n = 12 the one-shot and the
    streamed results may differ by a few 1e-12 while both are that close to exact.
    """
    from fractions import Fraction

    x = offset_data(rng, (4, 5, 3))
    acc = nbn.ChannelMoments()
    for i in range(4):
        acc.update(x[i:i + 1])
    for c in range(5):
        values = [Fraction(float(t)) for t in x[:, c].ravel()]
        mean = sum(values) / 12
        var = float(sum((t - mean) ** 2 for t in values) / 12)
        assert acc.mean[c] == pytest.approx(float(mean), rel=1e-15)
        assert acc.var()[c] == pytest.approx(var, rel=2e-11)
        assert nbn.channel_moments(x)[1][c] == pytest.approx(var, rel=2e-11)


def test_channel_axis_first(rng):
    x = offset_data(rng, (3, 200))  # (C, N): batches cut along axis 1
    acc = nbn.ChannelMoments(axis=0)
    acc.update(x[:, :77]).update(x[:, 77:])
    assert_matches_one_shot(acc, x, axis=0)


@given(cuts=st.lists(st.integers(0, 60), max_size=8),
       order=st.randoms(use_true_random=False))
def test_every_merge_order_equals_one_shot(cuts, order):
    """Batches split among accumulators, merged in a random tree: always the one-shot result."""
    x = offset_data(np.random.default_rng(5), (60, 4, 3))
    bounds = [0, *sorted(cuts), 60]
    accs = [nbn.ChannelMoments().update(x[a:b]) for a, b in zip(bounds, bounds[1:])]
    while len(accs) > 1:
        i, j = order.sample(range(len(accs)), 2)
        accs[i].merge(accs[j])
        del accs[j]
    # A random tree of tiny pieces (some of one or no row) is judged against the exact
    # statistics (80-bit long double), not against the one-shot float64 result: both sit
    # within float64's floor for this data, eps * |mean| / std (2.2e-12 at offset 1e4), of
    # the exact value, so they may differ from each other by more than 1e-12.
    exact = x.astype(np.longdouble).transpose(1, 0, 2).reshape(4, -1)
    mean = exact.mean(axis=1)
    var = ((exact - mean[:, None]) ** 2).mean(axis=1)
    floor = np.finfo(np.float64).eps * 1e4 / np.sqrt(var.astype(np.float64)).min()
    assert accs[0].count == 180
    np.testing.assert_allclose(accs[0].mean, mean.astype(np.float64), rtol=RTOL)
    np.testing.assert_allclose(accs[0].var(), var.astype(np.float64), rtol=2 * floor)


def test_merge_leaves_other_unchanged_and_self_merge_doubles(rng):
    x = offset_data(rng, (20, 3))
    a, b = nbn.ChannelMoments().update(x[:5]), nbn.ChannelMoments().update(x[5:])
    before = b.state()
    a.merge(b)
    for key, value in b.state().items():
        np.testing.assert_array_equal(value, before[key])
    assert_matches_one_shot(a, x)
    a.merge(a)
    assert_matches_one_shot(a, np.concatenate([x, x]))
    a.merge(nbn.ChannelMoments())  # nothing seen: no change
    assert a.count == 40


def test_results_and_dtype(rng):
    x = offset_data(rng, (30, 4, 5))
    acc = nbn.ChannelMoments(dtype=np.float32).update(x)
    assert acc.mean.dtype == np.float32 and acc.var().dtype == np.float32
    mean, var = ref.moments(x)
    np.testing.assert_allclose(acc.mean, mean, rtol=1e-7)
    np.testing.assert_allclose(acc.var(ddof=1), var * 150 / 149, rtol=1e-6)
    assert nbn.ChannelMoments().update(x).mean.dtype == np.float64
    assert isinstance(acc.count, int) and acc.channels == 4
    with pytest.raises(TypeError):
        nbn.ChannelMoments(dtype=np.int32)
    with pytest.raises(TypeError):
        nbn.ChannelMoments(axis=1.0)


def test_float32_and_float16_batches_accumulate_in_float64(rng):
    x = offset_data(rng, (64, 3, 16), np.float32)
    acc = nbn.ChannelMoments()
    for i in range(0, 64, 5):
        acc.update(x[i:i + 5])
    mean, var = ref.moments(x)  # float64 statistics of the float32 values
    np.testing.assert_allclose(acc.mean, mean, rtol=RTOL)
    np.testing.assert_allclose(acc.var(), var, rtol=1e-12)  # 7e-14 measured
    h = rng.standard_normal((10, 3)).astype(np.float16)
    np.testing.assert_allclose(nbn.ChannelMoments().update(h).var(), ref.moments(h)[1],
                               rtol=1e-12)


def test_empty_and_small_counts(rng):
    acc = nbn.ChannelMoments()
    assert acc.count == 0 and acc.channels is None
    with pytest.raises(ValueError, match="no batch"):
        acc.mean
    acc.update(np.zeros((0, 3)))
    assert acc.channels == 3 and acc.count == 0
    assert np.isnan(acc.mean).all() and np.isnan(acc.var()).all()
    acc.update(np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(acc.var(), 0.0)
    assert np.isnan(acc.var(ddof=1)).all()
    with pytest.raises(ValueError):
        acc.var(ddof=-1)


def test_nan_and_inf_propagate_to_their_channel():
    x = np.ones((6, 3))
    x[2, 0] = np.nan
    x[4, 1] = np.inf
    acc = nbn.ChannelMoments().update(x[:3]).update(x[3:])
    assert np.isnan(acc.mean[0]) and acc.mean[1] == np.inf and acc.mean[2] == 1.0
    assert np.isnan(acc.var()[0]) and np.isnan(acc.var()[1]) and acc.var()[2] == 0.0


@pytest.mark.parametrize("bad, error, match", [
    (np.zeros((4, 5)), ValueError, "5 channels"),
    (np.zeros(3), ValueError, "rank 2"),
    (np.zeros((4, 3), np.int64), TypeError, "floating dtype"),
    ("abc", TypeError, None),
    (np.zeros((4, 0)), ValueError, "no channels"),
])
def test_bad_batch_leaves_state_unchanged(rng, bad, error, match):
    acc = nbn.ChannelMoments().update(offset_data(rng, (10, 3)))
    before = acc.state()
    with pytest.raises(error, match=match):
        acc.update(bad)
    with pytest.raises(ValueError, match="channels"):
        acc.merge(nbn.ChannelMoments().update(np.zeros((2, 4))))
    with pytest.raises(TypeError):
        acc.merge(before)
    for key, value in acc.state().items():
        np.testing.assert_array_equal(value, before[key])


def test_axis_out_of_range_raises_before_learning_channels():
    acc = nbn.ChannelMoments(axis=3)
    with pytest.raises(ValueError, match="out of range"):
        acc.update(np.zeros((2, 3)))
    assert acc.channels is None


def test_state_round_trip_and_pickle(rng, tmp_path):
    x = offset_data(rng, (30, 4))
    acc = nbn.ChannelMoments(axis=-1, dtype=np.float32).update(x)
    state = acc.state()
    assert set(state) == {"count", "mean", "m2", "axis", "dtype"}
    assert all(isinstance(value, np.ndarray) for value in state.values())
    np.savez(tmp_path / "acc.npz", **state)
    with np.load(tmp_path / "acc.npz") as loaded:
        back = nbn.ChannelMoments.from_state(dict(loaded))
    for copy in (back, pickle.loads(pickle.dumps(acc))):
        assert copy.axis == -1 and copy.dtype == np.float32 and copy.count == 30
        np.testing.assert_array_equal(copy.var(), acc.var())
        np.testing.assert_array_equal(copy.mean, acc.mean)
    state["mean"][0] = 0.0  # a copy, not the accumulator's array
    assert acc.mean[0] != 0.0
    fresh = nbn.ChannelMoments.from_state(nbn.ChannelMoments().state())
    assert fresh.channels is None and fresh.count == 0


@pytest.mark.parametrize("change, error", [
    (lambda s: s.pop("m2"), ValueError),
    (lambda s: s.update(count=np.array(-1)), ValueError),
    (lambda s: s.update(count=np.array(1.5)), TypeError),
    (lambda s: s.update(m2=np.zeros(2)), ValueError),
    (lambda s: s.update(mean=np.zeros(3, np.int64)), TypeError),
])
def test_from_state_checks(change, error):
    state = nbn.ChannelMoments().update(np.arange(12.0).reshape(4, 3)).state()
    change(state)
    with pytest.raises(error):
        nbn.ChannelMoments.from_state(state)


def test_to_running_sets_unbiased_running_statistics(rng):
    x = offset_data(rng, (16, 4, 5, 5))
    layer = nbn.BatchNorm2d(4)
    assert nbn.ChannelMoments().update(x[:7]).update(x[7:]).to_running(layer) is layer
    mean, var = ref.moments(x)
    count = x.size // 4
    np.testing.assert_allclose(layer.running_mean, mean, rtol=1e-7)
    np.testing.assert_allclose(layer.running_var, var * count / (count - 1), rtol=1e-6)
    assert layer.running_mean.dtype == np.float32 and layer.num_batches_tracked == 0
    layer.eval()
    y = layer(x.astype(np.float32))
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=2e-3)


def test_to_running_checks_before_writing():
    acc = nbn.ChannelMoments().update(np.arange(12.0).reshape(4, 3))
    layer = nbn.BatchNorm1d(5)
    with pytest.raises(ValueError, match="channels"):
        acc.to_running(layer)
    np.testing.assert_array_equal(layer.running_var, 1.0)
    with pytest.raises(ValueError, match="running"):
        acc.to_running(nbn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="at least 2"):
        nbn.ChannelMoments().update(np.ones((1, 3))).to_running(nbn.BatchNorm1d(3))


def test_slabs_of_a_large_batch_give_the_same_result(rng, monkeypatch):
    x = offset_data(rng, (40, 3, 50))
    whole = nbn.ChannelMoments().update(x)
    monkeypatch.setattr(_accumulate, "SLAB_BYTES", 3 * 50 * 8 * 3)  # 3 rows per slab
    seen = []
    real = _accumulate._slab_moments
    monkeypatch.setattr(_accumulate, "_slab_moments",
                        lambda backend, slab, *a: seen.append(slab.shape)
                        or real(backend, slab, *a))
    sliced = nbn.ChannelMoments().update(x)
    assert len(seen) == 14 and max(s[0] for s in seen) == 3
    np.testing.assert_allclose(sliced.var(), whole.var(), rtol=RTOL)
    seen.clear()
    t = nbn.ChannelMoments(axis=0).update(x.transpose(1, 0, 2))  # (C, N, B): cut along axis 1
    assert len(seen) == 14
    np.testing.assert_allclose(t.var(), whole.var(), rtol=RTOL)


def test_memmap_batches_and_released_pages_keep_the_data(rng, tmp_path, monkeypatch):
    x = offset_data(rng, (64, 3, 512), np.float32)
    path = tmp_path / "data.f32"
    x.tofile(path)
    monkeypatch.setattr(_accumulate, "SLAB_BYTES", 8 * 3 * 512 * 4)
    released = []
    real = _accumulate._release_pages
    monkeypatch.setattr(_accumulate, "_release_pages", lambda a, *rest: released.append(
        _accumulate._shared_file_mapping(a)) or real(a, *rest))
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    acc = nbn.ChannelMoments().update(mm)
    assert released == [True] * 8
    np.testing.assert_allclose(acc.var(), ref.moments(x)[1], rtol=1e-10)
    np.testing.assert_array_equal(mm, x)  # pages come back from the file
    # copy-on-write ("c"): private changes live only in our pages, which must stay
    cow = np.memmap(path, dtype=np.float32, mode="c", shape=x.shape)
    cow[:] = 7.0
    released.clear()
    nbn.ChannelMoments().update(cow)
    assert released == [False] * 8
    np.testing.assert_array_equal(cow, 7.0)
    # read-write shared mapping: written values survive the release (they are in the file)
    rw = np.memmap(path, dtype=np.float32, mode="r+", shape=x.shape)
    rw[0] = 5.0
    acc = nbn.ChannelMoments().update(rw)
    assert np.all(rw[0] == 5.0) and acc.count == 64 * 512
    rw.flush()
    del mm, cow, rw


def test_concurrent_updates_and_merges_lose_nothing(rng, monkeypatch):
    """Every fold widened to 5 ms, so that a missing lock would show (with the real fold's
    microseconds a race was not seen in 300 runs)."""
    import time

    from numbabn import _channel_math

    real = _channel_math.chan_merge
    monkeypatch.setattr(_channel_math, "chan_merge", lambda *a: time.sleep(0.005) or real(*a))
    x = offset_data(rng, (64, 4, 10))
    acc = nbn.ChannelMoments().update(x[:8])
    parts = [nbn.ChannelMoments().update(x[k:k + 8]) for k in range(8, 64, 16)]
    jobs = [threading.Thread(target=acc.merge, args=(p,)) for p in parts]
    jobs += [threading.Thread(target=acc.update, args=(x[k:k + 8],)) for k in range(16, 64, 16)]
    for t in jobs:
        t.start()
    for t in jobs:
        t.join()
    assert acc.count == 64 * 10
    assert_matches_one_shot(acc, x)


def test_to_running_leaves_num_batches_tracked_alone(rng):
    layer = nbn.BatchNorm2d(4)
    layer(rng.standard_normal((3, 4, 2, 2)).astype(np.float32))  # one training step
    nbn.ChannelMoments().update(offset_data(rng, (5, 4, 2, 2))).to_running(layer)
    assert layer.num_batches_tracked == 1


def test_concurrent_updates_from_threads(rng):
    x = offset_data(rng, (64, 4, 100))
    acc = nbn.ChannelMoments()
    threads = [threading.Thread(target=acc.update, args=(x[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_matches_one_shot(acc, x)


def test_one_merge_formula_shared_with_mpi(monkeypatch):
    """The accumulator, its slabs and the MPI path all call _channel_math.chan_merge."""
    from numbabn import distributed

    calls = []
    real = cm.chan_merge
    monkeypatch.setattr(cm, "chan_merge", lambda *a: calls.append(1) or real(*a))
    acc = nbn.ChannelMoments().update(np.ones((3, 2))).update(np.ones((3, 2)))
    assert len(calls) >= 1 and acc.count == 6
    calls.clear()
    gathered = np.array([[[2.0, 2.0], [1.0, 1.0], [0.0, 0.0]]] * 3)
    distributed.merge_in_rank_order(gathered)
    assert len(calls) == 3


def _rss_file_mib():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("RssFile")).split()[1]) / 1024


@pytest.mark.skipif(not _accumulate._madvise or not os.path.exists("/proc/self/status"),
                    reason="madvise and /proc (Linux) needed")
def test_released_pages_leave_resident_memory(tmp_path, monkeypatch):
    """A 64 MiB memmap read slab by slab: its pages do not stay mapped (they do when kept)."""
    path = tmp_path / "data.f32"
    np.random.default_rng(0).standard_normal((64, 4, 65536), dtype=np.float32).tofile(path)
    monkeypatch.setattr(_accumulate, "SLAB_BYTES", 4 * 2**20)
    growth = {}
    for release in (True, False):
        mm = np.memmap(path, dtype=np.float32, mode="r", shape=(64, 4, 65536))
        before = _rss_file_mib()
        nbn.ChannelMoments().update(mm, release_pages=release)
        growth[release] = _rss_file_mib() - before
        del mm
    assert growth[True] < 16, growth
    assert growth[False] > 48, growth
