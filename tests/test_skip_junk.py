"""The tiled loops where their staged grid has junk columns (between rows, planes and images):
the forward-style product as tiles of pixels by channels (`pixel_tiles` in
loopconv/_loops/tiled_product.pxi, for grids that are mostly junk: the small planes of 3-D
convolutions), compact grids, forward passes widened (a copy of x per tap along W, whose rows
are the output's), and the weight gradient summed over the valid columns only (`lc_tile_m`).
Each on chosen and random geometries of its kind, in every instruction-set variant built here,
against the reference (with and without a bias), every element written, the same bits on 1, 2
and 3 threads; which problems take it; the public functions on such problems."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import reference
from common import DTYPE_PARAMS, case, chosen_loops, conv_arrays, conv_output_shape, grouped_case
from test_depthwise import lift, loop_args

import loopconv
from loopconv import _loops

VARIANTS = _loops.variants()


def loop_geometry(x_shape, w_shape, kw):
    """The case's 5-D shapes of x, w and y, and its loop arguments (`loop_args`)."""
    y_shape = conv_output_shape(x_shape, w_shape, kw)
    five = [lift(np.empty(s, np.int8)).shape for s in (x_shape, w_shape, y_shape)]
    return (*five, *loop_args(x_shape, w_shape, kw))


def uses(module, which, x_shape, w_shape, kw, dtype):
    """Whether `module` runs pass `which` ("forward" or "input") of the case as pixel tiles."""
    return module.uses_pixel_tiles(which, *loop_geometry(x_shape, w_shape, kw),
                                   np.dtype(dtype).itemsize)


FIXED = [
    case("unet-7", (3, 24, 7, 7, 7), (32, 24, 3, 3, 3), padding=1),
    case("unet-8-batch1", (1, 32, 8, 8, 8), (128, 32, 3, 3, 3), padding=1),
    case("channels-past-a-panel", (2, 8, 6, 4, 8), (70, 8, 3, 3, 3), padding=1),
    case("several-panels", (2, 16, 4, 3, 8), (100, 16, 3, 3, 3), padding=1),
    case("groups", (2, 48, 6, 8, 8), (96, 16, 3, 3, 3), padding=1, groups=3),
    case("asym-pad-dilated", (2, 16, 7, 9, 6), (32, 16, 2, 3, 3),
         padding=((1, 0), (2, 1), (0, 2)), dilation=(1, 2, 1)),
    case("input-phases", (2, 48, 12, 12, 7), (48, 48, 3, 3, 3), stride=(2, 2, 1),
         padding=1),
]

# Cases for one build's tiles, and the build that takes them as pixel tiles (in float32):
# 2-D, a grouped layer's 32 channels a group (a last panel of two vectors, packed by
# transposes) and a 1x1 layer's 112 channels (two full panels of 48 and a partial one) in the
# AVX-512 build; a 1x1 layer's input gradient in the AVX2 and baseline builds, whose whole
# tiles of pixels are stored through transposes where a vector holds a tile's pixels (AVX2),
# one element at a time where it does not (baseline float64: two lanes, four pixels)
BUILD_CASES = [
    (case("grouped-32-on-7x7", (8, 64, 7, 7), (64, 32, 3, 3), padding=1, groups=2),
     "x86-64-v4"),
    (case("1x1-on-7x7", (8, 96, 7, 7), (112, 96, 1, 1)), "x86-64-v4"),
    (case("1x1-padded-other-builds", (4, 118, 8, 4), (101, 118, 1, 1), padding=1),
     "baseline"),
]
TAKEN_BY = {c.values[:2]: build for c, build in BUILD_CASES}


def random_cases(count, seed, ndim=3):
    """Random geometries with small planes, kept where the best variant takes pixel tiles for
    the forward pass or the input gradient in float32.  3-D: outputs of 2 to 6 planes of 4 to
    10 by 5 to 12 pixels, kernels of 1 to 3 taps along depth and 2 to 3 along the plane, 1 or
    2 groups of 1 to 8, 16, 24 or 48 input and 1 to 60 output channels, 1 to 3 images.  2-D
    (the deep stages of image classifiers, whose tiles of pixels run across rows and images):
    outputs of 3 to 16 by 3 to 16 pixels, kernels of 1 to 7 taps, one group of 16 to 160 input
    and 40 to 200 output channels, 2 to 4 images.  Both: strides 1 to 2, dilation 1 or 2,
    padding up to 2 on each side."""
    rng = np.random.default_rng(seed)
    best = list(VARIANTS.values())[-1]
    axes = ((2, 7, 1, 4), (4, 11, 2, 4), (5, 13, 2, 4)) if ndim == 3 else ((3, 17, 1, 8),) * 2
    cases = []
    while len(cases) < count:
        groups = int(rng.integers(1, 3)) if ndim == 3 else 1
        size, kernel, stride, dilation, pairs = [], [], [], [], []
        for lo, hi, kmin, kmax in axes:
            k = int(rng.integers(kmin, kmax))
            d, s = int(rng.integers(1, 3)), int(rng.integers(1, 3))
            p = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
            out = int(rng.integers(lo, hi))
            size.append(max(1, (out - 1) * s + d * (k - 1) + 1 - sum(p)))
            kernel.append(k)
            dilation.append(d)
            stride.append(s)
            pairs.append(p)
        if ndim == 3:
            cin, cout = int(rng.choice([*range(1, 9), 16, 24, 48])), int(rng.integers(1, 61))
            images = int(rng.integers(1, 4))
        else:
            cin, cout = int(rng.integers(16, 161)), int(rng.integers(40, 201))
            images = int(rng.integers(2, 5))
        candidate = grouped_case(f"random-{ndim}d-{len(cases)}", images, groups, cin, cout,
                                 size, kernel, stride, pairs, dilation)
        if min(conv_output_shape(*candidate.values)[2:]) < 1:
            continue
        if any(uses(best, which, *candidate.values, np.float32)
               for which in ("forward", "input")):
            cases.append(candidate)
    return cases


