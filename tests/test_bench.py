"""The benchmark tooling (benchmarks/lcbench, not part of the installed package): the NumPy
im2col peer, the timing helpers and ``python -m loopconv bench`` end to end on the tiny
``seed`` shape; the networks suite's layer tables, its step times and its report, and a run of
it on the DCGAN generator at batch 1."""

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from common import DTYPE_PARAMS, assert_close, conv_arrays, run_interpreter

import loopconv
from loopconv import _cli

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from lcbench import cli as _cli_bench  # noqa: E402 -- after the path is set
from lcbench import core as _bench  # noqa: E402
from lcbench import im2col as _im2col  # noqa: E402
from lcbench import networks as _networks  # noqa: E402


@pytest.fixture(autouse=True)
def _benchmarks_found(monkeypatch):
    """`python -m loopconv bench` finds the benchmark through LOOPCONV_BENCHMARKS, also when
    the tests run against an installed wheel from a copy of tests/ and benchmarks/."""
    monkeypatch.setenv("LOOPCONV_BENCHMARKS", str(BENCHMARKS))

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


def test_cli_suite_options(capsys):
    """Each suite refuses the other's options."""
    with pytest.raises(SystemExit) as exc:
        _cli.main(["bench", "--suite", "networks", "--shapes", "seed"])
    assert exc.value.code == 2
    assert "--shapes: not an option of --suite networks" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        _cli.main(["bench", "--detail", "--networks", "dcgan"])
    assert exc.value.code == 2
    assert "--networks, --detail: not an option of --suite layers" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The networks suite: the layer tables

# (convolutions, multiply-adds at batch 1) of the published architectures, as torchvision
# reports them (the MACs of the fully connected layers, at most 2.6 M, are left out here)
PUBLISHED = {"resnet18": (20, 1.81e9), "resnet50": (53, 4.09e9), "resnext50": (53, 4.23e9),
             "mobilenet_v2": (52, 0.30e9), "efficientnet_b0": (81, 0.39e9),
             "densenet121": (120, 2.83e9), "shufflenet_v2": (56, 0.145e9),
             "mobilenet_v3_large": (62, 0.215e9)}


@pytest.mark.parametrize("name", list(_networks.ALL_NETWORKS))
def test_network_table(name):
    network = _networks.ALL_NETWORKS[name]
    assert network.train_batch > 1 and network.layers
    assert len({layer.name for layer in network.layers}) == len(network.layers)
    # the first layer, and only it, needs no input gradient
    assert [layer.input_grad for layer in network.layers] == [False] + [True] * (
        len(network.layers) - 1)
    shapes = set()
    for layer in network.layers:
        s = layer.shape
        assert layer.count >= 1 and s.n == 1 and s.ndim in (1, 2, 3)
        assert s.c % s.groups == 0 and s.o % s.groups == 0, layer
        assert min(s.output_shape[2:]) >= 1 and min(s.spatial) >= 1, layer
        assert s.padding < s.k or s.transposed, layer
        shapes.add(s)
        assert layer.at(8, "x").input_shape == (8, *s.input_shape[1:])
    assert len(shapes) == len(network.layers)          # identical layers are merged
    if name in PUBLISHED:
        convolutions, macs = PUBLISHED[name]
        assert network.convolutions == convolutions
        ours = sum(layer.count * layer.shape.flops for layer in network.layers) / 2
        assert ours == pytest.approx(macs, rel=0.02)


@pytest.mark.parametrize("name", ["wav2vec2", "dcgan"])
def test_sequential_networks_chain(name):
    """In a network without branches, each layer takes what the one before gives."""
    layers = [layer for layer in _networks.NETWORKS[name].layers if layer.name != "pos_conv"]
    for before, after in zip(layers, layers[1:]):
        assert before.shape.output_shape[1:] == after.shape.input_shape[1:], (before, after)


def test_more_networks_are_run_when_named():
    """The default run keeps the eight networks; the others are known by name."""
    assert set(_networks.NETWORKS).isdisjoint(_networks.MORE_NETWORKS)
    assert _networks.ALL_NETWORKS == {**_networks.NETWORKS, **_networks.MORE_NETWORKS}
    args = _cli_bench.parser().parse_args(["--suite", "networks", "--networks", "vnet,dcgan"])
    assert args.networks == ["vnet", "dcgan"]


