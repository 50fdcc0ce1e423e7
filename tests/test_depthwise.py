"""The depthwise loops (loopconv/_loops/depthwise.pxi): convolutions with few channels per
group, in every compiled variant, against the direct loops and the NumPy reference and
bit-identical for any thread count; which problems go to them; the public functions on such
problems."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from common import DTYPE_PARAMS, case, conv_arrays, conv_macs, conv_output_shape

import loopconv
from loopconv import _loops

VARIANTS = list(_loops.variants())


def lift(a):
    """(N, C, *spatial) with 1 to 3 spatial axes as the loops' 5-D (N, C, D, H, W)."""
    return np.ascontiguousarray(a.reshape(a.shape[:2] + (1,) * (5 - a.ndim) + a.shape[2:]))


def loop_args(x_shape, w_shape, kw):
    """stride, padding before and dilation as the loops take them (3-D triples; stride 1
    along an axis of one output pixel, as loopconv.functional passes it), and groups."""
    nd = len(x_shape) - 2
    out = conv_output_shape(x_shape, w_shape, kw)[2:]
    stride = [1 if o == 1 else s for s, o in zip(reference.per_axis(kw.get("stride", 1), nd),
                                                   out)]
    pad = [b for b, _ in reference.padding_pairs(kw.get("padding", 0), nd)]
    dilation = list(reference.per_axis(kw.get("dilation", 1), nd))
    return ((1,) * (3 - nd) + tuple(stride), (0,) * (3 - nd) + tuple(pad),
            (1,) * (3 - nd) + tuple(dilation), kw.get("groups", 1))


def run_depthwise(module, x, w, b, b_in, gy, kw, threads, prefix="dw_"):
    """forward (with bias), grad_input (without and with a bias on dx), grad_weight of
    `module`'s depthwise loops (or with prefix "", the direct loops), into outputs filled with
    NaN so that an element left unwritten shows."""
    args = loop_args(x.shape, w.shape, kw)
    out = []
    for name, src, bias, shape in (("forward", (x, w), b, gy.shape),
                                   ("grad_input", (gy, w), b[:0], x.shape),
                                   ("grad_input", (gy, w), b_in, x.shape),
                                   ("grad_weight", (x, gy), None, w.shape)):
        res = np.full(lift(np.empty(shape)).shape, np.nan, x.dtype)
        fn = getattr(module, prefix + name)
        if bias is None:
            fn(lift(src[0]), lift(src[1]), res, *args, threads)
        else:
            fn(lift(src[0]), lift(src[1]), bias, res, *args, threads)
        out.append(res.reshape(shape))
    return out


def expected(x, w, b, b_in, gy, kw):
    dx = reference.conv_input(x.shape, w, gy, **kw)
    return [reference.conv(x, w, b, **kw), dx,
            dx + b_in.astype(np.float64).reshape(-1, *(1,) * (x.ndim - 2)),
            reference.conv_weight(x, w.shape, gy, **kw)]


# ---------------------------------------------------------------------------------------------
# Cases: chosen ones for each path through the loops, and random geometries of the kind

WIDE = [
    case("2d-blocks-7x7", (2, 17, 14, 14), (17, 1, 7, 7), groups=17, padding=3),
    case("2d-blocks-runs-of-6", (2, 18, 9, 13), (18, 1, 3, 6), groups=18,
         padding=((1, 1), (2, 3))),
    case("2d-blocks-rows-of-16", (2, 40, 5, 16), (40, 1, 1, 7), groups=40, padding=(0, 3)),
    case("2d-blocks-9-taps", (2, 17, 8, 11), (17, 1, 3, 9), groups=17, padding=(1, 4)),
    # weights enough to be put in the loops' order on several threads (DW_GATHER_SERIAL)
    case("2d-blocks-many-weights", (1, 400, 9, 9), (400, 1, 5, 5), groups=400, padding=2),
]

