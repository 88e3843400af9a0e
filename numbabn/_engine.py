r"""The statistics engine for per-sample members (instance norm, group norm) on any backend.

Every member reduces, per statistics row, over everything that is not the
row (``../shared/ARCHITECTURE.md``, "One engine, many normalizations").  For
an input (N, pre..., C, post...) with C in G groups (instance norm: G = C),
with A = prod(pre) and B = prod(post), the rows are the (sample, group)
pairs and the engine runs the backend's batch-norm primitives on views of
the same memory:

=========  ==========================  =====================  =================
case       problems P (backend calls)  statistics view        apply view
=========  ==========================  =====================  =================
A == 1     1 (the whole input)         (1, N*G, (C/G)*B)      (1, N*C, B)
A > 1      N (one per sample)          (A, G, (C/G)*B)        (A, C, B)
=========  ==========================  =====================  =================

In NCHW (A == 1) a statistics row is contiguous: it is batch norm's channel
of the (1, N*G, L) view, reduced and normalized by the same kernels (and,
when the affine is per row, by the same fused single-pass kernel).  In
channels-last (A > 1) each sample is a batch-norm problem of its own whose
channels are the groups.  The apply step takes per-channel coefficients

.. math::

    \mathrm{scale}_{n,c} = \gamma_c\,\sigma^{-1}_{n,g(c)}, \qquad
    \mathrm{shift}_{n,c} = \beta_c - \mu_{n,g(c)}\,\mathrm{scale}_{n,c},

and the backward, with :math:`S_{n,c} = \sum dy` and
:math:`P_{n,c} = \sum dy\,(x - \mu_{n,g})` per channel (the backend's
reduction), forms per group :math:`S^\gamma_{n,g} = \sum_{c \in g}\gamma_c S_{n,c}`,
:math:`P^\gamma_{n,g} = \sum_{c \in g}\gamma_c P_{n,c}` and writes

.. math::

    dx = \gamma_c\sigma^{-1}\,dy
         - \sigma^{3}\!{}^{-1}\frac{P^\gamma_{n,g}}{M}\,(x - \mu_{n,g})
         - \sigma^{-1}\frac{S^\gamma_{n,g}}{M},

with M = A·(C/G)·B values per group;
:math:`\partial L/\partial\gamma_c = \sum_n \sigma^{-1}_{n,g(c)} P_{n,c}`,
:math:`\partial L/\partial\beta_c = \sum_n S_{n,c}`.

Per-row vectors are formed on the host in float64 (N·C values); the backend
copies them in.  Nothing here knows a loop order or a device.
"""
import functools
from typing import NamedTuple

import numpy as np

from . import _channel_math as cm
from ._dispatch import is_device_array
from ._validate import Layout, stats_dtype


class Problem(NamedTuple):
    """One backend call's share of the input: sample rows ``n0:n1`` and their views."""

    n0: int
    n1: int
    stats: Layout  # rows = (sample, group) pairs
    apply: Layout  # rows = (sample, channel) pairs


