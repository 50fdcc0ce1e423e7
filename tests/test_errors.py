"""The Errors section of the contract: each malformed call raises TypeError (wrong kind) or
ValueError (wrong value or shape) with a message that names the function and the argument;
a batch of zero images gives an empty result of the right shape."""

from __future__ import annotations

import numpy as np
import pytest
from common import DTYPE_PARAMS

import loopconv

FAMILIES = ("conv", "input", "weight", "backward", "transpose", "transpose_backward")
TRANSPOSE = ("transpose", "transpose_backward")
WITH_INPUT = ("conv", "weight", "backward", "transpose", "transpose_backward")
WITH_WEIGHT = ("conv", "input", "backward", "transpose", "transpose_backward")
WITH_GRAD_OUTPUT = ("input", "weight", "backward", "transpose_backward")
WITH_MODE = ("conv", "backward")
WITH_MASK = ("backward", "transpose_backward")
WITH_BIAS = ("conv", "transpose")


def name(family, nd):
    return {"conv": f"conv{nd}d", "input": f"conv{nd}d_input", "weight": f"conv{nd}d_weight",
            "backward": f"conv{nd}d_backward", "transpose": f"conv_transpose{nd}d",
            "transpose_backward": f"conv_transpose{nd}d_backward"}[family]


def valid_arguments(family, nd, batch=2):
    """Keyword arguments of a valid call: 4 input and 6 output channels in 2 groups, kernel 3,
    spatial size 6, padding 1 (so the output has spatial size 6 too)."""
    sp = (6,) * nd
    x = np.ones((batch, 4, *sp))
    gy = np.ones((batch, 6, *sp))
    w = np.ones((6, 2) + (3,) * nd)
    common = dict(stride=1, padding=1, dilation=1, groups=2)
    if family == "conv":
        return dict(input=x, weight=w, bias=np.ones(6), **common)
    if family == "input":
        return dict(input_size=x.shape, weight=w, grad_output=gy, **common)
    if family == "weight":
        return dict(input=x, weight_size=w.shape, grad_output=gy, **common)
    if family == "backward":
        return dict(input=x, weight=w, grad_output=gy, **common)
    wt = np.ones((4, 3) + (3,) * nd)
    if family == "transpose":
        return dict(input=x, weight=wt, bias=np.ones(6), **common)
    return dict(input=x, weight=wt, grad_output=gy, **common)


def call(family, nd, **changes):
    kwargs = valid_arguments(family, nd)
    kwargs.update(changes)
    return getattr(loopconv, name(family, nd))(**kwargs)


def check(exc, family, nd, words, **changes):
    """The call raises `exc`, whose message starts with the function's name and contains
    every one of `words`."""
    with pytest.raises(exc) as info:
        call(family, nd, **changes)
    message = str(info.value)
    assert message.startswith(f"{name(family, nd)}:"), message
    for word in words:
        assert word in message, (word, message)


NDS = [1, 2, 3]


def params(families):
    return [pytest.param(f, nd, id=f"{name(f, nd)}") for f in families for nd in NDS]


@pytest.mark.parametrize("family, nd", params(FAMILIES))
def test_valid_arguments_are_valid(family, nd):
    """The base call that every error case below changes one argument of."""
    result = call(family, nd)
    results = result if isinstance(result, tuple) else (result,)
    assert [r.shape for r in results] == result_shapes(family, nd, batch=2)


# ---------------------------------------------------------------------------------------------
# Wrong number of dimensions

@pytest.mark.parametrize("family, nd", params(WITH_INPUT))
@pytest.mark.parametrize("ndim", ["too-few", "too-many"])
def test_input_wrong_ndim(family, nd, ndim):
    x = np.ones((4,) * nd) if ndim == "too-few" else np.ones((1, 2, 4) + (6,) * nd)
    check(ValueError, family, nd, ["input", str(x.shape)], input=x)


