"""Synchronized batch norm: the rank-order merge in-process, and real MPI runs under mpiexec.

The MPI tests start ``mpiexec -n 2`` and ``-n 3`` on tests/mpi_checks.py, which
holds the checks (several per launch, so process start-up and kernel loading
are paid twice in all).  They skip only when mpi4py cannot be imported.
"""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numbabn as nbn
import reference as ref
from numbabn._validate import layout
from numbabn.cpu import backend
from numbabn.distributed import merge_in_rank_order

TESTS = Path(__file__).parent
MPI_TIMEOUT_S = 240


def gathered_moments(parts):
    """The (P, 3, C) array an Allgather would deliver for these per-rank (rows, C) slices."""
    c = parts[0].shape[1]
    blocks = []
    for part in parts:
        count, mean, m2 = backend.welford(part, layout(part.shape, 1))
        blocks.append(np.stack([np.full(c, float(count)), mean, m2]))
    return np.stack(blocks)


def test_rank_order_merge_equals_whole_batch(rng):
    x = 1e3 + rng.standard_normal((40, 3))
    parts = [x[:0], x[:7], x[7:8], x[8:]]  # an empty rank, uneven slices
    count, mean, m2 = merge_in_rank_order(gathered_moments(parts))
    mean_ref, var_ref = ref.moments(x)
    assert count == 40
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-12)
    np.testing.assert_allclose(m2 / count, var_ref, rtol=1e-10)


def test_rank_order_merge_of_only_empty_ranks_has_zero_count():
    count, mean, m2 = merge_in_rank_order(np.zeros((3, 3, 2)))
    assert count == 0 and not mean.any() and not m2.any()


def test_a_rejected_rank_stops_the_merge():
    gathered = np.zeros((3, 3, 2))
    gathered[:, 0] = 5.0
    gathered[2, 0] = -1.0
    with pytest.raises(nbn.RankInputError, match="rank.s. 2 rejected"):
        merge_in_rank_order(gathered)


def test_import_does_not_import_mpi4py():
    code = "import numbabn, sys; print('mpi4py' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["False"]


def find_mpiexec():
    """mpiexec of the MPI that mpi4py uses: next to the interpreter (the mpich wheel), else PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


@pytest.fixture(scope="module")
def mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed: pip install -e '.[mpi]'")
    path = find_mpiexec()
    if path is None:
        pytest.fail("mpi4py imports but no mpiexec was found next to Python or on PATH")
    warm_kernel_cache()
    return path


def warm_kernel_cache():
    """Compile (or load) every kernel signature the MPI checks use, once, in this process.

    The ranks then load the kernels from Numba's on-disk cache instead of each
    compiling them at the same time on a 2-core machine.
    """
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for shape, axis in [((3, 2, 20), 1), ((3, 2), 1)]:
            x = rng.standard_normal(shape).astype(dtype)
            y, mean, invstd = nbn.batch_norm_forward(x, axis=axis)
            nbn.batch_norm_backward(y, x, mean, invstd, axis=axis)


@pytest.mark.parametrize("ranks", [2, 3])
def test_mpiexec_ranks_match_single_process(mpiexec, ranks):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]))
    command = [mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py",
               str(TESTS / "mpi_checks.py")]
    # A session of its own, so a timeout ends mpiexec and every rank it started.
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, start_new_session=True) as proc:
        try:
            output, _ = proc.communicate(timeout=MPI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            pytest.fail(f"mpiexec -n {ranks} did not finish in {MPI_TIMEOUT_S} s (a rank "
                        f"waits in a collective?)\n{output}")
    assert proc.returncode == 0, output
    assert f"on {ranks} ranks" in output and "MPI CHECKS PASSED" in output, output
