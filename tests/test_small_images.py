"""The weight gradient of the tiled loops (loopconv/_loops/tiled_weight.pxi) on small images,
whose reduction steps cover blocks of several images, with few output channels per group
(the one-vector tile), and with dy read in place (dy_rows, over several steps kept packed):
every compiled variant against the
NumPy reference and the same bits on 1, 2 and 3 threads; the cases take the paths they are
meant to; a block missing images reads no scratch that an earlier call left."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from common import DTYPE_PARAMS, case, conv_output_shape, grouped_case

import loopconv
from loopconv import _loops

VARIANTS = list(_loops.variants())

CASES = [
    # 4x4 kernel on a 4x4 image: one grid column per image
    case("2d-4x4-kernel-1x1-output", (32, 32, 4, 4), (10, 32, 4, 4)),
    case("2d-1x1-output-many-outputs", (37, 20, 3, 3), (24, 20, 3, 3)),
    case("2d-7x7-few-outputs", (9, 24, 7, 7), (4, 24, 3, 3), padding=1),
    case("2d-1x1-kernel-5x5", (13, 16, 5, 5), (24, 16, 1, 1)),
    case("2d-stride2", (10, 6, 9, 9), (5, 6, 3, 3), stride=2, padding=1),
    case("2d-stride2-1x1-kernel", (11, 8, 6, 6), (20, 8, 1, 1), stride=2),
    case("2d-dilated", (7, 6, 9, 8), (4, 6, 3, 3), dilation=2, padding=2),
    case("2d-groups", (9, 12, 5, 6), (6, 6, 3, 3), groups=2, padding=1),
    case("2d-groups-many-outputs", (11, 8, 4, 4), (40, 4, 2, 2), groups=2,
         padding=((1, 0), (0, 1))),
    case("2d-asymmetric-padding", (15, 5, 6, 4), (3, 5, 2, 3), padding=((2, 0), (1, 2))),
    case("2d-many-blocks", (64, 16, 4, 4), (12, 16, 3, 3), padding=1),
    case("2d-5-images-in-2-blocks", (5, 16, 6, 6), (6, 16, 3, 3), padding=1),
    # no junk columns between the images: blocks of many, cut into several steps
    case("2d-1x1-kernel-40-images", (40, 8, 5, 5), (24, 8, 1, 1)),
    case("2d-1x1-kernel-10x10", (10, 8, 10, 10), (24, 8, 1, 1)),
    case("2d-1x1-kernel-two-outputs", (23, 6, 4, 4), (2, 6, 1, 1)),
    # blocks of several images cut into steps, with the two-vector tile (the 1x1 cases above
    # with more output channels than input channels read dy in place instead: dy_rows)
    case("2d-3x3-blocks-cut-into-steps", (6, 8, 12, 12), (24, 8, 3, 3), padding=1),
    case("2d-3x3-two-outputs", (12, 8, 6, 6), (2, 8, 3, 3), padding=1),
    case("1d", (12, 8, 10), (6, 8, 3), padding=1),
    case("1d-stride3-dilated", (17, 5, 19), (7, 5, 3), stride=3, dilation=2,
         padding=((3, 1),)),
    case("3d-4x4x4", (5, 6, 4, 4, 4), (8, 6, 3, 3, 3), padding=1),
    case("3d-stride", (3, 8, 3, 4, 3), (5, 8, 2, 2, 2), stride=(1, 2, 1)),
    case("3d-many-outputs", (6, 4, 3, 3, 3), (36, 4, 3, 3, 3), padding=1),
    # output channels per group filling half a vector to one (the one-vector tile)
    case("2d-groups-12-outputs", (9, 16, 5, 5), (24, 8, 3, 3), groups=2, padding=1),
    case("2d-one-output", (12, 24, 5, 5), (1, 24, 3, 3), padding=1),
    # an image's grid fills a step: one image a block
    case("2d-image-fills-a-step", (3, 8, 20, 20), (24, 8, 3, 3), padding=1),
]


def lift(a):
    """(N, C, *spatial) with 1 to 3 spatial axes as the loops' 5-D (N, C, D, H, W)."""
    return np.ascontiguousarray(a.reshape(a.shape[:2] + (1,) * (5 - a.ndim) + a.shape[2:]))


def loop_args(x_shape, w_shape, kw):
    """stride, padding before and dilation as the loops take them (3-D triples), and groups."""
    nd = len(x_shape) - 2
    pad = [b for b, _ in reference.padding_pairs(kw.get("padding", 0), nd)]
    return ((1,) * (3 - nd) + reference.per_axis(kw.get("stride", 1), nd),
            (0,) * (3 - nd) + tuple(pad),
            (1,) * (3 - nd) + reference.per_axis(kw.get("dilation", 1), nd),
            kw.get("groups", 1))