RANDOM = random_cases(24, seed=20261202) + random_cases(12, seed=20261203, ndim=2)


def run(module, which, a, w, bias, shape, kw, threads):
    """The variant's forward pass (a: x, shape: y's) or input gradient (a: dy, shape: dx's)
    into an output filled with NaN."""
    out = np.full(lift(np.empty(shape, np.int8)).shape, np.nan, a.dtype)
    function = module.forward if which == "forward" else module.grad_input
    function(lift(a), lift(w), bias, out, *loop_args(
        shape if which == "input" else a.shape, w.shape, kw), threads)
    return out.reshape(shape)


def product_passes(rng, x_shape, w_shape, kw, dtype):
    """The case's weight, and its forward pass and input gradient as (which, operand, bias,
    output shape, reference, bound of the reference's rounding)."""
    x, w, b, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    b_in = rng.standard_normal(x_shape[1]).astype(dtype)
    return w, [("forward", x, b, gy.shape, reference.conv(x, w, **kw),
                reference.conv(np.abs(x), np.abs(w), **kw)),
               ("input", gy, b_in, x_shape, reference.conv_input(x_shape, w, gy, **kw),
                reference.conv_input(x_shape, np.abs(w), np.abs(gy), **kw))]


def check_pass(assert_close, module, which, a, w, biases, shape, kw, want, bound, dtype):
    """The variant's pass `which` with each bias of `biases` (an empty one: none) against the
    reference, every element written, the same bits on 1, 2 and 3 threads."""
    spatial = (1,) * (len(shape) - 2)
    for bias in biases:
        add = bias.astype(np.float64).reshape(-1, *spatial) if len(bias) else 0
        got = run(module, which, a, w, bias, shape, kw, threads=2)
        assert not np.isnan(got).any()
        assert_close(got, want + add, dtype, bound=bound + np.abs(add))
        for threads in (1, 3):
            assert np.array_equal(got, run(module, which, a, w, bias, shape, kw, threads))


def check_pixel_passes(rng, assert_close, module, x_shape, w_shape, kw, dtype) -> int:
    """check_pass, with and without a bias, for each pass of the case that `module` runs as
    pixel tiles; returns how many it checked."""
    w, passes = product_passes(rng, x_shape, w_shape, kw, dtype)
    tested = 0
    for which, a, bias, shape, want, bound in passes:
        if uses(module, which, x_shape, w_shape, kw, dtype):
            tested += 1
            check_pass(assert_close, module, which, a, w, (bias[:0], bias), shape, kw, want,
                       bound, dtype)
    return tested


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", FIXED + RANDOM + [c for c, _ in BUILD_CASES])
def test_against_reference_and_across_threads(rng, assert_close, variant, x_shape, w_shape, kw,
                                               dtype):
    tested = check_pixel_passes(rng, assert_close, VARIANTS[variant], x_shape, w_shape, kw,
                                dtype)
    if variant == TAKEN_BY.get((x_shape, w_shape), list(VARIANTS)[-1]) and dtype == np.float32:
        assert tested, "the case does not take pixel tiles"


# Pixel tiles that skip the taps that read padding for all of a tile's pixels (pixel_order and
# tile_taps in loopconv/_loops): small planes and images, a large dilation, channels in blocks of
# 64 and a last partial block, groups of 130 channels, stride-2 phases with asymmetric padding,
# kernels of more taps than a size_t has bits (their masks by axis, tap_bits); a kernel of
# more taps along its axes than a mask holds computes them all.
SKIPS = [
    case("skip-4-cubed", (6, 128, 4, 4, 4), (128, 128, 3, 3, 3), padding=1),
    case("skip-channel-blocks", (2, 70, 4, 4, 4), (40, 70, 3, 3, 3), padding=1),
    case("skip-groups", (6, 260, 4, 4, 4), (96, 130, 3, 3, 3), padding=1, groups=2),
    case("skip-dilated", (3, 80, 13, 13), (48, 80, 3, 3), padding=4, dilation=4),
    case("skip-stride-2", (16, 24, 6, 6, 6), (32, 24, 3, 3, 3), stride=2,
         padding=((1, 2), (2, 1), (1, 1))),
    case("skip-stride-2-input", (16, 24, 5, 5, 5), (32, 24, 3, 3, 3), stride=2,
         padding=((2, 1), (2, 2), (1, 2)), dilation=2),
    case("skip-stride-2-dilated", (8, 48, 8, 8), (40, 48, 5, 5), stride=2,
         padding=((4, 3), (3, 4)), dilation=2),
    case("skip-4x4-images", (24, 96, 4, 4), (100, 96, 5, 5), padding=2),
    case("skip-7x7-on-6x6", (6, 96, 6, 6), (100, 96, 7, 7), padding=3),
    # items of 7 images, grouped 4 + 3 (PIX_SPAN); items of 3, the last of one image
    case("skip-span-remainder", (7, 96, 4, 4), (100, 96, 3, 3), padding=1),
    case("skip-last-item", (7, 40, 4, 4, 4), (24, 40, 3, 3, 3), padding=1),
    # volumes of few frames, whose first and last planes read a plane of padding at a third
    # of their taps: chosen as pixel tiles for the share they skip (new_geometry)
    case("skip-few-frames", (2, 24, 2, 12, 12), (16, 24, 3, 3, 3), padding=1),
    case("skip-three-frames-dilated", (1, 16, 3, 10, 10), (24, 16, 3, 3, 3),
         padding=(1, 2, 2), dilation=(1, 2, 2)),
    # a grid with junk columns whose pixels read padding at 9 % of their taps (PIX_SKIP_PERCENT),
    # with enough channels that this is 155 columns of A a pixel (PIX_SKIP_COLUMNS)
    case("skip-dilated-2-on-28", (1, 192, 28, 28), (192, 192, 3, 3), padding=2, dilation=2),
    case("skip-125-taps", (8, 16, 4, 4, 4), (24, 16, 5, 5, 5), padding=2),
    case("skip-vnet-8-cubed", (1, 72, 8, 8, 8), (40, 72, 5, 5, 5), padding=2),
    case("skip-81-taps-channel-blocks", (3, 70, 7, 6), (24, 70, 9, 9), padding=4),
    case("skip-343-taps-input", (1, 20, 5, 6, 5), (36, 20, 7, 7, 7), padding=3),
    case("all-80-taps", (4, 64, 20), (64, 64, 80), padding=40),
]


