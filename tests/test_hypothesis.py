"""Hypothesis-generated convolutions (any nd, shape, stride, dilation, groups, asymmetric
padding, padding mode, dtype, memory layout, read-only arrays) against the NumPy reference;
inputs are never modified."""

from __future__ import annotations

import math

import numpy as np
import reference
from common import DTYPES, conv_arrays, transpose_arrays
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import loopconv
from loopconv._loops import SMALL_PROBLEM

LAYOUTS = ("contiguous", "fortran", "step", "transposed", "negative")


def with_layout(a, layout, read_only):
    """An array equal to `a` with the given memory layout (a view of a larger or permuted
    buffer), optionally read-only."""
    if layout == "fortran":
        out = np.asfortranarray(a)
    elif layout == "step":
        buffer = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), a.dtype)
        buffer[..., 1::2] = a
        out = buffer[..., 1::2]
    elif layout == "transposed":
        out = np.ascontiguousarray(np.swapaxes(a, 0, -1)).swapaxes(0, -1)
    elif layout == "negative":
        out = np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    else:
        out = a.copy()
    assert np.array_equal(out, a)
    if read_only:
        out.flags.writeable = False
    return out


@st.composite
def arrays_like(draw, a):
    return with_layout(a, draw(st.sampled_from(LAYOUTS)), draw(st.booleans()))


@st.composite
def geometry(draw, large=False):
    """A convolution's sizes; `large` ones are sized for the tiled loops."""
    nd = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    per_group = st.integers(4, 14) if large else st.integers(1, 3)
    c_in = groups * draw(per_group)
    c_out = groups * draw(per_group)
    axis = st.integers(1, 3)
    kernel = tuple(draw(axis) for _ in range(nd))
    stride = tuple(draw(axis) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    sizes = {1: (40, 200), 2: (8, 22), 3: (4, 9)}[nd] if large else (1, {1: 12, 2: 7, 3: 4}[nd])
    size = tuple(draw(st.integers(*sizes)) for _ in range(nd))
    pairs = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(nd))
    return dict(nd=nd, n=draw(st.integers(2, 3) if large else st.integers(0, 2)),
                groups=groups, c_in=c_in, c_out=c_out, kernel=kernel, stride=stride,
                dilation=dilation, size=size, pairs=pairs,
                dtype=draw(st.sampled_from(DTYPES)),
                seed=draw(st.integers(0, 2**32 - 1)))


def padding_fits(size, pairs, mode):
    if mode == "reflect":
        return all(max(p) < n for n, p in zip(size, pairs))
    if mode == "circular":
        return all(max(p) <= n for n, p in zip(size, pairs))
    return True


def with_drawn_layouts(data, *arrays):
    """Each array (None stays None) as a drawn layout, and a check that none of them changed."""
    views = [None if a is None else data.draw(arrays_like(a)) for a in arrays]
    copies = [(v, v.copy()) for v in views if v is not None]

    def unchanged():
        return all(np.array_equal(v, c) for v, c in copies)

    return views, unchanged


MODES = st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"])


@settings(max_examples=300, deadline=None)
@given(geo=geometry(), mode=MODES, with_bias=st.booleans(), data=st.data())
def test_conv_family(assert_close, geo, mode, with_bias, data):
    check_conv_family(assert_close, geo, mode, with_bias, data)


@settings(max_examples=60, deadline=None)
@given(geo=geometry(large=True), mode=MODES, with_bias=st.booleans(), data=st.data())
def test_conv_family_tiled_sizes(assert_close, geo, mode, with_bias, data):
    check_conv_family(assert_close, geo, mode, with_bias, data, large=True)


