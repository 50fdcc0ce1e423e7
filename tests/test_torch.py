"""PyTorch as a second oracle: seeded random configurations of every function, in both dtypes,
against torch autograd, torch.nn.grad and F.conv_transposeNd."""

from __future__ import annotations

import numpy as np
import pytest
from common import DTYPE_PARAMS, conv_arrays, transpose_arrays

import loopconv

torch = pytest.importorskip("torch")
F = torch.nn.functional

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
TORCH_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate",
              "circular": "circular"}


def lc(name, nd, suffix=""):
    return getattr(loopconv, f"{name}{nd}d{suffix}")


def torch_conv(nd):
    return getattr(F, f"conv{nd}d")


def torch_pad_list(pairs):
    """(before, after) pairs per spatial axis as F.pad's flat list, last axis first."""
    return [p for pair in reversed(pairs) for p in pair]


def tensor(a, requires_grad=False):
    return torch.tensor(np.ascontiguousarray(a), requires_grad=requires_grad)


# ---------------------------------------------------------------------------------------------
# Random configurations

def _channels_and_kernel(rng, large):
    """nd, groups, c_in, c_out, kernel, stride and dilation of a random configuration."""
    nd = int(rng.integers(1, 4))
    groups = int(rng.choice([1, 1, 2, 3]))
    c_in = groups * int(rng.integers(1, 4)) * (4 if large else 1)
    c_out = groups * int(rng.integers(1, 4)) * (4 if large else 1)
    kernel = tuple(int(k) for k in rng.integers(1, 4, nd))
    stride = tuple(int(s) for s in rng.integers(1, 4, nd))
    dilation = tuple(int(d) for d in rng.integers(1, 3, nd))
    return nd, groups, c_in, c_out, kernel, stride, dilation


