"""CPU backend: ``@njit(parallel=True)`` kernels on (A, C, B) views."""
