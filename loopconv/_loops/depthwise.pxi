# Depthwise loops: the three passes of a convolution with few channels per group -- depthwise
# (groups == C, channel multiplier O // C = 1, 2, ...) or groups of a few channels -- where the
# matrix products of the tiled loops would have one or two rows.
#
# Included at the end of tiled.pxi, so compiled once per instruction set with that variant's
# flags, sharing its staging geometry (Stage, tap_offset) and workspaces.  Layout as there:
#     input   x  (N, C, D, H, W)        weight  w  (O, C // G, KD, KH, KW)
#     output  y  (N, O, OD, OH, OW)
#     OD = (D + pd_before + pd_after - dd * (KD - 1) - 1) // sd + 1      (likewise H, W)
# all C-contiguous, with Cg = C // G input and Og = O // G output channels per group g; 1-D and
# 2-D convolutions have D = KD = 1 (and H = KH = 1).
#
# Staging.  The (image, group) slice of the source is copied zero-padded and split by stride
# phase, as tiled_stage.pxi's stage_slice does, so that tap t = (c, kd, kh, kw) of output pixel
# (od, oh, ow) is the staged element
#     off[t] + q,   q = (od * Hq + oh) * Wq + ow                    (off[t]: tap_offset)
# and a run of output pixels along a row reads a run of staged elements for every tap.  Only
# the elements that come from the source are copied (stage_runs); the padding is zeroed once
# per call and left alone.
#
# Forward:  y[n, o, od, oh, ow] = bias[o] + sum_t w[o, t] * staged[off[t] + q].
# Input gradient (the transposed convolution), split by stride phase as in tiled.pxi: along an
# axis, input index i = r + s * a receives from tap k exactly when (r + pad - k * dil) is a
# multiple of s, and then from dy index a + (r + pad - k * dil) / s.  dy's slice is staged
# with a zero border (stride 1), and for each phase (rd, rh, rw)
#     dx[n, c, rd + sd*a, rh + sh*b, rw + sw*e] = bias[c]
#         + sum over o < Og, taps (kd, kh, kw) of the phase of w[o, c, kd, kh, kw] * staged[...]
# the same sums with the phase's weights gathered per input channel.  Phases that no tap
# reaches get the bias alone.
# Weight gradient:  dw[o, t] = sum over n and output pixels p of dy[n, o, p] * staged_n[off[t] + q]
#
# Two forms of the same sums (depthwise.h has the register blocks):
# - pixel vectors, one channel at a time: the forward and input-gradient sums of a run of
#   outputs along a row, weight scalars broadcast (lc_dw_rows); a row straight into the
#   output, or (rows shorter than a few vectors) several grid rows as one run into scratch,
#   the Wq - OW columns between them computed and dropped.  The weight gradient as dot
#   products of dy placed on the grid (zero between rows) with the shifted staged input, a
#   vector of partial sums per (o, t) whose lanes are added at the end (lc_dw_dots: a few
#   output channels of a group at a time, each shifted input vector loaded once for them).
# - channel blocks (one input channel per group, small images, 512-bit vectors): VW groups at a
#   time, each staged slice transposed so that a grid element is a vector of the VW channels;
#   the sums lane by lane over every output pixel (no lanes lost to rows of 7 or 14 pixels;
#   the taps of a kernel row share their input vectors: lc_dwc_runs, lc_dwc_dotruns), then
#   transposed back.
# Every output element is summed over its taps in one fixed order, whatever the threads.
#
# Threads.  Forward and input gradient: work items (image, group, block of grid rows), or
# (image, block of VW groups); each writes its own rows or planes of the output.  Weight
# gradient: items (group or group block, chunk of images and row blocks), the chunks fixed by
# the problem alone; each item writes its own sums (of dw, or of a partial per chunk, added in
# chunk order after the parallel region).  So results do not depend on the thread count.
# Scratch (staged slice, segment, dy on the grid, accumulators) is per thread.

cdef enum:
    DW_SLACK = 64       # staged elements past a slice: runs read up to a vector past their end
    DW_SEG_COLS = 1024  # grid columns of a segment (rows computed together)
    DW_ITEMS = 16       # work items of a forward or input gradient at least, where it has them
    DW_DOT_COLS = 4096  # grid columns of dy per weight-gradient step (16 KiB of float32)
    DW_CHUNKS = 8       # weight-gradient items (groups x chunks) at least, where it has them
    DW_STAGED = 1 << 15     # staged elements of a weight-gradient step of several images
    DW_WEIGHT_PIXELS = 784  # output pixels from which 9-16 channels a group take dw_suits
    DW_WEIGHT_OUT = 12      # and at most this many output channels a group
    DW_GATHER_SERIAL = 1 << 13  # weights gathered on one thread below this many


def dw_suits(Py_ssize_t cin_per_group, Py_ssize_t cout_per_group, Py_ssize_t pixels,
             bint strided, int which):
    """Whether the depthwise loops are faster than the tiled ones for a pass (`which`: 0
    forward, 1 input gradient, 2 weight gradient) of a convolution with these channels per
    group and `pixels` output pixels per channel, strided or not.  Measured against the tiled
    loops (float32 and float64, 1 and 8 images of 7x7 to 56x56, stride 1 and 2): one or two
    input channels per group win every pass (depthwise 1.3-5x); four only on small images
    (14x14 and below, and the strided input gradient), 15-25 % slower at 28x28 and above; eight
    and more are matrix products the tiled loops do better, except for the weight gradient,
    whose dot products (a block of a group's output channels at a time, several small images
    a step) stay ahead up to eight, and from DW_WEIGHT_PIXELS output pixels on up to sixteen
    input and DW_WEIGHT_OUT output channels.  Sixteen of both went to these loops too (16 per
    group, batch 1 and 8, float32: 28x28 1.15-1.17x, 56x56 1.22-1.41x, from 56x56 at stride 2
    1.19-1.27x; 14x14 0.6-1.0x, 32 per group 0.5-1.05x), but on a later machine and loops the
    tiled ones were faster there in every build and dtype (tiled time over depthwise, one
    thread: AVX-512 float32 0.71-0.90 on 28x28 to 112x112 and 16^3 to 64^3 at batch 1 to 8,
    two threads 0.58-0.83, the 5x5x5 layer of a V-Net on 32^3 0.71; float64 0.63-0.80; AVX2
    0.49-0.61; only 8 groups of 16 on 28x28 at batch 8, AVX-512 float32, 1.07), while twelve
    output channels or fewer stayed ahead in float32 with AVX-512 (12 -> 12 on 56x56 1.25x, on
    32^3 1.14x, 16 -> 12 in 16 groups on 56x56 and at batch 8 on 28x28 1.23-1.31x, 16 -> 8 on
    56x56 1.22x, 16 -> 2 3x3x3 on 64^3 1.05x; float64 0.86-1.58x).  With AVX2 the tiled loops
    were ahead for 12 -> 12 and 16 -> 12 too (0.84-0.89), and for 8 per group on 28x28 and
    32^3 (0.63-0.83): left as they are, the builds sharing one rule."""
    if which == PASS_WEIGHT:
        return ((cin_per_group <= 8 and cout_per_group <= 8)
                or (cin_per_group <= 16 and cout_per_group <= DW_WEIGHT_OUT
                    and pixels >= DW_WEIGHT_PIXELS))
    if cin_per_group <= 2:
        return cout_per_group <= 8
    return (cin_per_group <= 4 and cout_per_group <= 4
            and (pixels <= 256 or (strided and which == PASS_INPUT)))


