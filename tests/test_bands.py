"""Large slices read in bands of rows (loopconv/_loops/tiled_stage.pxi's set_row_band): each
work item of the forward pass, or each reduction step of the weight gradient, reads rows of
the staged grid that its thread staged for it, not a copy of the whole slice.  Every compiled
variant against the NumPy reference, every element written, the same bits on 1, 2 and 3
threads, nothing read or written outside the scratch the plan names, nothing kept from a call
before; the cases take bands, and small slices do not."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from common import DTYPE_PARAMS, case, conv_output_shape
from test_small_images import (
    arrays,
    check_bounded,
    check_in_scratch,
    grad_weight,
    lift,
    loop_args,
    shapes5,
)

from loopconv import _loops

VARIANTS = list(_loops.variants())

# staged slices of 8 MiB and more (float32), whose steps reach past their last column by
# nothing (kernel within the stride), a row and a column (3x3 and 4x4 stride 2), across
# images and groups, with bands of a plane's rows and of several planes' (rows of 32 and of 65)
BANDS = [
    case("3d-2x2x2-stride2", (1, 16, 64, 64, 64), (32, 16, 2, 2, 2), stride=2),
    case("3d-two-images-odd-sizes", (2, 8, 67, 66, 65), (12, 8, 2, 2, 2), stride=2),
    case("3d-groups", (1, 16, 64, 64, 64), (32, 8, 2, 2, 2), stride=2, groups=2),
    # the weight gradient's bands fewer rows than a chunk's steps: restaged as they pass
    case("3d-bands-within-chunks", (1, 32, 64, 64, 64), (32, 32, 2, 2, 2), stride=2),
    case("3d-1x3x3-stride-1-2-2", (1, 16, 32, 96, 96), (16, 16, 1, 3, 3), stride=(1, 2, 2),
         padding=(0, 1, 1)),
    case("2d-3x3-stride2", (1, 8, 1024, 1024), (8, 8, 3, 3), stride=2, padding=1),
    case("2d-2x2-stride2", (1, 8, 1024, 1030), (16, 8, 2, 2), stride=2),
    case("2d-4x4-stride2", (1, 4, 1536, 1536), (8, 4, 4, 4), stride=2, padding=1),
]


def band_rows(module, x_shape, w_shape, kw, itemsize):
    return module.weight_plan(*shapes5(x_shape, w_shape, kw), *loop_args(x_shape, w_shape, kw),
                              itemsize)["band rows"]


def forward_band_rows(module, x_shape, w_shape, kw, itemsize):
    return module.product_plan("forward", *shapes5(x_shape, w_shape, kw),
                               *loop_args(x_shape, w_shape, kw), itemsize)["band rows"]


def forward(module, x, w, kw, threads):
    """The forward pass of `module`'s tiled loops, into an array filled with NaN."""
    y_shape = conv_output_shape(x.shape, w.shape, kw)
    y = np.full(lift(np.empty(y_shape, np.int8)).shape, np.nan, x.dtype)
    module.forward(lift(x), lift(w), np.empty(0, x.dtype), y, *loop_args(x.shape, w.shape, kw),
                   threads)
    return y.reshape(y_shape)


def test_band_cases_take_bands():
    """Every case reads bands in float32 on every variant, the 3-D ones in float64 too."""
    for module in _loops.variants().values():
        for c in BANDS:
            assert band_rows(module, *c.values, 4) > 0, (module.__name__, c.id)
            if len(c.values[0]) == 5:
                assert band_rows(module, *c.values, 8) > 0, (module.__name__, c.id)


@pytest.mark.parametrize("x_shape, w_shape, kw, itemsize", [
    ((1, 32, 32, 32, 32), (64, 32, 2, 2, 2), dict(stride=2), 4),     # a 4 MB slice: in L3
    ((2, 16, 36, 36, 36), (32, 16, 2, 2, 2), dict(stride=2), 4),     # 3 MB
    ((1, 32, 64, 64, 64), (32, 32, 3, 3, 3), dict(padding=1), 4),    # reach: two planes
    ((1, 16, 83, 80, 80), (32, 8, 3, 3, 1), dict(stride=(1, 1, 2), padding=(0, 1, 0),
                                                 groups=2), 4),
    ((3, 2, 123, 128, 129), (16, 2, 4, 3, 4), dict(stride=3, padding=(2, 0, 3)), 4),   # a plane
    ((1, 64, 256, 256), (64, 64, 3, 3), dict(stride=2, padding=1), 4),   # 3 MB bands
    ((1, 16, 64, 64, 64), (32, 16, 2, 2, 2), dict(stride=2), 8),
])
def test_which_weight_gradients_take_bands(x_shape, w_shape, kw, itemsize):
    """Whole slices where they fit in L3, where a step reaches two rows or more (planes: a
    kernel deeper than its stride), or where a band would outgrow an L2 (every variant); the
    V-Net layer in float64 takes bands."""
    taken = [band_rows(m, x_shape, w_shape, kw, itemsize) > 0
             for m in _loops.variants().values()]
    assert taken == [itemsize == 8] * len(taken)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", BANDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_bands_against_reference(rng, assert_close, variant, x_shape, w_shape, kw, dtype):
    check_bounded(rng, assert_close, variant, x_shape, w_shape, kw, dtype)


