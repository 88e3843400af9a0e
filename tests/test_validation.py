"""Bad input raises the named exception before anything is written."""
import numpy as np
import pytest

import numbabn as nbn


@pytest.fixture
def buffers(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    return dict(
        x=x,
        running_mean=rng.standard_normal(3).astype(np.float32),
        running_var=rng.uniform(1, 2, 3).astype(np.float32),
        weight=np.ones(3, np.float32),
        bias=np.zeros(3, np.float32),
        out=np.full_like(x, 123.0),
    )


def call_and_check_untouched(buffers, exc, match=None, **changes):
    kwargs = {**buffers, "training": True, **changes}
    before = {k: np.copy(v) for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    with pytest.raises(exc, match=match):
        nbn.batch_norm(**kwargs)
    for k, v in kwargs.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, before[k], err_msg=f"{k} was modified")


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64, object])
def test_non_float_input_is_a_type_error(buffers, dtype):
    x = np.ones((4, 3, 5), dtype=dtype)
    call_and_check_untouched(buffers, TypeError, "floating", x=x)


@pytest.mark.parametrize("x", ["abc", None, [[1, 2], [3, 4]]])
def test_non_float_array_likes_are_type_errors(buffers, x):
    call_and_check_untouched(buffers, TypeError, x=x, running_mean=None, running_var=None,
                             weight=None, bias=None, out=None)


def test_integer_weight_is_a_type_error(buffers):
    call_and_check_untouched(buffers, TypeError, "weight", weight=np.ones(3, np.int64))


@pytest.mark.parametrize("x", [np.ones(5, np.float32), np.float32(1.0)])
def test_rank_below_two(buffers, x):
    call_and_check_untouched(buffers, ValueError, "rank", x=x, out=None)


@pytest.mark.parametrize("axis", [3, -4, 10])
def test_axis_out_of_range(buffers, axis):
    call_and_check_untouched(buffers, ValueError, "axis", axis=axis)


@pytest.mark.parametrize("name", ["running_mean", "running_var", "weight", "bias"])
@pytest.mark.parametrize("shape", [(4,), (2,), (3, 1), ()])
def test_wrong_channel_vector_shape(buffers, name, shape):
    call_and_check_untouched(buffers, ValueError, name, **{name: np.ones(shape, np.float32)})


@pytest.mark.parametrize("eps", [0.0, -1e-5])
def test_training_eps_must_be_positive_as_pytorch_checks_it(buffers, eps):
    call_and_check_untouched(buffers, ValueError, "eps must be positive during training",
                             eps=eps)


def test_inference_eps_must_be_non_negative_as_pytorch_checks_it(buffers):
    call_and_check_untouched(buffers, ValueError, "eps must be non-negative", eps=-1e-5,
                             training=False)
    y = nbn.batch_norm(buffers["x"], buffers["running_mean"], buffers["running_var"],
                       training=False, eps=0.0)
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("eps", ["1e-5", None, True])
def test_eps_of_the_wrong_type(buffers, eps):
    call_and_check_untouched(buffers, TypeError, "eps", eps=eps)


