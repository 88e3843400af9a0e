"""How the CPU kernels cut an (A, C, B) array into independent pieces of work.

The cut of every reduction depends only on the shape, never on the thread
count, so results are bit-identical whatever ``numba.set_num_threads`` says
(only the runs of :func:`channel_runs`, which change no bits, follow it).

Most kernels come as a parallel (``prange``) and a serial twin: Numba compiles
``parallel=True`` per function, and one cached function cannot be both.  The
twins share their per-piece helpers and differ only in the loop header.
"""
import numba
from numba import njit

from .. import _threads

# Start Numba's threading layer under numbabn's thread policy (see numbabn/_threads.py)
# before any kernel runs: the CPU backend imports this module on its first use.
_threads.configure()

#: Below this many elements per (a, c) plane the "rows" loop order is used:
#: each piece of work is a block of whole rows ``x[a0:a1]`` with (C * B)-wide
#: accumulators, so the inner loop runs along the contiguous channel axis.
ROWS_MAX_B = 16

#: From ROWS_MAX_B up to (not including) this many elements per (a, c) plane
#: the "blocks" loop order is used: each piece of work is a block of whole
#: channels ``x[:, c0:c1, :]`` read as rows of ``(c1 - c0) * B`` contiguous
#: values, reduced column by column (the loops run along those rows), so no
#: loop is as short as one plane.  Longer planes use the "planes" order.
BLOCKS_MAX_B = 512

#: In the blocks layout the channels are cut into at least this many blocks
#: (when there are that many channels), so that threads can share them out.
MIN_BLOCKS = 16

#: Independent float64 accumulators in a plane reduction (eight 256-bit
#: vectors), enough to hide the add latency; summed in a fixed order.
#: Planes shorter than ``4 * LANES`` use ``SHORT_LANES``.
LANES = 32
SHORT_LANES = 8

#: With at least this many channels, the kernels that need no reduction
#: (normalize, backward apply) give each thread whole channels; with fewer,
#: pieces of planes are shared out.  Reductions in the planes layout always
#: give each thread whole channels, so a channel is reduced and then, while it
#: is still in cache, normalized (training forward) or differentiated
#: (backward).
CHANNEL_JOBS_MIN_C = 8

#: In the planes layout, a channel of x larger than this (bytes, by the
#: itemsize of the compute dtype) no longer stays in the L2 cache (2 MiB a core
#: here) between its reduction and its second pass (normalize, or write dx).
#: Each thread then runs through a run of channels as a pipeline: channel c's
#: second pass shares its loops with channel c + 1's reduction, so that reading
#: one channel from memory overlaps with re-reading the other.  Measured here
#: (float32, 2 threads, fused kernels writing into a given buffer): 0.77 MiB
#: channels 12% faster, 1.5-4 MiB ones 17-31%, 0.5 MiB ones no faster.  float64
#: gains less (its loops convert nothing, so there is less work to overlap):
#: 3-11% on 6 MiB channels, up to 6% slower on 0.8-1.5 MiB ones.
PIPELINE_MIN_CHANNEL_BYTES = {4: 3 << 18, 8: 1 << 22}

#: Inputs with at most this many elements run the serial twin of each kernel:
#: waking the worker threads costs more than the work itself.  Both twins
#: cut the work into the same pieces, so the results are bit-identical.
SERIAL_MAX_ELEMENTS = 1 << 15

#: Elements in one piece of work.  Two passes over a piece this size stay in
#: the L2 cache (64 KiB of float32).  In the planes layout a piece is a group
#: of whole planes of one channel, or a segment of one plane longer than this.
PIECE_ELEMENTS = 16384

#: Elements in one piece of work in the rows layout (256 KiB of float32, still
#: in L2 for the second pass).  Larger than PIECE_ELEMENTS because every piece
#: costs one Chan merge per column.
ROW_PIECE_ELEMENTS = 65536


@njit(nogil=True, cache=True)
def plane_pieces(B):
    """Return ``(pieces_per_plane, piece_length)`` for planes of length B."""
    if B <= PIECE_ELEMENTS:
        return 1, max(B, 1)
    pieces = (B + PIECE_ELEMENTS - 1) // PIECE_ELEMENTS
    length = (B + pieces - 1) // pieces
    return pieces, length


