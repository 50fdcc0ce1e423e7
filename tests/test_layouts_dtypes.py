"""The dtype policy, array_like arguments, and memory layouts: every layout gives the result of
the C-contiguous array, inputs are never modified, results are new C-contiguous arrays."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import reference
from common import DTYPE_PARAMS, DTYPES

import loopconv
from loopconv import _loops

NDS = [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# Every function on one set of arrays

def arrays(nd, rng, dtype=np.float64):
    """Arrays for a grouped, strided problem of every function (conv weight w, transposed
    weight wt, and grad_outputs gy / gyt of the right shapes)."""
    sp = {1: (9,), 2: (7, 6), 3: (5, 4, 5)}[nd]
    k = (3,) * nd
    a = dict(x=rng.standard_normal((2, 4, *sp)), w=rng.standard_normal((6, 2, *k)),
             b=rng.standard_normal(6), wt=rng.standard_normal((4, 3, *k)))
    a["gy"] = rng.standard_normal(reference.conv(a["x"], a["w"], **CONV_KW).shape)
    a["gyt"] = rng.standard_normal(
        reference.conv_transpose(a["x"], a["wt"], **TRANSPOSE_KW).shape)
    return {key: v.astype(dtype) for key, v in a.items()}


TRANSPOSE_KW = dict(stride=2, padding=1, output_padding=1, groups=2)

# Each test calls run_all twice: a repeated call with plain int parameters may take another
# path (loopconv keeps checked plans for small problems).
CALLS = 2


CONV_KW = dict(stride=2, padding=1, dilation=1, groups=2)


def run_all(nd, a):
    """{function name: tuple of results} of every public function on the arrays `a`."""
    def f(name):
        return getattr(loopconv, name.format(nd=nd))

    kw = CONV_KW
    x_shape, w_shape = np.shape(a["x"]), np.shape(a["w"])
    results = {
        "conv": f("conv{nd}d")(a["x"], a["w"], a["b"], **kw),
        "conv-reflect": f("conv{nd}d")(a["x"], a["w"], a["b"], padding_mode="reflect", **kw),
        "input": f("conv{nd}d_input")(x_shape, a["w"], a["gy"], **kw),
        "weight": f("conv{nd}d_weight")(a["x"], w_shape, a["gy"], **kw),
        "backward": f("conv{nd}d_backward")(a["x"], a["w"], a["gy"], **kw),
        "backward-circular": f("conv{nd}d_backward")(a["x"], a["w"], a["gy"],
                                                     padding_mode="circular", **kw),
        "transpose": f("conv_transpose{nd}d")(a["x"], a["wt"], a["b"], **TRANSPOSE_KW),
        "transpose_backward": f("conv_transpose{nd}d_backward")(a["x"], a["wt"], a["gyt"],
                                                               **TRANSPOSE_KW),
    }
    return {key: r if isinstance(r, tuple) else (r,) for key, r in results.items()}


def assert_run_all_close(assert_close, nd, a, expected, dtype):
    """run_all(nd, a), CALLS times, gives `expected` (from expected_all) in `dtype`, or in
    dtype[key] for each of run_all's keys where `dtype` is a dict."""
    for _ in range(CALLS):
        got = run_all(nd, a)
        assert got.keys() == expected.keys()
        for key in got:
            for g, e in zip(got[key], expected[key]):
                assert_close(g, e, dtype[key] if isinstance(dtype, dict) else dtype)


def expected_all(nd, a):
    """The reference results of `run_all`, in float64."""
    kw = CONV_KW
    x, w, b, wt, gy, gyt = (np.asarray(a[k], dtype=np.float64)
                            for k in ("x", "w", "b", "wt", "gy", "gyt"))
    return {
        "conv": (reference.conv(x, w, b, **kw),),
        "conv-reflect": (reference.conv(x, w, b, padding_mode="reflect", **kw),),
        "input": (reference.conv_input(x.shape, w, gy, **kw),),
        "weight": (reference.conv_weight(x, w.shape, gy, **kw),),
        "backward": reference.conv_backward(x, w, gy, **kw),
        "backward-circular": reference.conv_backward(x, w, gy, padding_mode="circular", **kw),
        "transpose": (reference.conv_transpose(x, wt, b, **TRANSPOSE_KW),),
        "transpose_backward": reference.conv_transpose_backward(x, wt, gyt, **TRANSPOSE_KW),
    }


# ---------------------------------------------------------------------------------------------
# dtypes

