"""The fused rows of ``python -m numbabn bench``: batch norm with its activation and residual add.

For every case it times, side by side in one run (the rounds of
:func:`numbabn._bench.best_times`):

``relu``
    training forward with a fused ReLU, against numbabn's batch norm followed
    by ``np.maximum(y, 0, out=y)``;
``res_relu``
    ``relu(BN(x) + z)`` fused, against numbabn's batch norm, ``np.add`` and
    ``np.maximum`` (all in place);
``bwd_relu``
    the backward through a fused ReLU (the mask read from ``y``), against
    masking ``dy`` first (``np.multiply(dy, y > 0)``) and then the backward.

Both numbabn contenders write into given buffers (no page faults), so the
ratio ``fused / unfused`` is the fusion's own gain.  The PyTorch column
(``F.relu(F.batch_norm(...))``, ``F.relu(F.batch_norm(...) + z)``, and
autograd's ``threshold_backward`` then ``native_batch_norm_backward``) is
compared with numbabn's fused call returning a fresh array, as PyTorch does.
"""
import numpy as np

FUSED_OPS = ("relu", "res_relu", "bwd_relu")


def _ops(inp, out, tmp):
    import numbabn as nbn

    x, z, dy = inp.x, inp.dy[::-1].copy(), inp.dy
    axis = inp.case.axis
    rm, rv, w, b = inp.running_mean, inp.running_var, inp.weight, inp.bias
    y, mean, invstd = nbn.batch_norm_forward(x, w, b, axis=axis, activation="relu")

    def bn(out=None, **kw):
        return nbn.batch_norm(x, rm, rv, w, b, training=True, axis=axis, out=out, **kw)

    def relu_unfused():
        bn(out)
        np.maximum(out, 0, out=out)

    def res_relu_unfused():
        bn(out)
        np.add(out, z, out=out)
        np.maximum(out, 0, out=out)

    def bwd(out=None):
        return nbn.batch_norm_backward(dy, x, mean, invstd, w, activation="relu", y=y, axis=axis,
                                       out=out)

    def bwd_unfused():
        np.multiply(dy, y > 0, out=tmp)
        nbn.batch_norm_backward(tmp, x, mean, invstd, w, axis=axis, out=out)

    return z, y, {
        "relu": {"fused": lambda: bn(activation="relu"),
                 "fused_out": lambda: bn(out, activation="relu"), "unfused_out": relu_unfused},
        "res_relu": {"fused": lambda: bn(activation="relu", residual=z),
                     "fused_out": lambda: bn(out, activation="relu", residual=z),
                     "unfused_out": res_relu_unfused},
        "bwd_relu": {"fused": bwd, "fused_out": lambda: bwd(out), "unfused_out": bwd_unfused},
    }


def _torch_ops(torch, inp, z, y):
    F = torch.nn.functional

    def tensor(a):
        t = torch.from_numpy(a)
        return t.movedim(-1, 1) if inp.case.channels_last else t

    x, zt, dy, yt = tensor(inp.x), tensor(z), tensor(inp.dy), tensor(y)
    w, b = torch.from_numpy(inp.weight), torch.from_numpy(inp.bias)
    rm, rv = torch.from_numpy(inp.running_mean.copy()), torch.from_numpy(inp.running_var.copy())
    _, save_mean, save_invstd = torch.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5)

    def backward():
        g = torch.ops.aten.threshold_backward(dy, yt, 0)
        return torch.ops.aten.native_batch_norm_backward(
            g, x, w, rm, rv, save_mean, save_invstd, True, 1e-5, [True, True, True])

    return {
        "relu": lambda: F.relu(F.batch_norm(x, rm, rv, w, b, training=True)),
        "res_relu": lambda: F.relu(F.batch_norm(x, rm, rv, w, b, training=True) + zt),
        "bwd_relu": backward,
    }


def run(cases, dtype, budget, progress=print):
    """Time the fused rows; returns a JSON-ready list of results."""
    from . import _bench

    torch = _bench.load_torch()
    threads = None
    if torch is not None:
        import numba

        threads = torch.get_num_threads()
        torch.set_num_threads(numba.get_num_threads())
    try:
        results = []
        for i, case in enumerate(cases):
            inp = _bench.Inputs(case, dtype)
            out, tmp = np.empty_like(inp.x), np.empty_like(inp.x)
            out.fill(0)
            tmp.fill(0)
            z, y, contenders = _ops(inp, out, tmp)
            if torch is not None:
                for op, f in _torch_ops(torch, inp, z, y).items():
                    contenders[op]["torch"] = f
            for j, op in enumerate(FUSED_OPS):
                progress(f"[fused {i * len(FUSED_OPS) + j + 1}/{len(cases) * len(FUSED_OPS)}] "
                         f"{case.name} {op}")
                t = _bench.best_times(contenders[op], budget)
                results.append({
                    "shape": list(case.shape),
                    "layout": "channels_last" if case.channels_last else "channels_first",
                    "dtype": np.dtype(dtype).name, "op": op, "seconds": t,
                    "speedup_vs_unfused": t["unfused_out"] / t["fused_out"],
                    "speedup_vs_torch": t["torch"] / t["fused"] if "torch" in t else None,
                })
        return results
    finally:
        if threads is not None:
            torch.set_num_threads(threads)


def format_table(results):
    head = (f"{'shape':<20} {'fused op':<9} {'fused ms':>9} {'out= ms':>8} {'unfused ms':>10} "
            f"{'torch ms':>9} {'x unfused':>9} {'x torch':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        s = r["seconds"]
        name = "x".join(map(str, r["shape"])) + (" cl" if r["layout"] == "channels_last" else "")
        torch_ms = f"{s['torch'] * 1e3:9.3f}" if "torch" in s else f"{'-':>9}"
        vs_torch = f"{r['speedup_vs_torch']:8.2f}" if r["speedup_vs_torch"] else f"{'-':>8}"
        lines.append(f"{name:<20} {r['op']:<9} {s['fused'] * 1e3:9.3f} {s['fused_out'] * 1e3:8.3f} "
                     f"{s['unfused_out'] * 1e3:10.3f} {torch_ms} {r['speedup_vs_unfused']:9.2f} "
                     f"{vs_torch}")
    lines.append("")
    lines.append("fused: y = relu(BN(x) [+ z]) in one call; unfused: numbabn's batch norm, then "
                 "NumPy in place (backward: mask dy, then the backward), both with out=")
    lines.append("x unfused = unfused out= time / fused out= time; x torch = torch time / fused "
                 "time (fresh output, as torch)")
    return "\n".join(lines)
