"""Measure thread-policy candidates for the training-loop workloads, each in a fresh process.

Not an asv benchmark: ``python benchmarks/loop_candidates.py [--rounds R] [--budget S]``.
Every configuration (environment variables, BLAS limit, serial threshold) runs in
its own new Python process, because the OpenMP runtime reads its settings once,
when it starts; the configurations take turns, round after round, so that they
share the machine's load, and the table gives the median over rounds of each
process's ms per step (and the spread: min-max over rounds).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, os, sys
cfg = json.loads(sys.argv[1])
import numpy as np
if cfg.get("blas") is not None:
    from threadpoolctl import threadpool_limits
    _limit = threadpool_limits(cfg["blas"], user_api="blas")
if cfg.get("serial_max") is not None:
    from numbabn.cpu import _chunks
    _chunks.SERIAL_MAX_ELEMENTS = cfg["serial_max"]
from numbabn import _bench_loop as bl
import numba
out = {}
for name in cfg["workloads"]:
    step = bl.numpy_step(name, cfg["impl"])
    times = sorted(bl.block_times({"s": step}, cfg["budget"], cfg["blocks"])["s"])
    out[name] = [1e3 * times[0], 1e3 * times[len(times) // 2]]  # min and median block
try:
    layer = numba.threading_layer()
except ValueError:
    layer = "-"
out["_layer"] = layer
print(json.dumps(out))
"""

# name -> (environment, impl, BLAS thread limit or None, serial threshold or None)
OFF = {"NUMBABN_THREAD_POLICY": "off"}  # what a user could set by hand before the policy
CONFIGS = {
    "numpy BN": (OFF, "numpy", None, None),
    "numpy BN, BLAS 1": (OFF, "numpy", 1, None),
    "numbabn policy (default)": ({}, "numbabn", None, None),
    "policy off (old default)": (OFF, "numbabn", None, None),
    "NUMBA_NUM_THREADS=1": (dict(OFF, NUMBA_NUM_THREADS="1"), "numbabn", None, None),
    "OMP_WAIT_POLICY=passive": (dict(OFF, OMP_WAIT_POLICY="passive"), "numbabn", None, None),
    "GOMP_SPINCOUNT=10000": (dict(OFF, GOMP_SPINCOUNT="10000"), "numbabn", None, None),
    "GOMP_SPINCOUNT=3000": (dict(OFF, GOMP_SPINCOUNT="3000"), "numbabn", None, None),
    "layer workqueue": (dict(OFF, NUMBA_THREADING_LAYER="workqueue"), "numbabn", None, None),
    "layer tbb": (dict(OFF, NUMBA_THREADING_LAYER="tbb"), "numbabn", None, None),
    "BLAS 1 thread": (OFF, "numbabn", 1, None),
    "BLAS 1 + passive": (dict(OFF, OMP_WAIT_POLICY="passive"), "numbabn", 1, None),
    "BLAS 1 + NUMBA 1": (dict(OFF, NUMBA_NUM_THREADS="1"), "numbabn", 1, None),
    "serial below 1M elements": (OFF, "numbabn", None, 1 << 20),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.03, help="seconds per block")
    parser.add_argument("--blocks", type=int, default=15, help="blocks per process")
    parser.add_argument("--only", help="comma-separated config names")
    parser.add_argument("--json")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from numbabn._bench_loop import WORKLOADS

    configs = CONFIGS if not args.only else {k: CONFIGS[k] for k in args.only.split(",")}
    workloads = list(WORKLOADS)
    runs = {name: [] for name in configs}
    for r in range(args.rounds):
        for name, (env, impl, blas, serial_max) in configs.items():
            cfg = {"impl": impl, "blas": blas, "serial_max": serial_max,
                   "workloads": workloads, "budget": args.budget, "blocks": args.blocks}
            child_env = dict(os.environ, **env)
            if env.get("NUMBA_THREADING_LAYER") == "tbb":
                child_env["LD_LIBRARY_PATH"] = os.path.join(sys.prefix, "lib")
            done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], env=child_env,
                                  capture_output=True, text=True)
            if done.returncode:
                print(name, "failed:", done.stderr[-500:], file=sys.stderr)
                continue
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    # Each process gives the min and the median over its blocks; the table gives, over the
    # processes (rounds), the smallest min ("quiet": the machine's load only ever adds time)
    # and the median of the medians ("typical").
    head = f"{'configuration':<28}{'layer':>10}" + "".join(f"{w:>24}" for w in workloads)
    lines = [head, f"{'':<38}" + "".join(f"{'quiet / typical ms':>24}" for w in workloads)]
    for name, results in runs.items():
        if not results:
            continue
        cells = []
        for w in workloads:
            quiet = min(r[w][0] for r in results)
            typical = statistics.median(r[w][1] for r in results)
            cells.append(f"{quiet:8.3f} / {typical:8.3f}")
        lines.append(f"{name:<28}{results[0]['_layer']:>10}" + "".join(f"{c:>24}" for c in cells))
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
