"""Convolution layers with a backward pass, on NumPy arrays.

`Conv1d`, `Conv2d`, `Conv3d`, `ConvTranspose1d`, `ConvTranspose2d` and `ConvTranspose3d` take
the arguments of their ``torch.nn`` namesakes, in the same order, and hold `weight` and `bias`
as plain NumPy arrays.  A layer is a function with memory: ``y = layer(x)`` keeps `x`, and
``gx = layer.backward(gy)`` returns the gradient for `x` and sets `grad_weight` and
`grad_bias`.  The work is done by `loopconv.functional`; one base class per family serves the
three dimensionalities.
"""

from __future__ import annotations

import math

import numpy as np

from loopconv import _args, _config, functional

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]


# ---------------------------------------------------------------------------------------------
# Helpers

def _float_dtype(name: str, dtype) -> np.dtype:
    if dtype is None:        # PyTorch's dtype=None: the default dtype
        return np.dtype(np.float32)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name}: dtype {dtype!r} is not a NumPy dtype") from None
    if dt not in _args.NATIVE_DTYPES:
        names = " or ".join(str(native) for native in _args.NATIVE_DTYPES)
        raise TypeError(f"{name}: dtype must be {names}, got {dt}")
    return dt


def _generator(name: str, rng) -> np.random.Generator:
    if isinstance(rng, (bool, np.bool_)):
        raise TypeError(f"{name}: rng must be a numpy.random.Generator, an int seed or None, "
                        f"got {rng!r}")
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: rng must be a numpy.random.Generator, an int seed or None, "
                        f"got {rng!r} ({exc})") from None


def _batch(input, problem):
    """`input` (an ndarray of the problem's input shape) with a batch axis."""
    return input[None] if problem.unbatched else input


def _padding_attr(padding, pairs):
    """The padding as an attribute: strings kept, symmetric pairs as one int per axis."""
    if isinstance(padding, str):
        return padding
    if all(b == a for b, a in pairs):
        return tuple(b for b, _ in pairs)
    return pairs


# ---------------------------------------------------------------------------------------------
# The part shared by both families: arguments, parameters, saved state, repr.

