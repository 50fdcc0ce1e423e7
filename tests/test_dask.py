"""loopconv.dask against the in-memory functions.

Every pass (forward, input and weight gradients, backward, transposed and its backward) of 1-,
2- and 3-D convolutions, with every padding form and mode, strides that do not divide the
chunks, dilation and groups, on inputs chunked into tiny chunks, unaligned chunks and one
chunk, read through Dask chunks and straight from the stored array; on the synchronous and
threaded schedulers and on a local dask.distributed cluster of two worker processes.  The
weight and bias gradients must be the same bits on all of them.  Bad arguments must raise the
in-memory functions' errors while the graph is built.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import os
import pickle
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

import loopconv

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
lcd = pytest.importorskip("loopconv.dask")

PACKAGE_HOME = Path(loopconv.__file__).resolve().parents[1]
# float32 within 1e-5, float64 within 1e-12, relative to the largest magnitude of the expected
# array (every entry is a sum of products, whose rounding scales with the terms, not the sum)
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def fn(name, nd, suffix="", module=loopconv):
    return getattr(module, f"{name}{nd}d{suffix}")


def assert_matches(result, expected):
    """`result` is a lazy Dask array whose chunks tile it; computed, it has the expected
    dtype and shape, and its values are within TOL of the expected ndarray."""
    assert isinstance(result, da.Array), type(result)
    assert result.dtype == expected.dtype and result.shape == expected.shape
    for size, chunks in zip(result.shape, result.chunks):
        assert sum(chunks) == size and (all(c >= 1 for c in chunks) or size == 0)
    value = result.compute(scheduler="sync") if isinstance(result, da.Array) else result
    assert_values(value, expected)


def assert_values(value, expected):
    assert isinstance(value, np.ndarray)
    assert value.dtype == expected.dtype and value.shape == expected.shape
    scale = float(np.max(np.abs(expected.astype(np.float64)), initial=0.0))
    err = float(np.max(np.abs(value.astype(np.float64) - expected), initial=0.0))
    assert err <= TOL[expected.dtype] * scale, (err, scale)


def split(rng, n, kind):
    """Chunk sizes for an axis of length n: 'one' chunk, 'small' chunks of 1 to 3, or
    'unaligned' chunks of random sizes up to about half the axis."""
    if kind == "one" or n == 0:
        return (n,)
    top = 4 if kind == "small" else max(2, n // 2 + 1)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, top)))
    sizes[-1] -= sum(sizes) - n
    return tuple(sizes)


def chunked(rng, array, kind, source):
    """`array` as a Dask array chunked by `kind` along the batch and spatial axes (channels
    too, for 'small'): chunks of a NumPy array ('chunks'), or chunks of an in-memory Zarr
    array, which the tasks read directly ('stored')."""
    chunks = tuple(split(rng, n, kind if axis != 1 or kind == "small" else "one")
                   for axis, n in enumerate(array.shape))
    if source == "chunks":
        x = da.from_array(array, chunks=chunks)
        assert lcd._stored(x) is None
    else:
        zarr = pytest.importorskip("zarr")
        x = da.from_array(zarr.array(array, chunks=(2,) * array.ndim), chunks=chunks)
        assert lcd._stored(x) is not None
    return x


def seeded(*parts):
    """A generator seeded by `parts` (the same in every process, unlike hash())."""
    return np.random.default_rng(zlib.crc32(repr(parts).encode()))


def random_arrays(rng, dtype, *shapes):
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


# ---------------------------------------------------------------------------------------------
# Cases: (x_shape, w_shape, keyword arguments) of a convolution

def case(id, x_shape, w_shape, **kw):
    return pytest.param(x_shape, w_shape, kw, id=id)


CONV_CASES = [
    case("1d-same-reflect", (2, 3, 17), (4, 3, 3), padding="same", padding_mode="reflect"),
    case("1d-stride3-pairs-circular", (2, 2, 19), (3, 2, 4), stride=3, padding=((2, 3),),
         padding_mode="circular"),
    case("1d-dilation3-replicate", (1, 2, 23), (2, 2, 3), dilation=3, padding=4,
         padding_mode="replicate"),
    case("1d-valid-stride2", (3, 1, 16), (2, 1, 5), stride=2, padding="valid"),
    case("1d-same-even-kernel-stride2", (2, 2, 15), (2, 2, 4), stride=2, padding="same",
         padding_mode="replicate"),
    case("2d-same-stride2", (2, 3, 13, 11), (4, 3, 3, 3), stride=2, padding="same"),
    case("2d-depthwise-reflect", (1, 4, 12, 10), (4, 1, 3, 3), groups=4, padding=(1, 2),
         padding_mode="reflect"),
    case("2d-groups-dilation-circular", (2, 4, 11, 9), (6, 2, 3, 2), groups=2,
         dilation=(2, 1), padding=((2, 2), (1, 0)), padding_mode="circular"),
    case("2d-stride3x2-replicate", (1, 2, 14, 13), (3, 2, 2, 3), stride=(3, 2), padding=1,
         padding_mode="replicate"),
    case("2d-large-padding-zeros", (1, 1, 6, 7), (2, 1, 3, 3), padding=5, stride=2),
    case("3d-same", (1, 2, 7, 6, 8), (2, 2, 3, 3, 3), padding="same"),
    case("3d-stride2-reflect", (2, 2, 9, 8, 7), (3, 2, 3, 2, 3), stride=2, padding=1,
         padding_mode="reflect"),
    case("3d-groups-circular", (1, 2, 8, 7, 6), (2, 1, 2, 3, 2), groups=2, dilation=(1, 2, 2),
         padding=((1, 1), (2, 2), (1, 2)), padding_mode="circular"),
    case("3d-stride3-replicate", (1, 1, 10, 8, 9), (2, 1, 3, 3, 3), stride=3, padding=2,
         padding_mode="replicate"),
]

# conv*_input and conv*_weight: zero padding, no 'same'
ZERO_PAD_CASES = [
    case("1d-stride3", (2, 2, 19), (3, 2, 4), stride=3, padding=((2, 3),)),
    case("1d-dilation2", (1, 2, 23), (2, 2, 3), dilation=2, padding=4),
    case("2d-groups-stride2", (2, 4, 13, 11), (6, 2, 3, 3), groups=2, stride=2,
         padding=((0, 2), (1, 1))),
    case("2d-stride-larger-than-kernel", (1, 2, 14, 13), (3, 2, 2, 1), stride=(3, 4),
         padding=1),
    case("3d-stride2-dilation", (2, 2, 9, 8, 7), (3, 2, 3, 2, 3), stride=2, dilation=(1, 2, 1),
         padding=1),
]

TRANSPOSE_CASES = [
    case("1d-stride2", (2, 3, 9), (3, 2, 4), stride=2, padding=1),
    case("1d-output-padding", (1, 2, 7), (2, 3, 3), stride=3, padding=2, output_padding=2),
    case("2d-groups-dilation", (2, 4, 6, 5), (4, 1, 3, 2), groups=2, dilation=(2, 1),
         stride=(1, 2), padding=((1, 2), (0, 1)), output_padding=(1, 1)),
    case("2d-stride-larger-than-kernel", (1, 2, 5, 6), (2, 2, 2, 1), stride=(3, 2),
         padding=(0, 1)),
    case("3d-stride", (1, 2, 4, 5, 3), (2, 2, 2, 3, 3), stride=(2, 1, 3), padding=1),
]

KINDS = ["small", "unaligned", "one"]
SOURCES = ["chunks", "stored"]
# every chunking through Dask chunks; unaligned chunks of a Zarr array, read directly
CHUNKINGS = [pytest.param(kind, "chunks", id=f"{kind}-chunks") for kind in KINDS] + [
    pytest.param("unaligned", "stored", id="unaligned-stored")]


def dtype_of(kind):
    # f64 with unaligned chunks, f32 elsewhere: both dtypes across the table
    return np.float64 if kind == "unaligned" else np.float32


def check_backward(family, rng, x, xd, w, y_shape, kw, source):
    """`family`'s backward function on Dask arrays (grad_output in unaligned chunks) against
    the in-memory one; grad_input has the input's chunks (channels: one chunk)."""
    nd = x.ndim - 2
    (gy,) = random_arrays(rng, x.dtype, y_shape)
    gyd = chunked(rng, gy, "unaligned", source)
    expected = fn(family, nd, "_backward")(x, w, gy, **kw)
    result = fn(family, nd, "_backward", module=lcd)(xd, w, gyd, **kw)
    for r, e in zip(result, expected):
        assert_matches(r, e)
    assert result[0].chunks == (xd.chunks[0], (x.shape[1],)) + xd.chunks[2:]


