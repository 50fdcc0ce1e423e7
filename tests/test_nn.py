"""The layers of loopconv.nn.

Against the ``torch.nn`` modules holding the same weights (skipped without torch): forward,
grad_input, grad_weight and grad_bias for every layer class and setting.  Without torch:
initialisation, use of the current weights, the state kept between forward and backward,
exact linear-map checks of the gradients, errors and repr.
"""

import re

import numpy as np
import pytest
from common import DTYPE_PARAMS, assert_close

from loopconv import functional as F
from loopconv import nn

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
ALL_CLASSES = [*CONV.values(), *TRANSPOSE.values()]
SIZE = {1: 9, 2: 8, 3: 6}      # spatial size of the test inputs, per number of dimensions


def per_axis(values, nd):
    """The first `nd` of `values`, as a tuple (for settings that differ between axes)."""
    return tuple(values[:nd])


def random_input(layer, dtype, size=None, batch=2, seed=0):
    nd = layer._nd
    shape = (layer.in_channels, *(size or (SIZE[nd],) * nd))
    if batch is not None:
        shape = (batch, *shape)
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------
# Against torch.nn

CONV_CASES = {
    "plain": dict(in_channels=3, out_channels=4, kernel_size=3),
    "stride-padding": dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1),
    "stride3-unreached": dict(in_channels=2, out_channels=3, kernel_size=2, stride=3),
    "dilation": dict(in_channels=3, out_channels=4, kernel_size=3, dilation=2, padding=2),
    "groups": dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, padding=1),
    "depthwise": dict(in_channels=4, out_channels=8, kernel_size=3, groups=4),
    "no-bias": dict(in_channels=3, out_channels=4, kernel_size=3, bias=False),
    "valid": dict(in_channels=3, out_channels=4, kernel_size=2, padding="valid"),
    "same-even-kernel": dict(in_channels=3, out_channels=4, kernel_size=4, padding="same"),
    "same-dilation": dict(in_channels=3, out_channels=4, kernel_size=3, dilation=2,
                          padding="same"),
    "per-axis": dict(in_channels=3, out_channels=5, kernel_size=(3, 2, 3), stride=(2, 1, 3),
                     padding=(1, 0, 2), dilation=(1, 2, 1)),
    **{f"{mode}": dict(in_channels=3, out_channels=4, kernel_size=3, padding=(2, 1, 2),
                       padding_mode=mode, stride=(1, 2, 1))
       for mode in ("reflect", "replicate", "circular")},
    **{f"{mode}-same": dict(in_channels=2, out_channels=3, kernel_size=(2, 3, 4),
                            padding="same", padding_mode=mode, groups=1)
       for mode in ("reflect", "replicate", "circular")},
    "reflect-groups-dilation": dict(in_channels=4, out_channels=4, kernel_size=3, groups=2,
                                    dilation=2, padding=3, padding_mode="reflect"),
}

TRANSPOSE_CASES = {
    "plain": dict(in_channels=3, out_channels=4, kernel_size=3),
    "stride-padding-output-padding": dict(in_channels=3, out_channels=4, kernel_size=3,
                                          stride=2, padding=1, output_padding=1),
    "stride3-dilation2": dict(in_channels=2, out_channels=3, kernel_size=3, stride=3,
                              dilation=2, output_padding=2),
    "output-padding-below-dilation": dict(in_channels=2, out_channels=3, kernel_size=2,
                                          dilation=3, output_padding=2),
    "groups": dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, stride=2),
    "depthwise": dict(in_channels=4, out_channels=4, kernel_size=3, groups=4, padding=1),
    "no-bias": dict(in_channels=3, out_channels=4, kernel_size=3, bias=False, stride=2),
    "per-axis": dict(in_channels=3, out_channels=5, kernel_size=(3, 2, 4), stride=(2, 1, 3),
                     padding=(1, 0, 2), output_padding=(1, 0, 2), dilation=(1, 2, 1)),
}


