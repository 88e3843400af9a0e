"""Synchronized batch norm: the rank-order merge in-process, and real MPI runs under mpiexec.

The MPI tests start ``mpiexec -n 2`` and ``-n 3`` on tests/mpi_checks.py, which
holds the checks (several per launch, so process start-up and kernel loading
are paid only per launch), and ``-n 2`` on the example.  They skip only when
mpi4py cannot be imported.
"""
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import numbabn as nbn
import reference as ref
from numbabn._validate import layout
from numbabn.cpu import backend
from numbabn.distributed import merge_in_rank_order

TESTS = Path(__file__).parent
#: Far above the few seconds a run takes (kernels come from the warm cache), far below
#: CI's budget if a rank hangs.
MPI_TIMEOUT_S = 120


def import_mpi_or_skip():
    """``mpi4py.MPI``, or skip the test with the reason (not installed, no MPI library)."""
    try:
        from mpi4py import MPI
    except ImportError as err:  # ModuleNotFoundError, or an MPI library that fails to load
        pytest.skip(f"mpi4py cannot be imported ({err}); pip install -e '.[mpi]' to run "
                    "the MPI tests")
    return MPI


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


@pytest.fixture(scope="module")
def comm_self():
    return import_mpi_or_skip().COMM_SELF


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_one_rank_is_bit_identical_to_single_process(rng, comm_self, dtype):
    x = rng.standard_normal((6, 3, 17)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv, rm1, rv1 = np.zeros(3), np.ones(3), np.zeros(3), np.ones(3)
    got = nbn.sync_batch_norm_forward(x, w, b, comm=comm_self, running_mean=rm, running_var=rv)
    want = nbn.batch_norm_forward(x, w, b, running_mean=rm1, running_var=rv1)
    grads = nbn.sync_batch_norm_backward(dy, x, got[1], got[2], w, comm=comm_self)
    want_grads = nbn.batch_norm_backward(dy, x, want[1], want[2], w)
    for a, b_ in zip((*got, rm, rv, *grads), (*want, rm1, rv1, *want_grads)):
        assert a.dtype == b_.dtype
        np.testing.assert_array_equal(a, b_)


def test_backward_with_an_infinite_invstd_is_nan_without_warnings(rng, comm_self):
    # A constant channel normalized with eps = 0 has sigma^-1 = inf and sum(dy (x - mean)) = 0:
    # dweight is 0 * inf = NaN, silently, as in the single-process backward (and PyTorch).
    x = rng.standard_normal((4, 2, 5))
    x[:, 1] = 3.0
    dy = rng.standard_normal(x.shape)
    mean = x.mean(axis=(0, 2))
    invstd = np.array([1.0 / x[:, 0].std(), np.inf])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = nbn.sync_batch_norm_backward(dy, x, mean, invstd, comm=comm_self)
        want = nbn.batch_norm_backward(dy, x, mean, invstd)
    assert np.isnan(got[1][1]) and np.isfinite(got[1][0])
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


BAD_FORWARD_ARGUMENTS = [
    (dict(weight=np.ones(4)), ValueError),
    (dict(bias=np.ones((3, 1))), ValueError),
    (dict(weight=np.ones(3, dtype=int)), TypeError),
    (dict(eps=0.0), ValueError),
    (dict(momentum="0.1"), TypeError),
    (dict(out=np.empty((5, 3, 2))), ValueError),
    (dict(running_var=None), ValueError),
]


@pytest.mark.parametrize("kwargs, error", BAD_FORWARD_ARGUMENTS)
def test_forward_rejects_bad_arguments_before_writing(comm_self, kwargs, error):
    x = np.arange(24.0).reshape(4, 3, 2)
    args = dict(running_mean=np.zeros(3), running_var=np.ones(3)) | kwargs
    before = {k: None if a is None else a.copy() for k, a in args.items()
              if k.startswith("running")}
    with pytest.raises(error) as caught:
        nbn.sync_batch_norm_forward(x, comm=comm_self, **args)
    assert type(caught.value) is not nbn.RankInputError  # its own error, not a peer's
    for key, value in before.items():
        if value is not None:
            np.testing.assert_array_equal(args[key], value)


@pytest.mark.parametrize("x, error", [(np.arange(6.0), ValueError),
                                      (np.ones((3, 2), dtype=int), TypeError)])
def test_forward_rejects_bad_x(comm_self, x, error):
    with pytest.raises(error):
        nbn.sync_batch_norm_forward(x, comm=comm_self)


def test_one_value_per_channel_is_the_single_process_error(comm_self):
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when "
                                         "training.*global batch over 1 processes has 1"):
        nbn.sync_batch_norm_forward(np.ones((1, 3)), comm=comm_self)


def test_backward_rejects_bad_arguments(comm_self):
    x = np.arange(24.0).reshape(4, 3, 2)
    mean, invstd = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="dy must have shape"):
        nbn.sync_batch_norm_backward(x[:2], x, mean, invstd, comm=comm_self)
    with pytest.raises(TypeError, match="same dtype"):
        nbn.sync_batch_norm_backward(x.astype(np.float32), x, mean, invstd, comm=comm_self)
    with pytest.raises(ValueError, match="mean and invstd are required"):
        nbn.sync_batch_norm_backward(x, x, None, invstd, comm=comm_self)


