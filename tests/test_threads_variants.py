"""Threads (bit-identical results for any thread count; set/get_num_threads;
LOOPCONV_NUM_THREADS) and the compiled variants (every tiled module against the direct loops
and the reference; LOOPCONV_CPU)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import reference
from common import (
    DTYPE_PARAMS,
    DTYPES,
    case,
    conv_arrays,
    conv_macs,
    conv_output_shape,
    run_python,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import loopconv
from loopconv import _loops
from loopconv._loops import platform


def arrays(rng, x_shape, w_shape, kw, dtype):
    """conv_arrays and a bias for the input channels (of a transposed convolution, or of a
    grad_input computed with one): x, w, b, b_in, gy."""
    x, w, b, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    return x, w, b, rng.standard_normal(x_shape[1]).astype(dtype), gy


# ---------------------------------------------------------------------------------------------
# Bit-identical for any number of threads

THREAD_CASES = [
    case("2d-8x20x20-to-16", (2, 8, 20, 20), (16, 8, 3, 3), padding=1),
    case("2d-many-images", (6, 8, 16, 16), (16, 8, 3, 3), padding=1),
    case("2d-grouped", (3, 12, 18, 17), (18, 4, 3, 3), groups=3, padding=(1, 0)),
    case("2d-stride2", (2, 16, 21, 20), (24, 16, 3, 3), stride=2, padding=1),
    case("2d-depthwise", (2, 32, 24, 24), (32, 1, 3, 3), groups=32, padding=1),
    case("1d-long", (3, 16, 500), (20, 16, 5), stride=2, dilation=2),
    case("3d", (2, 6, 9, 10, 8), (10, 6, 3, 3, 3), stride=(1, 2, 1), padding=1),
    case("2d-direct-size", (2, 3, 8, 8), (4, 3, 3, 3), padding=1),
]


def test_thread_cases_use_the_tiled_loops():
    sizes = [conv_macs(*p.values) for p in THREAD_CASES]
    assert sum(m >= _loops.SMALL_PROBLEM for m in sizes) == len(sizes) - 1


def all_passes(nd, x, w, b, b_in, gy, kw):
    """Every public function on one problem.  The transposed convolution reuses the weight:
    (C_out, C_in // groups, *k) read as a transposed weight maps gy's C_out channels to C_in
    (bias b_in)."""
    def f(name):
        return getattr(loopconv, name.format(nd))

    yt = f("conv_transpose{}d")(gy, w, b_in, **kw)
    return {
        "forward": (f("conv{}d")(x, w, b, **kw),),
        "input": (f("conv{}d_input")(x.shape, w, gy, **kw),),
        "weight": (f("conv{}d_weight")(x, w.shape, gy, **kw),),
        "backward": f("conv{}d_backward")(x, w, gy, **kw),
        "backward-reflect": f("conv{}d_backward")(x, w, gy, padding_mode="reflect", **kw),
        "transpose": (yt,),
        "transpose_backward": f("conv_transpose{}d_backward")(gy, w, yt, **kw),
    }


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", THREAD_CASES)
def test_bit_identical_for_any_thread_count(rng, restore_threads, x_shape, w_shape, kw, dtype):
    nd = len(x_shape) - 2
    x, w, b, b_in, gy = arrays(rng, x_shape, w_shape, kw, dtype)
    loopconv.set_num_threads(1)
    all_passes(nd, x, w, b, b_in, gy, kw)
    one = all_passes(nd, x, w, b, b_in, gy, kw)
    for threads in (2, 3, 5):
        loopconv.set_num_threads(threads)
        many = all_passes(nd, x, w, b, b_in, gy, kw)
        for key in one:
            for a, c in zip(one[key], many[key]):
                assert np.array_equal(a, c), (key, threads)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", [
    case("tiled", (3, 8, 19, 21), (12, 8, 3, 3), padding=1),
    case("direct", (2, 3, 9, 7), (5, 3, 3, 2), padding=1),
])
def test_repeated_calls_are_bit_identical(rng, x_shape, w_shape, kw, dtype):
    """The same call gives the same bits every time, the first call included (the shapes are
    used by no other test, so the first call here is the first in the process)."""
    nd = len(x_shape) - 2
    x, w, b, b_in, gy = arrays(rng, x_shape, w_shape, kw, dtype)
    first = all_passes(nd, x, w, b, b_in, gy, kw)
    for _ in range(2):
        again = all_passes(nd, x, w, b, b_in, gy, kw)
        for key in first:
            for name, a, c in zip(("grad_input", "grad_weight", "grad_bias"), first[key],
                                  again[key]):
                assert np.array_equal(a, c), (key, name if len(first[key]) == 3 else "")


def test_concurrent_calls_from_python_threads(rng):
    """Calls from several Python threads at once give the results of one call alone."""
    x = rng.standard_normal((2, 8, 20, 20)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 16, 20, 20)).astype(np.float32)
    expected = loopconv.conv2d_backward(x, w, gy, padding=1)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: loopconv.conv2d_backward(x, w, gy, padding=1),
                                range(8)))
    for got in results:
        for a, c in zip(got, expected):
            assert np.array_equal(a, c)


def test_packed_weights_per_python_thread(rng, assert_close):
    """The packed weight is scratch kept across calls, per Python thread: threads that each
    run their own layers (forward passes and input gradients whose weights are packed, of
    several sizes, a transposed convolution of four phases among them) in turns, at the same
    time, each get the results of the calls made one at a time."""
    layers = []
    for x_shape, w_shape, kw in [((2, 16, 24, 24), (24, 16, 3, 3), dict(padding=1)),
                                 ((2, 8, 64, 64), (12, 8, 4, 4), dict(stride=2, padding=1)),
                                 ((2, 24, 26, 26), (8, 24, 3, 3), dict(padding=2, dilation=2))]:
        x, w, _, gy = conv_arrays(rng, x_shape, w_shape, kw, np.float32)
        for which in ("forward", "input"):
            plan = _loops.tiled.product_plan(which, lift(x).shape, lift(w).shape,
                                             lift(gy).shape, *loop_geometry(2, kw), x.itemsize)
            assert not plan["weight read in place"], which
        layers.append((x, w, gy, kw))

    def run(order):
        out = []
        for i in order:
            x, w, gy, kw = layers[i]
            out.append(loopconv.conv2d(x, w, **kw))
            out.append(loopconv.conv2d_input(x.shape, w, gy, **kw))
            out.append(loopconv.conv_transpose2d(gy, w, **kw, output_size=x.shape[2:]))
        return out

    orders = [(0, 1, 2), (2, 1, 0), (1, 0, 2, 1), (2, 2, 0)]
    expected = [run(order) for order in orders]
    with ThreadPoolExecutor(len(orders)) as pool:
        got = list(pool.map(run, orders * 2))
    for want, have in zip(expected * 2, got):
        for a, c in zip(want, have):
            assert np.array_equal(a, c)
    for order, want in zip(orders, expected):   # and against the reference
        for i, y, gx, t in zip(order, want[::3], want[1::3], want[2::3]):
            x, w, gy, kw = layers[i]
            assert_close(y, reference.conv(x, w, None, **kw), np.float32)
            assert_close(gx, reference.conv_input(x.shape, w, gy, **kw), np.float32)
            assert np.array_equal(t, gx)


# ---------------------------------------------------------------------------------------------
# set_num_threads / get_num_threads / LOOPCONV_NUM_THREADS

def test_get_num_threads_is_a_positive_int():
    n = loopconv.get_num_threads()
    assert type(n) is int and n >= 1


@pytest.mark.parametrize("n", [1, 2, 3, 7, np.int64(2)], ids=["1", "2", "3", "7", "np.int64"])
def test_set_get_round_trip(restore_threads, n):
    loopconv.set_num_threads(n)
    got = loopconv.get_num_threads()
    assert type(got) is int
    assert got == (int(n) if platform.openmp() else 1)


@pytest.mark.parametrize("n, exc", [
    (0, ValueError), (-1, ValueError), (1.5, TypeError), (2.0, TypeError), (True, TypeError),
    (np.bool_(True), TypeError), ("2", TypeError), (None, TypeError),
], ids=["0", "-1", "1.5", "2.0", "True", "np.True_", "str", "None"])
def test_set_num_threads_errors(restore_threads, n, exc):
    loopconv.set_num_threads(2)
    with pytest.raises(exc, match=r"^set_num_threads: .*\bn\b"):
        loopconv.set_num_threads(n)
    assert loopconv.get_num_threads() == (2 if platform.openmp() else 1)


def test_set_num_threads_after_an_error_still_computes(rng, assert_close, restore_threads):
    x = rng.standard_normal((2, 3, 8, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    with pytest.raises(ValueError):
        loopconv.set_num_threads(0)
    assert_close(loopconv.conv2d(x, w), reference.conv(x, w), np.float64)


@pytest.mark.parametrize("value", ["1", "3", " 2 "])
def test_environment_sets_the_default(value):
    out = run_python("import loopconv; print(loopconv.get_num_threads())",
                     {"LOOPCONV_NUM_THREADS": value})
    assert int(out) == (int(value) if platform.openmp() else 1)


def test_default_is_all_available_cores():
    out = run_python("""
        import os, loopconv
        print(loopconv.get_num_threads(), len(os.sched_getaffinity(0)))
    """)
    threads, cores = map(int, out.split())
    assert threads == (cores if platform.openmp() else 1)


def test_environment_default_can_be_changed():
    out = run_python("""
        import loopconv
        loopconv.set_num_threads(1)
        print(loopconv.get_num_threads())
    """, {"LOOPCONV_NUM_THREADS": "3"})
    assert int(out) == 1


def test_show_config_reports_threads_and_variant(capsys, restore_threads):
    loopconv.set_num_threads(2)
    loopconv.show_config()
    text = capsys.readouterr().out
    assert loopconv.__version__ in text
    assert np.__version__ in text
    assert _loops.VARIANT in text
    assert str(loopconv.get_num_threads()) in text


# ---------------------------------------------------------------------------------------------
# Every compiled variant against the direct loops and the reference

VARIANT_CASES = [
    # (x shape, w shape, stride, (before, after) pairs, dilation, groups)
    case("2d-13-out-7-in-odd-pixels", (2, 7, 17, 19), (13, 7, 3, 3), padding=1),
    case("2d-grouped-5-per-group", (2, 10, 15, 13), (10, 5, 3, 2), groups=2, stride=(2, 1),
         padding=((1, 0), (0, 1))),
    case("2d-depthwise-odd", (3, 9, 11, 23), (9, 1, 3, 3), groups=9, padding=1),
    case("2d-stride3-dilated", (2, 6, 26, 25), (11, 6, 3, 3), stride=3, dilation=2,
         padding=((2, 1), (3, 0))),
    case("2d-K-over-256", (2, 33, 12, 12), (25, 33, 3, 3), padding=1),
    case("2d-many-pixels", (2, 5, 37, 41), (14, 5, 2, 3), padding=((0, 1), (1, 1))),
    case("2d-1x1", (3, 19, 9, 7), (23, 19, 1, 1)),
    # weight gradient packing dy transposed in blocks of a vector's lanes: several whole
    # blocks of output channels and a partial one, runs of columns broken by junk columns
    case("2d-37-outputs-stride2", (2, 5, 19, 23), (37, 5, 3, 3), stride=2, padding=1),
    # no padding, stride 1: all images but the last read in place instead of staged
    case("2d-no-padding-in-place", (3, 6, 14, 27), (10, 6, 3, 3)),
    # tiles of 1, 2 and 4 rows: input gradients for one to three channels, few outputs
    case("2d-one-input-channel", (2, 1, 30, 29), (8, 1, 3, 3), padding=1),
    case("2d-two-outputs", (2, 6, 23, 25), (2, 6, 3, 3), padding=(2, 0)),
    case("2d-three-channels-stem", (1, 3, 40, 37), (16, 3, 7, 7), stride=2, padding=3),
    # stride 2 along the rows stages both phases of a row at once: every edge of that
    case("2d-stride2-no-padding-even", (2, 5, 20, 38), (9, 5, 3, 4), stride=2),
    case("2d-stride2-wide-padding", (1, 4, 18, 41), (6, 4, 3, 5), stride=(1, 2),
         padding=((0, 1), (4, 1))),
    case("2d-stride2-padding-past-kernel", (2, 3, 9, 30), (5, 3, 2, 2), stride=2,
         padding=((1, 0), (3, 5))),
    case("1d-odd", (3, 11, 263), (17, 11, 4), stride=2, padding=((3, 1),)),
    # strides 3 and 4 split each staged row into its phases in one pass (split_row): padding
    # that gives the phases different first and last columns inside, rows of one or two
    # columns a phase, a patch embedding (kernel = stride), 1-D and 3-D
    case("2d-stride4-padded-phases", (2, 5, 29, 46), (7, 5, 5, 5), stride=4,
         padding=((2, 1), (3, 2))),
    case("2d-stride3-short-rows", (2, 4, 12, 5), (6, 4, 3, 3), stride=3, padding=((1, 1), (2, 0))),
    case("2d-stride4-patches", (1, 3, 32, 48), (24, 3, 4, 4), stride=4),
    case("1d-stride4-padded", (2, 6, 301), (9, 6, 8), stride=4, padding=((3, 2),)),
    case("3d-stride3", (1, 3, 10, 12, 29), (5, 3, 3, 3, 3), stride=3, padding=1),
    # stride 2 on rows of one to three vectors a phase: both phases of a row stored whole from
    # the same loads, except the slice's last rows, past which they would read, and rows whose
    # vectors would pass the end of their plane
    case("2d-stride2-rows-of-28-grouped", (2, 16, 28, 28), (16, 4, 3, 3), stride=2, groups=4,
         padding=1),
    case("2d-stride2-odd-rows", (3, 5, 13, 31), (6, 5, 3, 3), stride=2,
         padding=((0, 2), (1, 0))),
    case("3d-stride2-short-rows", (1, 4, 5, 10, 22), (6, 4, 3, 3, 3), stride=2, padding=1),
    # stride 2: the input gradient's tiles stored into every other element, rows (35, 33:
    # phases of 18, 17 and 16 columns) crossing vectors of either width, over more columns of
    # A than one pass takes (the forward pass's 48 * 9 and the gradient's 140 * 4 > KC: the
    # later passes add to what the first stored); the same in 3-D
    case("2d-stride2-over-KC", (2, 48, 35, 33), (140, 48, 3, 3), stride=2, padding=1),
    case("3d-stride2", (1, 6, 9, 14, 13), (10, 6, 3, 3, 3), stride=2, padding=1),
    # a short K (SHORT_K_BYTES): blocks of SHORT_K_PANELS panels of rows run over all their
    # tiles -- several blocks and a partial one, rows that do not start on a line, the input
    # gradient of the 1x1 over a long K; and A's columns past KC in one pass of few columns
    case("1d-short-K-panel-blocks", (1, 1, 400), (80, 1, 10), stride=5),
    case("2d-short-K-1x1-odd-rows", (2, 16, 30, 30), (40, 16, 1, 1)),
    case("2d-short-K-over-KC", (2, 64, 2, 2), (24, 64, 3, 3), padding=1),
    # a short K with many rows: each phase's columns in one block, the items blocks of rows
    # (whole_rows): one image, several images with a partial panel, and an input gradient's
    # two stride phases
    case("1d-whole-rows", (1, 1, 2500), (512, 1, 10), stride=5),
    case("1d-whole-rows-images", (4, 1, 2500), (130, 1, 10), stride=5, padding=3),
    case("1d-whole-rows-phases", (1, 520, 1700), (3, 520, 4), stride=2, padding=1),
    case("2d-whole-rows-1x1-images", (8, 16, 20, 20), (64, 16, 1, 1)),
    case("3d-whole-rows-padded", (4, 2, 3, 12, 12), (130, 2, 1, 3, 3), padding=(0, 1, 1)),
    # 1x1 layers read in place whose last vector of columns is partial: the last tile moved
    # back (tail_shift), within one image's columns (9x11), the last of several images, and
    # the last of several column blocks
    case("2d-1x1-last-tile-moved-back", (1, 10, 9, 11), (7, 10, 1, 1)),
    case("2d-1x1-last-tile-moved-back-images", (3, 6, 13, 7), (20, 6, 1, 1)),
    case("2d-1x1-last-tile-moved-back-blocks", (1, 8, 37, 41), (33, 8, 1, 1)),
    case("2d-1x1-last-tile-moved-back-groups", (2, 12, 9, 7), (18, 4, 1, 1), groups=3),
    case("3d-1x1-last-tile-moved-back", (1, 5, 3, 5, 7), (9, 5, 1, 1, 1)),
    # rows of grid columns ending in tiles of two vectors (and one), for each tile width
    # (a row of 126, 109 and 103: 48 + 48 + 30, 24 * 4 + 13, 12 * 8 + 7), the weight read in
    # place (two images: tiles of 8, 2 and 1 rows for 11 channels) and packed (nine)
    case("1d-tail-126", (2, 6, 126), (11, 6, 3), padding=1),
    case("1d-tail-109", (2, 6, 109), (11, 6, 3), padding=1),
    case("1d-tail-103", (2, 6, 103), (11, 6, 3), padding=1),
    case("1d-tail-126-packed", (9, 6, 126), (11, 6, 3), padding=1),
    case("1d-dilated-groups", (2, 12, 97), (9, 4, 3), groups=3, dilation=3, padding=((4, 2),)),
    # rows sharing their padding's zeros (a row's last windows read the next row's leading
    # zeros), wider than a tile: the last rows of the last channel read past the staged
    # channels by more than a tile's columns (40 > 24 float64 columns)
    case("2d-wide-padding-shared", (1, 2, 3, 10), (2, 2, 3, 81), padding=((1, 1), (40, 40))),
    case("3d-wide-padding-shared", (2, 3, 2, 5, 6), (4, 3, 1, 3, 61),
         padding=((0, 0), (1, 1), (30, 30))),
    case("3d-odd", (2, 5, 7, 9, 11), (7, 5, 3, 2, 3), stride=(1, 2, 1), padding=1),
    case("3d-grouped-dilated", (1, 6, 8, 7, 9), (9, 2, 2, 3, 2), groups=3, dilation=(2, 1, 2),
         padding=((1, 0), (1, 1), (0, 2))),
    # many pixels per weight: the weight packed into panels (the cases above with few read it
    # in place), with a partial panel of rows, in both passes and with stride phases
    case("2d-packed-13-out-odd", (4, 7, 24, 23), (13, 7, 3, 3), padding=1),
    case("2d-packed-stride2-grouped", (3, 10, 40, 41), (14, 5, 3, 3), stride=2, groups=2,
         padding=((1, 0), (0, 1))),
    # batch 1, few pixels, many channels: rows split into blocks, weight read in place
    case("2d-deep-7x7-batch1", (1, 70, 7, 7), (45, 70, 3, 3), padding=1),
    case("2d-batch1-few-outputs", (1, 40, 6, 6), (12, 40, 3, 3), padding=1),
    # small images: several per work item, the last block partial; a 1x1 output (the input
    # gradient is a GAN generator's first layer)
    case("2d-7-images-in-blocks", (7, 6, 9, 9), (10, 6, 3, 3), padding=1),
    case("2d-7-images-stride2", (7, 5, 10, 11), (9, 5, 3, 3), stride=2, padding=1),
    case("2d-1x1-output", (6, 12, 4, 4), (10, 12, 4, 4)),
    case("tiny-1-channel", (1, 1, 3, 2), (1, 1, 2, 2)),
    case("tiny-one-output-pixel", (2, 3, 3, 3), (2, 3, 3, 3)),
    case("tiny-stride-larger-than-input", (1, 2, 5, 4), (3, 2, 2, 2), stride=(6, 5)),
]


@pytest.mark.parametrize("batch", range(1, 41))
@pytest.mark.parametrize("which", ["forward", "input"])
def test_image_blocks_are_even(batch, which):
    """The forward-style product of small images takes several images a work item, in blocks
    as even as they go (8 images 7x7, at most 5 a block: 4 + 4, not 5 + 3), so that a thread
    of two is not left idle: the last block misses fewer images than there are blocks."""
    shapes = ((batch, 64, 1, 7, 7), (64, 64, 1, 3, 3), (batch, 64, 1, 7, 7))
    args = ((1, 1, 1), (0, 1, 1), (1, 1, 1), 1, 4)
    for module in _loops.variants().values():
        plan = module.product_plan(which, *shapes, *args)
        images, blocks = plan["images"], plan["image blocks"]
        assert (blocks - 1) * images < batch <= blocks * images
        assert blocks * images - batch < blocks
    assert batch < 5 or images > 1


@pytest.mark.parametrize("size, split", [(12, True), (64, False)])
def test_phases_split_rows_by_column_blocks(size, split):
    """A strided input gradient at batch 1 hands each column block's phases to one thread, so
    that two threads never write alternate elements of the same lines; its rows are split
    where such units are few (a 2x2x2 stride-2 layer's eight phases of 6x6x6 make a block or
    a few, not the eight items or more counted phase by phase), not where they are many."""
    half = size // 2
    shapes = ((1, 64, size, size, size), (128, 64, 2, 2, 2), (1, 128, half, half, half))
    args = ((2, 2, 2), (0, 0, 0), (1, 1, 1), 1, 4)
    for module in _loops.variants().values():
        plan = module.product_plan("input", *shapes, *args)
        assert (plan["row blocks"] > 1) == split


@pytest.mark.parametrize("which, shapes, stride, whole", [
    # wav2vec 2.0's first layer: 1 -> 512 channels, kernel 10, stride 5
    ("forward", ((1, 1, 1, 1, 16000), (512, 1, 1, 1, 10), (1, 512, 1, 1, 3199)), 5, True),
    ("forward", ((4, 1, 1, 1, 16000), (512, 1, 1, 1, 10), (4, 512, 1, 1, 3199)), 5, True),
    # too few rows to share whole rows among items of several panels; a long K
    ("forward", ((1, 1, 1, 1, 16000), (128, 1, 1, 1, 10), (1, 128, 1, 1, 3199)), 5, False),
    ("forward", ((1, 16, 1, 56, 56), (96, 16, 1, 1, 1), (1, 96, 1, 56, 56)), 1, False),
    ("forward", ((1, 64, 1, 1, 3000), (512, 64, 1, 1, 3), (1, 512, 1, 1, 2998)), 1, False),
    ("input", ((1, 512, 1, 1, 8000), (2, 512, 1, 1, 4), (1, 2, 1, 1, 3999)), 2, True),
])
def test_short_K_items_are_whole_rows(which, shapes, stride, whole):
    """A forward-style product with a short K and many rows takes each phase's columns as one
    block and splits its rows instead (whole_rows): its items write whole rows of the output,
    on one thread each, in blocks of several panels."""
    args = ((1, 1, stride), (0, 0, 0), (1, 1, 1), 1, 4)
    columns = math.prod(shapes[2 if which == "forward" else 0][2:])
    for module in _loops.variants().values():
        plan = module.product_plan(which, *shapes, *args)
        phase_columns = columns if which == "forward" else -(-columns // stride)
        assert (plan["block columns"] >= phase_columns) == whole
        if whole:
            assert plan["row blocks"] * plan["image blocks"] >= 16


@pytest.mark.parametrize("itemsize", [4, 8])
@pytest.mark.parametrize("x_shape, o", [((1, 128, 1, 55, 55), 16), ((3, 6, 1, 13, 7), 20),
                                        ((1, 256, 1, 14, 14), 1024), ((2, 64, 1, 1, 4001), 8),
                                        ((1, 96, 1, 7, 7), 160)])
def test_partial_last_vector_is_read_in_place(x_shape, o, itemsize):
    """A 1x1 layer whose image is not a whole number of vectors reads its last image in place
    too: the forward pass and the input gradient move their last tile back (tail_shift)
    instead of reading past the source, the weight gradient's lc_tile_a reads x element by
    element (lc_tile_d, for few output channels, reads whole vectors: staged); every build."""
    y_shape = (x_shape[0], o) + x_shape[2:]
    w_shape = (o, x_shape[1], 1, 1, 1)
    args = ((1, 1, 1), (0, 0, 0), (1, 1, 1), 1, itemsize)
    for module in _loops.variants().values():
        for which in ("forward", "input"):
            plan = module.product_plan(which, x_shape, w_shape, y_shape, *args)
            if plan["pixel tiles"] or plan["channel gap"]:
                continue
            assert plan["last slice read in place"], (module.__name__, which, x_shape)
        plan = module.weight_plan(x_shape, w_shape, y_shape, *args)
        if plan["images"] == 1:
            assert plan["last slice read in place"] == (not plan["lanes"]), module.__name__


@pytest.mark.parametrize("size", [7, 14, 28, 33, 56, 100])
def test_weight_steps_are_even(size):
    """The weight gradient's reduction steps of one image are as even as they go (a 28x28
    image's 811 grid columns in steps of 208 and 187, not 256 and a last one of 43, which left
    one thread of two idle for a third of the pass): the last step is short by less than a
    vector of columns per step."""
    shapes = ((1, 64, 1, size, size), (64, 64, 1, 3, 3), (1, 64, 1, size, size))
    for itemsize in (4, 8):
        for module in _loops.variants().values():
            plan = module.weight_plan(*shapes, (1, 1, 1), (0, 1, 1), (1, 1, 1), 1, itemsize)
            if plan["images"] != 1:
                continue
            columns, block, steps = plan["columns"], plan["block"], plan["steps"]
            assert (steps - 1) * block < columns <= steps * block
            assert columns - (steps - 1) * block > block - steps * 64 // itemsize


# Run in a child process: a read past the guarded end faults, and the test fails instead of
# the test run ending.  The source arrays end where an unreadable page begins.
GUARDED_READS = r"""
import ctypes, mmap, sys
import numpy as np
from loopconv import _loops
libc = ctypes.CDLL(None)
PAGE = mmap.PAGESIZE
keep = []