def nd_kwargs(kwargs, nd):
    """The case's settings for `nd` dimensions: tuples of three are cut to `nd` entries."""
    return {k: per_axis(v, nd) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def torch_twin(torch, layer):
    """The torch.nn module with the settings and the weights of `layer`."""
    kwargs = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                  groups=layer.groups, bias=layer.bias is not None,
                  dtype=getattr(torch, layer.dtype.name))
    if hasattr(layer, "output_padding"):
        kwargs["output_padding"] = layer.output_padding
    else:
        kwargs["padding_mode"] = layer.padding_mode
    twin = getattr(torch.nn, type(layer).__name__)(layer.in_channels, layer.out_channels,
                                                   layer.kernel_size, **kwargs)
    with torch.no_grad():
        twin.weight.copy_(torch.from_numpy(layer.weight))
        if layer.bias is not None:
            twin.bias.copy_(torch.from_numpy(layer.bias))
    return twin


def compare_with_torch(torch, layer, x, twin=None, reference=None, **call_kwargs):
    """Forward and all gradients of `layer` against `reference(x)` (default: `twin`, the
    torch module with the layer's settings and weights, whose parameters get the grads)."""
    dtype = layer.dtype
    if twin is None:
        twin = torch_twin(torch, layer)
    if reference is None:
        reference = twin
    y = layer(x, **call_kwargs)
    xt = torch.tensor(x, requires_grad=True)
    yt = reference(xt, **call_kwargs)
    assert_close(y, yt.detach(), dtype)
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    gx = layer.backward(gy)
    yt.backward(torch.from_numpy(gy))
    assert_close(gx, xt.grad, dtype)
    assert_close(layer.grad_weight, twin.weight.grad, dtype)
    if layer.bias is None:
        assert layer.grad_bias is None
    else:
        assert_close(layer.grad_bias, twin.bias.grad, dtype)
    return y


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("nd", [1, 2, 3], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("case", list(CONV_CASES), ids=str)
def test_conv_matches_torch(case, nd, dtype):
    torch = pytest.importorskip("torch")
    layer = CONV[nd](**nd_kwargs(CONV_CASES[case], nd), dtype=dtype, rng=0)
    compare_with_torch(torch, layer, random_input(layer, dtype))


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("nd", [1, 2, 3], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("case", list(TRANSPOSE_CASES), ids=str)
def test_conv_transpose_matches_torch(case, nd, dtype):
    torch = pytest.importorskip("torch")
    layer = TRANSPOSE[nd](**nd_kwargs(TRANSPOSE_CASES[case], nd), dtype=dtype, rng=0)
    compare_with_torch(torch, layer, random_input(layer, dtype, size=(4,) * nd))


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transpose"])
@pytest.mark.parametrize("nd", [1, 2, 3], ids=["1d", "2d", "3d"])
def test_unbatched_matches_torch(nd, transposed):
    torch = pytest.importorskip("torch")
    cls = (TRANSPOSE if transposed else CONV)[nd]
    layer = cls(4, 6, 3, stride=2, padding=1, groups=2, rng=0)
    x = random_input(layer, np.float32, batch=None)
    y = compare_with_torch(torch, layer, x)
    assert y.ndim == nd + 1


@pytest.mark.parametrize("full_shape", [False, True], ids=["spatial", "full-shape"])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("nd", [1, 2, 3], ids=["1d", "2d", "3d"])
def test_output_size_matches_torch(nd, dtype, full_shape):
    """output_size picks the output padding of that call (here 1 and 0 on alternate axes,
    while the layer's own output_padding is 1 everywhere); backward must use the same."""
    torch = pytest.importorskip("torch")
    layer = TRANSPOSE[nd](3, 4, 3, stride=2, padding=1, output_padding=1, dtype=dtype, rng=0)
    x = random_input(layer, dtype, size=(4,) * nd)          # output size 7 + output padding
    size = [8, 7, 8][:nd]
    output_size = [2, 4, *size] if full_shape else size
    y = compare_with_torch(torch, layer, x, output_size=output_size)
    assert y.shape == (2, 4, *size)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("nd", [1, 2, 3], ids=["1d", "2d", "3d"])
def test_asymmetric_and_strided_same_padding_match_padded_torch(nd, mode):
    """Settings torch.nn.ConvNd does not take (asymmetric pairs, 'same' with stride 2)
    against torch.nn.functional.pad followed by an unpadded torch convolution."""
    torch = pytest.importorskip("torch")
    conv = getattr(torch.nn.functional, f"conv{nd}d")
    torch_mode = "constant" if mode == "zeros" else mode
    # 'same' with stride 2, kernel 3 on size 8: output 4, total padding 1, all of it after.
    for padding, pairs in [(((1, 2), (0, 1), (2, 0))[:nd], ((1, 2), (0, 1), (2, 0))[:nd]),
                           ("same", ((0, 1),) * nd)]:
        layer = CONV[nd](3, 4, 3, stride=2, padding=padding, padding_mode=mode,
                         dtype=np.float64, rng=0)
        twin = torch_twin_unpadded(torch, layer)
        flat = [p for pair in reversed(pairs) for p in pair]

        def reference(xt, twin=twin, flat=flat, stride=layer.stride):
            return conv(torch.nn.functional.pad(xt, flat, mode=torch_mode), twin.weight,
                        twin.bias, stride)

        y = compare_with_torch(torch, layer, random_input(layer, np.float64, size=(8,) * nd),
                               twin=twin, reference=reference)
        if padding == "same":
            assert y.shape[2:] == (4,) * nd


def torch_twin_unpadded(torch, layer):
    """A torch twin used only for its weights (its padding setting is not used)."""
    twin = getattr(torch.nn, type(layer).__name__)(layer.in_channels, layer.out_channels,
                                                   layer.kernel_size, dtype=torch.float64)
    with torch.no_grad():
        twin.weight.copy_(torch.from_numpy(layer.weight))
        twin.bias.copy_(torch.from_numpy(layer.bias))
    return twin


def test_asymmetric_padding_transposed_matches_cropped_torch():
    """Transposed padding pairs remove (before, after) from the unpadded result."""
    torch = pytest.importorskip("torch")
    layer = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=((1, 0), (0, 2)), dtype=np.float64,
                               rng=0)
    twin = torch.nn.ConvTranspose2d(3, 4, 3, stride=2, dtype=torch.float64)
    with torch.no_grad():
        twin.weight.copy_(torch.from_numpy(layer.weight))
        twin.bias.copy_(torch.from_numpy(layer.bias))
    x = random_input(layer, np.float64, size=(4, 5))
    y = layer(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = twin(xt)[:, :, 1:, 0:-2]
    assert_close(y, yt.detach(), np.float64)
    gy = np.random.default_rng(1).standard_normal(y.shape)
    yt.backward(torch.from_numpy(gy))
    assert_close(layer.backward(gy), xt.grad, np.float64)
    assert_close(layer.grad_weight, twin.weight.grad, np.float64)
    assert_close(layer.grad_bias, twin.bias.grad, np.float64)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_init_bound_matches_torch(cls, groups):
    """The bound 1/sqrt(fan_in) is PyTorch's: torch's own draws stay inside it and fill it
    (8 and 12 channels: the bounds of the two fan_in formulas differ by more than 5 %)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ours = cls(8, 12, 3, groups=groups, rng=0)
    theirs = getattr(torch.nn, cls.__name__)(8, 12, 3, groups=groups)
    bound = 1 / np.sqrt(ours.weight.shape[1] * 3 ** ours._nd)
    assert tuple(theirs.weight.shape) == ours.weight.shape
    for w in (ours.weight, theirs.weight.detach().numpy()):
        assert 0.95 * bound < np.abs(w).max() <= np.float32(bound)
    for b in (ours.bias, theirs.bias.detach().numpy()):
        assert np.abs(b).max() <= np.float32(bound)


# ---------------------------------------------------------------------------------------------
# Initialisation

@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_init_shapes_dtype_and_bounds(cls, groups, dtype):
    layer = cls(4, 6, 3, groups=groups, dtype=dtype, rng=0)
    nd = layer._nd
    transposed = cls in TRANSPOSE.values()
    # fan_in = weight.shape[1] * prod(kernel): (in // groups) for a convolution,
    # (out // groups) for a transposed one, as torch computes it.
    per_group = 6 // groups if transposed else 4 // groups
    assert layer.weight.shape == ((4,) if transposed else (6,)) + (per_group,) + (3,) * nd
    assert layer.bias.shape == (6,)
    assert layer.weight.dtype == layer.bias.dtype == np.dtype(dtype)
    bound = np.asarray(1 / np.sqrt(per_group * 3 ** nd), dtype)
    for p in (layer.weight, layer.bias):
        assert np.abs(p).max() <= bound
    # the weights fill the interval: not a narrower one
    assert np.abs(layer.weight).max() > 0.8 * bound
    assert abs(layer.weight.mean()) < 0.2 * bound


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_init_is_determined_by_the_seed(cls):
    a, b, c = cls(3, 4, 3, rng=5), cls(3, 4, 3, rng=5), cls(3, 4, 3, rng=6)
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.bias, b.bias)
    assert not np.array_equal(a.weight, c.weight)


def test_init_draws_from_a_given_generator():
    """A Generator is used as is: two layers from one generator differ, and the draws are
    weight first, then bias."""
    gen = np.random.default_rng(3)
    first, second = nn.Conv2d(2, 3, 3, rng=gen), nn.Conv2d(2, 3, 3, rng=gen)
    assert not np.array_equal(first.weight, second.weight)
    again = np.random.default_rng(3)
    bound = 1 / np.sqrt(2 * 9)
    np.testing.assert_array_equal(first.weight,
                                  again.uniform(-bound, bound, (3, 2, 3, 3)).astype(np.float32))
    np.testing.assert_array_equal(first.bias, again.uniform(-bound, bound, 3).astype(np.float32))


def test_init_without_seed_and_reset_parameters():
    a, b = nn.Conv1d(2, 3, 3), nn.Conv1d(2, 3, 3)
    assert not np.array_equal(a.weight, b.weight)
    b.reset_parameters(rng=7)
    np.testing.assert_array_equal(b.weight, nn.Conv1d(2, 3, 3, rng=7).weight)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_no_bias(cls):
    layer = cls(2, 4, 3, bias=False, rng=0)
    assert layer.bias is None
    y = layer(random_input(layer, np.float32, size=(5,) * layer._nd))
    layer.backward(np.ones_like(y))
    assert layer.grad_bias is None
    assert layer.grad_weight.shape == layer.weight.shape


# ---------------------------------------------------------------------------------------------
# The layer computes the functional with its current weights

def test_forward_is_the_functional_with_the_layer_settings():
    layer = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2),
                      groups=2, padding_mode="circular", rng=0)
    x = random_input(layer, np.float32)
    expected = F.conv2d(x, layer.weight, layer.bias, (2, 1), ((1, 0), (2, 1)), (1, 2), 2,
                        "circular")
    np.testing.assert_array_equal(layer(x), expected)
    np.testing.assert_array_equal(layer.forward(x), expected)


def test_replaced_and_updated_weights_are_used():
    layer = nn.Conv2d(2, 3, 3, rng=0)
    x = random_input(layer, np.float32)
    new_w = np.random.default_rng(9).standard_normal((3, 2, 3, 3)).astype(np.float32)
    layer.weight = new_w.copy()
    np.testing.assert_array_equal(layer(x), F.conv2d(x, new_w, layer.bias))
    layer.weight *= 2                                        # in place
    layer.bias[:] = [1, 2, 3]
    np.testing.assert_array_equal(layer(x), F.conv2d(x, 2 * new_w, np.float32([1, 2, 3])))
    # backward reads the weight when it is called
    gy = np.ones((2, 3, 6, 6), np.float32)
    layer.weight = -new_w
    np.testing.assert_array_equal(layer.backward(gy), F.conv2d_input(x.shape, -new_w, gy))
    layer.bias = None
    layer(x)
    layer.backward(gy)
    assert layer.grad_bias is None


def test_replaced_weight_is_used_by_transposed_layer():
    layer = nn.ConvTranspose1d(2, 3, 3, stride=2, rng=0)
    x = random_input(layer, np.float64, size=(5,))
    w = np.random.default_rng(2).standard_normal((2, 3, 3))
    layer.weight = w
    np.testing.assert_array_equal(layer(x), F.conv_transpose1d(x, w, layer.bias, 2))


def functional_step(layer, x, gy):
    """(output, grad_input, grad_weight, grad_bias) of `layer`'s settings by the functions."""
    nd = layer._nd
    if isinstance(layer, nn._ConvTransposeNd):
        y = getattr(F, f"conv_transpose{nd}d")(x, layer.weight, layer.bias, layer.stride,
                                                layer.padding, layer.output_padding,
                                                layer.groups, layer.dilation)
        grads = getattr(F, f"conv_transpose{nd}d_backward")(
            x, layer.weight, gy, layer.stride, layer.padding, layer.output_padding,
            layer.groups, layer.dilation, output_mask=(True, True, layer.bias is not None))
    else:
        y = getattr(F, f"conv{nd}d")(x, layer.weight, layer.bias, layer.stride, layer.padding,
                                     layer.dilation, layer.groups, layer.padding_mode)
        grads = getattr(F, f"conv{nd}d_backward")(
            x, layer.weight, gy, layer.stride, layer.padding, layer.dilation, layer.groups,
            layer.padding_mode, output_mask=(True, True, layer.bias is not None))
    return (y, *grads)


@pytest.mark.parametrize("layer", [
    pytest.param(nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, rng=0), id="conv2d"),
    pytest.param(nn.Conv1d(4, 8, 3, padding="same", bias=False, rng=0), id="conv1d-same"),
    pytest.param(nn.Conv3d(2, 4, 2, padding=1, padding_mode="replicate", rng=0),
                 id="conv3d-replicate"),
    pytest.param(nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1,
                                    groups=2, rng=0), id="transpose2d"),
    pytest.param(nn.Conv2d(8, 32, 3, padding=1, rng=0), id="conv2d-tiled"),
])
def test_layer_plans_follow_input_weight_and_gradient(layer):
    """A layer runs its last plan while input, weight and bias keep their shapes and dtypes,
    and gives what the functions give, bit for bit, through a sequence of calls that changes
    the input's size, batch and dtype, the weight's dtype and grad_output's dtype."""
    gen = np.random.default_rng(5)
    nd = layer._nd
    steps = [((2, 12), np.float32, np.float32), ((2, 12), np.float32, np.float32),
             ((1, 10), np.float32, np.float32), ((2, 12), np.float64, np.float32),
             ((2, 12), np.float32, np.float64), ((2, 12), np.float32, np.float32)]
    for i, ((batch, size), x_dtype, gy_dtype) in enumerate(steps):
        if i == 4:
            layer.weight = layer.weight.astype(np.float64)
        if i == 5:
            layer.weight = layer.weight.astype(np.float32)
        x = gen.standard_normal((batch, layer.in_channels) + (size,) * nd).astype(x_dtype)
        y = layer(x)
        gy = gen.standard_normal(y.shape).astype(gy_dtype)
        gx = layer.backward(gy)
        expected = functional_step(layer, x, gy)
        for got, want in zip((y, gx, layer.grad_weight, layer.grad_bias), expected):
            if want is None:
                assert got is None
                continue
            assert got.dtype == want.dtype and got.shape == want.shape, (i, got.dtype)
            np.testing.assert_array_equal(got, want)


