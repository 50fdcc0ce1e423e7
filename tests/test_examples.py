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


def test_filter_volume_matches_conv3d(tmp_path):
    """examples/filter_volume.py on a small volume of 3 x 3 x 3 chunks, in a subprocess: its
    output store holds loopconv.conv3d of its input store."""
    import os
    import subprocess
    import sys

    import numpy as np

    pytest.importorskip("dask")
    zarr = pytest.importorskip("zarr")
    script = EXAMPLE.parent / "filter_volume.py"
    spec = importlib.util.spec_from_file_location("filter_volume", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    home = str(Path(loopconv.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [home] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    work = tmp_path / "volume"
    done = subprocess.run([sys.executable, str(script), "--size", "1MiB", "--chunk", "24",
                           "--kernel", "5", "--sigma", "1.5", "--workdir", str(work), "--keep"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MiB/s" in done.stdout and "peak memory (resident)" in done.stdout
    x = zarr.open_array(str(work / "input.zarr"), mode="r")
    y = zarr.open_array(str(work / "output.zarr"), mode="r")
    assert x.shape == y.shape == (1, 1, 50, 72, 72) and x.chunks == (1, 1, 24, 24, 24)
    expected = loopconv.conv3d(x[...], module.gaussian_kernel(5, 1.5), padding="same",
                               padding_mode="reflect")
    assert y.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(y[...], expected, rtol=0, atol=1e-5 * np.abs(expected).max())
