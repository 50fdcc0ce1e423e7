"""Extra memory during one call of each pass, on the standard benchmark shapes.

The requirement: while a call runs, loopconv uses at most the size of its input plus its output
plus a few MiB of scratch per thread.  For every shape and pass this script starts a fresh
process, which

1. sets up the library with the thread count, and runs the pass once on the tiny ``seed`` shape
   (thread pools, lazy imports and the like are then in place and not counted);
2. draws the inputs, resets the peak resident set size (``/proc/self/clear_refs`` on Linux),
   calls the pass once and reads the peak again with ``resource.getrusage``: the growth is the
   most memory the call took, its result included;
3. calls the pass a second time under `tracemalloc`: the peak of the allocations that Python
   and NumPy know about (arrays, not the C scratch of the compiled loops).

Both are printed next to ``input + output`` (the arrays the call reads, and its result) and the
limit ``input + output + SCRATCH MiB x threads``.  The exit status is 1 when loopconv goes over
the limit.

    python benchmarks/memory.py                       # all shapes and passes, loopconv
    python benchmarks/memory.py --threads 1,2 --peers loopconv,im2col,torch --shapes resnet
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

MIB = 2 ** 20
USES = {"forward": ("x", "w"), "input": ("w", "gy"), "weight": ("x", "gy")}


def _load_bench():
    """lcbench.core (the benchmark, beside this file), loaded from its file so that only the
    loopconv peer imports loopconv (PyTorch brings its own OpenMP runtime)."""
    path = Path(__file__).resolve().parent / "lcbench" / "core.py"
    module_spec = importlib.util.spec_from_file_location("_lcbench_core", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["_lcbench_core"] = module      # dataclasses look their module up here
    module_spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# One measurement, in a fresh process

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _reset_peak() -> bool:
    """Make the peak RSS the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_one(peer: str, shape_name: str, pass_: str, dtype: str, threads: int) -> dict:
    bench = _load_bench()
    _, call = bench.peer_call(peer, threads)
    seed = bench.SHAPES["seed"]
    call(pass_, seed, bench.make_inputs(seed, dtype))()
    shape = bench.SHAPES[shape_name]
    inputs = bench.make_inputs(shape, dtype)
    fn = call(pass_, shape, inputs)

    gc.collect()
    reset = _reset_peak()
    before = _rss()
    slack = max(0, _peak_rss() - before)     # > 0: the peak was not reset, growth is a bound
    result = fn()
    rss_growth = max(0, _peak_rss() - before)
    out_bytes = _nbytes(result)
    del result
    gc.collect()

    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    fn()
    python_peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    return {"peer": peer, "shape": shape_name, "pass": pass_, "dtype": dtype,
            "threads": threads, "in_bytes": sum(inputs[k].nbytes for k in USES[pass_]),
            "out_bytes": out_bytes, "rss_growth": rss_growth, "python_peak": python_peak,
            "peak_reset": reset, "slack": slack}


def _nbytes(result) -> int:
    import numpy as np

    return int(np.asarray(result).nbytes)


# ---------------------------------------------------------------------------------------------
# The driver

def _child(peer, shape, pass_, dtype, threads, bench) -> dict:
    cmd = [sys.executable, __file__, "--one", peer, shape, pass_, dtype, str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=bench.worker_environment(threads, peer))
    if proc.returncode != 0:
        raise RuntimeError(f"{peer} {shape} {pass_}: the measurement failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mib(n: float) -> str:
    return f"{n / MIB:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=None, help="comma-separated (default: all)")
    parser.add_argument("--passes", default="forward,input,weight")
    parser.add_argument("--peers", default="loopconv",
                        help="comma-separated: loopconv, im2col, torch (default: loopconv)")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--scratch", type=float, default=4.0, metavar="MIB",
                        help="scratch allowed per thread, in MiB (default: 4)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--one", nargs=5, metavar=("PEER", "SHAPE", "PASS", "DTYPE", "THREADS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        peer, shape, pass_, dtype, threads = args.one
        print(json.dumps(measure_one(peer, shape, pass_, dtype, int(threads))))
        return 0

    bench = _load_bench()
    shapes = args.shapes.split(",") if args.shapes else list(bench.SHAPES)
    passes, peers = args.passes.split(","), args.peers.split(",")
    threads_list = [int(t) for t in args.threads.split(",")]
    for name, values, known in (("shape", shapes, bench.SHAPES), ("pass", passes, bench.PASSES),
                                ("peer", peers, bench.PEERS)):
        unknown = [v for v in values if v not in known]
        if unknown:
            parser.error(f"unknown {name} {', '.join(unknown)}; choose from {', '.join(known)}")

    header = ("shape", "pass", "input+output", "python peak", "RSS growth", "limit", "")
    widths = (8, 7, 12, 11, 10, 8, 0)

    def line(cells):
        return "  ".join(f"{c:<{w}}" if i < 2 or i == 6 else f"{c:>{w}}"
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rows, over = [], False
    for peer in peers:
        for threads in threads_list:
            plural = "s" if threads > 1 else ""
            print(f"\n{peer}, {args.dtype}, {threads} thread{plural}: MiB during one call "
                  f"(limit: input + output + {args.scratch:g} MiB x {threads})")
            print(line(header))
            for shape in shapes:
                for pass_ in passes:
                    r = _child(peer, shape, pass_, args.dtype, threads, bench)
                    io = r["in_bytes"] + r["out_bytes"]
                    limit = io + args.scratch * MIB * threads
                    ok = r["rss_growth"] <= limit and r["python_peak"] <= limit
                    over |= peer == "loopconv" and not ok
                    note = "ok" if ok else "OVER"
                    if r["slack"] > MIB:
                        note += f" (upper bound: peak was {_mib(r['slack'])} MiB above)"
                    cells = (shape, pass_, _mib(io), _mib(r["python_peak"]),
                             _mib(r["rss_growth"]), _mib(limit), note)
                    print(line(cells), flush=True)
                    rows.append({**r, "limit": limit, "ok": ok})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if over:
        print("\nloopconv went over the limit on some shapes (OVER above)")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
