"""The checked problem: what a call computes, once its arguments have passed every check.

One checking function per family (`conv`, `conv_input`, `conv_weight`, `conv_transpose`, and
`grad_output` for the backward functions) turns a call's arguments into a `Problem`: the
convolution's shapes, its per-axis parameters, dtype, padding mode and whether the caller's
arrays have a batch axis.  A transposed convolution is the input gradient of a convolution, so
its problem is that convolution's: ``x_shape`` is the transposed convolution's output and
``y_shape`` its input.  A `Problem` is immutable and hashable: the plan cache
(`loopconv.functional`) keys plans by it and a `loopconv._loops.Plan` is built from it.  The
quantities derived from it are defined here, once each: the output sizes of a convolution and
of a transposed convolution, the output padding, the loops' arguments and the 5-D shapes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from loopconv import _args, _border

# ---------------------------------------------------------------------------------------------
# Output sizes

def output_size(size, kernel, stride, pads, dilation) -> tuple:
    """A convolution's output size: per axis,
    ``floor((in + before + after - dilation * (k - 1) - 1) / stride) + 1``."""
    return tuple((n + b + a - d * (k - 1) - 1) // s + 1
                 for n, k, s, (b, a), d in zip(size, kernel, stride, pads, dilation))


def transposed_output_size(size, kernel, stride, pads, dilation, output_padding) -> tuple:
    """A transposed convolution's output size: per axis,
    ``(in - 1) * stride - before - after + dilation * (k - 1) + output_padding + 1``."""
    return tuple((n - 1) * s - b - a + d * (k - 1) + p + 1 for n, k, s, (b, a), d, p
                 in zip(size, kernel, stride, pads, dilation, output_padding))


# ---------------------------------------------------------------------------------------------
# The problem

def _lift(values, fill: int) -> tuple:
    return (fill,) * (3 - len(values)) + tuple(values)


class Problem(NamedTuple):
    """One checked convolution (a NamedTuple: cheaper to make and to hash than a dataclass,
    and like any tuple equal to a plain tuple of the same values).

    x_shape, w_shape, y_shape: the batched ``(N, C, *spatial)`` shapes of the convolution's
    input, weight and output (of a transposed convolution: of its output, weight and input);
    stride, pads ((before, after) pairs), dilation: one entry per spatial axis; `unbatched`:
    the caller's input- and output-shaped arrays have no batch axis.
    """

    nd: int
    x_shape: tuple
    w_shape: tuple
    y_shape: tuple
    stride: tuple
    pads: tuple
    dilation: tuple
    groups: int
    dtype: np.dtype
    padding_mode: str
    unbatched: bool

    @property
    def shapes(self) -> tuple:
        """(x_shape, w_shape, y_shape)."""
        return self.x_shape, self.w_shape, self.y_shape

    @property
    def shapes5(self) -> tuple:
        """The three shapes as the 3-D loops see them: unit leading spatial axes added."""
        fill = (1,) * (3 - self.nd)
        return tuple(s[:2] + fill + s[2:] for s in self.shapes)

    @property
    def output_size(self) -> tuple:
        """The spatial output size of the convolution of `x_shape`."""
        return output_size(self.x_shape[2:], self.w_shape[2:], self.stride, self.pads,
                           self.dilation)

    def transposed_output_size(self, output_padding=None) -> tuple:
        """The spatial output size of the transposed convolution of `y_shape`, with
        `output_padding` (default none)."""
        return transposed_output_size(self.y_shape[2:], self.w_shape[2:], self.stride,
                                      self.pads, self.dilation,
                                      output_padding or (0,) * self.nd)

    @property
    def output_padding(self) -> tuple:
        """The output padding of a transposed convolution's problem: its output size beyond
        the smallest one."""
        return tuple(n - m for n, m in zip(self.x_shape[2:], self.transposed_output_size()))

    @property
    def loop_args(self) -> tuple:
        """(stride, padding before, dilation) as 3-D triples, and groups, for the loops.
        Along an axis whose output size is 1 the stride plays no part, and the loops get 1
        (a huge stride would otherwise size their buffers)."""
        stride = [1 if o == 1 else s for s, o in zip(self.stride, self.y_shape[2:])]
        return (_lift(stride, 1), _lift([b for b, _ in self.pads], 0),
                _lift(self.dilation, 1), self.groups)

    @property
    def border(self) -> bool:
        """Whether a padding mode other than zeros pads anything: the input is then padded
        at each call (`padded`), and the problem has no plan."""
        return self.padding_mode != "zeros" and any(b or a for b, a in self.pads)

    def padded(self) -> Problem:
        """The zero-padding problem of the input padded by `padding_mode` (`border`)."""
        size = tuple(n + b + a for n, (b, a) in zip(self.x_shape[2:], self.pads))
        return self._replace(x_shape=self.x_shape[:2] + size, pads=((0, 0),) * self.nd,
                             padding_mode="zeros")

    def with_dtype(self, dtype) -> Problem:
        return self if dtype == self.dtype else self._replace(dtype=dtype)


# ---------------------------------------------------------------------------------------------
# The checks shared by the families

def _geometry(fn, nd, size, kernel, stride, padding, dilation, groups, allow_same=True):
    """Checked stride, (before, after) padding pairs, dilation and groups."""
    stride = _args.per_axis(fn, "stride", stride, nd)
    dilation = _args.per_axis(fn, "dilation", dilation, nd)
    groups = _args.count(fn, "groups", groups)
    pads = _args.padding_pairs(fn, padding, nd, allow_same)
    if pads == "same":
        pads = _args.same_padding(size, kernel, stride, dilation)
    return stride, pads, dilation, groups


def _checked_output_size(fn, size, kernel, stride, pads, dilation) -> tuple:
    out = output_size(size, kernel, stride, pads, dilation)
    padded = tuple(n + b + a for n, (b, a) in zip(size, pads))
    if any(p > _args._LARGEST for p in padded):
        raise ValueError(f"{fn}: padding {tuple(pads)} makes the padded input {padded} larger "
                         f"than an array can be (at most 2**62 a side)")
    if any(o < 1 for o in out):
        extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        raise ValueError(f"{fn}: the kernel (size {tuple(kernel)}, dilation {tuple(dilation)}, "
                         f"extent {extent}) is larger than the padded input {padded}; "
                         f"the output size would be {out}")
    return out


def _check_grad_output(fn, gy, expected) -> None:
    if gy.shape != expected:
        raise ValueError(f"{fn}: grad_output has shape {gy.shape}, but the convolution's output "
                         f"has shape {expected}")


def grad_output(fn, problem: Problem, value, expected):
    """grad_output of a backward function, batched as the input, checked against the shape
    `expected` (the convolution's output, batched), and the problem in the dtype computed
    with it."""
    gy = _args.as_array(fn, "grad_output", value)
    if gy.ndim == problem.nd + 1 and problem.unbatched:
        gy = gy[None]
    _check_grad_output(fn, gy, expected)
    return gy, problem.with_dtype(_args.common_dtype(problem.dtype, gy.dtype))


# ---------------------------------------------------------------------------------------------
# One checking function per family

def conv(fn, nd, input, weight, bias, stride, padding, dilation, groups, padding_mode):
    """The problem of a convolution, and its arrays: input (batched), weight, bias.  A
    non-zero padding mode is checked here and applied by the caller (`Problem.padded`)."""
    x = _args.as_array(fn, "input", input)
    w = _args.as_array(fn, "weight", weight)
    b = None if bias is None else _args.as_array(fn, "bias", bias)
    _args.weight_dims(fn, w, nd)
    x, unbatched = _args.batched(fn, "input", x, nd)
    mode = _args.padding_mode(fn, padding_mode)
    stride, pads, dilation, groups = _geometry(fn, nd, x.shape[2:], w.shape[2:], stride,
                                               padding, dilation, groups)
    _args.check_groups(fn, groups, x.shape[1], w.shape[0], w.shape[1])
    _args.check_bias(fn, b, w.shape[0])
    if mode != "zeros" and any(b_ or a_ for b_, a_ in pads):
        _border.check(fn, x.shape[2:], pads, mode)
    out = _checked_output_size(fn, x.shape[2:], w.shape[2:], stride, pads, dilation)
    problem = Problem(nd, x.shape, w.shape, (x.shape[0], w.shape[0], *out), stride, pads,
                      dilation, groups, _args.compute_dtype(x, w, b), mode, unbatched)
    return problem, x, w, b


def conv_input(fn, nd, input_size, weight, grad_output, stride, padding, dilation, groups):
    """The problem of convNd_input, and its weight and grad_output (batched)."""
    w = _args.as_array(fn, "weight", weight)
    gy = _args.as_array(fn, "grad_output", grad_output)
    _args.weight_dims(fn, w, nd)
    gy, unbatched = _args.batched(fn, "grad_output", gy, nd)
    size = _args.shape_arg(fn, "input_size", input_size)
    groups_ = _args.count(fn, "groups", groups)
    if len(size) == nd:
        size = (gy.shape[0], w.shape[1] * groups_, *size)
    elif len(size) in (nd + 1, nd + 2):
        if (len(size) == nd + 1) != unbatched:
            raise ValueError(f"{fn}: input_size {size} is {'un' * (len(size) == nd + 1)}batched"
                             f" but grad_output (shape {np.shape(grad_output)}) is not; the "
                             "result has the shape of input_size")
        size = (1, *size) if unbatched else size
    else:
        raise ValueError(f"{fn}: input_size must have {nd + 2} entries (N, C, *spatial), "
                         f"{nd + 1} (C, *spatial) or {nd} (spatial), got {size}")
    if size[0] != gy.shape[0]:
        raise ValueError(f"{fn}: input_size {size} has batch {size[0]}, but grad_output has "
                         f"batch {gy.shape[0]} (shape {gy.shape})")
    stride, pads, dilation, groups_ = _geometry(fn, nd, size[2:], w.shape[2:], stride, padding,
                                                dilation, groups_, allow_same=False)
    _args.check_groups(fn, groups_, size[1], w.shape[0], w.shape[1], in_name="input_size")
    out = _checked_output_size(fn, size[2:], w.shape[2:], stride, pads, dilation)
    y_shape = (size[0], w.shape[0], *out)
    _check_grad_output(fn, gy, y_shape)
    problem = Problem(nd, size, w.shape, y_shape, stride, pads, dilation, groups_,
                      _args.compute_dtype(w, gy), "zeros", unbatched)
    return problem, w, gy


def conv_weight(fn, nd, input, weight_size, grad_output, stride, padding, dilation, groups):
    """The problem of convNd_weight, its input and grad_output (batched), and whether
    grad_output was unbatched (the problem's `unbatched` is the input's)."""
    x = _args.as_array(fn, "input", input)
    gy = _args.as_array(fn, "grad_output", grad_output)
    x, x_unbatched = _args.batched(fn, "input", x, nd)
    gy, gy_unbatched = _args.batched(fn, "grad_output", gy, nd)
    size = _args.shape_arg(fn, "weight_size", weight_size)
    if len(size) != nd + 2:
        raise ValueError(f"{fn}: weight_size must have {nd + 2} entries "
                         f"(C_out, C_in // groups, *kernel), got {size}")
    if any(k < 1 for k in size[2:]):
        raise ValueError(f"{fn}: weight_size {size} has an empty kernel")
    if x.shape[0] != gy.shape[0]:
        raise ValueError(f"{fn}: input has batch {x.shape[0]} (shape {x.shape}), but "
                         f"grad_output has batch {gy.shape[0]} (shape {gy.shape})")
    stride, pads, dilation, groups = _geometry(fn, nd, x.shape[2:], size[2:], stride, padding,
                                               dilation, groups, allow_same=False)
    _args.check_groups(fn, groups, x.shape[1], size[0], size[1], out_name="weight_size[0]")
    out = _checked_output_size(fn, x.shape[2:], size[2:], stride, pads, dilation)
    y_shape = (x.shape[0], size[0], *out)
    _check_grad_output(fn, gy, y_shape)
    problem = Problem(nd, x.shape, size, y_shape, stride, pads, dilation, groups,
                      _args.compute_dtype(x, gy), "zeros", x_unbatched)
    return problem, x, gy, gy_unbatched


def conv_transpose(fn, nd, input, weight, bias, stride, padding, output_padding, groups,
                   dilation, output_size=None):
    """The problem of a transposed convolution (that of the convolution whose input gradient
    it is), and its arrays: input (batched), weight, bias."""
    x = _args.as_array(fn, "input", input)
    w = _args.as_array(fn, "weight", weight)
    b = None if bias is None else _args.as_array(fn, "bias", bias)
    _args.weight_dims(fn, w, nd)
    x, unbatched = _args.batched(fn, "input", x, nd)
    stride, pads, dilation, groups = _geometry(fn, nd, x.shape[2:], w.shape[2:], stride,
                                               padding, dilation, groups, allow_same=False)
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"{fn}: input has {x.shape[1]} channels, but weight.shape[0] = "
                         f"{w.shape[0]} (weight is (C_in, C_out // groups, *kernel))")
    _args.check_divides(fn, groups, w.shape[0], "input channels (weight.shape[0])")
    out_channels = w.shape[1] * groups
    _args.check_bias(fn, b, out_channels)
    smallest = transposed_output_size(x.shape[2:], w.shape[2:], stride, pads, dilation,
                                      (0,) * nd)
    if output_size is not None:
        size = _args.shape_arg(fn, "output_size", output_size)
        if len(size) in (nd + 1, nd + 2):
            size = size[-nd:]
        if len(size) != nd:
            raise ValueError(f"{fn}: output_size must have {nd} (spatial) or {nd + 2} entries, "
                             f"got {size}")
        limit = tuple(max(s, d) for s, d in zip(stride, dilation))
        for n, lo, lim in zip(size, smallest, limit):
            if not lo <= n < lo + lim:
                raise ValueError(
                    f"{fn}: output_size {size} is not reachable: with input size "
                    f"{x.shape[2:]} each axis must lie in [{', '.join(str(v) for v in smallest)}]"
                    f" + [0, max(stride, dilation) - 1 = "
                    f"{', '.join(str(v - 1) for v in limit)}]")
        out = size
    else:
        op = _args.output_padding(fn, output_padding, nd, stride, dilation)
        out = tuple(lo + p for lo, p in zip(smallest, op))
    if any(n < 1 for n in out):
        raise ValueError(f"{fn}: the output size would be {out} for input size {x.shape[2:]}; "
                         f"padding {pads} is too large")
    problem = Problem(nd, (x.shape[0], out_channels, *out), w.shape, x.shape, stride, pads,
                      dilation, groups, _args.compute_dtype(x, w, b), "zeros", unbatched)
    return problem, x, w, b