def shapes5(x_shape, w_shape, kw):
    """The 5-D shapes of x, dw and dy."""
    y_shape = conv_output_shape(x_shape, w_shape, kw)
    return tuple(lift(np.empty(s, np.int8)).shape for s in (x_shape, w_shape, y_shape))


def arrays(rng, x_shape, w_shape, kw, dtype):
    """Standard normal x and dy of a case, as `dtype`."""
    y_shape = conv_output_shape(x_shape, w_shape, kw)
    return (rng.standard_normal(x_shape).astype(dtype),
            rng.standard_normal(y_shape).astype(dtype))


def grad_weight(module, x, gy, w_shape, kw, threads):
    """The weight gradient of `module`'s tiled loops, into an array filled with NaN (so that
    an element left unwritten shows)."""
    dw = np.full(lift(np.empty(w_shape, np.int8)).shape, np.nan, x.dtype)
    module.grad_weight(lift(x), lift(gy), dw, *loop_args(x.shape, w_shape, kw), threads)
    return dw.reshape(w_shape)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_against_reference_for_any_thread_count(rng, assert_close, variant, x_shape, w_shape,
                                                kw, dtype):
    module = _loops.variants()[variant]
    x, gy = arrays(rng, x_shape, w_shape, kw, dtype)
    got = grad_weight(module, x, gy, w_shape, kw, threads=2)
    assert not np.isnan(got).any()
    assert_close(got, reference.conv_weight(x, w_shape, gy, **kw), dtype)
    for threads in (1, 3):
        assert np.array_equal(grad_weight(module, x, gy, w_shape, kw, threads), got), threads


