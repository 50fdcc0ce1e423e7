# Tiled (matrix-multiply) loops for the three passes of a convolution.
#
# This source is included by tiled_baseline.pyx, tiled_x86_64_v3.pyx and tiled_x86_64_v4.pyx:
# the same loops compiled for several instruction sets (setup.py sets the flags; loopconv/_loops
# chooses one at import from the CPU's features).
#
# Layout: every array is C-contiguous and five-dimensional
#     input   x  (N, C, D, H, W)        weight  w  (O, C // G, KD, KH, KW)
#     output  y  (N, O, OD, OH, OW)     OD = (D + pd_before + pd_after - dd * (KD - 1) - 1) // sd + 1
# (likewise for H and W).  1-D and 2-D convolutions are these loops with D = KD = 1 (and H = KH = 1).
# Zero padding is never materialised: a source index outside the input reads as zero.
#
# Each pass is a matrix product per image n and group g, with k = (c, kd, kh, kw) and p an
# output pixel (od, oh, ow) flattened:
#     forward       y[o, p]  = sum_k  w[o, k] * xcol[k, p]
#     grad weight   dw[o, k] = sum_{n, p} dy[o, p] * xcol[k, p]
#     grad input    dx[c, i] = sum_{o, taps} w[o, c, taps] * dy[o, (i + pad - tap * dil) / stride]
# xcol (im2col) is never formed: blocks of it are gathered straight into the packed panels read
# by the register tile of microkernel.h.
#
# The input gradient is split by stride phase.  Along one axis, input index i = r + s * t with
# phase r = i mod s receives from tap k exactly when (r + pad - k * dil) is a multiple of s, and
# then from output index t + (r + pad - k * dil) / s: for each phase a stride-1 product of dy
# with that phase's taps, written to every s-th input pixel.  Phases whose taps are empty (rows
# and columns that no window reaches) get zeros.  So all three passes run through one gather-
# and-pack routine and one register tile, and each output element is written by one thread.

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memset

from loopconv._loops.common cimport end_inside, first_inside, round_up

import threading

import numpy as np

cdef extern from "microkernel.h" nogil:
    enum:
        LC_MR
        LC_NR_F32
        LC_NR_F64
    const char *LC_ISA
    void lc_tile_f32(Py_ssize_t kc, const float *a, const float *b, float *c,
                     Py_ssize_t ldc, int beta)
    void lc_tile_f64(Py_ssize_t kc, const double *a, const double *b, double *c,
                     Py_ssize_t ldc, int beta)


# ---------------------------------------------------------------------------------------------
# Blocking.  Rows of the packed B block (KC), columns per forward work item (NC), and pixels per
# weight-gradient step (PC) with the number of B rows packed at once there (KB).  Chosen so that
# a B panel (KC x NR) stays in L1 and the packed block in L2; see benchmarks/ for the sweep.

cdef enum:
    KC = 256
    NC_PANELS = 8
    PC = 256
    KB = 256


cdef inline Py_ssize_t nr_of(floating *dummy) noexcept nogil:
    if floating is float:
        return LC_NR_F32
    else:
        return LC_NR_F64


cdef inline void tile(Py_ssize_t kc, const floating *a, const floating *b, floating *c,
                      Py_ssize_t ldc, bint beta) noexcept nogil:
    if floating is float:
        lc_tile_f32(kc, a, b, c, ldc, beta)
    else:
        lc_tile_f64(kc, a, b, c, ldc, beta)


# ---------------------------------------------------------------------------------------------
# Gathering: a "grid" of columns (gd, gh, gw) reads a source channel at
#     (gd * step[0] + off_d, gh * step[1] + off_h, gw * step[2] + off_w)
# where each packed row carries its channel offset and (off_d, off_h, off_w) in a table of four
# Py_ssize_t per row.  Indices outside the source read as zero.

cdef struct Gather:
    Py_ssize_t sdim[3]      # source spatial sizes
    Py_ssize_t step[3]      # source step per grid step
    Py_ssize_t grid[3]      # grid sizes; a column is a flattened grid index


