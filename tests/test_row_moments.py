"""The engine's row statistics (numbabn.cpu.rows.row_moments) against exact references.

Its paths are exercised: the one pass about a sampled shift, the pass again
about values spread along the row when the first values miss the mean, and
the two passes taken when the sampled values are not typical of the row.
References are exact: fractions of the float values.
"""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numbabn.cpu import rows


#: The two shifts the callers take: a row's first values (layer norm), values spread
#: along it (group norm).
SHIFTS = {"head": rows.head_shift, "spread": rows.spread_shift}
SHIFT_HEAD = rows.SHIFT_SAMPLES


@pytest.fixture(params=sorted(SHIFTS), scope="module")
def shift(request):
    return request.param


def _moments(x2, r, shift):
    acc1, acc2 = np.empty(rows.LANES), np.empty(rows.LANES)
    tv = np.empty(4, x2.dtype)
    mean, m2 = rows.row_moments(x2, r, SHIFTS[shift](x2, r), acc1, acc2, tv)
    return mean, m2, tv


def _exact(values):
    xs = [Fraction(float(v)) for v in values]
    mean = sum(xs) / len(xs)
    return mean, sum((v - mean) ** 2 for v in xs)


def _check_row(row, rtol, shift):
    """The mean within ``rtol`` of the spread (the differences from the shift are rounded
    relative to themselves, not to an offset) and the float64 rounding of the mean
    itself, M2 within ``rtol`` of itself."""
    x2 = np.ascontiguousarray(row[None, :])
    mean, m2, tv = _moments(x2, 0, shift)
    mean_ref, m2_ref = _exact(row)
    spread = float(m2_ref / len(row)) ** 0.5
    bound = Fraction(rtol) * Fraction(spread) + Fraction(2.0 ** -52) * abs(mean_ref)
    assert abs(Fraction(mean) - mean_ref) <= bound
    assert abs(Fraction(m2) - m2_ref) <= Fraction(rtol) * m2_ref
    # The head and tail of the mean: the mean rounded to the row's dtype, then the rest.
    assert tv[0] == row.dtype.type(mean) and tv[1] == row.dtype.type(mean - float(tv[0]))


def _one_pass(x2, c):
    """``(mean, M2, kept)`` of row 0 summed once about ``c`` rounded to the row's dtype."""
    c = x2.dtype.type(c)
    s1, s2 = rows._shifted_sums(x2, 0, c, np.empty(rows.LANES), np.empty(rows.LANES))
    return rows.shifted_moments(c, s1, s2, x2.shape[1])


def _two_passes(x2):
    acc = np.empty(rows.LANES)
    mean = rows._row_sum(x2, 0, acc) / x2.shape[1]
    hi = x2.dtype.type(mean)
    return mean, rows.centred_square_sum(x2, 0, hi, x2.dtype.type(mean - float(hi)), acc)


def _check_path(x2, shift, expected):
    """The bits of the path the module docstring names: ``"spread"`` (the first pass about
    the given shift missed, the second about spread values is kept) or ``"two passes"``."""
    first = _one_pass(x2, SHIFTS[shift](x2, 0))
    assert not first[2]  # the given shift misses
    retry = _one_pass(x2, rows.spread_shift(x2, 0))
    if expected == "spread":
        assert retry[2]
        assert _moments(x2, 0, shift)[:2] == retry[:2]
    else:
        assert not retry[2]
        assert _moments(x2, 0, shift)[:2] == _two_passes(x2)


