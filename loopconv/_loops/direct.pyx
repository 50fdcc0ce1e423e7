"""Direct loops for the three passes of a convolution: the reference path.

Layout and arguments as in tiled.pxi: C-contiguous 5-D arrays
    input x (N, C, D, H, W), weight w (O, C // G, KD, KH, KW), output y (N, O, OD, OH, OW),
    OD = (D + pd_before + pd_after - dd * (KD - 1) - 1) // sd + 1 (likewise H, W),
and (d, h, w) triples for stride, padding-before and dilation.  Zero padding is not formed:
windows are clipped to the input.

Every element is computed from its defining sum, with the innermost loop along a contiguous
output row.  The tests hold the tiled loops against these, and loopconv/_loops/__init__.py uses
them where a problem is too small for packing to pay (the call costs more than the arithmetic).
"""

cimport cython
cimport numpy as cnp
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND
from cython.parallel cimport parallel, prange
from libc.string cimport memset

import math

import numpy as np

from loopconv._loops.elements cimport ctype_name, element
from loopconv._loops.common cimport (end_inside, first_inside, flush_subnormals, fpstate,
                                     restore_fpstate)

cnp.import_array()


cdef struct Geometry:
    Py_ssize_t N, C, O, G, Cg, Og
    Py_ssize_t size[3]      # input D, H, W
    Py_ssize_t out[3]       # output OD, OH, OW
    Py_ssize_t k[3]         # kernel KD, KH, KW
    Py_ssize_t stride[3]
    Py_ssize_t pad[3]       # before
    Py_ssize_t dil[3]


cdef Geometry geometry(const Py_ssize_t *xs, const Py_ssize_t *ws, const Py_ssize_t *ys, stride,
                       pad, dilation, Py_ssize_t groups):
    cdef Geometry g
    cdef int a
    g.N = xs[0]
    g.C = xs[1]
    g.O = ws[0]
    g.Cg = ws[1]
    g.G = groups
    g.Og = g.O // groups
    for a in range(3):
        g.size[a] = xs[2 + a]
        g.out[a] = ys[2 + a]
        g.k[a] = ws[2 + a]
        g.stride[a] = stride[a]
        g.pad[a] = pad[a]
        g.dil[a] = dilation[a]
    return g


cdef inline Py_ssize_t tap_lo(const Geometry *g, int a, Py_ssize_t k) noexcept nogil:
    """First output index along axis a whose window tap k lies inside the input."""
    return min(first_inside(k * g.dil[a] - g.pad[a], g.stride[a]), g.out[a])


cdef inline Py_ssize_t tap_hi(const Geometry *g, int a, Py_ssize_t k) noexcept nogil:
    """One past the last output index along axis a whose window tap k lies inside the input."""
    return min(end_inside(k * g.dil[a] - g.pad[a], g.stride[a], g.size[a]), g.out[a])


cdef inline Py_ssize_t in_index(const Geometry *g, int a, Py_ssize_t o,
                                Py_ssize_t k) noexcept nogil:
    return o * g.stride[a] + k * g.dil[a] - g.pad[a]


