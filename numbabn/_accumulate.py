r"""Per-channel statistics of data that arrives in pieces: :class:`ChannelMoments`.

Each batch is reduced by the backends' per-channel reduction for data read
once (``backend.stream_moments``: count, mean and M2 in float64, long planes
read once about a sampled shift, see :mod:`numbabn.cpu.streaming`) and folded
into the running summary with Chan's merge (:func:`numbabn._channel_math.chan_merge`,
the same formula the MPI layer and the Dask reduction use),

.. math::

    n = n_a + n_b,\quad \delta = \bar x_b - \bar x_a,\quad
    \bar x = \frac{n_a \bar x_a + n_b \bar x_b}{n},\quad
    M_2 = M_{2,a} + M_{2,b} + \delta^2 \frac{n_a n_b}{n},

so the result after any sequence of batches and merges equals the one-shot
statistics of the concatenated data up to float64 rounding.

A host batch is read in slabs of about :data:`SLAB_BYTES` along its first
non-channel axis, so a batch that is a whole memory-mapped file is never
copied at once: a slab in non-native byte order (``>f4``) or non-contiguous
is converted on its own.  Each slab of a memory-mapped file is announced to
the OS while the one before it is reduced (``madvise(MADV_WILLNEED)``: a
sequential read-ahead in the background, where the kernels' threads would
otherwise fault pages in one by one and out of order), and
the pages of a slab of a shared file mapping (``np.memmap`` in mode ``"r"``,
``"r+"`` or ``"w+"``) are released after it is read (see
:func:`_release_pages`), so resident memory stays near one slab.
"""
import ctypes
import mmap
import numbers
import sys
import threading

import numpy as np

from . import _channel_math as cm
from . import _validate as v
from ._dispatch import is_device_array, select_backend

#: Bytes of a host batch reduced at a time (a larger batch is read slab by slab).
SLAB_BYTES = 32 * 2**20

#: ``np.memmap`` modes that map the file shared (never "c", copy-on-write: dropping its
#: pages would drop the private changes).
_SHARED_MODES = ("r", "r+", "w+")


def batch_moments(x, lay, release_pages=True):
    """Per-channel ``(count, mean, m2)`` of one batch, float64, by the backend's reduction.

    ``x`` is a checked host or device array of layout ``lay``.  Device arrays
    go to the CUDA backend whole.  Host arrays are reduced slab by slab (see
    the module docstring) and the slabs merged in order with Chan's formula.
    """
    backend = select_backend("auto", x)
    if is_device_array(x):
        return backend.stream_moments(x, lay)
    mapping = _file_mapping(x)
    slabs = _slabs(x, lay) if mapping is None else _read_ahead(_slabs(x, lay))
    return cm.chan_merge_in_order(
        (_slab_moments(backend, slab, lay.axis, release_pages and mapping is not None, mapping)
         for slab in slabs),
        lay.C)


def _slab_moments(backend, slab, axis, release, mapping):
    summary = backend.stream_moments(slab, v.layout(slab.shape, axis))  # converts >f4 slabs
    if release:
        _release_pages(slab, mapping)
    return summary


def _read_ahead(slabs):
    """Yield the slabs of a memory-mapped batch, announcing each one's successor first.

    ``madvise(MADV_WILLNEED)`` starts one sequential read of the whole slab in
    the background, so the file is read while the previous slab is reduced,
    instead of page by page in the order the kernels' threads touch it.
    """
    slabs = iter(slabs)
    current = next(slabs, None)
    if current is None:
        return
    _advise(current, mmap.MADV_WILLNEED)
    for following in slabs:
        _advise(following, mmap.MADV_WILLNEED)
        yield current
        current = following
    yield current


