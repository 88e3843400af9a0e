"""``python -m numbabn info``: versions, threads, the BLAS next door, and devices."""
import os
import platform


def lines():
    import numba
    import numpy

    import numbabn

    from . import _threads
    from ._dispatch import cuda_available
    from .cpu import _chunks  # noqa: F401  (starts Numba's threads under numbabn's policy)

    yield f"numbabn        {numbabn.__version__}"
    yield f"python         {platform.python_version()} ({platform.machine()})"
    yield f"numpy          {numpy.__version__}"
    yield f"numba          {numba.__version__}"
    yield f"cpu cores      {os.cpu_count()}"
    threads = numba.get_num_threads()
    yield (f"numba threads  {threads} thread{'s' if threads != 1 else ''} on the "
           f"{_threads.layer_name()} threading layer "
           f"(NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}, requested layer: "
           f"{numba.config.THREADING_LAYER})")
    yield f"thread policy  {_threads.describe_policy()}"
    yield f"blas           {_threads.blas_description()}"
    yield f"conflict       {_threads.conflict() or 'no: one side runs a single thread'}"
    yield f"cuda           {'available' if cuda_available() else 'not available'}"


def main(out=print):
    for line in lines():
        out(line)
    return 0
