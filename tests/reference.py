"""Convolutions in plain NumPy, written from their definitions; the oracle of the tests.

Layout as in loopconv: input ``(N, C_in, *spatial)``, weight ``(C_out, C_in // groups, *kernel)``,
output ``(N, C_out, *out)``.  With (before, after) zero padding ``pb``, the convolution is

    y[n, o, p] = bias[o] + sum_{c, k} w[o, c, k] * xpad[n, g(o) * C_in_g + c, p * stride + k * dil]

where ``xpad`` is ``x`` with ``pb`` zeros before.  Every function loops over the kernel taps k
and lets NumPy do the rest: for one tap, the input pixels read by all outputs form a strided
slice of the padded input ("window").  The forward pass reads windows, the input gradient adds
into them, the weight gradient sums window times output gradient.  Everything is computed in
float64.
"""

from __future__ import annotations

import numpy as np

NUMPY_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge",
                  "circular": "wrap"}


# ---------------------------------------------------------------------------------------------
# Arguments

def per_axis(value, nd):
    """An int, or a sequence of nd ints, as a tuple of nd ints."""
    if isinstance(value, (int, np.integer)):
        return (int(value),) * nd
    return tuple(int(v) for v in value)


def padding_pairs(padding, nd):
    """int, nd ints, nd (before, after) pairs or "valid" as nd (before, after) pairs."""
    if isinstance(padding, str):
        if padding != "valid":
            raise ValueError(padding)
        return ((0, 0),) * nd
    if isinstance(padding, (int, np.integer)):
        return ((int(padding), int(padding)),) * nd
    return tuple((int(p), int(p)) if isinstance(p, (int, np.integer)) else (int(p[0]), int(p[1]))
                 for p in padding)


