"""Convolutions, their gradients and transposed convolutions, for NumPy arrays.

Names, argument order and meaning follow ``torch.nn.functional`` and ``torch.nn.grad``.  Every
function checks its arguments into a `loopconv._problem.Problem`, brings the arrays to
C-contiguous float32 or float64 (copying only when needed; inputs are never modified), views
1-D and 2-D problems as 3-D ones with unit axes, and calls the compiled loops
(`loopconv._loops`).

Layout: input ``(N, C_in, *spatial)`` or unbatched ``(C_in, *spatial)``; weight
``(C_out, C_in // groups, *kernel)``; transposed-convolution weight
``(C_in, C_out // groups, *kernel)``; output size per axis
``floor((in + before + after - dilation * (k - 1) - 1) / stride) + 1``.
"""

from __future__ import annotations

import math

import numpy as np

from loopconv import _args, _border, _config, _loops, _problem

__all__ = [
    f"{name}{nd}d{suffix}"
    for nd in (1, 2, 3)
    for name, suffix in (("conv", ""), ("conv", "_input"), ("conv", "_weight"),
                         ("conv", "_backward"), ("conv_transpose", ""),
                         ("conv_transpose", "_backward"))
]

_NO_BIAS = {dtype: np.empty(0, dtype) for dtype in _args.NATIVE_DTYPES}


# ---------------------------------------------------------------------------------------------
# Helpers: 1-D and 2-D problems run through the 3-D loops with unit leading axes.  The arrays
# are checked, batched and of the problem's shapes (`loopconv._problem`).

def _as5d(arr: np.ndarray, dtype) -> np.ndarray:
    arr = _args.contiguous(arr, dtype)
    return arr.reshape(arr.shape[:2] + (1,) * (5 - arr.ndim) + arr.shape[2:])


def _bias(b, dtype) -> np.ndarray:
    return _NO_BIAS[dtype] if b is None else _args.contiguous(b, dtype)


def _forward(x, w, b, y, problem):
    """y = conv(x, w) + b into the allocated y, all (N, C, *spatial)."""
    if y.size == 0:
        return y
    if w.shape[1] == 0:     # no input channels: only the bias
        y[...] = 0 if b is None else b.reshape((-1,) + (1,) * (y.ndim - 2))
        return y
    dtype = y.dtype
    _loops.forward(_as5d(x, dtype), _as5d(w, dtype), _bias(b, dtype), _as5d(y, dtype),
                   *problem.loop_args, _config.get_num_threads())
    return y


def _input_grad(gy, w, b, gx, problem):
    """gx = b + conv_input(gy, w): the gradient of a convolution for its input, or (with a
    bias) a transposed convolution."""
    if gx.size == 0:
        return gx
    if gy.size == 0:
        gx[...] = 0 if b is None else b.reshape((-1,) + (1,) * (gx.ndim - 2))
        return gx
    dtype = gx.dtype
    _loops.grad_input(_as5d(gy, dtype), _as5d(w, dtype), _bias(b, dtype), _as5d(gx, dtype),
                      *problem.loop_args, _config.get_num_threads())
    return gx


def _weight_grad(x, gy, gw, problem):
    """gw = conv_weight(x, gy) into the allocated gw."""
    if gw.size == 0:
        return gw
    if gy.size == 0 or x.size == 0:
        gw[...] = 0
        return gw
    dtype = gw.dtype
    _loops.grad_weight(_as5d(x, dtype), _as5d(gy, dtype), _as5d(gw, dtype),
                       *problem.loop_args, _config.get_num_threads())
    return gw


def _bias_grad(gy, dtype):
    """grad_output summed over images and pixels: the direct loops' fixed order (the same
    as a plan's), accumulated in float64."""
    gy = _args.contiguous(gy, dtype)
    out = np.empty(gy.shape[1], dtype)
    _loops.direct.bias_grad(gy.reshape(gy.shape[0], gy.shape[1], math.prod(gy.shape[2:])), out)
    return out


