"""The compiled loops, and the choice among them.

- `direct`: the defining sums as plain loops (the reference; also the fastest for tiny problems);
- `tiled_*`: matrix-multiply loops with a register tile, one module per instruction set
  (`baseline` everywhere; `x86-64-v3` and `x86-64-v4` on x86-64), chosen at import from the CPU's
  features, or forced with the environment variable ``LOOPCONV_CPU``;
- the depthwise loops (`dw_*` of the same modules, depthwise.pxi): convolutions with one or a
  few channels per group, where the tiled loops' products would have one or two rows.

`choose` picks the loops of each pass of a problem, by its shapes, stride and groups only --
never by thread count, so that results are bit-identical for any number of threads.
`forward`, `grad_input` and `grad_weight` take C-contiguous 5-D arrays (see tiled.pxi for the
layout) and run the chosen loops; a `Plan` runs the three passes of a problem checked once
(see loopconv.functional).
"""

import importlib
import itertools
import math
import os
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import numpy as np

from loopconv._loops import direct, platform

# name -> (module, x86-64 level it needs)
_VARIANTS = {
    "baseline": ("tiled_baseline", 0),
    "x86-64-v3": ("tiled_x86_64_v3", 3),
    "x86-64-v4": ("tiled_x86_64_v4", 4),
}

# Below this many multiply-adds the direct loops can win: packing panels costs more than it
# saves (the tiled loops' fixed cost is some 10-30 us a pass).
SMALL_PROBLEM = 1 << 16

# The direct loops' time, roughly, in ns on one core: DIRECT_TAP for each (output image and
# channel, input channel, tap) they visit, DIRECT_ROW for each output row of those, DIRECT_MAC
# for each multiply-add.  Below DIRECT_BUDGET they are the faster.  So a problem of few
# multiply-adds but many taps runs on the tiled loops: a 1x1 convolution on a 1x1 image from
# 48 to 1152 channels (a squeeze-and-excitation layer of EfficientNet) took 0.9 ms on the
# direct loops, 0.03 ms on the tiled ones.
DIRECT_TAP, DIRECT_ROW, DIRECT_MAC = 16, 0.5, 0.3
DIRECT_BUDGET = 15_000


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
    """Whether a problem of `macs` multiply-adds is small enough for the direct loops (which
    run it on one thread: waking a second thread costs more than such a problem)."""
    return macs < SMALL_PROBLEM


def direct_suits(y_shape, w_shape) -> bool:
    """Whether the direct loops are the faster for a convolution with 5-D output `y_shape`
    and weight `w_shape` (by their cost model above)."""
    n, o, od, oh, _ = y_shape
    taps = n * o * math.prod(w_shape[1:])
    macs = taps * math.prod(y_shape[2:])
    cost = DIRECT_TAP * taps + DIRECT_ROW * taps * od * oh + DIRECT_MAC * macs
    return small(macs) and cost < DIRECT_BUDGET


_ONES, _ZEROS = (1, 1, 1), (0, 0, 0)     # unit stride and dilation, no padding

# Whether a loop has run on more than one thread in this process: the OpenMP thread pool then
# exists, and a child made by fork() inherits it broken (see loopconv._config).
started_threads = False


# The input gradient as columns (col2im_grad_input) where the phase-split product computes
# much padding: where its grids are at least COL2IM_WASTE times larger than dy and its groups
# sum over COL2IM_REDUCTION output channels or more, or the grids are COL2IM_WASTE_ANY times
# larger; and where the columns (C * taps * N * dy pixels) take at most COL2IM_COLUMNS
# elements.  Measured on one core (float32), columns against the phase-split product: a GAN
# generator's 4x4 stride-2 layers at batch 32 from 4x4, 8x8, 16x16 inputs (grids 1.56, 1.27,
# 1.13 times dy) 2.45, 1.14 and 0.58 times the speed; 512-channel 3x3 layers on 7x7 (1.65)
# 1.2-1.35, 256 on 14x14 (1.31) 1.0, 64 on 56x56 0.3; 128 channels 3x3x3 on 4x4x4 (3.4) 2.2;
# a transposed convolution from a 1x1 input, 4x4 taps (16), 6.5, and 3.4 with 10 channels.
# Groups of few output channels make a weak product: 0.3 with ResNeXt's 32 groups of 16 on
# 14x14, 0.2 with 32 channels 3x3x3 on 16x16x16 (1.42).  Also every input gradient from one
# output pixel per image with one group: against the tiled loops, squeeze-and-excitation
# layers on 1x1 images 1.0-8.5x (1 and 2 threads, both dtypes), a GAN's dense first layer
# 20-30x at batch 32.
COL2IM_WASTE = 1.3
COL2IM_REDUCTION = 64
COL2IM_WASTE_ANY = 4
COL2IM_COLUMNS = 1 << 22
COL2IM_TAPS = 1 << 20       # dy pixels times taps: the scatter's table of positions
# At batch 1, a strided convolution whose kernel is larger than its stride (several taps per
# phase), with dy of at most COL2IM_SINGLE_PIXELS pixels and groups summing over at least
# COL2IM_SINGLE_SUM output channels, takes the columns whatever its grids: its phase-split
# product has four (or eight) small grids of one image.  Measured (`benchmarks/columns.py
# --batch 1`; float32 1 / 2 threads, float64): 128 -> 256 channels 3x3 stride 2 from 28x28
# 1.50 / 1.56 / 1.73, 256 -> 256 1.38 / 1.48 / 1.65, a GAN's 4x4 stride-2 layer onto 8x8
# 2.20 / 2.67 / 1.44, a 2x2x2 stride-2 transposed convolution from 4x4x4 2.26 / 2.08 / 2.57.
# Left out: 1x1 stride 2 (0.9-1.4), 1-D kernels of 3 with stride 2 (0.77-1.13), dy of 28x28
# (0.93-1.17), 128 channels (1.08-1.69 but 0.96-1.09 with 64).
COL2IM_SINGLE_PIXELS = 196
COL2IM_SINGLE_SUM = 256
# A kernel as large as its stride (one tap per phase: a U-Net's 2x2 and 2x2x2 up-convolutions,
# a patch embedding's downsampling) takes that rule too where its weight has
# COL2IM_SINGLE_WEIGHT elements or more: the phase-split product packs the whole weight, phase
# by phase, for one small image's pixels (packing was 45 % of the 512 -> 512 2x2x2
# up-convolution from 4x4x4), where the columns' product reads it in place.  Measured (tiled
# time over the columns' on the same arrays, float32 1 / 2 threads, float64 1 thread):
# 512 -> 512 2x2x2 from 4x4x4 1.87 / 1.45 / 2.07, 1024 -> 512 from 2x2x2 5.8 / 5.8 / 7.2,
# 2x2 from 14x14 1024 -> 512 1.54 / 1.25 / 1.77, from 7x7 1024 -> 512 - / 1.43 / 1.77,
# 2048 -> 1024 - / 1.59 / 2.15, 768 -> 384 - / 1.24 / 1.88, 4x4 stride 4 512 -> 512 from 4x4
# - / 4.1 / 3.9.  Below it, left to the tiled loops: 256 -> 128 from 8x8 and 4x4x4 0.83 and
# 1.05, 256 -> 256 from 7x7 1.11 / 0.93 / 1.08, 384 -> 192 from 14x14 - / 0.96 / 1.09,
# wav2vec's 512-channel kernel-2 stride-2 layers (dy of 49 and 99) 1.11-1.15 / 0.82-0.89 /
# 1.07-1.19, 512 -> 256 from 14x14 1.26 / 1.09 / 1.76.
COL2IM_SINGLE_WEIGHT = 1 << 20
# The columns leave a stride-1 3-D input gradient to the tiled loops where those compute less
# than COL2IM_TILED_WASTE grid columns per pixel of dx (`tiled.grid_waste`: their staging
# shares the zeros between rows and planes, so 3x3x3 on 8x8x8 computes 1.25, where the grids
# `_grid` counts are 1.95).  Measured (float32, one thread), tiled time over the columns':
# 3x3x3 on 8x8x8 (1.25) 64 -> 64 and 64 -> 128 channels at batch 2 0.77 and 0.93, on
# 16x16x16 (1.13) 16 -> 64 at batch 1 0.48; kept as columns: 4x4x4 (1.47) 1.24-1.33.
COL2IM_TILED_WASTE = 1.3
# ... but keeps it where the weight has COL2IM_WEIGHT_PIXELS elements or more per pixel of dy
# (all images): the tiled loops pack the whole weight for those few pixels (half the time of
# V-Net's 256 -> 256 5x5x5 on 4x4x2), the columns' product reads it in place.  Tiled time over
# the columns' (float32 one thread): that layer at batch 1 (256 K elements a pixel) 1.56, at
# batch 2 1.27, at batch 4 (64 K, left tiled) 1.11, on 4x4x4 1.12; on 8x8x4 (32 K) 0.79, with
# 128 channels (8 K) 0.53; two threads 2.2, 1.43, 1.28, 1.35 and 0.79.  Float64 four times as
# many (COL2IM_WEIGHT_PIXELS_F64): at batch 1 1.36, at batch 2 (128 K) 0.90, on 4x4x4 0.88.
COL2IM_WEIGHT_PIXELS = 1 << 16
COL2IM_WEIGHT_PIXELS_F64 = 1 << 18
# 1-D and 2-D problems of several output pixels take the columns (col2im_suits' grids, and
# im2col_suits, which im2col_forward_suits follows) only with FLAT_COLUMNS_OUT output channels
# per group or more: the columns' product has a column per output channel (forward) or sums
# over them (input gradient), and the tiled loops' rows now share their padding's zeros.
# Measured (float32 one thread, tiled time over the columns', forward / input / weight): 3x3
# on 7x7 at batch 8, 512 -> 512 1.13 / 1.28 / 1.04, 64 -> 256 0.93 / 1.30 / 1.01, 128 -> 128
# 0.86 / 0.97 / 0.86, 256 -> 64 0.86 / 0.76 / 0.73, 128 -> 32 0.51 / 0.53 / 0.55 (at batch 1
# 0.42 / 0.52 / 0.74); on 6x6 256 -> 256 1.31 / 1.39 / 1.00; Inception's 1x7 and 7x1 on 17x17,
# 128 -> 128 and 192 channels, input gradient 0.84 and 0.75.  3-D keeps COL2IM_REDUCTION
# (3x3x3 on 4x4x4 with 128 channels: columns 1.24-1.33x faster).  Since the pixel tiles' stores
# add by vectors, no 1-D or 2-D input gradient of stride 1 takes the columns by this rule
# (tiled time over the columns', `/tmp` script calling both on the same arrays, float32 one
# thread: 3x3 at batch 8 on 14x14 256 -> 256 0.84, 64 -> 256 0.84, on 7x7 512 -> 512 1.0,
# 64 -> 256 1.01, 128 -> 512 0.96, on 6x6 1.0; at batch 1 512 -> 512 on 7x7 0.88, 256 -> 256 on
# 14x14 0.98; two threads 0.65-1.03; float64 0.79-1.01); stride 2 keeps it (256 -> 512 from
# 14x14 at batch 8 1.11, two threads 1.21).
FLAT_COLUMNS_OUT = 256