@njit(nogil=True, cache=True)
def lanes_for(B):
    """Lanes of a planes-layout reduction over planes of length B."""
    return LANES if B >= 4 * LANES else SHORT_LANES


@njit(nogil=True, cache=True)
def channel_pieces(A, B):
    """``(planes_per_piece, pieces)``: how one channel of an (A, C, B) array is cut.

    Planes up to PIECE_ELEMENTS long are grouped, whole, into pieces of
    ``planes_per_piece`` planes; a longer plane is one group of its own, cut
    into ``plane_pieces(B)`` segments.
    """
    per_plane, _ = plane_pieces(B)
    if per_plane > 1:
        return 1, A * per_plane
    group = max(PIECE_ELEMENTS // max(B, 1), 1)
    return group, (A + group - 1) // group


@njit(nogil=True, cache=True)
def piece_bounds(j, A, B, group):
    """``(a0, a1, start, stop)`` of piece ``j`` of a channel: planes ``a0:a1``, elements ``start:stop``."""
    if group > 1 or B <= PIECE_ELEMENTS:
        a0 = j * group
        return a0, min(a0 + group, A), 0, B
    per_plane, length = plane_pieces(B)
    a = j // per_plane
    start = (j % per_plane) * length
    return a, a + 1, start, min(start + length, B)


@njit(nogil=True, cache=True)
def row_pieces(A, W):
    """``(rows, pieces)`` for an (A, W) rows view: rows per piece of work, and how many pieces.

    The rows layout (B < ROWS_MAX_B) is read as a 2-D array of A rows and
    W = C * B columns, so inner loops run along whole contiguous rows.
    """
    most = max(ROW_PIECE_ELEMENTS // max(W, 1), 1)
    pieces = max((A + most - 1) // most, 1)
    # As many rows in every piece as the budget allows, shared evenly: 196 rows
    # at 128 per piece are 98 + 98, not 128 + 68 (two threads, one waiting).
    rows = (A + pieces - 1) // pieces
    return rows, (A + rows - 1) // rows


@njit(nogil=True, cache=True)
def channel_blocks(A, C, B):
    """``(channels_per_block, blocks, rows_per_group, groups)`` of the blocks layout.

    A block of channels is reduced in groups of ``rows_per_group`` rows of the
    (A, C * B) view, each group two passes over about ROW_PIECE_ELEMENTS
    values (in L2); a channel's groups are then merged in order.  Blocks are
    as wide as that budget allows, but there are at least MIN_BLOCKS of them
    when there are that many channels.
    """
    rows = min(max(ROW_PIECE_ELEMENTS // max(B, 1), 1), max(A, 1))
    groups = (A + rows - 1) // rows
    per = max(min(ROW_PIECE_ELEMENTS // (rows * B), (C + MIN_BLOCKS - 1) // MIN_BLOCKS), 1)
    return per, (C + per - 1) // per, rows, groups


@njit(nogil=True, cache=True)
def job_index(job, C, pieces):
    """Split a flat job number over ``(a, c, piece)`` into its three parts.

    prange indices are unsigned; integer arithmetic is kept in int64 so the
    parts stay integers.
    """
    j = int(job)
    plane = j // pieces
    return plane // C, plane % C, j % pieces


def channel_runs(A, C, B, itemsize, one_thread):
    """``(channels_per_run, pipelined)`` for the fused planes-layout kernels.

    Not pipelined, every channel is a run of its own.  Pipelined (a channel
    holds more than PIPELINE_MIN_CHANNEL_BYTES), each thread gets about two
    runs (one with one thread): a longer run overlaps more, more runs balance
    the threads.  A channel's bits do not depend on its run or its thread.
    """
    if A * B * itemsize <= PIPELINE_MIN_CHANNEL_BYTES[itemsize]:
        return 1, False
    runs = 1 if one_thread else min(C, 2 * numba.get_num_threads())
    return (C + runs - 1) // runs, True


def serial(size):
    """True when an input of ``size`` elements should run the serial kernels.

    Small inputs, one Numba thread, or a thread that must not launch parallel
    kernels (:func:`numbabn._threads.parallel_allowed`: the workqueue layer,
    which aborts on concurrent launches, outside the main thread).
    """
    return (size <= SERIAL_MAX_ELEMENTS or numba.get_num_threads() == 1
            or not _threads.parallel_allowed())