FIXED = [
    # pixel vectors: rows straight into the output (long rows), and rows merged through
    # scratch (short rows); groups of several channels; a channel multiplier
    case("2d-depthwise-long-rows", (2, 3, 9, 70), (3, 1, 3, 3), groups=3, padding=1),
    case("2d-depthwise-short-rows", (2, 5, 11, 9), (5, 1, 3, 3), groups=5, padding=1),
    case("2d-groups-of-8", (1, 16, 10, 21), (16, 8, 3, 3), groups=2, padding=1),
    # weight gradient: a group's output channels in blocks (8, and 6 = 4 + 2 with AVX-512),
    # several small images a step (7 in steps of 2, 2, 2, 1 over three chunks; 4 in one)
    case("2d-groups-of-8-image-steps", (7, 24, 6, 6), (24, 8, 3, 3), groups=3, padding=1),
    case("2d-groups-of-6-image-steps", (4, 60, 5, 7), (60, 6, 3, 2), groups=10,
         padding=(1, 0)),
    case("2d-groups-of-16", (2, 32, 30, 29), (32, 16, 3, 3), groups=2, padding=1),
    # stride 2 from rows whose phases are 15 and 35 wide (a vector and a half-vector of
    # even lanes, the last overlapping the one before), and 4 (quarter vectors)
    case("2d-stride2-groups-of-4", (3, 16, 29, 30), (16, 4, 3, 3), groups=4, stride=2,
         padding=1),
    case("2d-stride2-long-rows", (2, 8, 9, 70), (8, 4, 3, 3), groups=2, stride=2),
    case("2d-stride2-short-rows", (3, 24, 8, 8), (24, 8, 3, 3), groups=3, stride=2,
         padding=1),
    case("2d-multiplier-3", (2, 4, 12, 19), (12, 1, 3, 3), groups=4, padding=(1, 2)),
    # stride 2 (both column phases interleaved into dx), 3 (one at a time), stride past the
    # kernel (phases no tap reaches: only the bias), no padding at stride 1 (x read in place)
    case("2d-stride2-5x5", (2, 6, 23, 37), (6, 1, 5, 5), groups=6, stride=2, padding=2),
    case("2d-stride3-dilated", (1, 4, 17, 40), (8, 2, 3, 3), groups=2, stride=3, dilation=2,
         padding=((2, 1), (3, 0))),
    case("2d-stride-past-kernel", (2, 3, 13, 29), (3, 1, 2, 2), groups=3, stride=(3, 4)),
    case("2d-no-padding", (2, 4, 9, 40), (4, 1, 3, 3), groups=4),
    # channel blocks (AVX-512; four (image, block) items at least): blocks of 16 (float32) or
    # 8 (float64) channels and a partial one; stride 2; a multiplier; phases without taps
    case("2d-blocks-17", (2, 17, 7, 7), (17, 1, 3, 3), groups=17, padding=1),
    case("2d-blocks-20-stride2", (2, 20, 14, 13), (20, 1, 3, 3), groups=20, stride=2,
         padding=1),
    case("2d-blocks-multiplier-2", (3, 18, 9, 11), (36, 1, 5, 5), groups=18, padding=2),
    case("2d-blocks-asymmetric", (2, 24, 6, 15), (24, 1, 2, 3), groups=24, stride=(1, 2),
         padding=((0, 1), (2, 1))),
    case("2d-blocks-stride-past-kernel", (2, 17, 10, 13), (17, 1, 2, 2), groups=17, stride=3),
    # channel blocks with wide kernels: runs of 7 taps, rows in blocks of 7 pixels, an even
    # number of rows (two at a time); runs of 6, rows of 13 (blocks of 7), odd rows; rows of
    # 16 (blocks of 8); a row of 9 taps as runs of 7 and 2
    *WIDE,
    # 1-D and 3-D
    case("1d-long", (2, 5, 300), (10, 1, 5), groups=5, stride=2, dilation=2, padding=4),
    case("1d-blocks", (2, 32, 40), (32, 1, 3), groups=32, padding=((2, 0),)),
    case("3d-depthwise", (2, 3, 7, 9, 11), (3, 1, 3, 3, 3), groups=3, padding=1),
    case("3d-strided-groups", (1, 6, 8, 9, 10), (9, 2, 2, 3, 3), groups=3,
         stride=(2, 1, 2), padding=((1, 0), (1, 1), (0, 2))),
    case("3d-blocks", (2, 17, 5, 6, 7), (17, 1, 3, 3, 3), groups=17, stride=(1, 2, 1),
         padding=1),
]


