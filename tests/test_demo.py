"""``python -m numbabn demo``: a quick smoke run and the demo's own gradient (skipped without
scikit-learn and matplotlib)."""
import numpy as np
import pytest

from numbabn import __main__ as cli

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
from numbabn import _demo  # noqa: E402


def test_quick_demo_prints_the_table_and_saves_the_plot(tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for network in ("plain", "BatchNorm1d"):
        for lr in ("0.05", "2"):
            assert f"| {network} | {lr} |" in text
    assert f"saved to {out}" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_epochs_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--epochs", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_cross_entropy_gradient_matches_finite_differences(rng):
    logits = rng.standard_normal((5, 10))
    labels = rng.integers(0, 10, 5)
    _, grad = _demo.cross_entropy(logits, labels)
    h = 1e-6
    numeric = np.zeros_like(logits)
    for i in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[i] += h
        down[i] -= h
        loss = [_demo.cross_entropy(z, labels)[0] for z in (up, down)]
        numeric[i] = (loss[0] - loss[1]) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-6)


def test_same_seed_same_initial_weights_with_and_without_batch_norm():
    plain = _demo.MLP((64, 16, 16, 10), batch_norm=False, seed=3)
    normed = _demo.MLP((64, 16, 16, 10), batch_norm=True, seed=3)
    weights = [layer.weight for layer in plain.layers if isinstance(layer, _demo.Linear)]
    normed_weights = [layer.weight for layer in normed.layers if isinstance(layer, _demo.Linear)]
    assert len(weights) == 3
    for a, b in zip(weights, normed_weights):
        np.testing.assert_array_equal(a, b)
