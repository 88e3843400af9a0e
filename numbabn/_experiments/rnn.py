r"""``python -m numbabn demo rnn``: normalization inside a recurrent cell, on the digits.

Each 8x8 digit is read as a sequence of 8 rows of 8 pixels by a tanh
recurrent network (64 hidden units) written in NumPy, trained with
backpropagation through time; the last hidden state feeds a linear softmax
classifier.  Three cells, from the same initial weights and batch order:

.. math::

    a_t = x_t W_x + h_{t-1} W_h + b, \qquad h_t = \tanh(\mathrm{N}_t(a_t))

- ``none``: :math:`\mathrm{N}_t(a) = a`;
- ``LayerNorm``: each sample's summed inputs normalized over the hidden units,
  one gain and bias shared by every step (Ba, Kiros and Hinton, 2016, eq. 4);
- ``BatchNorm1d``: each hidden unit normalized over the batch, with separate
  statistics (and running estimates) per time step and one gain and bias
  shared by the steps (Cooijmans et al., 2016, with one batch norm on the
  summed inputs instead of one per term).

Per-step layers with shared parameters: each step keeps its own forward
context for the backward pass, and the parameter gradients of the steps are
summed.  Plain SGD with gradient-norm clipping (the same for every cell).
"""
import math
import sys
import time

import numpy as np

from . import nets

CELLS = ("none", "LayerNorm", "BatchNorm1d")
HIDDEN = 64
STEPS = 8  # rows of the image
BATCH_SIZE = 32
LEARNING_RATE = 0.1
CLIP_NORM = 1.0


class RNNClassifier:
    """tanh RNN over the rows of an image, normalization inside the cell, linear read-out."""

    def __init__(self, n_in, hidden, n_out, steps, cell, seed):
        rng = np.random.default_rng(seed)  # the same weights whatever the cell
        self.w_x = (rng.standard_normal((n_in, hidden)) / math.sqrt(n_in)).astype(np.float32)
        q, _ = np.linalg.qr(rng.standard_normal((hidden, hidden)))
        self.w_h = q.astype(np.float32)  # orthogonal: no growth or decay at the start
        self.b = np.zeros(hidden, np.float32)
        self.w_o = (rng.standard_normal((hidden, n_out)) / math.sqrt(hidden)).astype(np.float32)
        self.b_o = np.zeros(n_out, np.float32)
        self.norms = self._step_norms(cell, hidden, steps)

    @staticmethod
    def _step_norms(cell, hidden, steps):
        """One layer per time step (its own forward context, and running statistics for batch
        norm), all sharing the first one's weight and bias arrays."""
        norms = [nets.make_norm(cell, hidden) for _ in range(steps)]
        if norms[0] is None:
            return []
        for layer in norms[1:]:
            layer.weight, layer.bias = norms[0].weight, norms[0].bias
        return norms

    def params(self):
        shared = [self.norms[0].weight, self.norms[0].bias] if self.norms else []
        return [self.w_x, self.w_h, self.b, self.w_o, self.b_o] + shared

    def train(self, mode=True):
        nets.set_training(self.norms, mode)

    def __call__(self, x):
        """``x`` of shape (N, steps, n_in); returns the logits (N, n_out)."""
        n = x.shape[0]
        self.x = x
        self.h = [np.zeros((n, self.w_h.shape[0]), np.float32)]
        for t in range(x.shape[1]):
            a = x[:, t] @ self.w_x + self.h[-1] @ self.w_h + self.b
            if self.norms:
                a = self.norms[t](a)
            self.h.append(np.tanh(a))
        return self.h[-1] @ self.w_o + self.b_o

    def backward(self, dlogits):
        """Backpropagation through time; returns the gradients in the order of :meth:`params`."""
        g_wo = self.h[-1].T @ dlogits
        g_bo = dlogits.sum(axis=0)
        g_wx, g_wh, g_b = np.zeros_like(self.w_x), np.zeros_like(self.w_h), np.zeros_like(self.b)
        dh = dlogits @ self.w_o.T
        for t in reversed(range(self.x.shape[1])):
            da = dh * (1.0 - self.h[t + 1] ** 2)
            if self.norms:
                da = self.norms[t].backward(da)
            g_wx += self.x[:, t].T @ da
            g_wh += self.h[t].T @ da
            g_b += da.sum(axis=0)
            dh = da @ self.w_h.T
        grads = [g_wx, g_wh, g_b, g_wo, g_bo]
        if self.norms:
            grads += [sum(layer.grad_weight for layer in self.norms),
                      sum(layer.grad_bias for layer in self.norms)]
        return grads