def plan(module, which, x_shape, w_shape, kw, dtype) -> dict:
    """How `module` runs pass `which` ("forward" or "input") of the case (product_plan)."""
    return module.product_plan(which, *loop_geometry(x_shape, w_shape, kw),
                               np.dtype(dtype).itemsize)


def skips(module, which, x_shape, w_shape, kw, dtype) -> bool:
    """Whether `module`'s pass `which` of the case skips taps that read padding."""
    return plan(module, which, x_shape, w_shape, kw, dtype)["taps skipped"]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", SKIPS)
def test_skipped_taps_against_reference_and_across_threads(rng, assert_close, variant,
                                                           x_shape, w_shape, kw, dtype):
    """Each pass of the case that the variant runs as pixel tiles, against the reference with
    and without a bias, every element written, the same bits on 1, 2 and 3 threads."""
    check_pixel_passes(rng, assert_close, VARIANTS[variant], x_shape, w_shape, kw, dtype)


@pytest.mark.parametrize("x_shape, w_shape, kw", SKIPS[:-1])
def test_skip_cases_skip(x_shape, w_shape, kw):
    """Each case but the last (80 taps along one axis) skips taps in at least one pass, in
    float64 on every build with pixel tiles and in float32 on the last one (whose pixel tiles
    are wider)."""
    best = list(VARIANTS.values())[-1]
    if _loops.platform.x86_level() < 4:
        pytest.skip("the cases are chosen for the tiles of 512-bit vectors")
    for dtype in (np.float32, np.float64):
        assert any(skips(best, which, x_shape, w_shape, kw, dtype)
                   for which in ("forward", "input"))


@pytest.mark.parametrize("x_shape, w_shape, kw, forward, input", [
    # U-Net's 3x3x3 on 4x4x4: 35 % of the (tile, tap) pairs skipped (42 % of the reads padding;
    # 25 % with each image's pixels grouped apart)
    ((2, 128, 4, 4, 4), (128, 128, 3, 3, 3), dict(padding=1), True, True),
    ((6, 128, 4, 4, 4), (128, 128, 3, 3, 3), dict(padding=1), True, True),
    ((6, 260, 4, 4, 4), (96, 130, 3, 3, 3), dict(padding=1, groups=2), True, True),
    # DeepLab's dilations 12 and 6 on 33x33: 41 % and 21 %
    ((1, 2048, 33, 33), (256, 2048, 3, 3), dict(padding=12, dilation=12), True, True),
    ((1, 2048, 33, 33), (256, 2048, 3, 3), dict(padding=6, dilation=6), True, True),
    # 4x4 images with a 3x3 kernel (44 % of the reads padding), pix2pix's 4x4 stride 2 onto
    # 2x2: 25 % with the pixels of PIX_SPAN images grouped together (image by image, a tile of
    # two images' pixels read every tap); 3x3 on 7x7 16 %, 5x5 on 7x7 26 % (4 % and 19 %)
    ((24, 96, 4, 4), (100, 96, 3, 3), dict(padding=1), True, True),
    ((8, 512, 4, 4), (512, 512, 4, 4), dict(stride=2, padding=1), True, True),
    ((8, 512, 7, 7), (512, 512, 3, 3), dict(padding=1), True, True),
    ((8, 64, 7, 7), (72, 64, 5, 5), dict(padding=2), True, True),
    # 3x3 on 7x7 at batch 1 (its images' pixels cannot be grouped), 3x3 on 14x14 7 %: the
    # blocks of channels would cost more than the taps skipped
    ((1, 512, 7, 7), (512, 512, 3, 3), dict(padding=1), False, False),
    ((8, 512, 14, 14), (512, 512, 3, 3), dict(padding=1), False, False),
    # RegNet's grouped stride-2 3x3: 2 %
    ((8, 160, 28, 28), (160, 16, 3, 3), dict(stride=2, padding=1, groups=10), False, False),
    # 125 taps, masked by axis: 51 % of the pairs on 4x4x4, V-Net's 8x8x8 33 % (also from the
    # compact grid of batch 2), its 16x16x16 17 %: below PIX_SKIP_COMPACT_WIDE, it keeps its
    # compact grid; a 1-D kernel of 80 taps (pixel tiles for its input gradient): more taps
    # along an axis than a mask holds, none skipped
    ((8, 16, 4, 4, 4), (24, 16, 5, 5, 5), dict(padding=2), True, True),
    ((1, 128, 8, 8, 8), (128, 128, 5, 5, 5), dict(padding=2), True, True),
    # ... but a forward pass over fewer than PIX_WIDE_PIXELS pixels, whose packing would cost
    # more than the taps save (V-Net's 256 -> 256 on 4x4x4 at batch 2)
    ((2, 256, 4, 4, 4), (256, 256, 5, 5, 5), dict(padding=2), False, True),
    ((2, 64, 8, 8, 8), (64, 64, 5, 5, 5), dict(padding=2), True, True),
    ((1, 64, 16, 16, 16), (64, 64, 5, 5, 5), dict(padding=2), False, False),
    ((4, 64, 20), (64, 64, 80), dict(padding=40), False, False),
    # few frames: 35 %, 20 % of the pairs (tried as pixel tiles, new_geometry); 8 frames 11 %
    # on a compact grid (PIX_SKIP_COMPACT)
    ((4, 64, 2, 40, 40), (64, 64, 3, 3, 3), dict(padding=1), True, True),
    ((4, 128, 4, 28, 28), (128, 128, 3, 3, 3), dict(padding=1), True, True),
    ((2, 64, 8, 32, 32), (64, 64, 3, 3, 3), dict(padding=1), False, False),
    # DeepLab's backbone, dilation 2 on 28x28: 9 % of the pairs, a grid with junk columns (with
    # 64 channels 52 columns of A a pixel: fewer than PIX_SKIP_COLUMNS)
    ((1, 512, 28, 28), (512, 512, 3, 3), dict(padding=2, dilation=2), True, True),
    ((4, 64, 28, 28), (64, 64, 3, 3), dict(padding=2, dilation=2), False, False),
    # ResNeXt's and RegNet's groups of 16 to 64 channels, 3x3 on 7x7 (16 %): 23 to 92 columns
    # of A a pixel; dense with 128 channels 184
    ((8, 1024, 7, 7), (1024, 32, 3, 3), dict(padding=1, groups=32), False, False),
    ((2, 1024, 7, 7), (1024, 16, 3, 3), dict(padding=1, groups=64), False, False),
    ((8, 888, 7, 7), (888, 24, 3, 3), dict(padding=1, groups=37), False, False),
    ((8, 2048, 7, 7), (2048, 64, 3, 3), dict(padding=1, groups=32), False, False),
    ((8, 128, 7, 7), (128, 128, 3, 3), dict(padding=1), True, True),
    # a weight of 7 MB read in place at batch 1: not tried (PIX_PACK_BYTES)
    ((1, 256, 4, 4, 4), (256, 256, 3, 3, 3), dict(padding=1), False, False),
])
def test_which_skip_taps(x_shape, w_shape, kw, forward, input):
    """By the share of the pixel tiles' (tile, tap) pairs that read only padding, on the
    instruction set of this machine (float32)."""
    best = list(VARIANTS.values())[-1]
    if _loops.platform.x86_level() < 4 and (forward or input):
        pytest.skip("the cases' pixel tiles are those of 512-bit vectors")
    assert skips(best, "forward", x_shape, w_shape, kw, np.float32) == forward
    assert skips(best, "input", x_shape, w_shape, kw, np.float32) == input


