"""Data-parallel training steps with synchronized batch norm over MPI.

Run it with

    mpiexec -n 4 python -m mpi4py examples/mpi_sync_bn.py

Each rank holds its own slice of the global batch (of a different size on each
rank, to show that uneven slices are exact).  The SyncBatchNorm layer
normalizes with the statistics of the global batch, every rank computes its
gradient contributions, one all-reduce sums them, and every rank applies the
same update.  At the end every rank prints a fingerprint of its running statistics
and parameters, and rank 0 says whether they are identical everywhere.
"""
import hashlib

import numpy as np
from mpi4py import MPI

import numbabn as nbn

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
CHANNELS, STEPS, LEARNING_RATE = 16, 5, 0.1


def fingerprint(*arrays):
    """A short hash of the exact bytes of the arrays."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:16]


def main():
    rng = np.random.default_rng(100 + RANK)  # each rank draws its own data
    rows = 6 + 2 * RANK  # uneven slices of the global batch
    global_rows = COMM.allreduce(rows)
    # An existing single-process layer, made synchronized; it starts identical on every rank.
    bn = nbn.SyncBatchNorm.convert(nbn.BatchNorm2d(CHANNELS), COMM)

    for step in range(STEPS):
        x = (2.0 + 3.0 * rng.standard_normal((rows, CHANNELS, 8, 8))).astype(np.float32)
        target = rng.standard_normal(x.shape).astype(np.float32)
        y = bn(x)  # normalized with the statistics of all ranks' rows together
        # Loss: mean squared error over the global batch, so dL/dy = 2 (y - target) / size.
        global_size = global_rows * CHANNELS * 8 * 8
        loss = COMM.allreduce(float(np.sum((y - target) ** 2))) / global_size
        bn.backward((y - target) * np.float32(2.0 / global_size))  # dx, for the layers below
        # grad_weight and grad_bias are this rank's contributions: one all-reduce sums
        # them, exactly as for the weights of every other layer in a data-parallel step.
        grads = np.concatenate([bn.grad_weight, bn.grad_bias])
        COMM.Allreduce(MPI.IN_PLACE, grads)
        bn.weight -= LEARNING_RATE * grads[:CHANNELS]
        bn.bias -= LEARNING_RATE * grads[CHANNELS:]
        if RANK == 0:
            print(f"step {step}: loss {loss:.6f} over {global_rows} rows on {SIZE} ranks")

    statistics = fingerprint(bn.running_mean, bn.running_var)
    parameters = fingerprint(bn.weight, bn.bias)
    lines = COMM.gather(f"rank {RANK}: {rows:2d} rows per step, running statistics "
                        f"{statistics}, parameters {parameters}", root=0)
    everyone = COMM.allgather((statistics, parameters))
    if RANK == 0:
        print("\n".join(lines))
        same = all(f == everyone[0] for f in everyone)
        print(f"every rank holds identical running statistics and parameters: {same}")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
