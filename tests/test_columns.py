"""The passes computed through columns: the input gradient as columns and a scatter
(`loopconv._loops.col2im_grad_input`, for input gradients whose phase-split grids would be mostly
padding, such as a GAN generator's first transposed convolution from a 1x1 input, or that come from
one output pixel), the weight gradient as a gather and a product
(`loopconv._loops.im2col_grad_weight`, for weight gradients of short reductions: few output pixels,
such as squeeze-and-excitation layers on 1x1 images or a dense layer written as a convolution) and
the forward pass to one output pixel from the gathered columns (`loopconv._loops.im2col_forward`;
up to 8 images as dot products, `tiled.dense`).  Each against the reference on chosen and random
geometries, every element written, the same bits on 1, 2 and 3 threads; which problems take it; the
public functions on such problems."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from common import DTYPE_PARAMS, case, chosen_loops, conv_arrays, conv_output_shape, grouped_case
from test_depthwise import lift, loop_args

import loopconv
from loopconv import _loops

FIXED = [
    case("2d-gan-1x1", (3, 24, 4, 4), (20, 24, 4, 4)),                 # dy 1x1, 16 taps
    case("2d-1x1-dy-stride2-pad1", (2, 6, 5, 5), (7, 6, 4, 4), stride=2, padding=1),
    case("2d-groups", (2, 8, 6, 5), (6, 4, 5, 4), groups=2),
    case("2d-dilated", (2, 3, 7, 7), (4, 3, 3, 3), dilation=3),
    case("2d-asym-pad", (1, 4, 5, 6), (5, 4, 4, 5), padding=((1, 2), (0, 3))),
    case("1d", (3, 5, 9), (4, 5, 7), stride=3, padding=2),
    case("3d", (2, 3, 4, 4, 3), (4, 3, 3, 3, 3), padding=(1, 0, 1)),
    case("2d-many-channels", (2, 40, 3, 3), (64, 40, 3, 3)),
    case("3d-kernel-stride", (1, 6, 6, 4, 7), (5, 6, 2, 2, 2), stride=2),   # x's last unread
    case("2d-kernel-stride-groups", (1, 8, 6, 7), (4, 4, 3, 3), stride=3, groups=2),
]


def random_cases(count, seed):
    """Random geometries with small outputs: 1 to 3 spatial axes, outputs of 1 to 3 pixels
    along an axis, kernels of 1 to 6 taps, strides 1 to 3, dilation 1 or 2, padding up to
    2 on each side, 1 to 3 groups of 1 to 5 channels."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        nd = int(rng.integers(1, 4))
        groups = int(rng.integers(1, 4))
        kernel, stride, dilation, pairs, size = [], [], [], [], []
        for _ in range(nd):
            k, d, s = int(rng.integers(1, 7 if nd < 3 else 4)), int(rng.integers(1, 3)), int(
                rng.integers(1, 4))
            p = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
            out = int(rng.integers(1, 4))
            size.append(max(1, (out - 1) * s + d * (k - 1) + 1 - sum(p)))
            kernel.append(k)
            dilation.append(d)
            stride.append(s)
            pairs.append(p)
        cin, cout = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        cases.append(grouped_case(f"random-{i}", int(rng.integers(1, 4)), groups, cin, cout,
                                  size, kernel, stride, pairs, dilation))
    return cases


RANDOM = random_cases(40, seed=20261201)


def input_gradient(fn, dy, w, bias, x_shape, kw, threads):
    """`fn` (`_loops.col2im_grad_input` or `_loops.taps_grad_input`) on the case, into an
    output filled with NaN."""
    dx = np.full(lift(np.empty(x_shape)).shape, np.nan, dy.dtype)
    fn(lift(dy), lift(w), bias, dx, *loop_args(x_shape, w.shape, kw), threads)
    return dx.reshape(x_shape)


def col2im(dy, w, bias, x_shape, kw, threads):
    return input_gradient(_loops.col2im_grad_input, dy, w, bias, x_shape, kw, threads)


def check_input_gradient(fn, assert_close, x_shape, w, gy, b_in, kw, dtype):
    """`fn`'s input gradient, with no bias and with b_in: every element written, against the
    reference, the same bits on 1, 2 and 3 threads."""
    want = reference.conv_input(x_shape, w, gy, **kw)
    bound = reference.conv_input(x_shape, np.abs(w), np.abs(gy), **kw)
    for bias, add in ((b_in[:0], 0), (b_in, b_in.astype(np.float64).reshape(
            -1, *(1,) * (len(x_shape) - 2)))):
        got = input_gradient(fn, gy, w, bias, x_shape, kw, threads=2)
        assert not np.isnan(got).any()
        assert_close(got, want + add, dtype, bound=bound + np.abs(add))
        for threads in (1, 3):
            assert np.array_equal(got, input_gradient(fn, gy, w, bias, x_shape, kw, threads))


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", FIXED + RANDOM)
def test_against_reference_and_across_threads(rng, assert_close, x_shape, w_shape, kw,
                                               dtype):
    x, w, _, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    b_in = rng.standard_normal(x_shape[1]).astype(dtype)
    check_input_gradient(_loops.col2im_grad_input, assert_close, x_shape, w, gy, b_in, kw,
                         dtype)


