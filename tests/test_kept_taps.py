"""Taps that read only padding (`kept_taps` in loopconv/_loops/__init__.py): where the input
is small against the kernel's reach, the passes run on the kernel without the taps that read
padding for every output pixel.  The kept ranges against a brute-force count of the reads; the
three passes of such problems (and of transposed convolutions) against the NumPy reference,
with the dropped taps' weight gradient exactly zero, the first (checked) call and the planned
calls the same bits, and the same bits on 1, 2 and 3 threads.  Weight gradients summed by
parts (`weight_parts`): the runs of taps against enumeration, such problems against the
reference, and which problems take them."""

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


def small_geometries(sizes, kernels, pads):
    """Every 1-D geometry of 1 to sizes - 1 inputs, 1 to kernels - 1 taps, padding 0 to
    pads - 1 (both sides), stride and dilation 1 to 3 with an output: (size, taps, stride,
    padding, dilation, outputs)."""
    for size, k, stride, pad, dilation in itertools.product(range(1, sizes), range(1, kernels),
                                                            range(1, 4), range(0, pads),
                                                            range(1, 4)):
        out = (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1
        if out >= 1:
            yield size, k, stride, pad, dilation, out


def test_kept_ranges_by_enumeration():
    """On every small 1-D geometry: the kept range ends at the last tap that reads the input,
    starts at the first one or where the padding before would go negative, and is None
    where it is the whole kernel or no tap reads the input."""
    checked = trimmed = 0
    for size, k, stride, pad, dilation, out in small_geometries(6, 6, 7):
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
    mask[(slice(None), slice(None), *(slice(t0, t1) for t0, t1 in taps))] = False
    return mask.reshape(w_shape)


# the passes with the taps dropped wherever some are (TRIM_PIXELS 0), and with all kept
TRIM = pytest.mark.parametrize("trim_pixels", [0, 1 << 60], ids=["dropped", "kept"])


@TRIM
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
def test_passes_against_reference(rng, assert_close, restore_threads, monkeypatch, x_shape,
                                  w_shape, kw, dtype, trim_pixels):
    """Forward (with a bias), input and weight gradient of `conv{nd}d_backward`: against the
    reference, the dropped taps' weight gradient zero, the same bits from the first call (no
    plan yet) and from later ones, on 1, 2 and 3 threads."""
    monkeypatch.setattr(_loops, "TRIM_PIXELS", trim_pixels)
    nd = len(x_shape) - 2
    x, w, b, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    forward = getattr(loopconv, f"conv{nd}d")
    backward = getattr(loopconv, f"conv{nd}d_backward")

    def check(got):
        assert_close(got[0], reference.conv(x, w, b, **kw), dtype)
        gx, gw, _ = reference.conv_backward(x, w, gy, **kw)
        assert_close(got[1], gx, dtype)
        assert_close(got[2], gw, dtype)
        assert not got[2][dropped(w_shape, trimmed_problem(x_shape, w_shape, kw))].any()

    same_bits_everywhere(lambda: (forward(x, w, b, **kw), *backward(x, w, gy, **kw)[:2]), check)


def same_bits_everywhere(run, check):
    """run() twice on each of 1, 2 and 3 threads, its plans forgotten before: `check` of the
    first (checked) call's results, and the same bits from every later (planned) call."""
    loopconv.functional._PLANS.clear()
    loopconv.functional._BY_PROBLEM.clear()
    first = None
    for threads in (1, 2, 3):
        loopconv.set_num_threads(threads)
        for _ in range(2):
            got = run()
            if first is None:
                first = got
                check(got)
            for a, e in zip(got, first):
                assert np.array_equal(a, e), threads


@TRIM
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", [
    case("3d-transposed-from-one-frame", (2, 16, 1, 5, 5), (16, 8, 3, 3, 3), padding=1),
    case("2d-transposed-dilated", (2, 8, 6, 6), (8, 12, 3, 3), padding=12, dilation=12),
])
def test_transposed_against_reference(rng, assert_close, restore_threads, monkeypatch, x_shape,
                                      w_shape, kw, dtype, trim_pixels):
    """A transposed convolution whose convolution drops taps: forward and both gradients
    against the reference, the same bits on 1 and 2 threads."""
    monkeypatch.setattr(_loops, "TRIM_PIXELS", trim_pixels)
    loopconv.functional._PLANS.clear()
    loopconv.functional._BY_PROBLEM.clear()
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