SAME_DTYPE = [
    (np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float32),
    (np.int32, np.float64), (np.int64, np.float64), (np.uint8, np.float64),
    (np.int8, np.float64), (np.bool_, np.float64), (">f4", np.float32), (">f8", np.float64),
]


@pytest.mark.parametrize("nd", NDS)
@pytest.mark.parametrize("dtype, result_dtype", SAME_DTYPE,
                         ids=[np.dtype(d).str for d, _ in SAME_DTYPE])
def test_dtype_policy(rng, assert_close, nd, dtype, result_dtype):
    a = arrays(nd, rng)
    if np.dtype(dtype).kind in "iub":
        a = {k: (3 * v).round().clip(0 if np.dtype(dtype).kind != "i" else -3, 3)
             for k, v in a.items()}
    a = {k: v.astype(dtype) for k, v in a.items()}
    assert_run_all_close(assert_close, nd, a, expected_all(nd, a), result_dtype)


# The arrays each entry of run_all passes.
USES = {"conv": ("x", "w", "b"), "conv-reflect": ("x", "w", "b"), "input": ("w", "gy"),
        "weight": ("x", "gy"), "backward": ("x", "w", "gy"), "backward-circular": ("x", "w", "gy"),
        "transpose": ("x", "wt", "b"), "transpose_backward": ("x", "wt", "gyt")}


def policy(*dtypes):
    """The contract: float16 and float32 alone give float32; anything else is float64."""
    small = all(np.dtype(d) in (np.dtype(np.float16), np.dtype(np.float32)) for d in dtypes)
    return np.dtype(np.float32 if small else np.float64)


MIXED = [  # dtypes of (x and the grad_outputs, the weights, the bias)
    (np.float32, np.float64, np.float32), (np.float64, np.float32, np.float32),
    (np.float32, np.float32, np.float64), (np.float16, np.float32, np.float32),
    (np.float16, np.float64, np.float16), (np.int64, np.float32, np.float32),
    (np.float32, np.bool_, np.float32), (np.float16, np.float16, np.float16),
]


@pytest.mark.parametrize("dtypes", MIXED, ids=["-".join(np.dtype(d).name for d in m)
                                               for m in MIXED])
def test_mixed_dtypes(rng, assert_close, dtypes):
    a = arrays(2, rng)
    x_dtype, w_dtype, b_dtype = dtypes
    if np.dtype(w_dtype).kind == "b":
        a["w"], a["wt"] = a["w"] > 0, a["wt"] > 0
    dtype_of = {"x": x_dtype, "gy": x_dtype, "gyt": x_dtype, "w": w_dtype, "wt": w_dtype,
                "b": b_dtype}
    a = {k: v.astype(dtype_of[k]) for k, v in a.items()}
    result_dtypes = {key: policy(*(dtype_of[k] for k in uses)) for key, uses in USES.items()}
    assert_run_all_close(assert_close, 2, a, expected_all(2, a), result_dtypes)


def test_policy_cases_are_mixed():
    assert {policy(*m) for m in MIXED} == {np.dtype(np.float32), np.dtype(np.float64)}


def test_the_tests_cover_every_native_dtype():
    # a dtype added to the package's policy (loopconv._args.NATIVE_DTYPES) must be added to
    # the tests' list too, so that every test parametrised over DTYPES runs it
    from loopconv import _args
    assert tuple(np.dtype(d) for d in DTYPES) == _args.NATIVE_DTYPES


def test_float32_with_float32_bias_stays_float32(rng):
    a = arrays(2, rng, np.float32)
    assert loopconv.conv2d(a["x"], a["w"], a["b"], **CONV_KW).dtype == np.float32
    assert loopconv.conv2d(a["x"], a["w"], a["b"].astype(np.float64),
                           **CONV_KW).dtype == np.float64


@pytest.mark.parametrize("kind", ["complex64", "complex128", "object", "str", "bytes"])
@pytest.mark.parametrize("argument", ["x", "w", "b", "gy"])
def test_rejected_dtypes(rng, kind, argument):
    a = arrays(2, rng)
    a[argument] = a[argument].astype(kind)
    with pytest.raises(TypeError, match=r"^conv2d(_backward)?: "):
        if argument == "gy":
            loopconv.conv2d_backward(a["x"], a["w"], a["gy"], **CONV_KW)
        else:
            loopconv.conv2d(a["x"], a["w"], a["b"], **CONV_KW)


# ---------------------------------------------------------------------------------------------
# array_like

