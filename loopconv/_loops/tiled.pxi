# Tiled (matrix-multiply) loops for the three passes of a convolution.
#
# Included by tiled_baseline.pyx, tiled_x86_64_v3.pyx and tiled_x86_64_v4.pyx: the same loops
# compiled for several instruction sets (setup.py sets the flags; loopconv/_loops/__init__.py
# chooses one at import from the CPU's features).
#
# Layout: every array is C-contiguous and five-dimensional
#     input   x  (N, C, D, H, W)        weight  w  (O, C // G, KD, KH, KW)
#     output  y  (N, O, OD, OH, OW)
#     OD = (D + pd_before + pd_after - dd * (KD - 1) - 1) // sd + 1
# (likewise H and W).  1-D and 2-D convolutions are these loops with D = KD = 1 (and H = KH = 1).
#
# Each pass is a matrix product per image n and group g, with k = (c, kd, kh, kw), p an output
# pixel and i an input pixel:
#     forward        y[o, p]  = sum_k w[o, k] * xcol[k, p]
#     weight grad    dw[o, k] = sum_{n, p} dy[o, p] * xcol[k, p]
#     input grad     dx[c, i] = sum_{o, taps} w[o, c, taps] * dy[o, (i + pad - tap * dil) / stride]
#
# The im2col matrix xcol is never formed.  Instead each (image, group) slice of the source is
# copied once into a per-thread "staged" array: zero-padded, and split by stride phase, so that
#     staged[c, phase, a, b, e] = x[c, a*sd + pd - lead_d, b*sh + ph - lead_h, e*sw + pw - lead_w]
# (zero outside x).  Tap (kd, kh, kw) of output (od, oh, ow) is then staged element
#     [c, phase(tap), od + kd*dd // sd, oh + kh*dh // sh, ow + kw*dw // sw],  phase = tap*dil % s
# so along the flattened staged grid q = (od * Hq + oh) * Wq + ow every row of xcol is a
# contiguous run of the staged array, at an offset that depends on the tap alone.  The register
# tile (microkernel.h) reads those runs in place: no packing of the large operand.  Grid columns
# with oh >= OH or ow >= OW ("junk") are computed and never stored.
#
# The input gradient is split by stride phase.  Along one axis, input index i = r + s * t with
# phase r = i mod s receives from tap k exactly when (r + pad - k * dil) is a multiple of s, and
# then from output index t + (r + pad - k * dil) / s: for each phase a stride-1 product of the
# staged dy with that phase's taps, written to every s-th input pixel.  Phases without taps (rows
# and columns that no window reaches) get zeros.  Each output element is written by one thread.

from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

import threading

import numpy as np

from loopconv._loops.common cimport (end_inside, first_inside, flush_subnormals, fpstate,
                                     restore_fpstate, round_up)

cdef extern from "microkernel.h" nogil:
    enum:
        LC_MR_B         # rows of the forward-style tile (or 1, 2, 4 for products with fewer)
        LC_NV_B         # its vectors
        LC_NR_B_F32     # its columns
        LC_NR_B_F64
        LC_MR_A         # rows of the weight-gradient tile (its columns are two vectors)
        LC_KR_D         # rows and columns of the weight-gradient tile for few output
        LC_OR_D         # (channels), which sums along the vector lanes
        LC_VW_F32       # lanes of a vector
        LC_VW_F64
        LC_VEC_BYTES    # bytes of a vector
    const char *LC_ISA
    void lc_tile_b_f32(int mr, int nv, Py_ssize_t kc, const float *a, const float *b,
                       const Py_ssize_t *boff, float *c, Py_ssize_t ldc, int beta)
    void lc_tile_b_f64(int mr, int nv, Py_ssize_t kc, const double *a, const double *b,
                       const Py_ssize_t *boff, double *c, Py_ssize_t ldc, int beta)
    void lc_tile_g_f32(int mr, int nv, Py_ssize_t kc, const float *a, const Py_ssize_t *aoff,
                       Py_ssize_t rs, const float *b, const Py_ssize_t *boff, float *c,
                       Py_ssize_t ldc, int beta)
    void lc_tile_g_f64(int mr, int nv, Py_ssize_t kc, const double *a,
                       const Py_ssize_t *aoff, Py_ssize_t rs, const double *b,
                       const Py_ssize_t *boff, double *c, Py_ssize_t ldc, int beta)
    void lc_tile_a_f32(Py_ssize_t kc, const float *a, const Py_ssize_t *aoff, const float *b,
                       float *c, Py_ssize_t ldc, int beta)
    void lc_tile_a_f64(Py_ssize_t kc, const double *a, const Py_ssize_t *aoff, const double *b,
                       double *c, Py_ssize_t ldc, int beta)
    void lc_tile_d_f32(Py_ssize_t kc, const float *a, const Py_ssize_t *aoff, const float *b,
                       Py_ssize_t ldb, float *c, Py_ssize_t ldc, int beta)
    void lc_tile_d_f64(Py_ssize_t kc, const double *a, const Py_ssize_t *aoff, const double *b,
                       Py_ssize_t ldb, double *c, Py_ssize_t ldc, int beta)
    void lc_transpose_f32(const float *src, Py_ssize_t lds, float *dst, Py_ssize_t ldd)
    void lc_transpose_f64(const double *src, Py_ssize_t lds, double *dst, Py_ssize_t ldd)


# ---------------------------------------------------------------------------------------------
# Blocking: rows of A per pass over the tiles (KC), grid columns per work item of the forward-
# style product (NCB_TILES tiles of NR), reduction length per weight-gradient step (PC).

cdef enum:
    KC = 384
    NCB_TILES = 8
    # PC: float32; float64 half of it, so that the packed dy panel (two vectors of columns)
    # and the eight rows of x it meets stay within L1 (cifar and dilated weight gradients 7 %
    # faster in float64, the others unchanged)
    PC = 256
    # PC_D_BYTES: per row, for lc_tile_d (512 float32 or 256 float64 columns): its OR_D packed
    # rows of dy stay in L1 over the row panels (1024 columns of float64, 64 KiB, were read
    # from L2 three times: mnist weight gradient 0.66 ms against 0.55 now), and the lanes are
    # summed once per call
    PC_D_BYTES = 2048
    MAX_NR = 64     # at least the columns of any forward-style tile
    # GATHER_COLUMNS: a forward-style product with fewer grid columns than this in all (images
    # times phases) reads the weight in place (lc_tile_g) instead of packing it: packing costs
    # about as much as 34 columns of the product (batch 1, 512 channels, 7x7: 36 % of the
    # forward pass), reading in place a few per cent of the product
    GATHER_COLUMNS = 1024
    # MIN_ITEMS: a forward-style product with fewer (image, group, column block) work items
    # than this splits its rows (output channels) too, so that batch 1 keeps every core busy
    MIN_ITEMS = 8
    # Small images: a work item of the forward-style product takes up to MAX_IMAGES images,
    # so that it has about ITEM_COLUMNS grid columns for each panel of A it reads (a 1x1 input
    # of a GAN generator has 25 columns: A was read from L3 once per image and tile), while
    # their staged slices stay within STAGED_IMAGES elements
    MAX_IMAGES = 16
    ITEM_COLUMNS = 256
    STAGED_IMAGES = 1 << 18


cdef inline void tile_b(int mr, bint narrow, Py_ssize_t kc, const floating *a,
                        const floating *b, const Py_ssize_t *boff, floating *c, Py_ssize_t ldc,
                        bint beta) noexcept nogil:
    cdef int nv = 1 if narrow else LC_NV_B
    if floating is float:
        lc_tile_b_f32(mr, nv, kc, a, b, boff, c, ldc, beta)
    else:
        lc_tile_b_f64(mr, nv, kc, a, b, boff, c, ldc, beta)