class _Layer:
    _nd: int           # number of spatial dimensions, set by the concrete classes
    _kind: str         # "conv" or "conv_transpose": the functional family

    def _setup(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
               bias, padding_mode, dtype):
        name, nd = type(self).__name__, self._nd
        self.in_channels = _args.count(name, "in_channels", in_channels)
        self.out_channels = _args.count(name, "out_channels", out_channels)
        self.groups = _args.count(name, "groups", groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{name}: groups={self.groups} must divide in_channels="
                             f"{self.in_channels} and out_channels={self.out_channels}")
        self.kernel_size = _args.per_axis(name, "kernel_size", kernel_size, nd)
        self.stride = _args.per_axis(name, "stride", stride, nd)
        self.dilation = _args.per_axis(name, "dilation", dilation, nd)
        pads = _args.padding_pairs(name, padding, nd, allow_same=self._kind == "conv")
        self.padding = _padding_attr(padding, pads)
        self.padding_mode = _args.padding_mode(name, padding_mode)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"{name}: bias must be True or False, got {bias!r}")
        self._has_bias = bool(bias)
        self.dtype = _float_dtype(name, dtype)
        self.grad_weight = self.grad_bias = None
        self._input = self._output_shape = None
        # The problem and plan (None where it has none) of the last forward, and the shapes
        # and dtypes of (input, weight, bias) they were made for: a call with the same ones
        # skips the checks (see _known), and backward reuses them.
        self._problem = self._plan = self._plan_sig = None

    def _weight_shape(self) -> tuple:
        raise NotImplementedError

    def reset_parameters(self, rng=None) -> None:
        """Draw new `weight` and `bias` as PyTorch does by default.

        Both are uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in))`` with
        ``fan_in = weight.shape[1] * prod(kernel_size)``; `rng` is a `numpy.random.Generator`,
        an int seed or None (fresh entropy).  The weight is drawn first, then the bias.
        """
        gen = _generator(type(self).__name__, rng)
        shape = self._weight_shape()
        bound = 1.0 / math.sqrt(shape[1] * math.prod(self.kernel_size))
        self.weight = gen.uniform(-bound, bound, shape).astype(self.dtype)
        self.bias = (gen.uniform(-bound, bound, self.out_channels).astype(self.dtype)
                     if self._has_bias else None)

    def _name(self, suffix: str = "") -> str:
        """The name of the functional counterpart, which errors name."""
        return f"{self._kind}{self._nd}d{suffix}"

    def _known(self, input):
        """The problem of the last forward if `input`, `weight` and `bias` have the shapes and
        dtypes it was made for (the layer's settings are fixed), else None."""
        if self._problem is None:
            return None
        sig = functional._signature(input, self.weight, self.bias)
        return self._problem if sig is not None and sig == self._plan_sig else None

    def _remember(self, input, problem, plan) -> None:
        self._problem, self._plan = problem, plan
        self._plan_sig = functional._signature(input, self.weight, self.bias)

    def _backward_problem(self, x, gy):
        """The problem of the last forward in the dtype computed with `gy`, and its plan
        (None where it has none), if weight and bias are as they were; else (None, None)."""
        problem = self._known(x)
        if problem is None:
            return None, None
        dtype = _args.compute_dtype(x, self.weight, gy)
        if dtype == problem.dtype:
            return problem, self._plan
        problem = problem.with_dtype(dtype)
        return problem, functional._plan_of(problem)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _save(self, input, output: np.ndarray) -> None:
        self._input = np.asarray(input)
        self._output_shape = output.shape

    def _saved_input(self, grad_output):
        """The input of the last forward, and grad_output checked against its output."""
        name = type(self).__name__
        if self._input is None:
            raise RuntimeError(f"{name}.backward called before forward: there is no input "
                               "to differentiate for; call the layer on an input first")
        gy = _args.as_array(f"{name}.backward", "grad_output", grad_output)
        if gy.shape != self._output_shape:
            raise ValueError(f"{name}.backward: grad_output must have the shape of the last "
                             f"forward output, {self._output_shape}; got {gy.shape}")
        return self._input, gy

    def __repr__(self) -> str:
        nd = self._nd
        s = (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
             f"kernel_size={self.kernel_size}, stride={self.stride}")
        if self.padding != (0,) * nd:
            s += f", padding={self.padding!r}"
        if self.dilation != (1,) * nd:
            s += f", dilation={self.dilation}"
        output_padding = getattr(self, "output_padding", (0,) * nd)
        if output_padding != (0,) * nd:
            s += f", output_padding={output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.dtype != np.float32:
            s += f", dtype={self.dtype}"
        return s + ")"


# ---------------------------------------------------------------------------------------------
# Convolutions

class _ConvNd(_Layer):
    _kind = "conv"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", dtype=np.float32, rng=None):
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, dtype)
        self.reset_parameters(rng)

    def _weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def forward(self, input):
        """The convolution of `input`, ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``;
        keeps `input` for `backward`."""
        problem = self._known(input)
        if problem is None:
            y, problem, plan = functional._conv_checked(
                self._name(), self._nd, input, self.weight, self.bias, self.stride,
                self.padding, self.dilation, self.groups, self.padding_mode)
            self._remember(input, problem, plan)
        elif self._plan is not None:
            y = self._plan.forward(input, self.weight, self.bias, _config.get_num_threads)
        else:
            y = functional._conv_run(self._name(), problem, _batch(input, problem), self.weight,
                                     self.bias)
        self._save(input, y)
        return y

    def backward(self, grad_output):
        """Gradient for the input of the last `forward`; sets `grad_weight` and `grad_bias`."""
        x, gy = self._saved_input(grad_output)
        mask = (True, True, self.bias is not None)
        problem, plan = self._backward_problem(x, gy)
        if plan is not None:
            grads = functional._planned_backward(plan, x, self.weight, gy, mask)
        else:
            grads, _ = functional._conv_backward_checked(
                self._name("_backward"), self._nd, x, self.weight, gy, self.stride,
                self.padding, self.dilation, self.groups, self.padding_mode, mask,
                problem=problem)
        gx, self.grad_weight, self.grad_bias = grads
        return gx


# ---------------------------------------------------------------------------------------------
# Transposed convolutions