@pytest.mark.parametrize("nd", NDS)
def test_lists_are_accepted(rng, assert_close, nd):
    a = arrays(nd, rng)
    as_lists = {k: v.tolist() for k, v in a.items()}
    assert_run_all_close(assert_close, nd, as_lists, expected_all(nd, a), np.float64)


def test_nested_tuples_and_int_lists(rng):
    x = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
    w = [[[1, -1], [0, 1]], [[2, 0], [1, 1]]]
    y = loopconv.conv1d(x, w, [1, 2])
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, reference.conv(np.array(x)[None], w, [1, 2])[0])


def test_scalar_like_shapes_accepted_as_sequences(rng):
    w = rng.standard_normal((3, 2, 2, 2))
    g = rng.standard_normal((1, 3, 4, 4))
    expected = loopconv.conv2d_input((1, 2, 5, 5), w, g)
    np.testing.assert_array_equal(loopconv.conv2d_input([1, 2, 5, 5], w, g), expected)
    np.testing.assert_array_equal(loopconv.conv2d_input(np.array([1, 2, 5, 5]), w, g),
                                  expected)
    np.testing.assert_array_equal(loopconv.conv2d_input(
        tuple(np.int64(v) for v in (1, 2, 5, 5)), w, g), expected)


# ---------------------------------------------------------------------------------------------
# Layouts

