"""In place (``out=`` the input's own buffer): the bits of a separate ``out=``, and the kernels
compiled for writing in place.

A kernel handed one array as both its input and its output tests at run time
that the two do not overlap, finds that they do, and runs its scalar loops:
in place ran at half the speed of a separate ``out=``.  The CPU backend hands
such kernels None instead (:func:`numbabn.cpu._arrays.unless_in_place`), and
they write into their input, compiled for that case.  The spy below checks
that every in-place call here goes that way.
"""
import numpy as np
import pytest

import numbabn as nbn
from numbabn.cpu import _arrays, backward, forward, groups, normalize, rownorm

#: The modules whose entry points hand the kernels their output.
WRITERS = (backward, forward, groups, normalize, rownorm)


@pytest.fixture
def handed_none(monkeypatch):
    """A list that records, per entry-point call, whether a kernel was handed None."""
    calls = []

    def spy(out, a):
        result = _arrays.unless_in_place(out, a)
        calls.append(result is None)
        return result

    for module in WRITERS:
        monkeypatch.setattr(module, "unless_in_place", spy)
    return calls


def _data(rng, shape, dtype=np.float32):
    return (5 + 2 * rng.standard_normal(shape)).astype(dtype)


# Batch norm's loop orders: rows (B = 1), blocks (16 <= B < 512), planes (B >= 512),
# channels-last; instance norm runs batch norm's kernels on an (1, N*C, B) view.
BATCH_SHAPES = [((300, 40), 1), ((6, 16, 12, 12), 1), ((6, 4, 600), 1), ((4, 6, 6, 24), -1)]


def _forward_ops(shape, axis, rng):
    C = shape[axis]
    w, b = _data(rng, C), _data(rng, C)
    rm, rv = _data(rng, C), np.abs(_data(rng, C))
    return {
        "batch_norm train": lambda x, out: nbn.batch_norm_forward(x, w, b, axis=axis, out=out)[0],
        "batch_norm eval": lambda x, out: nbn.batch_norm(x, rm, rv, w, b, axis=axis, out=out),
        "batch_norm relu": lambda x, out: nbn.batch_norm(x, None, None, w, b, True, axis=axis,
                                                         activation="relu", out=out),
        "instance_norm": lambda x, out: nbn.instance_norm(x, axis=axis, out=out),
        "group_norm": lambda x, out: nbn.group_norm(x, 2, axis=axis, out=out),
    }


def _check_forward(f, x, handed_none):
    expected = f(x, np.empty_like(x))
    assert not any(handed_none)
    xc = x.copy()
    handed_none.clear()
    assert f(xc, xc) is xc
    assert any(handed_none)
    np.testing.assert_array_equal(xc, expected)


@pytest.mark.parametrize("shape, axis", BATCH_SHAPES)
@pytest.mark.parametrize("op", ["batch_norm train", "batch_norm eval", "batch_norm relu",
                                "instance_norm", "group_norm"])
def test_forward_in_place(rng, handed_none, shape, axis, op):
    if op == "instance_norm" and len(shape) < 3:
        pytest.skip("instance norm needs a spatial axis")
    x = _data(rng, shape)
    _check_forward(_forward_ops(shape, axis, rng)[op], x, handed_none)


@pytest.mark.parametrize("shape", [(64, 96), (3, 5, 70)])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_row_norms_forward_in_place(rng, handed_none, shape, op):
    x = _data(rng, shape)
    w = _data(rng, shape[-1])
    f = getattr(nbn, op)
    _check_forward(lambda a, out: f(a, shape[-1], w, out=out), x, handed_none)


def _backward_ops(shape, axis, x):
    rng = np.random.default_rng(7)  # the same weights at every call
    C = shape[axis]
    w = _data(rng, C)
    d = shape[-1]
    wd = _data(rng, d)
    _, mean, invstd = nbn.batch_norm_forward(x, w, axis=axis)
    _, g_mean, g_invstd = nbn.group_norm_forward(x, 2, w, axis=axis)
    _, l_mean, l_invstd = nbn.layer_norm_forward(x, d, wd)
    _, invrms = nbn.rms_norm_forward(x, d, wd)
    return {
        "batch_norm": lambda dy, out: nbn.batch_norm_backward(dy, x, mean, invstd, w, axis=axis,
                                                              out=out)[0],
        "batch_norm frozen": lambda dy, out: nbn.batch_norm_backward(
            dy, x, mean, invstd, w, axis=axis, training=False, out=out)[0],
        "group_norm": lambda dy, out: nbn.group_norm_backward(dy, x, g_mean, g_invstd, 2, w,
                                                              axis=axis, out=out)[0],
        "layer_norm": lambda dy, out: nbn.layer_norm_backward(dy, x, l_mean, l_invstd, d, wd,
                                                              out=out)[0],
        "rms_norm": lambda dy, out: nbn.rms_norm_backward(dy, x, invrms, d, wd, out=out)[0],
    }


@pytest.mark.parametrize("shape, axis", BATCH_SHAPES)
@pytest.mark.parametrize("op", ["batch_norm", "batch_norm frozen", "group_norm", "layer_norm",
                                "rms_norm"])
def test_backward_in_place(rng, handed_none, shape, axis, op):
    x = _data(rng, shape)
    dy = rng.standard_normal(shape).astype(np.float32)
    f = _backward_ops(shape, axis, x)[op]
    handed_none.clear()
    expected = f(dy, np.empty_like(dy))
    assert not any(handed_none)
    dyc = dy.copy()
    assert f(dyc, dyc) is dyc
    if op != "group_norm" or axis == 1:  # channels-last group norm composes batch norm's
        assert any(handed_none)
    np.testing.assert_array_equal(dyc, expected)
    # Over x instead: a kernel that reads x after writing dx would go wrong here.
    xc = x.copy()
    ops = _backward_ops(shape, axis, xc)
    np.testing.assert_array_equal(ops[op](dy, xc), expected)