def _unbatch(arr, unbatched):
    return arr[0] if unbatched else arr


def _batch(arr, unbatched):
    return arr[None] if unbatched else arr


# ---------------------------------------------------------------------------------------------
# Plans.  A small problem costs more in argument handling than in arithmetic.  A checked call
# leaves a `_loops.Plan`, made from its `_problem.Problem` and kept in `_BY_PROBLEM` (keyed by
# the problem, so that calls spelling the same problem differently, the families that share a
# convolution and the layers share one plan).  A call whose arrays are ndarrays and whose
# parameters are plain -- ints, strings, and tuples of ints or of pairs of ints; never bools,
# floats or lists: those always take the checking path, so every malformed call is still
# refused -- is also looked up by function, shapes, dtypes and parameters in `_PLANS`: a later
# identical call runs the plan directly (the checks cost about 20-35 us a call, a tenth of a
# small layer such as the mnist shape's, and more than a 1x1 layer of 16 channels at batch 1).
# The layers of loopconv.nn keep the problem and plan of their last input shape themselves.

_PLANS: dict = {}
_BY_PROBLEM: dict = {}
_MAX_PLANS = 256


def _plain(*params) -> bool:
    """Whether parameters may be part of a plan key: ints, strings, and tuples of ints or of
    (before, after) pairs of ints, as PyTorch's layers keep their stride and padding."""
    for p in params:
        t = type(p)
        if t is int or t is str:
            continue
        if t is not tuple:
            return False
        for v in p:
            if type(v) is int:
                continue
            if type(v) is not tuple or len(v) != 2 or type(v[0]) is not int \
                    or type(v[1]) is not int:
                return False
    return True


def _shape_key(shape):
    """A shape argument as part of a plan key: only a tuple of plain ints qualifies."""
    if type(shape) is not tuple:
        return None
    for v in shape:
        if type(v) is not int:
            return None
    return shape


def _signature(a, b, c):
    """Shapes and dtypes of three arrays (`c` may be None) as part of a plan key; None unless
    all are ndarrays."""
    if type(a) is not np.ndarray or type(b) is not np.ndarray:
        return None
    if c is None:
        return (a.shape, a.dtype.char, b.shape, b.dtype.char, None)
    if type(c) is not np.ndarray:
        return None
    return (a.shape, a.dtype.char, b.shape, b.dtype.char, c.shape, c.dtype.char)


def _plan_of(problem):
    """The plan of a checked problem; None where it has none: empty arrays, or a non-zero
    padding mode (whose border is padded at each call), which the checking path handles."""
    if problem.border or 0 in problem.x_shape or 0 in problem.w_shape or 0 in problem.y_shape:
        return None
    plan = _BY_PROBLEM.get(problem)
    if plan is None:
        plan = _loops.Plan(problem)
        if len(_BY_PROBLEM) >= _MAX_PLANS:
            _BY_PROBLEM.clear()
        _BY_PROBLEM[problem] = plan
    return plan


def _keep(key, plan) -> None:
    if key is None or plan is None:
        return
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = plan


# ---------------------------------------------------------------------------------------------
# Convolution

def _conv(fn, nd, input, weight, bias, stride, padding, dilation, groups, padding_mode):
    key = None
    sig = _signature(input, weight, bias)
    if sig is not None and _plain(stride, padding, dilation, groups, padding_mode):
        key = (fn, sig, stride, padding, dilation, groups, padding_mode)
        plan = _PLANS.get(key)
        if plan is not None:
            return plan.forward(input, weight, bias, _config.get_num_threads)
    y, _, plan = _conv_checked(fn, nd, input, weight, bias, stride, padding, dilation, groups,
                               padding_mode)
    _keep(key, plan)
    return y


def _conv_checked(fn, nd, input, weight, bias, stride, padding, dilation, groups,
                  padding_mode):
    """A convolution checked in full: its result, its problem and its plan (None where it
    has none)."""
    problem, x, w, b = _problem.conv(fn, nd, input, weight, bias, stride, padding, dilation,
                                     groups, padding_mode)
    return _conv_run(fn, problem, x, w, b), problem, _plan_of(problem)