def guarded(a):
    pages = (a.nbytes + PAGE - 1) // PAGE + 1
    m = mmap.mmap(-1, pages * PAGE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(m))
    if libc.mprotect(ctypes.c_void_p(address + (pages - 1) * PAGE), PAGE, 0) != 0:
        sys.exit(2)
    out = np.frombuffer(m, a.dtype, a.size, (pages - 1) * PAGE - a.nbytes).reshape(a.shape)
    out[...] = a
    keep.append(m)
    return out

rng = np.random.default_rng(0)
for x_shape, w_shape, dtype in CASES:
    x = guarded(rng.standard_normal(x_shape).astype(dtype))
    w = rng.standard_normal(w_shape).astype(dtype)
    y_shape = (x_shape[0], w_shape[0]) + x_shape[2:]
    dy = guarded(rng.standard_normal(y_shape).astype(dtype))
    args = ((1, 1, 1), (0, 0, 0), (1, 1, 1), 1)
    want = []
    for module in [_loops.direct] + list(_loops.variants().values()):
        y, dx, dw = (np.empty(s, dtype) for s in (y_shape, x_shape, w_shape))
        for threads in (1, 2):
            module.forward(x, w, np.empty(0, dtype), y, *args, threads)
            module.grad_input(dy, w, np.empty(0, dtype), dx, *args, threads)
            module.grad_weight(x, dy, dw, *args, threads)
            got = [y.copy(), dx.copy(), dw.copy()]
            want = want or got
            for g, r in zip(got, want):
                assert np.abs(g - r).max() <= 1e-3 * (1 + np.abs(r).max())
