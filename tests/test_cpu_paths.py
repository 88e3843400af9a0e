"""The CPU backend's alternative code paths agree bit for bit, and thread settings are honoured.

Serial and parallel twins, the fused forward/backward and the split
moments/normalize and reduce/apply paths (which the MPI layer uses) must give
identical bits, or results would depend on the thread count or on the path.
"""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import numbabn as nbn
from numbabn import _validate as v
from numbabn.cpu import _chunks
from numbabn.cpu import backend

import reference as ref

# (shape, axis): blocks layout (16 <= B < 512) with one and with several row groups
# per block; planes layout with grouped planes, split planes and few channels;
# rows layout (2-D, channels-last, 1 < B < 16).
SHAPES = [((6, 16, 12, 12), 1), ((700, 3, 100), 1), ((6, 4, 600), 1), ((2, 3, 20000), 1),
          ((300, 40), 1), ((4, 6, 6, 24), -1), ((50, 12, 3), 1)]


def _all_outputs(x, dy, w, b, axis):
    y, mean, invstd = nbn.batch_norm_forward(x, w, b, axis=axis)
    grads = nbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis)
    frozen = nbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis, training=False)
    infer = nbn.batch_norm(x, mean, 1.0 / invstd**2, w, b, axis=axis)
    return (y, mean, invstd, *grads, *frozen, infer, *nbn.channel_moments(x, axis=axis))


def _inputs(rng, shape, axis, dtype=np.float32):
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    return x, dy, rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
@pytest.mark.parametrize("shape, axis", SHAPES)
def test_serial_and_parallel_twins_are_bit_identical(rng, monkeypatch, shape, axis):
    x, dy, w, b = _inputs(rng, shape, axis)
    monkeypatch.setattr(_chunks, "SERIAL_MAX_ELEMENTS", 0)
    parallel = _all_outputs(x, dy, w, b, axis)
    monkeypatch.setattr(_chunks, "SERIAL_MAX_ELEMENTS", 1 << 40)
    serial = _all_outputs(x, dy, w, b, axis)
    for p, s in zip(parallel, serial):
        np.testing.assert_array_equal(p, s)


@pytest.mark.parametrize("shape, axis", SHAPES)
def test_fused_and_split_paths_are_bit_identical(rng, shape, axis):
    x, dy, w, b = _inputs(rng, shape, axis, np.float64)
    lay = v.layout(x.shape, axis)
    y, mean, invstd = backend.forward_train(x, lay, w, b, 1e-5, None, None, None, 0.1)
    count, mean_split, m2 = backend.welford(x, lay)
    np.testing.assert_array_equal(mean, mean_split)
    np.testing.assert_array_equal(invstd, 1.0 / np.sqrt(m2 / count + 1e-5))
    np.testing.assert_array_equal(y, backend.normalize(x, lay, mean, invstd, w, b, None))

    for training in (True, False):
        dx, dw, db = backend.backward(dy, x, lay, mean, invstd, w, training, None)
        sum_dy, sum_dy_xmu = backend.backward_reduce(dy, x, lay, mean)
        dx_split = backend.backward_apply(dy, x, lay, mean, invstd, w, sum_dy, sum_dy_xmu,
                                          lay.count, training, None)
        np.testing.assert_array_equal(dx, dx_split)
        np.testing.assert_array_equal(db, sum_dy)
        np.testing.assert_array_equal(dw, sum_dy_xmu * invstd)


# Planes layout with grouped planes, split planes (B > PIECE_ELEMENTS), leftovers after
# the lanes, and runs of uneven length (7 or 9 channels over 2 threads' 4 runs).
PIPELINE_SHAPES = [(6, 8, 600), (3, 7, 515), (2, 9, 20001)]


def _pipelining(monkeypatch, on):
    bytes_ = 0 if on else 1 << 60
    monkeypatch.setattr(_chunks, "PIPELINE_MIN_CHANNEL_BYTES", {4: bytes_, 8: bytes_})


@pytest.mark.parametrize("shape", PIPELINE_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("force_parallel", [False, True])
def test_pipelined_planes_are_bit_identical(rng, monkeypatch, shape, dtype, force_parallel):
    """A channel normalized (or differentiated) while the next one is reduced: same bits."""
    monkeypatch.setattr(_chunks, "SERIAL_MAX_ELEMENTS", 0 if force_parallel else 1 << 40)
    x, dy, w, b = _inputs(rng, shape, 1, dtype)
    _pipelining(monkeypatch, False)
    plain = _all_outputs(x, dy, w, b, 1)
    _pipelining(monkeypatch, True)
    A, C, B = shape
    per, pipelined = _chunks.channel_runs(A, C, B, x.itemsize, not force_parallel)
    assert pipelined and per > 1
    for p, q in zip(plain, _all_outputs(x, dy, w, b, 1)):
        np.testing.assert_array_equal(p, q)
    # In place: each channel's output overwrites its input only after both passes read it.
    y_in_place = x.copy()
    nbn.batch_norm_forward(y_in_place, w, b, out=y_in_place)
    np.testing.assert_array_equal(y_in_place, plain[0])
    dx_in_place = dy.copy()
    nbn.batch_norm_backward(dx_in_place, x, plain[1], plain[2], w, out=dx_in_place)
    np.testing.assert_array_equal(dx_in_place, plain[3])


def test_one_thread_selects_the_serial_kernels():
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert _chunks.serial(10**8)
    finally:
        numba.set_num_threads(before)
    assert _chunks.serial(10) and (before == 1 or not _chunks.serial(10**8))


_DIGEST = """
import hashlib, numba, numpy as np, numbabn as nbn
from numbabn.cpu import _chunks
rng = np.random.default_rng(7)
x = rng.standard_normal((8, 16, 30, 30)).astype(np.float32)
x2 = rng.standard_normal((3000, 24)).astype(np.float32)
x3 = rng.standard_normal((16, 32, 14, 14)).astype(np.float32)
h = hashlib.sha256()
for a, axis in ((x, 1), (x2, 1), (x.transpose(0, 2, 3, 1).copy(), -1), (x3, 1)):
    y, mean, invstd = nbn.batch_norm_forward(a, axis=axis)
    dx, dw, db = nbn.batch_norm_backward(y, a, mean, invstd, axis=axis)
    for out in (y, mean, invstd, dx, dw, db):
        h.update(out.tobytes())
# Pipelined planes: runs of channels follow the thread count, the bits must not.
_chunks.PIPELINE_MIN_CHANNEL_BYTES = {4: 0, 8: 0}
y, mean, invstd = nbn.batch_norm_forward(x)
for out in (y, mean, invstd, *nbn.batch_norm_backward(y, x, mean, invstd)):
    h.update(out.tobytes())
print(numba.get_num_threads(), h.hexdigest())
"""


def _digest(threads):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", _DIGEST], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[0]), out[1]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores")
def test_numba_num_threads_is_honoured_and_changes_no_bits():
    threads_one, digest_one = _digest(1)
    threads_two, digest_two = _digest(2)
    assert (threads_one, threads_two) == (1, 2)
    assert digest_one == digest_two


