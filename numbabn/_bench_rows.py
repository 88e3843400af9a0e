r"""``python -m numbabn bench --norms layer,rms``: layer and RMS norm against PyTorch.

Four operations per shape: ``layer_norm`` and ``rms_norm`` forward (no
gradient kept) and their backward (dx, dγ and, for layer norm, dβ, from the
saved statistics).  PyTorch's backward is its autograd backward of the whole
op (``torch.autograd.grad`` through ``torch.nn.functional.layer_norm`` /
``rms_norm``, graph kept), which for RMS norm is a composition of elementwise
kernels.  Timing as :mod:`numbabn._bench`: best of interleaved rounds, PyTorch
with as many threads as Numba; the bandwidth fraction uses numbabn writing
into a given ``out=`` buffer against a large copy measured in the same run,

.. math::

    \text{fraction} = \frac{k \cdot \text{bytes}(x) / t}{2 \cdot \text{bytes}(copy) / t_{copy}}

with :math:`k = 2` forward (read x, write y: each row is reduced while it is
in cache) and 3 backward (read x and dy, write dx).
"""
import numpy as np

from . import _bench as B

#: The issue's shapes (the last axis is normalized).
DEFAULT_SHAPES = [(8192, 768), (64, 197, 768), (4096, 4096)]
QUICK_SHAPES = [(512, 768), (16, 197, 64)]
OPS = ("layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward")
TRAFFIC = {"layer_norm": 2, "rms_norm": 2, "layer_norm_backward": 3, "rms_norm_backward": 3}
EPS = 1e-5


class Inputs:
    """Real data for one shape (random normal, so no page faults or zero shortcuts)."""

    def __init__(self, shape, dtype, seed=0):
        rng = np.random.default_rng(seed)
        self.shape = tuple(shape)
        self.x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        self.dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        d = shape[-1]
        self.weight = (1.0 + 0.1 * rng.standard_normal(d)).astype(dtype)
        self.bias = (0.1 * rng.standard_normal(d)).astype(dtype)


def numbabn_ops(inp, out=None):
    import numbabn as nbn

    d = inp.shape[-1]
    x, dy, w, b = inp.x, inp.dy, inp.weight, inp.bias
    _, mean, invstd = nbn.layer_norm_forward(x, d, w, b, eps=EPS)
    _, invrms = nbn.rms_norm_forward(x, d, w, eps=EPS)
    return {
        "layer_norm": lambda: nbn.layer_norm(x, d, w, b, EPS, out=out),
        "layer_norm_backward": lambda: nbn.layer_norm_backward(dy, x, mean, invstd, d, w,
                                                               out=out),
        "rms_norm": lambda: nbn.rms_norm(x, d, w, EPS, out=out),
        "rms_norm_backward": lambda: nbn.rms_norm_backward(dy, x, invrms, d, w, out=out),
    }


def torch_ops(torch, inp):
    F = torch.nn.functional
    d = (inp.shape[-1],)
    x, dy = torch.from_numpy(inp.x), torch.from_numpy(inp.dy)
    w, b = torch.from_numpy(inp.weight), torch.from_numpy(inp.bias)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    y_ln = F.layer_norm(xg, d, wg, bg, EPS)
    y_rms = F.rms_norm(xg, d, wg, EPS)

    def no_grad(f):
        def call():
            with torch.no_grad():
                return f()
        return call

    return {
        "layer_norm": no_grad(lambda: F.layer_norm(x, d, w, b, EPS)),
        "layer_norm_backward": lambda: torch.autograd.grad(y_ln, (xg, wg, bg), dy,
                                                           retain_graph=True),
        "rms_norm": no_grad(lambda: F.rms_norm(x, d, w, EPS)),
        "rms_norm_backward": lambda: torch.autograd.grad(y_rms, (xg, wg), dy,
                                                         retain_graph=True),
    }


def run(shapes, ops, dtype, budget, copy_bytes, progress=print):
    import numba

    torch = B.load_torch()
    threads = None
    if torch is not None:
        threads = torch.get_num_threads()
        torch.set_num_threads(numba.get_num_threads())
    try:
        progress(f"copy bandwidth: copying {copy_bytes / 2**20:.0f} MiB ...")
        bandwidth = B.copy_bandwidth(copy_bytes, budget)
        results = []
        for i, shape in enumerate(shapes):
            inp = Inputs(shape, dtype)
            out = np.empty_like(inp.x)
            out.fill(0)
            contenders = {"numbabn": numbabn_ops(inp), "numbabn_out": numbabn_ops(inp, out)}
            if torch is not None:
                contenders["torch"] = torch_ops(torch, inp)
            for j, op in enumerate(ops):
                name = "x".join(map(str, shape))
                progress(f"[{i * len(ops) + j + 1}/{len(shapes) * len(ops)}] {name} {op}")
                times = B.best_times({lib: fns[op] for lib, fns in contenders.items()}, budget)
                results.append({
                    "shape": list(shape), "dtype": np.dtype(dtype).name, "op": op,
                    "bytes": inp.x.nbytes, "seconds": times,
                    "speedup_vs_torch": times["torch"] / times["numbabn"] if torch else None,
                    "bandwidth_fraction":
                        TRAFFIC[op] * inp.x.nbytes / times["numbabn_out"] / bandwidth,
                })
    finally:
        if threads is not None:
            torch.set_num_threads(threads)
    return {
        "machine": {"numba_threads": numba.get_num_threads(),
                    "torch": torch.__version__ if torch else None},
        "copy_bandwidth_bytes_per_s": bandwidth,
        "results": results,
        "summary": B.summarize(results),
    }


def format_table(report):
    has_torch = report["machine"]["torch"] is not None
    head = (f"{'shape':<14} {'op':<20} {'numbabn ms':>10} {'out= ms':>8} {'torch ms':>9} "
            f"{'x torch':>8} {'% copy BW':>9}")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        s = r["seconds"]
        torch_ms = f"{s['torch'] * 1e3:9.3f}" if has_torch else f"{'-':>9}"
        vs = f"{r['speedup_vs_torch']:8.2f}" if has_torch else f"{'-':>8}"
        lines.append(f"{'x'.join(map(str, r['shape'])):<14} {r['op']:<20} "
                     f"{s['numbabn'] * 1e3:10.3f} {s['numbabn_out'] * 1e3:8.3f} {torch_ms} "
                     f"{vs} {100 * r['bandwidth_fraction']:9.0f}")
    lines.append("")
    lines.append(f"copy bandwidth {report['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s; "
                 f"numba threads {report['machine']['numba_threads']}; "
                 "x = speed-up (their time / numbabn time, best of several runs)")
    if not has_torch:
        lines.append("torch: not installed, skipped (pip install 'numbabn[bench]')")
    for op, s in report["summary"].items():
        lines.append(f"{op:<20} vs torch: geometric mean x{s['geomean_speedup_vs_torch']:.2f}, "
                     f"slowest x{s['min_speedup_vs_torch']:.2f}")
    return "\n".join(lines)


def run_and_print(quick, dtype, budget, copy_bytes, progress):
    """The layer/RMS norm table (for ``bench --norms layer,rms``), printed; returns its report."""
    report = run(QUICK_SHAPES if quick else DEFAULT_SHAPES, OPS, dtype, budget, copy_bytes,
                 progress)
    print()
    print(format_table(report))
    return report