PADDING_SHARES = [((7,), (3,), dict(padding=1)), ((2, 9), (3, 3), dict(padding=(1, 2))),
                  ((5, 6), (3, 2), dict(stride=2, padding=((2, 1), (0, 1)), dilation=(2, 1))),
                  ((2, 5, 4), (3, 3, 3), dict(padding=1, stride=(1, 2, 3))),
                  ((6, 7), (4, 4), dict(stride=2, padding=1)),
                  ((9,), (3,), dict(padding=6, dilation=6))]


@pytest.mark.parametrize("size, ksize, kw", PADDING_SHARES)
def test_padding_share_counts_the_pairs_that_read_padding(size, ksize, kw):
    """padding_share against a count of every (pixel, tap) pair: of y and all taps for the
    forward pass; of dx and the taps of its phase (those whose offset the stride divides) for
    the input gradient."""
    x_shape, w_shape = (1, 1) + size, (1, 1) + ksize
    xs, ws, ys, stride, pad, dilation, _ = loop_geometry(x_shape, w_shape, kw)
    module = list(VARIANTS.values())[-1]
    counts = {0: [0, 0], 1: [0, 0]}
    for o in itertools.product(*[range(n) for n in ys[2:]]):
        for t in itertools.product(*[range(k) for k in ws[2:]]):
            i = [o[a] * stride[a] - pad[a] + t[a] * dilation[a] for a in range(3)]
            counts[0][0] += 1
            counts[0][1] += all(0 <= i[a] < xs[2 + a] for a in range(3))
    for i in itertools.product(*[range(n) for n in xs[2:]]):
        for t in itertools.product(*[range(k) for k in ws[2:]]):
            r = [i[a] + pad[a] - t[a] * dilation[a] for a in range(3)]
            if all(r[a] % stride[a] == 0 for a in range(3)):
                counts[1][0] += 1
                counts[1][1] += all(0 <= r[a] // stride[a] < ys[2 + a] for a in range(3))
    for which, (pairs, reach) in counts.items():
        got = module.padding_share(which, xs, ws, ys, stride, pad, dilation)
        assert got == pytest.approx(1 - reach / pairs, abs=1e-12)


@pytest.mark.parametrize("x_shape, w_shape, kw", SKIPS[:-1])
def test_padding_share_bounds_the_taps_skipped(x_shape, w_shape, kw):
    """A tile skips a tap only where all its pixels read padding at it: the share of skipped
    (tile, tap) pairs is at most that of the (pixel, tap) pairs that read padding."""
    module = list(VARIANTS.values())[-1]
    geometry = loop_geometry(x_shape, w_shape, kw)
    for which, code in (("forward", 0), ("input", 1)):
        skipped = plan(module, which, x_shape, w_shape, kw, np.float32)["skip share"]
        assert skipped <= module.padding_share(code, *geometry[:6]) + 1e-12


@pytest.mark.parametrize("x_shape, w_shape, kw, which, columns", [
    # rows of W + 1 and planes of H + 1 rows: the zero before each row is the one after the
    # previous row
    ((1, 8, 7, 7, 7), (8, 8, 3, 3, 3), dict(padding=1), "forward", ((6 * 8 + 6) * 8 + 7)),
    ((1, 8, 4, 4, 4), (8, 8, 3, 3, 3), dict(padding=1), "input", ((3 * 5 + 3) * 5 + 4)),
    ((1, 8, 7, 7), (8, 8, 3, 3), dict(padding=1), "forward", 6 * 8 + 7),
    ((1, 8, 7, 7), (8, 8, 5, 5), dict(padding=2), "input", 6 * 9 + 7),
    # no zeros before the rows to share: rows of W + 2
    ((1, 8, 7, 7), (8, 8, 3, 3), dict(padding=((1, 1), (0, 2))), "forward", 6 * 9 + 7),
    # padding larger than the kernel's reach: the rows still hold all of the output
    ((1, 8, 7, 7), (8, 8, 1, 1), dict(padding=2), "forward", 10 * 11 + 11),
    # stride 2 along W: two phases of columns, whose rows start differently; H shares
    ((1, 8, 9, 9, 9), (8, 8, 3, 3, 3), dict(padding=1, stride=(1, 1, 2)), "forward",
     (8 * 10 + 8) * 6 + 5),
])
def test_staged_rows_share_their_zeros(x_shape, w_shape, kw, which, columns):
    """The grid columns of the tiled product, per pixel it writes (`grid_waste`), where the
    staging shares the padding's zeros between rows and planes (stride 1 along an axis)."""
    pixels = math.prod(conv_output_shape(x_shape, w_shape, kw)[2:] if which == "forward"
                       else x_shape[2:])
    got = list(VARIANTS.values())[-1].grid_waste(which, *loop_geometry(x_shape, w_shape, kw),
                                                  4)
    assert got == pytest.approx(columns / pixels, rel=1e-12)


@pytest.mark.parametrize("x_shape, w_shape, kw, forward, input", [
    # U-Net, 8^3: pixel tiles skip 19 % of their (tile, tap) pairs, against halves of vectors
    # (lc_tile_h), which compute no junk but every tap: 1.09-1.13x forward and input gradient
    ((2, 384, 8, 8, 8), (128, 384, 3, 3, 3), dict(padding=1), True, True),
    ((3, 384, 7, 7, 7), (128, 384, 3, 3, 3), dict(padding=1), True, True),
    ((2, 64, 8, 8, 8), (64, 64, 3, 3, 3), dict(padding=1), True, True),     # 48 + 16
    ((1, 128, 8, 8, 8), (128, 128, 3, 3, 3), dict(padding=1), True, True),    # batch 1
    ((2, 64, 16, 16, 16), (64, 64, 3, 3, 3), dict(padding=1), False, False),  # 16^3
    # 4^3: 64 pixels an image, two images' tiles of pixels without junk against the grid's 1.5
    # columns a pixel (tiled time / pixel tiles' 0.97-1.14)
    ((2, 128, 4, 4, 4), (128, 128, 3, 3, 3), dict(padding=1), True, True),
    ((2, 32, 32, 32, 32), (32, 32, 3, 3, 3), dict(padding=1), False, False),
    ((1, 512, 7, 7), (512, 512, 3, 3), dict(padding=1), False, False),        # 2-D
    ((8, 256, 14, 14), (256, 256, 3, 3), dict(padding=1), True, True),
    ((8, 512, 14, 14), (512, 512, 3, 3), dict(padding=1), True, True),
    ((2, 128, 17, 17), (128, 128, 1, 7), dict(padding=(0, 3)), True, True),
    ((1, 2048, 33, 33), (256, 2048, 3, 3), dict(padding=12, dilation=12), True, True),
    # 2x2x2 stride 2: the input gradient's phases as pixel tiles 1.16x (float32, batch 2)
    ((2, 256, 8, 8, 8), (256, 256, 2, 2, 2), dict(stride=2), False, True),
    # a product's rows (channels) of one vector or fewer stay on the grid, whose tiles take
    # them by three vectors of pixels: ResNeXt's 32 groups of 16 on 14x14, 16 groups of 4,
    # 64 -> 16 (its input gradient has 64 rows); 16 -> 32's forward pass has 32 rows
    ((8, 512, 14, 14), (512, 16, 3, 3), dict(padding=1, groups=32), False, False),
    ((8, 64, 14, 14), (64, 4, 3, 3), dict(padding=1, groups=16), False, False),
    ((8, 64, 14, 14), (16, 64, 3, 3), dict(padding=1), False, True),
    ((8, 16, 14, 14), (32, 16, 3, 3), dict(padding=1), True, False),
])
def test_which_problems(x_shape, w_shape, kw, forward, input):
    """By the junk the tiled grid would compute against whole tiles of pixels, on the
    instruction set of this machine (float32)."""
    best = list(VARIANTS.values())[-1]
    if _loops.platform.x86_level() < 4 and (forward or input):
        pytest.skip("the rule's cases are for 512-bit vectors")
    assert uses(best, "forward", x_shape, w_shape, kw, np.float32) == forward
    assert uses(best, "input", x_shape, w_shape, kw, np.float32) == input


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_public_functions(rng, assert_close, dtype):
    x_shape, w_shape, kw = (2, 16, 8, 8, 8), (40, 16, 3, 3, 3), dict(padding=1)
    x, w, b, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    assert_close(loopconv.conv3d(x, w, b, **kw), reference.conv(x, w, b, **kw), dtype)
    assert_close(loopconv.conv3d_input(x_shape, w, gy, **kw),
                 reference.conv_input(x_shape, w, gy, **kw), dtype)


# ---------------------------------------------------------------------------------------------
# Compact grids: tiles over the valid columns alone, where the grid's rows are whole vectors

# Widths that are whole vectors in every build and dtype (at most 16 lanes), with junk columns
# between rows (padding, a kernel wider than one) of 2 % or more (COMPACT_WASTE), and 5 or more
# channels on both sides (full tiles of rows in both passes): each vector of a tile starts at
# its own offset (lc_tile_v)
COMPACT = [
    case("unet-16", (2, 8, 16, 16, 16), (12, 8, 3, 3, 3), padding=1),
    case("rows-of-32", (1, 5, 40, 32), (7, 5, 3, 3), padding=1),
    case("eight-output-channels", (3, 6, 20, 32), (8, 6, 3, 3), padding=1),
    case("nine-output-channels", (1, 5, 24, 64), (9, 5, 3, 5), padding=(1, 2)),
    case("panels-past-a-tile", (2, 5, 40, 16), (70, 5, 3, 3), padding=1),
    case("dilated", (1, 5, 30, 48), (8, 5, 3, 3), padding=2, dilation=2),
    case("asymmetric", (2, 5, 40, 16), (6, 5, 3, 3), padding=((0, 2), (2, 0))),
    case("stride-2-input-phases", (4, 6, 32, 32), (10, 6, 3, 3), stride=2, padding=1),
    case("groups", (2, 15, 24, 32), (18, 5, 3, 3), padding=1, groups=3),
    case("long-rows", (1, 6, 20, 80), (5, 6, 3, 5), padding=(1, 2)),
    # batch 1, few pixels: the weight read in place (lc_tile_gc)
    case("in-place-rows-of-16", (1, 40, 16, 16), (72, 40, 3, 3), padding=1),
    case("in-place-stride-2-onto-16", (1, 24, 32, 32), (40, 24, 3, 3), stride=2, padding=1),
]


def compact_phases(module, which, x_shape, w_shape, kw, dtype) -> int:
    """The phases of pass `which` that `module` computes compact."""
    return plan(module, which, x_shape, w_shape, kw, dtype)["compact phases"]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", COMPACT)
def test_compact_against_reference_and_across_threads(rng, assert_close, variant, x_shape,
                                                      w_shape, kw, dtype):
    """Each case takes compact tiles in its forward pass and its input gradient, in every build
    and dtype (or pixel tiles, in the baseline build); against the reference with and without
    a bias, every element written, the same bits on 1, 2 and 3 threads, and no more columns
    computed than pixels written."""
    module = VARIANTS[variant]
    w, passes = product_passes(rng, x_shape, w_shape, kw, dtype)
    for which, a, bias, shape, want, bound in passes:
        # the baseline build's float64 tiles (two lanes) take some of them as pixel tiles,
        # which compute no junk either
        if not (variant == "baseline" and uses(module, which, x_shape, w_shape, kw, dtype)):
            assert compact_phases(module, which, x_shape, w_shape, kw, dtype) > 0
            assert module.grid_waste(which, *loop_geometry(x_shape, w_shape, kw),
                                     np.dtype(dtype).itemsize) == 1.0
        check_pass(assert_close, module, which, a, w, (bias[:0], bias), shape, kw, want, bound,
                   dtype)


# Rows of half a vector in some build and dtype (8 in float32 with AVX-512; 4, 12 and 20 in
# float64 with AVX-512 and float32 with AVX2), with 10 % junk or more: each vector of a tile
# from two rows (lc_tile_h); the other builds take them whole or keep the grid
HALVES = [
    case("rows-of-8-3-d", (3, 8, 4, 24, 8), (16, 8, 1, 3, 3), padding=(0, 1, 1)),
    case("rows-of-8", (2, 5, 80, 8), (9, 5, 3, 3), padding=1),
    case("rows-of-12", (1, 4, 90, 12), (6, 4, 3, 5), padding=(1, 2)),
    case("rows-of-20", (1, 3, 60, 20), (70, 3, 1, 7), padding=(0, 3)),
    case("input-phases-of-4", (4, 6, 128, 8), (10, 6, 3, 3), stride=2, padding=1),
    case("input-phases-3-d", (3, 32, 12, 16, 8), (20, 32, 3, 3, 3), stride=(2, 2, 1),
         padding=1),
    # batch 1: the weight read in place (lc_tile_gc), also in a transposed 4x4 stride-2 layer's
    # input gradient from 8x8 (phases of 8x8)
    case("in-place-8x8", (1, 48, 8, 8), (72, 48, 3, 3), padding=1),
    case("in-place-3-d", (1, 48, 8, 8, 8), (8, 48, 3, 3, 3), padding=1),
    case("in-place-4x4-stride-2", (1, 40, 16, 16), (56, 40, 4, 4), stride=2, padding=1),
]


def lanes(module, dtype) -> int:
    """The elements of one vector of `module`'s build in `dtype`."""
    return module.info()["weight tile, one vector float32"][1] * 4 // np.dtype(dtype).itemsize


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", HALVES)
def test_halves_against_reference_and_across_threads(rng, assert_close, variant, x_shape,
                                                     w_shape, kw, dtype):
    """Whatever each build makes of them, against the reference with a bias, every element
    written, the same bits on 1, 2 and 3 threads; where the forward pass's rows are half a
    vector of 4 or more elements, it takes halves."""
    module = VARIANTS[variant]
    w, passes = product_passes(rng, x_shape, w_shape, kw, dtype)
    vw, width = lanes(module, dtype), passes[0][3][-1]
    if vw >= 8 and width % vw and width % (vw // 2) == 0:
        assert module.product_plan("forward", *loop_geometry(x_shape, w_shape, kw),
                                   np.dtype(dtype).itemsize)["halves"] == 1
    for which, a, bias, shape, want, bound in passes:
        check_pass(assert_close, module, which, a, w, (bias,), shape, kw, want, bound, dtype)


def test_halves_somewhere():
    """The cases above take halves in every build with vectors of 8 or more elements."""
    for module in VARIANTS.values():
        for dtype in (np.float32, np.float64):
            if lanes(module, dtype) >= 8:
                assert any(module.product_plan(which, *loop_geometry(*c.values),
                                               np.dtype(dtype).itemsize)["halves"]
                           for c in HALVES for which in ("forward", "input"))


# Rows that are neither whole vectors nor halves, with junk between them, where the weight is
# packed (not batch 1 on small images) and has 256 columns or more: in a build with masked
# loads of 16 elements (AVX-512, float32) each vector of a tile from the two rows it spans
# (lc_tile_r); others keep the grid.  Rows of 14 (the deep stages of image classifiers), 28, 15
# (3-D), a stride-2 layer onto 28x28, groups, and a last vector partly past the last pixel
ROWS = [
    case("rows-of-14", (8, 32, 14, 14), (40, 32, 3, 3), padding=1),
    case("rows-of-28", (2, 32, 28, 28), (32, 32, 3, 3), padding=1),
    case("rows-of-15-3-d", (2, 16, 6, 15, 15), (16, 16, 3, 3, 3), padding=1),
    case("stride-2-onto-28", (2, 32, 56, 56), (16, 32, 3, 3), stride=2, padding=1),
    case("groups", (4, 64, 20, 20), (48, 32, 3, 3), padding=1, groups=2),
    case("last-vector-partial", (6, 32, 13, 14), (16, 32, 3, 3), padding=1),
]


def masks_rows(module, dtype) -> bool:
    """Whether `module` takes rows by masks in `dtype` (vectors of 16 elements or more)."""
    return module.info()["rows by masks"] and lanes(module, dtype) >= 16


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", ROWS)
def test_rows_by_masks_against_reference_and_across_threads(rng, assert_close, variant,
                                                            x_shape, w_shape, kw, dtype):
    """Whatever each build makes of them, against the reference with and without a bias, every
    element written, the same bits on 1, 2 and 3 threads; where masked loads are taken, the
    forward pass takes rows by masks and computes no column that is not a pixel."""
    module = VARIANTS[variant]
    w, passes = product_passes(rng, x_shape, w_shape, kw, dtype)
    if masks_rows(module, dtype):
        assert plan(module, "forward", x_shape, w_shape, kw, dtype)["rows by masks"] == 1
        assert module.grid_waste("forward", *loop_geometry(x_shape, w_shape, kw),
                                 np.dtype(dtype).itemsize) == 1.0
    for which, a, bias, shape, want, bound in passes:
        check_pass(assert_close, module, which, a, w, (bias[:0], bias), shape, kw, want, bound,
                   dtype)


def test_rows_by_masks_somewhere():
    """Builds with masked loads take rows by masks in the input gradients of the cases above
    too; no other build or dtype takes them."""
    for module in VARIANTS.values():
        for dtype in (np.float32, np.float64):
            taken = sum(plan(module, which, *c.values, dtype)["rows by masks"]
                        for c in ROWS for which in ("forward", "input"))
            inputs = sum(plan(module, "input", *c.values, dtype)["rows by masks"] for c in ROWS)
            assert (taken > 0) == (inputs > 0) == masks_rows(module, dtype), (module, dtype)


@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((2, 8, 13, 13, 13), (8, 8, 3, 3, 3), dict(padding=1)),    # a vector over three rows
    ((1, 32, 14, 14), (24, 32, 3, 3), dict(padding=1)),        # rows of 14, weight in place
    ((8, 16, 14, 14), (24, 16, 3, 3), dict(padding=1)),        # rows of 14, K of 144
    ((1, 8, 16, 16), (8, 8, 1, 1), {}),                         # no junk
    ((1, 8, 20, 96), (8, 8, 3, 3), dict(padding=1)),            # 1 % junk
    ((2, 8, 40, 32), (2, 8, 3, 3), dict(padding=1)),            # tiles of few rows
])
def test_not_compact(x_shape, w_shape, kw):
    """Grids that keep their columns: rows over which a vector may span three (13 columns in
    float32), rows of 14 where the weight is read in place (masked loads cost more there than
    the junk) or has few columns (ROWS_MIN_K), grids without junk or with little, and tiles of
    fewer rows than a full tile (float32, every build)."""
    for module in VARIANTS.values():
        assert compact_phases(module, "forward", x_shape, w_shape, kw, np.float32) == 0