def random_cases(count, seed):
    """Random geometries of the kind: 1, 2 or 3 spatial axes; 1 to 8 channels per group (or
    depthwise with a multiplier of 1 to 3, sometimes with enough groups for channel blocks);
    strides 1 to 3, dilation 1 or 2, padding up to 3 on each side; batch 1 to 3."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        nd = int(rng.integers(1, 4))
        cin = int(rng.choice([1, 1, 1, 2, 3, 5, 8]))
        cout = int(rng.integers(1, 4)) if cin == 1 else int(rng.choice([1, 2, cin]))
        groups = int(rng.choice([17, 20])) if cin == 1 and rng.random() < 0.3 else int(
            rng.integers(1, 4))
        limit = {1: (60,), 2: (10, 30), 3: (5, 6, 9)}[nd]
        kernel, stride, dilation, pairs, size = [], [], [], [], []
        for a in range(nd):
            k = int(rng.integers(1, 4 if nd == 3 else 6))
            d = int(rng.integers(1, 3))
            p = (int(rng.integers(0, 4)), int(rng.integers(0, 4)))
            kernel.append(k)
            dilation.append(d)
            stride.append(int(rng.integers(1, 4)))
            pairs.append(p)
            size.append(int(rng.integers(max(1, d * (k - 1) + 1 - sum(p)), limit[a] + 1)))
        cases.append(case(f"random-{i}", (int(rng.integers(1, 4)), groups * cin, *size),
                          (groups * cout, cin, *kernel), stride=tuple(stride),
                          padding=tuple(pairs), dilation=tuple(dilation), groups=groups))
    return cases


RANDOM = random_cases(30, seed=20240612)


def arrays(rng, x_shape, w_shape, kw, dtype):
    x, w, b, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    return x, w, b, rng.standard_normal(x_shape[1]).astype(dtype), gy


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", FIXED + RANDOM)
def test_variants_against_direct_and_reference(rng, assert_close, x_shape, w_shape, kw, dtype):
    """Every compiled variant: every element written, equal to the direct loops and the
    reference within rounding, and the same bits on 1, 2 and 3 threads."""
    x, w, b, b_in, gy = arrays(rng, x_shape, w_shape, kw, dtype)
    direct = run_depthwise(_loops.direct, x, w, b, b_in, gy, kw, threads=1, prefix="")
    want = expected(x, w, b, b_in, gy, kw)
    for variant, module in _loops.variants().items():
        got = run_depthwise(module, x, w, b, b_in, gy, kw, threads=2)
        for name, g, d, e in zip(("forward", "grad_input", "grad_input+bias", "grad_weight"),
                                 got, direct, want):
            assert not np.isnan(g).any(), (variant, name)
            assert_close(g, d, dtype)
            assert_close(g, e, dtype)
        for threads in (1, 3):
            again = run_depthwise(module, x, w, b, b_in, gy, kw, threads=threads)
            for name, g, a in zip(("forward", "grad_input", "grad_input+bias", "grad_weight"),
                                  got, again):
                assert np.array_equal(g, a), (variant, name, threads)


def plans(variant, itemsize):
    """dw_plan of every pass of every case, for one variant and element size."""
    module = _loops.variants()[variant]
    out = []
    for p in FIXED + RANDOM:
        x_shape, w_shape, kw = p.values
        y5 = lift(np.empty(conv_output_shape(x_shape, w_shape, kw))).shape
        x5, w5 = lift(np.empty(x_shape)).shape, lift(np.empty(w_shape)).shape
        args = loop_args(x_shape, w_shape, kw)
        out += [dict(module.dw_plan(which, x5, w5, y5, *args, itemsize), which=which)
                for which in (0, 2)]
        out.append(dict(module.dw_plan(1, x5, w5, y5, *args, itemsize), which=1))
    return out


@pytest.mark.parametrize("itemsize", [4, 8], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_cases_take_every_path(variant, itemsize):
    """The cases above run the pixel vectors both straight into the output and through
    scratch, phases without taps, chunked weight gradients (one with steps of several
    images), and (where the variant has 512-bit vectors) the channel blocks of every pass."""
    got = plans(variant, itemsize)
    passes = [p for p in got if p["which"] != 2]
    assert any(p["direct"] for p in passes)
    assert any(not p["direct"] and not p["blocked"] and p["rows"] > 1 for p in passes)
    assert any(p["untapped"] for p in passes)
    assert any(p["chunks"] > 1 and not p["blocked"] for p in got if p["which"] == 2)
    assert any(p["images per step"] > 1 and p["chunks"] > 1 for p in got if p["which"] == 2)
    blocked = {p["which"] for p in got if p["blocked"]}
    wide = _loops.variants()[variant].info()["isa"] == "avx512"
    assert blocked == ({0, 1, 2} if wide else set())


def test_wide_kernels_take_the_channel_blocks():
    """The wide-kernel cases run every pass of float32 as channel blocks where the variant has
    512-bit vectors."""
    for variant in VARIANTS:
        module = _loops.variants()[variant]
        if module.info()["isa"] != "avx512":
            continue
        for p in WIDE:
            x_shape, w_shape, kw = p.values
            y5 = lift(np.empty(conv_output_shape(x_shape, w_shape, kw))).shape
            x5, w5 = lift(np.empty(x_shape)).shape, lift(np.empty(w_shape)).shape
            args = loop_args(x_shape, w_shape, kw)
            for which in (0, 1, 2):
                assert module.dw_plan(which, x5, w5, y5, *args, 4)["blocked"], (p.id, which)


def test_read_only_inputs(rng, assert_close):
    """The loops take read-only arrays (const memoryviews)."""
    x_shape, w_shape, kw = (2, 17, 7, 9), (17, 1, 3, 3), dict(groups=17, padding=1)
    x, w, b, b_in, gy = arrays(rng, x_shape, w_shape, kw, np.float32)
    for a in (x, w, b, b_in, gy):
        a.flags.writeable = False
    for variant in VARIANTS:
        got = run_depthwise(_loops.variants()[variant], x, w, b, b_in, gy, kw, threads=2)
        for g, e in zip(got, expected(x, w, b, b_in, gy, kw)):
            assert_close(g, e, np.float32)


# ---------------------------------------------------------------------------------------------
# Which problems run on the depthwise loops

@pytest.mark.parametrize("w_shape, groups, stride, out, passes", [
    # (weight shape, groups, stride, output pixels, the passes on the depthwise loops)
    ((128, 1, 3, 3), 128, 1, 28 * 28, {0, 1, 2}),        # MobileNet
    ((960, 1, 5, 5), 960, 2, 7 * 7, {0, 1, 2}),          # EfficientNet, strided
    ((64, 1, 3, 3), 32, 1, 56 * 56, {0, 1, 2}),          # channel multiplier 2
    ((64, 2, 3, 3), 32, 1, 56 * 56, {0, 1, 2}),          # 2 per group
    ((128, 4, 3, 3), 32, 1, 56 * 56, {2}),               # ResNeXt 32x4d
    ((128, 4, 3, 3), 32, 1, 14 * 14, {0, 1, 2}),
    ((128, 4, 3, 3), 32, 2, 28 * 28, {1, 2}),
    ((256, 8, 3, 3), 32, 1, 28 * 28, {2}),
    ((512, 16, 3, 3), 32, 1, 14 * 14, set()),
    ((256, 16, 3, 3), 16, 1, 28 * 28, set()),            # RegNet's groups of 16
    ((256, 16, 3, 3), 16, 2, 28 * 28, set()),
    ((192, 16, 3, 3), 16, 1, 28 * 28, {2}),              # 16 -> 12 a group
    ((256, 16, 3, 3), 16, 2, 14 * 14, set()),
    ((128, 24, 3, 3), 8, 1, 56 * 56, set()),
    ((1024, 32, 3, 3), 32, 1, 7 * 7, set()),
    ((64, 3, 3, 3), 1, 1, 112 * 112, set()),             # a stem: not grouped
], ids=["mobilenet", "efficientnet", "multiplier", "2-per-group", "resnext-56", "resnext-14",
        "resnext-strided", "8-per-group", "16-per-group", "16-per-group-28", "16-strided-28",
        "16-to-12-28", "16-strided-14", "24-per-group", "32-per-group", "stem"])
def test_dispatch(w_shape, groups, stride, out, passes):
    """By channels per group, image size and stride (never by the thread count)."""
    y_shape = (8, w_shape[0], 1, 1, out)
    w5 = (w_shape[0], w_shape[1], 1, *w_shape[2:])
    loops = _loops.choose(y_shape, w5, (1, stride, stride), groups)
    assert loops.family is _loops.tiled
    depthwise = (_loops.tiled.dw_forward, _loops.tiled.dw_grad_input, _loops.tiled.dw_grad_weight)
    got = {which for which, (chosen, dw) in enumerate(zip(loops[1:], depthwise)) if chosen is dw}
    assert got == passes


@pytest.mark.parametrize("y_shape, w_shape, tiled", [
    ((1, 2, 64, 64, 64), (2, 16, 1, 1, 1), True),     # a segmentation head: 16 -> 2 classes
    ((2, 4, 1, 112, 112), (4, 12, 1, 1, 1), True),
    ((8, 2, 1, 112, 112), (2, 16, 1, 1, 1), False),   # 8 images
    ((1, 2, 64, 64, 64), (2, 8, 1, 1, 1), False),     # 8 input channels
    ((1, 2, 64, 64, 64), (2, 16, 3, 3, 3), False),    # 3x3x3
    ((1, 4, 1, 56, 56), (4, 16, 1, 1, 1), False),     # 3136 pixels an image
])
def test_long_sums_leave_the_depthwise_loops(y_shape, w_shape, tiled):
    """1x1 weight gradients of 9-16 input channels over one or two large images run on the
    tiled loops, which split an image's sums across threads (`_loops.long_sums`)."""
    loops = _loops.choose(y_shape, w_shape, (1, 1, 1), 1)
    assert (loops.grad_weight is _loops.tiled.grad_weight) == tiled