def _conv_run(fn, problem, x, w, b):
    """The convolution of a checked problem without a plan; x batched."""
    y = _args.empty(fn, problem.y_shape, problem.dtype)
    if problem.border:
        x = _border.pad(x, problem.pads, problem.padding_mode)
        problem = problem.padded()
    return _unbatch(_forward(x, w, b, y, problem), problem.unbatched)


def _conv_input(fn, nd, input_size, weight, grad_output, stride, padding, dilation, groups):
    key = None
    if (type(weight) is np.ndarray and type(grad_output) is np.ndarray
            and _plain(stride, padding, dilation, groups)):
        size_key = _shape_key(input_size)
        if size_key is not None:
            key = (fn, size_key, weight.shape, weight.dtype.char, grad_output.shape,
                   grad_output.dtype.char, stride, padding, dilation, groups)
            plan = _PLANS.get(key)
            if plan is not None:
                return plan.grad_input(grad_output, weight, None, _config.get_num_threads)
    problem, w, gy = _problem.conv_input(fn, nd, input_size, weight, grad_output, stride,
                                         padding, dilation, groups)
    gx = _input_grad(gy, w, None, _args.empty(fn, problem.x_shape, problem.dtype), problem)
    _keep(key, _plan_of(problem))
    return _unbatch(gx, problem.unbatched)


def _conv_weight(fn, nd, input, weight_size, grad_output, stride, padding, dilation, groups):
    key = None
    if (type(input) is np.ndarray and type(grad_output) is np.ndarray
            and _plain(stride, padding, dilation, groups)):
        size_key = _shape_key(weight_size)
        if size_key is not None:
            key = (fn, input.shape, input.dtype.char, size_key, grad_output.shape,
                   grad_output.dtype.char, stride, padding, dilation, groups)
            plan = _PLANS.get(key)
            if plan is not None:
                return plan.grad_weight(input, grad_output, _config.get_num_threads)
    problem, x, gy, _ = _problem.conv_weight(fn, nd, input, weight_size, grad_output, stride,
                                             padding, dilation, groups)
    gw = _weight_grad(x, gy, _args.empty(fn, problem.w_shape, problem.dtype), problem)
    _keep(key, _plan_of(problem))
    return gw


def _conv_backward(fn, nd, input, weight, grad_output, stride, padding, dilation, groups,
                   padding_mode, output_mask):
    key = None
    sig = _signature(input, weight, grad_output)
    if (sig is not None and type(output_mask) is tuple
            and _plain(stride, padding, dilation, groups, padding_mode)
            and all(type(m) is bool for m in output_mask)):
        key = (fn, sig, stride, padding, dilation, groups, padding_mode, output_mask)
        plan = _PLANS.get(key)
        if plan is not None:
            return _planned_backward(plan, input, weight, grad_output, output_mask)
    grads, plan = _conv_backward_checked(fn, nd, input, weight, grad_output, stride, padding,
                                         dilation, groups, padding_mode, output_mask)
    _keep(key, plan)
    return grads


def _planned_backward(plan, x, w, gy, mask):
    """(grad_input, grad_weight, grad_bias) of a convolution by its plan, None where `mask`
    does not ask."""
    n = _config.get_num_threads
    return (plan.grad_input(gy, w, None, n) if mask[0] else None,
            plan.grad_weight(x, gy, n) if mask[1] else None,
            plan.grad_bias(gy) if mask[2] else None)


