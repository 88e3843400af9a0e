r"""Synchronized batch normalization across MPI processes (mpi4py).

In data-parallel training each process (rank) holds a slice of the global
batch.  The functions here normalize every slice with the statistics of the
*global* batch, so the result on each rank is that rank's part of what
single-process :func:`numbabn.batch_norm_forward` gives on the concatenated
batch.

Forward: each rank reduces its slice to per-channel ``(count, mean, M2)``
with the local kernels, the ranks exchange them in one ``Allgather`` of
``3 C`` float64 per rank, and every rank merges the P summaries with Chan's
formula in rank order,

.. math::

    (n, \bar x, M_2) \leftarrow \mathrm{merge}\big((n, \bar x, M_2),\,
    (n_r, \bar x_r, M_{2,r})\big), \qquad r = 0, 1, \dots, P-1,

so every rank holds bit-identical statistics and running buffers.  Uneven
slices are exact, and a rank with no rows takes part (it sends a count of 0).

Backward: one ``Allreduce(SUM)`` of the per-channel sums
:math:`\sum dy` and :math:`\sum dy\,(x-\mu)` (plus the global count), after
which each rank computes its own ``dx``.

All ranks must call these functions together, with the same communicator,
channel count, ``axis``, ``eps`` and ``momentum``.  A rank whose per-channel
arguments (``weight``, ``bias``, running buffers, ``out``, ``eps``,
``momentum``, ``dy``, ``mean``, ``invstd``) fail validation still joins the
collective, marked as rejected, and then raises its own error, while the other
ranks raise :class:`RankInputError`: no rank is left waiting.  An ``x`` whose
channel count cannot be read (not a float array, rank < 2, bad ``axis``) or a
``device`` that cannot serve it raises at once, before the collective, because
the message size is unknown; such errors are the same on every rank of an SPMD
program.  Run scripts with ``mpiexec -n P python -m mpi4py script.py`` so that
any uncaught exception aborts the whole job instead of leaving ranks waiting.

:class:`SyncBatchNorm` is the layer: a :class:`numbabn.BatchNorm` whose
training statistics go through these functions.  mpi4py is imported only when
a layer is built without ``comm`` (it then takes ``COMM_WORLD``); the
functions use only the methods of the ``comm`` object they are given.
"""
import numpy as np

from . import _channel_math as cm
from . import _validate as v
from ._dispatch import select_backend
from ._memory_order import channels_in_stored_order
from .batchnorm import BatchNorm
from .cpu import formulas
from .functional import _backward_inputs, _float_input, _training_inputs, _update_running

#: The count a rank sends in place of its statistics when it rejected its input.
_REJECTED = -1.0


class RankInputError(ValueError):
    """Another rank rejected its input, so this collective call cannot produce a result."""


@channels_in_stored_order("x", ("out",))
def sync_batch_norm_forward(x, weight=None, bias=None, *, comm, eps=1e-5, axis=1, out=None,
                            running_mean=None, running_var=None, momentum=0.1, device="auto"):
    r"""Training-mode forward with the statistics of the global batch over ``comm``.

    With :math:`M = \sum_r M_r` values per channel over all ranks,

    .. math::

        \mu = \frac{1}{M}\sum_{r}\sum_{i \in r} x_i, \quad
        \sigma^{-1} = \Big(\frac{1}{M}\sum_r\sum_{i \in r}(x_i-\mu)^2 + \epsilon\Big)^{-1/2},
        \quad y = (x - \mu)\,\sigma^{-1}\gamma + \beta.

    When ``running_mean`` and ``running_var`` are given they are updated in
    place on every rank with the global mean and the unbiased global variance
    :math:`\frac{M}{M-1}\sigma^2`, bit-identically on all ranks.

    Parameters
    ----------
    x : array of float16, float32 or float64, rank >= 2
        This rank's slice; any number of rows, including none.
    weight, bias : array_like of shape (C,), optional
    comm : mpi4py.MPI.Intracomm, keyword-only
        Every rank of ``comm`` must make the same call.
    eps, axis, out, running_mean, running_var, momentum, device
        As in :func:`numbabn.batch_norm_forward`.

    Returns
    -------
    y : array, shape and dtype of ``x`` (on the device of ``x``)
    mean, invstd : ndarray of shape (C,)
        The global statistics, identical on every rank; float64 for float64
        input, else float32.  Host NumPy arrays even for device input (they
        are merged on the host; every backend accepts host vectors).

    Raises
    ------
    ValueError
        On every rank when the global batch has one value per channel or
        fewer (the single-process message), and on a rank whose own arguments
        are invalid.
    RankInputError
        On the other ranks, when some rank rejected its arguments.
    """
    _check_comm(comm)
    backend = select_backend(device, x)
    x = _float_input(backend, "x", x)
    lay = v.layout(x.shape, axis)
    try:
        weight, bias, running_mean, running_var, eps, out, momentum = _training_inputs(
            backend, lay, x, weight, bias, running_mean, running_var, eps, out, momentum)
    except (TypeError, ValueError):
        _allgather_moments(comm, lay.C, None)
        raise
    gathered = _allgather_moments(comm, lay.C, backend.welford(x, lay))
    count, mean, m2 = merge_in_rank_order(gathered)
    v.training_count(
        v.Layout(A=int(count), C=lay.C, B=1, axis=lay.axis), x.shape,
        where=f" on rank {comm.Get_rank()}: the global batch over {comm.Get_size()} "
              f"processes has {int(count)} value(s) per channel",
    )
    invstd = cm.invstd_from_var(m2 / count, eps)
    y = backend.normalize(x, lay, mean, invstd, weight, bias, out)
    if running_mean is not None:
        _update_running(backend, running_mean, running_var, mean, m2, count, momentum)
    dtype = v.stats_dtype(x.dtype)
    return y, mean.astype(dtype), invstd.astype(dtype)