print("ok")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="guarded pages through Linux's mprotect")
def test_in_place_reads_stay_inside_the_source(tmp_path):
    """A 1x1 convolution reads its source in place, the last image too where the tiles read
    nothing past it (grids of whole vectors): every pass of every build, with x and dy ending
    where an unreadable page begins, on grids of whole vectors and not, through the tiled
    product and pixel tiles, against the direct loops."""
    cases = [((1, 32, 16, 16, 16), (1, 32, 1, 1, 1)), ((1, 64, 1, 28, 28), (256, 64, 1, 1, 1)),
             ((2, 32, 8, 8, 8), (3, 32, 1, 1, 1)), ((1, 256, 1, 14, 14), (1024, 256, 1, 1, 1)),
             ((8, 96, 1, 7, 7), (112, 96, 1, 1, 1)), ((1, 16, 1, 1, 4000), (8, 16, 1, 1, 1)),
             ((1, 16, 1, 1, 4001), (8, 16, 1, 1, 1)), ((3, 24, 1, 12, 20), (40, 24, 1, 1, 1)),
             ((1, 12, 1, 9, 11), (7, 12, 1, 1, 1)), ((2, 10, 1, 5, 5), (6, 10, 1, 1, 1))]
    # the child imports the loopconv this process imports (an installed wheel, or the built
    # tree), not a source tree in its working directory
    home = os.path.dirname(os.path.dirname(os.path.abspath(loopconv.__file__)))
    script = (f"import sys; sys.path.insert(0, {home!r})\n" + "CASES = "
              + repr([(x, w, d) for x, w in cases for d in ("float32", "float64")]))
    done = subprocess.run([sys.executable, "-c", script + GUARDED_READS], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_aliasing_channels_get_a_gap(dtype):
    """Staged channels whose size is a multiple of 2 KiB get a gap of a cache line (so that
    the tiles' rows do not fall into a few cache sets); a 1x1 source that would be read in
    place is then staged, where the product has 32 rows or more.  Every pass of every build,
    on one to three threads, against the direct loops; bit-identical across thread counts."""
    cases = [  # x, w, stride, padding; whether forward and input gradient have a gap
        ((1, 64, 1, 32, 32), (64, 64, 1, 1, 1), (1, 1, 1), (0, 0, 0), True, True),
        ((2, 16, 8, 16, 16), (80, 16, 1, 1, 1), (1, 1, 1), (0, 0, 0), True, False),
        ((1, 8, 1, 64, 64), (16, 8, 1, 2, 2), (1, 2, 2), (0, 0, 0), True, False),
        ((1, 32, 1, 32, 32), (8, 32, 1, 1, 1), (1, 1, 1), (0, 0, 0), False, True),
        ((1, 16, 1, 32, 32), (8, 16, 1, 1, 1), (1, 1, 1), (0, 0, 0), False, False),
        ((3, 64, 1, 16, 16), (64, 64, 1, 3, 3), (1, 1, 1), (0, 1, 1), False, False),
    ]
    rng = np.random.default_rng(5)
    for x_shape, w_shape, stride, pad, gap_f, gap_i in cases:
        y_shape = (x_shape[0], w_shape[0], x_shape[2]) + tuple(
            (x_shape[a] + 2 * pad[a - 2] - w_shape[a]) // stride[a - 2] + 1 for a in (3, 4))
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal(w_shape).astype(dtype)
        dy = rng.standard_normal(y_shape).astype(dtype)
        args = (stride, pad, (1, 1, 1), 1)
        none = np.empty(0, dtype)
        want = {}
        for name, module in [("direct", _loops.direct), *_loops.variants().items()]:
            if name != "direct":
                itemsize = np.dtype(dtype).itemsize
                for which, gap in (("forward", gap_f), ("input", gap_i)):
                    plan = module.product_plan(which, x_shape, w_shape, y_shape, *args, itemsize)
                    assert (plan["channel gap"] > 0) == gap, (name, which, x_shape, w_shape)
                    if gap:
                        assert not plan["source read in place"]
            first = None
            for threads in (1, 2, 3):
                y, dx, dw = (np.empty(s, dtype) for s in (y_shape, x_shape, w_shape))
                module.forward(x, w, none, y, *args, threads)
                module.grad_input(dy, w, none, dx, *args, threads)
                module.grad_weight(x, dy, dw, *args, threads)
                got = [y, dx, dw]
                if first is None:
                    first = got
                for g, f in zip(got, first):
                    assert np.array_equal(g, f), (name, threads, x_shape, w_shape)
            if not want:
                want = {"y": y, "dx": dx, "dw": dw}
            for g, key in zip(first, ("y", "dx", "dw")):
                r = want[key]
                tol = 1e-4 if dtype == np.float32 else 1e-10
                assert np.abs(g - r).max() <= tol * (1 + np.abs(r).max()), (name, key, x_shape)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_large_aliasing_slices_are_copied_only_for_many_panels(dtype):
    """A 1x1 source whose channels alias and whose slice is larger than an L2 (40 channels of
    128x128) is read in place by a product of four panels of tile rows and copied with a gap
    for one of eight, on every build (its own rows a panel); both against the direct loops,
    on one and two threads."""
    rng = np.random.default_rng(11)
    x_shape = (1, 40, 1, 128, 128)
    x = rng.standard_normal(x_shape).astype(dtype)
    args = ((1, 1, 1), (0, 0, 0), (1, 1, 1), 1)
    none = np.empty(0, dtype)
    itemsize = np.dtype(dtype).itemsize
    for name, module in _loops.variants().items():
        rows = module.info()[f"forward tile {np.dtype(dtype).name}"][0]
        for panels, gap in ((4, False), (8, True)):
            w_shape = (panels * rows, 40, 1, 1, 1)
            y_shape = (1, w_shape[0], 1, 128, 128)
            plan = module.product_plan("forward", x_shape, w_shape, y_shape, *args, itemsize)
            assert (plan["channel gap"] > 0) == gap, (name, panels)
            assert plan["source read in place"] == (not gap), (name, panels)
            w = rng.standard_normal(w_shape).astype(dtype)
            want = np.empty(y_shape, dtype)
            _loops.direct.forward(x, w, none, want, *args, 1)
            tol = 1e-4 if dtype == np.float32 else 1e-10
            for threads in (1, 2):
                y = np.empty(y_shape, dtype)
                module.forward(x, w, none, y, *args, threads)
                assert np.abs(y - want).max() <= tol * (1 + np.abs(want).max()), (name, panels)


def _arrays_and_direct(rng, x_shape, w_shape, y_shape, args, dtype):
    """x, w and dy drawn for a forward-style problem, and the direct loops' y and dx."""
    none = np.empty(0, dtype)
    x, w, dy = (rng.standard_normal(shape).astype(dtype) for shape in (x_shape, w_shape,
                                                                         y_shape))
    want_y, want_dx = np.empty(y_shape, dtype), np.empty(x_shape, dtype)
    _loops.direct.forward(x, w, none, want_y, *args, 1)
    _loops.direct.grad_input(dy, w, none, want_dx, *args, 1)
    return x, w, dy, want_y, want_dx


def _forward_and_input_agree(module, name, arrays, args):
    """The forward pass and input gradient of `module` (a build) on `arrays`
    (_arrays_and_direct) against the direct loops, bit-identical on one to three threads."""
    x, w, dy, want_y, want_dx = arrays
    none = np.empty(0, x.dtype)
    tol = 1e-4 if x.dtype == np.float32 else 1e-10
    first = None
    for threads in (1, 2, 3):
        y, dx = np.empty_like(want_y), np.empty_like(want_dx)
        module.forward(x, w, none, y, *args, threads)
        module.grad_input(dy, w, none, dx, *args, threads)
        if first is None:
            first = (y, dx)
            for got, want in ((y, want_y), (dx, want_dx)):
                assert np.abs(got - want).max() <= tol * (1 + np.abs(want).max()), (
                    name, x.shape, w.shape)
        assert np.array_equal(y, first[0]) and np.array_equal(dx, first[1]), (
            name, x.shape, threads)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_aliasing_1x1_sources_read_as_bands(dtype):
    """A 1x1 product of 64 rows (per group) or more whose source's channels alias (planes of
    4096 elements, 16 or 32 KiB) copies each work item's columns of every channel into a band
    (set_band): forward passes and input gradients of every build against the direct loops,
    with groups, two images, a last column block and a last tile that are not whole, a
    stride-2 input gradient; one to three threads bit-identical; the plans' flags.  Planes of
    512 elements (2 or 4 KiB apart, the slice within an L2) are copied whole instead."""
    cases = [  # x, w, groups, stride; whether the forward pass and input gradient read bands
        ((2, 40, 1, 64, 64), (64, 40, 1, 1, 1), 1, 1, True, False),
        ((1, 64, 1, 64, 64), (72, 64, 1, 1, 1), 1, 1, True, True),
        ((1, 128, 1, 64, 64), (128, 64, 1, 1, 1), 2, 1, True, True),
        ((1, 64, 1, 64, 64), (32, 64, 1, 1, 1), 1, 1, False, True),
        ((1, 64, 1, 16, 33), (64, 64, 1, 1, 1), 1, 1, False, False),   # no aliasing
        ((1, 64, 1, 128, 128), (80, 64, 1, 1, 1), 1, 2, False, True),  # dy of 64x64
        ((1, 64, 1, 16, 32), (72, 64, 1, 1, 1), 1, 1, False, False),   # copied whole
    ]
    rng = np.random.default_rng(12)
    itemsize = np.dtype(dtype).itemsize
    for x_shape, w_shape, groups, s, band_f, band_i in cases:
        y_shape = (x_shape[0], w_shape[0], 1) + tuple(-(-n // s) for n in x_shape[3:])
        args = ((1, s, s), (0, 0, 0), (1, 1, 1), groups)
        arrays = _arrays_and_direct(rng, x_shape, w_shape, y_shape, args, dtype)
        for name, module in _loops.variants().items():
            for which, band in (("forward", band_f), ("input", band_i)):
                plan = module.product_plan(which, x_shape, w_shape, y_shape, *args, itemsize)
                assert plan["bands"] == band, (name, which, x_shape, w_shape)
                assert not (band and plan["source read in place"])
            _forward_and_input_agree(module, name, arrays, args)


def test_variants_are_found():
    found = _loops.variants()
    assert "baseline" in found
    assert _loops.VARIANT in found
    assert _loops.tiled is found[_loops.VARIANT]
    for module in found.values():
        assert isinstance(module.info(), dict)


def tile_sizes():
    """Rows and columns of every register tile the variants report, with the usual ones."""
    rows, cols = {4, 6, 8, 12}, {8, 12, 16, 24, 32, 48}
    for module in _loops.variants().values():
        for value in module.info().values():
            if isinstance(value, tuple) and len(value) == 2:
                rows.add(value[0])
                cols.add(value[1])
    return rows, cols


def test_variant_cases_cover_partial_tiles():
    """Channel counts (tile rows) and pixel and reduction counts (tile columns) that are not
    multiples of any register tile."""
    rows, cols = tile_sizes()
    per_group = []
    pixels = []
    for p in VARIANT_CASES:
        x_shape, w_shape, kw = p.values
        groups = kw.get("groups", 1)
        per_group += [w_shape[0] // groups, w_shape[1]]
        out = conv_output_shape(x_shape, w_shape, kw)[2:]
        pixels += [math.prod(out), math.prod(x_shape[2:]), math.prod(w_shape[1:])]
    for r in rows - {1}:
        assert any(c % r for c in per_group), r
    for c in cols - {1}:
        assert any(n % c for n in pixels), c
    assert any(n > 256 for n in pixels)


def test_variant_cases_read_the_weight_both_ways():
    """Forward passes with few grid columns (images times staged pixels) read the weight in
    place, those with many pack it: the cases have both, by a margin."""
    limit = _loops.tiled.info()["weight read in place below grid columns"]
    columns = []
    for p in VARIANT_CASES:
        x_shape, w_shape, kw = p.values
        nd = len(x_shape) - 2
        out = conv_output_shape(x_shape, w_shape, kw)[2:]
        stride = reference.per_axis(kw.get("stride", 1), nd)
        dilation = reference.per_axis(kw.get("dilation", 1), nd)
        staged = [o + (k - 1) * d // s for o, k, s, d in zip(out, w_shape[2:], stride, dilation)]
        columns.append(x_shape[0] * math.prod(staged))
    assert min(columns) < limit // 2 and max(columns) > 2 * limit



def test_wide_products_of_few_columns_pack_the_weight():
    """A product of few grid columns reads the weight in place unless it is wide and then
    takes pixel tiles or a compact grid, which pack it: 3x3 256 -> 256 on 14x14 reads it in
    place at batch 1 (unless it runs as pixel tiles) and at batch 4 (GATHER_WORK grid columns
    times columns of the weight or more) packs it exactly where it takes pixel tiles or a
    compact grid, in both passes of every build; some build does."""
    kw = dict(padding=1)
    limit = _loops.tiled.info()["weight read in place below grid columns"]
    assert 4 * 16 * 14 < limit      # batch 4 is few columns by their count alone
    in_place = packed = 0
    for module in _loops.variants().values():
        for which in ("forward", "input"):
            plans = [module.product_plan(which, (n, 256, 1, 14, 14), (256, 256, 1, 3, 3),
                                         (n, 256, 1, 14, 14), *loop_geometry(2, kw), 4)
                     for n in (1, 4)]
            assert plans[0]["weight read in place"] or plans[0]["pixel tiles"], (module, which)
            other = plans[1]["pixel tiles"] or plans[1]["compact phases"]
            assert plans[1]["weight read in place"] == (not other), (module, which)
            in_place += plans[0]["weight read in place"]
            packed += not plans[1]["weight read in place"]
    assert in_place and packed


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_wide_products_of_few_columns_without_other_tiles_read_the_weight_in_place(
        rng, assert_close, dtype):
    """A wide product of few grid columns packs the weight only for pixel tiles or a compact
    grid; else its grid's tiles read it in place (a kernel-3 1-D layer 512 -> 16 on 1000
    samples at batch 1, in both passes of every build; 3x3 256 -> 16 on 28x28 where it takes
    neither).  Values against the direct loops and the reference, bit-identical on one and
    two threads."""
    limit = _loops.tiled.info()["weight read in place below grid columns"]
    work = _loops.tiled.info()["and below grid columns times columns of the weight"]
    cases = [((1, 512, 1000), (16, 512, 3), dict(padding=1)),
             ((1, 256, 28, 28), (16, 256, 3, 3), dict(padding=1))]
    assert 1000 < limit and 1000 * 512 * 3 >= work and 28 * 30 * 256 * 9 >= work
    itemsize = np.dtype(dtype).itemsize
    for variant, module in _loops.variants().items():
        for i, (x_shape, w_shape, kw) in enumerate(cases):
            x, w, b, b_in, gy = arrays(rng, x_shape, w_shape, kw, dtype)
            nd = len(x_shape) - 2
            for which in ("forward", "input"):
                plan = module.product_plan(which, lift(x).shape, lift(w).shape, lift(gy).shape,
                                           *loop_geometry(nd, kw), itemsize)
                # packed only for pixel tiles or a compact grid (which may read it in place)
                assert plan["weight read in place"] or plan["pixel tiles"] or plan[
                    "compact phases"], (variant, i, which)
                if i == 0:
                    assert plan["weight read in place"], (variant, which)
            got = run_module(module, x, w, b, b_in, gy, kw, threads=2)
            direct = run_module(_loops.direct, x, w, b, b_in, gy, kw, threads=2)
            expected = reference.conv(x, w, b, **kw)
            assert_close(got[0], direct[0], dtype)
            assert_close(got[0], expected, dtype)
            assert_close(got[1], direct[1], dtype)
            assert_close(got[1], reference.conv_input(x_shape, w, gy, **kw), dtype)
            single = run_module(module, x, w, b, b_in, gy, kw, threads=1)
            for g, s in zip(got, single):
                assert np.array_equal(g, s)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_compact_grids_pack_the_weight_where_they_save_its_packing(rng, assert_close, dtype):
    """A wide product of few grid columns packs the weight for a compact grid only where the
    junk columns it saves, over all images, come to PACK_COLUMNS a phase or more: 3x3 on 16x16
    (16 rows of 17 grid columns, the last without junk: 15 junk columns an image) reads it in
    place at batch 1 and 2 (its tiles compact all the same) and packs it at batch 3 (or takes
    pixel tiles),
    in the forward pass of 640 -> 16 channels and the input gradient of 16 -> 640, in every
    build.  Values against the direct loops and the reference, bit-identical on one and two
    threads."""
    info = _loops.tiled.info()
    limit = info["weight read in place below grid columns"]
    work = info["and below grid columns times columns of the weight"]
    kw = dict(padding=1)
    cases = [("forward", (16, 640, 3, 3)), ("input", (640, 16, 3, 3))]
    columns = 15 * 17 + 16
    assert 3 * columns < limit and columns * 640 * 9 >= work
    itemsize = np.dtype(dtype).itemsize
    compact = 0
    for variant, module in _loops.variants().items():
        for which, w_shape in cases:
            for n in (1, 2, 3):
                x_shape = (n, w_shape[1], 16, 16)
                x, w, b, b_in, gy = arrays(rng, x_shape, w_shape, kw, dtype)
                plan = module.product_plan(which, lift(x).shape, lift(w).shape, lift(gy).shape,
                                           *loop_geometry(2, kw), itemsize)
                if n < 3:       # in place, and a compact grid all the same (lc_tile_gc)
                    assert plan["weight read in place"], (variant, which, n, plan)
                else:
                    assert not plan["weight read in place"], (variant, which, plan)
                    assert plan["compact phases"] or plan["pixel tiles"], (variant, which)
                    compact += plan["compact phases"]
                got = run_module(module, x, w, b, b_in, gy, kw, threads=2)
                direct = run_module(_loops.direct, x, w, b, b_in, gy, kw, threads=2)
                i = 0 if which == "forward" else 1
                expected = (reference.conv(x, w, b, **kw) if which == "forward"
                            else reference.conv_input(x_shape, w, gy, **kw))
                assert_close(got[i], direct[i], dtype)
                assert_close(got[i], expected, dtype)
                single = run_module(module, x, w, b, b_in, gy, kw, threads=1)
                for g, s in zip(got, single):
                    assert np.array_equal(g, s), (variant, which, n)
    assert compact


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_sums_of_many_blocks_kept_in_the_item(rng, assert_close, dtype):
    """Products whose A has more than SUM_BLOCKS blocks of KC columns keep the sums of their
    grid tiles that are not whole (junk columns, rows of output that a tile crosses) in the
    item's rows until the last block: 2-D 3x3 layers with junk columns, a stride, a dilation,
    rows of output not a multiple of the tile's, several images per item, and a 1-D layer
    (tails only), both passes, in every build: against the direct loops and the reference,
    bit-identical on one, two and three threads."""
    info = _loops.tiled.info()
    least = (info["columns of A per block"]
             * info["tiles keep their sums above blocks of A's columns"])
    cases = [((1, 132, 13, 19), (12, 132, 3, 3), dict(padding=1)),
             ((3, 136, 9, 11), (10, 136, 3, 3), dict(stride=2, padding=(2, 1), dilation=2)),
             ((2, 1200, 37), (9, 1200, 1), {}),
             ((1, 12, 15, 17), (140, 12, 3, 3), dict(padding=1))]
    for x_shape, w_shape, _ in cases[:3]:
        assert math.prod(w_shape[1:]) > least, (x_shape, w_shape)
    assert cases[3][1][0] * 9 > least     # the input gradient's A of the last case
    for variant, module in _loops.variants().items():
        for x_shape, w_shape, kw in cases:
            x, w, b, b_in, gy = arrays(rng, x_shape, w_shape, kw, dtype)
            got = run_module(module, x, w, b, b_in, gy, kw, threads=2)
            direct = run_module(_loops.direct, x, w, b, b_in, gy, kw, threads=2)
            expected = [reference.conv(x, w, b, **kw), reference.conv_input(x_shape, w, gy, **kw)]
            for g, d, e in zip(got[:2], direct[:2], expected):
                assert not np.isnan(g).any(), (variant, x_shape)
                assert_close(g, d, dtype)
                assert_close(g, e, dtype)
            for threads in (1, 3):
                other = run_module(module, x, w, b, b_in, gy, kw, threads=threads)
                for g, s in zip(got, other):
                    assert np.array_equal(g, s), (variant, x_shape, threads)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_large_packed_weights_are_streamed(rng, assert_close, dtype):
    """The grid's tiles ask for a packed weight's rows ahead where it is larger than
    STREAM_A_BYTES (rounded up to whole panels): 1x1 2048 -> 1032 channels on 32x32 (8.5 MB in
    float32) in the forward pass and the input gradient, and 3x3 512 -> 512 on 32x32 (a
    compact grid, 9.4 MB); not 3x3 128 -> 128 on 56x56 nor 256 -> 512 on 32x32 (0.6 and 4.7
    MB in float32, twice that in float64: the larger streamed in float64), nor a weight read in
    place.  The 1x1 layer's values against the reference, bit-identical on one and two threads,
    in every build (only the AVX-512 build asks; the others compute the same)."""
    limit = _loops.tiled.info()["weight streamed above bytes"]
    itemsize = np.dtype(dtype).itemsize
    kw = dict(padding=1)
    cases = [((1, 2048, 32, 32), (1032, 2048, 1, 1), {}, True),
             ((1, 512, 32, 32), (512, 512, 3, 3), kw, True),
             ((1, 128, 56, 56), (128, 128, 3, 3), kw, False),
             ((1, 256, 32, 32), (512, 256, 3, 3), kw, itemsize == 8),
             ((1, 1024, 16, 16), (1024, 1024, 3, 3), kw, False)]     # read in place
    for _, w_shape, _, streamed in cases[:4]:
        assert (math.prod(w_shape) * itemsize > limit) == streamed, (w_shape, limit)
    count = 0
    for variant, module in _loops.variants().items():
        for x_shape, w_shape, kw, streamed in cases:
            y_shape = conv_output_shape(x_shape, w_shape, kw)
            for which in ("forward", "input"):
                plan = module.product_plan(which, lift(np.empty(x_shape)).shape,
                                           lift(np.empty(w_shape)).shape,
                                           lift(np.empty(y_shape)).shape,
                                           *loop_geometry(2, kw), itemsize)
                packed = not plan["pixel tiles"] and not plan["weight read in place"]
                assert plan["weight streamed"] == (streamed and packed), (
                    variant, which, w_shape, plan)
                count += plan["weight streamed"]
        x_shape, w_shape, kw, _ = cases[0]
        x, w, b, b_in, gy = arrays(rng, x_shape, w_shape, kw, dtype)
        geometry = loop_geometry(2, kw)
        no_bias = np.empty(0, x.dtype)
        results = []
        for threads in (2, 1):
            y = np.full(lift(gy).shape, np.nan, x.dtype)
            module.forward(lift(x), lift(w), b, y, *geometry, threads)
            dx = np.full(lift(x).shape, np.nan, x.dtype)
            module.grad_input(lift(gy), lift(w), no_bias, dx, *geometry, threads)
            results.append((y.reshape(gy.shape), dx.reshape(x.shape)))
        assert_close(results[0][0], reference.conv(x, w, b), dtype)
        assert_close(results[0][1], reference.conv_input(x_shape, w, gy), dtype)
        for two, one in zip(*results):
            assert np.array_equal(two, one), variant
    assert count >= 2 * len(_loops.variants())      # the 1x1 layer's passes in every build


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_aliasing_rows_read_in_place_are_asked_for_nearer(dtype):
    """The grid's tiles ask for B's rows nearer ahead (LC_PF_NEAR) where the product reads a
    source in place whose channels are a multiple of ALIAS_BYTES apart: a 1x1 layer of few
    output channels on 64x64 (too few rows to spread or band it) in the forward pass, its
    input gradient to 16 channels, and a GAN's transposed 4x4 layer from 4x4 as its columns'
    product (the weight read as an image of 4096 pixels); not a padded 3x3 layer (staged),
    nor a 64x64 image with 64 output channels (banded), nor 16x33 (no aliasing).  The values
    against the direct loops, bit-identical on one to three threads, in every build."""
    itemsize = np.dtype(dtype).itemsize
    cases = [  # x, w, padding; whether the forward pass and the input gradient ask nearer
        ((1, 64, 1, 64, 64), (16, 64, 1, 1, 1), 0, True, False),
        ((1, 128, 1, 64, 64), (16, 128, 1, 1, 1), 0, True, False),
        ((1, 16, 1, 64, 64), (128, 16, 1, 1, 1), 0, False, True),
        ((1, 512, 1, 1, 4096), (16, 512, 1, 1, 1), 0, True, False),
        ((1, 64, 1, 64, 64), (16, 64, 1, 3, 3), 1, False, False),
        ((1, 64, 1, 64, 64), (64, 64, 1, 1, 1), 0, False, False),
        ((1, 64, 1, 16, 33), (16, 64, 1, 1, 1), 0, False, False),
    ]
    rng = np.random.default_rng(31)
    for x_shape, w_shape, pad, near_f, near_i in cases:
        y_shape = x_shape[:1] + w_shape[:1] + tuple(n - k + 1 + 2 * pad for n, k in
                                                    zip(x_shape[2:], w_shape[2:]))
        args = ((1, 1, 1), (0, pad, pad), (1, 1, 1), 1)
        arrays = _arrays_and_direct(rng, x_shape, w_shape, y_shape, args, dtype)
        for name, module in _loops.variants().items():
            for which, near in (("forward", near_f), ("input", near_i)):
                plan = module.product_plan(which, x_shape, w_shape, y_shape, *args, itemsize)
                assert plan["rows asked for nearer"] == near, (name, which, x_shape, w_shape)
            _forward_and_input_agree(module, name, arrays, args)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_phase_packing_by_taps(rng, assert_close, dtype):
    """A strided input gradient packs its weight for every phase in one pass over w
    (pack_phase_panel), a panel's rows of taps transposed at once where they fit (3x3x3: 27
    taps of a panel of grid tiles' rows) and tap by tap where they do not (9x11x11: 1089 taps,
    more than PACK_TAPS for a single row); both against the reference, with a bias,
    bit-identical on one and two threads, in every build."""
    cases = [((2, 8, 16, 16, 16), (4, 8, 3, 3, 3), dict(stride=2, padding=1), True),
             ((1, 8, 12, 16, 16), (4, 8, 9, 11, 11), dict(stride=2, padding=(4, 5, 5)),
              False)]
    itemsize = np.dtype(dtype).itemsize
    for variant, module in _loops.variants().items():
        for x_shape, w_shape, kw, at_once in cases:
            y_shape = conv_output_shape(x_shape, w_shape, kw)
            geometry = loop_geometry(3, kw)
            plan = module.product_plan("input", x_shape, w_shape, y_shape, *geometry[:4],
                                       itemsize)
            assert not plan["weight read in place"], (variant, plan)
            assert plan["taps packed at once"] == at_once, (variant, w_shape, plan)
            x, w, b, b_in, gy = arrays(rng, x_shape, w_shape, kw, dtype)
            results = []
            for threads in (2, 1):
                dx = np.full(x_shape, np.nan, x.dtype)
                module.grad_input(gy, w, b_in, dx, *geometry, threads)
                results.append(dx)
            expected = reference.conv_input(x_shape, w, gy, **kw) + b_in.reshape(-1, 1, 1, 1)
            assert_close(results[0], expected, dtype)
            assert np.array_equal(results[0], results[1]), (variant, w_shape)


def lift(a):
    """(N, C, *spatial) with 1 to 3 spatial axes as the loops' 5-D (N, C, D, H, W)."""
    return np.ascontiguousarray(a.reshape(a.shape[:2] + (1,) * (5 - a.ndim) + a.shape[2:]))


def loop_geometry(nd, kw):
    stride = reference.per_axis(kw.get("stride", 1), nd)
    dilation = reference.per_axis(kw.get("dilation", 1), nd)
    pairs = reference.padding_pairs(kw.get("padding", 0), nd)
    pad = (0,) * (3 - nd) + tuple(b for b, _ in pairs)
    return (1,) * (3 - nd) + stride, pad, (1,) * (3 - nd) + dilation, kw.get("groups", 1)


def run_module(module, x, w, b, b_in, gy, kw, threads):
    """forward (with bias), grad_input (without and with a bias), grad_weight of one module,
    into outputs filled with NaN (so an element left unwritten shows)."""
    nd = x.ndim - 2
    geometry = loop_geometry(nd, kw)
    no_bias = np.empty(0, x.dtype)
    y = np.full(lift(gy).shape, np.nan, x.dtype)
    module.forward(lift(x), lift(w), b, y, *geometry, threads)
    dx = np.full(lift(x).shape, np.nan, x.dtype)
    module.grad_input(lift(gy), lift(w), no_bias, dx, *geometry, threads)
    dxb = np.full(lift(x).shape, np.nan, x.dtype)
    module.grad_input(lift(gy), lift(w), b_in, dxb, *geometry, threads)
    dw = np.full(lift(w).shape, np.nan, x.dtype)
    module.grad_weight(lift(x), lift(gy), dw, *geometry, threads)
    return [a.reshape(shape) for a, shape in
            zip((y, dx, dxb, dw), (gy.shape, x.shape, x.shape, w.shape))]


SHARED_CASES = [
    # (x shape, w shape, kw, forward's slices shared, input gradient's): batch 1 and an odd
    # batch on two threads, slices of 256 KiB or more staged once by all threads
    ((1, 32, 48, 45), (32, 32, 3, 3), dict(padding=1), True, True),
    ((3, 16, 61, 70), (12, 16, 3, 3), dict(padding=(2, 1), stride=2), True, False),
    ((1, 8, 13, 30, 28), (8, 8, 3, 3, 3), dict(padding=1), True, True),
    # two images on two threads: each thread stages its own
    ((2, 32, 48, 45), (32, 32, 3, 3), dict(padding=1), False, False),
]


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw, forward, input", SHARED_CASES)
def test_slices_staged_shared(rng, assert_close, x_shape, w_shape, kw, forward, input, dtype):
    """Where the threads share the slices they stage (shares_slices), every slice is staged
    once by all of them (stage_shared) before the product: the same results on 1 to 3
    threads, bit for bit, in every build, and the reference's."""
    x, w, b, b_in, gy = arrays(rng, x_shape, w_shape, kw, dtype)
    y_shape = conv_output_shape(x_shape, w_shape, kw)
    geometry = loop_geometry(len(x_shape) - 2, kw)
    five = [lift(np.empty(s, np.int8)).shape for s in (x_shape, w_shape, y_shape)]
    for module in _loops.variants().values():
        plans = [module.product_plan(which, *five, *geometry, np.dtype(dtype).itemsize)
                 for which in ("forward", "input")]
        assert [p["slices staged shared on two threads"] for p in plans] == [forward, input]
        got = [run_module(module, x, w, b, b_in, gy, kw, threads=t) for t in (2, 1, 3)]
        expected = [reference.conv(x, w, b, **kw), reference.conv_input(x_shape, w, gy, **kw)]
        for g, e in zip(got[0], expected):
            assert_close(g, e, dtype)
        for other in got[1:]:
            for g, o in zip(got[0], other):
                assert np.array_equal(g, o)


WEIGHT_SHARED_CASES = [
    # weight gradients whose rows k are split into blocks: every block of images staged once
    # before the items run (a block of one image, blocks of several with a short last one)
    (1, 512, 48, (6, 6, 7), 3, True),
    (9, 128, 16, (7, 7), 3, True),
    (10, 256, 16, (7, 7), 3, True),
    (2, 8, 8, (5, 6), 3, False),
]


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("n, c, o, size, k, shared", WEIGHT_SHARED_CASES)
def test_weight_blocks_staged_shared(rng, assert_close, n, c, o, size, k, shared, dtype):
    """The weight gradient with its blocks of images staged once (weight_blocks_shared): the
    reference's, and the same bits on 1 to 3 threads, in every build."""
    kw = dict(padding=1)
    x_shape, w_shape = (n, c) + size, (o, c) + (k,) * len(size)
    x, w, b, b_in, gy = arrays(rng, x_shape, w_shape, kw, dtype)
    five = [lift(np.empty(s, np.int8)).shape
            for s in (x_shape, w_shape, conv_output_shape(x_shape, w_shape, kw))]
    geometry = loop_geometry(len(size), kw)
    want = reference.conv_weight(x, w_shape, gy, **kw)
    for module in _loops.variants().values():
        assert module.weight_blocks_shared(*five, *geometry, np.dtype(dtype).itemsize) == shared
        got = []
        for threads in (2, 1, 3):
            dw = np.full(five[1], np.nan, x.dtype)
            module.grad_weight(lift(x), lift(gy), dw, *geometry, threads)
            got.append(dw.reshape(w_shape))
        assert_close(got[0], want, dtype)
        assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2])


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", VARIANT_CASES)
@pytest.mark.parametrize("variant", list(_loops.variants()))
def test_variant_against_direct_and_reference(rng, assert_close, variant, x_shape, w_shape,
                                              kw, dtype):
    module = _loops.variants()[variant]
    x, w, b, b_in, gy = arrays(rng, x_shape, w_shape, kw, dtype)
    got = run_module(module, x, w, b, b_in, gy, kw, threads=2)
    direct = run_module(_loops.direct, x, w, b, b_in, gy, kw, threads=2)
    ref_dx = reference.conv_input(x_shape, w, gy, **kw)
    expected = [reference.conv(x, w, b, **kw), ref_dx,
                ref_dx + b_in.astype(np.float64).reshape(-1, *(1,) * (x.ndim - 2)),
                reference.conv_weight(x, w_shape, gy, **kw)]
    for name, g, d, e in zip(("forward", "grad_input", "grad_input+bias", "grad_weight"),
                             got, direct, expected):
        assert not np.isnan(g).any(), name
        assert_close(g, d, dtype)
        assert_close(g, e, dtype)
        assert_close(d, e, dtype)
    single = run_module(module, x, w, b, b_in, gy, kw, threads=1)
    for g, s in zip(got, single):
        assert np.array_equal(g, s)


@st.composite
def random_2d_case(draw):
    """A random 2-D convolution for the compiled loops: any stride (also one that does not
    divide), dilation, groups and asymmetric padding, with rows long enough for several tiles."""
    groups = draw(st.sampled_from([1, 2, 3]))
    c, o = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 5))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pad = tuple(tuple(draw(st.integers(0, 4)) for _ in range(2)) for _ in range(2))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - sum(pad[0])), 24))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - sum(pad[1])), 70))
    kwargs = dict(stride=(draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 2, 3, 4]))),
                  padding=pad, dilation=(dh, dw), groups=groups)
    return (draw(st.integers(1, 2)), c, h, w), (o, c // groups, kh, kw), kwargs


@settings(max_examples=120, deadline=None)
@given(case=random_2d_case(), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**32 - 1))
def test_variants_on_random_geometries(assert_close, case, dtype, seed):
    """Every compiled variant, at 1 and 2 threads, against the direct loops: every element
    written (outputs start as NaN), equal within rounding, and bit-identical across threads."""
    x_shape, w_shape, kw = case
    rng = np.random.default_rng(seed)
    x, w, b, b_in, gy = arrays(rng, x_shape, w_shape, kw, dtype)
    want = run_module(_loops.direct, x, w, b, b_in, gy, kw, threads=1)
    for module in _loops.variants().values():
        two = run_module(module, x, w, b, b_in, gy, kw, threads=2)
        one = run_module(module, x, w, b, b_in, gy, kw, threads=1)
        for g, g1, d in zip(two, one, want):
            assert not np.isnan(g).any()
            assert_close(g, d, dtype)
            assert np.array_equal(g, g1)