@functools.lru_cache(maxsize=256)
def problems(slay):
    """The backend calls that cover an input of :class:`~numbabn._validate.SampleLayout` ``slay``."""
    N, A, C, B, G = slay.N, slay.A, slay.C, slay.B, slay.G
    per = (C // G) * B
    if A == 1:
        return (Problem(0, N, Layout(1, N * G, per, 1), Layout(1, N * C, B, 1)),)
    return tuple(Problem(n, n + 1, Layout(A, G, per, 1), Layout(A, C, B, 1)) for n in range(N))


def _part(a, problem, whole):
    """The input rows of ``problem`` (``a`` itself when one problem covers it)."""
    if a is None or whole:
        return a
    return a[problem.n0]


def host64(v):
    """A host float64 copy (or view) of a host or device vector; None stays None."""
    if v is None:
        return None
    if hasattr(v, "copy_to_host"):
        v = v.copy_to_host()
    return np.asarray(v, dtype=np.float64)


def _per_channel(v, slay, n0, n1):
    """Per-channel vector ``v`` (C,) repeated for samples ``n0:n1``: (n1 - n0) * C values."""
    if v is None or n1 - n0 == 1:
        return v
    rows = np.empty((n1 - n0, v.size))
    rows[...] = v  # cheaper than np.tile for the few hundred values of a typical call
    return rows.reshape(-1)


def _per_group_channel(v, slay):
    """Per-(sample, group) values (n, G) spread over the group's channels: (n * C,)."""
    per = slay.C // slay.G
    if per == 1:
        return v.reshape(-1)
    spread = np.empty(v.shape + (per,))
    spread[...] = v[..., None]
    return spread.reshape(-1)


class _Output:
    """The full-size result: ``out`` itself, or a new array where ``x`` lives."""

    def __init__(self, backend, x, out, whole):
        self.whole = whole
        if out is None and not whole:
            out = backend.empty(x.shape, x.dtype) if is_device_array(x) else np.empty(
                x.shape, x.dtype)
        self.array = out

    def part(self, problem):
        return _part(self.array, problem, self.whole)


def _contiguous_host(a, whole):
    """Host inputs cut per sample must be C-contiguous for the views to hold no copies."""
    if whole or a is None or not isinstance(a, np.ndarray) or a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a)


def forward_train(backend, x, slay, weight, bias, eps, out):
    """Normalize each (sample, group) with its own statistics.

    Returns ``(y, mean, invstd, m2)``: mean and invstd (N, G) float64 host
    arrays, M2 too (for running statistics).
    """
    w, b = host64(weight), host64(bias)
    if slay.G != slay.C:
        special = backend.group_train(x, slay, w, b, eps, out)
        if special is not None:
            y, mean, m2 = special
            return y, mean, cm.invstd_from_var(m2 / slay.count, eps), m2
    plan = problems(slay)
    whole = len(plan) == 1
    x = _contiguous_host(x, whole)
    result = _Output(backend, x, out, whole)
    mean = np.empty((slay.N, slay.G))
    m2 = np.empty((slay.N, slay.G))
    row_affine = slay.G == slay.C or (w is None and b is None)
    y = result.array
    for p in plan:
        xp, yp = _part(x, p, whole), result.part(p)
        rows = slice(p.n0, p.n1)
        if row_affine:  # the affine is per statistics row: batch norm's fused kernel
            yp, mu, q = backend.forward_train_moments(
                xp, p.stats, _per_channel(w, slay, p.n0, p.n1),
                _per_channel(b, slay, p.n0, p.n1), eps, yp)
            mean[rows], m2[rows] = mu.reshape(-1, slay.G), q.reshape(-1, slay.G)
        else:
            _, mu, q = backend.welford(xp, p.stats)
            mean[rows], m2[rows] = mu.reshape(-1, slay.G), q.reshape(-1, slay.G)
            invstd = cm.invstd_from_var(m2[rows] / slay.count, eps)
            yp = backend.normalize(
                xp, p.apply, _per_group_channel(mean[rows], slay),
                _per_group_channel(invstd, slay), _per_channel(w, slay, p.n0, p.n1),
                _per_channel(b, slay, p.n0, p.n1), yp)
        if whole:
            y = yp
    invstd = cm.invstd_from_var(m2 / slay.count, eps)
    return y, mean, invstd, m2


def normalize(backend, x, slay, mean, invstd, weight, bias, out):
    """``y = (x - mean) * invstd * weight + bias`` with given (N, G) statistics."""
    plan = problems(slay)
    whole = len(plan) == 1
    x = _contiguous_host(x, whole)
    result = _Output(backend, x, out, whole)
    w, b = host64(weight), host64(bias)
    y = result.array
    for p in plan:
        rows = slice(p.n0, p.n1)
        yp = backend.normalize(
            _part(x, p, whole), p.apply, _per_group_channel(mean[rows], slay),
            _per_group_channel(invstd[rows], slay), _per_channel(w, slay, p.n0, p.n1),
            _per_channel(b, slay, p.n0, p.n1), result.part(p))
        if whole:
            y = yp
    return y


