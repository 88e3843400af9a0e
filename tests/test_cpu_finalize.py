"""The CPU backend's compiled per-channel finalize steps give the bits of :mod:`numbabn._channel_math`.

The running-average update and the inference coefficients run as one
compiled loop each (fewer NumPy calls per call); the NumPy formulas in
``_channel_math`` are what the MPI layer and the other backends use, so the
two must agree bit for bit, NaN and Inf included.
"""
import numpy as np
import pytest

from numbabn import _channel_math as cm
from numbabn.cpu.forward import update_running
from numbabn.cpu.normalize import infer_coefficients

pytestmark = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning",
                                        "ignore:divide by zero:RuntimeWarning")


def _with_specials(a):
    a = a.copy()
    a[:4] = [np.nan, np.inf, -np.inf, 0.0]
    return a


@pytest.mark.parametrize("mean_dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("var_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.0, 0.1, 0.3337, 1.0])
def test_update_running_matches_blend_running(rng, mean_dtype, var_dtype, momentum):
    C, count = 37, 99
    running_mean = (rng.standard_normal(C) * 1e3 + 1e4).astype(mean_dtype)
    running_var = _with_specials(rng.random(C) * 7).astype(var_dtype)
    mean = _with_specials(rng.standard_normal(C) * 1e4)[::-1].copy()
    m2 = rng.random(C) * 1e6
    m2[5] = np.nan
    expect_mean, expect_var = running_mean.copy(), running_var.copy()
    cm.blend_running(expect_mean, mean, momentum)
    cm.blend_running(expect_var, m2 / (count - 1), momentum)
    update_running(running_mean, running_var, mean, m2, count, momentum)
    assert running_mean.dtype == mean_dtype and running_var.dtype == var_dtype
    np.testing.assert_array_equal(running_mean, expect_mean)
    np.testing.assert_array_equal(running_var, expect_var)


def test_blend_running_rounds_like_the_expression(rng):
    """In place, the product in the buffer's dtype and one rounding of the float64 sum."""
    for dtype in (np.float16, np.float32, np.float64):
        running = (rng.standard_normal(257) * 1e3).astype(dtype)
        batch = rng.standard_normal(257) * 1e4
        expect = ((1.0 - 0.37) * running + 0.37 * batch).astype(dtype)
        cm.blend_running(running, batch, 0.37)
        np.testing.assert_array_equal(running, expect)


@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_infer_coefficients_match_channel_math(rng, with_weight, with_bias):
    C, eps = 41, 1e-5
    mean = _with_specials(rng.standard_normal(C) * 1e4)
    var = rng.random(C) * 10
    var[4:7] = [np.inf, -eps, -3.0]  # invstd inf (var + eps == 0) and NaN, as in NumPy
    weight = _with_specials(rng.standard_normal(C))[::-1].copy() if with_weight else None
    bias = rng.standard_normal(C) if with_bias else None
    scale, shift = cm.affine_coefficients(mean, cm.invstd_from_var(var, eps), weight, bias)
    got_scale, got_shift = infer_coefficients(
        mean, var, np.ones(C) if weight is None else weight,
        np.zeros(C) if bias is None else bias, bias is not None, eps)
    np.testing.assert_array_equal(got_scale, scale)
    np.testing.assert_array_equal(got_shift, shift)
    finite = ~np.isnan(shift)
    np.testing.assert_array_equal(np.signbit(got_shift[finite]), np.signbit(shift[finite]))