# ---------------------------------------------------------------------------------------------
# Widened forward passes: each tap along W reads its own copy of x whose rows are the output's
# (widened_geometry), where the grid's junk columns between rows would cost whole vectors

# Widened in float32 on the AVX-512 build: the deep stage of an image classifier at batch 1 and
# 2 (a work item of two images, staged together), a GAN's 4x4 stride-2 layer (a copy strided
# along W, phases along H), asymmetric padding with dilation along W (rows that start and end
# in padding by different amounts), and two groups (each group's copies together)
WIDENED = [
    case("3x3-on-7x7", (1, 256, 7, 7), (256, 256, 3, 3), padding=1),
    case("two-images-an-item", (2, 256, 7, 7), (256, 256, 3, 3), padding=1),
    case("gan-stride-2", (1, 512, 8, 8), (256, 512, 4, 4), stride=2, padding=1),
    case("asymmetric-dilated", (1, 200, 9, 7), (192, 200, 3, 3),
         padding=((2, 0), (1, 2)), dilation=(1, 2)),
    case("two-groups", (1, 512, 7, 7), (512, 256, 3, 3), padding=1, groups=2),
]


def widened(module, x_shape, w_shape, kw, dtype) -> bool:
    """Whether `module` runs the case's forward pass widened."""
    return plan(module, "forward", x_shape, w_shape, kw, dtype)["widened"]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", WIDENED)