@pytest.mark.parametrize("x_shape, w_shape, kw, chosen", [
    ((32, 100, 4, 4), (512, 100, 4, 4), {}, True),           # DCGAN's first layer
    ((32, 32, 4, 4), (10, 32, 4, 4), {}, True),              # 4x4 taps to a 1x1 output
    ((32, 256, 8, 8), (512, 256, 4, 4), dict(stride=2, padding=1), True),    # 4x4 dy
    ((8, 64, 16, 16), (128, 64, 4, 4), dict(stride=2, padding=1), False),    # 8x8 dy
    ((8, 512, 7, 7), (512, 512, 3, 3), dict(padding=1), False),    # 2-D stride 1
    ((8, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), False),
    ((1, 48, 1, 1), (1152, 48, 1, 1), {}, True),             # one output pixel
    ((4, 64, 1, 1), (64, 16, 1, 1), dict(groups=4), False),  # ... in groups
    ((8, 512, 14, 14), (512, 16, 3, 3), dict(padding=1, groups=32), False),   # sums of 16
    ((2, 32, 16, 16, 16), (32, 32, 3, 3, 3), dict(padding=1), False),         # sums of 32
    ((2, 128, 4, 4, 4), (128, 128, 3, 3, 3), dict(padding=1), True),
    ((1, 128, 28, 28), (256, 128, 3, 3), dict(stride=2, padding=1), True),   # batch 1
    ((8, 128, 28, 28), (256, 128, 3, 3), dict(stride=2, padding=1), False),  # batch 8
    ((1, 128, 56, 56), (256, 128, 3, 3), dict(stride=2, padding=1), False),  # dy 28x28
    ((1, 256, 14, 14), (512, 256, 1, 1), dict(stride=2), False),             # one tap
    ((1, 64, 28, 28), (128, 64, 3, 3), dict(stride=2, padding=1), False),    # sums of 128
    # batch 1, one tap per phase (kernel = stride): by the weight's size
    ((1, 512, 8, 8, 8), (512, 512, 2, 2, 2), dict(stride=2), True),
    ((1, 512, 28, 28), (1024, 512, 2, 2), dict(stride=2), True),
    ((1, 128, 8, 8, 8), (256, 128, 2, 2, 2), dict(stride=2), False),
    ((2, 512, 8, 8, 8), (512, 512, 2, 2, 2), dict(stride=2), False),          # batch 2
    ((1, 1024, 14, 14), (2048, 1024, 1, 1), dict(stride=2), False),          # taps < phases
    # 2-D: sums over FLAT_COLUMNS_OUT output channels or more, at a stride above 1
    ((8, 64, 7, 7), (256, 64, 3, 3), dict(padding=1), False),
    ((8, 64, 14, 14), (256, 64, 3, 3), dict(stride=2, padding=1), True),
    ((8, 128, 7, 7), (128, 128, 3, 3), dict(padding=1), False),
    ((8, 128, 17, 17), (192, 128, 7, 1), dict(padding=(3, 0)), False),       # Inception's 7x1
    # grids 4 times dy: columns, unless a stride-1 batch of 128 pixels or more (pixel tiles)
    ((16, 512, 2, 2), (512, 512, 3, 3), dict(padding=1), True),
    ((64, 512, 2, 2), (512, 512, 3, 3), dict(padding=1), False),
    ((16, 256, 4, 4), (256, 256, 5, 5), dict(padding=2), False),
    ((16, 256, 4, 4), (256, 256, 5, 5), dict(padding=2, stride=2), True),
])
def test_which_problems(x_shape, w_shape, kw, chosen):
    """By how much larger than dy the phase-split grids would be (never by thread count)."""
    stride = reference.per_axis(kw.get("stride", 1), len(x_shape) - 2)
    loops = chosen_loops(conv_output_shape(x_shape, w_shape, kw), w_shape, stride,
                         kw.get("groups", 1))
    assert (loops.grad_input is _loops.col2im_grad_input) == chosen


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_columns_leave_small_3d_grids_to_the_tiled_loops(rng, assert_close, dtype):
    """A 3x3x3 layer on 8x8x8 is chosen for columns by its shapes (its full grids are twice its
    output), but its input gradient runs as the tiled loops (their pixel tiles, or their
    product, whose grids sharing the zeros between rows are 1.25 times dx): the same bits."""
    x_shape, w_shape, kw = (2, 64, 8, 8, 8), (64, 64, 3, 3, 3), dict(padding=1)
    y_shape = conv_output_shape(x_shape, w_shape, kw)
    assert chosen_loops(y_shape, w_shape, (1, 1, 1), 1).grad_input is _loops.col2im_grad_input
    five = [lift(np.empty(s, np.int8)).shape for s in (x_shape, w_shape, y_shape)]
    args = loop_args(x_shape, w_shape, kw)
    itemsize = np.dtype(dtype).itemsize
    assert (_loops.tiled.uses_pixel_tiles("input", *five, *args, itemsize)
            or _loops.tiled.grid_waste("input", *five, *args, itemsize)
            < _loops.COL2IM_TILED_WASTE)
    x, w, b, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    got = col2im(gy, w, b[:0], x_shape, kw, threads=2)
    tiled = np.full(five[0], np.nan, dtype)
    _loops.tiled.grad_input(lift(gy), lift(w), b[:0], tiled, *args, 2)
    assert np.array_equal(got, tiled.reshape(x_shape))
    assert_close(got, reference.conv_input(x_shape, w, gy, **kw), dtype,
                 bound=reference.conv_input(x_shape, np.abs(w), np.abs(gy), **kw))


