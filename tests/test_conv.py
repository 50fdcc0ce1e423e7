"""conv1d/2d/3d and their gradients (`_input`, `_weight`, `_backward`) against the NumPy
reference, central differences and the adjoint identities."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from common import (
    DTYPE_PARAMS,
    MASKS,
    assert_gradients_match_central_differences,
    assert_masked_gradients,
    case,
    conv_arrays,
    conv_loops,
    conv_macs,
    transpose_arrays,
)

import loopconv
from loopconv import _loops, _problem, functional


def fn(nd, suffix=""):
    return getattr(loopconv, f"conv{nd}d{suffix}")


SMALL = [
    case("1d", (2, 3, 11), (4, 3, 3)),
    case("1d-stride3-nodivide-pad", (2, 3, 12), (4, 3, 3), stride=3, padding=1),
    case("1d-dilation-pair", (1, 2, 10), (2, 2, 3), dilation=2, padding=((2, 1),)),
    case("1d-groups", (2, 6, 9), (6, 2, 2), groups=3, stride=2),
    case("2d", (2, 3, 7, 6), (4, 3, 3, 3), padding=1),
    case("2d-stride23-nodivide", (2, 3, 8, 9), (5, 3, 3, 2), stride=(2, 3), padding=(1, 0)),
    case("2d-dilation23", (1, 2, 9, 8), (3, 2, 3, 3), dilation=(2, 3)),
    case("2d-groups2", (2, 4, 6, 7), (6, 2, 3, 3), groups=2, padding=1),
    case("2d-depthwise", (2, 4, 6, 6), (4, 1, 3, 3), groups=4, padding=1),
    case("2d-depthwise-x2-stride2", (1, 3, 7, 6), (6, 1, 2, 2), groups=3, stride=2),
    case("2d-asym-pairs-stride2", (2, 2, 6, 7), (3, 2, 3, 2), stride=2,
         padding=((0, 2), (3, 1))),
    case("2d-valid", (1, 2, 6, 5), (2, 2, 2, 3), padding="valid"),
    case("2d-same-s1-even-kernel", (2, 2, 6, 7), (3, 2, 4, 3), padding="same"),
    case("2d-same-s2", (1, 3, 7, 8), (2, 3, 3, 3), padding="same", stride=2),
    case("2d-same-s3-dilated", (1, 2, 10, 7), (2, 2, 3, 2), padding="same", stride=3,
         dilation=2),
    case("2d-1x1-stride2", (2, 3, 5, 5), (4, 3, 1, 1), stride=2),
    case("2d-kernel-near-input", (2, 2, 4, 3), (3, 2, 3, 3)),
    case("3d", (2, 2, 5, 6, 4), (3, 2, 3, 2, 2), padding=1),
    case("3d-everything", (1, 4, 7, 6, 5), (4, 2, 2, 3, 2), stride=(2, 3, 2), groups=2,
         dilation=(1, 1, 2), padding=((1, 0), (0, 2), (1, 1))),
    case("3d-same-s2", (1, 2, 5, 4, 6), (2, 2, 3, 2, 3), padding="same", stride=2),
]

LARGE = [
    case("2d-kernel-equals-input", (2, 2, 4, 3), (3, 2, 4, 3)),     # one pixel: never direct
    case("2d-tiled", (2, 8, 20, 20), (16, 8, 3, 3), padding=1),
    case("2d-tiled-stride2-groups-asym", (2, 8, 21, 19), (16, 4, 3, 3), stride=2, groups=2,
         padding=((1, 0), (2, 1))),
    case("2d-tiled-dilation-odd-channels", (3, 7, 19, 17), (13, 7, 3, 2), dilation=(2, 3),
         padding=(2, 1)),
    case("2d-tiled-depthwise", (2, 24, 30, 30), (24, 1, 5, 5), groups=24, padding=2),
    case("2d-tiled-same-s3", (2, 6, 23, 22), (10, 6, 3, 3), padding="same", stride=3),
    case("1d-tiled", (4, 16, 200), (24, 16, 5), stride=2, padding=((3, 0),)),
    case("3d-tiled", (1, 4, 10, 9, 11), (8, 4, 3, 3, 3), padding=1, stride=(1, 2, 1)),
]

CASES = SMALL + LARGE


def zero_padding(x_shape, w_shape, kw):
    """kw with 'same' written out as pairs (the gradient functions take zero padding only)."""
    if kw.get("padding") != "same":
        return kw
    nd = len(x_shape) - 2
    pairs = reference.same_pairs(x_shape[2:], w_shape[2:],
                                 reference.per_axis(kw.get("stride", 1), nd),
                                 reference.per_axis(kw.get("dilation", 1), nd))
    return {**kw, "padding": pairs}


def test_both_loop_paths_are_covered():
    assert {conv_loops(*p.values) for p in SMALL} == {_loops.direct}
    assert {conv_loops(*p.values) for p in LARGE} == {_loops.tiled}


# ---------------------------------------------------------------------------------------------
# Against the reference.  Each call is made twice: a repeated call may take another path
# (loopconv keeps checked plans for small problems).

CALLS = 2

@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
def test_forward(rng, assert_close, x_shape, w_shape, kw, dtype, with_bias):
    x, w, b, _ = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    b = b if with_bias else None
    expected = reference.conv(x, w, b, **kw)
    for _ in range(CALLS):
        y = fn(len(x_shape) - 2)(x, w, b, **kw)
        assert_close(y, expected, dtype)
        assert y.flags.c_contiguous


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
def test_input_grad(rng, assert_close, x_shape, w_shape, kw, dtype):
    x, w, _, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    kw = zero_padding(x_shape, w_shape, kw)
    expected = reference.conv_input(x_shape, w, gy, **kw)
    for _ in range(CALLS):
        assert_close(fn(len(x_shape) - 2, "_input")(x_shape, w, gy, **kw), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
def test_weight_grad(rng, assert_close, x_shape, w_shape, kw, dtype):
    x, w, _, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    kw = zero_padding(x_shape, w_shape, kw)
    expected = reference.conv_weight(x, w_shape, gy, **kw)
    for _ in range(CALLS):
        assert_close(fn(len(x_shape) - 2, "_weight")(x, w_shape, gy, **kw), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
def test_backward(rng, assert_close, x_shape, w_shape, kw, dtype):
    x, w, _, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    expected = reference.conv_backward(x, w, gy, **kw)
    for _ in range(CALLS):
        got = fn(len(x_shape) - 2, "_backward")(x, w, gy, **kw)
        for g, e in zip(got, expected):
            assert_close(g, e, dtype)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_repeated_calls_of_a_large_problem_take_a_plan(rng, assert_close, nd):
    """The second identical call of a problem for the tiled loops skips the checks (a plan):
    same results for unbatched arrays, another memory order and float16 inputs."""
    spatial = {1: (300,), 2: (30, 31), 3: (9, 10, 11)}[nd]
    x = rng.standard_normal((16, *spatial))                 # unbatched
    w = rng.standard_normal((32, 8) + (3,) * nd)
    b = rng.standard_normal(32)
    kw = dict(stride=2, padding=1, groups=2)
    assert not _loops.small(conv_macs((1, *x.shape), w.shape, kw))
    gy = rng.standard_normal(reference.conv(x[None], w, **kw).shape[1:])
    for dtype in (np.float32, np.float64, np.float16):
        xd, wd, bd, gyd = (a.astype(dtype) for a in (x, w, b, gy))
        x64, w64, b64, gy64 = (a.astype(np.float64) for a in (xd, wd, bd, gyd))
        expected = {"conv": reference.conv(x64[None], w64, b64, **kw)[0],
                    "input": reference.conv_input((1, *x.shape), w64, gy64[None], **kw)[0],
                    "weight": reference.conv_weight(x64[None], w.shape, gy64[None], **kw)}
        functional._PLANS.clear()
        for order in ("C", "F", "C"):
            xo, gyo = np.asarray(xd, order=order), np.asarray(gyd, order=order)
            got = {"conv": fn(nd)(xo, wd, bd, **kw),
                   "input": fn(nd, "_input")(x.shape, wd, gyo, **kw),
                   "weight": fn(nd, "_weight")(xo, w.shape, gyo, **kw)}
            back = fn(nd, "_backward")(xo, wd, gyo, **kw)
            for name, e in expected.items():
                assert got[name].dtype == np.result_type(dtype, np.float32)
                assert_close(got[name], e, got[name].dtype)
            assert_close(back[0], expected["input"], back[0].dtype)
            assert_close(back[1], expected["weight"], back[1].dtype)
            assert_close(back[2], gy64.reshape(32, -1).sum(axis=1), back[2].dtype)
        assert {p.loops.family for p in functional._PLANS.values()} == {_loops.tiled}


PLANNED_CALLS = {   # family: f(nd, arrays of conv_arrays / transpose_arrays, kw)
    "conv": lambda nd, a, kw: fn(nd)(a[0], a[1], a[2], **kw),
    "input": lambda nd, a, kw: fn(nd, "_input")(a[0].shape, a[1], a[3], **kw),
    "weight": lambda nd, a, kw: fn(nd, "_weight")(a[0], a[1].shape, a[3], **kw),
    "backward": lambda nd, a, kw: fn(nd, "_backward")(a[0], a[1], a[3], **kw),
    "transpose": lambda nd, a, kw: getattr(loopconv, f"conv_transpose{nd}d")(
        a[0], a[1], a[2], **kw),
    "transpose-backward": lambda nd, a, kw: getattr(loopconv, f"conv_transpose{nd}d_backward")(
        a[0], a[1], a[3], **kw),
}


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("size", ["small", "large", "dense"])
@pytest.mark.parametrize("family", list(PLANNED_CALLS))
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_planned_call_equals_the_checked_call(rng, nd, family, size, unbatched):
    """Every family leaves a plan (transposed convolutions included), and the planned call
    gives the checked call's results bit for bit, on the direct and the tiled loops, and for
    a layer whose window covers the whole image (a dense layer: one output pixel, or for the
    transposed convolutions one input pixel), whose plan calls the dense products itself."""
    kw = dict(stride=2, padding=1, groups=2)
    if size == "small":
        x_shape, w_shape, wt_shape = (1, 4) + (4,) * nd, (6, 2) + (3,) * nd, (4, 3) + (3,) * nd
    elif size == "large":
        spatial = {1: (300,), 2: (30, 31), 3: (9, 10, 11)}[nd]
        x_shape, w_shape, wt_shape = (2, 16, *spatial), (32, 8) + (3,) * nd, (16, 12) + (3,) * nd
    else:
        kernel = {1: (5,), 2: (3, 2), 3: (2, 1, 2)}[nd]
        x_shape = (3, 24) + (kernel if not family.startswith("transpose") else (1,) * nd)
        w_shape, wt_shape, kw = (40, 24) + kernel, (24, 10) + kernel, {}
    if family.startswith("transpose"):
        arrays = transpose_arrays(rng, x_shape, wt_shape, kw, np.float32)
    else:
        arrays = conv_arrays(rng, x_shape, w_shape, kw, np.float32)
    if unbatched:
        arrays = (arrays[0][0], arrays[1], arrays[2], arrays[3][0])
    functional._PLANS.clear()
    checked = PLANNED_CALLS[family](nd, arrays, kw)
    assert len(functional._PLANS) == 1
    plan = next(iter(functional._PLANS.values()))
    assert (plan.loops.family is _loops.direct) == (size == "small")
    assert (plan._flat != (None, None, None)) == (size == "dense")
    planned = PLANNED_CALLS[family](nd, arrays, kw)
    for c, p in zip(*(r if isinstance(r, tuple) else (r,) for r in (checked, planned))):
        assert p.dtype == c.dtype and p.shape == c.shape
        np.testing.assert_array_equal(p, c)


# ---------------------------------------------------------------------------------------------
# Padding modes

MODES = ["reflect", "replicate", "circular"]

MODE_CASES = [
    case("1d-pad2", (2, 3, 9), (2, 3, 3), padding=2),
    case("1d-asym-stride2", (1, 2, 8), (3, 2, 3), padding=((3, 1),), stride=2),
    case("2d-pad1", (2, 2, 6, 5), (3, 2, 3, 3), padding=1),
    case("2d-asym-dilated-groups", (1, 4, 7, 6), (4, 2, 3, 2), padding=((2, 0), (1, 3)),
         dilation=(2, 1), groups=2),
    case("2d-same-s1", (2, 2, 5, 6), (2, 2, 4, 3), padding="same"),
    case("2d-same-s2", (1, 2, 7, 6), (3, 2, 3, 3), padding="same", stride=2),
    case("2d-one-axis-only", (1, 2, 5, 6), (2, 2, 3, 3), padding=(0, 2)),
    case("2d-pad-size-minus-1", (1, 1, 4, 3), (1, 1, 2, 2), padding=(3, 2)),
    case("3d-asym", (1, 2, 4, 5, 4), (2, 2, 2, 3, 2), padding=((1, 2), (0, 1), (2, 2))),
    case("2d-tiled", (2, 8, 20, 18), (16, 8, 3, 3), padding=(2, 1)),
]


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("x_shape, w_shape, kw", MODE_CASES)
def test_padding_mode_forward(rng, assert_close, x_shape, w_shape, kw, mode, dtype):
    x, w, b, _ = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    y = fn(len(x_shape) - 2)(x, w, b, padding_mode=mode, **kw)
    assert_close(y, reference.conv(x, w, b, padding_mode=mode, **kw), dtype)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("x_shape, w_shape, kw", MODE_CASES)
def test_padding_mode_backward(rng, assert_close, x_shape, w_shape, kw, mode, dtype):
    x, w, _, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    got = fn(len(x_shape) - 2, "_backward")(x, w, gy, padding_mode=mode, **kw)
    expected = reference.conv_backward(x, w, gy, padding_mode=mode, **kw)
    for g, r in zip(got, expected):
        assert_close(g, r, dtype)


@pytest.mark.parametrize("mode, padding", [("circular", (4, 3)), ("replicate", (6, 5)),
                                           ("reflect", (3, 2))],
                         ids=["circular-equal-to-size", "replicate-beyond-size",
                              "reflect-size-minus-1"])
def test_padding_mode_at_its_limit(rng, assert_close, mode, padding):
    """The largest padding each mode takes on a 4x3 input (replicate has no limit)."""
    x, w, b, _ = conv_arrays(rng, (2, 2, 4, 3), (3, 2, 3, 3), {}, np.float64)
    y = loopconv.conv2d(x, w, b, padding=padding, padding_mode=mode)
    assert_close(y, reference.conv(x, w, b, padding=padding, padding_mode=mode), np.float64)
    g = rng.standard_normal(y.shape)
    got = loopconv.conv2d_backward(x, w, g, padding=padding, padding_mode=mode)
    for value, ref in zip(got, reference.conv_backward(x, w, g, padding=padding,
                                                       padding_mode=mode)):
        assert_close(value, ref, np.float64)


@pytest.mark.parametrize("mode", ["zeros"] + MODES)
def test_padding_mode_without_padding_is_plain(rng, mode):
    x, w, b, _ = conv_arrays(rng, (2, 3, 6, 5), (4, 3, 2, 2), {}, np.float64)
    np.testing.assert_array_equal(loopconv.conv2d(x, w, b, padding_mode=mode),
                                  loopconv.conv2d(x, w, b))


# ---------------------------------------------------------------------------------------------
# Central differences (float64, small problems)

FD_CASES = [
    case("1d-stride2-pairs", (1, 2, 7), (2, 2, 3), stride=2, padding=((1, 2),)),
    case("2d-groups-dilation", (1, 4, 5, 5), (2, 2, 2, 2), groups=2, dilation=2, padding=1),
    case("2d-stride3-nodivide", (2, 1, 7, 6), (2, 1, 2, 3), stride=3),
    case("2d-same-s2", (1, 2, 5, 4), (2, 2, 3, 2), stride=2, padding="same"),
    case("3d-asym", (1, 1, 4, 3, 4), (2, 1, 2, 2, 3), padding=((1, 0), (0, 1), (2, 1))),
]


def _check_by_central_differences(rng, x_shape, w_shape, kw, mode):
    nd = len(x_shape) - 2
    x, w, b, g = conv_arrays(rng, x_shape, w_shape, kw, np.float64)
    assert_gradients_match_central_differences(
        lambda x_, w_, b_: fn(nd)(x_, w_, b_, padding_mode=mode, **kw),
        lambda x_, w_, g_: fn(nd, "_backward")(x_, w_, g_, padding_mode=mode, **kw),
        x, w, b, g)


@pytest.mark.parametrize("x_shape, w_shape, kw", FD_CASES)
def test_backward_by_central_differences(rng, x_shape, w_shape, kw):
    _check_by_central_differences(rng, x_shape, w_shape, kw, "zeros")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("x_shape, w_shape, kw", [
    case("1d-asym", (1, 2, 5), (2, 2, 3), padding=((3, 1),)),
    case("2d-asym-stride2", (1, 2, 4, 5), (2, 2, 3, 2), padding=((2, 3), (1, 0)), stride=2),
    case("3d", (1, 1, 3, 4, 3), (1, 1, 2, 2, 2), padding=((2, 1), (1, 1), (0, 2))),
])
def test_padding_mode_folding_by_central_differences(rng, x_shape, w_shape, kw, mode):
    _check_by_central_differences(rng, x_shape, w_shape, kw, mode)


# ---------------------------------------------------------------------------------------------
# Adjoint identities: <conv(x, w), g> = <x, conv_input(g)> = <w, conv_weight(x, g)>

@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
def test_adjoint_identities(rng, x_shape, w_shape, kw):
    nd = len(x_shape) - 2
    x, w, _, g = conv_arrays(rng, x_shape, w_shape, kw, np.float64)
    lhs = np.vdot(fn(nd)(x, w, **kw), g)
    zkw = zero_padding(x_shape, w_shape, kw)
    via_input = np.vdot(x, fn(nd, "_input")(x_shape, w, g, **zkw))
    via_weight = np.vdot(w, fn(nd, "_weight")(x, w_shape, g, **zkw))
    scale = np.sqrt(x.size * w.size) * np.abs(g).max()
    assert abs(lhs - via_input) <= 1e-12 * scale
    assert abs(lhs - via_weight) <= 1e-12 * scale


# ---------------------------------------------------------------------------------------------
# The seed's worked example

def test_worked_example():
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    w = np.ones((1, 1, 2, 2))
    y = loopconv.conv2d(x, w)
    np.testing.assert_array_equal(y, reference.conv(x, w))
    gx, gw, gb = loopconv.conv2d_backward(x, w, np.ones_like(y))
    np.testing.assert_array_equal(gx[0, 0], [[1, 2, 2, 2, 1],
                                             [2, 4, 4, 4, 2],
                                             [2, 4, 4, 4, 2],
                                             [2, 4, 4, 4, 2],
                                             [1, 2, 2, 2, 1]])
    np.testing.assert_array_equal(gw[0, 0], [[144, 160], [224, 240]])
    np.testing.assert_array_equal(gb, [y.size])
    np.testing.assert_array_equal(loopconv.conv2d_input(x.shape, w, np.ones_like(y)), gx)
    np.testing.assert_array_equal(loopconv.conv2d_weight(x, w.shape, np.ones_like(y)), gw)


# ---------------------------------------------------------------------------------------------
# Shapes: 'same', strides that do not divide, unbatched inputs, input_size forms

@pytest.mark.parametrize("stride", [1, 2, 3], ids=lambda s: f"s{s}")
@pytest.mark.parametrize("size, kernel, dilation", [
    ((7, 8), (3, 3), (1, 1)), ((5, 6), (4, 1), (1, 1)), ((9, 4), (3, 2), (2, 3)),
    ((1, 2), (3, 3), (1, 1)),
], ids=["odd-even", "even-kernel", "dilated", "tiny"])
def test_same_output_size(rng, size, kernel, dilation, stride):
    x = rng.standard_normal((1, 2, *size))
    w = rng.standard_normal((3, 2, *kernel))
    y = loopconv.conv2d(x, w, padding="same", stride=stride, dilation=dilation)
    assert y.shape[2:] == tuple(-(-n // stride) for n in size)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_same_stride1_puts_odd_pixel_after(rng, nd):
    x = rng.standard_normal((1, 2) + (5,) * nd)
    w = rng.standard_normal((2, 2) + (4,) * nd)
    same = fn(nd)(x, w, padding="same")
    explicit = fn(nd)(x, w, padding=((1, 2),) * nd)
    np.testing.assert_array_equal(same, explicit)
    assert same.shape[2:] == x.shape[2:]


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("channels", [1, 12], ids=["direct", "tiled"])
def test_unreached_inputs_get_zero_gradient(rng, nd, channels):
    """Kernel 2 with stride 3: every third input row (and the tail) is read by no window."""
    size = {1: 400, 2: 26, 3: 12}[nd]
    x_shape = (2, channels) + (size,) * nd
    w = rng.standard_normal((channels, channels) + (2,) * nd)
    out = (size - 2) // 3 + 1
    gy = rng.standard_normal((2, channels) + (out,) * nd)
    gx = fn(nd, "_input")(x_shape, w, gy, stride=3)
    along_axis = np.zeros(size, dtype=bool)
    for o in range(out):
        along_axis[3 * o:3 * o + 2] = True
    assert not along_axis.all()
    reached = along_axis
    for _ in range(nd - 1):
        reached = np.logical_and.outer(reached, along_axis)
    assert np.all(gx[..., ~reached] == 0)
    assert np.all(gx[..., reached] != 0)
    if channels > 1:
        assert conv_macs(x_shape, w.shape, {"stride": 3}) >= _loops.SMALL_PROBLEM


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_unbatched(rng, assert_close, nd):
    x = rng.standard_normal((3,) + (6,) * nd)
    w = rng.standard_normal((4, 3) + (2,) * nd)
    b = rng.standard_normal(4)
    kw = dict(stride=2, padding=1)
    g = rng.standard_normal(reference.conv(x[None], w, b, **kw)[0].shape)
    rx, rw, rb = reference.conv_backward(x[None], w, g[None], **kw)
    for _ in range(CALLS):
        assert_close(fn(nd)(x, w, b, **kw), reference.conv(x[None], w, b, **kw)[0],
                     np.float64)
        gx, gw, gb = fn(nd, "_backward")(x, w, g, **kw)
        assert_close(gx, rx[0], np.float64)
        assert_close(gw, rw, np.float64)
        assert_close(gb, rb, np.float64)
        assert_close(fn(nd, "_input")(x.shape, w, g, **kw), rx[0], np.float64)
        assert_close(fn(nd, "_weight")(x, w.shape, g, **kw), rw, np.float64)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_unbatched_padding_mode_backward(rng, assert_close, nd):
    x = rng.standard_normal((2,) + (5,) * nd)
    w = rng.standard_normal((3, 2) + (3,) * nd)
    g = rng.standard_normal(fn(nd)(x, w, padding=2, padding_mode="reflect").shape)
    got = fn(nd, "_backward")(x, w, g, padding=2, padding_mode="reflect")
    expected = reference.conv_backward(x[None], w, g[None], padding=2, padding_mode="reflect")
    assert_close(got[0], expected[0][0], np.float64)
    assert_close(got[1], expected[1], np.float64)
    assert_close(got[2], expected[2], np.float64)


@pytest.mark.parametrize("form", ["full", "unbatched", "spatial"])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_input_size_forms(rng, assert_close, nd, form):
    batched = form != "unbatched"
    x_shape = ((2,) if batched else ()) + (4,) + (7,) * nd
    w = rng.standard_normal((6, 2) + (3,) * nd)
    kw = dict(stride=2, padding=1, groups=2)
    out = reference.output_size((7,) * nd, (3,) * nd, (2,) * nd, ((1, 1),) * nd, (1,) * nd)
    g = rng.standard_normal(((2,) if batched else ()) + (6, *out))
    size = x_shape[-nd:] if form == "spatial" else x_shape
    gx = fn(nd, "_input")(size, w, g, **kw)
    full = x_shape if batched else (1, *x_shape)
    expected = reference.conv_input(full, w, g if batched else g[None], **kw)
    assert_close(gx, expected if batched else expected[0], np.float64)


def test_input_size_spatial_of_unbatched_grad_output(rng, assert_close):
    w = rng.standard_normal((3, 2, 3, 3))
    g = rng.standard_normal((3, 4, 4))
    gx = loopconv.conv2d_input((6, 6), w, g)
    assert_close(gx, reference.conv_input((1, 2, 6, 6), w, g[None])[0], np.float64)


def test_input_size_as_array(rng, assert_close):
    w = rng.standard_normal((3, 2, 3))
    g = rng.standard_normal((2, 3, 5))
    gx = loopconv.conv1d_input(np.array([2, 2, 7]), w, g)
    assert_close(gx, reference.conv_input((2, 2, 7), w, g), np.float64)


@pytest.mark.parametrize("input_size, grad_output", [
    ((2, 7, 7), (1, 3, 5, 5)), ((1, 2, 7, 7), (3, 5, 5)),
], ids=["unbatched-size-batched-grad", "batched-size-unbatched-grad"])
def test_input_size_batching_must_agree_with_grad_output(rng, input_size, grad_output):
    """The gradient of an input has that input's shape, so a full or unbatched input_size
    whose batching disagrees with grad_output's has no answer: ValueError naming both shapes
    (torch.nn.grad.conv2d_input refuses too; a spatial input_size takes grad_output's)."""
    w = rng.standard_normal((3, 2, 3, 3))
    g = rng.standard_normal(grad_output)
    with pytest.raises(ValueError) as info:
        loopconv.conv2d_input(input_size, w, g)
    message = str(info.value)
    assert message.startswith("conv2d_input:"), message
    for word in ("input_size", str(input_size), "grad_output", str(grad_output)):
        assert word in message, (word, message)


@pytest.mark.parametrize("stride", [2, 3], ids=lambda s: f"s{s}")
def test_input_size_chooses_among_sizes(rng, assert_close, stride):
    """With stride > 1 several input sizes give one output size; each is honoured."""
    w = rng.standard_normal((2, 2, 3))
    g = rng.standard_normal((1, 2, 4))
    for size in range(3 * stride + 3, 3 * stride + 3 + stride):
        gx = loopconv.conv1d_input((1, 2, size), w, g, stride=stride)
        assert_close(gx, reference.conv_input((1, 2, size), w, g, stride=stride), np.float64)


# ---------------------------------------------------------------------------------------------
# output_mask and zero-size batches

@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_output_mask(rng, mask, mode):
    kw = dict(stride=2, padding=1, padding_mode=mode)
    x, w, _, g = conv_arrays(rng, (2, 3, 6, 5), (4, 3, 3, 3), kw, np.float64)
    got = loopconv.conv2d_backward(x, w, g, **kw, output_mask=mask)
    assert_masked_gradients(got, mask, reference.conv_backward(x, w, g, **kw))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_zero_batch_backward_values(rng, nd):
    x = np.zeros((0, 2) + (5,) * nd)
    w = rng.standard_normal((3, 2) + (2,) * nd)
    g = np.zeros((0, 3) + (4,) * nd)
    gx, gw, gb = fn(nd, "_backward")(x, w, g)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, np.zeros(w.shape))
    np.testing.assert_array_equal(gb, np.zeros(3))
    np.testing.assert_array_equal(fn(nd, "_weight")(x, w.shape, g), np.zeros(w.shape))
    assert fn(nd)(x, w).shape == g.shape
    assert fn(nd, "_input")(x.shape, w, g).shape == x.shape