def test_more_networks_shapes():
    """Layers the published architectures fix: DenseNet's growing 1x1 inputs and its
    transitions, QuartzNet's dilated last depthwise kernel, V-Net's way up."""
    dense = {layer.name: layer for layer in _networks.ALL_NETWORKS["densenet121"].layers}
    assert dense["denseblock4.layer16.conv1"].shape.c == 512 + 15 * 32
    assert [dense[f"transition{i}"].geometry() for i in (1, 2, 3)] == [
        "256->128 1x1 @56x56", "512->256 1x1 @28x28", "1024->512 1x1 @14x14"]
    quartz = {layer.name: layer.shape for layer in _networks.ALL_NETWORKS["quartznet"].layers}
    c2 = quartz["c2.depthwise"]
    assert (c2.k, c2.dilation, c2.groups, c2.padding) == (87, 2, 512, 86)
    assert c2.output_shape[2:] == c2.spatial == (500,)
    vnet = {layer.name: layer.shape for layer in _networks.ALL_NETWORKS["vnet"].layers}
    for stage, (width, size) in enumerate(((256, 4), (128, 8), (64, 16), (32, 32)), 1):
        up, conv = vnet[f"up{stage}.up"], vnet[f"up{stage}.conv1"]
        assert conv.c == conv.o == width == 2 * up.o and conv.spatial == (size,) * 3
        assert up.output_shape[2:] == conv.spatial


def test_unet3d_chain():
    """The 3-D U-Net's way up takes the channels of the way down, skips added."""
    layers = {layer.name: layer.shape for layer in _networks.NETWORKS["unet3d"].layers}
    for level in (0, 1, 2):
        up = layers[f"up{level}.upconv"]
        skip = layers[f"down{level}.conv2"]
        conv = layers[f"up{level}.conv1"]
        assert up.output_shape[2:] == skip.output_shape[2:] == conv.spatial
        assert conv.c == up.o + skip.o


def test_network_layers_run():
    """The small layers of every network, at batch 1, as the loopconv worker runs them: the
    output has the shape the table gives (1-D, 3-D and transposed layers included)."""
    _, call = _bench.peer_call("loopconv", 1)
    small = {layer.shape for network in _networks.ALL_NETWORKS.values()
             for layer in network.layers if layer.shape.flops < 6e7}
    assert {s.ndim for s in small} == {1, 2, 3} and any(s.transposed for s in small)
    for s in small:
        shape = _bench.replace(s, name="small")
        inputs = _bench.make_inputs(shape, np.float32)
        assert call("forward", shape, inputs)().shape == shape.output_shape
        assert call("input", shape, inputs)().shape == shape.input_shape
        assert call("weight", shape, inputs)().shape == shape.weight_shape


def test_shapes_of_other_kinds():
    one = _bench.Shape("a", 2, 4, 0, 100, 8, 10, stride=5)
    assert one.input_shape == (2, 4, 100) and one.output_shape == (2, 8, 19)
    assert one.weight_shape == (8, 4, 10) and one.flops == 2 * 2 * 8 * 4 * 10 * 19
    up = _bench.Shape("b", 1, 6, 4, 4, 3, 2, stride=2, d=4, transposed=True, groups=3)
    assert up.input_shape == (1, 6, 4, 4, 4) and up.output_shape == (1, 3, 8, 8, 8)
    assert up.weight_shape == (6, 1, 2, 2, 2) and up.flops == 2 * 6 * 1 * 8 * 64
    assert up.describe() == "(1,6,4,4,4) -> 3, k2, s2, p0, d1, g3, transposed"
    assert _bench.SHAPES["resnet"].describe() == "(8,64,56,56) -> 64, k3, s1, p1, d1"


