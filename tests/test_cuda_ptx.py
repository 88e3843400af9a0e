"""Every CUDA kernel compiles for a real GPU (sm_90 PTX), with no GPU needed.

The simulator runs kernels as Python, so it cannot catch what only the CUDA
compiler rejects (typing, casts to float16).  This test compiles each kernel
to PTX; it needs NVIDIA's NVVM/NVRTC libraries (``pip install
"numba-cuda[cu13]"``) and is skipped without them.
"""
import types

import pytest

numba_types = pytest.importorskip("numba.types")

F16, F32, F64 = numba_types.float16, numba_types.float32, numba_types.float64
I64, BOOL = numba_types.int64, numba_types.boolean


def _array(dtype, ndim, layout="C"):
    return numba_types.Array(dtype, ndim, layout)


def _vec(dtype):
    return numba_types.Array(dtype, 1, "A")


PART = _array(F64, 2)


def _signatures():
    from numbabn.cuda import elementwise, finalize, reduce

    sigs = []
    for x, acc in [(F16, F32), (F32, F32), (F64, F64)]:
        normalize, backward_apply, normalize_fused, mask_grad = elementwise.KERNELS[acc]
        sigs += [
            (normalize_fused, (_array(x, 2), I64, _vec(F64), _vec(F16), BOOL, F64, _vec(x), BOOL,
                               _vec(F64), BOOL, I64, F64, _array(x, 2), BOOL, _array(x, 2))),
            (mask_grad, (_array(x, 2), _array(x, 2), I64, F64, _array(x, 2))),
            (reduce.moments_planes, (_array(x, 3), PART, PART, PART)),
            (reduce.moments_rows, (_array(x, 2), PART, PART, PART)),
            (reduce.sums_planes, (_array(x, 3), _array(x, 3), _vec(F64), PART, PART)),
            (reduce.sums_rows, (_array(x, 2), _array(x, 2), I64, _vec(x), PART, PART)),
            (normalize, (_array(x, 2), I64, _vec(F64), _vec(F16), BOOL, F64, _vec(x), BOOL,
                         _vec(F64), BOOL, _array(x, 2))),
            (backward_apply, (_array(x, 2), _array(x, 2), I64, _vec(F32), PART, BOOL,
                              _array(x, 2))),
        ]
    sigs += [
        (finalize.welford_stats, (PART, PART, PART, I64, PART)),
        (finalize.moment_stats, (PART, PART, PART, I64, F64, _array(F32, 2))),
        (finalize.train_stats, (PART, PART, PART, I64, F64, F64, BOOL, _vec(F16), _vec(F16),
                                _array(F32, 2), PART)),
        (finalize.sum_stats, (PART, PART, I64, PART)),
        (finalize.backward_stats, (PART, PART, I64, F64, _vec(F16), _vec(F32), BOOL, BOOL,
                                   _array(F16, 2), PART)),
    ]
    return sigs + _row_signatures()


def _row_signatures():
    """Layer norm and RMS norm kernels (numbabn.cuda.rownorm)."""
    from numbabn.cuda import rownorm

    sigs = [(rownorm.column_sums, (_array(F64, 3), PART))]
    for x, acc, stats in [(F16, F32, F32), (F32, F32, F32), (F64, F64, F64)]:
        forward, backward = rownorm.KERNELS[acc]
        sigs += [
            (forward, (_array(x, 2), _vec(F64), BOOL, _vec(x), BOOL, F64, BOOL, _array(x, 2),
                       _array(stats, 2))),
            (backward, (_array(x, 2), _array(x, 2), _vec(F32), _vec(F64), _vec(x), BOOL, BOOL,
                        _array(x, 2), _array(F64, 3))),
        ]
    return sigs


def test_kernels_compile_to_ptx(monkeypatch):
    from numbabn.cuda import _runtime

    if _runtime.SIMULATED:
        pytest.skip("the simulator does not compile")
    cuda = _runtime.cuda
    import numba.cuda.dispatcher as dispatcher

    # Device functions ask the current device for its compute capability.
    monkeypatch.setattr(dispatcher, "get_current_device",
                        lambda: types.SimpleNamespace(compute_capability=(9, 0)))
    try:
        cuda.compile_ptx(lambda a: None, numba_types.void(_vec(F32)), cc=(9, 0))
    except Exception as err:  # NVVM / NVRTC libraries not installed
        pytest.skip(f"no CUDA compiler libraries here: {type(err).__name__}: {err}"[:200])
    for kernel, args in _signatures():
        ptx, _ = cuda.compile_ptx(kernel.py_func, numba_types.void(*args), cc=(9, 0))
        assert ".entry" in ptx