@pytest.mark.parametrize("family, nd", params(WITH_WEIGHT))
@pytest.mark.parametrize("ndim", ["too-few", "too-many"])
def test_weight_wrong_ndim(family, nd, ndim):
    w = valid_arguments(family, nd)["weight"]
    w = w[0] if ndim == "too-few" else w[None]
    check(ValueError, family, nd, ["weight", str(w.shape)], weight=w)


@pytest.mark.parametrize("family, nd", params(WITH_GRAD_OUTPUT))
def test_grad_output_wrong_ndim(family, nd):
    check(ValueError, family, nd, ["grad_output"], grad_output=np.ones((6,) * nd))


@pytest.mark.parametrize("nd", NDS)
def test_input_size_wrong_length(nd):
    check(ValueError, "input", nd, ["input_size"], input_size=(2, 4, 1, 6) + (6,) * nd)


@pytest.mark.parametrize("nd", NDS)
def test_weight_size_wrong_length(nd):
    check(ValueError, "weight", nd, ["weight_size"], weight_size=(6, 2) + (3,) * (nd + 1))


@pytest.mark.parametrize("nd", NDS)
def test_output_size_wrong_length(nd):
    check(ValueError, "transpose", nd, ["output_size"], output_size=(6,) * (nd + 3))


# ---------------------------------------------------------------------------------------------
# Channels and groups

@pytest.mark.parametrize("family, nd", params(["conv", "weight", "backward"]))
def test_channel_mismatch(family, nd):
    x = np.ones((2, 5) + (6,) * nd)
    check(ValueError, family, nd, ["input has 5 channels", "weight.shape[1] * groups", "4"],
          input=x)


def test_channel_mismatch_spec_example():
    with pytest.raises(ValueError, match=r"^conv2d: input has 3 channels, but "
                                         r"weight\.shape\[1\] \* groups = .*4$"):
        loopconv.conv2d(np.ones((1, 3, 5, 5)), np.ones((2, 2, 3, 3)), groups=2)


@pytest.mark.parametrize("nd", NDS)
def test_channel_mismatch_input_size(nd):
    check(ValueError, "input", nd, ["input_size", "5"], input_size=(2, 5) + (6,) * nd)


@pytest.mark.parametrize("family, nd", params(TRANSPOSE))
def test_channel_mismatch_transpose(family, nd):
    check(ValueError, family, nd, ["input has 5 channels", "weight.shape[0]"],
          input=np.ones((2, 5) + (6,) * nd))


@pytest.mark.parametrize("family, nd", params(["conv", "input", "backward"]))
def test_groups_not_dividing_output_channels(family, nd):
    """weight (6, 1, ...) with groups=4: 4 input channels match, 6 output channels do not."""
    check(ValueError, family, nd, ["groups=4", "6"], weight=np.ones((6, 1) + (3,) * nd),
          groups=4)


@pytest.mark.parametrize("nd", NDS)
def test_groups_not_dividing_output_channels_weight_size(nd):
    check(ValueError, "weight", nd, ["groups=4", "weight_size"],
          weight_size=(6, 1) + (3,) * nd, groups=4)


@pytest.mark.parametrize("family, nd", params(TRANSPOSE))
def test_groups_not_dividing_channels_transpose(family, nd):
    check(ValueError, family, nd, ["groups=3", "4"], groups=3)


# ---------------------------------------------------------------------------------------------
# Stride, dilation, padding, output_padding

@pytest.mark.parametrize("family, nd", params(FAMILIES))
@pytest.mark.parametrize("argument", ["stride", "dilation"])
@pytest.mark.parametrize("value", [0, -1, "tuple"], ids=["0", "-1", "tuple-with-0"])
def test_stride_dilation_below_one(family, nd, argument, value):
    if value == "tuple":
        value = (1,) * (nd - 1) + (0,)
    check(ValueError, family, nd, [argument], **{argument: value})