@pytest.mark.parametrize("kind, source", CHUNKINGS)
@pytest.mark.parametrize("x_shape, w_shape, kw", CONV_CASES)
def test_conv_and_backward(x_shape, w_shape, kw, kind, source):
    rng = seeded(x_shape, kw, kind, source)
    nd = len(x_shape) - 2
    dtype = dtype_of(kind)
    x, w, b = random_arrays(rng, dtype, x_shape, w_shape, (w_shape[0],))
    y = fn("conv", nd)(x, w, b, **kw)
    xd = chunked(rng, x, kind, source)
    assert_matches(fn("conv", nd, module=lcd)(xd, w, b, **kw), y)

    check_backward("conv", rng, x, xd, w, y.shape, kw, source)


@pytest.mark.parametrize("kind, source", CHUNKINGS)
@pytest.mark.parametrize("x_shape, w_shape, kw", ZERO_PAD_CASES)
def test_input_and_weight_gradients(x_shape, w_shape, kw, kind, source):
    rng = seeded(x_shape, kw, kind, source)
    nd = len(x_shape) - 2
    dtype = dtype_of(kind)
    x, w = random_arrays(rng, dtype, x_shape, w_shape)
    (gy,) = random_arrays(rng, dtype, fn("conv", nd)(x, w, **kw).shape)
    xd, gyd = chunked(rng, x, kind, source), chunked(rng, gy, kind, source)
    assert_matches(fn("conv", nd, "_input", module=lcd)(x_shape, w, gyd, **kw),
                   fn("conv", nd, "_input")(x_shape, w, gy, **kw))
    assert_matches(fn("conv", nd, "_weight", module=lcd)(xd, w_shape, gyd, **kw),
                   fn("conv", nd, "_weight")(x, w_shape, gy, **kw))


@pytest.mark.parametrize("kind, source", CHUNKINGS)
@pytest.mark.parametrize("x_shape, w_shape, kw", TRANSPOSE_CASES)
def test_transposed_and_backward(x_shape, w_shape, kw, kind, source):
    rng = seeded(x_shape, kw, kind, source)
    nd = len(x_shape) - 2
    dtype = dtype_of(kind)
    x, w = random_arrays(rng, dtype, x_shape, w_shape)
    (b,) = random_arrays(rng, dtype, (w_shape[1] * kw.get("groups", 1),))
    y = fn("conv_transpose", nd)(x, w, b, **kw)
    xd = chunked(rng, x, kind, source)
    assert_matches(fn("conv_transpose", nd, module=lcd)(xd, w, b, **kw), y)
    # output_size chooses output_padding: the same result
    sized = dict(kw, output_padding=0, output_size=y.shape[2:])
    assert_matches(fn("conv_transpose", nd, module=lcd)(xd, w, b, **sized), y)

    check_backward("conv_transpose", rng, x, xd, w, y.shape, kw, source)


