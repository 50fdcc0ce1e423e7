"""Argument handling for every public function.

One place turns what a user passes -- arrays of any dtype and layout, ints or tuples, padding
strings or pairs -- into checked values: arrays of the computed dtype and per-axis tuples.
Every error names the function and the argument and shows the values involved: `TypeError`
for a wrong kind of argument, `ValueError` for a wrong value or shape.
"""

from __future__ import annotations

import operator

import numpy as np

from loopconv import _loops

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


# ---------------------------------------------------------------------------------------------
# Arrays and dtypes

def as_array(fn: str, name: str, value) -> np.ndarray:
    """`value` as an ndarray (no copy when it already is one); rejects non-numeric dtypes."""
    try:
        arr = value if type(value) is np.ndarray else np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{fn}: {name} is not an array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{fn}: {name} has dtype {arr.dtype}; loopconv computes with real "
                        "numbers (float32, float64, or integers and bools as float64)")
    return arr


# The dtype policy: the dtypes the loops compute in (loopconv/_loops/elements.pxd), narrowest
# first, which the layers accept; `common_dtype`, the one a function computes in; and their
# description in the functions' docstrings.
NATIVE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
DTYPE_POLICY = """\
    float32 and float64 are computed natively and the result has the common dtype of the
    float arguments; float16 is computed as float32, integers and bools (and longdouble) as
    float64."""


def common_dtype(*dtypes: np.dtype) -> np.dtype:
    """The dtype the loops compute in for inputs of these dtypes, and the result's dtype
    (float32 with float64 is float64; see DTYPE_POLICY)."""
    for dt in dtypes:
        if dt.char not in "fe":
            return NATIVE_DTYPES[1]
    return NATIVE_DTYPES[0]


def compute_dtype(*arrays: np.ndarray | None) -> np.dtype:
    """`common_dtype` of the arrays' dtypes (None for an absent one)."""
    return common_dtype(*(arr.dtype for arr in arrays if arr is not None))


