"""The compiled loops, and the choice among them.

- `direct`: the defining sums as plain loops (the reference; also the fastest for tiny problems);
- `tiled_*`: matrix-multiply loops with a register tile, one module per instruction set
  (`baseline` everywhere; `x86-64-v3` and `x86-64-v4` on x86-64), chosen at import from the CPU's
  features, or forced with the environment variable ``LOOPCONV_CPU``.

`forward`, `grad_input` and `grad_weight` take C-contiguous 5-D arrays (see tiled.pxi for the
layout) and pick the direct or the tiled loops by problem size only -- never by thread count,
so that results are bit-identical for any number of threads.  `direct.Plan` runs the direct
loops for a geometry checked once (see loopconv.functional).
"""

import importlib
import os
import warnings

from loopconv._loops import direct, platform

# name -> (module, x86-64 level it needs)
_VARIANTS = {
    "baseline": ("tiled_baseline", 0),
    "x86-64-v3": ("tiled_x86_64_v3", 3),
    "x86-64-v4": ("tiled_x86_64_v4", 4),
}

# Below this many multiply-adds the direct loops win: packing panels costs more than it saves.
SMALL_PROBLEM = 1 << 16


def variants():
    """{name: module} of the tiled variants built here and supported by this CPU, slowest first."""
    level = platform.x86_level()
    found = {}
    for name, (module, need) in _VARIANTS.items():
        if need > level:
            continue
        try:
            found[name] = importlib.import_module(f"loopconv._loops.{module}")
        except ImportError:
            continue
    return found


def _choose():
    available = variants()
    best = list(available)[-1]
    forced = os.environ.get("LOOPCONV_CPU", "").strip()
    if not forced:
        return best, available[best]
    if forced in available:
        return forced, available[forced]
    reason = ("not supported by this CPU or not built" if forced in _VARIANTS
              else f"not one of {list(_VARIANTS)}")
    warnings.warn(f"loopconv: LOOPCONV_CPU={forced!r} is {reason}; using {best!r}",
                  RuntimeWarning, stacklevel=2)
    return best, available[best]


VARIANT, tiled = _choose()


def small(macs) -> bool:
    """Whether a problem of `macs` multiply-adds runs on the direct loops, on one thread (waking
    a second thread costs more than such a problem)."""
    return macs < SMALL_PROBLEM


# Whether a loop has run on more than one thread in this process: the OpenMP thread pool then
# exists, and a child made by fork() inherits it broken (see loopconv._config).
started_threads = False


def _run(macs, num_threads):
    global started_threads
    if small(macs):
        return direct, 1
    if num_threads > 1:
        started_threads = True
    return tiled, num_threads


def forward(x, w, bias, y, stride, pad, dilation, groups, num_threads):
    loops, n = _run(y.size * w.shape[1] * w.shape[2] * w.shape[3] * w.shape[4], num_threads)
    loops.forward(x, w, bias, y, stride, pad, dilation, groups, n)


def grad_input(dy, w, bias, dx, stride, pad, dilation, groups, num_threads):
    loops, n = _run(dy.size * w.shape[1] * w.shape[2] * w.shape[3] * w.shape[4], num_threads)
    loops.grad_input(dy, w, bias, dx, stride, pad, dilation, groups, n)


def grad_weight(x, dy, dw, stride, pad, dilation, groups, num_threads):
    loops, n = _run(dy.size * dw.shape[1] * dw.shape[2] * dw.shape[3] * dw.shape[4],
                    num_threads)
    loops.grad_weight(x, dy, dw, stride, pad, dilation, groups, n)
