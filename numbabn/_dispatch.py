"""Picks the backend that serves a call, from the arrays and ``device=``.

This is the only place that knows which backends exist.  A backend is a
module conforming to :class:`numbabn._backend.Backend`.
"""
import sys

import numpy as np

DEVICES = ("auto", "cpu", "cuda")

#: The CUDA simulator's device-array module; its arrays have no ``__cuda_array_interface__``.
_SIMULATOR_ARRAYS = "numba.cuda.simulator.cudadrv.devicearray"


class CudaUnavailableError(RuntimeError):
    """CUDA was asked for (``device="cuda"`` or a device array) but cannot be used here."""


#: Packages whose array types always live on a device (unlike torch.Tensor, whose
#: CPU tensors raise on ``__cuda_array_interface__``): their answer is kept per type.
_DEVICE_ONLY_PACKAGES = ("numba", "cupy")
_device_types = set()


def is_device_array(a):
    """True for arrays that live on a CUDA device.

    That is anything exposing ``__cuda_array_interface__`` (Numba, CuPy,
    PyTorch CUDA tensors) and, under the CUDA simulator, its ``FakeCUDAArray``.
    Never imports ``numba.cuda``: a simulator array can only exist once the
    simulator module is loaded.  Called several times per call, so Numba and
    CuPy arrays are recognised by type, without building their interface dict.
    """
    if a is None or isinstance(a, np.ndarray):
        return False
    if type(a) in _device_types:
        return True
    try:
        found = hasattr(a, "__cuda_array_interface__")
    except Exception:  # a property that raises for host tensors
        return False
    if not found:
        simulator = sys.modules.get(_SIMULATOR_ARRAYS)
        found = simulator is not None and isinstance(a, simulator.FakeCUDAArray)
    if found and type(a).__module__.split(".")[0] in _DEVICE_ONLY_PACKAGES:
        _device_types.add(type(a))
    return found


def cuda_available():
    """True when the CUDA backend can run here (a GPU, or the CUDA simulator)."""
    return _cuda_problem() is None


def _cuda_problem():
    """Why CUDA cannot be used here, or None when it can."""
    try:
        from .cuda import _runtime
    except ImportError as err:
        return f"numba.cuda cannot be imported ({err}); install numbabn[cuda]"
    return _runtime.unavailable_reason()


def _cuda_backend():
    problem = _cuda_problem()
    if problem is not None:
        raise CudaUnavailableError(f"the CUDA backend cannot run here: {problem}")
    from .cuda import backend

    return backend


def check_placement(x, **arrays):
    """Raise ``ValueError`` unless each array (None: absent) lives where ``x`` lives."""
    on_device = is_device_array(x)
    for name, a in arrays.items():
        if a is not None and is_device_array(a) != on_device:
            where = ("on the host", "a CUDA device array") if on_device else (
                "a CUDA device array", "on the host")
            raise ValueError(
                f"{name} is {where[0]} but x is {where[1]}; full-size arrays must live "
                "where x lives (copy one of them first)"
            )


def select_backend(device, x, *arrays):
    """Return the backend module for ``device`` ("auto", "cpu" or "cuda") and input ``x``.

    ``arrays`` are the other full-size arrays of the call (``dy``, ``out``;
    None where absent).  They must live where the result is returned: on the
    device with a device ``x``, on the host with a host ``x``.  Per-channel
    vectors are not checked here: the CUDA backend moves host ones itself.
    """
    if type(device) is str and device in ("auto", "cpu") and _all_host(x, arrays):
        return _cpu_backend()
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    check_placement(x, **dict(zip(("dy", "out"), arrays)))
    on_device = is_device_array(x)
    if device == "auto":
        device = "cuda" if on_device else "cpu"
    if device == "cuda":
        return _cuda_backend()
    if on_device:
        raise ValueError(
            "x is a CUDA device array but device='cpu' was asked for; "
            "copy it to the host first or use device='auto'"
        )
    return _cpu_backend()


def _all_host(x, arrays):
    """True when ``x`` and every other array is a plain NumPy array (or None): the common case."""
    if type(x) is not np.ndarray:
        return False
    for a in arrays:
        if a is not None and type(a) is not np.ndarray:
            return False
    return True


_cpu = None


def _cpu_backend():
    global _cpu
    if _cpu is None:  # imported on first use: importing numbabn compiles nothing
        from .cpu import backend

        _cpu = backend
    return _cpu
