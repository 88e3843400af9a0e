import subprocess
import sys

from numbabn import __main__ as cli
from numbabn import _selfcheck


def test_info_prints_versions(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert "numba" in text and "numpy" in text and "cuda" in text


def test_check_passes(capsys):
    assert cli.main(["check"]) == 0
    text = capsys.readouterr().out
    assert "all checks passed" in text and "FAIL" not in text


def test_check_fails_when_a_kernel_is_wrong(monkeypatch, capsys):
    from numbabn import functional

    real = functional.batch_norm_forward

    def broken(*args, **kwargs):
        y, mean, invstd = real(*args, **kwargs)
        return y * 1.001, mean, invstd

    monkeypatch.setattr(_selfcheck.F, "batch_norm_forward", broken)
    assert cli.main(["check"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "numbabn", "info"], capture_output=True,
                            text=True, check=True)
    assert "numbabn" in result.stdout


def test_import_compiles_nothing():
    code = (
        "import numba, numbabn, sys; "
        "from numbabn.cpu import moments; "
        "print(len(moments._moments_planes.signatures), 'numba.cuda' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["0", "False"]
