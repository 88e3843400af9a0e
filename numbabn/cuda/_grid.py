"""Launch geometry: how many blocks of which shape each kernel gets.

Everything is read from :mod:`numbabn.cuda.config` at call time.
"""
from . import config
from ._runtime import multiprocessor_count

#: Largest grid y dimension CUDA allows.
MAX_GRID_Y = 65535


def _ceil_div(a, b):
    return -(-a // b)


def _clamp(value, low, high):
    return max(low, min(value, high))


def uses_rows(lay):
    """True when the (A, C, B) input is reduced with the row kernels (small B)."""
    return lay.B < config.ROWS_MAX_B


def _threads():
    """Threads per block: a power of two within what the shared tiles hold."""
    threads = config.THREADS_PER_BLOCK
    if not 2 <= threads <= config.MAX_THREADS or threads & (threads - 1):
        raise ValueError(f"config.THREADS_PER_BLOCK must be a power of two from 2 to "
                         f"{config.MAX_THREADS}, got {threads}")
    return threads


def _target_blocks():
    return config.BLOCKS_PER_SM * multiprocessor_count()


def planes(lay):
    """``(grid, block)`` of a planes reduction: blocks (channel, split), 1-D."""
    threads = _threads()
    most = max(1, lay.count // (threads * config.MIN_VALUES_PER_THREAD))
    splits = _clamp(_ceil_div(_target_blocks(), lay.C), 1, min(most, MAX_GRID_Y))
    return (lay.C, splits), threads


def _tile(columns):
    """(width, height) of a 2-D block over ``columns`` columns: width a power of two."""
    threads = _threads()
    width = 1
    while width < columns and width < threads:
        width *= 2
    return width, threads // width


def rows(rows_, columns):
    """``(grid, block)`` of a rows reduction over an (A, K) matrix."""
    width, height = _tile(columns)
    blocks_x = _ceil_div(columns, width)
    most = max(1, rows_ // (height * config.MIN_VALUES_PER_THREAD))
    splits = _clamp(_ceil_div(_target_blocks(), blocks_x), 1, min(most, MAX_GRID_Y))
    return (blocks_x, splits), (width, height)


def elementwise(rows_, columns):
    """``(grid, block)`` of an elementwise kernel over an (A, K) matrix."""
    width, height = _tile(columns)
    blocks_y = _clamp(_ceil_div(rows_, height * config.ROWS_PER_THREAD), 1, MAX_GRID_Y)
    return (_ceil_div(columns, width), blocks_y), (width, height)


def per_channel(channels, partials):
    """``(grid, block)`` of a finalize kernel: one block per channel, ``partials`` each."""
    threads = 1
    while threads < partials and threads < min(_threads(), config.FINALIZE_THREADS):
        threads *= 2
    return channels, threads
