"""The one-pass per-channel moments of data read once (numbabn/cpu/streaming.py).

Against float64 references summed with ``math.fsum`` (correctly rounded sums), on the
path the kernel takes (one pass about the sampled shift) and on the one where the
sample misses the mean (the channel read again by batch norm's two-pass kernel).
"""
import math

import numba
import numpy as np
import pytest

import numbabn as nbn
from numbabn import _validate as v
from numbabn.cpu import backend, streaming


def fsum_moments(x3):
    """Per-channel (mean, M2) of an (A, C, B) array, each sum correctly rounded."""
    mean, m2 = [], []
    for c in range(x3.shape[1]):
        values = x3[:, c, :].astype(np.float64).ravel()
        mu = math.fsum(values) / values.size
        mean.append(mu)
        m2.append(math.fsum((values - mu) ** 2))
    return np.array(mean), np.array(m2)


def assert_mean_close(mean, mean_ref, m2_ref, n):
    """Within 1e-15 of the mean's size plus the spread: a mean near 0 is known to the spread."""
    scale = np.abs(mean_ref) + np.sqrt(m2_ref / n)
    assert np.all(np.abs(mean - mean_ref) <= 1e-15 * scale), (mean, mean_ref)


def one_pass(x3, one_thread=False):
    return streaming.one_pass_moments(np.ascontiguousarray(x3), one_thread)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0.0, 1e4, 3e6])
def test_one_pass_matches_correctly_rounded_sums(rng, dtype, offset):
    x3 = (offset + rng.standard_normal((6, 3, 1030))).astype(dtype)  # planes not a multiple of 32
    mean, m2, redo = one_pass(x3)
    assert not redo.any()                     # the shift was good: one pass only
    mean_ref, m2_ref = fsum_moments(x3)
    assert_mean_close(mean, mean_ref, m2_ref, 6 * 1030)
    np.testing.assert_allclose(m2, m2_ref, rtol=1e-13, atol=0)  # E[x²]−E[x]² is off by ~1e-3


def test_channels_cut_into_runs_add_in_order(rng):
    A, B = 40, 32768                          # 1.3M values a channel: two runs
    assert streaming.channel_runs(A, B) == 2
    x3 = (1e4 + rng.standard_normal((A, 2, B))).astype(np.float32)
    mean, m2, redo = one_pass(x3)
    assert not redo.any()
    mean_ref, m2_ref = fsum_moments(x3)
    assert_mean_close(mean, mean_ref, m2_ref, A * B)
    np.testing.assert_allclose(m2, m2_ref, rtol=1e-13, atol=0)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
def test_same_bits_on_one_and_two_threads(rng):
    x3 = (1e4 + rng.standard_normal((40, 3, 32768))).astype(np.float32)
    both = [one_pass(x3, one_thread=True)]
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        both.append(one_pass(x3))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*both):
        np.testing.assert_array_equal(a, b)


def _sampled_positions(A, B):
    n = A * B
    k = min(n, streaming.SHIFT_SAMPLES)
    return [(s * (n // k) // B, s * (n // k) % B) for s in range(k)]


def test_a_shift_that_misses_falls_back_to_two_passes(rng):
    A, B = 4, 1024
    x3 = rng.standard_normal((A, 2, B))
    for a, b in _sampled_positions(A, B):
        x3[a, 0, b] = 1e3                     # channel 0's sample sits far from its mean
    mean, m2, redo = one_pass(x3)
    assert redo.tolist() == [True, False]
    two_pass = backend.welford(x3, v.layout(x3.shape, 1))
    assert mean[0] == two_pass[1][0] and m2[0] == two_pass[2][0]   # the two-pass bits
    mean_ref, m2_ref = fsum_moments(x3)
    np.testing.assert_allclose(m2, m2_ref, rtol=1e-13, atol=0)


@pytest.mark.parametrize("where", ["sampled", "unsampled"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_give_the_two_pass_results(where, value):
    A, B = 2, 1024
    x3 = np.ones((A, 3, B), np.float32)
    x3[:, 2] = 2.0
    a, b = _sampled_positions(A, B)[3]
    if where == "unsampled":
        b += 1
    x3[a, 1, b] = value
    mean, m2, redo = one_pass(x3)
    assert redo.tolist() == [False, True, False]
    _, want_mean, want_m2 = backend.welford(x3, v.layout(x3.shape, 1))
    np.testing.assert_array_equal(mean, want_mean)
    np.testing.assert_array_equal(m2, want_m2)
    assert np.isnan(m2[1])


def test_accumulator_reads_long_planes_once_and_equals_one_shot(rng, monkeypatch):
    x = (1e4 + rng.standard_normal((20, 3, 24, 25))).astype(np.float32)  # planes of 600 values
    calls = []
    kernel = streaming.one_pass_moments
    monkeypatch.setattr(streaming, "one_pass_moments", lambda *a: calls.append(a) or kernel(*a))
    acc = nbn.ChannelMoments()
    for lo, hi in [(0, 7), (7, 8), (8, 20)]:
        acc.update(x[lo:hi])
    assert len(calls) == 3
    mean, var = nbn.channel_moments(x.astype(np.float64))
    np.testing.assert_allclose(acc.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(acc.var(), var, rtol=1e-12)
