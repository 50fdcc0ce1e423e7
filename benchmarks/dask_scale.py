"""How loopconv.dask scales: its overhead in memory, out of core, and over worker processes.

Three measurements, each in fresh processes:

``overhead``
    Problems that fit in memory (float32, 512 MiB in and out, "same" padding): a volume
    (one image, 16 -> 16 channels, 3x3x3) and batches of images (32 -> 32 and 64 -> 64
    channels, 3x3), as one in-memory call on all the cores, and through ``loopconv.dask`` on
    Dask's threaded scheduler with chunks of 64 MiB that need halos: on a Dask array whose
    chunks are held in memory (as Dask holds an array it computed or persisted), with
    ``.compute()`` (which joins the blocks into one array) and with ``da.store`` into an
    array allocated once; and on ``da.from_array`` of the NumPy array, whose chunks are views
    that each task copies, again with ``.compute()`` and with ``da.store``.  They take turns
    for several rounds; the ratio of median times is the speed through Dask relative to the
    in-memory call (target >= 0.8).

``out-of-core``
    Volumes in Zarr stores on disk of several sizes, filtered from one store into another with
    ``dask.array.to_zarr`` on the threaded scheduler, for three layers: a one-channel 5x5x5
    filter (bound by reading and writing), a 16 -> 16 channel 3x3x3 convolution (about as much
    computing as reading and writing) and a 64 -> 64 channel one (bound by the convolution).
    Each run is a fresh process: its peak resident memory (``ru_maxrss``) is measured against
    the volume's size and the size of a chunk.  The same process times the in-memory call
    that a task makes (one block with its halo), on one thread and on all the cores: the
    throughput per core out of core over the in-memory throughput per core is the other
    ratio (target >= 0.8).  A plain copy of the volume through Dask (read, write, no
    convolution) shows what reading and writing cost alone; the filter's time over the
    copy's time plus that of the in-memory convolution of the volume is what the pipeline
    costs beyond them (1.0: nothing).  Reading and writing take CPU time too (Zarr's copies,
    the file system, new pages): the copy's CPU time (user and system, every thread) is
    printed, and the per-core ratio that a pipeline whose only costs were the convolution and
    that CPU time would reach ("bound": convolution / (convolution + copy), in CPU seconds).

``workers``
    The 16-channel layer on a 1 GiB volume through a ``dask.distributed.LocalCluster`` of one
    and of two worker processes (one thread each), and the speed-up.

    taskset -c 0,1 python benchmarks/dask_scale.py all          # everything (~10 minutes)
    taskset -c 0,1 python benchmarks/dask_scale.py overhead --rounds 7
    python benchmarks/dask_scale.py out-of-core --sizes 1,4 --workdir /scratch/lcd
    python benchmarks/dask_scale.py workers --json workers.json

Zarr stores are written uncompressed unless ``--compress`` is given: with Zarr's default
compressor, encoding and decoding take longer than the convolution of a small layer, and the
figures then measure the codec.  glibc keeps freed memory for reuse, which shows as resident;
``MALLOC_TRIM_THRESHOLD_=65536`` in the environment (inherited by the measuring processes)
returns it, as dask.distributed does in its workers.  The machine is expected to be otherwise
idle; on a shared one, compare the ratios, which are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

MIB = 2**20
GIB = 2**30
HERE = Path(__file__).resolve()

# (channels, kernel) of the out-of-core layers: bound by reading and writing (1ch-k5), by
# both (16ch-k3), by the convolution (64ch-k3)
LAYERS = {"16ch-k3": (16, 3), "1ch-k5": (1, 5), "64ch-k3": (64, 3)}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_seconds() -> float:
    """CPU time of this process, every thread, user and system."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _child(kind: str, **params) -> dict:
    """Run `kind` in a fresh Python process; its result (printed as JSON)."""
    done = subprocess.run([sys.executable, str(HERE), "_child", kind, json.dumps(params)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{kind} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _codec(compress: bool) -> dict:
    if compress:
        return {}
    import zarr

    return {"compressors": None} if int(zarr.__version__.split(".")[0]) >= 3 else {
        "compressor": None}


# ---------------------------------------------------------------------------------------------
# The measurements, each run in its own process

# (input shape, weight shape, chunks) of the in-memory problems: 512 MiB of float32 each, in
# chunks of 64 MiB with halos between them
OVERHEAD_CASES = {
    "volume": ((1, 16, 128, 256, 256), (16, 16, 3, 3, 3), (1, 16, 16, 256, 256)),
    "images": ((128, 32, 128, 256), (32, 32, 3, 3), (32, 32, 64, 256)),
    "images-64ch": ((64, 64, 128, 256), (64, 64, 3, 3), (16, 64, 64, 256)),
}


def run_overhead(case: str, rounds: int) -> dict:
    """The in-memory call against loopconv.dask on the threaded scheduler, taking turns: on a
    Dask array whose chunks are in memory (as an array computed or persisted by Dask holds
    them), with .compute() and with da.store into an array allocated once; and on
    da.from_array of the NumPy array, whose chunks are views that each task copies, with
    .compute() and da.store."""
    import dask
    import dask.array as da
    import numpy as np

    import loopconv
    import loopconv.dask

    x_shape, w_shape, chunks = OVERHEAD_CASES[case]
    conv = loopconv.conv3d if len(x_shape) == 5 else loopconv.conv2d
    conv_dask = loopconv.dask.conv3d if len(x_shape) == 5 else loopconv.dask.conv2d
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = (rng.standard_normal(w_shape) / 20).astype(np.float32)
    views = da.from_array(x, chunks=chunks)
    times: dict = {"memory_s": [], "dask_s": [], "store_s": [], "views_s": [],
                   "views_store_s": []}
    with dask.config.set(scheduler="threads"):
        held = views.map_blocks(np.ascontiguousarray).persist()
        expected = conv(x, w, padding="same")                                # warm-up
        result = conv_dask(held, w, padding="same").compute()
        assert np.allclose(result, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
        target = np.empty_like(expected)
        del result, expected
        runs = {"memory_s": lambda: conv(x, w, padding="same"),
                "dask_s": lambda: conv_dask(held, w, padding="same").compute(),
                "store_s": lambda: da.store(conv_dask(held, w, padding="same"), target,
                                            lock=False),
                "views_s": lambda: conv_dask(views, w, padding="same").compute(),
                "views_store_s": lambda: da.store(conv_dask(views, w, padding="same"), target,
                                                  lock=False)}
        for _ in range(rounds):
            for key, run in runs.items():
                t0 = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - t0)
    return {"case": case, "x": x_shape, "w": w_shape, "chunks": chunks, "cores": _cores(),
            "threads": loopconv.get_num_threads(), "blocks": views.npartitions,
            "chunk_mib": x.nbytes / views.npartitions / MIB, "input_mib": x.nbytes / MIB,
            **times}


def make_volume(path: str, shape, chunks, compress: bool) -> dict:
    import dask.array as da
    import numpy as np

    rng = da.random.default_rng(1)
    volume = rng.standard_normal(shape, chunks=chunks, dtype=np.float32)
    t0 = time.perf_counter()
    da.to_zarr(volume, path, overwrite=True, **_codec(compress))
    return {"seconds": time.perf_counter() - t0}


def run_filter(source: str, target: str, layer: str, copy: bool, compress: bool,
               scheduler: str = "threads", workers: int = 0) -> dict:
    """Filter (or copy) the volume at `source` into `target`: time, peak memory, and the
    in-memory speed of one block on one thread."""
    import dask
    import dask.array as da
    import numpy as np

    import loopconv
    import loopconv.dask

    channels, k = LAYERS[layer]
    x = da.from_zarr(source)
    w = (np.random.default_rng(2).standard_normal((channels, channels) + (k,) * 3)
         / (channels * k**3)).astype(np.float32)
    if copy:
        y = x.map_blocks(np.copy, dtype=x.dtype)
    else:
        y = loopconv.dask.conv3d(x, w, padding="same", padding_mode="reflect")
    before = _rss()
    cluster = client = None
    if scheduler == "distributed":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
        config = {"scheduler": client}
    else:
        config = {"scheduler": "threads"}
    with dask.config.set(config):
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        da.to_zarr(y, target, overwrite=True, **_codec(compress))
        seconds = time.perf_counter() - t0
        cpu = _cpu_seconds() - cpu0
    peak = _peak()
    if client is not None:
        client.close()
        cluster.close()
    # in memory: one block with its halo (the call a task makes), on one thread and on all
    # the cores; per core
    block = np.random.default_rng(3).standard_normal(
        (1, x.shape[1]) + tuple(c[0] + k - 1 for c in x.chunks[2:]), dtype=np.float32)
    block_values = math.prod(c[0] for c in x.chunks[2:]) * x.shape[1]
    per_core = {}
    for threads in (1, _cores()):
        best = math.inf
        with loopconv.threads(threads):
            for _ in range(3):
                t0 = time.perf_counter()
                loopconv.conv3d(block, w)
                best = min(best, time.perf_counter() - t0)
        per_core[threads] = block_values / best / threads
    return {"seconds": seconds, "cpu": cpu, "peak": peak, "before": before, "volume": x.nbytes,
            "chunk": x.nbytes // x.npartitions, "blocks": x.npartitions, "voxels": x.size,
            "in_memory_per_core_one_thread": per_core[1],
            "in_memory_per_core_all_cores": per_core[_cores()], "cores": _cores()}


# ---------------------------------------------------------------------------------------------
# The reports

def overhead(args) -> dict:
    results = {}
    for case in OVERHEAD_CASES:
        r = _child("overhead", case=case, rounds=args.rounds)
        mem = statistics.median(r["memory_s"])
        print(f"overhead, {case}: input {tuple(r['x'])} float32 ({r['input_mib']:.0f} MiB), "
              f"weight {tuple(r['w'])}, 'same'; {r['blocks']} chunks of "
              f"{r['chunk_mib']:.0f} MiB {tuple(r['chunks'])}; {r['cores']} cores")
        print(f"  {'in memory, ' + str(r['threads']) + ' threads':44} median {mem:5.2f} s, "
              f"best {min(r['memory_s']):5.2f} s")
        for key, what in (("dask_s", "loopconv.dask, chunks in memory, .compute()"),
                          ("store_s", "loopconv.dask, chunks in memory, da.store"),
                          ("views_s", "loopconv.dask, da.from_array, .compute()"),
                          ("views_store_s", "loopconv.dask, da.from_array, da.store")):
            med = statistics.median(r[key])
            r[key.replace("_s", "_ratio")] = mem / med
            print(f"  {what:44} median {med:5.2f} s, best {min(r[key]):5.2f} s:  "
                  f"speed / in memory {mem / med:.2f} (medians), "
                  f"{min(r['memory_s']) / min(r[key]):.2f} (best)")
        results[case] = r
    return results


def _volume_shape(nbytes: int, channels: int):
    """(1, C, D, 512, 512) float32 of about `nbytes`, in chunks of 32 MiB: 128 x 256 x 256
    voxels for one channel, 32 x 128 x 128 for 16, 8 x 128 x 128 for 64."""
    spatial = {1: (128, 256, 256), 16: (32, 128, 128)}.get(channels, (8, 128, 128))
    depth = max(spatial[0], round(nbytes / (4 * channels * 512 * 512) / spatial[0]) * spatial[0])
    return (1, channels, depth, 512, 512), (1, channels) + spatial


def out_of_core(args) -> dict:
    work = Path(args.workdir).resolve()
    results = {}
    print(f"out of core: Zarr on {work} ({'compressed' if args.compress else 'uncompressed'}),"
          f" threaded scheduler, {_cores()} cores")
    print("  layer    volume  chunks    time   MiB/s   per core / in memory  time / (copy +  "
          "peak RSS (before)  peak/volume  (peak-before)/chunk  CPU s  bound")
    print("                                                1 thread  all cores   in memory)")
    for layer in args.layers:
        channels = LAYERS[layer][0]
        for size in args.sizes:
            shape, chunks = _volume_shape(int(size * GIB), channels)
            source, target = str(work / f"in-{layer}.zarr"), str(work / f"out-{layer}.zarr")
            _child("make", path=source, shape=shape, chunks=chunks, compress=args.compress)
            rows = {}
            for kind in ("copy", "filter"):
                r = _child("filter", source=source, target=target, layer=layer,
                           copy=kind == "copy", compress=args.compress)
                rows[kind] = r
                per_core = r["voxels"] / r["seconds"] / r["cores"]
                r["ratio_one_thread"] = per_core / r["in_memory_per_core_one_thread"]
                r["ratio_all_cores"] = per_core / r["in_memory_per_core_all_cores"]
                if kind == "filter":
                    # reading and writing (the copy's time) plus the in-memory convolution of
                    # the whole volume on all the cores: the time if nothing else cost
                    compute = r["voxels"] / (r["in_memory_per_core_all_cores"] * r["cores"])
                    r["pipeline"] = r["seconds"] / (rows["copy"]["seconds"] + compute)
                    ratios = (f"{r['ratio_one_thread']:8.2f} {r['ratio_all_cores']:9.2f}"
                              f"       {r['pipeline']:5.2f}     ")
                else:
                    ratios = "  (copy, no convolution)           "
                if kind == "filter":
                    # the best per-core ratio (one thread's terms) that any pipeline could
                    # reach here: the convolution's CPU time over it plus the CPU time that
                    # reading and writing took in the copy (Zarr, the file system, new pages)
                    busy = r["voxels"] / r["in_memory_per_core_one_thread"]
                    r["bound"] = busy / (busy + rows["copy"]["cpu"])
                    extra = f"{r['cpu']:7.1f}  {r['bound']:5.2f}"
                else:
                    extra = f"{r['cpu']:7.1f}"
                print(f"  {layer:7} {r['volume'] / GIB:5.1f} GiB {r['chunk'] / MIB:4.0f} MiB"
                      f" {r['seconds']:6.1f} s {r['volume'] / MIB / r['seconds']:6.0f}  "
                      f"{ratios:36} {r['peak'] / MIB:5.0f} MiB ({r['before'] / MIB:3.0f})"
                      f"   {r['peak'] / r['volume']:6.2f}     "
                      f"{(r['peak'] - r['before']) / r['chunk']:6.1f}             {extra}")
            results[f"{layer}-{size}"] = rows
    shutil.rmtree(work, ignore_errors=True)
    return results


def workers(args) -> dict:
    work = Path(args.workdir).resolve()
    layer = "16ch-k3"
    shape, chunks = _volume_shape(int(args.size * GIB), LAYERS[layer][0])
    source, target = str(work / "in-workers.zarr"), str(work / "out-workers.zarr")
    _child("make", path=source, shape=shape, chunks=chunks, compress=args.compress)
    print(f"workers: {layer} on {args.size:g} GiB, LocalCluster, processes with one thread")
    results = {}
    for n in (1, 2):
        times = [_child("filter", source=source, target=target, layer=layer, copy=False,
                        compress=args.compress, scheduler="distributed", workers=n)["seconds"]
                 for _ in range(args.rounds)]
        results[n] = times
        print(f"  {n} worker{'s' if n > 1 else ' '}: median {statistics.median(times):6.1f} s,"
              f" best {min(times):6.1f} s")
    print(f"  speed-up from 1 to 2 workers: "
          f"{statistics.median(results[1]) / statistics.median(results[2]):.2f} (median)")
    shutil.rmtree(work, ignore_errors=True)
    return results


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        kind, params = argv[1], json.loads(argv[2])
        function = {"overhead": run_overhead, "make": make_volume, "filter": run_filter}[kind]
        print(json.dumps(function(**params)))
        return None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["overhead", "out-of-core", "workers", "all"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", type=lambda s: [float(v) for v in s.split(",")],
                        default=[1.0, 4.0], help="out-of-core volume sizes in GiB")
    parser.add_argument("--size", type=float, default=1.0, help="workers: volume in GiB")
    parser.add_argument("--workdir", default="dask_scale_data")
    parser.add_argument("--compress", action="store_true",
                        help="Zarr's default compressor instead of none")
    parser.add_argument("--layers", type=lambda s: s.split(","), default=list(LAYERS),
                        help=f"out-of-core layers, of {', '.join(LAYERS)}")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    print(f"{_cores()} cores (affinity {sorted(os.sched_getaffinity(0))})")
    results = {}
    if args.what in ("overhead", "all"):
        results["overhead"] = overhead(args)
    if args.what in ("out-of-core", "all"):
        results["out_of_core"] = out_of_core(args)
    if args.what in ("workers", "all"):
        args.rounds = min(args.rounds, 3)
        results["workers"] = workers(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
