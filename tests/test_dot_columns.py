"""The last columns of a forward pass as dot products (`product_dots` in
loopconv/_loops/tiled_product.pxi): where an item's columns after its whole tiles are one or
two pixels (a 7x7 image: 48 pixels in tiles and one left) and the weight is read in place, those
pixels are sums along k of a row of w and a gathered column of x instead of a tile of a vector.
On chosen and random geometries, in every instruction-set variant built here, in both dtypes,
with and without a bias: against the reference, every element written, the same bits on 1, 2
and 3 threads; and which problems take the dot products."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from common import DTYPE_PARAMS, case, conv_arrays, conv_output_shape, grouped_case
from test_skip_junk import check_pass, plan

from loopconv import _loops

VARIANTS = _loops.variants()

FIXED = [
    # ResNet-50's last stage at batch 1, narrowed: 49 pixels, one left after the tiles
    case("7x7-1x1", (1, 64, 7, 7), (160, 64, 1, 1)),
    # 13 rows: a panel of 8 and single rows
    case("7x7-rows-left-over", (1, 20, 7, 7), (13, 20, 1, 1)),
    # 450 columns of A: two blocks of KC, the second not whole vectors
    case("7x7-long-k", (1, 450, 7, 7), (24, 450, 1, 1)),
    # fewer columns of A than a vector: scalars alone
    case("7x7-short-k", (1, 5, 7, 7), (9, 5, 1, 1)),
    # two pixels left, next to each other in y
    case("1d-two-left", (1, 24, 50), (20, 24, 1)),
    # a staged copy (padding) with three taps a channel
    case("1d-3-taps-padded", (1, 12, 49), (16, 12, 3), padding=1),
    case("7x7-groups", (1, 32, 7, 7), (48, 16, 1, 1), groups=2),
    case("7x7-two-images", (2, 32, 7, 7), (40, 32, 1, 1)),
    case("stride-2-onto-7x7", (1, 16, 13, 13), (24, 16, 1, 1), stride=2),
    case("3d-1x7x7", (1, 12, 1, 7, 7), (20, 12, 1, 1, 1)),
]


def dot_columns(variant, which, x_shape, w_shape, kw, dtype) -> int:
    """The valid columns `variant` computes as dot products in one (image, group) of pass
    `which` of the case."""
    return plan(VARIANTS[variant], which, x_shape, w_shape, kw, dtype)["dot columns"]


def random_cases(count, seed, axes, sizes, variants):
    """`count` random geometries whose forward pass takes dot products in float32 or float64 on
    one of `variants`: axes[0] to axes[1] - 1 spatial axes of sizes[0] to sizes[1] - 1 pixels (at
    most 4000 in all), kernels of 1 to 3 taps, strides 1 to 2, dilation 1 or 2, padding up to
    2 on each side, 1 to 3 groups of 1 to 40 input and output channels, 1 or 2 images."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        nd, groups = int(rng.integers(*axes)), int(rng.integers(1, 4))
        size = [int(rng.integers(*sizes)) for _ in range(nd)]
        if np.prod(size) > 4000:
            continue
        candidate = grouped_case(
            f"random-{nd}d-{len(cases)}", int(rng.integers(1, 3)), groups,
            int(rng.integers(1, 41)), int(rng.integers(1, 41)), size,
            [int(rng.integers(1, 4)) for _ in range(nd)],
            [int(rng.integers(1, 3)) for _ in range(nd)],
            [(int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(nd)],
            [int(rng.integers(1, 3)) for _ in range(nd)])
        if min(conv_output_shape(*candidate.values)[2:]) < 1:
            continue
        if any(dot_columns(variant, "forward", *candidate.values, dtype)
               for variant in variants for dtype in (np.float32, np.float64)):
            cases.append(candidate)
    return cases


# any shape on any variant, and images of 2 or 3 axes near the 7x7 of classifiers' last stages
# on the widest variant
RANDOM = (random_cases(12, 20261205, (1, 4), (1, 61), list(VARIANTS))
          + random_cases(12, 20261206, (2, 4), (4, 16), list(VARIANTS)[-1:]))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", FIXED + RANDOM)
def test_against_reference_and_across_threads(rng, assert_close, variant, x_shape, w_shape, kw,
                                               dtype):
    x, w, b, _ = conv_arrays(rng, x_shape, w_shape, kw, dtype)
    check_pass(assert_close, VARIANTS[variant], "forward", x, w, (b[:0], b),
               conv_output_shape(x_shape, w_shape, kw), kw, reference.conv(x, w, **kw),
               reference.conv(np.abs(x), np.abs(w), **kw), dtype)


@pytest.mark.parametrize("x_shape, w_shape, kw", FIXED)
def test_fixed_cases_take_dot_products(x_shape, w_shape, kw):
    left = 2 if x_shape[-1] == 50 else 1
    for variant in VARIANTS:
        for dtype in (np.float32, np.float64):
            assert dot_columns(variant, "forward", x_shape, w_shape, kw, dtype) == left, (
                variant, dtype)


@pytest.mark.parametrize("x_shape, w_shape, kw, which", [
    # 3x3 on 7x7: a grid row of 8, so 56 columns, 7 valid after the tiles of 48 (float32)
    ((1, 64, 7, 7), (64, 64, 3, 3), dict(padding=1), "forward"),
    # 196 pixels: four left after 192
    ((1, 64, 14, 14), (96, 64, 1, 1), {}, "input"),
    ((1, 64, 14, 14), (96, 64, 1, 1), {}, "forward"),
    # the input gradient reads w across its rows (A's columns are not next to each other)
    ((1, 64, 7, 7), (160, 64, 1, 1), {}, "input"),
])
def test_which_problems(x_shape, w_shape, kw, which):
    assert dot_columns("x86-64-v4" if "x86-64-v4" in VARIANTS else list(VARIANTS)[-1], which,
                       x_shape, w_shape, kw, np.float32) == 0
