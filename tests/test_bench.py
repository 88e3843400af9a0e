"""``python -m numbabn bench``: options, table and JSON (never the timings themselves)."""
import json

import pytest

from numbabn import __main__ as cli
from numbabn import _bench

TINY = "6x4x5x5,6x4x5x5cl,40x8"


def test_parse_shapes_reads_layouts():
    cases = _bench.parse_shapes("32x64x56x56, 8x32x4x4cl,256x1024")
    assert [(c.shape, c.channels_last) for c in cases] == [
        ((32, 64, 56, 56), False), ((8, 32, 4, 4), True), ((256, 1024), False)]
    assert cases[1].stored_shape == (8, 4, 4, 32) and cases[1].axis == -1
    assert cases[1].channels == 32


@pytest.mark.parametrize("text", ["32", "32x0", "axb", "256x1024cl"])
def test_parse_shapes_rejects_bad_shapes(text):
    with pytest.raises(ValueError):
        _bench.parse_shapes(text)


def test_default_cases_add_channels_last_for_images():
    names = [c.name for c in _bench.default_cases([(2, 3, 4, 4), (5, 6)])]
    assert names == ["2x3x4x4", "2x3x4x4 cl", "5x6"]


@pytest.fixture
def fast(monkeypatch):
    """Shrink the timing budget and the copy so the command runs in about a second."""
    real_run = _bench.run

    def run(cases, ops, dtype, budget, copy_bytes, progress=print):
        return real_run(cases, ops, dtype, 0.0, 2**20, progress)

    monkeypatch.setattr(_bench, "run", run)


def test_bench_writes_table_and_json(tmp_path, capsys, fast):
    path = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--shapes", TINY, "--json", str(path)]) == 0
    captured = capsys.readouterr()
    assert "[9/9] 40x8 backward" in captured.err  # progress
    table = captured.out
    for name in ("6x4x5x5 ", "6x4x5x5 cl", "40x8"):
        assert name in table
    report = json.loads(path.read_text())
    assert len(report["results"]) == 9
    assert report["copy_bandwidth_bytes_per_s"] > 0
    for r in report["results"]:
        assert r["op"] in _bench.OPS and r["dtype"] == "float32"
        assert all(t > 0 for t in r["seconds"].values())
        assert r["bandwidth_fraction"] > 0 and r["speedup_vs_numpy"] > 0
        assert ("torch" in r["seconds"]) == (report["machine"]["torch"] is not None)


def test_bench_without_torch_says_so(monkeypatch, capsys, fast):
    monkeypatch.setattr(_bench, "load_torch", lambda: None)
    assert cli.main(["bench", "--shapes", "40x8", "--ops", "infer", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "torch: not installed" in out
    assert "vs torch" not in out


def test_bench_rejects_unknown_operation(capsys):
    assert cli.main(["bench", "--ops", "sideways"]) == 2
    assert "unknown operation" in capsys.readouterr().err


def test_numpy_contender_is_batch_norm():
    """The NumPy column must time a correct batch norm, or its ratios mean nothing."""
    import numpy as np

    import numbabn as nbn

    inp = _bench.Inputs(_bench.parse_shapes("6x4x5x5cl")[0], np.float64)
    ops = _bench.numpy_ops(inp)
    y_ref = nbn.batch_norm(inp.x, weight=inp.weight, bias=inp.bias, training=True,
                           axis=-1, eps=_bench.EPS)
    np.testing.assert_allclose(ops["train"](), y_ref, rtol=1e-10, atol=1e-12)
    y_inf = nbn.batch_norm(inp.x, inp.running_mean, inp.running_var, inp.weight, inp.bias,
                           axis=-1, eps=_bench.EPS)
    np.testing.assert_allclose(ops["infer"](), y_inf, rtol=1e-10, atol=1e-12)
    _, mean, invstd = nbn.batch_norm_forward(inp.x, inp.weight, inp.bias, axis=-1,
                                             eps=_bench.EPS)
    grads = nbn.batch_norm_backward(inp.dy, inp.x, mean, invstd, inp.weight, axis=-1)
    for got, want in zip(ops["backward"](), grads):
        np.testing.assert_allclose(np.ravel(got), np.ravel(want), rtol=1e-9, atol=1e-10)


def test_bench_leaves_torch_settings_alone(capsys, fast):
    torch = pytest.importorskip("torch")
    before = (torch.is_grad_enabled(), torch.get_num_threads())
    assert cli.main(["bench", "--shapes", "40x8", "--ops", "train"]) == 0
    assert (torch.is_grad_enabled(), torch.get_num_threads()) == before
