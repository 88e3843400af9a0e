"""``python -m numbabn bench --norms layer,rms``: the table and JSON (never the timings)."""
import json

import pytest

from numbabn import __main__ as cli
from numbabn import _bench_rows


@pytest.fixture
def fast(monkeypatch):
    real_run = _bench_rows.run

    def run(shapes, ops, dtype, budget, copy_bytes, progress=print):
        return real_run([(6, 8), (2, 3, 16)], ops, dtype, 0.0, 2**20, progress)

    monkeypatch.setattr(_bench_rows, "run", run)


def test_rows_table_and_json(tmp_path, capsys, fast):
    path = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--norms", "layer,rms", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    for op in _bench_rows.OPS:
        assert op in out
    assert "2x3x16" in out
    report = json.loads(path.read_text())["rows"]
    assert len(report["results"]) == 2 * len(_bench_rows.OPS)
    for r in report["results"]:
        assert all(t > 0 for t in r["seconds"].values()) and r["bandwidth_fraction"] > 0
        assert ("torch" in r["seconds"]) == (report["machine"]["torch"] is not None)


def test_rows_table_without_torch(monkeypatch, capsys, fast):
    monkeypatch.setattr(_bench_rows.B, "load_torch", lambda: None)
    assert cli.main(["bench", "--quick", "--norms", "rms"]) == 0
    out = capsys.readouterr().out
    assert "torch: not installed" in out and "vs torch" not in out


def test_unknown_norm_is_refused(capsys):
    assert cli.main(["bench", "--norms", "layer,sideways"]) == 2
    assert "sideways" in capsys.readouterr().err