# ---------------------------------------------------------------------------------------------
# LOOPCONV_CPU

PROBE = """
    import json, warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import numpy as np
        import loopconv
        from loopconv import _loops
    x = np.arange(50.0).reshape(1, 2, 5, 5)
    y = loopconv.conv2d(x, np.ones((1, 2, 2, 2)))
    print(json.dumps({
        "variant": _loops.VARIANT,
        "module": _loops.tiled.__name__,
        "best": list(_loops.variants())[-1],
        "warnings": [[w.category.__name__, str(w.message)] for w in caught],
        "y00": float(y[0, 0, 0, 0]),
    }))
"""


@pytest.mark.parametrize("variant", list(_loops.variants()))
def test_loopconv_cpu_forces_a_variant(variant):
    out = json.loads(run_python(PROBE, {"LOOPCONV_CPU": variant}))
    assert out["variant"] == variant
    assert out["module"] == _loops.variants()[variant].__name__
    assert out["warnings"] == []
    assert out["y00"] == float(sum([0, 1, 5, 6, 25, 26, 30, 31]))


def test_loopconv_cpu_baseline():
    out = json.loads(run_python(PROBE, {"LOOPCONV_CPU": "baseline"}))
    assert out["variant"] == "baseline"


@pytest.mark.parametrize("value", ["no-such-cpu"] + [
    name for name in _loops._VARIANTS if name not in _loops.variants()])
