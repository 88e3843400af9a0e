r"""``python -m numbabn bench``: numbabn against NumPy and PyTorch, side by side, on this machine.

For every shape and operation it times numbabn, a plain NumPy implementation
and, when it is installed, ``torch.nn.functional.batch_norm`` (PyTorch's
backward kernel for ``backward``), interleaving the three so that all of them
see the same machine load.  It reports the best time of several runs, the
speed-ups and the effective bandwidth as a fraction of a large array copy
measured in the same run (numbabn then writes into a given ``out=`` buffer, as
the copy does, so page faults on fresh memory are not counted):

.. math::

    \text{fraction} = \frac{k \cdot \text{bytes}(x) / t}{2 \cdot \text{bytes}(copy) / t_{copy}}

with :math:`k = 3` for the training forward (read x twice, write y), 2 for
inference, 3 for backward (read x and dy, write dx: the minimum) and 1 for
moments.  PyTorch runs with as many threads as Numba.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

#: The issue's shapes, as (N, C, ...) logical shapes.
DEFAULT_SHAPES = [
    (32, 64, 56, 56), (64, 256, 14, 14), (8, 32, 128, 128), (4, 512, 7, 7),
    (256, 1024), (16384, 512), (64, 64, 112, 112),
]
QUICK_SHAPES = [(16, 32, 28, 28), (256, 1024), (8, 28, 28, 32)]
OPS = ("train", "infer", "backward")
#: Effective bytes moved per byte of x, by operation (the minimum traffic).
TRAFFIC = {"train": 3, "infer": 2, "backward": 3, "moments": 1}
EPS = 1e-5


class Case:
    """One input: a logical (N, C, ...) shape stored NCHW (axis 1) or channels-last (axis -1)."""

    def __init__(self, shape, channels_last=False):
        self.shape = tuple(shape)
        self.channels_last = channels_last

    @property
    def name(self):
        return "x".join(map(str, self.shape)) + (" cl" if self.channels_last else "")

    @property
    def axis(self):
        return -1 if self.channels_last else 1

    @property
    def stored_shape(self):
        if not self.channels_last:
            return self.shape
        return (self.shape[0], *self.shape[2:], self.shape[1])

    @property
    def channels(self):
        return self.shape[1]


def parse_shapes(text):
    """``"32x64x56x56,8x32x128x128cl"`` -> cases; a ``cl`` suffix means channels-last."""
    cases = []
    for item in text.split(","):
        item = item.strip().lower()
        channels_last = item.endswith("cl")
        dims = item[:-2] if channels_last else item
        try:
            shape = tuple(int(d) for d in dims.split("x"))
        except ValueError:
            raise ValueError(f"bad shape {item!r}: expected sizes joined by 'x', e.g. 32x64x56x56")
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError(f"bad shape {item!r}: need rank >= 2 and positive sizes")
        if channels_last and len(shape) < 3:
            raise ValueError(f"bad shape {item!r}: channels-last needs rank >= 3")
        cases.append(Case(shape, channels_last))
    return cases


def default_cases(shapes):
    """Each shape NCHW, plus channels-last for ranks above 2."""
    cases = []
    for shape in shapes:
        cases.append(Case(shape))
        if len(shape) > 2:
            cases.append(Case(shape, channels_last=True))
    return cases


# --- the contenders ----------------------------------------------------------------------

class Inputs:
    """Real data for one case (random normal, so no page faults or zero shortcuts in timing)."""

    def __init__(self, case, dtype, seed=0):
        rng = np.random.default_rng(seed)
        self.case = case
        self.x = rng.standard_normal(case.stored_shape, dtype=np.float32).astype(dtype)
        self.dy = rng.standard_normal(case.stored_shape, dtype=np.float32).astype(dtype)
        C = case.channels
        self.weight = (1.0 + 0.1 * rng.standard_normal(C)).astype(dtype)
        self.bias = (0.1 * rng.standard_normal(C)).astype(dtype)
        self.running_mean = np.zeros(C, dtype)
        self.running_var = np.ones(C, dtype)
        axis = case.axis % self.x.ndim
        self.axes = tuple(i for i in range(self.x.ndim) if i != axis)
        self.bshape = tuple(C if i == axis else 1 for i in range(self.x.ndim))


def numbabn_ops(inp, out=None):
    """numbabn's calls; with ``out`` (a buffer like ``x``) they write into it instead of allocating."""
    import numbabn as nbn

    axis = inp.case.axis
    y, mean, invstd = nbn.batch_norm_forward(inp.x, inp.weight, inp.bias, axis=axis)
    return {
        "train": lambda: nbn.batch_norm(inp.x, inp.running_mean, inp.running_var, inp.weight,
                                        inp.bias, training=True, axis=axis, out=out),
        "infer": lambda: nbn.batch_norm(inp.x, inp.running_mean, inp.running_var, inp.weight,
                                        inp.bias, axis=axis, out=out),
        "backward": lambda: nbn.batch_norm_backward(inp.dy, inp.x, mean, invstd, inp.weight,
                                                    axis=axis, out=out),
    }


