"""The README's Python examples run, in order, and their assertions hold."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text):
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.mark.skipif(not README.exists(), reason="README.md is not beside the tests")
def test_readme_examples_run():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 3
    namespace = {}
    for block in blocks:
        if "loopconv.dask" in block and importlib.util.find_spec("dask") is None:
            continue        # the dask extra is not installed: its section's example cannot run
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 -- our own README
    # the tour's layer step ran: the weight was updated with a gradient of its shape
    assert namespace["conv"].grad_weight.shape == namespace["conv"].weight.shape
    assert namespace["gw_seed"].shape == (1, 1, 2, 2)