def test_layer_reuses_its_plan():
    """The second call of a layer on an input of the same shape and dtype takes the plan the
    first made, for forward and backward; another shape makes another."""
    layer = nn.ConvTranspose2d(2, 3, 3, stride=2, rng=0)
    x = np.ones((1, 2, 5, 5), np.float32)
    layer.backward(np.ones_like(layer(x)))
    plan = layer._plan
    assert plan is not None
    layer.backward(np.ones_like(layer(x)))
    assert layer._plan is plan
    layer(np.ones((1, 2, 6, 5), np.float32))
    assert layer._plan is not plan and layer._plan.shapes[2] == (1, 2, 6, 5)


def test_backward_asks_only_for_needed_gradients(monkeypatch):
    """A layer without bias asks for no bias gradient, on the planned and the checking path
    (a padding mode other than zeros has no plan)."""
    masks = []

    def spy(real):
        def wrapper(*args, **kwargs):
            masks.append(args[-1])
            return real(*args, **kwargs)
        return wrapper

    for name in ("_planned_backward", "_conv_backward_checked", "_planned_transpose_backward",
                 "_conv_transpose_backward_checked"):
        monkeypatch.setattr(F, name, spy(getattr(F, name)))
    for cls, kw in ((nn.Conv2d, {}), (nn.Conv2d, dict(padding=1, padding_mode="reflect")),
                    (nn.ConvTranspose2d, {})):
        for bias in (True, False):
            layer = cls(2, 2, 3, bias=bias, rng=0, **kw)
            layer.backward(np.ones_like(layer(np.ones((1, 2, 5, 5), np.float32))))
            assert (layer.grad_bias is None) != bias
    assert masks == [(True, True, True), (True, True, False)] * 3