@pytest.mark.parametrize("x_shape, dtype, tiled", [
    ((1, 256, 8, 8), np.float32, True),         # a generator's 4x4 stride-2 layer from 8x8
    ((1, 256, 8, 8), np.float64, False),        # float64 in 2-D: as fast either way
    ((1, 256, 7, 7), np.float32, False),        # fewer than COL2IM_PAIRS_PIXELS pixels
    ((1, 256, 4, 4), np.float32, False),
    ((2, 256, 8, 8), np.float32, False),        # batch 2: not a COL2IM_SINGLE_PIXELS problem
    ((1, 256, 32), np.float64, True),           # 1-D from COL2IM_PAIRS_SAMPLES, both dtypes
    ((1, 256, 16), np.float32, False),
])
def test_pairs_of_taps_leave_the_columns(rng, assert_close, x_shape, dtype, tiled):
    """conv_transpose of 4x4 (4) stride 2 at batch 1, which the columns take by its shapes
    (COL2IM_SINGLE_PIXELS), runs on the tiled loops from COL2IM_PAIRS_PIXELS pixels in 2-D
    (float32) and COL2IM_PAIRS_SAMPLES in 1-D: against the reference with a bias, the same
    bits on 1 and 2 threads, and as the tiled loops' own input gradient."""
    d, kw = len(x_shape) - 2, dict(stride=2, padding=1)
    w_shape = (x_shape[1], 16) + (4,) * d
    x_conv = x_shape[:1] + (16,) + tuple(2 * s for s in x_shape[2:])    # the layer's output
    assert conv_output_shape(x_conv, w_shape, kw) == x_shape
    args = loop_args(x_conv, w_shape, kw)
    assert chosen_loops(x_shape, w_shape, args[0], 1).grad_input is _loops.col2im_grad_input
    five = [lift(np.empty(s, np.int8)).shape for s in (x_conv, w_shape, x_shape)]
    assert _loops._input_on_tiles(*five, *args, np.dtype(dtype).itemsize) == tiled
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in (x_shape, w_shape, (16,)))
    got = []
    for threads in (1, 2):
        with loopconv.threads(threads):
            got.append(getattr(loopconv, f"conv_transpose{d}d")(x, w, b, **kw))
    assert np.array_equal(got[0], got[1])
    assert_close(got[0], reference.conv_transpose(x, w, b, **kw), dtype)
    if tiled:
        on_tiles = np.full(five[0], np.nan, dtype)
        _loops.tiled.grad_input(lift(x), lift(w), b, on_tiles, *args, 2)
        assert np.array_equal(got[0], on_tiles.reshape(x_conv))


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_public_functions(rng, assert_close, dtype):
    """conv2d_input and conv_transpose2d (with a bias) of a generator's first layer."""
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in ((6, 40, 1, 1), (40, 64, 4, 4),
                                                               (64,)))
    want = reference.conv_transpose(x, w, b)
    assert_close(loopconv.conv_transpose2d(x, w, b), want, dtype)
    assert_close(loopconv.conv2d_input((6, 64, 4, 4), w, x), want - b.reshape(-1, 1, 1),
                 dtype)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_public_kernel_as_stride(rng, assert_close, dtype):
    """A U-Net's 2x2x2 stride-2 up-convolution at batch 1 whose weight is large
    (COL2IM_SINGLE_WEIGHT elements) runs as columns: conv_transpose3d with a bias against the
    reference, the same bits on 1 and 2 threads."""
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in ((1, 512, 2, 2, 3),
                                                               (512, 256, 2, 2, 2), (256,)))
    assert w.size >= _loops.COL2IM_SINGLE_WEIGHT
    y_shape = x.shape[:1] + w.shape[:1] + x.shape[2:]
    assert chosen_loops(y_shape, w.shape, (2, 2, 2), 1).grad_input is _loops.col2im_grad_input
    got = []
    for threads in (1, 2):
        with loopconv.threads(threads):
            got.append(loopconv.conv_transpose3d(x, w, b, stride=2))
    assert np.array_equal(got[0], got[1])
    assert_close(got[0], reference.conv_transpose(x, w, b, stride=2), dtype)


# ---------------------------------------------------------------------------------------------
# The input gradient of few input channels as one product for all taps

TAPS_FIXED = [
    case("1d-waveform", (2, 1, 83), (24, 1, 10), stride=5),           # wav2vec's first kind
    case("1d-stride-over-kernel", (1, 2, 40), (9, 2, 2), stride=3),   # inputs no tap reads
    case("1d-same", (3, 3, 31), (12, 3, 7), padding=3),
    case("1d-dilated-asym", (1, 4, 45), (10, 4, 5), dilation=2, padding=((3, 1),)),
    case("1d-pad-past-end", (2, 1, 20), (6, 1, 4), stride=3, padding=((2, 5),)),
    case("2d-grayscale-stem", (2, 1, 19, 17), (16, 1, 7, 7), stride=2, padding=3),
    case("2d-dilated", (1, 1, 12, 13), (8, 1, 3, 3), dilation=(2, 3), padding=(2, 1)),
    case("3d-one-channel", (1, 1, 6, 5, 7), (5, 1, 3, 3, 3), padding=1, stride=(1, 2, 1)),
    # one input channel a group (a channel multiplier): one grouped product for all taps
    case("2d-multiplier-16", (2, 8, 13, 15), (128, 1, 3, 3), groups=8, padding=1),
    case("2d-multiplier-strided", (1, 3, 17, 22), (48, 1, 4, 4), groups=3, stride=(2, 4),
         padding=((1, 0), (2, 1)), dilation=(2, 1)),
    case("1d-groups", (2, 4, 40), (12, 2, 3), groups=2, padding=1),
]


