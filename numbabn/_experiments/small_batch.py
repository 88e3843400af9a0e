"""``python -m numbabn demo small-batch``: normalizations of the digits MLP at small batch sizes.

The MLP of ``python -m numbabn demo`` (64-128-128-10, ReLU, softmax
cross-entropy, plain SGD) is trained at batch sizes 2, 4, 8 and 32 with no
normalization, ``BatchNorm1d``, ``BatchRenorm1d``, ``LayerNorm`` and
``GroupNorm`` after each hidden linear layer.  Per batch size every
normalization starts from the same initial weights and sees the samples in
the same order; every run trains the same number of epochs, so every run sees
the same number of samples (small batches take more, noisier steps), with
the learning rate proportional to the batch size (0.005 per sample: the
linear scaling rule, so that an epoch moves the weights about as far at
every batch size).  Test
accuracy is measured with the model in inference mode, where batch norm uses
its running statistics: that is where its small-batch problem shows.

Batch renorm follows the paper's recipe, scaled to this run: plain batch norm
for the first 10% of the steps (``warmup_steps``), then ``rmax`` ramped from 1
to 3 and ``dmax`` from 0 to 5 until 40% of the steps (Ioffe, 2017, section 4).
"""
import sys
import time

import numpy as np

from . import nets

BATCH_SIZES = (2, 4, 8, 32)
NORMS = ("none", "BatchNorm1d", "BatchRenorm1d", "LayerNorm", "GroupNorm")
HIDDEN = (128, 128)
LEARNING_RATE_PER_SAMPLE = 0.005  # lr = 0.005 * batch size: 0.01 at 2, 0.16 at 32
RMAX, DMAX = 3.0, 5.0
WARMUP, RAMP_END = 0.1, 0.4  # fractions of the run's steps


class MLP:
    """Linear → [normalization] → ReLU per hidden layer, then a linear output layer."""

    def __init__(self, sizes, norm, seed, **renorm):
        rng = np.random.default_rng(seed)  # the same weights whatever the normalization
        self.layers = []
        for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
            self.layers.append(nets.Linear(n_in, n_out, rng))
            layer = nets.make_norm(norm, n_out, **renorm)
            if layer is not None:
                self.layers.append(layer)
            self.layers.append(nets.ReLU())
        self.layers.append(nets.Linear(sizes[-2], sizes[-1], rng))

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)

    def renorm_layers(self):
        return [layer for layer in self.layers if isinstance(layer, nets.nbn.BatchRenorm)]


def renorm_schedule(step, total):
    """``(rmax, dmax)`` at ``step`` of ``total``: 1 and 0 until WARMUP, linear up to RAMP_END."""
    start, end = WARMUP * total, RAMP_END * total
    ramp = min(1.0, max(0.0, (step - start) / max(end - start, 1.0)))
    return 1.0 + (RMAX - 1.0) * ramp, DMAX * ramp


def train(data, norm, batch_size, epochs, seed, progress):
    """Train one network; returns the test accuracy in inference mode after the last epoch."""
    x_train, y_train, x_test, y_test = data
    steps_per_epoch = len(x_train) // batch_size
    total = steps_per_epoch * epochs
    net = MLP((x_train.shape[1], *HIDDEN, 10), norm, seed,
              warmup_steps=int(WARMUP * total), rmax=1.0, dmax=0.0)
    order_rng = np.random.default_rng(seed + 1)  # the same sample order for every norm
    step = 0
    for epoch in range(epochs):
        nets.set_training(net.layers, True)
        order = order_rng.permutation(len(x_train))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for start in range(0, steps_per_epoch * batch_size, batch_size):
                for layer in net.renorm_layers():
                    layer.rmax, layer.dmax = renorm_schedule(step, total)
                batch = order[start:start + batch_size]
                _, grad = nets.cross_entropy(net(x_train[batch]), y_train[batch])
                net.backward(grad)
                nets.sgd_step(net.layers, LEARNING_RATE_PER_SAMPLE * batch_size)
                step += 1
        progress(epoch + 1)
    nets.set_training(net.layers, False)
    with np.errstate(over="ignore", invalid="ignore"):
        logits = net(x_test)
    if not np.isfinite(logits).all():
        return float("nan")
    return float((logits.argmax(axis=1) == y_test).mean())


def table(results):
    header = ["normalization"] + [f"batch {b}" for b in BATCH_SIZES]
    rows = [[norm] + [nets.percent(results[norm, b]) for b in BATCH_SIZES] for norm in NORMS]
    return nets.markdown_table(header, rows)


def plot(results, path, title):
    plt = nets.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for norm in NORMS:
        ax.plot(BATCH_SIZES, [100 * results[norm, b] for b in BATCH_SIZES], marker="o",
                label=norm)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch size", ylabel="test accuracy, inference mode (%)", title=title)
    ax.set_xticks(BATCH_SIZES, [str(b) for b in BATCH_SIZES])
    ax.minorticks_off()
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out="numbabn-small-batch.png", epochs=20, seed=0, quick=False):
    """Train every (normalization, batch size), print the table, save the plot; returns 0."""
    problem = nets.missing_extras()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    epochs = 1 if quick else epochs
    data = nets.load_digits(quick, seed)
    bar = nets.ProgressBar(len(NORMS) * len(BATCH_SIZES), epochs)
    results = {}
    start = time.perf_counter()
    with nets.one_blas_thread():
        for batch_size in BATCH_SIZES:
            for norm in NORMS:
                label = f"{norm}, batch {batch_size}"
                results[norm, batch_size] = train(
                    data, norm, batch_size, epochs, seed,
                    lambda epoch, label=label: bar.update(label, epoch))
                bar.next_run()
    bar.close()
    n_train, n_test = len(data[0]), len(data[2])
    print(f"MLP 64-{'-'.join(map(str, HIDDEN))}-10, SGD lr {LEARNING_RATE_PER_SAMPLE:g} x batch "
          f"size, {epochs} epochs "
          f"at every batch size (same samples seen), {n_train} training / {n_test} test digits, "
          f"seed {seed}, {time.perf_counter() - start:.1f} s\n")
    print("Test accuracy, model in inference mode (running statistics for batch norm and "
          "batch renorm):\n")
    print(table(results))
    nets.print_stand_ins()
    plot(results, out, f"digits MLP, {epochs} epochs: normalization vs batch size")
    print(f"\nplot saved to {out}")
    return 0