def _check_comm(comm):
    """Raise ``TypeError`` unless ``comm`` looks like an mpi4py intra-communicator."""
    needed = ("Allgather", "Allreduce", "Get_rank", "Get_size")
    if not all(hasattr(comm, name) for name in needed):
        raise TypeError(
            f"comm must be an mpi4py communicator (for example MPI.COMM_WORLD), got {comm!r}"
        )


def _allgather_moments(comm, channels, local):
    """Exchange ``(count, mean, M2)``; returns every rank's, shape (P, 3, C) float64.

    Row 0 of each rank's (3, C) block is its count, repeated per channel; a
    rank that rejected its input sends ``_REJECTED`` there (``local`` None).
    """
    send = np.zeros((3, channels))
    if local is None:
        send[0] = _REJECTED
    else:
        send[0], send[1], send[2] = local
    gathered = np.empty((comm.Get_size(), 3, channels))
    comm.Allgather(send, gathered)
    return gathered


def merge_in_rank_order(gathered):
    """Merge the (P, 3, C) per-rank ``(count, mean, M2)`` with Chan's formula, rank 0 first.

    Returns ``(count, mean, m2)`` with a float count and (C,) float64 vectors.
    Raises :class:`RankInputError` when a rank marked itself as rejected.
    """
    counts = gathered[:, 0, 0]
    _raise_if_rejected(np.flatnonzero(counts == _REJECTED))
    count, mean, m2 = cm.chan_merge_in_order(
        zip(counts, gathered[:, 1], gathered[:, 2]), gathered.shape[2])
    return float(count), mean, m2


def _raise_if_rejected(ranks):
    if len(ranks):
        raise RankInputError(
            f"rank(s) {', '.join(map(str, ranks))} rejected their input (see the error "
            "raised there), so this synchronized batch norm call was abandoned on every rank"
        )


@channels_in_stored_order("x", ("dy", "out"))
def sync_batch_norm_backward(dy, x, mean, invstd, weight=None, *, comm, axis=1, out=None,
                             device="auto"):
    r"""Gradients of :func:`sync_batch_norm_forward`: ``(dx, dweight, dbias)``.

    The sums :math:`S = \sum dy` and :math:`P = \sum dy\,(x-\mu)` are taken
    over the global batch (one ``Allreduce``), so each rank's

    .. math::

        dx = \gamma\sigma^{-1}\Big(dy - \frac{S}{M} - (x-\mu)\,\sigma^{-2}\frac{P}{M}\Big)

    is its slice of the single-process gradient on the concatenated batch.
    ``dweight`` and ``dbias`` are this rank's *contributions*,
    :math:`\sum_{i \in r} dy\,\hat x` and :math:`\sum_{i \in r} dy`, as in
    PyTorch's ``SyncBatchNorm``: their sum over the ranks is the global
    gradient, so the gradient all-reduce of a data-parallel step treats them
    like every other parameter.

    Parameters
    ----------
    dy, x : arrays of the same shape and dtype (this rank's slice)
    mean, invstd : array_like of shape (C,)
        As returned by :func:`sync_batch_norm_forward`.
    weight : array_like of shape (C,), optional
    comm : mpi4py.MPI.Intracomm, keyword-only
    axis, out, device
        As in :func:`numbabn.batch_norm_backward`.

    Returns
    -------
    dx : ndarray, shape and dtype of ``x``
    dweight, dbias : ndarray of shape (C,)
        In ``weight``'s dtype; without weight, float64 for float64 input, else float32.
    """
    _check_comm(comm)
    backend = select_backend(device, x)
    x = _float_input(backend, "x", x)
    lay = v.layout(x.shape, axis)
    try:
        dy, mean, invstd, weight, out = _backward_inputs(
            backend, lay, x, dy, mean, invstd, weight, out)
    except (TypeError, ValueError):
        _allreduce_sums(comm, lay.C, None)
        raise
    sum_dy, sum_dy_xmu = backend.backward_reduce(dy, x, lay, mean)
    global_dy, global_dy_xmu, count = _allreduce_sums(comm, lay.C, (sum_dy, sum_dy_xmu, lay.count))
    dx = backend.backward_apply(
        dy, x, lay, mean, invstd, weight, global_dy, global_dy_xmu, count, True, out
    )
    grad_dtype = np.dtype(weight.dtype) if weight is not None else v.stats_dtype(x.dtype)
    # As the single-process backward: 0 * inf (sigma^-1 infinite where var + eps <= 0) is
    # NaN without NumPy's warning.
    dweight = formulas.product(sum_dy_xmu, np.asarray(invstd, dtype=np.float64))
    return dx, dweight.astype(grad_dtype), sum_dy.astype(grad_dtype)


