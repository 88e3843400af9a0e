"""``python -m numbabn demo small-batch | rnn``: quick smoke runs, and the networks' own
gradients by finite differences (skipped without scikit-learn and matplotlib)."""
import numpy as np
import pytest

from numbabn import __main__ as cli

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
from numbabn._experiments import nets, rnn, small_batch  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_quick_small_batch_prints_the_table_and_saves_the_plot(tmp_path, capsys):
    out = tmp_path / "small.png"
    assert cli.main(["demo", "small-batch", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| normalization | batch 2 | batch 4 | batch 8 | batch 32 |" in text
    for norm in small_batch.NORMS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {norm} |"))
        assert row.count("%") == len(small_batch.BATCH_SIZES)
    assert f"saved to {out}" in text
    assert out.read_bytes()[:8] == PNG


def test_quick_rnn_prints_the_table_and_saves_the_plot(tmp_path, capsys):
    out = tmp_path / "rnn.png"
    assert cli.main(["demo", "rnn", "--quick", "--out", str(out), "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "| epoch | none loss | LayerNorm loss | BatchNorm1d loss |" in text
    assert "| 2 |" in text and "seed 3" in text
    assert out.read_bytes()[:8] == PNG


def test_default_demo_is_unchanged(monkeypatch):
    """``demo`` without an experiment still runs the batch-norm demo, with its defaults."""
    from numbabn import _demo

    calls = []
    monkeypatch.setattr(_demo, "main", lambda **kw: calls.append(kw) or 0)
    assert cli.main(["demo"]) == 0
    assert calls == [dict(out="numbabn-demo.png", epochs=30, seed=0, quick=False)]
    monkeypatch.setattr(small_batch, "main", lambda **kw: calls.append(kw) or 0)
    assert cli.main(["demo", "small-batch", "--epochs", "2"]) == 0
    assert calls[-1] == dict(out="numbabn-small-batch.png", epochs=2, seed=0, quick=False)


def test_unknown_experiment_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "transformer"])
    assert "invalid choice" in capsys.readouterr().err


def test_same_initial_weights_for_every_normalization():
    weights = {
        norm: [layer.weight.copy() for layer in small_batch.MLP((64, 16, 16, 10), norm, 5).layers
               if isinstance(layer, nets.Linear)]
        for norm in small_batch.NORMS
    }
    for norm in small_batch.NORMS[1:]:
        assert len(weights[norm]) == 3
        for a, b in zip(weights["none"], weights[norm]):
            np.testing.assert_array_equal(a, b)


def test_renorm_schedule_warms_up_then_ramps():
    assert small_batch.renorm_schedule(0, 1000) == (1.0, 0.0)
    assert small_batch.renorm_schedule(100, 1000) == (1.0, 0.0)
    rmax, dmax = small_batch.renorm_schedule(250, 1000)
    assert 1.0 < rmax < 3.0 and 0.0 < dmax < 5.0
    assert small_batch.renorm_schedule(400, 1000) == (3.0, 5.0)
    assert small_batch.renorm_schedule(999, 1000) == (3.0, 5.0)


def _loss(net, x, labels):
    return nets.cross_entropy(net(x).astype(np.float64), labels)[0]


@pytest.mark.parametrize("cell", rnn.CELLS)
def test_rnn_gradients_match_finite_differences(rng, cell):
    """Backpropagation through time (and through the per-step norms, with shared parameters)
    against central differences of the loss, in float64."""
    net = rnn.RNNClassifier(3, 5, 4, 3, cell, seed=2)
    params = net.params()
    for i, p in enumerate(params):  # float64 copies so that differences resolve
        params[i] = p.astype(np.float64)
    net.w_x, net.w_h, net.b, net.w_o, net.b_o = params[:5]
    for layer in net.norms:
        layer.weight, layer.bias = params[5], params[6]
        if hasattr(layer, "running_mean"):
            layer.running_mean = layer.running_mean.astype(np.float64)
            layer.running_var = layer.running_var.astype(np.float64)
    if net.norms:
        params[5][...] = rng.uniform(0.5, 1.5, 5)
        params[6][...] = rng.standard_normal(5) * 0.1
    x = rng.standard_normal((6, 3, 3))
    labels = rng.integers(0, 4, 6)
    _, dlogits = nets.cross_entropy(net(x).astype(np.float64), labels)
    grads = net.backward(dlogits.astype(np.float64))
    h = 1e-6
    for p, g in zip(params, grads):
        numeric = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            up = _loss(net, x, labels)
            p[i] = old - h
            down = _loss(net, x, labels)
            p[i] = old
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(g, numeric, rtol=1e-4, atol=1e-7)


def test_layer_norm_stand_in_gradients(rng):
    """The NumPy LayerNorm stand-in (used until numbabn.LayerNorm lands) is itself correct."""
    layer = nets._NumpyLayerNorm(4, dtype=np.float64)
    layer.weight[...] = rng.uniform(0.5, 1.5, 4)
    x = rng.standard_normal((3, 4)) * 3 + 1
    dy = rng.standard_normal((3, 4))
    layer.bias[...] = rng.standard_normal(4)
    xhat = (layer(x) - layer.bias) / layer.weight
    np.testing.assert_allclose(xhat.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(xhat.var(axis=1), 1, rtol=1e-5)
    dx = layer.backward(dy)
    np.testing.assert_allclose(layer.grad_weight, (dy * xhat).sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(layer.grad_bias, dy.sum(axis=0), rtol=1e-12)
    h = 1e-6
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        numeric[i] = ((layer.forward(up) - layer.forward(down)) * dy).sum() / (2 * h)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("cell", ["LayerNorm", "BatchNorm1d"])
def test_rnn_steps_share_the_norm_parameters_but_not_the_statistics(cell):
    net = rnn.RNNClassifier(8, 6, 10, 4, cell, seed=0)
    assert len(net.norms) == 4 and len({id(layer) for layer in net.norms}) == 4
    assert all(layer.weight is net.norms[0].weight for layer in net.norms)
    assert all(layer.bias is net.norms[0].bias for layer in net.norms)
    if cell == "BatchNorm1d":
        assert len({id(layer.running_mean) for layer in net.norms}) == 4