# ---------------------------------------------------------------------------------------------
# Each output reads only its window: a non-finite value spreads exactly as far as the windows

@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", [
    case("direct", (2, 3, 8, 8), (4, 3, 3, 3), padding=1),
    case("tiled", (2, 8, 20, 20), (16, 8, 3, 3), padding=1),
    case("tiled-stride2-groups", (2, 8, 21, 19), (16, 4, 3, 3), stride=2, groups=2,
         padding=((1, 0), (2, 1))),
])
def test_non_finite_values_stay_local(rng, x_shape, w_shape, kw, dtype):
    x, w, _, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    x[0, 1, 5, 7] = np.nan
    gy[1, -1, 2, 2] = np.inf
    with np.errstate(invalid="ignore"):
        expected = [reference.conv(x, w, **kw), reference.conv_input(x_shape, w, gy, **kw),
                    reference.conv_weight(x, w_shape, gy, **kw)]
        got = [loopconv.conv2d(x, w, **kw), loopconv.conv2d_input(x_shape, w, gy, **kw),
               loopconv.conv2d_weight(x, w_shape, gy, **kw)]
    for g, e in zip(got, expected):
        assert 0 < np.count_nonzero(~np.isfinite(e)) < e.size
        np.testing.assert_array_equal(np.isfinite(g), np.isfinite(e))