def _conv_backward_checked(fn, nd, input, weight, grad_output, stride, padding, dilation,
                           groups, padding_mode, output_mask, problem=None):
    """The gradients of a convolution checked in full, and its plan (as `_conv_checked`).
    A layer passes the `problem` of its arrays, checked already (with grad_output's dtype),
    and a tuple of bools for `output_mask`: then nothing is checked again."""
    if problem is None:
        mask = _args.output_mask(fn, output_mask)
        problem, x, w, _ = _problem.conv(fn, nd, input, weight, None, stride, padding,
                                         dilation, groups, padding_mode)
        gy, problem = _problem.grad_output(fn, problem, grad_output, problem.y_shape)
    else:
        mask = output_mask
        x, w = _batch(input, problem.unbatched), weight
        gy = _batch(grad_output, problem.unbatched)
    dtype, loop_problem = problem.dtype, problem
    gx = gw = gb = None
    if problem.border:
        x = _border.pad(x, problem.pads, problem.padding_mode)
        loop_problem = problem.padded()
    if mask[0]:
        gx = _input_grad(gy, w, None, _args.empty(fn, x.shape, dtype), loop_problem)
        if problem.border:
            gx = _border.fold(gx, problem.pads, problem.padding_mode)
        gx = _unbatch(gx, problem.unbatched)
    if mask[1]:
        gw = _weight_grad(x, gy, _args.empty(fn, w.shape, dtype), loop_problem)
    if mask[2]:
        gb = _bias_grad(gy, dtype)
    return (gx, gw, gb), _plan_of(problem)


# ---------------------------------------------------------------------------------------------
# Transposed convolution: the input gradient of the convolution with the same weight, stride,
# padding and dilation, whose input has the transposed convolution's output size.

def _transpose_key(fn, arrays, output_size, *params):
    """The plan key of a transposed convolution's call, or None where it takes the checking
    path."""
    sig = _signature(*arrays)
    size = None if output_size is None else _shape_key(output_size)
    if sig is None or (output_size is not None and size is None) or not _plain(*params):
        return None
    return (fn, sig, size, *params)


def _conv_transpose(fn, nd, input, weight, bias, stride, padding, output_padding, groups,
                    dilation, output_size):
    key = _transpose_key(fn, (input, weight, bias), output_size, stride, padding,
                         output_padding, groups, dilation)
    plan = _PLANS.get(key) if key is not None else None
    if plan is not None:
        return plan.grad_input(input, weight, bias, _config.get_num_threads)
    y, _, plan = _conv_transpose_checked(fn, nd, input, weight, bias, stride, padding,
                                         output_padding, groups, dilation, output_size)
    _keep(key, plan)
    return y


def _conv_transpose_checked(fn, nd, input, weight, bias, stride, padding, output_padding,
                            groups, dilation, output_size):
    """A transposed convolution checked in full: its result, its problem and its plan (those
    of the convolution whose input gradient it is)."""
    problem, x, w, b = _problem.conv_transpose(fn, nd, input, weight, bias, stride, padding,
                                               output_padding, groups, dilation, output_size)
    return _conv_transpose_run(fn, problem, x, w, b), problem, _plan_of(problem)


def _conv_transpose_run(fn, problem, x, w, b):
    """The transposed convolution of a checked problem without a plan; x batched."""
    y = _input_grad(x, w, b, _args.empty(fn, problem.x_shape, problem.dtype), problem)
    return _unbatch(y, problem.unbatched)


def _conv_transpose_backward(fn, nd, input, weight, grad_output, stride, padding,
                             output_padding, groups, dilation, output_mask):
    key = None
    if type(output_mask) is tuple and all(type(m) is bool for m in output_mask):
        key = _transpose_key(fn, (input, weight, grad_output), None, stride, padding,
                             output_padding, groups, dilation)
        key = None if key is None else (*key, output_mask)
    plan = _PLANS.get(key) if key is not None else None
    if plan is not None:
        return _planned_transpose_backward(plan, input, weight, grad_output, output_mask)
    grads, plan = _conv_transpose_backward_checked(fn, nd, input, weight, grad_output, stride,
                                                   padding, output_padding, groups, dilation,
                                                   output_mask)
    _keep(key, plan)
    return grads