@pytest.mark.parametrize("shape, axis", [((4, 3, 300), 1), ((4, 3, 600), 1), ((1, 3, 40000), 1),
                                         ((500, 3), 1), ((2, 40, 40, 3), -1)])
@pytest.mark.parametrize("force_parallel", [False, True])
@pytest.mark.parametrize("pipelined", [False, True])
def test_nan_and_inf_propagate_in_every_path(rng, monkeypatch, shape, axis, force_parallel,
                                             pipelined):
    """Blocks, lane sums, pieces merged with Chan's formula, rows, pipelined planes: NaN/Inf
    reach their channel."""
    if force_parallel:
        monkeypatch.setattr(_chunks, "SERIAL_MAX_ELEMENTS", 0)
    _pipelining(monkeypatch, pipelined)
    x = rng.standard_normal(shape).astype(np.float32)
    xm = np.moveaxis(x, axis, 0)
    xm[1].flat[-1] = np.nan  # the last element: a leftover after the lanes
    xm[2].flat[xm[2].size // 2] = np.inf
    y, mean, invstd = nbn.batch_norm_forward(x, axis=axis)
    ym = np.moveaxis(y, axis, 0)
    assert np.isfinite(ym[0]).all() and np.isnan(ym[1]).all() and np.isnan(ym[2]).all()
    assert np.isnan(mean[1]) and np.isinf(mean[2])
    dx, dw, db = nbn.batch_norm_backward(np.ones_like(x), x, mean, invstd, axis=axis)
    dxm = np.moveaxis(dx, axis, 0)
    assert np.isfinite(dxm[0]).all() and np.isnan(dxm[1]).all() and np.isnan(dxm[2]).all()
    assert np.isfinite(dw[0]) and np.isnan(dw[1])


# Each side of every switch between loop orders (B = 15 | 16 rows | blocks, 511 | 512 blocks |
# planes), a single row (no chunk of four), channels not a multiple of the block width, and
# more rows than one group of a block holds.
@pytest.mark.parametrize("shape", [(9, 5, 15), (9, 5, 16), (3, 7, 511), (3, 7, 512), (1, 40, 17),
                                   (5, 33, 100), (1400, 2, 100)])
@pytest.mark.parametrize("force_parallel", [False, True])
def test_layout_boundaries_match_the_float64_reference(rng, monkeypatch, shape, force_parallel):
    if force_parallel:
        monkeypatch.setattr(_chunks, "SERIAL_MAX_ELEMENTS", 0)
    x = (1e3 + rng.standard_normal(shape) * 3).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y, mean, invstd = nbn.batch_norm_forward(x)
    y_ref, mean_ref, invstd_ref, _ = ref.forward_train(x)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-7)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-6)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    _, var = nbn.channel_moments(x)
    np.testing.assert_allclose(var, ref.moments(x)[1], rtol=1e-6)
    dx, dw, db = nbn.batch_norm_backward(dy, x, mean, invstd)
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, mean, invstd)
    np.testing.assert_allclose(db, db_ref, rtol=1e-6, atol=1e-6 * np.abs(dy).sum(axis=(0, 2)).max())
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-6, atol=1e-6 * np.abs(dy).sum(axis=(0, 2)).max())
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [5, 6, 7, 9])
@pytest.mark.parametrize("force_parallel", [False, True])
def test_an_infinite_value_in_the_leftover_rows_makes_the_variance_nan(rng, monkeypatch, rows,
                                                                        force_parallel):
    """Rows after the last chunk of four are reduced on their own: inf - inf is NaN there too."""
    if force_parallel:
        monkeypatch.setattr(_chunks, "SERIAL_MAX_ELEMENTS", 0)
    x = rng.standard_normal((rows, 3)).astype(np.float32)
    x[-1, 1] = np.inf
    mean, var = nbn.channel_moments(x)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(np.isnan(var), np.isnan(x.astype(np.float64).var(axis=0)))
    assert np.isinf(mean[1]) and np.isnan(var[1]) and np.isfinite(var[[0, 2]]).all()