def random_geometry(rng, nd):
    groups = int(rng.choice([1, 2]))
    c_in, c_out = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    spatial = tuple(int(rng.integers(4, 11)) for _ in range(nd))
    kernel = tuple(int(rng.integers(1, 5)) for _ in range(nd))
    kw = dict(stride=tuple(int(rng.integers(1, 4)) for _ in range(nd)),
              dilation=tuple(int(rng.integers(1, 3)) for _ in range(nd)), groups=groups)
    return (int(rng.integers(1, 4)), c_in) + spatial, (c_out, c_in // groups) + kernel, kw


@pytest.mark.parametrize("seed", range(16))
def test_random_geometries(seed):
    """Random geometries, paddings, modes and chunkings: every pass of the convolution."""
    rng = np.random.default_rng(seed)
    nd = 1 + seed % 3
    x_shape, w_shape, kw = random_geometry(rng, nd)
    padding = [0, "same", "valid", tuple(int(rng.integers(0, 4)) for _ in range(nd)),
               tuple((int(rng.integers(0, 4)), int(rng.integers(0, 4))) for _ in range(nd))]
    kw["padding"] = padding[seed % 5]
    kw["padding_mode"] = ["zeros", "reflect", "replicate", "circular"][seed % 4]
    dtype = [np.float32, np.float64][seed % 2]
    x, w = random_arrays(rng, dtype, x_shape, w_shape)
    try:
        y = fn("conv", nd)(x, w, **kw)
    except ValueError as exc:      # e.g. reflect padding larger than the input
        with pytest.raises(ValueError) as raised:
            fn("conv", nd, module=lcd)(da.from_array(x, chunks=2), w, **kw)
        assert str(raised.value) == str(exc)
        return
    kind = KINDS[seed % 3]
    xd = chunked(rng, x, kind, SOURCES[seed % 2])
    assert_matches(fn("conv", nd, module=lcd)(xd, w, **kw), y)
    (gy,) = random_arrays(rng, dtype, y.shape)
    gyd = chunked(rng, gy, KINDS[(seed + 1) % 3], SOURCES[(seed + 1) % 2])
    for r, e in zip(fn("conv", nd, "_backward", module=lcd)(xd, w, gyd, **kw),
                    fn("conv", nd, "_backward")(x, w, gy, **kw)):
        assert_matches(r, e)


# ---------------------------------------------------------------------------------------------
# Output chunks, and what each task reads

def test_output_chunks():
    x = da.zeros((3, 2, 40, 30), chunks=(2, 1, 10, (7, 8, 15)))
    w = np.zeros((5, 2, 3, 3))
    # stride 1, odd kernel, 'same': the input's chunks, channels in one chunk
    assert lcd.conv2d(x, w, padding="same").chunks == ((2, 1), (5,), (10,) * 4, (7, 8, 15))
    # output o goes with the chunk of input o * stride - before + dilation * (k - 1) // 2
    y = lcd.conv2d(x, w, stride=(2, 3), padding=((0, 1), (2, 2)), dilation=(1, 2))
    assert y.chunks[2] == (5, 5, 5, 5)         # boundaries ceil((10j - 1) / 2)
    assert y.chunks[3] == (3, 2, 5)            # ceil((7 + 0) / 3), ceil((15 + 0) / 3)
    # the input gradient and the transposed convolution map boundaries back
    gy = da.zeros((3, 5, 20, 10), chunks=(3, 5, 5, 4))
    gx = lcd.conv2d_input((3, 2, 40, 30), w, gy, stride=(2, 3), padding=((0, 1), (2, 2)),
                          dilation=(1, 2))
    assert gx.chunks[2] == (11, 10, 10, 9)      # 5 * 2 - 0 + 1 = 11, ...
    assert gx.chunks[3] == (12, 12, 6)          # 4 * 3 - 2 + 2 = 12, ...
    assert lcd.conv_transpose2d(gy, w, stride=2, padding=1).chunks[2:] == ((10, 10, 10, 9),
                                                                          (8, 8, 3))
    # a stride larger than the chunks: empty output chunks are merged away
    z = lcd.conv2d(da.zeros((1, 2, 12, 12), chunks=1), w, stride=4)
    assert z.chunks[2:] == ((1, 1, 1), (1, 1, 1))


def reachable_chunks(result, block, name):
    """The chunk indices of the array `name` that the task of `block` of `result` reads."""
    graph = dict(result.__dask_graph__())
    seen, todo, found = set(), [(result.name,) + block], set()
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        if isinstance(key, tuple) and key[0] == name:
            found.add(key[1:])
            continue
        todo.extend(dask.core.get_dependencies(graph, key))
    return found


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("stride, dilation, padding", [(1, 1, 2), (3, 1, (4, 1)), (2, 3, 5)])
def test_blocks_read_their_windows_only(mode, stride, dilation, padding):
    """Each output block depends on exactly the input chunks its windows cover, the wrapped,
    mirrored or clamped positions of the border included: never a whole axis."""
    n, chunk, k = 64, 8, 3
    x = da.ones((1, 1, n), chunks=(1, 1, chunk)) * 1
    pb, pa = padding if isinstance(padding, tuple) else (padding, padding)
    y = lcd.conv1d(x, np.ones((1, 1, k)), stride=stride, dilation=dilation,
                   padding=((pb, pa),), padding_mode=mode)
    reach = dilation * (k - 1)
    source = np.arange(-pb, n + pa)
    if mode != "zeros":
        from loopconv import _border
        source = _border.source_index(n, pb, pa, mode)
    bounds = np.cumsum((0,) + y.chunks[2])
    for j, (o0, o1) in enumerate(zip(bounds[:-1], bounds[1:])):
        positions = source[o0 * stride:(o1 - 1) * stride + reach + 1]
        positions = positions[(positions >= 0) & (positions < n)]
        expected = {(0, 0, int(c)) for c in np.unique(positions // chunk)}
        found = reachable_chunks(y, (0, 0, j), x.name)
        assert found == expected and len(found) < n // chunk


@pytest.mark.parametrize("mode, source", [
    ("zeros", "chunks"), ("reflect", "chunks"), ("replicate", "chunks"), ("circular", "chunks"),
    ("reflect", "stored"), ("circular", "stored")])
@pytest.mark.parametrize("nd, n, chunks, kw", [
    (1, 96, (32, 33, 31), dict(padding=2, stride=2, dilation=2)),
    (2, 48, (16, 17, 15), dict(padding="same")),
    (2, 64, (21, 22, 21), dict(padding=((1, 2), (2, 0)), stride=(1, 2))),
    (3, 42, (14, 14, 14), dict(padding=1)),
], ids=["1d", "2d-same", "2d-stride", "3d"])
def test_blocks_on_their_own_chunk(nd, n, chunks, kw, mode, source):
    """Chunks several times wider than the halos: every block is computed on its own chunk
    as it is, and the slabs whose windows reach into a halo (or, with a padding mode, past the
    array's border) are computed again from their full regions."""
    rng = seeded(n, kw, mode, source)
    x, w = random_arrays(rng, np.float64, (2, 2) + (n,) * nd, (3, 2) + (3,) * nd)
    if source == "chunks":
        xd = da.from_array(x, chunks=(1, 2) + (chunks,) * nd)
    else:
        stored = pytest.importorskip("zarr").array(x, chunks=(1, 2) + (chunks[0],) * nd)
        xd = da.from_array(stored, chunks=(1, 2) + (chunks,) * nd)
    y = fn("conv", nd, module=lcd)(xd, w, padding_mode=mode, **kw)
    layer = y.__dask_graph__().layers[y.name]
    own = [v for k, v in layer.items() if k[0] == y.name and v[0] is lcd._forward_own_chunk]
    assert len(own) == y.npartitions
    assert sum(len(task[3]) for task in own) >= y.npartitions     # slabs computed again
    assert_matches(y, fn("conv", nd)(x, w, padding_mode=mode, **kw))


@pytest.mark.parametrize("seed", range(12))
def test_regions_are_gathered_in_one_copy(seed):
    """A region made of pieces (a nested list, one level per axis) and indexed along its
    spatial axes by the positions of a padding mode equals concatenating the pieces and
    indexing them, with long reflected runs, wrapped ones and clamped repeats."""
    from loopconv import _border
    rng = np.random.default_rng(seed)
    nd = int(rng.integers(1, 4))
    sizes = [[int(rng.integers(1, 3))], [int(rng.integers(1, 3))]]
    sizes += [[int(v) for v in rng.integers(1, 6, size=rng.integers(1, 4))] for _ in range(nd)]
    shape = tuple(sum(s) for s in sizes)
    whole = rng.standard_normal(shape)
    bounds = [np.cumsum([0] + s) for s in sizes]

    def nest(axis, index):
        if axis == len(sizes):
            return whole[tuple(slice(bounds[a][j], bounds[a][j + 1])
                               for a, j in enumerate(index))].copy()
        return [nest(axis + 1, index + (j,)) for j in range(len(sizes[axis]))]

    takes, expected = [], whole
    for a in range(nd):
        n = shape[2 + a]
        mode = rng.choice(["none", "reflect", "replicate", "circular"])
        if mode == "none" or (mode == "reflect" and n < 2):
            takes.append(None)
            continue
        limit = n - 1 if mode == "reflect" else 2 * n
        pb, pa = (int(v) for v in rng.integers(0, limit + 1, size=2))
        take = _border.source_index(n, pb, pa, str(mode))
        takes.append(take)
        expected = np.take(expected, take, axis=2 + a)
    pieces = nest(0, ())
    got = lcd._gather(pieces, tuple(takes))
    np.testing.assert_array_equal(got, expected)
    single = nest(0, ())
    while isinstance(single, list):
        single = single[0]
    assert lcd._gather(single, (None,) * nd) is single      # one piece, nothing to take


def zarr_store(tmp_path, x, chunks):
    """`x` written to a new Zarr array on disk with `chunks`."""
    zarr = pytest.importorskip("zarr")
    store = zarr.open_array(str(tmp_path / "x.zarr"), mode="w", shape=x.shape, chunks=chunks,
                            dtype=x.dtype)
    store[...] = x
    return store


def check_reads_store(monkeypatch, xd, x, w):
    """A 2-D filter of `xd` (a stored array `x`, chunks (1, 2, 5, 4)) reads the store, chunk
    by chunk, and gives the in-memory result; returns the filter."""
    assert lcd._stored(xd) is not None
    reads, read = [], lcd._read

    def counting(array, runs, unbatched):
        reads.append([tuple(r) for r in runs])
        return read(array, runs, unbatched)

    monkeypatch.setattr(lcd, "_read", counting)        # the graph keeps this function
    y = lcd.conv2d(xd, w, padding=1, padding_mode="circular")
    monkeypatch.setattr(lcd, "_read", read)
    assert reachable_chunks(y, (1, 0, 1, 1), xd.name) == set()
    assert_matches(y, loopconv.conv2d(x, w, padding=1, padding_mode="circular"))
    # a block reads its own chunk, and one task per chunk cuts the halos of its neighbours
    # (the far end of the axis too, with circular padding): every read lies in one chunk, and
    # no chunk is read more than twice
    bounds = [np.cumsum((0,) + c) for c in xd.chunks]
    chunks_read = []
    for runs in reads:
        (chunk,) = {tuple(int(np.searchsorted(b, r[0][0], side="right")) - 1
                          for b, r in zip(bounds, runs))}
        for b, r, c in zip(bounds, runs, chunk):
            assert len(r) == 1 and b[c] <= r[0][0] < r[0][1] <= b[c + 1]
        chunks_read.append(chunk)
    counts = collections.Counter(chunks_read)
    assert set(counts) == set(itertools.product(*(range(len(c)) for c in xd.chunks)))
    assert max(counts.values()) == 2
    return y


def test_stored_input_is_read_directly(tmp_path, monkeypatch):
    """From a Zarr store (or a memory-mapped file) the tasks read the store: the graph keeps
    none of the chunk-reading tasks of the input, so every block is independent of the
    others."""
    pytest.importorskip("zarr")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 12, 10)).astype(np.float32)
    store = zarr_store(tmp_path, x, (1, 2, 5, 4))
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    memmap = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=x.dtype,
                                       shape=x.shape)
    memmap[...] = x
    for xd in (da.from_zarr(store), da.from_array(memmap, chunks=(1, 2, 5, 4))):
        check_reads_store(monkeypatch, xd, x, w)
    # NumPy arrays, which from_array splits at once, and transformed arrays are read through
    # their chunks
    assert lcd._stored(da.from_array(x, chunks=(1, 2, 5, 4))) is None
    for xd in (da.from_zarr(store) + 0, da.from_zarr(store).rechunk((2, 2, 6, 5)),
               da.from_zarr(store)[:, :, 1:]):
        assert lcd._stored(xd) is None
    assert lcd._stored(da.from_zarr(store)[0]) is None


