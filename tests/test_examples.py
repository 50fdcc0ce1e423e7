"""The digits example (examples/train_digits.py), run briefly through its functions.

The loops run on one thread here: results are bit-identical for any thread count, and one
thread keeps the timing steady when other work occupies a core.
"""

import importlib.util
from pathlib import Path

import pytest

import loopconv

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"


@pytest.fixture(scope="module")
def example():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread(restore_threads):
    loopconv.set_num_threads(1)


def test_short_training_learns(example, one_thread):
    data = example.load_data(seed=0, n_samples=600)
    x_train, y_train, x_test, y_test = data
    assert x_train.shape == (450, 1, 8, 8) and x_test.shape == (150, 1, 8, 8)
    assert len(y_train) == 450 and len(y_test) == 150
    history = example.train(example.build_model(seed=0), data, epochs=3, seed=0, log=None)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    first, last = history[0], history[-1]
    assert last["loss"] < 0.7 * first["loss"]
    assert last["train_accuracy"] > 0.5 and last["test_accuracy"] > 0.5    # chance is 0.1


def test_training_is_reproducible(example, one_thread):
    data = example.load_data(seed=1, n_samples=200)
    runs = [example.train(example.build_model(seed=1), data, epochs=1, seed=1, log=None)
            for _ in range(2)]
    assert runs[0][0]["loss"] == runs[1][0]["loss"]


def test_main_quick(example, one_thread, capsys):
    history = example.main(["--quick", "--threads", "1", "--batch-size", "50"])
    out = capsys.readouterr().out
    assert len(history) == 3
    assert out.count("epoch ") == 3
    assert "final test accuracy" in out and "total time" in out


@pytest.mark.slow
def test_full_run_reaches_95_percent(example, one_thread):
    history = example.train(example.build_model(seed=0), example.load_data(seed=0), log=None)
    assert history[-1]["test_accuracy"] >= 0.95