@pytest.mark.parametrize("x_shape, w_shape, kw", [BANDS[1], BANDS[3], BANDS[5]])
@pytest.mark.parametrize("variant", VARIANTS)
def test_bands_stay_in_their_scratch(rng, variant, x_shape, w_shape, kw):
    """Bands are staged within the scratch the plan names (float32, where every case takes
    them), and the tiles read nothing else of it."""
    check_in_scratch(rng, _loops.variants()[variant], x_shape, w_shape, kw, np.float32,
                     "band")


def test_reference_is_independent_of_bands():
    """The reference sums the windows by NumPy alone (a check on the test itself: a 2x2x2
    stride-2 gradient is the patches' outer products summed)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 3, 4, 4, 4))
    gy = rng.standard_normal((1, 2, 2, 2, 2))
    patches = x.reshape(1, 3, 2, 2, 2, 2, 2, 2)        # (n, c, od, a, oh, b, ow, e)
    expected = np.einsum("ncxaybze,noxyz->ocabe", patches, gy)
    assert np.allclose(reference.conv_weight(x, (2, 3, 2, 2, 2), gy, stride=2), expected)


# forward passes whose column blocks read bands: 2x2x2 stride 2 (AVX-512, and AVX2 in float32)
FORWARD_BANDS = BANDS[:4]


def test_bands_within_chunks():
    """32 channels on 64^3: a chunk's four steps need 34 rows of 32, a band of BAND_BYTES
    holds 32 (float32) or 16 (float64)."""
    x_shape, w_shape, kw = BANDS[3].values
    for module in _loops.variants().values():
        assert module.weight_plan(*shapes5(x_shape, w_shape, kw),
                                  *loop_args(x_shape, w_shape, kw), 4)["steps"] == 128
        assert band_rows(module, x_shape, w_shape, kw, 4) == 32
        assert band_rows(module, x_shape, w_shape, kw, 8) == 16


def test_forward_band_cases_take_bands():
    """The 3-D 2x2x2 stride-2 cases' forward passes read bands on the AVX-512 variant in
    both dtypes and on AVX2 in float32; wider rows (2-D) against a column block do not."""
    variants = _loops.variants()
    for c in FORWARD_BANDS:
        assert forward_band_rows(variants["x86-64-v4"], *c.values, 4) > 0, c.id
        assert forward_band_rows(variants["x86-64-v4"], *c.values, 8) > 0, c.id
        assert forward_band_rows(variants["x86-64-v3"], *c.values, 4) > 0, c.id
    for c in BANDS[5:]:
        assert forward_band_rows(variants["x86-64-v4"], *c.values, 4) == 0, c.id


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", FORWARD_BANDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_bands_against_reference(rng, assert_close, variant, x_shape, w_shape, kw,
                                         dtype):
    module = _loops.variants()[variant]
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    got = forward(module, x, w, kw, threads=2)
    assert not np.isnan(got).any()
    assert_close(got, reference.conv(x, w, **kw), dtype,
                 bound=reference.conv(np.abs(x), np.abs(w), **kw))
    for threads in (1, 3):
        assert np.array_equal(forward(module, x, w, kw, threads), got), threads


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_bands_are_staged_whatever_the_scratch_holds(rng, threads):
    """Index scratch of zeros (the slice and first row of the first band a call stages) and
    element scratch of NaN: the passes stage their bands all the same (each call forgets the
    band a thread held), and give the bits they give on fresh scratch."""
    module = _loops.variants()["x86-64-v4"]
    x_shape, w_shape, kw = BANDS[0].values
    x, gy = arrays(rng, x_shape, w_shape, kw, np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    want = (grad_weight(module, x, gy, w_shape, kw, threads),
            forward(module, x, w, kw, threads))
    spaces = module._workspaces.arrays
    for got in ("weight", "forward"):
        spaces["i", np.dtype(np.intp).char][...] = 0
        spaces["f", np.dtype(np.float32).char][...] = np.nan
        if got == "weight":
            assert np.array_equal(grad_weight(module, x, gy, w_shape, kw, threads), want[0])
        else:
            assert np.array_equal(forward(module, x, w, kw, threads), want[1])
