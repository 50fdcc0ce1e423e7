"""Every docstring example of the package's modules runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import loopconv
from loopconv import _config, _loops

# loopconv.__main__ is left out: importing it runs the command line.
MODULES = ["loopconv"] + sorted(
    info.name for info in pkgutil.walk_packages(loopconv.__path__, "loopconv.")
    if info.name != "loopconv.__main__")

# modules whose docstrings are meant to have examples: finding none there is a failure
EXAMPLES_EXPECTED = {"loopconv", "loopconv.functional", "loopconv.nn", "loopconv._config"}
# the tiled loops built for an instruction set this CPU lacks must not even be imported
RUNNABLE_VARIANTS = {module.__name__ for module in _loops.variants().values()}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, monkeypatch):
    if name.startswith("loopconv._loops.tiled_") and name not in RUNNABLE_VARIANTS:
        pytest.skip("built for an instruction set this CPU does not have")
    if name == "loopconv.dask":
        pytest.importorskip("dask", reason="loopconv.dask needs the dask extra")
    # the set_num_threads example pins the count it read: restore the choice after
    monkeypatch.setattr(_config, "_chosen", _config._chosen)
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
    if name in EXAMPLES_EXPECTED:
        assert runner.tries > 0, f"{name}: no docstring examples found"