@pytest.mark.parametrize("variant", list(_loops.variants()))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, out", [
    ((2, 32, 1, 70, 90), 1),            # 6300 pixels: blocks of 8 KiB and a part
    ((1, 3, 1, 1, 5000), 1),            # fewer channels than the four rows a pass
    ((3, 33, 12, 10, 11), 2),           # pixels past whole vectors, channels past a pass
    ((1, 1, 1, 64, 64), 1),             # one input channel
    ((2, 8, 1, 40, 40), 2),
    ((1, 2, 1, 1, 9000), 2),
    ((4, 5, 1, 3, 7), 1),               # fewer pixels than a vector
    ((2, 7, 3, 9, 41), 3),              # three rows as two and one
    ((1, 6, 1, 33, 70), 4),
])
def test_stream_forward(rng, assert_close, variant, dtype, x_shape, out):
    """`tiled.stream_forward` (a 1x1 layer to one to four output channels, x's rows streamed)
    in every variant against the reference, with and without a bias, every element written,
    the same bits on 1, 2 and 3 threads (whose blocks of pixels differ), x and w untouched;
    shapes that do not match and five output channels are refused."""
    module = _loops.variants()[variant]
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((out, x_shape[1], 1, 1, 1)).astype(dtype)
    b = rng.standard_normal(out).astype(dtype)
    before = (x.copy(), w.copy())
    want = reference.conv(x, w)
    bound = reference.conv(np.abs(x), np.abs(w))
    for bias, add in ((b[:0], 0), (b, b.astype(np.float64).reshape(-1, 1, 1, 1))):
        got = []
        for threads in (1, 2, 3):
            y = np.full((x_shape[0], out) + x_shape[2:], np.nan, dtype)
            module.stream_forward(x, w, bias, y, threads)
            got.append(y)
        assert not np.isnan(got[0]).any()
        assert_close(got[0], want + add, dtype, bound=bound + np.abs(add))
        assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2])
    assert np.array_equal(x, before[0]) and np.array_equal(w, before[1])
    with pytest.raises(ValueError, match="stream_forward"):
        module.stream_forward(x, w, b[:0], np.empty((x_shape[0], out + 1) + x_shape[2:],
                                                    dtype), 1)
    w5 = rng.standard_normal((5, x_shape[1], 1, 1, 1)).astype(dtype)
    with pytest.raises(ValueError, match="stream_forward"):
        module.stream_forward(x, w5, b[:0], np.empty((x_shape[0], 5) + x_shape[2:], dtype), 1)


