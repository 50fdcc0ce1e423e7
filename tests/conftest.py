"""Fixtures: a seeded random generator, the comparison against the NumPy reference, and a guard
for the thread count.  Helpers that are not fixtures are in common.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import loopconv

# The test modules import the NumPy oracle as `reference` and the shared helpers as `common`
# (pytest runs with --import-mode=importlib, which does not put this directory on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (found through the line above)


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture(scope="session")
def assert_close():
    """assert_close(actual, desired, dtype): dtype, shape and values (common.TOL[dtype])."""
    return common.assert_close


@pytest.fixture
def restore_threads():
    """Lets a test change loopconv's thread count; puts the previous choice back afterwards
    (none, if the count followed OpenMP's limit)."""
    from loopconv import _config

    before = _config._chosen
    yield loopconv.get_num_threads()
    _config._chosen = before
