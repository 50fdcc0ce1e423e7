"""The checked problem (loopconv._problem): hashable, equal for equal arguments however they
are spelled, its derived sizes those of the definitions, and the plan cache's key."""

import itertools

import numpy as np
import pytest

from loopconv import _problem, functional, nn


def conv_problem(x_shape=(2, 4, 9, 8), w_shape=(6, 2, 3, 2), **kw):
    kw = dict(dict(stride=1, padding=0, dilation=1, groups=2, padding_mode="zeros"), **kw)
    return _problem.conv("conv2d", 2, np.zeros(x_shape, np.float32),
                         np.zeros(w_shape, np.float32), None, kw["stride"], kw["padding"],
                         kw["dilation"], kw["groups"], kw["padding_mode"])[0]


def test_problem_is_hashable_and_equal_for_equal_arguments():
    spellings = [dict(stride=2, padding=1), dict(stride=(2, 2), padding=(1, 1), groups=2),
                 dict(stride=[2, 2], padding=((1, 1), (1, 1)), groups=np.int64(2))]
    problems = [conv_problem(**kw) for kw in spellings]
    assert len(set(problems)) == 1
    assert {hash(p) for p in problems} == {hash(problems[0])}
    assert problems[0] != conv_problem(stride=2, padding=(1, 2))
    assert problems[0] != conv_problem(stride=2, padding=1, padding_mode="reflect")
    with pytest.raises(AttributeError):
        problems[0].groups = 3


@pytest.mark.parametrize("stride, padding, dilation",
                         list(itertools.product([1, 2, 3], [0, 1, (2, 1)], [1, 2])))
def test_output_size_is_the_formula(stride, padding, dilation):
    p = conv_problem(stride=stride, padding=padding, dilation=dilation)
    for n, k, s, (b, a), d, o in zip(p.x_shape[2:], p.w_shape[2:], p.stride, p.pads,
                                     p.dilation, p.output_size):
        assert o == (n + b + a - d * (k - 1) - 1) // s + 1
    assert p.y_shape == (2, 6, *p.output_size)
    assert p.shapes5 == ((2, 4, 1, 9, 8), (6, 2, 1, 3, 2), (2, 6, 1, *p.output_size))
    stride3, pad3, dil3, groups = p.loop_args
    assert pad3 == (0, *(b for b, _ in p.pads)) and dil3 == (1, *p.dilation) and groups == 2
    assert stride3 == (1, *(1 if o == 1 else s for s, o in zip(p.stride, p.output_size)))


@pytest.mark.parametrize("stride, dilation, output_padding",
                         [(1, 1, 0), (2, 1, 1), (3, 1, (2, 0)), (1, 2, 1), (2, 3, (2, 1))])
def test_transposed_output_size_is_the_formula(stride, dilation, output_padding):
    x = np.zeros((1, 4, 5, 6), np.float32)
    w = np.zeros((4, 3, 3, 2), np.float32)
    p = _problem.conv_transpose("conv_transpose2d", 2, x, w, None, stride, 1, output_padding, 1,
                                dilation)[0]
    op = (output_padding,) * 2 if isinstance(output_padding, int) else output_padding
    expected = tuple((n - 1) * p.stride[i] - 2 + p.dilation[i] * (k - 1) + op[i] + 1
                     for i, (n, k) in enumerate(zip(x.shape[2:], w.shape[2:])))
    assert p.x_shape == (1, 3, *expected) and p.y_shape == x.shape
    assert p.transposed_output_size(op) == expected
    assert p.output_padding == op
    assert functional.conv_transpose2d(x, w, None, stride, 1, output_padding, 1,
                                       dilation).shape == p.x_shape


def test_the_plan_is_made_from_and_cached_by_the_problem():
    """Calls spelling one problem differently, and the families that share its convolution,
    share one plan, which holds the problem."""
    x = np.ones((1, 2, 7, 7), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    functional._PLANS.clear()
    functional._BY_PROBLEM.clear()
    functional.conv2d(x, w, stride=2, padding=1)
    functional.conv2d(x, w, stride=(2, 2), padding=((1, 1), (1, 1)))
    gy = np.ones((1, 3, 4, 4), np.float32)
    functional.conv2d_backward(x, w, gy, stride=2, padding=1)
    assert len(functional._BY_PROBLEM) == 1
    (problem, plan), = functional._BY_PROBLEM.items()
    assert plan.problem is problem
    assert problem == conv_problem(x.shape, w.shape, groups=1, stride=2, padding=1)
    assert all(p is plan for p in functional._PLANS.values())


def test_tuple_parameters_are_planned_and_malformed_ones_still_refused():
    """Stride, padding and dilation given as tuples, as PyTorch's layers keep them, are plan
    keys like ints (a later call skips the checks); a malformed tuple still raises, also
    after a well-formed call has left its plan."""
    x = np.ones((1, 2, 7, 7), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    gy = np.ones((1, 3, 4, 4), np.float32)
    functional._PLANS.clear()
    kw = dict(stride=(2, 2), padding=((1, 1), (1, 1)), dilation=(1, 1))
    y = functional.conv2d(x, w, **kw)
    grads = functional.conv2d_backward(x, w, gy, **kw)
    gx = functional.conv2d_input(x.shape, w, gy, **kw)
    gw = functional.conv2d_weight(x, w.shape, gy, **kw)
    assert len(functional._PLANS) == 4
    np.testing.assert_array_equal(functional.conv2d(x, w, **kw), y)
    np.testing.assert_array_equal(functional.conv2d(x, w, stride=2, padding=1), y)
    for again, first in zip(functional.conv2d_backward(x, w, gy, **kw), grads):
        np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(functional.conv2d_input(x.shape, w, gy, **kw), gx)
    np.testing.assert_array_equal(functional.conv2d_weight(x, w.shape, gy, **kw), gw)
    with pytest.raises(ValueError, match="conv2d: stride needs 1 or 2 values"):
        functional.conv2d(x, w, stride=(2, 2, 2), padding=((1, 1), (1, 1)))
    with pytest.raises(ValueError, match="conv2d: padding entry"):
        functional.conv2d(x, w, stride=(2, 2), padding=((1, 1), (1, 1, 1)))
    with pytest.raises(TypeError, match="conv2d: stride must be an int"):
        functional.conv2d(x, w, stride=(2, True), padding=((1, 1), (1, 1)))
    with pytest.raises(ValueError, match="conv2d: padding must be >= 0"):
        functional.conv2d(x, w, stride=(2, 2), padding=((1, -1), (1, 1)))
    with pytest.raises(ValueError, match="conv2d_backward: dilation must be >= 1"):
        functional.conv2d_backward(x, w, gy, stride=(2, 2), padding=1, dilation=(1, 0))


def test_layer_reuses_its_problem_for_backward():
    """A layer with a padding mode has no plan; backward reuses the problem of forward."""
    layer = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", rng=0)
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    y = layer(x)
    problem = layer._problem
    assert layer._plan is None and problem.border
    np.testing.assert_array_equal(layer(x), y)
    assert layer._problem is problem
    gy = np.ones_like(y)
    gx = layer.backward(gy)
    expected = functional.conv2d_backward(x, layer.weight, gy, padding=1, padding_mode="reflect")
    for got, want in zip((gx, layer.grad_weight, layer.grad_bias), expected):
        np.testing.assert_array_equal(got, want)
