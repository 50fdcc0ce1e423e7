"""Run-time settings: the number of threads, and what this build runs on."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

from loopconv import _args
from loopconv._loops import VARIANT, platform, tiled, variants


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _default_threads() -> int:
    value = os.environ.get("LOOPCONV_NUM_THREADS", "").strip()
    if value:
        try:
            n = int(value)
            if n >= 1:
                return n
        except ValueError:
            pass
        warnings.warn(f"loopconv: LOOPCONV_NUM_THREADS={value!r} is not a positive integer; "
                      "using all available cores", RuntimeWarning, stacklevel=3)
    return available_cores()


_num_threads = _default_threads()


def get_num_threads() -> int:
    """The number of threads the loops run on.

    The default is ``LOOPCONV_NUM_THREADS`` if set, else all cores available to the process.
    Results are bit-identical whatever the number.  A build without OpenMP runs on one thread
    and reports 1.

    Examples
    --------
    >>> import loopconv
    >>> loopconv.get_num_threads() >= 1
    True
    """
    return _num_threads if platform.openmp() else 1


def set_num_threads(n: int) -> None:
    """Run the loops on `n` threads from now on (a positive int).

    Examples
    --------
    >>> import loopconv
    >>> before = loopconv.get_num_threads()
    >>> loopconv.set_num_threads(1)
    >>> loopconv.get_num_threads()
    1
    >>> loopconv.set_num_threads(before)
    """
    global _num_threads
    _num_threads = _args.count("set_num_threads", "n", n)


def _shape(rows_cols) -> str:
    return f"{rows_cols[0]}x{rows_cols[1]}"


def config() -> dict:
    """What `show_config` prints, as a dict."""
    from loopconv import __version__

    tile = tiled.info()
    return {
        "loopconv": __version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "openmp": platform.openmp(),
        "threads": get_num_threads(),
        "available cores": available_cores(),
        "cpu variant": VARIANT,
        "variants supported here": ", ".join(variants()),
        "register tiles": (f"{tile['isa']}; forward {_shape(tile['forward tile float32'])} "
                           f"float32, {_shape(tile['forward tile float64'])} float64; weight "
                           f"gradient {_shape(tile['weight tile float32'])} float32"),
    }


def show_config() -> None:
    """Print the version, the NumPy version, OpenMP, the thread count and the instruction-set
    variant in use.

    Examples
    --------
    >>> import loopconv
    >>> loopconv.show_config()  # doctest: +SKIP
    loopconv:                 0.1.0
    ...
    """
    for key, value in config().items():
        print(f"{key + ':':26}{value}")