def test_loopconv_cpu_unknown_or_unsupported_warns_and_falls_back(value):
    out = json.loads(run_python(PROBE, {"LOOPCONV_CPU": value}))
    assert out["variant"] == out["best"]
    categories = [category for category, _ in out["warnings"]]
    assert categories == ["RuntimeWarning"], out["warnings"]
    message = out["warnings"][0][1]
    assert "LOOPCONV_CPU" in message and value in message


def test_no_loopconv_cpu_picks_the_best_variant():
    out = json.loads(run_python(PROBE))
    assert out["variant"] == out["best"] == list(_loops.variants())[-1]
    assert out["warnings"] == []


# ---------------------------------------------------------------------------------------------
# The packed weight of a forward-style product packed by its work items, each row block of
# each group by the first item that reads it (tiled_product.pxi's pack_first), and 1x1 input
# gradients' panels copied as runs (pack_phase_panel)

ITEM_PACKED = [  # forward pass and input gradient; which of them pack by items (AVX-512, f32)
    (case("1x1-forward-partial-panel", (4, 96, 7, 7), (200, 96, 1, 1)), (True, False)),
    (case("1x1-input-partial-panel", (4, 300, 7, 7), (64, 300, 1, 1)), (False, True)),
    (case("1x1-input-groups", (4, 300, 7, 7), (64, 150, 1, 1), groups=2), (False, True)),
    (case("1x1-input-stride2-phases", (4, 200, 6, 6), (96, 200, 1, 1), stride=2),
     (False, True)),
    (case("3x3-groups", (4, 64, 7, 7), (100, 32, 3, 3), padding=1, groups=2), (True, False)),
    # slices of two image blocks taken whole by the threads: packed before the items run
    (case("1x1-input-stride2-slices", (8, 200, 8, 8), (64, 200, 1, 1), stride=2),
     (False, False)),
    # as pixel tiles: a 1-D layer, and a GAN's 4x4 stride-2 layers (their input gradients are
    # the transposed layers' forward passes)
    (case("1-d", (4, 256, 50), (300, 256, 3), padding=1), (True, True)),
    (case("4x4-stride-2-onto-4x4", (4, 256, 8, 8), (128, 256, 4, 4), stride=2, padding=1),
     (False, True)),
    (case("4x4-stride-2-onto-2x2", (2, 512, 4, 4), (256, 512, 4, 4), stride=2, padding=1),
     (True, True)),
]


