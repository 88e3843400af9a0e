r"""``python -m numbabn bench --dask``: statistics of chunked and larger-than-memory data.

Two measurements, side by side in one run:

1. **Dask arrays in memory**: :func:`numbabn.dask.channel_moments` against
   Dask's own ``darr.mean(axis) + darr.var(axis)`` on the same float32 array
   (``1e4 + N(0, 1)``, persisted in chunks of about 64 MiB, threaded
   scheduler), with the relative error of each variance against a float64
   reference computed with NumPy channel by channel.  numbabn's one-shot
   :func:`numbabn.channel_moments` of the same NumPy array is timed too.

2. **A file larger than the memory allowed**: a float32 ``np.memmap`` file
   (written to ``--tmpdir``, deleted afterwards) reduced by
   :class:`numbabn.ChannelMoments` over 64 MiB batches and by
   :func:`numbabn.dask.channel_moments` of ``da.from_array(memmap)``, against
   ``np.sum`` over the same batches (a sequential loop, and ``darr.sum()`` on
   the same chunks).  Every pass runs in a fresh process (so each maps the file
   anew and the page cache is the only warm thing), which reports its wall time
   and its peak resident memory (``ru_maxrss``): the bar is under 1 GiB.
   Throughput is file bytes per second; the bar is 70% of ``np.sum``'s.
   By default the file sits in the OS page cache after it is written (a
   warm read: ``np.sum`` then runs at memory speed); ``--cold`` evicts it
   before every pass (``posix_fadvise(DONTNEED)``), so each pass reads the disk.

Each contender runs ``--repeat`` times, interleaved, and the best time is kept.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

CHANNELS, HEIGHT, WIDTH = 16, 128, 128
ROW_BYTES = CHANNELS * HEIGHT * WIDTH * 4  # one (16, 128, 128) float32 sample: 1 MiB
CHUNK_ROWS = 64  # 64 MiB chunks and batches


def add_arguments(parser):
    """The options of ``bench --dask`` (wired into ``python -m numbabn bench``)."""
    parser.add_argument("--dask", action="store_true",
                        help="benchmark numbabn.dask and ChannelMoments on chunked and "
                             "memory-mapped data instead (needs the dask extra)")
    parser.add_argument("--dask-gib", type=float, default=2.0,
                        help="--dask: size of the in-memory Dask array in GiB (default 2)")
    parser.add_argument("--file-gib", type=float, default=6.0,
                        help="--dask: size of the memory-mapped file in GiB (default 6)")
    parser.add_argument("--tmpdir", default=None,
                        help="--dask: where to write the file (default: the system temp dir)")
    parser.add_argument("--cold", action="store_true",
                        help="--dask: evict the file from the OS page cache before every pass "
                             "(posix_fadvise DONTNEED), so each pass reads the disk")
    parser.add_argument("--repeat", type=int, default=3,
                        help="--dask: runs of each contender, the best is kept (default 3)")


def _offset_data(rng, shape):
    x = rng.standard_normal(shape, dtype=np.float32)
    x += np.float32(1e4)
    return x


def _reference_var(x):
    """Float64 per-channel (biased) variance with plain NumPy, one channel at a time."""
    out = np.empty(x.shape[1])
    for c in range(x.shape[1]):
        xc = x[:, c].astype(np.float64)
        out[c] = np.mean((xc - xc.mean()) ** 2)
    return out


def _best(functions, repeat):
    best = {name: np.inf for name in functions}
    for _ in range(repeat):
        for name, f in functions.items():
            t0 = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def in_memory(gib, repeat, progress):
    """Row set 1: numbabn.dask vs Dask's mean + var on a persisted float32 array."""
    import dask
    import dask.array as da

    import numbabn as nbn
    import numbabn.dask as nbd

    rows = max(CHUNK_ROWS // 8, int(gib * 2**30) // ROW_BYTES)
    chunk_rows = min(CHUNK_ROWS, rows)
    progress(f"in-memory: {rows}x{CHANNELS}x{HEIGHT}x{WIDTH} float32 "
             f"({rows * ROW_BYTES / 2**30:.2f} GiB), chunks of {chunk_rows} rows")
    x = _offset_data(np.random.default_rng(0), (rows, CHANNELS, HEIGHT, WIDTH))
    darr = da.from_array(x, chunks=(chunk_rows, CHANNELS, HEIGHT, WIDTH))
    axes = (0, 2, 3)
    results = {}

    def numbabn_dask():
        results["numbabn.dask"] = dask.compute(*nbd.channel_moments(darr))

    def dask_own():
        results["dask mean+var"] = dask.compute(darr.mean(axis=axes), darr.var(axis=axes))

    def one_shot():
        results["numbabn one-shot"] = nbn.channel_moments(x)

    with dask.config.set(scheduler="threads"):
        numbabn_dask(), one_shot()  # compile or load the kernels
        times = _best({"numbabn.dask": numbabn_dask, "dask mean+var": dask_own,
                       "numbabn one-shot": one_shot}, repeat)
    progress("in-memory: float64 reference ...")
    ref = _reference_var(x)
    out = []
    for name, (mean, var) in results.items():
        out.append({"case": "in-memory", "contender": name, "seconds": times[name],
                    "bytes": x.nbytes, "var_rel_error": float(np.max(np.abs(var - ref) / ref)),
                    "dtype": str(np.asarray(var).dtype)})
    return out, {"shape": list(x.shape), "chunks": chunk_rows}


# --- the file: every pass in its own process -------------------------------------------------

_PASS = r"""
import json, sys, time
import numpy as np
kind, path, rows, chunk_rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
shape = (rows, 16, 128, 128)
import numbabn as nbn
from numbabn import _accumulate
warm = np.ones((4, 16, 128, 128), np.float32)  # loads the kernels these sizes use
if "dask" in kind:
    import dask, dask.array as da, numbabn.dask as nbd
    from numbabn._bench_dask import memmap_blocks
    dask.config.set(scheduler="threads")
    dask.compute(*nbd.channel_moments(da.from_array(warm, chunks=(2, 16, 128, 128))))
    da.from_array(warm, chunks=(2, 16, 128, 128)).sum().compute()
nbn.ChannelMoments().update(warm)
np.sum(warm)
mm = np.memmap(path, dtype=np.float32, mode="r", shape=shape)
t0 = time.perf_counter()
if kind == "np.sum loop":
    total = 0.0
    for i in range(0, rows, chunk_rows):
        block = mm[i:i + chunk_rows]
        total += float(np.sum(block))
        _accumulate._release_pages(block)
    result = [total]
elif kind == "ChannelMoments loop":
    acc = nbn.ChannelMoments()
    for i in range(0, rows, chunk_rows):
        acc.update(mm[i:i + chunk_rows])
    result = acc.var().tolist()
elif kind == "dask sum":
    result = [float(memmap_blocks(path, shape, np.float32, chunk_rows).sum().compute())]
elif kind == "numbabn.dask":
    d = memmap_blocks(path, shape, np.float32, chunk_rows)
    result = [float(v) for v in dask.compute(*nbd.channel_moments(d))[1]]
seconds = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across fork + exec.
with open("/proc/self/status") as f:
    peak = int(next(line for line in f if line.startswith("VmHWM")).split()[1]) * 1024
print(json.dumps({"seconds": seconds, "peak_rss": peak, "result": result}))
"""

FILE_CONTENDERS = ("np.sum loop", "ChannelMoments loop", "dask sum", "numbabn.dask")


def memmap_blocks(path, shape, dtype, chunk_rows):
    """A Dask array whose chunks are slices of a memory-mapped file (``chunk_rows`` rows each).

    Each task maps the file (``np.memmap``, mode "r") and returns its slice,
    read when the reduction touches it.  Not ``da.from_array(memmap)``: Dask
    2026.8 (installed here) copies every array-like given to ``from_array``,
    and hashing a closure over a memmap reads it too, so either would load a
    file larger than memory.  Only the path and the shape go into the graph.
    """
    import dask.array as da

    rows = shape[0]
    sizes = tuple(min(chunk_rows, rows - i) for i in range(0, rows, chunk_rows))
    return da.map_blocks(_load_rows, path, shape, np.dtype(dtype).str,
                         chunks=(sizes, *((n,) for n in shape[1:])), dtype=dtype,
                         meta=np.empty((0,) * len(shape), dtype))


def _load_rows(path, shape, dtype, block_info=None):
    start, stop = block_info[None]["array-location"][0]
    return np.memmap(path, dtype=dtype, mode="r", shape=tuple(shape))[start:stop]


def _write_file(path, rows, progress):
    rng = np.random.default_rng(1)
    progress(f"file: writing {rows * ROW_BYTES / 2**30:.2f} GiB to {path} ...")
    with open(path, "wb") as f:
        for i in range(0, rows, CHUNK_ROWS):
            _offset_data(rng, (min(CHUNK_ROWS, rows - i), CHANNELS, HEIGHT, WIDTH)).tofile(f)


def _one_pass(kind, path, rows):
    proc = subprocess.run(
        [sys.executable, "-c", _PASS, kind, path, str(rows), str(CHUNK_ROWS)],
        capture_output=True, text=True, timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} pass failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _evict(path):
    """Drop the file's clean pages from the OS page cache (Linux; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def from_file(gib, repeat, tmpdir, progress, cold=False):
    """Row set 2: a memory-mapped float32 file through the accumulator and through Dask."""
    rows = max(CHUNK_ROWS, int(gib * 2**30) // ROW_BYTES)
    best, peaks = {}, {}
    with tempfile.TemporaryDirectory(dir=tmpdir, prefix="numbabn-bench-") as where:
        path = os.path.join(where, "data.f32")
        _write_file(path, rows, progress)
        for r in range(repeat):
            for kind in FILE_CONTENDERS:
                progress(f"file: pass {r + 1}/{repeat} {kind}")
                if cold:
                    _evict(path)
                run = _one_pass(kind, path, rows)
                peaks[kind] = max(peaks.get(kind, 0), run["peak_rss"])  # the worst pass
                if kind not in best or run["seconds"] < best[kind]["seconds"]:
                    best[kind] = run
    nbytes = rows * ROW_BYTES
    acc_var = np.array(best["ChannelMoments loop"]["result"])
    dask_var = np.array(best["numbabn.dask"]["result"])
    agree = float(np.max(np.abs(acc_var - dask_var) / np.abs(acc_var)))
    out = []
    for kind in FILE_CONTENDERS:
        base = best["dask sum" if "dask" in kind else "np.sum loop"]
        out.append({"case": "file", "contender": kind, "seconds": best[kind]["seconds"],
                    "bytes": nbytes, "peak_rss_bytes": peaks[kind],
                    "throughput_vs_np_sum": base["seconds"] / best[kind]["seconds"]})
    return out, {"rows": rows, "accumulator_vs_dask_var_rel_diff": agree, "cold": cold}


def format_table(report):
    lines = []
    mem = [r for r in report["results"] if r["case"] == "in-memory"]
    if mem:
        info = report["in_memory"]
        lines.append(f"in-memory Dask array {'x'.join(map(str, info['shape']))} float32, "
                     f"chunks of {info['chunks']} rows, threaded scheduler")
        head = f"{'contender':<22} {'seconds':>9} {'GB/s':>7} {'x dask':>7} {'var rel. error':>15}"
        lines += [head, "-" * len(head)]
        ref = next(r for r in mem if r["contender"] == "dask mean+var")["seconds"]
        for r in mem:
            lines.append(f"{r['contender']:<22} {r['seconds']:9.3f} "
                         f"{r['bytes'] / r['seconds'] / 1e9:7.2f} {ref / r['seconds']:7.2f} "
                         f"{r['var_rel_error']:15.2e}")
        lines.append("")
    files = [r for r in report["results"] if r["case"] == "file"]
    if files:
        info = report["file"]
        lines.append(f"np.memmap file {files[0]['bytes'] / 2**30:.2f} GiB float32 "
                     f"({info['rows']}x{CHANNELS}x{HEIGHT}x{WIDTH}), batches/chunks of "
                     f"{CHUNK_ROWS} MiB, each pass in a fresh process, "
                     + ("file evicted from the page cache before each pass" if info.get("cold")
                        else "file in the page cache (warm)"))
        head = (f"{'contender':<22} {'seconds':>9} {'GB/s':>7} {'vs np.sum':>10} "
                f"{'peak RSS MiB':>13}")
        lines += [head, "-" * len(head)]
        for r in files:
            lines.append(f"{r['contender']:<22} {r['seconds']:9.3f} "
                         f"{r['bytes'] / r['seconds'] / 1e9:7.2f} "
                         f"{100 * r['throughput_vs_np_sum']:9.0f}% "
                         f"{r['peak_rss_bytes'] / 2**20:13.0f}")
        lines.append(f"accumulator and numbabn.dask variances agree to "
                     f"{info['accumulator_vs_dask_var_rel_diff']:.1e} (relative)")
        lines.append("vs np.sum: np.sum's time over this one's (the loop rows against the "
                     "np.sum loop, the Dask rows against darr.sum() on the same chunks)")
    return "\n".join(lines)


def main(args):
    try:
        import dask  # noqa: F401
    except ImportError:
        print("error: bench --dask needs dask: pip install 'numbabn[dask]'", file=sys.stderr)
        return 2
    import numba

    def progress(text):
        print(text, file=sys.stderr, flush=True)

    quick = args.quick
    dask_gib = 0.0625 if quick else args.dask_gib
    file_gib = 0.25 if quick else args.file_gib
    repeat = 1 if quick else max(1, args.repeat)
    results = []
    report = {"machine": {"cpus": os.cpu_count(), "numba_threads": numba.get_num_threads()}}
    rows, report["in_memory"] = in_memory(dask_gib, repeat, progress)
    results += rows
    rows, report["file"] = from_file(file_gib, repeat, args.tmpdir, progress,
                                     cold=getattr(args, "cold", False))
    results += rows
    report["results"] = results
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0
