"""Filter a 3-D volume larger than memory, chunk by chunk, from one Zarr store into another.

The example first writes a volume of random values of the given size (default 2 GiB, float32)
into a Zarr store on disk, then smooths it with a Gaussian kernel through
``loopconv.dask.conv3d`` (padding "same", reflected at the volume's border) and writes the
result into a second Zarr store with ``dask.array.to_zarr``, under Dask's progress bar.  The
tasks read their blocks and halos straight from the input store and the result streams to
disk, so the process holds a few chunks at a time, not the volume: it prints the throughput
and its peak resident memory next to the volume's size.

    pip install "loopconv[dask]"
    python examples/filter_volume.py                       # 2 GiB volume in ./filter_volume_data
    python examples/filter_volume.py --size 8GiB --chunk 128 --workdir /scratch/vol
    python examples/filter_volume.py --size 64MiB --keep   # small; keep the stores

With ``--scheduler tcp://host:8786`` the same code runs on a dask.distributed cluster (the
work directory must then be on storage that all workers see).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import re
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

MIB = 2**20
UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": MIB, "mb": MIB, "mib": MIB,
         "g": 2**30, "gb": 2**30, "gib": 2**30}


def parse_size(text: str) -> int:
    """'2GiB', '512MiB', '1.5g' or a number of bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 2GiB or 512MiB)")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def volume_shape(nbytes: int, chunk: int) -> tuple:
    """A (D, H, W) float32 shape of about `nbytes`: H = W a multiple of the chunk, D to fit."""
    voxels = nbytes // 4
    side = max(chunk, round(voxels ** (1 / 3) / chunk) * chunk)
    depth = max(1, voxels // (side * side))
    return depth, side, side


def gaussian_kernel(size: int = 5, sigma: float = 1.0) -> np.ndarray:
    """A normalised 3-D Gaussian, shape (1, 1, size, size, size)."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (r / sigma) ** 2)
    k = g[:, None, None] * g[None, :, None] * g[None, None, :]
    return (k / k.sum()).astype(np.float32)[None, None]


def peak_rss() -> int:
    """The process's peak resident set size in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss():
    """The process's resident set size now, in bytes (None where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def codec(compress: bool) -> dict:
    """Zarr's array arguments for no compression (Zarr 3 and Zarr 2 name it differently)."""
    if compress:
        return {}
    import zarr

    return {"compressors": None} if int(zarr.__version__.split(".")[0]) >= 3 else {
        "compressor": None}


def make_volume(path: Path, shape, chunk: int, seed: int, compress: bool):
    """Random float32 values in a Zarr store (1, 1, D, H, W), written chunk by chunk (in a
    child process, so that the peak memory printed is the filtering's alone)."""
    import dask.array as da
    from dask.diagnostics import ProgressBar

    chunks = (1, 1) + tuple(min(chunk, n) for n in shape)
    rng = da.random.default_rng(seed)
    volume = rng.standard_normal((1, 1) + tuple(shape), chunks=chunks, dtype=np.float32)
    with ProgressBar():
        da.to_zarr(volume, str(path), overwrite=True, **codec(compress))


def existing(path: Path, shape, chunk: int):
    """Whether `path` holds a volume of this shape and chunking (kept from an earlier run)."""
    try:
        import zarr

        z = zarr.open_array(str(path), mode="r")
    except Exception:
        return False
    return z.shape == (1, 1) + tuple(shape) and z.chunks == (1, 1) + tuple(
        min(chunk, n) for n in shape)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("2GiB"),
                        help="volume size, e.g. 2GiB (default) or 512MiB; float32 voxels")
    parser.add_argument("--chunk", type=int, default=128,
                        help="edge of the cubic chunks in voxels (default 128: 8 MiB)")
    parser.add_argument("--kernel", type=int, default=5, help="Gaussian kernel size (odd)")
    parser.add_argument("--sigma", type=float, default=1.0, help="Gaussian sigma in voxels")
    parser.add_argument("--workdir", type=Path, default=Path("filter_volume_data"),
                        help="where the two Zarr stores go (default ./filter_volume_data)")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads of Dask's threaded scheduler (default: one per core)")
    parser.add_argument("--scheduler", default=None,
                        help="address of a dask.distributed scheduler, instead of threads")
    parser.add_argument("--no-compression", action="store_true",
                        help="store the volumes uncompressed (faster on fast disks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the stores afterwards")
    args = parser.parse_args(argv)

    try:
        import dask
        import dask.array as da
        from dask.diagnostics import ProgressBar
    except ImportError:
        sys.exit("filter_volume.py needs Dask and Zarr: pip install 'loopconv[dask]'")
    import loopconv.dask

    shape = volume_shape(args.size, args.chunk)
    nbytes = 4 * math.prod(shape)
    args.workdir.mkdir(parents=True, exist_ok=True)
    source, target = args.workdir / "input.zarr", args.workdir / "output.zarr"
    print(f"volume {shape[0]} x {shape[1]} x {shape[2]} float32 = {nbytes / MIB:.0f} MiB, "
          f"chunks of {args.chunk}^3 voxels ({4 * args.chunk**3 / MIB:.0f} MiB), "
          f"in {args.workdir}")

    client = None
    if args.scheduler:
        from distributed import Client

        client = Client(args.scheduler)
        print(f"scheduler {args.scheduler}: {len(client.scheduler_info()['workers'])} workers")
    config = {} if client else {"scheduler": "threads", "num_workers": args.workers}

    if args.keep and existing(source, shape, args.chunk):
        print(f"using the input volume kept in {source}")
    else:
        print("writing the input volume")
        t0 = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(
            target=make_volume, args=(source, shape, args.chunk, args.seed,
                                      not args.no_compression))
        child.start()
        child.join()
        if child.exitcode != 0:
            sys.exit(f"writing the input volume failed (exit code {child.exitcode})")
        print(f"input written in {time.perf_counter() - t0:.1f} s")

    before = current_rss()
    with dask.config.set(config):
        weight = gaussian_kernel(args.kernel, args.sigma)
        x = da.from_zarr(str(source))
        y = loopconv.dask.conv3d(x, weight, padding="same", padding_mode="reflect")
        print(f"filtering: {x.npartitions} blocks, Gaussian {args.kernel}^3 (sigma "
              f"{args.sigma}), reflected at the border")
        t0 = time.perf_counter()
        with ProgressBar():
            # to a new array with the blocks as chunks: each block is written once it is
            # computed, and then released
            da.to_zarr(y, str(target), overwrite=True, **codec(not args.no_compression))
        took = time.perf_counter() - t0

    voxels = math.prod(shape)
    peak = peak_rss()
    print(f"filtered in {took:.1f} s: {nbytes / MIB / took:.0f} MiB/s, "
          f"{voxels / took / 1e6:.1f} Mvoxel/s")
    print(f"peak memory (resident) {peak / MIB:.0f} MiB = {peak / nbytes:.2f} x the volume "
          f"({nbytes / MIB:.0f} MiB)"
          + ("" if before is None else f"; {before / MIB:.0f} MiB before filtering"))
    print(f"output: {target}")
    if client is not None:
        client.close()
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
        print(f"removed {args.workdir} (--keep keeps it)")
    return {"seconds": took, "peak_rss": peak, "bytes": nbytes, "shape": shape,
            "source": os.fspath(source), "target": os.fspath(target)}


if __name__ == "__main__":
    main()
