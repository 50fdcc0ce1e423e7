"""Speed on subnormal values against the same call on normal values.

A subnormal (denormal) operand or result sends many CPUs down a slow path, 10-100x slower.
loopconv's loops treat subnormal inputs as zero and flush subnormal results to zero, so the
time of a call must not depend on the values.  This times each pass on normal values and on
the same values scaled into the subnormal range (x 1e-39 in float32, x 1e-310 in float64),
alternating the two, and prints the fastest of several rounds of each and their ratio.

    python benchmarks/subnormal.py [--threads N] [--rounds R]

Run it with ``taskset -c 0`` (or ``-c 0,1``) to pin it; ``LOOPCONV_CPU=baseline`` or
``x86-64-v3`` times another instruction-set variant.  The ratio should stay within 1.5.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import loopconv

SCALE = {np.float32: 1e-39, np.float64: 1e-310}


def passes(x, w, gy):
    return {
        "forward": lambda a: loopconv.conv2d(a, w, padding=1),
        "input grad": lambda a: loopconv.conv2d_input(x.shape, w, a, padding=1),
        "weight grad": lambda a: loopconv.conv2d_weight(a, w.shape, gy, padding=1),
    }


def fastest(fn, arg, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shape", default="8,32,32,32", help="N,C,H,W (3x3 kernel, C -> C)")
    args = parser.parse_args()
    n, c, h, w_ = map(int, args.shape.split(","))
    loopconv.set_num_threads(args.threads)
    print(f"loopconv {loopconv.__version__}, variant {loopconv._config.config()['cpu variant']}, "
          f"{loopconv.get_num_threads()} thread(s); input ({n},{c},{h},{w_}), 3x3, padding 1")
    print(f"{'dtype':8} {'pass':12} {'normal ms':>10} {'subnormal ms':>13} {'ratio':>6}")
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((n, c, h, w_)).astype(dtype)
        w = (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(dtype)
        gy = rng.standard_normal((n, c, h, w_)).astype(dtype)
        for name, fn in passes(x, w, gy).items():
            normal = gy if name == "input grad" else x
            tiny = (normal * SCALE[dtype]).astype(dtype)
            fn(normal), fn(tiny)                               # warm up
            t_normal = t_tiny = float("inf")
            for _ in range(args.rounds):                       # alternate: same noise for both
                t_normal = min(t_normal, fastest(fn, normal, 3))
                t_tiny = min(t_tiny, fastest(fn, tiny, 3))
            print(f"{np.dtype(dtype).name:8} {name:12} {t_normal * 1e3:10.3f} "
                  f"{t_tiny * 1e3:13.3f} {t_tiny / t_normal:6.2f}")


if __name__ == "__main__":
    main()
