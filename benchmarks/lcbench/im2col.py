"""2-D convolutions in plain NumPy by im2col and a matrix product: the reference peer that
``python -m loopconv bench`` times loopconv against.

This is the textbook way to write a fast convolution in NumPy (Caffe's im2col, as in most
NumPy deep-learning tutorials), done with care: one copy gathers every window of the padded
input into a column matrix per image, and BLAS matrix products (NumPy's stacked `matmul`, one
GEMM per image and group) do the arithmetic.

Layout as loopconv and PyTorch: input ``(N, C, H, W)``, weight ``(O, C // groups, kh, kw)``,
output ``(N, O, OH, OW)`` with ``OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1`` (and the
same for the width).  The columns of image ``n`` are the matrix ``cols[n]`` of shape
``(C * kh * kw, OH * OW)``, rows ``(c, i, j)`` (channel, kernel row, kernel column): the
gather copy reads rows of the input in order, and the products come out in the output's
layout, with no transposition afterwards.

- forward:          ``y[n] = W @ cols[n]``
- input gradient:   ``dcols[n] = W.T @ gy[n]``, then col2im: a scatter-add of each of the
                    ``kh * kw`` kernel taps into the padded input gradient
- weight gradient:  ``gw = sum over n of gy[n] @ cols[n].T``

Only symmetric zero padding (an int or an ``(ph, pw)`` pair) is handled, which is what the
benchmark shapes need.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["conv2d", "conv2d_input", "conv2d_weight"]


def _pair(value) -> tuple:
    if isinstance(value, (int, np.integer)):
        return (int(value), int(value))
    a, b = value
    return (int(a), int(b))


def _pad(x: np.ndarray, padding: tuple) -> np.ndarray:
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    return xp


def _im2col(x: np.ndarray, kernel: tuple, stride: tuple, padding: tuple,
            dilation: tuple) -> tuple:
    """The columns ``(N, C * kh * kw, OH * OW)`` of `x` and the output size ``(OH, OW)``."""
    n, c = x.shape[:2]
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    xp = _pad(x, padding)
    # every window of the dilated kernel's extent, then every stride-th window and every
    # dilation-th element in it: (N, C, OH, OW, kh, kw), a view
    windows = sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]
    oh, ow = windows.shape[2:4]
    # the one copy: (N, C, kh, kw, OH, OW), with the input's rows innermost
    cols = np.ascontiguousarray(windows.transpose(0, 1, 4, 5, 2, 3))
    return cols.reshape(n, c * kh * kw, oh * ow), (oh, ow)


def conv2d(x, weight, stride=1, padding=0, dilation=1, groups=1) -> np.ndarray:
    """The convolution of `x` ``(N, C, H, W)`` with `weight` ``(O, C // groups, kh, kw)``."""
    x, weight = np.asarray(x), np.asarray(weight)
    n = x.shape[0]
    o, cg, kh, kw = weight.shape
    cols, (oh, ow) = _im2col(x, (kh, kw), _pair(stride), _pair(padding), _pair(dilation))
    cols = cols.reshape(n, groups, cg * kh * kw, oh * ow)
    w = weight.reshape(groups, o // groups, cg * kh * kw)
    return np.matmul(w, cols).reshape(n, o, oh, ow)       # (N, G, O // G, OH * OW)


def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1,
                 groups=1) -> np.ndarray:
    """The gradient of `conv2d` for its input, of shape `input_size` ``(N, C, H, W)``."""
    weight, gy = np.asarray(weight), np.asarray(grad_output)
    n, c, h, w = input_size
    o, cg, kh, kw = weight.shape
    oh, ow = gy.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    wt = weight.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)
    dcols = np.matmul(wt, gy.reshape(n, groups, o // groups, oh * ow))  # (N, G, K // G, L)
    dcols = dcols.reshape(n, c, kh, kw, oh, ow)
    # col2im: add each kernel tap's columns back into the windows they were gathered from,
    # one strided 4-D add per tap
    gxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            gxp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                j * dw:j * dw + sw * (ow - 1) + 1:sw] += dcols[:, :, i, j]
    if ph == 0 and pw == 0:
        return gxp
    return np.ascontiguousarray(gxp[:, :, ph:ph + h, pw:pw + w])


def conv2d_weight(x, weight_size, grad_output, stride=1, padding=0, dilation=1,
                  groups=1) -> np.ndarray:
    """The gradient of `conv2d` for its weight, of shape `weight_size` ``(O, C // g, kh, kw)``."""
    x, gy = np.asarray(x), np.asarray(grad_output)
    n = x.shape[0]
    o, cg, kh, kw = weight_size
    cols, (oh, ow) = _im2col(x, (kh, kw), _pair(stride), _pair(padding), _pair(dilation))
    cols = cols.reshape(n, groups, cg * kh * kw, oh * ow)
    g = gy.reshape(n, groups, o // groups, oh * ow)
    gw = np.matmul(g, cols.transpose(0, 1, 3, 2))          # (N, G, O // G, K // G)
    return gw.sum(axis=0).reshape(o, cg, kh, kw)