@pytest.mark.parametrize("family, nd", params(FAMILIES))
@pytest.mark.parametrize("argument", ["stride", "dilation"])
def test_stride_dilation_wrong_length(family, nd, argument):
    check(ValueError, family, nd, [argument], **{argument: (1,) * (nd + 1)})


@pytest.mark.parametrize("family, nd", params(FAMILIES))
@pytest.mark.parametrize("value", ["int", "per-axis", "pair"])
def test_negative_padding(family, nd, value):
    padding = {"int": -1, "per-axis": (1,) * (nd - 1) + (-1,),
               "pair": ((1, 1),) * (nd - 1) + ((0, -2),)}[value]
    check(ValueError, family, nd, ["padding"], padding=padding)


@pytest.mark.parametrize("family, nd", params(FAMILIES))
def test_padding_wrong_length(family, nd):
    check(ValueError, family, nd, ["padding"], padding=(1,) * (nd + 1))


@pytest.mark.parametrize("family, nd", params(FAMILIES))
def test_padding_entry_not_a_pair(family, nd):
    check(ValueError, family, nd, ["padding"], padding=((1, 1, 1),) * nd)


@pytest.mark.parametrize("family, nd", params(TRANSPOSE))
@pytest.mark.parametrize("stride, dilation, output_padding", [
    (1, 1, 1), (2, 1, 2), (2, 3, 3), (3, 2, (0, 0, 3)),
], ids=["s1", "equal-stride", "equal-dilation", "one-axis"])
def test_output_padding_too_large(family, nd, stride, dilation, output_padding):
    if isinstance(output_padding, tuple):
        output_padding = output_padding[-nd:]
    check(ValueError, family, nd, ["output_padding"], stride=stride, dilation=dilation,
          output_padding=output_padding, padding=0)


@pytest.mark.parametrize("family, nd", params(TRANSPOSE))
def test_output_padding_negative(family, nd):
    check(ValueError, family, nd, ["output_padding"], stride=2, output_padding=-1)


# ---------------------------------------------------------------------------------------------
# Output size < 1

@pytest.mark.parametrize("family, nd", params(["conv", "backward"]))
@pytest.mark.parametrize("how", ["kernel", "dilation"])
def test_kernel_larger_than_padded_input(family, nd, how):
    changes = dict(padding=0)
    if how == "kernel":
        changes["weight"] = np.ones((6, 2) + (7,) * nd)
    else:
        changes["dilation"] = 3
    check(ValueError, family, nd, ["kernel", "input"], **changes)


@pytest.mark.parametrize("nd", NDS)
def test_kernel_larger_than_input_size(nd):
    check(ValueError, "input", nd, ["kernel", "input"], padding=0,
          input_size=(2, 4) + (2,) * nd, grad_output=np.ones((2, 6) + (1,) * nd))


@pytest.mark.parametrize("nd", NDS)
def test_kernel_larger_than_input_weight_size(nd):
    check(ValueError, "weight", nd, ["kernel", "input"], padding=0,
          weight_size=(6, 2) + (7,) * nd, grad_output=np.ones((2, 6) + (1,) * nd))


@pytest.mark.parametrize("family, nd", params(TRANSPOSE))
def test_transpose_padding_too_large(family, nd):
    check(ValueError, family, nd, ["padding"], padding=5)


# ---------------------------------------------------------------------------------------------
# grad_output of the wrong shape

@pytest.mark.parametrize("family, nd", params(WITH_GRAD_OUTPUT))
@pytest.mark.parametrize("wrong", ["spatial", "channels", "batch"])
def test_grad_output_wrong_shape(family, nd, wrong):
    shape = {"spatial": (2, 6) + (6,) * (nd - 1) + (5,), "channels": (2, 5) + (6,) * nd,
             "batch": (3, 6) + (6,) * nd}[wrong]
    check(ValueError, family, nd, ["grad_output", str(shape)], grad_output=np.ones(shape))


# ---------------------------------------------------------------------------------------------
# Padding modes