class _ConvTransposeNd(_Layer):
    _kind = "conv_transpose"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, dtype=np.float32, rng=None,
                 *, padding_mode="zeros"):
        name = type(self).__name__
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, dtype)
        if self.padding_mode != "zeros":
            raise ValueError(f"{name}: only padding_mode='zeros' is supported for transposed "
                             f"convolutions, got padding_mode={self.padding_mode!r}")
        self.output_padding = _args.output_padding(name, output_padding, self._nd, self.stride,
                                                   self.dilation)
        self._used_output_padding = None
        self.reset_parameters(rng)

    def _weight_shape(self):
        return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)

    def forward(self, input, output_size=None):
        """The transposed convolution of `input`; keeps `input` for `backward`.

        `output_size` (the spatial sizes, or the full shape) chooses the output padding for
        this call, as in PyTorch; `backward` then uses the same.
        """
        problem = self._known(input) if output_size is None else None
        if problem is None or self._used_output_padding != self.output_padding:
            y, problem, plan = functional._conv_transpose_checked(
                self._name(), self._nd, input, self.weight, self.bias, self.stride,
                self.padding, self.output_padding, self.groups, self.dilation, output_size)
            self._remember(input, problem, plan)
            self._used_output_padding = problem.output_padding
        elif self._plan is not None:
            y = self._plan.grad_input(input, self.weight, self.bias, _config.get_num_threads)
        else:
            y = functional._conv_transpose_run(self._name(), problem, _batch(input, problem),
                                               self.weight, self.bias)
        self._save(input, y)
        return y

    def backward(self, grad_output):
        """Gradient for the input of the last `forward`; sets `grad_weight` and `grad_bias`."""
        x, gy = self._saved_input(grad_output)
        mask = (True, True, self.bias is not None)
        problem, plan = self._backward_problem(x, gy)
        if plan is not None:
            grads = functional._planned_transpose_backward(plan, x, self.weight, gy, mask)
        else:
            grads, _ = functional._conv_transpose_backward_checked(
                self._name("_backward"), self._nd, x, self.weight, gy, self.stride,
                self.padding, self._used_output_padding, self.groups, self.dilation, mask,
                problem=problem)
        gx, self.grad_weight, self.grad_bias = grads
        return gx


# ---------------------------------------------------------------------------------------------
# Public classes and their docstrings

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}

_COMMON = """\
    in_channels, out_channels : int
        Channel counts, both divisible by `groups`.
    kernel_size : int or tuple of {nd} ints
    stride : int or tuple of {nd} ints, default 1"""

_ATTRIBUTES = """\
    grad_weight, grad_bias : ndarray or None
        Set by `backward` (overwritten, not accumulated as PyTorch's ``.grad``); None
        before the first `backward`, and `grad_bias` is None without a bias.
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode
        The checked constructor arguments; an int given for every axis becomes a tuple."""

_NOTES = """\
    The result has the common dtype of input and weight (float32 with float64 gives float64).
    `forward` keeps a reference to its input (no copy) until the next `forward`: do not change
    it in place before `backward`.  `backward` reads `weight` when it is called, so update the
    weights after it; it may be called more than once.  `backward` before any `forward`
    raises `RuntimeError` (as PyTorch does for a graph that does not exist); a `grad_output`
    whose shape is not that of the last output raises `ValueError`."""

_CONV_DOC = """{nd}-D convolution layer, as ``torch.nn.Conv{nd}d``, with a `backward` method.

    ``y = layer(x)`` is ``loopconv.conv{nd}d(x, layer.weight, layer.bias, ...)`` with the
    layer's settings; ``gx = layer.backward(gy)`` returns the gradient for `x` and sets
    `grad_weight` and `grad_bias`.

    Parameters
    ----------
{common}
    padding : int, tuple of {nd} ints, tuple of {nd} (before, after) pairs, 'valid' or 'same'
        'same' gives output size ``ceil(in / stride)``, also with stride > 1 (which
        ``torch.nn.Conv{nd}d`` rejects); the odd pixel of the padding goes after.
    dilation : int or tuple of {nd} ints, default 1
    groups : int, default 1
    bias : bool, default True
    padding_mode : {{'zeros', 'reflect', 'replicate', 'circular'}}, default 'zeros'
    dtype : {{{dtypes}}}, default numpy.float32
        The dtype of `weight` and `bias` (None: float32).
    rng : numpy.random.Generator, int or None
        Source of the initial weights: `weight` and `bias` uniform in ``±1/sqrt(fan_in)``,
        ``fan_in = in_channels // groups * prod(kernel_size)``, as PyTorch.

    Attributes
    ----------
    weight : ndarray, shape (out_channels, in_channels // groups, {k})
    bias : ndarray, shape (out_channels,), or None
        Plain arrays: replace them or update them in place; each call uses the current ones.
{attributes}

    Notes
    -----
{notes}

    Examples
    --------
    >>> import numpy as np
    >>> from loopconv.nn import Conv{nd}d
    >>> layer = Conv{nd}d(3, 8, kernel_size=3, padding=1, rng=0)
    >>> layer
    Conv{nd}d(3, 8, kernel_size={k3}, stride={one}, padding={one})
    >>> y = layer(np.ones({xshape}, np.float32))
    >>> y.shape
    {yshape}
    >>> gx = layer.backward(np.ones_like(y))
    >>> gx.shape, layer.grad_weight.shape, layer.grad_bias.shape
    ({xshape}, {wshape}, (8,))
"""

