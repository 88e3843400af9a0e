#!/usr/bin/env bash
# Everything a session with a GPU needs, in one call of about 5 minutes:
#   1. the CUDA suite (tests/cuda_sim) on the real GPU, plus the dispatch/PTX tests;
#   2. python -m numbabn check (every backend against a float64 reference);
#   3. compute-sanitizer memcheck and racecheck over small shapes of every kernel;
#   4. benchmarks/gpu_compare.py (numbabn vs PyTorch, float32, all issue shapes).
# Logs go to $OUT (or ./gpu-session-logs); the comparison table is printed last.
# Run it from the repository root with the image's python3 (no install needed):
#   bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-gpu-session-logs}
mkdir -p "$LOGS"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
status=0

step() { echo "== $1"; }

step "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import numpy, numba, numba_cuda, torch; print('numpy', numpy.__version__, \
'numba', numba.__version__, 'numba-cuda', numba_cuda.__version__, 'torch', torch.__version__)"
  python3 -m numbabn info; } 2>&1 | tee "$LOGS/env.txt"

step "CUDA suite on the GPU"
timeout 300 python3 -m pytest -q -o addopts=-ra -p no:cacheprovider tests/cuda_sim tests/test_cuda_ptx.py \
  tests/test_cuda_dispatch.py -k "not simulator" 2>&1 | tee "$LOGS/suite.txt" | tail -15 || status=1

step "numbabn check"
timeout 120 python3 -m numbabn check 2>&1 | tee "$LOGS/check.txt" | tail -4 || status=1

step "compute-sanitizer (memcheck, racecheck) at small shapes"
# the CUDA cases of `numbabn check` only: forward, backward and moments, f32 and f64
CUDA_CASES='from numbabn import _selfcheck as s
for dtype in ("float32", "float64"):
    for shape, axis in s.CASES:
        print(dtype, shape, axis, s.run_case("cuda", shape, axis, dtype))'
for tool in memcheck racecheck; do
  timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 9 \
    python3 -c "$CUDA_CASES" > "$LOGS/sanitizer-$tool.txt" 2>&1
  rc=$?
  echo "$tool: exit $rc ($(grep -c 'ERROR SUMMARY: 0 errors' "$LOGS/sanitizer-$tool.txt") clean summaries)"
  grep -m3 "ERROR SUMMARY\|RACE REPORT\|Invalid" "$LOGS/sanitizer-$tool.txt"
  [ "$rc" -eq 0 ] || status=1
done

step "numbabn vs PyTorch"
timeout 300 python3 benchmarks/gpu_compare.py 2>&1 | tee "$LOGS/compare.txt" | grep -v '^done' \
  || status=1
exit $status