def backward(backend, dy, x, slay, mean, invstd, weight, out):
    """``(dx, dweight, dbias)`` through per-(sample, group) batch statistics.

    ``mean``/``invstd`` are (N, G) float64 host arrays; the gradients are
    float64 host vectors (C,).
    """
    w = host64(weight)
    special = backend.group_backward(dy, x, slay, mean, invstd, w, out)
    if special is not None:
        return special
    plan = problems(slay)
    whole = len(plan) == 1
    x = _contiguous_host(x, whole)
    dy = _contiguous_host(dy, whole)
    result = _Output(backend, x, out, whole)
    C, G = slay.C, slay.G
    dweight, dbias = np.zeros(C), np.zeros(C)
    count = float(slay.count)
    dx = result.array
    # 0 * inf is NaN here without NumPy's warning: sigma^-1 is infinite where eps <= 0 met a
    # constant group (PyTorch allows eps <= 0 outside batch norm's training).
    with np.errstate(invalid="ignore"):
        for p in plan:
            rows = slice(p.n0, p.n1)
            n = p.n1 - p.n0
            xp, dyp = _part(x, p, whole), _part(dy, p, whole)
            mean_c = _per_group_channel(mean[rows], slay)
            invstd_c = _per_group_channel(invstd[rows], slay)
            s, q = backend.backward_reduce(dyp, xp, p.apply, mean_c)
            s, q = s.reshape(n, C), q.reshape(n, C)
            dbias += s.sum(axis=0)
            dweight += (q * invstd_c.reshape(n, C)).sum(axis=0)
            ws, wq = (s, q) if w is None else (s * w, q * w)
            s_g = ws.reshape(n, G, C // G).sum(axis=2)
            q_g = wq.reshape(n, G, C // G).sum(axis=2)
            r = invstd[rows]
            k_dy = invstd_c if w is None else invstd_c * _per_channel(w, slay, 0, n)
            k_x = _per_group_channel(-r * r * r * (q_g / count), slay)
            k_0 = _per_group_channel(-r * (s_g / count), slay)
            dxp = backend.backward_apply_coefficients(dyp, xp, p.apply, mean_c, k_dy, k_x, k_0,
                                                      result.part(p))
            if whole:
                dx = dxp
    return dx, dweight, dbias


def backward_rows(backend, dy, x, slay, mean, invstd, weight, out):
    """:func:`backward` when every group is one channel (instance norm): the backend's group
    norm kernel where it has one for the layout, else batch norm's fused kernel."""
    w = host64(weight)
    special = backend.group_backward(dy, x, slay, mean, invstd, w, out)
    if special is not None:
        return special
    plan = problems(slay)
    whole = len(plan) == 1
    x = _contiguous_host(x, whole)
    dy = _contiguous_host(dy, whole)
    result = _Output(backend, x, out, whole)
    dweight, dbias = np.zeros(slay.C), np.zeros(slay.C)
    dx = result.array
    for p in plan:
        rows = slice(p.n0, p.n1)
        n = p.n1 - p.n0
        # float64 weights give float64 per-row gradients, summed over the samples here.
        wr = np.ones(n * slay.C) if w is None else _per_channel(w, slay, 0, n)
        dxp, gw, gb = backend.backward(_part(dy, p, whole), _part(x, p, whole), p.stats,
                                       mean[rows].reshape(-1), invstd[rows].reshape(-1), wr,
                                       True, result.part(p))
        dweight += host64(gw).reshape(n, slay.C).sum(axis=0)
        dbias += host64(gb).reshape(n, slay.C).sum(axis=0)
        if whole:
            dx = dxp
    return dx, dweight, dbias


def deliver_stats(backend, x, *arrays):
    """(N, G) statistics in the saved dtype, where ``x`` lives."""
    dtype = stats_dtype(x.dtype)
    on_device = is_device_array(x)
    return tuple(
        backend.to_backend(a.astype(dtype)) if on_device else a.astype(dtype) for a in arrays
    )