@pytest.mark.parametrize("momentum", [-1.2, -1.0, 1.5])
def test_any_real_momentum_blends_as_pytorch(buffers, momentum):
    """PyTorch's own sample inputs use momentum -1.2 and -1.0: no range is enforced,
    running = (1 - momentum) * running + momentum * batch."""
    x = buffers["x"].astype(np.float64)
    rm, rv = buffers["running_mean"].astype(np.float64), buffers["running_var"].astype(np.float64)
    want_rm = (1 - momentum) * rm + momentum * x.mean(axis=(0, 2))
    want_rv = (1 - momentum) * rv + momentum * x.var(axis=(0, 2), ddof=1)
    nbn.batch_norm(x, rm, rv, training=True, momentum=momentum)
    np.testing.assert_allclose(rm, want_rm, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rv, want_rv, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("momentum", ["0.1", True])
def test_momentum_of_the_wrong_type(buffers, momentum):
    call_and_check_untouched(buffers, TypeError, "momentum", momentum=momentum)


@pytest.mark.parametrize("out", [
    np.ones((4, 3, 6), np.float32),
    np.ones((4, 3, 5), np.float64),
    [[0.0]],
])
def test_wrong_out(buffers, out):
    call_and_check_untouched(buffers, ValueError, "out", out=out)


def test_read_only_out(buffers):
    out = np.zeros_like(buffers["x"])
    out.flags.writeable = False
    call_and_check_untouched(buffers, ValueError, "read-only", out=out)


def test_read_only_running_stats(buffers):
    rm = buffers["running_mean"].copy()
    rm.flags.writeable = False
    call_and_check_untouched(buffers, ValueError, "read-only", running_mean=rm)


@pytest.mark.parametrize("shape, axis", [((1, 3), 1), ((1, 3, 1, 1), 1), ((1, 1, 1, 3), -1)])
def test_one_value_per_channel_when_training(buffers, shape, axis):
    x = np.ones(shape, np.float32)
    call_and_check_untouched(buffers, ValueError, "Expected more than 1 value per channel",
                             x=x, axis=axis, out=None)


@pytest.mark.parametrize("shape, axis", [((1, 3), 1), ((1, 1, 1, 3), -1)])
def test_one_value_per_channel_in_batch_norm_forward_changes_nothing(buffers, shape, axis):
    x = np.ones(shape, np.float32)
    rm, rv = buffers["running_mean"], buffers["running_var"]
    out = np.full_like(x, 123.0)
    before = rm.copy(), rv.copy()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        nbn.batch_norm_forward(x, axis=axis, out=out, running_mean=rm, running_var=rv)
    np.testing.assert_array_equal(rm, before[0])
    np.testing.assert_array_equal(rv, before[1])
    np.testing.assert_array_equal(out, 123.0)


def test_one_value_per_channel_is_fine_in_inference(buffers):
    y = nbn.batch_norm(np.ones((1, 3), np.float32), buffers["running_mean"],
                       buffers["running_var"])
    assert y.shape == (1, 3)


def test_inference_needs_running_stats(buffers):
    call_and_check_untouched(buffers, ValueError, "required", training=False,
                             running_mean=None, running_var=None)


def test_running_stats_come_in_pairs(buffers):
    call_and_check_untouched(buffers, ValueError, "together", running_var=None)


def test_unknown_device(buffers):
    call_and_check_untouched(buffers, ValueError, "device", device="gpu")


def test_cuda_without_backend_is_a_clear_error(buffers):
    if nbn.cuda_available():
        pytest.skip("CUDA is available here")
    call_and_check_untouched(buffers, nbn.CudaUnavailableError, device="cuda")


class TestBackwardValidation:
    def setup_method(self):
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((4, 3, 5)).astype(np.float32)
        self.dy = rng.standard_normal((4, 3, 5)).astype(np.float32)
        self.mean = np.zeros(3, np.float32)
        self.invstd = np.ones(3, np.float32)

    def test_dy_shape(self):
        with pytest.raises(ValueError, match="dy"):
            nbn.batch_norm_backward(self.dy[:, :, :4], self.x, self.mean, self.invstd)

    def test_dy_dtype(self):
        with pytest.raises(TypeError, match="same dtype"):
            nbn.batch_norm_backward(self.dy.astype(np.float64), self.x, self.mean, self.invstd)

    def test_stats_shape(self):
        with pytest.raises(ValueError, match="invstd"):
            nbn.batch_norm_backward(self.dy, self.x, self.mean, self.invstd[:2])

    def test_out_untouched_on_error(self):
        out = np.full_like(self.x, 7.0)
        with pytest.raises(ValueError):
            nbn.batch_norm_backward(self.dy, self.x, self.mean, self.invstd,
                                    np.ones(4, np.float32), out=out)
        assert (out == 7.0).all()


class TestMomentsValidation:
    def test_negative_ddof(self):
        with pytest.raises(ValueError, match="ddof"):
            nbn.channel_moments(np.ones((3, 2)), ddof=-1)

    def test_integer_input(self):
        with pytest.raises(TypeError):
            nbn.channel_moments(np.ones((3, 2), np.int64))

    def test_forward_eps(self):
        with pytest.raises(ValueError, match="eps"):
            nbn.batch_norm_forward(np.ones((3, 2)), eps=0)


def test_forward_running_buffers_checked_before_any_write(buffers):
    rm = buffers["running_mean"]
    rm_before = rm.copy()
    out = buffers["out"]
    with pytest.raises(ValueError, match="together"):
        nbn.batch_norm_forward(buffers["x"], running_mean=rm, out=out)
    with pytest.raises(ValueError, match="eps"):
        nbn.batch_norm_forward(buffers["x"], running_mean=rm, running_var=buffers["running_var"],
                               eps=0.0, out=out)
    np.testing.assert_array_equal(rm, rm_before)
    assert (out == 123.0).all()
