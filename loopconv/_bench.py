"""``python -m loopconv bench``: time loopconv against NumPy im2col and PyTorch.

The machinery behind the ``bench`` subcommand (whose options are parsed in `loopconv._cli`):
the table of standard layer shapes, the worker processes that time one library each, the
timing itself, the result table, the JSON file and the chart.

How the timing is done
----------------------
- Every library runs in its own worker process, started once per thread count; the parent
  sends jobs (shape, pass, dtype) one at a time over a pipe, so only one worker computes at a
  time, and the peers take turns shape by shape rather than one after the other, which spreads
  the noise of a shared machine evenly over them.
- A worker is started with ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``
  and ``LOOPCONV_NUM_THREADS`` in its environment (NumPy's BLAS reads them when NumPy is
  imported), then also calls ``loopconv.set_num_threads`` or ``torch.set_num_threads``.  The
  NumPy and PyTorch workers do not import loopconv (PyTorch ships its own OpenMP runtime).
- Every worker draws the same random inputs (same seed, shape and dtype); PyTorch gets them as
  tensors through ``torch.from_numpy`` and runs under ``torch.no_grad()``.
- A measurement: warm-up calls, then timed samples; the reported time is the median.  Calls
  shorter than `MIN_SAMPLE` are grouped into samples of several calls (as `timeit` does).  The
  number of samples adapts to the call's duration so that each measurement takes about
  `BUDGET` seconds (between `MIN_REPEAT` and `MAX_REPEAT` samples), unless ``--repeat`` fixes
  it.
- Each worker sends back a checksum of its result (the norm, and the dot product with a fixed
  random vector); results that disagree with loopconv's are flagged, since the time of a wrong
  answer means nothing.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

PASSES = ("forward", "input", "weight")
PEERS = ("loopconv", "im2col", "torch")
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
    ``k``, and stride, padding, dilation and groups as in `loopconv.conv2d`."""

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

    @property
    def input_shape(self) -> tuple:
        return (self.n, self.c, self.h, self.w)

    @property
    def weight_shape(self) -> tuple:
        return (self.o, self.c // self.groups, self.k, self.k)

    @property
    def output_shape(self) -> tuple:
        def size(s):
            return (s + 2 * self.padding - self.dilation * (self.k - 1) - 1) // self.stride + 1
        return (self.n, self.o, size(self.h), size(self.w))

    @property
    def flops(self) -> int:
        """Floating-point operations of one pass: a multiply and an add per weight tap and
        output element."""
        n, o, oh, ow = self.output_shape
        return 2 * n * o * (self.c // self.groups) * self.k * self.k * oh * ow

    def describe(self) -> str:
        text = (f"({self.n},{self.c},{self.h},{self.w}) -> {self.o}, k{self.k}, s{self.stride}, "
                f"p{self.padding}, d{self.dilation}")
        return text + (f", g{self.groups}" if self.groups > 1 else "")


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


# ---------------------------------------------------------------------------------------------
# The peers: how each library is set up in its worker, and its three passes

def loopconv_config() -> dict:
    """`loopconv._config.config()` as strings; what went wrong, if it fails."""
    try:
        from loopconv._config import config

        return {k: str(v) for k, v in config().items()}
    except Exception as exc:  # noqa: BLE001 -- only a description, the timing goes on
        return {"error": f"{type(exc).__name__}: {exc}"}


def _setup_loopconv(threads: int):
    import loopconv

    loopconv.set_num_threads(threads)
    info = {"version": loopconv.__version__, "threads": loopconv.get_num_threads(),
            "cpu variant": loopconv_config().get("cpu variant", "?"), "file": loopconv.__file__}

    def call(pass_, s, a):
        args = (s.stride, s.padding, s.dilation, s.groups)
        if pass_ == "forward":
            return lambda: loopconv.conv2d(a["x"], a["w"], None, *args)
        if pass_ == "input":
            return lambda: loopconv.conv2d_input(s.input_shape, a["w"], a["gy"], *args)
        return lambda: loopconv.conv2d_weight(a["x"], s.weight_shape, a["gy"], *args)
    return info, call


def _load_im2col():
    """`loopconv._im2col`, loaded from its file, so that the NumPy worker does not import the
    loopconv package and its compiled loops."""
    if "loopconv._im2col" in sys.modules:
        return sys.modules["loopconv._im2col"]
    spec = importlib.util.spec_from_file_location("_loopconv_im2col",
                                                  Path(__file__).with_name("_im2col.py"))
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
    torch.set_grad_enabled(False)      # the whole worker runs as under torch.no_grad()
    info = {"version": torch.__version__, "threads": torch.get_num_threads()}

    def call(pass_, s, a):
        x, w, gy = (torch.from_numpy(a[key]) for key in ("x", "w", "gy"))
        args = (s.stride, s.padding, s.dilation, s.groups)
        if pass_ == "forward":
            return lambda: F.conv2d(x, w, None, *args)
        if pass_ == "input":
            return lambda: torch.nn.grad.conv2d_input(s.input_shape, w, gy, *args)
        return lambda: torch.nn.grad.conv2d_weight(x, s.weight_shape, gy, *args)
    return info, call


_SETUP = {"loopconv": _setup_loopconv, "im2col": _setup_im2col, "torch": _setup_torch}


def peer_call(peer: str, threads: int = 1):
    """(info, call) for `peer` in this process; ``call(pass_, shape, inputs)`` gives a function
    of no arguments that runs the pass once and returns its result."""
    return _SETUP[peer](threads)


# ---------------------------------------------------------------------------------------------
# Timing

def measure(fn, repeat: int | None = None, budget: float = BUDGET) -> dict:
    """Time `fn()`: warm-up calls, then samples; the median, in seconds per call, and more.

    `repeat` fixes the number of samples; without it, the number adapts so that the samples
    take about `budget` seconds."""
    t0 = time.perf_counter()
    result = fn()                      # first call: page faults, lazy set-up
    first = time.perf_counter() - t0
    warmup, spent, est = 1, first, math.inf
    while warmup < 2 or (spent < 0.05 and warmup < 1000):
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        est = min(est, elapsed)        # the fastest warm-up call: robust to an interruption
        spent += elapsed
        warmup += 1
    number = 1 if est >= MIN_SAMPLE else math.ceil(MIN_SAMPLE / max(est, 1e-7))
    if repeat is None:
        if est > budget * 2 / 3:
            repeat = SLOW_REPEAT
        else:
            repeat = min(MAX_REPEAT, max(MIN_REPEAT, round(budget / (est * number))))
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


def checksum(result) -> list:
    """[norm, dot product with a fixed random vector] of a result, in float64."""
    r = np.asarray(result, dtype=np.float64).ravel()
    probe = np.random.default_rng(12345).standard_normal(r.size)
    return [float(np.sqrt(r @ r)), float(r @ probe)]


# ---------------------------------------------------------------------------------------------
# The worker process

_BOOTSTRAP = ("import runpy, sys; path = sys.argv[1]; sys.argv = [path] + sys.argv[2:]; "
              "runpy.run_path(path, run_name='__main__')")


def worker_command(peer: str, threads: int) -> list:
    """The command of a worker: this file run as a script (not as ``loopconv._bench``, so that
    only the loopconv worker imports loopconv)."""
    return [sys.executable, "-c", _BOOTSTRAP, str(Path(__file__).resolve()),
            "--worker", peer, "--threads", str(threads)]


def worker_environment(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "LOOPCONV_NUM_THREADS"):
        env[var] = str(threads)
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
            shape = SHAPES[job["shape"]]
            if inputs_key != (shape.name, job["dtype"]):
                inputs_key, inputs = None, None       # free the previous shape's arrays first
                inputs = make_inputs(shape, job["dtype"])
                inputs_key = (shape.name, job["dtype"])
            m = measure(call(job["pass"], shape, inputs), job.get("repeat"),
                        job.get("budget", BUDGET))
            send({"ok": True, "times": m["times"], "median": m["median"],
                  "number": m["number"], "warmup": m["warmup"],
                  "check": checksum(m["result"])})
        except Exception as exc:  # noqa: BLE001
            send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return 0


class WorkerError(RuntimeError):
    pass


class Worker:
    """A worker process seen from the parent."""

    def __init__(self, peer: str, threads: int):
        self.peer, self.threads = peer, threads
        self.info: dict[str, Any] | None = None       # what the worker reports when ready
        self.proc = subprocess.Popen(worker_command(peer, threads), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     env=worker_environment(threads))
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
        self.workers_info: dict[str, dict] = {}

    def start_workers(self, peers, threads: int, skipped: int) -> dict:
        """The workers that started (all start at once; loopconv must)."""
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
                self.total -= skipped
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
        try:
            reply = workers[peer].run(**job, shape=shape.name)
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
                            best = min(recs, key=lambda r: r["median_s"])
                            best["round_medians_s"] = [r["median_s"] for r in recs]
                            for r in recs:
                                if r is not best:
                                    state.results.remove(r)
                            records[(pass_, peer)] = best
                    state.compare(records, shape, dtype)
        finally:
            for worker in workers.values():
                worker.close()
    import loopconv

    return {
        "format": JSON_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.perf_counter() - state.start, 1),
        "command": sys.argv,
        "machine": {"platform": platform.platform(), "cpu": _cpu_name(),
                    "cores": available_cores(), "python": platform.python_version()},
        "loopconv": loopconv_config(),
        "loopconv_file": loopconv.__file__,
        "workers": state.workers_info,
        "shapes": {s.name: {**asdict(s), "flops": s.flops, "output": s.output_shape}
                   for s in shapes},
        "passes": list(passes), "peers": list(peers), "threads": list(threads_list),
        "dtypes": list(dtypes), "repeat": repeat, "budget_s": budget, "rounds": rounds,
        "results": state.results, "problems": state.problems,
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
    loads = [r["load"] for r in mine if r.get("load") is not None]
    cores = data["machine"].get("cores", 1)
    if loads and max(loads) > cores + 0.5:
        out.append(f"note: the machine was busy (load average up to {max(loads):.1f} on {cores} "
                   "cores): other programs shared\n      the cores, so these times are slow and "
                   "noisy, the multi-threaded ones most")
    return "\n".join(out)


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


def _worker_cli(argv) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="loopconv._bench")
    parser.add_argument("--worker", choices=PEERS, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    return worker_main(args.worker, args.threads)


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        sys.exit(_worker_cli(sys.argv[1:]))
    from loopconv._cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