def test_transposed_backward_uses_the_output_padding_of_forward():
    layer = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, dtype=np.float64, rng=0)
    x = random_input(layer, np.float64, size=(4, 4))
    assert layer(x).shape == (2, 3, 7, 7)
    y = layer(x, output_size=(8, 7))                       # output padding (1, 0)
    assert y.shape == (2, 3, 8, 7)
    gy = np.random.default_rng(1).standard_normal(y.shape)
    gx = layer.backward(gy)
    expected = F.conv_transpose2d_backward(x, layer.weight, gy, 2, 1, (1, 0))
    for ours, theirs in zip((gx, layer.grad_weight, layer.grad_bias), expected):
        np.testing.assert_array_equal(ours, theirs)
    y = layer(x)                                            # and back to the layer's own
    assert layer.backward(np.ones_like(y)).shape == x.shape


# ---------------------------------------------------------------------------------------------
# Gradients without torch: the layers are linear in the input and in the weight, so
# <grad, v> equals the exact difference quotient of sum(layer(.) * gy) along v.

def check_gradients(layer, x, gy, **call_kwargs):
    rng = np.random.default_rng(4)
    y = layer(x, **call_kwargs)
    gx = layer.backward(gy)
    gw, gb = layer.grad_weight, layer.grad_bias
    w = layer.weight

    def loss(x_, w_, b_):
        layer.weight, layer.bias = w_, b_
        return float(np.sum(layer(x_, **call_kwargs) * gy))

    b = layer.bias
    for grad, direction in ((gx, lambda v: loss(x + v, w, b) - loss(x - v, w, b)),
                            (gw, lambda v: loss(x, w + v, b) - loss(x, w - v, b)),
                            (gb, lambda v: loss(x, w, b + v) - loss(x, w, b - v))):
        v = rng.standard_normal(grad.shape)
        np.testing.assert_allclose(direction(v) / 2, np.sum(grad * v), rtol=1e-10)
    return y