def conv_config(seed):
    rng = np.random.default_rng(seed)
    large = seed % 5 == 4
    nd, groups, c_in, c_out, kernel, stride, dilation = _channels_and_kernel(rng, large)
    pairs = tuple((int(b), int(a)) for b, a in rng.integers(0, 3, (nd, 2)))
    mode = str(rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"]))
    extra = {1: 30, 2: 10, 3: 4}[nd] if large else {1: 8, 2: 5, 3: 3}[nd]
    size = tuple(max(d * (k - 1) + 1, b + 1, a + 1) + int(rng.integers(0, extra))
                 for k, d, (b, a) in zip(kernel, dilation, pairs))
    return dict(nd=nd, n=int(rng.integers(1, 3)), c_in=c_in, c_out=c_out, size=size,
                kernel=kernel, stride=stride, dilation=dilation, pairs=pairs, groups=groups,
                mode=mode)


def transpose_config(seed):
    rng = np.random.default_rng(1000 + seed)
    large = seed % 5 == 4
    nd, groups, c_in, c_out, kernel, stride, dilation = _channels_and_kernel(rng, large)
    size = tuple(int(n) for n in rng.integers(1, {1: 30, 2: 8, 3: 4}[nd] if large else 5, nd))
    output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
    padding = tuple(int(rng.integers(0, ((n - 1) * s + d * (k - 1)) // 2 + 1))
                    for n, k, s, d in zip(size, kernel, stride, dilation))
    return dict(nd=nd, n=int(rng.integers(1, 3)), c_in=c_in, c_out=c_out, size=size,
                kernel=kernel, stride=stride, dilation=dilation, padding=padding,
                output_padding=output_padding, groups=groups)


def config_id(cfg):
    return "-".join([f"{cfg['nd']}d", f"g{cfg['groups']}", cfg.get("mode", "t"),
                     "x".join(map(str, cfg["size"]))])


CONV_CONFIGS = [conv_config(seed) for seed in range(30)]
TRANSPOSE_CONFIGS = [transpose_config(seed) for seed in range(25)]


def shapes(cfg):
    """The input and weight shapes of a configuration (a transposed one's weight is
    (C_in, C_out // groups, *kernel))."""
    x_shape = (cfg["n"], cfg["c_in"], *cfg["size"])
    if "output_padding" in cfg:
        return x_shape, (cfg["c_in"], cfg["c_out"] // cfg["groups"], *cfg["kernel"])
    return x_shape, (cfg["c_out"], cfg["c_in"] // cfg["groups"], *cfg["kernel"])


# ---------------------------------------------------------------------------------------------
# Convolutions: torch pads with F.pad and convolves with padding 0

def torch_conv_autograd(cfg, x, w, b, g):
    xt, wt, bt = tensor(x, True), tensor(w, True), tensor(b, True)
    padded = F.pad(xt, torch_pad_list(cfg["pairs"]), mode=TORCH_MODE[cfg["mode"]])
    y = torch_conv(cfg["nd"])(padded, wt, bt, stride=cfg["stride"], dilation=cfg["dilation"],
                              groups=cfg["groups"])
    if g is not None:
        y.backward(tensor(g))
    return y.detach().numpy(), xt.grad, wt.grad, bt.grad


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=config_id)
def test_conv_passes(assert_close, cfg, dtype):
    nd = cfg["nd"]
    kw = dict(stride=cfg["stride"], padding=cfg["pairs"], dilation=cfg["dilation"],
              groups=cfg["groups"])
    x, w, b, g = conv_arrays(np.random.default_rng(0), *shapes(cfg), kw, dtype)
    expected_y, *_ = torch_conv_autograd(cfg, x, w, b, None)
    y = lc("conv", nd)(x, w, b, padding_mode=cfg["mode"], **kw)
    assert_close(y, expected_y, dtype)

    _, tx, tw, tb = torch_conv_autograd(cfg, x, w, b, g)
    gx, gw, gb = lc("conv", nd, "_backward")(x, w, g, padding_mode=cfg["mode"], **kw)
    assert_close(gx, tx.numpy(), dtype)
    assert_close(gw, tw.numpy(), dtype)
    assert_close(gb, tb.numpy(), dtype)
    if cfg["mode"] == "zeros":
        assert_close(lc("conv", nd, "_input")(x.shape, w, g, **kw), tx.numpy(), dtype)
        assert_close(lc("conv", nd, "_weight")(x, w.shape, g, **kw), tw.numpy(), dtype)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("cfg", [c for c in CONV_CONFIGS if c["mode"] == "zeros"],
                         ids=config_id)
def test_torch_nn_grad_symmetric_padding(assert_close, cfg, dtype):
    """torch.nn.grad.convNd_input / convNd_weight with symmetric padding (their only kind)."""
    nd = cfg["nd"]
    padding = tuple(b for b, _ in cfg["pairs"])
    kw = dict(stride=cfg["stride"], padding=padding, dilation=cfg["dilation"],
              groups=cfg["groups"])
    x, w, _, g = conv_arrays(np.random.default_rng(0), *shapes(cfg), kw, dtype)
    grad = torch.nn.grad
    tx = getattr(grad, f"conv{nd}d_input")(x.shape, tensor(w), tensor(g), **kw)
    tw = getattr(grad, f"conv{nd}d_weight")(tensor(x), w.shape, tensor(g), **kw)
    assert_close(lc("conv", nd, "_input")(x.shape, w, g, **kw), tx.numpy(), dtype)
    assert_close(lc("conv", nd, "_weight")(x, w.shape, g, **kw), tw.numpy(), dtype)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("nd, size, kernel, dilation", [
    (1, (9,), (4,), (1,)),
    (1, (10,), (3,), (3,)),
    (2, (6, 7), (3, 4), (1, 1)),
    (2, (8, 5), (2, 3), (2, 1)),
    (3, (4, 5, 3), (2, 3, 2), (1, 1, 2)),
    (2, (20, 20), (4, 3), (1, 2)),
], ids=["1d-even", "1d-dilated", "2d-odd-even", "2d-dilated", "3d", "2d-large"])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_same_stride1_equals_torch_same(assert_close, nd, size, kernel, dilation, mode,
                                        dtype):
    c = 8 if size == (20, 20) else 2
    x, w, b, g = conv_arrays(np.random.default_rng(7), (2, c, *size), (3, c, *kernel),
                             dict(padding="same", dilation=dilation), dtype)
    xt, wt, bt = tensor(x, True), tensor(w, True), tensor(b, True)
    layer = getattr(torch.nn, f"Conv{nd}d")(c, 3, kernel, padding="same", dilation=dilation,
                                            padding_mode=mode, dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():
        layer.weight.copy_(wt)
        layer.bias.copy_(bt)
    yt = layer(xt)
    y = lc("conv", nd)(x, w, b, padding="same", dilation=dilation, padding_mode=mode)
    assert_close(y, yt.detach().numpy(), dtype)
    yt.backward(tensor(g))
    gx, gw, gb = lc("conv", nd, "_backward")(x, w, g, padding="same", dilation=dilation,
                                              padding_mode=mode)
    assert_close(gx, xt.grad.numpy(), dtype)
    assert_close(gw, layer.weight.grad.numpy(), dtype)
    assert_close(gb, layer.bias.grad.numpy(), dtype)


# ---------------------------------------------------------------------------------------------
# Transposed convolutions

@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("cfg", TRANSPOSE_CONFIGS, ids=config_id)
def test_conv_transpose_passes(assert_close, cfg, dtype):
    nd = cfg["nd"]
    kw = dict(stride=cfg["stride"], padding=cfg["padding"],
              output_padding=cfg["output_padding"], groups=cfg["groups"],
              dilation=cfg["dilation"])
    x, w, b, g = transpose_arrays(np.random.default_rng(1), *shapes(cfg), kw, dtype)
    xt, wt, bt = tensor(x, True), tensor(w, True), tensor(b, True)
    yt = getattr(F, f"conv_transpose{nd}d")(xt, wt, bt, **kw)
    y = lc("conv_transpose", nd)(x, w, b, **kw)
    assert_close(y, yt.detach().numpy(), dtype)
    yt.backward(tensor(g))
    gx, gw, gb = lc("conv_transpose", nd, "_backward")(x, w, g, **kw)
    assert_close(gx, xt.grad.numpy(), dtype)
    assert_close(gw, wt.grad.numpy(), dtype)
    assert_close(gb, bt.grad.numpy(), dtype)
    sized = lc("conv_transpose", nd)(
        x, w, b, **{k: v for k, v in kw.items() if k != "output_padding"},
        output_size=y.shape[2:])
    np.testing.assert_array_equal(sized, y)


def test_configurations_cover_the_features():
    """The random configurations include what they are meant to (guards the generator)."""
    assert {c["nd"] for c in CONV_CONFIGS} == {1, 2, 3}
    assert {c["nd"] for c in TRANSPOSE_CONFIGS} == {1, 2, 3}
    assert {c["mode"] for c in CONV_CONFIGS} == {"zeros", "reflect", "replicate", "circular"}
    assert any(c["groups"] > 1 for c in CONV_CONFIGS)
    assert any(c["groups"] > 1 for c in TRANSPOSE_CONFIGS)
    assert any(b != a for c in CONV_CONFIGS for b, a in c["pairs"])
    assert any(p >= s for c in TRANSPOSE_CONFIGS
               for p, s in zip(c["output_padding"], c["stride"]))
    assert any(max(c["stride"]) > 1 and max(c["dilation"]) > 1 for c in CONV_CONFIGS)
