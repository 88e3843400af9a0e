"""Stack scratch arrays of the CPU kernels (numbabn.cpu._stack.stack_empty)."""
import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from numbabn.cpu._stack import stack_empty


@njit(cache=False)
def _lane_sums(x):
    """Sums of x's values by position modulo 8, in stack lanes; each call's own slot."""
    acc = stack_empty(8)
    for lane in range(8):
        acc[lane] = 0.0
    for i in range(x.size):
        acc[i % 8] += x[i]
    out = np.empty(8)
    for lane in range(8):
        out[lane] = acc[lane]
    return out


@njit(cache=False)
def _nested(x):
    """A stack array used in a loop and next to a second one: separate slots."""
    a = stack_empty(4)
    b = stack_empty(4)
    total = 0.0
    for k in range(3):
        for lane in range(4):
            a[lane] = x[lane] * (k + 1)
            b[lane] = -x[lane]
        for lane in range(4):
            total += a[lane] + b[lane]
    return total


def test_stack_lanes_hold_the_values_written():
    x = np.arange(37, dtype=np.float64)
    want = np.array([x[lane::8].sum() for lane in range(8)])
    np.testing.assert_array_equal(_lane_sums(x), want)
    np.testing.assert_array_equal(_lane_sums(-x), -want)  # a fresh slot, not the last call's


def test_two_stack_arrays_do_not_overlap():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert _nested(x) == sum((k + 1) * 10.0 - 10.0 for k in range(3))


def test_count_must_be_a_compile_time_constant():
    @njit(cache=False)
    def runtime_count(n):
        return stack_empty(n)[0]

    with pytest.raises(TypingError):
        runtime_count(4)


def test_not_callable_from_python():
    with pytest.raises(NotImplementedError):
        stack_empty(4)