@pytest.mark.parametrize("family, nd", params(WITH_MODE))
@pytest.mark.parametrize("padding", ["equal", "larger", "after-only"])
def test_reflect_padding_as_large_as_input(family, nd, padding):
    padding = {"equal": 6, "larger": 7, "after-only": ((0, 6),) * nd}[padding]
    check(ValueError, family, nd, ["reflect", "padding", "6"], padding=padding,
          padding_mode="reflect")


@pytest.mark.parametrize("family, nd", params(WITH_MODE))
def test_circular_padding_larger_than_input(family, nd):
    check(ValueError, family, nd, ["circular", "padding", "6"], padding=((7, 0),) * nd,
          padding_mode="circular")


@pytest.mark.parametrize("family, nd", params(WITH_MODE))
@pytest.mark.parametrize("mode, exc", [("mirror", ValueError), ("Zeros", ValueError),
                                       (0, TypeError), (None, TypeError)],
                         ids=["mirror", "capitalised", "int", "None"])
def test_unknown_padding_mode(family, nd, mode, exc):
    check(exc, family, nd, ["padding_mode"], padding_mode=mode)


@pytest.mark.parametrize("family, nd", params(FAMILIES))
def test_unknown_padding_string(family, nd):
    check(ValueError, family, nd, ["padding", "full"], padding="full")


@pytest.mark.parametrize("family, nd", params(["input", "weight"] + list(TRANSPOSE)))
def test_same_padding_only_for_convolutions(family, nd):
    check(ValueError, family, nd, ["padding", "same"], padding="same")


# ---------------------------------------------------------------------------------------------
# Counts: bool, float and negative numbers

COUNT_ARGUMENTS = {
    "stride": FAMILIES, "dilation": FAMILIES, "groups": FAMILIES, "padding": FAMILIES,
    "output_padding": TRANSPOSE,
}


def count_params():
    return [pytest.param(f, nd, arg, id=f"{name(f, nd)}-{arg}")
            for arg, families in COUNT_ARGUMENTS.items() for f in families for nd in NDS]


@pytest.mark.parametrize("family, nd, argument", count_params())
@pytest.mark.parametrize("value", [True, np.bool_(True), 1.5, 2.0, np.float64(1.0), "2",
                                   None], ids=["True", "np.True_", "1.5", "2.0",
                                               "np.float64", "str", "None"])
def test_count_of_wrong_kind(family, nd, argument, value):
    # a string is a valid kind of padding ('same', 'valid'), so "2" is a wrong value there
    exc = ValueError if argument == "padding" and isinstance(value, str) else TypeError
    check(exc, family, nd, [argument], **{argument: value})


@pytest.mark.parametrize("family, nd, argument", count_params())
def test_count_of_wrong_kind_in_tuple(family, nd, argument):
    value = (1,) * (nd - 1) + (1.5,)
    check(TypeError, family, nd, [argument], **{argument: value})


@pytest.mark.parametrize("family, nd", params(FAMILIES))
@pytest.mark.parametrize("groups", [0, -1])
def test_groups_below_one(family, nd, groups):
    check(ValueError, family, nd, ["groups"], groups=groups)


@pytest.mark.parametrize("family, nd", params(FAMILIES))
def test_numpy_integer_counts_are_accepted(family, nd):
    expected = call(family, nd)
    got = call(family, nd, stride=np.int64(1), padding=np.int32(1), dilation=np.uint8(1),
               groups=np.int16(2))
    for g, e in zip(got if isinstance(got, tuple) else [got],
                    expected if isinstance(expected, tuple) else [expected]):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("nd", NDS)
@pytest.mark.parametrize("family, argument", [("input", "input_size"),
                                              ("weight", "weight_size")])
@pytest.mark.parametrize("entry, exc", [(-1, ValueError), (6.0, TypeError),
                                        (True, TypeError)], ids=["negative", "float", "bool"])
def test_shape_argument_entries(family, argument, nd, entry, exc):
    shape = list(valid_arguments(family, nd)[argument])
    shape[-1] = entry
    check(exc, family, nd, [argument], **{argument: tuple(shape)})


