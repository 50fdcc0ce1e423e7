"""loopconv on Dask arrays: convolutions, their gradients and transposed convolutions, block by
block.

Every function of `loopconv` is here under the same name, with the same arguments and meaning,
for an ``input`` and a ``grad_output`` that are Dask arrays ``(N, C, *spatial)`` (or unbatched
``(C, *spatial)``; anything `dask.array.asarray` takes is accepted) chunked in any way, and a
``weight`` and ``bias`` that are NumPy arrays.  Each returns lazy Dask arrays; computed, they
equal what the in-memory function gives on the computed inputs, up to the rounding of sums
taken in another order.  ``import loopconv`` does not import this module, nor Dask.

>>> import dask.array as da, numpy as np
>>> import loopconv.dask as lcd
>>> x = da.ones((1, 1, 8, 8), chunks=(1, 1, 4, 4))
>>> y = lcd.conv2d(x, np.ones((1, 1, 3, 3)), padding="same", padding_mode="reflect")
>>> y.chunks
((1,), (1,), (4, 4), (4, 4))
>>> float(y.sum().compute(scheduler="sync"))
576.0

How the work is split
---------------------
One task computes one output block with one call of the in-memory function.  Along a spatial
axis, the block of outputs ``[o0, o1)`` reads the input positions ``o0 * stride - before`` to
``(o1 - 1) * stride - before + dilation * (k - 1)`` (its windows), gathered by the task from
the input chunks they fall in; the block's own chunk and its neighbours' edges (the halo),
however small or large the chunks are.  Padding exists only at the outer border of the whole
array: a block at the edge gets its zero padding as explicit (before, after) padding of its
call, and the other padding modes index the whole array (a reflected, replicated or wrapped
position, which for "circular" is at the other end of the axis), then the call has no padding.
The in-memory function thus computes every block on exactly the values it would read for the
whole array.

Through the chunks of a Dask array, the slabs a block needs from its neighbours are copied out
of each chunk by one task, so that no block's task holds more than it uses; still, a chunk
stays in memory until the blocks around it have run, and with one final task Dask's ordering
computes the input's chunks well ahead of the blocks that need them, which loopconv cannot hold
back (they are tasks of the input's graph): measured, a 1 GiB volume of 64^3 chunks read as
``da.from_zarr(...) * 1`` peaked at 458 MiB (667 MiB with a task for each slab).  Store such an
input first, then filter the store.  When the input was made by `dask.array.from_zarr`, or by
`dask.array.from_array` of a Zarr array, an HDF5 dataset (h5py; not on dask.distributed,
whose workers cannot receive one) or a memory-mapped NumPy array (and not transformed since),
the tasks read that array instead: a block reads the large part of its region (its own
chunk) itself, and one task per chunk reads the chunk once and copies out the thin slabs its
neighbours need.  Each chunk is then read about twice, and memory holds the blocks being
computed and the thin slabs cut but not yet taken; each slab is dropped as soon as the blocks
that read it have taken it (a dask.distributed worker counts only the slabs not yet taken).
With one final task that depends on every block (what ``.compute()`` and ``da.to_zarr`` make),
Dask's static ordering would run the tasks that cut the slabs well ahead of the blocks that
take them, so the blocks are put in groups (planes of blocks along the first chunked spatial
axis) and a chunk's slabs are cut only once every block of the groups before their first reader
is done (of all but the last few, where a group has fewer blocks than two per core): the slabs
held are those of a few planes of chunks, whatever the volume and whatever the order Dask
picks.  The graph itself is held while it runs, about 7 kB per block (a block's task lists the
keys it reads once and holds its regions as small markers), and Dask's own bookkeeping of the
tasks and their dependencies adds some 40 kB per block.  Streaming one Zarr store into another
(`dask.array.to_zarr` to a new store) thus runs out of core.  A block is computed on its own
chunk as it is (zero padded where the halo is), the outputs whose windows reach into a halo
computed again from their full regions and written over, where that costs less than copying the
block with its halos.

Input gradients and transposed convolutions are split the same way over the blocks of their
result: each task calls `loopconv.conv2d_input` (etc.) on the part of ``grad_output`` whose
windows reach the block.  With a padding mode other than zeros, the gradient of the padded
border is added onto the positions it was copied from, in the block that holds them.

Chunks of the results
---------------------
- Batch: the input's chunks; channels: one chunk.
- Convolution: output position ``o`` belongs to the chunk of the input position at the centre
  of its window, ``o * stride - before + dilation * (k - 1) // 2``; chunks left empty are
  dropped.  With stride 1, an odd kernel and "same" padding the output has the input's chunks.
- Input gradient (``conv2d_input``) and transposed convolution: the chunk boundaries of
  ``grad_output`` (of ``input`` for a transposed convolution), each at output position
  ``O``, become boundaries at ``O * stride - before + dilation * (k - 1) // 2``.
- ``*_backward``: grad_input has the input's chunks (along channels, one).
- Weight and bias gradients: one chunk.

Weight and bias gradients
-------------------------
They are sums over blocks: one task per block (of the forward output, as chunked above)
computes the block's part with the in-memory function, and the parts are added in float64 in
a tree of fixed shape: groups of up to eight consecutive parts (blocks in C order of the block
grid), summed one after the other in that order, then groups of those sums, and so on; the
total is cast to the result's dtype.  Every addition has operands fixed by the chunking alone,
so the result is identical (bit for bit) on every scheduler, with any number of workers and
any timing.

Threads
-------
A task runs its in-memory call inside ``loopconv.threads(n)`` with
``n = max(1, min(loopconv.get_num_threads(), cores // slots))``: ``cores`` are the cores the
process may use, and ``slots`` the tasks that can run at once in it: in a ``dask.distributed``
worker, its number of threads (``distributed.get_worker()``); in a thread of Dask's threaded
scheduler, the size of that thread pool (``num_workers``; by default one thread per core, so
one loopconv thread per task); on the synchronous scheduler in the main thread, one (the task
may use every core).  ``loopconv.get_num_threads()`` is the task thread's own limit: a
``dask.distributed`` nanny starts its workers with ``OMP_NUM_THREADS=1``, so those tasks run on
one thread unless the workers' environment says otherwise (``LOOPCONV_NUM_THREADS``, or the
``distributed.nanny.pre-spawn-environ`` setting).  The thread count never changes a result.

On a cluster
------------
The same code runs on a ``dask.distributed`` cluster once a ``Client`` is connected.  The
weight and the bias are each one key of the graph, which every task refers to: they travel to
each worker once, not with every task.

Arguments are checked when the graph is built, with the in-memory functions' checks: a wrong
shape or argument raises the same `TypeError` or `ValueError`, naming the same function
(``conv2d`` etc.), before anything is computed.
"""

from __future__ import annotations

import bisect
import itertools
import math
import sys
import threading

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from dask.sizeof import sizeof

import loopconv
from loopconv import _args, _border, _config, _problem
from loopconv import functional as _f

__all__ = [
    "conv1d", "conv1d_backward", "conv1d_input", "conv1d_weight",
    "conv2d", "conv2d_backward", "conv2d_input", "conv2d_weight",
    "conv3d", "conv3d_backward", "conv3d_input", "conv3d_weight",
    "conv_transpose1d", "conv_transpose1d_backward",
    "conv_transpose2d", "conv_transpose2d_backward",
    "conv_transpose3d", "conv_transpose3d_backward",
]

# Parts of a weight or bias gradient added by one task of the reduction tree.
_FAN_IN = 8

# What copying one value costs, in multiply-adds of the loops (about 0.7 ns against 40 per ns
# on one core): a block is computed on its own chunk, with the outputs along its halos computed
# again, only where that costs less than copying the block with its halos.
_COPY_MACS = 32

# Blocks that may run at once from the first groups not yet done, per core of this machine (at
# least one group): see `_Gates`.
_AHEAD_PER_CORE = 2


# ---------------------------------------------------------------------------------------------
# Threads

def _pool_size():
    """The size of the Dask thread pool that runs the calling thread, if it is one."""
    thread = threading.current_thread()
    try:
        from dask import threaded

        pools = [threaded.default_pool]
        for per_thread in list(threaded.pools.values()):
            pools.extend(list(per_thread.values()))
        for pool in pools:
            if pool is not None and thread in getattr(pool, "_threads", ()):
                return max(1, int(pool._max_workers))
    except Exception:       # another Dask version: fall back to the defaults below
        pass
    return None