def check_conv_family(assert_close, geo, mode, with_bias, data, large=False):
    nd, dtype = geo["nd"], geo["dtype"]
    out = reference.output_size(geo["size"], geo["kernel"], geo["stride"], geo["pairs"],
                                geo["dilation"])
    assume(all(o >= 1 for o in out))
    assume(padding_fits(geo["size"], geo["pairs"], mode))
    if large:
        assume(geo["n"] * geo["c_out"] * math.prod(out) * geo["c_in"] // geo["groups"]
               * math.prod(geo["kernel"]) >= SMALL_PROBLEM)
    kw = dict(stride=geo["stride"], padding=geo["pairs"], dilation=geo["dilation"],
              groups=geo["groups"])
    x, w, b, g = conv_arrays(np.random.default_rng(geo["seed"]),
                             (geo["n"], geo["c_in"], *geo["size"]),
                             (geo["c_out"], geo["c_in"] // geo["groups"], *geo["kernel"]),
                             kw, dtype)
    b = b if with_bias else None
    expected = reference.conv(x, w, b, padding_mode=mode, **kw)
    (xv, wv, gv, bv), unchanged = with_drawn_layouts(data, x, w, g, b)

    conv = getattr(loopconv, f"conv{nd}d")
    backward = getattr(loopconv, f"conv{nd}d_backward")
    ax, aw, ab, ag = (None if a is None else np.abs(a) for a in (x, w, b, g))
    assert_close(conv(xv, wv, bv, padding_mode=mode, **kw), expected, dtype,
                 bound=reference.conv(ax, aw, ab, padding_mode=mode, **kw))
    got = backward(xv, wv, gv, padding_mode=mode, **kw)
    for value, ref, bound in zip(got, reference.conv_backward(x, w, g, padding_mode=mode, **kw),
                                 reference.conv_backward(ax, aw, ag, padding_mode=mode, **kw)):
        assert_close(value, ref, dtype, bound)
    if mode == "zeros":
        gx = getattr(loopconv, f"conv{nd}d_input")(x.shape, wv, gv, **kw)
        gw = getattr(loopconv, f"conv{nd}d_weight")(xv, w.shape, gv, **kw)
        assert_close(gx, reference.conv_input(x.shape, w, g, **kw), dtype,
                     reference.conv_input(x.shape, aw, ag, **kw))
        assert_close(gw, reference.conv_weight(x, w.shape, g, **kw), dtype,
                     reference.conv_weight(ax, w.shape, ag, **kw))
    assert unchanged()


@settings(max_examples=200, deadline=None)
@given(geo=geometry(), with_bias=st.booleans(), data=st.data())
def test_conv_transpose_family(assert_close, geo, with_bias, data):
    check_conv_transpose_family(assert_close, geo, with_bias, data)


@settings(max_examples=50, deadline=None)
@given(geo=geometry(large=True), with_bias=st.booleans(), data=st.data())
def test_conv_transpose_family_tiled_sizes(assert_close, geo, with_bias, data):
    check_conv_transpose_family(assert_close, geo, with_bias, data, large=True)


def check_conv_transpose_family(assert_close, geo, with_bias, data, large=False):
    nd, dtype = geo["nd"], geo["dtype"]
    limits = [max(s, d) for s, d in zip(geo["stride"], geo["dilation"])]
    output_padding = tuple(data.draw(st.integers(0, m - 1)) for m in limits)
    out = reference.transpose_output_size(geo["size"], geo["kernel"], geo["stride"],
                                          geo["pairs"], geo["dilation"], output_padding)
    assume(all(o >= 1 for o in out))
    if large:
        assume(geo["n"] * geo["c_in"] * math.prod(geo["size"]) * geo["c_out"] // geo["groups"]
               * math.prod(geo["kernel"]) >= SMALL_PROBLEM)
    kw = dict(stride=geo["stride"], padding=geo["pairs"], output_padding=output_padding,
              groups=geo["groups"], dilation=geo["dilation"])
    x, w, b, g = transpose_arrays(np.random.default_rng(geo["seed"]),
                                  (geo["n"], geo["c_in"], *geo["size"]),
                                  (geo["c_in"], geo["c_out"] // geo["groups"], *geo["kernel"]),
                                  kw, dtype)
    b = b if with_bias else None
    expected = reference.conv_transpose(x, w, b, **kw)
    (xv, wv, gv, bv), unchanged = with_drawn_layouts(data, x, w, g, b)

    transpose = getattr(loopconv, f"conv_transpose{nd}d")
    backward = getattr(loopconv, f"conv_transpose{nd}d_backward")
    ax, aw, ab, ag = (None if a is None else np.abs(a) for a in (x, w, b, g))
    assert_close(transpose(xv, wv, bv, **kw), expected, dtype,
                 bound=reference.conv_transpose(ax, aw, ab, **kw))
    got = backward(xv, wv, gv, **kw)
    for value, ref, bound in zip(got, reference.conv_transpose_backward(x, w, g, **kw),
                                 reference.conv_transpose_backward(ax, aw, ag, **kw)):
        assert_close(value, ref, dtype, bound)
    assert unchanged()
