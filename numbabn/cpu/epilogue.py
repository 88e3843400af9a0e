r"""What batch norm's element loops do around their arithmetic: the fused activation and residual.

Every apply loop of the CPU kernels (normalize, training forward, backward, in
every loop order) stores and loads through the few functions here, so the
fused activation and residual add are written once.

Forward, with :math:`v = x\,\mathrm{scale} + \mathrm{shift}` (float64):

.. math::

    y = \mathrm{act}(\mathrm{round}(v) + r),

where ``round`` is the store into ``y``'s dtype, so the residual add and the
activation are done in that dtype, exactly as the composition
``act(batch_norm(x) + r)`` rounds them (bit for bit the same result).

Backward, the gradient reaching batch norm is the output gradient through the
activation, masked by the sign of the forward's output ``y``:

.. math::

    g = \begin{cases} dy & y > 0 \\
        0 \text{ (ReLU)},\ dy\,\alpha \text{ (leaky ReLU)} & \text{else,}\end{cases}

(ReLU passes ``dy`` where ``y`` is NaN, as PyTorch's ``threshold_backward``
does; leaky ReLU multiplies it by the slope), and the gradient of the
residual is ``g``.

The activation reaches the kernels as an argument whose *type* selects the
code Numba compiles (no branch in the loops): ``None`` for none, ``True``
(a bool) for ReLU, a float (the negative slope) for leaky ReLU, as
:func:`numbabn.functional._activation` makes it.  A residual (or a saved
``y``, or a ``dresidual`` buffer) is an array or ``None``.  With ``None`` everywhere the functions
compile to the plain loads and stores, so the unfused kernels are unchanged.
"""
from numba import types
from numba.extending import intrinsic, overload

# The functions below are specifications for Python readers; Numba compiles
# the overloads that follow each one, chosen by the argument types.

def store(y, i, v, act, r):
    """``y[i] = act(y.dtype(v) + r[i])``; ``act`` and ``r`` may be None."""


def view(r, idx):
    """``r[idx]``, or None when ``r`` is None (a row or a segment of an optional array)."""


def grad(dy, i, y, act):
    """``dy[i]`` through the activation's derivative at ``y[i]`` (``dy[i]`` when ``y`` is None)."""


def keep(dr, i, g):
    """``dr[i] = g`` when ``dr`` is an array; nothing when it is None."""


def into(x, out):
    """The array a loop writes: ``out``, or ``x`` itself when ``out`` is None (in place; see
    :func:`numbabn.cpu._arrays.unless_in_place`)."""


def _is_none(t):
    return t is None or isinstance(t, types.NoneType)


@intrinsic
def _select(typingctx, cond, a, b):
    """``a if cond else b`` as one LLVM ``select``.

    A conditional expression inlined into a ``prange`` body leaves a phi node
    that Numba's parallel passes warn about (NumbaIRAssumptionWarning); a
    select is no branch at all, and vectorizes the same.
    """
    if not isinstance(cond, types.Boolean) or a != b:
        return None

    def codegen(context, builder, signature, args):
        return builder.select(*args)
    return a(cond, a, b), codegen


@overload(into)
def _into(x, out):
    if _is_none(out):
        return lambda x, out: x
    return lambda x, out: out


@overload(view, inline="always")
def _view(r, idx):
    if _is_none(r):
        return lambda r, idx: None
    return lambda r, idx: r[idx]


@overload(store, inline="always")
def _store(y, i, v, act, r):
    dt = y.dtype
    if _is_none(act):
        if _is_none(r):
            def plain(y, i, v, act, r):
                y[i] = v
            return plain

        def add(y, i, v, act, r):
            y[i] = dt(v) + r[i]
        return add
    relu = isinstance(act, types.Boolean)
    if _is_none(r):
        if relu:
            def relu_store(y, i, v, act, r):
                w = dt(v)
                # Not ``max``: a NaN stays NaN (np.maximum and torch.relu propagate it).
                y[i] = _select(w < 0, dt(0), w)
            return relu_store

        def leaky_store(y, i, v, act, r):
            w = dt(v)
            y[i] = _select(w > 0, w, w * dt(act))
        return leaky_store
    if relu:
        def relu_add(y, i, v, act, r):
            w = dt(v) + r[i]
            y[i] = _select(w < 0, dt(0), w)
        return relu_add

    def leaky_add(y, i, v, act, r):
        w = dt(v) + r[i]
        y[i] = _select(w > 0, w, w * dt(act))
    return leaky_add


@overload(grad, inline="always")
def _grad(dy, i, y, act):
    if _is_none(y):
        return lambda dy, i, y, act: dy[i]
    dt = dy.dtype
    if isinstance(act, types.Boolean):
        def relu(dy, i, y, act):
            return _select(y[i] <= 0, dt(0), dy[i])
        return relu

    def leaky(dy, i, y, act):
        d = dy[i]
        return _select(y[i] > 0, d, d * dt(act))
    return leaky


@overload(keep, inline="always")
def _keep(dr, i, g):
    if _is_none(dr):
        return lambda dr, i, g: None

    def write(dr, i, g):
        dr[i] = g
    return write
