"""Shared fixtures: per-dtype tolerances, a comparison against the NumPy reference, a seeded
random generator, central differences, and a guard for the thread count."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import loopconv

# The test modules import the NumPy oracle as `reference` (pytest runs with
# --import-mode=importlib, which does not put this directory on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parent))

DTYPES = (np.float32, np.float64)

# Relative to the largest magnitude of the expected array.
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def _assert_close(actual, desired, dtype, rtol=None):
    """`actual` is an ndarray of `dtype` and of the shape of `desired`, and equal to it up to
    the tolerance of `dtype`, relative to the largest magnitude of `desired`."""
    dtype = np.dtype(dtype)
    desired = np.asarray(desired, dtype=np.float64)
    assert isinstance(actual, np.ndarray), type(actual)
    assert actual.dtype == dtype, (actual.dtype, dtype)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    rtol = TOLERANCE[dtype] if rtol is None else rtol
    scale = float(np.max(np.abs(desired))) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale)


def _central_difference(f, x, eps=1e-5):
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


@pytest.fixture(scope="session")
def tolerance():
    """{dtype: relative tolerance}."""
    return TOLERANCE


@pytest.fixture(scope="session")
def assert_close():
    """assert_close(actual, desired, dtype): dtype, shape and values (per-dtype tolerance)."""
    return _assert_close


@pytest.fixture(scope="session")
def central_difference():
    """central_difference(f, x, eps=1e-5): the gradient of the scalar function f at x."""
    return _central_difference


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture
def restore_threads():
    """Lets a test change loopconv's thread count; puts the previous choice back afterwards
    (none, if the count followed OpenMP's limit)."""
    from loopconv import _config

    before = _config._chosen
    yield loopconv.get_num_threads()
    _config._chosen = before
