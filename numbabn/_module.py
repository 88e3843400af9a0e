"""The base every layer shares: parameters, buffers, modes, state dicts and device moves.

It plays the part of ``torch.nn.Module`` for numbabn's layers, and no more:
a layer registers its parameters (learned arrays, each with a ``grad_<name>``
that its ``backward`` sets) and buffers (running statistics and counters) by
name, and inherits ``train``/``eval``, ``state_dict``/``load_state_dict``
under those names (PyTorch's keys), and ``to("cpu" | "cuda")``.  What a layer
computes lives in its own module (:mod:`numbabn.batchnorm`,
:mod:`numbabn.instancenorm`, :mod:`numbabn.normalization`).
"""
import numbers
import sys

import numpy as np

from . import _dispatch
from . import _validate as v


#: Outputs smaller than this come from the allocator's free lists, which keep them mapped.
KEEP_BYTES = 1 << 18


def _references(holder, name):
    """References to ``holder[name]``, counted the same way for the probe below and in use."""
    return sys.getrefcount(holder.get(name))


#: The count of an array that only its holder refers to (interpreters count differently).
_IDLE_REFERENCES = _references({"probe": np.empty(1)}, "probe")


class Module:
    """Parameters, buffers, training mode and device placement of a layer.

    Parameters
    ----------
    dtype : float16, float32 or float64
        Dtype of the floating parameters and buffers.

    Attributes
    ----------
    training : bool
    device : {"cpu", "cuda"}
    dtype : numpy.dtype
    reuse_outputs : bool, default True
        Write the next output (``y``, and ``dx`` of ``backward``) into the
        memory of the last one once nothing outside the layer refers to it;
        the layer then holds that memory while it lives.
    """

    #: Write each output into the memory of the last one once nobody else refers to it
    #: (:meth:`_output_buffer`); False (on a layer, or on a class) allocates every output.
    reuse_outputs = True

    def __init__(self, *, dtype=np.float32):
        self.dtype = v.float_dtype("dtype", dtype)
        self.device = "cpu"
        self.training = True
        self._parameter_names = []
        self._buffer_names = []
        self._saved = None
        self._outputs = {}

    # ------------------------------------------------------------------ registration

    def register_parameter(self, name, value):
        """Add a learned array (or None, for an absent one) and its ``grad_<name>`` (None)."""
        self._parameter_names.append(name)
        setattr(self, name, value)
        setattr(self, "grad_" + name, None)

    def register_affine(self, shape, affine, bias):
        """``weight`` (ones) and ``bias`` (zeros) of ``shape`` when ``affine``, the bias only
        when ``bias`` too (PyTorch's ``bias=False``); absent ones are None."""
        self.register_parameter("weight", np.ones(shape, self.dtype) if affine else None)
        self.register_parameter(
            "bias", np.zeros(shape, self.dtype) if affine and bias else None)

    def register_buffer(self, name, value):
        """Add a buffer: a floating array, an integer counter (a Python int), or None."""
        self._buffer_names.append(name)
        setattr(self, name, value)

    def _float_names(self):
        """Names of the floating arrays held (parameters, then buffers), absent ones left out."""
        return [
            n for n in self._parameter_names + self._buffer_names
            if getattr(self, n) is not None and not isinstance(getattr(self, n), numbers.Integral)
        ]

    def _clear_grads(self):
        for name in self._parameter_names:
            setattr(self, "grad_" + name, None)

    # ------------------------------------------------------------------ modes

    def train(self, mode=True):
        """Set training mode; returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Set inference mode; returns self."""
        return self.train(False)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ input placement

    def _host_or_device(self, a):
        """``a`` as an array: device arrays as they are, anything else through ``np.asarray``."""
        if isinstance(a, np.ndarray) or _dispatch.is_device_array(a):
            return a
        return np.asarray(a)

    def _check_placement(self, x):
        """Raise ``ValueError`` unless ``x`` lives where the layer's arrays live."""
        on_device = _dispatch.is_device_array(x)
        if on_device != (self.device == "cuda"):
            where = "a CUDA device array" if on_device else "a host array"
            raise ValueError(
                f"the input is {where} but the layer's parameters are on {self.device!r}; "
                f"move one of them (layer.to(...))"
            )

    def _backward_input(self, dy, shape=None):
        """``dy`` as an array, checked against the last forward (whose context ``_saved``
        starts with its input): ``RuntimeError`` without a forward, ``ValueError`` unless
        ``dy`` has ``shape`` (default: the forward's input shape)."""
        if self._saved is None:
            raise RuntimeError("backward called before forward: call the layer on an input first")
        shape = tuple(self._saved[0].shape if shape is None else shape)
        dy = self._host_or_device(dy)
        if tuple(dy.shape) != shape:
            raise ValueError(
                f"dy must have the shape of the forward's input {shape}, got {tuple(dy.shape)}"
            )
        return dy

    # ------------------------------------------------------------------ output buffers

    def _output_buffer(self, name, like):
        """The memory of the array this layer last returned as ``name``, to be written
        again (shaped as ``like``), or None.

        In a training loop each step drops the arrays of the step before, and
        NumPy's allocator (glibc) gives their memory back to the system: the
        next step's fresh outputs are faulted in page by page inside the
        kernels that write them (in ``bench --loop``'s conv-like step, 3.2 MB
        per output, that made the layer's forward and backward 2.3x slower).
        So a layer keeps the memory of what it returned, and writes the next
        result into it when nothing outside the layer refers to it any more (no
        name, no view, no ``out=`` elsewhere: the reference count of the array
        that owns it says so) and it fits ``like``: same size and dtype, both
        C-contiguous.
        """
        if (type(like) is not np.ndarray or name not in self._outputs
                or _references(self._outputs, name) != _IDLE_REFERENCES):
            return None
        kept = self._outputs[name]
        if kept.dtype != like.dtype or kept.size != like.size or not like.flags.c_contiguous:
            return None
        return kept.reshape(like.shape)

    def _keep_output(self, name, y):
        """Keep the memory of ``y`` (a C-contiguous host array of at least ``KEEP_BYTES``
        that is, or views all of, the array owning it) for :meth:`_output_buffer`;
        returns ``y``."""
        owner = y.base if type(y) is np.ndarray and y.base is not None else y
        if (self.reuse_outputs and type(owner) is np.ndarray and owner.base is None
                and owner.nbytes >= KEEP_BYTES
                and owner.flags.c_contiguous and y.flags.c_contiguous
                and owner.nbytes == y.nbytes):
            self._outputs[name] = owner
        else:
            self._outputs.pop(name, None)
        return y

    # ------------------------------------------------------------------ state

    def _state_keys(self):
        return tuple(
            n for n in self._parameter_names + self._buffer_names if getattr(self, n) is not None
        )

    def state_dict(self):
        """Copies of the parameters and buffers under PyTorch's key names.

        Returns
        -------
        dict
            Parameters first, then buffers, each present one as a host NumPy
            array (integer counters as 0-d int64 arrays).
        """
        state = {}
        for key in self._state_keys():
            value = getattr(self, key)
            if isinstance(value, numbers.Integral):
                state[key] = np.array(value, dtype=np.int64)
            else:
                state[key] = to_host(value).copy()
        return state

    def load_state_dict(self, state_dict):
        """Copy parameters and buffers from ``state_dict`` (as made by :meth:`state_dict`).

        The keys must be exactly those of :meth:`state_dict`, each array of the
        shape the layer holds with a floating dtype that converts to the
        layer's dtype without loss, and integer counters non-negative integer
        scalars.  A PyTorch module's state with its tensors converted by
        ``.numpy()`` qualifies.  Everything is checked before anything is
        written: a refused state leaves the layer unchanged.

        Raises
        ------
        ValueError
            Missing or unexpected keys, wrong shapes, negative counts.
        TypeError
            Non-floating arrays, lossy float conversions, non-integer counts.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        expected = self._state_keys()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict.keys() if k not in expected]
        if missing or unexpected:
            raise ValueError(
                f"error loading state into {type(self).__name__}: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        checked = {key: self._checked_state_value(key, state_dict[key]) for key in expected}
        for key, value in checked.items():
            if isinstance(getattr(self, key), numbers.Integral):
                setattr(self, key, value)
            elif self.device == "cpu":
                getattr(self, key)[...] = value  # in place: references users hold stay valid
            else:
                setattr(self, key, self._to_device(value))

    def _checked_state_value(self, key, value):
        value = np.asarray(to_host(value))
        held = getattr(self, key)
        if isinstance(held, numbers.Integral):
            if value.shape not in ((), (1,)) or not np.issubdtype(value.dtype, np.integer):
                raise TypeError(
                    f"{key} must be an integer scalar, got {value.dtype} "
                    f"array of shape {value.shape}"
                )
            count = int(value.reshape(()))
            if count < 0:
                raise ValueError(f"{key} must be >= 0, got {count}")
            return count
        if value.dtype.kind != "f":
            raise TypeError(f"{key} must have a floating dtype, got {value.dtype}")
        if not np.can_cast(value.dtype, self.dtype, casting="safe"):
            raise TypeError(
                f"{key} has dtype {value.dtype}, which does not convert to the layer's "
                f"{self.dtype} without loss; build the layer with dtype={value.dtype} "
                f"or cast the state first"
            )
        if value.shape != tuple(held.shape):
            raise ValueError(f"{key} must have shape {tuple(held.shape)}, got {value.shape}")
        return value.astype(self.dtype)

    # ------------------------------------------------------------------ device

    def to(self, device):
        """Move parameters and buffers to ``"cpu"`` or ``"cuda"``; returns self.

        Raises :class:`numbabn.CudaUnavailableError` when CUDA cannot be used.
        The saved forward context, gradients and kept outputs are dropped.
        """
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == self.device:
            return self
        move = to_cuda if device == "cuda" else to_host
        moved = {n: move(getattr(self, n)) for n in self._float_names()}
        for name, value in moved.items():
            setattr(self, name, value)
        self.device = device
        self._saved = None
        self._outputs.clear()
        self._clear_grads()
        return self

    def _to_device(self, host_array):
        """``host_array`` where the layer's arrays live."""
        return host_array if self.device == "cpu" else to_cuda(host_array)


def to_cuda(a):
    """A device copy of a host array; raises CudaUnavailableError where CUDA cannot be used."""
    return _dispatch.select_backend("cuda", None).to_device(a)


def to_host(a):
    """A host array for a host or device array (device arrays are copied)."""
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a


def check_count(name, value, least=1):
    """An integer hyperparameter such as ``num_features`` (TypeError / ValueError otherwise)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, got {value}")
    return int(value)


def check_axis(axis):
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an integer, got {axis!r}")
    return int(axis)