PEER_CASES = [
    _bench.Shape("conv1d", 2, 4, 0, 37, 6, 5, stride=3, padding=2, groups=2),
    _bench.Shape("conv3d", 1, 3, 6, 7, 4, 3, padding=1, d=5),
    _bench.Shape("up2d", 2, 4, 5, 6, 6, 4, stride=2, padding=1, groups=2, transposed=True,
                 output_padding=1),
    _bench.Shape("up3d", 1, 4, 3, 3, 2, 2, stride=2, d=3, transposed=True),
]


@pytest.mark.parametrize("peer", ["torch", "onnxruntime", "onnxruntime-input"])
@pytest.mark.parametrize("shape", PEER_CASES, ids=[s.name for s in PEER_CASES])
def test_peers_agree_on_other_kinds(shape, peer):
    """PyTorch's and ONNX Runtime's calls in the workers (ONNX Runtime's with the weight an
    initializer and an input) give loopconv's results on 1-D, 3-D and transposed layers."""
    if peer.startswith("onnxruntime"):
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    else:
        pytest.importorskip(peer)
    _, ours = _bench.peer_call("loopconv", 1)
    _, theirs = _bench.peer_call(peer, 1)
    inputs = _bench.make_inputs(shape, np.float32)
    for pass_ in _bench.peer_passes(peer, _bench.PASSES):
        expected = ours(pass_, shape, inputs)()
        got = np.asarray(theirs(pass_, shape, inputs)())
        assert_close(got, expected, np.float32)


def test_onnx_model_weight_initializer_or_input():
    """The two ONNX Runtime peers time what their names say: the weight an initializer, or an
    input of the model fed on every call."""
    onnx = pytest.importorskip("onnx")
    shape = PEER_CASES[0]
    weight = _bench.make_inputs(shape, np.float32)["w"]
    for given in (False, True):
        graph = onnx.load_from_string(_bench.onnx_model(shape, weight, given)).graph
        onnx.checker.check_graph(graph)
        assert [i.name for i in graph.input] == (["x", "w"] if given else ["x"])
        assert [i.name for i in graph.initializer] == ([] if given else ["w"])


@pytest.mark.parametrize("peer", ["onnxruntime", "onnxruntime-input"])
def test_onnxruntime_float64_is_skipped(peer):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    _, call = _bench.peer_call(peer, 1)
    shape = PEER_CASES[0]
    with pytest.raises(_bench.Unsupported, match="no float64 kernel"):
        call("forward", shape, _bench.make_inputs(shape, np.float64))
    with pytest.raises(_bench.Unsupported, match="forward passes only"):
        call("weight", shape, _bench.make_inputs(shape, np.float32))


def test_measure_long_first_call():
    """A first call longer than `long_call` is warm-up enough."""
    m = _bench.measure(lambda: time.sleep(0.02), budget=0.01, min_repeat=2, long_call=0.01)
    assert m["warmup"] == 1 and len(m["times"]) == 2


# ---------------------------------------------------------------------------------------------
# The networks suite: the step time

def _layers():
    return [{"layer": "first", "count": 1, "geometry": "g1", "passes": ["forward", "weight"],
             "shape": "s1"},
            {"layer": "body", "count": 3, "geometry": "g2", "passes": list(_bench.PASSES),
             "shape": "s2"}]


def test_network_step_is_the_weighted_sum():
    times = {("s1", "forward", "loopconv"): 1.0, ("s1", "weight", "loopconv"): 2.0,
             ("s2", "forward", "loopconv"): 3.0, ("s2", "input", "loopconv"): 4.0,
             ("s2", "weight", "loopconv"): 5.0,
             ("s1", "forward", "torch"): 2.0, ("s1", "weight", "torch"): 4.0,
             ("s2", "forward", "torch"): 3.0, ("s2", "input", "torch"): 2.0,
             ("s2", "weight", "torch"): 4.0,
             ("s1", "forward", "onnxruntime"): 0.5, ("s2", "forward", "onnxruntime"): 6.0,
             ("s1", "input", "torch"): 100.0}          # not a pass of the step: not counted
    step = _bench.network_step(_layers(), times)
    assert step["step"] == {"loopconv": 1 + 2 + 3 * (3 + 4 + 5), "torch": 2 + 4 + 3 * 9}
    assert step["forward"] == {"loopconv": 1 + 3 * 3, "torch": 2 + 3 * 3,
                               "onnxruntime": 0.5 + 3 * 6}
    assert step["ratio"] == pytest.approx(33 / 39)
    assert step["worst"] == {"layer": "body", "geometry": "g2", "ratio": pytest.approx(9 / 12),
                             "share": pytest.approx(36 / 39)}
    assert [row["step"] for row in step["layers"]] == [{"loopconv": 3, "torch": 6},
                                                       {"loopconv": 12, "torch": 9}]
    assert step["slow"] == {"layers": 0, "of": 2, "share": 0}      # 0.75 is not below 0.7
    times[("s2", "input", "torch")] = 1.0
    assert _bench.network_step(_layers(), times)["slow"] == {
        "layers": 1, "of": 2, "share": pytest.approx(36 / 39)}


