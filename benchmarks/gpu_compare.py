"""numbabn against PyTorch's batch norm on the same GPU, float32 (no asv needed).

Run on a machine with a CUDA GPU, PyTorch (CUDA build) and numba-cuda::

    python benchmarks/gpu_compare.py [--reps 50] [--quick]

For each shape of issue 3, in NCHW and channels-last memory, it times the
training forward (with running statistics), the backward and the inference
forward of both libraries with CUDA events (median of ``--reps`` calls after
a warm-up, inputs rotated so that they do not sit in the L2 cache), checks
that both agree, and prints one table.  ``%bw`` is the share of the measured
device-to-device copy bandwidth reached, counting 3 x bytes for the training
forward, 5 x for the backward and 2 x for inference.  Both libraries get the
same torch tensors (channels_last ones too): numbabn reads them in place
through ``__cuda_array_interface__``.
PyTorch's backward is ``torch.ops.aten.native_batch_norm_backward``.
"""
import argparse
import statistics

SHAPES = [(32, 64, 56, 56), (64, 256, 14, 14), (256, 1024), (8, 32, 128, 128), (4, 512, 7, 7),
          (64, 64, 112, 112), (128, 256, 28, 28), (16384, 512)]
#: Inputs are rotated among copies filling at least this many bytes (L2 is 50-60 MB).
ROTATE_BYTES = 256 << 20


def copy_bandwidth(torch, nbytes=1 << 30, reps=20):
    """Device-to-device copy bandwidth in bytes/s, counting bytes read and written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = event_ms(torch, lambda i: dst.copy_(src), reps)
    return 2 * nbytes / (ms * 1e-3)


def event_ms(torch, fn, reps, warmup=3):
    """Median milliseconds of ``fn(i)`` over ``reps`` calls, with CUDA events."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def _inputs(torch, shape, channels_last, copies):
    """``copies`` input tensors (both libraries take the very same ones)."""
    xs = []
    for _ in range(copies):
        x = torch.randn(shape, device="cuda") * 2.0 + 0.5
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        xs.append(x)
    return xs


def compare_shape(torch, nbn, shape, channels_last, reps, bandwidth):
    import torch.nn.functional as F

    c = shape[1]
    nbytes = 4 * torch.Size(shape).numel()
    xs = _inputs(torch, shape, channels_last, max(1, min(8, ROTATE_BYTES // (3 * nbytes) + 1)))
    dys = [torch.randn_like(x) for x in xs]
    w = torch.rand(c, device="cuda") + 0.5
    b = torch.randn(c, device="cuda")
    rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
    k = len(xs)

    def t_forward(i):
        return F.batch_norm(xs[i % k], rm, rv, w, b, training=True)

    def n_forward(i):
        return nbn.batch_norm_forward(xs[i % k], w, b, running_mean=rm, running_var=rv)

    y_t, save_mean, save_invstd = torch.ops.aten.native_batch_norm(
        xs[0], w, b, rm, rv, True, 0.1, 1e-5)
    y_n, mean_n, invstd_n = nbn.batch_norm_forward(xs[0], w, b)
    y_n = torch.as_tensor(y_n, device="cuda")
    err = (y_n - y_t).abs().max().item()

    def t_backward(i):
        return torch.ops.aten.native_batch_norm_backward(
            dys[i % k], xs[i % k], w, rm, rv, save_mean, save_invstd, True, 1e-5,
            [True, True, True])

    def n_backward(i):
        return nbn.batch_norm_backward(dys[i % k], xs[i % k], mean_n, invstd_n, w)

    def t_infer(i):
        return F.batch_norm(xs[i % k], rm, rv, w, b, training=False)

    def n_infer(i):
        return nbn.batch_norm(xs[i % k], rm, rv, w, b)

    row = {"shape": shape, "layout": "NHWC" if channels_last else "NCHW", "MB": nbytes / 1e6,
           "err": err}
    for name, tfn, nfn, passes in [("fwd", t_forward, n_forward, 3),
                                   ("bwd", t_backward, n_backward, 5),
                                   ("inf", t_infer, n_infer, 2)]:
        row[name + "_torch"] = event_ms(torch, tfn, reps)
        row[name + "_nbn"] = event_ms(torch, nfn, reps)
        row[name + "_bw"] = passes * nbytes / (row[name + "_nbn"] * 1e-3) / bandwidth
    return row


def format_table(rows, device_name, bandwidth):
    lines = [f"GPU: {device_name}; device-to-device copy {bandwidth / 1e9:,.0f} GB/s "
             "(bytes read + written); times in ms, median; x = torch/numbabn (> 1: numbabn "
             "faster); %bw of the copy bandwidth"]
    head = ["shape", "layout", "MB"]
    for name in ("fwd", "bwd", "inf"):
        head += [f"{name} torch", f"{name} nbn", "x", "%bw"]
    head.append("y err")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        cells = [str(r["shape"]), r["layout"], f"{r['MB']:.1f}"]
        for name in ("fwd", "bwd", "inf"):
            t, n = r[name + "_torch"], r[name + "_nbn"]
            cells += [f"{t:.3f}", f"{n:.3f}", f"{t / n:.2f}", f"{100 * r[name + '_bw']:.0f}%"]
        cells.append(f"{r['err']:.1e}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="NCHW only, first three shapes")
    args = parser.parse_args(argv)

    import torch

    import numbabn as nbn

    if not torch.cuda.is_available() or not nbn.cuda_available():
        raise SystemExit("needs a CUDA GPU visible to both PyTorch and numba")
    torch.backends.cudnn.benchmark = False
    bandwidth = copy_bandwidth(torch)
    rows = []
    shapes = SHAPES[:3] if args.quick else SHAPES
    for shape in shapes:
        for channels_last in (False, True):
            if channels_last and (len(shape) != 4 or args.quick):
                continue
            rows.append(compare_shape(torch, nbn, shape, channels_last, args.reps, bandwidth))
            print(f"done {shape} {'NHWC' if channels_last else 'NCHW'}", flush=True)
    print(format_table(rows, torch.cuda.get_device_name(), bandwidth))


if __name__ == "__main__":
    main()