_TRANSPOSE_DOC = """{nd}-D transposed convolution layer, as ``torch.nn.ConvTranspose{nd}d``.

    ``y = layer(x)`` is ``loopconv.conv_transpose{nd}d(x, layer.weight, layer.bias, ...)``
    with the layer's settings, and ``layer(x, output_size=...)`` chooses the output padding
    as in PyTorch; ``gx = layer.backward(gy)`` returns the gradient for `x` and sets
    `grad_weight` and `grad_bias`, with the output padding the last `forward` used.

    Parameters
    ----------
{common}
    padding : int, tuple of {nd} ints, or tuple of {nd} (before, after) pairs, default 0
        Removed from the output.
    output_padding : int or tuple of {nd} ints, default 0
        Added to the after side of the output; smaller than stride or dilation.
    groups : int, default 1
    bias : bool, default True
    dilation : int or tuple of {nd} ints, default 1
    dtype : {{{dtypes}}}, default numpy.float32
        The dtype of `weight` and `bias` (None: float32).
    rng : numpy.random.Generator, int or None
        Source of the initial weights: `weight` and `bias` uniform in ``±1/sqrt(fan_in)``,
        with PyTorch's ``fan_in = weight.shape[1] * prod(kernel_size)
        = out_channels // groups * prod(kernel_size)``.
    padding_mode : 'zeros', keyword-only
        The only mode, as in PyTorch (accepted so that PyTorch code carries over).

    Attributes
    ----------
    weight : ndarray, shape (in_channels, out_channels // groups, {k})
    bias : ndarray, shape (out_channels,), or None
        Plain arrays: replace them or update them in place; each call uses the current ones.
{attributes}
    output_padding : tuple of {nd} ints

    Notes
    -----
{notes}

    Examples
    --------
    >>> import numpy as np
    >>> from loopconv.nn import ConvTranspose{nd}d
    >>> layer = ConvTranspose{nd}d(8, 3, kernel_size=3, stride=2, padding=1, rng=0)
    >>> x = np.ones({yshape}, np.float32)
    >>> layer(x).shape
    {tshape}
    >>> y = layer(x, output_size={osize})
    >>> y.shape
    {tshape1}
    >>> layer.backward(np.ones_like(y)).shape
    {yshape}
"""


def _doc(template: str, nd: int) -> str:
    shape = (2, 3) + (5,) * nd
    fields = dict(nd=nd, k=", ".join("k" + a for a in "dhw"[3 - nd:]),
                  k3=(3,) * nd, one=(1,) * nd, xshape=shape, yshape=(2, 8) + (5,) * nd,
                  wshape=(8, 3) + (3,) * nd, tshape=(2, 3) + (9,) * nd, osize=[10] * nd,
                  tshape1=(2, 3) + (10,) * nd, attributes=_ATTRIBUTES, notes=_NOTES,
                  dtypes=", ".join(f"numpy.{dtype}" for dtype in _args.NATIVE_DTYPES))
    fields["common"] = _COMMON.format(**fields)
    return template.format(**fields)


class Conv1d(_ConvNd):
    __doc__ = _doc(_CONV_DOC, 1)
    _nd = 1


class Conv2d(_ConvNd):
    __doc__ = _doc(_CONV_DOC, 2)
    _nd = 2


class Conv3d(_ConvNd):
    __doc__ = _doc(_CONV_DOC, 3)
    _nd = 3


class ConvTranspose1d(_ConvTransposeNd):
    __doc__ = _doc(_TRANSPOSE_DOC, 1)
    _nd = 1


class ConvTranspose2d(_ConvTransposeNd):
    __doc__ = _doc(_TRANSPOSE_DOC, 2)
    _nd = 2


class ConvTranspose3d(_ConvTransposeNd):
    __doc__ = _doc(_TRANSPOSE_DOC, 3)
    _nd = 3
