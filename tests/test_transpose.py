"""conv_transpose1d/2d/3d and their backward passes against the NumPy reference (the adjoint
of the convolution), central differences and the adjoint identity with conv."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import reference
from common import (
    DTYPE_PARAMS,
    MASKS,
    assert_gradients_match_central_differences,
    assert_masked_gradients,
    case,
    chosen_loops,
    transpose_arrays,
)

import loopconv
from loopconv import _loops


def fn(nd, suffix=""):
    return getattr(loopconv, f"conv_transpose{nd}d{suffix}")


def conv(nd, suffix=""):
    return getattr(loopconv, f"conv{nd}d{suffix}")


SMALL = [
    case("1d", (2, 3, 6), (3, 4, 3)),
    case("1d-stride3-outpad2", (2, 2, 5), (2, 3, 2), stride=3, output_padding=2),
    case("1d-pairs-dilation", (1, 2, 7), (2, 2, 3), padding=((2, 1),), dilation=2),
    case("2d", (2, 3, 5, 4), (3, 2, 3, 3), padding=1),
    case("2d-stride23-outpad", (2, 2, 4, 5), (2, 3, 3, 2), stride=(2, 3),
         output_padding=(1, 2), padding=(1, 0)),
    case("2d-groups", (2, 4, 5, 5), (4, 3, 2, 3), groups=2, stride=2, padding=1),
    case("2d-depthwise", (1, 3, 6, 5), (3, 1, 3, 3), groups=3, stride=2, output_padding=1),
    case("2d-asym-pairs", (2, 2, 5, 6), (2, 2, 3, 4), stride=2, padding=((2, 0), (1, 3))),
    case("2d-outpad-below-dilation", (1, 2, 5, 5), (2, 2, 3, 2), dilation=(3, 2),
         output_padding=(2, 1)),
    case("2d-dilation-stride", (2, 2, 4, 3), (2, 3, 2, 3), dilation=2, stride=3,
         output_padding=(1, 2), padding=(2, 1)),
    case("2d-1x1-stride2", (2, 3, 4, 4), (3, 5, 1, 1), stride=2, output_padding=1),
    case("3d", (2, 2, 3, 4, 3), (2, 3, 2, 3, 2), stride=(2, 1, 2), padding=(0, 1, 1)),
    case("3d-everything", (1, 4, 3, 4, 3), (4, 1, 3, 2, 2), stride=(2, 3, 1), groups=2,
         dilation=(1, 2, 2), padding=((1, 0), (0, 2), (1, 1)), output_padding=(1, 1, 1)),
]

LARGE = [
    case("2d-tiled-stride2", (2, 16, 10, 10), (16, 8, 3, 3), stride=2, padding=1,
         output_padding=1),
    case("2d-tiled-groups-odd", (3, 14, 9, 11), (14, 5, 4, 3), groups=2, stride=(3, 2),
         padding=((2, 1), (0, 1))),
    case("1d-tiled", (4, 16, 60), (16, 12, 5), stride=2, dilation=2),
    case("3d-tiled", (1, 8, 6, 5, 6), (8, 6, 3, 3, 3), stride=2, padding=1),
]

CASES = SMALL + LARGE


def loops(x_shape, w_shape, kw):
    """The loops of a transposed convolution: those of the convolution whose input gradient it
    is (output x, weight w read as (C_out, C_in // groups, *kernel))."""
    stride = reference.per_axis(kw.get("stride", 1), len(x_shape) - 2)
    return chosen_loops(x_shape, w_shape, stride, kw.get("groups", 1)).family


def test_both_loop_paths_are_covered():
    assert {loops(*p.values[:3]) for p in SMALL} == {_loops.direct}
    assert {loops(*p.values[:3]) for p in LARGE} == {_loops.tiled}


# ---------------------------------------------------------------------------------------------
# Against the reference.  Each call is made twice: the second runs the plan the first left.

CALLS = 2

@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
def test_forward(rng, assert_close, x_shape, w_shape, kw, dtype, with_bias):
    x, w, b, _ = transpose_arrays(rng, x_shape, w_shape, kw, dtype)
    b = b if with_bias else None
    expected = reference.conv_transpose(x, w, b, **kw)
    for _ in range(CALLS):
        y = fn(len(x_shape) - 2)(x, w, b, **kw)
        assert_close(y, expected, dtype)
        assert y.flags.c_contiguous


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
def test_backward(rng, assert_close, x_shape, w_shape, kw, dtype):
    x, w, _, gy = transpose_arrays(rng, x_shape, w_shape, kw, dtype)
    expected = reference.conv_transpose_backward(x, w, gy, **kw)
    for _ in range(CALLS):
        got = fn(len(x_shape) - 2, "_backward")(x, w, gy, **kw)
        for g, r in zip(got, expected):
            assert_close(g, r, dtype)


@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
def test_output_shape_formula(rng, x_shape, w_shape, kw):
    """out = (in - 1) * stride - before - after + dilation * (k - 1) + output_padding + 1."""
    nd = len(x_shape) - 2
    x, w, _, _ = transpose_arrays(rng, x_shape, w_shape, kw, np.float64)
    stride = reference.per_axis(kw.get("stride", 1), nd)
    dilation = reference.per_axis(kw.get("dilation", 1), nd)
    output_padding = reference.per_axis(kw.get("output_padding", 0), nd)
    pairs = reference.padding_pairs(kw.get("padding", 0), nd)
    out = tuple((n - 1) * s - b - a + d * (k - 1) + p + 1 for n, k, s, (b, a), d, p in
                zip(x_shape[2:], w_shape[2:], stride, pairs, dilation, output_padding))
    y = fn(nd)(x, w, **kw)
    assert y.shape == (x_shape[0], w_shape[1] * kw.get("groups", 1), *out)


# ---------------------------------------------------------------------------------------------
# The adjoint of the convolution

@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
def test_adjoint_identity_with_conv(rng, x_shape, w_shape, kw):
    """<conv_transpose(x, w), g> = <x, conv(g, w)> over the output pixels x covers."""
    nd = len(x_shape) - 2
    x, w, _, g = transpose_arrays(rng, x_shape, w_shape, kw, np.float64)
    ckw = {k: v for k, v in kw.items() if k != "output_padding"}
    lhs = np.vdot(fn(nd)(x, w, **kw), g)
    cg = conv(nd)(g, w, **ckw)[(slice(None),) * 2 + tuple(slice(0, n) for n in x_shape[2:])]
    rhs = np.vdot(x, cg)
    assert abs(lhs - rhs) <= 1e-12 * np.sqrt(x.size * w.size) * np.abs(g).max()


def _output_padding_below_stride(param):
    x_shape, _, kw = param.values
    nd = len(x_shape) - 2
    return all(p < s for p, s in zip(reference.per_axis(kw.get("output_padding", 0), nd),
                                     reference.per_axis(kw.get("stride", 1), nd)))


@pytest.mark.parametrize("x_shape, w_shape, kw",
                         [p for p in CASES if _output_padding_below_stride(p)])
def test_equals_conv_input(rng, assert_close, x_shape, w_shape, kw):
    """conv_transpose(x, w) is conv_input(y.shape, w, x) (output_padding below the stride)."""
    nd = len(x_shape) - 2
    x, w, _, _ = transpose_arrays(rng, x_shape, w_shape, kw, np.float64)
    y = fn(nd)(x, w, **kw)
    ckw = {k: v for k, v in kw.items() if k != "output_padding"}
    assert_close(y, conv(nd, "_input")(y.shape, w, x, **ckw), np.float64)


# ---------------------------------------------------------------------------------------------
# output_size

@pytest.mark.parametrize("full_shape", [False, True], ids=["spatial", "full"])
@pytest.mark.parametrize("nd, stride, dilation", [
    (1, (3,), (1,)), (2, (2, 3), (1, 1)), (2, (1, 1), (3, 2)), (3, (2, 1, 3), (1, 2, 1)),
], ids=["1d-s3", "2d-s23", "2d-dilated", "3d"])
def test_output_size_chooses_output_padding(rng, assert_close, nd, stride, dilation,
                                            full_shape):
    x = rng.standard_normal((2, 2) + (4,) * nd)
    w = rng.standard_normal((2, 3) + (2,) * nd)
    b = rng.standard_normal(3)
    kw = dict(stride=stride, dilation=dilation, padding=1)
    limits = [max(s, d) for s, d in zip(stride, dilation)]
    smallest = fn(nd)(x, w, **kw).shape[2:]
    for extra in itertools.product(*(range(m) for m in limits)):
        size = tuple(n + e for n, e in zip(smallest, extra))
        given = (2, 3, *size) if full_shape else size
        y = fn(nd)(x, w, b, **kw, output_size=given)
        assert_close(y, reference.conv_transpose(x, w, b, **kw, output_size=size), np.float64)
        np.testing.assert_array_equal(y, fn(nd)(x, w, b, **kw, output_padding=extra))


@pytest.mark.parametrize("full_shape", [False, True], ids=["spatial", "full"])
@pytest.mark.parametrize("offset", [-1, 2], ids=["too-small", "too-large"])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_output_size_impossible(rng, nd, offset, full_shape):
    x = rng.standard_normal((1, 2) + (4,) * nd)
    w = rng.standard_normal((2, 3) + (3,) * nd)
    smallest = fn(nd)(x, w, stride=2).shape[2:]
    size = tuple(smallest)
    size = size[:-1] + (size[-1] + offset,)
    given = (1, 3, *size) if full_shape else size
    with pytest.raises(ValueError, match=rf"conv_transpose{nd}d:.*output_size"):
        fn(nd)(x, w, stride=2, output_size=given)


def test_output_size_wrong_length(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    w = rng.standard_normal((2, 3, 3, 3))
    with pytest.raises(ValueError, match=r"conv_transpose2d:.*output_size"):
        loopconv.conv_transpose2d(x, w, output_size=(9,))


# ---------------------------------------------------------------------------------------------
# Central differences, unbatched inputs, output_mask

FD_CASES = [
    case("1d-stride2-outpad", (1, 2, 4), (2, 2, 3), stride=2, output_padding=1,
         padding=((1, 0),)),
    case("2d-groups-dilation", (1, 4, 3, 3), (4, 1, 2, 2), groups=2, dilation=2, stride=2),
    case("2d-outpad-below-dilation", (1, 1, 3, 3), (1, 2, 2, 2), dilation=3,
         output_padding=2),
    case("3d-asym", (1, 1, 3, 2, 3), (1, 2, 2, 2, 2), stride=(2, 1, 2),
         padding=((1, 0), (0, 1), (1, 1))),
]


@pytest.mark.parametrize("x_shape, w_shape, kw", FD_CASES)
def test_backward_by_central_differences(rng, x_shape, w_shape, kw):
    nd = len(x_shape) - 2
    x, w, b, g = transpose_arrays(rng, x_shape, w_shape, kw, np.float64)
    assert_gradients_match_central_differences(
        lambda x_, w_, b_: fn(nd)(x_, w_, b_, **kw),
        lambda x_, w_, g_: fn(nd, "_backward")(x_, w_, g_, **kw),
        x, w, b, g)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_unbatched(rng, assert_close, nd):
    x = rng.standard_normal((2,) + (4,) * nd)
    w = rng.standard_normal((2, 3) + (3,) * nd)
    b = rng.standard_normal(3)
    kw = dict(stride=2, padding=1, output_padding=1)
    y = fn(nd)(x, w, b, **kw)
    assert_close(y, reference.conv_transpose(x[None], w, b, **kw)[0], np.float64)
    g = rng.standard_normal(y.shape)
    gx, gw, gb = fn(nd, "_backward")(x, w, g, **kw)
    rx, rw, rb = reference.conv_transpose_backward(x[None], w, g[None], **kw)
    assert_close(gx, rx[0], np.float64)
    assert_close(gw, rw, np.float64)
    assert_close(gb, rb, np.float64)


def test_unbatched_output_size(rng, assert_close):
    x = rng.standard_normal((2, 4, 4))
    w = rng.standard_normal((2, 3, 3, 3))
    y = loopconv.conv_transpose2d(x, w, stride=2, output_size=(10, 9))
    assert_close(y, reference.conv_transpose(x[None], w, stride=2, output_size=(10, 9))[0],
                 np.float64)


@pytest.mark.parametrize("mask", MASKS)
def test_output_mask(rng, mask):
    kw = dict(stride=2, padding=1, output_padding=1, groups=2)
    x, w, _, g = transpose_arrays(rng, (2, 4, 4, 5), (4, 3, 3, 3), kw, np.float64)
    got = loopconv.conv_transpose2d_backward(x, w, g, **kw, output_mask=mask)
    assert_masked_gradients(got, mask, reference.conv_transpose_backward(x, w, g, **kw))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_zero_batch_backward_values(rng, nd):
    x = np.zeros((0, 2) + (3,) * nd)
    w = rng.standard_normal((2, 3) + (2,) * nd)
    y = fn(nd)(x, w, stride=2)
    assert y.shape == (0, 3) + ((3 - 1) * 2 + (2 - 1) + 1,) * nd
    gx, gw, gb = fn(nd, "_backward")(x, w, y, stride=2)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, np.zeros(w.shape))
    np.testing.assert_array_equal(gb, np.zeros(3))
