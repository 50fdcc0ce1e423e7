"""The command line: ``python -m loopconv {demo,info,bench}``."""

from __future__ import annotations

import argparse
import sys

import numpy as np

# The seed document's printed results for its example: a 5x5 input of arange(25), a 2x2 kernel
# of ones, stride 1, no padding, and a gradient of ones flowing back.
SEED_GRAD_INPUT = np.array([[1, 2, 2, 2, 1],
                            [2, 4, 4, 4, 2],
                            [2, 4, 4, 4, 2],
                            [2, 4, 4, 4, 2],
                            [1, 2, 2, 2, 1]], dtype=np.float64)
SEED_GRAD_WEIGHT = np.array([[144, 160],
                             [224, 240]], dtype=np.float64)


def _side_by_side(title: str, ours: np.ndarray, seed: np.ndarray) -> str:
    left = np.array2string(ours, precision=4, suppress_small=True).splitlines()
    right = np.array2string(seed, precision=4, suppress_small=True).splitlines()
    width = max(len(s) for s in left + ["loopconv"])
    lines = [title, f"  {'loopconv':<{width}}    seed (and PyTorch)"]
    lines += [f"  {a:<{width}}    {b}" for a, b in zip(left, right)]
    return "\n".join(lines)


def demo() -> int:
    """Reproduce the seed's worked example and compare with its printed numbers."""
    import loopconv

    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    w = np.ones((1, 1, 2, 2))
    y = loopconv.conv2d(x, w, stride=1, padding=0)
    grad_input, grad_weight, grad_bias = loopconv.conv2d_backward(x, w, np.ones_like(y))
    print("The seed's example: a 5x5 input of arange(25), a 2x2 kernel of ones, stride 1,")
    print("no padding; the gradient flowing back (eta) is all ones.\n")
    print("forward output:")
    print(np.array2string(y[0, 0], precision=4), "\n")
    print(_side_by_side("grad_input:", grad_input[0, 0], SEED_GRAD_INPUT), "\n")
    print(_side_by_side("grad_weight:", grad_weight[0, 0], SEED_GRAD_WEIGHT), "\n")
    print(f"grad_bias: {grad_bias}")
    ok = (np.array_equal(grad_input[0, 0], SEED_GRAD_INPUT)
          and np.array_equal(grad_weight[0, 0], SEED_GRAD_WEIGHT))
    print("\nmatch: " + ("yes, exactly" if ok else "NO"))
    return 0 if ok else 1


def info() -> int:
    import loopconv

    loopconv.show_config()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loopconv",
                                     description="loopconv: fast convolutions for NumPy")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="reproduce the seed document's worked example")
    sub.add_parser("info", help="version, OpenMP, threads and instruction-set variant")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    if args.command == "info":
        return info()
    return 2


if __name__ == "__main__":
    sys.exit(main())