def _worker_threads():
    """The thread count of the dask.distributed worker running this task, if any."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        worker = distributed.get_worker()
    except (ValueError, AttributeError):
        return None
    state = getattr(worker, "state", None)
    n = getattr(state, "nthreads", None) or getattr(worker, "nthreads", None)
    return max(1, int(n)) if n else None


def _slots() -> int:
    """How many tasks may run at once in this process (see the module's docstring)."""
    n = _worker_threads()
    if n is None:
        n = _pool_size()
    if n is None:
        # the synchronous scheduler in the main thread; any other thread may be one of a
        # pool as large as the machine
        n = 1 if threading.current_thread() is threading.main_thread() else dask.system.CPU_COUNT
    return n


def _task_threads() -> int:
    """The loopconv thread count of a task: its share of the cores, within this thread's
    limit."""
    return max(1, min(loopconv.get_num_threads(), _config.available_cores() // _slots()))


# ---------------------------------------------------------------------------------------------
# Geometry of one spatial axis

def _bounds(chunks) -> tuple:
    """Chunk sizes as boundaries: (3, 4) -> (0, 3, 7)."""
    return tuple(itertools.accumulate((0,) + tuple(chunks)))


def _partition(inner, size) -> tuple:
    """Boundaries 0 < ... < size from candidate inner boundaries (clipped, empties dropped)."""
    bounds = [0]
    for b in inner:
        b = min(max(int(b), 0), size)
        if b > bounds[-1]:
            bounds.append(b)
    if bounds[-1] < size:
        bounds.append(size)
    elif size == 0:
        bounds.append(0)        # one empty chunk for an empty axis
    return tuple(bounds)


def _extent(extents) -> tuple:
    return tuple(hi - lo for lo, hi in extents)


def _sizes(bounds) -> tuple:
    return tuple(b - a for a, b in zip(bounds[:-1], bounds[1:]))


class _Axis:
    """One spatial axis of a convolution with input size n and output size out: kernel k,
    stride s, dilation d, padding (pb, pa), and for a padding mode other than zeros the input
    position each padded position copies (`src`)."""

    __slots__ = ("n", "k", "s", "d", "pb", "pa", "reach", "out", "src")

    def __init__(self, n, k, s, d, pads, mode, out):
        self.n, self.k, self.s, self.d = n, k, s, d
        self.pb, self.pa = pads
        self.reach = d * (k - 1)
        self.out = out
        self.src = (None if mode == "zeros" or not (self.pb or self.pa)
                    else _border.source_index(n, self.pb, self.pa, mode))

    def output_bounds(self, in_bounds) -> tuple:
        """Output chunks from input chunks: each output goes with its window's centre."""
        shift = self.pb - self.reach // 2
        return _partition([-(-(b + shift) // self.s) for b in in_bounds[1:-1]], self.out)

    def input_bounds(self, out_bounds) -> tuple:
        """Input chunks from output chunks (the inverse of `output_bounds`)."""
        shift = self.reach // 2 - self.pb
        return _partition([o * self.s + shift for o in out_bounds[1:-1]], self.n)

    def window(self, o0, o1):
        """What outputs [o0, o1) read: (runs, take, (before, after)).  `runs` are the ranges of
        input positions to fetch, in increasing order; `take` indexes the concatenated runs to
        give the padded region (None: they are the region); (before, after) is zero padding
        around it."""
        p0, p1 = o0 * self.s, (o1 - 1) * self.s + self.reach + 1      # padded coordinates
        if self.src is not None:
            return _runs(self.src[p0:p1]) + ((0, 0),)
        u0, u1 = p0 - self.pb, p1 - self.pb
        a, b = max(u0, 0), min(u1, self.n)
        if a >= b:                      # only padding
            return [], None, (p1 - p0, 0)
        return [(a, b)], None, (a - u0, u1 - b)

    def gradient_runs(self, i0, i1):
        """The padded positions whose gradient lands on inputs [i0, i1), as runs
        (q0, q1, target): target is the offset of the run in the block, or (a border copied
        from the block) an array of block positions, one per padded position."""
        runs = [(i0 + self.pb, i1 + self.pb, 0)]
        if self.src is not None:
            for lo, hi in ((0, self.pb), (self.pb + self.n, self.pb + self.n + self.pa)):
                q = np.arange(lo, hi)
                t = self.src[lo:hi] - i0
                keep = (t >= 0) & (t < i1 - i0)
                q, t = q[keep], t[keep]
                if len(q):
                    cuts = np.flatnonzero(np.diff(q) != 1) + 1
                    for qs, ts in zip(np.split(q, cuts), np.split(t, cuts)):
                        runs.append((int(qs[0]), int(qs[-1]) + 1, ts))
        return runs

    def gradient_part(self, q0, q1, target):
        """The input-gradient call for padded positions [q0, q1): ((o0, o1) outputs to read,
        local size, local (before, after) padding, target), or None if no window reaches."""
        if q1 <= q0:
            return None
        o0 = max(0, -(-(q0 - self.reach) // self.s))
        o1 = min(self.out, (q1 - 1) // self.s + 1)
        if o0 >= o1:
            return None
        r0 = max(q0, o0 * self.s)
        r1 = min(q1, (o1 - 1) * self.s + self.reach + 1)
        pads = (r0 - o0 * self.s, (o1 - 1) * self.s + self.reach + 1 - r1)
        if isinstance(target, int):
            target = target + r0 - q0
        else:
            target = target[r0 - q0:r1 - q0]
        return (o0, o1), r1 - r0, pads, target


def _runs(src):
    """(runs, take) for a gather of input positions `src` (see `_Axis.window`)."""
    n = len(src)
    if n == 0:
        return [], None
    first = int(src[0])
    if int(src[-1]) - first == n - 1 and (n == 1 or bool(np.all(np.diff(src) == 1))):
        return [(first, first + n)], None
    values = np.unique(src)
    cuts = np.flatnonzero(np.diff(values) != 1) + 1
    runs = [(int(p[0]), int(p[-1]) + 1) for p in np.split(values, cuts)]
    return runs, np.searchsorted(values, src)


# ---------------------------------------------------------------------------------------------
# Where the tasks read their regions from

def _stored(x):
    """(key, array) of the Zarr array, HDF5 dataset (h5py) or NumPy memmap that `x` was made
    from by from_zarr or from_array, if `x` is just that; else None.  (from_array splits an
    in-memory ndarray into chunks at once: there is no stored array to read then.)"""
    try:
        layers = x.__dask_graph__().layers
        original = "original-" + x.name
        if set(layers) != {x.name, original}:
            return None
        items = dict(layers[original])
        if len(items) != 1:
            return None
        ((key, obj),) = items.items()
        obj = getattr(obj, "value", obj)        # a DataNode in some Dask versions
    except Exception:
        return None
    kind = type(obj).__module__.split(".")[0]
    if not (isinstance(obj, np.ndarray) or kind in ("zarr", "h5py")):
        return None
    if tuple(obj.shape) != tuple(x.shape) or np.dtype(obj.dtype) != x.dtype:
        return None
    return key, obj


class _Source:
    """An input of the tasks: a batched Dask array, read either from its chunks or, when it
    came straight from a stored array, from that array."""

    def __init__(self, x, unbatched):
        stored = _stored(x)
        self.arr = x[None] if unbatched else x
        self.bounds = [_bounds(c) for c in self.arr.chunks]
        if stored is None:
            self.stored = None
            self.graph = self.arr.__dask_graph__()      # the tasks depend on its chunks
            self.top = set(self.arr.__dask_layers__())
        else:
            # the tasks depend on the stored array alone: the graph keeps none of the tasks
            # that read the input's chunks (nothing would remove them before the computation)
            self.stored = (stored[0], unbatched)
            name = "original-" + x.name
            self.graph = HighLevelGraph({name: x.__dask_graph__().layers[name]}, {name: set()})
            self.top = {name}



class _Reads:
    """How the tasks of one graph read the source `src`.

    Through Dask chunks: a piece of a chunk is cut (copied) by a small task, so that the chunk
    itself can be released.  From a stored array: a task reads the large pieces of its region
    (its own chunk, mostly) from the array itself; the thin pieces (halos) of a chunk are cut
    by one task per chunk, which reads the chunk once for all the blocks around it."""

    def __init__(self, src, name):
        self.src = src
        self.halos = {}                 # stored array: chunk -> {ranges: [position, takers]}
        self.halo_name = f"loopconv-halo-{tokenize(name, src.arr.name)}"
        self.shared = {}                # one object for each marker, key and range made
        self.first = {}                 # stored chunk -> first group of blocks that reads it
        self.group = 0                  # the group of the block whose regions are made

    def one(self, value):
        """`value`, or an equal object made before: the graph of a large array repeats the
        same markers, keys and ranges in every block."""
        if isinstance(value, np.ndarray):          # a take, by its values
            return self.shared.setdefault((value.dtype.str, value.tobytes()), value)
        return self.shared.setdefault(value, value)

    def region(self, dsk, runs, own=None, takes=(), deps=None):
        """A task argument that evaluates to the box of `runs` (per axis, a list of
        (start, stop) ranges, concatenated), with `takes` applied along the spatial axes (see
        `_gather`).  Adds the tasks it needs to `dsk`.

        With `own` (the indices of a chunk the task holds) and `deps` (a `_Deps` of the task),
        the region is left as nested tuples of markers (`_Own`: a piece of that chunk; `_Dep`:
        an entry of `deps`, or a piece taken from it), which the task resolves and gathers
        itself (`_resolve`).  A task then has one list of the keys and tasks it reads, and its
        regions are plain data: a graph of small markers, not of a task per piece (about
        a hundred per block of a 3-D filter), which Dask would hold, and convert, for every
        block of the array."""
        src = self.src
        shape = tuple(sum(b - a for a, b in axis) for axis in runs)
        if 0 in shape:
            shape = shape[:2] + tuple(n if t is None else len(t)
                                      for n, t in itertools.zip_longest(shape[2:], takes))
            if deps is not None:
                return np.zeros(shape, src.arr.dtype)      # empty: nothing to hold
            return (np.zeros, shape, src.arr.dtype)
        per_axis = []
        for axis, axis_runs in enumerate(runs):
            bounds = src.bounds[axis]
            pieces = []
            for a, b in axis_runs:
                c = bisect.bisect_right(bounds, a) - 1
                while a < b:
                    stop = min(b, bounds[c + 1])
                    pieces.append((c, a - bounds[c], stop - bounds[c]))
                    a, c = stop, c + 1
            per_axis.append(pieces)
        leaf = self._stored_piece if src.stored is not None else self._chunk_piece
        refs = deps if deps is not None else _Deps()

        def nest(axis, chosen):
            if axis == len(per_axis):
                chunk, local = tuple(p[0] for p in chosen), tuple(p[1:] for p in chosen)
                if chunk == own:
                    return self.one(_Own(local))
                item, piece = leaf(dsk, chunk, local)
                if piece is None:
                    return self.one(_Dep(refs.position(item)))
                # a piece of a _Pieces, and the stored array to read it again from
                array = refs.position(src.stored[0]) if src.stored is not None else None
                return self.one(_Dep(refs.position(item), piece, array))
            return self.one(tuple(nest(axis + 1, chosen + (p,)) for p in per_axis[axis]))

        nested = nest(0, ())
        return nested if deps is not None else (_region, _Data(nested), takes, refs.items)

    def _extent(self, chunk):
        return [(b[c], b[c + 1]) for b, c in zip(self.src.bounds, chunk)]

    # A leaf of a region: (key or task, None) for a value read whole, or (key, i) for piece
    # i of a `_Pieces`.

    def _chunk_piece(self, dsk, chunk, local):
        name = self.src.arr.name
        if all(lo == 0 and hi == b - a for (lo, hi), (a, b) in zip(local, self._extent(chunk))):
            return self.one((name,) + chunk), None
        return self._halo(chunk, local)

    def _stored_piece(self, dsk, chunk, local):
        extent = self._extent(chunk)
        size = np.prod([hi - lo for lo, hi in local])
        if 2 * size > np.prod([b - a for a, b in extent]):     # most of the chunk
            key, unbatched = self.src.stored
            runs = [[(a + lo, a + hi)] for (lo, hi), (a, _) in zip(local, extent)]
            return (_read, key, runs, unbatched), None
        return self._halo(chunk, local)

    def _halo(self, chunk, local):
        """Piece `local` of chunk `chunk`, one more reader of it: cut by the chunk's one halo
        task (a task per piece was tens of tasks per chunk, each with Dask's bookkeeping)."""
        requests = self.halos.setdefault(chunk, {})         # local ranges: [position, takers]
        self.first[chunk] = min(self.first.get(chunk, self.group), self.group)
        request = requests.setdefault(self.one(tuple(local)), [len(requests), 0])
        request[1] += 1
        return self.one((self.halo_name,) + chunk), request[0]

    def chunk(self, chunk):
        """A task argument that evaluates to the whole chunk `chunk` (indices per axis)."""
        if self.src.stored is None:
            return (self.src.arr.name,) + tuple(chunk)
        key, unbatched = self.src.stored
        return (_read, key, [[r] for r in self._extent(chunk)], unbatched)

    def finish(self, dsk, gates):
        """Add the tasks that cut the halos of each chunk.  Those of a stored array's chunks
        are held back by `gates` until the blocks well before their first reader are done;
        those of a Dask chunk run when the chunk is computed (held back, they would hold the
        chunk), and keep their pieces until the last reader is done (there is no store to
        read a dropped piece from again)."""
        stored = self.src.stored is not None
        unbatched = stored and self.src.stored[1]
        for chunk, requests in self.halos.items():
            takers = [n for _, n in requests.values()]
            extent = tuple(self._extent(chunk)) if stored else None
            gate = gates.before(dsk, self.first[chunk]) if stored else None
            layout = _Data((extent, list(requests), takers, unbatched))
            dsk[(self.halo_name,) + chunk] = (_Pieces, self.chunk(chunk), layout, gate)


class _Gates:
    """Keeps the tasks that cut a stored array's halos from running far ahead of the blocks
    that take them.

    Dask orders a graph with one final task (what ``.compute()`` and ``da.to_zarr`` make) so
    that those tasks, which depend on nothing but the stored array, run long before their
    readers, and their slabs pile up: measured, most of the volume's halos held at the peak.
    So the blocks are put in groups along the first spatial axis with more than one block
    (after the batch), a gate task per group is done when all of that group's blocks are
    (through a small task per block, so that dask.distributed moves no block to run it) and
    of the gate before it, and the halo task of a chunk waits for the gate `ahead` groups
    before the first block that reads it.  Whatever the order Dask picks, a halo is then cut
    only after every block of the groups up to `ahead` before its first reader is done, and
    dropped when its readers are: the halos held are those of the groups from the first
    unfinished one to `ahead` after it, with `ahead` groups of blocks free to run at once
    (enough for two blocks per core; one group, a plane of 4 x 4 chunks, ran as fast as two
    and held 568 MiB for a 4 GiB volume, against 717 MiB with two)."""

    def __init__(self, name, spatial_bounds):
        self.name = name
        counts = [len(b) - 1 for b in spatial_bounds]
        self.axis = next((a for a, n in enumerate(counts) if n > 1), None)
        self.along = counts[self.axis] if self.axis is not None else 1
        per_group = math.prod(counts) // self.along
        self.ahead = max(1, -(-_AHEAD_PER_CORE * dask.system.CPU_COUNT // per_group))
        self.blocks = {}
        self.made = -1              # the gates of groups up to this one are in the graph

    def group(self, tb, block):
        """The group of the block of batch block `tb` and spatial indices `block`."""
        return tb * self.along + (block[self.axis] if self.axis is not None else 0)

    def add(self, group, key):
        self.blocks.setdefault(group, []).append(key)

    def before(self, dsk, group):
        """The gate of the blocks `ahead` groups before `group` and of all groups before
        them (None: nothing to wait for)."""
        if self.axis is None or group - self.ahead < 0:
            return None
        return self._gate(dsk, group - self.ahead)

    def _gate(self, dsk, g):
        for h in range(self.made + 1, g + 1):       # each gate waits for the one before too
            done = []
            for key in self.blocks.get(h, ()):
                done.append((self.name + "-done",) + key[1:])
                dsk[done[-1]] = (_passed, key)
            dsk[(self.name, h)] = (_passed, done, (self.name, h - 1) if h > 0 else None)
        self.made = max(self.made, g)
        return (self.name, g)


def _passed(*_):
    """What a gate task gives: nothing (its dependencies are done)."""
    return None


class _Data:
    """Task arguments that hold no keys, passed as they are: Dask rebuilds every tuple and
    list in the arguments of a graph's tasks when it runs the graph, and for the ranges and
    markers of a large array's blocks that took more memory than the graph itself."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return _Data, (self.value,)


class _Deps:
    """The keys and tasks that the regions of one task read, in the order first asked for:
    passed to the task as one list, which the regions' `_Dep` markers index."""

    def __init__(self):
        self.items = []
        self.known = {}

    def position(self, item):
        if isinstance(item, tuple) and callable(item[0]):
            self.items.append(item)             # a task: each is its own entry
            return len(self.items) - 1
        if item not in self.known:
            self.known[item] = len(self.items)
            self.items.append(item)
        return self.known[item]


class _Marker:
    """A leaf of a region left as plain data (see `_Reads.region`); equal markers are one
    object in the graph."""

    __slots__ = ()

    def _fields(self):
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other):
        return type(other) is type(self) and other._fields() == self._fields()

    def __hash__(self):
        return hash((type(self).__name__,) + self._fields())

    def __getstate__(self):
        return self._fields()

    def __setstate__(self, state):
        for f, v in zip(self.__slots__, state):
            object.__setattr__(self, f, v)


class _Own(_Marker):
    """A piece of the chunk that a task holds, by its (start, stop) range per axis."""

    __slots__ = ("local",)

    def __init__(self, local):
        self.local = tuple(local)


class _Dep(_Marker):
    """Entry `j` of the task's list of dependencies, or (with `piece`) piece `piece` taken
    from that entry, a `_Pieces`, read again from entry `array` (the stored array; None for a
    Dask chunk) if it was dropped."""

    __slots__ = ("j", "piece", "array")

    def __init__(self, j, piece=None, array=None):
        self.j, self.piece, self.array = j, piece, array


def _resolve(nested, chunk, deps):
    """`nested` (tuples) as nested lists of arrays, its markers replaced by the pieces of
    `chunk` and by the values of `deps` (see `_Reads.region`); each `_Dep` of a piece takes
    that piece once."""
    if isinstance(nested, tuple):
        return [_resolve(item, chunk, deps) for item in nested]
    if isinstance(nested, _Own):
        return chunk[tuple(slice(lo, hi) for lo, hi in nested.local)]
    if isinstance(nested, _Dep):
        value = deps[nested.j]
        if nested.piece is None:
            return value
        return value.take(nested.piece, None if nested.array is None else deps[nested.array])
    return nested


def _region(nested, takes, deps):
    """A region's box, from its markers and the task's dependencies."""
    return _gather(_resolve(nested.value, None, deps), takes)


def _cut(block, slices):
    """A copy of part of a chunk (a view would keep the whole chunk in memory)."""
    return block[slices].copy()


class _Pieces:
    """Copies of pieces of `block`, a chunk (its halos), each handed to the task arguments
    that read it and, for a chunk of a stored array, dropped after the last of them.  `layout`
    is a `_Data` of (the chunk's (start, stop) per axis, the pieces' ranges within the chunk, how
    many arguments take each piece, whether the array is unbatched; the extent is None for a
    chunk of a Dask array, whose pieces are kept); `gate` is what the gate task the halos wait
    for gives (nothing, see `_Gates`).  Held as one list, every piece of a chunk would stay in
    memory until its last neighbour had run: the thin slabs wanted by the blocks before the
    chunk as long as those wanted by the blocks after it, a plane of chunks later (half of the
    halo memory, with chunks of 8 planes).  A piece asked for again after it was dropped (a
    task run twice, as dask.distributed does when a worker is lost) is read from the store anew
    (the array comes from the task that takes it: held here, a memory-mapped array would be
    pickled whole each time dask.distributed moved this object)."""

    def __init__(self, block, layout, gate=None):
        extent, locals_, takers, unbatched = layout.value
        self.pieces = [_cut(block, tuple(slice(lo, hi) for lo, hi in local))
                       for local in locals_]
        self.left = list(takers)
        self.source = (extent, locals_, unbatched)
        self.lock = threading.Lock()

    def take(self, i, array):
        """Piece i, read again from the stored `array` if it was dropped (pieces of a chunk
        not from a store, `array` None, are kept)."""
        if self.source[0] is None:
            return self.pieces[i]
        with self.lock:
            piece = self.pieces[i]
            self.left[i] -= 1
            if self.left[i] <= 0:
                self.pieces[i] = None
        if piece is None:
            extent, locals_, unbatched = self.source
            piece = _read(array, [[(a + lo, a + hi)] for (lo, hi), (a, _) in
                                  zip(locals_[i], extent)], unbatched)
        return piece

    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pieces if p is not None)

    def __getstate__(self):
        return self.pieces, self.left, self.source

    def __setstate__(self, state):
        self.pieces, self.left, self.source = state
        self.lock = threading.Lock()


# what dask.distributed counts in memory for a _Pieces result: the pieces not yet taken
sizeof.register(_Pieces, _Pieces.nbytes)


def _axis_copies(sizes, take):
    """Along one axis of `_gather`: (slice of the result, piece, slice of the piece) for the
    pieces of `sizes`, concatenated and indexed by `take` (None: all of them in order).  Runs
    of `take` that go up or down by one are one copy each: a reflected border is two."""
    starts = list(itertools.accumulate([0] + list(sizes)))
    if take is None:
        runs = [[0, 0, starts[-1], 1]]
    else:
        runs = []                       # [first position, first source, length, step]
        for d, s in enumerate(take.tolist()):
            if runs:
                run = runs[-1]
                if run[2] == 1 and abs(s - run[1]) == 1:
                    run[2], run[3] = 2, s - run[1]
                    continue
                if s == run[1] + run[2] * run[3]:
                    run[2] += 1
                    continue
            runs.append([d, s, 1, 1])
    copies = []
    for d, s, n, step in runs:
        while n:
            j = bisect.bisect_right(starts, s) - 1
            local = s - starts[j]
            m = min(n, starts[j + 1] - s if step > 0 else local + 1)
            stop = local + m * step
            copies.append((slice(d, d + m), j, slice(local, stop if stop >= 0 else None, step)))
            d, s, n = d + m, s + m * step, n - m
    return copies


def _gather(nested, takes=()):
    """One array from pieces in a nested list, one nesting level per axis (batch, channels,
    then the spatial axes; a bare array is one piece), concatenated along each axis, then
    indexed along spatial axis `a` by `takes[a]` if it is not None (the padded positions of a
    reflected, replicated or wrapped border).  Each value is copied once, straight to its
    place; a single piece without takes is returned as it is."""
    first = nested
    while isinstance(first, list):
        first = first[0]
    ndim = first.ndim
    if not isinstance(nested, list):
        nested = first
        for _ in range(ndim):
            nested = [nested]
    takes = (None, None) + tuple(takes) + (None,) * (ndim - 2 - len(takes))
    copies, level = [], nested
    for axis in range(ndim):
        sizes = []
        for item in level:
            while isinstance(item, list):
                item = item[0]
            sizes.append(item.shape[axis])
        copies.append(_axis_copies(sizes, takes[axis]))
        level = level[0]
    if all(len(c) == 1 and c[0][2] == slice(0, c[0][0].stop, 1) for c in copies):
        return first
    out = np.empty(tuple(c[-1][0].stop for c in copies), dtype=first.dtype)
    for combo in itertools.product(*copies):
        piece = nested
        for _, j, _ in combo:
            piece = piece[j]
        out[tuple(c[0] for c in combo)] = piece[tuple(c[2] for c in combo)]
    return out


def _read(array, runs, unbatched):
    """The box of `runs` read from a stored array (see `_Source.region`), one stored chunk
    at a time: a Zarr array decodes whole chunks, and reading them one by one keeps a single
    decoded chunk in memory beside the box."""
    # the chunk shape of a Zarr array or a chunked HDF5 dataset; None for a memmap or a
    # contiguous dataset
    grid = getattr(array, "chunks", None)
    if unbatched:
        runs = runs[1:]
    pieces = []             # per axis: (slice of the box, slice of the array)
    for axis, axis_runs in enumerate(runs):
        step = grid[axis] if grid is not None and grid[axis] > 0 else None
        axis_pieces, at = [], 0
        for a, b in axis_runs:
            while a < b:
                stop = min(b, (a // step + 1) * step) if step else b
                axis_pieces.append((slice(at, at + stop - a), slice(a, stop)))
                at, a = at + stop - a, stop
        pieces.append(axis_pieces)
    combos = list(itertools.product(*pieces))
    if grid is not None and len(combos) == 1:   # Zarr returns a new array: no copy needed
        box = np.asarray(array[tuple(c[1] for c in combos[0])])
        return box[None] if unbatched else box
    box = np.empty(tuple(p[-1][0].stop for p in pieces), dtype=array.dtype)
    for combo in combos:
        box[tuple(c[0] for c in combo)] = array[tuple(c[1] for c in combo)]
    return box[None] if unbatched else box


# ---------------------------------------------------------------------------------------------
# The tasks

_FORWARD = {1: _f.conv1d, 2: _f.conv2d, 3: _f.conv3d}
_INPUT = {1: _f.conv1d_input, 2: _f.conv2d_input, 3: _f.conv3d_input}
_WEIGHT = {1: _f.conv1d_weight, 2: _f.conv2d_weight, 3: _f.conv3d_weight}


def _forward_block(nd, x, pads, w, b, stride, dilation, groups):
    with loopconv.threads(_task_threads()):
        return _FORWARD[nd](x, w, b, stride=stride, padding=pads, dilation=dilation,
                            groups=groups)


def _forward_own_chunk(nd, chunk, pads, fixes, deps, w, b, stride, dilation, groups):
    """A block computed on its own chunk alone, zero padded where the halo is, then the
    boundary slabs whose windows reach into the halo computed again from their full regions
    (`fixes`, a `_Data` of (region, takes, pads, (start, stop) per spatial axis in the
    block); the regions' markers index `deps`)
    and written over."""
    with loopconv.threads(_task_threads()):
        y = _FORWARD[nd](chunk, w, b, stride=stride, padding=pads, dilation=dilation,
                         groups=groups)
        for box, takes, slab_pads, index in fixes.value:
            if isinstance(box, tuple):        # markers, not an empty array
                box = _gather(_resolve(box, chunk, deps), takes)
            index = (slice(None), slice(None)) + tuple(slice(lo, hi) for lo, hi in index)
            y[index] = _FORWARD[nd](box, w, b, stride=stride, padding=slab_pads,
                                    dilation=dilation, groups=groups)
    return y


def _scatter_add(out, g, targets):
    """out[..., targets] += g, per spatial axis an offset or an array of positions."""
    choices = []
    for axis, target in enumerate(targets):
        m = g.shape[2 + axis]
        if isinstance(target, int):
            choices.append([(slice(0, m), slice(target, target + m))])
        else:
            choices.append([(slice(j, j + 1), slice(int(t), int(t) + 1))
                            for j, t in enumerate(target)])
    lead = (slice(None), slice(None))
    for combo in itertools.product(*choices):
        out[lead + tuple(c[1] for c in combo)] += g[lead + tuple(c[0] for c in combo)]


def _input_block(nd, shape, dtype, parts, w, b, stride, dilation, groups):
    """A block of an input gradient (or transposed convolution): the sum of its parts, each
    one in-memory call on a region of grad_output, plus the bias."""
    out = None
    with loopconv.threads(_task_threads()):
        for gy, size, pads, targets in parts:
            g = _INPUT[nd](size, w, gy, stride=stride, padding=pads, dilation=dilation,
                           groups=groups)
            if (out is None and g.shape == shape
                    and all(isinstance(t, int) and t == 0 for t in targets)):
                out = g
            else:
                if out is None:
                    out = np.zeros(shape, dtype)
                _scatter_add(out, g, targets)
    if out is None:
        out = np.zeros(shape, dtype)
    if b is not None:
        out += b.reshape((-1,) + (1,) * nd)
    return out


def _weight_block(nd, x, pads, gy, size, stride, dilation, groups, dtype):
    # in the result's dtype, which the weight (not an argument here) may have widened
    x = x.astype(dtype, copy=False)
    gy = gy.astype(dtype, copy=False)
    with loopconv.threads(_task_threads()):
        gw = _WEIGHT[nd](x, size, gy, stride=stride, padding=pads, dilation=dilation,
                         groups=groups)
    return gw.astype(np.float64)


def _bias_block(gy):
    return gy.sum(axis=(0,) + tuple(range(2, gy.ndim)), dtype=np.float64)


def _add(*parts):
    total = np.array(parts[0], dtype=np.float64)
    for part in parts[1:]:
        total += part
    return total


def _cast(total, dtype):
    return total.astype(dtype)


# ---------------------------------------------------------------------------------------------
# Graphs

def _array(dsk, name, chunks, dtype, sources):
    """A Dask array of the layer `dsk` (blocks `(name, ...)`) that reads `sources`."""
    layers, dependencies = {name: dsk}, {name: set()}
    for src in sources:
        layers.update(src.graph.layers)
        dependencies.update(src.graph.dependencies)
        dependencies[name] |= src.top
    graph = HighLevelGraph(layers, dependencies)
    return da.Array(graph, name, chunks, meta=np.empty((0,) * len(chunks), dtype))


def _constant(dsk, what, value):
    """`value` (the weight or the bias) as one key of the graph."""
    if value is None:
        return None
    key = f"loopconv-{what}-{tokenize(value)}"
    dsk[key] = value
    return key


def _blocks(batch_bounds, spatial_bounds):
    """(batch block, spatial block indices) of every block, in C order of the block grid."""
    grids = [range(len(batch_bounds) - 1)] + [range(len(b) - 1) for b in spatial_bounds]
    for index in itertools.product(*grids):
        yield index[0], index[1:]


def _forward_region(dsk, reads, axes, extents, channels, own=None, deps=None):
    """(region task argument, takes, zero padding) of the outputs `extents` (batch range, then
    output ranges per spatial axis): everything the in-memory call needs, halo included.  The
    region applies the takes (see `_gather`), except with `own` and `deps` (see
    `_Reads.region`): then the task gathers the region and applies them itself."""
    runs = [[extents[0]], [(0, channels)]]
    takes, pads = [], []
    for axis, (o0, o1) in zip(axes, extents[1:]):
        r, take, pad = axis.window(o0, o1)
        runs.append(r)
        takes.append(take)
        pads.append(pad)
    return reads.region(dsk, runs, own, tuple(takes), deps), tuple(takes), tuple(pads)


def _own_chunk(src, axes, extents, w_shape):
    """For the outputs `extents`, whether the in-memory call can read one chunk of `src` as it
    is: (chunk indices, zero padding, boundary slabs to compute again), or None.

    That is the case when the windows of the block cover one chunk whole and reach only thin
    halos beyond it (thinner than the chunk), along every spatial axis; the batch range is one
    chunk and the channels are one chunk.  The call on the chunk alone treats the halos as
    zeros: right where they are zero padding at the array's border, wrong elsewhere, so the
    outputs whose windows reach into a halo (a slab along that side) are computed again."""
    batch = src.bounds[0]
    (b0, b1) = extents[0]
    tb = bisect.bisect_right(batch, b0) - 1
    if batch[tb] != b0 or batch[tb + 1] != b1 or len(src.bounds[1]) != 2:
        return None
    chunk, pads, slabs = [tb, 0], [], []
    for a, (axis, (o0, o1)) in enumerate(zip(axes, extents[1:])):
        bounds = src.bounds[2 + a]
        u0 = o0 * axis.s - axis.pb                          # the windows' input positions
        u1 = (o1 - 1) * axis.s - axis.pb + axis.reach + 1
        lo, hi = max(u0, 0), min(u1, axis.n)
        if lo >= hi:
            return None
        c = bisect.bisect_right(bounds, (lo + hi - 1) // 2) - 1
        c0, c1 = bounds[c], bounds[c + 1]
        # the chunk may end up to stride - 1 positions past the last window: the call's
        # output size, floor((size - reach - 1) / stride) + 1, leaves them out
        if not (u0 <= c0 < c1 < u1 + axis.s) or max(c0 - lo, hi - c1) >= c1 - c0:
            return None
        chunk.append(c)
        pads.append((c0 - u0, max(u1 - c1, 0)))
        edge = axis.src is not None           # reflected, replicated or wrapped padding
        if u0 < c0 and (c0 > 0 or edge):     # windows that start in the halo before
            stop = min(o1, -(-(c0 + axis.pb) // axis.s))
            if stop > o0:
                slabs.append(extents[:1 + a] + [(o0, stop)] + extents[2 + a:])
        if u1 > c1 and (c1 < axis.n or edge):    # windows that end in the halo after
            start = max(o0, -(-(c1 + axis.pb - axis.reach) // axis.s))
            if start < o1:
                slabs.append(extents[:1 + a] + [(start, o1)] + extents[2 + a:])
    # the slabs must be thin, and computing them again cheaper than copying the block with
    # its halos (a region of the chunk's size plus the halos): else gather the region
    outputs = math.prod(hi - lo for lo, hi in extents[1:])
    again = sum(math.prod(hi - lo for lo, hi in slab[1:]) for slab in slabs)
    region = math.prod((o1 - 1) * axis.s + axis.reach + 1 - o0 * axis.s
                       for axis, (o0, o1) in zip(axes, extents[1:]))
    if (again * 2 > outputs
            or again * math.prod(w_shape) > region * src.arr.shape[1] * _COPY_MACS):
        return None
    return tuple(chunk), tuple(pads), slabs


def _forward_graph(name, nd, src, axes, batch_bounds, out_bounds, w, b, geo, dtype):
    """The convolution of `src` with w, with output blocks `batch_bounds` x `out_bounds`."""
    dsk = {}
    wkey, bkey = _constant(dsk, "weight", w), _constant(dsk, "bias", b)
    channels = src.arr.shape[1]
    reads, gates = _Reads(src, name), _Gates(name + "-gate", out_bounds)
    for tb, block in _blocks(batch_bounds, out_bounds):
        reads.group = gates.group(tb, block)
        gates.add(reads.group, (name, tb, 0) + block)
        extents = [(batch_bounds[tb], batch_bounds[tb + 1])]
        extents += [(out_bounds[a][j], out_bounds[a][j + 1]) for a, j in enumerate(block)]
        if any(lo == hi for lo, hi in extents):
            shape = (extents[0][1] - extents[0][0], w.shape[0]) + _extent(extents[1:])
            dsk[(name, tb, 0) + block] = (np.zeros, shape, dtype)
            continue
        own = _own_chunk(src, axes, extents, w.shape)
        if own is not None:
            chunk, pads, slabs = own
            fixes, deps = [], _Deps()
            for slab in slabs:
                box, takes, slab_pads = _forward_region(dsk, reads, axes, slab, channels,
                                                        chunk, deps)
                index = tuple((lo - e0, hi - e0) for (lo, hi), (e0, _) in
                              zip(slab[1:], extents[1:]))
                takes = tuple(t if t is None else reads.one(t) for t in takes)
                fixes.append((box, takes, reads.one(slab_pads), reads.one(index)))
            dsk[(name, tb, 0) + block] = (_forward_own_chunk, nd, reads.chunk(chunk), pads,
                                          _Data(fixes), deps.items, wkey, bkey, geo.stride,
                                          geo.dilation, geo.groups)
            continue
        box, _, pads = _forward_region(dsk, reads, axes, extents, channels)
        dsk[(name, tb, 0) + block] = (_forward_block, nd, box, pads, wkey, bkey,
                                      geo.stride, geo.dilation, geo.groups)
    reads.finish(dsk, gates)
    chunks = (_sizes(batch_bounds), (w.shape[0],)) + tuple(_sizes(o) for o in out_bounds)
    return _array(dsk, name, chunks, dtype, [src])


def _input_graph(name, nd, gsrc, axes, batch_bounds, in_bounds, channels, w, b, geo, dtype):
    """The input gradient of a convolution (or a transposed convolution) of the grad_output
    `gsrc`, with result blocks `batch_bounds` x `in_bounds` and `channels` channels."""
    dsk = {}
    wkey, bkey = _constant(dsk, "weight", w), _constant(dsk, "bias", b)
    out_channels = gsrc.arr.shape[1]
    reads, gates = _Reads(gsrc, name), _Gates(name + "-gate", in_bounds)
    for tb, block in _blocks(batch_bounds, in_bounds):
        reads.group = gates.group(tb, block)
        gates.add(reads.group, (name, tb, 0) + block)
        b0, b1 = batch_bounds[tb], batch_bounds[tb + 1]
        options = []
        for a, (axis, j) in enumerate(zip(axes, block)):
            i0, i1 = in_bounds[a][j], in_bounds[a][j + 1]
            found = [axis.gradient_part(*run) for run in axis.gradient_runs(i0, i1)]
            options.append([p for p in found if p is not None])
        parts = []
        for combo in itertools.product(*options):
            runs = [[(b0, b1)], [(0, out_channels)]] + [[p[0]] for p in combo]
            size = (b1 - b0, channels) + tuple(p[1] for p in combo)
            parts.append([reads.region(dsk, runs), size, tuple(p[2] for p in combo),
                          tuple(p[3] for p in combo)])
        shape = (b1 - b0, channels) + tuple(in_bounds[a][j + 1] - in_bounds[a][j]
                                            for a, j in enumerate(block))
        dsk[(name, tb, 0) + block] = (_input_block, nd, shape, dtype, parts, wkey, bkey,
                                      geo.stride, geo.dilation, geo.groups)
    reads.finish(dsk, gates)
    chunks = (_sizes(batch_bounds), (channels,)) + tuple(_sizes(i) for i in in_bounds)
    return _array(dsk, name, chunks, dtype, [gsrc])


def _tree(dsk, name, keys, shape, dtype):
    """Sum the parts at `keys` in a tree fixed by their order; the result (of `shape`) is
    block 0 of `name`."""
    ndim = len(shape)
    if not keys:
        dsk[(name,) + (0,) * ndim] = (np.zeros, shape, dtype)
        return
    level = 0
    while len(keys) > 1:
        summed = []
        for start in range(0, len(keys), _FAN_IN):
            group = keys[start:start + _FAN_IN]
            if len(group) == 1:
                summed.append(group[0])
                continue
            key = (name + "-sum", level, start // _FAN_IN)
            dsk[key] = (_add,) + tuple(group)
            summed.append(key)
        keys, level = summed, level + 1
    dsk[(name,) + (0,) * ndim] = (_cast, keys[0], dtype)


def _weight_graph(name, nd, src, gsrc, axes, batch_bounds, out_bounds, size, geo, dtype):
    """The weight gradient: one part per block of grad_output `gsrc` (as `batch_bounds` x
    `out_bounds`), with the matching windows of the input `src`."""
    dsk = {}
    keys = []
    reads, grad_reads = _Reads(src, name), _Reads(gsrc, name + "-grad")
    gates = _Gates(name + "-gate", out_bounds)
    for tb, block in _blocks(batch_bounds, out_bounds):
        reads.group = grad_reads.group = gates.group(tb, block)
        extents = [(batch_bounds[tb], batch_bounds[tb + 1])]
        extents += [(out_bounds[a][j], out_bounds[a][j + 1]) for a, j in enumerate(block)]
        if any(lo == hi for lo, hi in extents):
            continue                # an empty block adds nothing
        runs = [[extents[0]], [(0, src.arr.shape[1])]]
        grads = [[extents[0]], [(0, gsrc.arr.shape[1])]]
        takes, pads = [], []
        for axis, (o0, o1) in zip(axes, extents[1:]):
            r, take, pad = axis.window(o0, o1)
            runs.append(r)
            takes.append(take)
            pads.append(pad)
            grads.append([(o0, o1)])
        key = (name + "-part", tb) + block
        gates.add(reads.group, key)
        dsk[key] = (_weight_block, nd, reads.region(dsk, runs, takes=tuple(takes)),
                    tuple(pads), grad_reads.region(dsk, grads), tuple(size), geo.stride,
                    geo.dilation, geo.groups, dtype)
        keys.append(key)
    reads.finish(dsk, gates)
    grad_reads.finish(dsk, gates)
    _tree(dsk, name, keys, tuple(size), dtype)
    return _array(dsk, name, tuple((s,) for s in size), dtype, [src, gsrc])


def _bias_graph(name, gsrc, dtype):
    """The bias gradient: grad_output `gsrc` summed block by block (its chunks along the
    batch and spatial axes, all channels), then in the fixed tree."""
    dsk = {}
    keys = []
    channels = gsrc.arr.shape[1]
    spatial = gsrc.bounds[2:]
    reads, gates = _Reads(gsrc, name), _Gates(name + "-gate", spatial)
    for tb, block in _blocks(gsrc.bounds[0], spatial):
        runs = [[(gsrc.bounds[0][tb], gsrc.bounds[0][tb + 1])], [(0, channels)]]
        runs += [[(spatial[a][j], spatial[a][j + 1])] for a, j in enumerate(block)]
        key = (name + "-part", tb) + block
        dsk[key] = (_bias_block, reads.region(dsk, runs))
        keys.append(key)
    reads.finish(dsk, gates)          # whole chunks: no halos
    _tree(dsk, name, keys, (channels,), dtype)
    return _array(dsk, name, ((channels,),), dtype, [gsrc])


# ---------------------------------------------------------------------------------------------
# Arguments, checked as the in-memory functions check them (same errors, same messages)

def _as_dask(fn, name, value):
    if not isinstance(value, da.Array):
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            value = _args.as_array(fn, name, value)
        value = da.asarray(value)
    if any(np.isnan(size) for size in value.shape):
        raise ValueError(f"{fn}: {name} has chunks of unknown size (shape {value.shape}); "
                         "call its compute_chunk_sizes() first")
    return value


def _meta(x) -> np.ndarray:
    """A stand-in for `x` with its shape and dtype that takes no memory."""
    return np.broadcast_to(np.zeros((), dtype=x.dtype), x.shape)


def _cast_params(dtype, *arrays):
    return tuple(None if a is None else np.ascontiguousarray(a, dtype=dtype) for a in arrays)


def _conv_axes(problem):
    """The axes of a problem's convolution, from its input to its output."""
    return [_Axis(n, k, s, d, p, problem.padding_mode, o) for n, k, s, d, p, o
            in zip(problem.x_shape[2:], problem.w_shape[2:], problem.stride, problem.dilation,
                   problem.pads, problem.y_shape[2:])]


# ---------------------------------------------------------------------------------------------
# The functions

def _conv(fn, nd, input, weight, bias, stride, padding, dilation, groups, padding_mode):
    x = _as_dask(fn, "input", input)
    geo, _, w, b = _problem.conv(fn, nd, _meta(x), weight, bias, stride, padding, dilation,
                                 groups, padding_mode)
    dtype = geo.dtype
    w, b = _cast_params(dtype, w, b)
    src = _Source(x, geo.unbatched)
    axes = _conv_axes(geo)
    out_bounds = [axis.output_bounds(bounds) for axis, bounds in zip(axes, src.bounds[2:])]
    token = tokenize(fn, src.arr.name, w, b, geo.stride, geo.pads, geo.dilation, geo.groups,
                     geo.padding_mode, out_bounds)
    y = _forward_graph(f"{fn}-{token}", nd, src, axes, src.bounds[0], out_bounds, w, b, geo,
                       dtype)
    return y[0] if geo.unbatched else y


def _conv_input(fn, nd, input_size, weight, grad_output, stride, padding, dilation, groups):
    gy_d = _as_dask(fn, "grad_output", grad_output)
    geo, w, _ = _problem.conv_input(fn, nd, input_size, weight, _meta(gy_d), stride, padding,
                                    dilation, groups)
    size, dtype, unbatched = geo.x_shape, geo.dtype, geo.unbatched
    (w,) = _cast_params(dtype, w)
    gsrc = _Source(gy_d, unbatched)
    axes = _conv_axes(geo)
    in_bounds = [axis.input_bounds(bounds) for axis, bounds in zip(axes, gsrc.bounds[2:])]
    token = tokenize(fn, gsrc.arr.name, w, size, geo.stride, geo.pads, geo.dilation,
                     geo.groups, in_bounds)
    gx = _input_graph(f"{fn}-{token}", nd, gsrc, axes, gsrc.bounds[0], in_bounds, size[1], w,
                      None, geo, dtype)
    return gx[0] if unbatched else gx


def _conv_weight(fn, nd, input, weight_size, grad_output, stride, padding, dilation, groups):
    x_d = _as_dask(fn, "input", input)
    gy_d = _as_dask(fn, "grad_output", grad_output)
    geo, _, _, gy_unbatched = _problem.conv_weight(fn, nd, _meta(x_d), weight_size, _meta(gy_d),
                                                   stride, padding, dilation, groups)
    size, dtype = geo.w_shape, geo.dtype
    src = _Source(x_d, geo.unbatched)
    gsrc = _Source(gy_d, gy_unbatched)
    axes = _conv_axes(geo)
    out_bounds = [axis.output_bounds(bounds) for axis, bounds in zip(axes, src.bounds[2:])]
    token = tokenize(fn, src.arr.name, gsrc.arr.name, size, geo.stride, geo.pads, geo.dilation,
                     geo.groups, out_bounds)
    return _weight_graph(f"{fn}-{token}", nd, src, gsrc, axes, src.bounds[0], out_bounds, size,
                         geo, dtype)


def _conv_backward(fn, nd, input, weight, grad_output, stride, padding, dilation, groups,
                   padding_mode, output_mask):
    mask = _args.output_mask(fn, output_mask)
    x_d = _as_dask(fn, "input", input)
    geo, _, w, _ = _problem.conv(fn, nd, _meta(x_d), weight, None, stride, padding, dilation,
                                 groups, padding_mode)
    gy_d = _as_dask(fn, "grad_output", grad_output)
    _, geo = _problem.grad_output(fn, geo, _meta(gy_d), geo.y_shape)
    dtype, unbatched = geo.dtype, geo.unbatched
    (w,) = _cast_params(dtype, w)
    src = _Source(x_d, unbatched)
    gsrc = _Source(gy_d, unbatched and gy_d.ndim == nd + 1)
    axes = _conv_axes(geo)
    token = tokenize(fn, src.arr.name, gsrc.arr.name, w, geo.stride, geo.pads, geo.dilation,
                     geo.groups, geo.padding_mode)
    gx = gw = gb = None
    if mask[0]:
        gx = _input_graph(f"{fn}-input-{token}", nd, gsrc, axes, src.bounds[0], src.bounds[2:],
                          geo.x_shape[1], w, None, geo, dtype)
        gx = gx[0] if unbatched else gx
    if mask[1]:
        out_bounds = [axis.output_bounds(bounds) for axis, bounds in zip(axes, src.bounds[2:])]
        gw = _weight_graph(f"{fn}-weight-{token}", nd, src, gsrc, axes, src.bounds[0],
                           out_bounds, w.shape, geo, dtype)
    if mask[2]:
        gb = _bias_graph(f"{fn}-bias-{token}", gsrc, dtype)
    return gx, gw, gb


def _conv_transpose(fn, nd, input, weight, bias, stride, padding, output_padding, groups,
                    dilation, output_size):
    x_d = _as_dask(fn, "input", input)
    geo, _, w, b = _problem.conv_transpose(fn, nd, _meta(x_d), weight, bias, stride, padding,
                                           output_padding, groups, dilation, output_size)
    out, out_channels = geo.x_shape[2:], geo.x_shape[1]
    dtype, unbatched = geo.dtype, geo.unbatched
    w, b = _cast_params(dtype, w, b)
    src = _Source(x_d, unbatched)
    axes = _conv_axes(geo)
    in_bounds = [axis.input_bounds(bounds) for axis, bounds in zip(axes, src.bounds[2:])]
    token = tokenize(fn, src.arr.name, w, b, geo.stride, geo.pads, geo.dilation, geo.groups,
                     out, in_bounds)
    y = _input_graph(f"{fn}-{token}", nd, src, axes, src.bounds[0], in_bounds, out_channels, w,
                     b, geo, dtype)
    return y[0] if unbatched else y


def _conv_transpose_backward(fn, nd, input, weight, grad_output, stride, padding,
                             output_padding, groups, dilation, output_mask):
    mask = _args.output_mask(fn, output_mask)
    x_d = _as_dask(fn, "input", input)
    geo, _, w, _ = _problem.conv_transpose(fn, nd, _meta(x_d), weight, None, stride, padding,
                                           output_padding, groups, dilation)
    gy_d = _as_dask(fn, "grad_output", grad_output)
    _, geo = _problem.grad_output(fn, geo, _meta(gy_d), geo.x_shape)
    out, dtype, unbatched = geo.x_shape[2:], geo.dtype, geo.unbatched
    (w,) = _cast_params(dtype, w)
    src = _Source(x_d, unbatched)
    gsrc = _Source(gy_d, unbatched and gy_d.ndim == nd + 1)
    # the convolution whose input is grad_output and whose output has the shape of input
    axes = _conv_axes(geo)
    token = tokenize(fn, src.arr.name, gsrc.arr.name, w, geo.stride, geo.pads, geo.dilation,
                     geo.groups, out)
    gx = gw = gb = None
    if mask[0]:
        gx = _forward_graph(f"{fn}-input-{token}", nd, gsrc, axes, src.bounds[0],
                            src.bounds[2:], w, None, geo, dtype)
        gx = gx[0] if unbatched else gx
    if mask[1]:
        gw = _weight_graph(f"{fn}-weight-{token}", nd, gsrc, src, axes, src.bounds[0],
                           src.bounds[2:], w.shape, geo, dtype)
    if mask[2]:
        gb = _bias_graph(f"{fn}-bias-{token}", gsrc, dtype)
    return gx, gw, gb


# ---------------------------------------------------------------------------------------------
# Public functions: the signatures of `loopconv`'s, each family's docstring filled in per
# dimensionality.

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}

_DASK_NOTES = """\
    input and grad_output are Dask arrays (or anything `dask.array.asarray` takes) chunked
    in any way; weight and bias are NumPy arrays.  The arguments are checked here, with the
    messages of `loopconv.{name}`; the result is computed when it is asked for."""


def _doc(template: str, nd: int):
    """A decorator that sets a function's docstring: `template` filled in for `nd`."""
    fields = dict(nd=nd, sp=_SPATIAL[nd], k=", ".join("k" + a for a in "dhw"[3 - nd:]),
                  xshape=(1, 1) + (4,) * nd, chunk=(1, 1) + (2,) * nd,
                  chunks=repr(((1,), (1,)) + ((2, 2),) * nd), wshape=(1, 1) + (3,) * nd,
                  vshape=(1, 1) + (2,) * nd, centre=(0, 0) + (1,) * nd, first=(0,) * (nd + 2),
                  sum3=3 ** nd, nvalid=2 ** nd, nsum=6 ** nd)
    doc = template.format(**fields)

    def document(function):
        function.__doc__ = doc
        return function

    return document


_CONV_DOC = """{nd}-D convolution of a Dask array, as `loopconv.conv{nd}d`.

    Parameters
    ----------
    input : dask array, shape (N, C_in, {sp}) or (C_in, {sp})
    weight : ndarray, shape (C_out, C_in // groups, {k})
    bias : ndarray, shape (C_out,), optional
    stride, padding, dilation, groups, padding_mode
        As for `loopconv.conv{nd}d`; padding is applied at the outer border of the whole
        array.

    Returns
    -------
    dask array, shape (N, C_out, out...)
        Chunks: the input's along the batch axis, one along channels; along a spatial axis,
        an output position goes with the input chunk that holds the centre of its window
        (with stride 1, an odd kernel and 'same' padding: the input's chunks).

    Examples
    --------
    >>> import dask.array as da, numpy as np, loopconv.dask
    >>> x = da.ones({xshape}, chunks={chunk})
    >>> y = loopconv.dask.conv{nd}d(x, np.ones({wshape}), padding="same")
    >>> y.chunks
    {chunks}
    >>> float(y.compute(scheduler="sync")[{centre}])
    {sum3}.0
    """

_INPUT_DOC = """Gradient of a {nd}-D convolution for its input, as `loopconv.conv{nd}d_input`.

    Parameters
    ----------
    input_size : sequence of ints
        Shape of the convolution's input: (N, C_in, {sp}), (C_in, {sp}) or the spatial
        sizes alone.
    weight : ndarray, shape (C_out, C_in // groups, {k})
    grad_output : dask array, shape (N, C_out, out...) or (C_out, out...)
    stride, padding, dilation, groups
        As for `loopconv.conv{nd}d_input` (zero padding).

    Returns
    -------
    dask array of shape `input_size`
        Chunks: grad_output's along the batch axis, one along channels; a chunk boundary of
        grad_output at position ``O`` of an axis becomes one at
        ``O * stride - before + dilation * (k - 1) // 2``.

    Examples
    --------
    >>> import dask.array as da, numpy as np, loopconv.dask
    >>> g = da.ones({vshape}, chunks=1)
    >>> gx = loopconv.dask.conv{nd}d_input({xshape}, np.ones({wshape}), g)
    >>> gx.shape, float(gx.sum().compute(scheduler="sync"))
    ({xshape}, {nsum}.0)
    """

_WEIGHT_DOC = """Gradient of a {nd}-D convolution for its weight, as `loopconv.conv{nd}d_weight`.

    Parameters
    ----------
    input : dask array, shape (N, C_in, {sp}) or (C_in, {sp})
    weight_size : sequence of ints
        Shape of the weight, (C_out, C_in // groups, {k}).
    grad_output : dask array, shape (N, C_out, out...) or (C_out, out...)
    stride, padding, dilation, groups
        As for `loopconv.conv{nd}d_weight` (zero padding).

    Returns
    -------
    dask array of shape `weight_size`, one chunk
        The parts of the blocks are added in a tree of fixed order: the same bits on every
        scheduler.

    Examples
    --------
    >>> import dask.array as da, numpy as np, loopconv.dask
    >>> x = da.ones({xshape}, chunks={chunk})
    >>> g = da.ones({vshape}, chunks=1)
    >>> gw = loopconv.dask.conv{nd}d_weight(x, {wshape}, g)
    >>> float(gw.compute(scheduler="sync")[{first}])
    {nvalid}.0
    """

_BACKWARD_DOC = """All gradients of a {nd}-D convolution, as `loopconv.conv{nd}d_backward`.

    Parameters
    ----------
    input : dask array, shape (N, C_in, {sp}) or (C_in, {sp})
    weight : ndarray, shape (C_out, C_in // groups, {k})
    grad_output : dask array, shape of ``conv{nd}d(input, weight, ...)``
    stride, padding, dilation, groups, padding_mode, output_mask
        As for `loopconv.conv{nd}d_backward`; with a padding mode other than zeros, the
        gradient of the border is folded back onto the positions it was copied from.

    Returns
    -------
    (grad_input, grad_weight, grad_bias) : tuple of dask arrays or None
        grad_input has the input's chunks along the batch and spatial axes; grad_weight and
        grad_bias one chunk each, summed over the blocks in a tree of fixed order.

    Examples
    --------
    >>> import dask.array as da, numpy as np, loopconv.dask
    >>> x = da.ones({xshape}, chunks={chunk})
    >>> gx, gw, gb = loopconv.dask.conv{nd}d_backward(x, np.ones({wshape}),
    ...                                              da.ones({vshape}, chunks=1))
    >>> gx.chunks == x.chunks, float(gb.compute(scheduler="sync")[0])
    (True, {nvalid}.0)
    """

_TRANSPOSE_DOC = """{nd}-D transposed convolution of a Dask array, as
    `loopconv.conv_transpose{nd}d`.

    Parameters
    ----------
    input : dask array, shape (N, C_in, {sp}) or (C_in, {sp})
    weight : ndarray, shape (C_in, C_out // groups, {k})
    bias : ndarray, shape (C_out,), optional
    stride, padding, output_padding, groups, dilation, output_size
        As for `loopconv.conv_transpose{nd}d`.

    Returns
    -------
    dask array, shape (N, C_out, out...)
        Chunks: the input's along the batch axis, one along channels; a chunk boundary of
        the input at position ``O`` of an axis becomes one at
        ``O * stride - before + dilation * (k - 1) // 2``.

    Examples
    --------
    >>> import dask.array as da, numpy as np, loopconv.dask
    >>> x = da.ones({vshape}, chunks=1)
    >>> y = loopconv.dask.conv_transpose{nd}d(x, np.ones({wshape}))
    >>> y.shape, float(y.sum().compute(scheduler="sync"))
    ({xshape}, {nsum}.0)
    """

_TRANSPOSE_BACKWARD_DOC = """All gradients of a {nd}-D transposed convolution, as
    `loopconv.conv_transpose{nd}d_backward`.

    Parameters
    ----------
    input : dask array, shape (N, C_in, {sp}) or (C_in, {sp})
    weight : ndarray, shape (C_in, C_out // groups, {k})
    grad_output : dask array, shape of ``conv_transpose{nd}d(input, weight, ...)``
    stride, padding, output_padding, groups, dilation, output_mask
        As for `loopconv.conv_transpose{nd}d_backward`.

    Returns
    -------
    (grad_input, grad_weight, grad_bias) : tuple of dask arrays or None
        grad_input (a convolution of grad_output) has the input's chunks along the batch and
        spatial axes; grad_weight and grad_bias one chunk each, summed over the blocks in a
        tree of fixed order.

    Examples
    --------
    >>> import dask.array as da, numpy as np, loopconv.dask
    >>> x = da.ones({vshape}, chunks=1)
    >>> gx, gw, gb = loopconv.dask.conv_transpose{nd}d_backward(
    ...     x, np.ones({wshape}), da.ones({xshape}, chunks={chunk}))
    >>> gx.chunks == x.chunks, float(gw.compute(scheduler="sync")[{first}])
    (True, {nvalid}.0)
    """



@_doc(_CONV_DOC, 1)
def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros"):
    return _conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups,
                 padding_mode)


@_doc(_INPUT_DOC, 1)
def conv1d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _conv_input("conv1d_input", 1, input_size, weight, grad_output, stride, padding,
                       dilation, groups)


@_doc(_WEIGHT_DOC, 1)
def conv1d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _conv_weight("conv1d_weight", 1, input, weight_size, grad_output, stride, padding,
                        dilation, groups)


@_doc(_BACKWARD_DOC, 1)
def conv1d_backward(input, weight, grad_output, stride=1, padding=0, dilation=1, groups=1,
                    padding_mode="zeros", *, output_mask=(True, True, True)):
    return _conv_backward("conv1d_backward", 1, input, weight, grad_output, stride, padding,
                          dilation, groups, padding_mode, output_mask)


@_doc(_TRANSPOSE_DOC, 1)
def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None):
    return _conv_transpose("conv_transpose1d", 1, input, weight, bias, stride, padding,
                           output_padding, groups, dilation, output_size)


@_doc(_TRANSPOSE_BACKWARD_DOC, 1)
def conv_transpose1d_backward(input, weight, grad_output, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1, *, output_mask=(True, True, True)):
    return _conv_transpose_backward("conv_transpose1d_backward", 1, input, weight,
                                    grad_output, stride, padding, output_padding, groups,
                                    dilation, output_mask)


@_doc(_CONV_DOC, 2)
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros"):
    return _conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups,
                 padding_mode)


@_doc(_INPUT_DOC, 2)
def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _conv_input("conv2d_input", 2, input_size, weight, grad_output, stride, padding,
                       dilation, groups)


@_doc(_WEIGHT_DOC, 2)
def conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _conv_weight("conv2d_weight", 2, input, weight_size, grad_output, stride, padding,
                        dilation, groups)


@_doc(_BACKWARD_DOC, 2)
def conv2d_backward(input, weight, grad_output, stride=1, padding=0, dilation=1, groups=1,
                    padding_mode="zeros", *, output_mask=(True, True, True)):
    return _conv_backward("conv2d_backward", 2, input, weight, grad_output, stride, padding,
                          dilation, groups, padding_mode, output_mask)


@_doc(_TRANSPOSE_DOC, 2)
def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None):
    return _conv_transpose("conv_transpose2d", 2, input, weight, bias, stride, padding,
                           output_padding, groups, dilation, output_size)


@_doc(_TRANSPOSE_BACKWARD_DOC, 2)
def conv_transpose2d_backward(input, weight, grad_output, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1, *, output_mask=(True, True, True)):
    return _conv_transpose_backward("conv_transpose2d_backward", 2, input, weight,
                                    grad_output, stride, padding, output_padding, groups,
                                    dilation, output_mask)


@_doc(_CONV_DOC, 3)
def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros"):
    return _conv("conv3d", 3, input, weight, bias, stride, padding, dilation, groups,
                 padding_mode)


@_doc(_INPUT_DOC, 3)
def conv3d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _conv_input("conv3d_input", 3, input_size, weight, grad_output, stride, padding,
                       dilation, groups)


@_doc(_WEIGHT_DOC, 3)
def conv3d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _conv_weight("conv3d_weight", 3, input, weight_size, grad_output, stride, padding,
                        dilation, groups)


@_doc(_BACKWARD_DOC, 3)
def conv3d_backward(input, weight, grad_output, stride=1, padding=0, dilation=1, groups=1,
                    padding_mode="zeros", *, output_mask=(True, True, True)):
    return _conv_backward("conv3d_backward", 3, input, weight, grad_output, stride, padding,
                          dilation, groups, padding_mode, output_mask)


@_doc(_TRANSPOSE_DOC, 3)
def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None):
    return _conv_transpose("conv_transpose3d", 3, input, weight, bias, stride, padding,
                           output_padding, groups, dilation, output_size)


@_doc(_TRANSPOSE_BACKWARD_DOC, 3)
def conv_transpose3d_backward(input, weight, grad_output, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1, *, output_mask=(True, True, True)):
    return _conv_transpose_backward("conv_transpose3d_backward", 3, input, weight,
                                    grad_output, stride, padding, output_padding, groups,
                                    dilation, output_mask)
