"""``python -m numbabn demo``: what batch norm buys, measured on scikit-learn's digits.

A small multilayer perceptron in plain NumPy (linear layers, ReLU, softmax
cross-entropy, plain SGD) is trained with and without :class:`numbabn.BatchNorm1d`
after each hidden linear layer, at a moderate and a high learning rate, from
the same initial weights and the same batch order.  It prints a table and saves
a plot of the loss curves.  This module is an example, not library API.
"""
import math
import sys
import time

import numpy as np

import numbabn as nbn

HIDDEN = (128, 128)
BATCH_SIZE = 64
MODERATE_LR, HIGH_LR = 0.05, 2.0  # at 2.0 the plain network stops learning
TARGET_ACCURACY = 0.95


class Linear:
    """``y = x W + b`` with He-initialised ``W``."""

    def __init__(self, n_in, n_out, rng):
        scale = math.sqrt(2.0 / n_in)
        self.weight = (rng.standard_normal((n_in, n_out)) * scale).astype(np.float32)
        self.bias = np.zeros(n_out, np.float32)

    def __call__(self, x):
        self.x = x
        return x @ self.weight + self.bias

    def backward(self, dy):
        self.grad_weight = self.x.T @ dy
        self.grad_bias = dy.sum(axis=0)
        return dy @ self.weight.T


class ReLU:
    def __call__(self, x):
        self.positive = x > 0
        return np.where(self.positive, x, np.float32(0))

    def backward(self, dy):
        return np.where(self.positive, dy, np.float32(0))


class MLP:
    """Linear → [BatchNorm1d] → ReLU per hidden layer, then a linear output layer."""

    def __init__(self, sizes, batch_norm, seed):
        rng = np.random.default_rng(seed)  # same seed, same weights, with or without BN
        self.layers = []
        for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
            self.layers.append(Linear(n_in, n_out, rng))
            if batch_norm:
                self.layers.append(nbn.BatchNorm1d(n_out))
            self.layers.append(ReLU())
        self.layers.append(Linear(sizes[-2], sizes[-1], rng))

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)

    def sgd_step(self, lr):
        for layer in self.layers:
            if getattr(layer, "weight", None) is not None:
                layer.weight -= lr * layer.grad_weight
                layer.bias -= lr * layer.grad_bias

    def train(self, mode=True):
        for layer in self.layers:
            if isinstance(layer, nbn.BatchNorm):
                layer.train(mode)


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = -log_probs[np.arange(n), labels].mean()
    grad = np.exp(log_probs)
    grad[np.arange(n), labels] -= 1
    return float(loss), (grad / n).astype(np.float32)


def train(data, batch_norm, lr, epochs, seed, progress):
    """Train one network; returns per-epoch train loss and test accuracy (stops on divergence)."""
    x_train, y_train, x_test, y_test = data
    net = MLP((x_train.shape[1], *HIDDEN, 10), batch_norm, seed)
    order_rng = np.random.default_rng(seed + 1)
    losses, accuracies = [], []
    for epoch in range(epochs):
        net.train()
        order = order_rng.permutation(len(x_train))
        batch_losses = []
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, len(order) - BATCH_SIZE + 1, BATCH_SIZE):  # full batches only
                batch = order[start:start + BATCH_SIZE]
                loss, grad = cross_entropy(net(x_train[batch]), y_train[batch])
                batch_losses.append(loss)
                net.backward(grad)
                net.sgd_step(lr)
            net.train(False)
            accuracy = float((net(x_test).argmax(axis=1) == y_test).mean())
        losses.append(float(np.mean(batch_losses)))
        accuracies.append(accuracy)
        progress(epoch + 1)
        if not math.isfinite(losses[-1]):
            break
    return losses, accuracies


