"""The command line: ``python -m loopconv {demo,info,bench}``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------
# bench: a thin entry; the benchmark is not part of the installed package

BENCH_HELP = ("time loopconv against NumPy im2col, PyTorch and ONNX Runtime (from a source "
              "checkout: the benchmark lives in its benchmarks/ directory)")


def _package_checkout() -> Path:
    """The directory above the loopconv package: a source checkout for an in-place or
    editable build, site-packages for an installed wheel."""
    import loopconv

    return Path(loopconv.__file__).resolve().parents[1]


def _benchmarks_dir() -> Path | None:
    """The directory that holds the `lcbench` package: $LOOPCONV_BENCHMARKS, else the
    benchmarks/ of the checkout this loopconv was built in, else ./benchmarks."""
    candidates = [os.environ.get("LOOPCONV_BENCHMARKS"), _package_checkout() / "benchmarks",
                  Path.cwd() / "benchmarks"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "lcbench" / "__init__.py").is_file():
            return Path(candidate).resolve()
    return None


def bench(argv) -> int:
    """Load the benchmark (only now) and run it with the options `argv`."""
    where = _benchmarks_dir()
    if where is None:
        print("python -m loopconv bench: the benchmark is not installed with the package; it "
              "is in the benchmarks/ directory of loopconv's source (the repository or the "
              "sdist).  Run this command in a checkout, or set LOOPCONV_BENCHMARKS to that "
              "benchmarks/ directory.", file=sys.stderr)
        return 2
    if str(where) not in sys.path:
        sys.path.insert(0, str(where))
    return importlib.import_module("lcbench.cli").main(argv)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loopconv",
                                     description="loopconv: fast convolutions for NumPy")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="reproduce the seed document's worked example")
    sub.add_parser("info", help="version, OpenMP, threads and instruction-set variant")
    sub.add_parser("bench", help=BENCH_HELP, add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:                   # its options are the benchmark's own
        return bench(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    if args.command == "info":
        return info()
    return 2


if __name__ == "__main__":
    sys.exit(main())