cdef void forward_plane(const Geometry *g, Py_ssize_t n, Py_ssize_t o, const element *x,
                        const element *w, const element *bias, element *y) noexcept nogil:
    """y[n, o] = bias[o] + sum over c, kd, kh, kw of w[o, c, kd, kh, kw] * window of x."""
    cdef Py_ssize_t OH = g.out[1], OW = g.out[2], H = g.size[1], W = g.size[2]
    cdef Py_ssize_t c, kd, kh, kw, od, oh, ow, lw, hw
    cdef Py_ssize_t ci = (o // g.Og) * g.Cg
    cdef element *yp = y + (n * g.O + o) * g.out[0] * OH * OW
    cdef element *yrow
    cdef const element *xc
    cdef const element *xrow
    cdef element wv
    for od in range(g.out[0] * OH * OW):
        yp[od] = bias[o] if bias != NULL else 0
    for c in range(g.Cg):
        xc = x + (n * g.C + ci + c) * g.size[0] * H * W
        for kd in range(g.k[0]):
            for kh in range(g.k[1]):
                for kw in range(g.k[2]):
                    wv = w[(((o * g.Cg + c) * g.k[0] + kd) * g.k[1] + kh) * g.k[2] + kw]
                    lw = tap_lo(g, 2, kw)
                    hw = tap_hi(g, 2, kw)
                    for od in range(tap_lo(g, 0, kd), tap_hi(g, 0, kd)):
                        for oh in range(tap_lo(g, 1, kh), tap_hi(g, 1, kh)):
                            yrow = yp + (od * OH + oh) * OW
                            xrow = xc + ((in_index(g, 0, od, kd) * H + in_index(g, 1, oh, kh))
                                         * W + in_index(g, 2, 0, kw))
                            for ow in range(lw, hw):
                                yrow[ow] += wv * xrow[ow * g.stride[2]]


cdef void input_plane(const Geometry *g, Py_ssize_t n, Py_ssize_t ci, const element *dy,
                      const element *w, const element *bias, element *dx) noexcept nogil:
    """dx[n, ci] = bias[ci] + sum over the outputs o of ci's group and the taps of w * dy,
    scattered."""
    cdef Py_ssize_t OH = g.out[1], OW = g.out[2], H = g.size[1], W = g.size[2]
    cdef Py_ssize_t c = ci % g.Cg, o0 = (ci // g.Cg) * g.Og
    cdef Py_ssize_t o, kd, kh, kw, od, oh, ow, lw, hw
    cdef element *dxp = dx + (n * g.C + ci) * g.size[0] * H * W
    cdef element *dxrow
    cdef const element *dyrow
    cdef element wv
    for od in range(g.size[0] * H * W):
        dxp[od] = bias[ci] if bias != NULL else 0
    for o in range(o0, o0 + g.Og):
        for kd in range(g.k[0]):
            for kh in range(g.k[1]):
                for kw in range(g.k[2]):
                    wv = w[(((o * g.Cg + c) * g.k[0] + kd) * g.k[1] + kh) * g.k[2] + kw]
                    lw = tap_lo(g, 2, kw)
                    hw = tap_hi(g, 2, kw)
                    for od in range(tap_lo(g, 0, kd), tap_hi(g, 0, kd)):
                        for oh in range(tap_lo(g, 1, kh), tap_hi(g, 1, kh)):
                            dyrow = dy + (((n * g.O + o) * g.out[0] + od) * OH + oh) * OW
                            dxrow = dxp + ((in_index(g, 0, od, kd) * H + in_index(g, 1, oh, kh))
                                           * W + in_index(g, 2, 0, kw))
                            for ow in range(lw, hw):
                                dxrow[ow * g.stride[2]] += wv * dyrow[ow]


cdef void weight_row(const Geometry *g, Py_ssize_t o, Py_ssize_t c, const element *x,
                     const element *dy, element *dw) noexcept nogil:
    """dw[o, c, :, :, :] = sum over images and output pixels of dy * window of x."""
    cdef Py_ssize_t OH = g.out[1], OW = g.out[2], H = g.size[1], W = g.size[2]
    cdef Py_ssize_t ci = (o // g.Og) * g.Cg + c
    cdef Py_ssize_t n, kd, kh, kw, od, oh, ow, lw, hw
    cdef const element *dyrow
    cdef const element *xrow
    cdef element acc
    for kd in range(g.k[0]):
        for kh in range(g.k[1]):
            for kw in range(g.k[2]):
                acc = 0
                lw = tap_lo(g, 2, kw)
                hw = tap_hi(g, 2, kw)
                for n in range(g.N):
                    for od in range(tap_lo(g, 0, kd), tap_hi(g, 0, kd)):
                        for oh in range(tap_lo(g, 1, kh), tap_hi(g, 1, kh)):
                            dyrow = dy + (((n * g.O + o) * g.out[0] + od) * OH + oh) * OW
                            xrow = x + ((((n * g.C + ci) * g.size[0] + in_index(g, 0, od, kd))
                                         * H + in_index(g, 1, oh, kh)) * W
                                        + in_index(g, 2, 0, kw))
                            for ow in range(lw, hw):
                                acc = acc + dyrow[ow] * xrow[ow * g.stride[2]]
                dw[(((o * g.Cg + c) * g.k[0] + kd) * g.k[1] + kh) * g.k[2] + kw] = acc


def forward(const element[:, :, :, :, ::1] x, const element[:, :, :, :, ::1] w,
            const element[::1] bias, element[:, :, :, :, ::1] y,
            stride, pad, dilation, Py_ssize_t groups, int num_threads):
    """y = conv(x, w) + bias; an empty bias means none."""
    cdef Geometry g = geometry(x.shape, w.shape, y.shape, stride, pad, dilation,
                               groups)
    cdef Py_ssize_t item
    cdef fpstate fp
    cdef const element *bptr = &bias[0] if bias.shape[0] > 0 else NULL
    if y.size == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        fp = flush_subnormals()
        # race-free: item (n, o) writes only the plane y[n, o].
        for item in prange(g.N * g.O, schedule="static"):
            forward_plane(&g, item // g.O, item % g.O, &x[0, 0, 0, 0, 0], &w[0, 0, 0, 0, 0],
                          bptr, &y[0, 0, 0, 0, 0])
        restore_fpstate(fp)


def grad_input(const element[:, :, :, :, ::1] dy, const element[:, :, :, :, ::1] w,
               const element[::1] bias, element[:, :, :, :, ::1] dx, stride, pad, dilation,
               Py_ssize_t groups, int num_threads):
    """dx = bias + gradient of conv(x, w) with respect to x, given dy (the transposed
    convolution of dy); dx is overwritten.  An empty bias means none."""
    cdef const element *bptr = &bias[0] if bias.shape[0] > 0 else NULL
    cdef Geometry g = geometry(dx.shape, w.shape, dy.shape, stride, pad, dilation,
                               groups)
    cdef Py_ssize_t item
    cdef fpstate fp
    if dx.size == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        fp = flush_subnormals()
        # race-free: item (n, ci) writes only the plane dx[n, ci].
        for item in prange(g.N * g.C, schedule="static"):
            input_plane(&g, item // g.C, item % g.C, &dy[0, 0, 0, 0, 0], &w[0, 0, 0, 0, 0],
                        bptr, &dx[0, 0, 0, 0, 0])
        restore_fpstate(fp)


def grad_weight(const element[:, :, :, :, ::1] x, const element[:, :, :, :, ::1] dy,
                element[:, :, :, :, ::1] dw, stride, pad, dilation, Py_ssize_t groups,
                int num_threads):
    """dw = gradient of conv(x, w) with respect to w, given dy; dw is overwritten."""
    cdef Geometry g = geometry(x.shape, dw.shape, dy.shape, stride, pad, dilation,
                               groups)
    cdef Py_ssize_t item
    cdef fpstate fp
    if dw.size == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        fp = flush_subnormals()
        # race-free: item (o, c) writes only dw[o, c].
        for item in prange(g.O * g.Cg, schedule="static"):
            weight_row(&g, item // g.Cg, item % g.Cg, &x[0, 0, 0, 0, 0], &dy[0, 0, 0, 0, 0],
                       &dw[0, 0, 0, 0, 0])
        restore_fpstate(fp)


# ---------------------------------------------------------------------------------------------
# The scatter of an input gradient computed as columns (see loopconv._loops.col2im_grad_input)

cdef void col2im_plane(const Geometry *g, Py_ssize_t n, Py_ssize_t ci, const element *cols,
                       const Py_ssize_t *where, const element *bias,
                       element *dx) noexcept nogil:
    """dx[n, ci] = bias[ci] + the columns of channel ci scattered: for each output pixel p of
    image n and each tap t, in that order, cols[(group, n, p), (c, t)] added at where[p, t],
    the position in the plane that tap t of p reads (-1: the padding, not an input)."""
    cdef Py_ssize_t taps = g.k[0] * g.k[1] * g.k[2], K = g.Cg * taps
    cdef Py_ssize_t P = g.out[0] * g.out[1] * g.out[2], plane = g.size[0] * g.size[1] * g.size[2]
    cdef Py_ssize_t p, t, i
    cdef element *dxp = dx + (n * g.C + ci) * plane
    cdef const element *cp = cols + ((ci // g.Cg) * g.N + n) * P * K + (ci % g.Cg) * taps
    cdef const Py_ssize_t *wp
    cdef element b0 = bias[ci] if bias != NULL else 0
    for i in range(plane):
        dxp[i] = b0
    for p in range(P):
        wp = where + p * taps
        for t in range(taps):
            i = wp[t]
            if i >= 0:
                dxp[i] += cp[p * K + t]


cdef void col2im_taps_plane(const Geometry *g, Py_ssize_t n, Py_ssize_t ci, const element *r,
                            const element *bias, element *dx) noexcept nogil:
    """dx[n, ci] = bias[ci] + r[n, (ci, tap)] scattered: tap by tap, each output pixel's value
    added at the input pixel that tap reads (none in the padding).  r is the columns of one
    group laid out the other way round from col2im_plane's: a row per (image, input channel,
    tap), a column per output pixel, so each tap's rows run along the output rows."""
    cdef Py_ssize_t OH = g.out[1], OW = g.out[2], H = g.size[1], W = g.size[2]
    cdef Py_ssize_t P = g.out[0] * OH * OW, sw = g.stride[2]
    cdef Py_ssize_t kd, kh, kw, od, oh, ow, lw, hw, i
    cdef element *dxp = dx + (n * g.C + ci) * g.size[0] * H * W
    cdef element *dxrow
    cdef const element *rp = r + (n * g.C + ci) * g.k[0] * g.k[1] * g.k[2] * P
    cdef const element *rrow
    cdef element b0 = bias[ci] if bias != NULL else 0
    for i in range(g.size[0] * H * W):
        dxp[i] = b0
    for kd in range(g.k[0]):
        for kh in range(g.k[1]):
            for kw in range(g.k[2]):
                lw = tap_lo(g, 2, kw)
                hw = tap_hi(g, 2, kw)
                for od in range(tap_lo(g, 0, kd), tap_hi(g, 0, kd)):
                    for oh in range(tap_lo(g, 1, kh), tap_hi(g, 1, kh)):
                        rrow = rp + (od * OH + oh) * OW
                        dxrow = dxp + ((in_index(g, 0, od, kd) * H + in_index(g, 1, oh, kh))
                                       * W + in_index(g, 2, 0, kw))
                        for ow in range(lw, hw):
                            dxrow[ow * sw] += rrow[ow]
                rp += P


cdef void tap_positions(const Geometry *g, Py_ssize_t *where) noexcept nogil:
    """where[p, t]: the input position (in a plane) that tap t of output pixel p reads, or -1
    where that is padding."""
    cdef Py_ssize_t od, oh, ow, kd, kh, kw, d, h, w, j = 0
    for od in range(g.out[0]):
        for oh in range(g.out[1]):
            for ow in range(g.out[2]):
                for kd in range(g.k[0]):
                    d = in_index(g, 0, od, kd)
                    for kh in range(g.k[1]):
                        h = in_index(g, 1, oh, kh)
                        for kw in range(g.k[2]):
                            w = in_index(g, 2, ow, kw)
                            where[j] = ((d * g.size[1] + h) * g.size[2] + w
                                        if 0 <= d < g.size[0] and 0 <= h < g.size[1]
                                        and 0 <= w < g.size[2] else -1)
                            j += 1


cdef Geometry columns_geometry(const Py_ssize_t *xs, w_shape, dy_shape, stride, pad, dilation,
                               Py_ssize_t groups):
    """The geometry of a convolution whose weight and output shapes (5-D) come as Python
    sequences, for the columns (im2col, col2im)."""
    cdef Py_ssize_t ws[5]
    cdef Py_ssize_t ys[5]
    cdef int a
    for a in range(5):
        ws[a] = w_shape[a]
        ys[a] = dy_shape[a]
    return geometry(xs, ws, ys, stride, pad, dilation, groups)


cdef Py_ssize_t[::1] tap_table(const Geometry *g):
    """where[p, t] of tap_positions, in a new array (of one element if there are none)."""
    cdef Py_ssize_t[::1] where = np.empty(
        max(1, g.out[0] * g.out[1] * g.out[2] * g.k[0] * g.k[1] * g.k[2]), dtype=np.intp)
    tap_positions(g, &where[0])
    return where


def col2im(const element[:, ::1] cols, w_shape, const element[::1] bias,
           element[:, :, :, :, ::1] dx, dy_shape, stride, pad, dilation, Py_ssize_t groups,
           int num_threads):
    """dx = bias + cols scattered (col2im): the input gradient of a convolution with weight
    shape `w_shape` and output shape `dy_shape` (5-D), from its columns: cols has a row per
    (group, image, output pixel) and a column per (input channel of the group, tap), see
    col2im_plane.  dx is overwritten; an empty bias means none."""
    cdef Geometry g = columns_geometry(dx.shape, w_shape, dy_shape, stride, pad, dilation, groups)
    cdef Py_ssize_t item
    cdef fpstate fp
    cdef const element *bptr = &bias[0] if bias.shape[0] > 0 else NULL
    if dx.size == 0:
        return
    cdef Py_ssize_t[::1] where = tap_table(&g)
    with nogil, parallel(num_threads=num_threads):
        fp = flush_subnormals()
        # race-free: item (n, ci) writes only the plane dx[n, ci].
        for item in prange(g.N * g.C, schedule="static"):
            col2im_plane(&g, item // g.C, item % g.C, &cols[0, 0], &where[0], bptr,
                         &dx[0, 0, 0, 0, 0])
        restore_fpstate(fp)


def col2im_taps(const element[:, :, :, :, ::1] r, w_shape, const element[::1] bias,
                element[:, :, :, :, ::1] dx, dy_shape, stride, pad, dilation, int num_threads):
    """dx = bias + r scattered, for a convolution of one group with weight shape `w_shape` and
    output shape `dy_shape` (5-D): r (N, C * taps, *dy's pixels) holds, for each image, input
    channel c and tap t, the products sum over o of w[o, c, t] dy[n, o, p] (a 1x1 convolution
    of dy), see col2im_taps_plane.  dx is overwritten; an empty bias means none."""
    cdef Geometry g = columns_geometry(dx.shape, w_shape, dy_shape, stride, pad, dilation, 1)
    cdef Py_ssize_t item
    cdef fpstate fp
    cdef const element *bptr = &bias[0] if bias.shape[0] > 0 else NULL
    if r.shape[0] != g.N or r.shape[1] != g.C * g.k[0] * g.k[1] * g.k[2] or (
            r.shape[2] * r.shape[3] * r.shape[4] != g.out[0] * g.out[1] * g.out[2]):
        raise ValueError("col2im_taps: r's shape does not match the convolution's")
    if dx.size == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        fp = flush_subnormals()
        # race-free: item (n, ci) writes only the plane dx[n, ci].
        for item in prange(g.N * g.C, schedule="static"):
            col2im_taps_plane(&g, item // g.C, item % g.C, &r[0, 0, 0, 0, 0], bptr,
                              &dx[0, 0, 0, 0, 0])
        restore_fpstate(fp)


cdef void im2col_rows(const Geometry *g, Py_ssize_t gi, Py_ssize_t n, const element *x,
                      const Py_ssize_t *where, element *cols, Py_ssize_t p0,
                      Py_ssize_t p1) noexcept nogil:
    """The rows (gi, n, p) of the columns, for the output pixels p0 <= p < p1 of image n:
    cols[(gi, n, p), (c, t)] = x[n, gi * Cg + c] at where[p, t], the position tap t of p reads
    (0 where that is padding)."""
    cdef Py_ssize_t taps = g.k[0] * g.k[1] * g.k[2], K = g.Cg * taps
    cdef Py_ssize_t P = g.out[0] * g.out[1] * g.out[2], plane = g.size[0] * g.size[1] * g.size[2]
    cdef Py_ssize_t p, c, t, i
    cdef const element *xc
    cdef const Py_ssize_t *wp
    cdef element *row = cols + ((gi * g.N + n) * P + p0) * K
    for p in range(p0, p1):
        wp = where + p * taps
        for c in range(g.Cg):
            xc = x + (n * g.C + gi * g.Cg + c) * plane
            for t in range(taps):
                i = wp[t]
                row[t] = xc[i] if i >= 0 else 0
            row += taps


def im2col(const element[:, :, :, :, ::1] x, w_shape, dy_shape, stride, pad, dilation,
           Py_ssize_t groups, element[:, ::1] cols, int num_threads):
    """cols = the columns of x (im2col) for a convolution with weight shape `w_shape` and
    output shape `dy_shape` (5-D): a row per (group, image, output pixel) and a column per
    (input channel of the group, tap), the value that tap reads, 0 in the padding (see
    im2col_rows).  The gather counterpart of col2im."""
    cdef Geometry g = columns_geometry(x.shape, w_shape, dy_shape, stride, pad, dilation, groups)
    cdef Py_ssize_t item, gn, part
    cdef Py_ssize_t P = g.out[0] * g.out[1] * g.out[2]
    if cols.size == 0:
        return
    cdef Py_ssize_t[::1] where = tap_table(&g)
    # Fewer (group, image) slices than threads (batch 1): each slice's pixels are cut into as
    # many parts as threads, so that all of them gather (alone, the gather was a tenth to a
    # quarter of a 3x3 weight gradient on 7x7 as columns on two threads).
    cdef Py_ssize_t parts = num_threads if g.G * g.N < num_threads else 1
    with nogil:
        # race-free: item (group, image, part) writes only its own rows of cols.
        for item in prange(g.G * g.N * parts, schedule="static", num_threads=num_threads):
            gn = item // parts
            part = item % parts
            im2col_rows(&g, gn // g.N, gn % g.N, &x[0, 0, 0, 0, 0], &where[0], &cols[0, 0],
                        part * P // parts, (part + 1) * P // parts)


cdef void sample_plane(const element *x, Py_ssize_t xh, Py_ssize_t xw, const Py_ssize_t *s,
                       element *out, Py_ssize_t D, Py_ssize_t H, Py_ssize_t W) noexcept nogil:
    """out[a, b, e] = x[a * s[0], b * s[1], e * s[2]] for a plane of x with rows of xw elements
    and planes of xh rows."""
    cdef Py_ssize_t a, b, e, sw = s[2]
    cdef const element *row
    for a in range(D):
        for b in range(H):
            row = x + (a * s[0] * xh + b * s[1]) * xw
            if sw == 1:             # short rows: a loop the compiler vectorises, no call
                for e in range(W):
                    out[e] = row[e]
            else:
                for e in range(W):
                    out[e] = row[e * sw]
            out += W


def sample(const element[:, :, :, :, ::1] x, origin, stride, element[:, :, :, :, ::1] out,
           int num_threads):
    """out[n, c, a, b, e] = x[n, c, o0 + a * sd, o1 + b * sh, o2 + e * sw] (origin = (o0, o1,
    o2), stride = (sd, sh, sw); out's shape chooses the pixels), copied (channel planes) on
    num_threads threads: the pixels that a 1x1 strided convolution reads, or the window of x
    or dy that a part of a weight gradient reads (weight_parts).  As a NumPy strided copy, on
    one thread, it held the weight gradient of ResNet's 1x1 stride-2 128 -> 256 layer from
    28x28 at batch 8 to 1.0-1.5x on two threads."""
    cdef Py_ssize_t s[3]
    s[0], s[1], s[2] = stride
    cdef Py_ssize_t D = out.shape[2], H = out.shape[3], W = out.shape[4]
    cdef Py_ssize_t xplane = x.shape[2] * x.shape[3] * x.shape[4], oplane = D * H * W
    cdef Py_ssize_t item, planes = out.shape[0] * out.shape[1]
    cdef Py_ssize_t start = (origin[0] * x.shape[3] + origin[1]) * x.shape[4] + origin[2]
    if out.size == 0:
        return
    with nogil:
        # race-free: item (image, channel) writes only its own plane of out.
        for item in prange(planes, schedule="static", num_threads=num_threads):
            sample_plane(&x[0, 0, 0, 0, 0] + item * xplane + start, x.shape[3], x.shape[4], s,
                         &out[0, 0, 0, 0, 0] + item * oplane, D, H, W)


def put_parts(list parts, origins, element[:, :, :, :, ::1] dw, int num_threads):
    """dw = 0 but dw[o, c, t0 + a, t1 + b, t2 + e] = part[o, c, a, b, e] for each part (C-ordered
    5-D arrays of dw's type, as many rows o and c) and its first tap (t0, t1, t2) in `origins`:
    a weight gradient summed in parts (weight_parts) put together, row o of dw by row o of
    every part, on num_threads threads.  A NumPy assignment per part went over all of dw each
    time, an element a cache line: DeepLab's 512 -> 256 3x3 of rate 12 on 33x33 (nine parts of
    one tap) spent 1.7-1.8 ms so, an eighth of its weight gradient; here 1.1 ms on one thread,
    0.3 on two."""
    cdef Py_ssize_t P = len(parts), O = dw.shape[0], CK = dw.size // max(O, 1), i, a, o
    cdef Py_ssize_t[:, ::1] geo = np.zeros((max(P, 1), 7), np.intp)
    cdef element[:, :, :, :, ::1] part
    for i in range(P):
        part = parts[i]
        geo[i, 4], geo[i, 5], geo[i, 6] = origins[i]
        if part.shape[0] != O or part.shape[1] != dw.shape[1]:
            raise ValueError("put_parts: a part's rows differ from dw's")
        for a in range(3):
            geo[i, 1 + a] = part.shape[2 + a]
            if geo[i, 4 + a] < 0 or geo[i, 4 + a] + part.shape[2 + a] > dw.shape[2 + a]:
                raise ValueError("put_parts: a part's taps fall outside dw")
        if part.size > 0:
            geo[i, 0] = <Py_ssize_t> &part[0, 0, 0, 0, 0]
    if dw.size == 0:
        return
    with nogil:
        # race-free: item o writes only row o of dw.
        for o in prange(O, schedule="static", num_threads=num_threads):
            put_row(&geo[0, 0], P, o, dw.shape[1], dw.shape[2], dw.shape[3], dw.shape[4],
                    &dw[0, 0, 0, 0, 0] + o * CK)


cdef void put_row(const Py_ssize_t *geo, Py_ssize_t P, Py_ssize_t o, Py_ssize_t C,
                  Py_ssize_t KD, Py_ssize_t KH, Py_ssize_t KW, element *row) noexcept nogil:
    """Row o of dw (C * KD * KH * KW elements at `row`) from row o of the parts (put_parts)."""
    cdef Py_ssize_t i, c, a, b, e, pd, ph, pw, t0, t1, t2, n, K = KD * KH * KW
    cdef const element *src
    cdef const element *tap
    cdef element *dst
    memset(row, 0, C * K * sizeof(element))
    for i in range(P):
        # the part's geometry in locals: the stores to dw might alias geo for the compiler
        pd, ph, pw = geo[7 * i + 1], geo[7 * i + 2], geo[7 * i + 3]
        t0, t1, t2 = geo[7 * i + 4], geo[7 * i + 5], geo[7 * i + 6]
        n = pd * ph * pw
        src = <const element *> geo[7 * i] + o * C * n
        # tap by tap, the channels innermost: parts are often a tap or a few (nested loops
        # per channel of one pass each cost 1.6x NumPy's assignments)
        for a in range(pd):
            for b in range(ph):
                for e in range(pw):
                    dst = row + ((t0 + a) * KH + t1 + b) * KW + t2 + e
                    tap = src + (a * ph + b) * pw + e
                    for c in range(C):
                        dst[c * K] = tap[c * n]


# ---------------------------------------------------------------------------------------------
# Checked plans for small problems: the call overhead, not the arithmetic, is their cost.


cdef class Plan:
    """The direct loops for one checked geometry, run on the calling thread.

    loopconv.functional builds a plan after checking a call's arguments and keeps it for calls
    with the same shapes, dtypes and parameters; a call then costs a dictionary lookup and this
    object.  Arrays are brought to C order and the plan's dtype here (no copy when they are).
    xshape, wshape, yshape are the 5-D shapes of input, weight and output; `unbatched` drops
    the batch axis from the input- and output-shaped results, as for the caller's arrays.
    """

    cdef Geometry g
    cdef int typenum
    cdef object _run            # _plan_pass for the plan's dtype
    cdef int nd                 # spatial dimensions of the caller's arrays
    cdef bint unbatched
    cdef cnp.npy_intp xdims[5]
    cdef cnp.npy_intp wdims[5]
    cdef cnp.npy_intp ydims[5]

    def __init__(self, xshape, wshape, yshape, stride, pad, dilation, Py_ssize_t groups,
                 dtype, int nd, bint unbatched):
        cdef Py_ssize_t xs[5], ws[5], ys[5]
        cdef int a
        for a in range(5):
            xs[a] = xshape[a]
            ws[a] = wshape[a]
            ys[a] = yshape[a]
        self.g = geometry(xs, ws, ys, stride, pad, dilation, groups)
        self.typenum = np.dtype(dtype).num
        self._run = _plan_pass[ctype_name(np.dtype(dtype).char)]
        self.nd = nd
        self.unbatched = unbatched
        for a in range(2):
            self.xdims[a] = xs[a]
            self.wdims[a] = ws[a]
            self.ydims[a] = ys[a]
        for a in range(nd):
            self.xdims[2 + a] = xs[5 - nd + a]
            self.wdims[2 + a] = ws[5 - nd + a]
            self.ydims[2 + a] = ys[5 - nd + a]

    cdef cnp.ndarray _array(self, obj):
        return <cnp.ndarray> cnp.PyArray_FROM_OTF(obj, self.typenum, cnp.NPY_ARRAY_IN_ARRAY)

    cdef cnp.ndarray _result(self, cnp.npy_intp *dims, bint batched_shape):
        cdef int skip = 1 if self.unbatched and batched_shape else 0
        return <cnp.ndarray> cnp.PyArray_EMPTY(self.nd + 2 - skip, dims + skip, self.typenum, 0)

    def forward(self, x, w, bias):
        """conv(x, w) + bias (bias may be None)."""
        return self._run(self, PASS_FORWARD, x, w, bias, 0)

    def grad_input(self, dy, w, bias=None):
        """The input gradient of conv(x, w) for output gradient dy, plus bias (None: none):
        with a bias, the transposed convolution of dy."""
        return self._run(self, PASS_INPUT, dy, w, bias, 0)

    def grad_weight(self, x, dy):
        """The weight gradient of conv(x, w) for output gradient dy."""
        return self._run(self, PASS_WEIGHT, x, dy, None, 0)

    def grad_bias(self, dy):
        """dy summed over images and pixels, per channel."""
        return self._run(self, PASS_BIAS, dy, None, None, 0)


cdef enum:
    PASS_FORWARD = 0
    PASS_INPUT = 1
    PASS_WEIGHT = 2
    PASS_BIAS = 3


def _plan_pass(Plan plan, int which, a, b, bias, element zero):
    """Pass `which` of `plan` on the arrays a, b (x and w, dy and w, x and dy, or dy alone) and
    bias, in the type of `zero`: a Plan keeps the specialisation of its dtype, so that a call
    costs no dispatch on the arrays' types."""
    cdef cnp.ndarray aa = plan._array(a)
    cdef cnp.ndarray ba = None if b is None else plan._array(b)
    cdef cnp.ndarray biasa = None if bias is None else plan._array(bias)
    cdef const element *ap = <const element *> cnp.PyArray_DATA(aa)
    cdef const element *bp = NULL if ba is None else <const element *> cnp.PyArray_DATA(ba)
    cdef const element *biasp = (NULL if biasa is None
                                 else <const element *> cnp.PyArray_DATA(biasa))
    cdef cnp.ndarray out
    if which == PASS_FORWARD:
        out = plan._result(plan.ydims, True)
    elif which == PASS_INPUT:
        out = plan._result(plan.xdims, True)
    elif which == PASS_WEIGHT:
        out = plan._result(plan.wdims, False)
    else:
        out = <cnp.ndarray> cnp.PyArray_EMPTY(1, plan.ydims + 1, plan.typenum, 0)
    cdef element *outp = <element *> cnp.PyArray_DATA(out)
    cdef const Geometry *g = &plan.g
    cdef Py_ssize_t item
    cdef fpstate fp
    with nogil:
        fp = flush_subnormals()
        if which == PASS_FORWARD:
            for item in range(g.N * g.O):
                forward_plane(g, item // g.O, item % g.O, ap, bp, biasp, outp)
        elif which == PASS_INPUT:
            for item in range(g.N * g.C):
                input_plane(g, item // g.C, item % g.C, ap, bp, biasp, outp)
        elif which == PASS_WEIGHT:
            for item in range(g.O * g.Cg):
                weight_row(g, item // g.Cg, item % g.Cg, ap, bp, outp)
        else:
            bias_sums(g, ap, outp)
        restore_fpstate(fp)
    return out


cdef void sum_channels(Py_ssize_t N, Py_ssize_t O, Py_ssize_t P, const element *dy,
                       element *db) noexcept nogil:
    """db[o] = sum of dy[n, o, p] over n and p, in that order, accumulated in double."""
    cdef Py_ssize_t n, o, p
    cdef double acc
    for o in range(O):
        acc = 0
        for n in range(N):
            for p in range(P):
                acc = acc + dy[(n * O + o) * P + p]
        db[o] = <element> acc


cdef inline void bias_sums(const Geometry *g, const element *dy, element *db) noexcept nogil:
    sum_channels(g.N, g.O, g.out[0] * g.out[1] * g.out[2], dy, db)


def bias_grad(const element[:, :, ::1] dy, element[::1] db):
    """db = dy (N, O, pixels) summed over images and pixels: the gradient for a bias."""
    cdef fpstate fp
    if dy.shape[0] * dy.shape[1] * dy.shape[2] == 0:
        db[:] = 0
        return
    with nogil:
        fp = flush_subnormals()
        sum_channels(dy.shape[0], dy.shape[1], dy.shape[2], &dy[0, 0, 0], &db[0])
        restore_fpstate(fp)


def aligned_empty(shape, dtype):
    """np.empty(shape, dtype) starting on a 64-byte boundary (malloc gives 16): a view of a
    buffer 64 bytes larger.  Its address is read through the C API, in a tenth of a
    microsecond, where ndarray.ctypes takes one (`loopconv._loops.empty` asks on every call)."""
    dtype = np.dtype(dtype)
    cdef cnp.ndarray raw = np.empty(math.prod(shape) * dtype.itemsize + 64, np.uint8)
    return np.ndarray(shape, dtype, raw, -<size_t> cnp.PyArray_DATA(raw) % 64)


# Results' memory.  A result of POOL_MIN_BYTES or more is a view of a buffer leased from a pool:
# when the last array on it goes, the buffer waits in the pool (newest last) for a later result
# of about its size instead of going back to the system.  A fresh buffer is page-faulted and
# zeroed by the kernel on first touch (malloc maps anything over 32 MiB afresh every time), and
# a pass over it is then slower than over memory just used: wav2vec 2.0's positional
# convolution's 37.7 MB float64 weight gradient, two threads, 5.3-5.6 ms a call fresh (530 page
# faults), and in spells 40-65 ms where the kernel zeroes pages on both cores at once, against
# 4.3-4.7 ms on a reused buffer.  At most POOL_BYTES wait in all, the oldest given back first:
# a bound on the memory held that the caller has let go (results of Dask's chunks of 64 MiB or
# more are not kept at all).
cdef enum:
    POOL_MIN_BYTES = 1048576
    POOL_BYTES = 67108864
    POOL_SLACK = 4              # a buffer serves a request of at least 1 - 1/POOL_SLACK its size

cdef list _idle = []            # buffers (np.uint8 arrays) waiting, oldest first
cdef Py_ssize_t _idle_bytes = 0


cdef void _give_back(object raw):
    """Put raw in the pool, then give back the oldest buffers until POOL_BYTES wait."""
    global _idle_bytes
    if _idle is None or raw.nbytes > POOL_BYTES:     # module torn down, or too large to keep
        return
    _idle.append(raw)
    _idle_bytes += raw.nbytes
    while _idle_bytes > POOL_BYTES:
        _idle_bytes -= _idle.pop(0).nbytes


cdef object _lease_raw(Py_ssize_t nbytes):
    """A buffer of at least nbytes: the smallest waiting one that fits without wasting over
    1/POOL_SLACK of itself, else a new one (rounded up to whole pages, so that results of
    nearly the same size share buffers)."""
    global _idle_bytes
    cdef Py_ssize_t i, best = -1, size
    for i in range(len(_idle)):
        size = _idle[i].nbytes
        if nbytes <= size and size - size // POOL_SLACK <= nbytes and (
                best < 0 or size < _idle[best].nbytes):
            best = i
    if best >= 0:
        _idle_bytes -= _idle[best].nbytes
        return _idle.pop(best)
    size = (nbytes + 4095) // 4096 * 4096
    try:
        return np.empty(size, np.uint8)
    except MemoryError:             # give the waiting buffers back to the system, and retry
        _idle.clear()
        _idle_bytes = 0
        return np.empty(size, np.uint8)


@cython.no_gc
cdef class _Lease:
    """The buffer of a pooled result, exposed through the buffer protocol: the base of the
    result's arrays, it gives the buffer back to the pool when the last of them goes."""
    cdef object raw
    cdef Py_ssize_t shape[1]

    def __getbuffer__(self, Py_buffer *view, int flags):
        cdef cnp.ndarray raw = self.raw
        self.shape[0] = raw.nbytes
        view.buf = cnp.PyArray_DATA(raw)
        view.obj = self
        view.len = raw.nbytes
        view.readonly = 0
        view.itemsize = 1
        view.format = NULL
        if flags & PyBUF_FORMAT:
            view.format = b"B"
        view.ndim = 1
        view.shape = NULL
        if flags & PyBUF_ND:
            view.shape = self.shape
        view.strides = NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer *view):
        pass

    def __dealloc__(self):
        if self.raw is not None:
            _give_back(self.raw)


def pooled_empty(shape, dtype):
    """np.empty(shape, dtype) on a 64-byte boundary, in a buffer leased from the pool of
    results' buffers (above); for results of POOL_MIN_BYTES or more, others as
    aligned_empty."""
    dtype = np.dtype(dtype)
    cdef Py_ssize_t nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < POOL_MIN_BYTES:
        return aligned_empty(shape, dtype)
    cdef _Lease lease = _Lease.__new__(_Lease)
    lease.raw = _lease_raw(nbytes + 64)
    return np.ndarray(shape, dtype, lease,
                      -<size_t> cnp.PyArray_DATA(<cnp.ndarray> lease.raw) % 64)


def pool_state():
    """The pool of results' buffers: how many wait and their bytes, and its limits."""
    return {"buffers": len(_idle), "bytes": _idle_bytes, "min_bytes": POOL_MIN_BYTES,
            "max_bytes": POOL_BYTES}
