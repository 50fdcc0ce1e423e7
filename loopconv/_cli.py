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


# ---------------------------------------------------------------------------------------------
# bench: the options (the machinery is in loopconv._bench)

def _names(choices, what):
    """An argparse type: a comma-separated list of names from `choices`."""
    def parse(text):
        names = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in names if t not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown)) or repr(text)}; "
                f"choose from {', '.join(choices)} (comma-separated)")
        return list(dict.fromkeys(names))
    return parse


def _counts(text):
    """An argparse type: a comma-separated list of positive ints."""
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1 or 1,2, got {text!r}")
    return list(dict.fromkeys(values))


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _batches(text):
    """An argparse type: a comma-separated list of batch sizes, each 1, train or a number."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t != "train" and not (t.isdigit() and int(t) >= 1)]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"expected batch sizes like 1,train or 4 (train: each network's training batch "
            f"size), got {text!r}")
    return list(dict.fromkeys(t if t == "train" else str(int(t)) for t in items))


# the options (their argparse names) that only one suite has
_LAYERS_ONLY = ("shapes", "passes", "plot")
_NETWORKS_ONLY = ("networks", "batch", "detail", "no_onnxruntime")


def _add_bench_parser(sub) -> argparse.ArgumentParser:
    from loopconv import _bench
    from loopconv._networks import NETWORKS

    p = sub.add_parser(
        "bench", help="time loopconv against NumPy im2col, PyTorch and ONNX Runtime",
        description="Time the forward pass and both gradients of loopconv against a NumPy "
                    "im2col implementation and (when installed) PyTorch, each library in its own "
                    "process.  --suite layers (the default) times standard layer shapes; "
                    "--suite networks times one training step of the convolutions of whole "
                    "networks against PyTorch, and their forward passes against ONNX Runtime.  "
                    "Progress goes to stderr, the tables to stdout.  Shapes: "
                    + "; ".join(f"{s.name} {s.describe()}" for s in _bench.SHAPES.values())
                    + ".  Networks: " + "; ".join(f"{n.name} ({n.variant})"
                                                  for n in NETWORKS.values()) + ".")
    p.add_argument("--suite", choices=("layers", "networks"), default="layers",
                   help="layers: the standard shapes (default); networks: whole networks")
    p.add_argument("--threads", type=_counts, default=None, metavar="N[,N...]",
                   help="thread counts to run, e.g. 1,2 (default: loopconv's default, "
                        "LOOPCONV_NUM_THREADS or all cores)")
    p.add_argument("--dtype", type=_names(_bench.DTYPES, "dtype"), default=["float32"],
                   metavar="DTYPE[,DTYPE]", help="float32 (default), float64 or both")
    p.add_argument("--repeat", type=_positive, default=None, metavar="R",
                   help="timed samples per turn (default: adaptive, about "
                        f"{_bench.BUDGET:g} s per measurement in all its turns, "
                        f"{_bench.NET_BUDGET:g} s with --suite networks)")
    p.add_argument("--rounds", type=_positive, default=None, metavar="K",
                   help="turns each library takes at each measurement; its fastest turn "
                        f"counts (default: {_bench.ROUNDS}, {_bench.NET_ROUNDS} with --suite "
                        "networks)")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    p.add_argument("--json", metavar="FILE", help="also write all results to FILE as JSON")
    layers = p.add_argument_group("--suite layers")
    layers.add_argument("--shapes", type=_names(list(_bench.SHAPES), "shape"), default=None,
                        metavar="NAME[,NAME...]",
                        help="shapes to run (default: all): " + ", ".join(_bench.SHAPES))
    layers.add_argument("--passes", type=_names(_bench.PASSES, "pass"), default=None,
                        metavar="PASS[,PASS...]",
                        help="passes to run (default: all): forward, input, weight")
    layers.add_argument("--plot", metavar="FILE.png", help="also draw GFLOP/s as a chart "
                                                            "(needs matplotlib)")
    networks = p.add_argument_group("--suite networks")
    networks.add_argument("--networks", type=_names(list(NETWORKS), "network"), default=None,
                          metavar="NAME[,NAME...]",
                          help="networks to run (default: all): " + ", ".join(NETWORKS))
    networks.add_argument("--batch", type=_batches, default=None, metavar="B[,B...]",
                          help="batch sizes: 1, train (each network's training batch size) or "
                               "a number (default: 1,train)")
    networks.add_argument("--detail", action="store_true",
                          help="also print every layer's times, a table per network")
    networks.add_argument("--no-onnxruntime", action="store_true",
                          help="leave ONNX Runtime out")
    return p


def _check_suite(parser, args) -> None:
    """Refuse the options of the other suite."""
    other = _NETWORKS_ONLY if args.suite == "layers" else _LAYERS_ONLY
    given = [name for name in other if getattr(args, name) not in (None, False)]
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        parser.error(f"{options}: not an option of --suite {args.suite}")


def bench(args) -> int:
    from loopconv import _bench, get_num_threads

    threads = args.threads or [get_num_threads()]
    if args.suite == "networks":
        from loopconv._networks import NETWORKS

        return _bench.bench_networks(
            args.networks or list(NETWORKS), args.batch or list(_bench.BATCHES), threads,
            args.dtype, repeat=args.repeat, rounds=args.rounds or _bench.NET_ROUNDS,
            torch=not args.no_torch, onnxruntime=not args.no_onnxruntime,
            json_path=args.json, detail=args.detail)
    return _bench.bench(args.shapes or list(_bench.SHAPES), args.passes or list(_bench.PASSES),
                        threads, args.dtype, repeat=args.repeat,
                        rounds=args.rounds or _bench.ROUNDS, torch=not args.no_torch,
                        json_path=args.json, plot_path=args.plot)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loopconv",
                                     description="loopconv: fast convolutions for NumPy")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="reproduce the seed document's worked example")
    sub.add_parser("info", help="version, OpenMP, threads and instruction-set variant")
    bench_parser = _add_bench_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    if args.command == "info":
        return info()
    if args.command == "bench":
        _check_suite(bench_parser, args)
        return bench(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