def test_network_step_missing_times():
    """A peer that lacks a layer's pass has no step time (ONNX Runtime never has one), and no
    ratio or worst layer without PyTorch."""
    times = {("s1", "forward", "loopconv"): 1.0, ("s1", "weight", "loopconv"): 2.0,
             ("s2", "forward", "loopconv"): 3.0, ("s2", "input", "loopconv"): 4.0,
             ("s2", "weight", "loopconv"): 5.0, ("s1", "forward", "onnxruntime"): 1.0}
    step = _bench.network_step(_layers(), times)
    assert step["step"] == {"loopconv": 39} and step["forward"] == {"loopconv": 10}
    assert step["ratio"] is None and "worst" not in step


def test_network_plan_shares_geometries():
    """A geometry that two networks share is timed once, under the first one's name, with the
    passes any of them needs; batch sizes are each network's."""
    entries, shapes = _bench.network_plan(["resnet50", "resnext50"], ["1", "train", "8"])
    assert [(e["network"], e["batch"]) for e in entries] == [
        ("resnet50", 1), ("resnet50", 8), ("resnext50", 1), ("resnext50", 8)]
    stem = [e["layers"][0]["shape"] for e in entries]
    assert stem == ["resnet50.conv1@b1", "resnet50.conv1@b8"] * 2
    assert shapes["resnet50.conv1@b1"][1] == ("forward", "weight")
    # a turn per geometry, each once, in the order of the networks that need them
    turns = _bench._turns(entries, shapes)
    assert [len(turn) for turn in turns] == [1] * len(shapes)
    assert [turn[0] for turn in turns] == list(shapes.values())
    assert turns[0][0] == shapes["resnet50.conv1@b1"]


def test_networks_report(monkeypatch):
    """The table, the detail and the scaling lines from synthetic results: loopconv scales
    1.2x on `body` where PyTorch does 2x."""
    layers = _layers()
    results = []
    for threads, (ours, theirs) in {1: (1.0, 2.0), 2: (1 / 1.2, 1.0)}.items():
        for layer in layers:
            for pass_ in layer["passes"]:
                times = [("loopconv", ours), ("torch", theirs)]
                if pass_ == "forward":
                    times += [("onnxruntime", 0.8 * ours), ("onnxruntime-input", 1.5 * ours)]
                for peer, t in times:
                    results.append({"threads": threads, "dtype": "float32",
                                    "shape": layer["shape"], "pass": pass_, "peer": peer,
                                    "median_s": t, "agrees": True})
    info = {"loopconv": {"version": "x"}, "torch": {"version": "y"}}
    data = {"threads": [1, 2], "dtypes": ["float32"], "results": results,
            "workers": {"1": info, "2": info},
            "plan": [{"network": "net", "batch": 4, "layers": layers}],
            "networks": {"net": {"variant": "a net", "convolutions": 4, "train_batch": 4}}}
    data["summary"] = _bench.summarize(data)
    report = _bench.format_networks_report(data, detail=True)
    # loopconv: 1 * (1 + 1) + 3 * (1 + 1 + 1) = 11 s; the forward passes: 1 + 3 = 4 s, in
    # ONNX Runtime 0.8 * 4 s with the weight an initializer, 1.5 * 4 s given it on every call
    assert re.search(r"^net\s+4\s+11000\.0\s+22000\.0\s+2\.00\s+4000\.0\s+3200\.0\s+0\.80\s+"
                     r"1\.50\s+0/2\s+0%\s+2\.00 first g1 \(18%\)$", report, re.MULTILINE), report
    assert "onnxrt*: ONNX Runtime given the weight on every call" in report
    assert re.search(r"^first\s+1\s+g1\s+.*\s2\.00\s+0\.80\s+1\.50\s+18\.2%$", report,
                     re.MULTILINE), report
    assert re.search(r"^body\s+3\s+g2\s+1000\.0\s+1000\.0\s+1000\.0\s+2000\.0", report,
                     re.MULTILINE), report
    assert "net b4: step loopconv 1.20x, torch 2.00x; PyTorch 1.60x or more on 2 of 2 " \
           "layers, loopconv not on 2 of them: first g1 (1.20x, 2.00x), body" in report