cdef inline void tile_g(int mr, bint narrow, Py_ssize_t kc, const floating *a,
                        const Py_ssize_t *aoff, Py_ssize_t rs, const floating *b,
                        const Py_ssize_t *boff, floating *c, Py_ssize_t ldc,
                        bint beta) noexcept nogil:
    cdef int nv = 1 if narrow else LC_NV_B
    if floating is float:
        lc_tile_g_f32(mr, nv, kc, a, aoff, rs, b, boff, c, ldc, beta)
    else:
        lc_tile_g_f64(mr, nv, kc, a, aoff, rs, b, boff, c, ldc, beta)


cdef Py_ssize_t tile_rows(Py_ssize_t M) noexcept nogil:
    """Rows of the forward-style tile for a product with M rows: LC_MR_B, or the fewest of 1, 2
    and 4 that hold all M (so that one or three channels do not leave most of a tile idle)."""
    if M <= 2:
        return M if M > 0 else 1
    return 4 if M <= 4 else LC_MR_B


cdef inline void tile_a(Py_ssize_t kc, const floating *a, const Py_ssize_t *aoff,
                        const floating *b, floating *c, Py_ssize_t ldc, bint beta) noexcept nogil:
    if floating is float:
        lc_tile_a_f32(kc, a, aoff, b, c, ldc, beta)
    else:
        lc_tile_a_f64(kc, a, aoff, b, c, ldc, beta)


cdef inline void tile_d(Py_ssize_t kc, const floating *a, const Py_ssize_t *aoff,
                        const floating *b, Py_ssize_t ldb, floating *c, Py_ssize_t ldc,
                        bint beta) noexcept nogil:
    if floating is float:
        lc_tile_d_f32(kc, a, aoff, b, ldb, c, ldc, beta)
    else:
        lc_tile_d_f64(kc, a, aoff, b, ldb, c, ldc, beta)


cdef Py_ssize_t grid_columns(Py_ssize_t q0, Py_ssize_t n, const Py_ssize_t *q,
                             const Py_ssize_t *grid, Py_ssize_t base, const Py_ssize_t *dstep,
                             Py_ssize_t *dcol, Py_ssize_t *run) noexcept nogil:
    """For staged grid columns q0 .. q0 + n - 1 (row length q[2], plane q[1] * q[2]): dcol[j],
    the destination base + a*dstep[0] + b*dstep[1] + e*dstep[2] of valid column (a, b, e), -1
    for junk; and run[j], the number of columns from j on whose destinations follow each other
    with step dstep[2] (0 for junk)."""
    cdef Py_ssize_t a = q0 // (q[1] * q[2]), b = (q0 // q[2]) % q[1], e = q0 % q[2]
    cdef Py_ssize_t j = 0, t, seg, valid, d0
    while j < n:                # one grid row (or the part of it in range) at a time
        seg = min(q[2] - e, n - j)
        valid = min(max(grid[2] - e, 0), seg) if b < grid[1] else 0
        d0 = base + a * dstep[0] + b * dstep[1] + e * dstep[2]
        for t in range(valid):
            dcol[j + t] = d0 + t * dstep[2]
            run[j + t] = valid - t
        for t in range(valid, seg):
            dcol[j + t] = -1
            run[j + t] = 0
        j += seg
        e += seg
        if e == q[2]:
            e = 0
            b += 1
            if b == q[1]:
                b = 0
                a += 1
    if q[2] == grid[2] and dstep[1] == grid[2] * dstep[2]:
        # no junk columns and rows that follow each other: runs continue across rows
        for j in reversed(range(n - 1)):
            if dcol[j] >= 0 and dcol[j + 1] == dcol[j] + dstep[2]:
                run[j] = run[j + 1] + 1
    return n


# ---------------------------------------------------------------------------------------------
# Staging: the padded, phase-split copy of one (image, group) slice.

cdef struct Stage:
    Py_ssize_t dim[3]       # source spatial sizes
    Py_ssize_t step[3]      # phases per axis (the stride; 1 for dy)
    Py_ssize_t lead[3]      # source index = staged index * step + phase - lead
    Py_ssize_t q[3]         # Dq, Hq, Wq: staged sizes of one phase
    Py_ssize_t plane        # Dq * Hq * Wq
    Py_ssize_t chan         # staged elements per channel (phases * plane)
    Py_ssize_t nchan        # channels per (image, group)
    Py_ssize_t src_chan     # source elements per channel
    Py_ssize_t size         # elements in all
    bint identity           # staging would copy the slice unchanged (no padding, stride 1)
    Py_ssize_t src_size     # elements of the whole source array


cdef inline void fill_row(floating *row, const floating *s, Py_ssize_t sw, Py_ssize_t e_lo,
                          Py_ssize_t e_hi, Py_ssize_t Wq) noexcept nogil:
    """row[e] = s[e * sw] for e_lo <= e < e_hi, 0 for the other e < Wq."""
    cdef Py_ssize_t e
    for e in range(e_lo):
        row[e] = 0
    if sw == 1 and e_hi - e_lo >= 64:
        memcpy(row + e_lo, s + e_lo, (e_hi - e_lo) * sizeof(floating))
    elif sw == 1:           # short rows: a call costs more than the copy
        for e in range(e_lo, e_hi):
            row[e] = s[e]
    else:
        for e in range(e_lo, e_hi):
            row[e] = s[e * sw]
    for e in range(e_hi, Wq):
        row[e] = 0


cdef inline void fill_row_pair(floating *row0, floating *row1, const floating *s,
                               const Py_ssize_t *bounds, Py_ssize_t Wq) noexcept nogil:
    """fill_row for both phases of stride 2, row0[e] = s[2e] and row1[e] = s[2e + 1] inside
    bounds[0] .. bounds[1] - 1 and bounds[2] .. bounds[3] - 1, in one pass over the source row
    where both are inside (the compiler turns that into vector loads and shuffles)."""
    cdef Py_ssize_t e, lo0 = bounds[0], hi0 = bounds[1], lo1 = bounds[2], hi1 = bounds[3]
    cdef Py_ssize_t lo = max(lo0, lo1), hi = min(hi0, hi1)
    if hi <= lo:
        fill_row(row0, s, 2, lo0, hi0, Wq)
        fill_row(row1, s + 1, 2, lo1, hi1, Wq)
        return
    for e in range(lo0):
        row0[e] = 0
    for e in range(lo1):
        row1[e] = 0
    for e in range(lo0, lo):
        row0[e] = s[2 * e]
    for e in range(lo1, lo):
        row1[e] = s[2 * e + 1]
    for e in range(lo, hi):
        row0[e] = s[2 * e]
        row1[e] = s[2 * e + 1]
    for e in range(hi, hi0):
        row0[e] = s[2 * e]
    for e in range(hi, hi1):
        row1[e] = s[2 * e + 1]
    for e in range(hi0, Wq):
        row0[e] = 0
    for e in range(hi1, Wq):
        row1[e] = 0


cdef inline void row_bounds(Py_ssize_t pw, Py_ssize_t lw, Py_ssize_t sw, Py_ssize_t W,
                            Py_ssize_t Wq, Py_ssize_t *bounds) noexcept nogil:
    """The staged columns e < Wq of phase pw whose source column e * sw + pw - lw is inside
    0 .. W - 1: bounds[0] .. bounds[1] - 1."""
    bounds[0] = min(first_inside(pw - lw, sw), Wq)
    bounds[1] = max(min(end_inside(pw - lw, sw, W), Wq), bounds[0])