def same_pairs(size, kernel, stride, dilation):
    """Padding giving output size ceil(in / stride), the odd pixel after (SAME_UPPER)."""
    pairs = []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        out = -(-n // s)
        total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
        pairs.append((total // 2, total - total // 2))
    return tuple(pairs)


def output_size(size, kernel, stride, pairs, dilation):
    """floor((in + before + after - dilation * (k - 1) - 1) / stride) + 1 per axis."""
    return tuple((n + b + a - d * (k - 1) - 1) // s + 1
                 for n, k, s, (b, a), d in zip(size, kernel, stride, pairs, dilation))


def transpose_output_size(size, kernel, stride, pairs, dilation, output_padding):
    """(in - 1) * stride - before - after + dilation * (k - 1) + output_padding + 1."""
    return tuple((n - 1) * s - b - a + d * (k - 1) + p + 1
                 for n, k, s, (b, a), d, p in zip(size, kernel, stride, pairs, dilation,
                                                  output_padding))


def geometry(x_spatial, kernel, stride, padding, dilation):
    """(stride, (before, after) pairs, dilation) per axis, from the arguments as given."""
    nd = len(kernel)
    stride, dilation = per_axis(stride, nd), per_axis(dilation, nd)
    if isinstance(padding, str) and padding == "same":
        pairs = same_pairs(x_spatial, kernel, stride, dilation)
    else:
        pairs = padding_pairs(padding, nd)
    return stride, pairs, dilation


def _windows(tap, out, stride, dilation):
    """For one kernel tap, the slices of the padded input read by the output pixels `out`."""
    return tuple(slice(k * d, k * d + (o - 1) * s + 1, s)
                 for k, o, s, d in zip(tap, out, stride, dilation))


_SPATIAL = {1: "x", 2: "xy", 3: "xyz"}     # einsum letters of the spatial axes


def _f64(a):
    return np.asarray(a, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Convolution with zero padding, and its two gradients

def conv(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """The convolution of x (N, C_in, *spatial) with w (C_out, C_in // groups, *kernel)."""
    x, w = _f64(x), _f64(w)
    stride, pairs, dilation = geometry(x.shape[2:], w.shape[2:], stride, padding, dilation)
    xpad = pad(x, pairs, padding_mode)
    out = output_size(xpad.shape[2:], w.shape[2:], stride, ((0, 0),) * len(pairs), dilation)
    n, c_out, c_in_g = x.shape[0], w.shape[0], w.shape[1]
    xg = xpad.reshape(n, groups, c_in_g, *xpad.shape[2:])
    wg = w.reshape(groups, c_out // groups, c_in_g, *w.shape[2:])
    y = np.zeros((n, groups, c_out // groups, *out))
    sp = _SPATIAL[len(out)]
    for tap in np.ndindex(*w.shape[2:]):
        window = xg[(slice(None),) * 3 + _windows(tap, out, stride, dilation)]
        y += np.einsum(f"ngc{sp},goc->ngo{sp}", window, wg[(slice(None),) * 3 + tap])
    y = y.reshape(n, c_out, *out)
    if bias is not None:
        y += _f64(bias).reshape(-1, *(1,) * len(out))
    return y


def conv_input(input_shape, w, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of sum(conv(x, w) * grad_output) for x of shape input_shape (N, C_in, *spatial).

    Each output pixel adds its gradient times the weight into the window it read.  grad_output
    may cover fewer output pixels than the convolution has (as in a transposed convolution whose
    output_padding is not smaller than the stride): the missing ones count as zeros."""
    w, gy = _f64(w), _f64(grad_output)
    stride, pairs, dilation = geometry(input_shape[2:], w.shape[2:], stride, padding, dilation)
    n, c_in = input_shape[:2]
    c_out, c_in_g = w.shape[:2]
    padded = tuple(s + b + a for s, (b, a) in zip(input_shape[2:], pairs))
    gx = np.zeros((n, groups, c_in_g, *padded))
    sp = _SPATIAL[len(padded)]
    gyg = gy.reshape(n, groups, c_out // groups, *gy.shape[2:])
    wg = w.reshape(groups, c_out // groups, c_in_g, *w.shape[2:])
    for tap in np.ndindex(*w.shape[2:]):
        window = (slice(None),) * 3 + _windows(tap, gy.shape[2:], stride, dilation)
        gx[window] += np.einsum(f"ngo{sp},goc->ngc{sp}", gyg, wg[(slice(None),) * 3 + tap])
    inside = tuple(slice(b, b + s) for s, (b, _) in zip(input_shape[2:], pairs))
    return gx.reshape(n, c_in, *padded)[(slice(None),) * 2 + inside]


def conv_weight(x, weight_shape, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Gradient of sum(conv(x, w) * grad_output) for w of shape weight_shape."""
    x, gy = _f64(x), _f64(grad_output)
    stride, pairs, dilation = geometry(x.shape[2:], weight_shape[2:], stride, padding, dilation)
    xpad = pad(x, pairs)
    n = x.shape[0]
    c_out, c_in_g = weight_shape[:2]
    xg = xpad.reshape(n, groups, c_in_g, *xpad.shape[2:])
    gyg = gy.reshape(n, groups, c_out // groups, *gy.shape[2:])
    gw = np.zeros((groups, c_out // groups, c_in_g, *weight_shape[2:]))
    sp = _SPATIAL[len(weight_shape) - 2]
    for tap in np.ndindex(*weight_shape[2:]):
        window = xg[(slice(None),) * 3 + _windows(tap, gy.shape[2:], stride, dilation)]
        gw[(slice(None),) * 3 + tap] = np.einsum(f"ngc{sp},ngo{sp}->goc", window, gyg)
    return gw.reshape(weight_shape)


def bias_grad(grad_output):
    gy = _f64(grad_output)
    return gy.sum(axis=(0, *range(2, gy.ndim)))


def conv_backward(x, w, grad_output, stride=1, padding=0, dilation=1, groups=1,
                  padding_mode="zeros"):
    """(grad_input, grad_weight, grad_bias) of conv(x, w, b, ...) for grad_output."""
    x, w = _f64(x), _f64(w)
    stride, pairs, dilation = geometry(x.shape[2:], w.shape[2:], stride, padding, dilation)
    xpad = pad(x, pairs, padding_mode)
    zero = ((0, 0),) * len(pairs)
    gx_pad = conv_input(xpad.shape, w, grad_output, stride, zero, dilation, groups)
    gw = conv_weight(xpad, w.shape, grad_output, stride, zero, dilation, groups)
    return pad_adjoint(gx_pad, pairs, padding_mode), gw, bias_grad(grad_output)


# ---------------------------------------------------------------------------------------------
# Transposed convolution: the adjoint of the convolution (its input gradient), plus a bias

def conv_transpose(x, w, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                   dilation=1, output_size=None):
    """Transposed convolution of x (N, C_in, *spatial) with w (C_in, C_out // groups, *kernel).

    output_size: the spatial output size, in place of output_padding."""
    x, w = _f64(x), _f64(w)
    nd = x.ndim - 2
    stride, pairs, dilation = geometry(x.shape[2:], w.shape[2:], stride, padding, dilation)
    if output_size is None:
        output_size = transpose_output_size(x.shape[2:], w.shape[2:], stride, pairs, dilation,
                                            per_axis(output_padding, nd))
    shape = (x.shape[0], w.shape[1] * groups, *output_size)
    y = conv_input(shape, w, x, stride, pairs, dilation, groups)
    if bias is not None:
        y += _f64(bias).reshape(-1, *(1,) * nd)
    return y


def conv_transpose_backward(x, w, grad_output, stride=1, padding=0, output_padding=0,
                            groups=1, dilation=1):
    """(grad_input, grad_weight, grad_bias) of conv_transpose(x, w, b, ...) for grad_output."""
    x, w, gy = _f64(x), _f64(w), _f64(grad_output)
    stride, pairs, dilation = geometry(x.shape[2:], w.shape[2:], stride, padding, dilation)
    full = conv(gy, w, None, stride, pairs, dilation, groups)
    gx = full[(slice(None),) * 2 + tuple(slice(0, s) for s in x.shape[2:])]
    gw = conv_weight(gy, w.shape, x, stride, pairs, dilation, groups)
    return gx, gw, bias_grad(gy)


# ---------------------------------------------------------------------------------------------
# Padding modes (torch.nn.functional.pad semantics through np.pad)

def pad(x, pairs, mode="zeros"):
    """x (N, C, *spatial) padded by (before, after) pairs: zeros, reflect (mirror without the
    edge), replicate (repeat the edge) or circular (wrap around)."""
    x = _f64(x)
    return np.pad(x, ((0, 0), (0, 0), *pairs), mode=NUMPY_PAD_MODE[mode])


def pad_adjoint(g, pairs, mode="zeros"):
    """The adjoint of `pad`: g (of the padded shape) summed onto the positions each padded
    element was copied from.  np.pad of the index range gives that source index."""
    g = _f64(g)
    for axis, (before, after) in enumerate(pairs):
        ax = 2 + axis
        size = g.shape[ax] - before - after
        if mode == "zeros":
            source = np.pad(np.arange(size), (before, after), constant_values=-1)
        else:
            source = np.pad(np.arange(size), (before, after), mode=NUMPY_PAD_MODE[mode])
        keep = source >= 0
        folded = np.zeros(g.shape[:ax] + (size,) + g.shape[ax + 1:])
        np.add.at(np.moveaxis(folded, ax, 0), source[keep], np.moveaxis(g, ax, 0)[keep])
        g = folded
    return g
