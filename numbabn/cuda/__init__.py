"""The CUDA backend: ``numba.cuda`` kernels and their launchers.

Imported only when CUDA is used (``device="cuda"``, a device array, or
:func:`numbabn.cuda_available`); ``import numbabn`` never loads it.
:mod:`numbabn.cuda.backend` has the same functions as :mod:`numbabn.cpu.backend`.
"""
