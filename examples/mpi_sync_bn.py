"""Data-parallel training steps with synchronized batch norm over MPI.

Run it with

    mpiexec -n 4 python -m mpi4py examples/mpi_sync_bn.py

Each rank holds its own slice of the global batch (of a different size on each
rank, to show that uneven slices are exact).  The batch-norm layer normalizes
with the statistics of the global batch, every rank computes its gradient
contributions, one all-reduce sums them, and every rank applies the same
update.  At the end every rank prints a fingerprint of its running statistics
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
    # The model starts identical on every rank (the same seed everywhere).
    gamma = np.random.default_rng(0).uniform(0.5, 1.5, CHANNELS).astype(np.float32)
    beta = np.zeros(CHANNELS, np.float32)
    running_mean = np.zeros(CHANNELS, np.float32)
    running_var = np.ones(CHANNELS, np.float32)
    global_rows = COMM.allreduce(rows)

    for step in range(STEPS):
        x = (2.0 + 3.0 * rng.standard_normal((rows, CHANNELS, 8, 8))).astype(np.float32)
        target = rng.standard_normal(x.shape).astype(np.float32)
        y, mean, invstd = nbn.sync_batch_norm_forward(
            x, gamma, beta, comm=COMM, running_mean=running_mean, running_var=running_var,
            momentum=0.1,
        )
        # Loss: mean squared error over the global batch, so dL/dy = (y - target) / size.
        global_size = global_rows * CHANNELS * 8 * 8
        loss = COMM.allreduce(float(np.sum((y - target) ** 2))) / global_size
        dy = (y - target) * np.float32(2.0 / global_size)
        # dx would flow on into the layers below; this model stops here.
        dx, dgamma, dbeta = nbn.sync_batch_norm_backward(dy, x, mean, invstd, gamma, comm=COMM)
        # dgamma and dbeta are this rank's contributions: one all-reduce sums them,
        # exactly as for the weights of every other layer in a data-parallel step.
        grads = np.concatenate([dgamma, dbeta])
        COMM.Allreduce(MPI.IN_PLACE, grads)
        gamma -= LEARNING_RATE * grads[:CHANNELS]
        beta -= LEARNING_RATE * grads[CHANNELS:]
        if RANK == 0:
            print(f"step {step}: loss {loss:.6f} over {global_rows} rows on {SIZE} ranks")

    mine = fingerprint(running_mean, running_var)
    lines = COMM.gather(
        f"rank {RANK}: {rows:2d} rows per step, running statistics {mine}, "
        f"parameters {fingerprint(gamma, beta)}", root=0
    )
    everyone = COMM.allgather((mine, fingerprint(gamma, beta)))
    if RANK == 0:
        print("\n".join(lines))
        same = all(f == everyone[0] for f in everyone)
        print(f"every rank holds identical running statistics and parameters: {same}")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
