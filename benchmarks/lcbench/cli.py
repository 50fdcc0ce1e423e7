"""The options of ``python -m loopconv bench`` (and of ``python benchmarks/bench.py``, the same
thing run from a source checkout): parsed here, run by `lcbench.core`."""

from __future__ import annotations

import argparse
import sys

from lcbench import core
from lcbench.networks import ALL_NETWORKS, MORE_NETWORKS, NETWORKS


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


def parser(prog: str = "python -m loopconv bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Time the forward pass and both gradients of loopconv against a NumPy "
                    "im2col implementation and (when installed) PyTorch, each library in its own "
                    "process.  --suite layers (the default) times standard layer shapes; "
                    "--suite networks times one training step of the convolutions of whole "
                    "networks against PyTorch, and their forward passes against ONNX Runtime.  "
                    "Progress goes to stderr, the tables to stdout.  Shapes: "
                    + "; ".join(f"{s.name} {s.describe()}" for s in core.SHAPES.values())
                    + ".  Networks: " + "; ".join(f"{n.name} ({n.variant})"
                                                  for n in NETWORKS.values())
                    + ".  More networks, run when named: " + "; ".join(
                        f"{n.name} ({n.variant})" for n in MORE_NETWORKS.values()) + ".")
    p.add_argument("--suite", choices=("layers", "networks"), default="layers",
                   help="layers: the standard shapes (default); networks: whole networks")
    p.add_argument("--threads", type=_counts, default=None, metavar="N[,N...]",
                   help="thread counts to run, e.g. 1,2 (default: loopconv's default, "
                        "LOOPCONV_NUM_THREADS or all cores)")
    p.add_argument("--dtype", type=_names(core.DTYPES, "dtype"), default=["float32"],
                   metavar="DTYPE[,DTYPE]", help="float32 (default), float64 or both")
    p.add_argument("--repeat", type=_positive, default=None, metavar="R",
                   help="timed samples per turn (default: adaptive, about "
                        f"{core.BUDGET:g} s per measurement in all its turns, "
                        f"{core.NET_BUDGET:g} s with --suite networks)")
    p.add_argument("--rounds", type=_positive, default=None, metavar="K",
                   help="turns each library takes at each measurement; its fastest turn "
                        f"counts (default: {core.ROUNDS}, {core.NET_ROUNDS} with --suite "
                        "networks)")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    p.add_argument("--json", metavar="FILE", help="also write all results to FILE as JSON")
    layers = p.add_argument_group("--suite layers")
    layers.add_argument("--shapes", type=_names(list(core.SHAPES), "shape"), default=None,
                        metavar="NAME[,NAME...]",
                        help="shapes to run (default: all): " + ", ".join(core.SHAPES))
    layers.add_argument("--passes", type=_names(core.PASSES, "pass"), default=None,
                        metavar="PASS[,PASS...]",
                        help="passes to run (default: all): forward, input, weight")
    layers.add_argument("--plot", metavar="FILE.png", help="also draw GFLOP/s as a chart "
                                                            "(needs matplotlib)")
    networks = p.add_argument_group("--suite networks")
    networks.add_argument("--networks", type=_names(list(ALL_NETWORKS), "network"),
                          default=None, metavar="NAME[,NAME...]",
                          help="networks to run (default: " + ", ".join(NETWORKS)
                               + "; also " + ", ".join(MORE_NETWORKS) + ")")
    networks.add_argument("--batch", type=_batches, default=None, metavar="B[,B...]",
                          help="batch sizes: 1, train (each network's training batch size) or "
                               "a number (default: 1,train)")
    networks.add_argument("--detail", action="store_true",
                          help="also print every layer's times, a table per network")
    networks.add_argument("--no-onnxruntime", action="store_true",
                          help="leave ONNX Runtime out (both its workers: the weight an "
                               "initializer, and given on every call)")
    return p


def _check_suite(parser, args) -> None:
    """Refuse the options of the other suite."""
    other = _NETWORKS_ONLY if args.suite == "layers" else _LAYERS_ONLY
    given = [name for name in other if getattr(args, name) not in (None, False)]
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        parser.error(f"{options}: not an option of --suite {args.suite}")


def bench(args) -> int:
    from loopconv import get_num_threads

    threads = args.threads or [get_num_threads()]
    if args.suite == "networks":
        return core.bench_networks(
            args.networks or list(NETWORKS), args.batch or list(core.BATCHES), threads,
            args.dtype, repeat=args.repeat, rounds=args.rounds or core.NET_ROUNDS,
            torch=not args.no_torch, onnxruntime=not args.no_onnxruntime,
            json_path=args.json, detail=args.detail)
    return core.bench(args.shapes or list(core.SHAPES), args.passes or list(core.PASSES),
                        threads, args.dtype, repeat=args.repeat,
                        rounds=args.rounds or core.ROUNDS, torch=not args.no_torch,
                        json_path=args.json, plot_path=args.plot)


def main(argv=None, prog: str = "python -m loopconv bench") -> int:
    p = parser(prog)
    args = p.parse_args(argv)
    _check_suite(p, args)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main(prog="lcbench.cli"))