def numpy_ops(inp):
    """Batch norm as a NumPy user would write it."""
    x, dy, axes, bs = inp.x, inp.dy, inp.axes, inp.bshape
    w = inp.weight.reshape(bs)
    b = inp.bias.reshape(bs)

    def train():
        mean = x.mean(axis=axes, keepdims=True)
        var = x.var(axis=axes, keepdims=True)
        return (x - mean) * (w / np.sqrt(var + EPS)) + b

    def infer():
        scale = w / np.sqrt(inp.running_var.reshape(bs) + EPS)
        return x * scale + (b - inp.running_mean.reshape(bs) * scale)

    mean = x.mean(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + EPS)

    def backward():
        m = x.size // x.shape[inp.case.axis]
        xhat = (x - mean) * invstd
        dbias = dy.sum(axis=axes, keepdims=True)
        dweight = (dy * xhat).sum(axis=axes, keepdims=True)
        dx = (w * invstd) * (dy - dbias / m - xhat * (dweight / m))
        return dx, dweight.ravel(), dbias.ravel()

    return {"train": train, "infer": infer, "backward": backward}


def torch_ops(torch, inp):
    F = torch.nn.functional

    def tensor(a):
        t = torch.from_numpy(a)
        if inp.case.channels_last:  # NHWC storage seen as NCHW: torch's channels_last format
            t = t.movedim(-1, 1)
        return t

    x, dy = tensor(inp.x), tensor(inp.dy)
    w, b = torch.from_numpy(inp.weight), torch.from_numpy(inp.bias)
    rm, rv = torch.from_numpy(inp.running_mean), torch.from_numpy(inp.running_var)
    _, save_mean, save_invstd = torch.native_batch_norm(x, w, b, None, None, True, 0.1, EPS)

    def backward():
        return torch.ops.aten.native_batch_norm_backward(
            dy, x, w, rm, rv, save_mean, save_invstd, True, EPS, [True, True, True])

    return {
        "train": lambda: F.batch_norm(x, rm, rv, w, b, training=True, eps=EPS),
        "infer": lambda: F.batch_norm(x, rm, rv, w, b, training=False, eps=EPS),
        "backward": backward,
    }


