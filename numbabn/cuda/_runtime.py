"""The one door to ``numba.cuda``: every module of numbabn imports it from here.

It applies the NumPy compatibility alias below before ``numba.cuda`` is first
imported, and wraps the few device queries and array conversions that differ
between a real GPU and the CUDA simulator.
"""
import numpy as np

# numba-cuda 0.30 registers an overload for ``np.row_stack`` when it loads;
# NumPy 2.5 removed that alias of ``np.vstack`` (deprecated since 2.0), so the
# import fails with AttributeError on a current NumPy.  Restore the alias.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

from numba import config as _numba_config  # noqa: E402
from numba import cuda  # noqa: E402

from .._dispatch import is_device_array  # noqa: E402

SIMULATED = bool(_numba_config.ENABLE_CUDASIM)
if SIMULATED:
    _DeviceNDArray = None
else:
    from numba.cuda.cudadrv.devicearray import DeviceNDArray as _DeviceNDArray

_sm_count = None


def unavailable_reason():
    """Why no GPU (or simulator) can be used, or None when one can."""
    try:
        if cuda.is_available():
            return None
    except Exception as err:  # a broken driver installation
        return f"numba.cuda.is_available() failed: {err}"
    return "no CUDA GPU or driver was found (numba.cuda.is_available() is False)"


def multiprocessor_count():
    """Streaming multiprocessors of the current device (2 under the simulator)."""
    global _sm_count
    if _sm_count is None:
        count = getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", None)
        _sm_count = int(count) if count else 2
    return _sm_count


#: ``__cuda_array_interface__`` stream values of the legacy and per-thread default streams.
_DEFAULT_STREAMS = (None, 1, 2)


def device_view(a):
    """A Numba device array sharing ``a``'s memory (``a`` is a device array).

    The kernels run on the legacy default stream, which already waits for work
    on the default streams; only an array exported from another stream (say a
    ``torch.cuda.Stream``) makes the host wait for that stream first.  Numba's
    own default would synchronize for every array, at every call.
    """
    if SIMULATED or isinstance(a, _DeviceNDArray):
        return a
    interface = a.__cuda_array_interface__
    sync = interface.get("stream") not in _DEFAULT_STREAMS
    return cuda.from_cuda_array_interface(interface, owner=a, sync=sync)


def is_c_contiguous(a):
    """C-contiguity of a Numba (or simulator) device array."""
    return a.is_c_contiguous()


def alias(a, shape, strides):
    """A device array over ``a``'s memory with another shape and byte strides (no copy)."""
    if SIMULATED:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(np.lib.stride_tricks.as_strided(a._ary, shape, strides))
    return _DeviceNDArray(shape, strides, a.dtype, stream=a.stream, gpu_data=a.gpu_data)


def to_device(a):
    return cuda.to_device(np.ascontiguousarray(a))


def empty(shape, dtype):
    return cuda.device_array(shape, dtype=dtype)


__all__ = ["cuda", "is_device_array", "SIMULATED"]