def _slabs(x, lay):
    """Views of ``x`` of about :data:`SLAB_BYTES` along its first non-channel axis.

    The cut depends only on the shape and dtype, so results do not depend on
    the machine.
    """
    split = 1 if lay.axis == 0 else 0
    n = x.shape[split]
    per_index = x.itemsize * (x.size // n) if n else 0
    if n == 0 or per_index * n <= SLAB_BYTES:
        yield x
        return
    step = max(1, SLAB_BYTES // per_index)
    index = [slice(None)] * x.ndim
    for start in range(0, n, step):
        index[split] = slice(start, start + step)
        yield x[tuple(index)]


def _file_mapping(a):
    """The ``np.memmap`` whose mapping holds ``a``'s memory, or None."""
    while a is not None:
        if isinstance(a, np.memmap):
            return a if getattr(a, "_mmap", None) is not None else None
        a = getattr(a, "base", None)
    return None


def _shared_file_mapping(a):
    """True when ``a``'s memory is an ``np.memmap`` mapped shared (its pages can be dropped)."""
    mapping = _file_mapping(a)
    return mapping is not None and getattr(mapping, "mode", None) in _SHARED_MODES


_madvise = None
if sys.platform.startswith("linux") and hasattr(mmap, "MADV_DONTNEED"):
    try:
        _madvise = ctypes.CDLL(None, use_errno=True).madvise
        _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    except (OSError, AttributeError):  # pragma: no cover - libc without madvise
        _madvise = None


def _release_pages(a, mapping=None):
    """Drop the pages of a contiguous slab of a shared file mapping from this process.

    ``madvise(MADV_DONTNEED)`` on a shared file mapping only unmaps the pages:
    the data stays in the file and the OS page cache (dirty pages included),
    and a later access maps it again.  Without this, every page of a
    memory-mapped file that was read stays counted in the process's resident
    memory until the mapping is closed.  Never on a copy-on-write mapping
    (mode "c"), whose private changes live only in those pages.  Linux only;
    elsewhere a no-op.
    """
    mapping = _file_mapping(a) if mapping is None else mapping
    if mapping is None or getattr(mapping, "mode", None) not in _SHARED_MODES:
        return
    _advise(a, mmap.MADV_DONTNEED, whole_pages_only=True)


def _advise(a, advice, whole_pages_only=False):
    """``madvise`` over the memory of the C-contiguous array ``a`` (no-op where unavailable).

    ``whole_pages_only`` keeps to the pages that lie entirely inside ``a``
    (for advice that changes what a page holds); otherwise every page it
    touches is covered (read-ahead).
    """
    if _madvise is None or a.size == 0 or not a.flags.c_contiguous:
        return
    page = mmap.PAGESIZE
    start, stop = a.ctypes.data, a.ctypes.data + a.nbytes
    if whole_pages_only:
        lo, hi = -(-start // page) * page, stop // page * page
    else:
        lo, hi = start // page * page, -(-stop // page) * page
    if hi > lo:
        _madvise(lo, hi - lo, advice)


def _checked_batch(x, axis):
    """``x`` as a host or device float array and its layout (raises before anything changes)."""
    if is_device_array(x):
        x = select_backend("auto", x).asarray(x)  # a Numba view of CuPy/PyTorch arrays
    elif not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise TypeError(f"x must be an array of floats, got {type(x).__name__}") from err
    v.float_dtype("x", x.dtype)
    lay = v.layout(tuple(x.shape), axis)
    if lay.C == 0:
        raise ValueError(f"x has no channels on axis {axis}: shape {tuple(x.shape)}")
    return x, lay


class ChannelMoments:
    r"""Streaming per-channel count, mean and variance, exact over any number of batches.

    .. math::

        \mu_c = \frac{1}{n}\sum x, \qquad
        \mathrm{var}_c = \frac{1}{n - \mathrm{ddof}}\sum (x - \mu_c)^2

    over every value of channel c seen by :meth:`update` (here or in an
    accumulator merged in with :meth:`merge`).  Each batch is reduced with
    numbabn's float64 per-channel reduction and folded in with Chan's merge,
    so the result equals :func:`numbabn.channel_moments` of the concatenated
    batches to float64 rounding, whatever the batch sizes and merge order.

    Parameters
    ----------
    axis : int, keyword-only, default 1
        The channel axis of the batches (-1 for channels-last).
    dtype : float16, float32 or float64, keyword-only, default float64
        Dtype of the arrays :attr:`mean` and :meth:`var` return.  The
        accumulation is float64 whatever it is; float64 keeps everything
        the accumulator knows.

    Attributes
    ----------
    count : int
        Values seen per channel (the same for every channel).
    channels : int or None
        C, learned from the first batch (None before).

    Notes
    -----
    Batches may be NumPy arrays of float16/32/64 in either byte order
    (``>f4`` included), memory-mapped files, anything ``np.asarray`` takes,
    or CUDA device arrays.  A batch that fails a check (dtype, rank, axis,
    channel count) raises before the state changes.  Updates from several
    threads are safe (the fold is locked; the reductions run outside the
    lock), though one accumulator per thread merged at the end scales better.
    Pickling keeps the state (see :meth:`state`).

    Shape
    -----
    Batches: (A..., C, B...) with C on ``axis``, any A and B; results: (C,).

    Examples
    --------
    >>> acc = ChannelMoments(axis=1)
    >>> for batch in batches:                      # doctest: +SKIP
    ...     acc.update(batch)
    >>> mean, var = acc.mean, acc.var(ddof=0)      # doctest: +SKIP
    """

    def __init__(self, *, axis=1, dtype=np.float64):
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"axis must be an integer, got {axis!r}")
        self.axis = int(axis)
        self.dtype = v.float_dtype("dtype", dtype)
        self._count = 0
        self._mean = self._m2 = None  # float64 (C,), rebound on each fold, never written
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ feeding

    def update(self, x, *, release_pages=True):
        """Add a batch; returns ``self``.

        Parameters
        ----------
        x : array of floats, rank >= 2, host or CUDA device
            Any number of values per channel, none included.
        release_pages : bool, keyword-only, default True
            For a batch that is (a view of) an ``np.memmap`` mapped shared,
            release each slab's pages after reading it, so resident memory
            does not grow with the file (the data stays in the OS page cache).

        Raises
        ------
        TypeError
            ``x`` is not an array of float16/32/64.
        ValueError
            Rank < 2, ``axis`` out of range, no channels, or a channel count
            that differs from the earlier batches'.
        """
        x, lay = _checked_batch(x, self.axis)
        self._check_channels(lay.C, "x", tuple(x.shape))
        self._fold(*batch_moments(x, lay, release_pages))
        return self

    def merge(self, other):
        """Add everything ``other`` has seen, as if its batches had come here; returns ``self``.

        ``other`` is not changed.  Raises ``TypeError`` if it is not a
        :class:`ChannelMoments` and ``ValueError`` if its channel count differs.
        """
        if not isinstance(other, ChannelMoments):
            raise TypeError(f"can only merge a ChannelMoments, got {type(other).__name__}")
        count, mean, m2 = other._summary()
        if mean is None:
            return self
        self._check_channels(len(mean), "other", None)
        self._fold(count, mean, m2)
        return self

    def _check_channels(self, channels, name, shape):
        known = self.channels
        if known is not None and channels != known:
            where = f" (input of shape {shape})" if shape is not None else ""
            raise ValueError(
                f"{name} has {channels} channels but this ChannelMoments has seen {known}{where}"
            )

    def _fold(self, count, mean, m2):
        with self._lock:
            if self._mean is None:
                self._count, self._mean, self._m2 = int(count), mean, m2
                return
            self._check_channels(len(mean), "the batch", None)  # another thread came first
            n, self._mean, self._m2 = cm.chan_merge(
                self._count, self._mean, self._m2, int(count), mean, m2)
            self._count = int(n)

    def _summary(self):
        with self._lock:
            return self._count, self._mean, self._m2

    # ------------------------------------------------------------------ results

    @property
    def channels(self):
        return None if self._mean is None else len(self._mean)

    @property
    def count(self):
        return self._count

    def _require_channels(self):
        if self._mean is None:
            raise ValueError("this ChannelMoments has seen no batch yet (its channels are unknown)")

    @property
    def mean(self):
        """Per-channel mean, shape (C,) in :attr:`dtype`; NaN while the count is 0."""
        self._require_channels()
        count, mean, _ = self._summary()
        if count == 0:
            return np.full(len(mean), np.nan, self.dtype)
        return mean.astype(self.dtype)

    def var(self, ddof=0):
        r"""Per-channel variance :math:`M_2 / (n - \mathrm{ddof})`, shape (C,) in :attr:`dtype`.

        ``ddof=0`` is the biased (population) variance that batch norm
        normalizes with, ``ddof=1`` the unbiased one of ``running_var``.  NaN
        where ``count <= ddof``.
        """
        ddof = v.ddof_value(ddof)
        self._require_channels()
        count, _, m2 = self._summary()
        if count <= ddof:
            return np.full(len(m2), np.nan, self.dtype)
        return (m2 / (count - ddof)).astype(self.dtype)

    def to_running(self, layer):
        """Set ``layer.running_mean`` and the unbiased ``layer.running_var`` from the data seen.

        ``layer`` is a :class:`numbabn.BatchNorm` (any subclass) that tracks
        running statistics, with as many features as channels seen here.  The
        values are rounded to the layer's buffer dtype and written in place
        (on the device for a layer moved to CUDA); ``num_batches_tracked`` is
        not changed.  Returns ``layer``.

        Raises
        ------
        ValueError
            No running buffers, a channel count that differs, or fewer than
            two values per channel (no unbiased variance).
        """
        running_mean = getattr(layer, "running_mean", None)
        running_var = getattr(layer, "running_var", None)
        if running_mean is None or running_var is None:
            raise ValueError(f"{type(layer).__name__} keeps no running statistics "
                             "(track_running_stats=False?)")
        self._require_channels()
        count, mean, m2 = self._summary()
        if tuple(running_mean.shape) != (len(mean),) or tuple(running_var.shape) != (len(mean),):
            raise ValueError(f"the layer has running buffers of shape {tuple(running_mean.shape)} "
                             f"but this ChannelMoments has seen {len(mean)} channels")
        if count < 2:
            raise ValueError(f"an unbiased variance needs at least 2 values per channel, "
                             f"got {count}")
        for buffer, value in ((running_mean, mean), (running_var, m2 / (count - 1))):
            _assign(buffer, value)
        return layer

    # ------------------------------------------------------------------ state

    def state(self):
        """The whole state as a plain dict of NumPy arrays (copies): picklable, ``np.savez``-able.

        Keys: ``count`` (0-d int64), ``mean`` and ``m2`` (float64, shape (C,);
        shape (0,) before the first batch), ``axis`` (0-d int64) and
        ``dtype`` (0-d string, e.g. ``"<f8"``).
        """
        count, mean, m2 = self._summary()
        empty = np.zeros(0)
        return {
            "count": np.array(count, dtype=np.int64),
            "mean": empty if mean is None else mean.copy(),
            "m2": empty.copy() if m2 is None else m2.copy(),
            "axis": np.array(self.axis, dtype=np.int64),
            "dtype": np.array(self.dtype.str),
        }

    @classmethod
    def from_state(cls, state):
        """A :class:`ChannelMoments` holding ``state`` (as returned by :meth:`state`).

        Everything is checked first: ``ValueError`` for missing keys, shapes
        or a negative count, ``TypeError`` for wrong dtypes.
        """
        if not hasattr(state, "keys"):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        missing = [k for k in ("count", "mean", "m2", "axis", "dtype") if k not in state]
        if missing:
            raise ValueError(f"state is missing keys {missing}")
        count = np.asarray(state["count"])
        if count.shape != () or count.dtype.kind not in "iu":
            raise TypeError(f"count must be an integer scalar, got {count.dtype} {count.shape}")
        count = int(count)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        mean = np.asarray(state["mean"])
        m2 = np.asarray(state["m2"])
        for name, a in (("mean", mean), ("m2", m2)):
            if a.dtype.kind != "f":
                raise TypeError(f"{name} must be floating, got {a.dtype}")
        if mean.ndim != 1 or m2.shape != mean.shape:
            raise ValueError(
                f"mean and m2 must have one shape (C,), got {mean.shape} and {m2.shape}")
        if len(mean) == 0 and count:
            raise ValueError(f"a count of {count} with no channels")
        acc = cls(axis=int(np.asarray(state["axis"])), dtype=str(np.asarray(state["dtype"])))
        if len(mean):
            acc._count = count
            acc._mean = mean.astype(np.float64)  # a copy, native byte order
            acc._m2 = m2.astype(np.float64)
        return acc

    def __reduce__(self):
        return (ChannelMoments.from_state, (self.state(),))

    def __repr__(self):
        return (f"ChannelMoments(axis={self.axis}, dtype={self.dtype}, channels={self.channels}, "
                f"count={self.count})")


def _assign(buffer, value):
    """Write the float64 (C,) ``value`` into a host or device buffer, in its dtype."""
    if isinstance(buffer, np.ndarray):
        buffer[...] = value
    else:  # a Numba device array
        buffer.copy_to_device(np.ascontiguousarray(value, dtype=buffer.dtype))
