"""BatchNorm layers step by step against torch.nn.BatchNorm1d/2d (skipped without PyTorch)."""
import numpy as np
import pytest

import numbabn as nbn
from conftest import tolerance

torch = pytest.importorskip("torch")

CASES = [
    (nbn.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 5, 5)),
    (nbn.BatchNorm1d, torch.nn.BatchNorm1d, (6, 4, 7)),
    (nbn.BatchNorm1d, torch.nn.BatchNorm1d, (16, 5)),
]
TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


def close(ours, theirs, dtype, scale=10.0):
    tol = tolerance(dtype)
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    np.testing.assert_allclose(np.asarray(ours, np.float64), theirs.astype(np.float64),
                               rtol=tol * scale, atol=tol * scale)


def torch_step(tbn, x, dy):
    xt = torch.tensor(x, requires_grad=True)
    yt = tbn(xt)
    yt.backward(torch.tensor(dy))
    return yt, xt.grad


@pytest.mark.parametrize("ours_cls, torch_cls, shape", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_matches_torch_over_training_steps_and_eval(rng, ours_cls, torch_cls, shape, dtype,
                                                    momentum):
    c = shape[1]
    bn = ours_cls(c, momentum=momentum, dtype=dtype)
    tbn = torch_cls(c, momentum=momentum, dtype=TORCH_DTYPES[dtype])
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor(rng.uniform(0.5, 1.5, c)))
        tbn.bias.copy_(torch.tensor(rng.standard_normal(c)))
    bn.weight[...] = tbn.weight.detach().numpy()
    bn.bias[...] = tbn.bias.detach().numpy()

    for step in range(4):
        x = (rng.standard_normal(shape) * (1 + step) - step).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y = bn(x)
        dx = bn.backward(dy)
        yt, dxt = torch_step(tbn, x, dy)
        close(y, yt, dtype)
        close(dx, dxt, dtype)
        close(bn.grad_weight, tbn.weight.grad, dtype, scale=100)
        close(bn.grad_bias, tbn.bias.grad, dtype, scale=100)
        # the same SGD step on both, each with its own gradients
        bn.weight -= 0.05 * bn.grad_weight
        bn.bias -= 0.05 * bn.grad_bias
        with torch.no_grad():
            tbn.weight -= 0.05 * tbn.weight.grad
            tbn.bias -= 0.05 * tbn.bias.grad
        tbn.zero_grad()
        close(bn.running_mean, tbn.running_mean, dtype)
        close(bn.running_var, tbn.running_var, dtype)
        assert bn.num_batches_tracked == int(tbn.num_batches_tracked) == step + 1

    bn.eval()
    tbn.eval()
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y = bn(x)
    dx = bn.backward(dy)
    yt, dxt = torch_step(tbn, x, dy)
    close(y, yt, dtype)
    close(dx, dxt, dtype)  # frozen statistics: dx = dy * weight * invstd_running
    close(bn.grad_weight, tbn.weight.grad, dtype, scale=100)
    close(bn.grad_bias, tbn.bias.grad, dtype, scale=100)


def test_torch_state_dict_loads_as_it_is_and_back(rng):
    tbn = torch.nn.BatchNorm2d(3, momentum=None)
    for _ in range(3):
        tbn(torch.tensor(rng.standard_normal((2, 3, 4, 4)), dtype=torch.float32))
    with torch.no_grad():
        tbn.weight.mul_(2.0)
    state = {key: value.numpy() for key, value in tbn.state_dict().items()}

    bn = nbn.BatchNorm2d(3, momentum=None)
    bn.load_state_dict(state)
    assert bn.num_batches_tracked == 3
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    close(bn.eval()(x), tbn.eval()(torch.tensor(x)), np.float32)

    back = torch.nn.BatchNorm2d(3, momentum=None)
    back.load_state_dict({key: torch.from_numpy(value) for key, value in bn.state_dict().items()})
    for key, value in tbn.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)
    # Training goes on with the cumulative average from the loaded count (1/4 next).
    x = (1 + rng.standard_normal((2, 3, 4, 4))).astype(np.float32)
    bn.train()(x)
    tbn.train()(torch.tensor(x))
    close(bn.running_mean, tbn.running_mean, np.float32)
    close(bn.running_var, tbn.running_var, np.float32)
    assert bn.num_batches_tracked == tbn.num_batches_tracked == 4


def test_state_keys_match_torch_for_every_configuration():
    for affine in (True, False):
        for track in (True, False):
            ours = nbn.BatchNorm1d(2, affine=affine, track_running_stats=track).state_dict()
            theirs = torch.nn.BatchNorm1d(2, affine=affine, track_running_stats=track)
            assert list(ours) == list(theirs.state_dict())