def test_widened_against_reference_and_across_threads(rng, assert_close, variant, x_shape,
                                                      w_shape, kw, dtype):
    """The forward pass of each case, widened or not, against the reference with and without a
    bias, every element written, the same bits on 1, 2 and 3 threads, x left as it was."""
    module = VARIANTS[variant]
    w, passes = product_passes(rng, x_shape, w_shape, kw, dtype)
    which, x, bias, shape, want, bound = passes[0]
    before = x.copy()
    check_pass(assert_close, module, which, x, w, (bias[:0], bias), shape, kw, want, bound,
               dtype)
    assert np.array_equal(x, before)


@pytest.mark.parametrize("x_shape, w_shape, kw", WIDENED)
def test_widened_cases_widen(x_shape, w_shape, kw):
    """The cases above are widened in float32 on the AVX-512 build."""
    if _loops.platform.x86_level() < 4:
        pytest.skip("the cases are chosen for the tiles of 512-bit vectors")
    assert widened(VARIANTS["x86-64-v4"], x_shape, w_shape, kw, np.float32)


@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),       # little junk against 56 columns
    ((1, 256, 7, 7), (256, 256, 1, 1), {}),                     # a kernel of one tap along W
    ((1, 64, 16, 16), (128, 64, 4, 4), dict(stride=2, padding=1)),  # saves less than the copy
    ((8, 512, 7, 7), (512, 512, 3, 3), dict(padding=1)),       # pixel tiles
    ((1, 64, 8, 8, 8), (64, 64, 3, 3, 3), dict(padding=1)),    # pixel tiles (3-D)
])
def test_not_widened(x_shape, w_shape, kw):
    """Forward passes that keep the grid, in every build and dtype."""
    for module in VARIANTS.values():
        for dtype in (np.float32, np.float64):
            assert not widened(module, x_shape, w_shape, kw, dtype)