def test_conv_gradients_are_exact_derivatives():
    layer = nn.Conv2d(4, 6, (3, 2), stride=(2, 3), padding=(2, 1), dilation=(2, 1), groups=2,
                      padding_mode="reflect", dtype=np.float64, rng=0)
    x = random_input(layer, np.float64, size=(7, 9))
    gy = np.random.default_rng(1).standard_normal(layer(x).shape)
    check_gradients(layer, x, gy)


def test_conv_transpose_gradients_are_exact_derivatives():
    layer = nn.ConvTranspose3d(4, 2, 3, stride=(2, 1, 3), padding=1, groups=2,
                               dtype=np.float64, rng=0)
    x = random_input(layer, np.float64, size=(3, 4, 2))
    output_size = (6, 4, 5)       # output paddings (1, 0, 2)
    gy = np.random.default_rng(1).standard_normal((2, 2, *output_size))
    check_gradients(layer, x, gy, output_size=output_size)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_unbatched_is_the_batch_of_one(cls):
    layer = cls(2, 4, 3, stride=2, dtype=np.float64, rng=0)
    x = random_input(layer, np.float64, size=(5,) * layer._nd, batch=None)
    y = layer(x)
    gy = np.random.default_rng(1).standard_normal(y.shape)
    gx = layer.backward(gy)
    gw, gb = layer.grad_weight, layer.grad_bias
    np.testing.assert_array_equal(y, layer(x[None])[0])
    np.testing.assert_array_equal(gx, layer.backward(gy[None])[0])
    np.testing.assert_array_equal(gw, layer.grad_weight)
    np.testing.assert_array_equal(gb, layer.grad_bias)