def test_hdf5_input_is_read_directly(tmp_path, monkeypatch):
    """Likewise from an HDF5 dataset (h5py), chunked or contiguous, also on the threaded
    scheduler (h5py takes its own lock around each read)."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 2, 12, 10)).astype(np.float64)
    w = rng.standard_normal((3, 2, 3, 3))
    with h5py.File(tmp_path / "x.h5", "w") as f:
        for name, chunks in (("chunked", (1, 1, 3, 5)), ("contiguous", None)):
            f.create_dataset(name, data=x, chunks=chunks)
            y = check_reads_store(monkeypatch, da.from_array(f[name], chunks=(1, 2, 5, 4)),
                                  x, w)
            np.testing.assert_allclose(y.compute(scheduler="threads"),
                                       loopconv.conv2d(x, w, padding=1,
                                                       padding_mode="circular"),
                                       rtol=1e-12, atol=1e-12)


def test_halo_pieces_dropped_after_their_last_reader(tmp_path, monkeypatch):
    """Each piece of a stored chunk's halos is dropped once every task argument that reads it
    has taken it (not when the chunk's last neighbour has run), whatever the scheduler; a
    piece taken after that is read from the store again."""
    pytest.importorskip("zarr")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 2, 9, 12, 11)).astype(np.float32)
    store = zarr_store(tmp_path, x, (1, 2, 3, 5, 4))
    w = rng.standard_normal((3, 2, 3, 3, 3)).astype(np.float32)
    made, Pieces = [], lcd._Pieces

    class Recorded(Pieces):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(lcd, "_Pieces", Recorded)
    for mode, scheduler in itertools.product(("zeros", "reflect"), ("sync", "threads")):
        made.clear()
        y = lcd.conv3d(da.from_zarr(store), w, padding=1, padding_mode=mode)
        expected = loopconv.conv3d(x, w, padding=1, padding_mode=mode)
        np.testing.assert_allclose(y.compute(scheduler=scheduler), expected, rtol=1e-5,
                                   atol=1e-5)
        assert len(made) == np.prod([len(c) for c in y.chunks]), (mode, scheduler)
        for pieces in made:
            assert pieces.left and all(n == 0 for n in pieces.left), pieces.left
            assert all(p is None for p in pieces.pieces)
            assert pieces.nbytes() == 0
    monkeypatch.setattr(lcd, "_Pieces", Pieces)
    # taken again (a task run twice): read from the store
    extent = ((0, 1), (0, 2), (3, 6), (5, 10), (4, 8))
    block = x[:, :, 3:6, 5:10, 4:8]
    whole = ((0, 1), (0, 2))
    locals_ = [whole + ((0, 1), (0, 5), (0, 4)), whole + ((2, 3), (0, 5), (0, 4))]
    pieces = Pieces(block, lcd._Data((extent, locals_, [1, 2], False)))
    assert pieces.nbytes() == 2 * block[:, :, :1].nbytes
    first = pieces.take(1, store)
    np.testing.assert_array_equal(first, x[:, :, 5:6, 5:10, 4:8])
    assert first.base is None and pieces.pieces[1] is not None        # one reader left
    again = pickle.loads(pickle.dumps(pieces))      # as dask.distributed moves it
    np.testing.assert_array_equal(again.take(1, store), first)
    assert again.pieces[1] is None and pieces.pieces[1] is not None
    np.testing.assert_array_equal(again.take(1, store), first)          # read again
    # as a block's task resolves it: the _Pieces and the stored array from its dependencies
    marker = lcd._Dep(0, 1, 1)
    np.testing.assert_array_equal(lcd._resolve((marker,), None, [again, store])[0], first)


def test_halos_cut_only_a_few_groups_ahead(tmp_path, monkeypatch):
    """The task that cuts a stored chunk's halos runs only once every block of the groups
    (planes of blocks along the first chunked axis) before the chunk's first reader is done,
    whatever order the scheduler picks: the halos held are those of a few planes, not a share
    of the whole volume (which Dask's ordering of a graph with one final task gave)."""
    zarr = pytest.importorskip("zarr")
    from dask.callbacks import Callback

    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 2, 40, 12, 12)).astype(np.float32)
    store = zarr_store(tmp_path, x, (1, 2, 4, 6, 6))
    w = rng.standard_normal((3, 2, 3, 3, 3)).astype(np.float32)
    monkeypatch.setattr(lcd, "_AHEAD_PER_CORE", 0)      # one group ahead, whatever the cores
    y = lcd.conv3d(da.from_zarr(store), w, padding=1)
    events = []

    class Record(Callback):
        def _pretask(self, key, dsk, state):
            if isinstance(key, tuple) and key[0].startswith("loopconv-halo"):
                events.append(("halo", key[3]))

        def _posttask(self, key, result, dsk, state, id):
            if isinstance(key, tuple) and key[0] == y.name:
                events.append(("block", key[3]))

    expected = loopconv.conv3d(x, w, padding=1)
    for scheduler in ("sync", "threads"):
        events.clear()
        with Record(), dask.config.set(scheduler=scheduler):
            da.to_zarr(y, str(tmp_path / f"{scheduler}.zarr"))
        assert_values(zarr.open_array(str(tmp_path / f"{scheduler}.zarr"), mode="r")[...],
                      expected)
        done, halos = collections.Counter(), 0
        for kind, z in events:
            if kind == "block":
                done[z] += 1
                continue
            halos += 1
            # the first reader of plane z's halos is plane z - 1: every block of the planes
            # before it is done
            assert all(done[p] == 4 for p in range(z - 1)), (scheduler, z, done)
        # (the blocks of the last planes, which no gate waits for, are fused with their
        # writes by Dask: not seen under their own keys)
        assert halos == 40 and all(done[p] == 4 for p in range(8)), done