def test_widened_public_function(rng, assert_close):
    """conv2d on a widened problem, twice (the second call reuses the workspace), against the
    reference."""
    x_shape, w_shape, kw = WIDENED[0].values
    for _ in range(2):
        x, w, b, _ = conv_arrays(rng, x_shape, w_shape, kw, np.float32)
        assert_close(loopconv.conv2d(x, w, b, **kw), reference.conv(x, w, b, **kw), np.float32)


# ---------------------------------------------------------------------------------------------
# The weight gradient over the valid columns

def compact(module, x_shape, w_shape, kw, dtype):
    """Whether `module` sums the case's weight gradient over its valid grid columns only."""
    return module.weight_plan(*loop_geometry(x_shape, w_shape, kw),
                              np.dtype(dtype).itemsize)["compact"]


WEIGHT_FIXED = [
    case("3d-8", (2, 8, 8, 8, 8), (40, 8, 3, 3, 3), padding=1),
    case("2d-14-batch3", (3, 6, 14, 14), (36, 6, 3, 3), padding=1),
    case("2d-strided-dilated", (2, 5, 17, 15), (33, 5, 3, 3), stride=2, padding=2, dilation=2),
    case("1d", (2, 4, 30), (40, 4, 5), padding=2, dilation=2),
    case("groups", (2, 12, 9, 9), (66, 4, 3, 3), padding=1, groups=3),
    case("small-images-blocked", (16, 4, 5, 5), (48, 4, 3, 3), padding=1),
]


