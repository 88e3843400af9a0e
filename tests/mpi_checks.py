"""Checks run under ``mpiexec -n P python -m mpi4py tests/mpi_checks.py`` by test_distributed.py.

Every rank builds the same global batch from one seed, takes its own slice of
the rows (uneven, one rank empty when P >= 2), and compares what the
synchronized functions give it with single-process numbabn on the whole batch
and with the float64 reference.  Failures are gathered on rank 0, which prints
one line per failure and ``MPI CHECKS PASSED n`` when there are none; the exit
status is 1 on any failure.
"""
import sys
import traceback

import numpy as np
from mpi4py import MPI

import numbabn as nbn
import reference as ref

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
ONE_VALUE = "Expected more than 1 value per channel when training"

#: (global shape, channel axis): NCHW (plane loop order), 2-D, channels-last (rows loop order).
CASES = [((11, 6, 5, 7), 1), ((23, 5), 1), ((9, 4, 3, 6), -1)]


def row_splits(rows, empty_rank):
    """Uneven row counts per rank summing to ``rows``, with ``empty_rank`` getting none."""
    weights = np.array([0 if r == empty_rank else r + 1 for r in range(SIZE)], dtype=float)
    sizes = np.floor(rows * weights / weights.sum()).astype(int)
    sizes[np.argmax(weights)] += rows - sizes.sum()
    return sizes


def my_rows(sizes):
    start = int(sizes[:RANK].sum())
    return slice(start, start + int(sizes[RANK]))


def close(what, got, want, tol):
    np.testing.assert_allclose(
        np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=tol, atol=tol,
        err_msg=what,
    )


def same_bytes_on_all_ranks(a):
    """True when ``a`` has the same bytes on every rank (a collective: every rank calls it)."""
    everyone = COMM.allgather(np.ascontiguousarray(a).tobytes())
    return all(b == everyone[0] for b in everyone)