@pytest.mark.parametrize("comm", [None, object()])
def test_a_non_communicator_is_a_type_error(comm):
    x = np.ones((4, 3))
    with pytest.raises(TypeError, match="mpi4py communicator"):
        nbn.sync_batch_norm_forward(x, comm=comm)
    with pytest.raises(TypeError, match="mpi4py communicator"):
        nbn.sync_batch_norm_backward(x, x, np.zeros(3), np.ones(3), comm=comm)


def test_import_does_not_import_mpi4py():
    code = "import numbabn, sys; print('mpi4py' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["False"]


def find_mpiexec():
    """mpiexec of mpi4py's MPI: next to the interpreter (the mpich wheel), else on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


@pytest.fixture(scope="module")
def mpiexec():
    import_mpi_or_skip()
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


def run_under_mpiexec(mpiexec, ranks, script):
    """Run ``script`` on ``ranks`` processes; returns its output, fails the test on a hang."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]))
    command = [mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", str(script)]
    # A session of its own, so a timeout ends mpiexec and every rank it started.
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, start_new_session=True) as proc:
        try:
            output, _ = proc.communicate(timeout=MPI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            pytest.fail(f"mpiexec -n {ranks} {script.name} did not finish in {MPI_TIMEOUT_S} s "
                        f"(a rank waits in a collective?)\n{output}")
    assert proc.returncode == 0, output
    return output


@pytest.mark.parametrize("ranks", [2, 3])
def test_mpiexec_ranks_match_single_process(mpiexec, ranks):
    output = run_under_mpiexec(mpiexec, ranks, TESTS / "mpi_checks.py")
    assert f"on {ranks} ranks" in output and "MPI CHECKS PASSED" in output, output


def test_example_training_step_keeps_ranks_identical(mpiexec):
    output = run_under_mpiexec(mpiexec, 2, TESTS.parent / "examples" / "mpi_sync_bn.py")
    assert "identical running statistics and parameters: True" in output, output


# ---------------------------------------------------------------- SyncBatchNorm in one process


class UnusableComm:
    """Looks like a communicator; any collective is a test failure."""

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def Allgather(self, *args):
        raise AssertionError("the layer communicated")

    Allreduce = Allgather


def test_layer_on_one_rank_is_bit_identical_to_batch_norm(rng, comm_self):
    sync = nbn.SyncBatchNorm(3, comm=comm_self, dtype=np.float64)
    plain = nbn.BatchNorm(3, dtype=np.float64)
    for _ in range(2):
        x, dy = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 3, 5, 4))
        np.testing.assert_array_equal(sync(x), plain(x))
        np.testing.assert_array_equal(sync.backward(dy), plain.backward(dy))
        np.testing.assert_array_equal(sync.grad_weight, plain.grad_weight)
    for key, value in plain.state_dict().items():
        np.testing.assert_array_equal(sync.state_dict()[key], value)
    assert repr(sync).startswith("SyncBatchNorm(3, eps=1e-05")


def test_layer_defaults_to_comm_world(comm_self):
    from mpi4py import MPI

    assert nbn.SyncBatchNorm(2).comm is MPI.COMM_WORLD


def test_layer_rejects_a_non_communicator():
    with pytest.raises(TypeError, match="mpi4py communicator"):
        nbn.SyncBatchNorm(2, comm=object())


def test_convert_shares_state_and_keeps_the_mode(rng):
    layer = nbn.BatchNorm2d(3, momentum=0.2, affine=True)
    layer(rng.standard_normal((4, 3, 2, 2)).astype(np.float32))
    layer.eval()
    comm = UnusableComm()
    sync = nbn.SyncBatchNorm.convert(layer, comm)
    assert type(sync) is nbn.SyncBatchNorm and sync.comm is comm
    assert sync.running_mean is layer.running_mean and sync.weight is layer.weight
    assert not sync.training and sync.momentum == 0.2 and sync.num_batches_tracked == 1
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(sync(x), layer(x))  # eval: running statistics, no collective
    with pytest.raises(RuntimeError, match="backward called before forward"):
        nbn.SyncBatchNorm.convert(layer, comm).backward(x)
    with pytest.raises(TypeError, match="numbabn.BatchNorm"):
        nbn.SyncBatchNorm.convert(object(), comm)


def test_eval_without_running_stats_uses_the_local_batch(rng):
    sync = nbn.SyncBatchNorm(3, track_running_stats=False, comm=UnusableComm()).eval()
    plain = nbn.BatchNorm(3, track_running_stats=False).eval()
    x, dy = rng.standard_normal((5, 3)).astype(np.float32), np.ones((5, 3), np.float32)
    np.testing.assert_array_equal(sync(x), plain(x))
    np.testing.assert_array_equal(sync.backward(dy), plain.backward(dy))
    sync.train()
    with pytest.raises(AssertionError, match="the layer communicated"):
        sync(x)


def test_device_running_buffers_are_updated_through_the_host():
    """Numba device arrays (CUDA simulator, its own process): the C-value staging path.

    The MPI layer merges statistics on the host and hands them to the
    backend's ``update_running``; on the CUDA backend that stages device
    buffers through the host.
    """
    code = (
        "import numpy as np; from numba import cuda; from numbabn.cuda import backend as b; "
        "r = cuda.to_device(np.array([1.0, 2.0])); v = cuda.to_device(np.array([1.0, 1.0])); "
        "b.update_running(r, v, np.array([3.0, 6.0]), np.array([2.0, 4.0]), 3, 0.25); "
        "print(r.copy_to_host().tolist(), v.copy_to_host().tolist())"
    )
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, check=True)
    assert result.stdout.split() == ["[1.5,", "3.0]", "[1.0,", "1.25]"]