def test_stored_filter_graph_is_small(tmp_path):
    """The graph of a filter over a stored array takes memory for each block (Dask holds it,
    and converts it when it runs), so a block's task refers to each key it reads once and
    holds its regions as plain markers, not as a task for each piece: a block is then about
    a kilobyte pickled, where a task for each piece made it 6 (zeros) to 9 kB (reflect).  The
    same through Dask chunks: one task per chunk cuts the pieces its neighbours read."""
    pytest.importorskip("zarr")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 48, 48, 48)).astype(np.float32)
    store = zarr_store(tmp_path, x, (1, 2, 16, 16, 16))
    w = rng.standard_normal((3, 2, 3, 3, 3)).astype(np.float32)
    for mode in ("zeros", "reflect"):
        y = lcd.conv3d(da.from_zarr(store), w, padding=1, padding_mode=mode)
        graph = dict(y.__dask_graph__())
        layer = y.__dask_graph__().layers[y.name]
        blocks = [v for k, v in layer.items() if isinstance(k, tuple) and k[0] == y.name]
        assert len(blocks) == 27

        def walk(arg, graph, keys, tasks):
            if isinstance(arg, (list, tuple)):
                if isinstance(arg, tuple) and arg and callable(arg[0]):
                    tasks.append(arg)
                    arg = arg[1:]
                elif isinstance(arg, tuple) and arg and isinstance(arg[0], str):
                    if arg in graph:
                        keys.append(arg)
                    return
                for item in arg:
                    walk(item, graph, keys, tasks)
            elif isinstance(arg, str) and arg in graph:
                keys.append(arg)

        for task in blocks:
            keys, tasks = [], []
            walk(task[1:], graph, keys, tasks)
            assert len(tasks) <= 1, tasks           # the read of the block's own chunk
            # the neighbours' halos, each once, the stored array (read for the own chunk, and
            # for a halo piece dropped before a task ran again) and the weight
            halos = [k for k in keys if isinstance(k, tuple)]
            assert len(halos) == len(set(halos)) <= 26 and len(set(keys)) <= 26 + 2, keys
        per_block = len(pickle.dumps(dict(layer))) / len(blocks)
        assert per_block < 2000, (mode, per_block)
        assert_matches(y, loopconv.conv3d(x, w, padding=1, padding_mode=mode))
        # read through Dask chunks: one task per chunk cuts its halos (was: one per piece)
        y = lcd.conv3d(da.from_array(x, chunks=(1, 2, 16, 16, 16)), w, padding=1,
                       padding_mode=mode)
        layer = y.__dask_graph__().layers[y.name]
        assert len(layer) <= 2 * 27 + 1, len(layer)         # blocks, halo tasks, the weight
        assert_matches(y, loopconv.conv3d(x, w, padding=1, padding_mode=mode))


