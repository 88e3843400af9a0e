"""BatchNorm layers against a float64 reference over several training steps, and their rules."""
import numpy as np
import pytest

import numbabn as nbn
import reference as ref
from conftest import tolerance
from numbabn import layers

# (layer class, input shape, channel axis)
CASES = [
    (nbn.BatchNorm2d, (4, 3, 5, 5), 1),
    (nbn.BatchNorm1d, (8, 4), 1),
    (nbn.BatchNorm, (3, 4, 2, 5), -1),  # channels-last through the generic class
]


class ReferenceLayer:
    """The layer's rules written out in float64 on top of tests/reference.py."""

    def __init__(self, c, momentum, eps, axis):
        self.running_mean, self.running_var = np.zeros(c), np.ones(c)
        self.count, self.momentum, self.eps, self.axis = 0, momentum, eps, axis

    def train_step(self, x, weight, bias):
        y, mean, invstd, unbiased_var = ref.forward_train(x, weight, bias, self.eps, self.axis)
        self.count += 1
        f = 1.0 / self.count if self.momentum is None else self.momentum
        self.running_mean = (1 - f) * self.running_mean + f * mean
        self.running_var = (1 - f) * self.running_var + f * unbiased_var
        return y, mean, invstd

    def frozen_invstd(self):
        return 1.0 / np.sqrt(self.running_var + self.eps)


def close(actual, expected, dtype, scale=1.0):
    tol = tolerance(dtype)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=tol,
                               atol=tol * scale)


@pytest.mark.parametrize("cls, shape, axis", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_training_steps_then_eval_match_reference(rng, cls, shape, axis, dtype, momentum):
    c = shape[axis]
    bn = cls(c, momentum=momentum, axis=axis, dtype=dtype)
    model = ReferenceLayer(c, momentum, bn.eps, axis)
    for step in range(4):
        x = (rng.standard_normal(shape) * (1 + step) + step).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        w, b = bn.weight.astype(np.float64), bn.bias.astype(np.float64)

        y = bn(x)
        y_ref, mean, invstd = model.train_step(x, w, b)
        close(y, y_ref, dtype, scale=10)
        assert y.dtype == dtype and y.shape == shape

        dx = bn.backward(dy)
        dx_ref, dw_ref, db_ref = ref.backward(dy, x, mean, invstd, w, axis)
        close(dx, dx_ref, dtype, scale=10)
        close(bn.grad_weight, dw_ref, dtype, scale=100)
        close(bn.grad_bias, db_ref, dtype, scale=100)

        bn.weight -= 0.1 * bn.grad_weight  # an SGD step, so later steps see other parameters
        bn.bias -= 0.1 * bn.grad_bias
        assert bn.num_batches_tracked == step + 1
        close(bn.running_mean, model.running_mean, dtype, scale=10)
        close(bn.running_var, model.running_var, dtype, scale=10)

    bn.eval()
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = bn.weight.astype(np.float64), bn.bias.astype(np.float64)
    running_before = bn.running_mean.copy(), bn.running_var.copy()
    y = bn(x)
    close(y, ref.forward_infer(x, model.running_mean, model.running_var, w, b, bn.eps, axis),
          dtype, scale=10)
    dx = bn.backward(dy)
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, model.running_mean, model.frozen_invstd(), w,
                                          axis, training=False)
    close(dx, dx_ref, dtype, scale=10)
    close(bn.grad_weight, dw_ref, dtype, scale=100)
    close(bn.grad_bias, db_ref, dtype, scale=100)
    # eval changes no statistics
    np.testing.assert_array_equal(bn.running_mean, running_before[0])
    np.testing.assert_array_equal(bn.running_var, running_before[1])
    assert bn.num_batches_tracked == 4