def _planned_transpose_backward(plan, x, w, gy, mask):
    """The gradients of a transposed convolution by its plan: the input gradient is the
    convolution of gy, the weight gradient the convolution's with the roles of x and gy
    exchanged."""
    n = _config.get_num_threads
    return (plan.forward(gy, w, None, n) if mask[0] else None,
            plan.grad_weight(gy, x, n) if mask[1] else None,
            _bias_grad(np.reshape(gy, plan.shapes[0]), plan.dtype) if mask[2] else None)


def _conv_transpose_backward_checked(fn, nd, input, weight, grad_output, stride, padding,
                                     output_padding, groups, dilation, output_mask,
                                     problem=None):
    """The gradients of a transposed convolution checked in full, and its plan; `problem`
    as for `_conv_backward_checked`."""
    if problem is None:
        mask = _args.output_mask(fn, output_mask)
        problem, x, w, _ = _problem.conv_transpose(fn, nd, input, weight, None, stride,
                                                   padding, output_padding, groups, dilation)
        gy, problem = _problem.grad_output(fn, problem, grad_output, problem.x_shape)
    else:
        mask = output_mask
        x, w = _batch(input, problem.unbatched), weight
        gy = _batch(grad_output, problem.unbatched)
    dtype = problem.dtype
    gx = gw = gb = None
    if mask[0]:       # the transposed convolution's input gradient is a convolution
        gx = _unbatch(_forward(gy, w, None, _args.empty(fn, x.shape, dtype), problem),
                      problem.unbatched)
    if mask[1]:
        gw = _weight_grad(gy, x, _args.empty(fn, w.shape, dtype), problem)
    if mask[2]:
        gb = _bias_grad(gy, dtype)
    return (gx, gw, gb), _plan_of(problem)


# ---------------------------------------------------------------------------------------------
# Public functions: thin wrappers with the exact signatures of the contract.  Each family's
# docstring is written once, just above its three functions, and filled in per dimensionality
# by `_doc` from the shared fragments here.

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}
_EXAMPLE_SHAPES = {1: ((1, 1, 5), (1, 1, 2)), 2: ((1, 1, 5, 5), (1, 1, 2, 2)),
                   3: ((1, 1, 5, 5, 5), (1, 1, 2, 2, 2))}

_COMMON = """\
    stride : int or tuple of {nd} ints, default 1
    dilation : int or tuple of {nd} ints, default 1
        Spacing between kernel taps.
    groups : int, default 1
        Split the channels into this many independent groups; must divide ``C_in`` and
        ``C_out``.  ``groups == C_in`` is a depthwise convolution."""

_PAD = """\
    padding : int, tuple of {nd} ints, tuple of {nd} (before, after) pairs, 'valid' or 'same'
        Zero padding (or, with `padding_mode`, padding by reflection, replication or
        wrapping).  'same' gives output size ``ceil(in / stride)`` for any stride; the odd
        pixel of the total padding goes after (ONNX SAME_UPPER; PyTorch's 'same' when
        stride is 1)."""

_ZERO_PAD = """\
    padding : int, tuple of {nd} ints, tuple of {nd} (before, after) pairs, or 'valid'
        Zero padding, as in the forward convolution."""

_DTYPES = _args.DTYPE_POLICY + """
    Arrays may be of any layout, read-only or memory-mapped; they are never modified."""


def _doc(template: str, nd: int):
    """A decorator that sets a function's docstring: `template` filled in for `nd`."""
    xs, ws = _EXAMPLE_SHAPES[nd]
    fields = dict(nd=nd, sp=_SPATIAL[nd], k=", ".join("k" + a for a in "dhw"[3 - nd:]),
                  osp=", ".join("out_" + a for a in _SPATIAL[nd].split(", ")),
                  xsize=int(np.prod(xs)), xshape=xs, wshape=ws,
                  yshape=xs[:2] + tuple(n - k + 1 for n, k in zip(xs[2:], ws[2:])),
                  dtypes=_DTYPES)
    fields.update(common=_COMMON.format(**fields), pad=_PAD.format(**fields),
                  zpad=_ZERO_PAD.format(**fields))
    doc = template.format(**fields)

    def document(function):
        function.__doc__ = doc
        return function

    return document


