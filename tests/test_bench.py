"""The benchmark tooling: the NumPy im2col peer, the timing helpers and ``python -m loopconv
bench`` end to end on the tiny ``seed`` shape."""

import json
import re

import numpy as np
import pytest
from common import DTYPE_PARAMS, assert_close, conv_arrays, run_interpreter

import loopconv
from loopconv import _bench, _cli, _im2col

# (N, C, H, W, O, kernel, stride, padding, dilation, groups)
CONFIGS = [
    (2, 3, 7, 9, 4, 3, 1, 1, 1, 1),
    (2, 4, 10, 11, 6, 3, 2, 1, 1, 2),          # stride 2, odd sizes, groups
    (1, 4, 9, 9, 4, 2, 3, 0, 2, 4),            # depthwise, rows no window reaches
    (3, 2, 8, 8, 5, 1, 1, 0, 1, 1),            # 1x1
    (1, 1, 5, 5, 1, 2, 1, 0, 1, 1),            # the seed example
    (2, 6, 13, 12, 6, 3, (2, 3), (2, 0), (1, 2), 3),   # per-axis stride, padding, dilation
]


def _ids(config):
    n, c, h, w, o, k, s, p, d, g = config
    return f"{n}x{c}x{h}x{w}-o{o}-k{k}-s{s}-p{p}-d{d}-g{g}".replace(" ", "")


# ---------------------------------------------------------------------------------------------
# The im2col peer agrees with loopconv

