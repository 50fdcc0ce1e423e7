"""Tiled loops against the passes through columns, layer by layer.

loopconv computes some passes from explicit columns (`loopconv._loops`: `im2col_forward`,
`col2im_grad_input`, `im2col_grad_weight`) where the tiled product would have short rows or
compute mostly padding; `im2col_forward_suits`, `col2im_suits` and `im2col_suits` decide
where, from the shapes alone.  This script times both ways of every pass that could go either
way, on the convolution layers of the networks suite (`lcbench.networks`) or on shapes given
on the command line, and prints the ratio next to what the rule chooses, so that the rules
can be checked on another machine or for other layers:

    taskset -c 0 python benchmarks/columns.py --threads 1
    taskset -c 0,1 python benchmarks/columns.py --threads 2 --networks resnet18,unet3d
    python benchmarks/columns.py --dtype float64 --batch 1,16 --networks resnet50

A row per (layer, pass): the tiled time, the columns' time, tiled / columns (above 1: the
columns are faster) and what `_loops.choose` picks for it (columns, tiled, or the depthwise
or direct loops, which neither time here stands for); a mark `<-` where it picks the tiled
loops or the columns and the other way is faster by more than `--margin` (default 10 %).
Both results are compared, and a disagreement beyond float rounding is an error.  The forward
and weight passes through columns need one group; a layer with more groups is timed for its
input gradient only.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lcbench.networks import NETWORKS  # noqa: E402 -- after the path is set

import loopconv  # noqa: E402
from loopconv import _loops  # noqa: E402


def best(fn, budget: float) -> float:
    """The fastest of several calls of `fn` (at least three, for about `budget` seconds)."""
    fn()
    times = []
    end = time.perf_counter() + budget
    while len(times) < 3 or (time.perf_counter() < end and len(times) < 50):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def conv_geometry(shape):
    """(x 5-D shape, w 5-D shape, y 5-D shape, stride, pad before, groups) of the convolution a
    `lcbench` Shape is, or whose input gradient it is (a transposed convolution)."""
    def five(s):
        return tuple(s[:2]) + (1,) * (5 - len(s)) + tuple(s[2:])
    nd = shape.ndim
    if shape.transposed:
        x, y = shape.output_shape, shape.input_shape
    else:
        x, y = shape.input_shape, shape.output_shape
    y5 = five(y)
    # stride 1 along an axis of one output pixel, as loopconv's functions pass it
    given = (1,) * (3 - nd) + (shape.stride,) * nd
    stride = tuple(1 if n == 1 else s for n, s in zip(y5[2:], given))
    pad = (0,) * (3 - nd) + (shape.padding,) * nd
    return five(x), five(shape.weight_shape), y5, stride, pad, shape.groups


def passes_of(x, w, y, stride, pad, groups, dtype, threads):
    """{pass: (tiled call, columns call, what `_loops.choose` picks)} for the passes where
    both ways apply; each call returns its result."""
    rng = np.random.default_rng(0)
    xa, wa, dy = (rng.standard_normal(s).astype(dtype) for s in (x, w, y))
    none, one = np.empty(0, dtype), (1, 1, 1)

    def timed(fn, out_shape, first, second, bias=True):
        """A call of the pass `fn` on (first, second) into a new array of `out_shape`."""
        def call():
            out = np.empty(out_shape, dtype)
            args = (first, second, none, out) if bias else (first, second, out)
            fn(*args, stride, pad, one, groups, threads)
            return out
        return call

    chosen = _loops.choose(y, w, stride, groups)
    found = {}
    if groups == 1:
        found["forward"] = (timed(_loops.tiled.forward, y, xa, wa),
                            timed(_loops.im2col_forward, y, xa, wa), family(chosen.forward))
    found["input"] = (timed(_loops.tiled.grad_input, x, dy, wa),
                      timed(_loops.col2im_grad_input, x, dy, wa), family(chosen.grad_input))
    if groups == 1:
        found["weight"] = (timed(_loops.tiled.grad_weight, w, xa, dy, bias=False),
                           timed(_loops.im2col_grad_weight, w, xa, dy, bias=False),
                           family(chosen.grad_weight))
    return found


def family(fn) -> str:
    """What `_loops.choose` picked for a pass: columns, tiled, depthwise or direct."""
    if fn in (_loops.im2col_forward, _loops.col2im_grad_input, _loops.im2col_grad_weight):
        return "columns"
    if fn in (_loops.tiled.forward, _loops.tiled.grad_input, _loops.tiled.grad_weight):
        return "tiled"
    return "direct" if getattr(fn, "__module__", "").endswith("direct") else "depthwise"


def layers(names, batches):
    """(label, Shape) of each distinct layer geometry of the named networks at the batches
    (`train`: each network's training batch)."""
    seen = set()
    for name in names:
        net = NETWORKS[name]
        for batch in batches:
            b = net.train_batch if batch == "train" else int(batch)
            for layer in net.layers:
                shape = layer.at(b, layer.name)
                key = conv_geometry(shape)
                if key not in seen:
                    seen.add(key)
                    yield f"{name} b{b} {layer.geometry()}", shape


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default=",".join(NETWORKS),
                        help="networks of the suite, comma-separated (default: all)")
    parser.add_argument("--batch", default="1,train", help="batch sizes, e.g. 1,train,16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--margin", type=float, default=0.1,
                        help="mark rows where the rule's choice is slower by more than this")
    parser.add_argument("--limit", type=int, default=0, help="stop after this many layers")
    args = parser.parse_args(argv)
    names = [n for n in args.networks.split(",") if n]
    unknown = [n for n in names if n not in NETWORKS]
    if unknown:
        parser.error(f"unknown networks {unknown}; known: {', '.join(NETWORKS)}")
    dtype = np.dtype(args.dtype)
    loopconv.set_num_threads(args.threads)
    print(f"{args.dtype}, {args.threads} thread(s), variant {_loops.VARIANT}: tiled / columns "
          f"(above 1: columns faster); chosen: what loopconv runs")
    print(f"{'layer':52} {'pass':8} {'tiled ms':>9} {'columns ms':>10} {'ratio':>6}  chosen")
    rtol = 1e-3 if dtype == np.float32 else 1e-9
    errors = 0
    for i, (label, shape) in enumerate(layers(names, args.batch.split(","))):
        if args.limit and i >= args.limit:
            break
        x, w, y, stride, pad, groups = conv_geometry(shape)
        if math.prod(y[2:]) == 0:
            continue
        for which, (tiled, columns, chosen) in passes_of(x, w, y, stride, pad, groups, dtype,
                                                         args.threads).items():
            a, b = tiled(), columns()
            scale = np.abs(a).max() or 1.0
            if not np.allclose(a, b, rtol=rtol, atol=rtol * scale):
                print(f"{label:52} {which:8} results differ", file=sys.stderr)
                errors += 1
                continue
            t_tiled, t_columns = best(tiled, args.budget), best(columns, args.budget)
            ratio = t_tiled / t_columns
            faster_columns = ratio > 1 + args.margin
            slower_columns = ratio < 1 - args.margin
            mark = ("  <-" if (chosen == "columns" and slower_columns)
                    or (chosen == "tiled" and faster_columns) else "")
            print(f"{label:52} {which:8} {t_tiled * 1e3:9.3f} {t_columns * 1e3:10.3f} "
                  f"{ratio:6.2f}  {chosen}{mark}", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
