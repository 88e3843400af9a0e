r"""``python -m numbabn bench --norms group,instance``: group and instance norm against PyTorch.

Per shape: the forward without gradients (``torch.no_grad()`` for PyTorch)
and the backward of the whole op (PyTorch's autograd ``grad`` of x, weight
and bias through a retained graph; numbabn's ``*_backward``), float32 unless
asked, PyTorch on as many threads as Numba, interleaved with the same timer
as the batch-norm table (:func:`numbabn._bench.best_times`).  numbabn writes
into a given ``out=`` buffer, and the effective bandwidth is reported as a
fraction of a large copy: 3 x the input's bytes for the forward (read twice,
write once) and 3 x for the backward (read x and dy, write dx).
"""
import numpy as np

from . import _bench

#: (kind, logical (N, C, ...) shape, groups, channels-last): the issue's shapes.
CASES = [
    ("group", (32, 256, 28, 28), 32, False),
    ("group", (8, 128, 64, 64), 32, False),
    ("group", (8, 128, 64, 64), 32, True),
    ("instance", (16, 64, 128, 128), None, False),
    ("instance", (32, 64, 56, 56), None, False),
]
QUICK_CASES = [("group", (8, 32, 16, 16), 8, False), ("group", (8, 32, 16, 16), 8, True),
               ("instance", (8, 16, 32, 32), None, False)]
OPS = ("forward", "backward")


def _name(kind, shape, groups, channels_last):
    g = f" G={groups}" if groups else ""
    return f"{kind} {'x'.join(map(str, shape))}{' cl' if channels_last else ''}{g}"


def _contenders(kind, shape, groups, channels_last, dtype, torch):
    import numbabn as nbn

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    c = shape[1]
    w = (1 + 0.1 * rng.standard_normal(c)).astype(dtype)
    b = (0.1 * rng.standard_normal(c)).astype(dtype)
    xs = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_last else x
    dys = np.ascontiguousarray(np.moveaxis(dy, 1, -1)) if channels_last else dy
    axis = -1 if channels_last else 1
    out = np.zeros_like(xs)
    if kind == "group":
        fwd = lambda o=None: nbn.group_norm_forward(xs, groups, w, b, axis=axis, out=o)  # noqa
        _, mean, invstd = fwd()
        bwd = lambda o=None: nbn.group_norm_backward(  # noqa: E731
            dys, xs, mean, invstd, groups, w, axis=axis, out=o)
    else:
        fwd = lambda o=None: nbn.instance_norm_forward(xs, w, b, axis=axis, out=o)  # noqa
        _, mean, invstd = fwd()
        bwd = lambda o=None: nbn.instance_norm_backward(  # noqa: E731
            dys, xs, mean, invstd, w, axis=axis, out=o)
    ops = {"forward": {"numbabn": fwd, "numbabn_out": lambda: fwd(out)},
           "backward": {"numbabn": bwd, "numbabn_out": lambda: bwd(out)}}
    if torch is not None:
        F = torch.nn.functional
        xt = torch.from_numpy(x)
        if channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        wt = torch.from_numpy(w).requires_grad_(True)
        bt = torch.from_numpy(b).requires_grad_(True)
        op = ((lambda t: F.group_norm(t, groups, wt, bt)) if kind == "group"
              else (lambda t: F.instance_norm(t, weight=wt, bias=bt)))

        def forward():
            with torch.no_grad():
                return op(xt)

        xg = xt.detach().clone().requires_grad_(True)
        yt = op(xg)
        dyt = torch.from_numpy(dy)
        if channels_last:
            dyt = dyt.contiguous(memory_format=torch.channels_last)
        ops["forward"]["torch"] = forward
        ops["backward"]["torch"] = lambda: torch.autograd.grad(yt, (xg, wt, bt), dyt,
                                                               retain_graph=True)
    return ops, xs.nbytes


def run(quick, dtype, budget, bandwidth, torch, progress):
    """Rows of the group/instance table (dicts like the batch-norm table's)."""
    results = []
    cases = QUICK_CASES if quick else CASES
    for i, (kind, shape, groups, channels_last) in enumerate(cases):
        name = _name(kind, shape, groups, channels_last)
        ops, nbytes = _contenders(kind, shape, groups, channels_last, dtype, torch)
        for op in OPS:
            progress(f"[{i + 1}/{len(cases)}] {name} {op}")
            times = _bench.best_times(ops[op], budget)
            results.append({
                "case": name, "op": op, "bytes": nbytes, "seconds": times,
                "speedup_vs_torch": times["torch"] / times["numbabn"] if torch else None,
                "bandwidth_fraction": 3 * nbytes / times["numbabn_out"] / bandwidth,
            })
    return results


def format_table(results, has_torch):
    head = (f"{'case':<34} {'op':<9} {'numbabn ms':>10} {'out= ms':>8} {'torch ms':>9} "
            f"{'x torch':>8} {'% copy BW':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        s = r["seconds"]
        torch_ms = f"{s['torch'] * 1e3:9.3f}" if has_torch else f"{'-':>9}"
        vs = f"{r['speedup_vs_torch']:8.2f}" if has_torch else f"{'-':>8}"
        lines.append(f"{r['case']:<34} {r['op']:<9} {s['numbabn'] * 1e3:10.3f} "
                     f"{s['numbabn_out'] * 1e3:8.3f} {torch_ms} {vs} "
                     f"{100 * r['bandwidth_fraction']:9.0f}")
    if has_torch:
        for op in OPS:
            ratios = [r["speedup_vs_torch"] for r in results if r["op"] == op]
            lines.append(f"{op:<9} vs torch: geometric mean x{_bench.geomean(ratios):.2f}, "
                         f"slowest x{min(ratios):.2f}")
    return "\n".join(lines)