def _product(module, which, x_shape, w, src, kw, threads):
    """The forward pass of src = x (which "forward") or the input gradient of src = dy
    ("input") by `module`, into an array of NaN."""
    nd = len(x_shape) - 2
    none = np.empty(0, w.dtype)
    if which == "forward":
        out = np.full(lift(np.empty(conv_output_shape(x_shape, w.shape, kw), np.int8)).shape,
                      np.nan, w.dtype)
        module.forward(lift(src), lift(w), none, out, *loop_geometry(nd, kw), threads)
        return out.reshape(conv_output_shape(x_shape, w.shape, kw))
    out = np.full(lift(np.empty(x_shape, np.int8)).shape, np.nan, w.dtype)
    module.grad_input(lift(src), lift(w), none, out, *loop_geometry(nd, kw), threads)
    return out.reshape(x_shape)


def test_which_products_pack_by_items():
    module = _loops.variants()["x86-64-v4"]
    for c, packs in ITEM_PACKED:
        x_shape, w_shape, kw = c.values
        shapes = [lift(np.empty(s, np.int8)).shape
                  for s in (x_shape, w_shape, conv_output_shape(x_shape, w_shape, kw))]
        for which, by_items in zip(("forward", "input"), packs):
            plan = module.product_plan(which, *shapes, *loop_geometry(len(x_shape) - 2, kw), 4)
            assert not plan["weight read in place"], (c.id, which)
            assert plan["weight packed by the items on two threads"] == by_items, (c.id, which)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", [c for c, _ in ITEM_PACKED])
@pytest.mark.parametrize("variant", list(_loops.variants()))
def test_packed_by_items(rng, assert_close, variant, x_shape, w_shape, kw, dtype):
    """Both passes against the reference, every element written, the same bits on one to
    three threads; then a second call with another weight of the same shape gets that
    weight's results (nothing packed by the first call is taken for packed again)."""
    module = _loops.variants()[variant]
    x = rng.standard_normal(x_shape).astype(dtype)
    gy = rng.standard_normal(conv_output_shape(x_shape, w_shape, kw)).astype(dtype)
    for w in (rng.standard_normal(w_shape).astype(dtype) for _ in range(2)):
        for which, src, want in (("forward", x, reference.conv(x, w, **kw)),
                                 ("input", gy, reference.conv_input(x_shape, w, gy, **kw))):
            got = _product(module, which, x_shape, w, src, kw, 2)
            assert not np.isnan(got).any(), which
            assert_close(got, want, dtype)
            for threads in (1, 3):
                assert np.array_equal(_product(module, which, x_shape, w, src, kw, threads),
                                      got), (which, threads)