def test_momentum_none_is_the_cumulative_average(rng):
    bn = nbn.BatchNorm1d(3, momentum=None, dtype=np.float64)
    batches = [rng.standard_normal((6, 3)) * s + s for s in (1.0, 2.0, 3.0)]
    for x in batches:
        bn(x)
    means = [ref.moments(x)[0] for x in batches]
    unbiased = [ref.moments(x, ddof=1)[1] for x in batches]
    np.testing.assert_allclose(bn.running_mean, np.mean(means, axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean(unbiased, axis=0), rtol=1e-12)


def test_without_running_stats_batch_statistics_in_both_modes(rng):
    bn = nbn.BatchNorm2d(3, track_running_stats=False, dtype=np.float64)
    assert bn.running_mean is None and bn.running_var is None and bn.num_batches_tracked is None
    x, dy = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4))
    y_ref, mean, invstd, _ = ref.forward_train(x, bn.weight, bn.bias)
    dx_ref = ref.backward(dy, x, mean, invstd, bn.weight)[0]
    for mode in (True, False):
        bn.train(mode)
        np.testing.assert_allclose(bn(x), y_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(bn.backward(dy), dx_ref, rtol=1e-10, atol=1e-10)
    assert set(bn.state_dict()) == {"weight", "bias"}


def test_affine_false_has_no_parameters_or_gradients(rng):
    bn = nbn.BatchNorm1d(4, affine=False, dtype=np.float64)
    assert bn.weight is None and bn.bias is None
    x, dy = rng.standard_normal((5, 4, 3)), rng.standard_normal((5, 4, 3))
    y_ref, mean, invstd, _ = ref.forward_train(x)
    np.testing.assert_allclose(bn(x), y_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bn.backward(dy), ref.backward(dy, x, mean, invstd)[0],
                               rtol=1e-10, atol=1e-10)
    assert bn.grad_weight is None and bn.grad_bias is None
    assert list(bn.state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]


def test_defaults_and_modes():
    bn = nbn.BatchNorm2d(3)
    assert (bn.eps, bn.momentum, bn.affine, bn.track_running_stats) == (1e-5, 0.1, True, True)
    assert bn.training and bn.device == "cpu" and bn.num_batches_tracked == 0
    for name, value in [("weight", 1), ("bias", 0), ("running_mean", 0), ("running_var", 1)]:
        arr = getattr(bn, name)
        assert arr.dtype == np.float32 and arr.shape == (3,)
        np.testing.assert_array_equal(arr, value)
    assert bn.eval() is bn and not bn.training
    assert bn.train() is bn and bn.training
    assert repr(bn) == (
        "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, "
        "track_running_stats=True)"
    )


def test_resets(rng):
    bn = nbn.BatchNorm1d(3)
    bn(rng.standard_normal((4, 3)).astype(np.float32))
    bn.weight[...] = 2
    bn.bias[...] = 3
    bn.reset_running_stats()
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert bn.num_batches_tracked == 0
    np.testing.assert_array_equal(bn.weight, 2)
    bn.reset_parameters()
    np.testing.assert_array_equal(bn.weight, 1)
    np.testing.assert_array_equal(bn.bias, 0)


@pytest.mark.parametrize("cls, ndim, message", [
    (nbn.BatchNorm1d, 4, "expected 2D or 3D input (got 4D input)"),
    (nbn.BatchNorm2d, 3, "expected 4D input (got 3D input)"),
    (nbn.BatchNorm3d, 4, "expected 5D input (got 4D input)"),
    (nbn.BatchNorm, 1, "expected at least 2D input (got 1D input)"),
])
def test_rank_checks_use_pytorch_messages(cls, ndim, message):
    bn = cls(2)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bn(np.ones((2,) * ndim, np.float32))


def test_bad_input_changes_nothing(rng):
    bn = nbn.BatchNorm2d(3)
    bn(rng.standard_normal((2, 3, 2, 2)).astype(np.float32))
    state = {key: value.copy() for key, value in bn.state_dict().items()}  # not views
    with pytest.raises(ValueError, match="expected 3 channels"):
        bn(np.ones((2, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(np.ones((1, 3, 1, 1), np.float32))
    with pytest.raises(TypeError):
        bn(np.ones((2, 3, 2, 2), np.int32))
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, state[key])


def test_backward_needs_a_forward_of_the_same_shape(rng):
    bn = nbn.BatchNorm1d(3)
    with pytest.raises(RuntimeError, match="before forward"):
        bn.backward(np.ones((4, 3), np.float32))
    x = rng.standard_normal((4, 3)).astype(np.float32)
    bn(x)
    with pytest.raises(ValueError, match=r"shape of the forward's input \(4, 3\)"):
        bn.backward(np.ones((4, 3, 1), np.float32))
    assert bn.grad_weight is None and bn.grad_bias is None
    with pytest.raises(ValueError):
        bn(np.ones((1, 3), np.float32))  # a failed forward leaves nothing to go back through
    with pytest.raises(RuntimeError, match="before forward"):
        bn.backward(np.ones((4, 3), np.float32))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(num_features=0), ValueError, "num_features must be at least 1"),
    (dict(num_features=2.0), TypeError, "num_features must be an integer"),
    (dict(num_features=True), TypeError, "num_features must be an integer"),
    (dict(num_features=2, eps="1e-5"), TypeError, "eps must be a real number"),
    (dict(num_features=2, momentum="0.1"), TypeError, "momentum must be a real number"),
    (dict(num_features=2, dtype=np.int32), TypeError, "dtype must have a floating dtype"),
    (dict(num_features=2, axis=1.0), TypeError, "axis must be an integer"),
])
def test_constructor_checks(kwargs, error, message):
    with pytest.raises(error, match=message):  # the check's own error, not a later accident
        nbn.BatchNorm(**kwargs)