# ---------------------------------------------------------------------------------------------
# Inputs, dtypes, shapes

def test_same_signatures_as_in_memory_functions():
    assert set(lcd.__all__) == set(loopconv.functional.__all__)
    for name in lcd.__all__:
        assert (inspect.signature(getattr(lcd, name))
                == inspect.signature(getattr(loopconv, name))), name
        assert getattr(lcd, name).__doc__.count(">>>") >= 3, name


def test_weight_and_bias_are_one_key_each():
    """The tasks refer to the weight and the bias by key: they travel to each worker once."""
    x = da.zeros((2, 3, 16, 16), chunks=(1, 3, 4, 4))
    w, b = np.ones((4, 3, 3, 3)), np.ones(4)
    for result in (lcd.conv2d(x, w, b, padding=1), lcd.conv_transpose2d(x, w.swapaxes(0, 1), b),
                   lcd.conv2d_backward(x, w, lcd.conv2d(x, w, padding=1), padding=1)[0]):
        layer = result.__dask_graph__().layers[result.name]
        held = [key for key, value in layer.items() if isinstance(value, np.ndarray)]
        assert len(held) == (2 if "backward" not in result.name else 1), held
        blocks = [v for k, v in layer.items() if isinstance(k, tuple) and k[0] == result.name]
        assert len(blocks) == 32
        for task in blocks:        # no array inside a task: the weight is referred to by key
            assert held[0] in task
            assert not any(isinstance(arg, np.ndarray) and arg.size >= 4 for arg in task)


def test_dtypes_follow_the_in_memory_rules():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 9, 8))
    w = rng.standard_normal((3, 2, 2, 2))
    for xt, wt in [(np.float16, np.float16), (np.int16, np.float32), (np.float32, np.float64),
                   (np.bool_, np.bool_), (np.float16, np.float32)]:
        xx, ww = (x > 0).astype(xt) if xt is np.bool_ else x.astype(xt), w.astype(wt)
        assert_matches(lcd.conv2d(da.from_array(xx, chunks=3), ww, padding="same"),
                       loopconv.conv2d(xx, ww, padding="same"))
        gy = np.ones(loopconv.conv2d(xx, ww).shape, dtype=xt)
        for r, e in zip(lcd.conv2d_backward(da.from_array(xx, chunks=3), ww,
                                            da.from_array(gy, chunks=2)),
                        loopconv.conv2d_backward(xx, ww, gy)):
            assert_matches(r, e)


def test_unbatched_and_array_like_inputs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 11, 9))
    w = rng.standard_normal((3, 2, 3, 3))
    kw = dict(stride=2, padding=1, padding_mode="reflect")
    y = loopconv.conv2d(x, w, **kw)
    for xd in (da.from_array(x, chunks=(2, 4, 3)), da.from_array(x, chunks=(2, 4, 3)) * 1):
        assert_matches(lcd.conv2d(xd, w, **kw), y)
        gy = rng.standard_normal(y.shape)
        for r, e in zip(lcd.conv2d_backward(xd, w, da.from_array(gy, chunks=2), **kw),
                        loopconv.conv2d_backward(x, w, gy, **kw)):
            assert_matches(r, e)
        assert_matches(lcd.conv2d_input(x.shape, w, da.from_array(gy, chunks=2), stride=2,
                                        padding=1),
                       loopconv.conv2d_input(x.shape, w, gy, stride=2, padding=1))
        assert_matches(lcd.conv_transpose2d(da.from_array(gy, chunks=2), w, stride=2),
                       loopconv.conv_transpose2d(gy, w, stride=2))
    # unbatched and read from a Zarr array
    zarr = pytest.importorskip("zarr")
    stored = da.from_array(zarr.array(x, chunks=(2, 4, 4)), chunks=(2, 4, 3))
    assert lcd._stored(stored) is not None
    assert_matches(lcd.conv2d(stored, w, **kw), y)
    # anything dask.array.asarray takes: nested lists, NumPy arrays
    assert_matches(lcd.conv1d([[[1.0, 2.0, 3.0, 4.0]]], np.ones((1, 1, 2))),
                   loopconv.conv1d([[[1.0, 2.0, 3.0, 4.0]]], np.ones((1, 1, 2))))
    assert_matches(lcd.conv2d(x, w), loopconv.conv2d(x, w))


def test_empty_batch_and_padding_only_blocks():
    w = np.ones((2, 1, 3))
    x = da.zeros((0, 1, 10), chunks=(1, 1, 4))
    assert_matches(lcd.conv1d(x, w, np.ones(2), padding=1),
                   loopconv.conv1d(np.zeros((0, 1, 10)), w, np.ones(2), padding=1))
    gx, gw, gb = lcd.conv1d_backward(x, w, da.zeros((0, 2, 10)), padding=1)
    assert_matches(gw, np.zeros((2, 1, 3)))
    assert_matches(gb, np.zeros(2))
    assert_matches(gx, np.zeros((0, 1, 10)))
    # blocks of the output that see only zero padding
    x = np.arange(12.0).reshape(1, 1, 12)
    assert_matches(lcd.conv1d(da.from_array(x, chunks=3), w, np.ones(2), padding=9),
                   loopconv.conv1d(x, w, np.ones(2), padding=9))


# ---------------------------------------------------------------------------------------------
# Errors: the in-memory messages, while the graph is built

def _boom(block):
    raise RuntimeError("computed")


def poisoned(array):
    """A Dask array of `array`'s shape and dtype whose computation fails."""
    return da.from_array(array, chunks=2).map_blocks(_boom, dtype=array.dtype)


