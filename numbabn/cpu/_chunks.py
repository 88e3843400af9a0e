"""How the CPU kernels cut an (A, C, B) array into independent pieces of work.

The cut depends only on the shape, never on the thread count, so results are
bit-identical whatever ``numba.set_num_threads`` says.
"""
from numba import njit

#: Below this many elements per (a, c) plane the "rows" loop order is used:
#: each piece of work is a block of whole rows ``x[a0:a1]`` with C-wide
#: accumulators, so the inner loop runs along the contiguous channel axis.
ROWS_MAX_B = 16

#: Elements in one piece of work.  Two passes over a piece this size stay in
#: the L2 cache (64 KiB of float32), and a large plane still splits into
#: enough pieces to feed every thread.
PIECE_ELEMENTS = 16384


@njit(cache=True)
def plane_pieces(B):
    """Return ``(pieces_per_plane, piece_length)`` for planes of length B."""
    if B <= PIECE_ELEMENTS:
        return 1, max(B, 1)
    pieces = (B + PIECE_ELEMENTS - 1) // PIECE_ELEMENTS
    length = (B + pieces - 1) // pieces
    return pieces, length


@njit(cache=True)
def rows_per_piece(C, B):
    """Rows of an (A, C, B) array that make one piece of work."""
    row = max(C * B, 1)
    return max(PIECE_ELEMENTS // row, 1)


@njit(cache=True)
def job_index(job, C, pieces):
    """Split a flat job number over ``(a, c, piece)`` into its three parts.

    prange indices are unsigned; integer arithmetic is kept in int64 so the
    parts stay integers.
    """
    j = int(job)
    plane = j // pieces
    return plane // C, plane % C, j % pieces
