"""The formulas of :mod:`numbabn._formulas`, compiled as CUDA device functions."""
from .. import _formulas
from ._runtime import cuda

chan_merge = cuda.jit(device=True)(_formulas.chan_merge)
invstd = cuda.jit(device=True)(_formulas.invstd)
affine = cuda.jit(device=True)(_formulas.affine)
backward_coefficients = cuda.jit(device=True)(_formulas.backward_coefficients)
renorm_correction = cuda.jit(device=True)(_formulas.renorm_correction)
