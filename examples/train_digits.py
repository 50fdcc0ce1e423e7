"""Train a small CNN built from `loopconv.nn` layers on the 8x8 digits of scikit-learn.

The network is conv 3x3 (1 -> 16) - ReLU - conv 3x3 (16 -> 32) - ReLU - 2x2 max pool -
conv 4x4 (32 -> 10, the dense layer: it covers the whole 4x4 map) - softmax cross-entropy,
trained by SGD with momentum.  Everything besides the convolutions is a few lines of NumPy.
The data ship with scikit-learn, so nothing is downloaded.

    python examples/train_digits.py               # full run: about 98 % test accuracy
    python examples/train_digits.py --quick       # a few seconds, for a smoke test
    python examples/train_digits.py --epochs 5 --batch-size 64 --seed 1 --threads 1

The functions `load_data`, `build_model` and `train` can be imported from this file (for
instance with importlib) and used on their own.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import loopconv
from loopconv.nn import Conv2d

# ---------------------------------------------------------------------------------------------
# Data


def load_data(test_size=0.25, seed=0, n_samples=None):
    """The digits as float32 images (N, 1, 8, 8) scaled to [0, 1], split into train and test.

    Returns ``(x_train, y_train, x_test, y_test)``; `n_samples` keeps only that many images
    (chosen at random) before the stratified split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target
    if n_samples is not None:
        keep = np.random.default_rng(seed).permutation(len(y))[:n_samples]
        x, y = x[keep], y[keep]
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size,
                                                        random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------------------------------------
# The layers that are not convolutions: each has forward (keeping what backward needs) and
# backward, like the loopconv layers.

class ReLU:
    """max(x, 0); the gradient passes where the output is positive."""

    def __call__(self, x):
        self.y = np.maximum(x, 0)
        return self.y

    def backward(self, gy):
        # gy is a fresh array from the layer above; the mask is applied in place.
        return np.multiply(gy, self.y > 0, out=gy)


class MaxPool2:
    """2x2 max pooling with stride 2.

    The gradient goes to every element equal to its window's maximum.  Ties are exact float
    equality: behind a ReLU only zeros tie, and their gradient stops at the ReLU.
    """

    def __call__(self, x):
        self.x = x
        top = np.maximum(x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2])
        bottom = np.maximum(x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2])
        self.y = np.maximum(top, bottom, out=top)
        return self.y

    def backward(self, gy):
        n, c, h, w = self.x.shape
        windows = self.x.reshape(n, c, h // 2, 2, w // 2, 2)
        hit = windows == self.y[:, :, :, None, :, None]
        return (hit * gy[:, :, :, None, :, None]).reshape(n, c, h, w)


def build_model(seed=0):
    """The network as a list of layers, initialised from `seed`."""
    rng = np.random.default_rng(seed)
    return [Conv2d(1, 16, 3, padding=1, rng=rng), ReLU(),
            Conv2d(16, 32, 3, padding=1, rng=rng), ReLU(), MaxPool2(),
            Conv2d(32, 10, 4, rng=rng)]


def forward(model, x):
    """Class scores (N, 10)."""
    for layer in model:
        x = layer(x)
    return x.reshape(len(x), -1)


def backward(model, grad_scores):
    g = grad_scores.reshape(len(grad_scores), -1, 1, 1)
    for layer in reversed(model):
        g = layer.backward(g)


def cross_entropy(scores, labels):
    """Mean softmax cross-entropy and its gradient for the scores."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    grad = np.exp(log_p)
    grad[rows, labels] -= 1
    return -log_p[rows, labels].mean(), grad / len(labels)


def accuracy(model, x, labels, batch_size=512):
    hits = sum(int((forward(model, x[i:i + batch_size]).argmax(axis=1)
                    == labels[i:i + batch_size]).sum()) for i in range(0, len(x), batch_size))
    return hits / len(x)


# ---------------------------------------------------------------------------------------------
# Training

def train(model, data, epochs=12, batch_size=32, lr=0.05, momentum=0.9, seed=0, log=print):
    """SGD with momentum on ``data = (x_train, y_train, x_test, y_test)``.

    Returns the history: one dict per epoch with the mean training loss, the train and test
    accuracies (measured after the epoch) and the seconds taken.  `log` (print by default,
    or None) receives one line per epoch.
    """
    x_train, y_train, x_test, y_test = data
    rng = np.random.default_rng(seed)
    params = [layer for layer in model if isinstance(layer, Conv2d)]
    velocity = {id(layer): [np.zeros_like(layer.weight), np.zeros_like(layer.bias)]
                for layer in params}
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(len(x_train))
        losses = []
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            loss, grad = cross_entropy(forward(model, x_train[batch]), y_train[batch])
            backward(model, grad)
            for layer in params:
                for p, g, v in zip((layer.weight, layer.bias),
                                   (layer.grad_weight, layer.grad_bias), velocity[id(layer)]):
                    v *= momentum
                    v -= lr * g
                    p += v
            losses.append(loss * len(batch))
        history.append(dict(epoch=epoch, loss=sum(losses) / len(x_train),
                            train_accuracy=accuracy(model, x_train, y_train),
                            test_accuracy=accuracy(model, x_test, y_test),
                            seconds=time.perf_counter() - start))
        if log is not None:
            h = history[-1]
            log(f"epoch {epoch:3d}/{epochs}  loss {h['loss']:.4f}  "
                f"train {h['train_accuracy']:7.2%}  test {h['test_accuracy']:7.2%}  "
                f"({h['seconds']:.2f} s)")
    return history


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=12, help="passes over the training set")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the split, the initial weights and the batch order")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for loopconv (default: LOOPCONV_NUM_THREADS or all "
                             "cores; 1 is faster when other work keeps a core busy)")
    parser.add_argument("--quick", action="store_true",
                        help="3 epochs on 600 images: a smoke test of about a second")
    args = parser.parse_args(argv)
    if args.threads is not None:
        loopconv.set_num_threads(args.threads)
    epochs = 3 if args.quick else args.epochs
    data = load_data(seed=args.seed, n_samples=600 if args.quick else None)
    print(f"digits: {len(data[0])} training and {len(data[2])} test images of 8x8; "
          f"loopconv on {loopconv.get_num_threads()} thread(s)")
    start = time.perf_counter()
    history = train(build_model(args.seed), data, epochs=epochs, batch_size=args.batch_size,
                    lr=args.lr, seed=args.seed)
    print(f"final test accuracy {history[-1]['test_accuracy']:.2%}; "
          f"total time {time.perf_counter() - start:.1f} s")
    return history


if __name__ == "__main__":
    main()
