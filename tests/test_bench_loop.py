"""``python -m numbabn bench --loop``: the training steps, the table and JSON (never timings)."""
import json

import numpy as np
import pytest

import numbabn as nbn
from numbabn import __main__ as cli
from numbabn import _bench_loop

#: The workloads shrunk to a few hundred values, same kinds and layouts.
TINY = {
    "mlp-512x256": ((12, 6), 8, 3, "1d", (12, 8)),
    "mlp-64x128": ((5, 4), 6, 3, "1d", (5, 6)),
    "conv-16x64x28x28": ((2 * 3 * 3, 4), 5, 3, "2d", (2, 3, 3, 5)),
    "digits-demo": ((6, 64), (7, 9), 10, "demo", None),
}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(_bench_loop, "WORKLOADS", TINY)
    real_run = _bench_loop.run

    def run(*args, **kwargs):
        kwargs.update(budget=0.0, rounds=1, processes=1)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(_bench_loop, "run", run)


def test_bench_loop_writes_table_and_json(tmp_path, capsys, tiny):
    path = tmp_path / "loop.json"
    assert cli.main(["bench", "--loop", "--quick", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    for name in TINY:
        assert name in out
    assert "thread policy" in out and "BLAS" in out
    report = json.loads(path.read_text())
    assert set(report["ms_per_step"]) == set(TINY)
    for row in report["ms_per_step"].values():
        assert {"numbabn", "numbabn-1thread", "numpy"} <= set(row)
        assert ("torch" in row) == (report["machine"]["torch"] is not None)
        assert all(t > 0 for t in row.values())


def test_bench_loop_without_torch_says_so(monkeypatch, capsys, tiny):
    monkeypatch.setattr(_bench_loop, "load_torch", lambda: None)  # seen by the parent only
    assert cli.main(["bench", "--loop"]) == 0
    out = capsys.readouterr().out
    assert "torch: not installed" in out and 'pip install -e ".[bench]"' in out


@pytest.mark.parametrize("axis, shape", [(1, (40, 6)), (-1, (2, 3, 4, 6))])
def test_numpy_contender_is_batch_norm(rng, axis, shape):
    """The NumPy column must time a correct batch norm (forward, backward, running stats)."""
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    ours = _bench_loop.NumpyBatchNorm(6, axis, np.float64)
    ours.weight = rng.standard_normal(6)
    ours.bias = rng.standard_normal(6)
    layer = nbn.BatchNorm(6, axis=axis, dtype=np.float64)
    layer.weight[...] = ours.weight
    layer.bias[...] = ours.bias
    np.testing.assert_allclose(ours(x), layer(x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.backward(dy), layer.backward(dy), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.grad_weight, layer.grad_weight, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.grad_bias, layer.grad_bias, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.running_var, layer.running_var, rtol=1e-10)
    np.testing.assert_allclose(ours.running_mean, layer.running_mean, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", list(TINY))
def test_steps_agree_between_numbabn_and_numpy(monkeypatch, name):
    """Both NumPy steps compute the same gradients (so they time the same work)."""
    monkeypatch.setattr(_bench_loop, "WORKLOADS", TINY)
    a = _bench_loop.numpy_step(name, "numbabn")()
    b = _bench_loop.numpy_step(name, "numpy")()
    if a is None:  # the demo's step returns nothing
        return
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=2e-4, atol=2e-5)