# ---------------------------------------------------------------------------------------------
# Convolution

_CONV_DOC = """{nd}-D convolution (cross-correlation), as ``torch.nn.functional.conv{nd}d``.

    Parameters
    ----------
    input : array_like, shape (N, C_in, {sp}) or (C_in, {sp})
    weight : array_like, shape (C_out, C_in // groups, {k})
    bias : array_like, shape (C_out,), optional
{common}
{pad}
    padding_mode : {{'zeros', 'reflect', 'replicate', 'circular'}}, default 'zeros'
        How the border is filled (``torch.nn.functional.pad`` modes).  'reflect' needs
        padding smaller than the input, 'circular' padding no larger than it.

    Returns
    -------
    ndarray, shape (N, C_out, {osp}) (unbatched input: (C_out, {osp}))
        ``out = floor((in + before + after - dilation * (k - 1) - 1) / stride) + 1``.

    Notes
    -----
{dtypes}

    Examples
    --------
    >>> import numpy as np, loopconv
    >>> x = np.arange({xsize}, dtype=np.float64).reshape{xshape}
    >>> w = np.ones({wshape})
    >>> loopconv.conv{nd}d(x, w).shape
    {yshape}
    """


@_doc(_CONV_DOC, 1)
def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros"):
    return _conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups,
                 padding_mode)


@_doc(_CONV_DOC, 2)
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros"):
    return _conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups,
                 padding_mode)


@_doc(_CONV_DOC, 3)
def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros"):
    return _conv("conv3d", 3, input, weight, bias, stride, padding, dilation, groups,
                 padding_mode)


# ---------------------------------------------------------------------------------------------
# The input gradient of a convolution

_INPUT_DOC = ("Gradient of a {nd}-D convolution for its input, as "
              """``torch.nn.grad.conv{nd}d_input``.

    Parameters
    ----------
    input_size : sequence of ints
        Shape of the convolution's input: (N, C_in, {sp}), (C_in, {sp}) or the
        spatial sizes alone.  With stride > 1 several input sizes give the same output
        size; this chooses one (rows and columns that no window reaches get zeros).
    weight : array_like, shape (C_out, C_in // groups, {k})
    grad_output : array_like, shape (N, C_out, {osp}) or (C_out, {osp})
{common}
{zpad}

    Returns
    -------
    ndarray of shape `input_size`
        The gradient of ``sum(conv{nd}d(x, weight) * grad_output)`` with respect to x.

    Notes
    -----
{dtypes}

    Examples
    --------
    >>> import numpy as np, loopconv
    >>> w = np.ones({wshape})
    >>> g = np.ones({yshape})
    >>> loopconv.conv{nd}d_input({xshape}, w, g).shape
    {xshape}
    """)


@_doc(_INPUT_DOC, 1)
def conv1d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _conv_input("conv1d_input", 1, input_size, weight, grad_output, stride, padding,
                       dilation, groups)


@_doc(_INPUT_DOC, 2)
def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _conv_input("conv2d_input", 2, input_size, weight, grad_output, stride, padding,
                       dilation, groups)


@_doc(_INPUT_DOC, 3)
def conv3d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _conv_input("conv3d_input", 3, input_size, weight, grad_output, stride, padding,
                       dilation, groups)


# ---------------------------------------------------------------------------------------------
# The weight gradient of a convolution

_WEIGHT_DOC = ("Gradient of a {nd}-D convolution for its weight, as "
               """``torch.nn.grad.conv{nd}d_weight``.

    Parameters
    ----------
    input : array_like, shape (N, C_in, {sp}) or (C_in, {sp})
    weight_size : sequence of ints
        Shape of the weight, (C_out, C_in // groups, {k}).
    grad_output : array_like, shape (N, C_out, {osp}) or (C_out, {osp})
{common}
{zpad}

    Returns
    -------
    ndarray of shape `weight_size`
        The gradient of ``sum(conv{nd}d(input, w) * grad_output)`` with respect to w.

    Notes
    -----
{dtypes}

    Examples
    --------
    >>> import numpy as np, loopconv
    >>> x = np.arange({xsize}, dtype=np.float64).reshape{xshape}
    >>> g = np.ones({yshape})
    >>> loopconv.conv{nd}d_weight(x, {wshape}, g).shape
    {wshape}
    """)