def _unaligned(a):
    buffer = np.zeros(a.nbytes + 1, dtype=np.uint8)
    out = buffer[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _memmap(a, path):
    m = np.memmap(path, dtype=a.dtype, mode="w+", shape=a.shape)
    m[...] = a
    m.flush()
    del m
    return np.memmap(path, dtype=a.dtype, mode="r", shape=a.shape)


def _read_only(a):
    out = a.copy()
    out.flags.writeable = False
    return out


def _step(a):
    """A view with a step of 2 (and an offset) along every axis."""
    buffer = np.zeros(tuple(2 * n + 1 for n in a.shape), a.dtype)
    view = buffer[tuple(slice(1, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def _transposed(a):
    """The same values, stored with the axes in reverse order."""
    return np.ascontiguousarray(a.transpose()).transpose()


def _negative(a):
    """The same values, with a negative stride along every axis."""
    reverse = tuple(slice(None, None, -1) for _ in a.shape)
    return np.ascontiguousarray(a[reverse])[reverse]


LAYOUTS = {
    "fortran": lambda a, path: np.asfortranarray(a),
    "step": lambda a, path: _step(a),
    "transposed": lambda a, path: _transposed(a),
    "negative": lambda a, path: _negative(a),
    "read-only": lambda a, path: _read_only(a),
    "memmap": _memmap,
    "unaligned": lambda a, path: _unaligned(a),
    "read-only-step": lambda a, path: _read_only(_step(a)),
}


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("nd", NDS)
def test_layouts_give_the_contiguous_result(rng, tmp_path, assert_close, nd, layout, dtype):
    a = arrays(nd, rng, dtype)
    views = {k: LAYOUTS[layout](v, tmp_path / f"{k}.dat") for k, v in a.items()}
    for k, v in views.items():
        np.testing.assert_array_equal(v, a[k])
        if v.ndim > 1:
            assert not (v.flags.c_contiguous and v.flags.writeable and v.flags.aligned), k
    copies = {k: v.copy() for k, v in views.items()}
    assert_run_all_close(assert_close, nd, views, expected_all(nd, a), dtype)
    for k in views:
        np.testing.assert_array_equal(views[k], copies[k])


@pytest.mark.parametrize("nd", NDS)
def test_memmap_input_gives_a_plain_ndarray(rng, tmp_path, nd):
    a = arrays(nd, rng)
    mm = _memmap(a["x"], tmp_path / "x.dat")
    assert isinstance(mm, np.memmap) and not mm.flags.writeable
    y = getattr(loopconv, f"conv{nd}d")(mm, a["w"], a["b"], **CONV_KW)
    np.testing.assert_array_equal(y, getattr(loopconv, f"conv{nd}d")(a["x"], a["w"], a["b"],
                                                                     **CONV_KW))
    assert type(y) is np.ndarray


def test_broadcast_arrays(rng):
    """Zero strides (np.broadcast_to gives read-only views) are read like any other layout."""
    x = np.broadcast_to(rng.standard_normal((1, 4, 1, 6)), (2, 4, 5, 6))
    w = np.broadcast_to(rng.standard_normal((6, 1, 3, 3)), (6, 2, 3, 3))
    b = np.broadcast_to(np.float64(0.5), (6,))
    y = loopconv.conv2d(x, w, b, groups=2, padding=1)
    np.testing.assert_array_equal(y, loopconv.conv2d(np.array(x), np.array(w), np.array(b),
                                                     groups=2, padding=1))


def test_inputs_are_not_modified_by_any_function(rng):
    a = arrays(2, rng, np.float32)
    copies = {k: v.copy() for k, v in a.items()}
    run_all(2, a)
    for k in a:
        np.testing.assert_array_equal(a[k], copies[k])


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("nd", NDS)
def test_results_are_new_c_contiguous_arrays(rng, nd, unbatched):
    a = arrays(nd, rng)
    if unbatched:
        a = {k: v[0] if k in ("x", "gy", "gyt") else v for k, v in a.items()}
    for key, results in run_all(nd, a).items():
        for r in results:
            assert type(r) is np.ndarray, key
            assert r.flags.c_contiguous and r.flags.writeable, key
            for v in a.values():
                assert not np.shares_memory(r, v), key


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_results_start_on_a_cache_line(rng, dtype):
    """Results of ALIGN_BYTES or more start on a 64-byte boundary (a view of a larger buffer),
    and share no memory with another result or an input; small ones are plain arrays."""
    x = rng.standard_normal((1, 8, 48, 48)).astype(dtype)
    w = rng.standard_normal((16, 8, 1, 1)).astype(dtype)
    outs = [loopconv.conv2d(x, w) for _ in range(3)]
    gy = rng.standard_normal(outs[0].shape).astype(dtype)
    outs += [loopconv.conv2d_input(x.shape, w, gy), loopconv.conv2d_weight(x, w.shape, gy)]
    for r in outs[:4]:
        assert r.nbytes >= _loops.ALIGN_BYTES
        assert r.ctypes.data % 64 == 0
        assert r.flags.c_contiguous and r.flags.writeable
        for v in (x, w, gy):
            assert not np.shares_memory(r, v)
    for a, b in itertools.combinations(outs, 2):
        assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(outs[0], outs[1])
    small = loopconv.conv2d(x[:, :, :4, :4], w)
    assert small.nbytes < _loops.ALIGN_BYTES and small.base is None


def test_large_results_reuse_freed_buffers(rng):
    """A result of the pool's minimum size or more takes the buffer of a freed result of about
    its size, never one that an array or a view still uses, and is computed in it in full."""
    pool = _loops.direct.pool_state
    x = rng.standard_normal((1, 8, 133, 67)).astype(np.float32)    # a size no other test has
    w = rng.standard_normal((31, 8, 3, 3)).astype(np.float32)
    first = loopconv.conv2d(x, w)
    assert first.nbytes >= pool()["min_bytes"]
    expected, address = first.copy(), first.ctypes.data
    view = first[:, 7]
    del first                                    # the view keeps the buffer
    second = loopconv.conv2d(x * 2, w)
    assert not np.shares_memory(second, view)
    np.testing.assert_array_equal(view, expected[:, 7])
    waiting = pool()["buffers"]
    del view                                     # now the buffer waits in the pool
    assert pool()["buffers"] == waiting + 1
    third = loopconv.conv2d(x, w)
    assert third.ctypes.data == address and pool()["buffers"] == waiting
    assert third.ctypes.data % 64 == 0 and third.flags.writeable
    np.testing.assert_array_equal(third, expected)
    np.testing.assert_array_equal(second, 2 * expected)


def test_the_pool_of_results_buffers_is_bounded():
    """Freed buffers wait in the pool up to max_bytes in all, the oldest given back first; a
    request takes none that would waste over a quarter of it."""
    state = _loops.direct.pool_state()
    size = state["max_bytes"] // 6 + 4096 * 3                     # seven of them overflow
    held = [_loops.empty((size // 8,), np.float64) for _ in range(7)]
    del held
    after = _loops.direct.pool_state()
    assert after["bytes"] <= state["max_bytes"] and after["buffers"] >= 5
    small = _loops.empty((size // 16,), np.float64)                # half: not from the pool
    assert _loops.direct.pool_state()["buffers"] == after["buffers"]
    del small


def test_identity_convolution_returns_a_copy(rng):
    """A 1x1 kernel of one: the result equals the input, but is not the input."""
    x = rng.standard_normal((2, 3, 4, 5))
    w = np.eye(3).reshape(3, 3, 1, 1)
    y = loopconv.conv2d(x, w)
    np.testing.assert_array_equal(y, x)
    assert not np.shares_memory(y, x)
    y[...] = 0
    assert np.abs(x).sum() > 0