@pytest.mark.parametrize("y_shape, w_shape, stride, head, groups", [
    ((2, 1, 1, 512, 512), (1, 32, 1, 1, 1), (1, 1, 1), True, 1),    # a segmentation head
    ((1, 1, 64, 64, 64), (1, 16, 1, 1, 1), (1, 1, 1), True, 1),
    ((16, 1, 1, 64, 64), (1, 32, 1, 1, 1), (1, 1, 1), True, 1),      # smaller images
    ((2, 2, 1, 512, 512), (2, 32, 1, 1, 1), (1, 1, 1), True, 1),     # two output channels
    ((2, 1, 1, 512, 512), (1, 2, 1, 1, 1), (1, 1, 1), True, 1),      # two inputs, not depthwise
    ((1, 2, 1, 32, 32), (2, 512, 1, 1, 1), (1, 1, 1), True, 1),      # HEAD_OUT_PIXELS
    ((8, 4, 1, 16, 16), (4, 64, 1, 1, 1), (1, 1, 1), False, 1),      # fewer pixels
    ((2, 3, 1, 512, 512), (3, 32, 1, 1, 1), (1, 1, 1), True, 1),     # three output channels
    ((1, 4, 8, 8, 16), (4, 32, 1, 1, 1), (1, 1, 1), True, 1),        # HEAD_OUT
    ((2, 5, 1, 512, 512), (5, 32, 1, 1, 1), (1, 1, 1), False, 1),    # five
    ((2, 1, 1, 512, 512), (1, 32, 1, 3, 3), (1, 1, 1), False, 1),    # 3x3
    ((2, 1, 1, 256, 256), (1, 32, 1, 1, 1), (1, 2, 2), False, 1),    # strided
    ((2, 2, 1, 256, 256), (2, 1, 1, 1, 1), (1, 1, 1), False, 2),     # two groups
])
def test_head_which_problems(y_shape, w_shape, stride, head, groups):
    """By the output channels, the kernel, the stride, the groups and the pixels of an
    image."""
    loops = _loops.choose(y_shape, w_shape, stride, groups)
    assert (loops.forward is _loops.head_forward) == head