def load_torch():
    """torch, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


# --- timing ------------------------------------------------------------------------------

def best_times(functions, budget, min_rounds=5, max_rounds=40):
    """Best wall time of each function, over rounds in which the functions take turns.

    Within a round a function runs as a block: one untimed call (after the
    first round only for calls under 10 ms), then timed calls for
    ``budget / 10`` seconds (at least one).  Blocks, rather
    than alternating single calls, keep one library's idle OpenMP threads
    (they spin for a while after each parallel region) from stealing the
    cores of the next library's call, and a short pause between blocks lets
    them go to sleep.  Rounds go on until every function has had ``budget``
    seconds or ``max_rounds`` rounds, so a burst of load from another process
    rarely spoils every round of a fast function.
    """
    best = {name: math.inf for name in functions}
    spent = {name: 0.0 for name in functions}
    for round_ in range(max_rounds):
        if round_ >= min_rounds and all(t >= budget for t in spent.values()):
            break
        for name, f in functions.items():
            time.sleep(0.002)
            if round_ == 0 or best[name] < 0.01:
                f()
            calls = 0
            block = 0.0
            while calls < 1 or block < budget / 10:
                t0 = time.perf_counter()
                f()
                dt = time.perf_counter() - t0
                block += dt
                calls += 1
                best[name] = min(best[name], dt)
            spent[name] += block
    return best


def copy_bandwidth(nbytes, budget):
    """Bytes per second of a large array copy (read + write counted), best of several."""
    src = np.random.default_rng(0).standard_normal(nbytes // 8)
    dst = np.empty_like(src)
    t = best_times({"copy": lambda: np.copyto(dst, src)}, budget)["copy"]
    return 2 * src.nbytes / t


def run(cases, ops, dtype, budget, copy_bytes, progress=print):
    """Measure every case and op; returns the JSON-ready result dictionary."""
    import numba

    from .cpu import _chunks  # noqa: F401  (numbabn's thread policy first, as a user gets it)

    torch = load_torch()
    torch_threads = None
    if torch is not None:  # as many threads as Numba; restored afterwards
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(numba.get_num_threads())
    try:
        return _run(cases, ops, dtype, budget, copy_bytes, progress, torch)
    finally:
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)


def _run(cases, ops, dtype, budget, copy_bytes, progress, torch):
    import numba

    progress(f"copy bandwidth: copying {copy_bytes / 2**20:.0f} MiB ...")
    bandwidth = copy_bandwidth(copy_bytes, budget)
    results = []
    total = len(cases) * len(ops)
    for i, case in enumerate(cases):
        inp = Inputs(case, dtype)
        # The bandwidth fraction uses numbabn writing into a buffer it was given, as the
        # copy it is compared with does: a fresh output costs page faults (the kernel
        # zeroing new memory), which the speed-ups below include, as PyTorch's do.
        out = np.empty_like(inp.x)
        out.fill(0)
        contenders = {"numbabn": numbabn_ops(inp), "numbabn_out": numbabn_ops(inp, out),
                      "numpy": numpy_ops(inp)}
        if torch is not None:
            contenders["torch"] = torch_ops(torch, inp)
        for j, op in enumerate(ops):
            progress(f"[{i * len(ops) + j + 1}/{total}] {case.name} {op}")
            times = best_times({lib: fns[op] for lib, fns in contenders.items()}, budget)
            nbytes = inp.x.nbytes
            rate = TRAFFIC[op] * nbytes / times["numbabn_out"]
            results.append({
                "shape": list(case.shape), "layout": "channels_last" if case.channels_last
                else "channels_first", "dtype": np.dtype(dtype).name, "op": op,
                "bytes": nbytes, "seconds": times,
                "speedup_vs_numpy": times["numpy"] / times["numbabn"],
                "speedup_vs_torch": times["torch"] / times["numbabn"] if torch else None,
                "bandwidth_fraction": rate / bandwidth,
            })
    return {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "numba_threads": numba.get_num_threads(), "numpy": np.__version__,
                    "numba": numba.__version__,
                    "torch": torch.__version__ if torch else None},
        "copy_bandwidth_bytes_per_s": bandwidth,
        "results": results,
        "summary": summarize(results),
    }


def geomean(values):
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarize(results):
    summary = {}
    for op in sorted({r["op"] for r in results}):
        ratios = [r["speedup_vs_torch"] for r in results if r["op"] == op]
        if ratios and None not in ratios:
            summary[op] = {"geomean_speedup_vs_torch": geomean(ratios),
                           "min_speedup_vs_torch": min(ratios)}
    return summary


# --- output ------------------------------------------------------------------------------

def format_table(report):
    has_torch = report["machine"]["torch"] is not None
    head = f"{'shape':<20} {'op':<9} {'numbabn ms':>10} {'out= ms':>8} {'numpy ms':>9} " \
           f"{'torch ms':>9} {'x numpy':>8} {'x torch':>8} {'% copy BW':>9}"
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        s = r["seconds"]
        name = "x".join(map(str, r["shape"])) + (" cl" if r["layout"] == "channels_last" else "")
        torch_ms = f"{s['torch'] * 1e3:9.3f}" if has_torch else f"{'-':>9}"
        vs_torch = f"{r['speedup_vs_torch']:8.2f}" if has_torch else f"{'-':>8}"
        lines.append(f"{name:<20} {r['op']:<9} {s['numbabn'] * 1e3:10.3f} "
                     f"{s['numbabn_out'] * 1e3:8.3f} {s['numpy'] * 1e3:9.3f} {torch_ms} "
                     f"{r['speedup_vs_numpy']:8.2f} "
                     f"{vs_torch} {100 * r['bandwidth_fraction']:9.0f}")
    lines.append("")
    lines.append(f"copy bandwidth {report['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s; "
                 f"numba threads {report['machine']['numba_threads']}; "
                 "x = speed-up (their time / numbabn time, best of several runs)")
    lines.append("out= ms: numbabn writing into a given buffer (no page faults), the time "
                 "'% copy BW' uses, like the copy")
    if not has_torch:
        lines.append("torch: not installed, skipped (pip install 'numbabn[bench]', or from a "
                     "clone: pip install -e \".[bench]\")")
    for op, s in report["summary"].items():
        lines.append(f"{op:<9} vs torch: geometric mean x{s['geomean_speedup_vs_torch']:.2f}, "
                     f"slowest x{s['min_speedup_vs_torch']:.2f}")
    return "\n".join(lines)


def build_parser(parser=None):
    parser = parser or argparse.ArgumentParser(prog="python -m numbabn bench")
    parser.add_argument("--quick", action="store_true",
                        help="small shapes and short timing: a few seconds")
    parser.add_argument("--shapes", help="comma-separated shapes, e.g. 32x64x56x56,256x1024; "
                        "a 'cl' suffix means channels-last (axis=-1)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--ops", default=",".join(OPS),
                        help=f"comma-separated operations out of {','.join(OPS)}")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--norms", default="batch",
                        help="comma-separated tables out of batch,group,instance,layer,rms "
                        "(or 'all'); group and instance share one table, layer and rms another")
    from . import _bench_dask

    _bench_dask.add_arguments(parser)  # --dask and its options
    parser.add_argument("--no-fused", action="store_true",
                        help="skip the fused activation/residual rows (numbabn/_bench_fused.py)")
    parser.add_argument("--loop", action="store_true",
                        help="time batch norm inside NumPy training steps instead of alone "
                             "(numbabn/_bench_loop.py); --quick and --json apply")
    return parser


def main(args):
    if getattr(args, "dask", False):
        from . import _bench_dask

        return _bench_dask.main(args)
    if getattr(args, "loop", False):
        from . import _bench_loop

        return _bench_loop.main(args)
    try:
        cases = (parse_shapes(args.shapes) if args.shapes
                 else default_cases(QUICK_SHAPES if args.quick else DEFAULT_SHAPES))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ops = [op.strip() for op in args.ops.split(",")]
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        print(f"error: unknown operation(s) {unknown}; choose from {OPS}", file=sys.stderr)
        return 2
    budget = 0.02 if args.quick else 0.25
    copy_bytes = 2**25 if args.quick else 2**28

    def progress(text):
        print(text, file=sys.stderr, flush=True)

    known = {"batch", "group", "instance", "layer", "rms"}
    norms = known if args.norms == "all" else {n.strip() for n in args.norms.split(",")}
    unknown = sorted(norms - known)
    if unknown:
        print(f"error: unknown normalization(s) {unknown}", file=sys.stderr)
        return 2
    report = {}
    if "batch" in norms:
        report = run(cases, ops, np.dtype(args.dtype), budget, copy_bytes, progress)
        print(format_table(report))
    if norms & {"group", "instance"}:
        report["groups"] = _run_groups(args.quick, np.dtype(args.dtype), budget, copy_bytes,
                                       progress)
    if norms & {"layer", "rms"}:
        from . import _bench_rows

        report["rows"] = _bench_rows.run_and_print(args.quick, np.dtype(args.dtype), budget,
                                                   copy_bytes, progress)
    if "batch" in norms and not args.no_fused:
        from . import _bench_fused

        report["fused"] = _bench_fused.run(cases, np.dtype(args.dtype), budget, progress)
        print()
        print(_bench_fused.format_table(report["fused"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def _run_groups(quick, dtype, budget, copy_bytes, progress):
    """The group/instance norm table (numbabn._bench_groups), printed; returns its rows."""
    import numba

    from . import _bench_groups

    torch = load_torch()
    if torch is not None:
        torch.set_num_threads(numba.get_num_threads())
    bandwidth = copy_bandwidth(copy_bytes, budget)
    rows = _bench_groups.run(quick, dtype, budget, bandwidth, torch, progress)
    print()
    print(_bench_groups.format_table(rows, torch is not None))
    return rows