def _allreduce_sums(comm, channels, local):
    """Sum ``(sum_dy, sum_dy_xmu, count)`` over the ranks; returns the global triple.

    The buffer holds ``2 C + 2`` float64: the two (C,) sums, the count, and
    the number of ranks that rejected their input (``local`` None).
    """
    send = np.zeros(2 * channels + 2)
    if local is None:
        send[-1] = 1.0
    else:
        send[:channels], send[channels:2 * channels], send[-2] = local
    total = np.empty_like(send)
    comm.Allreduce(send, total)
    if total[-1] and local is not None:
        raise RankInputError(
            f"{int(total[-1])} rank(s) rejected their input (see the error raised there), "
            "so this synchronized batch norm backward was abandoned on every rank"
        )
    return total[:channels], total[channels:2 * channels], int(total[-2])


class SyncBatchNorm(BatchNorm):
    r""":class:`numbabn.BatchNorm` with the training statistics of the global batch over MPI.

    Each rank calls the layer on its own slice of the batch; in training mode
    the mean and variance are those of all the slices together
    (:func:`sync_batch_norm_forward`), and :meth:`backward` reduces its sums
    over the ranks too (:func:`sync_batch_norm_backward`).  Everything else
    (parameters, running statistics with their update rule, eval mode,
    ``state_dict``) is :class:`numbabn.BatchNorm`'s, and the running
    statistics stay bit-identical on every rank.

    As in PyTorch's ``SyncBatchNorm``, ``grad_weight`` and ``grad_bias`` are
    this rank's contributions (sum them over the ranks with the other
    gradients), and only training mode synchronizes: with
    ``track_running_stats=False`` an eval-mode call normalizes with its own
    slice's statistics, so ranks may evaluate independently.

    Parameters
    ----------
    num_features, eps, momentum, affine, track_running_stats, bias, axis, dtype
        As in :class:`numbabn.BatchNorm`.
    comm : mpi4py.MPI.Intracomm, keyword-only, optional
        The ranks that share the batch; None means ``MPI.COMM_WORLD``.  In
        training mode every rank of ``comm`` must call forward (and backward)
        together.  The layer's own input checks (rank, channel count) run
        before the exchange, so they must fail on every rank alike, as they
        do in a program that runs the same model everywhere.

    Shape
    -----
    Input: (A..., C, B...) with C on ``axis``, any number of rows per rank
    (none included); output: the same.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, bias=True, axis=1, comm=None,
                 dtype=np.float32):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias=bias,
                         axis=axis, dtype=dtype)
        self.comm = _communicator(comm)
        self._synchronized = False

    @classmethod
    def convert(cls, layer, comm=None):
        """A :class:`SyncBatchNorm` that takes over ``layer``'s configuration and state.

        The new layer shares ``layer``'s parameter and running-statistics
        arrays (no copy, as PyTorch's ``convert_sync_batchnorm``) and its mode.
        Input-rank checks of ``BatchNorm1d/2d/3d`` are not kept: any rank >= 2
        is accepted.

        Raises
        ------
        TypeError
            When ``layer`` is not a :class:`numbabn.BatchNorm`.
        """
        if not isinstance(layer, BatchNorm):
            raise TypeError(f"layer must be a numbabn.BatchNorm, got {type(layer).__name__}")
        comm = _communicator(comm)
        converted = cls.__new__(cls)
        converted.__dict__.update(vars(layer))
        converted.comm = comm
        converted._saved = None  # a forward of the old layer is not one of this layer
        converted._synchronized = False
        return converted

    def _batch_forward(self, x, running_mean, running_var, momentum, out=None):
        self._synchronized = self.training
        if not self._synchronized:
            return super()._batch_forward(x, running_mean, running_var, momentum, out=out)
        return sync_batch_norm_forward(
            x, self.weight, self.bias, comm=self.comm, eps=self.eps, axis=self.axis,
            running_mean=running_mean, running_var=running_var, momentum=momentum, out=out,
        )

    def _batch_backward(self, dy, x, mean, invstd, out=None):
        if not self._synchronized:
            return super()._batch_backward(dy, x, mean, invstd, out=out)
        return sync_batch_norm_backward(dy, x, mean, invstd, self.weight, comm=self.comm,
                                        axis=self.axis, out=out)


def _communicator(comm):
    """``comm``, checked, or ``MPI.COMM_WORLD`` for None (importing mpi4py only then)."""
    if comm is None:
        try:
            from mpi4py import MPI
        except ImportError as err:
            raise ImportError(
                "SyncBatchNorm needs mpi4py for its default communicator: "
                "pip install 'numbabn[mpi]', or pass comm="
            ) from err
        return MPI.COMM_WORLD
    _check_comm(comm)
    return comm
