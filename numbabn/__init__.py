"""numbabn: framework-free batch normalization with Numba kernels.

Importing the package compiles nothing; kernels compile on first use and are
cached on disk.
"""
from ._dispatch import CudaUnavailableError, cuda_available
from .distributed import RankInputError, sync_batch_norm_backward, sync_batch_norm_forward
from .functional import batch_norm, batch_norm_backward, batch_norm_forward, channel_moments

__version__ = "0.1.0"

__all__ = [
    "CudaUnavailableError",
    "RankInputError",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_forward",
    "channel_moments",
    "cuda_available",
    "sync_batch_norm_backward",
    "sync_batch_norm_forward",
]