@pytest.mark.parametrize("variant", list(_loops.variants()))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, out", [
    ((2, 8, 1, 70, 90), 1),             # 6300 pixels: a chunk and a part
    ((1, 3, 1, 1, 5003), 2),            # a tail past whole vectors
    ((3, 5, 12, 10, 11), 4),
    ((1, 1, 1, 1, 7), 1),               # fewer pixels than a vector
    ((2, 16, 1, 64, 65), 3),            # an odd output channel last
    ((1, 9, 1, 1, 4099), 3),            # rows past lc_dots' blocks of LC_OR_D
])
def test_head_weight(rng, assert_close, variant, x_shape, out, dtype):
    """`tiled.head_weight` (a 1x1 layer's weight gradient by chunks of pixels) in every
    variant against the reference, every element written, the same bits on 1, 2 and 3
    threads, x and dy untouched; shapes that do not match are refused."""
    module = _loops.variants()[variant]
    x = rng.standard_normal(x_shape).astype(dtype)
    gy = rng.standard_normal((x_shape[0], out) + x_shape[2:]).astype(dtype)
    before = (x.copy(), gy.copy())
    w_shape = (out, x_shape[1], 1, 1, 1)
    want = reference.conv_weight(x, w_shape, gy)
    bound = reference.conv_weight(np.abs(x), w_shape, np.abs(gy))
    got = []
    for threads in (1, 2, 3):
        dw = np.full(w_shape, np.nan, dtype)
        module.head_weight(x, gy, dw, threads)
        got.append(dw)
    assert not np.isnan(got[0]).any()
    assert_close(got[0], want, dtype, bound=bound)
    assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2])
    assert np.array_equal(x, before[0]) and np.array_equal(gy, before[1])
    with pytest.raises(ValueError, match="head_weight"):
        module.head_weight(x, gy, np.empty((out, x_shape[1] + 1, 1, 1, 1), dtype), 1)


