"""numbabn: framework-free batch normalization with Numba kernels.

Importing the package compiles nothing; kernels compile on first use and are
cached on disk.
"""
from ._dispatch import CudaUnavailableError, cuda_available
from ._state_io import load, save
from .distributed import (
    RankInputError,
    SyncBatchNorm,
    sync_batch_norm_backward,
    sync_batch_norm_forward,
)
from .fold import fold_batch_norm, fuse_conv_bn_weights, fuse_linear_bn_weights
from .functional import batch_norm, batch_norm_backward, batch_norm_forward, channel_moments
from .batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "CudaUnavailableError",
    "RankInputError",
    "SyncBatchNorm",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_forward",
    "channel_moments",
    "cuda_available",
    "fold_batch_norm",
    "fuse_conv_bn_weights",
    "fuse_linear_bn_weights",
    "load",
    "save",
    "sync_batch_norm_backward",
    "sync_batch_norm_forward",
]