def _sample_positions(D, shift):
    n = min(D, rows.SHIFT_SAMPLES)
    return np.arange(n) * (D // n if shift == "spread" else 1)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("D", [1, 2, 31, 64, 97, 768, 5000])
@pytest.mark.parametrize("offset", [0.0, 1e4, -3e6])
def test_one_pass_rows(rng, dtype, rtol, D, offset, shift):
    row = (offset + rng.standard_normal(D)).astype(dtype)
    if D == 1:
        mean, m2, _ = _moments(row[None, :], 0, shift)
        assert mean == row[0] and m2 == 0.0
        return
    _check_row(row, rtol, shift)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("D", [64, 96, 1000])
def test_rows_whose_sample_misses_the_mean_take_two_passes(rng, dtype, rtol, D, shift):
    # The sampled positions hold 1e4, the others 0: the shift is 1e4, the mean far below
    # it, the one-pass subtraction would cancel; the second pass keeps full precision.
    # (A head shift's miss is caught by the spread retry first.)
    row = np.zeros(D, dtype)
    row[_sample_positions(D, shift)] = 1e4
    row += rng.standard_normal(D).astype(dtype) * dtype(1e-2)
    x2 = row[None, :]
    c = float(row[_sample_positions(D, shift)].astype(np.float64).mean())
    s1 = float(np.sum(row.astype(np.float64) - c))
    s2 = float(np.sum((row.astype(np.float64) - c) ** 2))
    assert s1 * s1 > rows.ACCEPT_CANCELLATION * D * s2  # this row does take the fallback
    _check_row(x2[0], rtol, shift)
    # A head that misses is retried about spread values, which hold the mean here.
    _check_path(x2, shift, "two passes" if shift == "spread" else "spread")


def _misses(row, positions):
    """Whether the one pass about the mean of ``row[positions]`` would be refused."""
    c = float(row[positions].astype(np.float64).mean())
    d = row.astype(np.float64) - c
    return float(d.sum()) ** 2 > rows.ACCEPT_CANCELLATION * row.size * float((d * d).sum())


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_rows_whose_head_misses_are_summed_again_about_spread_values(rng, dtype, rtol, offset):
    # Group norm's rows: the first values are one channel's, here 50 spreads above the
    # rest.  The head shift misses, the spread one does not: one more pass, from cache.
    D = 5000
    row = (offset + rng.standard_normal(D)).astype(dtype)
    row[:SHIFT_HEAD] += dtype(50)
    assert _misses(row, _sample_positions(D, "head"))
    assert not _misses(row, _sample_positions(D, "spread"))
    _check_row(row, rtol, "head")
    _check_path(row[None, :], "head", "spread")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=2, max_size=300),
       st.sampled_from([0.0, 1e4, -7.5e5]))
def test_any_float32_row(shift, values, offset):
    row = (np.asarray(values, np.float32) + np.float32(offset)).astype(np.float32)
    mean_ref, m2_ref = _exact(row)
    mean, m2, _ = _moments(row[None, :], 0, shift)
    scale = max(float(m2_ref / len(row)) ** 0.5, abs(float(mean_ref)) * 2.0 ** -24, 1e-30)
    assert abs(mean - float(mean_ref)) <= 1e-6 * scale
    assert abs(m2 - float(m2_ref)) <= 1e-6 * float(m2_ref) + 1e-12 * scale ** 2 * len(row)


def test_constant_rows_have_no_spread(shift):
    x2 = np.full((3, 100), 1e4 + 0.5, np.float32)
    for r in range(3):
        mean, m2, _ = _moments(x2, r, shift)
        assert mean == np.float64(np.float32(1e4 + 0.5)) and m2 == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 41])  # a sampled position, and one that is not
def test_nan_and_inf_propagate(bad, where, shift):
    row = np.linspace(-1, 1, 64).astype(np.float32)
    assert (where in _sample_positions(64, shift)) == (where == 0)
    row[where] = bad
    mean, m2, _ = _moments(row[None, :], 0, shift)
    if np.isnan(bad):
        assert np.isnan(mean) and np.isnan(m2)
    else:
        assert mean == bad and np.isnan(m2)  # as two passes: (x - inf) is NaN


def test_rows_of_a_matrix_are_independent(rng, shift):
    x2 = rng.standard_normal((5, 200)).astype(np.float32) * np.arange(1, 6, dtype=np.float32)[:, None]
    for r in range(5):
        alone = _moments(np.ascontiguousarray(x2[r:r + 1]), 0, shift)
        assert _moments(x2, r, shift)[:2] == alone[:2]