def contiguous(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A C-contiguous array of `dtype` with the values of `arr` (`arr` itself when it already
    is one: the loops only read it)."""
    return np.ascontiguousarray(arr, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Counts and per-axis tuples

# Counts beyond this cannot index memory; refusing them keeps C integers from overflowing.
_LARGEST = 2**62


def _int(fn: str, name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__} {value!r}")
    n = operator.index(value)
    if abs(n) > _LARGEST:
        raise ValueError(f"{fn}: {name}={n} is too large (at most 2**62)")
    return n


def empty(fn: str, shape, dtype) -> np.ndarray:
    """np.empty for a result (on a cache line where it is large: `loopconv._loops.empty`),
    with the function named when it cannot be allocated."""
    try:
        return _loops.empty(shape, dtype)
    except (ValueError, MemoryError) as exc:
        raise type(exc)(f"{fn}: cannot allocate a result of shape {tuple(shape)} and dtype "
                        f"{np.dtype(dtype)}: {exc}") from None


def count(fn: str, name: str, value, minimum: int = 1) -> int:
    """An int >= minimum (bool and float are rejected, as they are not counts)."""
    n = _int(fn, name, value)
    if n < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {n}")
    return n


def per_axis(fn: str, name: str, value, nd: int, minimum: int = 1) -> tuple:
    """An int, or a sequence of `nd` ints, as a tuple of `nd` ints >= minimum."""
    if isinstance(value, (list, tuple)):
        if len(value) != nd:
            raise ValueError(f"{fn}: {name} needs 1 or {nd} values for {nd} spatial "
                             f"dimension{'s' if nd > 1 else ''}, got {len(value)}: {value!r}")
        items = tuple(_int(fn, name, v) for v in value)
    else:
        if isinstance(value, np.ndarray) and value.ndim == 1:
            return per_axis(fn, name, value.tolist(), nd, minimum)
        items = (_int(fn, name, value),) * nd
    for v in items:
        if v < minimum:
            raise ValueError(f"{fn}: {name} must be >= {minimum} on every axis, got {value!r}")
    return items


def padding_pairs(fn: str, value, nd: int, allow_same: bool = True):
    """Padding as a tuple of `nd` (before, after) pairs, or the string "same".

    Accepts an int, a sequence of `nd` ints (symmetric per axis), a sequence of `nd`
    (before, after) pairs, "valid" (no padding) and, for convolutions, "same"."""
    if isinstance(value, str):
        if value == "valid":
            return ((0, 0),) * nd
        if value == "same" and allow_same:
            return "same"
        allowed = "'valid', 'same'" if allow_same else "'valid'"
        raise ValueError(f"{fn}: padding={value!r} is not one of {allowed}, an int, "
                         "or a tuple of ints or (before, after) pairs")
    if isinstance(value, (list, tuple)):
        if len(value) != nd:
            raise ValueError(f"{fn}: padding needs 1 or {nd} entries for {nd} spatial "
                             f"dimension{'s' if nd > 1 else ''}, got {len(value)}: {value!r}")
        entries = []
        for v in value:
            if isinstance(v, (list, tuple)):
                if len(v) != 2:
                    raise ValueError(f"{fn}: padding entry {v!r} is not a (before, after) pair")
                entries.append((_int(fn, "padding", v[0]), _int(fn, "padding", v[1])))
            else:
                p = _int(fn, "padding", v)
                entries.append((p, p))
        pairs = tuple(entries)
    else:
        p = _int(fn, "padding", value)
        pairs = ((p, p),) * nd
    if any(b < 0 or a < 0 for b, a in pairs):
        raise ValueError(f"{fn}: padding must be >= 0, got {value!r}")
    return pairs


def same_padding(size, kernel, stride, dilation):
    """(before, after) pairs giving output size ceil(size / stride); the odd pixel goes after
    (ONNX SAME_UPPER; with stride 1 this is PyTorch's "same")."""
    pairs = []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        out = -(-n // s)
        total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
        pairs.append((total // 2, total - total // 2))
    return tuple(pairs)


def output_padding(fn: str, value, nd: int, stride: tuple, dilation: tuple) -> tuple:
    """A transposed convolution's output padding: per axis >= 0 and smaller than stride or
    dilation."""
    op = per_axis(fn, "output_padding", value, nd, minimum=0)
    for p, s, d in zip(op, stride, dilation):
        if p >= max(s, d):
            raise ValueError(f"{fn}: output_padding {op} must be smaller than stride "
                             f"{stride} or dilation {dilation} on every axis")
    return op


def padding_mode(fn: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{fn}: padding_mode must be a string, got {type(value).__name__}")
    if value not in PADDING_MODES:
        raise ValueError(f"{fn}: padding_mode={value!r} is not one of {PADDING_MODES}")
    return value


def output_mask(fn: str, value) -> tuple:
    try:
        mask = tuple(value)
    except TypeError:
        raise TypeError(f"{fn}: output_mask must be a sequence of 3 bools, "
                        f"got {value!r}") from None
    if len(mask) != 3:
        raise ValueError(f"{fn}: output_mask must have 3 entries, got {len(mask)}: {value!r}")
    for m in mask:
        if not isinstance(m, (bool, np.bool_, int, np.integer)):
            raise TypeError(f"{fn}: output_mask entries must be bools, got {m!r}")
    return tuple(bool(m) for m in mask)


# ---------------------------------------------------------------------------------------------
# Shapes

def batched(fn: str, name: str, arr: np.ndarray, nd: int):
    """(array with a batch axis, whether one was added) for an (N, C, *spatial) or an
    unbatched (C, *spatial) array."""
    if arr.ndim == nd + 2:
        return arr, False
    if arr.ndim == nd + 1:
        return arr[None], True
    raise ValueError(f"{fn}: {name} must have {nd + 2} dimensions (N, C, *spatial) or {nd + 1} "
                     f"(C, *spatial), got shape {arr.shape}")


def weight_dims(fn: str, weight: np.ndarray, nd: int, name: str = "weight"):
    if weight.ndim != nd + 2:
        raise ValueError(f"{fn}: {name} must have {nd + 2} dimensions, got shape {weight.shape}")
    if any(k < 1 for k in weight.shape[2:]):
        raise ValueError(f"{fn}: {name} has an empty kernel, shape {weight.shape}")


def check_groups(fn: str, groups: int, in_channels: int, out_channels: int, per_group_in: int,
                 in_name: str = "input", out_name: str = "weight.shape[0]"):
    """groups must divide both channel counts, and the input must match the weight."""
    if in_channels != per_group_in * groups:
        raise ValueError(f"{fn}: {in_name} has {in_channels} channels, but weight.shape[1] * "
                         f"groups = {per_group_in} * {groups} = {per_group_in * groups}")
    check_divides(fn, groups, out_channels, f"output channels ({out_name})")


def check_divides(fn: str, groups: int, channels: int, what: str):
    if channels % groups:
        raise ValueError(f"{fn}: groups={groups} does not divide the {channels} {what}")


def check_bias(fn: str, bias, out_channels: int):
    if bias is not None and bias.shape != (out_channels,):
        raise ValueError(f"{fn}: bias must have shape ({out_channels},) for {out_channels} "
                         f"output channels, got {bias.shape}")


def shape_arg(fn: str, name: str, value) -> tuple:
    """A shape given as a sequence of non-negative ints (or an int array)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{fn}: {name} must be a sequence of ints, got {value!r}")
    return tuple(count(fn, name, v, minimum=0) for v in value)
