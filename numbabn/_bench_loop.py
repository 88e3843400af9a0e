"""``python -m numbabn bench --loop``: batch norm inside a NumPy training step.

Each workload is one step of a small network written in plain NumPy, forward
and backward (no optimizer), float32, matrix products through NumPy's BLAS:

.. code-block:: text

    h = x @ W1;  a = bn(h);  r = relu(a);  o = r @ W2
    dr = do @ W2.T;  dW2 = r.T @ do;  da = dr * (a > 0);  dh = bn.backward(da);  dW1 = x.T @ dh

The batch norm is numbabn's layer (with its default threads, and with one
Numba thread), a batch norm written in NumPy, or, when PyTorch is installed,
the same step as ``nn.Linear`` + ``nn.BatchNorm1d/2d`` with autograd (as many
threads as Numba).  This is where numbabn's worker threads and NumPy's BLAS
threads take turns on the same cores, so it measures what the kernel
benchmarks cannot.  The contenders take turns in blocks of steps; the table
gives the median over the blocks of the mean time per step.
"""
import json
import math
import os
import statistics
import sys
import time

import numpy as np

EPS = 1e-5
MOMENTUM = 0.1

#: name -> (x shape, hidden width(s), output width, kind, shape the batch norm sees).
#: "conv" is a 1x1 convolution written as a matrix product: (16·28·28, 64) @ (64, 64),
#: whose result is the (16, 64, 28, 28) batch stored channels-last (16, 28, 28, 64).
WORKLOADS = {
    "mlp-512x256": ((512, 256), 256, 10, "1d", (512, 256)),
    "mlp-64x128": ((64, 128), 128, 10, "1d", (64, 128)),
    "conv-16x64x28x28": ((16 * 28 * 28, 64), 64, 10, "2d", (16, 28, 28, 64)),
    "digits-demo": ((64, 64), (128, 128), 10, "demo", None),
}
DESCRIPTIONS = {
    "mlp-512x256": "MLP, x (512, 256), 256 hidden, BatchNorm1d",
    "mlp-64x128": "MLP, x (64, 128), 128 hidden, BatchNorm1d",
    "conv-16x64x28x28": "conv-like, (16*28*28, 64) @ (64, 64), BatchNorm2d on (16, 64, 28, 28)",
    "digits-demo": "the demo's step: 64-128-128-10, batch 64, two BatchNorm1d, cross-entropy",
}
CONTENDERS = ("numbabn", "numbabn-1thread", "numpy", "torch")


class NumpyBatchNorm:
    """Batch norm as a NumPy user writes it (training mode, running statistics updated)."""

    def __init__(self, num_features, axis, dtype=np.float32):
        self.axis = axis
        self.weight = np.ones(num_features, dtype)
        self.bias = np.zeros(num_features, dtype)
        self.running_mean = np.zeros(num_features, dtype)
        self.running_var = np.ones(num_features, dtype)

    def __call__(self, x):
        axis = self.axis % x.ndim
        self.axes = tuple(i for i in range(x.ndim) if i != axis)
        shape = [1] * x.ndim
        shape[axis] = -1
        self.shape = shape
        mean = x.mean(axis=self.axes)
        var = x.var(axis=self.axes)
        m = x.size // x.shape[axis]
        self.running_mean += MOMENTUM * (mean - self.running_mean)
        self.running_var += MOMENTUM * (var * (m / max(m - 1, 1)) - self.running_var)
        self.invstd = (1.0 / np.sqrt(var + EPS)).reshape(shape)
        self.xhat = (x - mean.reshape(shape)) * self.invstd
        return self.xhat * self.weight.reshape(shape) + self.bias.reshape(shape)

    def backward(self, dy):
        m = dy.size // dy.shape[self.axis % dy.ndim]
        self.grad_bias = dy.sum(axis=self.axes)
        self.grad_weight = (dy * self.xhat).sum(axis=self.axes)
        k = self.weight.reshape(self.shape) * self.invstd
        return k * (dy - (self.grad_bias.reshape(self.shape)
                          + self.xhat * self.grad_weight.reshape(self.shape)) / m)


def _batch_norm(kind, features, impl):
    import numbabn as nbn

    axis = -1 if kind == "2d" else 1
    if impl == "numpy":
        return NumpyBatchNorm(features, axis)
    if kind == "2d":
        return nbn.BatchNorm2d(features, axis=-1)
    return nbn.BatchNorm1d(features)