def test_backward_overwrites_and_may_be_repeated():
    layer = nn.Conv1d(2, 3, 3, rng=0)
    y = layer(random_input(layer, np.float32))
    gy = np.ones_like(y)
    gx = layer.backward(gy)
    gw = layer.grad_weight.copy()
    np.testing.assert_array_equal(layer.backward(gy), gx)
    np.testing.assert_array_equal(layer.grad_weight, gw)     # not accumulated


def test_dtypes_follow_the_functional():
    layer = nn.Conv2d(2, 3, 3, rng=0)                        # float32 weights
    x64 = random_input(layer, np.float64)
    y = layer(x64)
    assert y.dtype == np.float64
    gx = layer.backward(np.ones_like(y))
    assert gx.dtype == layer.grad_weight.dtype == layer.grad_bias.dtype == np.float64
    assert layer(x64.astype(np.float32)).dtype == np.float32


def test_same_padding_with_stride_is_allowed():
    layer = nn.Conv2d(1, 1, 3, stride=(2, 3), padding="same", rng=0)
    assert layer(np.ones((1, 1, 7, 8), np.float32)).shape == (1, 1, 4, 3)


def test_failed_forward_keeps_the_last_state():
    layer = nn.Conv2d(2, 3, 3, rng=0)
    y = layer(random_input(layer, np.float32))
    with pytest.raises(ValueError, match="channels"):
        layer(np.ones((1, 5, 6, 6), np.float32))
    assert layer.backward(np.ones_like(y)).shape == (2, 2, 8, 8)