@pytest.mark.parametrize("x_shape, w_shape, kw, drops", [
    # V-Net's deepest 5x5x5 layer on 4x4x2: 2 of 5 taps along the last axis, 32 pixels
    ((1, 256, 4, 4, 2), (256, 256, 5, 5, 5), dict(padding=2), False),
    ((3, 256, 4, 4, 2), (256, 256, 5, 5, 5), dict(padding=2), False),
    ((5, 256, 4, 4, 2), (256, 256, 5, 5, 5), dict(padding=2), True),
    # one frame under 3x3x3: 2 of 3 taps along the first axis, 49 pixels
    ((1, 512, 1, 7, 7), (512, 512, 3, 3, 3), dict(padding=1), True),
    ((1, 16, 1, 1, 1), (16, 16, 3, 3, 3), dict(padding=1), False),
])
def test_which_problems_drop_taps(x_shape, w_shape, kw, drops):
    """Taps are dropped where the dropped share times the output pixels of all images reaches
    TRIM_PIXELS times the copy's reads and writes (shares of the weight; all of it read where
    the last axis is trimmed): the copy costs more than the products it saves below."""
    assert trimmed_problem(x_shape, w_shape, kw) is not None
    stride, pad, dilation, _ = loop_args(x_shape, w_shape, kw)
    five = [lift(np.empty(s, np.int8)).shape
            for s in (x_shape, w_shape, conv_output_shape(x_shape, w_shape, kw))]
    assert (_loops.dropped_taps(*five, stride, pad, dilation) is not None) == drops


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("threads", [1, 2])
def test_kept_weight_and_put_back(dtype, threads):
    """kept_weight copies the kept taps' window of a weight, put_kept puts one back into a
    weight of zeros elsewhere (over a weight of NaN), against NumPy's slicing."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((6, 5, 5, 4, 5)).astype(dtype)
    taps = ((1, 4), (0, 4), (2, 3))
    index = (slice(None), slice(None), *(slice(t0, t1) for t0, t1 in taps))
    kept = _loops.kept_weight(w, taps, threads)
    assert kept.flags.c_contiguous and np.array_equal(kept, w[index])
    out = np.full_like(w, np.nan)
    _loops.put_kept(kept, taps, out, threads)
    want = np.zeros_like(w)
    want[index] = w[index]
    assert np.array_equal(out, want)


# ---------------------------------------------------------------------------------------------
# Weight gradients by parts (`weight_parts`): runs of taps that read the input at the same
# outputs, each summed over those outputs alone.

def test_tap_runs_by_enumeration():
    """On every small 1-D geometry: the runs cover, in order, exactly the taps that read the
    input, each run's outputs being those at which each of its taps reads it; the share left
    is that of the (output, tap) pairs that read padding."""
    checked = 0
    for size, k, stride, pad, dilation, out in small_geometries(7, 5, 6):
        runs, share = _loops._tap_runs(size, k, out, stride, pad, dilation)
        reads = {t: [o for o in range(out) if 0 <= o * stride - pad + t * dilation < size]
                 for t in range(k)}
        covered = [t for t0, t1, _, _ in runs for t in range(t0, t1)]
        assert covered == [t for t in range(k) if reads[t]]
        for t0, t1, o0, o1 in runs:
            assert all(reads[t] == list(range(o0, o1)) for t in range(t0, t1))
        assert share == pytest.approx(1 - sum(map(len, reads.values())) / (k * out))
        checked += 1
    assert checked > 500


PARTS = [
    # DeepLab's rates on a map past the parts' size rule, stride 2 and groups, asymmetric
    # padding; a 1-D dilation; two frames under a 3x3x3 kernel (parts along depth alone)
    case("2d-rate-12", (2, 5, 32, 32), (6, 5, 3, 3), padding=12, dilation=12),
    case("2d-grouped-asymmetric", (1, 6, 34, 30), (4, 3, 3, 3), padding=((12, 9), (10, 10)),
         dilation=(11, 10), groups=2),
    case("2d-strided", (1, 3, 70, 66), (5, 3, 3, 3), stride=2, padding=16, dilation=16),
    case("1d-dilated", (2, 4, 800), (3, 4, 3), padding=350, dilation=350),
    case("3d-two-frames", (2, 3, 2, 20, 20), (4, 3, 3, 3, 3), padding=1),
]


def weight_parts_of(x_shape, w_shape, kw):
    """weight_parts of the case, as the loops see it."""
    stride, pad, dilation, _ = loop_args(x_shape, w_shape, kw)
    y_shape = conv_output_shape(x_shape, w_shape, kw)
    five = [lift(np.empty(s, np.int8)).shape for s in (x_shape, w_shape, y_shape)]
    return _loops.weight_parts(*five, stride, pad, dilation)


def check_weight_by_parts(rng, assert_close, x_shape, w_shape, kw, dtype):
    """The weight gradient (with the input gradient) of conv{nd}d_backward against the
    reference; the same bits from the first call and later ones, on 1, 2 and 3 threads."""
    nd = len(x_shape) - 2
    x, w, _, gy = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    backward = getattr(loopconv, f"conv{nd}d_backward")

    def check(got):
        gx, gw, _ = reference.conv_backward(x, w, gy, **kw)
        assert_close(got[0], gx, dtype)
        assert_close(got[1], gw, dtype)

    same_bits_everywhere(lambda: backward(x, w, gy, **kw)[:2], check)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", PARTS)
def test_weight_by_parts_against_reference(rng, assert_close, restore_threads, x_shape, w_shape,
                                           kw, dtype):
    assert weight_parts_of(x_shape, w_shape, kw) is not None
    check_weight_by_parts(rng, assert_close, x_shape, w_shape, kw, dtype)


def random_part_cases(count, seed):
    """Random geometries with runs of taps along some axis: 1 to 3 axes of 2 to 12, kernels of
    1 to 4 taps, strides 1 to 2, dilations 1 to 4, padding up to 6 a side, groups 1 or 2."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        nd, groups = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        size = tuple(int(rng.integers(2, 13)) for _ in range(nd))
        kernel = tuple(int(rng.integers(1, 5)) for _ in range(nd))
        kw = dict(stride=tuple(int(rng.integers(1, 3)) for _ in range(nd)),
                  padding=tuple((int(rng.integers(0, 7)), int(rng.integers(0, 7)))
                                for _ in range(nd)),
                  dilation=tuple(int(rng.integers(1, 5)) for _ in range(nd)), groups=groups)
        x_shape = (int(rng.integers(1, 3)), 2 * groups) + size
        w_shape = (3 * groups, 2) + kernel
        if min(conv_output_shape(x_shape, w_shape, kw)[2:]) >= 1:
            cases.append(case(f"random-{len(cases)}", x_shape, w_shape, **kw))
    return cases


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", random_part_cases(12, seed=20261203))
def test_weight_by_parts_on_random_geometries(rng, assert_close, restore_threads, monkeypatch,
                                              x_shape, w_shape, kw, dtype):
    """With the size rules off (every axis with two runs or more split, parts of any size), on
    random geometries: the parts' slices and paddings against the reference."""
    monkeypatch.setattr(_loops, "SPLIT_AXIS", 0.0)
    monkeypatch.setattr(_loops, "SPLIT_SHARE", 0.0)
    monkeypatch.setattr(_loops, "SPLIT_PIXELS", 1)
    check_weight_by_parts(rng, assert_close, x_shape, w_shape, kw, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_parts_windows_and_assembly_against_numpy(dtype, threads):
    """The copies a weight gradient by parts makes on the threads: a window of x or dy
    (`_window`) equals NumPy's slice, and the parts put into dw (`direct.put_parts`) equal
    NumPy's assignments into zeros, for boxes of taps of every size and place (taps no part
    covers stay zero); a part that does not fit dw is a ValueError."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 4, 9, 11)).astype(dtype)
    for start in [(0, 0, 0), (1, 3, 2), (3, 0, 10)]:
        index = (slice(None), slice(None)) + tuple(
            slice(a, a + int(rng.integers(1, n - a + 1))) for a, n in zip(start, x.shape[2:]))
        got = _loops._window(x, index, threads)
        assert got.flags.c_contiguous and np.array_equal(got, x[index])
    dw_shape = (6, 4, 3, 5, 4)
    for _trial in range(20):
        parts, origins, expected = [], [], np.zeros(dw_shape, dtype)
        for _ in range(int(rng.integers(1, 5))):
            origin = tuple(int(rng.integers(0, k)) for k in dw_shape[2:])
            size = tuple(int(rng.integers(1, k - o + 1)) for o, k in zip(origin, dw_shape[2:]))
            part = rng.standard_normal(dw_shape[:2] + size).astype(dtype)
            expected[(slice(None), slice(None)) + tuple(
                slice(o, o + n) for o, n in zip(origin, size))] = part
            parts.append(part)
            origins.append(origin)
        dw = np.full(dw_shape, np.nan, dtype)
        _loops.direct.put_parts(parts, origins, dw, threads)
        assert np.array_equal(dw, expected)
    with pytest.raises(ValueError, match="put_parts"):
        _loops.direct.put_parts([np.zeros((6, 4, 2, 1, 1), dtype)], [(2, 0, 0)],
                                np.zeros(dw_shape, dtype), threads)
    with pytest.raises(ValueError, match="put_parts"):
        _loops.direct.put_parts([np.zeros((5, 4, 1, 1, 1), dtype)], [(0, 0, 0)],
                                np.zeros(dw_shape, dtype), threads)


def test_which_weight_gradients_go_by_parts():
    """By the share of pairs left out and the parts' size: DeepLab's rates 12 and 6 on 28x28,
    two frames on 40x40; not a dilation of 4 on 14x14 (parts of 10x10), 3x3 on 4x4, 3x3 on
    28x28, a 1x1 kernel."""
    assert weight_parts_of((4, 8, 28, 28), (8, 8, 3, 3), dict(padding=12, dilation=12))
    assert weight_parts_of((4, 8, 28, 28), (8, 8, 3, 3), dict(padding=6, dilation=6))
    assert len(weight_parts_of((4, 8, 2, 40, 40), (8, 8, 3, 3, 3), dict(padding=1))) == 3
    for x_shape, w_shape, kw in [((4, 8, 14, 14), (8, 8, 3, 3), dict(padding=4, dilation=4)),
                                 ((8, 8, 4, 4), (8, 8, 3, 3), dict(padding=1)),
                                 ((1, 8, 28, 28), (8, 8, 3, 3), dict(padding=1)),
                                 ((1, 8, 28, 28), (8, 8, 1, 1), {})]:
        assert weight_parts_of(x_shape, w_shape, kw) is None