def _grid(y_shape, w_shape, stride) -> int:
    """The pixels of the grids, all stride phases together, that the tiled loops compute for
    an output (or dy) of 5-D shape `y_shape` and a kernel `w_shape`: per axis, the output's
    size plus the kernel's taps in a phase, less one."""
    return math.prod(p + -(-k // s) - 1 for p, k, s in zip(y_shape[2:], w_shape[2:], stride))


def _flat_batch(y_shape, stride) -> bool:
    """Whether a 1-D or 2-D problem of stride 1 has IM2COL_FORWARD_REDUCTION output pixels or
    more in all: its pixel tiles then group the pixels of several images by the taps that reach
    the source from them and skip the rest, so they run faster than the columns, which compute
    every tap, however much of the grid is padding (the waste rules below)."""
    return (y_shape[2] == 1 and max(stride) == 1
            and y_shape[0] * math.prod(y_shape[2:]) >= IM2COL_FORWARD_REDUCTION)


def col2im_suits(y_shape, w_shape, stride, groups) -> bool:
    """Whether the input gradient of a convolution with 5-D output `y_shape` (of dy) and
    weight `w_shape` runs as columns: by how much larger than dy the phase-split grids are,
    and the output channels per group."""
    pixels, taps = math.prod(y_shape[2:]), math.prod(w_shape[2:])
    if (y_shape[0] * pixels * groups * w_shape[1] * taps > COL2IM_COLUMNS
            or pixels * taps > COL2IM_TAPS):
        return False
    if pixels == 1 and groups == 1:
        return True
    if (y_shape[0] == 1 and max(stride) > 1 and pixels <= COL2IM_SINGLE_PIXELS
            and w_shape[0] // groups >= COL2IM_SINGLE_SUM
            and (taps > math.prod(stride) or (taps == math.prod(stride)
                                              and math.prod(w_shape) >= COL2IM_SINGLE_WEIGHT))):
        return True
    grid = _grid(y_shape, w_shape, stride)
    if grid >= COL2IM_WASTE_ANY * pixels and not _flat_batch(y_shape, stride):
        return True
    if y_shape[2] == 1 and max(stride) == 1:    # 1-D and 2-D: FLAT_COLUMNS_OUT
        return False
    reduction = COL2IM_REDUCTION if y_shape[2] > 1 else FLAT_COLUMNS_OUT
    return grid >= COL2IM_WASTE * pixels and w_shape[0] // groups >= reduction


def col2im_grad_input(dy, w, bias, dx, stride, pad, dilation, groups, num_threads):
    """The input gradient as a matrix product and a scatter (col2im).  The columns
    cols[(g, n, p), (c, tap)] = sum over the channels o of group g of dy[n, o, p] w[o, c, tap]
    are a 1x1 convolution, in groups, of w read as an image of Cg * taps pixels with O channels
    (no copy) with dy read as a weight (rows (n, p) of each group); then each input pixel
    gathers the columns that reach it, tap by tap (`direct.col2im`).  Where the tiled loops'
    input gradient of a 3-D convolution runs as tiles of pixels (`tiled.uses_pixel_tiles`:
    small grids, whose junk those tiles skip, the reason for the columns here) it runs there
    instead: measured (float32, one thread) on 3x3x3 layers on 8x8x8 at batches 1 and 2, 64
    to 384 channels, 1.17-1.75x faster than the columns; likewise where its grids have little
    junk (COL2IM_TILED_WASTE).  In 1-D and 2-D, where only strided problems and those of mostly
    padding come here (`col2im_suits`; 256 -> 512 3x3 stride 2 from 14x14 at batch 8 runs 1.11x
    faster as columns than as pixel tiles), only 4x4 stride-2 layers at batch 1 from enough
    pixels (COL2IM_PAIRS_PIXELS)."""
    if _input_on_tiles(dx.shape, w.shape, dy.shape, stride, pad, dilation, groups,
                       dy.itemsize):
        tiled.grad_input(dy, w, bias, dx, stride, pad, dilation, groups, num_threads)
        return
    n, o = dy.shape[:2]
    og, k = o // groups, math.prod(w.shape[1:])
    pixels = math.prod(dy.shape[2:])
    dense = _dense(dx.shape[2:], w.shape[2:], dy.shape[2:], pad, dilation, groups)
    # where the layer is dense the columns are dx itself: nothing to scatter
    cols = dx if dense else _scratch("c", (groups * n * pixels, k), dy.dtype)
    if _dense_products(n, pixels, groups):      # cols[n] = dy[n] w (tiled.dense_input)
        tiled.dense_input(dy.reshape(n, o), w.reshape(o, k), cols.reshape(n, k), num_threads)
    else:
        rows = _scratch("r", (groups, n, pixels, og), dy.dtype)
        np.copyto(rows, dy.reshape(n, groups, og, pixels).transpose(1, 0, 3, 2))
        rows = rows.reshape(groups * n * pixels, og, 1, 1, 1)
        forward(w.reshape(1, o, 1, 1, k), rows, np.empty(0, dy.dtype),
                cols.reshape(1, groups * n * pixels, 1, 1, k), _ONES, _ZEROS, _ONES, groups,
                num_threads)
    if not dense:
        direct.col2im(cols, w.shape, bias, dx, dy.shape, stride, pad, dilation, groups,
                      num_threads)
    elif bias.shape[0]:
        dx += bias.reshape(1, -1, 1, 1, 1)


# The input gradient of a layer of one group and few input channels, of more than one tap and
# output pixel, runs as one product for all its taps (`taps_grad_input`): up to TAPS_CHANNELS
# input channels in 1-D (a waveform's first layers, a decoder's last transposed layer), one in
# 2-D (a grayscale stem), where that product's result (N * C * taps * dy's pixels) is at most
# COL2IM_COLUMNS elements.  Measured (its time over the tiled loops', both on the same arrays,
# fastest of two rounds; float32 one / two threads, float64): 1-D, kernels 3 to 16, strides 1
# to 8, 64 to 512 output channels, one input channel 0.26-0.43 / 0.23-0.45 / 0.18-0.40
# (wav2vec 2.0's 1 -> 512 kernel 10 stride 5 on 16000 samples 2.08 -> 0.53 ms), two 0.39-0.55
# / 0.32-0.45 / 0.34-0.49, four 0.64-0.74 / 0.46-0.68 / 0.58-0.74; eight 0.72-1.01 and
# sixteen 0.93-1.16 left tiled.  2-D with one input channel (3x3 to 7x7, strides 1 and 2)
# 0.45-0.71 / 0.57-0.90 / 0.42-0.70, at batch 8 0.65 / 0.60 / 1.02; two channels 0.68-1.03 and
# three 0.93-1.12 left tiled, as is 3-D (one input channel, 3x3x3 on 32^3 and 64^3: 0.92-0.97
# for a result 27 times dy's size).  In groups (TAPS_GROUP_OUT): 2-D layers of one input
# channel a group and 16 or more outputs a group (a channel multiplier), which the tiled loops
# ran as products of one row per group and the depthwise loops do not take; as one grouped
# product for all taps (same arrays, fastest of 30, float32 one / two threads): 8 -> 512 in 8
# groups on 28x28 2.70 / 1.87 (0.58 of PyTorch's before, one thread), 4 -> 128 on 64x64 1.37 /
# 1.28, 16 -> 256 on 28x28 1.58 / 1.10, at batch 4 1.46 / 1.14, 8 -> 128 on 112x112 1.25 /
# 1.09, a 4x4 stride-4 3 -> 96 in 3 groups on 224x224 2.17 / 1.70; on 7x7 and 14x14 1.39-2.07
# / 0.75-0.97 (layers of 30 to 60 us).  Grouped 1-D layers ran slower so (0.47-0.88), as did
# those of fewer outputs a group.
TAPS_CHANNELS = 4
TAPS_GROUP_OUT = 16


def taps_suits(y_shape, w_shape, groups) -> bool:
    """Whether the input gradient of a convolution with 5-D output `y_shape` and weight
    `w_shape` runs as one product for all taps (TAPS_CHANNELS)."""
    pixels, taps = math.prod(y_shape[2:]), math.prod(w_shape[2:])
    if y_shape[2] > 1 or pixels == 1 or taps == 1:
        return False
    if w_shape[1] > (TAPS_CHANNELS if y_shape[3] == 1 else 1):
        return False
    if groups > 1 and (y_shape[3] == 1 or w_shape[0] // groups < TAPS_GROUP_OUT):
        return False
    return y_shape[0] * groups * w_shape[1] * taps * pixels <= COL2IM_COLUMNS


def taps_grad_input(dy, w, bias, dx, stride, pad, dilation, groups, num_threads):
    """The input gradient of a convolution as one product for all its taps and a scatter:
    r[n, (c, tap), p] = sum over the outputs o of c's group of w[o, c, tap] dy[n, o, p], the
    forward pass of a 1x1 convolution of dy (read in place, in groups) with w's transpose, then
    each input pixel sums the r that reach it (`direct.col2im_taps`).  The tiled loops split
    the input gradient by stride phase, each a product with a row per input channel; with one
    input channel (a waveform's first layer, a decoder's last transposed layer, a channel
    multiplier's group) their tiles ran one row in twelve and read dy once per phase
    (`taps_suits`)."""
    n, o = dy.shape[:2]
    k, og = math.prod(w.shape[1:]), o // groups
    wt = _scratch("t", (groups * k, og, 1, 1, 1), dy.dtype)
    np.copyto(wt.reshape(groups, k, og), w.reshape(groups, og, k).transpose(0, 2, 1))
    r = _scratch("c", (n, groups * k) + tuple(dy.shape[2:]), dy.dtype)
    forward(dy, wt, np.empty(0, dy.dtype), r, _ONES, _ZEROS, _ONES, groups, num_threads)
    # r's rows (g, c, tap) are those of the input channels g * Cg + c: one group's layout
    direct.col2im_taps(r, (o, dx.shape[1]) + tuple(w.shape[2:]), bias, dx, dy.shape, stride,
                       pad, dilation, num_threads)


# The 4x4 stride-2 layers (two taps a phase along each axis: a GAN generator's transposed
# layers, an encoder's downsampling) that COL2IM_SINGLE_PIXELS sends to the columns at batch 1
# go back to the tiled loops from COL2IM_PAIRS_PIXELS pixels of dy in 2-D (float32) and
# COL2IM_PAIRS_SAMPLES in 1-D (both dtypes): their four (two) phases are equal, each a grid of
# dy's size plus one, and their product ran faster than the columns' product and scatter.
# Measured (`/tmp` script calling both on the same arrays, tiled speed over the columns',
# float32 1 / 2 threads, float64): 2-D 256 -> 128 from 8x8 1.12 / 1.23 / 1.01, 512 -> 256
# 1.22 / 1.08 / 1.03, 512 -> 128 1.31 / 1.37 / 0.94, 512 -> 512 1.24 / 1.16 / 0.98,
# 1024 -> 512 1.18 / 1.17 / 0.86, 512 -> 256 from 10x10 1.09 / 1.11 / 1.08, from 12x12 1.11 /
# 1.46 / 1.03, 256 -> 128 from 14x14 1.13 / 1.23 / 1.00; 1-D 512 -> 256 from 32 samples 1.36 /
# 1.70 / 1.19, from 64 1.01 / 1.33 / 1.56, from 128 1.20 / 1.46 / 1.25, 1024 -> 512 from 100
# 1.21 / 1.23 / 1.06, 512 -> 512 from 196 1.17 / 1.21 / 0.99.  Left as columns: 2-D from 7x7
# 0.96 / 1.19 / 1.00, from 6x6 0.95 / 1.21 / 0.94, from 4x4 0.69 / 0.67 / 0.60, float64 in 2-D
# (0.86-1.08), 1-D from 16 samples 0.93 / 1.08 / 1.27, 6x6 stride 3 from 8x8 0.84 / 0.89 /
# 0.87 (nine phases), 3x3 stride 2 (uneven phases: from 7x7 0.79-0.90, from 14x14 1.00-1.10,
# float64 0.86-0.89).
COL2IM_PAIRS_PIXELS = 64
COL2IM_PAIRS_SAMPLES = 32


def _input_on_tiles(dx_shape, w_shape, dy_shape, stride, pad, dilation, groups,
                    itemsize) -> bool:
    """Whether col2im_grad_input hands an input gradient to the tiled loops: a 3-D one of
    little junk or on pixel tiles, a 1-D or 2-D one of 4x4 stride 2 (COL2IM_PAIRS_PIXELS)."""
    geometry = (dx_shape, w_shape, dy_shape, stride, pad, dilation, groups, itemsize)
    pixels = math.prod(dy_shape[2:])
    per_pixel = COL2IM_WEIGHT_PIXELS if itemsize <= 4 else COL2IM_WEIGHT_PIXELS_F64
    if math.prod(w_shape) >= per_pixel * dy_shape[0] * pixels:
        return False
    if dx_shape[2] == 1:
        axes = [(k, s) for k, s in zip(w_shape[3:], stride[1:]) if k > 1 or s > 1]
        least = COL2IM_PAIRS_SAMPLES if len(axes) == 1 else COL2IM_PAIRS_PIXELS
        return (dy_shape[0] == 1 and len(axes) > 0 and all(k == 4 and s == 2 for k, s in axes)
                and pixels >= least and (len(axes) == 1 or itemsize <= 4))
    return (tiled.uses_pixel_tiles("input", *geometry) or (
        max(stride) == 1 and tiled.grid_waste("input", *geometry) < COL2IM_TILED_WASTE))


# The weight gradient as columns (im2col_grad_weight) where the tiled loops' reductions are
# short: on images of one output pixel, and where the images' output pixels all together
# (N * P, the product's reduction) are at most IM2COL_REDUCTION for kernels of IM2COL_TAPS taps
# or more on images of at most IM2COL_PIXELS output pixels; with one group (the columns'
# product has a row per output channel: groups of few make it weak), columns of at least
# IM2COL_WIDTH elements (input channels times taps: the product's width) and at most
# COL2IM_COLUMNS elements in all.  Measured on the layers of the networks suite against the
# tiled loops, float32, 1 / 2 threads: squeeze-and-excitation layers on 1x1 images 1.8-9x /
# 1.8-6x at batch 16, 1.6-4.9x / 1.6-4.2x at batch 1; a GAN's dense first layer (4x4 taps
# to 1x1) at batch 32 12x / 11x; 3x3 on 7x7 with 512 channels 1.8x / 1.7x at batch 1, 1.4x /
# 1.4x at batch 8; 3x3x3 on 4x4x4 1.7-2.1x / 1.3-1.9x; a GAN's 4x4 stride-2 layer onto 4x4
# 1.7-2.9x / 1.4-2.1x.  Below 1, so left to the tiled loops: 1x1 layers on 7x7 (0.6-0.9 at
# batch 16; at batch 1 1.1-1.5 on one thread but 0.8-1.0 on two for fewer than 512 output
# channels), 3x3 on 14x14 at batch 8 and more, 32 groups of 32 on 7x7 (0.6-0.9), 4x4 taps
# onto 8x8 at batch 32 (0.9), 1x1 on 1x1 with columns of 10-20 (0.7-1.0).
IM2COL_REDUCTION = 512
# 1x1 weight gradients with one group over at most IM2COL_OUTER_PIXELS output pixels in all, of
# at least IM2COL_OUTER_ROWS output channels and no fewer than input channels, take the
# columns too (`outer_suits`).  The tiled loops reduce such a short sum in one step into dw's
# transpose, (input channel, output channel) tiles, and then transpose the whole of dw (4 M
# elements for 2048 -> 2048 on 7x7, 40 % of that pass, which two threads did not speed up);
# the columns' product puts output channels on its rows and stores dw as it is.  Measured
# (tiled time over the columns', float32, one / two threads): 2048 -> 2048 on 7x7 at batch 1
# 1.27 / 2.45, at batch 2 1.18 / 1.23; 1024 -> 2048 1.20 / 1.40, from 14x14 at stride 2
# 1.15 / 1.33; 512 -> 2048 1.45 / 1.41, at batch 4 1.10 / 1.16; 256 -> 1024 on 14x14 1.19 /
# 1.09, 512 -> 1024 1.03 / 1.0; 112 -> 672 on 14x14 1.19 / 1.06-1.24; 160 -> 960 on 7x7
# 1.17 / 1.06-1.11; 128 -> 512 on 7x7 1.16 / 0.95-0.98; 512 -> 1024 from 28x28 at stride 2
# 1.16 / 1.09-1.15 (two threads: the fastest of runs that differed by up to 30 %).  Left to
# the tiled loops: fewer output channels than input channels (2048 -> 512 at batch 4 0.96 /
# 0.78, 1024 -> 256 on 14x14 0.84 / 0.73, 672 -> 112 0.89 / 0.73).  Since the tiled loops can
# put the output channels on their tile rows too (their `dy rows` plan: no transpose), those
# that choose it keep such a gradient (`_tiled_rows`); measured again then (tiled time over the
# columns', float32 one / two threads, `tiled.grad_weight` and `im2col_grad_weight` on the same
# arrays, fastest of 2 x 300 calls): with `dy rows` 96 -> 576 on 14x14 0.76 / 0.60, 160 -> 960
# on 7x7 0.87 / 0.67, 128 -> 512 0.70 / 0.47, 192 -> 1152 0.87 / 0.64, 320 -> 1280 0.96 /
# 0.82, 256 -> 1024 on 14x14 0.88 / 0.81, 512 -> 1024 0.81 / 0.69, 1024 -> 2048 on 7x7 0.74 /
# 0.91, 512 -> 2048 0.97 / 0.78, 512 -> 1024 from 28x28 at stride 2 0.93 / 0.83, but 1024 ->
# 2048 from 14x14 at stride 2 1.19 / 1.07; without (kept as columns) 2048 -> 2048 on 7x7 1.61
# / 1.42, at batch 2 1.26 / 1.24, 512 -> 2048 at batch 4 1.29 / 1.26, 960 -> 960 1.02 / 1.16,
# but 112 -> 672 on 14x14 0.86 / 0.93 and 576 -> 576 0.90 / 0.80.  Float64 alike (with `dy
# rows` 0.75-1.06 one thread, 0.53-0.96 two; without 1.12-1.92 / 1.01-1.54).  Since "dy
# rows" is chosen also where it takes one step as the rows k would (ROWS_K_COST): 2048 ->
# 2048 on 7x7 1.02 / 0.98 (float64 0.71), 960 -> 960 0.93 / 0.76 (0.86), 576 -> 576 on 14x14
# 0.85 / 0.85 (0.89), 1024 -> 2048 0.98 / 0.98 (0.96).  Nor with fewer
# than IM2COL_OUTER_CIN input channels, the columns of that product (tiled time over the
# columns', batch 1, float32 / float64, one thread): 112 -> 672 on 14x14 0.58-0.86 / 0.78-0.83
# (two threads 0.90), 176 -> 704 on 7x7 0.96 / 0.96, 144 -> 864 0.96; kept: 240 -> 960 on 7x7
# 1.14-1.15 / 0.99, on 14x14 1.03 / 0.86, 576 -> 576 on 14x14 1.03 / 1.04.
IM2COL_OUTER_ROWS = 512
IM2COL_OUTER_CIN = 192
IM2COL_OUTER_PIXELS = 196
IM2COL_TAPS = 8
IM2COL_PIXELS = 64
IM2COL_WIDTH = 32
IM2COL_FORWARD_REDUCTION = 128
IM2COL_FORWARD_WASTE = 2.5
IM2COL_FORWARD_WEIGHT = 3
# Up to DENSE_IMAGES images of one output pixel (and one group), the forward pass runs as dot
# products of each image's columns with each row of the weight (tiled.dense).  Measured against
# the tiled loops and against the columns' product (tiled.grad_weight with the weight as its
# input), float32 one and two threads, float64 one thread: squeeze-and-excitation layers (10
# -> 240 to 64 -> 1536 and 1536 -> 64 channels, 100 -> 512) at batch 1 1.7-4.8x and 2.7-4.2x;
# batch 2 to 8 1.4-11x and 1.15-3.9x; at batch 16 and 32 the columns' product is the faster
# (0.35-0.96 for 64 -> 1536 and 100 -> 512, 1.15-2.6 only for narrow outputs).
DENSE_IMAGES = 8


# Results of ALIGN_BYTES or more start on a cache line (64 bytes), where NumPy's allocator (malloc)
# gives 16: the tiles' vectors along a row of the output, and the next layer's loads of it as
# a source read in place, then never cross a line.  1x1 layers at batch 1 (float32, one thread,
# tiled loops on the same arrays, aligned against 16 bytes past a line): 24 -> 144 on 56x56
# forward 1.27x, 144 -> 24 input gradient 1.27x; 3x3 layers, which stage their source, the same.
ALIGN_BYTES = 1 << 16


def empty(shape, dtype) -> np.ndarray:
    """np.empty(shape, dtype), on a 64-byte boundary where it holds ALIGN_BYTES or more (then
    a view of a slightly larger buffer), from 1 MiB on in a buffer that a freed result of
    about its size left behind where there is one (`direct.pooled_empty`)."""
    dtype = np.dtype(dtype)
    if math.prod(shape) * dtype.itemsize < ALIGN_BYTES:
        return np.empty(shape, dtype)
    return direct.pooled_empty(shape, dtype)


def _scratch(name, shape, dtype):
    """An array of this shape in scratch kept across calls by the calling Python thread
    (`tiled._workspace`): the columns are up to COL2IM_COLUMNS elements, and a new array on
    every call costs its page faults on every call where the allocator hands it back to the
    system in between (a 3x3 layer with 512 channels on 14x14 at batch 1: 3.5 MiB of columns).
    Names: "c" the columns, "r" the rows of the products, "t" the transposed weight of
    `taps_grad_input`; the loops keep their own ("a", "f", "i", "p", "s", "w", "x").  The
    products these paths call on them are 1x1 convolutions whose own choice (`choose`) never
    takes columns again, but as dot products of one output pixel, which need none."""
    n = math.prod(shape)
    return tiled._workspace(name, dtype, n)[:n].reshape(shape)


def _dense_products(n, pixels, groups) -> bool:
    """Whether the columns' product of `n` images of `pixels` output pixels in `groups`
    groups runs as one of the small dense products (`tiled.dense` for the forward pass,
    `tiled.dense_input`, `tiled.dense_weight`): one pixel, one group, at most DENSE_IMAGES
    images."""
    return pixels == 1 and groups == 1 and n <= DENSE_IMAGES


def one_pixel(y_shape, w_shape, groups) -> bool:
    """Whether a convolution with 5-D output `y_shape` and weight `w_shape` has one output
    pixel per image, one group and at most DENSE_IMAGES images (and columns of at most
    COL2IM_COLUMNS elements): its forward pass runs as dot products (`tiled.dense`), its
    gradients as columns, their products `tiled.dense_input` and `tiled.dense_weight`, and
    never on the direct loops, whatever its size.  Measured on squeeze-and-excitation layers at
    batch 1 (32->8 to 10->240 channels, float32 one thread), the direct loops against the
    columns: forward 1.6-9x, input gradient 1.2-7x, weight gradient 1.2-7x slower.  The two
    products against the general one they replace (w or the columns read as an image of K
    pixels, staged), float32 one thread, 4 -> 96 to 48 -> 1152 channels and back at batches 1
    to 8: input gradient 1.0-1.8x, weight gradient 1.0-1.5x (28 -> 672 at batch 1 14.8 -> 8.3
    and 12.6 -> 8.0 us, 1152 -> 48 11.0 -> 7.5 and 14.0 -> 9.2 us)."""
    return (_dense_products(y_shape[0], math.prod(y_shape[2:]), groups)
            and y_shape[0] * math.prod(w_shape[1:]) <= COL2IM_COLUMNS)


def im2col_forward_suits(y_shape, w_shape, stride, groups) -> bool:
    """Whether the forward pass of a convolution with 5-D output `y_shape`, weight `w_shape` and
    `stride` runs from columns (`im2col_forward`).  With one output pixel per image and one group:
    up to DENSE_IMAGES images always (as dot products, tiled.dense), more where the columns have at
    least IM2COL_WIDTH elements.  Measured against the tiled loops on the networks suite (1 and 2
    threads, both dtypes): squeeze-and-excitation layers on 1x1 images 1.3-6x at batch 16; a GAN's
    dense first layer 8-16x at batch 32; batches with columns of 4-10 left to the tiled loops
    (0.6-0.9).  With more output pixels, where the weight gradient runs as columns
    (`im2col_suits`): where the staged grid is IM2COL_FORWARD_WASTE times the output or more
    (the tiled loops would compute mostly padding), in 3-D and at stride 1 in 1-D and 2-D only
    for a batch of fewer than IM2COL_FORWARD_REDUCTION output pixels in all (from there pixel
    tiles skip that padding, `_flat_batch`: 3x3 on 2x2 with 256 channels at batch 64 1.51x,
    512 channels 1.05x, 3x3 on 3x3 at batch 16 1.25x, 5x5 on 4x4 at batch 16 1.45x, 4x4
    outputs from 1x1 inputs padded by 3 at batch 32 5x; float64 0.93-1.07; on two threads
    0.98-1.7x; the input gradient's COL2IM_WASTE_ANY alike 1.13-1.45x, two threads 1.07-1.46x),
    and for a batch of images whose weight has IM2COL_FORWARD_WEIGHT
    times as many rows as the batch has output pixels, where the batch has
    IM2COL_FORWARD_REDUCTION of them or the convolution is strided: the tiled loops then pack a
    weight larger than their product's other operand, which the columns' product reads in
    place.  Measured (columns' time over the tiled loops', float32 1 / 2 threads, float64;
    below 1 the columns are faster): 3x3x3 on 4x4x4 at batch 1 0.83 / 1.0 / 0.80 (256
    channels 0.74 / 0.84 / 0.76), 4x4 stride-2 layers from 4x4 and 8x8 (a GAN's discriminator)
    at batches 2 to 16 0.47-0.86, 3x3 on 7x7 with 1024 channels at batch 8 0.92-0.93.  Left to
    the tiled loops, whose pixel tiles skip the taps that read padding: 3x3x3 on 4x4x4 with 128
    channels at batches 2 and 8 1.06-1.30 and 1.44-1.60, 3x3 on 6x6 with 256 channels at batch 8
    1.06-1.13, 3x3 on 7x7 with 512 channels at batch 2 (whose tiled product reads the weight in
    place) 1.03-1.11, 3x3 stride 2 from 14x14 1.0-1.2; about even: 3x3 on 7x7 with 512 channels
    at batches 4 and 8 0.94-1.04.  IM2COL_FORWARD_WEIGHT was 2 until the pixel tiles grouped
    the pixels of several images (PIX_SPAN): then (float32 1 / 2 threads, float64) 3x3x3 on 4x4x4
    at batch 2 128 -> 256 1.24 / 1.16 / 1.30 and 256 -> 256 1.06 / 1.14 / 1.23, 256 -> 512 at
    batch 3 1.07 / 1.12 / 1.20, 3x3 on 7x7 at batch 8 512 -> 1024 1.04 / 1.10 / 1.08 and at
    batch 4 512 -> 512 1.05 / 1.05 / 1.04 ran faster tiled; with 3, the columns keep 3x3x3 on
    4x4x4 at batch 2 256 -> 512 0.97 / 0.96 / 1.16 and 512 -> 512 0.94 / 0.89 / 1.16, and 3x3 on
    7x7 with 1024 channels at batch 4 0.95 / 0.97 / 1.01; at batch 8 (0.97 / 0.96 / 0.97) and
    a 4x4 stride-2 layer from 8x8 at batch 16 (0.99) now run tiled."""
    if one_pixel(y_shape, w_shape, groups):
        return True
    images, pixels = y_shape[0], math.prod(y_shape[2:])
    if not im2col_suits(y_shape, w_shape, groups):
        return False
    if pixels == 1:
        return True
    few = images * pixels < IM2COL_FORWARD_REDUCTION
    if ((few or (y_shape[2] == 1 and not _flat_batch(y_shape, stride)))
            and _grid(y_shape, w_shape, stride) >= IM2COL_FORWARD_WASTE * pixels):
        return True
    if few and max(stride) == 1:
        return False
    return (images > 1
            and w_shape[0] // groups >= IM2COL_FORWARD_WEIGHT * images * pixels)


# The weight gradient of a 3-D layer of IM2COL_VOLUME_PIXELS output pixels an image or more
# (4x4x2, 4x4x4) with at most IM2COL_VOLUME_CHANNELS input and output channels runs on the
# tiled loops even where `im2col_suits` holds (the forward pass, which follows im2col_suits,
# keeps the columns there): gathering the columns (`direct.im2col`) was a quarter to a third
# of that gradient (317 of 1164 us for 128 -> 128 3x3x3 on 4x4x4 at batch 2), and the tiled
# loops have since learnt to share their padding's zeros.  Measured (tiled time over the
# columns', `tiled.grad_weight` and `im2col_grad_weight` in one process on the same arrays,
# fastest of three rounds, 3x3x3 at batches 1, 2 and 4), float32 one / two threads, float64,
# AVX2: 64 channels on 4x4x4, 3x4x4 and 2x4x4 0.52-0.66 / 0.45-0.57 / 0.61-0.97 / 0.67-0.77;
# 128 0.68-0.96 / 0.61-1.10 / 0.81-1.36 / 0.79-1.02; 64 -> 128 and 128 -> 64 0.56-0.79 /
# 0.50-0.78 / 0.64-1.05.  Left as columns: 192 channels (1.05-1.67 on one thread, float64
# 1.03-1.84), 256 -> 128 (0.78-1.25, float64 0.90-1.35), 128 -> 256 (0.92-1.32), and volumes
# of fewer pixels (3x3x3 with 128 channels 1.03-1.20, 2x2x2 1.11-1.26, float64 1.2-2.0).
IM2COL_VOLUME_PIXELS = 32
IM2COL_VOLUME_CHANNELS = 128


def im2col_weight_suits(y_shape, w_shape, groups) -> bool:
    """Whether the weight gradient runs as columns by `im2col_suits`: all but the 3-D layers
    of IM2COL_VOLUME_PIXELS and few channels."""
    return im2col_suits(y_shape, w_shape, groups) and not (
        y_shape[2] > 1 and math.prod(y_shape[2:]) >= IM2COL_VOLUME_PIXELS
        and max(w_shape[0], w_shape[1]) <= IM2COL_VOLUME_CHANNELS)


def im2col_suits(y_shape, w_shape, groups) -> bool:
    """Whether the weight gradient of a convolution with 5-D output `y_shape` (of dy) and
    weight `w_shape` runs as columns: by the output pixels per image, the length of the
    reduction (images times output pixels), the kernel's taps and the columns' width."""
    pixels, taps = math.prod(y_shape[2:]), math.prod(w_shape[2:])
    reduction, width = y_shape[0] * pixels, w_shape[1] * taps
    if groups != 1 or reduction * width > COL2IM_COLUMNS:
        return False
    if reduction == 1:      # an outer product: 4->96 to 10->240 1.3-1.8x, 20->480 0.9x
        return True
    if width < IM2COL_WIDTH:
        return False
    return pixels == 1 or (
        reduction <= IM2COL_REDUCTION and taps >= IM2COL_TAPS and pixels <= IM2COL_PIXELS
        and (y_shape[2] > 1 or w_shape[0] >= FLAT_COLUMNS_OUT))


# The weight gradient of a 1x1 layer of one group with 9 to 16 input channels (those of the
# depthwise loops' weight gradient, `dw_suits`) over large images, LONG_SUMS_PIXELS output
# pixels an image or more, at most LONG_SUMS_IMAGES of them, runs on the tiled loops
# (`long_sums`): a segmentation network's last layer, 16 channels to a few classes.  The
# depthwise loops take an image a work item, so one image ran on one thread; the tiled loops cut
# the sums into chunks, and their output-rows tile reads few output channels' dy in place.
# Measured (depthwise time over tiled, float32, one / two threads): 16 -> 2 on 64^3 at batch
# 1 1.57-2.3 / 5.6, at batch 2 1.13 / 1.34, on 48^3 at batch 2 0.93 / 1.62, on 128^3 1.57 /
# 2.66; 16 -> 4 on 64^3 1.29 / 4.0; 12 -> 3 1.41 / 4.0; 16 -> 2 on 112x112 1.28 / 1.9, on
# 64x64 1.33, 96x96 1.06; float64 on 64^3 1.22.  Left to the depthwise loops: 8 channels and
# fewer (8 -> 1 on 112x112 0.81, 4 -> 2 on 64^3 0.65), 8 images of 112x112 (0.68), 3x3
# kernels (16 -> 2 3x3x3 on 64^3 0.90), groups (4 -> 2 in 8 groups on 112x112 0.31).
LONG_SUMS_PIXELS = 4096
LONG_SUMS_IMAGES = 2


# The forward pass of a 1x1 layer of one group to one to four output channels (HEAD_OUT: a
# segmentation network's last layer, to a few classes; an image-to-image network's to RGB),
# stride 1, runs as `tiled.stream_forward`: each image's channels are the rows of a product of
# one, two or four rows of the weight (three as two and one), streamed four at a time through
# a block of pixels whose sums stay in L1 (`lc_stream`).  The tiled loops' tiles have few
# rows there and read a short run of every input channel at once; the depthwise loops (few
# input channels) and the chunks of pixels that ran one output channel from 128x128 on (the
# former `direct.head_forward`, built for the baseline instruction set only) read x at half
# the speed or less.  Measured (their time over stream_forward's, same arrays, fastest of ten;
# float32 one / two threads, float64 one thread): one and two output channels, tiled, 16 to
# 256 input channels on 32x32 to 256x256, 32^3 and 16^3, batch 1 to 16, 1.55-3.6 / 1.56-6.0
# / 1.34-3.1; the chunks 1.18-1.88 / 1.15-2.27 / 1.12-2.10; the depthwise loops (1 and 2 ->
# 1 and 2 on 256x256 and 512x512) 1.52-1.87 / 2.03-2.48 / 1.28-1.72; three and four output
# channels, tiled, 8 to 256 inputs on 32x32 to 512x512 and 32^3, 0.96-2.61 / 0.81-3.19 /
# 0.78-1.97 (the lowest 64 -> 3 on 256x256, x read twice for three outputs, and 256 -> 3 on
# 32x32 in float64).  Images of fewer than HEAD_OUT_PIXELS pixels stay on the tiled loops:
# 512 -> 4 and 1024 -> 4 on 16x16 in float64 on two threads 0.56-0.63 (blocks of 1 KiB of
# each row), float32 1.0-1.6.
HEAD_OUT = 4
HEAD_OUT_PIXELS = 1024


def head_suits(y_shape, w_shape, stride, groups) -> bool:
    """Whether the forward pass of a convolution with 5-D output `y_shape` and weight
    `w_shape` runs as `head_forward` (HEAD_OUT, HEAD_OUT_PIXELS)."""
    return (groups == 1 and w_shape[0] <= HEAD_OUT and math.prod(w_shape[2:]) == 1
            and max(stride) == 1 and math.prod(y_shape[2:]) >= HEAD_OUT_PIXELS)


def head_forward(x, w, bias, y, stride, pad, dilation, groups, num_threads):
    """The forward pass of a 1x1 convolution to one to four output channels with x's rows
    streamed (`tiled.stream_forward`); with padding (an output larger than x, whose border is
    the bias alone) on the tiled loops."""
    if any(pad):
        tiled.forward(x, w, bias, y, stride, pad, dilation, groups, num_threads)
    else:
        tiled.stream_forward(x, w, bias, y, num_threads)


# The weight gradient of a 1x1 layer of one group to at most HEAD_WEIGHT_OUT output channels
# over HEAD_PIXELS output pixels an image or more, where the depthwise loops would take it (few
# input channels: `dw_suits`), runs as `tiled.head_weight`: dot products over chunks of an
# image's pixels, added in the chunks' order.  The depthwise loops' weight gradient takes an
# image a work item and ran at a third of PyTorch's speed on one thread (8 -> 1 on 512x512
# 0.31, 16 -> 1 on 256x256 at batch 4 0.58).  Measured (its time over the depthwise loops',
# same arrays, fastest of two rounds; float32 one / two threads, float64): 2 -> 1, 4 -> 1 and 8
# -> 1 on 512x512 0.32-0.36 / 0.19-0.22 / 0.31-0.35, 8 -> 2 on 256x256 at batch 2 0.78 / 0.58
# / 0.81, 16 -> 1 at batch 4 0.61 / 0.55 / 0.71, 8 -> 1 on 128x128 at batch 8 0.89 / 0.91 /
# 0.98, 8 -> 3 and 8 -> 4 on 512x512 0.57-0.92 / 0.37-0.49 / 0.66-0.81, 4 -> 3 on 256x256 at
# batch 2 0.94 / 0.70 / 0.94.  Not where more output channels share each chunk (8 -> 8 1.27,
# 4 -> 4 on 112x112 1.51) or the images are small (8 -> 2 on 64x64 at batch 16 1.76), nor in
# place of the tiled loops (16 -> 3 on 256x256 and 64^3 1.2-1.6; `long_sums`).  Those sums
# were scalar loops built for the baseline instruction set; as vector dot products in each
# build (`tiled.head_weight`, `lc_dots`), old / new through conv2d_weight, fastest of two
# alternating runs, float32 one / two threads: 8 -> 1 to 2 -> 4 on 256x256 and 512x512 at
# batch 1 to 4 1.09-2.34 / 0.99-2.35.
HEAD_WEIGHT_OUT = 4
HEAD_PIXELS = 1 << 14


def head_weight_suits(y_shape, w_shape, stride, groups) -> bool:
    """Whether a weight gradient that the depthwise loops would take runs as `head_weight`
    (HEAD_WEIGHT_OUT, HEAD_PIXELS)."""
    return (groups == 1 and w_shape[0] <= HEAD_WEIGHT_OUT and math.prod(w_shape[2:]) == 1
            and max(stride) == 1 and math.prod(y_shape[2:]) >= HEAD_PIXELS)


def head_weight(x, dy, dw, stride, pad, dilation, groups, num_threads):
    """The weight gradient of a 1x1 convolution of few output channels by chunks of pixels
    (`tiled.head_weight`); with padding (which `choose` does not see) on the depthwise
    loops."""
    if any(pad):
        tiled.dw_grad_weight(x, dy, dw, stride, pad, dilation, groups, num_threads)
    else:
        tiled.head_weight(x, dy, dw, num_threads)


def long_sums(y_shape, w_shape, groups) -> bool:
    """Whether the weight gradient of a convolution with 5-D output `y_shape` and weight
    `w_shape` is one of LONG_SUMS_PIXELS' long sums that the tiled loops run faster than the
    depthwise loops."""
    return (groups == 1 and math.prod(w_shape[2:]) == 1 and 8 < w_shape[1] <= 16
            and y_shape[0] <= LONG_SUMS_IMAGES
            and math.prod(y_shape[2:]) >= LONG_SUMS_PIXELS)


def outer_suits(y_shape, w_shape, stride, groups) -> bool:
    """Whether the weight gradient of a 1x1 convolution with 5-D output `y_shape` and weight
    `w_shape` runs as columns because it is a short sum of outer products into a dw of many
    rows (IM2COL_OUTER_ROWS and IM2COL_OUTER_PIXELS) from IM2COL_OUTER_CIN input channels or
    more that the tiled loops would write transposed (not `_tiled_rows`)."""
    return (groups == 1 and math.prod(w_shape[2:]) == 1
            and y_shape[0] * math.prod(y_shape[2:]) <= IM2COL_OUTER_PIXELS
            and w_shape[0] >= max(IM2COL_OUTER_ROWS, w_shape[1])
            and w_shape[1] >= IM2COL_OUTER_CIN
            and not _tiled_rows(y_shape, w_shape, stride))


def _tiled_rows(y_shape, w_shape, stride) -> bool:
    """Whether the tiled loops' weight gradient of a 1x1 convolution (one group, no padding)
    puts the output channels on its tile rows (`tiled.weight_plan`'s "dy rows") and so writes
    dw as it is: asked of the smallest input that gives `y_shape`, in float32 and in float64
    (`choose` picks the loops for every dtype and input size at once; 2048 -> 2048 on 7x7 at
    batch 2 takes "dy rows" in float32 only, and in float64 ran 1.84 times as long as the
    columns, in float32 as long)."""
    x_shape = tuple(y_shape[:1]) + (w_shape[1],) + tuple(
        (n - 1) * s + 1 for n, s in zip(y_shape[2:], stride))
    return all(tiled.weight_plan(x_shape, tuple(w_shape), tuple(y_shape), tuple(stride),
                                 _ZEROS, _ONES, 1, itemsize)["dy rows"] for itemsize in (4, 8))


def _dense(size, kernel, out, pad, dilation, groups) -> bool:
    """Whether a single window covers each whole image, none of it padding (a dense layer
    written as a convolution): then the columns of the images are the images themselves."""
    return (groups == 1 and math.prod(out) == 1 and tuple(size) == tuple(kernel)
            and not any(pad) and tuple(dilation) == _ONES)


def _columns(x, w_shape, y_shape, stride, pad, dilation, groups, num_threads):
    """The columns of x, (G * N * P, Cg * taps): x itself where `_dense`, else gathered
    (`direct.im2col`)."""
    k = math.prod(w_shape[1:])
    if _dense(x.shape[2:], w_shape[2:], y_shape[2:], pad, dilation, groups):
        return x.reshape(-1, k)
    cols = _scratch("c", (groups * y_shape[0] * math.prod(y_shape[2:]), k), x.dtype)
    direct.im2col(x, w_shape, y_shape, stride, pad, dilation, groups, cols, num_threads)
    return cols


def im2col_grad_weight(x, dy, dw, stride, pad, dilation, groups, num_threads):
    """The weight gradient as a matrix product of dy with the columns of x (im2col).  With
    cols[(g, n, p), (c, tap)] the value tap reads for output pixel p of image n (`_columns`),
    dw[g * Og + o, (c, tap)] = sum over (n, p) of dy[n, g * Og + o, p] cols[(g, n, p), (c, tap)]:
    a 1x1 convolution, in groups, of the columns read as an image of Cg * taps pixels with
    G * N * P channels, with dy read as its weight (rows o, columns (n, p))."""
    n, o = dy.shape[:2]
    k = math.prod(dw.shape[1:])
    pixels = math.prod(dy.shape[2:])
    cols = _columns(x, dw.shape, dy.shape, stride, pad, dilation, groups, num_threads)
    if _dense_products(n, pixels, groups):      # dw = sum of dy[n] cols[n] (dense_weight)
        tiled.dense_weight(cols.reshape(n, k), dy.reshape(n, o), dw.reshape(o, k), num_threads)
        return
    rows = _scratch("r", (o, n, pixels), x.dtype)
    np.copyto(rows, dy.reshape(n, o, pixels).transpose(1, 0, 2))
    rows = rows.reshape(o, n * pixels, 1, 1, 1)
    forward(cols.reshape(1, -1, 1, 1, k), rows, np.empty(0, x.dtype),
            dw.reshape(1, o, 1, 1, k), _ONES, _ZEROS, _ONES, groups, num_threads)


def im2col_forward(x, w, bias, y, stride, pad, dilation, groups, num_threads):
    """The forward pass of a convolution with one group from the columns of x (`_columns`,
    a row per (image, output pixel)): r[(n, p), o] = sum over (c, tap) of cols[(n, p),
    (c, tap)] w[o, (c, tap)], both operands read along their rows, which is the weight
    gradient's product: of a 1x1 convolution of one image whose pixels are the (c, tap), from
    w read as the input (O channels) to the columns read as the output gradient (N * P
    channels).  With one output pixel per image r is y; else y[n, o, p] = r[(n, p), o]."""
    n, o = y.shape[:2]
    k = math.prod(w.shape[1:])
    pixels = math.prod(y.shape[2:])
    cols = _columns(x, w.shape, y.shape, stride, pad, dilation, groups, num_threads)
    if _dense_products(n, pixels, groups):      # y[n, o] = cols[n] . w[o] (tiled.dense)
        tiled.dense(cols.reshape(n, k), w.reshape(o, k), y.reshape(n, o), num_threads)
    else:
        rows = y if pixels == 1 else _scratch("r", (n * pixels, o), y.dtype)
        grad_weight(w.reshape(1, o, 1, 1, k), cols.reshape(1, n * pixels, 1, 1, k),
                    rows.reshape(n * pixels, o, 1, 1, 1), _ONES, _ZEROS, _ONES, 1,
                    num_threads)
        if pixels > 1:
            y.reshape(n, o, pixels)[...] = rows.reshape(n, pixels, o).transpose(0, 2, 1)
    if bias.shape[0]:
        y += bias.reshape(1, -1, 1, 1, 1)


class Loops(NamedTuple):
    """The loops chosen for one problem: `family` (`direct` or `tiled`, which decides the
    threads) and the function of each pass."""
    family: ModuleType
    forward: Callable[..., None]
    grad_input: Callable[..., None]
    grad_weight: Callable[..., None]


def choose(y_shape, w_shape, stride, groups) -> Loops:
    """The loops for a convolution with output (N, O, *spatial) `y_shape`, weight (O, C // groups,
    *kernel) `w_shape`, a 3-D `stride` and `groups`: the one place where they are chosen.  Small
    problems (`direct_suits`) run on the direct loops, except those of one output pixel
    (`one_pixel`); larger ones on the tiled loops, except the passes that the depthwise loops do
    faster (`dw_suits`: by the channels per group, the output size and whether the convolution is
    strided), and those that run as columns: input gradients whose phase-split grids would be
    mostly padding or that come from one output pixel (`col2im_suits`) or that have few input
    channels (`taps_suits`: columns laid out the other way), weight gradients of short
    reductions (`im2col_weight_suits`, `outer_suits`) and forward passes to one or a few output
    pixels (`im2col_forward_suits`); 1x1 forward passes to one to four output channels with the
    input's rows streamed (`head_suits`), and weight gradients of 1x1 layers to few output
    channels of large images by chunks of pixels (`head_weight_suits`).
    Remembered per problem: the unplanned entry points below and the columns' inner products
    ask for each call."""
    key = (tuple(y_shape), tuple(w_shape), tuple(stride), groups)
    loops = _CHOSEN.get(key)
    if loops is None:
        if len(_CHOSEN) >= 1024:
            _CHOSEN.clear()
        loops = _CHOSEN[key] = _pick(*key)
    return loops


_CHOSEN: dict = {}      # choose's memory: (shapes, stride, groups) -> Loops


def _pick(y_shape, w_shape, stride, groups) -> Loops:
    if direct_suits(y_shape, w_shape) and not one_pixel(y_shape, w_shape, groups):
        return Loops(direct, direct.forward, direct.grad_input, direct.grad_weight)
    cin, cout = w_shape[1], w_shape[0] // groups
    pixels = math.prod(y_shape[2:])
    strided = max(stride) > 1

    def pick(which, tiled_fn, dw_fn):
        return dw_fn if tiled.dw_suits(cin, cout, pixels, strided, which) else tiled_fn

    grad_input = pick(1, tiled.grad_input, tiled.dw_grad_input)
    forward_fn = pick(0, tiled.forward, tiled.dw_forward)
    if head_suits(y_shape, w_shape, stride, groups):
        forward_fn = head_forward
    elif forward_fn is tiled.forward and im2col_forward_suits(y_shape, w_shape, stride, groups):
        forward_fn = im2col_forward
    if grad_input is tiled.grad_input and taps_suits(y_shape, w_shape, groups):
        grad_input = taps_grad_input
    elif grad_input is tiled.grad_input and col2im_suits(y_shape, w_shape, stride, groups):
        grad_input = col2im_grad_input
    grad_weight = (tiled.grad_weight if long_sums(y_shape, w_shape, groups)
                   else pick(2, tiled.grad_weight, tiled.dw_grad_weight))
    if grad_weight is tiled.dw_grad_weight and head_weight_suits(y_shape, w_shape, stride,
                                                                groups):
        grad_weight = head_weight
    if grad_weight is tiled.grad_weight and (im2col_weight_suits(y_shape, w_shape, groups)
                                            or one_pixel(y_shape, w_shape, groups)
                                            or outer_suits(y_shape, w_shape, stride, groups)):
        grad_weight = im2col_grad_weight
    return Loops(tiled, forward_fn, grad_input, grad_weight)


def _threads(loops, num_threads):
    """The thread count for `loops`: the direct loops run small problems on one thread."""
    global started_threads
    if loops is direct:
        return 1
    if num_threads > 1:
        started_threads = True
    return num_threads


# ---------------------------------------------------------------------------------------------
# Taps that read only padding.  Where the input is small against the kernel's reach (a video
# network's last stages, one or two frames deep under 3x3x3 kernels; a dilated layer on a map
# smaller than its rate), some taps read padding for every output pixel.  Their products are
# zeros in the forward pass and the input gradient, and their weight gradient is zero, so the
# passes run on the kernel without them.  A residual 3x3x3 layer of 512 channels on 1x7x7 at
# batch 4 read a third of its weight: the columns held three times the products.  But the
# kept taps are a copy of the weight (kept_weight), which costs about as much as a pass over
# few pixels: the copy reads the kept share of the weight, all of it where the last axis is
# trimmed (its runs are then shorter than a cache line), and writes the kept share.  The taps
# are dropped where the dropped share times the output pixels of all images is at least
# TRIM_PIXELS times that (read and written, as shares of the weight).  Measured (float32,
# one thread, forward / input / weight gradient, kept taps' time over all taps'): V-Net's
# 256 -> 256 5x5x5 on 4x4x2 (2 of 5 taps along the last axis dropped, 32 pixels an image:
# 12.8 / 1.6) at batch 1 2.1 / 1.4 / 2.3, batch 2 1.76 / 1.61 / 1.15, batch 3 1.29 / 1.46 /
# 1.04, batch 4 0.74 / 0.94 / 1.15; 512 -> 512 3x3x3 on 1x7x7 (2 of 3 taps along the first
# axis: 33 / 0.67) at batch 1 0.94 / 0.97 / 0.57, at batch 4 0.85 / 0.84 / 0.51; on 1x4x4 and
# 1x5x5 at batch 1 (16 and 25 pixels) about even.
TRIM_PIXELS = 32


def _reading_outputs(t, size, out, stride, pad, dilation):
    """The outputs o0 <= o < o1 (o1 <= o0: none) at which tap t of an axis reads the input
    (size elements, padding `pad` before) rather than padding."""
    return (max(0, -((t * dilation - pad) // stride)),      # the first index reading >= 0
            min(out, (size - 1 + pad - t * dilation) // stride + 1))


def _reads_input(t, size, out, stride, pad, dilation) -> bool:
    """Whether tap t of an axis reads the input for some output index < out."""
    o0, o1 = _reading_outputs(t, size, out, stride, pad, dilation)
    return o0 < o1


def kept_taps(x_shape, w_shape, y_shape, stride, pad, dilation):
    """Per axis of the 5-D shapes, the range (t0, t1) of taps the passes keep: up to the last
    tap that reads the input for some output pixel, from the first that does -- or from an
    earlier one, so that the padding before, pad - t0 * dilation, stays >= 0.  None where
    every range is the whole kernel, or some axis has no tap that reads the input."""
    taps, trimmed = [], False
    for size, k, out, s, p, d in zip(x_shape[2:], w_shape[2:], y_shape[2:], stride, pad,
                                     dilation):
        used = [t for t in range(k) if _reads_input(t, size, out, s, p, d)]
        if not used:
            return None
        t0, t1 = min(used[0], p // d), used[-1] + 1
        taps.append((t0, t1))
        trimmed = trimmed or (t0, t1) != (0, k)
    return tuple(taps) if trimmed else None


def dropped_taps(x_shape, w_shape, y_shape, stride, pad, dilation):
    """kept_taps where the passes run without the other taps: where the dropped share of the
    taps times the output pixels of all images is TRIM_PIXELS times the copy's cost or more;
    else None."""
    taps = kept_taps(x_shape, w_shape, y_shape, stride, pad, dilation)
    if taps is None:
        return None
    kept = math.prod(t1 - t0 for t0, t1 in taps) / math.prod(w_shape[2:])
    read = kept * w_shape[-1] / (taps[-1][1] - taps[-1][0])
    pixels = y_shape[0] * math.prod(y_shape[2:])
    return taps if (1 - kept) * pixels >= TRIM_PIXELS * (read + kept) else None


def trimmed(w_shape, pad, dilation, taps):
    """The weight shape, padding before and dilation of the problem without the taps outside
    `taps` (kept_taps): a kept single tap has no dilation."""
    kernel = tuple(t1 - t0 for t0, t1 in taps)
    return (tuple(w_shape[:2]) + kernel,
            tuple(p - t0 * d for p, (t0, _), d in zip(pad, taps, dilation)),
            tuple(d if k > 1 else 1 for d, k in zip(dilation, kernel)))


def kept_weight(w, taps, num_threads):
    """A C-ordered 5-D weight's kept taps (kept_taps), copied (`direct.sample`, on num_threads
    threads).  As a NumPy copy of the slice, whose runs along the last axis were a few
    elements each, V-Net's 256 -> 256 5x5x5 layer on 4x4x2 (3 of 5 taps kept along the last
    axis, 20 of the weight's 33 MB) spent 11-12 ms copying, three quarters of its forward pass
    (float32, one thread); here 9.2 ms, about what reading 33 MB and writing 20 MB take on
    one core."""
    out = empty(w.shape[:2] + tuple(t1 - t0 for t0, t1 in taps), w.dtype)
    direct.sample(w, tuple(t0 for t0, _ in taps), _ONES, out, num_threads)
    return out


def put_kept(kept, taps, dw, num_threads):
    """dw = 0 but its kept taps (kept_taps), which are `kept` (`direct.put_parts`)."""
    direct.put_parts([kept], [tuple(t0 for t0, _ in taps)], dw, num_threads)


def _trim_weight(x_shape, w, y_shape, stride, pad, dilation, num_threads):
    """The weight (5-D), padding before and dilation of the problem without the taps that read
    only padding, where dropping them pays (dropped_taps): w's kept taps copied, or w itself."""
    taps = dropped_taps(x_shape, w.shape, y_shape, stride, pad, dilation)
    if taps is None:
        return w, pad, dilation
    _, pad, dilation = trimmed(w.shape, pad, dilation, taps)
    return kept_weight(w, taps, _threads(tiled, num_threads)), pad, dilation


# Weight gradients by parts.  A weight gradient sums each tap's products over all output
# pixels, where a large dilation makes many of them read padding: DeepLab's rate-12 3x3 on a
# 28x28 map reads padding at half its (pixel, tap) pairs.  Taps whose outputs reading the input
# form the same range along an axis are summed apart from the others, over that range alone,
# as a convolution without padding along the axis; axes where taps read padding at fewer than
# SPLIT_AXIS of their pairs are kept whole.  Parts are taken where the pairs left out are
# SPLIT_SHARE or more and every part keeps SPLIT_PIXELS output pixels an image or more (smaller
# parts cost more in copies and tiles than the pairs save).  Against the whole product (one
# thread / two, float32): rate 12 on 28x28 with 1024 -> 256 channels at batch 4 1.78x / 1.26x,
# rate 6 1.23x, rate 12 on 32x32 at batch 1 1.43x; dilation 4 on 14x14 (parts of 10x10
# pixels) 1.12x / 0.90x, 3x3 on 4x4 0.76x, 7x7 on 7x7 0.86x: those stay whole.
SPLIT_AXIS = 0.1
SPLIT_SHARE = 0.25
SPLIT_PIXELS = 256


def _tap_runs(size, k, out, stride, pad, dilation):
    """The taps of an axis in runs (t0, t1, o0, o1) of consecutive taps whose outputs reading
    the input are o0 <= o < o1 (taps that read only padding in none), and the share of the
    (output, tap) pairs that read padding."""
    runs, reach = [], 0
    for t in range(k):
        o0, o1 = _reading_outputs(t, size, out, stride, pad, dilation)
        if o1 <= o0:
            continue
        reach += o1 - o0
        if runs and runs[-1][1] == t and runs[-1][2:] == (o0, o1):
            runs[-1] = (runs[-1][0], t + 1, o0, o1)
        else:
            runs.append((t, t + 1, o0, o1))
    return runs, 1 - reach / (k * out)


def weight_parts(x_shape, w_shape, y_shape, stride, pad, dilation):
    """The parts a weight gradient of these 5-D shapes is summed in, or None where it is summed
    whole: per part, the index of its taps in dw, of its outputs in dy and of its inputs in x,
    and its weight shape, padding before and dilation (a convolution of those slices)."""
    axes, reached = [], 1.0
    for size, k, out, s, p, d in zip(x_shape[2:], w_shape[2:], y_shape[2:], stride, pad,
                                     dilation):
        runs, share = _tap_runs(size, k, out, s, p, d)
        if share >= SPLIT_AXIS and runs:
            axes.append([(t0, t1, o0, o1, o0 * s - p + t0 * d,
                          (o1 - 1 - o0) * s + (t1 - 1 - t0) * d + 1, 0)
                         for t0, t1, o0, o1 in runs])
            reached *= 1 - share
        else:
            axes.append([(0, k, 0, out, 0, size, p)])
    parts = list(itertools.product(*axes))
    if len(parts) < 2 or 1 - reached < SPLIT_SHARE or min(
            math.prod(o1 - o0 for _, _, o0, o1, _, _, _ in part) for part in parts) < SPLIT_PIXELS:
        return None
    whole = (slice(None), slice(None))
    return [(whole + tuple(slice(t0, t1) for t0, t1, *_ in part),
             whole + tuple(slice(o0, o1) for _, _, o0, o1, *_ in part),
             whole + tuple(slice(i0, i0 + n) for *_, i0, n, _ in part),
             tuple(w_shape[:2]) + tuple(t1 - t0 for t0, t1, *_ in part),
             tuple(p for *_, p in part),
             tuple(d if t1 - t0 > 1 else 1 for (t0, t1, *_), d in zip(part, dilation)))
            for part in parts]


def _grad_weight_parts(x, dy, dw, parts, stride, groups, num_threads):
    """dw of x and dy summed part by part (weight_parts): each part's windows of x and dy
    copied and its taps put into dw (`direct.sample`, `direct.put_parts`) on the threads.  As
    NumPy copies (a slice made contiguous, dw zeroed and each part assigned), on one thread,
    they were a third of DeepLab's 512 -> 256 rate-12 weight gradient on 33x33 on two threads
    (3.6 of 11 ms): that gradient 1.29x faster so on two threads, 1.04-1.08x on one."""
    threads = _threads(tiled, num_threads)
    done, origins = [], []
    for w_index, y_index, x_index, w_shape, pad, dilation in parts:
        part = np.empty(w_shape, dw.dtype)
        grad_weight(_window(x, x_index, threads), _window(dy, y_index, threads), part, stride,
                    pad, dilation, groups, num_threads)
        done.append(part)
        origins.append(tuple(index.start for index in w_index[2:]))
    direct.put_parts(done, origins, dw, threads)


def _window(arr, index, num_threads):
    """arr[index] (a 5-D array, and slices of step 1: whole first two axes, windows of the
    others) as a new C-ordered array."""
    out = np.empty(arr.shape[:2] + tuple(i.stop - i.start for i in index[2:]), arr.dtype)
    direct.sample(arr, tuple(i.start for i in index[2:]), _ONES, out, num_threads)
    return out


def forward(x, w, bias, y, stride, pad, dilation, groups, num_threads):
    sampled = sampled_loops(x.shape, w.shape, y.shape, stride, pad, groups)
    if sampled is not None:     # as the plans run it (the same bits: see sampled_loops)
        threads = _threads(sampled.family, num_threads)
        sampled.forward(sampled_x(x, y.shape, stride, threads), w, bias, y, _ONES, _ZEROS,
                        _ONES, groups, threads)
        return
    w, pad, dilation = _trim_weight(x.shape, w, y.shape, stride, pad, dilation, num_threads)
    loops = choose(y.shape, w.shape, stride, groups)
    loops.forward(x, w, bias, y, stride, pad, dilation, groups,
                  _threads(loops.family, num_threads))


def grad_input(dy, w, bias, dx, stride, pad, dilation, groups, num_threads):
    w, pad, dilation = _trim_weight(dx.shape, w, dy.shape, stride, pad, dilation,
                                    num_threads)
    loops = choose(dy.shape, w.shape, stride, groups)
    loops.grad_input(dy, w, bias, dx, stride, pad, dilation, groups,
                     _threads(loops.family, num_threads))


def sampled_loops(x_shape, w_shape, y_shape, stride, pad, groups):
    """For a strided convolution with a 1x1 kernel that reads only the input's pixels at
    multiples of the stride (no padding before, none after that reaches an output), run on the
    tiled loops: the loops of the stride-1 convolution of those pixels, which the forward pass
    and the weight gradient run on a strided copy of x; else None.  The strided loops stage
    every stride phase of x and read one: with the copy, ResNet-50's 1x1 stride-2 layers'
    weight gradients 1.1-1.47x, forward passes 0.95-1.28x (mostly above 1), one and two
    threads.  The plans and the unplanned forward and grad_weight all take it, so that a pass
    has the same bits either way: the weight gradient's sums are cut by the grid the loops
    see, and the stride-1 problem may take other loops (a 4 -> 1 channel 1x1x1 layer at
    stride (1, 3, 2) streams its rows, head_forward, where the strided one runs tiled: a
    first call, unplanned, gave other bits than the calls after it)."""
    if (max(stride) == 1 or any(pad) or any(k != 1 for k in w_shape[2:])
            or any(-(-x // s) != y for x, s, y in zip(x_shape[2:], stride, y_shape[2:]))
            or choose(y_shape, w_shape, stride, groups).family is direct):
        return None
    return choose(y_shape, w_shape, _ONES, groups)


def sampled_x(x, y_shape, stride, num_threads):
    """x's pixels at multiples of the stride (`direct.sample`), the input of a sampled
    problem's loops (`sampled_loops`) whose output has y_shape."""
    x1 = empty(x.shape[:2] + tuple(y_shape[2:]), x.dtype)
    direct.sample(x, _ZEROS, stride, x1, num_threads)
    return x1


def grad_weight(x, dy, dw, stride, pad, dilation, groups, num_threads):
    sampled = sampled_loops(x.shape, dw.shape, dy.shape, stride, pad, groups)
    if sampled is not None:
        threads = _threads(sampled.family, num_threads)
        sampled.grad_weight(sampled_x(x, dy.shape, stride, threads), dy, dw, _ONES, _ZEROS,
                            _ONES, groups, threads)
        return
    parts = weight_parts(x.shape, dw.shape, dy.shape, stride, pad, dilation)
    if parts is not None:
        _grad_weight_parts(x, dy, dw, parts, stride, groups, num_threads)
        return
    taps = dropped_taps(x.shape, dw.shape, dy.shape, stride, pad, dilation)
    out = dw
    if taps is not None:
        w_shape, pad, dilation = trimmed(dw.shape, pad, dilation, taps)
        dw = np.empty(w_shape, dw.dtype)
    loops = choose(dy.shape, dw.shape, stride, groups)
    loops.grad_weight(x, dy, dw, stride, pad, dilation, groups,
                      _threads(loops.family, num_threads))
    if taps is not None:
        put_kept(dw, taps, out, _threads(tiled, num_threads))


# ---------------------------------------------------------------------------------------------
# Plans

class Plan:
    """The three passes of one checked convolution, its loops chosen once.

    Built from a `loopconv._problem.Problem` (kept as `problem`): the batched (N, C, *spatial)
    shapes of the convolution's input, weight and output (for a transposed convolution: of
    its output, weight and input), its parameters, dtype and whether the caller's input- and
    output-shaped arrays have a batch axis.  The methods take arrays of those shapes (any
    layout or dtype: they are brought to C order and the plan's dtype, without a copy when they
    already are) and return new arrays; `num_threads` is a function that gives the thread
    count of the moment (called only when the loops run threads).  Small problems run through
    `direct.Plan`, the direct loops' compiled entry, which skips the Python-level reshaping.
    """

    __slots__ = ("problem", "shapes", "five", "args", "dtype", "unbatched", "loops", "_direct",
                 "_no_bias", "_sampled", "_x_loops", "_x_args", "_taps", "_w5", "_parts",
                 "_flat")

    def __init__(self, problem):
        self.problem = problem
        self.shapes = problem.shapes
        self.five = problem.shapes5
        self.args = problem.loop_args
        self.dtype = problem.dtype
        self.unbatched = problem.unbatched
        # the problem the loops run: without the taps that read only padding (kept_taps)
        self._w5 = self.five[1]
        # the weight gradient by parts (weight_parts), of the whole problem
        self._parts = weight_parts(*self.five, *self.args[:3])
        self._taps = dropped_taps(*self.five, *self.args[:3])
        if self._taps is not None:
            w5, pad, dilation = trimmed(self._w5, self.args[1], self.args[2], self._taps)
            self.five = (self.five[0], w5, self.five[2])
            self.args = (self.args[0], pad, dilation, problem.groups)
        self.loops = choose(self.five[2], self.five[1], self.args[0], problem.groups)
        self._direct = (direct.Plan(*self.five, *self.args, self.dtype, problem.nd,
                                    problem.unbatched)
                        if self.loops.family is direct and self._taps is None else None)
        self._no_bias = np.empty(0, self.dtype)
        self._sampled = self._sampled_loops()
        # the loops and arguments of the passes that read x (forward, weight gradient), on x as
        # `_x` gives it: the stride-1 problem of the sampled pixels, or this one
        self._x_loops, self._x_args = ((self._sampled, (_ONES, _ZEROS, _ONES, problem.groups))
                                       if self._sampled is not None else (self.loops, self.args))
        self._flat = self._flat_passes()

    def _sampled_loops(self):
        """`sampled_loops` of the plan's problem (None where the direct loops run it)."""
        if self._direct is not None:
            return None
        return sampled_loops(*self.five, self.args[0], self.args[1], self.problem.groups)

    def _flat_passes(self):
        """Per pass (forward, input gradient, weight gradient): (N, K, O) where the pass is one
        of the small dense products (`_dense_products` of a `_dense` layer: the 1x1
        convolutions of a squeeze-and-excitation block, a GAN's dense first layer, at up to
        DENSE_IMAGES images), which the plan calls on its arrays reshaped to 2-D, without the
        columns' Python around them; else None.  Those layers' passes take a few microseconds,
        and so did the Python: a 24 -> 72 channel layer's forward pass at batch 1 took 9.3 us
        through the columns, 5.7 us so (float32, one thread; with the dense products' scratch
        malloc'ed rather than NumPy arrays); 960 -> 240 1.16-1.20x, 576 -> 144 at batch 8
        1.11-1.15x."""
        x5, w5, y5 = self.five
        stride, pad, dilation, groups = self.args
        if (self._direct is not None or self._sampled is not None or self._parts is not None
                or self._taps is not None or not _dense_products(y5[0], 1, groups)
                or not _dense(x5[2:], w5[2:], y5[2:], pad, dilation, groups)):
            return None, None, None
        flat = (y5[0], math.prod(w5[1:]), w5[0])
        return (flat if self.loops.forward is im2col_forward else None,
                flat if self.loops.grad_input is col2im_grad_input and not _input_on_tiles(
                    x5, w5, y5, stride, pad, dilation, groups, self.dtype.itemsize) else None,
                flat if self.loops.grad_weight is im2col_grad_weight else None)

    def _x(self, x, num_threads):
        """x as the passes that read it take it (`_x_loops`): 5-D and C-ordered, and where the
        problem is sampled, its pixels at multiples of the stride (`direct.sample`, on the
        pass's threads)."""
        x5 = self._in(x, 0)
        if self._sampled is None:
            return x5
        return sampled_x(x5, self.five[2], self.args[0], num_threads)

    def _in(self, arr, which):
        return np.ascontiguousarray(arr, dtype=self.dtype).reshape(self.five[which])

    def _flat_in(self, arr, rows, cols):
        return np.ascontiguousarray(arr, dtype=self.dtype).reshape(rows, cols)

    def _w(self, w, num_threads):
        """The weight as the loops take it: 5-D, C-ordered, its kept taps alone (copied on
        num_threads threads)."""
        if self._taps is None:
            return self._in(w, 1)
        w5 = np.ascontiguousarray(w, dtype=self.dtype).reshape(self._w5)
        return kept_weight(w5, self._taps, num_threads)

    def _out(self, which):
        out = empty(self.shapes[which], self.dtype)
        return out, out.reshape(self._w5 if which == 1 else self.five[which])

    def _result(self, out):
        return out[0] if self.unbatched else out

    def _bias(self, bias):
        return self._no_bias if bias is None else np.ascontiguousarray(bias, dtype=self.dtype)

    def forward(self, x, w, bias, num_threads):
        """conv(x, w) + bias."""
        if self._direct is not None:
            return self._direct.forward(x, w, bias)
        flat = self._flat[0]
        if flat is not None:
            n, k, o = flat
            y = np.empty(self.shapes[2], self.dtype)
            y2 = y.reshape(n, o)
            tiled.dense(self._flat_in(x, n, k), self._flat_in(w, o, k), y2,
                        _threads(tiled, num_threads()))
            if bias is not None:
                y2 += self._bias(bias)
            return self._result(y)
        y, y5 = self._out(2)
        loops = self._x_loops
        threads = _threads(loops.family, num_threads())
        loops.forward(self._x(x, threads), self._w(w, threads), self._bias(bias), y5,
                      *self._x_args, threads)
        return self._result(y)

    def grad_input(self, dy, w, bias, num_threads):
        """The input gradient of conv(x, w) for output gradient dy, plus bias (which makes it
        the transposed convolution of dy)."""
        if self._direct is not None:
            return self._direct.grad_input(dy, w, bias)
        dx, dx5 = self._out(0)
        flat = self._flat[1]
        if flat is not None:
            n, k, o = flat
            tiled.dense_input(self._flat_in(dy, n, o), self._flat_in(w, o, k), dx5.reshape(n, k),
                              _threads(tiled, num_threads()))
            if bias is not None:
                dx5 += self._bias(bias).reshape(1, -1, 1, 1, 1)
            return self._result(dx)
        threads = _threads(self.loops.family, num_threads())
        self.loops.grad_input(self._in(dy, 2), self._w(w, threads), self._bias(bias), dx5,
                              *self.args, threads)
        return self._result(dx)

    def grad_weight(self, x, dy, num_threads):
        """The weight gradient of conv(x, w) for output gradient dy."""
        if self._direct is not None:
            return self._direct.grad_weight(x, dy)
        dw, dw5 = self._out(1)
        flat = self._flat[2]
        if flat is not None:
            n, k, o = flat
            tiled.dense_weight(self._flat_in(x, n, k), self._flat_in(dy, n, o),
                               dw5.reshape(o, k), _threads(tiled, num_threads()))
            return dw
        if self._parts is not None:
            _grad_weight_parts(self._in(x, 0), self._in(dy, 2), dw5, self._parts,
                               self.args[0], self.problem.groups, num_threads())
            return dw
        kept = dw5 if self._taps is None else np.empty(self.five[1], self.dtype)
        loops = self._x_loops
        threads = _threads(loops.family, num_threads())
        loops.grad_weight(self._x(x, threads), self._in(dy, 2), kept, *self._x_args, threads)
        if self._taps is not None:
            put_kept(kept, self._taps, dw5, threads)
        return dw

    def grad_bias(self, dy):
        """dy summed over images and pixels, per channel (the direct loops' fixed order)."""
        if self._direct is not None:
            return self._direct.grad_bias(dy)
        n, o = self.five[2][:2]
        db = np.empty(o, self.dtype)
        direct.bias_grad(self._in(dy, 2).reshape(n, o, -1), db)
        return db