@pytest.mark.parametrize("nd", NDS)
@pytest.mark.parametrize("family, argument", [("input", "input_size"),
                                              ("weight", "weight_size")])
@pytest.mark.parametrize("value", [6, "2, 4, 6", None], ids=["int", "str", "None"])
def test_shape_argument_not_a_sequence(family, argument, nd, value):
    check(TypeError, family, nd, [argument], **{argument: value})


@pytest.mark.parametrize("nd", NDS)
@pytest.mark.parametrize("entry, exc", [(-1, ValueError), (6.0, TypeError),
                                        (True, TypeError)], ids=["negative", "float", "bool"])
def test_output_size_entries(nd, entry, exc):
    check(exc, "transpose", nd, ["output_size"], output_size=(6,) * (nd - 1) + (entry,))


@pytest.mark.parametrize("nd", NDS)
def test_weight_size_with_empty_kernel(nd):
    check(ValueError, "weight", nd, ["weight_size"], weight_size=(6, 2) + (0,) * nd)


# ---------------------------------------------------------------------------------------------
# Arrays of the wrong kind

def array_arguments():
    out = []
    for family in FAMILIES:
        names = [k for k, v in valid_arguments(family, 1).items() if isinstance(v, np.ndarray)]
        out += [pytest.param(family, nd, arg, id=f"{name(family, nd)}-{arg}")
                for arg in names for nd in NDS]
    return out


@pytest.mark.parametrize("family, nd, argument", array_arguments())
@pytest.mark.parametrize("kind", ["complex", "object", "str", "bytes", "datetime"])
def test_array_of_wrong_dtype(family, nd, argument, kind):
    value = valid_arguments(family, nd)[argument]
    value = {"complex": lambda a: a.astype(np.complex128),
             "object": lambda a: a.astype(object),
             "str": lambda a: a.astype(str),
             "bytes": lambda a: a.astype(bytes),
             "datetime": lambda a: a.astype("datetime64[s]")}[kind](value)
    check(TypeError, family, nd, [argument], **{argument: value})


@pytest.mark.parametrize("family, nd", params(WITH_BIAS))
@pytest.mark.parametrize("shape", [(5,), (7,), (6, 1), (1, 6), ()],
                         ids=["short", "long", "column", "row", "scalar"])
def test_bias_of_wrong_shape(family, nd, shape):
    check(ValueError, family, nd, ["bias", "6"], bias=np.ones(shape))


@pytest.mark.parametrize("family, nd", params(WITH_MASK))
@pytest.mark.parametrize("mask, exc", [
    ((True, True), ValueError), ((True, True, True, True), ValueError), ((), ValueError),
    (True, TypeError), (None, TypeError), (("yes", True, True), TypeError),
    ((True, None, True), TypeError),
], ids=["2-entries", "4-entries", "empty", "bool", "None", "str-entry", "None-entry"])
def test_output_mask_malformed(family, nd, mask, exc):
    check(exc, family, nd, ["output_mask"], output_mask=mask)


# ---------------------------------------------------------------------------------------------
# Malformed inputs raise, never crash

MALFORMED = [  # (id, the change to the valid conv2d call, exception, words of its message)
    # not an array: a list that nests unevenly, a dict (NumPy makes an object array of it)
    ("ragged-list", dict(input=[[1.0, 2.0], [3.0]]), TypeError, ["input"]),
    ("dict-input", dict(input={"a": 1}), TypeError, ["input", "object"]),
    ("scalar-input", dict(input=np.float64(1.0)), ValueError, ["input", "()"]),
    ("empty-kernel", dict(weight=np.ones((6, 2, 0, 3))), ValueError,
     ["weight", "(6, 2, 0, 3)"]),
    # no output channels, so the 6 biases of the valid call have none to go to
    ("zero-channel-weight", dict(weight=np.ones((0, 2, 3, 3))), ValueError, ["bias", "(6,)"]),
    ("huge-dilation", dict(dilation=2**40), ValueError, ["kernel", "input"]),
    # a padded input of 2**63 + 6 pixels a side: more than an array may hold
    ("huge-padding", dict(padding=2**62), ValueError, ["padding", str(2**62)]),
    ("generator-padding", dict(padding=(p for p in (1, 1))), TypeError, ["padding"]),
]