def random_weight_cases(count, seed):
    """Random geometries whose weight gradient takes the valid columns on the best variant in
    float32: 1 to 3 spatial axes of 3 to 12 pixels, kernels of 1 to 4 taps, strides 1 to 2,
    dilation 1 or 2, padding up to 2 on each side, 1 or 2 groups of 1 to 6 input and 17 to 60
    output channels, 1 to 5 images."""
    rng = np.random.default_rng(seed)
    best = list(VARIANTS.values())[-1]
    cases = []
    while len(cases) < count:
        nd, groups = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        size = [int(rng.integers(3, 13)) for _ in range(nd)]
        kernel = [int(rng.integers(1, 5)) for _ in range(nd)]
        stride = [int(rng.integers(1, 3)) for _ in range(nd)]
        dilation = [int(rng.integers(1, 3)) for _ in range(nd)]
        pairs = [(int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(nd)]
        cin, cout = int(rng.integers(1, 7)), int(rng.integers(17, 61))
        candidate = grouped_case(f"random-{len(cases)}", int(rng.integers(1, 6)), groups, cin,
                                 cout, size, kernel, stride, pairs, dilation)
        y_shape = conv_output_shape(*candidate.values)
        if min(y_shape[2:]) < 1:
            continue
        loops = chosen_loops(y_shape, candidate.values[1], stride, groups)
        if loops.grad_weight is not _loops.tiled.grad_weight:
            continue
        if compact(best, *candidate.values, np.float32):
            cases.append(candidate)
    return cases


WEIGHT_RANDOM = random_weight_cases(24, seed=20261203)


def weight(module, x, gy, w_shape, kw, threads):
    """The variant's weight gradient into an output filled with NaN."""
    dw = np.full(lift(np.empty(w_shape, np.int8)).shape, np.nan, x.dtype)
    module.grad_weight(lift(x), lift(gy), dw, *loop_args(x.shape, w_shape, kw), threads)
    return dw.reshape(w_shape)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", WEIGHT_FIXED + WEIGHT_RANDOM)
def test_weight_against_reference_and_across_threads(rng, assert_close, variant, x_shape,
                                                      w_shape, kw, dtype):
    module = VARIANTS[variant]
    x, w, _, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    got = weight(module, x, gy, w_shape, kw, threads=2)
    assert not np.isnan(got).any()
    assert_close(got, reference.conv_weight(x, w_shape, gy, **kw), dtype,
                 bound=reference.conv_weight(np.abs(x), w_shape, np.abs(gy), **kw))
    for threads in (1, 3):
        assert np.array_equal(got, weight(module, x, gy, w_shape, kw, threads))
    if variant == list(VARIANTS)[-1] and dtype == np.float32:
        assert compact(module, x_shape, w_shape, kw, dtype)


@pytest.mark.parametrize("x_shape, w_shape, kw, chosen", [
    ((2, 64, 8, 8, 8), (64, 64, 3, 3, 3), dict(padding=1), True),        # 1.25 columns a pixel
    ((8, 128, 14, 14), (128, 128, 3, 3), dict(padding=1), True),         # 1.066
    ((8, 128, 28, 28), (128, 128, 3, 3), dict(padding=1), False),        # 1.034
    ((8, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), False),           # 1.017
    ((4, 256, 32, 32), (128, 256, 1, 1), {}, False),                     # no junk
    ((8, 64, 28, 28), (8, 64, 3, 3), dict(padding=1), False),            # few channels: lanes
])
def test_weight_which_problems(x_shape, w_shape, kw, chosen):
    """By the grid columns per valid pixel of a reduction step (float32, the best variant)."""
    assert compact(list(VARIANTS.values())[-1], x_shape, w_shape, kw, np.float32) == chosen


@pytest.mark.parametrize("x_shape, w_shape, kw", [
    c for c in COMPACT + HALVES if c.id.startswith("in-place")])
def test_compact_with_the_weight_read_in_place(x_shape, w_shape, kw):
    """At batch 1 with few pixels the tiles read the weight in place and still compute only
    the valid columns (lc_tile_gc): in the forward pass (2-D) or one of the passes, float32 on
    the widest build."""
    module = list(VARIANTS.values())[-1]
    if _loops.platform.x86_level() < 4:
        pytest.skip("the cases are chosen for 512-bit vectors")
    plans = [plan(module, which, x_shape, w_shape, kw, np.float32)
             for which in ("forward", "input")]
    assert any(p["weight read in place"] and p["compact phases"] for p in plans), plans
