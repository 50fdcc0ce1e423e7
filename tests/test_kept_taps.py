"""Taps that read only padding (`kept_taps` in loopconv/_loops/__init__.py): where the input
is small against the kernel's reach, the passes run on the kernel without the taps that read
padding for every output pixel.  The kept ranges against a brute-force count of the reads; the
three passes of such problems (and of transposed convolutions) against the NumPy reference,
with the dropped taps' weight gradient exactly zero, the first (checked) call and the planned
calls the same bits, and the same bits on 1, 2 and 3 threads."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import reference
from common import DTYPE_PARAMS, case, conv_arrays, conv_output_shape, transpose_arrays
from test_depthwise import lift, loop_args

import loopconv
from loopconv import _loops


def reading_taps(size, k, out, stride, pad, dilation):
    """The taps of one axis that read the input for some output index, by enumeration."""
    return [t for t in range(k)
            if any(0 <= o * stride - pad + t * dilation < size for o in range(out))]


def test_kept_ranges_by_enumeration():
    """On every small 1-D geometry: the kept range ends at the last tap that reads the input,
    starts at the first one or where the padding before would go negative, and is None
    where it is the whole kernel or no tap reads the input."""
    checked = trimmed = 0
    for size, k, stride, pad, dilation in itertools.product(range(1, 6), range(1, 6),
                                                            range(1, 4), range(0, 7),
                                                            range(1, 4)):
        out = (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1
        if out < 1:
            continue
        got = _loops.kept_taps((1, 1, 1, 1, size), (1, 1, 1, 1, k), (1, 1, 1, 1, out),
                               (1, 1, stride), (0, 0, pad), (1, 1, dilation))
        used = reading_taps(size, k, out, stride, pad, dilation)
        checked += 1
        if not used:
            assert got is None
            continue
        t0, t1 = min(used[0], pad // dilation), used[-1] + 1
        if (t0, t1) == (0, k):
            assert got is None
        else:
            trimmed += 1
            assert got == ((0, 1), (0, 1), (t0, t1))
            assert pad - t0 * dilation >= 0
    assert checked > 500 and trimmed > 100


CASES = [
    # a video network's last stage: one frame under a 3x3x3 kernel
    case("3d-one-frame", (3, 16, 1, 7, 7), (24, 16, 3, 3, 3), padding=1),
    case("3d-one-frame-temporal-kernel", (2, 40, 1, 5, 5), (24, 40, 3, 1, 1),
         padding=(1, 0, 0)),
    case("3d-two-frames-5-deep", (2, 8, 2, 4, 6), (8, 8, 5, 3, 3), padding=2),
    case("3d-one-voxel-strided", (2, 12, 1, 1, 1), (10, 12, 3, 3, 3), stride=2, padding=1),
    # dilation past the map: DeepLab's rate 18 on 6x6, rate 12 on 10x10 with 3 taps kept
    case("2d-dilation-past-map", (1, 8, 6, 6), (16, 8, 3, 3), padding=18, dilation=18),
    case("2d-dilation-partly-past", (2, 8, 10, 10), (8, 8, 3, 3), padding=12, dilation=12),
    # a 4x4 stride-2 kernel on 2x2 (pix2pix's innermost layer), asymmetric padding, groups
    case("2d-4x4-stride2-on-2x2", (2, 16, 2, 2), (32, 16, 4, 4), stride=2, padding=1),
    case("2d-asymmetric", (2, 6, 1, 9), (9, 2, 3, 3), padding=((2, 0), (1, 1)), groups=3),
    case("1d-kernel-past-input", (3, 10, 2), (12, 10, 9), padding=6),
]


def trimmed_problem(x_shape, w_shape, kw):
    """kept_taps of the case, as the loops see it."""
    stride, pad, dilation, _ = loop_args(x_shape, w_shape, kw)
    y_shape = conv_output_shape(x_shape, w_shape, kw)
    five = [lift(np.empty(s, np.int8)).shape for s in (x_shape, w_shape, y_shape)]
    return _loops.kept_taps(*five, stride, pad, dilation)


@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
def test_cases_drop_taps(x_shape, w_shape, kw):
    taps = trimmed_problem(x_shape, w_shape, kw)
    assert taps is not None
    assert sum(t1 - t0 for t0, t1 in taps) < sum(lift(np.empty(w_shape, np.int8)).shape[2:])


def dropped(w_shape, taps):
    """A mask of the weight's taps outside the kept ranges."""
    mask = np.ones(lift(np.empty(w_shape, np.int8)).shape, bool)
    mask[_loops._kept(taps)] = False
    return mask.reshape(w_shape)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
def test_passes_against_reference(rng, assert_close, restore_threads, x_shape, w_shape, kw,
                                  dtype):
    """Forward (with a bias), input and weight gradient of `conv{nd}d_backward`: against the
    reference, the dropped taps' weight gradient zero, the same bits from the first call (no
    plan yet) and from later ones, on 1, 2 and 3 threads."""
    nd = len(x_shape) - 2
    x, w, b, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    forward = getattr(loopconv, f"conv{nd}d")
    backward = getattr(loopconv, f"conv{nd}d_backward")
    loopconv.functional._PLANS.clear()
    loopconv.functional._BY_PROBLEM.clear()
    first = None
    for threads in (1, 2, 3):
        loopconv.set_num_threads(threads)
        for _ in range(2):
            got = (forward(x, w, b, **kw), *backward(x, w, gy, **kw)[:2])
            if first is None:
                first = got
                assert_close(got[0], reference.conv(x, w, b, **kw), dtype)
                gx, gw, _ = reference.conv_backward(x, w, gy, **kw)
                assert_close(got[1], gx, dtype)
                assert_close(got[2], gw, dtype)
                assert not got[2][dropped(w_shape, trimmed_problem(x_shape, w_shape, kw))].any()
            for a, e in zip(got, first):
                assert np.array_equal(a, e), threads


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", [
    case("3d-transposed-from-one-frame", (2, 16, 1, 5, 5), (16, 8, 3, 3, 3), padding=1),
    case("2d-transposed-dilated", (2, 8, 6, 6), (8, 12, 3, 3), padding=12, dilation=12),
])
def test_transposed_against_reference(rng, assert_close, restore_threads, x_shape, w_shape, kw,
                                      dtype):
    """A transposed convolution whose convolution drops taps: forward and both gradients
    against the reference, the same bits on 1 and 2 threads."""
    nd = len(x_shape) - 2
    x, w, b, gy = transpose_arrays(rng, x_shape, w_shape, kw, dtype)
    forward = getattr(loopconv, f"conv_transpose{nd}d")
    backward = getattr(loopconv, f"conv_transpose{nd}d_backward")
    out = []
    for threads in (1, 2):
        loopconv.set_num_threads(threads)
        out.append((forward(x, w, b, **kw), *backward(x, w, gy, **kw)[:2]))
    assert_close(out[0][0], reference.conv_transpose(x, w, b, **kw), dtype)
    gx, gw, _ = reference.conv_transpose_backward(x, w, gy, **kw)
    assert_close(out[0][1], gx, dtype)
    assert_close(out[0][2], gw, dtype)
    for a, e in zip(out[1], out[0]):
        assert np.array_equal(a, e)
