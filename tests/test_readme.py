"""Every ```python block of README.md runs, so no example can rot.

The convention (README authors rely on it):

- Every block fenced with ```python runs, top to bottom in README order, in ONE
  shared namespace: later blocks use the names earlier ones defined (``x``,
  ``gamma``, ``beta``, ``dy``, ...).  Anything that must not run goes in a
  ```bash or ```text block.
- A block whose first line starts with ``>>>`` is a doctest: its outputs are
  checked with ELLIPSIS and NORMALIZE_WHITESPACE, in the same namespace.
- The whole README runs in one new Python process, in a temporary working
  directory (a block may write files there), with Numba's CUDA simulator on
  (``NUMBA_ENABLE_CUDASIM=1``, 16 threads per block): so the CUDA blocks run
  here without a GPU (keep their arrays tiny: the simulator runs every GPU
  thread in Python), the CPU blocks run as usual, and ``from mpi4py import
  MPI`` gives a ``COMM_WORLD`` of one process, so the MPI blocks run as a
  single rank (mpi4py and mpich are in the ``test`` extra).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

#: ```python blocks: (line number of the first code line, code)
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text):
    """``[(line, code), ...]`` of the ```python blocks of ``text``, in order."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _FENCE.finditer(text)]


# Runs in the child process: argv[1] is the README's path.
RUNNER = r"""
import doctest, re, sys, traceback
sys.path.insert(0, sys.argv[2])
from test_readme import python_blocks

text = open(sys.argv[1], encoding="utf-8").read()
namespace = {"__name__": "__readme__"}
flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
runner = doctest.DocTestRunner(optionflags=flags)
for line, code in python_blocks(text):
    where = f"README.md, the python block at line {line}"
    if code.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(code, namespace, where, "README.md", line - 1)
        result = runner.run(test, clear_globs=False)
        if result.failed:
            print(f"FAILED: {where} (doctest output above)")
            sys.exit(1)
        continue
    try:
        exec(compile(code, where, "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED: {where}")
        sys.exit(1)
print("README OK")
"""


def test_extracts_only_python_blocks():
    text = "a\n```python\nx = 1\n```\n```bash\nrm -rf /\n```\n```python\n>>> x\n1\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, ">>> x\n1\n")]


def test_readme_has_python_blocks():
    assert len(python_blocks(README.read_text(encoding="utf-8"))) >= 5


def run_markdown(path, cwd):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", NUMBABN_CUDA_THREADS="16")
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(path), str(Path(__file__).parent)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.mark.parametrize("block, message", [
    ("y = missing * 2\n", "NameError"),          # a name no earlier block defined
    (">>> lr + 1\n3\n", "Expected"),            # a doctest whose output differs
])
def test_runner_reports_a_failing_block(tmp_path, block, message):
    page = tmp_path / "page.md"
    page.write_text(f"# t\n\n```python\nlr = 1\n```\n\n```python\n{block}```\n")
    done = run_markdown(page, tmp_path)
    assert done.returncode == 1
    assert "the python block at line 8" in done.stdout and message in done.stdout + done.stderr


def test_blocks_share_one_namespace(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\na = 2\n```\ntext\n```python\n>>> a + 1\n3\n```\n")
    done = run_markdown(page, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_python_blocks_run(tmp_path):
    pytest.importorskip("mpi4py")
    pytest.importorskip("numba_cuda")
    done = run_markdown(README, tmp_path)
    assert done.returncode == 0 and "README OK" in done.stdout, (
        done.stdout[-4000:] + done.stderr[-4000:])