cdef void stage_slice(const floating *src, const Stage *st, floating *out) noexcept nogil:
    # The geometry is copied to locals: Python extensions build with -fno-strict-aliasing, so
    # the compiler would otherwise reload every field of *st after each store into out.
    cdef Py_ssize_t c, pd, ph, pw, a, b, iz, b_lo, b_hi
    cdef Py_ssize_t Dq = st.q[0], Hq = st.q[1], Wq = st.q[2], HWq = st.q[1] * st.q[2]
    cdef Py_ssize_t D = st.dim[0], H = st.dim[1], W = st.dim[2]
    cdef Py_ssize_t sd = st.step[0], sh = st.step[1], sw = st.step[2]
    cdef Py_ssize_t ld = st.lead[0], lh = st.lead[1], lw = st.lead[2]
    cdef Py_ssize_t plane = st.plane, chan = st.chan, src_chan = st.src_chan
    cdef Py_ssize_t nchan = st.nchan, size = st.size
    cdef floating *base
    cdef floating *row
    cdef const floating *srow
    cdef Py_ssize_t bounds[4]       # the staged columns inside, for phases 0 and 1 (once)
    cdef Py_ssize_t pb[2]
    row_bounds(0, lw, sw, W, Wq, bounds)
    row_bounds(1, lw, sw, W, Wq, bounds + 2)
    for c in range(nchan):
        for pd in range(sd):
            for ph in range(sh):
                # staged rows b_lo .. b_hi - 1 of this phase come from source rows inside
                b_lo = min(first_inside(ph - lh, sh), Hq)
                b_hi = max(min(end_inside(ph - lh, sh, H), Hq), b_lo)
                base = out + c * chan + (pd * sh + ph) * sw * plane     # the phases pw follow
                for a in range(Dq):
                    iz = a * sd + pd - ld
                    for pw in range(sw):
                        row = base + pw * plane + a * HWq
                        if iz < 0 or iz >= D:
                            memset(row, 0, HWq * sizeof(floating))
                        else:
                            memset(row, 0, b_lo * Wq * sizeof(floating))
                            memset(row + b_hi * Wq, 0, (Hq - b_hi) * Wq * sizeof(floating))
                    if iz < 0 or iz >= D:
                        continue
                    srow = src + c * src_chan + (iz * H + b_lo * sh + ph - lh) * W
                    row = base + a * HWq + b_lo * Wq
                    if sw == 1 and sh == 1 and lw == 0 and Wq == W:
                        # whole rows, consecutive in both: one copy
                        memcpy(row, srow, (b_hi - b_lo) * W * sizeof(floating))
                        continue
                    for b in range(b_lo, b_hi):
                        if sw == 2:
                            fill_row_pair(row, row + plane, srow - lw, bounds, Wq)
                        elif sw == 1:
                            fill_row(row, srow - lw, 1, bounds[0], bounds[1], Wq)
                        else:
                            for pw in range(sw):
                                row_bounds(pw, lw, sw, W, Wq, pb)
                                fill_row(row + pw * plane, srow + pw - lw, sw, pb[0], pb[1], Wq)
                        row += Wq
                        srow += sh * W
    memset(out + nchan * chan, 0, (size - nchan * chan) * sizeof(floating))


cdef inline const floating *staged_slice(const floating *src, Py_ssize_t off,
                                         const Stage *st, Py_ssize_t key, floating *buf,
                                         Py_ssize_t *staged_key) noexcept nogil:
    """The slice `key` of the source (at src + off) as the tiles read it: the source itself
    where staging would copy it unchanged and every read of the tiles (up to st.size) stays
    inside the source array (a 1x1 convolution: the copy cost 6-8 % of the time); else this
    thread's buffer, staged unless it holds that slice already."""
    if st.identity and off + st.size <= st.src_size:
        return src + off
    if staged_key[0] != key:
        stage_slice(src + off, st, buf)
        staged_key[0] = key
    return buf


# ---------------------------------------------------------------------------------------------
# Forward-style product, for the forward pass (one phase) and the input gradient (one phase per
# stride residue):  dst[n, g*M + i, col(q)] = bias + sum_k A_phase[g][i, k] staged[boff[k] + q]

cdef struct Phase:
    Py_ssize_t K            # rows of B (channels x taps of this phase)
    Py_ssize_t a_off        # offset of this phase's packed A (all groups) in apack
    Py_ssize_t k_off        # offset of this phase's rows in the B-offset table
    Py_ssize_t grid[3]      # sizes of the valid grid
    Py_ssize_t ncols        # grid columns up to the last valid one
    Py_ssize_t nblk         # work items per (image, group)
    Py_ssize_t dst_base     # destination of grid column (a, b, e):
    Py_ssize_t dstep[3]     # (dst_base + a*dstep[0] + b*dstep[1] + e*dstep[2])


cdef struct Product:
    Py_ssize_t N, G, M
    Py_ssize_t mr           # rows of the tile (tile_rows(M)); A is packed in panels of mr
    Py_ssize_t src_img, src_grp
    Py_ssize_t dst_img, dst_grp, dst_row
    Py_ssize_t nphase
    Py_ssize_t items_ng     # work items per (image, group): the sum of the phases' nblk
    const Py_ssize_t *order  # item r of an (image, group): (phase, column block) at 2r, 2r + 1
    Py_ssize_t nimg         # images per work item, and their blocks (see split_work)
    Py_ssize_t nib
    Py_ssize_t nrb          # row blocks per work item of a column block
    Py_ssize_t rblk         # tile panels (of mr rows) per row block
    bint gathered           # A is the weight read in place (lc_tile_g), not packed panels
    Py_ssize_t a_rs         # gathered A: the weight's step from one row of A to the next
    Py_ssize_t a_grp        # and from one group to the next
    Stage st


cdef inline void copy_run(floating *d, Py_ssize_t ds, const floating *src, Py_ssize_t n,
                          bint add) noexcept nogil:
    """d[u * ds] (=, +=) src[u] for u < n."""
    cdef Py_ssize_t u
    if ds == 1:
        if add:
            for u in range(n):
                d[u] += src[u]
        else:
            for u in range(n):
                d[u] = src[u]
    elif add:
        for u in range(n):
            d[u * ds] += src[u]
    else:
        for u in range(n):
            d[u * ds] = src[u]


cdef void stage_images(const floating *src, const Product *p, Py_ssize_t n0, Py_ssize_t nimg,
                       Py_ssize_t g, Py_ssize_t key, floating *buf, Py_ssize_t *staged_key,
                       const floating **staged) noexcept nogil:
    """staged[n]: the slice (image n0 + n, group g) as the tiles read it, for n < nimg (see
    staged_slice), in the thread's buffer one after the other; `key` names the block."""
    cdef Py_ssize_t n, off
    cdef bint fresh = staged_key[0] != key
    for n in range(nimg):
        off = (n0 + n) * p.src_img + g * p.src_grp
        if p.st.identity and off + p.st.size <= p.st.src_size:
            staged[n] = src + off
        else:
            if fresh:
                stage_slice(src + off, &p.st, buf + n * p.st.size)
            staged[n] = buf + n * p.st.size
    staged_key[0] = key