@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_im2col_agrees_with_loopconv(config, dtype):
    n, c, h, w, o, k, s, p, d, g = config
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    x, weight, _, gy = conv_arrays(np.random.default_rng(0), (n, c, h, w), (o, c // g, k, k),
                                   kw, dtype)
    y2 = _im2col.conv2d(x, weight, s, p, d, g)
    gx2 = _im2col.conv2d_input(x.shape, weight, gy, s, p, d, g)
    gw2 = _im2col.conv2d_weight(x, weight.shape, gy, s, p, d, g)
    for ours, theirs in ((loopconv.conv2d(x, weight, None, s, p, d, g), y2),
                         (loopconv.conv2d_input(x.shape, weight, gy, s, p, d, g), gx2),
                         (loopconv.conv2d_weight(x, weight.shape, gy, s, p, d, g), gw2)):
        assert theirs.flags.c_contiguous and ours.dtype == theirs.dtype
        assert_close(theirs, ours, dtype)


def test_standard_shapes():
    assert _bench.SHAPES["seed"].output_shape == (1, 1, 4, 4)
    assert _bench.SHAPES["stride2"].output_shape == (16, 64, 17, 17)
    assert _bench.SHAPES["largek"].output_shape == (4, 64, 112, 112)
    assert _bench.SHAPES["dilated"].output_shape == (8, 32, 32, 32)
    # 2 * N * O * C * kh * kw * OH * OW
    assert _bench.SHAPES["resnet"].flops == 2 * 8 * 64 * 64 * 9 * 56 * 56
    for shape in _bench.SHAPES.values():      # every standard shape is a valid convolution
        if shape.flops < 1e8:
            inputs = _bench.make_inputs(shape, np.float32)
            y = loopconv.conv2d(inputs["x"], inputs["w"], None, shape.stride, shape.padding,
                                shape.dilation, shape.groups)
            assert y.shape == shape.output_shape == inputs["gy"].shape


def test_inputs_are_reproducible():
    a = _bench.make_inputs(_bench.SHAPES["seed"], "float64")
    b = _bench.make_inputs(_bench.SHAPES["seed"], np.float64)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["x"].dtype == np.float64


def test_measure():
    m = _bench.measure(lambda: np.ones(3), repeat=3)
    assert len(m["times"]) == 3 and m["median"] == sorted(m["times"])[1]
    assert m["number"] > 1                     # a tiny call is timed in groups
    assert np.array_equal(m["result"], np.ones(3))
    m = _bench.measure(lambda: 1, budget=0.01)
    assert _bench.MIN_REPEAT <= len(m["times"]) <= _bench.MAX_REPEAT


def test_geomean():
    assert _bench.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert np.isnan(_bench.geomean([]))


def test_table_means_leave_tiny_shapes_out():
    """The geometric means are over the real layer shapes; the seed's 5x5 example (all call
    overhead) is shown in the table but left out of them."""
    times = {("cifar", "loopconv"): 1.0, ("cifar", "im2col"): 4.0,
             ("seed", "loopconv"): 1.0, ("seed", "im2col"): 100.0}
    data = {"peers": ["loopconv", "im2col"], "passes": ["forward"], "machine": {"cores": 2},
            "workers": {"1": {"loopconv": {"version": "x"}, "im2col": {"version": "y"}}},
            "shapes": {n: {**_bench.asdict(_bench.SHAPES[n])} for n in ("cifar", "seed")},
            "results": [{"threads": 1, "dtype": "float32", "shape": n, "pass": "forward",
                         "peer": peer, "median_s": t, "gflops": 1.0, "agrees": True,
                         "load": None} for (n, peer), t in times.items()]}
    table = _bench.format_table(data, 1, "float32")
    assert re.search(r"^seed\s+forward\s.*\s100\.00$", table, re.MULTILINE), table
    assert "seed apart" in table
    assert re.search(r"^\s+forward\s+im2col\s+4\.00$", table, re.MULTILINE), table


# ---------------------------------------------------------------------------------------------
# The command line

def _bench_cli(*options, timeout=120):
    return run_interpreter("-m", "loopconv", "bench", "--shapes", "seed", "--repeat", "3",
                           "--threads", "1", *options, timeout=timeout)


def test_cli_bench_seed(tmp_path):
    out = tmp_path / "results.json"
    proc = _bench_cli("--no-torch", "--rounds", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    assert "time (ms)" in table and "GFLOP/s" in table and "peer / loopconv" in table
    for pass_ in _bench.PASSES:
        assert re.search(rf"^seed\s+{pass_}\s.*\s\d+\.\d\d$", table, re.MULTILINE), table
    assert re.search(r"^\s+all\s+im2col\s+\d+\.\d\d$", table, re.MULTILINE), table
    assert "torch" not in table
    assert "[  1/12" in proc.stderr                # progress on stderr: 6 x 2 rounds
    data = json.loads(out.read_text())
    assert data["format"] == _bench.JSON_FORMAT
    assert {(r["pass"], r["peer"]) for r in data["results"]} == {
        (p, peer) for p in _bench.PASSES for peer in ("loopconv", "im2col")}
    assert all(len(r["times_s"]) == 3 and r["agrees"] for r in data["results"])
    # each result is the faster of its two rounds
    assert all(len(r["round_medians_s"]) == 2 and r["median_s"] == min(r["round_medians_s"])
               for r in data["results"])
    assert data["workers"]["1"]["loopconv"]["threads"] == 1


def test_cli_bench_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "chart.png"
    proc = _bench_cli("--no-torch", "--passes", "forward", "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not _bench.torch_available(), reason="PyTorch is not installed")
def test_cli_bench_torch():
    proc = _bench_cli("--passes", "forward,weight")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^seed\s+weight\s.*\s\d+\.\d\d\s+\d+\.\d\d$", proc.stdout, re.MULTILINE)
    assert re.search(r"^\s+all\s+im2col\s+\d+\.\d\d\s+torch\s+\d+\.\d\d$", proc.stdout,
                     re.MULTILINE), proc.stdout


@pytest.mark.parametrize("options, message", [
    (["--shapes", "seed,nope"], "unknown shape 'nope'"),
    (["--passes", "backward"], "unknown pass 'backward'"),
    (["--dtype", "float16"], "unknown dtype 'float16'"),
    (["--threads", "0"], "expected positive integers"),
    (["--threads", "two"], "expected positive integers"),
    (["--repeat", "0"], "expected a positive integer"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
], ids=["shape", "pass", "dtype", "threads-0", "threads-word", "repeat", "unknown"])
def test_cli_bad_options(options, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _cli.main(["bench", *options])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_plot_needs_matplotlib(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(_bench, "plot_formats", dict)       # as if matplotlib were missing
    assert _cli.main(["bench", "--plot", str(tmp_path / "chart.png")]) == 1
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_cli_output_folder_missing(tmp_path, capsys):
    assert _cli.main(["bench", "--json", str(tmp_path / "nowhere" / "r.json")]) == 1
    assert "does not exist" in capsys.readouterr().err