def numpy_step(name, impl, seed=0):
    """One training step (a function of no arguments) of workload ``name`` in NumPy.

    ``impl`` is ``"numbabn"`` (numbabn's layers) or ``"numpy"`` (:class:`NumpyBatchNorm`).
    """
    from . import _demo

    shape, hidden, out, kind, bn_shape = WORKLOADS[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    if kind == "demo":
        net = _demo.MLP((shape[1], *hidden, out), batch_norm=True, seed=seed)
        if impl == "numpy":
            net.layers = [NumpyBatchNorm(len(layer.weight), 1) if hasattr(layer, "running_mean")
                          else layer for layer in net.layers]
        labels = rng.integers(0, out, shape[0])

        def step():
            _, grad = _demo.cross_entropy(net(x), labels)
            net.backward(grad)
        return step

    w1 = (rng.standard_normal((shape[1], hidden)) * math.sqrt(2 / shape[1])).astype(np.float32)
    w2 = (rng.standard_normal((hidden, out)) * math.sqrt(2 / hidden)).astype(np.float32)
    do = rng.standard_normal((shape[0], out), dtype=np.float32)
    bn = _batch_norm(kind, hidden, impl)

    def step():
        h = x @ w1
        a = bn(h.reshape(bn_shape)).reshape(h.shape)
        r = np.maximum(a, 0)
        o = r @ w2
        dr = do @ w2.T
        dw2 = r.T @ do
        da = dr * (a > 0)
        dh = bn.backward(da.reshape(bn_shape)).reshape(h.shape)
        dw1 = x.T @ dh
        return o, dw1, dw2
    return step


def torch_step(torch, name, seed=0):
    """The same step with ``nn.Linear`` + ``nn.BatchNorm1d/2d`` and autograd."""
    nn = torch.nn
    shape, hidden, out, kind, bn_shape = WORKLOADS[name]
    torch.manual_seed(seed)
    x = torch.randn(*shape)
    if kind == "demo":
        net = nn.Sequential(nn.Linear(shape[1], hidden[0]), nn.BatchNorm1d(hidden[0]), nn.ReLU(),
                            nn.Linear(hidden[0], hidden[1]), nn.BatchNorm1d(hidden[1]),
                            nn.ReLU(), nn.Linear(hidden[1], out))
        labels = torch.randint(0, out, (shape[0],))
        loss = nn.CrossEntropyLoss()

        def step():
            net.zero_grad(set_to_none=True)
            loss(net(x), labels).backward()
        return step

    lin1, lin2 = nn.Linear(shape[1], hidden, bias=False), nn.Linear(hidden, out, bias=False)
    bn = nn.BatchNorm2d(hidden) if kind == "2d" else nn.BatchNorm1d(hidden)
    do = torch.randn(shape[0], out)

    def step():
        lin1.zero_grad(set_to_none=True)
        lin2.zero_grad(set_to_none=True)
        h = lin1(x)
        if kind == "2d":  # (N·H·W, C) rows seen as an (N, C, H, W) tensor in channels_last
            a = bn(h.reshape(bn_shape).permute(0, 3, 1, 2))
            a = a.permute(0, 2, 3, 1).reshape(h.shape)
        else:
            a = bn(h)
        o = lin2(torch.relu(a))
        o.backward(do)
    return step


def time_blocks(functions, budget, rounds, before=None, progress=None):
    """Median over ``rounds`` blocks of the mean seconds per call, per function."""
    blocks = block_times(functions, budget, rounds, before, progress)
    return {name: statistics.median(times) for name, times in blocks.items()}


def block_times(functions, budget, rounds, before=None, progress=None):
    """Mean seconds per call in each of ``rounds`` blocks, per function.

    The functions take turns, one block each per round; a block runs the
    function for about ``budget`` seconds after one untimed call, with a short
    pause before it so that the previous block's idle threads settle.
    ``before[name]``, when given, runs before that function's block (and its
    return value, a function, after it).
    """
    blocks = {name: [] for name in functions}
    for _ in range(rounds):
        for name, f in functions.items():
            undo = before[name]() if before and name in before else None
            try:
                time.sleep(0.02)
                f()
                calls, t0 = 0, time.perf_counter()
                while True:
                    f()
                    calls += 1
                    elapsed = time.perf_counter() - t0
                    if elapsed >= budget:
                        break
                blocks[name].append(elapsed / calls)
            finally:
                if undo is not None:
                    undo()
        if progress:
            progress()
    return blocks


def load_torch():
    from ._bench import load_torch
    return load_torch()


def _threads_wanted():
    """Numba's thread count for this process's settings, without starting Numba's threads."""
    import numba

    return numba.config.NUMBA_NUM_THREADS


def child(spec):
    """Run in a fresh process: time one contender on the workloads; returns JSON-ready data.

    ``spec``: ``contender``, ``workloads`` (name -> WORKLOADS entry), ``budget``,
    ``blocks``, ``threads`` (PyTorch's thread count).
    """
    WORKLOADS.update({k: tuple(tuple(x) if isinstance(x, list) else x for x in v)
                      for k, v in spec["workloads"].items()})
    contender = spec["contender"]
    torch = None
    if contender == "torch":
        torch = load_torch()
        torch.set_num_threads(spec["threads"])
    else:
        from .cpu import _chunks  # noqa: F401  (numbabn's thread policy, as a user gets it)
    result = {"ms": {}, "machine": None}
    for name in spec["workloads"]:
        if torch is not None:
            step = torch_step(torch, name)
        else:
            step = numpy_step(name, "numpy" if contender == "numpy" else "numbabn")
        times = block_times({name: step}, spec["budget"], spec["blocks"])[name]
        result["ms"][name] = [1e3 * t for t in times]
    if contender == "numbabn":
        result["machine"] = machine()
    return result


def _child_main():
    print(json.dumps(child(json.loads(sys.argv[1]))))


def run(workloads=None, contenders=CONTENDERS, budget=0.2, rounds=5, processes=3,
        progress=None):
    """Milliseconds per step, ``{workload: {contender: ms}}``, and the machine's description.

    Every contender runs in fresh processes (``processes`` of them, taking
    turns), as a user's program would: the OpenMP runtime and the BLAS pools
    then start with that contender's settings alone, and nothing left spinning
    by one contender slows another.  Each process times ``rounds`` blocks per
    workload; a cell is the median over all blocks of all its processes.
    """
    import subprocess

    workloads = {name: WORKLOADS[name] for name in (workloads or WORKLOADS)}
    if "torch" in contenders and load_torch() is None:
        contenders = [c for c in contenders if c != "torch"]
    threads = _threads_wanted()
    blocks = {c: {name: [] for name in workloads} for c in contenders}
    info = None
    for p in range(processes):
        for contender in contenders:
            if progress:
                progress(f"[{p * len(contenders) + contenders.index(contender) + 1}/"
                         f"{processes * len(contenders)}] {contender}")
            env = dict(os.environ)
            if contender == "numbabn-1thread":
                env["NUMBA_NUM_THREADS"] = "1"
            spec = {"contender": contender, "workloads": workloads, "budget": budget,
                    "blocks": rounds, "threads": threads}
            code = "from numbabn._bench_loop import _child_main; _child_main()"
            done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env,
                                  capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"the {contender} process failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            for name, times in result["ms"].items():
                blocks[contender][name].extend(times)
            info = result["machine"] or info
    results = {name: {c: statistics.median(blocks[c][name]) for c in contenders}
               for name in workloads}
    spread = {name: {c: (min(blocks[c][name]), max(blocks[c][name])) for c in contenders}
              for name in workloads}
    info = dict(info or {}, torch=_torch_version() if "torch" in contenders else None)
    return results, info, spread


def _torch_version():
    torch = load_torch()
    return torch.__version__ if torch is not None else None


def machine():
    import numba

    from . import _threads

    return {"numba_threads": numba.get_num_threads(),
            "threading_layer": _threads.layer_name(),
            "blas": _threads.blas_description(),
            "thread_policy": _threads.describe_policy()}


def format_table(results, info, spread=None):
    contenders = [c for c in CONTENDERS if any(c in r for r in results.values())]
    short = {"numbabn": "numbabn", "numbabn-1thread": "1 thread", "numpy": "numpy BN",
             "torch": "torch"}
    head = f"{'workload':<18}" + "".join(f"{short[c] + ' ms':>13}" for c in contenders)
    ratios = [c for c in contenders if c != "numbabn"]
    head += "".join(f"{'x ' + short[c]:>13}" for c in ratios)
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        line = f"{name:<18}" + "".join(f"{r[c]:13.3f}" for c in contenders)
        line += "".join(f"{r[c] / r['numbabn']:13.2f}" for c in ratios)
        lines.append(line)
    lines.append("")
    for name in results:
        lines.append(f"{name}: {DESCRIPTIONS.get(name, '')}")
    lines.append("ms per training step (forward + backward, float32): median over blocks of "
                 "steps, each contender in fresh processes")
    lines.append("x C = C's time / numbabn's (defaults): above 1, numbabn is faster; "
                 "1 thread = numbabn with NUMBA_NUM_THREADS=1")
    if spread:
        worst = max(hi / lo for row in spread.values() for lo, hi in row.values())
        lines.append(f"noise: the slowest block of a cell took up to {worst:.1f}x its fastest")
    lines.append(f"numba: {info.get('numba_threads')} threads, {info.get('threading_layer')} "
                 f"layer; BLAS: {info.get('blas')}")
    lines.append(f"thread policy: {info.get('thread_policy')}")
    if info.get("torch") is None:
        lines.append("torch: not installed, skipped (pip install 'numbabn[bench]', or from a "
                     "clone: pip install -e \".[bench]\")")
    return "\n".join(lines)


def main(args):
    quick = getattr(args, "quick", False)
    budget, rounds, processes = (0.02, 2, 1) if quick else (0.1, 5, 3)

    def progress(text):
        print(text, file=sys.stderr, flush=True)

    results, info, spread = run(budget=budget, rounds=rounds, processes=processes,
                                progress=progress)
    print(format_table(results, info, spread))
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump({"machine": info, "ms_per_step": results,
                       "ms_per_step_min_max": spread}, f, indent=2)
    return 0