# ---------------------------------------------------------------------------------------------
# The networks suite end to end

@pytest.mark.skipif(not _bench.torch_available(), reason="PyTorch is not installed")
def test_cli_bench_networks(tmp_path):
    out = tmp_path / "networks.json"
    proc = run_interpreter("-m", "loopconv", "bench", "--suite", "networks", "--networks",
                           "dcgan", "--batch", "1", "--repeat", "1", "--rounds", "1",
                           "--threads", "1", "--json", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    assert re.search(r"^network\s+batch\s+loopconv\s+torch\s+torch/lc\s+loopconv", table,
                     re.MULTILINE), table
    assert "training step" in table and "worst layer" in table
    assert re.search(r"^dcgan\s+1\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d+", table, re.MULTILINE), table
    data = json.loads(out.read_text())
    assert data["format"] == _bench.NET_JSON_FORMAT
    peers = {r["peer"] for r in data["results"]}
    assert {"loopconv", "torch"} <= peers and all(r["agrees"] for r in data["results"])
    assert data["summary"][0]["step"]["torch"] > 0
    if _bench.onnxruntime_available():
        assert {"onnxruntime", "onnxruntime-input"} <= peers
        for peer in ("onnxruntime", "onnxruntime-input"):
            assert {r["pass"] for r in data["results"] if r["peer"] == peer} == {"forward"}
        assert "onnxrt*/lc" in table and "onnxrt*: ONNX Runtime given the weight" in table


def test_cli_bench_without_the_benchmark(monkeypatch, tmp_path, capsys):
    """An installed wheel has no benchmark: `bench` says where it is, and fails cleanly."""
    monkeypatch.setenv("LOOPCONV_BENCHMARKS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_cli, "_package_checkout", lambda: tmp_path)
    assert _cli.main(["bench", "--help"]) == 2
    err = capsys.readouterr().err
    assert "not installed with the package" in err and "LOOPCONV_BENCHMARKS" in err


def test_columns_script(capsys):
    """benchmarks/columns.py on the DCGAN generator's first two layers at batch 1: a row per
    pass with both times, their ratio and the loops loopconv picks; both ways agree."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("columns", BENCHMARKS / "columns.py")
    columns = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(columns)
    assert columns.main(["--networks", "dcgan", "--batch", "1", "--limit", "2",
                         "--budget", "0"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert len(rows) == 6                   # two layers, three passes each
    first = [r for r in rows if r[:3] == ["dcgan", "b1", "100->512"]]
    assert [r[5] for r in first] == ["forward", "input", "weight"]
    for r in rows:
        tiled, cols, ratio = map(float, r[-4:-1]) if r[-1] != "<-" else map(float, r[-5:-2])
        # the times are printed to a microsecond and the ratio from the times unrounded: the
        # printed times' ratio is off by up to half a microsecond in each
        slack = ratio * (0.0005 / tiled + 0.0005 / cols) + 0.01 * ratio + 0.01
        assert tiled > 0 and cols > 0 and abs(ratio - tiled / cols) < slack
    # the generator's first layer (a 1x1 input) runs every pass through columns
    assert all("columns" in r for r in first)
