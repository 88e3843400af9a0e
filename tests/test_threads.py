"""Results do not depend on the thread count, and the thread count is honoured."""
import numba
import numpy as np
import pytest

import numbabn as nbn


@pytest.fixture
def one_thread():
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
@pytest.mark.parametrize("shape, axis", [((8, 16, 30, 30), 1), ((2000, 64), 1),
                                         ((4, 9, 9, 32), -1), ((1, 2, 100000), 1)])
def test_bitwise_identical_with_one_and_two_threads(rng, shape, axis, request):
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)

    def run():
        y, mean, invstd = nbn.batch_norm_forward(x, axis=axis)
        grads = nbn.batch_norm_backward(dy, x, mean, invstd, axis=axis)
        return (y, mean, invstd, *grads)

    numba.set_num_threads(2)
    two = run()
    request.getfixturevalue("one_thread")
    assert numba.get_num_threads() == 1
    one = run()
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