def random_taps_cases(count, seed):
    """Random geometries of one group and 1 to 4 input channels: 1 to 3 spatial axes (mostly
    1), outputs of 1 to 40 pixels along the last axis and 1 to 4 along the others, kernels of 1
    to 9 taps, strides 1 to 5, dilation 1 to 3, padding up to 4 on each side."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        nd = int(rng.choice([1, 1, 1, 2, 3]))
        kernel, stride, dilation, pairs, size = [], [], [], [], []
        for axis in range(nd):
            last = axis == nd - 1
            k, d, st = (int(rng.integers(1, 10 if last else 4)), int(rng.integers(1, 4)),
                        int(rng.integers(1, 6)))
            p = (int(rng.integers(0, 5)), int(rng.integers(0, 5)))
            out = int(rng.integers(1, 41 if last else 5))
            size.append(max(1, (out - 1) * st + d * (k - 1) + 1 - sum(p)))
            kernel.append(k)
            dilation.append(d)
            stride.append(st)
            pairs.append(p)
        cases.append(grouped_case(f"taps-random-{i}", int(rng.integers(1, 4)), 1,
                                  int(rng.integers(1, 5)), int(rng.integers(1, 20)), size,
                                  kernel, stride, pairs, dilation))
    return cases


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw",
                         TAPS_FIXED + random_taps_cases(30, seed=20261206))
def test_taps_against_reference_and_across_threads(rng, assert_close, x_shape, w_shape, kw,
                                                    dtype):
    """Every element written (inputs that no tap reads get the bias alone), against the
    reference with and without a bias, the same bits on 1, 2 and 3 threads, dy and w
    untouched."""
    x, w, _, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    before = (w.copy(), gy.copy())
    b_in = rng.standard_normal(x_shape[1]).astype(dtype)
    check_input_gradient(_loops.taps_grad_input, assert_close, x_shape, w, gy, b_in, kw, dtype)
    assert np.array_equal(w, before[0]) and np.array_equal(gy, before[1])


@pytest.mark.parametrize("x_shape, w_shape, kw, chosen", [
    ((1, 1, 16000), (512, 1, 10), dict(stride=5), True),          # wav2vec 2.0's first layer
    ((4, 1, 16000), (512, 1, 10), dict(stride=5), True),
    ((1, 4, 8000), (256, 4, 4), dict(stride=2), True),
    ((1, 8, 8000), (256, 8, 4), dict(stride=2), False),           # eight channels: tiled
    ((1, 1, 224, 224), (64, 1, 7, 7), dict(stride=2, padding=3), True),   # grayscale stem
    ((1, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3), False),  # RGB stem
    ((16, 1, 224, 224), (64, 1, 7, 7), dict(stride=2, padding=3), False),  # result > bound
    ((1, 1, 32, 32, 32), (16, 1, 3, 3, 3), dict(padding=1), False),       # 3-D
    ((1, 2, 4000), (64, 1, 3), dict(groups=2, padding=1), False),         # groups, 1-D
    ((1, 8, 28, 28), (512, 1, 3, 3), dict(groups=8, padding=1), True),    # multiplier 64
    ((1, 16, 28, 28), (256, 1, 3, 3), dict(groups=16, padding=1), True),  # multiplier 16
    ((1, 16, 28, 28), (128, 1, 3, 3), dict(groups=16, padding=1), False),  # 8: depthwise
    ((1, 16, 28, 28), (256, 2, 3, 3), dict(groups=8, padding=1), False),  # two a group
    ((8, 4, 1, 1), (96, 4, 1, 1), {}, False),                             # one pixel, one tap
    ((1, 2, 4000), (64, 2, 1), {}, False),                                # one tap
])
def test_taps_which_problems(x_shape, w_shape, kw, chosen):
    """By the input channels, the axes, the taps and pixels, and the result's size."""
    stride = reference.per_axis(kw.get("stride", 1), len(x_shape) - 2)
    loops = chosen_loops(conv_output_shape(x_shape, w_shape, kw), w_shape, stride,
                         kw.get("groups", 1))
    assert (loops.grad_input is _loops.taps_grad_input) == chosen


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_taps_public_functions(rng, assert_close, dtype):
    """conv1d_input of a waveform's first layer and conv_transpose1d (with a bias) of a
    decoder's last layer (512 -> 1 channel, kernel 16, stride 8), the same bits on 1 and 2
    threads."""
    w, gy = (rng.standard_normal(s).astype(dtype) for s in ((64, 1, 10), (2, 64, 79)))
    assert_close(loopconv.conv1d_input((2, 1, 400), w, gy, stride=5),
                 reference.conv_input((2, 1, 400), w, gy, stride=5), dtype,
                 bound=reference.conv_input((2, 1, 400), np.abs(w), np.abs(gy), stride=5))
    z, w, b = (rng.standard_normal(s).astype(dtype) for s in ((1, 512, 60), (512, 1, 16),
                                                               (1,)))
    assert chosen_loops((1, 512, 60), (512, 1, 16), (8,), 1).grad_input is (
        _loops.taps_grad_input)
    got = []
    for threads in (1, 2):
        with loopconv.threads(threads):
            got.append(loopconv.conv_transpose1d(z, w, b, stride=8))
    assert np.array_equal(got[0], got[1])
    assert_close(got[0], reference.conv_transpose(z, w, b, stride=8), dtype,
                 bound=reference.conv_transpose(np.abs(z), np.abs(w), np.abs(b), stride=8))


# ---------------------------------------------------------------------------------------------
# The weight gradient as columns

WEIGHT_FIXED = FIXED + [
    case("2d-dense", (5, 12, 4, 4), (7, 12, 4, 4)),                    # x read in place
    case("3d-dense", (3, 4, 2, 3, 2), (6, 4, 2, 3, 2)),
    case("1x1-on-1x1", (16, 48, 1, 1), (9, 48, 1, 1)),
    case("dense-dilated-pad-after", (2, 3, 2, 2), (4, 3, 2, 2), dilation=2,
         padding=((0, 1), (0, 1))),                                       # not in place
    case("dense-groups", (4, 6, 3, 3), (6, 2, 3, 3), groups=3),
    # outer_suits' kind, small: 1x1 over few pixels into more output than input channels
    case("1x1-outer-7x7", (2, 40, 7, 7), (72, 40, 1, 1)),
    case("1x1-outer-stride2", (1, 24, 9, 9), (56, 24, 1, 1), stride=2),
    # one image: its pixels gathered in parts, one per thread
    case("3x3-one-image", (1, 8, 7, 5), (16, 8, 3, 3), padding=1),
]


