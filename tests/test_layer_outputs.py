"""A layer writes its next output into the memory of its last one, only once nothing else
refers to that memory (:meth:`numbabn._module.Module._output_buffer`).

What must never happen: a result the caller still holds (by name, through a
view, or inside another layer's saved input) changes when the layer runs again.
"""
import numpy as np
import pytest

import numbabn as nbn
from numbabn._module import KEEP_BYTES

SHAPE = (8, 16, 32, 32)  # 512 KiB of float32: above KEEP_BYTES


def _layers():
    return {
        "BatchNorm2d": lambda: nbn.BatchNorm2d(16),
        "BatchNorm2d relu": lambda: nbn.BatchNorm2d(16, activation="relu"),
        "BatchRenorm2d": lambda: nbn.BatchRenorm2d(16),
        "GroupNorm": lambda: nbn.GroupNorm(4, 16),
        "InstanceNorm2d": lambda: nbn.InstanceNorm2d(16, affine=True),
        "LayerNorm": lambda: nbn.LayerNorm(32),
        "RMSNorm": lambda: nbn.RMSNorm(32),
    }


def _data(seed):
    return (2 + np.random.default_rng(seed).standard_normal(SHAPE)).astype(np.float32)


@pytest.fixture(params=list(_layers()))
def make(request):
    return _layers()[request.param]


@pytest.mark.parametrize("training", [True, False])
def test_dropped_outputs_are_written_again_with_the_right_values(make, training):
    layer, fresh = make().train(training), make().train(training)
    x1, x2, dy = _data(1), _data(2), _data(3)
    address = layer(x1).ctypes.data  # dropped at once
    fresh(x1)  # the same calls, for layers whose running statistics shape the next output
    y = layer(x2)
    assert y.ctypes.data == address
    np.testing.assert_array_equal(y, fresh(x2))
    dx_address = layer.backward(dy).ctypes.data
    fresh.backward(dy)
    layer(x2)
    fresh(x2)
    dx = layer.backward(dy)
    assert dx.ctypes.data == dx_address
    np.testing.assert_array_equal(dx, fresh.backward(dy))


def test_held_outputs_and_their_views_never_change(make):
    layer = make()
    x1, x2, x3, dy = _data(1), _data(2), _data(3), _data(4)
    y1 = layer(x1)
    kept = y1.copy()
    y2 = layer(x2)
    view = y2[:, :2]
    kept_view = view.copy()
    del y2
    layer(x3)
    np.testing.assert_array_equal(y1, kept)
    np.testing.assert_array_equal(view, kept_view)
    dx = layer.backward(dy)
    kept_dx = dx.copy()
    layer.backward(dy * 2)
    np.testing.assert_array_equal(dx, kept_dx)


def test_an_output_saved_by_the_next_layer_is_not_overwritten():
    first, second = nbn.BatchNorm2d(16), nbn.BatchNorm2d(16)
    reference = nbn.BatchNorm2d(16)
    x1, x2, dy = _data(1), _data(2), _data(3)
    second(first(x1))  # the second layer keeps first's output as its saved input
    reference(first(x1).copy())
    first(x2)  # must not write into the array the second layer saved
    np.testing.assert_array_equal(second.backward(dy), reference.backward(dy))


def test_a_layer_applied_to_its_own_output():
    layer, fresh = nbn.BatchNorm2d(16), nbn.BatchNorm2d(16)
    x = _data(1)
    for _ in range(3):
        np.testing.assert_array_equal(layer(layer(x)), fresh(fresh(x)))


def test_small_outputs_are_not_kept():
    layer = nbn.BatchNorm1d(16)
    x = np.ones((4, 16), np.float32)
    assert x.nbytes < KEEP_BYTES
    layer(x + np.arange(4, dtype=np.float32)[:, None])
    assert layer._outputs == {}


def test_the_switch_allocates_every_output():
    layer = nbn.GroupNorm(4, 16)
    layer.reuse_outputs = False
    x = _data(1)
    layer(x)
    layer.backward(x)
    assert layer._outputs == {}