def load_digits(quick, seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixel values 0..16 to [0, 1]; no per-feature scaling
    if quick:
        x, y = x[:400], y[:400]
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    return x_train, y_train, x_test, y_test


class ProgressBar:
    """One line on stderr, redrawn in place: ``[#####.....] run 3/4, epoch 12/30``."""

    def __init__(self, runs, epochs, width=30, stream=sys.stderr):
        self.total, self.epochs, self.width, self.stream = runs * epochs, epochs, width, stream
        self.done_runs = 0

    def update(self, label, epoch):
        done = self.done_runs * self.epochs + epoch
        filled = self.width * done // self.total
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {label:<24} "
                          f"epoch {epoch:>3}/{self.epochs}")
        self.stream.flush()

    def next_run(self):
        self.done_runs += 1

    def close(self):
        self.stream.write("\n")
        self.stream.flush()


def epochs_to(accuracies, target):
    for epoch, accuracy in enumerate(accuracies, start=1):
        if accuracy >= target:
            return str(epoch)
    return "never"


def table(results, epochs):
    lines = [
        "| network | learning rate | final train loss | test accuracy "
        f"| epochs to {TARGET_ACCURACY:.0%} test accuracy |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (name, lr), (losses, accuracies) in results.items():
        final = f"{losses[-1]:.4f}" if math.isfinite(losses[-1]) else "diverged"
        if len(losses) < epochs:
            final += f" (stopped at epoch {len(losses)})"
        accuracy = f"{accuracies[-1]:.1%}" if math.isfinite(losses[-1]) else "-"
        lines.append(f"| {name} | {lr:g} | {final} | {accuracy} "
                     f"| {epochs_to(accuracies, TARGET_ACCURACY)} |")
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rates = sorted({lr for _, lr in results})
    fig, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 3.8), sharey=True)
    for ax, lr in zip(np.atleast_1d(axes), rates):
        for (name, run_lr), (losses, _) in results.items():
            if run_lr == lr:
                ax.plot(range(1, len(losses) + 1), losses, marker=".", label=name)
        ax.set(title=f"learning rate {lr:g}", xlabel="epoch", yscale="log")
        ax.legend()
    np.atleast_1d(axes)[0].set_ylabel("train loss (cross-entropy)")
    fig.suptitle("MLP on scikit-learn digits, with and without numbabn.BatchNorm1d")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out="numbabn-demo.png", epochs=30, seed=0, quick=False):
    """Run the four trainings, print the table, save the plot to ``out``; returns 0."""
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
        from threadpoolctl import threadpool_limits
    except ImportError as err:
        print(f"the demo needs scikit-learn, matplotlib and threadpoolctl ({err}): "
              "pip install 'numbabn[demo]', or from a clone of the repository: "
              "pip install -e \".[demo]\"", file=sys.stderr)
        return 2
    epochs = 3 if quick else epochs
    data = load_digits(quick, seed)
    runs = [(name, bn, lr) for lr in (MODERATE_LR, HIGH_LR)
            for name, bn in (("plain", False), ("BatchNorm1d", True))]
    bar = ProgressBar(len(runs), epochs)
    results = {}
    start = time.perf_counter()
    # The matrices are tiny: a multi-threaded BLAS only fights Numba's threads for the cores
    # (on the shared 2-core VM each step was tens of times slower).
    with threadpool_limits(limits=1, user_api="blas"):
        for name, batch_norm, lr in runs:
            label = f"{name}, lr {lr:g}"
            results[(name, lr)] = train(data, batch_norm, lr, epochs, seed,
                                        lambda epoch, label=label: bar.update(label, epoch))
            bar.next_run()
    bar.close()
    n_train, n_test = len(data[0]), len(data[2])
    print(f"MLP 64-{'-'.join(map(str, HIDDEN))}-10, SGD, batch {BATCH_SIZE}, {epochs} epochs, "
          f"{n_train} training / {n_test} test digits, {time.perf_counter() - start:.1f} s\n")
    print(table(results, epochs))
    plot(results, out)
    print(f"\nloss curves saved to {out}")
    return 0