def im2col(x, gy, w_shape, kw, threads):
    """`_loops.im2col_grad_weight` on the case, into an output filled with NaN."""
    x5 = lift(x)
    x5.flags.writeable = False          # the input is only read, also where used in place
    dw = np.full(lift(np.empty(w_shape)).shape, np.nan, x.dtype)
    _loops.im2col_grad_weight(x5, lift(gy), dw, *loop_args(x.shape, w_shape, kw), threads)
    return dw.reshape(w_shape)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", WEIGHT_FIXED + RANDOM)
def test_weight_against_reference_and_across_threads(rng, assert_close, x_shape, w_shape, kw,
                                                      dtype):
    x, _, _, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    before = x.copy()
    want = reference.conv_weight(x, w_shape, gy, **kw)
    bound = reference.conv_weight(np.abs(x), w_shape, np.abs(gy), **kw)
    got = im2col(x, gy, w_shape, kw, threads=2)
    assert not np.isnan(got).any()
    assert_close(got, want, dtype, bound=bound)
    for threads in (1, 3):
        assert np.array_equal(got, im2col(x, gy, w_shape, kw, threads))
    assert np.array_equal(x, before)


@pytest.mark.parametrize("x_shape, w_shape, kw, chosen", [
    ((16, 1152, 1, 1), (48, 1152, 1, 1), {}, True),          # squeeze-and-excitation
    ((1, 48, 1, 1), (1152, 48, 1, 1), {}, True),
    ((16, 10, 1, 1), (240, 10, 1, 1), {}, False),            # columns of 10: a thin product
    ((1, 10, 1, 1), (240, 10, 1, 1), {}, True),              # one image: an outer product
    ((1, 32, 1, 1), (8, 32, 1, 1), {}, True),                # small, but not the direct loops
    ((32, 32, 4, 4), (10, 32, 4, 4), {}, True),              # a dense layer as a convolution
    ((8, 512, 7, 7), (512, 512, 3, 3), dict(padding=1), True),
    ((16, 576, 7, 7), (160, 576, 1, 1), {}, False),          # 1x1 on 7x7 at batch 16
    ((8, 256, 14, 14), (256, 256, 3, 3), dict(padding=1), False),
    ((8, 1024, 7, 7), (1024, 32, 3, 3), dict(padding=1, groups=32), False),
    ((2, 128, 4, 4, 4), (256, 128, 3, 3, 3), dict(padding=1), True),
    # 3-D of IM2COL_VOLUME_PIXELS output pixels and few channels: the tiled loops
    ((2, 128, 4, 4, 4), (128, 128, 3, 3, 3), dict(padding=1), False),
    ((1, 64, 2, 4, 4), (128, 64, 3, 3, 3), dict(padding=1), False),
    ((1, 128, 3, 3, 3), (128, 128, 3, 3, 3), dict(padding=1), True),   # 27 pixels
    ((1, 192, 4, 4, 4), (192, 192, 3, 3, 3), dict(padding=1), True),   # 192 channels
    ((2, 32, 16, 16, 16), (32, 32, 3, 3, 3), dict(padding=1), False),
    ((32, 512, 8, 8), (256, 512, 4, 4), dict(stride=2, padding=1), True),    # 4x4 dy
    ((32, 256, 16, 16), (128, 256, 4, 4), dict(stride=2, padding=1), False),  # 8x8 dy
    # 2-D with several output pixels: FLAT_COLUMNS_OUT output channels or more
    ((8, 64, 7, 7), (256, 64, 3, 3), dict(padding=1), True),
    ((8, 128, 7, 7), (32, 128, 3, 3), dict(padding=1), False),
    ((1, 128, 7, 7), (32, 128, 3, 3), dict(padding=1), False),
    # 1x1 over few pixels into many output channels, no fewer than the input channels
    ((2, 2048, 7, 7), (2048, 2048, 1, 1), {}, True),
    # ... that the tiled loops would not write as dw's transpose ("dy rows", in float32 and
    # float64: at batch 2 above, in float32 only)
    ((1, 1024, 14, 14), (2048, 1024, 1, 1), dict(stride=2), False),
    ((1, 96, 14, 14), (576, 96, 1, 1), {}, False),
    ((1, 160, 7, 7), (960, 160, 1, 1), {}, False),
    ((8, 512, 7, 7), (2048, 512, 1, 1), {}, False),                 # 392 pixels
    ((1, 2048, 7, 7), (2048, 2048, 1, 1), {}, False),               # both in one step
    ((1, 960, 7, 7), (960, 960, 1, 1), {}, False),
    ((4, 512, 7, 7), (2048, 512, 1, 1), {}, False),                 # its steps kept packed
    ((4, 2048, 7, 7), (512, 2048, 1, 1), {}, False),                # fewer outputs than inputs
    ((1, 80, 14, 14), (200, 80, 1, 1), {}, False),                  # fewer than 512 outputs
    ((1, 112, 14, 14), (672, 112, 1, 1), {}, False),                # few input channels
    ((1, 2048, 7, 7), (2048, 64, 1, 1), dict(groups=32), False),    # groups
])
def test_weight_which_problems(x_shape, w_shape, kw, chosen):
    """By the reduction's length (images times output pixels), the taps and the width of the
    columns (never by thread count)."""
    stride = reference.per_axis(kw.get("stride", 1), len(x_shape) - 2)
    loops = chosen_loops(conv_output_shape(x_shape, w_shape, kw), w_shape, stride,
                         kw.get("groups", 1))
    assert (loops.grad_weight is _loops.im2col_grad_weight) == chosen


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_weight_public_functions(rng, assert_close, dtype):
    """conv2d_weight of a squeeze-and-excitation layer and of a dense layer; the weight
    gradient of a generator's first layer through ConvTranspose2d."""
    x, gy = (rng.standard_normal(s).astype(dtype) for s in ((16, 96, 1, 1), (16, 24, 1, 1)))
    assert_close(loopconv.conv2d_weight(x, (24, 96, 1, 1), gy),
                 reference.conv_weight(x, (24, 96, 1, 1), gy), dtype)
    x, gy = (rng.standard_normal(s).astype(dtype) for s in ((40, 32, 4, 4), (40, 10, 1, 1)))
    assert_close(loopconv.conv2d_weight(x, (10, 32, 4, 4), gy),
                 reference.conv_weight(x, (10, 32, 4, 4), gy), dtype)
    layer = loopconv.nn.ConvTranspose2d(40, 64, 4, dtype=dtype)
    z = rng.standard_normal((24, 40, 1, 1)).astype(dtype)
    layer(z)
    gy = rng.standard_normal((24, 64, 4, 4)).astype(dtype)
    layer.backward(gy)
    # the transposed convolution's weight gradient is the convolution's, roles swapped
    assert_close(layer.grad_weight, reference.conv_weight(gy, layer.weight.shape, z), dtype)