X, W, GY = np.zeros((2, 3, 8, 8)), np.zeros((4, 3, 3, 3)), np.zeros((2, 4, 6, 6))
BAD_CALLS = [
    ("conv2d", (X, np.zeros((4, 2, 3, 3))), {}),                      # channels
    ("conv2d", (np.zeros((8, 8)), W), {}),                             # dimensions
    ("conv2d", (X, W, np.zeros(3)), {}),                               # bias
    ("conv2d", (X, W), dict(padding_mode="mirror")),
    ("conv2d", (X, W), dict(padding="full")),
    ("conv2d", (X, W), dict(stride=0)),
    ("conv2d", (X, W), dict(stride=(1, 2, 3))),
    ("conv2d", (X, W), dict(groups=2)),
    ("conv2d", (X, W), dict(padding=8, padding_mode="reflect")),
    ("conv2d", (X, W), dict(padding=9, padding_mode="circular")),
    ("conv2d", (X, np.zeros((4, 3, 11, 3))), {}),                      # kernel > input
    ("conv2d", (X.astype(complex), W), {}),
    ("conv2d", (X, W), dict(dilation=1.5)),
    ("conv2d_input", ((2, 3, 8), W, GY), {}),
    ("conv2d_input", ((2, 3, 8, 8), W, np.zeros((2, 4, 5, 6))), {}),
    ("conv2d_input", ((2, 3, 8, 8), W, GY), dict(padding="same")),
    ("conv2d_input", ((3, 3, 8, 8), W, GY), {}),
    ("conv2d_weight", (X, (4, 3, 3), GY), {}),
    ("conv2d_weight", (X[:1], (4, 3, 3, 3), GY), {}),
    ("conv2d_weight", (X, (4, 3, 3, 3), GY[:, :3]), {}),
    ("conv2d_backward", (X, W, np.zeros((2, 4, 7, 6))), {}),
    ("conv2d_backward", (X, W, GY), dict(output_mask=(True, False))),
    ("conv2d_backward", (X, W, GY), dict(padding_mode="zero")),
    ("conv_transpose2d", (GY, W.transpose(1, 0, 2, 3)), {}),         # channels
    ("conv_transpose2d", (GY, W), dict(output_padding=1)),
    ("conv_transpose2d", (GY, W), dict(stride=2, output_size=(20, 20))),
    ("conv_transpose2d", (GY, W), dict(padding=9)),
    ("conv_transpose2d_backward", (GY, W, X[:, :3, :7]), {}),
    ("conv1d", ([[[1.0, 2.0], [3.0]]], np.ones((1, 1, 1))), {}),       # ragged
]


# the positional arguments that are Dask arrays in loopconv.dask
DATA_ARGS = {"": (0,), "_input": (2,), "_weight": (0, 2), "_backward": (0, 2)}


@pytest.mark.parametrize("name, args, kw", BAD_CALLS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_CALLS)])
def test_errors_are_the_in_memory_ones(name, args, kw):
    with pytest.raises((TypeError, ValueError)) as expected:
        getattr(loopconv, name)(*args, **kw)
    # the same call with Dask arrays whose computation would raise RuntimeError: the error
    # comes while the graph is built
    data = DATA_ARGS[name[name.index("d") + 1:]]
    lazy = [poisoned(a) if i in data and isinstance(a, np.ndarray) else a
            for i, a in enumerate(args)]
    with pytest.raises(expected.type) as raised:
        getattr(lcd, name)(*lazy, **kw)
    assert str(raised.value) == str(expected.value)
    assert str(raised.value).startswith(name + ":")


def test_unknown_chunk_sizes_are_refused():
    x = da.ones((1, 1, 10), chunks=5)[:, :, da.ones(10, chunks=5) > 0]   # sizes unknown
    assert np.isnan(x.shape[2])
    with pytest.raises(ValueError, match="conv1d: input has chunks of unknown size"):
        lcd.conv1d(x, np.ones((1, 1, 3)))
    assert_matches(lcd.conv1d(x.compute_chunk_sizes(), np.ones((1, 1, 3))),
                   np.full((1, 1, 8), 3.0))


def test_results_are_lazy():
    x = np.ones((1, 1, 6, 6))
    w = np.ones((1, 1, 3, 3))
    y = lcd.conv2d(poisoned(x), w)            # nothing computed yet
    with pytest.raises(RuntimeError, match="computed"):
        y.compute(scheduler="sync")
    for r in lcd.conv2d_backward(poisoned(x), w, poisoned(np.ones((1, 1, 4, 4)))):
        with pytest.raises(RuntimeError, match="computed"):
            r.compute(scheduler="sync")