def check_forward_backward(shape, axis, dtype, empty_rank):
    rng = np.random.default_rng(7)
    c = shape[axis]
    x = (3.0 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(c).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    rows = my_rows(row_splits(shape[0], empty_rank))
    tol = TOL[np.dtype(dtype)]

    rm_single, rv_single = np.zeros(c, dtype), np.ones(c, dtype)
    y1, mean1, invstd1 = nbn.batch_norm_forward(
        x, w, b, axis=axis, running_mean=rm_single, running_var=rv_single, momentum=0.3
    )
    dx1, dw1, db1 = nbn.batch_norm_backward(dy, x, mean1, invstd1, w, axis=axis)
    y_ref, mean_ref, invstd_ref, var_unbiased = ref.forward_train(x, w, b, axis=axis)
    dx_ref, dw_ref, db_ref = ref.backward(dy, x, mean_ref, invstd_ref, w, axis=axis)

    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    y, mean, invstd = nbn.sync_batch_norm_forward(
        x[rows], w, b, comm=COMM, axis=axis, running_mean=rm, running_var=rv, momentum=0.3
    )
    dx, dw, db = nbn.sync_batch_norm_backward(dy[rows], x[rows], mean, invstd, w, comm=COMM,
                                             axis=axis)
    # Every collective of the check comes before the first assertion, so a
    # failing rank cannot leave the others waiting in a collective it skipped.
    dw_total = COMM.allreduce(dw.astype(np.float64))
    db_total = COMM.allreduce(db.astype(np.float64))
    differ = [what for what, a in [("mean", mean), ("invstd", invstd), ("running_mean", rm),
                                   ("running_var", rv)] if not same_bytes_on_all_ranks(a)]
    assert not differ, f"not bit-identical on every rank: {differ}"
    assert y.dtype == dtype and y.shape == x[rows].shape and dx.shape == y.shape
    assert mean.dtype == mean1.dtype and dw.dtype == dw1.dtype
    for what, got, single, exact in [
        ("y", y, y1[rows], y_ref[rows]),
        ("mean", mean, mean1, mean_ref),
        ("invstd", invstd, invstd1, invstd_ref),
        ("running_mean", rm, rm_single, 0.3 * mean_ref),
        ("running_var", rv, rv_single, 0.7 + 0.3 * var_unbiased),
        ("dx", dx, dx1[rows], dx_ref[rows]),
        ("sum of dweight over ranks", dw_total, dw1, dw_ref),
        ("sum of dbias over ranks", db_total, db1, db_ref),
    ]:
        close(f"{what} vs single-process numbabn", got, single, tol)
        close(f"{what} vs float64 reference", got, exact, tol)


def check_one_value_raises_everywhere():
    """One value per channel in the global batch: the single-process error on every rank."""
    x = np.arange(4.0).reshape(1, 4)
    mine = x if RANK == SIZE - 1 else x[:0]
    rm, rv = np.zeros(4), np.ones(4)
    try:
        nbn.sync_batch_norm_forward(mine, comm=COMM, running_mean=rm, running_var=rv)
    except ValueError as err:
        assert str(err).startswith(ONE_VALUE), str(err)
        with np.testing.assert_raises_regex(ValueError, ONE_VALUE):
            nbn.batch_norm_forward(x)  # the single-process call fails the same way
    else:
        raise AssertionError("no error for one value per channel")
    assert (rm == 0).all() and (rv == 1).all(), "running statistics changed by a failed call"


def check_bad_input_on_one_rank_raises_everywhere():
    """Rank 0 alone passes a bad argument: it raises its own error, the others RankInputError."""
    rng = np.random.default_rng(RANK)
    x = rng.standard_normal((3 + RANK, 4, 5))
    w = np.ones(3 if RANK == 0 else 4)
    rm, rv = np.zeros(4), np.ones(4)
    expected = ValueError if RANK == 0 else nbn.RankInputError
    with np.testing.assert_raises(expected) as caught:
        nbn.sync_batch_norm_forward(x, w, comm=COMM, running_mean=rm, running_var=rv)
    assert type(caught.exception) is expected, repr(caught.exception)
    assert (rm == 0).all() and (rv == 1).all(), "running statistics changed by a failed call"

    y, mean, invstd = nbn.sync_batch_norm_forward(x, comm=COMM)  # the ranks are still in step
    dy = rng.standard_normal(x.shape if RANK else (2, 4, 5))
    with np.testing.assert_raises(expected):
        nbn.sync_batch_norm_backward(dy, x, mean, invstd, comm=COMM)


def check_layer_matches_single_process_batch_norm(empty_rank):
    """SyncBatchNorm (one converted from BatchNorm2d) vs BatchNorm on the global batch."""
    rng = np.random.default_rng(11)
    shape, c = (10, 4, 3, 5), 4
    single = nbn.BatchNorm2d(c, momentum=None, dtype=np.float64)
    layers = [nbn.SyncBatchNorm(c, momentum=None, comm=COMM, dtype=np.float64),
              nbn.SyncBatchNorm.convert(nbn.BatchNorm2d(c, momentum=None, dtype=np.float64),
                                        COMM)]
    rows = my_rows(row_splits(shape[0], empty_rank))
    results = []
    for step in range(2):
        x = 1.0 + rng.standard_normal(shape)
        dy = rng.standard_normal(shape)
        want_y, want_dx = single(x), single.backward(dy)
        for layer in layers:
            got_y, got_dx = layer(x[rows]), layer.backward(dy[rows])
            results.append((f"step {step} y", got_y, want_y[rows]))
            results.append((f"step {step} dx", got_dx, want_dx[rows]))
            results.append((f"step {step} grad_weight summed over ranks",
                            COMM.allreduce(layer.grad_weight), single.grad_weight))
            results.append((f"step {step} grad_bias summed over ranks",
                            COMM.allreduce(layer.grad_bias), single.grad_bias))
    x = rng.standard_normal(shape)
    for layer in layers:
        results.append(("eval y", layer.eval()(x[rows]), single.eval()(x)[rows]))
    states = [layer.state_dict() for layer in layers]
    differ = [key for state in states for key, value in state.items()
              if not same_bytes_on_all_ranks(value)]
    assert not differ, f"state_dict not bit-identical on every rank: {differ}"
    for state in states:
        assert state["num_batches_tracked"] == 2
        for key, value in single.state_dict().items():
            results.append((f"state {key}", state[key], value))
    for what, got, want in results:
        close(what, got, want, TOL[np.dtype(np.float64)])


CHECKS = [
    *[(f"forward/backward {shape} axis={axis} {np.dtype(dt).name} empty rank {e}",
       check_forward_backward, (shape, axis, dt, e))
      for shape, axis in CASES for dt in (np.float64, np.float32)
      for e in ((SIZE - 1, -1) if SIZE > 1 else (-1,))],
    *[(f"SyncBatchNorm layer, empty rank {e}", check_layer_matches_single_process_batch_norm,
       (e,)) for e in ((SIZE - 1, -1) if SIZE > 1 else (-1,))],
    ("one value per channel raises on every rank", check_one_value_raises_everywhere, ()),
    ("bad input on rank 0 raises on every rank", check_bad_input_on_one_rank_raises_everywhere,
     ()),
]


def main():
    failures = []
    for name, check, args in CHECKS:
        try:
            check(*args)
        except Exception:  # noqa: BLE001 - every failure is reported, the run goes on
            failures.append(f"rank {RANK}: {name}: {traceback.format_exc(limit=3)}")
    everyone = COMM.gather(failures, root=0)
    if RANK == 0:
        lines = [f for fs in everyone for f in fs]
        print("\n".join(lines) if lines else f"MPI CHECKS PASSED {len(CHECKS)} on {SIZE} ranks",
              flush=True)
    return 1 if COMM.allreduce(len(failures)) else 0


if __name__ == "__main__":
    sys.exit(main())