# ---------------------------------------------------------------------------------------------
# The forward pass to one output pixel from columns

FORWARD_FIXED = [
    case("2d-dense", (5, 12, 4, 4), (7, 12, 4, 4)),                    # x read in place
    case("3d-dense", (3, 4, 2, 3, 2), (6, 4, 2, 3, 2)),
    case("1x1-on-1x1", (16, 48, 1, 1), (9, 48, 1, 1)),
    case("one-image", (1, 100, 1, 1), (33, 100, 1, 1)),
    case("padded-3x3-on-1x1", (3, 8, 1, 1), (5, 8, 3, 3), padding=1),   # gathered
    case("strided-to-1", (2, 3, 4, 5), (4, 3, 3, 3), stride=3, padding=((1, 0), (0, 0))),
    case("dilated-to-1", (2, 3, 5, 5), (4, 3, 3, 3), dilation=2),
    case("1d-to-1", (4, 6, 6), (5, 6, 7), stride=2, padding=1),
    case("3d-4-cubed", (2, 5, 4, 4, 4), (6, 5, 3, 3, 3), padding=1),      # a few pixels
    case("2d-7x7", (3, 6, 7, 7), (5, 6, 3, 3), padding=1),
    case("2d-strided", (2, 4, 9, 8), (3, 4, 3, 3), stride=2, padding=1),
    case("2d-dilated-asym", (2, 3, 6, 7), (4, 3, 2, 3), dilation=2, padding=((1, 0), (2, 1))),
]


