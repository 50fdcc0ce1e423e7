"""The last columns of an item summed column by column (`product_dots` in
loopconv/_loops/tiled_product.pxi): where an item's columns after its whole tiles are a few
pixels (a 7x7 image: 48 pixels in tiles and one left) and the weight is read in place, those
pixels are sums along k of a row of w and a gathered column of x (the forward pass), or sums
with vectors down the rows of dx, each a row of w, and dy's elements broadcast (a 1x1 layer's
input gradient), instead of a tile of a vector.  On chosen and random geometries, in every
instruction-set variant built here, in both dtypes, with and without a bias: against the
reference, every element written, the same bits on 1, 2 and 3 threads; and which problems
take them."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from common import DTYPE_PARAMS, case, conv_output_shape, grouped_case
from test_skip_junk import check_pass, plan, product_passes, run

from loopconv import _loops

VARIANTS = _loops.variants()

# (case, pass, valid columns summed apart in every variant and dtype, or None: in some)
FIXED = [
    # ResNet-50's last stage at batch 1, narrowed: 49 pixels, one left after the tiles
    (case("7x7-1x1", (1, 64, 7, 7), (160, 64, 1, 1)), "forward", 1),
    # 13 rows: a panel of 8 and single rows
    (case("7x7-rows-left-over", (1, 20, 7, 7), (13, 20, 1, 1)), "forward", 1),
    # 450 columns of A: two blocks of KC, the second not whole vectors
    (case("7x7-long-k", (1, 450, 7, 7), (24, 450, 1, 1)), "forward", 1),
    # fewer columns of A than a vector: scalars alone
    (case("7x7-short-k", (1, 5, 7, 7), (9, 5, 1, 1)), "forward", 1),
    # two pixels left, next to each other in y
    (case("1d-two-left", (1, 24, 50), (20, 24, 1)), "forward", 2),
    # a staged copy (padding) with three taps a channel
    (case("1d-3-taps-padded", (1, 12, 49), (16, 12, 3), padding=1), "forward", 1),
    (case("7x7-groups", (1, 32, 7, 7), (48, 16, 1, 1), groups=2), "forward", 1),
    (case("7x7-two-images", (2, 32, 7, 7), (40, 32, 1, 1)), "forward", 1),
    # items of a few panels of rows each, whose threads keep the gathered column for the next
    # (product_dots' memo), over two blocks of KC; and so for two images an item
    (case("7x7-row-blocks-long-k", (1, 520, 7, 7), (136, 520, 1, 1)), "forward", 1),
    (case("7x7-two-images-row-blocks", (2, 72, 7, 7), (96, 72, 1, 1)), "forward", 1),
    (case("stride-2-onto-7x7", (1, 16, 13, 13), (24, 16, 1, 1), stride=2), "forward", 1),
    (case("3d-1x7x7", (1, 12, 1, 7, 7), (20, 12, 1, 1, 1)), "forward", 1),
    # input gradients of 1x1 layers: dx's 160 and 2048 channels in vectors down the rows
    (case("input-7x7", (1, 160, 7, 7), (64, 160, 1, 1)), "input", None),
    (case("input-7x7-2048", (1, 2048, 7, 7), (64, 2048, 1, 1)), "input", None),
    # 150 rows: the last vector reads rows of A past the item's, or rows one by one
    (case("input-rows-left-over", (1, 150, 7, 7), (24, 150, 1, 1)), "input", None),
    (case("input-groups", (1, 256, 7, 7), (96, 128, 1, 1), groups=2), "input", 1),
    (case("input-two-images", (2, 256, 7, 7), (40, 256, 1, 1)), "input", 1),
    (case("input-1d-two-left", (1, 256, 50), (30, 256, 1)), "input", 2),
    (case("input-3d", (1, 256, 1, 7, 7), (20, 256, 1, 1, 1)), "input", 1),
]


def dot_columns(variant, which, x_shape, w_shape, kw, dtype) -> int:
    """The valid columns `variant` computes as dot products in one (image, group) of pass
    `which` of the case."""
    return plan(VARIANTS[variant], which, x_shape, w_shape, kw, dtype)["dot columns"]


def random_cases(count, seed, which, axes, sizes, variants, channels=(1, 41)):
    """`count` random geometries whose pass `which` sums columns apart in float32 or float64 on
    one of `variants`: axes[0] to axes[1] - 1 spatial axes of sizes[0] to sizes[1] - 1 pixels (at
    most 4000 in all), kernels of 1 to 3 taps, strides 1 to 2, dilation 1 or 2, padding up to
    2 on each side, 1 to 3 groups of channels[0] to channels[1] - 1 input and output channels,
    1 or 2 images."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        nd, groups = int(rng.integers(*axes)), int(rng.integers(1, 4))
        size = [int(rng.integers(*sizes)) for _ in range(nd)]
        if np.prod(size) > 4000:
            continue
        candidate = grouped_case(
            f"random-{which}-{nd}d-{len(cases)}", int(rng.integers(1, 3)), groups,
            int(rng.integers(*channels)), int(rng.integers(*channels)), size,
            [int(rng.integers(1, 4)) for _ in range(nd)],
            [int(rng.integers(1, 3)) for _ in range(nd)],
            [(int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(nd)],
            [int(rng.integers(1, 3)) for _ in range(nd)])
        if min(conv_output_shape(*candidate.values)[2:]) < 1:
            continue
        if any(dot_columns(variant, which, *candidate.values, dtype)
               for variant in variants for dtype in (np.float32, np.float64)):
            cases.append(candidate)
    return cases


# any shape on any variant, and images of 2 or 3 axes near the 7x7 of classifiers' last stages
# on the widest variant; input gradients on any variant, and with more channels (items of a
# vector of rows or more) on the widest
RANDOM = [(c, "forward") for c in random_cases(12, 20261205, "forward", (1, 4), (1, 61),
                                               list(VARIANTS))
          + random_cases(12, 20261206, "forward", (2, 4), (4, 16), list(VARIANTS)[-1:])]
RANDOM += [(c, "input") for c in random_cases(8, 20261207, "input", (1, 4), (1, 61),
                                              list(VARIANTS))
           + random_cases(8, 20261208, "input", (1, 4), (2, 30), list(VARIANTS)[-1:],
                          (24, 200))]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw, which", [
    pytest.param(*c.values, which, id=c.id) for c, which, _ in FIXED] + [
    pytest.param(*c.values, which, id=c.id) for c, which in RANDOM])