cdef Py_ssize_t build_segments(const Gather *g, Py_ssize_t p0, Py_ssize_t ncols, Py_ssize_t cp,
                               Py_ssize_t *seg) noexcept nogil:
    """Split columns p0 .. p0 + ncols - 1 into runs along the last grid axis that do not cross a
    panel of cp columns.  Each run is (first column - p0, length, gd, gh, gw); returns the count."""
    cdef Py_ssize_t gw_n = g.grid[2], gh_n = g.grid[1]
    cdef Py_ssize_t gw = p0 % gw_n
    cdef Py_ssize_t gh = (p0 // gw_n) % gh_n
    cdef Py_ssize_t gd = p0 // (gw_n * gh_n)
    cdef Py_ssize_t j = 0, n = 0, ln
    while j < ncols:
        ln = min(gw_n - gw, ncols - j, cp - j % cp)
        seg[5 * n] = j
        seg[5 * n + 1] = ln
        seg[5 * n + 2] = gd
        seg[5 * n + 3] = gh
        seg[5 * n + 4] = gw
        n += 1
        j += ln
        gw += ln
        if gw == gw_n:
            gw = 0
            gh += 1
            if gh == gh_n:
                gh = 0
                gd += 1
    return n


cdef inline void fill_zero(floating *d, Py_ssize_t n, Py_ssize_t cs) noexcept nogil:
    cdef Py_ssize_t t
    for t in range(n):
        d[t * cs] = 0


cdef void pack(const floating *src, const Gather *g, const Py_ssize_t *rows,
               Py_ssize_t nrows, Py_ssize_t nrows_pad,
               const Py_ssize_t *seg, Py_ssize_t nseg, Py_ssize_t ncols, Py_ssize_t ncols_pad,
               floating *dst, Py_ssize_t rp, Py_ssize_t rps, Py_ssize_t rs,
               Py_ssize_t cp, Py_ssize_t cps, Py_ssize_t cs) noexcept nogil:
    """Gather rows 0 .. nrows-1 (table `rows`) over the columns described by `seg` into

        dst[(r // rp) * rps + (r % rp) * rs + (j // cp) * cps + (j % cp) * cs]

    with zeros in the padding rows (up to nrows_pad) and columns (up to ncols_pad).
    Forward B panels: columns in panels of NR (rs = NR, cs = 1); weight-gradient panels: rows
    in panels of MR or NR (rs = 1, cs = panel height)."""
    cdef Py_ssize_t r, s, t, j0, ln, iz, iy, ix0, t_lo, t_hi
    cdef Py_ssize_t SD = g.sdim[0], SH = g.sdim[1], SW = g.sdim[2]
    cdef Py_ssize_t st0 = g.step[0], st1 = g.step[1], st2 = g.step[2]
    cdef const floating *chan
    cdef const floating *line
    cdef floating *rbase
    cdef floating *d
    for r in range(nrows):
        chan = src + rows[4 * r]
        rbase = dst + (r // rp) * rps + (r % rp) * rs
        for s in range(nseg):
            j0 = seg[5 * s]
            ln = seg[5 * s + 1]
            d = rbase + (j0 // cp) * cps + (j0 % cp) * cs
            iz = seg[5 * s + 2] * st0 + rows[4 * r + 1]
            iy = seg[5 * s + 3] * st1 + rows[4 * r + 2]
            if iz < 0 or iz >= SD or iy < 0 or iy >= SH:
                fill_zero(d, ln, cs)
                continue
            line = chan + (iz * SH + iy) * SW
            ix0 = seg[5 * s + 4] * st2 + rows[4 * r + 3]
            # valid t: 0 <= ix0 + t * st2 < SW
            t_lo = min(first_inside(ix0, st2), ln)
            t_hi = end_inside(ix0, st2, SW)
            t_hi = max(min(t_hi, ln), t_lo)
            fill_zero(d, t_lo, cs)
            if cs == 1 and st2 == 1:
                line = line + ix0
                for t in range(t_lo, t_hi):
                    d[t] = line[t]
            else:
                for t in range(t_lo, t_hi):
                    d[t * cs] = line[ix0 + t * st2]
            fill_zero(d + t_hi * cs, ln - t_hi, cs)
        for j0 in range(ncols, ncols_pad):
            rbase[(j0 // cp) * cps + (j0 % cp) * cs] = 0
    for r in range(nrows, nrows_pad):
        rbase = dst + (r // rp) * rps + (r % rp) * rs
        for j0 in range(ncols_pad):
            rbase[(j0 // cp) * cps + (j0 % cp) * cs] = 0


cdef void pack_weight(const floating *w, Py_ssize_t M, Py_ssize_t K, Py_ssize_t mr,
                      const Py_ssize_t *roff, const Py_ssize_t *koff,
                      floating *dst) noexcept nogil:
    """A panels of the forward-style product: dst[(i // mr) * K * mr + k * mr + i % mr] =
    w[roff[i] + koff[k]], rows past M zero."""
    cdef Py_ssize_t i, k
    cdef floating *d
    for i in range(round_up(M, mr)):
        d = dst + (i // mr) * K * mr + i % mr
        if i < M:
            for k in range(K):
                d[k * mr] = w[roff[i] + koff[k]]
        else:
            for k in range(K):
                d[k * mr] = 0


# ---------------------------------------------------------------------------------------------
# Forward-style product: for every image n and group g,
#     dst[n, g*M + i, col(j)] = sum_k A_g[i, k] * B_ng[k, j]  (+ bias[g*M + i])
# with B gathered from src by (rows, gather) and col(j) = base + gd*dstep[0] + gh*dstep[1] +
# gw*dstep[2] for grid column j.  The forward pass and each phase of the input gradient.

cdef struct Product:
    Py_ssize_t N, G, M, K
    Py_ssize_t src_img, src_grp        # element strides of the gathered source
    Py_ssize_t dst_img, dst_grp, dst_row
    Py_ssize_t dst_base
    Py_ssize_t dstep[3]
    Gather gather


cdef void product_block(const Product *p, Py_ssize_t item, const floating *src,
                        const Py_ssize_t *rows, const floating *apack, const floating *bias,
                        floating *dst, floating *fws, Py_ssize_t *iws) noexcept nogil:
    """One work item: image n, group g, and a block of NC_PANELS * NR columns."""
    cdef Py_ssize_t NR = nr_of(dst)
    cdef Py_ssize_t NC = NC_PANELS * NR
    cdef Py_ssize_t P = p.gather.grid[0] * p.gather.grid[1] * p.gather.grid[2]
    cdef Py_ssize_t nblk = (P + NC - 1) // NC
    cdef Py_ssize_t blk = item % nblk
    cdef Py_ssize_t g = (item // nblk) % p.G
    cdef Py_ssize_t n = item // (nblk * p.G)
    cdef Py_ssize_t p0 = blk * NC, ncols = min(NC, P - p0), npan = (ncols + NR - 1) // NR
    cdef Py_ssize_t M = p.M, K = p.K, mpan = (M + LC_MR - 1) // LC_MR
    cdef Py_ssize_t i, j, t, s, jp, ip, kb, k0, kc, mw, jw, gw, gh, gd
    cdef const floating *src_ng = src + n * p.src_img + g * p.src_grp
    cdef floating *dst_ng = dst + n * p.dst_img + g * p.dst_grp
    cdef const floating *a_g = apack + g * round_up(M, LC_MR) * K
    cdef floating *bpack = fws
    cdef floating *ctile = fws + KC * NC
    cdef Py_ssize_t *seg = iws
    cdef Py_ssize_t *dcol = iws + 5 * (NC + NC // NR + 2)
    cdef Py_ssize_t *contig = dcol + NC
    cdef Py_ssize_t nseg = build_segments(&p.gather, p0, ncols, NR, seg)
    cdef floating *d
    cdef floating bv

    # destination offset of every column, and which panels are full and contiguous there
    for s in range(nseg):
        gd = seg[5 * s + 2]
        gh = seg[5 * s + 3]
        gw = seg[5 * s + 4]
        for t in range(seg[5 * s + 1]):
            dcol[seg[5 * s] + t] = (p.dst_base + gd * p.dstep[0] + gh * p.dstep[1]
                                    + (gw + t) * p.dstep[2])
    for jp in range(npan):
        contig[jp] = (jp + 1) * NR <= ncols
        for t in range(jp * NR + 1, min((jp + 1) * NR, ncols)):
            if dcol[t] != dcol[t - 1] + 1:
                contig[jp] = 0

    if K == 0:          # no taps reach these pixels
        for i in range(M):
            for j in range(ncols):
                dst_ng[i * p.dst_row + dcol[j]] = 0

    for kb in range((K + KC - 1) // KC):
        k0 = kb * KC
        kc = min(KC, K - k0)
        pack(src_ng, &p.gather, rows + 4 * k0, kc, kc, seg, nseg, ncols, npan * NR,
             bpack, kc, 0, NR, NR, kc * NR, 1)
        for jp in range(npan):
            jw = min(NR, ncols - jp * NR)
            for ip in range(mpan):
                mw = min(LC_MR, M - ip * LC_MR)
                if contig[jp] and mw == LC_MR:
                    tile(kc, a_g + ip * K * LC_MR + k0 * LC_MR, bpack + jp * kc * NR,
                         dst_ng + ip * LC_MR * p.dst_row + dcol[jp * NR], p.dst_row, k0 > 0)
                else:
                    tile(kc, a_g + ip * K * LC_MR + k0 * LC_MR, bpack + jp * kc * NR,
                         ctile, NR, 0)
                    for i in range(mw):
                        d = dst_ng + (ip * LC_MR + i) * p.dst_row
                        for t in range(jw):
                            if k0 > 0:
                                d[dcol[jp * NR + t]] += ctile[i * NR + t]
                            else:
                                d[dcol[jp * NR + t]] = ctile[i * NR + t]

    if bias != NULL:
        for i in range(M):
            bv = bias[g * M + i]
            d = dst_ng + i * p.dst_row
            for j in range(ncols):
                d[dcol[j]] += bv


cdef void run_product(const Product *p, const floating *src, const Py_ssize_t *rows,
                      const floating *apack, const floating *bias, floating *dst,
                      floating *fws, Py_ssize_t fper, Py_ssize_t *iws, Py_ssize_t iper,
                      int nthreads) noexcept nogil:
    cdef Py_ssize_t NR = nr_of(dst)
    cdef Py_ssize_t P = p.gather.grid[0] * p.gather.grid[1] * p.gather.grid[2]
    cdef Py_ssize_t nitems = p.N * p.G * ((P + NC_PANELS * NR - 1) // (NC_PANELS * NR))
    cdef Py_ssize_t item
    cdef int tid
    # race-free: each item writes its own (image, group, column block) of dst, and reads only
    # shared inputs; the per-thread workspace is indexed by the thread number.
    for item in prange(nitems, schedule="static", num_threads=nthreads):
        tid = threadid()
        product_block(p, item, src, rows, apack, bias, dst,
                      fws + tid * fper, iws + tid * iper)


# ---------------------------------------------------------------------------------------------
# Weight gradient: dw_g[o, k] = sum over (n, pixel block) of dy_ng[o, p] xcol_ng[k, p].
# The reduction steps (n, block of PC pixels) are cut into `nchunk` contiguous chunks fixed by
# the problem size alone; each (chunk, group) item sums into its own partial product, and the
# partials are added in chunk order.  Results therefore do not depend on the thread count.

cdef struct WeightProduct:
    Py_ssize_t N, G, M, K, P
    Py_ssize_t nchunk
    Py_ssize_t x_img, x_grp, y_img, y_grp
    Py_ssize_t Mpad, Kpad
    Gather xg, yg


cdef void weight_chunk(const WeightProduct *p, Py_ssize_t item, const floating *x,
                       const floating *dy, const Py_ssize_t *xrows, const Py_ssize_t *yrows,
                       floating *partial, floating *fws, Py_ssize_t *iws) noexcept nogil:
    cdef Py_ssize_t NR = nr_of(partial)
    cdef Py_ssize_t nblk = (p.P + PC - 1) // PC
    cdef Py_ssize_t nsteps = p.N * nblk
    cdef Py_ssize_t chunk = item % p.nchunk, g = item // p.nchunk
    cdef Py_ssize_t s0 = chunk * nsteps // p.nchunk, s1 = (chunk + 1) * nsteps // p.nchunk
    cdef Py_ssize_t step, n, p0, pc, nseg, kb, kb0, kbn, kbpad, ip, jp
    cdef floating *part = partial + item * p.Mpad * p.Kpad
    cdef floating *apack = fws
    cdef floating *bpack = fws + p.Mpad * PC
    cdef Py_ssize_t *seg = iws
    cdef bint first = True
    for step in range(s0, s1):
        n = step // nblk
        p0 = (step % nblk) * PC
        pc = min(PC, p.P - p0)
        nseg = build_segments(&p.yg, p0, pc, pc, seg)
        pack(dy + n * p.y_img + g * p.y_grp, &p.yg, yrows, p.M, p.Mpad, seg, nseg, pc, pc,
             apack, LC_MR, pc * LC_MR, 1, pc, 0, LC_MR)
        for kb in range((p.K + KB - 1) // KB):
            kb0 = kb * KB
            kbn = min(KB, p.K - kb0)
            kbpad = round_up(kbn, NR)
            pack(x + n * p.x_img + g * p.x_grp, &p.xg, xrows + 4 * kb0, kbn, kbpad, seg, nseg,
                 pc, pc, bpack, NR, pc * NR, 1, pc, 0, NR)
            for jp in range(kbpad // NR):
                for ip in range(p.Mpad // LC_MR):
                    tile(pc, apack + ip * pc * LC_MR, bpack + jp * pc * NR,
                         part + ip * LC_MR * p.Kpad + kb0 + jp * NR, p.Kpad, not first)
        first = False
    if s0 == s1:
        memset(part, 0, p.Mpad * p.Kpad * sizeof(floating))


cdef void run_weight(const WeightProduct *p, const floating *x, const floating *dy,
                     const Py_ssize_t *xrows, const Py_ssize_t *yrows, floating *partial,
                     floating *dw, floating *fws, Py_ssize_t fper, Py_ssize_t *iws,
                     Py_ssize_t iper, int nthreads) noexcept nogil:
    cdef Py_ssize_t item, row, g, o, k, c
    cdef floating acc
    cdef int tid
    # race-free: item (group, chunk) writes only its own partial product.
    for item in prange(p.G * p.nchunk, schedule="static", num_threads=nthreads):
        tid = threadid()
        weight_chunk(p, item, x, dy, xrows, yrows, partial, fws + tid * fper, iws + tid * iper)
    # race-free: each (group, output channel) row of dw is summed by one thread, chunks in order.
    for row in prange(p.G * p.M, schedule="static", num_threads=nthreads):
        g = row // p.M
        o = row % p.M
        for k in range(p.K):
            acc = 0
            for c in range(p.nchunk):
                acc = acc + partial[((g * p.nchunk + c) * p.Mpad + o) * p.Kpad + k]
            dw[row * p.K + k] = acc


# ---------------------------------------------------------------------------------------------
# Python-facing entry points.  The Python layer (loopconv/functional.py) has checked every
# shape, handled empty arrays, and allocated the output; these only fill it.  stride, pad and dilation are (d, h, w) triples of
# ints; pad is the padding before each axis (the padding after is implied by the shapes).

_workspaces = threading.local()


def _workspace(name, dtype, Py_ssize_t n):
    """A scratch array of at least n elements, kept across calls and per calling thread (so
    that concurrent calls from several Python threads never share one).  Fresh multi-megabyte
    arrays would cost page faults on every call."""
    arrays = getattr(_workspaces, "arrays", None)
    if arrays is None:
        arrays = _workspaces.arrays = {}
    key = (name, np.dtype(dtype).char)
    buf = arrays.get(key)
    if buf is None or buf.shape[0] < n:
        buf = np.empty(max(n, 1), dtype=dtype)
        arrays[key] = buf
    return buf


cdef inline Py_ssize_t per_thread(Py_ssize_t n) noexcept nogil:
    return round_up(n, 16)      # each thread's region starts on its own cache line


cdef inline void set3(Py_ssize_t *a, Py_ssize_t v0, Py_ssize_t v1, Py_ssize_t v2) noexcept nogil:
    a[0] = v0
    a[1] = v1
    a[2] = v2


cdef object gather_rows(Py_ssize_t nchan, Py_ssize_t chan_stride, list taps):
    """Row table for channel c and taps (kd, kh, kw) in C order: rows (c * chan_stride,
    off_d, off_h, off_w), where taps[a] is the list of (k, offset) pairs of axis a."""
    cdef Py_ssize_t c, n = 0
    table = np.empty((nchan * len(taps[0]) * len(taps[1]) * len(taps[2]), 4), dtype=np.intp)
    cdef Py_ssize_t[:, ::1] rows = table
    for c in range(nchan):
        for _, od in taps[0]:
            for _, oh in taps[1]:
                for _, ow in taps[2]:
                    rows[n, 0] = c * chan_stride
                    rows[n, 1] = od
                    rows[n, 2] = oh
                    rows[n, 3] = ow
                    n += 1
    return table


def info():
    """The instruction set and register tile of this build."""
    return {"isa": LC_ISA.decode(), "mr": LC_MR, "nr_float32": LC_NR_F32,
            "nr_float64": LC_NR_F64}


def forward(const floating[:, :, :, :, ::1] x, const floating[:, :, :, :, ::1] w,
            const floating[::1] bias, floating[:, :, :, :, ::1] y,
            stride, pad, dilation, Py_ssize_t groups, int num_threads):
    """y = conv(x, w) + bias over 5-D arrays.  An empty bias means none."""
    cdef Product p
    cdef Py_ssize_t NR = LC_NR_F32 if floating is float else LC_NR_F64
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t O = w.shape[0], Cg = w.shape[1], Og = O // groups
    cdef Py_ssize_t KS = w.shape[2] * w.shape[3] * w.shape[4]
    cdef Py_ssize_t plane = x.shape[2] * x.shape[3] * x.shape[4]
    cdef Py_ssize_t mpad = round_up(Og, LC_MR), g, fper, iper
    if y.shape[0] == 0 or y.shape[1] == 0 or y.shape[2] * y.shape[3] * y.shape[4] == 0:
        return
    p.N = x.shape[0]
    p.G = groups
    p.M = Og
    p.K = Cg * KS
    p.src_img = x.shape[1] * plane
    p.src_grp = Cg * plane
    p.dst_row = y.shape[2] * y.shape[3] * y.shape[4]
    p.dst_img = O * p.dst_row
    p.dst_grp = Og * p.dst_row
    p.dst_base = 0
    set3(p.dstep, y.shape[3] * y.shape[4], y.shape[4], 1)
    set3(p.gather.sdim, x.shape[2], x.shape[3], x.shape[4])
    set3(p.gather.step, stride[0], stride[1], stride[2])
    set3(p.gather.grid, y.shape[2], y.shape[3], y.shape[4])

    taps = [[(k, k * dilation[a] - pad[a]) for k in range(w.shape[2 + a])] for a in range(3)]
    cdef Py_ssize_t[:, ::1] rows = gather_rows(Cg, plane, taps)
    cdef Py_ssize_t[::1] roff = np.arange(Og, dtype=np.intp) * p.K
    cdef Py_ssize_t[::1] koff = np.arange(p.K, dtype=np.intp)
    cdef floating[::1] apack = np.empty(groups * mpad * p.K, dtype=dtype)
    fper = per_thread(KC * NC_PANELS * NR + LC_MR * NR)
    iper = per_thread(5 * (NC_PANELS * NR + NC_PANELS + 2) + NC_PANELS * NR + NC_PANELS + 1)
    cdef floating[::1] fws = _workspace("f", dtype, fper * num_threads)
    cdef Py_ssize_t[::1] iws = _workspace("i", np.intp, iper * num_threads)
    cdef const floating *bptr = &bias[0] if bias.shape[0] > 0 else NULL
    with nogil:
        for g in range(groups):
            pack_weight(&w[g * Og, 0, 0, 0, 0], Og, p.K, LC_MR, &roff[0], &koff[0],
                        &apack[g * mpad * p.K])
        run_product(&p, &x[0, 0, 0, 0, 0], &rows[0, 0], &apack[0], bptr, &y[0, 0, 0, 0, 0],
                    &fws[0], fper, &iws[0], iper, num_threads)


def grad_input(const floating[:, :, :, :, ::1] dy, const floating[:, :, :, :, ::1] w,
               const floating[::1] bias, floating[:, :, :, :, ::1] dx, stride, pad, dilation,
               Py_ssize_t groups, int num_threads):
    """dx = bias + gradient of conv(x, w) with respect to x, given dy (the transposed
    convolution of dy); dx is overwritten.  An empty bias means none."""
    cdef Product p
    cdef Py_ssize_t NR = LC_NR_F32 if floating is float else LC_NR_F64
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t O = w.shape[0], Cg = w.shape[1], Og = O // groups
    cdef Py_ssize_t KD = w.shape[2], KH = w.shape[3], KW = w.shape[4]
    cdef Py_ssize_t KS = KD * KH * KW
    cdef Py_ssize_t D = dx.shape[2], H = dx.shape[3], W = dx.shape[4]
    cdef Py_ssize_t oplane = dy.shape[2] * dy.shape[3] * dy.shape[4]
    cdef Py_ssize_t mpad = round_up(Cg, LC_MR), g, o, n, fper, iper
    if dx.size == 0:
        return
    cdef const floating *bptr = &bias[0] if bias.shape[0] > 0 else NULL
    p.N = dx.shape[0]
    p.G = groups
    p.M = Cg
    p.src_img = O * oplane
    p.src_grp = Og * oplane
    p.dst_row = D * H * W
    p.dst_img = dx.shape[1] * p.dst_row
    p.dst_grp = Cg * p.dst_row
    set3(p.gather.sdim, dy.shape[2], dy.shape[3], dy.shape[4])
    set3(p.gather.step, 1, 1, 1)
    size = (D, H, W)
    ksize = (KD, KH, KW)
    # phases[a][r]: taps (k, offset into dy) of axis a that reach input indices = r (mod s)
    phases = [[[(k, (r + pad[a] - k * dilation[a]) // stride[a]) for k in range(ksize[a])
                if (r + pad[a] - k * dilation[a]) % stride[a] == 0]
               for r in range(min(stride[a], size[a]))] for a in range(3)]
    fper = per_thread(KC * NC_PANELS * NR + LC_MR * NR)
    iper = per_thread(5 * (NC_PANELS * NR + NC_PANELS + 2) + NC_PANELS * NR + NC_PANELS + 1)
    cdef floating[::1] fws = _workspace("f", dtype, fper * num_threads)
    cdef Py_ssize_t[::1] iws = _workspace("i", np.intp, iper * num_threads)
    cdef Py_ssize_t[::1] roff = np.arange(Cg, dtype=np.intp) * KS
    cdef Py_ssize_t[:, ::1] rows
    cdef Py_ssize_t[::1] koff
    cdef floating[::1] apack
    for rd, td in enumerate(phases[0]):
        for rh, th in enumerate(phases[1]):
            for rw, tw in enumerate(phases[2]):
                p.K = Og * len(td) * len(th) * len(tw)
                p.dst_base = (rd * H + rh) * W + rw
                set3(p.dstep, stride[0] * H * W, stride[1] * W, stride[2])
                set3(p.gather.grid, (D - rd + stride[0] - 1) // stride[0],
                     (H - rh + stride[1] - 1) // stride[1], (W - rw + stride[2] - 1) // stride[2])
                rows = gather_rows(Og, oplane, [td, th, tw])
                # column k = (o, kd, kh, kw) of this phase's A reads w[g*Og + o, c, kd, kh, kw]
                koff = np.array([o * Cg * KS + (kd * KH + kh) * KW + kw for o in range(Og)
                                 for kd, _ in td for kh, _ in th for kw, _ in tw] or [0],
                                dtype=np.intp)
                apack = np.empty(max(groups * mpad * p.K, 1), dtype=dtype)
                with nogil:
                    if p.K > 0:
                        for g in range(groups):
                            pack_weight(&w[g * Og, 0, 0, 0, 0], Cg, p.K, LC_MR, &roff[0],
                                        &koff[0], &apack[g * mpad * p.K])
                    run_product(&p, &dy[0, 0, 0, 0, 0], &rows[0, 0] if p.K > 0 else NULL,
                                &apack[0], bptr, &dx[0, 0, 0, 0, 0], &fws[0], fper, &iws[0],
                                iper, num_threads)


def grad_weight(const floating[:, :, :, :, ::1] x, const floating[:, :, :, :, ::1] dy,
                floating[:, :, :, :, ::1] dw, stride, pad, dilation, Py_ssize_t groups,
                int num_threads):
    """dw = gradient of conv(x, w) with respect to w, given dy; dw is overwritten."""
    cdef WeightProduct p
    cdef Py_ssize_t NR = LC_NR_F32 if floating is float else LC_NR_F64
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t O = dw.shape[0], Cg = dw.shape[1], Og = O // groups
    cdef Py_ssize_t plane = x.shape[2] * x.shape[3] * x.shape[4]
    cdef Py_ssize_t KS = dw.shape[2] * dw.shape[3] * dw.shape[4]
    cdef Py_ssize_t nsteps, fper, iper
    if dw.size == 0:
        return
    p.N = x.shape[0]
    p.G = groups
    p.M = Og
    p.K = Cg * KS
    p.P = dy.shape[2] * dy.shape[3] * dy.shape[4]
    p.Mpad = round_up(Og, LC_MR)
    p.Kpad = round_up(p.K, NR)
    p.x_img = x.shape[1] * plane
    p.x_grp = Cg * plane
    p.y_img = O * p.P
    p.y_grp = Og * p.P
    set3(p.xg.sdim, x.shape[2], x.shape[3], x.shape[4])
    set3(p.xg.step, stride[0], stride[1], stride[2])
    set3(p.xg.grid, dy.shape[2], dy.shape[3], dy.shape[4])
    set3(p.yg.sdim, dy.shape[2], dy.shape[3], dy.shape[4])
    set3(p.yg.step, 1, 1, 1)
    set3(p.yg.grid, dy.shape[2], dy.shape[3], dy.shape[4])
    # Reduction chunks: enough items for the threads of a large machine, partial products
    # bounded to a few MiB; a function of the problem only, never of the thread count.
    nsteps = p.N * ((p.P + PC - 1) // PC)
    p.nchunk = max(1, min(nsteps, (32 + groups - 1) // groups,
                          (1 << 21) // (groups * p.Mpad * p.Kpad)))
    taps = [[(k, k * dilation[a] - pad[a]) for k in range(dw.shape[2 + a])] for a in range(3)]
    cdef Py_ssize_t[:, ::1] xrows = gather_rows(Cg, plane, taps)
    cdef Py_ssize_t[:, ::1] yrows = gather_rows(Og, p.P, [[(0, 0)]] * 3)
    cdef floating[::1] partial = _workspace("p", dtype, groups * p.nchunk * p.Mpad * p.Kpad)
    fper = per_thread(p.Mpad * PC + KB * PC)
    iper = per_thread(5 * (PC + 2))
    cdef floating[::1] fws = _workspace("f", dtype, fper * num_threads)
    cdef Py_ssize_t[::1] iws = _workspace("i", np.intp, iper * num_threads)
    with nogil:
        run_weight(&p, &x[0, 0, 0, 0, 0], &dy[0, 0, 0, 0, 0], &xrows[0, 0], &yrows[0, 0],
                   &partial[0], &dw[0, 0, 0, 0, 0], &fws[0], fper, &iws[0], iper, num_threads)