def random_one_pixel_cases(count, seed):
    """Random geometries of one output pixel per image, one group: 1 to 3 spatial axes,
    kernels of 1 to 5 taps, strides 1 to 3, dilation 1 or 2, padding up to 2 on each side."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        nd = int(rng.integers(1, 4))
        kernel, stride, dilation, pairs, size = [], [], [], [], []
        for _ in range(nd):
            k, d, s = int(rng.integers(1, 6 if nd < 3 else 4)), int(rng.integers(1, 3)), int(
                rng.integers(1, 4))
            reach = d * (k - 1) + 1
            p = (int(rng.integers(0, min(3, reach))), int(rng.integers(0, min(3, reach))))
            if reach - sum(p) < 1:          # the window reaches past the input: less padding
                p = (0, 0)
            # one output pixel: size + padding - reach in [0, stride)
            size.append(reach - sum(p) + int(rng.integers(0, s)))
            kernel.append(k)
            dilation.append(d)
            stride.append(s)
            pairs.append(p)
        cin, cout = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        cases.append(case(f"random-{i}", (int(rng.integers(1, 5)), cin, *size),
                          (cout, cin, *kernel), stride=tuple(stride), padding=tuple(pairs),
                          dilation=tuple(dilation)))
    return cases


FORWARD_RANDOM = random_one_pixel_cases(40, seed=20261202)


def im2col_forward(x, w, bias, kw, threads):
    """`_loops.im2col_forward` on the case, into an output filled with NaN."""
    y_shape = conv_output_shape(x.shape, w.shape, kw)
    x5 = lift(x)
    x5.flags.writeable = False          # the input is only read, also where used in place
    y = np.full(lift(np.empty(y_shape)).shape, np.nan, x.dtype)
    _loops.im2col_forward(x5, lift(w), bias, y, *loop_args(x.shape, w.shape, kw), threads)
    return y.reshape(y_shape)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", FORWARD_FIXED + FORWARD_RANDOM + [
    c for c in RANDOM if c.values[2].get("groups", 1) == 1])
def test_forward_against_reference_and_across_threads(rng, assert_close, x_shape, w_shape, kw,
                                                       dtype):
    x, w, b, _ = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    before = x.copy()
    want = reference.conv(x, w, None, **kw)
    bound = reference.conv(np.abs(x), np.abs(w), None, **kw)
    add = b.astype(np.float64).reshape(-1, *(1,) * (len(x_shape) - 2))
    for bias, plus in ((b[:0], 0), (b, add)):
        got = im2col_forward(x, w, bias, kw, threads=2)
        assert not np.isnan(got).any()
        assert_close(got, want + plus, dtype, bound=bound + np.abs(plus))
        for threads in (1, 3):
            assert np.array_equal(got, im2col_forward(x, w, bias, kw, threads))
    assert np.array_equal(x, before)


@pytest.mark.parametrize("x_shape, w_shape, kw, chosen", [
    ((16, 1152, 1, 1), (48, 1152, 1, 1), {}, True),          # squeeze-and-excitation
    ((16, 48, 1, 1), (1152, 48, 1, 1), {}, True),
    ((1, 240, 1, 1), (10, 240, 1, 1), {}, True),
    ((1, 48, 1, 1), (1152, 48, 1, 1), {}, True),             # one image: dot products
    ((8, 10, 1, 1), (240, 10, 1, 1), {}, True),              # up to 8 images, any width
    ((1, 32, 1, 1), (8, 32, 1, 1), {}, True),                # small, but not the direct loops
    ((16, 10, 1, 1), (240, 10, 1, 1), {}, False),            # 16 images, columns of 10
    ((2, 64, 1, 1), (64, 16, 1, 1), dict(groups=4), False),  # groups
    # 4x4 outputs reading one tap each: 32 images in pixel tiles, which skip the other 15
    ((8, 100, 1, 1), (512, 100, 4, 4), dict(padding=3), True),     # 128 pixels, 512 >= 3 x 128
    ((32, 100, 1, 1), (512, 100, 4, 4), dict(padding=3), False),   # 512 in all
    ((64, 100, 1, 1), (512, 100, 4, 4), dict(padding=3), False),   # 1024 in all
    # 2x2 and 3x3 images: columns where the batch has few pixels or the weight many rows
    ((4, 512, 2, 2), (512, 512, 3, 3), dict(padding=1), True),     # 16 pixels in all
    ((32, 512, 2, 2), (512, 512, 3, 3), dict(padding=1), True),    # 512 >= 3 x 128
    ((64, 512, 2, 2), (512, 512, 3, 3), dict(padding=1), False),   # 256 pixels: pixel tiles
    ((16, 256, 3, 3), (256, 256, 3, 3), dict(padding=1), False),   # 144 pixels: pixel tiles
    ((16, 256, 4, 4), (256, 256, 5, 5), dict(padding=2), False),   # grid 4 x output
    ((32, 32, 4, 4), (10, 32, 4, 4), {}, True),              # a dense layer as a convolution
    ((8, 64, 1, 1), (64, 16, 1, 1), dict(groups=4), False),
    ((1, 128, 4, 4, 4), (256, 128, 3, 3, 3), dict(padding=1), True),     # grid 3.4 x output
    ((1, 128, 4, 4, 4), (128, 128, 3, 3, 3), dict(padding=1), True),     # (weight: tiled)
    ((2, 128, 4, 4, 4), (128, 128, 3, 3, 3), dict(padding=1), False),    # 128 pixels in all
    ((2, 128, 4, 4, 4), (256, 128, 3, 3, 3), dict(padding=1), False),    # 256 < 3 x 128
    ((2, 128, 4, 4, 4), (512, 128, 3, 3, 3), dict(padding=1), True),     # 512 >= 3 x 128
    ((4, 1024, 7, 7), (1024, 1024, 3, 3), dict(padding=1), True),         # 1024 >= 3 x 196
    ((8, 1024, 7, 7), (1024, 1024, 3, 3), dict(padding=1), False),        # 1024 < 3 x 392
    ((8, 512, 7, 7), (512, 512, 3, 3), dict(padding=1), False),           # 512 < 3 x 392
    ((1, 512, 7, 7), (512, 512, 3, 3), dict(padding=1), False),           # reduction 49
    ((2, 512, 7, 7), (512, 512, 3, 3), dict(padding=1), False),           # 98, stride 1
    ((2, 512, 4, 4), (512, 512, 4, 4), dict(stride=2, padding=1), True),  # strided: 512 >= 16
    ((1, 512, 4, 4), (512, 512, 4, 4), dict(stride=2, padding=1), False),  # one image
    ((8, 256, 14, 14), (256, 256, 3, 3), dict(stride=2, padding=1), False),  # 256 < 784
    ((8, 512, 14, 14), (512, 512, 3, 3), dict(padding=1), False),         # 14x14
    ((8, 512, 7, 7), (512, 512, 1, 1), {}, False),                         # one tap
    ((8, 128, 7, 7), (128, 128, 3, 3), dict(padding=1), False),   # 128 output channels (2-D)
    ((8, 256, 6, 6), (256, 256, 3, 3), dict(padding=1), False),   # 256 < 3 x 288
])
def test_forward_which_problems(x_shape, w_shape, kw, chosen):
    """By the output pixels, the images, the taps, the padding computed by the tiled loops,
    the weight's rows against the batch's output pixels and the width of the columns (never by
    thread count)."""
    stride = reference.per_axis(kw.get("stride", 1), len(x_shape) - 2)
    loops = chosen_loops(conv_output_shape(x_shape, w_shape, kw), w_shape, stride,
                         kw.get("groups", 1))
    assert (loops.forward is _loops.im2col_forward) == chosen


def dense_cases(count, seed):
    """Random sizes of tiled.dense: 1 to 8 rows of columns (images), 1 to 100 columns (some
    below a vector, most not a multiple of one), 1 to 40 outputs (some below a tile); and
    chosen ones, among them rows of one to two 16-lane vectors (dense_short with AVX-512 in
    float32), with partial vectors and tiles of outputs, and a last block of one image (the
    one-row tile)."""
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(1, 9)), int(rng.integers(1, 101)), int(rng.integers(1, 41)))
            for _ in range(count)] + [(1, 64, 1536), (8, 1536, 64), (3, 16, 8), (1, 1, 1),
                                      (1, 28, 672), (8, 16, 100), (5, 31, 17), (2, 20, 49),
                                      (1, 16, 1), (7, 24, 1536), (3, 17, 48), (1, 48, 1150),
                                      (4, 50, 9)]


def _same_on_any_threads(assert_close, dtype, fill, shape, want, bound):
    """The result of fill(out, threads) into a NaN-filled array of `shape` on two threads:
    every element written, close to `want` (float64) within `bound`, and the same bits on one
    and three threads."""
    def run(threads):
        out = np.full(shape, np.nan, dtype)
        fill(out, threads)
        return out

    got = run(2)
    assert not np.isnan(got).any()
    assert_close(got, want, dtype, bound=bound)
    for threads in (1, 3):
        assert np.array_equal(got, run(threads))
    return got


@pytest.mark.parametrize("variant", list(_loops.variants()))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("n, k, o", dense_cases(16, seed=20261205))
def test_dense_every_variant(rng, assert_close, variant, dtype, n, k, o):
    """y[n, o] = cols[n] . w[o] in every variant, against float64 sums, every element
    written, the same bits on 1, 2 and 3 threads; the operands unchanged."""
    module = _loops.variants()[variant]
    cols, w = (rng.standard_normal(s).astype(dtype) for s in ((n, k), (o, k)))
    before = (cols.copy(), w.copy())
    _same_on_any_threads(assert_close, dtype, lambda y, t: module.dense(cols, w, y, t), (n, o),
                         cols.astype(np.float64) @ w.astype(np.float64).T,
                         np.abs(cols).astype(np.float64) @ np.abs(w).astype(np.float64).T)
    assert np.array_equal(cols, before[0]) and np.array_equal(w, before[1])


@pytest.mark.parametrize("variant", list(_loops.variants()))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("n, k, o", dense_cases(16, seed=20261202))
def test_dense_gradients_every_variant(rng, assert_close, variant, dtype, n, k, o):
    """dx[n] = dy[n] w (dense_input) and dw = sum over n of dy[n] outer x[n] (dense_weight)
    in every variant, against float64 products, every element written, the same bits on 1, 2
    and 3 threads; the operands unchanged."""
    module = _loops.variants()[variant]
    x, dy, w = (rng.standard_normal(s).astype(dtype) for s in ((n, k), (n, o), (o, k)))
    before = (x.copy(), dy.copy(), w.copy())
    x64, dy64, w64 = (a.astype(np.float64) for a in (x, dy, w))
    for name, args, shape, want, bound in (
            ("dense_input", (dy, w), (n, k), dy64 @ w64, np.abs(dy64) @ np.abs(w64)),
            ("dense_weight", (x, dy), (o, k), dy64.T @ x64, np.abs(dy64).T @ np.abs(x64))):
        fn = getattr(module, name)
        _same_on_any_threads(assert_close, dtype,
                             lambda out, t, fn=fn, args=args: fn(*args, out, t),
                             shape, want, bound)
    assert all(np.array_equal(a, b) for a, b in zip((x, dy, w), before))


@pytest.mark.parametrize("variant", list(_loops.variants()))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("n, o, k", [
    (1, 100, 8192),     # a GAN's first layer (100 -> 512, 1x1 to 4x4): blocks of 8 KiB
    (2, 37, 1777),      # rows past whole vectors, o not a multiple of the four rows a pass
    (1, 130, 515),      # two blocks of 272 columns on two and three threads, one on one
    (2, 3, 30000),      # fewer rows of w than a pass
])
def test_dense_input_streams_the_rows(rng, assert_close, variant, dtype, n, o, k):
    """dense_input for one or two images of a large weight (stream_input): against float64
    products, every element written, the same bits on 1, 2 and 3 threads however the columns
    are blocked, the operands unchanged.  In the baseline build, which has no fused
    multiply-add, each element is bit for bit the sum over o in order from zero."""
    module = _loops.variants()[variant]
    dy, w = rng.standard_normal((n, o)).astype(dtype), rng.standard_normal((o, k)).astype(dtype)
    before = (dy.copy(), w.copy())
    dy64, w64 = dy.astype(np.float64), w.astype(np.float64)
    got = _same_on_any_threads(assert_close, dtype,
                               lambda out, t: module.dense_input(dy, w, out, t), (n, k),
                               dy64 @ w64, np.abs(dy64) @ np.abs(w64))
    assert np.array_equal(dy, before[0]) and np.array_equal(w, before[1])
    if variant == "baseline":
        in_order = np.zeros((n, k), dtype)
        for r in range(o):
            in_order += dy[:, r:r + 1] * w[r]
        assert np.array_equal(got, in_order)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_forward_public_functions(rng, assert_close, dtype):
    """conv2d of a squeeze-and-excitation layer with a bias, and of a dense layer; conv1d
    and conv3d to one output pixel."""
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in ((16, 96, 1, 1), (24, 96, 1, 1),
                                                               (24,)))
    assert_close(loopconv.conv2d(x, w, b), reference.conv(x, w, b), dtype)
    x, w = (rng.standard_normal(s).astype(dtype) for s in ((40, 32, 4, 4), (10, 32, 4, 4)))
    assert_close(loopconv.conv2d(x, w), reference.conv(x, w, None), dtype)
    x, w = (rng.standard_normal(s).astype(dtype) for s in ((8, 40, 5), (30, 40, 5)))
    assert_close(loopconv.conv1d(x, w), reference.conv(x, w, None), dtype)
    x, w = (rng.standard_normal(s).astype(dtype) for s in ((4, 8, 3, 3, 3), (16, 8, 3, 3, 3)))
    assert_close(loopconv.conv3d(x, w, stride=2), reference.conv(x, w, None, stride=2), dtype)
