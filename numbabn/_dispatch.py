"""Picks the backend that serves a call, from the arrays and ``device=``.

This is the only place that knows which backends exist.  A backend is a
module with the functions of :mod:`numbabn.cpu.backend`.
"""
DEVICES = ("auto", "cpu", "cuda")


class CudaUnavailableError(RuntimeError):
    """CUDA was asked for (``device="cuda"`` or a device array) but cannot be used here."""


def is_device_array(a):
    """True for arrays that live on a CUDA device (``__cuda_array_interface__``)."""
    try:
        return hasattr(a, "__cuda_array_interface__")
    except Exception:  # a property that raises for host tensors
        return False


def cuda_available():
    """True when the CUDA backend can run here.  It is not built yet."""
    return False


def _cuda_backend():
    raise CudaUnavailableError(
        "the CUDA backend is not available in this build of numbabn; use device='cpu'"
    )


def select_backend(device, x):
    """Return the backend module for ``device`` ("auto", "cpu" or "cuda") and input ``x``."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
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
    from .cpu import backend

    return backend
