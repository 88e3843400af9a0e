"""numbabn.dask: exact statistics and normalization of Dask arrays, threads and LocalCluster."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import numbabn as nbn  # noqa: E402
import numbabn.dask as nbd  # noqa: E402
import reference as ref  # noqa: E402

RTOL = 1e-12


def offset_data(rng, shape, dtype=np.float64):
    return (1e4 + rng.standard_normal(shape)).astype(dtype)


@pytest.fixture(autouse=True)
def threaded_scheduler():
    with dask.config.set(scheduler="threads"):
        yield


def test_import_numbabn_does_not_import_dask():
    code = "import sys, numbabn; assert 'dask' not in sys.modules, 'dask imported'; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


@pytest.mark.parametrize("shape, axis, chunks", [
    ((50, 6, 7, 5), 1, (7, 4, 3, 5)),  # split along the channel axis, uneven everywhere
    ((50, 6, 7, 5), 1, (50, 6, 7, 5)),  # one chunk
    ((50, 6, 7, 5), 1, (1, 1, 7, 5)),  # one channel and one sample per chunk
    ((64, 9, 9, 8), -1, (10, 4, 9, 3)),  # channels-last
    ((300, 7), 1, (37, 3)),
    ((7, 300), 0, (2, 41)),  # channels first
])
def test_channel_moments_equal_one_shot(rng, shape, axis, chunks):
    x = offset_data(rng, shape)
    mean, var = nbd.channel_moments(da.from_array(x, chunks=chunks), axis=axis)
    assert isinstance(mean, da.Array) and mean.shape == (shape[axis],)
    mean, var = dask.compute(mean, var)
    mean1, var1 = nbn.channel_moments(x, axis=axis)
    assert mean.dtype == np.float64
    np.testing.assert_allclose(mean, mean1, rtol=RTOL)
    np.testing.assert_allclose(var, var1, rtol=RTOL)
    np.testing.assert_allclose(var, ref.moments(x, axis)[1], rtol=RTOL)


@given(st.data())
def test_any_chunking_equals_one_shot(data):
    x = offset_data(np.random.default_rng(3), (40, 5, 12))

    def cut(n):
        points = data.draw(st.lists(st.integers(1, n - 1), max_size=4, unique=True))
        bounds = [0, *sorted(points), n]
        return tuple(b - a for a, b in zip(bounds, bounds[1:]))

    chunks = tuple(cut(n) for n in x.shape)
    ddof = data.draw(st.integers(0, 1))
    split_every = data.draw(st.sampled_from([2, 3, 8]))
    with dask.config.set(split_every=split_every):
        mean, var = dask.compute(*nbd.channel_moments(da.from_array(x, chunks=chunks), ddof=ddof))
    mean1, var1 = nbn.channel_moments(x, ddof=ddof)
    np.testing.assert_allclose(mean, mean1, rtol=RTOL)
    np.testing.assert_allclose(var, var1, rtol=RTOL)


def test_float32_result_matches_numbabn(rng):
    x = offset_data(rng, (64, 4, 16, 16), np.float32)
    mean, var = dask.compute(*nbd.channel_moments(da.from_array(x, chunks=(8, 2, 16, 16))))
    mean1, var1 = nbn.channel_moments(x)
    assert mean.dtype == var.dtype == np.float32
    np.testing.assert_allclose(mean, mean1, rtol=1e-7)
    np.testing.assert_allclose(var, var1, rtol=1e-6)
    np.testing.assert_allclose(var, ref.moments(x)[1], rtol=1e-6)


def test_empty_chunks_and_empty_arrays(rng):
    x = offset_data(rng, (20, 3))
    d = da.from_array(x, chunks=((0, 5, 0, 15), (3,)))
    mean, var = dask.compute(*nbd.channel_moments(d))
    np.testing.assert_allclose(var, nbn.channel_moments(x)[1], rtol=RTOL)
    mean, var = dask.compute(*nbd.channel_moments(da.zeros((0, 3), chunks=(1, 2)), ddof=1))
    assert mean.shape == (3,) and np.isnan(mean).all() and np.isnan(var).all()


def test_big_endian_chunks(rng):
    x = offset_data(rng, (30, 4, 6), np.float32)
    d = da.from_array(x.astype(x.dtype.newbyteorder()), chunks=(7, 3, 6))
    mean, var = dask.compute(*nbd.channel_moments(d))
    np.testing.assert_array_equal(var, dask.compute(*nbd.channel_moments(
        da.from_array(x, chunks=(7, 3, 6))))[1])
    y = nbd.batch_norm(d, None, None).compute()
    assert y.dtype == np.float32 and y.dtype.isnative
    native = nbd.batch_norm(da.from_array(x, chunks=(7, 3, 6)), None, None).compute()
    np.testing.assert_array_equal(y, native)  # the native result, bit for bit


@pytest.mark.parametrize("chunks", [(7, 4, 3, 5), (50, 6, 7, 5), (3, 1, 7, 2)])
def test_batch_norm_with_computed_statistics(rng, chunks):
    x = offset_data(rng, (50, 6, 7, 5))
    w, b = rng.standard_normal(6), rng.standard_normal(6)
    y = nbd.batch_norm(da.from_array(x, chunks=chunks), None, None, w, b, eps=1e-3)
    assert isinstance(y, da.Array) and y.chunks == da.from_array(x, chunks=chunks).chunks
    want = ref.forward_train(x, w, b, eps=1e-3)[0]
    np.testing.assert_allclose(y.compute(), want, rtol=1e-9, atol=1e-9)


def test_batch_norm_with_given_statistics(rng):
    x = offset_data(rng, (40, 5, 6), np.float32)
    d = da.from_array(x, chunks=(9, 2, 6))
    mean, var = ref.moments(x)  # float64, plain NumPy
    y = nbd.batch_norm(d, mean, var, axis=1).compute()
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, nbn.batch_norm(x, mean, var), rtol=1e-6, atol=1e-6)
    lazy_mean, lazy_var = nbd.channel_moments(d.astype(np.float64))  # lazy statistics
    y2 = nbd.batch_norm(d, lazy_mean, lazy_var, np.full(5, 2.0), np.ones(5))
    np.testing.assert_allclose(y2.compute(), 2 * y + 1, rtol=1e-5, atol=1e-5)


def test_channels_last_batch_norm(rng):
    x = offset_data(rng, (16, 5, 5, 6))
    y = nbd.batch_norm(da.from_array(x, chunks=(5, 5, 2, 4)), None, None, axis=-1)
    np.testing.assert_allclose(y.compute(), ref.forward_train(x, axis=-1)[0], rtol=1e-9,
                               atol=1e-9)


@pytest.mark.parametrize("call, error", [
    (lambda d: nbd.channel_moments(d.astype(np.int32)), TypeError),
    (lambda d: nbd.channel_moments(d, axis=5), ValueError),
    (lambda d: nbd.channel_moments(d[:, 0, 0, 0]), ValueError),
    (lambda d: nbd.channel_moments(d, ddof=-1), ValueError),
    (lambda d: nbd.batch_norm(d, np.zeros(6), None), ValueError),
    (lambda d: nbd.batch_norm(d, np.zeros(5), np.ones(5)), ValueError),
    (lambda d: nbd.batch_norm(d, np.zeros(6), np.ones(6), np.ones(3)), ValueError),
    (lambda d: nbd.batch_norm(d, np.zeros(6), np.ones(6), eps=-1.0), ValueError),
    (lambda d: nbd.batch_norm(d, np.zeros(6, int), np.ones(6)), TypeError),
])
def test_errors_raise_eagerly(call, error):
    d = da.zeros((4, 6, 3, 3), chunks=2)
    with pytest.raises(error):
        call(d)


def test_numpy_input_is_accepted(rng):
    x = offset_data(rng, (20, 3))
    mean, var = dask.compute(*nbd.channel_moments(x))
    np.testing.assert_allclose(var, nbn.channel_moments(x)[1], rtol=RTOL)


def test_numbabn_tasks_run_on_one_numba_thread(monkeypatch):
    """numbabn's own tasks (the chunk reductions and the normalize blocks), on the threaded
    scheduler: each runs its kernels on one Numba thread."""
    import numba

    if numba.get_num_threads() < 2:
        pytest.skip("needs two Numba threads")
    seen = []

    def spy(real):
        return lambda *a, **k: seen.append(numba.get_num_threads()) or real(*a, **k)

    monkeypatch.setattr(nbd, "batch_moments", spy(nbd.batch_moments))
    monkeypatch.setattr(nbd, "_batch_norm", spy(nbd._batch_norm))
    x = 1e4 + np.random.default_rng(0).standard_normal((20, 3, 4))
    before = numba.get_num_threads()
    dask.compute(nbd.batch_norm(da.from_array(x, chunks=(5, 2, 4)), None, None),
                 scheduler="threads")
    assert len(seen) == 16 and set(seen) == {1}, seen
    assert numba.get_num_threads() == before


def test_memory_mapped_chunks_release_their_pages(tmp_path, monkeypatch):
    """Chunks cut from a memory-mapped file hand their pages back after their slabs, as
    ChannelMoments.update does."""
    from numbabn import _accumulate

    x = np.random.default_rng(0).standard_normal((16, 3, 512)).astype(np.float32)
    x.tofile(tmp_path / "f")
    mm = np.memmap(tmp_path / "f", dtype=np.float32, mode="r", shape=x.shape)
    released = []
    real = _accumulate._release_pages
    monkeypatch.setattr(_accumulate, "_release_pages",
                        lambda a, *rest: released.append(a.shape) or real(a, *rest))

    def rows(block, block_info=None):
        start, stop = block_info[None]["array-location"][0]
        return mm[start:stop]

    d = da.map_blocks(rows, da.empty(x.shape, chunks=(4, 3, 512), dtype=np.float32),
                      dtype=np.float32)
    mean, var = dask.compute(*nbd.channel_moments(d), scheduler="sync")
    assert len(released) == 4
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=(0, 2)), rtol=1e-6)


def test_tasks_use_one_numba_thread_and_restore_it():
    import numba

    seen = []

    def probe(block):
        with nbd._one_numba_thread():
            seen.append(numba.get_num_threads())
        return block

    before = numba.get_num_threads()
    da.ones((4, 3), chunks=2).map_blocks(probe).compute(scheduler="sync")
    assert set(seen) == {1} and numba.get_num_threads() == before


def test_local_cluster_with_worker_processes(rng):
    """A dask.distributed LocalCluster (2 worker processes, 1 thread each), started here."""
    distributed = pytest.importorskip("distributed")
    x = offset_data(rng, (60, 4, 8, 8))
    d = da.from_array(x, chunks=(13, 3, 8, 5))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        mean, var = nbd.channel_moments(d)
        y = nbd.batch_norm(d, mean, var, np.full(4, 2.0), np.zeros(4))
        mean, var, y = client.compute([mean, var, y], sync=True)
        assert len(client.scheduler_info()["workers"]) == 2
    np.testing.assert_allclose(mean, nbn.channel_moments(x)[0], rtol=RTOL)
    np.testing.assert_allclose(var, nbn.channel_moments(x)[1], rtol=RTOL)
    np.testing.assert_allclose(y, ref.forward_train(x, np.full(4, 2.0), eps=1e-5)[0],
                               rtol=1e-9, atol=1e-9)


def test_bench_dask_rows(tmp_path):
    """``bench --dask`` machinery on tiny sizes: rows, errors and memory columns (not timings)."""
    from numbabn import _bench_dask

    rows, info = _bench_dask.in_memory(2**-6, 1, lambda text: None)
    by_name = {r["contender"]: r for r in rows}
    assert set(by_name) == {"numbabn.dask", "dask mean+var", "numbabn one-shot"}
    assert by_name["numbabn.dask"]["var_rel_error"] < 1e-7  # float32 rounding of exact values
    rows, file_info = _bench_dask.from_file(2**-4, 1, str(tmp_path), lambda text: None)
    assert {r["contender"] for r in rows} == set(_bench_dask.FILE_CONTENDERS)
    assert all(r["peak_rss_bytes"] > 0 and r["seconds"] > 0 for r in rows)
    assert file_info["accumulator_vs_dask_var_rel_diff"] < 1e-6
    assert list(tmp_path.iterdir()) == []  # the file is deleted
    table = _bench_dask.format_table({"results": rows, "file": file_info})
    assert "ChannelMoments loop" in table and "peak RSS" in table


def test_two_results_in_one_graph_keep_their_own_keys(rng):
    x = offset_data(rng, (20, 3, 4))
    d = da.from_array(x, chunks=(5, 2, 4))
    y1 = nbd.batch_norm(d, None, None, eps=1e-5)
    y2 = nbd.batch_norm(d, None, None, np.full(3, 2.0), eps=1e-5)
    (_, v1), (_, v2) = nbd.channel_moments(d), nbd.channel_moments(d, ddof=1)
    y1, y2, v1, v2 = dask.compute(y1, y2, v1, v2)
    np.testing.assert_allclose(y2, 2 * y1, rtol=1e-12)
    np.testing.assert_allclose(v2, v1 * 80 / 79, rtol=1e-12)
