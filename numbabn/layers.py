"""Former home of the batch-norm layers, kept so that ``numbabn.layers`` imports keep working.

The layers now live one family per module, as PyTorch splits them:
:mod:`numbabn.batchnorm`, :mod:`numbabn.instancenorm` and
:mod:`numbabn.normalization`, on the shared base :mod:`numbabn._module`.
"""
from . import functional as F  # noqa: F401  (tests and users patch layers.F)
from .batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d  # noqa: F401