@pytest.mark.parametrize("y_shape, w_shape, head", [
    ((1, 1, 1, 512, 512), (1, 8, 1, 1, 1), True),
    ((4, 1, 1, 256, 256), (1, 16, 1, 1, 1), True),      # the depthwise loops' 16 channels
    ((1, 4, 1, 512, 512), (4, 8, 1, 1, 1), True),       # HEAD_WEIGHT_OUT
    ((1, 8, 1, 256, 256), (8, 8, 1, 1, 1), False),      # more output channels
    ((16, 2, 1, 64, 64), (2, 8, 1, 1, 1), False),       # smaller images
    ((1, 3, 64, 64, 64), (3, 16, 1, 1, 1), False),      # long sums: the tiled loops
    ((1, 1, 1, 512, 512), (1, 8, 1, 3, 3), False),      # 3x3
])
def test_head_weight_which_problems(y_shape, w_shape, head):
    """In place of the depthwise loops, by the output channels, the kernel and the pixels of
    an image."""
    loops = _loops.choose(y_shape, w_shape, (1, 1, 1), 1)
    assert (loops.grad_weight is _loops.head_weight) == head


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_head_public_functions(rng, assert_close, dtype):
    """conv2d of a 32 -> 1 head with a bias on 160x130, conv3d of 8 -> 1 on 26^3 and conv2d
    of 24 -> 3 on 40x30 (`head_forward`) against the reference, the same bits on 1 and 2
    threads, and their weight gradients (the second `head_weight`'s); a padded 1x1 layer (its
    border the bias alone) takes the tiled loops."""
    for x_shape, out in (((2, 32, 160, 130), 1), ((1, 8, 26, 26, 26), 1), ((2, 24, 40, 30), 3)):
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal((out, x_shape[1]) + (1,) * (len(x_shape) - 2)).astype(dtype)
        b = rng.standard_normal(out).astype(dtype)
        fn = loopconv.conv2d if len(x_shape) == 4 else loopconv.conv3d
        got = []
        for threads in (1, 2):
            with loopconv.threads(threads):
                got.append(fn(x, w, b))
        assert np.array_equal(got[0], got[1])
        assert_close(got[0], reference.conv(x, w, b), dtype,
                     bound=reference.conv(np.abs(x), np.abs(w), np.abs(b)))
        gy = rng.standard_normal(got[0].shape).astype(dtype)
        weight = loopconv.conv2d_weight if len(x_shape) == 4 else loopconv.conv3d_weight
        assert_close(weight(x, w.shape, gy), reference.conv_weight(x, w.shape, gy), dtype,
                     bound=reference.conv_weight(np.abs(x), w.shape, np.abs(gy)))
    x = rng.standard_normal((1, 16, 130, 128)).astype(dtype)
    w = rng.standard_normal((1, 16, 1, 1)).astype(dtype)
    b = rng.standard_normal(1).astype(dtype)
    assert_close(loopconv.conv2d(x, w, b, padding=2),
                 reference.conv(x, w, b, padding=2), dtype,
                 bound=reference.conv(np.abs(x), np.abs(w), np.abs(b), padding=2))


# ---------------------------------------------------------------------------------------------
# The public functions

PUBLIC = [
    case("2d-mobilenet", (2, 32, 14, 14), (32, 1, 3, 3), groups=32, padding=1),
    case("2d-efficientnet-stride2", (2, 40, 15, 16), (40, 1, 5, 5), groups=40, stride=2,
         padding=2),
    case("2d-multiplier-2", (2, 8, 20, 33), (16, 1, 3, 3), groups=8, padding=(1, 0)),
    case("2d-groups-of-2", (2, 12, 20, 20), (12, 2, 3, 3), groups=6, padding=1),
    case("1d-depthwise", (3, 12, 300), (12, 1, 7), groups=12, padding=3, dilation=2),
    case("3d-depthwise", (1, 20, 8, 9, 10), (20, 1, 3, 3, 3), groups=20, padding=1),
]


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", PUBLIC)
def test_public_functions(rng, assert_close, x_shape, w_shape, kw, dtype):
    """convNd, convNd_input, convNd_weight and the transposed convolution on problems that
    go to the depthwise loops: the reference's values, the same bits on 1 and 2 threads."""
    nd = len(x_shape) - 2
    assert conv_macs(x_shape, w_shape, kw) >= _loops.SMALL_PROBLEM
    x, w, b, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    b_t = rng.standard_normal(w_shape[1] * kw["groups"]).astype(dtype)   # w read transposed

    def passes():
        return [getattr(loopconv, f"conv{nd}d")(x, w, b, **kw),
                getattr(loopconv, f"conv{nd}d_input")(x.shape, w, gy, **kw),
                getattr(loopconv, f"conv{nd}d_weight")(x, w.shape, gy, **kw),
                getattr(loopconv, f"conv_transpose{nd}d")(gy, w, b_t, **kw)]

    with loopconv.threads(1):
        one = passes()
    with loopconv.threads(2):
        two = passes()
    want = [reference.conv(x, w, b, **kw), reference.conv_input(x.shape, w, gy, **kw),
            reference.conv_weight(x, w.shape, gy, **kw),
            reference.conv_transpose(gy, w, b_t, **kw)]
    for a, c, e in zip(one, two, want):
        assert np.array_equal(a, c)
        assert_close(a, e, dtype)

