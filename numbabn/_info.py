"""``python -m numbabn info``: versions, threads and devices."""
import os
import platform


def lines():
    import numba
    import numpy

    import numbabn

    from ._dispatch import cuda_available

    yield f"numbabn        {numbabn.__version__}"
    yield f"python         {platform.python_version()} ({platform.machine()})"
    yield f"numpy          {numpy.__version__}"
    yield f"numba          {numba.__version__}"
    yield f"cpu cores      {os.cpu_count()}"
    yield f"numba threads  {numba.get_num_threads()} (NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS})"
    yield f"threading      {numba.config.THREADING_LAYER} (requested layer)"
    yield f"cuda           {'available' if cuda_available() else 'not available'}"


def main(out=print):
    for line in lines():
        out(line)
    return 0