@pytest.mark.parametrize("changes, exc, words", [pytest.param(c, e, w, id=i)
                                                 for i, c, e, w in MALFORMED])
def test_malformed_conv2d_raises(changes, exc, words):
    check(exc, "conv", 2, words, **changes)


@pytest.mark.parametrize("changes", [
    pytest.param(dict(stride=2**62), id="huge-stride"),
    pytest.param(dict(input=np.full((2, 4, 6, 6), np.nan)), id="nan-input"),
])
def test_extreme_but_valid_conv2d_computes(changes):
    """Values that look malformed but are valid, as in PyTorch: a stride larger than the input
    (one output pixel a side, as with stride 8), and NaN inputs (NaN results)."""
    result = call("conv", 2, **changes)
    assert isinstance(result, np.ndarray)
    if "stride" in changes:
        np.testing.assert_array_equal(result, call("conv", 2, stride=8))
    else:
        assert result.shape == (2, 6, 6, 6) and np.isnan(result).all()


def test_nan_propagates():
    y = call("conv", 2, input=np.full((2, 4, 6, 6), np.nan))
    assert np.isnan(y).all()


# ---------------------------------------------------------------------------------------------
# A batch of zero images

def result_shapes(family, nd, batch):
    sp = (6,) * nd
    return {"conv": [(batch, 6, *sp)], "input": [(batch, 4, *sp)],
            "weight": [(6, 2) + (3,) * nd],
            "backward": [(batch, 4, *sp), (6, 2) + (3,) * nd, (6,)],
            "transpose": [(batch, 6, *sp)],
            "transpose_backward": [(batch, 4, *sp), (4, 3) + (3,) * nd, (6,)]}[family]


@pytest.mark.parametrize("family, nd", params(FAMILIES))
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_zero_batch(family, nd, dtype):
    kwargs = valid_arguments(family, nd, batch=0)
    for key, value in kwargs.items():
        if isinstance(value, np.ndarray):
            kwargs[key] = value.astype(dtype)
    result = getattr(loopconv, name(family, nd))(**kwargs)
    results = result if isinstance(result, tuple) else (result,)
    shapes = result_shapes(family, nd, batch=0)
    assert [r.shape for r in results] == shapes
    assert all(r.dtype == dtype for r in results)
    for r in results:
        if r.shape[0] != 0:
            np.testing.assert_array_equal(r, np.zeros(r.shape))


@pytest.mark.parametrize("family", ["conv", "weight", "backward"])
def test_stride_beyond_the_c_integer_range(family):
    """A stride beyond a C integer (2**70) is refused with ValueError naming the function and
    the argument, as torch.nn.functional.conv2d refuses it (ValueError: overflow)."""
    changes = {} if family == "conv" else dict(grad_output=np.ones((2, 6, 1, 1)))
    check(ValueError, family, 2, ["stride", str(2**70)], stride=2**70, **changes)


@pytest.mark.parametrize("family", ["conv", "weight", "backward"])
def test_largest_stride_gives_one_pixel(family):
    """2**62, the largest stride loopconv takes, is larger than any input: one output pixel
    per axis, as stride 8 gives here."""
    changes = {} if family == "conv" else dict(grad_output=np.ones((2, 6, 1, 1)))
    huge = call(family, 2, stride=2**62, **changes)
    expected = call(family, 2, stride=8, **changes)
    for h, e in zip(huge if family == "backward" else [huge],
                    expected if family == "backward" else [expected]):
        np.testing.assert_array_equal(h, e)