# ---------------------------------------------------------------------------------------------
# Errors

@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_backward_before_forward(cls):
    layer = cls(2, 2, 3, rng=0)
    with pytest.raises(RuntimeError, match=rf"{cls.__name__}\.backward called before forward"):
        layer.backward(np.ones((1, 2) + (3,) * layer._nd))


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_backward_with_wrong_grad_output_shape(cls):
    layer = cls(2, 4, 3, rng=0)
    y = layer(random_input(layer, np.float32, size=(5,) * layer._nd))
    wrong = y.shape[:-1] + (y.shape[-1] + 1,)
    with pytest.raises(ValueError) as info:
        layer.backward(np.ones(wrong))
    message = str(info.value)
    assert cls.__name__ in message
    assert str(y.shape) in message and str(wrong) in message
    with pytest.raises(ValueError, match=re.escape(str(y.shape[1:]))):
        layer.backward(np.ones(y.shape[1:]))                   # unbatched grad, batched input


@pytest.mark.parametrize(
    "cls, kwargs, error, words",
    [
        (nn.Conv2d, dict(in_channels=0), ValueError, "in_channels"),
        (nn.Conv2d, dict(in_channels=3.0), TypeError, "in_channels"),
        (nn.Conv2d, dict(in_channels=True), TypeError, "in_channels"),
        (nn.Conv2d, dict(out_channels=-1), ValueError, "out_channels"),
        (nn.Conv2d, dict(in_channels=4, out_channels=6, groups=4), ValueError, "groups=4"),
        (nn.Conv1d, dict(in_channels=4, out_channels=6, groups=3), ValueError, "groups=3"),
        (nn.Conv2d, dict(groups=0), ValueError, "groups"),
        (nn.Conv2d, dict(groups=1.0), TypeError, "groups"),
        (nn.Conv2d, dict(kernel_size=(3, 3, 3)), ValueError, "kernel_size"),
        (nn.Conv2d, dict(kernel_size=0), ValueError, "kernel_size"),
        (nn.Conv3d, dict(kernel_size="3"), TypeError, "kernel_size"),
        (nn.Conv2d, dict(stride=0), ValueError, "stride"),
        (nn.Conv2d, dict(dilation=(1, 0)), ValueError, "dilation"),
        (nn.Conv2d, dict(padding=-1), ValueError, "padding"),
        (nn.Conv2d, dict(padding="full"), ValueError, "padding"),
        (nn.Conv2d, dict(padding=((1, 2, 3), 0)), ValueError, "padding"),
        (nn.Conv2d, dict(padding_mode="mirror"), ValueError, "padding_mode"),
        (nn.Conv2d, dict(padding_mode=0), TypeError, "padding_mode"),
        (nn.Conv2d, dict(bias="yes"), TypeError, "bias"),
        (nn.Conv2d, dict(dtype=np.int32), TypeError, "dtype"),
        (nn.Conv2d, dict(dtype=np.float16), TypeError, "dtype"),
        (nn.Conv2d, dict(rng="seed"), TypeError, "rng"),
        (nn.Conv2d, dict(rng=-1), ValueError, "rng"),
        (nn.ConvTranspose2d, dict(padding="same"), ValueError, "padding"),
        (nn.ConvTranspose2d, dict(padding_mode="reflect"), ValueError, "padding_mode"),
        (nn.ConvTranspose2d, dict(stride=2, output_padding=2), ValueError, "output_padding"),
        (nn.ConvTranspose2d, dict(output_padding=1), ValueError, "output_padding"),
        (nn.ConvTranspose2d, dict(output_padding=-1), ValueError, "output_padding"),
        (nn.ConvTranspose1d, dict(in_channels=4, out_channels=6, groups=4), ValueError,
         "groups=4"),
        (nn.ConvTranspose3d, dict(kernel_size=(2, 2)), ValueError, "kernel_size"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_constructor_errors(cls, kwargs, error, words):
    args = dict(in_channels=2, out_channels=4, kernel_size=3) | kwargs
    with pytest.raises(error) as info:
        cls(**args)
    assert info.value.args[0].startswith(f"{cls.__name__}: ")
    assert words in str(info.value)


def test_unreachable_output_size():
    layer = nn.ConvTranspose1d(2, 2, 3, stride=2)
    with pytest.raises(ValueError, match="output_size"):
        layer(np.ones((1, 2, 4), np.float32), output_size=[11])


# ---------------------------------------------------------------------------------------------
# Attributes and repr

def test_attributes_are_normalised():
    layer = nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=(1, 2))
    assert (layer.kernel_size, layer.stride, layer.padding, layer.dilation) == (
        (3, 3), (2, 2), (1, 1), (1, 2))
    assert nn.Conv2d(2, 4, 3, padding=((1, 1), (2, 2))).padding == (1, 2)
    assert nn.Conv2d(2, 4, 3, padding=((1, 0), (2, 2))).padding == ((1, 0), (2, 2))
    assert nn.Conv1d(2, 4, 3, padding="same").padding == "same"
    assert nn.ConvTranspose3d(2, 4, 3, stride=2, output_padding=(1, 0, 1)).output_padding == (
        1, 0, 1)
    assert nn.Conv3d(2, 4, 3, dtype=None).dtype == np.float32


@pytest.mark.parametrize(
    "layer, text",
    [
        (nn.Conv2d(3, 8, 3), "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1))"),
        (nn.Conv1d(4, 8, 5, stride=2, padding="same", dilation=2, groups=4, bias=False,
                   padding_mode="reflect", dtype=np.float64),
         "Conv1d(4, 8, kernel_size=(5,), stride=(2,), padding='same', dilation=(2,), groups=4,"
         " bias=False, padding_mode='reflect', dtype=float64)"),
        (nn.Conv3d(1, 2, (1, 2, 3), padding=((0, 1), 0, 2)),
         "Conv3d(1, 2, kernel_size=(1, 2, 3), stride=(1, 1, 1), "
         "padding=((0, 1), (0, 0), (2, 2)))"),
        (nn.ConvTranspose2d(3, 8, 3, stride=2, padding=1, output_padding=1),
         "ConvTranspose2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), "
         "output_padding=(1, 1))"),
        (nn.ConvTranspose1d(2, 2, 2), "ConvTranspose1d(2, 2, kernel_size=(2,), stride=(1,))"),
    ],
    ids=["plain", "everything", "pairs", "transpose", "transpose-plain"],
)
def test_repr(layer, text):
    assert repr(layer) == text


def test_repr_matches_torch():
    torch = pytest.importorskip("torch")
    for ours, theirs in [(nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1),
                          torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)),
                         (nn.ConvTranspose3d(4, 8, 2, dilation=2, groups=2, bias=False),
                          torch.nn.ConvTranspose3d(4, 8, 2, dilation=2, groups=2, bias=False))]:
        assert repr(ours) == repr(theirs)


def test_layers_are_exported():
    assert sorted(nn.__all__) == sorted(c.__name__ for c in ALL_CLASSES)