def test_against_reference_and_across_threads(rng, assert_close, variant, x_shape, w_shape, kw,
                                               which, dtype):
    w, passes = product_passes(rng, x_shape, w_shape, kw, dtype)
    _, a, bias, shape, want, bound = next(p for p in passes if p[0] == which)
    check_pass(assert_close, VARIANTS[variant], which, a, w, (bias[:0], bias), shape, kw, want,
               bound, dtype)


@pytest.mark.parametrize("x_shape, w_shape, kw, which, left", [
    pytest.param(*c.values, which, left, id=c.id) for c, which, left in FIXED])
def test_fixed_cases_sum_columns_apart(x_shape, w_shape, kw, which, left):
    counts = {(variant, np.dtype(dtype).name): dot_columns(variant, which, x_shape, w_shape, kw,
                                                           dtype)
              for variant in VARIANTS for dtype in (np.float32, np.float64)}
    if left is None:
        assert counts[list(VARIANTS)[-1], "float32"] > 0, counts
    else:
        assert set(counts.values()) == {left}, counts


@pytest.mark.parametrize("x_shape, w_shape, kw, which", [
    # 3x3 on 7x7: a grid row of 8, so 56 columns, 7 valid after the tiles of 48 (float32)
    ((1, 64, 7, 7), (64, 64, 3, 3), dict(padding=1), "forward"),
    # 196 pixels: four left after 192 (float32)
    ((1, 64, 14, 14), (96, 64, 1, 1), {}, "forward"),
    ((1, 256, 14, 14), (40, 256, 1, 1), {}, "input"),
    # an input gradient of 3x3: A's columns are a row of w, their rows 9 apart
    ((1, 64, 7, 7), (64, 64, 3, 3), dict(padding=1), "input"),
    # an input gradient of 1x1 whose items have fewer rows than a vector (of 4 float32 or more)
    ((1, 3, 7, 7), (64, 3, 1, 1), {}, "input"),
])
def test_which_problems(x_shape, w_shape, kw, which):
    for variant in VARIANTS:
        assert dot_columns(variant, which, x_shape, w_shape, kw, np.float32) == 0, variant


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_gathered_columns_serve_one_call(rng, assert_close, variant, dtype):
    """The columns of x a thread gathers for its dot products serve the later items of the
    same call only: calls on other inputs of the same shapes, one after the other, each
    against the reference, on 1, 2 and 3 threads."""
    x_shape, w_shape = (2, 72, 7, 7), (96, 72, 1, 1)
    assert dot_columns(variant, "forward", x_shape, w_shape, {}, dtype) == 1
    w = rng.standard_normal(w_shape).astype(dtype)
    none = np.empty(0, dtype)
    for threads in (1, 2, 3):
        for _ in range(2):
            x = rng.standard_normal(x_shape).astype(dtype)
            got = run(VARIANTS[variant], "forward", x, w, none, (2, 96, 7, 7), {}, threads)
            assert_close(got, reference.conv(x, w), dtype,
                         bound=reference.conv(np.abs(x), np.abs(w)))