cdef bint dwc_wins(Py_ssize_t images, Py_ssize_t groups, Py_ssize_t cin_per_group,
                   Py_ssize_t pixels, Py_ssize_t src_pixels, Py_ssize_t elsize,
                   bint weight) noexcept nogil:
    """Whether the channel blocks are faster than the pixel vectors, for a destination of
    `pixels` per channel and a source of `src_pixels`.  Measured (float32 and float64, images
    7x7 to 112x112, stride 1 and 2): they need one input channel per group, a block of groups,
    and 512-bit vectors (the only build whose lc_transpose is shuffles; the plain loops of the
    others cost more than they save); not on planes of a multiple of 4 KiB (32x32 float32: the
    VW planes of a block fall on the same cache sets, 30 % slower), nor past 112x112 (the
    staged block outgrows L2).  The weight gradient transposes two operands and pays only up
    to 3 VW^2 pixels (28x28 float32 even, 14x14 float64 15 % slower).  Their work items are
    (image, block), so they want four of those at least (one image of 16 channels would leave
    a second thread idle)."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // elsize
    if cin_per_group != 1 or groups < VW or LC_VEC_BYTES != 64:
        return False
    if images * ((groups + VW - 1) // VW) < 4:
        return False
    if (src_pixels > 112 * 112 or (src_pixels * elsize) % 4096 == 0
            or (pixels * elsize) % 4096 == 0):
        return False
    return not weight or pixels <= 3 * VW * VW


# ---------------------------------------------------------------------------------------------
# Staging

cdef object stage_runs(const Stage *st):
    """stage_slice as runs of rows to copy, four numbers each (dst, src, n, nrows): offsets
    into the staged and the source slice, rows Wq and sh * W apart, n elements a row taken
    sw apart.  One run per channel, stride phase and staged depth index."""
    runs = []
    D, H, W = st.dim[0], st.dim[1], st.dim[2]
    sd, sh, sw = st.step[0], st.step[1], st.step[2]
    ld, lh, lw = st.lead[0], st.lead[1], st.lead[2]
    Dq, Hq, Wq = st.q[0], st.q[1], st.q[2]
    cols = [(min(first_inside(pw - lw, sw), Wq), min(end_inside(pw - lw, sw, W), Wq))
            for pw in range(sw)]
    for c in range(st.nchan):
        for pd in range(sd):
            for ph in range(sh):
                b_lo = min(first_inside(ph - lh, sh), Hq)
                b_hi = min(end_inside(ph - lh, sh, H), Hq)
                for a in range(Dq):
                    iz = a * sd + pd - ld
                    if iz < 0 or iz >= D or b_hi <= b_lo:
                        continue
                    for pw, (e_lo, e_hi) in enumerate(cols):
                        if e_hi > e_lo:
                            runs += [c * st.chan + ((pd * sh + ph) * sw + pw) * st.plane
                                     + (a * Hq + b_lo) * Wq + e_lo,
                                     c * st.src_chan + (iz * H + b_lo * sh + ph - lh) * W
                                     + e_lo * sw + pw - lw,
                                     e_hi - e_lo, b_hi - b_lo]
    return np.array(runs + [0], dtype=np.intp)


cdef void dw_stage(const element *src, const Stage *st, const Py_ssize_t *runs,
                   Py_ssize_t nruns, element *out, bint fresh) noexcept nogil:
    """out = stage_slice(src): the runs (stage_runs) copied.  The other elements (padding,
    slack) are zero: written by the first call on a buffer of this geometry (fresh), never
    touched by later ones, which write the same positions.  Reads stay inside the slice
    (st.nchan channels of st.src_chan elements)."""
    cdef Py_ssize_t i, r, e, n, sw = st.step[2], Wq = st.q[2], ls = st.step[1] * st.dim[2]
    cdef Py_ssize_t end = st.nchan * st.src_chan
    cdef const Py_ssize_t *run
    cdef element *d
    cdef const element *s
    if fresh:
        memset(out, 0, st.size * sizeof(element))
    for i in range(nruns):
        run = runs + 4 * i
        n = run[2]
        if sw == 1:
            dw_copy(out + run[0], Wq, src + run[1], ls, n, run[3])
            continue
        for r in range(run[3]):
            d = out + run[0] + r * Wq
            s = src + run[1] + r * ls
            if sw == 2:
                evens(d, s, n, end - run[1] - r * ls)
            else:
                for e in range(n):
                    d[e] = s[e * sw]


cdef inline const element *dw_staged(const element *src, Py_ssize_t off, const Stage *st,
                                     const Py_ssize_t *runs, Py_ssize_t nruns,
                                     Py_ssize_t key, element *buf,
                                     Py_ssize_t *staged_key) noexcept nogil:
    """As tiled_stage.pxi's staged_slice, with dw_stage: the source itself where staging would copy
    it unchanged, else this thread's buffer, staged unless it holds slice `key` already
    (staged_key -1: nothing staged in this call yet)."""
    if st.identity and off + st.size <= st.src_size:
        return src + off
    if staged_key[0] != key:
        dw_stage(src + off, st, runs, nruns, buf, staged_key[0] == -1)
        staged_key[0] = key
    return buf


cdef void lanes_in(const element *src, Py_ssize_t lds, Py_ssize_t nl, Py_ssize_t n,
                   element *dst) noexcept nogil:
    """dst[j * VW + l] = src[l * lds + j] for lanes l < nl, j < n; zero for the other lanes
    and for n <= j < n rounded up to VW."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t jb, j0, j, l
    for jb in range((n + VW - 1) // VW):
        j0 = jb * VW
        if nl == VW and j0 + VW <= n:
            transpose_block(src + j0, lds, dst + j0 * VW, VW)
            continue
        memset(dst + j0 * VW, 0, VW * VW * sizeof(element))
        for l in range(nl):
            for j in range(j0, min(j0 + VW, n)):
                dst[j * VW + l] = src[l * lds + j]


cdef void lanes_out(const element *src, element *dst, Py_ssize_t ldd, Py_ssize_t nl,
                    Py_ssize_t n) noexcept nogil:
    """dst[l * ldd + j] = src[j * VW + l] for lanes l < nl, j < n."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t jb, j0, j, l
    for jb in range((n + VW - 1) // VW):
        j0 = jb * VW
        if nl == VW and j0 + VW <= n:
            transpose_block(src + j0 * VW, VW, dst + j0, ldd)
            continue
        for l in range(nl):
            for j in range(j0, min(j0 + VW, n)):
                dst[l * ldd + j] = src[j * VW + l]


cdef struct DwcPlan:        # the channel blocks
    Py_ssize_t nb           # blocks of VW groups (the last may have fewer)
    Py_ssize_t src_size     # elements of a group's slice of the source, up to whole vectors
    Py_ssize_t nst          # grid elements of a staged slice, with a block of pixels' slack
    Py_ssize_t P            # pixels of a destination channel
    Py_ssize_t out_size     # elements of the transposed destination: P up to VW, times VW


cdef void dwc_stage(const element *src, Py_ssize_t stride, const Stage *st,
                    const Py_ssize_t *runs, Py_ssize_t nruns, const DwcPlan *c, Py_ssize_t nl,
                    element *srcT, element *out, bint fresh) noexcept nogil:
    """The slices of nl consecutive groups (at src + l * stride) staged and transposed:
    out[q * VW + l] = element q of staged slice l.  The slices are transposed as they are
    (into srcT), then their runs copied a vector per element; out's other elements are zero
    from the first call on this buffer (fresh) on."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t i, sw = st.step[2], Wq = st.q[2], ls = st.step[1] * st.dim[2]
    cdef const Py_ssize_t *run
    if fresh:
        memset(out, 0, c.nst * VW * sizeof(element))
    lanes_in(src, stride, nl, st.nchan * st.src_chan, srcT)
    for i in range(nruns):
        run = runs + 4 * i
        dwc_copy(out + run[0] * VW, Wq, srcT + run[1] * VW, ls, run[2], sw, run[3])


# ---------------------------------------------------------------------------------------------
# Forward and input gradient

cdef struct DwPhase:        # a column phase of a DwPair (the forward pass has one)
    Py_ssize_t K            # its taps (and channels): weights and offsets from koff on
    Py_ssize_t koff
    Py_ssize_t nw           # grid columns: outputs along a row
    Py_ssize_t col0         # destination column of grid column e: col0 + e * colstep
    Py_ssize_t colstep
    Py_ssize_t run0, nrun   # its taps as runs (channel blocks): runs run0 .. run0 + nrun - 1


cdef struct DwPair:         # a (depth, row) phase: its grid, and where its rows go
    Py_ssize_t nd, nh       # grid depth and rows
    Py_ssize_t seg0         # its first segment (the segments of all pairs are numbered in turn)
    Py_ssize_t segs_a       # segments per depth index: nh / R rounded up
    Py_ssize_t row0         # destination row of grid row (a, b): row0 + a*astep + b*bstep
    Py_ssize_t astep, bstep
    Py_ssize_t phase0       # its column phases: phases[phase0 .. phase0 + nphw - 1]


cdef struct DwPass:
    Py_ssize_t N, G
    Py_ssize_t M            # output channels per group of the pass (Og forward, Cg input grad)
    Py_ssize_t Ktot         # weights per output channel, all phases (row stride of the weights)
    Py_ssize_t npair, nphw  # pairs; column phases per pair
    bint direct             # rows straight into the output, else through scratch
    Py_ssize_t R            # grid rows per segment
    Py_ssize_t nseg, nblk   # segments per (image, group); work items per (image, group)
    Py_ssize_t Hq, Wq       # the staged grid's rows per depth index, columns per row
    Py_ssize_t src_img, src_grp
    Py_ssize_t dst_img, dst_chan, dst_W
    Stage st
    const Py_ssize_t *runs  # the staging (stage_runs): nruns runs
    Py_ssize_t nruns


cdef void dw_segment(const DwPass *p, const DwPair *pr, const DwPhase *phases, Py_ssize_t s,
                     const element *staged, const element *wts, const Py_ssize_t *off,
                     element bias, element *dchan, element *tmp) noexcept nogil:
    """Segment s (of pair pr) of one output channel: its rows of dchan.  Direct: each row's
    vectors straight into dchan.  Else each column phase's grid rows as one run of grid
    columns (the columns between rows included) into scratch, whose valid columns are then
    copied to their places (the two phases of stride 2 interleaved in one pass)."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t local = s - pr.seg0, a = local // pr.segs_a
    cdef Py_ssize_t b0 = (local % pr.segs_a) * p.R, nrow = min(p.R, pr.nh - b0)
    cdef Py_ssize_t q0 = (a * p.Hq + b0) * p.Wq, f, r, e, cs
    cdef Py_ssize_t ld = pr.bstep * p.dst_W, tsize = round_up(p.R * p.Wq, VW) + VW
    cdef const DwPhase *ph
    cdef element *drow = dchan + (pr.row0 + a * pr.astep + b0 * pr.bstep) * p.dst_W
    cdef element *d
    cdef element *t
    cdef const element *t1
    for f in range(p.nphw):
        ph = &phases[pr.phase0 + f]
        cs = ph.colstep
        t = tmp + f * tsize
        if p.direct:
            dw_rows(ph.K, wts + ph.koff, off + ph.koff, staged + q0, p.Wq, drow + ph.col0, ld,
                    ph.nw, nrow, bias)
            continue
        if ph.K > 0:
            dw_rows(ph.K, wts + ph.koff, off + ph.koff, staged + q0, 0, t, 0,
                    round_up((nrow - 1) * p.Wq + ph.nw, VW), 1, bias)
        else:               # no tap reaches these pixels
            for r in range(nrow):
                for e in range(ph.nw):
                    t[r * p.Wq + e] = bias
        if cs == 1:
            dw_copy(drow + ph.col0, ld, t, p.Wq, ph.nw, nrow)
        elif cs != 2 or p.nphw != 2:
            for r in range(nrow):
                d = drow + r * ld + ph.col0
                for e in range(ph.nw):
                    d[e * cs] = t[r * p.Wq + e]
        elif f == 1:        # phases[phase0], whose columns are as many or one more, and this
            for r in range(nrow):
                d = drow + r * ld
                t1 = tmp + r * p.Wq
                for e in range(ph.nw):
                    d[2 * e] = t1[e]
                    d[2 * e + 1] = t[r * p.Wq + e]
                if phases[pr.phase0].nw > ph.nw:
                    d[2 * ph.nw] = t1[ph.nw]


cdef void dw_item(const DwPass *p, const DwPair *pairs, const DwPhase *phases, Py_ssize_t item,
                  const element *src, const Py_ssize_t *off, const element *wp,
                  const element *bias, element *dst, element *fws,
                  Py_ssize_t *iws) noexcept nogil:
    """Item (image, group, block of segments) of a forward pass or input gradient."""
    cdef Py_ssize_t ng = item // p.nblk, blk = item % p.nblk
    cdef Py_ssize_t n = ng // p.G, g = ng % p.G
    cdef Py_ssize_t s0 = blk * p.nseg // p.nblk, s1 = (blk + 1) * p.nseg // p.nblk
    cdef Py_ssize_t c, oc, s, f
    cdef element bv
    cdef const element *staged = dw_staged(src, n * p.src_img + g * p.src_grp, &p.st,
                                           p.runs, p.nruns, ng, fws, iws)
    for c in range(p.M):
        oc = g * p.M + c
        bv = bias[oc] if bias != NULL else 0
        f = 0
        for s in range(s0, s1):
            while s >= pairs[f].seg0 + pairs[f].nd * pairs[f].segs_a:
                f += 1
            dw_segment(p, &pairs[f], phases, s, staged, wp + oc * p.Ktot, off, bv,
                       dst + n * p.dst_img + oc * p.dst_chan, fws + p.st.size)


cdef void dwc_item(const DwPass *p, const DwcPlan *c, const DwPair *pairs,
                   const DwPhase *phases, Py_ssize_t item, const element *src,
                   const Py_ssize_t *runs, const element *wpack, const element *bpack,
                   element *dst, element *fws, Py_ssize_t *iws) noexcept nogil:
    """Item (image, block of VW groups) of a forward pass or input gradient, channel-blocked:
    wpack holds the weights as (block, channel, tap, lane), bpack the bias as (block, channel,
    lane) or is NULL."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t n = item // c.nb, gb = item % c.nb, g0 = gb * VW
    cdef Py_ssize_t nl = min(VW, p.G - g0), ch, i, a, f, pix, r, e, l
    cdef element *srcT = fws
    cdef element *sT = srcT + c.src_size * VW
    cdef element *outT = sT + c.nst * VW
    cdef const element *wv
    cdef const element *bv
    cdef const DwPair *pr
    cdef const DwPhase *ph
    cdef element *d
    dwc_stage(src + n * p.src_img + g0 * p.src_grp, p.src_grp, &p.st, p.runs, p.nruns, c, nl,
              srcT, sT, iws[0] == -1)
    iws[0] = item
    for ch in range(p.M):
        wv = wpack + (gb * p.M + ch) * p.Ktot * VW
        bv = bpack + (gb * p.M + ch) * VW if bpack != NULL else NULL
        for i in range(p.npair):
            pr = &pairs[i]
            for a in range(pr.nd):
                for f in range(p.nphw):
                    ph = &phases[pr.phase0 + f]
                    pix = (pr.row0 + a * pr.astep) * p.dst_W + ph.col0
                    if ph.K > 0:
                        dwc_runs(ph.nrun, runs + 3 * ph.run0, wv, sT + a * p.Hq * p.Wq * VW,
                                 p.Wq, outT + pix * VW, pr.bstep * p.dst_W, ph.colstep, ph.nw,
                                 pr.nh, bv)
                        continue
                    for r in range(pr.nh):       # no tap reaches these pixels
                        for e in range(ph.nw):
                            d = outT + (pix + r * pr.bstep * p.dst_W + e * ph.colstep) * VW
                            for l in range(VW):
                                d[l] = bv[l] if bv != NULL else 0
        lanes_out(outT, dst + n * p.dst_img + (g0 * p.M + ch) * p.dst_chan, p.M * p.dst_chan,
                  nl, c.P)


cdef void pass_run(const DwPass *p, const DwcPlan *c, bint blocked, const DwPair *pairs,
                   const DwPhase *phases, const element *src, const Py_ssize_t *off,
                   const Py_ssize_t *runs, const element *wp, const element *bias,
                   element *dst, element *fws, Py_ssize_t fper, Py_ssize_t *iws,
                   Py_ssize_t iper, int nthreads) noexcept nogil:
    cdef Py_ssize_t item, t
    cdef int tid
    cdef fpstate fp
    for t in range(nthreads):
        iws[t * iper] = -1      # nothing staged yet
    with parallel(num_threads=nthreads):
        fp = flush_subnormals()
        # race-free: each item writes its own rows, or channels, of dst and reads only shared
        # inputs; the staging and the output scratch are per thread.
        for item in prange(p.N * c.nb if blocked else p.N * p.G * p.nblk, schedule="static"):
            tid = threadid()
            if blocked:
                dwc_item(p, c, pairs, phases, item, src, runs, wp, bias, dst, fws + tid * fper,
                         iws + tid * iper)
            else:
                dw_item(p, pairs, phases, item, src, off, wp, bias, dst, fws + tid * fper,
                        iws + tid * iper)
        restore_fpstate(fp)


cdef void plan_segments(DwPass *p, DwPair *pairs, const DwPhase *phases, bint in_place,
                        Py_ssize_t VW) noexcept nogil:
    """Direct or through scratch, rows per segment, segment numbering, work items: from the
    problem alone.  Per grid row and tap, direct computes nw / VW vectors rounded up (the last
    overlapping the one before); through scratch, Wq / VW and then copies the nw outputs."""
    cdef Py_ssize_t i, f, nw = 0, nh = 0, K = 0, seg = 0, nv
    for f in range(p.npair * p.nphw):
        nw = max(nw, phases[f].nw)
        K = max(K, phases[f].K)
        in_place = in_place and phases[f].K > 0
    for i in range(p.npair):
        nh = max(nh, pairs[i].nh)
    nv = (nw + VW - 1) // VW
    p.direct = in_place and nw >= VW and nv * K * VW <= p.Wq * K + nv * VW
    p.R = max(1, min(nh, DW_SEG_COLS // (nw if p.direct else p.Wq)))
    for i in range(p.npair):
        pairs[i].segs_a = (pairs[i].nh + p.R - 1) // p.R
        pairs[i].seg0 = seg
        seg += pairs[i].nd * pairs[i].segs_a
    p.nseg = seg
    p.nblk = max(1, min(seg, (DW_ITEMS + p.N * p.G - 1) // (p.N * p.G)))


def _tap_runs(offsets, Py_ssize_t k0):
    """The taps k0, k0 + 1, ... (their offsets into the staged slice given in order) put in
    order of offset, and cut into runs of consecutive offsets at most 7 long: (offset of the
    first, length, index of the first in the new order) each, flattened; and the new order,
    as the old index of each.  At stride 2 the kernel's columns 0 and 2 become neighbours in
    the staged phase (runs of 2), which they are not in the taps' own order."""
    order = sorted(range(len(offsets)), key=offsets.__getitem__)
    runs = []
    last = None     # (not runs[-1]: the module is built with wraparound off)
    for k, i in enumerate(order):
        o = offsets[i]
        if last is not None and o == last[0] + last[1] and last[1] < 7:
            last[1] += 1
        else:
            last = [o, 1, k0 + k]
            runs.append(last)
    return [v for r in runs for v in r], [k0 + i for i in order]


def _lane_major(index, Py_ssize_t groups, Py_ssize_t VW):
    """Rows (G * M, K) of indices as (blocks, M, K, VW): row g * M + m at [g // VW, m, :,
    g % VW], flattened; groups past G take index 0 (their lanes are computed, never stored)."""
    index = index.reshape(groups, -1)
    nb = (groups + VW - 1) // VW
    padded = np.zeros((nb * VW, index.shape[1]), dtype=np.intp)
    padded[:groups] = index
    return np.ascontiguousarray(padded.reshape(nb, VW, -1).transpose(0, 2, 1)).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Weight gradient

cdef struct DwWeight:
    Py_ssize_t N, G, Og, K
    Py_ssize_t OD, OH, OW
    Py_ssize_t Hq, Wq
    Py_ssize_t rows         # grid rows (OD - 1) * Hq + OH: row a * Hq + b is output row (a, b)
    Py_ssize_t brows        # grid rows per step
    Py_ssize_t nbr          # steps per image
    # images per step (small images, nbr 1: their accumulators stay in registers from one
    # image to the next), staged sstep apart
    Py_ssize_t nis
    Py_ssize_t sstep
    # steps of the reduction, split into nchunk chunks: images (channel blocks), or steps
    # of nis images or of one image's brows grid rows (dw_weight_item)
    Py_ssize_t nsteps
    Py_ssize_t nchunk       # items per group (or group block)
    Py_ssize_t x_img, x_grp, y_img, y_plane
    Py_ssize_t dyg_size     # per-thread scratch after the staged slice: dy on the grid
    Stage st
    const Py_ssize_t *runs  # the staging (stage_runs): nruns runs
    Py_ssize_t nruns


cdef void dy_on_grid(const DwWeight *p, const element *dyo, Py_ssize_t r0, Py_ssize_t r1,
                     Py_ssize_t ncol, element *dyg) noexcept nogil:
    """dyg[j] = dy of one (image, channel) at grid column r0 * Wq + j, j < ncol: output row
    (a, b) at grid row a * Hq + b (b < OH), columns e < OW; zero elsewhere.  The zeros within
    the rows r0 .. r1 - 1 are left from the item's start (the steps' blocks of rows all have
    them at the same places); those past them are written here."""
    cdef Py_ssize_t e, a, b0, b1
    for a in range(r0 // p.Hq, (r1 - 1) // p.Hq + 1):
        b0 = max(r0 - a * p.Hq, 0)
        b1 = min(r1 - a * p.Hq, p.OH)
        if b1 > b0:
            dw_copy(dyg + (a * p.Hq + b0 - r0) * p.Wq, p.Wq, dyo + (a * p.OH + b0) * p.OW, p.OW,
                    p.OW, b1 - b0)
    for e in range((r1 - r0) * p.Wq, ncol):
        dyg[e] = 0


cdef void dw_weight_item(const DwWeight *p, Py_ssize_t item, const element *x,
                         const element *dy, const Py_ssize_t *off, element *out,
                         Py_ssize_t out_stride, element *fws, Py_ssize_t *iws) noexcept nogil:
    """Item (group, chunk): the sums of its steps for every (o, tap), lanes added in order,
    into out[(g * Og + o) * out_stride + tap].  A step is a block of grid rows of one image, or
    p.nis whole images (staged p.sstep apart, dy on the grid p.dyg_size apart)."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t g = item // p.nchunk, chunk = item % p.nchunk
    cdef Py_ssize_t s0 = chunk * p.nsteps // p.nchunk, s1 = (chunk + 1) * p.nsteps // p.nchunk
    cdef Py_ssize_t step, n, nimg, m, r0, r1, ncol, o, ob, i, k, l
    cdef Py_ssize_t nrow = min(p.Og, LC_DW_OB)     # rows of dy on the grid at a time
    cdef element *dyg = fws + p.nis * p.sstep
    cdef element *accv = dyg + nrow * p.nis * p.dyg_size
    cdef const element *staged
    cdef element sm
    memset(accv, 0, p.Og * p.K * VW * sizeof(element))
    memset(dyg, 0, nrow * p.nis * p.dyg_size * sizeof(element))
    for step in range(s0, s1):
        n = step // p.nbr * p.nis
        nimg = min(p.nis, p.N - n)
        r0 = (step % p.nbr) * p.brows
        r1 = min(p.rows, r0 + p.brows)
        # the last grid row of the image ends at its last output column
        ncol = (r1 - r0) * p.Wq - (p.Wq - p.OW if r1 == p.rows else 0)
        ncol = round_up(ncol, VW)
        if p.nis == 1:
            staged = dw_staged(x, n * p.x_img + g * p.x_grp, &p.st, p.runs, p.nruns,
                               n * p.G + g, fws, iws)
        else:       # each place zeroed where first staged in this call (iws[1] of them)
            for m in range(nimg):
                dw_stage(x + (n + m) * p.x_img + g * p.x_grp, &p.st, p.runs, p.nruns,
                         fws + m * p.sstep, m >= iws[1])
            iws[1] = max(iws[1], nimg)
            staged = fws
        o = 0
        while o < p.Og:     # blocks of nrow output channels, each x vector read once for all
            ob = min(nrow, p.Og - o)
            for i in range(ob):
                for m in range(nimg):
                    dy_on_grid(p, dy + (n + m) * p.y_img + (g * p.Og + o + i) * p.y_plane, r0,
                               r1, ncol, dyg + (i * p.nis + m) * p.dyg_size)
            dw_dots(ob, p.K, off, staged + r0 * p.Wq, p.sstep, dyg, p.nis * p.dyg_size,
                    p.dyg_size, nimg, ncol, accv + o * p.K * VW)
            o += ob
    for o in range(p.Og):
        for k in range(p.K):
            sm = accv[(o * p.K + k) * VW]
            for l in range(1, VW):
                sm = sm + accv[(o * p.K + k) * VW + l]
            out[(g * p.Og + o) * out_stride + k] = sm


cdef void dwc_weight_item(const DwWeight *p, const DwcPlan *c, Py_ssize_t item,
                          const element *x, const element *dy, const Py_ssize_t *runs,
                          Py_ssize_t nrun, const Py_ssize_t *order, element *out,
                          Py_ssize_t out_stride, element *fws, Py_ssize_t *iws) noexcept nogil:
    """Item (block of VW groups, chunk of images), channel-blocked: the sums of every (o, tap)
    for the block's groups, a lane each, into out as dw_weight_item (accumulator k holds tap
    order[k], the runs' order)."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t gb = item // p.nchunk, chunk = item % p.nchunk, g0 = gb * VW
    cdef Py_ssize_t nl = min(VW, p.G - g0), P = p.y_plane
    cdef Py_ssize_t n0 = chunk * p.N // p.nchunk, n1 = (chunk + 1) * p.N // p.nchunk
    cdef Py_ssize_t n, o, a, k, l
    cdef element *srcT = fws
    cdef element *sT = srcT + c.src_size * VW
    cdef element *dyT = sT + c.nst * VW
    cdef element *accv = dyT + c.out_size
    memset(accv, 0, p.Og * p.K * VW * sizeof(element))
    for n in range(n0, n1):
        dwc_stage(x + n * p.x_img + g0 * p.x_grp, p.x_grp, &p.st, p.runs, p.nruns, c, nl, srcT,
                  sT, iws[0] == -1)
        iws[0] = item
        for o in range(p.Og):
            lanes_in(dy + n * p.y_img + (g0 * p.Og + o) * P, p.Og * P, nl, P, dyT)
            for a in range(p.OD):
                dwc_dotruns(nrun, runs, sT + a * p.Hq * p.Wq * VW, p.Wq,
                            dyT + a * p.OH * p.OW * VW, p.OW, p.OW, p.OH, accv + o * p.K * VW)
    for l in range(nl):
        for o in range(p.Og):
            for k in range(p.K):
                out[((g0 + l) * p.Og + o) * out_stride + order[k]] = \
                    accv[(o * p.K + k) * VW + l]


cdef void weight_run(const DwWeight *p, const DwcPlan *c, bint blocked, const element *x,
                     const element *dy, const Py_ssize_t *off, const Py_ssize_t *runs,
                     Py_ssize_t nrun, const Py_ssize_t *order, element *partial,
                     element *dw, element *fws,
                     Py_ssize_t fper, Py_ssize_t *iws, Py_ssize_t iper,
                     int nthreads) noexcept nogil:
    cdef Py_ssize_t item, t, g, o, k, ch
    cdef Py_ssize_t units = c.nb if blocked else p.G
    cdef element *dst = dw if p.nchunk == 1 else partial
    cdef element sm
    cdef int tid
    cdef fpstate fp
    for t in range(nthreads):
        iws[t * iper] = -1      # nothing staged yet
        iws[t * iper + 1] = 0
    with parallel(num_threads=nthreads):
        fp = flush_subnormals()
        # race-free: item (group or group block, chunk) writes only its own sums (of dw, or
        # of partial); the staging, dy and the accumulators are per thread.
        for item in prange(units * p.nchunk, schedule="static"):
            tid = threadid()
            if blocked:
                dwc_weight_item(p, c, item, x, dy, runs, nrun, order,
                                dst + (item % p.nchunk) * p.K, p.nchunk * p.K,
                                fws + tid * fper, iws + tid * iper)
            else:
                dw_weight_item(p, item, x, dy, off, dst + (item % p.nchunk) * p.K,
                               p.nchunk * p.K, fws + tid * fper, iws + tid * iper)
        restore_fpstate(fp)
    if p.nchunk == 1:
        return
    fp = flush_subnormals()
    for g in range(p.G):        # the chunks' sums, in chunk order
        for o in range(p.Og):
            for k in range(p.K):
                t = (g * p.Og + o) * p.nchunk * p.K + k
                sm = partial[t]
                for ch in range(1, p.nchunk):
                    sm = sm + partial[t + ch * p.K]
                dw[(g * p.Og + o) * p.K + k] = sm
    restore_fpstate(fp)


# ---------------------------------------------------------------------------------------------
# Geometry: everything a call needs that depends on the shapes and parameters alone, worked out
# once and kept (the setup in Python costs 10-30 us, a third of a 7x7 layer of one image).

cdef class _DwGeometry:
    cdef DwPass p           # forward and input gradient
    cdef DwWeight q         # weight gradient
    cdef DwcPlan c
    cdef bint blocked       # channel blocks, else pixel vectors
    cdef DwPair *pairs
    cdef DwPhase *phases
    cdef Py_ssize_t[::1] runs       # the staging (stage_runs)
    cdef Py_ssize_t[::1] off        # the taps' offsets into the staged slice, all phases
    cdef Py_ssize_t[::1] taps       # the taps as runs (_tap_runs), for the channel blocks
    cdef Py_ssize_t ntap_runs
    cdef Py_ssize_t[::1] order      # weight gradient, channel blocks: tap of each accumulator
    cdef object wsel        # weights in the order the loops read them: w.ravel()[wsel]
    cdef object bsel        # (None: w itself), and the bias likewise
    cdef Py_ssize_t fper    # per-thread scratch (elements)
    cdef Py_ssize_t partial_size

    def __dealloc__(self):
        free(self.pairs)
        free(self.phases)

    cdef void alloc(self, Py_ssize_t npair, Py_ssize_t nphase) except *:
        self.pairs = <DwPair *> malloc(max(npair, 1) * sizeof(DwPair))
        self.phases = <DwPhase *> malloc(max(nphase, 1) * sizeof(DwPhase))
        if self.pairs == NULL or self.phases == NULL:
            raise MemoryError()

    cdef void set_runs(self, Stage *st) except *:
        """The staging of st, pointed at by the pass and the weight-gradient plans."""
        self.runs = stage_runs(st)
        self.p.runs = self.q.runs = &self.runs[0]
        self.p.nruns = self.q.nruns = (self.runs.shape[0] - 1) // 4

    cdef object set_tap_runs(self, Py_ssize_t nphase):
        """The taps of each phase as runs (_tap_runs), for the channel blocks; the new order of
        the taps (their old indices), in which the weights are to be packed."""
        cdef Py_ssize_t f
        offsets = np.asarray(self.off).tolist()
        runs, order = [], []
        for f in range(nphase):
            k0 = self.phases[f].koff
            r, o = _tap_runs(offsets[k0:k0 + self.phases[f].K], k0)
            self.phases[f].run0 = len(runs) // 3
            self.phases[f].nrun = len(r) // 3
            runs += r
            order += o
        self.taps = np.array(runs + [0], dtype=np.intp)
        self.ntap_runs = len(runs) // 3
        return np.array(order, dtype=np.intp)


_geometries = {}
_MAX_GEOMETRIES = 64


cdef _DwGeometry forward_geometry(tuple xs, tuple ws, tuple ys, stride, pad, dilation,
                                  Py_ssize_t groups, Py_ssize_t elsize):
    cdef _DwGeometry geo = _DwGeometry()
    cdef DwPass *p = &geo.p
    cdef Py_ssize_t O = ws[0], Cg = ws[1], K = Cg * ws[2] * ws[3] * ws[4]
    size, out, ksize = xs[2:], ys[2:], ws[2:]
    set_stage(&p.st, size, tuple(stride), tuple(pad), x_stage(size, out, ksize, stride, pad,
              dilation), Cg, DW_SLACK, xs[0] * xs[1] * xs[2] * xs[3] * xs[4])
    geo.set_runs(&p.st)
    taps = [(kd * dilation[0], kh * dilation[1], kw * dilation[2]) for kd in range(ksize[0])
            for kh in range(ksize[1]) for kw in range(ksize[2])]
    geo.off = np.array([tap_offset(&p.st, ci, t) for ci in range(Cg) for t in taps] + [0],
                       dtype=np.intp)
    p.N, p.G, p.M, p.Ktot = xs[0], groups, O // groups, K
    p.npair, p.nphw = 1, 1
    p.Hq, p.Wq = p.st.q[1], p.st.q[2]
    p.src_img, p.src_grp = xs[1] * p.st.src_chan, Cg * p.st.src_chan
    p.dst_W, p.dst_chan = out[2], out[0] * out[1] * out[2]
    p.dst_img = O * p.dst_chan
    geo.alloc(1, 1)
    geo.pairs[0].nd, geo.pairs[0].nh = out[0], out[1]
    geo.pairs[0].row0, geo.pairs[0].astep, geo.pairs[0].bstep = 0, out[1], 1
    geo.pairs[0].phase0 = 0
    geo.phases[0].K, geo.phases[0].koff, geo.phases[0].nw = K, 0, out[2]
    geo.phases[0].col0, geo.phases[0].colstep = 0, 1
    geo.blocked = dwc_wins(p.N, groups, Cg, p.dst_chan, p.st.src_chan, elsize, False)
    finish_pass(geo, elsize, np.arange(O * K, dtype=np.intp) if geo.blocked else None,
                np.arange(O, dtype=np.intp), True)
    return geo


cdef _DwGeometry input_geometry(tuple xs, tuple ws, tuple ys, stride, pad, dilation,
                                Py_ssize_t groups, Py_ssize_t elsize):
    """The input gradient's geometry: xs the shape of dx, ys of dy."""
    cdef _DwGeometry geo = _DwGeometry()
    cdef DwPass *p = &geo.p
    cdef Py_ssize_t O = ws[0], Cg = ws[1], Og = O // groups, KS = ws[2] * ws[3] * ws[4]
    cdef Py_ssize_t f, i, koff = 0
    size, out, ksize = xs[2:], ys[2:], ws[2:]
    # Per axis and phase r (input indices = r mod s): its taps as (k, offset into dy), and the
    # number of input indices in the phase (as in tiled_entry.pxi's grad_input).
    axes = []
    for a in range(3):
        s, d, pb = stride[a], dilation[a], pad[a]
        axes.append([([(k, (r + pb - k * d) // s) for k in range(ksize[a])
                       if (r + pb - k * d) % s == 0], (size[a] - r + s - 1) // s)
                     for r in range(min(s, size[a]))])
    lead = tuple(max([0] + [-o for taps, _ in axes[a] for _, o in taps]) for a in range(3))
    q = tuple(max([out[a] + lead[a]] + [n + o + lead[a] for taps, n in axes[a] for _, o in taps])
              for a in range(3))
    set_stage(&p.st, out, (1, 1, 1), lead, q, Og, DW_SLACK,
              ys[0] * ys[1] * ys[2] * ys[3] * ys[4])
    geo.set_runs(&p.st)
    p.N, p.G, p.M = xs[0], groups, Cg
    p.npair, p.nphw = len(axes[0]) * len(axes[1]), len(axes[2])
    p.Hq, p.Wq = q[1], q[2]
    p.src_img, p.src_grp = O * p.st.src_chan, Og * p.st.src_chan
    p.dst_W, p.dst_chan = size[2], size[0] * size[1] * size[2]
    p.dst_img = xs[1] * p.dst_chan
    geo.alloc(p.npair, p.npair * p.nphw)
    cols, offs = [], []         # per tap of each phase: (o, tap index), offset
    i = 0
    f = 0
    for rd, (td, nd_) in enumerate(axes[0]):
        for rh, (th, nh) in enumerate(axes[1]):
            geo.pairs[i].nd, geo.pairs[i].nh = nd_, nh
            geo.pairs[i].row0 = rd * size[1] + rh
            geo.pairs[i].astep, geo.pairs[i].bstep = stride[0] * size[1], stride[1]
            geo.pairs[i].phase0 = f
            i += 1
            for rw, (tw, nw) in enumerate(axes[2]):
                # the kernel flipped: offsets ascending along each row of taps
                taps = [(o, (kd * ksize[1] + kh) * ksize[2] + kw,
                         o * p.st.chan + ((od + lead[0]) * q[1] + oh + lead[1]) * q[2]
                         + ow + lead[2])
                        for o in range(Og) for kd, od in td[::-1] for kh, oh in th[::-1]
                        for kw, ow in tw[::-1]]
                geo.phases[f].K, geo.phases[f].koff, geo.phases[f].nw = len(taps), koff, nw
                geo.phases[f].col0, geo.phases[f].colstep = rw, stride[2]
                koff += len(taps)
                cols += [t[0] * Cg * KS + t[1] for t in taps]
                offs += [t[2] for t in taps]
                f += 1
    p.Ktot = koff
    geo.off = np.array(offs + [0], dtype=np.intp)
    # weights of dx channel g * Cg + c: w[g * Og + o, c, tap] for the taps (o, tap) in order
    sel = (np.arange(groups, dtype=np.intp)[:, None, None] * (Og * Cg * KS)
           + np.arange(Cg, dtype=np.intp)[None, :, None] * KS
           + np.array(cols, dtype=np.intp).reshape(1, 1, -1)).reshape(groups * Cg, koff)
    geo.blocked = dwc_wins(p.N, groups, Cg, p.dst_chan, p.st.src_chan, elsize, False)
    finish_pass(geo, elsize, sel, np.arange(groups * Cg, dtype=np.intp),
                p.nphw == 1 and stride[2] == 1)
    return geo


cdef void finish_pass(_DwGeometry geo, Py_ssize_t elsize, wsel, bsel, bint in_place) except *:
    """The rest of a forward or input-gradient geometry: the weight and bias orders (wsel:
    rows of per-channel weights as indices into w, None for w itself), the segments or the
    channel blocks, the scratch per thread."""
    cdef DwPass *p = &geo.p
    cdef DwcPlan *c = &geo.c
    cdef Py_ssize_t VW = LC_VEC_BYTES // elsize
    if wsel is not None and wsel.size == 0:     # no taps at all: only the bias
        wsel = np.zeros(1, dtype=np.intp)
    if geo.blocked:
        order = geo.set_tap_runs(p.npair * p.nphw)
        if p.Ktot > 0:
            wsel = wsel.reshape(-1, p.Ktot)[:, order]
        c.nb = (p.G + VW - 1) // VW
        c.nst = round_up(p.st.nchan * p.st.chan, VW) + 2 * LC_DWC_PX
        c.src_size = round_up(p.st.nchan * p.st.src_chan, VW)
        c.P = p.dst_chan
        c.out_size = round_up(c.P, VW) * VW
        geo.wsel = _lane_major(wsel, p.G, VW)
        geo.bsel = _lane_major(bsel, p.G, VW)
        geo.fper = per_thread((c.src_size + c.nst) * VW + c.out_size)
    else:
        c.nb = 0
        geo.taps = np.zeros(1, dtype=np.intp)
        plan_segments(p, geo.pairs, geo.phases, in_place, VW)
        geo.wsel = None if wsel is None else wsel.reshape(-1)
        geo.bsel = None
        geo.fper = per_thread(p.st.size + p.nphw * (round_up(p.R * p.Wq, VW) + VW))


cdef _DwGeometry weight_geometry(tuple xs, tuple ws, tuple ys, stride, pad, dilation,
                                 Py_ssize_t groups, Py_ssize_t elsize):
    cdef _DwGeometry geo = _DwGeometry()
    cdef DwWeight *p = &geo.q
    cdef DwcPlan *c = &geo.c
    cdef Py_ssize_t VW = LC_VEC_BYTES // elsize
    cdef Py_ssize_t O = ws[0], Cg = ws[1], cols, units
    size, out, ksize = xs[2:], ys[2:], ws[2:]
    set_stage(&p.st, size, tuple(stride), tuple(pad), x_stage(size, out, ksize, stride, pad,
              dilation), Cg, DW_SLACK, xs[0] * xs[1] * xs[2] * xs[3] * xs[4])
    geo.set_runs(&p.st)
    taps = [(kd * dilation[0], kh * dilation[1], kw * dilation[2]) for kd in range(ksize[0])
            for kh in range(ksize[1]) for kw in range(ksize[2])]
    geo.off = np.array([tap_offset(&p.st, ci, t) for ci in range(Cg) for t in taps] + [0],
                       dtype=np.intp)
    p.N, p.G, p.Og, p.K = xs[0], groups, O // groups, Cg * ws[2] * ws[3] * ws[4]
    p.OD, p.OH, p.OW = out
    p.Hq, p.Wq = p.st.q[1], p.st.q[2]
    p.rows = (p.OD - 1) * p.Hq + p.OH
    # grid rows per step: about DW_DOT_COLS * 4 bytes of dy; in 3-D whole planes of Hq rows,
    # so that every step's rows past OH (the junk between planes) fall at the same places
    cols = DW_DOT_COLS * 4 // elsize
    p.brows = p.Hq * max(1, cols // (p.Hq * p.Wq)) if p.OD > 1 else max(1, cols // p.Wq)
    p.brows = min(p.brows, p.rows)
    p.nbr = (p.rows + p.brows - 1) // p.brows
    # whole small images a step, as many as make about DW_DOT_COLS columns (within DW_STAGED
    # staged elements, and leaving the chunks DW_CHUNKS wants): the accumulators of a 7x7
    # image's 64 columns were loaded and stored for four vectors of FMAs
    p.sstep = round_up(p.st.size, 16)
    p.nis = 1
    if p.nbr == 1 and not p.st.identity:
        p.nis = max(1, min(p.N, cols // (p.rows * p.Wq), DW_STAGED // p.sstep,
                           p.N // min(p.N, (DW_CHUNKS + groups - 1) // groups)))
    p.x_img, p.x_grp = xs[1] * p.st.src_chan, Cg * p.st.src_chan
    p.y_plane = out[0] * out[1] * out[2]
    p.y_img = O * p.y_plane
    p.dyg_size = round_up(p.brows * p.Wq + VW, 16)
    geo.blocked = dwc_wins(p.N, groups, Cg, p.y_plane, p.st.src_chan, elsize, True)
    if geo.blocked:
        c.nb = (groups + VW - 1) // VW
        c.nst = round_up(p.st.chan, VW) + 2 * LC_DWC_PX
        c.src_size = round_up(p.st.src_chan, VW)
        c.P = p.y_plane
        c.out_size = round_up(p.y_plane, VW) * VW
        units, p.nsteps = c.nb, p.N
        geo.fper = per_thread((c.src_size + c.nst) * VW + c.out_size + p.Og * p.K * VW)
        r, order = _tap_runs(np.asarray(geo.off).tolist()[:p.K], 0)
        geo.taps = np.array(r + [0], dtype=np.intp)
        geo.ntap_runs = len(r) // 3
        geo.order = np.array(order, dtype=np.intp)
    else:
        c.nb = 0
        units, p.nsteps = groups, (p.N + p.nis - 1) // p.nis * p.nbr
        geo.fper = per_thread(p.nis * (p.sstep + min(p.Og, LC_DW_OB) * p.dyg_size)
                              + p.Og * p.K * VW)
        geo.taps = np.zeros(1, dtype=np.intp)
        geo.order = np.zeros(1, dtype=np.intp)
    # chunks of the reduction: a function of the problem only, never of the thread count
    p.nchunk = max(1, min(p.nsteps, (DW_CHUNKS + units - 1) // units))
    geo.partial_size = groups * p.nchunk * p.Og * p.K if p.nchunk > 1 else 1
    return geo


cdef _DwGeometry geometry(int which, tuple xs, tuple ws, tuple ys, stride, pad, dilation,
                          Py_ssize_t groups, Py_ssize_t elsize):
    """The geometry of a pass, from the cache or worked out (and kept)."""
    key = (which, elsize, xs, ws, ys, tuple(stride), tuple(pad), tuple(dilation), groups)
    geo = _geometries.get(key)
    if geo is not None:
        return geo
    if which == PASS_FORWARD:
        geo = forward_geometry(xs, ws, ys, stride, pad, dilation, groups, elsize)
    elif which == PASS_INPUT:
        geo = input_geometry(xs, ws, ys, stride, pad, dilation, groups, elsize)
    else:
        geo = weight_geometry(xs, ws, ys, stride, pad, dilation, groups, elsize)
    if len(_geometries) >= _MAX_GEOMETRIES:
        _geometries.clear()
    _geometries[key] = geo
    return geo


def dw_plan(int which, xs, ws, ys, stride, pad, dilation, Py_ssize_t groups,
            Py_ssize_t itemsize):
    """How the depthwise loops run pass `which` (0 forward, 1 input gradient, 2 weight
    gradient) for 5-D shapes as their entry points take them (x or dx, w or dw, y or dy) and
    elements of `itemsize` bytes (internal: for the tests)."""
    cdef _DwGeometry geo = geometry(which, tuple(xs), tuple(ws), tuple(ys), stride, pad,
                                    dilation, groups, itemsize)
    if which == PASS_WEIGHT:
        return {"blocked": bool(geo.blocked), "chunks": geo.q.nchunk,
                "steps": geo.q.nsteps,
                "images per step": 1 if geo.blocked else geo.q.nis}
    cdef Py_ssize_t f, untapped = 0
    for f in range(geo.p.npair * geo.p.nphw):
        untapped += geo.phases[f].K == 0
    return {"blocked": bool(geo.blocked), "direct": bool(geo.p.direct) and not geo.blocked,
            "rows": geo.p.R, "phases": geo.p.npair * geo.p.nphw, "untapped": untapped}


cdef inline tuple shape5(const Py_ssize_t *shape):
    return (shape[0], shape[1], shape[2], shape[3], shape[4])


# ---------------------------------------------------------------------------------------------
# Entry points (called by loopconv/_loops/__init__.py where dw_suits says so), with the
# arguments of forward, grad_input and grad_weight above.

cdef void gather(const element *w, const Py_ssize_t *index, Py_ssize_t n, element *out,
                 int nthreads) noexcept nogil:
    """out[i] = w[index[i]] for i < n: the weights in the loops' order (lane-major for the
    channel blocks), on every thread where there are DW_GATHER_SERIAL of them or more.  With
    np.take this took 15 us of the 50 of a 5x5 depthwise layer of 1152 channels on 7x7 at
    batch 1 (one thread)."""
    cdef Py_ssize_t i
    if n < DW_GATHER_SERIAL:
        nthreads = 1
    # race-free: each i writes its own element of out
    for i in prange(n, schedule="static", num_threads=nthreads):
        out[i] = w[index[i]]


cdef object run_pass(_DwGeometry geo, const element *src, w, bias, element *dst,
                     int num_threads):
    """A forward pass or input gradient: w and bias as the caller's arrays."""
    dtype = typecode(<element *> NULL)
    cdef const element[::1] wp = np.asarray(w).reshape(-1)
    cdef const Py_ssize_t[::1] sel
    cdef element[::1] ordered
    bias = np.asarray(bias)
    if geo.wsel is not None:    # the weights in the loops' order, into scratch kept across calls
        sel = geo.wsel
        ordered = _workspace("w", dtype, sel.shape[0])
        with nogil:
            gather(&wp[0], &sel[0], sel.shape[0], &ordered[0], num_threads)
        wp = ordered
    cdef const element[::1] bp = bias[geo.bsel] if geo.blocked and len(bias) else bias
    cdef const element *bptr = &bp[0] if bp.shape[0] > 0 else NULL
    cdef Py_ssize_t iper = per_thread(1)
    cdef element[::1] fws = _workspace("f", dtype, geo.fper * num_threads)
    cdef Py_ssize_t[::1] iws = _workspace("i", np.intp, iper * num_threads)
    with nogil:
        pass_run(&geo.p, &geo.c, geo.blocked, geo.pairs, geo.phases, src, &geo.off[0],
                 &geo.taps[0], &wp[0], bptr, dst, &fws[0], geo.fper, &iws[0], iper,
                 num_threads)


def dw_forward(const element[:, :, :, :, ::1] x, const element[:, :, :, :, ::1] w,
               const element[::1] bias, element[:, :, :, :, ::1] y,
               stride, pad, dilation, Py_ssize_t groups, int num_threads):
    """y = conv(x, w) + bias over 5-D arrays, as forward(), by the depthwise loops.  An empty
    bias means none."""
    cdef _DwGeometry geo = geometry(PASS_FORWARD, shape5(x.shape), shape5(w.shape),
                                    shape5(y.shape), stride, pad, dilation, groups,
                                    sizeof(element))
    run_pass(geo, &x[0, 0, 0, 0, 0], w, bias, &y[0, 0, 0, 0, 0], num_threads)


def dw_grad_input(const element[:, :, :, :, ::1] dy, const element[:, :, :, :, ::1] w,
                  const element[::1] bias, element[:, :, :, :, ::1] dx, stride, pad,
                  dilation, Py_ssize_t groups, int num_threads):
    """dx = bias + gradient of conv(x, w) with respect to x, given dy, as grad_input(), by the
    depthwise loops; dx is overwritten.  An empty bias means none."""
    cdef _DwGeometry geo = geometry(PASS_INPUT, shape5(dx.shape), shape5(w.shape),
                                    shape5(dy.shape), stride, pad, dilation, groups,
                                    sizeof(element))
    run_pass(geo, &dy[0, 0, 0, 0, 0], w, bias, &dx[0, 0, 0, 0, 0], num_threads)


def dw_grad_weight(const element[:, :, :, :, ::1] x, const element[:, :, :, :, ::1] dy,
                   element[:, :, :, :, ::1] dw, stride, pad, dilation, Py_ssize_t groups,
                   int num_threads):
    """dw = gradient of conv(x, w) with respect to w, given dy, as grad_weight(), by the
    depthwise loops; dw is overwritten."""
    dtype = typecode(<element *> NULL)
    cdef _DwGeometry geo = geometry(PASS_WEIGHT, shape5(x.shape), shape5(dw.shape),
                                    shape5(dy.shape), stride, pad, dilation, groups,
                                    sizeof(element))
    cdef Py_ssize_t iper = per_thread(2)   # the staged key, and the places zeroed
    cdef element[::1] fws = _workspace("f", dtype, geo.fper * num_threads)
    cdef Py_ssize_t[::1] iws = _workspace("i", np.intp, iper * num_threads)
    cdef element[::1] partial = _workspace("p", dtype, geo.partial_size)
    with nogil:
        weight_run(&geo.q, &geo.c, geo.blocked, &x[0, 0, 0, 0, 0], &dy[0, 0, 0, 0, 0],
                   &geo.off[0], &geo.taps[0], geo.ntap_runs, &geo.order[0], &partial[0],
                   &dw[0, 0, 0, 0, 0], &fws[0], geo.fper, &iws[0], iper, num_threads)
