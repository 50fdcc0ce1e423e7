"""``python -m loopconv bench``: time loopconv against NumPy im2col, PyTorch and ONNX Runtime.

The machinery behind the ``bench`` subcommand (whose options are parsed in `lcbench.cli`):
the table of standard layer shapes, the worker processes that time one library each, the
timing itself, the result table, the JSON file and the chart.  Two suites share it:

- ``--suite layers`` (the default): the standard shapes `SHAPES`, each pass timed in loopconv,
  NumPy im2col and PyTorch;
- ``--suite networks``: the convolution layers of whole networks (`lcbench.networks`),
  each network's training step (forward pass, input and weight gradient of every layer)
  timed in loopconv and PyTorch, and its forward passes in ONNX Runtime as well (the weight
  an initializer, and the weight given on every call).

How the timing is done
----------------------
- Every library runs in its own worker process, started once per thread count; the parent
  sends jobs (shape, pass, dtype) one at a time over a pipe, so only one worker computes at a
  time, and the peers take turns shape by shape rather than one after the other, which spreads
  the noise of a shared machine evenly over them.
- A worker is started with ``OMP_NUM_THREADS`` and ``LOOPCONV_NUM_THREADS`` in its
  environment, and ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` (NumPy's BLAS reads them
  when NumPy is imported) set to the thread count in the im2col worker and to 1 elsewhere (see
  `worker_environment`), then also calls ``loopconv.set_num_threads`` or
  ``torch.set_num_threads``.  The
  NumPy and PyTorch workers do not import loopconv (PyTorch ships its own OpenMP runtime).
- Every worker draws the same random inputs (same seed, shape and dtype); PyTorch gets them as
  tensors through ``torch.from_numpy`` and runs under ``torch.no_grad()``.  The ONNX Runtime
  workers (which import neither loopconv nor PyTorch) run a one-node model per layer: in one
  (``onnxruntime``) the weight is an initializer, which ONNX Runtime may lay out anew for its
  kernels once, when the session is made; in the other (``onnxruntime-input``) it is an input
  of the model, handed over on every call as loopconv gets it.
- A measurement: warm-up calls, then timed samples; the reported time is the median.  Calls
  shorter than `MIN_SAMPLE` are grouped into samples of several calls (as `timeit` does).  The
  number of samples adapts to the call's duration so that each measurement takes about
  `BUDGET` seconds (between `MIN_REPEAT` and `MAX_REPEAT` samples), unless ``--repeat`` fixes
  it.
- Each worker sends back a checksum of its result (the norm, and the dot product with a fixed
  random vector); results that disagree with loopconv's are flagged, since the time of a wrong
  answer means nothing.
- The networks suite has many more, and larger, measurements: the peers take turns layer by
  layer (all passes of a layer's geometry in a turn), so that a slow spell of a shared
  machine falls on every peer's measurements of a layer alike (above one thread each switch
  costs a `SWITCH_PAUSE`: the thread pools of the previous worker spin for some 50 ms after
  its last call); a measurement gets a smaller budget (`NET_BUDGET`, at least 3 samples, and
  a first call over 10 ms is the whole warm-up), and the inputs are cut from a pool of random
  numbers (`pooled_inputs`).

FLOPs of every pass: ``2 * N * O * (C / groups) * kh * kw * OH * OW``.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

PASSES = ("forward", "input", "weight")
# ONNX Runtime given the weight on every call, an input of its model (the networks suite's
# onnxrt*/lc, and "given" in its layer tables); "onnxruntime" has it an initializer
GIVEN = "onnxruntime-input"
PEERS = ("loopconv", "im2col", "torch", "onnxruntime", GIVEN)
DTYPES = ("float32", "float64")

BUDGET = 1.5        # seconds of timed samples per measurement (adaptive mode), in all rounds
ROUNDS = 3          # turns per peer and measurement; each peer's fastest round counts
MIN_REPEAT = 5      # samples per measurement, adaptive mode ...
MAX_REPEAT = 200
SLOW_REPEAT = 3     # ... or this many when a single call takes over 2/3 of the budget
MIN_SAMPLE = 2e-3   # calls shorter than this are grouped into samples of several calls
SWITCH_PAUSE = 0.1  # seconds of quiet when the turn passes to another worker: the idle
                    # thread pools of the previous one (OpenBLAS, OpenMP) stop spinning
JSON_FORMAT = "loopconv-bench/1"


# ---------------------------------------------------------------------------------------------
# The standard layer shapes

@dataclass(frozen=True)
class Shape:
    """One convolution layer: input ``(n, c, h, w)``, ``o`` output channels, a square kernel
    ``k``, and stride, padding, dilation and groups as in `loopconv.conv2d`.

    The same fields describe 1-D and 3-D layers and transposed convolutions: ``d > 0`` makes
    a 3-D layer of input ``(n, c, d, h, w)`` and a cubic kernel; ``h = 0`` (with ``d = 0``) a
    1-D layer of input ``(n, c, w)``.  ``transposed`` makes the layer a transposed convolution
    (`loopconv.conv_transpose2d`, weight ``(c, o // groups, k, k)``) with `output_padding`;
    its passes are its forward pass and its own two gradients."""

    name: str
    n: int
    c: int
    h: int
    w: int
    o: int
    k: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    note: str = ""
    tiny: bool = False      # all call overhead: reported, but left out of the geometric means
    d: int = 0              # depth of a 3-D layer; 0 for 1-D and 2-D layers
    transposed: bool = False
    output_padding: int = 0

    @property
    def spatial(self) -> tuple:
        """The input's spatial size: ``(w,)``, ``(h, w)`` or ``(d, h, w)``."""
        if self.d:
            return (self.d, self.h, self.w)
        return (self.h, self.w) if self.h else (self.w,)

    @property
    def ndim(self) -> int:
        """1, 2 or 3: the number of spatial axes."""
        return len(self.spatial)

    @property
    def input_shape(self) -> tuple:
        return (self.n, self.c, *self.spatial)

    @property
    def weight_shape(self) -> tuple:
        kernel = (self.k,) * self.ndim
        if self.transposed:
            return (self.c, self.o // self.groups, *kernel)
        return (self.o, self.c // self.groups, *kernel)

    @property
    def output_shape(self) -> tuple:
        reach = self.dilation * (self.k - 1)
        if self.transposed:
            sizes = ((s - 1) * self.stride - 2 * self.padding + reach + self.output_padding + 1
                     for s in self.spatial)
        else:
            sizes = ((s + 2 * self.padding - reach - 1) // self.stride + 1
                     for s in self.spatial)
        return (self.n, self.o, *sizes)

    @property
    def flops(self) -> int:
        """Floating-point operations of one pass: a multiply and an add per weight tap and
        output element (for a transposed convolution: per weight tap and input element)."""
        taps = self.k ** self.ndim
        if self.transposed:
            return 2 * self.n * self.c * (self.o // self.groups) * taps * math.prod(self.spatial)
        return (2 * self.n * self.o * (self.c // self.groups) * taps
                * math.prod(self.output_shape[2:]))

    def describe(self) -> str:
        text = (f"({','.join(map(str, self.input_shape))}) -> {self.o}, k{self.k}, "
                f"s{self.stride}, p{self.padding}, d{self.dilation}")
        text += f", g{self.groups}" if self.groups > 1 else ""
        if self.transposed:
            text += ", transposed" + (f", op{self.output_padding}" if self.output_padding else "")
        return text


SHAPES = {s.name: s for s in (
    Shape("mnist", 64, 1, 28, 28, 8, 3, 1, 1, 1, note="first layer of a small MNIST net"),
    Shape("cifar", 32, 16, 32, 32, 32, 3, 1, 1, 1, note="a CIFAR-10 layer"),
    Shape("stride2", 16, 32, 33, 33, 64, 3, 2, 1, 1, note="downsampling, odd size"),
    Shape("dilated", 8, 32, 32, 32, 32, 3, 1, 2, 2, note="dilation 2"),
    Shape("resnet", 8, 64, 56, 56, 64, 3, 1, 1, 1, note="a ResNet-18 stage-1 layer"),
    Shape("1x1", 16, 256, 14, 14, 256, 1, 1, 0, 1, note="pointwise, many channels"),
    Shape("largek", 4, 3, 224, 224, 64, 7, 2, 3, 1, note="ResNet stem, 7x7 stride 2"),
    Shape("seed", 1, 1, 5, 5, 1, 2, 1, 0, 1, note="the seed document's 5x5 example (tiny)",
          tiny=True),
)}


def make_inputs(shape: Shape, dtype) -> dict:
    """The random input, weight and output gradient of `shape`: the same in every process."""
    rng = np.random.default_rng(zlib.crc32(shape.name.encode()))
    dtype = np.dtype(dtype)
    return {"x": rng.standard_normal(shape.input_shape, dtype=dtype),
            "w": rng.standard_normal(shape.weight_shape, dtype=dtype),
            "gy": rng.standard_normal(shape.output_shape, dtype=dtype)}


POOL_SIZE = 1 << 22     # random numbers drawn once per worker for `pooled_inputs`
_pool = np.empty(0)


def pooled_inputs(shape: Shape, dtype) -> dict:
    """Like `make_inputs`, but each array is copied from a pool of `POOL_SIZE` random numbers
    that a process draws once (repeated cyclically where an array is larger), starting at an
    offset drawn from the shape's name: the same in every process, and quicker than drawing
    the many large arrays of the networks suite."""
    global _pool
    if _pool.size == 0:
        _pool = np.random.default_rng(20240611).standard_normal(POOL_SIZE)
    rng = np.random.default_rng(zlib.crc32(shape.name.encode()))
    return {key: _cut(size, int(rng.integers(POOL_SIZE)), np.dtype(dtype))
            for key, size in (("x", shape.input_shape), ("w", shape.weight_shape),
                              ("gy", shape.output_shape))}


def _cut(shape: tuple, start: int, dtype) -> np.ndarray:
    out = np.empty(math.prod(shape), dtype)
    done = 0
    while done < out.size:
        part = min(out.size - done, POOL_SIZE - start)
        out[done:done + part] = _pool[start:start + part]
        done, start = done + part, 0
    return out.reshape(shape)


# ---------------------------------------------------------------------------------------------
# The peers: how each library is set up in its worker, and its three passes

def loopconv_config() -> dict:
    """`loopconv._config.config()` as strings; what went wrong, if it fails."""
    try:
        from loopconv._config import config

        return {k: str(v) for k, v in config().items()}
    except Exception as exc:  # noqa: BLE001 -- only a description, the timing goes on
        return {"error": f"{type(exc).__name__}: {exc}"}


class Unsupported(Exception):
    """A peer has no implementation of a job (a pass, a dtype or a kind of layer): the job is
    skipped, which is not a problem of the run."""


def _setup_loopconv(threads: int):
    import loopconv

    loopconv.set_num_threads(threads)
    info = {"version": loopconv.__version__, "threads": loopconv.get_num_threads(),
            "cpu variant": loopconv_config().get("cpu variant", "?"), "file": loopconv.__file__}

    def call(pass_, s, a):
        if s.transposed:
            return _transposed_calls(loopconv, s, a)[pass_]
        nd = s.ndim
        conv, conv_input, conv_weight = (getattr(loopconv, f"conv{nd}d{suffix}")
                                         for suffix in ("", "_input", "_weight"))
        args = (s.stride, s.padding, s.dilation, s.groups)
        if pass_ == "forward":
            return lambda: conv(a["x"], a["w"], None, *args)
        if pass_ == "input":
            return lambda: conv_input(s.input_shape, a["w"], a["gy"], *args)
        return lambda: conv_weight(a["x"], s.weight_shape, a["gy"], *args)
    return info, call


def _transposed_calls(loopconv, s, a) -> dict:
    """loopconv's three passes of a transposed convolution: the forward pass and the input and
    weight gradients of `conv_transpose{nd}d_backward`, one `output_mask` entry each."""
    forward = getattr(loopconv, f"conv_transpose{s.ndim}d")
    backward = getattr(loopconv, f"conv_transpose{s.ndim}d_backward")
    args = (s.stride, s.padding, s.output_padding, s.groups, s.dilation)
    return {"forward": lambda: forward(a["x"], a["w"], None, *args),
            "input": lambda: backward(a["x"], a["w"], a["gy"], *args,
                                      output_mask=(True, False, False))[0],
            "weight": lambda: backward(a["x"], a["w"], a["gy"], *args,
                                       output_mask=(False, True, False))[1]}


def _load_im2col():
    """`lcbench.im2col`, loaded from its file (the worker runs this file as a script, outside
    the lcbench package)."""
    if "lcbench.im2col" in sys.modules:
        return sys.modules["lcbench.im2col"]
    spec = importlib.util.spec_from_file_location("_lcbench_im2col",
                                                  Path(__file__).with_name("im2col.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blas_info() -> dict:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {}
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            return {"blas": f"{pool.get('internal_api')} {pool.get('version')}",
                    "blas threads": pool.get("num_threads")}
    return {}


def _setup_im2col(threads: int):
    im2col = _load_im2col()
    info = {"version": np.__version__, "threads": threads, **_blas_info()}

    def call(pass_, s, a):
        if s.ndim != 2 or s.transposed:
            raise Unsupported("the NumPy im2col peer has 2-D convolutions only")
        args = (s.stride, s.padding, s.dilation, s.groups)
        if pass_ == "forward":
            return lambda: im2col.conv2d(a["x"], a["w"], *args)
        if pass_ == "input":
            return lambda: im2col.conv2d_input(s.input_shape, a["w"], a["gy"], *args)
        return lambda: im2col.conv2d_weight(a["x"], s.weight_shape, a["gy"], *args)
    return info, call


def _setup_torch(threads: int):
    import torch
    import torch.nn.functional as F
    import torch.nn.grad

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    info = {"version": torch.__version__, "threads": torch.get_num_threads()}

    def call(pass_, s, a):
        fn = timed(pass_, s, a)

        def run():
            with torch.no_grad():     # (not set for the whole process: tests call this too)
                return fn()
        return run

    def timed(pass_, s, a):
        x, w, gy = (torch.from_numpy(a[key]) for key in ("x", "w", "gy"))
        nd = s.ndim
        if s.transposed:
            return _torch_transposed(torch, F, pass_, s, x, w, gy)
        args = (s.stride, s.padding, s.dilation, s.groups)
        if pass_ == "forward":
            conv = getattr(F, f"conv{nd}d")
            return lambda: conv(x, w, None, *args)
        if pass_ == "input":
            conv_input = getattr(torch.nn.grad, f"conv{nd}d_input")
            return lambda: conv_input(s.input_shape, w, gy, *args)
        conv_weight = getattr(torch.nn.grad, f"conv{nd}d_weight")
        return lambda: conv_weight(x, s.weight_shape, gy, *args)
    return info, call


def _torch_transposed(torch, F, pass_, s, x, w, gy):
    """PyTorch's passes of a transposed convolution: ``F.conv_transpose{nd}d``, and for the
    gradients the ``aten.convolution_backward`` call that autograd makes for it."""
    nd = s.ndim
    if pass_ == "forward":
        forward = getattr(F, f"conv_transpose{nd}d")
        return lambda: forward(x, w, None, s.stride, s.padding, s.output_padding, s.groups,
                               s.dilation)
    which = PASSES.index(pass_) - 1                    # input: 0, weight: 1
    mask = [which == 0, which == 1, False]
    args = ([s.stride] * nd, [s.padding] * nd, [s.dilation] * nd, True, [s.output_padding] * nd,
            s.groups, mask)
    backward = torch.ops.aten.convolution_backward
    return lambda: backward(gy, x, w, None, *args)[which]


def _setup_onnxruntime(threads: int, weight_given: bool = False):
    """ONNX Runtime's forward pass of a one-node model (`onnx_model`): the weight an initializer,
    which ONNX Runtime may lay out anew once, when the session is made (it does: a blocked
    channel layout for its NCHWc kernels); or, with `weight_given`, a second input of the
    model, handed over with the image on every call, as loopconv receives it."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    info = {"version": onnxruntime.__version__, "threads": threads,
            "weight": "an input" if weight_given else "an initializer"}

    def call(pass_, s, a):
        if pass_ != "forward":
            raise Unsupported("ONNX Runtime runs forward passes only")
        try:
            session = onnxruntime.InferenceSession(onnx_model(s, a["w"], weight_given),
                                                   options,
                                                   providers=["CPUExecutionProvider"])
        except Exception as exc:
            if "NOT_IMPLEMENTED" in str(exc):
                raise Unsupported(f"ONNX Runtime has no {a['x'].dtype} kernel for "
                                  f"{'ConvTranspose' if s.transposed else 'Conv'}") from None
            raise
        feed = {"x": a["x"], "w": a["w"]} if weight_given else {"x": a["x"]}
        return lambda: session.run(None, feed)[0]
    return info, call


ONNX_OPSET = 17


def onnx_model(s: Shape, weight: np.ndarray, weight_given: bool = False) -> bytes:
    """A one-node ONNX model of the forward pass of `s`, serialized: a Conv or ConvTranspose
    node of input ``x`` and output ``y``, whose weight ``w`` is an initializer (`weight`), or
    with `weight_given` a second input of `weight`'s shape and dtype."""
    from onnx import helper, numpy_helper

    elem = helper.np_dtype_to_tensor_dtype(weight.dtype)
    nd = s.ndim
    attributes: dict[str, Any] = {"kernel_shape": [s.k] * nd, "strides": [s.stride] * nd,
                  "pads": [s.padding] * (2 * nd), "dilations": [s.dilation] * nd,
                  "group": s.groups}
    if s.transposed:
        attributes["output_padding"] = [s.output_padding] * nd
    node = helper.make_node("ConvTranspose" if s.transposed else "Conv", ["x", "w"], ["y"],
                            **attributes)
    inputs = [helper.make_tensor_value_info("x", elem, list(s.input_shape))]
    if weight_given:
        inputs.append(helper.make_tensor_value_info("w", elem, list(weight.shape)))
    graph = helper.make_graph(
        [node], "conv", inputs, [helper.make_tensor_value_info("y", elem, list(s.output_shape))],
        initializer=[] if weight_given else [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = 8               # what ONNX Runtime releases since 1.14 read
    return model.SerializeToString()


_SETUP = {"loopconv": _setup_loopconv, "im2col": _setup_im2col, "torch": _setup_torch,
          "onnxruntime": _setup_onnxruntime,
          GIVEN: lambda threads: _setup_onnxruntime(threads, weight_given=True)}


def peer_call(peer: str, threads: int = 1):
    """(info, call) for `peer` in this process; ``call(pass_, shape, inputs)`` gives a function
    of no arguments that runs the pass once and returns its result."""
    return _SETUP[peer](threads)


# ---------------------------------------------------------------------------------------------
# Timing

def measure(fn, repeat: int | None = None, budget: float = BUDGET, warmup_s: float = 0.05,
            min_repeat: int = MIN_REPEAT, long_call: float = math.inf) -> dict:
    """Time `fn()`: warm-up calls, then samples; the median, in seconds per call, and more.

    `repeat` fixes the number of samples; without it, the number adapts so that the samples
    take about `budget` seconds (at least `min_repeat` of them).  The warm-up is the first call
    and at least one more, until `warmup_s` seconds have gone by; a first call that takes over
    `long_call` seconds is warm-up enough."""
    t0 = time.perf_counter()
    result = fn()                      # first call: page faults, lazy set-up
    first = time.perf_counter() - t0
    warmup, spent, est = 1, first, math.inf
    while first <= long_call and (warmup < 2 or (spent < warmup_s and warmup < 1000)):
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        est = min(est, elapsed)        # the fastest warm-up call: robust to an interruption
        spent += elapsed
        warmup += 1
    if est == math.inf:                # no warm-up after the first call
        est = first
    number = 1 if est >= MIN_SAMPLE else math.ceil(MIN_SAMPLE / max(est, 1e-7))
    if repeat is None:
        if est > budget * 2 / 3:
            repeat = min(SLOW_REPEAT, min_repeat)
        else:
            repeat = min(MAX_REPEAT, max(min_repeat, round(budget / (est * number))))
    times = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            times.append((time.perf_counter() - t0) / number)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {"result": result, "times": times, "median": statistics.median(times),
            "number": number, "warmup": warmup}


_probe = np.empty(0)


def checksum(result) -> list:
    """[norm, dot product with a fixed random vector] of a result, in float64."""
    global _probe
    r = np.asarray(result, dtype=np.float64).ravel()
    if _probe.size < r.size:           # the first draws of a longer vector are the same
        _probe = np.random.default_rng(12345).standard_normal(max(r.size, 2 * _probe.size))
    return [float(np.sqrt(r @ r)), float(r @ _probe[:r.size])]


# ---------------------------------------------------------------------------------------------
# The worker process

_BOOTSTRAP = ("import runpy, sys; path = sys.argv[1]; sys.argv = [path] + sys.argv[2:]; "
              "runpy.run_path(path, run_name='__main__')")


def worker_command(peer: str, threads: int) -> list:
    """The command of a worker: this file run as a script, which imports no library until it
    knows its peer (so that only the loopconv worker imports loopconv)."""
    return [sys.executable, "-c", _BOOTSTRAP, str(Path(__file__).resolve()),
            "--worker", peer, "--threads", str(threads)]


def worker_environment(threads: int, peer: str = "im2col") -> dict:
    """The environment of a worker: `threads` for every thread pool of its library; NumPy's
    BLAS gets them only in the im2col worker, whose peer it is.  Elsewhere BLAS serves only
    the checksums, and its idle threads would spin after each one (OpenBLAS busy-waits for a
    while after a call), taking cores from the library being timed: loopconv's step of
    MobileNetV2 at batch 1 on two threads measured 134 ms so, 21 ms with BLAS on one thread."""
    env = dict(os.environ)
    blas = threads if peer == "im2col" else 1
    for var, value in (("OMP_NUM_THREADS", threads), ("OPENBLAS_NUM_THREADS", blas),
                       ("MKL_NUM_THREADS", blas), ("LOOPCONV_NUM_THREADS", threads)):
        env[var] = str(value)
    return env


def worker_main(peer: str, threads: int) -> int:
    """Serve jobs, one JSON line each on stdin, with one JSON line each on stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                      # whatever a library prints goes to stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's: it closes our stdin

    def send(message):
        out.write(json.dumps(message) + "\n")

    try:
        info, call = peer_call(peer, threads)
    except Exception as exc:  # noqa: BLE001 -- reported to the parent, which goes on
        send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    send({"ok": True, "info": info})
    inputs_key, inputs = None, None
    for line in sys.stdin:
        job = json.loads(line)
        try:
            shape = Shape(**job["spec"]) if "spec" in job else SHAPES[job["shape"]]
            if inputs_key != (shape.name, job["dtype"]):
                inputs_key, inputs = None, None       # free the previous shape's arrays first
                inputs = (pooled_inputs if "spec" in job else make_inputs)(shape, job["dtype"])
                inputs_key = (shape.name, job["dtype"])
            m = measure(call(job["pass"], shape, inputs), job.get("repeat"),
                        job.get("budget", BUDGET), **job.get("options", {}))
            send({"ok": True, "times": m["times"], "median": m["median"],
                  "number": m["number"], "warmup": m["warmup"],
                  "check": checksum(m["result"])})
        except Unsupported as exc:
            send({"ok": False, "skip": True, "error": str(exc)})
        except Exception as exc:  # noqa: BLE001
            send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return 0


class WorkerError(RuntimeError):
    pass


class Skipped(Exception):
    """A job the peer has no implementation of (`Unsupported` in the worker)."""


class Worker:
    """A worker process seen from the parent."""

    def __init__(self, peer: str, threads: int):
        self.peer, self.threads = peer, threads
        self.info: dict[str, Any] | None = None       # what the worker reports when ready
        self.proc = subprocess.Popen(worker_command(peer, threads), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     env=worker_environment(threads, peer))
        assert self.proc.stdin is not None and self.proc.stdout is not None   # both pipes
        self._stdin, self._stdout = self.proc.stdin, self.proc.stdout

    def _receive(self) -> dict:
        line = self._stdout.readline()
        if not line:
            code = self.proc.wait()
            raise WorkerError(f"the {self.peer} worker ended (exit code {code}); "
                              "see its messages above")
        return json.loads(line)

    def ready(self) -> dict:
        hello = self._receive()
        if not hello["ok"]:
            raise WorkerError(f"the {self.peer} worker could not start: {hello['error']}")
        self.info = info = hello["info"]
        return info

    def run(self, **job) -> dict:
        try:
            self._stdin.write(json.dumps(job) + "\n")
            self._stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerError(f"the {self.peer} worker is gone: {exc}") from None
        reply = self._receive()
        if reply.get("skip"):
            raise Skipped(reply["error"])
        if not reply["ok"]:
            raise WorkerError(f"{self.peer}: {reply['error']}")
        return reply

    def close(self) -> None:
        try:
            self._stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Running the benchmark

def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _close_enough(check, reference, dtype: str) -> bool:
    tol = 1e-3 if dtype == "float32" else 1e-9
    scale = max(reference[0], 1e-30)
    return all(abs(a - b) <= tol * scale for a, b in zip(check, reference))


def load_average() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class _Run:
    """One benchmark run: the workers of a thread count, the results, the problems met."""

    def __init__(self, total: int, log):
        self.total, self.log = total, log
        self.done, self.start = 0, time.perf_counter()
        self.results: list[dict] = []
        self.problems: list[str] = []
        self.skips: list[dict] = []
        self.previous: str | None = None           # the peer that timed last
        self.workers_info: dict[str, dict] = {}

    def start_workers(self, peers, threads: int, skipped) -> dict:
        """The workers that started (all start at once; loopconv must).  `skipped` is the
        number of measurements a peer that fails to start leaves out (an int, or a dict by
        peer)."""
        plural = "s" if threads > 1 else ""
        self.log(f"starting the workers, {threads} thread{plural}: {', '.join(peers)}")
        workers = {peer: Worker(peer, threads) for peer in peers}
        for peer in list(workers):
            try:
                info = workers[peer].ready()
            except WorkerError as exc:
                workers.pop(peer).close()
                if peer == "loopconv":
                    for worker in workers.values():
                        worker.close()
                    raise
                self.problems.append(str(exc))
                self.log(f"warning: {exc}; going on without {peer}")
                self.total -= skipped[peer] if isinstance(skipped, dict) else skipped
                continue
            self.log(f"  {peer}: " + ", ".join(f"{k} {v}" for k, v in info.items()
                                               if k != "file"))
        import loopconv

        mine = workers["loopconv"].info
        assert mine is not None                             # set by ready() above
        theirs = Path(mine["file"]).resolve()
        if theirs != Path(loopconv.__file__).resolve():
            self.log(f"warning: the loopconv worker imported {theirs}, this process "
                     f"{loopconv.__file__}")
        self.workers_info[str(threads)] = {p: w.info for p, w in workers.items()}
        return workers

    def measure(self, workers: dict, peer: str, job: dict, shape: Shape) -> dict | None:
        """One measurement, as a result record (None if it failed)."""
        self.done += 1
        label = (f"[{self.done:3d}/{self.total} {time.perf_counter() - self.start:5.0f}s] "
                 f"{job['threads']}t {job['dtype']} {shape.name:8} {job['pass']:7} {peer:8}")
        spec = {} if SHAPES.get(shape.name) == shape else {"spec": asdict(shape)}
        try:
            reply = workers[peer].run(**job, shape=shape.name, **spec)
        except Skipped as exc:
            skip = {"peer": peer, "threads": job["threads"], "dtype": job["dtype"],
                    "reason": str(exc)}
            if skip not in self.skips:
                self.skips.append(skip)
                self.log(f"{label} skipped: {exc}; the jobs like it are skipped silently")
            return None
        except WorkerError as exc:
            self.problems.append(str(exc))
            self.log(f"{label} failed: {exc}")
            if workers[peer].proc.poll() is not None:      # it died: a new one for the rest
                workers[peer] = Worker(peer, job["threads"])
                workers[peer].ready()
            return None
        self.log(f"{label} {_ms(reply['median'])} ms  "
                 f"({len(reply['times'])} x {reply['number']})")
        record = {key: job[key] for key in ("threads", "dtype", "pass")}
        record.update(shape=shape.name, peer=peer, median_s=reply["median"], load=load_average(),
                      min_s=min(reply["times"]), times_s=reply["times"],
                      number=reply["number"], warmup=reply["warmup"], flops=shape.flops,
                      gflops=shape.flops / reply["median"] / 1e9, check=reply["check"],
                      agrees=True)
        self.results.append(record)
        return record

    def fastest(self, tries: list) -> dict:
        """The record of the fastest of a measurement's rounds; the others leave the
        results."""
        best = min(tries, key=lambda r: r["median_s"])
        best["round_medians_s"] = [r["median_s"] for r in tries]
        for r in tries:
            if r is not best:
                self.results.remove(r)
        return best

    def compare(self, records: dict, shape: Shape, dtype: str) -> None:
        """Flag the peers whose results (pass, peer) -> record differ from loopconv's."""
        for (pass_, peer), record in records.items():
            reference = records.get((pass_, "loopconv"))
            if peer == "loopconv" or reference is None:
                continue
            if not _close_enough(record["check"], reference["check"], dtype):
                record["agrees"] = False
                self.problems.append(f"{peer} and loopconv disagree on {shape.name} {pass_} "
                                     f"({dtype}): checksums {record['check']} and "
                                     f"{reference['check']}")


def run(shapes, passes, peers, threads_list, dtypes, repeat=None, budget=BUDGET,
        log=_stderr, rounds=ROUNDS) -> dict:
    """Time every (threads, dtype, shape, pass, peer); the results as a JSON-ready dict.

    For each shape and pass the peers take turns, `rounds` times, each turn with a share of the
    time budget; a peer's result is its fastest round (the median of that round's samples), so
    that a burst of load from other programs, which only ever slows a turn down, is less likely
    to decide a ratio.  `log` receives the progress lines."""
    shapes = [SHAPES[name] if isinstance(name, str) else name for name in shapes]
    per_peer = len(dtypes) * len(shapes) * len(passes) * rounds
    state = _Run(len(threads_list) * len(peers) * per_peer, log)
    for threads in threads_list:
        workers = state.start_workers(peers, threads, skipped=per_peer)
        try:
            previous = None
            for dtype in dtypes:
                for shape in shapes:
                    records = {}
                    for pass_ in passes:
                        job = {"threads": threads, "dtype": dtype, "pass": pass_,
                               "repeat": repeat, "budget": budget / rounds}
                        tries: dict[str, list[dict]] = {}
                        for _ in range(rounds):
                            for peer in [p for p in peers if p in workers]:
                                if previous not in (None, peer):
                                    time.sleep(SWITCH_PAUSE)
                                previous = peer
                                record = state.measure(workers, peer, job, shape)
                                if record is not None:
                                    tries.setdefault(peer, []).append(record)
                        for peer, recs in tries.items():
                            records[(pass_, peer)] = state.fastest(recs)
                    state.compare(records, shape, dtype)
        finally:
            for worker in workers.values():
                worker.close()
    return {
        "format": JSON_FORMAT, **_run_info(state),
        "shapes": {s.name: {**asdict(s), "flops": s.flops, "output": s.output_shape}
                   for s in shapes},
        "passes": list(passes), "peers": list(peers), "threads": list(threads_list),
        "dtypes": list(dtypes), "repeat": repeat, "budget_s": budget, "rounds": rounds,
        "results": state.results, "problems": state.problems,
    }


def _run_info(state: _Run) -> dict:
    """What the JSON results of either suite say about the run, the machine and loopconv."""
    import loopconv

    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.perf_counter() - state.start, 1),
        "command": sys.argv,
        "machine": {"platform": platform.platform(), "cpu": _cpu_name(),
                    "cores": available_cores(), "python": platform.python_version()},
        "loopconv": loopconv_config(),
        "loopconv_file": loopconv.__file__,
        "workers": state.workers_info,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------------------------------
# Reporting

def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _gflops(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def _ratio(value: float) -> str:
    return f"{value:.2f}" if not value < 0.1 else f"{value:.3f}"


def geomean(values) -> float:
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def _index(results) -> dict:
    return {(r["threads"], r["dtype"], r["shape"], r["pass"], r["peer"]): r for r in results}


def format_table(data: dict, threads: int, dtype: str) -> str:
    """The table of one thread count and dtype: times, GFLOP/s, ratios and their geometric
    means."""
    peers = [p for p in data["peers"] if p in data["workers"].get(str(threads), {})]
    others = [p for p in peers if p != "loopconv"]
    index = _index(data["results"])
    groups = [("time (ms)", peers), ("GFLOP/s", peers), ("peer / loopconv", others)]
    header = ["shape", "pass"] + [p for _, members in groups for p in members]
    rows: list[list[str]] = []
    ratios: dict[str, dict[str, list[float]]] = {}
    # the geometric means leave out the tiny shapes (unless only those ran)
    averaged = [n for n in data["shapes"] if not data["shapes"][n].get("tiny")]
    averaged = averaged or list(data["shapes"])
    for name in data["shapes"]:
        for pass_ in data["passes"]:
            recs = {p: index.get((threads, dtype, name, pass_, p)) for p in peers}
            row = [name, pass_]
            row += [_ms(r["median_s"]) if r else "-" for r in recs.values()]
            row += [_gflops(r["gflops"]) if r else "-" for r in recs.values()]
            ours = recs.get("loopconv")
            for p in others:
                r = recs[p]
                if r and ours:
                    ratio = r["median_s"] / ours["median_s"]
                    if name in averaged:
                        ratios.setdefault(p, {}).setdefault(pass_, []).append(ratio)
                    row.append(_ratio(ratio) + ("" if r["agrees"] else "!"))
                else:
                    row.append("-")
            rows.append(row)
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    # widen the last column of each group so that the group's title fits over it
    col = 2
    for title, members in groups:
        if members:
            span = sum(widths[col:col + len(members)]) + 2 * (len(members) - 1)
            widths[col + len(members) - 1] += max(0, len(title) - span)
            col += len(members)

    def line(cells):
        return "  ".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}"
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    titles, col = " " * (widths[0] + widths[1] + 2), 2
    for title, members in groups:
        if members:
            span = sum(widths[col:col + len(members)]) + 2 * (len(members) - 1)
            titles += "  " + f"{title:^{span}}"
            col += len(members)
    plural = "s" if threads > 1 else ""
    versions = ", ".join(f"{p} {data['workers'][str(threads)][p].get('version', '?')}"
                         for p in peers)
    out = [f"{dtype}, {threads} thread{plural} ({versions})", titles.rstrip(), line(header),
           line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    if others:
        out.append("")
        left_out = [n for n in data["shapes"] if n not in averaged]
        out.append("geometric mean of peer time / loopconv time (> 1: loopconv is faster)"
                   + (f", {', '.join(left_out)} apart" if left_out else ""))
        for pass_ in list(data["passes"]) + ["all"]:
            cells = []
            for p in others:
                by_pass = ratios.get(p, {})
                values = (sum(by_pass.values(), []) if pass_ == "all"
                          else by_pass.get(pass_, []))
                cells.append(f"{p} {_ratio(geomean(values)):>6}")
            out.append(f"  {pass_:8}" + "   ".join(cells))
    mine = [r for r in data["results"] if r["threads"] == threads and r["dtype"] == dtype]
    if any(not r["agrees"] for r in mine):
        out.append("! this peer's result disagrees with loopconv's (see the warnings)")
    out += _busy(mine, data["machine"].get("cores", 1))
    return "\n".join(out)


def _busy(records, cores: int) -> list:
    """A note, if the load average during these measurements says that other programs were
    competing for the cores."""
    loads = [r["load"] for r in records if r.get("load") is not None]
    if loads and max(loads) > cores + 0.5:
        return [f"note: the machine was busy (load average up to {max(loads):.1f} on {cores} "
                "cores): other programs shared\n      the cores, so these times are slow and "
                "noisy, the multi-threaded ones most"]
    return []


def format_report(data: dict) -> str:
    tables = [format_table(data, t, d) for t in data["threads"] for d in data["dtypes"]
              if str(t) in data["workers"]]
    shapes = "\n".join(f"  {name:8} {SHAPES[name].describe() if name in SHAPES else ''}"
                       for name in data["shapes"])
    return "shapes (N,C,H,W) -> O, kernel, stride, padding, dilation:\n" + shapes + "\n\n" + \
        "\n\n".join(tables)


# ---------------------------------------------------------------------------------------------
# The chart

def plot(data: dict, path) -> None:
    """GFLOP/s per shape as grouped bars, one bar per peer; a row per pass, a column per
    thread count and dtype.  Drawn with matplotlib's Agg backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    configs = [(t, d) for t in data["threads"] for d in data["dtypes"]
               if str(t) in data["workers"]]
    shapes, passes = list(data["shapes"]), data["passes"]
    index = _index(data["results"])
    values = [r["gflops"] for r in data["results"] if r["gflops"] > 0]
    log_scale = bool(values) and max(values) / min(values) > 20
    fig = Figure(figsize=(max(6.0, 0.9 * len(shapes) + 1.5) * len(configs),
                          2.8 * len(passes) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(passes), len(configs), squeeze=False, sharey=True)
    colors = {"loopconv": "tab:blue", "im2col": "tab:orange", "torch": "tab:red"}
    for col, (threads, dtype) in enumerate(configs):
        peers = [p for p in data["peers"] if p in data["workers"][str(threads)]]
        width = 0.8 / len(peers)
        for row, pass_ in enumerate(passes):
            ax = axes[row][col]
            for i, peer in enumerate(peers):
                heights = [index[k]["gflops"] if (k := (threads, dtype, s, pass_, peer))
                           in index else 0.0 for s in shapes]
                ax.bar(np.arange(len(shapes)) + (i - (len(peers) - 1) / 2) * width, heights,
                       width, label=peer, color=colors.get(peer))
            ax.set_xticks(np.arange(len(shapes)), shapes)
            if log_scale:
                ax.set_yscale("log")
            ax.set_axisbelow(True)
            ax.grid(axis="y", alpha=0.3, which="both")
            plural = "s" if threads > 1 else ""
            ax.set_title(f"{pass_}, {dtype}, {threads} thread{plural}", fontsize=10)
            if col == 0:
                ax.set_ylabel("GFLOP/s")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("loopconv bench: GFLOP/s (higher is better)")
    fig.savefig(path, dpi=110)


def plot_formats() -> dict:
    """The file extensions matplotlib can write, or {} without matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        return {}
    from matplotlib.backend_bases import FigureCanvasBase

    return FigureCanvasBase.get_supported_filetypes()


# ---------------------------------------------------------------------------------------------
# The networks suite: one training step of a network's convolutions

NET_JSON_FORMAT = "loopconv-bench-networks/1"
NET_ROUNDS = 2          # turns per peer and network; each measurement's fastest turn counts
NET_BUDGET = 0.02       # seconds of timed samples per measurement, in all rounds
NET_MEASURE = {"warmup_s": 0.005, "min_repeat": 3, "long_call": 0.01}
PEER_PASSES = {"onnxruntime": ("forward",), GIVEN: ("forward",)}  # peers that lack passes
BATCHES = ("1", "train")
SCALING = 0.8           # a layer scales when n times the threads make it 0.8 * n times faster
LAYER_TARGET = 0.7      # the lowest torch / loopconv ratio wanted of any layer's step


def peer_passes(peer: str, passes) -> tuple:
    """The passes among `passes` that `peer` runs, in the order of `PASSES`."""
    return tuple(p for p in PASSES if p in passes and p in PEER_PASSES.get(peer, PASSES))


def onnxruntime_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def network_batches(network, batches) -> list:
    """The batch sizes of `network` that `batches` asks for: each entry ``"1"``, ``"train"``
    (the network's training batch size) or a number."""
    sizes = [network.train_batch if b == "train" else int(b) for b in batches]
    return list(dict.fromkeys(sizes))


def network_plan(names, batches) -> tuple:
    """What the networks `names` at the batch sizes `batches` need timed.

    Returns
    -------
    entries : list of dict
        One per network and batch size: ``network``, ``batch`` and ``layers``, a dict per
        distinct layer with its ``layer`` name, ``count``, ``geometry``, ``passes`` and the
        name of the ``shape`` its times are recorded under.
    shapes : dict
        Shape name -> (`Shape`, passes) for every distinct geometry and batch size, named after
        the first layer that has it, with the passes that any layer of that geometry needs; in
        the order of the entries.
    """
    from lcbench.networks import ALL_NETWORKS

    entries: list = []
    shapes: dict = {}
    named: dict = {}
    for name in names:
        network = ALL_NETWORKS[name]
        for batch in network_batches(network, batches):
            layers = []
            for layer in network.layers:
                shape = layer.at(batch, f"{name}.{layer.name}@b{batch}")
                key = named.setdefault(replace(shape, name=""), shape.name)
                known, passes = shapes.get(key, (shape, ()))
                shapes[key] = (known, tuple(p for p in PASSES
                                            if p in passes or p in layer.passes))
                layers.append({"layer": layer.name, "count": layer.count,
                               "geometry": layer.geometry(), "passes": list(layer.passes),
                               "shape": key})
            entries.append({"network": name, "batch": batch, "layers": layers})
    return entries, shapes


def _turns(entries, shapes) -> list:
    """The turns of the peers: each distinct shape [(Shape, passes)] on its own, in the order
    of the networks and batch sizes that need them."""
    names = [layer["shape"] for entry in entries for layer in entry["layers"]]
    return [[shapes[name]] for name in dict.fromkeys(names)]


def _time_turns(state: _Run, workers: dict, peers, turn, job: dict, rounds: int) -> None:
    """Time the passes of the shapes `turn` [(Shape, passes)]: the peers take turns, each
    running all of them, `rounds` times; each measurement keeps its fastest round."""
    tries: dict[tuple, list] = {}
    for _ in range(rounds):
        for peer in [p for p in peers if p in workers]:
            if state.previous not in (None, peer) and job["threads"] > 1:
                time.sleep(SWITCH_PAUSE)
            state.previous = peer
            for shape, passes in turn:
                for pass_ in peer_passes(peer, passes):
                    record = state.measure(workers, peer, {**job, "pass": pass_}, shape)
                    if record is not None:
                        tries.setdefault((shape.name, pass_, peer), []).append(record)
    for shape, _ in turn:
        state.compare({(pass_, peer): state.fastest(recs)
                       for (name, pass_, peer), recs in tries.items() if name == shape.name},
                      shape, job["dtype"])


def run_networks(names, batches, peers, threads_list, dtypes, repeat=None, rounds=NET_ROUNDS,
                 budget=NET_BUDGET, log=_stderr) -> dict:
    """Time every layer pass of the networks `names` at `batches` for every thread count and
    dtype; the results, and each network's step times, as a JSON-ready dict.

    Each distinct geometry is timed once, for all the networks and layers that have it.  The
    peers take turns layer by layer (each runs all the passes of a geometry in its turn,
    `_turns`), `rounds` times; a measurement's result is its fastest round."""
    entries, shapes = network_plan(names, batches)
    turns = _turns(entries, shapes)
    per_peer = {peer: rounds * len(dtypes) * sum(len(peer_passes(peer, passes))
                                                 for _, passes in shapes.values())
                for peer in peers}
    state = _Run(len(threads_list) * sum(per_peer.values()), log)
    for threads in threads_list:
        workers = state.start_workers(peers, threads, skipped=per_peer)
        try:
            for dtype in dtypes:
                job = {"threads": threads, "dtype": dtype, "repeat": repeat,
                       "budget": budget / rounds, "options": NET_MEASURE}
                for turn in turns:
                    _time_turns(state, workers, peers, turn, job, rounds)
        finally:
            for worker in workers.values():
                worker.close()
    from lcbench.networks import ALL_NETWORKS

    chosen = {name: ALL_NETWORKS[name] for name in names}
    data = {
        "format": NET_JSON_FORMAT, **_run_info(state),
        "networks": {name: {"family": net.family, "variant": net.variant,
                            "train_batch": net.train_batch,
                            "convolutions": net.convolutions} for name, net in chosen.items()},
        "plan": entries,
        "shapes": {s.name: {**asdict(s), "flops": s.flops, "output": s.output_shape,
                            "passes": list(passes)} for s, passes in shapes.values()},
        "peers": list(peers), "threads": list(threads_list), "dtypes": list(dtypes),
        "batches": list(batches), "repeat": repeat, "budget_s": budget, "rounds": rounds,
        "results": state.results, "problems": state.problems, "skipped": state.skips,
    }
    data["summary"] = summarize(data)
    return data


# ---------------------------------------------------------------------------------------------
# The networks suite: step times, and their report

def network_step(layers, times) -> dict:
    """One training step of a network's convolutions, from the times of its layers' passes.

    Parameters
    ----------
    layers : list of dict
        The network's distinct layers, as in `network_plan`: ``layer``, ``count``,
        ``geometry``, ``passes`` and ``shape``.
    times : dict
        (shape name, pass, peer) -> seconds.

    Returns
    -------
    dict
        ``layers``: per layer, its ``times`` (peer -> pass -> seconds), its ``step`` (peer ->
        the sum of its passes) and ``forward`` (peer -> seconds), for the peers that have all
        of them; ``step`` and ``forward``: peer -> ``sum(count * time)`` over the layers, for
        the peers that have every layer; ``ratio``: torch / loopconv step; ``worst``: the
        layer of lowest torch / loopconv step ratio, with that ``ratio`` and its ``share`` of
        loopconv's step; ``slow``: how many ``layers`` ``of`` them have a ratio below
        `LAYER_TARGET`, and their ``share`` of loopconv's step.
    """
    peers = sorted({peer for (_, _, peer) in times}, key=lambda p: (p != "loopconv", p))
    rows = []
    for layer in layers:
        row = {**layer, "times": {}, "step": {}, "forward": {}}
        for peer in peers:
            mine = {p: times[key] for p in layer["passes"]
                    if (key := (layer["shape"], p, peer)) in times}
            row["times"][peer] = mine
            if "forward" in mine:
                row["forward"][peer] = mine["forward"]
            if len(mine) == len(layer["passes"]):
                row["step"][peer] = sum(mine.values())
        rows.append(row)
    summary: dict[str, Any] = {"layers": rows}
    for total in ("step", "forward"):
        summary[total] = {peer: sum(row["count"] * row[total][peer] for row in rows)
                          for peer in peers if all(peer in row[total] for row in rows)}
    ours, theirs = summary["step"].get("loopconv"), summary["step"].get("torch")
    summary["ratio"] = theirs / ours if ours and theirs else None
    ranked = [(row["step"]["torch"] / row["step"]["loopconv"], row) for row in rows
              if row["step"].get("loopconv") and row["step"].get("torch")]
    if ranked and ours:
        def share(row):
            return row["count"] * row["step"]["loopconv"] / ours

        ratio, row = min(ranked, key=lambda item: item[0])
        summary["worst"] = {"layer": row["layer"], "geometry": row["geometry"], "ratio": ratio,
                            "share": share(row)}
        slow = [row for ratio, row in ranked if ratio < LAYER_TARGET]
        summary["slow"] = {"layers": len(slow), "of": len(ranked),
                           "share": sum(map(share, slow))}
    return summary


def summarize(data: dict) -> list:
    """`network_step` of every thread count, dtype, network and batch size of a run, with
    ``threads``, ``dtype``, ``network``, ``batch`` and ``disagree`` (the peers whose results
    differ from loopconv's on some layer)."""
    summaries = []
    for threads in data["threads"]:
        for dtype in data["dtypes"]:
            mine = [r for r in data["results"]
                    if r["threads"] == threads and r["dtype"] == dtype]
            times = {(r["shape"], r["pass"], r["peer"]): r["median_s"] for r in mine}
            wrong = {(r["shape"], r["peer"]) for r in mine if not r["agrees"]}
            for entry in data["plan"]:
                shapes = {layer["shape"] for layer in entry["layers"]}
                step = network_step(entry["layers"], times)
                step.update(threads=threads, dtype=dtype, network=entry["network"],
                            batch=entry["batch"],
                            disagree=sorted({peer for shape, peer in wrong if shape in shapes}))
                summaries.append(step)
    return summaries


def _grid(header, rows, left=(0,), spans=()) -> list:
    """Lines of aligned columns: a title line for the `spans` [(title, first column, number of
    columns)], the header, a rule, the rows; the columns `left` aligned to the left, the others
    to the right."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for title, first, count in spans:          # widen a span's last column to fit its title
        room = sum(widths[first:first + count]) + 2 * (count - 1)
        widths[first + count - 1] += max(0, len(title) - room)

    def line(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    titles, column = "", 0
    for title, first, count in spans:
        titles += " " * (sum(widths[column:first]) + 2 * (first - column))
        room = sum(widths[first:first + count]) + 2 * (count - 1)
        titles += f"{title:^{room}}" + "  "
        column = first + count
    lines = [titles.rstrip()] if spans else []
    return lines + [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _time_cell(times: dict, peer: str) -> str:
    return _ms(times[peer]) if peer in times else "-"


def _ratio_cell(times: dict, peer: str, mark: bool = False) -> str:
    """``times[peer] / times["loopconv"]``, with ``!`` if `mark`; ``-`` without either."""
    if peer in times and times.get("loopconv"):
        return _ratio(times[peer] / times["loopconv"]) + ("!" if mark else "")
    return "-"


def _selected(data: dict, threads: int, dtype: str) -> list:
    return [s for s in data["summary"] if (s["threads"], s["dtype"]) == (threads, dtype)]


def _title(data: dict, threads: int, dtype: str) -> str:
    workers = data["workers"].get(str(threads), {})
    versions = ", ".join(f"{p} {info.get('version', '?')}" for p, info in workers.items())
    return f"{dtype}, {threads} thread{'s' if threads > 1 else ''} ({versions})"


def format_networks_table(data: dict, threads: int, dtype: str) -> str:
    """The table of one thread count and dtype: per network and batch size, the step times of
    loopconv and PyTorch and their ratio, the forward times of loopconv and ONNX Runtime and
    theirs, the layers whose torch / loopconv step ratio is below `LAYER_TARGET` and their
    share of loopconv's step, and the worst layer."""
    header = ["network", "batch", "loopconv", "torch", "torch/lc", "loopconv", "onnxrt",
              "onnxrt/lc", "onnxrt*/lc", f"< {LAYER_TARGET}", "share",
              "worst layer: torch/lc, name, geometry (share of the step)"]
    rows = []
    summaries = _selected(data, threads, dtype)
    for s in summaries:
        worst, slow = s.get("worst"), s.get("slow")
        rows.append([s["network"], str(s["batch"]), _time_cell(s["step"], "loopconv"),
                     _time_cell(s["step"], "torch"),
                     _ratio_cell(s["step"], "torch", "torch" in s["disagree"]),
                     _time_cell(s["forward"], "loopconv"),
                     _time_cell(s["forward"], "onnxruntime"),
                     _ratio_cell(s["forward"], "onnxruntime", "onnxruntime" in s["disagree"]),
                     _ratio_cell(s["forward"], GIVEN, GIVEN in s["disagree"]),
                     f"{slow['layers']}/{slow['of']}" if slow else "-",
                     f"{slow['share']:.0%}" if slow else "-",
                     f"{_ratio(worst['ratio'])} {worst['layer']} {worst['geometry']} "
                     f"({worst['share']:.0%})" if worst else "-"])
    spans = [("training step", 2, 3), ("forward passes", 5, 4), ("slow layers", 9, 2)]
    out = [_title(data, threads, dtype) + ": times in ms; x/lc > 1: loopconv is faster",
           *_grid(header, rows, left=(0, 11), spans=spans)]
    if any(GIVEN in s["forward"] for s in summaries):
        out.append("onnxrt*: ONNX Runtime given the weight on every call (an input of the "
                   "model), as loopconv is;\nonnxrt: the weight an initializer, which ONNX "
                   "Runtime may lay out for its kernels once, before the timing")
    if any(s["disagree"] for s in summaries):
        out.append("! a peer's result disagrees with loopconv's on a layer (see the warnings)")
    skips = [k for k in data.get("skipped", ()) if (k["threads"], k["dtype"]) == (threads, dtype)]
    out += sorted({f"left out: {k['peer']}: {k['reason']}" for k in skips})
    out += _busy([r for r in data["results"] if (r["threads"], r["dtype"]) == (threads, dtype)],
                 data.get("machine", {}).get("cores", 1))
    return "\n".join(out)


def format_networks_detail(data: dict, summary: dict) -> str:
    """The layers of one network at one batch size, thread count and dtype: the time of one
    occurrence of each pass in loopconv and PyTorch, the ratios, ONNX Runtime's forward ratio
    and the layer's share of loopconv's step (all its occurrences)."""
    header = ["layer", "count", "geometry", *PASSES * 2, *PASSES, "step", "forward", "given",
              "share"]
    ours = summary["step"].get("loopconv")
    rows = []
    for row in summary["layers"]:
        times = row["times"]
        cells = [row["layer"], str(row["count"]), row["geometry"]]
        for peer in ("loopconv", "torch"):
            cells += [_time_cell(times.get(peer, {}), p) for p in PASSES]
        for p in PASSES:
            cells.append(_ratio_cell({k: v[p] for k, v in times.items() if p in v}, "torch"))
        cells += [_ratio_cell(row["step"], "torch"), _ratio_cell(row["forward"], "onnxruntime"),
                  _ratio_cell(row["forward"], GIVEN)]
        share = row["step"].get("loopconv")
        cells.append(f"{row['count'] * share / ours:.1%}" if share and ours else "-")
        rows.append(cells)
    spans = [("loopconv (ms)", 3, 3), ("torch (ms)", 6, 3), ("torch / loopconv", 9, 4),
             ("onnxrt/lc", 13, 2)]
    title = (f"{summary['network']}, batch {summary['batch']}, "
             f"{_title(data, summary['threads'], summary['dtype'])}: each layer once")
    return "\n".join([title, *_grid(header, rows, left=(0, 2), spans=spans)])


def _layer_scaling(base: dict, more: dict, threshold: float) -> tuple:
    """Per layer of two summaries of one network (fewer and more threads): the layers PyTorch
    speeds up by `threshold` or more, and those of them that loopconv does not, as
    (name, geometry, loopconv speed-up, torch speed-up)."""
    scaled, lagging = 0, []
    for before, after in zip(base["layers"], more["layers"]):
        gain = {peer: before["step"][peer] / after["step"][peer] for peer in ("loopconv", "torch")
                if before["step"].get(peer) and after["step"].get(peer)}
        if len(gain) == 2 and gain["torch"] >= threshold:
            scaled += 1
            if gain["loopconv"] < threshold:
                lagging.append((before["layer"], before["geometry"], gain["loopconv"],
                                gain["torch"]))
    return scaled, sorted(lagging, key=lambda item: item[2] / item[3])


def format_networks_scaling(data: dict, dtype: str, threads: int, shown: int = 4) -> str:
    """A line per network and batch size on going from the fewest threads of the run to
    `threads`: each peer's step speed-up, and the layers whose PyTorch time drops by
    ``SCALING * threads / fewest`` (1.6x for 1 to 2 threads) or more but loopconv's does
    not."""
    fewest = min(data["threads"])
    threshold = SCALING * threads / fewest
    base = {(s["network"], s["batch"]): s for s in _selected(data, fewest, dtype)}
    out = [f"{dtype}, {fewest} -> {threads} threads: speed-up of the step (time at {fewest} / "
           f"time at {threads}), and the layers that\nPyTorch speeds up {threshold:.2f}x or "
           f"more but loopconv does not (loopconv's speed-up, PyTorch's)"]
    for more in _selected(data, threads, dtype):
        before = base.get((more["network"], more["batch"]))
        if before is None:
            continue
        gains = ", ".join(f"{peer} {_ratio(before['step'][peer] / more['step'][peer])}x"
                          for peer in ("loopconv", "torch")
                          if before["step"].get(peer) and more["step"].get(peer))
        scaled, lagging = _layer_scaling(before, more, threshold)
        text = (f"  {more['network']} b{more['batch']}: step {gains or '-'}; PyTorch "
                f"{threshold:.2f}x or more on {scaled} of {len(more['layers'])} layers, "
                f"loopconv not on {len(lagging)} of them")
        if lagging:
            text += ": " + ", ".join(f"{name} {geometry} ({_ratio(ours)}x, {_ratio(theirs)}x)"
                                     for name, geometry, ours, theirs in lagging[:shown])
            text += f", and {len(lagging) - shown} more" if len(lagging) > shown else ""
        out.append(text)
    return "\n".join(out)


def format_networks_report(data: dict, detail: bool = False) -> str:
    """The report of a networks run: the networks, then per thread count and dtype their
    table (and with `detail` each network's layers), then the thread scaling."""
    networks = "\n".join(f"  {name:16} {info['variant']}; {info['convolutions']} convolutions, "
                         f"training batch {info['train_batch']}"
                         for name, info in data["networks"].items())
    parts = ["networks (a training step: the forward pass, input gradient and weight "
             "gradient of every\nconvolution, except the input gradient of the first one):\n"
             + networks]
    for threads in data["threads"]:
        if str(threads) not in data["workers"]:
            continue
        for dtype in data["dtypes"]:
            parts.append(format_networks_table(data, threads, dtype))
            if detail:
                parts += [format_networks_detail(data, s)
                          for s in _selected(data, threads, dtype)]
    fewest = min(data["threads"])
    for threads in data["threads"]:
        if threads > fewest and {str(threads), str(fewest)} <= set(data["workers"]):
            parts += [format_networks_scaling(data, dtype, threads) for dtype in data["dtypes"]]
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# The subcommand

def bench(shapes, passes, threads_list, dtypes, repeat=None, torch=True, json_path=None,
          plot_path=None, rounds=ROUNDS) -> int:
    """``python -m loopconv bench`` with parsed options; the exit status."""
    def fail(message):
        print(f"loopconv bench: {message}", file=sys.stderr)
        return 1

    # everything that can go wrong before the run is checked first
    if plot_path is not None:
        formats = plot_formats()
        if not formats:
            return fail("--plot needs matplotlib, which is not installed "
                        "(pip install matplotlib, or pip install 'loopconv[bench]')")
        suffix = Path(plot_path).suffix.lstrip(".").lower()
        if suffix not in formats:
            return fail(f"--plot {plot_path}: matplotlib cannot write '.{suffix}' files; "
                        "use a name ending in .png (or " + ", ".join(f".{s}" for s in formats)
                        + ")")
    for option, path in (("--json", json_path), ("--plot", plot_path)):
        if path is not None and not Path(path).resolve().parent.is_dir():
            return fail(f"{option} {path}: the folder {Path(path).parent} does not exist")
    peers = ["loopconv", "im2col"]
    if torch:
        if torch_available():
            peers.append("torch")
        else:
            print("loopconv bench: PyTorch is not installed; timing loopconv and NumPy im2col "
                  "only", file=sys.stderr)

    try:
        data = run(shapes, passes, peers, threads_list, dtypes, repeat=repeat, rounds=rounds)
    except WorkerError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("loopconv bench: interrupted", file=sys.stderr)
        return 130
    print(format_report(data))
    if json_path is not None:
        with open(json_path, "w") as f:
            json.dump(data, f, indent=1)
        print(f"\nresults written to {json_path}")
    if plot_path is not None:
        plot(data, plot_path)
        print(f"chart written to {plot_path}")
    for problem in data["problems"]:
        print(f"warning: {problem}", file=sys.stderr)
    return 1 if data["problems"] else 0


def bench_networks(names, batches, threads_list, dtypes, repeat=None, torch=True,
                   onnxruntime=True, json_path=None, rounds=NET_ROUNDS, detail=False) -> int:
    """``python -m loopconv bench --suite networks`` with parsed options; the exit status."""
    def say(message):
        print(f"loopconv bench: {message}", file=sys.stderr)

    if json_path is not None and not Path(json_path).resolve().parent.is_dir():
        say(f"--json {json_path}: the folder {Path(json_path).parent} does not exist")
        return 1
    peers = ["loopconv"]
    for wanted, library, available, install in (
            (torch, ["torch"], torch_available, "PyTorch is not installed (pip install torch)"),
            (onnxruntime, ["onnxruntime", GIVEN], onnxruntime_available,
             "ONNX Runtime is not installed (pip install onnxruntime onnx)")):
        if wanted and available():
            peers += library
        elif wanted:
            say(f"{install}; leaving it out")
    try:
        data = run_networks(names, batches, peers, threads_list, dtypes, repeat=repeat,
                            rounds=rounds)
    except WorkerError as exc:
        say(str(exc))
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    print(format_networks_report(data, detail=detail))
    if json_path is not None:
        with open(json_path, "w") as f:
            json.dump(data, f, indent=1)
        print(f"\nresults written to {json_path}")
    for problem in data["problems"]:
        print(f"warning: {problem}", file=sys.stderr)
    return 1 if data["problems"] else 0


def _worker_cli(argv) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="lcbench.core")
    parser.add_argument("--worker", choices=PEERS, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    return worker_main(args.worker, args.threads)


if __name__ == "__main__":
    sys.exit(_worker_cli(sys.argv[1:]))