@_doc(_WEIGHT_DOC, 1)
def conv1d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _conv_weight("conv1d_weight", 1, input, weight_size, grad_output, stride, padding,
                        dilation, groups)


@_doc(_WEIGHT_DOC, 2)
def conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _conv_weight("conv2d_weight", 2, input, weight_size, grad_output, stride, padding,
                        dilation, groups)


@_doc(_WEIGHT_DOC, 3)
def conv3d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    return _conv_weight("conv3d_weight", 3, input, weight_size, grad_output, stride, padding,
                        dilation, groups)


# ---------------------------------------------------------------------------------------------
# All gradients of a convolution

_BACKWARD_DOC = """All gradients of a {nd}-D convolution.

    Parameters
    ----------
    input, weight, stride, padding, dilation, groups, padding_mode
        As for `conv{nd}d`.  With a non-zero `padding_mode` the gradient of the padded
        border is folded back onto the input positions it was copied from.
    grad_output : array_like, shape of ``conv{nd}d(input, weight, ...)``
    output_mask : tuple of 3 bools, keyword-only, default (True, True, True)
        Which of (grad_input, grad_weight, grad_bias) to compute.

    Returns
    -------
    (grad_input, grad_weight, grad_bias) : tuple of ndarray or None
        None where `output_mask` is False.  grad_bias is ``grad_output`` summed over
        all axes but the channel axis.

    Notes
    -----
{dtypes}

    Examples
    --------
    >>> import numpy as np, loopconv
    >>> x = np.arange({xsize}, dtype=np.float64).reshape{xshape}
    >>> w = np.ones({wshape})
    >>> gx, gw, gb = loopconv.conv{nd}d_backward(x, w, np.ones({yshape}))
    >>> gx.shape, gw.shape, gb.shape
    ({xshape}, {wshape}, (1,))
    """


@_doc(_BACKWARD_DOC, 1)
def conv1d_backward(input, weight, grad_output, stride=1, padding=0, dilation=1, groups=1,
                    padding_mode="zeros", *, output_mask=(True, True, True)):
    return _conv_backward("conv1d_backward", 1, input, weight, grad_output, stride, padding,
                          dilation, groups, padding_mode, output_mask)


@_doc(_BACKWARD_DOC, 2)
def conv2d_backward(input, weight, grad_output, stride=1, padding=0, dilation=1, groups=1,
                    padding_mode="zeros", *, output_mask=(True, True, True)):
    return _conv_backward("conv2d_backward", 2, input, weight, grad_output, stride, padding,
                          dilation, groups, padding_mode, output_mask)


@_doc(_BACKWARD_DOC, 3)
def conv3d_backward(input, weight, grad_output, stride=1, padding=0, dilation=1, groups=1,
                    padding_mode="zeros", *, output_mask=(True, True, True)):
    return _conv_backward("conv3d_backward", 3, input, weight, grad_output, stride, padding,
                          dilation, groups, padding_mode, output_mask)


# ---------------------------------------------------------------------------------------------
# Transposed convolution