def test_eps_checked_where_pytorch_checks_it(rng):
    """As torch.nn.BatchNorm1d: any eps builds; training needs eps > 0, inference eps >= 0,
    and a refused call leaves the running buffers as they were."""
    x = rng.standard_normal((4, 2)).astype(np.float32)
    bn = nbn.BatchNorm1d(2, eps=0.0)
    before = bn.running_mean.copy(), bn.running_var.copy()
    with pytest.raises(ValueError, match="eps must be positive during training"):
        bn(x)
    np.testing.assert_array_equal(bn.running_mean, before[0])
    np.testing.assert_array_equal(bn.running_var, before[1])
    assert np.all(np.isfinite(bn.eval()(x)))
    with pytest.raises(ValueError, match="eps must be non-negative"):
        nbn.BatchNorm1d(2, eps=-0.5).eval()(x)


def test_device_moves():
    bn = nbn.BatchNorm1d(2)
    assert bn.to("cpu") is bn
    with pytest.raises(ValueError, match="device"):
        bn.to("gpu")
    if not nbn.cuda_available():
        with pytest.raises(nbn.CudaUnavailableError):
            bn.to("cuda")
        assert bn.device == "cpu" and isinstance(bn.weight, np.ndarray)


def test_batch_statistics_go_only_through_the_two_overridable_methods(rng, monkeypatch):
    """The contract SyncBatchNorm relies on: overriding two methods replaces every
    training-statistics computation of the layer."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the layer called a training kernel directly")

    monkeypatch.setattr(layers.F, "batch_norm_forward", forbidden)
    calls = []

    class Replaced(nbn.BatchNorm1d):
        def _batch_forward(self, x, running_mean, running_var, momentum, out=None):
            calls.append(("forward", running_mean is not None, momentum))
            y, mean, invstd, unbiased = ref.forward_train(x, self.weight, self.bias, self.eps)
            if running_mean is not None:
                running_mean[...] = (1 - momentum) * running_mean + momentum * mean
                running_var[...] = (1 - momentum) * running_var + momentum * unbiased
            return y, mean, invstd

        def _batch_backward(self, dy, x, mean, invstd, out=None):
            calls.append(("backward",))
            return ref.backward(dy, x, mean, invstd, self.weight)

    bn = Replaced(3, momentum=None, dtype=np.float64)
    x = rng.standard_normal((5, 3))
    bn(x)
    bn(x)
    bn.backward(np.ones_like(x))
    bn.eval()(x)  # eval with running statistics: no batch statistics
    assert calls == [("forward", True, 1.0), ("forward", True, 0.5), ("backward",)]
    np.testing.assert_allclose(bn.running_mean, ref.moments(x)[0], rtol=1e-12)
    assert bn.num_batches_tracked == 2


def test_state_dict_round_trip(rng):
    bn = nbn.BatchNorm2d(3, momentum=None)
    for _ in range(3):
        bn(rng.standard_normal((2, 3, 3, 3)).astype(np.float32))
    bn.weight[...] = rng.standard_normal(3)
    state = bn.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var",
                           "num_batches_tracked"]
    assert state["num_batches_tracked"].dtype == np.int64 and state["num_batches_tracked"] == 3
    state["weight"][0] = 99.0  # a copy: the layer does not change
    assert bn.weight[0] != 99.0
    for key, value in bn.state_dict().items():  # every entry, buffers too
        assert not np.shares_memory(value, getattr(bn, key)), key

    other = nbn.BatchNorm2d(3, momentum=None)
    weight_before = other.weight
    other.load_state_dict(bn.state_dict())
    assert other.weight is weight_before  # loaded in place
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[key], value)
    x = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(other.eval()(x), bn.eval()(x))
    other.train()(x)
    assert other.num_batches_tracked == 4  # the cumulative average goes on from the count
    bn.momentum = None
    bn.train()(x)  # the same step on the layer that counted the batches itself
    np.testing.assert_array_equal(other.running_mean, bn.running_mean)
    np.testing.assert_array_equal(other.running_var, bn.running_var)


def test_float32_state_loads_into_a_float64_layer():
    bn = nbn.BatchNorm1d(2, dtype=np.float64)
    state = nbn.BatchNorm1d(2, dtype=np.float32).state_dict()
    state["running_var"][...] = 0.1
    bn.load_state_dict(state)
    assert bn.running_var.dtype == np.float64
    np.testing.assert_array_equal(bn.running_var, np.float32(0.1))


def _refusals():
    good = nbn.BatchNorm1d(3).state_dict()

    def changed(**kv):
        state = {k: v.copy() for k, v in good.items()}
        for key, value in kv.items():
            if value is None:
                del state[key]
            else:
                state[key] = value
        return state

    return [
        ("missing", changed(running_var=None), ValueError, "missing keys \\['running_var'\\]"),
        ("unexpected", {**good, "extra": np.zeros(3)}, ValueError, "unexpected keys"),
        ("shape", changed(bias=np.zeros(4, np.float32)), ValueError, "bias must have shape"),
        ("int dtype", changed(weight=np.ones(3, np.int64)), TypeError, "floating dtype"),
        ("lossy", changed(running_mean=np.zeros(3)), TypeError, "without loss"),
        ("count dtype", changed(num_batches_tracked=np.array(1.0)), TypeError, "integer"),
        ("count sign", changed(num_batches_tracked=np.array(-1)), ValueError, ">= 0"),
        ("not a mapping", [("weight", 1)], TypeError, "mapping"),
    ]


@pytest.mark.parametrize("case", _refusals(), ids=lambda case: case[0])
def test_refused_state_changes_nothing(rng, case):
    _, state, error, message = case
    bn = nbn.BatchNorm1d(3)
    bn(rng.standard_normal((4, 3)).astype(np.float32))
    before = {key: value.copy() for key, value in bn.state_dict().items()}  # not views
    # the valid entries come first, so a partial write would show
    with pytest.raises(error, match=message):
        bn.load_state_dict(state)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_running_variance_below_zero_gives_nan_without_warnings(rng):
    """A momentum outside [0, 1] (PyTorch's own sample inputs use -1.0) can drive the running
    variance below zero: inference and folding then give NaN, as PyTorch's, and no NumPy
    warnings on the way."""
    import warnings

    x = rng.standard_normal((8, 3))
    bn = nbn.BatchNorm1d(3, momentum=-1.0, dtype=np.float64)
    bn.running_var[:] = 0.01
    bn(x)
    assert np.all(bn.running_var < 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.all(np.isnan(bn.eval()(x)))
        w, b = nbn.fold_batch_norm(bn, np.ones((3, 4)))
    assert np.all(np.isnan(w)) and np.all(np.isnan(b))