def sgd_clipped(params, grads, lr, clip):
    """SGD on the arrays in place, the gradient rescaled to a global norm of at most ``clip``."""
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    scale = lr * min(1.0, clip / norm) if norm > 0 else lr
    for p, g in zip(params, grads):
        p -= np.float32(scale) * g


def as_sequences(x):
    """Digits (N, 64) as sequences of 8 rows of 8 pixels, (N, 8, 8)."""
    return np.ascontiguousarray(x.reshape(len(x), STEPS, -1))


def train(data, cell, epochs, seed, progress):
    """Per-epoch mean training loss and test accuracy (inference mode)."""
    x_train, y_train, x_test, y_test = data
    net = RNNClassifier(x_train.shape[2], HIDDEN, 10, STEPS, cell, seed)
    order_rng = np.random.default_rng(seed + 1)
    losses, accuracies = [], []
    for epoch in range(epochs):
        net.train()
        order = order_rng.permutation(len(x_train))
        batch_losses = []
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, len(order) - BATCH_SIZE + 1, BATCH_SIZE):
                batch = order[start:start + BATCH_SIZE]
                loss, grad = nets.cross_entropy(net(x_train[batch]), y_train[batch])
                batch_losses.append(loss)
                sgd_clipped(net.params(), net.backward(grad), LEARNING_RATE, CLIP_NORM)
            net.train(False)
            accuracies.append(float((net(x_test).argmax(axis=1) == y_test).mean()))
        losses.append(float(np.mean(batch_losses)))
        progress(epoch + 1)
    return losses, accuracies


def table(results, epochs):
    shown = sorted({1, 2, 5, 10, 20, 30, epochs} & set(range(1, epochs + 1)))
    header = ["epoch"] + [f"{cell} loss" for cell in CELLS] + [f"{cell} test acc."
                                                               for cell in CELLS]
    rows = [[e] + [f"{results[c][0][e - 1]:.4f}" for c in CELLS]
            + [nets.percent(results[c][1][e - 1]) for c in CELLS] for e in shown]
    return nets.markdown_table(header, rows)


def plot(results, path):
    plt = nets.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for cell in CELLS:
        losses, accuracies = results[cell]
        epochs = range(1, len(losses) + 1)
        left.plot(epochs, losses, marker=".", label=cell)
        right.plot(epochs, [100 * a for a in accuracies], marker=".", label=cell)
    left.set(xlabel="epoch", ylabel="training loss (cross-entropy)", yscale="log",
             title="training loss")
    right.set(xlabel="epoch", ylabel="test accuracy, inference mode (%)", title="test accuracy")
    for ax in (left, right):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"tanh RNN ({HIDDEN} units) reading digits row by row: normalization in the cell")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out="numbabn-rnn.png", epochs=30, seed=0, quick=False):
    """Train the three cells, print the table, save the plot; returns 0."""
    problem = nets.missing_extras()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    epochs = 2 if quick else epochs
    x_train, y_train, x_test, y_test = nets.load_digits(quick, seed)
    data = as_sequences(x_train), y_train, as_sequences(x_test), y_test
    bar = nets.ProgressBar(len(CELLS), epochs)
    results = {}
    start = time.perf_counter()
    with nets.one_blas_thread():
        for cell in CELLS:
            results[cell] = train(data, cell, epochs, seed,
                                  lambda epoch, cell=cell: bar.update(cell, epoch))
            bar.next_run()
    bar.close()
    print(f"tanh RNN, {HIDDEN} hidden units, {STEPS} steps of {data[0].shape[2]} pixels, SGD lr "
          f"{LEARNING_RATE:g} (gradient norm clipped at {CLIP_NORM:g}), batch {BATCH_SIZE}, "
          f"{epochs} epochs, {len(y_train)} training / {len(y_test)} test digits, seed {seed}, "
          f"{time.perf_counter() - start:.1f} s\n")
    print(table(results, epochs))
    nets.print_stand_ins()
    plot(results, out)
    print(f"\nplot saved to {out}")
    return 0