cdef void product_item(const Product *p, const Phase *phases, Py_ssize_t item,
                       const floating *src, const Py_ssize_t *boff_all,
                       const floating *apack, const Py_ssize_t *aoff_all,
                       const floating *bias, floating *dst, floating *fws,
                       Py_ssize_t *iws) noexcept nogil:
    """Work item (block of images, group g, phase, column block, row block) of the
    forward-style product: its rows of dst at the block's valid grid columns, for each of its
    images (innermost, so that each panel of A is read once for all of them).  A is apack:
    packed panels, or with p.gathered the weight itself, read at aoff_all."""
    cdef Py_ssize_t NR = LC_NR_B_F32 if floating is float else LC_NR_B_F64
    cdef Py_ssize_t NCB = NCB_TILES * NR
    cdef Py_ssize_t per_ng = p.items_ng * p.nrb
    cdef Py_ssize_t ng = item // per_ng, r = item % per_ng
    cdef Py_ssize_t rb = r % p.nrb
    r = r // p.nrb
    cdef Py_ssize_t nb = ng // p.G, g = ng % p.G, f = p.order[2 * r]
    cdef Py_ssize_t n0 = nb * p.nimg, nimg = min(p.N - n0, p.nimg), n
    r = p.order[2 * r + 1]
    cdef const Phase *ph = &phases[f]
    cdef Py_ssize_t M = p.M, K = ph.K, MR = p.mr, mpan = (M + MR - 1) // MR
    cdef Py_ssize_t ip0 = rb * p.rblk, ip1 = min(mpan, ip0 + p.rblk)
    cdef Py_ssize_t i0 = ip0 * MR, i1 = min(M, ip1 * MR)
    cdef Py_ssize_t q0 = r * NCB, ncols = min(NCB, ph.ncols - q0)
    cdef Py_ssize_t VW = LC_VW_F32 if floating is float else LC_VW_F64
    cdef Py_ssize_t ntile = (ncols + NR - 1) // NR, ds = ph.dstep[2]
    cdef Py_ssize_t i, j, t, jt, ip, kb, k0, kc, mw, ln, nfull, j0, width, sg, nseg
    cdef Py_ssize_t seg_at[MAX_NR]     # runs of valid columns of a tile: where they start,
    cdef Py_ssize_t seg_len[MAX_NR]    # and how long they are
    cdef bint narrow
    cdef const floating *staged[MAX_IMAGES]
    cdef floating *ctile = fws + p.nimg * p.st.size
    cdef Py_ssize_t *dcol = iws + 1
    cdef Py_ssize_t *run = dcol + NCB
    cdef const floating *a_g
    cdef const Py_ssize_t *boff = boff_all + ph.k_off
    cdef const Py_ssize_t *aoff = aoff_all + ph.k_off
    cdef floating *dst_g = dst + n0 * p.dst_img + g * p.dst_grp
    cdef floating *dst_ng
    cdef floating *d
    cdef const floating *cr
    cdef floating bv
    cdef bint whole
    if p.gathered:
        a_g = apack + g * p.a_grp
    else:
        a_g = apack + ph.a_off + g * round_up(M, MR) * K

    stage_images(src, p, n0, nimg, g, ng, fws, iws, staged)
    grid_columns(q0, ncols, p.st.q, ph.grid, ph.dst_base, ph.dstep, dcol, run)
    for j in range(ncols, ntile * NR):
        dcol[j] = -1
        run[j] = 0

    if K == 0:          # no tap reaches these pixels
        for n in range(nimg):
            for i in range(i0, i1):
                d = dst_g + n * p.dst_img + i * p.dst_row
                for j in range(ncols):
                    if dcol[j] >= 0:
                        d[dcol[j]] = 0

    # tiles of NR columns, and one-vector tiles for the last columns of the block
    nfull = ncols // NR
    ntile = nfull + (ncols - nfull * NR + VW - 1) // VW
    for kb in range((K + KC - 1) // KC):
        k0 = kb * KC
        kc = min(KC, K - k0)
        for jt in range(ntile):
            narrow = jt >= nfull
            j0 = jt * NR if not narrow else nfull * NR + (jt - nfull) * VW
            width = VW if narrow else NR
            # its runs of valid columns; none: the tile is all junk
            nseg = 0
            t = j0
            while t < j0 + width:
                ln = min(run[t], j0 + width - t)
                if ln == 0:
                    t += 1
                    continue
                seg_at[nseg] = t
                seg_len[nseg] = ln
                nseg += 1
                t += ln
            if nseg == 0:
                continue
            # the whole tile lands on one contiguous output row: store in place
            whole = ds == 1 and run[j0] >= width
            for ip in range(ip0, ip1):
                mw = min(MR, M - ip * MR)
                for n in range(nimg):
                    dst_ng = dst_g + n * p.dst_img
                    if whole and mw == MR:
                        panel(p, a_g, ip, K, k0, kc, aoff, narrow, staged[n] + q0 + j0,
                              boff + k0, mw, dst_ng + ip * MR * p.dst_row + dcol[j0],
                              p.dst_row, kb > 0)
                        continue
                    panel(p, a_g, ip, K, k0, kc, aoff, narrow, staged[n] + q0 + j0,
                          boff + k0, mw, ctile, width, 0)
                    for i in range(mw):
                        d = dst_ng + (ip * MR + i) * p.dst_row
                        cr = ctile + i * width - j0
                        for sg in range(nseg):
                            t = seg_at[sg]
                            copy_run(d + dcol[t], ds, cr + t, seg_len[sg], kb > 0)

    if bias != NULL:
        for n in range(nimg):
            for i in range(i0, i1):
                bv = bias[g * M + i]
                d = dst_g + n * p.dst_img + i * p.dst_row
                for j in range(ncols):
                    if dcol[j] >= 0:
                        d[dcol[j]] += bv


cdef inline void panel(const Product *p, const floating *a_g, Py_ssize_t ip, Py_ssize_t K,
                       Py_ssize_t k0, Py_ssize_t kc, const Py_ssize_t *aoff, bint narrow,
                       const floating *b, const Py_ssize_t *boff, Py_ssize_t mw, floating *c,
                       Py_ssize_t ldc, bint beta) noexcept nogil:
    """Rows ip * mr .. ip * mr + mw - 1 of C (at c, rows ldc apart) over A's columns k0 ..
    k0 + kc - 1.  Packed A: one tile of mr rows (the packed panel is zero past M).  Gathered A:
    tiles of mr, 4, 2 and 1 rows, so that no row past M is read."""
    cdef Py_ssize_t MR = p.mr, r0 = 0, rr
    if not p.gathered:
        tile_b(MR, narrow, kc, a_g + (ip * K + k0) * MR, b, boff, c, ldc, beta)
        return
    while r0 < mw:
        rr = mw - r0
        rr = MR if rr >= MR else 4 if rr >= 4 else 2 if rr >= 2 else 1
        tile_g(rr, narrow, kc, a_g + (ip * MR + r0) * p.a_rs, aoff + k0, p.a_rs, b, boff,
               c + r0 * ldc, ldc, beta)
        r0 += rr


cdef void split_work(Product *p, Py_ssize_t columns) noexcept nogil:
    """The work items, from the problem alone (`columns`: grid columns of one image, all
    phases).  p.nimg: images per item, as many as make ITEM_COLUMNS columns (within MAX_IMAGES
    and STAGED_IMAGES).  p.nrb and p.rblk: with fewer than MIN_ITEMS items of (images, group,
    column block), the rows too are split into blocks of whole tile panels, as evenly as they
    go.  Each output is still computed by one item, in the same order."""
    cdef Py_ssize_t mpan = (p.M + p.mr - 1) // p.mr, items
    p.nimg = 1
    if 0 < columns < ITEM_COLUMNS:
        p.nimg = max(1, min(p.N, MAX_IMAGES, (ITEM_COLUMNS + columns - 1) // columns,
                            STAGED_IMAGES // max(p.st.size, 1)))
    p.nib = (p.N + p.nimg - 1) // p.nimg
    items = p.nib * p.G * p.items_ng
    p.nrb = 1
    if 0 < items < MIN_ITEMS:
        p.nrb = min(mpan, (MIN_ITEMS + items - 1) // items)
    p.rblk = (mpan + p.nrb - 1) // p.nrb
    p.nrb = (mpan + p.rblk - 1) // p.rblk


def item_order(nblk):
    """The work items of one (image, group) as (phase, column block) pairs, flattened: block
    by block, the phases of a block one after the other.  The phases of an input gradient read
    the same staged dy, each at its own taps, so that a block's dy is still in L2 for the next
    phase (phase by phase, all of dy went through L3 once per phase)."""
    pairs = [(f, b) for b in range(max(nblk)) for f in range(len(nblk)) if b < nblk[f]]
    return np.array(pairs or [(0, 0)], dtype=np.intp).reshape(-1)     # never empty


cdef void run_product(const Product *p, const Phase *phases, const floating *src,
                      const Py_ssize_t *boff, const floating *apack, const Py_ssize_t *aoff,
                      const floating *bias, floating *dst, floating *fws, Py_ssize_t fper,
                      Py_ssize_t *iws, Py_ssize_t iper, int nthreads) noexcept nogil:
    cdef Py_ssize_t item, t
    cdef int tid
    cdef fpstate fp
    for t in range(nthreads):
        iws[t * iper] = -1      # nothing staged yet
    with parallel(num_threads=nthreads):
        fp = flush_subnormals()
        # race-free: each item writes its own (images, group, phase, column block, row block)
        # of dst and reads only shared inputs; the staged slices and other scratch are per
        # thread.
        for item in prange(p.nib * p.G * p.items_ng * p.nrb, schedule="static"):
            tid = threadid()
            product_item(p, phases, item, src, boff, apack, aoff, bias, dst, fws + tid * fper,
                         iws + tid * iper)
        restore_fpstate(fp)


# ---------------------------------------------------------------------------------------------
# Weight gradient: dw_g[o, k] = sum over (n, q) of dy_ng[o, q] staged_ng[aoff[k] + q], computed
# transposed (rows k, columns o) so that the staged x is read in place and only dy is packed.
# The reduction steps (n, block of PC grid columns) are cut into `nchunk` contiguous chunks fixed
# by the problem size alone; each (group, chunk) item sums into its own partial product and the
# partials are added in chunk order, so results do not depend on the thread count.

cdef struct WeightProduct:
    Py_ssize_t N, G, M, K, Kpad, Opad
    bint lanes                      # few output channels: lc_tile_d, else lc_tile_a
    Py_ssize_t NR                   # columns of lc_tile_a (two vectors)
    Py_ssize_t block                # grid columns per reduction step
    Py_ssize_t nchunk, ncols, nblk
    Py_ssize_t nkb, kblk            # blocks of rows (k) per (group, chunk), panels per block
    Py_ssize_t grid[3]              # output sizes OD, OH, OW (the valid grid)
    Py_ssize_t dstep[3]             # their strides in dy
    Py_ssize_t x_img, x_grp, y_img, y_grp, y_plane
    Stage st


cdef void pack_dy_t(const floating *dyrow, Py_ssize_t plane, Py_ssize_t nrow, Py_ssize_t pc,
                    const Py_ssize_t *dcol, const Py_ssize_t *run, floating *bo,
                    Py_ssize_t NR) noexcept nogil:
    """bo[j * NR + i] = dyrow[i * plane + dcol[j]] (0 for junk columns) for the channels
    i < nrow (at most VW) and the block's columns j < pc; with all VW channels, whole blocks of
    VW columns of a run by one transpose."""
    cdef Py_ssize_t VW = LC_VW_F32 if floating is float else LC_VW_F64
    cdef Py_ssize_t i, j = 0, u, t, ln
    cdef const floating *src
    while j < pc:
        ln = run[j]
        if ln == 0:
            for i in range(nrow):
                bo[j * NR + i] = 0
            j += 1
            continue
        src = dyrow + dcol[j]
        u = 0
        while nrow == VW and u + VW <= ln:
            if floating is float:
                lc_transpose_f32(src + u, plane, bo + (j + u) * NR, NR)
            else:
                lc_transpose_f64(src + u, plane, bo + (j + u) * NR, NR)
            u += VW
        for t in range(u, ln):
            for i in range(nrow):
                bo[(j + t) * NR + i] = src[i * plane + t]
        j += ln


cdef void weight_item(const WeightProduct *p, Py_ssize_t item, const floating *x,
                      const floating *dy, const Py_ssize_t *aoff, floating *partial,
                      floating *fws, Py_ssize_t *iws) noexcept nogil:
    cdef Py_ssize_t VW = LC_VW_F32 if floating is float else LC_VW_F64
    cdef Py_ssize_t NR = p.NR, B = p.block
    cdef Py_ssize_t kb = item % p.nkb, gc = item // p.nkb
    cdef Py_ssize_t chunk = gc % p.nchunk, g = gc // p.nchunk
    cdef Py_ssize_t nsteps = p.N * p.nblk
    cdef Py_ssize_t s0 = chunk * nsteps // p.nchunk, s1 = (chunk + 1) * nsteps // p.nchunk
    cdef Py_ssize_t unit = LC_KR_D if p.lanes else LC_MR_A
    cdef Py_ssize_t ip0 = kb * p.kblk, ip1 = min(p.Kpad // unit, ip0 + p.kblk)
    cdef Py_ssize_t step, n, q0, pc, j, u, o, og, o0, ip, jp, ln
    cdef floating *part = partial + gc * p.Kpad * p.Opad
    cdef const floating *staged
    cdef floating *bpack = fws + p.st.size
    cdef floating *bo
    cdef const floating *dyrow
    cdef Py_ssize_t *dcol = iws + 1
    cdef Py_ssize_t *run = dcol + B
    cdef bint first = True
    for step in range(s0, s1):
        n = step // p.nblk
        q0 = (step % p.nblk) * B
        pc = min(B, p.ncols - q0)
        staged = staged_slice(x, n * p.x_img + g * p.x_grp, &p.st, n * p.G + g, fws, iws)
        grid_columns(q0, pc, p.st.q, p.grid, 0, p.dstep, dcol, run)
        if p.lanes:
            # B = dy of the block on the grid, a row of B columns per output channel, zero for
            # junk columns, the tail up to whole vectors, and the channels past M
            if first:
                memset(bpack, 0, p.Opad * B * sizeof(floating))
            for o in range(p.M):
                bo = bpack + o * B
                dyrow = dy + n * p.y_img + g * p.y_grp + o * p.y_plane
                j = 0
                while j < round_up(pc, VW):
                    ln = run[j] if j < pc else 0
                    if ln == 0:
                        bo[j] = 0
                        j += 1
                        continue
                    for u in range(ln):
                        bo[j + u] = dyrow[dcol[j] + u]
                    j += ln
            for ip in range(ip0, ip1):
                for jp in range(p.Opad // LC_OR_D):
                    tile_d(round_up(pc, VW), staged + q0, aoff + ip * LC_KR_D,
                           bpack + jp * LC_OR_D * B, B, part + ip * LC_KR_D * p.Opad
                           + jp * LC_OR_D, p.Opad, not first)
        else:
            # B = dy^T of the block in panels of NR output channels, bpack[o // NR][j][o % NR],
            # VW channels at a time; zero for junk columns and (written once per item) for the
            # channels past M
            for og in range(p.Opad // VW):
                o0 = og * VW
                bo = bpack + (o0 // NR) * B * NR + o0 % NR
                if first and o0 + VW > p.M:
                    for j in range(B):
                        for o in range(max(p.M - o0, 0), VW):
                            bo[j * NR + o] = 0
                if o0 < p.M:
                    pack_dy_t(dy + n * p.y_img + g * p.y_grp + o0 * p.y_plane, p.y_plane,
                              min(VW, p.M - o0), pc, dcol, run, bo, NR)
            for ip in range(ip0, ip1):
                for jp in range(p.Opad // NR):
                    tile_a(pc, staged + q0, aoff + ip * LC_MR_A, bpack + jp * B * NR,
                           part + ip * LC_MR_A * p.Opad + jp * NR, p.Opad, not first)
        first = False
    if first:
        memset(part + ip0 * unit * p.Opad, 0, (ip1 - ip0) * unit * p.Opad * sizeof(floating))


cdef void run_weight(const WeightProduct *p, const floating *x, const floating *dy,
                     const Py_ssize_t *aoff, floating *partial, floating *dw, floating *fws,
                     Py_ssize_t fper, Py_ssize_t *iws, Py_ssize_t iper,
                     int nthreads) noexcept nogil:
    cdef Py_ssize_t item, t
    cdef Py_ssize_t VW = LC_VW_F32 if floating is float else LC_VW_F64
    cdef Py_ssize_t nkv = (p.K + VW - 1) // VW
    cdef int tid
    cdef fpstate fp
    for t in range(nthreads):
        iws[t * iper] = -1      # nothing staged yet
    with parallel(num_threads=nthreads):
        fp = flush_subnormals()
        # race-free: item (group, chunk, block of rows) writes only its rows of its own
        # partial product.
        for item in prange(p.G * p.nchunk * p.nkb, schedule="static"):
            tid = threadid()
            weight_item(p, item, x, dy, aoff, partial, fws + tid * fper, iws + tid * iper)
        restore_fpstate(fp)
    # (a second parallel region: Cython's prange inside parallel() ends without a barrier, and
    # every partial product must be complete before the sums)
    with parallel(num_threads=nthreads):
        fp = flush_subnormals()
        # race-free: each block of VW rows (group, k) of the transposed dw is summed by one
        # thread and written to its columns of dw.
        for item in prange(p.G * nkv, schedule="static"):
            tid = threadid()
            sum_partials(p, item // nkv, item % nkv * VW, partial, dw, fws + tid * fper)
        restore_fpstate(fp)


cdef void sum_partials(const WeightProduct *p, Py_ssize_t g, Py_ssize_t k0,
                       const floating *partial, floating *dw, floating *acc) noexcept nogil:
    """dw[g * M + o, k] for k0 <= k < k0 + VW: the partial products of group g (rows k,
    columns o) summed in chunk order, VW columns at a time in acc, each block then written
    transposed (runs of VW consecutive k: whole cache lines of dw, where element by element
    the writes a row of K apart took most of a batch-1 weight gradient's time)."""
    cdef Py_ssize_t VW = LC_VW_F32 if floating is float else LC_VW_F64
    cdef Py_ssize_t kw = min(VW, p.K - k0), ow, ob, o0, o, k, c
    cdef const floating *part
    cdef floating *d
    for ob in range((p.M + VW - 1) // VW):
        o0 = ob * VW
        ow = min(VW, p.M - o0)
        part = partial + (g * p.nchunk * p.Kpad + k0) * p.Opad + o0
        for k in range(kw):
            for o in range(ow):
                acc[k * VW + o] = part[k * p.Opad + o]
        for c in range(1, p.nchunk):
            part = part + p.Kpad * p.Opad
            for k in range(kw):
                for o in range(ow):
                    acc[k * VW + o] = acc[k * VW + o] + part[k * p.Opad + o]
        for o in range(ow):
            d = dw + (g * p.M + o0 + o) * p.K + k0
            for k in range(kw):
                d[k] = acc[k * VW + o]


# ---------------------------------------------------------------------------------------------
# Python-facing entry points.  The Python layer (loopconv/functional.py) has checked every
# shape, handled empty arrays, and allocated the output; these only fill it.  stride, pad and
# dilation are (d, h, w) triples of ints; pad is the padding before each axis (the padding after
# is implied by the shapes).

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


cdef void set_stage(Stage *st, tuple dim, tuple step, tuple lead, tuple q, Py_ssize_t nchan,
                    Py_ssize_t NR, Py_ssize_t src_size):
    cdef int a
    for a in range(3):
        st.dim[a] = dim[a]
        st.step[a] = step[a]
        st.lead[a] = lead[a]
        st.q[a] = q[a]
    st.plane = st.q[0] * st.q[1] * st.q[2]
    st.chan = st.step[0] * st.step[1] * st.step[2] * st.plane
    st.nchan = nchan
    st.src_chan = st.dim[0] * st.dim[1] * st.dim[2]
    st.size = round_up(nchan * st.chan + NR, 16)     # zeros after: tiles may read NR past
    st.identity = True
    for a in range(3):
        st.identity = st.identity and st.step[a] == 1 and st.lead[a] == 0 and st.q[a] == st.dim[a]
    st.src_size = src_size


cdef tuple x_stage(tuple size, tuple out, tuple ksize, stride, pad, dilation):
    """Staged sizes (Dq, Hq, Wq) for reading x through a kernel: every tap of every valid
    output lies inside."""
    return tuple(out[a] + (ksize[a] - 1) * dilation[a] // stride[a] for a in range(3))


cdef Py_ssize_t tap_offset(const Stage *st, Py_ssize_t c, tuple tap):
    """Staged offset of channel c and tap (kd, kh, kw) read with the staging's strides."""
    cdef Py_ssize_t phase = 0, shift = 0, a, t
    for a in range(3):
        t = tap[a]
        phase = phase * st.step[a] + t % st.step[a]
        shift = shift * st.q[a] + t // st.step[a]
    return c * st.chan + phase * st.plane + shift


def info():
    """The instruction set and register tiles of this build."""
    return {"isa": LC_ISA.decode(),
            "forward tile float32": (LC_MR_B, LC_NR_B_F32),
            "forward tile float64": (LC_MR_B, LC_NR_B_F64),
            "weight tile float32": (LC_MR_A, 2 * LC_VW_F32),
            "weight tile float64": (LC_MR_A, 2 * LC_VW_F64),
            "weight tile, few channels": (LC_KR_D, LC_OR_D),
            "weight read in place below grid columns": GATHER_COLUMNS}


def forward(const floating[:, :, :, :, ::1] x, const floating[:, :, :, :, ::1] w,
            const floating[::1] bias, floating[:, :, :, :, ::1] y,
            stride, pad, dilation, Py_ssize_t groups, int num_threads):
    """y = conv(x, w) + bias over 5-D arrays.  An empty bias means none."""
    cdef Py_ssize_t NR = LC_NR_B_F32 if floating is float else LC_NR_B_F64
    dtype = np.float32 if floating is float else np.float64
    cdef Product p
    cdef Phase ph
    cdef Py_ssize_t O = w.shape[0], Cg = w.shape[1], Og = O // groups
    cdef Py_ssize_t KS = w.shape[2] * w.shape[3] * w.shape[4]
    cdef Py_ssize_t mr = tile_rows(Og), mpad = round_up(Og, mr), g, k, fper, iper
    size = (x.shape[2], x.shape[3], x.shape[4])
    out = (y.shape[2], y.shape[3], y.shape[4])
    ksize = (w.shape[2], w.shape[3], w.shape[4])
    set_stage(&p.st, size, tuple(stride), tuple(pad), x_stage(size, out, ksize, stride, pad,
              dilation), Cg, NR, x.size)
    p.N = x.shape[0]
    p.G = groups
    p.M = Og
    p.mr = mr
    p.src_img = x.shape[1] * p.st.src_chan
    p.src_grp = Cg * p.st.src_chan
    p.dst_row = out[0] * out[1] * out[2]
    p.dst_img = O * p.dst_row
    p.dst_grp = Og * p.dst_row
    p.nphase = 1
    ph.K = Cg * KS
    ph.a_off = 0
    ph.k_off = 0
    for k in range(3):
        ph.grid[k] = out[k]
    ph.ncols = ((out[0] - 1) * p.st.q[1] + out[1] - 1) * p.st.q[2] + out[2]
    ph.nblk = (ph.ncols + NCB_TILES * NR - 1) // (NCB_TILES * NR)
    ph.dst_base = 0
    ph.dstep[0] = out[1] * out[2]
    ph.dstep[1] = out[2]
    ph.dstep[2] = 1
    p.items_ng = ph.nblk
    cdef Py_ssize_t[::1] order = item_order([ph.nblk])
    p.order = &order[0]

    taps = [(kd * dilation[0], kh * dilation[1], kw * dilation[2]) for kd in range(ksize[0])
            for kh in range(ksize[1]) for kw in range(ksize[2])]
    cdef Py_ssize_t[::1] boff = np.array([tap_offset(&p.st, c, t) for c in range(Cg)
                                          for t in taps], dtype=np.intp)
    cdef Py_ssize_t[::1] roff = np.arange(Og, dtype=np.intp) * ph.K
    cdef Py_ssize_t[::1] koff = np.arange(ph.K, dtype=np.intp)
    # A[o, (c, tap)] = w[g * Og + o, c, tap]: the weight's rows as they are
    p.gathered = p.N * ph.ncols < GATHER_COLUMNS
    p.a_rs = ph.K
    p.a_grp = Og * ph.K
    split_work(&p, ph.ncols)
    cdef floating[::1] apack = np.empty(1 if p.gathered else groups * mpad * ph.K, dtype=dtype)
    fper = per_thread(p.nimg * p.st.size + LC_MR_B * NR)
    iper = per_thread(1 + 2 * NCB_TILES * NR)
    cdef floating[::1] fws = _workspace("f", dtype, fper * num_threads)
    cdef Py_ssize_t[::1] iws = _workspace("i", np.intp, iper * num_threads)
    cdef const floating *bptr = &bias[0] if bias.shape[0] > 0 else NULL
    cdef const floating *a = &w[0, 0, 0, 0, 0] if p.gathered else &apack[0]
    with nogil:
        if not p.gathered:
            for g in range(groups):
                pack_weight(&w[g * Og, 0, 0, 0, 0], Og, mr, ph.K, &roff[0], &koff[0],
                            &apack[g * mpad * ph.K])
        run_product(&p, &ph, &x[0, 0, 0, 0, 0], &boff[0], a, &koff[0], bptr,
                    &y[0, 0, 0, 0, 0], &fws[0], fper, &iws[0], iper, num_threads)


cdef void pack_weight(const floating *w, Py_ssize_t M, Py_ssize_t MR, Py_ssize_t K,
                      const Py_ssize_t *roff, const Py_ssize_t *koff,
                      floating *dst) noexcept nogil:
    """A panels of the forward-style product: dst[(i // MR) * K * MR + k * MR + i % MR] =
    w[roff[i] + koff[k]], rows past M zero."""
    cdef Py_ssize_t i, k
    cdef floating *d
    for i in range(round_up(M, MR)):
        d = dst + (i // MR) * K * MR + i % MR
        if i < M:
            for k in range(K):
                d[k * MR] = w[roff[i] + koff[k]]
        else:
            for k in range(K):
                d[k * MR] = 0


def grad_input(const floating[:, :, :, :, ::1] dy, const floating[:, :, :, :, ::1] w,
               const floating[::1] bias, floating[:, :, :, :, ::1] dx, stride, pad, dilation,
               Py_ssize_t groups, int num_threads):
    """dx = bias + gradient of conv(x, w) with respect to x, given dy (the transposed
    convolution of dy); dx is overwritten.  An empty bias means none."""
    cdef Py_ssize_t NR = LC_NR_B_F32 if floating is float else LC_NR_B_F64
    dtype = np.float32 if floating is float else np.float64
    cdef Product p
    cdef Py_ssize_t O = w.shape[0], Cg = w.shape[1], Og = O // groups
    cdef Py_ssize_t KS = w.shape[2] * w.shape[3] * w.shape[4]
    cdef Py_ssize_t mr = tile_rows(Cg), mpad = round_up(Cg, mr), g, f, fper, iper
    cdef Py_ssize_t a_off = 0, k_off = 0
    size = (dx.shape[2], dx.shape[3], dx.shape[4])
    out = (dy.shape[2], dy.shape[3], dy.shape[4])
    ksize = (w.shape[2], w.shape[3], w.shape[4])
    # Per axis and phase r (input indices = r mod s): its taps as (k, offset into dy), and the
    # number of input indices in the phase.
    axes = []
    for a in range(3):
        s, d, pb = stride[a], dilation[a], pad[a]
        axes.append([([(k, (r + pb - k * d) // s) for k in range(ksize[a])
                       if (r + pb - k * d) % s == 0], (size[a] - r + s - 1) // s)
                     for r in range(min(s, size[a]))])
    # Stage dy once for all phases: lead and sizes so that every phase's reads are inside.
    lead = tuple(max([0] + [-o for taps, _ in axes[a] for _, o in taps]) for a in range(3))
    q = tuple(max([out[a] + lead[a]] + [n + o + lead[a] for taps, n in axes[a] for _, o in taps])
              for a in range(3))
    set_stage(&p.st, out, (1, 1, 1), lead, q, Og, NR, dy.size)
    p.N = dx.shape[0]
    p.G = groups
    p.M = Cg
    p.mr = mr
    p.src_img = O * p.st.src_chan
    p.src_grp = Og * p.st.src_chan
    p.dst_row = size[0] * size[1] * size[2]
    p.dst_img = dx.shape[1] * p.dst_row
    p.dst_grp = Cg * p.dst_row
    p.nphase = len(axes[0]) * len(axes[1]) * len(axes[2])
    p.items_ng = 0
    cdef Py_ssize_t[::1] boff, order, aoff
    cdef floating[::1] apack
    cdef const floating *a_src
    cdef floating[::1] fws
    cdef Py_ssize_t[::1] iws
    cdef const floating *bptr = &bias[0] if bias.shape[0] > 0 else NULL
    iper = per_thread(1 + 2 * NCB_TILES * NR)
    cdef Phase *phases = <Phase *> malloc(p.nphase * sizeof(Phase))
    if phases == NULL:
        raise MemoryError()
    boffs, koffs, apacks = [], [], []
    try:
        f = 0
        for rd, (td, nd_) in enumerate(axes[0]):
            for rh, (th, nh) in enumerate(axes[1]):
                for rw, (tw, nw) in enumerate(axes[2]):
                    taps = [(kd, kh, kw, od + lead[0], oh + lead[1], ow + lead[2])
                            for kd, od in td for kh, oh in th for kw, ow in tw]
                    K = Og * len(taps)
                    phases[f].K = K
                    phases[f].k_off = k_off
                    phases[f].grid[0] = nd_
                    phases[f].grid[1] = nh
                    phases[f].grid[2] = nw
                    phases[f].ncols = ((nd_ - 1) * q[1] + nh - 1) * q[2] + nw
                    phases[f].nblk = (phases[f].ncols + NCB_TILES * NR - 1) // (NCB_TILES * NR)
                    phases[f].dst_base = (rd * size[1] + rh) * size[2] + rw
                    phases[f].dstep[0] = stride[0] * size[1] * size[2]
                    phases[f].dstep[1] = stride[1] * size[2]
                    phases[f].dstep[2] = stride[2]
                    p.items_ng += phases[f].nblk
                    # B row (o, tap): staged dy at the tap's offset; A[c, (o, tap)] = w[o, c, tap]
                    boffs.append(np.array([o * p.st.chan + (t[3] * q[1] + t[4]) * q[2] + t[5]
                                           for o in range(Og) for t in taps], dtype=np.intp))
                    koffs.append(np.array([o * Cg * KS + (t[0] * ksize[1] + t[1]) * ksize[2]
                                           + t[2] for o in range(Og) for t in taps],
                                          dtype=np.intp))
                    phases[f].a_off = a_off
                    a_off += groups * mpad * K
                    k_off += K
                    f += 1
        # A[c, (o, tap)] = w[g * Og + o, c, tap]: row c at a step of KS, column (o, tap) at
        # koff, read in place where the product is narrow, else packed phase by phase
        p.gathered = p.N * sum([phases[f].ncols for f in range(p.nphase)]) < GATHER_COLUMNS
        p.a_rs = KS
        p.a_grp = Og * Cg * KS
        split_work(&p, sum([phases[f].ncols for f in range(p.nphase)]))
        fper = per_thread(p.nimg * p.st.size + LC_MR_B * NR)
        if not p.gathered:
            apacks = [_pack_groups(w, groups, Cg, mr, phases[f].K, koffs[f], dtype)
                      for f in range(p.nphase)]
        order = item_order([phases[f].nblk for f in range(p.nphase)])
        p.order = &order[0]
        boff = np.concatenate(boffs + [np.zeros(1, np.intp)])
        aoff = np.concatenate(koffs + [np.zeros(1, np.intp)])
        apack = np.concatenate(apacks + [np.zeros(1, dtype)])
        a_src = &w[0, 0, 0, 0, 0] if p.gathered else &apack[0]
        fws = _workspace("f", dtype, fper * num_threads)
        iws = _workspace("i", np.intp, iper * num_threads)
        with nogil:
            run_product(&p, phases, &dy[0, 0, 0, 0, 0], &boff[0], a_src, &aoff[0], bptr,
                        &dx[0, 0, 0, 0, 0], &fws[0], fper, &iws[0], iper, num_threads)
    finally:
        free(phases)


def _pack_groups(const floating[:, :, :, :, ::1] w, Py_ssize_t groups, Py_ssize_t M,
                 Py_ssize_t mr, Py_ssize_t K, koff_arr, dtype):
    """Packed A of the input gradient for all groups: rows c, columns (o, tap)."""
    cdef Py_ssize_t g, Og = w.shape[0] // groups, mpad = round_up(M, mr)
    cdef Py_ssize_t KS = w.shape[2] * w.shape[3] * w.shape[4]
    out = np.empty(max(groups * mpad * K, 1), dtype=dtype)
    if K == 0:
        return out[:0]
    cdef floating[::1] apack = out
    cdef Py_ssize_t[::1] koff = koff_arr
    cdef Py_ssize_t[::1] roff = np.arange(M, dtype=np.intp) * KS
    with nogil:
        for g in range(groups):
            pack_weight(&w[g * Og, 0, 0, 0, 0], M, mr, K, &roff[0], &koff[0],
                        &apack[g * mpad * K])
    return out[:groups * mpad * K]


def grad_weight(const floating[:, :, :, :, ::1] x, const floating[:, :, :, :, ::1] dy,
                floating[:, :, :, :, ::1] dw, stride, pad, dilation, Py_ssize_t groups,
                int num_threads):
    """dw = gradient of conv(x, w) with respect to w, given dy; dw is overwritten."""
    cdef Py_ssize_t VW = LC_VW_F32 if floating is float else LC_VW_F64
    dtype = np.float32 if floating is float else np.float64
    cdef WeightProduct p
    cdef Py_ssize_t O = dw.shape[0], Cg = dw.shape[1], Og = O // groups
    cdef Py_ssize_t KS = dw.shape[2] * dw.shape[3] * dw.shape[4]
    cdef Py_ssize_t fper, iper, nsteps, k, npan
    size = (x.shape[2], x.shape[3], x.shape[4])
    out = (dy.shape[2], dy.shape[3], dy.shape[4])
    ksize = (dw.shape[2], dw.shape[3], dw.shape[4])
    # Output channels that fill at most one vector would leave most lanes of lc_tile_a empty
    # and make transposing dy the main cost: lc_tile_d sums along pixels instead.
    p.lanes = Og <= VW
    p.NR = 2 * VW
    p.block = PC_D_BYTES // sizeof(floating) if p.lanes else PC * 4 // sizeof(floating)
    set_stage(&p.st, size, tuple(stride), tuple(pad), x_stage(size, out, ksize, stride, pad,
              dilation), Cg, p.NR, x.size)
    p.N = x.shape[0]
    p.G = groups
    p.M = Og
    p.K = Cg * KS
    p.Kpad = round_up(p.K, LC_KR_D if p.lanes else LC_MR_A)
    p.Opad = round_up(Og, LC_OR_D if p.lanes else p.NR)
    for k in range(3):
        p.grid[k] = out[k]
    p.dstep[0] = out[1] * out[2]
    p.dstep[1] = out[2]
    p.dstep[2] = 1
    p.ncols = ((out[0] - 1) * p.st.q[1] + out[1] - 1) * p.st.q[2] + out[2]
    p.nblk = (p.ncols + p.block - 1) // p.block
    p.x_img = x.shape[1] * p.st.src_chan
    p.x_grp = Cg * p.st.src_chan
    p.y_plane = out[0] * out[1] * out[2]
    p.y_img = O * p.y_plane
    p.y_grp = Og * p.y_plane
    # Reduction chunks: a function of the problem only, never of the thread count.  At least
    # four items (both cores busy, and some balance for more), more while the partial products
    # stay within about 1 MiB (float32): each chunk's partial is written and then summed, and
    # 16 partials of a 256 x 256 weight (8 MiB, past the caches) cost a seventh of the time.
    nsteps = p.N * p.nblk
    p.nchunk = max(1, min(nsteps, 32, max((4 + groups - 1) // groups,
                                          (1 << 18) // (groups * p.Kpad * p.Opad))))
    # Few (group, chunk) items (batch 1, few pixels): the rows k are split into blocks too.
    # Each element is still summed by one item, in the same order.
    npan = p.Kpad // (LC_KR_D if p.lanes else LC_MR_A)
    p.nkb = 1
    if groups * p.nchunk < MIN_ITEMS:
        p.nkb = min(npan, (MIN_ITEMS + groups * p.nchunk - 1) // (groups * p.nchunk))
    p.kblk = (npan + p.nkb - 1) // p.nkb
    p.nkb = (npan + p.kblk - 1) // p.kblk
    taps = [(kd * dilation[0], kh * dilation[1], kw * dilation[2]) for kd in range(ksize[0])
            for kh in range(ksize[1]) for kw in range(ksize[2])]
    # rows past K repeat row 0: the tile computes them and the reduction never reads them
    rows = [tap_offset(&p.st, c, t) for c in range(Cg) for t in taps]
    cdef Py_ssize_t[::1] aoff = np.array(rows + rows[:1] * (p.Kpad - p.K), dtype=np.intp)
    cdef floating[::1] partial = _workspace("p", dtype, groups * p.nchunk * p.Kpad * p.Opad)
    fper = per_thread(max(p.st.size + p.Opad * p.block, VW * VW))   # (sum_partials: VW * VW)
    iper = per_thread(1 + 2 * p.block)
    cdef floating[::1] fws = _workspace("f", dtype, fper * num_threads)
    cdef Py_ssize_t[::1] iws = _workspace("i", np.intp, iper * num_threads)
    with nogil:
        run_weight(&p, &x[0, 0, 0, 0, 0], &dy[0, 0, 0, 0, 0], &aoff[0], &partial[0],
                   &dw[0, 0, 0, 0, 0], &fws[0], fper, &iws[0], iper, num_threads)


# ---------------------------------------------------------------------------------------------
# Convolutions with few channels per group: depthwise.pxi (the same staging, the same flags).

include "depthwise.pxi"