STRIDED_1X1 = [  # x, w, stride, padding; whether the forward pass and weight gradient sample x
    ((2, 64, 15, 14), (96, 64, 1, 1), 2, 0, True),
    ((1, 32, 9, 10, 11), (48, 32, 1, 1, 1), (2, 3, 1), 0, True),
    ((3, 64, 40), (80, 64, 1), 3, 0, True),
    ((2, 64, 14, 14), (96, 64, 1, 1), 2, 1, False),
    ((2, 64, 14, 14), (96, 64, 1, 1), 2, ((0, 1), (0, 1)), False),
    ((2, 64, 14, 14), (96, 64, 3, 3), 2, 0, False),
]


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, stride, padding, sampled", STRIDED_1X1)
def test_strided_1x1_reads_the_sampled_pixels(rng, assert_close, dtype, x_shape, w_shape, stride,
                                              padding, sampled):
    """A 1x1 convolution with a stride and no padding that reaches an output runs its forward
    pass and weight gradient as the stride-1 convolution of x's pixels at multiples of the
    stride (a strided copy); every pass against the reference, the same bits on 1 and 2
    threads, the caller's arrays unchanged."""
    nd = len(x_shape) - 2
    kw = dict(stride=stride, padding=padding)
    problem = _problem.conv(f"conv{nd}d", nd, np.zeros(x_shape, dtype), np.zeros(w_shape, dtype),
                            None, stride, padding, 1, 1, "zeros")[0]
    assert (_loops.Plan(problem)._sampled is not None) == sampled
    x, w, _, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    before = (x.copy(), w.copy(), gy.copy())
    got = {}
    for threads in (1, 2):
        with loopconv.threads(threads):
            got[threads] = (fn(nd, "")(x, w, **kw), fn(nd, "_weight")(x, w_shape, gy, **kw),
                            fn(nd, "_input")(x_shape, w, gy, **kw))
    for a, b in zip(got[1], got[2]):
        assert np.array_equal(a, b)
    y, dw, dx = got[1]
    assert_close(y, reference.conv(x, w, **kw), dtype)
    assert_close(dw, reference.conv_weight(x, w_shape, gy, **kw), dtype)
    assert_close(dx, reference.conv_input(x_shape, w, gy, **kw), dtype)
    for a, b in zip((x, w, gy), before):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, stride", [
    ((3, 64, 40), (80, 64, 1), 3),                  # sampled, dy read in place when planned
    ((2, 64, 15, 14), (96, 64, 1, 1), 2),
    ((2, 16, 30, 31), (96, 16, 1, 1), 1),           # dy read in place
    ((2, 3, 33, 35), (40, 3, 3, 3), 2),             # a first layer
    # sampled, whose stride-1 problem streams its rows (head_forward), the strided one not
    ((3, 4, 20, 30, 40), (1, 4, 1, 1, 1), (1, 3, 2)),
])
def test_same_bits_checked_and_planned(rng, dtype, x_shape, w_shape, stride):
    """A problem's first call runs the checked path (the loops' unplanned entry), later calls
    its plan, which may run it otherwise (x sampled at the stride): the weight gradient's sums
    are cut by the grid the loops see, and the sampled problem may take other loops, so both
    must run the same (the same bits), forward pass and weight gradient."""
    nd = len(x_shape) - 2
    x, w, _, gy = conv_arrays(rng, x_shape, w_shape, dict(stride=stride), dtype)
    for call in (lambda: fn(nd, "_weight")(x, w_shape, gy, stride=stride),
                 lambda: fn(nd, "")(x, w, stride=stride)):
        functional._PLANS.clear()
        functional._BY_PROBLEM.clear()
        first = call()
        for _ in range(2):
            assert np.array_equal(call(), first)
