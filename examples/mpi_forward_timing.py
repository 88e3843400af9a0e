"""Time a synchronized batch-norm forward per process count (weak scaling).

    NUMBA_NUM_THREADS=1 mpiexec -n P python -m mpi4py examples/mpi_forward_timing.py [N C H W]

Every rank normalizes its own (N, C, H, W) float32 batch (default
(64, 256, 14, 14)), so the work per process is fixed and the ideal is a time
that does not grow with P.  Rank 0 prints medians over the repetitions (the
three runs alternate, each starts after a barrier, the slowest rank counts) of
the synchronized forward, the single-process forward on the same slice (no
communication) and the statistics exchange alone (one Allgather of 3 C
float64), then the bytes each rank sends and receives per training step.
"""
import sys
import time

import numba
import numpy as np
from mpi4py import MPI

import numbabn as nbn

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
REPEATS = 30


def slowest_medians(*runs):
    """Median over REPEATS of the slowest rank's wall time of each run.

    The runs alternate within each repetition, so a load change on a shared
    machine hits all of them alike.
    """
    times = [[] for _ in runs]
    for _ in range(REPEATS):
        for run, samples in zip(runs, times):
            COMM.Barrier()
            start = time.perf_counter()
            run()
            samples.append(COMM.allreduce(time.perf_counter() - start, op=MPI.MAX))
    return [float(np.median(samples)) for samples in times]


def main():
    shape = tuple(int(s) for s in sys.argv[1:5]) or (64, 256, 14, 14)
    c = shape[1]
    x = np.random.default_rng(RANK).standard_normal(shape).astype(np.float32)
    out = np.empty_like(x)
    w, b = np.ones(c, np.float32), np.zeros(c, np.float32)
    stats, gathered = np.zeros((3, c)), np.empty((SIZE, 3, c))

    def sync():
        nbn.sync_batch_norm_forward(x, w, b, comm=COMM, out=out)

    def local():
        nbn.batch_norm_forward(x, w, b, out=out)

    def exchange():
        COMM.Allgather(stats, gathered)

    for run in (sync, local, exchange):  # compile / load the kernels, warm the buffers
        run()
    t_sync, t_local, t_exchange = slowest_medians(sync, local, exchange)
    if RANK == 0:
        forward_bytes = 3 * c * 8
        backward_bytes = (2 * c + 2) * 8
        print(f"{SIZE} process(es), {shape} float32 per process, "
              f"Numba threads per process {numba.get_num_threads()}")
        print(f"  sync forward   {t_sync * 1e3:8.3f} ms")
        print(f"  local forward  {t_local * 1e3:8.3f} ms  (same slice, no communication)")
        print(f"  Allgather      {t_exchange * 1e3:8.3f} ms  (3*C float64 per rank)")
        print(f"  bytes per rank per step: forward sends {forward_bytes}, receives "
              f"{SIZE * forward_bytes}; backward Allreduce of {backward_bytes} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