def test_import_loopconv_does_not_import_dask():
    code = ("import sys, loopconv, loopconv.nn, loopconv.functional\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('dask', 'distributed', 'zarr')))\n"
            "import loopconv.dask\n"
            "print('dask' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=PACKAGE_HOME, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "True"]


# ---------------------------------------------------------------------------------------------
# Threads

def _in_fresh_thread(function):
    box = []
    thread = threading.Thread(target=lambda: box.append(function()))
    thread.start()
    thread.join()
    return box[0]


def test_tasks_take_their_share_of_the_cores(monkeypatch):
    """Each task's call runs inside loopconv.threads(n), n = the task's share of the cores."""
    cores = loopconv._config.available_cores()
    seen = []
    original = lcd._FORWARD[2]

    def recording(*args, **kwargs):
        seen.append(loopconv.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setitem(lcd._FORWARD, 2, recording)
    x = da.ones((4, 1, 8, 8), chunks=(1, 1, 4, 4))
    y = lcd.conv2d(x, np.ones((1, 1, 3, 3)), padding=1)

    y.compute(scheduler="sync")
    assert set(seen) == {max(1, min(loopconv.get_num_threads(), cores))}
    pool_limit = _in_fresh_thread(loopconv.get_num_threads)
    for workers in (1, 2, 3):
        seen.clear()
        y.compute(scheduler="threads", num_workers=workers)
        assert len(seen) >= 16        # a block's call, and those of its boundary slabs
        assert set(seen) == {max(1, min(pool_limit, cores // workers))}
    with loopconv.threads(1):            # the caller's limit holds on the synchronous scheduler
        seen.clear()
        y.compute(scheduler="sync")
        assert set(seen) == {1}


# ---------------------------------------------------------------------------------------------
# Schedulers: the same results, the weight and bias gradients bit for bit

@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    # The nanny sets OMP_NUM_THREADS (and MKL_, OPENBLAS_) to 1 in this process's environment
    # for its workers and leaves them there: later tests' children would inherit them.
    saved = dict(os.environ)
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster:
            with distributed.Client(cluster, set_as_default=False) as client:
                yield client
    finally:
        os.environ.clear()
        os.environ.update(saved)


def problem(seed=7):
    """A 3-D backward pass with enough blocks for two levels of the sum tree."""
    rng = np.random.default_rng(seed)
    x, w = random_arrays(rng, np.float32, (2, 2, 9, 7, 6), (4, 2, 3, 3, 2))
    kw = dict(stride=(2, 1, 2), padding=((1, 2), 1, 0), padding_mode="reflect")
    (gy,) = random_arrays(rng, np.float32, loopconv.conv3d(x, w, **kw).shape)
    xd = da.from_array(x, chunks=(1, 2, 3, (3, 4), 3))
    gyd = da.from_array(gy, chunks=(1, 3, 2, 4, 2))
    return x, w, gy, xd, gyd, kw


def computed(arrays, scheduler, **kw):
    if hasattr(scheduler, "compute"):         # a distributed Client
        return scheduler.gather(scheduler.compute(list(arrays)))
    return dask.compute(*arrays, scheduler=scheduler, **kw)


def test_schedulers_agree_bit_for_bit(client):
    x, w, gy, xd, gyd, kw = problem()
    y = lcd.conv3d(xd, w, **kw)
    grads = lcd.conv3d_backward(xd, w, gyd, **kw)
    gw_alone = lcd.conv3d_weight(xd * 1, w.shape, gyd, stride=(2, 1, 2), padding=((1, 2), 1, 0))
    tx = lcd.conv_transpose3d_backward(gyd, w, xd, stride=(2, 1, 2), padding=((1, 2), 1, 0),
                                       output_padding=(1, 0, 0))
    arrays = (y, *grads, gw_alone, *tx)
    graph = dict(grads[1].__dask_graph__())
    assert sum(1 for k in graph if isinstance(k, tuple) and k[0].endswith("-sum")) >= 4

    runs = [computed(arrays, "sync"), computed(arrays, "sync"),
            computed(arrays, "threads", num_workers=1), computed(arrays, "threads", num_workers=3),
            computed(arrays, client), computed(arrays, client)]
    expected = (loopconv.conv3d(x, w, **kw), *loopconv.conv3d_backward(x, w, gy, **kw),
                loopconv.conv3d_weight(x, w.shape, gy, stride=(2, 1, 2), padding=((1, 2), 1, 0)),
                *loopconv.conv_transpose3d_backward(gy, w, x, stride=(2, 1, 2),
                                                    padding=((1, 2), 1, 0),
                                                    output_padding=(1, 0, 0)))
    for values, e in zip(zip(*runs), expected):
        assert_values(values[0], e)
        for v in values[1:]:
            assert v.tobytes() == values[0].tobytes()



def test_stored_inputs_every_family_on_every_scheduler(tmp_path, client):
    """Inputs read from Zarr stores (halos cut once per chunk and handed out piece by piece)
    through the backward pass, the input gradient and transposed convolutions, 1-D in float64
    and 2-D in float32, on the synchronous, threaded and distributed schedulers (where the
    halo objects travel between worker processes): the in-memory results, and the weight
    gradient the same bits everywhere."""
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(12)
    cases = [(np.float64, (2, 3, 29), (4, 3, 5), (1, 3, 6),
              dict(stride=2, padding=3, dilation=2, padding_mode="replicate")),
             (np.float32, (1, 4, 13, 11), (6, 2, 3, 3), (1, 4, 4, 3),
              dict(stride=(1, 2), padding="same", groups=2, padding_mode="zeros"))]
    for n, (dtype, x_shape, w_shape, chunks, kw) in enumerate(cases):
        nd = len(x_shape) - 2
        x, w = random_arrays(rng, dtype, x_shape, w_shape)
        fwd = getattr(loopconv, f"conv{nd}d")
        (gy,) = random_arrays(rng, dtype, fwd(x, w, **kw).shape)
        stores = []
        for name, value, c in (("x", x, chunks), ("gy", gy, (1, gy.shape[1]) + chunks[2:])):
            z = zarr.open_array(str(tmp_path / f"{name}{n}.zarr"), mode="w", shape=value.shape,
                                chunks=c, dtype=value.dtype)
            z[...] = value
            stores.append(da.from_zarr(z))
        xd, gyd = stores
        assert lcd._stored(xd) is not None and lcd._stored(gyd) is not None
        plain = {k: v for k, v in kw.items() if k != "padding_mode"}
        if plain["padding"] == "same":
            plain["padding"] = 1
        arrays = (*getattr(lcd, f"conv{nd}d_backward")(xd, w, gyd, **kw),
                  getattr(lcd, f"conv{nd}d_input")(x.shape, w, gyd, **plain),
                  getattr(lcd, f"conv_transpose{nd}d")(gyd, w, stride=plain["stride"],
                                                       padding=plain["padding"],
                                                       groups=plain.get("groups", 1)))
        expected = (*getattr(loopconv, f"conv{nd}d_backward")(x, w, gy, **kw),
                    getattr(loopconv, f"conv{nd}d_input")(x.shape, w, gy, **plain),
                    getattr(loopconv, f"conv_transpose{nd}d")(gy, w, stride=plain["stride"],
                                                              padding=plain["padding"],
                                                              groups=plain.get("groups", 1)))
        for a in arrays[:2] + arrays[3:]:     # halos cut from stored chunks (not the bias)
            assert any(isinstance(k, tuple) and k[0].startswith("loopconv-halo-")
                       for k in a.__dask_graph__()), a.name
        runs = [computed(arrays, "sync"), computed(arrays, "threads", num_workers=2),
                computed(arrays, client)]
        for values, e in zip(zip(*runs), expected):
            for v in values:
                assert_values(v, e)
        assert runs[0][1].tobytes() == runs[1][1].tobytes() == runs[2][1].tobytes()


def test_distributed_cluster(client):
    """Every family on the cluster, and the workers' thread share."""
    rng = np.random.default_rng(11)
    x, w = random_arrays(rng, np.float64, (2, 2, 13, 7), (3, 2, 3, 2))
    xd = da.from_array(x, chunks=(1, 2, 4, 3))
    kw = dict(stride=(2, 1), padding="same", padding_mode="circular")
    y = loopconv.conv2d(x, w, **kw)
    (gy,) = random_arrays(rng, np.float64, y.shape)
    gyd = da.from_array(gy, chunks=(2, 3, 3, 4))
    pads = ((1, 1), (1, 0))
    results = computed([lcd.conv2d(xd, w, **kw), *lcd.conv2d_backward(xd, w, gyd, **kw),
                        lcd.conv2d_input(x.shape, w, gyd, stride=(2, 1), padding=pads),
                        lcd.conv_transpose2d(gyd, w, stride=(2, 1), padding=pads)], client)
    expected = [y, *loopconv.conv2d_backward(x, w, gy, **kw),
                loopconv.conv2d_input(x.shape, w, gy, stride=(2, 1), padding=pads),
                loopconv.conv_transpose2d(gy, w, stride=(2, 1), padding=pads)]
    for r, e in zip(results, expected):
        assert_values(r, e)

    def share(block):
        return np.array([[lcd._slots(), lcd._task_threads(), loopconv.get_num_threads(),
                          loopconv._config.available_cores()]])

    info = computed([da.zeros(4, chunks=1).map_blocks(share, chunks=(1, 4), new_axis=1)],
                    client)[0]
    for slots, threads, limit, cores in info:
        assert slots == 1       # threads_per_worker=1
        assert threads == max(1, min(limit, cores // slots))
