"""numbabn: framework-free batch normalization with Numba kernels.

Importing the package compiles nothing; kernels compile on first use and are
cached on disk.
"""
from ._accumulate import ChannelMoments
from ._dispatch import CudaUnavailableError, cuda_available
from ._state_io import load, save
from .distributed import (
    RankInputError,
    SyncBatchNorm,
    sync_batch_norm_backward,
    sync_batch_norm_forward,
)
from .functional import (
    batch_norm,
    batch_norm_backward,
    batch_norm_forward,
    channel_moments,
    group_norm,
    group_norm_backward,
    group_norm_forward,
    instance_norm,
    instance_norm_backward,
    instance_norm_forward,
)
from .batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from .functional_rows import (
    layer_norm,
    layer_norm_backward,
    layer_norm_forward,
    rms_norm,
    rms_norm_backward,
    rms_norm_forward,
)

from .batchrenorm import BatchRenorm, BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
from .functional_renorm import batch_renorm, batch_renorm_backward, batch_renorm_forward
from .instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .normalization import GroupNorm, LayerNorm, RMSNorm

__version__ = "0.1.0"

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchRenorm",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "ChannelMoments",
    "CudaUnavailableError",
    "LayerNorm",
    "RMSNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "RankInputError",
    "SyncBatchNorm",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_renorm",
    "batch_renorm_backward",
    "batch_renorm_forward",
    "channel_moments",
    "cuda_available",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
    "group_norm",
    "group_norm_backward",
    "group_norm_forward",
    "instance_norm",
    "instance_norm_backward",
    "instance_norm_forward",
    "load",
    "rms_norm",
    "rms_norm_backward",
    "rms_norm_forward",
    "save",
    "sync_batch_norm_backward",
    "sync_batch_norm_forward",
]