def random_plan_cases(count, seed, prefix, sizes, batches, cin, cout, takes):
    """`count` random geometries whose weight_plan has `takes` (a key that is true, or a
    function of the plan that is) in float32 or float64 on some variant: 1 to 3 spatial axes
    of sizes[0] to sizes[1] - 1 pixels, kernels of 1 to 3 taps, strides 1 to 2, dilation 1 or
    2, padding up to 2 on each side, 1 to 3 groups, batch, input and output channels a group
    in the half-open ranges given."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        nd, groups = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        size = [int(rng.integers(*sizes)) for _ in range(nd)]
        kernel = [int(rng.integers(1, 4)) for _ in range(nd)]
        stride = [int(rng.integers(1, 3)) for _ in range(nd)]
        dilation = [int(rng.integers(1, 3)) for _ in range(nd)]
        pairs = [(int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(nd)]
        candidate = grouped_case(f"{prefix}-{len(cases)}", int(rng.integers(*batches)), groups,
                                 int(rng.integers(*cin)), int(rng.integers(*cout)), size,
                                 kernel, stride, pairs, dilation)
        if min(conv_output_shape(*candidate.values)[2:]) < 1:
            continue
        x_shape, w_shape, kw = candidate.values
        test = takes if callable(takes) else (lambda plan: plan[takes])
        if any(test(module.weight_plan(*shapes5(x_shape, w_shape, kw),
                                       *loop_args(x_shape, w_shape, kw), itemsize))
               for module in _loops.variants().values() for itemsize in (4, 8)):
            cases.append(candidate)
    return cases


def random_narrow_cases(count, seed):
    """Random geometries whose weight gradient takes the one-vector tile (lc_tile_a1, lc_tile_m1)
    in float32 or float64 on some variant: 3 to 14 pixels an axis, 1 to 20 input and 2 to 16
    output channels a group, 1 to 6 images (the ResNeXt and RegNet groups)."""
    return random_plan_cases(count, seed, "random", (3, 15), (1, 7), (1, 21), (2, 17), "narrow")


def check_bounded(rng, assert_close, variant, x_shape, w_shape, kw, dtype):
    """`variant`'s weight gradient of the case on 2 threads against the reference (within the
    bound of the sums of magnitudes), every element written, the same bits on 1 and 3."""
    module = _loops.variants()[variant]
    x, gy = arrays(rng, x_shape, w_shape, kw, dtype)
    got = grad_weight(module, x, gy, w_shape, kw, threads=2)
    assert not np.isnan(got).any()
    assert_close(got, reference.conv_weight(x, w_shape, gy, **kw), dtype,
                 bound=reference.conv_weight(np.abs(x), w_shape, np.abs(gy), **kw))
    for threads in (1, 3):
        assert np.array_equal(grad_weight(module, x, gy, w_shape, kw, threads), got), threads


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", random_narrow_cases(16, seed=20261204))
@pytest.mark.parametrize("variant", VARIANTS)
def test_one_vector_tile_on_random_groups(rng, assert_close, variant, x_shape, w_shape, kw,
                                          dtype):
    """Every variant on the random geometries of the one-vector tile (each takes it in some
    variant and size; the others take their own tiles on the same problems)."""
    check_bounded(rng, assert_close, variant, x_shape, w_shape, kw, dtype)


def plans(module, itemsize):
    """weight_plan of every case, with its batch size."""
    out = []
    for p in CASES:
        x_shape, w_shape, kw = p.values
        plan = module.weight_plan(*shapes5(x_shape, w_shape, kw), *loop_args(x_shape, w_shape,
                                                                             kw), itemsize)
        out.append(dict(plan, N=x_shape[0]))
    return out


def tile_kind(plan):
    """The register tile of a weight_plan: "output rows" (lc_tile_e), "lanes" (lc_tile_d),
    "one vector" or "two vectors"."""
    if plan["output rows"]:
        return "output rows"
    return "lanes" if plan["lanes"] else "one vector" if plan["narrow"] else "two vectors"


ALL_TILES = {"output rows", "lanes", "one vector", "two vectors"}


def test_every_tile_is_taken():
    """Each weight-gradient tile sums blocks of several images in some variant and size."""
    kinds = {tile_kind(p) for v in VARIANTS for itemsize in (4, 8)
             for p in plans(_loops.variants()[v], itemsize) if p["images"] > 1}
    assert kinds == ALL_TILES


@pytest.mark.parametrize("itemsize", [4, 8], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_cases_take_every_path(variant, itemsize):
    """Blocks of several images, with the two-vector register tile and a tile for few output
    channels (the one-vector tile, or the one summing along the lanes where the variant takes
    it for such channels); a last block with fewer images than the others; blocks cut into
    several steps and steps of several blocks' chunks; and one image a block where an image's
    grid fills a step."""
    found = plans(_loops.variants()[variant], itemsize)
    blocked = [p for p in found if p["images"] > 1]
    kinds = {tile_kind(p) for p in blocked}
    assert "two vectors" in kinds and kinds & {"output rows", "lanes", "one vector"}
    assert any(p["N"] % p["images"] for p in blocked)
    assert any(p["image blocks"] > 1 for p in blocked)
    assert any(p["steps"] > p["image blocks"] for p in blocked)
    assert any(p["chunks"] > 1 for p in blocked)
    assert any(p["images"] == 1 and p["N"] > 1 for p in found)


def test_one_output_pixel_takes_one_step():
    """A 4x4 kernel on a 4x4 image of 32 images, 4 outputs: one grid column per image, all
    images in one block and one step where their grids fill it (float32, few outputs)."""
    x5, w5, y5 = shapes5((32, 32, 4, 4), (4, 32, 4, 4), {})
    plan = _loops.tiled.weight_plan(x5, w5, y5, (1, 1, 1), (0, 0, 0), (1, 1, 1), 1, 4)
    if plan["lanes"] and plan["block"] >= 31 * 16 + 1:
        assert (plan["images"], plan["steps"]) == (32, 1)
    assert plan["images"] > 1


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_missing_images_read_no_stale_scratch(rng, variant, dtype):
    """The places of the images missing from the last block are zeroed: the junk columns
    after its last image may read them, and NaN left there by an earlier call would make
    every sum NaN."""
    module = _loops.variants()[variant]
    uneven = [(p, plan) for p, plan in zip(CASES, plans(module, np.dtype(dtype).itemsize))
              if plan["images"] > 1 and plan["N"] % plan["images"]]
    assert uneven
    for p, _ in uneven:
        x_shape, w_shape, kw = p.values
        x, gy = arrays(rng, x_shape, w_shape, kw, dtype)
        expected = grad_weight(module, x, gy, w_shape, kw, threads=1)
        for threads in (1, 2, 3):
            for scratch in module._workspaces.arrays.values():
                if scratch.dtype.kind == "f":
                    scratch.fill(np.nan)
            got = grad_weight(module, x, gy, w_shape, kw, threads)
            assert np.array_equal(got, expected), (p.id, threads)


def test_public_function_bit_identical_for_any_thread_count(rng, restore_threads):
    """conv2d_weight on small images, through the public function: the same bits on 1, 2 and
    3 threads."""
    x = rng.standard_normal((32, 32, 4, 4)).astype(np.float32)
    gy = rng.standard_normal((32, 10, 1, 1)).astype(np.float32)
    loopconv.set_num_threads(1)
    one = loopconv.conv2d_weight(x, (10, 32, 4, 4), gy)
    for threads in (2, 3):
        loopconv.set_num_threads(threads)
        assert np.array_equal(loopconv.conv2d_weight(x, (10, 32, 4, 4), gy), one)


def random_direct_cases(count, seed):
    """Random geometries whose weight gradient is one reduction step (p.direct: each work item
    writes its rows of dw through a partial of a few rows): 2 to 9 pixels an axis, 1 to 40
    input and 1 to 70 output channels a group (every register tile), 1 or 2 images."""
    return random_plan_cases(count, seed, "direct", (2, 10), (1, 3), (1, 41), (1, 71), "direct")


def check_second_call(rng, variant, x_shape, w_shape, kw, dtype, threads):
    """`variant`'s weight gradient of the case for twice dy, on a second call (whose scratch
    holds the first call's staging and packing), is exactly twice the first's."""
    module = _loops.variants()[variant]
    x, gy = arrays(rng, x_shape, w_shape, kw, dtype)
    first = grad_weight(module, x, gy, w_shape, kw, threads)
    assert np.array_equal(grad_weight(module, x, gy * 2, w_shape, kw, threads), first * 2)


DIRECT = random_direct_cases(24, seed=20261203) + [
    case("1x1-rows-across-items", (1, 200, 7, 7), (150, 200, 1, 1)),
    case("3x3-last-rows-partial", (1, 37, 5, 5), (40, 37, 3, 3), padding=1),
    case("few-outputs-rows", (2, 70, 6, 6), (3, 70, 3, 3), padding=1),
    case("eight-outputs", (2, 70, 6, 6), (8, 70, 3, 3), padding=1),
]


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", DIRECT)
@pytest.mark.parametrize("variant", VARIANTS)
def test_one_step_writes_dw_directly(rng, assert_close, variant, x_shape, w_shape, kw, dtype):
    """Every variant on weight gradients of one reduction step (each case takes the direct
    path in some variant and size), against the reference, every element written, the same
    bits on 1, 2 and 3 threads."""
    check_bounded(rng, assert_close, variant, x_shape, w_shape, kw, dtype)


def test_direct_cases_take_every_tile():
    """The direct path is taken with each register tile, and by the layers it is for: 1x1 on
    7x7 at batch 1 (ConvNeXt's 768 -> 3072), not by a large image's many steps."""
    kinds = set()
    for variant in VARIANTS:
        module = _loops.variants()[variant]
        for itemsize in (4, 8):
            for c in DIRECT:
                plan = module.weight_plan(*shapes5(*c.values), *loop_args(*c.values), itemsize)
                if plan["direct"]:
                    kinds.add(tile_kind(plan))
    assert kinds == ALL_TILES
    wide = ((1, 768, 7, 7), (3072, 768, 1, 1), {})
    large = ((8, 64, 56, 56), (64, 64, 3, 3), dict(padding=1))
    for variant in VARIANTS:
        module = _loops.variants()[variant]
        assert module.weight_plan(*shapes5(*wide), *loop_args(*wide), 4)["direct"]
        assert not module.weight_plan(*shapes5(*large), *loop_args(*large), 4)["direct"]


# Many output channels over few columns: the packed dy of a step is wider than an L2's share,
# so the tiles take it in blocks of column tiles, each against all the rows of tiles of a call
# (and one step's rows of dw are written more tiles of rows at a time: its span)
WIDE_DY = [
    case("1d-1x1-two-images-to-1100", (2, 1536, 100), (1100, 1536, 1)),
    case("1d-1x1-steps-to-1100", (3, 40, 300), (1100, 40, 1)),
    case("2d-3x3-to-1040", (2, 128, 11, 10), (1040, 128, 3, 3), padding=1),
]


def test_wide_dy_cases_take_their_paths():
    """Each case packs dy (not x: "dy rows") for the two-vector tiles in some variant and
    dtype, more than 1024 channels by 128 columns or more, so in blocks; the first in one
    reduction step, the second in several."""
    for c in WIDE_DY:
        plans = [_loops.variants()[v].weight_plan(*shapes5(*c.values), *loop_args(*c.values),
                                                  itemsize)
                 for v in VARIANTS for itemsize in (4, 8)]
        wide = [p for p in plans if not (p["dy rows"] or p["lanes"] or p["narrow"])
                and p["block"] >= 128]
        assert wide, (c.id, plans)
        if c.id == "1d-1x1-two-images-to-1100":
            assert any(p["direct"] for p in wide), plans
        if c.id == "1d-1x1-steps-to-1100":
            assert any(p["steps"] > 1 for p in wide), plans


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", WIDE_DY)
@pytest.mark.parametrize("variant", VARIANTS)
def test_wide_dy_in_blocks(rng, assert_close, variant, x_shape, w_shape, kw, dtype):
    """Every variant where the packed dy is taken in blocks of column tiles, against the
    reference, every element written, the same bits on 1, 2 and 3 threads."""
    check_bounded(rng, assert_close, variant, x_shape, w_shape, kw, dtype)


# Items of one (group, chunk) that split the rows k into blocks follow each other on a thread
# and pack each step's dy once: one step (direct), chunks of one step each, chunks of several
SHARED_STEPS = [
    case("2d-1x1-direct-8-row-blocks", (1, 240, 14, 14), (80, 240, 1, 1)),
    case("2d-1x1-chunks-of-one-step", (1, 96, 28, 28), (32, 96, 1, 1)),
    case("2d-3x3-chunks-of-several-steps", (1, 64, 32, 32), (128, 64, 3, 3), padding=1),
    case("2d-groups-row-blocks", (1, 96, 14, 14), (96, 48, 1, 1), groups=2),
]


def test_shared_step_cases_split_rows():
    """Each case's weight gradient cuts its rows k into blocks, as it is meant to (float32)."""
    for variant in VARIANTS:
        module = _loops.variants()[variant]
        got = [module.weight_plan(*shapes5(*c.values), *loop_args(*c.values), 4)
               for c in SHARED_STEPS]
        assert all(plan["row blocks"] > 1 for plan in got), (variant, got)
        steps = [plan["steps"] / plan["chunks"] for plan in got]
        assert got[0]["steps"] == 1 and steps[1] == 1 and steps[2] > 1, (variant, got)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", SHARED_STEPS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_row_blocks_share_packed_steps(rng, assert_close, variant, x_shape, w_shape, kw, dtype):
    """Every variant where items reuse a step's packed dy, against the reference, every
    element written, the same bits on 1, 2 and 3 threads, and again on a second call (whose
    scratch holds the first call's packing)."""
    check_bounded(rng, assert_close, variant, x_shape, w_shape, kw, dtype)
    check_second_call(rng, variant, x_shape, w_shape, kw, dtype, threads=1)


# ---------------------------------------------------------------------------------------------
# One to seven output channels a group: the output channels as the rows of lc_tile_e, by rows k

def random_rows_cases(count, seed):
    """Random geometries whose weight gradient takes lc_tile_e (output rows) in float32 or
    float64 on some variant: 3 to 14 pixels an axis, 1 to 20 input and 1 to 7 output channels
    a group, 1 to 4 images."""
    return random_plan_cases(count, seed, "rows", (3, 15), (1, 5), (1, 21), (1, 8),
                             "output rows")


ROWS = random_rows_cases(16, seed=20261205) + [
    case("1x1-three-classes", (2, 32, 9, 10, 11), (3, 32, 1, 1, 1)),
    case("4x4-stride2-three", (3, 16, 12, 12), (3, 16, 4, 4), stride=2, padding=1),
    case("one-output-1d-dilated", (2, 9, 40), (1, 9, 5), dilation=3, padding=((4, 2),)),
    case("groups-of-five-outputs", (2, 12, 8, 9), (15, 4, 3, 3), groups=3, padding=1),
    # more reduction steps than chunks: chunks of several steps, summed into by the tile
    case("chunks-of-several-steps", (4, 8, 64, 64), (3, 8, 3, 3), padding=1),
]


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", ROWS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_output_rows_tile(rng, assert_close, variant, x_shape, w_shape, kw, dtype):
    """Every variant on weight gradients of few output channels a group (each case takes
    lc_tile_e in some variant and size), against the reference, every element written, the
    same bits on 1, 2 and 3 threads."""
    check_bounded(rng, assert_close, variant, x_shape, w_shape, kw, dtype)


@pytest.mark.parametrize("x_shape, w_shape, kw, rows", [
    ((1, 32, 32, 32, 32), (3, 32, 1, 1, 1), {}, True),        # a U-Net's last layer
    ((8, 64, 28, 28), (1, 64, 3, 3), dict(padding=1), True),
    ((8, 64, 28, 28), (7, 64, 3, 3), dict(padding=1), True),
    ((8, 64, 28, 28), (8, 64, 3, 3), dict(padding=1), False),  # no zero columns: lc_tile_d
    ((8, 64, 28, 28), (16, 64, 3, 3), dict(padding=1), False),
])
def test_which_weight_gradients_take_output_rows(x_shape, w_shape, kw, rows):
    """Output rows where lc_tile_d would compute zero columns (AVX-512 float32: fewer than
    eight output channels a group)."""
    module = _loops.variants().get("x86-64-v4")
    if module is None or module.info()["weight tile, few channels"][1] != 8:
        pytest.skip("the AVX-512 variant is not built here")
    plan = module.weight_plan(*shapes5(x_shape, w_shape, kw), *loop_args(x_shape, w_shape, kw),
                              4)
    assert plan["output rows"] == rows


# ---------------------------------------------------------------------------------------------
# More output channels than rows k of x: dy's output channels read in place as the tile's rows,
# x packed transposed (dy_rows), each step within one image, over its valid columns

# random geometries that read dy in place in float32 or float64 on some variant: 3 to 20
# pixels an axis, 1 to 4 images, 1 to 8 input and 16 to 80 output channels a group
DY_ROWS = random_plan_cases(16, 20261206, "dy-rows", (3, 21), (1, 5), (1, 9), (16, 81),
                            "dy rows") + [
    case("1x1-widening", (2, 32, 15, 17), (192, 32, 1, 1)),
    case("1x1-rows-k-not-whole-vectors", (3, 27, 9, 7), (100, 27, 1, 1)),
    case("first-layer-3x3-stride2", (1, 3, 31, 29), (40, 3, 3, 3), stride=2, padding=1),
    case("first-layer-one-step", (1, 3, 8, 8), (64, 3, 3, 3), padding=1),
    case("1d-long-widening", (1, 40, 700), (160, 40, 1)),
    case("3d-one-channel", (1, 1, 9, 10, 11), (32, 1, 3, 3, 3), padding=1),
    case("groups-widening", (2, 12, 10, 10), (96, 4, 1, 1), groups=3),
    case("1x1-stride2-widening", (2, 16, 9, 9), (96, 16, 1, 1), stride=2),
    case("dilated-padded", (2, 2, 13, 12), (48, 2, 3, 2), dilation=2, padding=((2, 1), (0, 3))),
]


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", DY_ROWS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_dy_rows(rng, assert_close, variant, x_shape, w_shape, kw, dtype):
    """Every variant on weight gradients that read dy in place (each case does in some variant
    and size), against the reference, every element written, the same bits on 1, 2 and 3
    threads."""
    check_bounded(rng, assert_close, variant, x_shape, w_shape, kw, dtype)


@pytest.mark.parametrize("x_shape, w_shape, kw, dy_rows", [
    ((1, 32, 75, 75), (192, 32, 1, 1), {}, True),                 # EfficientNet-B3's widening
    ((1, 128, 4000), (512, 128, 1), {}, True),                   # Conv-TasNet
    ((1, 3, 300, 300), (40, 3, 3, 3), dict(stride=2, padding=1), True),     # a first layer
    ((1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), False),   # K = 576 rows of x
    ((1, 256, 28, 28), (64, 256, 1, 1), {}, False),              # a narrowing 1x1
    ((1, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3), False),    # K = 147
    ((1, 128, 28, 28), (512, 128, 3, 3), dict(padding=1), True),   # packed x 0.9-1.1 MiB
    ((1, 256, 28, 28), (512, 256, 3, 3), dict(padding=1), False),  # 1.8-2.1 MiB
    ((1, 512, 20, 20), (512, 512, 3, 3), dict(padding=1), False),  # 3.6-4.2 MiB
])
def test_which_weight_gradients_read_dy_in_place(x_shape, w_shape, kw, dy_rows):
    """dy read in place where x has fewer rows k than dy has output channels and a step's
    packed x fits in DY_ROWS_BYTES (float32 and float64, every variant)."""
    for module in _loops.variants().values():
        for itemsize in (4, 8):
            plan = module.weight_plan(*shapes5(x_shape, w_shape, kw),
                                      *loop_args(x_shape, w_shape, kw), itemsize)
            assert plan["dy rows"] == dy_rows, (module.__name__, itemsize)


def test_dy_rows_reads_no_stale_scratch(rng):
    """x's rows k past K (copies of row 0) and the columns of B past them (zeroed) make only
    columns of the product that are never read: scratch filled with NaN before each call
    leaves no NaN in dw (9 rows k: AVX2 float64 zeroes B's columns 12 to 15)."""
    x_shape, w_shape, kw = (2, 1, 11, 9), (64, 1, 3, 3), dict(padding=1)
    taken = []
    for module in _loops.variants().values():
        for dtype in (np.float32, np.float64):
            x, gy = arrays(rng, x_shape, w_shape, kw, dtype)
            taken.append(module.weight_plan(*shapes5(x_shape, w_shape, kw),
                                            *loop_args(x_shape, w_shape, kw),
                                            np.dtype(dtype).itemsize)["dy rows"])
            expected = grad_weight(module, x, gy, w_shape, kw, threads=1)
            assert not np.isnan(expected).any()
            for threads in (1, 2):
                for scratch in module._workspaces.arrays.values():
                    if scratch.dtype.kind == "f":
                        scratch.fill(np.nan)
                got = grad_weight(module, x, gy, w_shape, kw, threads)
                assert np.array_equal(got, expected), (module.__name__, dtype, threads)
    assert all(taken)


# ---------------------------------------------------------------------------------------------
# dy read in place over several reduction steps (an image, or part of one, a step) whose packed
# x fits in DIRECT_STEPS_BYTES together: each block of rows keeps every step packed, sums them
# all for a span of rows at a time and writes its rows of dw (no chunks' partial products)

def takes_direct_steps(plan):
    """Whether a weight_plan reads dy in place over several steps kept packed."""
    return plan["dy rows"] and plan["direct"] and plan["steps"] > 1


# random geometries that do in float32 or float64 on some variant: 3 to 12 pixels an axis, 2
# to 5 images, 1 to 8 input and 16 to 80 output channels a group
DIRECT_STEPS = random_plan_cases(12, 20261207, "direct-steps", (3, 13), (2, 6), (1, 9),
                                 (16, 81), takes_direct_steps) + [
    case("1x1-widening-three-images", (3, 32, 15, 17), (192, 32, 1, 1)),
    case("1d-widening-four-sequences", (4, 16, 60), (96, 16, 1)),
    case("first-layer-stride2-two-images", (2, 3, 31, 29), (40, 3, 3, 3), stride=2, padding=1),
    case("groups-widening-four-images", (4, 12, 10, 10), (96, 4, 1, 1), groups=3),
]


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", DIRECT_STEPS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_direct_steps(rng, assert_close, variant, x_shape, w_shape, kw, dtype):
    """Every variant on weight gradients that keep several steps of packed x (each case does in
    some variant and dtype), against the reference, every element written, the same bits on
    1, 2 and 3 threads, and twice the result for twice dy on a second call (whose scratch
    holds the first call's packing and columns)."""
    check_bounded(rng, assert_close, variant, x_shape, w_shape, kw, dtype)
    check_second_call(rng, variant, x_shape, w_shape, kw, dtype, threads=2)


@pytest.mark.parametrize("x_shape, w_shape, kw, itemsize, taken", [
    ((3, 32, 15, 17), (192, 32, 1, 1), {}, 4, True),
    ((2, 256, 14, 14), (1024, 256, 1, 1), {}, 4, True),        # ResNet-50's, at batch 2
    ((2, 112, 14, 14), (672, 112, 1, 1), {}, 8, True),         # EfficientNet's, float64
    ((2, 512, 128), (2048, 512, 1), {}, 8, True),              # 1-D, two sequences
    ((16, 160, 14, 14), (960, 160, 1, 1), {}, 8, False),        # 32 steps: 4.1 MiB packed
    ((8, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), 4, False),    # x read in place
])
def test_which_weight_gradients_keep_steps_packed(x_shape, w_shape, kw, itemsize, taken):
    """Several steps of dy read in place, all kept packed, where together they fit in
    DIRECT_STEPS_BYTES (every variant)."""
    for module in _loops.variants().values():
        plan = module.weight_plan(*shapes5(x_shape, w_shape, kw),
                                  *loop_args(x_shape, w_shape, kw), itemsize)
        assert takes_direct_steps(plan) == taken, (module.__name__, plan)


# the plans' kinds, for the scratch bounds: chunks of ten steps or more reading dy in place (a
# MobileNetV2 stem), several steps kept packed, one step, rows k in chunks, lanes
SCRATCH_CASES = [
    case("dy-rows-in-chunks", (20, 3, 128, 128), (32, 3, 3, 3), stride=2, padding=1),
    case("steps-kept-packed", (3, 32, 15, 17), (192, 32, 1, 1)),
    case("one-step-rows-k", (6, 256, 7, 7), (256, 256, 3, 3), padding=1),
    case("rows-k-in-chunks", (6, 8, 12, 12), (24, 8, 3, 3), padding=1),
    case("lanes", (9, 24, 7, 7), (4, 24, 3, 3), padding=1),
]


def test_scratch_plans_are_of_their_kinds():
    """SCRATCH_CASES take the plans they stand for, in float32 on the AVX-512 variant."""
    module = _loops.variants()["x86-64-v4"]
    plans = [module.weight_plan(*shapes5(*c.values), *loop_args(*c.values), 4)
             for c in SCRATCH_CASES]
    assert plans[0]["dy rows"] and not plans[0]["direct"] and plans[0]["steps"] >= 10 * 32
    assert takes_direct_steps(plans[1])
    assert not plans[2]["dy rows"] and plans[2]["direct"] and plans[2]["steps"] == 1
    assert not plans[3]["dy rows"] and plans[3]["chunks"] > 1
    assert plans[4]["lanes"]


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_threads_stay_in_their_scratch(rng, variant, dtype):
    """Each of the threads writes only within its region of the scratch (weight_plan's
    "scratch" elements and "indices" a thread): workspaces larger than a call needs, filled
    with a marker, keep it past the regions of the threads the call ran on."""
    for c in SCRATCH_CASES:
        check_in_scratch(rng, _loops.variants()[variant], *c.values, dtype, c.id)


def check_in_scratch(rng, module, x_shape, w_shape, kw, dtype, name):
    """The weight gradient of the case on 1, 2 and 3 threads into workspaces just larger than
    weight_plan's "scratch" elements and "indices" a thread, filled with a marker: the same
    bits as with fresh ones (nothing read that the call did not write), and the marker kept
    past the regions of the threads the call ran on."""
    plan = module.weight_plan(*shapes5(x_shape, w_shape, kw), *loop_args(x_shape, w_shape, kw),
                              np.dtype(dtype).itemsize)
    x, gy = arrays(rng, x_shape, w_shape, kw, dtype)
    expected = grad_weight(module, x, gy, w_shape, kw, threads=1)   # makes the workspaces
    for threads in (1, 2, 3):
        spaces = module._workspaces.arrays
        used = {"f": (plan["scratch"] * threads, np.dtype(dtype), -1234.5),
                "i": (plan["indices"] * threads, np.dtype(np.intp), -987654321)}
        for space, (n, kind, marker) in used.items():
            spaces[space, kind.char] = _loops.direct.aligned_empty((n + 4096,), kind)
            spaces[space, kind.char].fill(marker)
        got = grad_weight(module, x, gy, w_shape, kw, threads)
        assert np.array_equal(got, expected), (name, threads)
        for space, (n, kind, marker) in used.items():
            assert (spaces[space, kind.char][n:] == marker).all(), (name, threads, space)


# ---------------------------------------------------------------------------------------------
# One reduction step over all the images (one_step): where the partial product would outgrow
# an L2 and a step's packed dy fits in one, each block of rows k sums all the images' columns
# and writes its rows of dw itself

ONE_STEP = [
    case("3d-deep-layer", (3, 96, 4, 4, 4), (256, 96, 3, 3, 3), padding=1),
    case("2d-deep-layer", (6, 256, 7, 7), (256, 256, 3, 3), padding=1),
    case("1d-512", (2, 512, 140), (512, 512, 3), padding=1),
    case("1x1-narrowing", (3, 2048, 10, 10), (256, 2048, 1, 1)),
    case("2d-stride2-ragged", (2, 256, 25, 23), (320, 256, 3, 3), stride=2, padding=(1, 0)),
]


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_shape, w_shape, kw", ONE_STEP)
@pytest.mark.parametrize("variant", VARIANTS)
def test_one_step(rng, assert_close, variant, x_shape, w_shape, kw, dtype):
    """Every variant on weight gradients that sum all their images in one step (each of these
    does in float32 on every variant, and took several steps before), against the reference,
    every element written, the same bits on 1, 2 and 3 threads."""
    check_bounded(rng, assert_close, variant, x_shape, w_shape, kw, dtype)


@pytest.mark.parametrize("x_shape, w_shape, kw, itemsize, one", [
    ((3, 96, 4, 4, 4), (256, 96, 3, 3, 3), dict(padding=1), 4, True),
    ((3, 96, 4, 4, 4), (256, 96, 3, 3, 3), dict(padding=1), 8, True),
    ((2, 768, 8, 8, 8), (256, 768, 3, 3, 3), dict(padding=1), 4, True),    # 3-D U-Net, 1 MiB
    ((2, 768, 8, 8, 8), (256, 768, 3, 3, 3), dict(padding=1), 8, False),   # its dy: 2 MiB
    ((8, 256, 14, 14), (256, 256, 3, 3), dict(padding=1), 4, False),       # dy: 1.6 MB
    ((4, 64, 14, 14), (64, 64, 3, 3), dict(padding=1), 4, False),          # partial: 144 KiB
    ((3, 1024, 14, 14), (256, 1024, 1, 1), {}, 4, False),                  # 1 MiB
    ((1, 128, 28, 28), (512, 128, 3, 3), dict(padding=1), 4, False),       # dy read in place
])
def test_which_weight_gradients_take_one_step(x_shape, w_shape, kw, itemsize, one):
    """One step of all the images (one chunk, written directly) where the partial product is
    ONE_STEP_BYTES or more, the step's packed dy fits in ONE_STEP_PANEL and dy is not read in
    place; otherwise the steps and chunks as before (every variant)."""
    for module in _loops.variants().values():
        plan = module.weight_plan(*shapes5(x_shape, w_shape, kw),
                                  *loop_args(x_shape, w_shape, kw), itemsize)
        taken = (plan["steps"] == 1 and plan["direct"] and plan["chunks"] == 1
                 and plan["images"] == x_shape[0])
        assert taken == one, (module.__name__, plan)
