"""Run-time settings: how many threads the loops use, and what this build runs on.

The number of threads of a call is the first of these that applies:

1. ``with loopconv.threads(n):`` -- in the Python thread that entered the block, and only there
   (what a Dask or joblib task uses to keep its share of the machine);
2. ``loopconv.set_num_threads(n)``, or else the environment variable ``LOOPCONV_NUM_THREADS``
   read at import: a number the user chose for the whole process;
3. OpenMP's limit for the calling thread at the time of the call (``omp_get_max_threads()``),
   which ``OMP_NUM_THREADS`` and ``threadpoolctl.threadpool_limits`` set, and which otherwise is
   the number of cores the process may run on.

Two cases always run on one thread: a build without OpenMP, and a child made by ``os.fork()``
whose OpenMP thread pool may have been inherited broken (GNU OpenMP's pool does not survive a
fork, and a parallel region in the child waits forever for the parent's threads).  That is the
case when the parent had run the loops on several threads, or when loopconv's OpenMP runtime
is not its own copy (a build from source that links the system's runtime, which other
libraries in the process may have started).  Wheels carry their own copy, so a child forked
from a process that never ran loopconv on several threads keeps all its threads.
"""

from __future__ import annotations

import contextlib
import os
import platform as _machine
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from loopconv import _args, _loops
from loopconv._loops import VARIANT, platform, tiled, variants


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _from_environment() -> int | None:
    value = os.environ.get("LOOPCONV_NUM_THREADS", "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n >= 1:
        return n
    warnings.warn(f"loopconv: LOOPCONV_NUM_THREADS={value!r} is not a positive integer; "
                  "following OpenMP's thread limit instead", RuntimeWarning, stacklevel=3)
    return None


def _own_runtime(path: str) -> bool:
    """Whether the OpenMP runtime at `path` is a copy that only loopconv loads: the one a
    repaired wheel vendors (``loopconv.libs/`` on Linux, ``loopconv/.dylibs/`` on macOS)."""
    parts = Path(path).parts
    return "loopconv.libs" in parts or (".dylibs" in parts and "loopconv" in parts)


_chosen: int | None = _from_environment()     # set_num_threads, or LOOPCONV_NUM_THREADS
_local = threading.local()                      # .n: the innermost `threads(n)` of a thread
_forked_pool = False                            # a child of fork() with a pool it cannot use


def _after_fork_in_child() -> None:
    global _forked_pool
    if _loops.started_threads or not _own_runtime(platform.openmp_runtime()):
        _forked_pool = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def get_num_threads() -> int:
    """The number of threads the next call from this Python thread will run on.

    The first that applies: ``loopconv.threads(n)`` in this thread; ``set_num_threads(n)`` or
    ``LOOPCONV_NUM_THREADS``; OpenMP's limit for this thread (``OMP_NUM_THREADS``,
    ``threadpoolctl.threadpool_limits``; by default all available cores).  A build without
    OpenMP, and a child of ``os.fork()`` that cannot use the parent's thread pool, report 1.
    Results are bit-identical whatever the number.

    Examples
    --------
    >>> import loopconv
    >>> loopconv.get_num_threads() >= 1
    True
    >>> with loopconv.threads(1):
    ...     loopconv.get_num_threads()
    1
    """
    if _forked_pool or not platform.openmp():
        return 1
    n = getattr(_local, "n", None)
    if n is None:
        n = _chosen
    if n is None:
        n = platform.omp_max_threads()
    return n


def set_num_threads(n: int) -> None:
    """Run the loops on `n` threads from now on, in every Python thread (a positive int).

    This overrides ``LOOPCONV_NUM_THREADS`` and OpenMP's limit (``OMP_NUM_THREADS``,
    threadpoolctl), but not ``loopconv.threads``, which scopes a number to one Python thread.

    Examples
    --------
    >>> import loopconv
    >>> before = loopconv.get_num_threads()
    >>> loopconv.set_num_threads(1)
    >>> loopconv.get_num_threads()
    1
    >>> loopconv.set_num_threads(before)
    """
    global _chosen
    _chosen = _args.count("set_num_threads", "n", n)


@contextlib.contextmanager
def threads(n: int):
    """Within the block, run the loops called from this Python thread on `n` threads.

    Other Python threads are not affected, which is what a task under a thread pool (Dask's
    threaded scheduler, a ``dask.distributed`` worker, joblib) needs so as not to oversubscribe
    the machine.  It takes precedence over ``set_num_threads`` and OpenMP's limit; blocks nest,
    the innermost wins.  Also usable as a decorator.

    Examples
    --------
    >>> import numpy as np, loopconv
    >>> with loopconv.threads(1):
    ...     y = loopconv.conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)))
    >>> y[0, 0]
    array([[9., 9.],
           [9., 9.]])
    """
    n = _args.count("threads", "n", n)
    previous = getattr(_local, "n", None)
    _local.n = n
    try:
        yield n
    finally:
        _local.n = previous


def _threads_source() -> str:
    if not platform.openmp():
        return "no OpenMP in this build"
    if _forked_pool:
        return "a child of fork(): one thread"
    if getattr(_local, "n", None) is not None:
        return "loopconv.threads() in this thread"
    if _chosen is not None:
        return "set_num_threads or LOOPCONV_NUM_THREADS"
    return "OpenMP's limit for this thread (OMP_NUM_THREADS, threadpoolctl)"


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
        "openmp runtime": platform.openmp_runtime() or "-",
        "threads": get_num_threads(),
        "threads set by": _threads_source(),
        "available cores": available_cores(),
        "cpu variant": VARIANT,
        "variants supported here": ", ".join(variants()),
        "register tiles": (f"{tile['isa']}; forward {_shape(tile['forward tile float32'])} "
                           f"float32, {_shape(tile['forward tile float64'])} float64; weight "
                           f"gradient {_shape(tile['weight tile float32'])} float32"),
        "subnormals": ("flushed to zero inside the loops"
                       if _machine.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64")
                       else "computed as they are"),
    }


def show_config() -> None:
    """Print the version, the NumPy version, OpenMP and its runtime, the thread count and where
    it comes from, and the instruction-set variant in use.

    Examples
    --------
    >>> import loopconv
    >>> loopconv.show_config()  # doctest: +SKIP
    loopconv:                 0.1.0
    ...
    """
    for key, value in config().items():
        print(f"{key + ':':26}{value}")
