"""Launch tunables of the CUDA kernels, read at every launch (tests patch them).

``THREADS_PER_BLOCK`` comes from the environment variable
``NUMBABN_CUDA_THREADS`` (a power of two from 2 to ``MAX_THREADS``).  The CUDA
simulator runs one Python thread per CUDA thread, so its tests set it low to
make tiny inputs span several blocks.
"""
import os

#: Shared-memory tiles are sized for this many threads when a kernel compiles.
MAX_THREADS = 512


def _threads_from_env(default=256):
    text = os.environ.get("NUMBABN_CUDA_THREADS", "")
    if not text:
        return default
    value = int(text)
    if not 2 <= value <= MAX_THREADS or value & (value - 1):
        raise ValueError(
            f"NUMBABN_CUDA_THREADS must be a power of two from 2 to {MAX_THREADS}, got {text}"
        )
    return value


#: Threads per block of every kernel (a power of two, at most MAX_THREADS).
THREADS_PER_BLOCK = _threads_from_env()

#: Inputs whose (A, C, B) view has B below this use the row kernels (channels-last, 2-D).
ROWS_MAX_B = 32

#: Blocks per multiprocessor a reduction aims for; one channel is split across
#: blocks until the grid has this many.
BLOCKS_PER_SM = 8

#: A reduction thread gets at least this many values (when the input has them).
MIN_VALUES_PER_THREAD = 16

#: An elementwise thread walks about this many rows of its column.
ROWS_PER_THREAD = 8

#: Most threads of a finalize block (one block per channel merges its partials).
FINALIZE_THREADS = 128