_TRANSPOSE_DOC = """{nd}-D transposed convolution, as ``torch.nn.functional.conv_transpose{nd}d``.

    The adjoint of `conv{nd}d` with the same weight, stride, padding and dilation:
    ``conv_transpose{nd}d(x, w) == conv{nd}d_input(out_shape, w, x)``.

    Parameters
    ----------
    input : array_like, shape (N, C_in, {sp}) or (C_in, {sp})
    weight : array_like, shape (C_in, C_out // groups, {k})
    bias : array_like, shape (C_out,), optional
    stride : int or tuple of {nd} ints, default 1
    padding : int, tuple of {nd} ints, or tuple of {nd} (before, after) pairs, default 0
        Removed from the output (``dilation * (k - 1) - padding`` of zero padding of the
        input, in the convolution view).
    output_padding : int or tuple of {nd} ints, default 0
        Extra size on the after side of each axis; smaller than stride or dilation.
    groups : int, default 1
    dilation : int or tuple of {nd} ints, default 1
    output_size : sequence of ints, keyword-only, optional
        The spatial output size (or the full shape); chooses `output_padding`.

    Returns
    -------
    ndarray, shape (N, C_out, {osp})
        ``out = (in - 1) * stride - before - after + dilation * (k - 1) + output_padding + 1``.

    Notes
    -----
{dtypes}

    Examples
    --------
    >>> import numpy as np, loopconv
    >>> x = np.ones({yshape})
    >>> w = np.ones({wshape})
    >>> loopconv.conv_transpose{nd}d(x, w).shape
    {xshape}
    """


@_doc(_TRANSPOSE_DOC, 1)
def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None):
    return _conv_transpose("conv_transpose1d", 1, input, weight, bias, stride, padding,
                           output_padding, groups, dilation, output_size)


@_doc(_TRANSPOSE_DOC, 2)
def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None):
    return _conv_transpose("conv_transpose2d", 2, input, weight, bias, stride, padding,
                           output_padding, groups, dilation, output_size)


@_doc(_TRANSPOSE_DOC, 3)
def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None):
    return _conv_transpose("conv_transpose3d", 3, input, weight, bias, stride, padding,
                           output_padding, groups, dilation, output_size)


# ---------------------------------------------------------------------------------------------
# All gradients of a transposed convolution

_TRANSPOSE_BACKWARD_DOC = """All gradients of a {nd}-D transposed convolution.

    Parameters
    ----------
    input, weight, stride, padding, output_padding, groups, dilation
        As for `conv_transpose{nd}d`.
    grad_output : array_like, shape of ``conv_transpose{nd}d(input, weight, ...)``
    output_mask : tuple of 3 bools, keyword-only, default (True, True, True)
        Which of (grad_input, grad_weight, grad_bias) to compute.

    Returns
    -------
    (grad_input, grad_weight, grad_bias) : tuple of ndarray or None
        grad_input is the convolution of grad_output with weight; None where `output_mask`
        is False.

    Notes
    -----
{dtypes}

    Examples
    --------
    >>> import numpy as np, loopconv
    >>> x = np.ones({yshape})
    >>> w = np.ones({wshape})
    >>> gx, gw, gb = loopconv.conv_transpose{nd}d_backward(x, w, np.ones({xshape}))
    >>> gx.shape, gw.shape, gb.shape
    ({yshape}, {wshape}, (1,))
    """


@_doc(_TRANSPOSE_BACKWARD_DOC, 1)
def conv_transpose1d_backward(input, weight, grad_output, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1, *, output_mask=(True, True, True)):
    return _conv_transpose_backward("conv_transpose1d_backward", 1, input, weight, grad_output,
                                    stride, padding, output_padding, groups, dilation,
                                    output_mask)


@_doc(_TRANSPOSE_BACKWARD_DOC, 2)
def conv_transpose2d_backward(input, weight, grad_output, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1, *, output_mask=(True, True, True)):
    return _conv_transpose_backward("conv_transpose2d_backward", 2, input, weight, grad_output,
                                    stride, padding, output_padding, groups, dilation,
                                    output_mask)


@_doc(_TRANSPOSE_BACKWARD_DOC, 3)
def conv_transpose3d_backward(input, weight, grad_output, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1, *, output_mask=(True, True, True)):
    return _conv_transpose_backward("conv_transpose3d_backward", 3, input, weight, grad_output,
                                    stride, padding, output_padding, groups, dilation,
                                    output_mask)
