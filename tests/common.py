"""Helpers that several test modules share; the NumPy oracle itself is in reference.py.

- dtypes and tolerances: `DTYPES`, `DTYPE_PARAMS`, `TOL`, `assert_close`;
- test cases: `case`, `conv_output_shape`, `conv_macs`, `conv_arrays`, `transpose_arrays`;
- gradients: `central_difference`, `assert_gradients_match_central_differences`, `MASKS`,
  `assert_masked_gradients`;
- fresh interpreters: `PACKAGE_HOME`, `run_interpreter`, `run_python`.

reference.py stays apart: it is the oracle, written from the definitions with NumPy alone, so
that it can be read against the formulas and never imports loopconv or pytest.  This module
imports both.  Fixtures (`rng`, `assert_close`, `restore_threads`) are in conftest.py.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import reference

import loopconv
from loopconv import _loops

# ---------------------------------------------------------------------------------------------
# dtypes and tolerances

DTYPES = (np.float32, np.float64)         # computed natively; every other dtype is cast to one
DTYPE_PARAMS = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]

# How far a result may be from the float64 oracle, relative to the largest magnitude of the
# expected array.  Every entry is a sum of K products, and its rounding error is proportional
# to the size of the terms, not of the sum: an entry near zero has as large an error as the
# largest one, so the bound is absolute, scaled by that largest magnitude (no per-entry rtol).
# With unit roundoff u (6.0e-8 in float32, 1.1e-16 in float64), roundings of random sign add
# up like a random walk, to about u * sqrt(K) times that magnitude.  The longest sums of the
# suite are the bias gradients of test_hypothesis.py's large transposed convolutions (3 images
# of up to 31**3 output pixels, K ~ 1e5): u * sqrt(K) = 1.9e-5 in float32, 3.5e-14 in float64.
# Where the expected value is itself a float32 computation (PyTorch's, the im2col peer's, the
# direct loops'), its rounding adds to ours.  Hence the values below.  The largest errors seen
# over 30 seeds of the random tests (test_hypothesis.py and the random geometries of
# test_threads_variants.py) are a third of them: 8.2e-6 in float32 (a compiled variant against
# the direct loops) and 1.6e-14 in float64 (a transposed bias gradient).
TOL = {np.float32: 3e-5, np.float64: 5e-14}


def assert_close(actual, desired, dtype, bound=None):
    """`actual` is an ndarray of `dtype` and of the shape of `desired`, and differs from it by
    at most TOL[dtype] times the largest magnitude of `desired` (an array, or a tensor).

    `bound`, where given, is the same computation on the magnitudes of the operands (each
    entry the sum of the magnitudes of its terms), and its largest entry replaces that of
    `desired`: random geometries find sums that cancel to far less than their terms (a bias
    gradient of a few pixels), whose rounding error is that of the terms."""
    dtype = np.dtype(dtype)
    desired = np.asarray(desired, dtype=np.float64)
    assert isinstance(actual, np.ndarray), type(actual)
    assert actual.dtype == dtype, (actual.dtype, dtype)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    scale = float(np.max(np.abs(desired if bound is None else bound), initial=0.0))
    np.testing.assert_allclose(actual, desired, rtol=0, atol=TOL[dtype.type] * scale)


# ---------------------------------------------------------------------------------------------
# Test cases: a geometry, and random arrays for it

def case(id, x_shape, w_shape, **kw):
    """A convolution of an input of x_shape with a weight of w_shape and keyword arguments kw,
    as a pytest parameter named `id` (for parametrize("x_shape, w_shape, kw", ...))."""
    return pytest.param(x_shape, w_shape, kw, id=id)


def grouped_case(id, batch, groups, cin, cout, size, kernel, stride, padding, dilation):
    """`case` of a convolution of `batch` images in `groups` groups of cin input and cout output
    channels, with per-axis sizes, kernel, stride, padding pairs and dilation."""
    return case(id, (batch, groups * cin, *size), (groups * cout, cin, *kernel),
                stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                groups=groups)


def conv_output_shape(x_shape, w_shape, kw):
    """The output shape of the convolution `case` describes (any padding, also 'same')."""
    stride, pairs, dilation = reference.geometry(x_shape[2:], w_shape[2:], kw.get("stride", 1),
                                                 kw.get("padding", 0), kw.get("dilation", 1))
    return (x_shape[0], w_shape[0],
            *reference.output_size(x_shape[2:], w_shape[2:], stride, pairs, dilation))


def conv_macs(x_shape, w_shape, kw):
    """Multiply-adds of the forward pass (the quantity loopconv._loops sizes problems by)."""
    return math.prod(conv_output_shape(x_shape, w_shape, kw)) * math.prod(w_shape[1:])


def chosen_loops(y_shape, w_shape, stride, groups):
    """What loopconv._loops.choose picks for a convolution with output (N, O, *spatial)
    `y_shape`, weight `w_shape` and per-axis `stride`, 1 to 3 spatial axes."""
    fill = (1,) * (5 - len(y_shape))
    return _loops.choose(tuple(y_shape[:2]) + fill + tuple(y_shape[2:]),
                         tuple(w_shape[:2]) + fill + tuple(w_shape[2:]),
                         fill + tuple(stride), groups)


def conv_loops(x_shape, w_shape, kw):
    """The family of loops (`_loops.direct` or `_loops.tiled`) that loopconv._loops.choose
    picks for the convolution `case` describes."""
    stride = reference.per_axis(kw.get("stride", 1), len(x_shape) - 2)
    return chosen_loops(conv_output_shape(x_shape, w_shape, kw), w_shape, stride,
                        kw.get("groups", 1)).family


def conv_arrays(rng, x_shape, w_shape, kw, dtype):
    """Standard normal input, weight, bias (C_out,) and grad_output (of the output's shape) of
    a convolution, drawn in that order from `rng`, as `dtype`."""
    shapes = (x_shape, w_shape, (w_shape[0],), conv_output_shape(x_shape, w_shape, kw))
    return tuple(rng.standard_normal(s).astype(dtype) for s in shapes)


def transpose_arrays(rng, x_shape, w_shape, kw, dtype):
    """Standard normal input, weight (C_in, C_out // groups, *kernel), bias (C_out,) and
    grad_output (of the output's shape) of a transposed convolution, as `dtype`."""
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[1] * kw.get("groups", 1)).astype(dtype)
    gy = rng.standard_normal(reference.conv_transpose(x, w, None, **kw).shape).astype(dtype)
    return x, w, b, gy


# ---------------------------------------------------------------------------------------------
# Gradients

def central_difference(f, x, eps=1e-5):
    """d f / d x by central differences, element by element: f maps an array like x (float64)
    to a scalar."""
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    for i in np.ndindex(*x.shape):
        saved = x[i]
        x[i] = saved + eps
        up = f(x.copy())
        x[i] = saved - eps
        down = f(x.copy())
        x[i] = saved
        grad[i] = (up - down) / (2 * eps)
    return grad


def assert_gradients_match_central_differences(forward, backward, x, w, b, g):
    """backward(x, w, g) -> (grad_input, grad_weight, grad_bias) are the central differences
    of sum(forward(x, w, b) * g), in float64.

    The loss is linear in each argument, so the differences have no truncation error: what is
    left is the rounding of the loss, u * |loss| / eps ~ 1e-16 * 1e2 / 1e-5 = 1e-9."""
    def loss(x_, w_, b_):
        return float(np.sum(forward(x_, w_, b_) * g))

    gx, gw, gb = backward(x, w, g)
    tol = dict(rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gx, central_difference(lambda v: loss(v, w, b), x), **tol)
    np.testing.assert_allclose(gw, central_difference(lambda v: loss(x, v, b), w), **tol)
    np.testing.assert_allclose(gb, central_difference(lambda v: loss(x, w, v), b), **tol)


# Every output_mask of a backward function, named by the gradients it asks for ("x-b": input
# and bias).
MASKS = [pytest.param(m, id="".join("xwb"[i] if v else "-" for i, v in enumerate(m)))
         for m in itertools.product([False, True], repeat=3)]


def assert_masked_gradients(got, mask, expected):
    """`got`, a backward function's result for output_mask=mask, holds the float64 gradients
    `expected` where the mask asks for them and None elsewhere."""
    assert isinstance(got, tuple) and len(got) == 3
    for wanted, value, ref in zip(mask, got, expected):
        if wanted:
            assert_close(value, ref, np.float64)
        else:
            assert value is None


# ---------------------------------------------------------------------------------------------
# Fresh interpreters (for process-wide state: environment variables, fork, the command line)

# The folder holding the loopconv under test.  Children run from it so that they import the
# same package (from a source checkout's root, `python -c` would import the unbuilt sources).
PACKAGE_HOME = os.path.dirname(os.path.dirname(os.path.abspath(loopconv.__file__)))

# loopconv's own settings; a child starts without them unless a test sets them.
LOOPCONV_VARIABLES = ("LOOPCONV_NUM_THREADS", "LOOPCONV_CPU")


def run_interpreter(*args, env=None, timeout=120):
    """`python *args` in PACKAGE_HOME, with this process's environment changed by `env` (a
    value of None removes the variable); the finished process, with its text output."""
    full_env = {k: v for k, v in os.environ.items() if k not in LOOPCONV_VARIABLES}
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    return subprocess.run([sys.executable, *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout, cwd=PACKAGE_HOME)


def run_python(code, env=None, timeout=120):
    """Run `code` (dedented) in a fresh interpreter; its stdout (the test fails on an error).
    DeprecationWarnings, which Python shows for code run as __main__, are left out."""
    done = run_interpreter("-W", "ignore::DeprecationWarning", "-c", textwrap.dedent(code),
                           env=env, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
