# Staging (included by tiled.pxi): the padded, phase-split copy of one (image, group) slice of
# the source, in which every row of the would-be im2col matrix is a contiguous run; the map
# from the staged grid to the destination's pixels; the widened copy of x that a forward pass
# onto small images reads instead (widen_source); and the geometry the entry points set up
# (the Stage of a pass, the offsets of the taps).  depthwise.pxi uses the same geometry.

cdef struct Stage:
    Py_ssize_t dim[3]       # source spatial sizes
    Py_ssize_t step[3]      # phases per axis (the stride; 1 for dy)
    Py_ssize_t lead[3]      # source index = staged index * step + phase - lead
    Py_ssize_t q[3]         # Dq, Hq, Wq: staged sizes of one phase
    Py_ssize_t plane        # Dq * Hq * Wq: one image's staged grid
    Py_ssize_t nimg         # images staged together (the weight gradient's small images)
    Py_ssize_t pstep        # staged elements per phase: the images' planes, nimg * plane
    Py_ssize_t chan         # staged elements per channel (phases * pstep, and gap)
    Py_ssize_t gap          # zeros after each staged channel (set_stage_images), or 0
    Py_ssize_t itemsize     # bytes of an element, where a gap may be set; 0: never a gap
    bint spread             # a slice read in place whose channels alias is staged instead
    bint band               # ... or each work item copies its columns of it (set_band)
    Py_ssize_t nchan        # channels per (image, group)
    Py_ssize_t src_chan     # source elements per channel
    Py_ssize_t size         # elements in all
    bint identity           # staging would copy the slice unchanged (1 image, stride 1, no pad)
    Py_ssize_t src_size     # elements of the whole source array
    Py_ssize_t overrun      # elements past a slice's last channel read in place (reads_in_place)
    # bands of rows (set_row_band): the rows of the staged grid in a band, or 0 (whole slices),
    # and the grid columns a band's reader reads past the last column it asks for
    Py_ssize_t band_rows
    Py_ssize_t band_reach


cdef inline void copy_short(element *d, const element *s, Py_ssize_t n) noexcept nogil:
    """d[u] = s[u] for u < n, for the short rows of small images (14 elements of a 14x14
    image): copies of 32, 16 or 8 bytes, which the compiler makes single vector moves, the last
    one overlapping the one before it.  An element loop of unknown length ran those rows one
    element at a time (a fifth of a grouped 3x3 layer's time on 14x14 went to staging)."""
    cdef char *dc = <char *>d
    cdef const char *sc = <const char *>s
    cdef Py_ssize_t nb = n * sizeof(element), i = 0
    if nb >= 32:
        while i + 32 <= nb:
            memcpy(dc + i, sc + i, 32)
            i += 32
        if i < nb:
            memcpy(dc + nb - 32, sc + nb - 32, 32)
    elif nb >= 16:
        memcpy(dc, sc, 16)
        memcpy(dc + nb - 16, sc + nb - 16, 16)
    elif nb >= 8:
        memcpy(dc, sc, 8)
        memcpy(dc + nb - 8, sc + nb - 8, 8)
    elif nb > 0:
        memcpy(dc, sc, 4)


cdef inline void zero_run(element *d, Py_ssize_t n) noexcept nogil:
    """d[u] = 0 for u < n.  Staging a small image zeroes the row or two of each plane that
    the padding leaves, and the element or two before and after each row, or nothing: GCC
    turned those loops into calls of memset, a tenth of a stride-2 grouped 3x3 layer on 28x28
    at batch 1.  Short runs are stores of 32, 16, 8 or 4 bytes, which the compiler emits
    inline, the last overlapping the one before: copy_short's ladder with constant stores
    (copy_short from a buffer of zeros made that layer 4-8 % slower)."""
    cdef char *dc = <char *>d
    cdef Py_ssize_t nb = n * sizeof(element), i = 0
    if nb > 256:
        memset(dc, 0, nb)
    elif nb >= 32:
        while i + 32 <= nb:
            memset(dc + i, 0, 32)
            i += 32
        if i < nb:
            memset(dc + nb - 32, 0, 32)
    elif nb >= 16:
        memset(dc, 0, 16)
        memset(dc + nb - 16, 0, 16)
    elif nb >= 8:
        memset(dc, 0, 8)
        memset(dc + nb - 8, 0, 8)
    elif nb > 0:
        memset(dc, 0, 4)


cdef inline void fill_row(element *row, const element *s, Py_ssize_t sw, Py_ssize_t e_lo,
                          Py_ssize_t e_hi, Py_ssize_t Wq) noexcept nogil:
    """row[e] = s[e * sw] for e_lo <= e < e_hi, 0 for the other e < Wq."""
    cdef Py_ssize_t e
    zero_run(row, e_lo)
    if sw == 1 and e_hi - e_lo >= 64:
        memcpy(row + e_lo, s + e_lo, (e_hi - e_lo) * sizeof(element))
    elif sw == 1:           # short rows: a call costs more than the copy
        copy_short(row + e_lo, s + e_lo, e_hi - e_lo)
    else:
        for e in range(e_lo, e_hi):
            row[e] = s[e * sw]
    zero_run(row + e_hi, Wq - e_hi)


cdef inline void split_row(element *row, Py_ssize_t plane, const element *s, Py_ssize_t sw,
                           Py_ssize_t Wq, const Py_ssize_t *pb) noexcept nogil:
    """The sw phases of a staged row (sw up to SPLIT_STRIDE), phase pw at row + pw * plane:
    row[pw * plane + e] = s[e * sw + pw] for pb[2 pw] <= e < pb[2 pw + 1], 0 for the other
    e < Wq.  The columns inside for every phase (from phase 0's first to phase sw - 1's end)
    in one pass (split_phases); the one or two at each end that only some phases have, and the
    zeros, phase by phase."""
    cdef Py_ssize_t pw, e, lo = pb[0], hi = pb[2 * sw - 1]
    cdef element *r
    if hi <= lo:
        for pw in range(sw):
            fill_row(row + pw * plane, s + pw, sw, pb[2 * pw], pb[2 * pw + 1], Wq)
        return
    split_phases(row + lo, plane, s + lo * sw, hi - lo, sw)
    for pw in range(sw):
        r = row + pw * plane
        zero_run(r, pb[2 * pw])
        for e in range(pb[2 * pw], lo):
            r[e] = s[e * sw + pw]
        for e in range(hi, pb[2 * pw + 1]):
            r[e] = s[e * sw + pw]
        zero_run(r + pb[2 * pw + 1], Wq - pb[2 * pw + 1])


cdef inline void fill_row_pair(element *row0, element *row1, const element *s,
                               const Py_ssize_t *bounds, Py_ssize_t Wq,
                               const element *send) noexcept nogil:
    """fill_row for both phases of stride 2, row0[e] = s[2e] and row1[e] = s[2e + 1] inside
    bounds[0] .. bounds[1] - 1 and bounds[2] .. bounds[3] - 1, each by lc_evens (vectors of
    even lanes, reading nothing at send or past it).  A loop over both phases at once was a
    third of a grouped stride-2 forward pass (rows of 14: its vector body hardly ran)."""
    cdef Py_ssize_t lo0 = bounds[0], hi0 = bounds[1], lo1 = bounds[2], hi1 = bounds[3]
    zero_run(row0, lo0)
    zero_run(row1, lo1)
    evens(row0 + lo0, s + 2 * lo0, hi0 - lo0, send - (s + 2 * lo0))
    evens(row1 + lo1, s + 2 * lo1 + 1, hi1 - lo1, send - (s + 2 * lo1 + 1))
    zero_run(row0 + hi0, Wq - hi0)
    zero_run(row1 + hi1, Wq - hi1)


cdef inline void row_bounds(Py_ssize_t pw, Py_ssize_t lw, Py_ssize_t sw, Py_ssize_t W,
                            Py_ssize_t Wq, Py_ssize_t *bounds) noexcept nogil:
    """The staged columns e < Wq of phase pw whose source column e * sw + pw - lw is inside
    0 .. W - 1: bounds[0] .. bounds[1] - 1."""
    bounds[0] = min(first_inside(pw - lw, sw), Wq)
    bounds[1] = max(min(end_inside(pw - lw, sw, W), Wq), bounds[0])


cdef inline void zero_plane_rows(element *row, Py_ssize_t sw, Py_ssize_t plane, Py_ssize_t Hq,
                                 Py_ssize_t Wq, Py_ssize_t b_lo, Py_ssize_t b_hi,
                                 bint outside) noexcept nogil:
    """The zeros of one staged plane a of a phase (pd, ph), at row, its sw phases pw plane
    apart: all Hq rows where the source plane is outside the source, else the rows before b_lo
    and from b_hi on (those no source row reaches)."""
    cdef Py_ssize_t pw
    cdef element *r
    for pw in range(sw):
        r = row + pw * plane
        if outside:
            zero_run(r, Hq * Wq)
        else:
            zero_run(r, b_lo * Wq)
            zero_run(r + b_hi * Wq, (Hq - b_hi) * Wq)


cdef inline void copy_plane_rows(element *row, const element *srow, Py_ssize_t nrow,
                                 Py_ssize_t plane, Py_ssize_t Wq, Py_ssize_t W, Py_ssize_t sh,
                                 Py_ssize_t sw, Py_ssize_t lw, const Py_ssize_t *bounds,
                                 const element *sbegin, const element *send,
                                 const element *pend) noexcept nogil:
    """nrow staged rows of a plane of a phase (pd, ph): row b (at row + b * Wq, its sw phases
    pw plane apart) from source row srow + b * sh * W, zero outside it (bounds: the staged
    columns inside for phases 0 and 1, as row_bounds gives them; sbegin and send: the source
    slice, outside which nothing is read; pend: the end of the staged plane, of phase 0 at
    stride 2).  At stride 1, rows of a vector or less (7x7 and 14x14 images) are each one
    vector, loaded and stored with its padding zeroed (short_row): the zeros it writes past
    the row's end fall on the rows after it, which are written later or are zero (the padding
    below), and never past the plane.  Row by row with a copy between two runs of zeros, the
    staging was a quarter of a grouped layer's forward pass on 7x7 (groups of 8 at batch 8).
    At stride 2 both phases of a row are whole vectors alike (short_row_pair), from the same
    loads, wherever they stay inside the plane (phase 1's is as far past its start as phase
    0's, which ends at pend) and the reads inside the slice: 1.07-1.09x a grouped stride-2
    layer's forward pass at batch 1 (groups of 8 to 32 channels on 56x56 to 14x14), against
    fill_row_pair's runs of zeros and even lanes."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t b, pw, m = (Wq + VW - 1) // VW
    cdef Py_ssize_t pb[2 * SPLIT_STRIDE]
    if sw == 1 and sh == 1 and lw == 0 and Wq == W:
        # whole rows, consecutive in both: one copy
        memcpy(row, srow, nrow * W * sizeof(element))
        return
    if 2 < sw <= SPLIT_STRIDE:
        for pw in range(sw):
            row_bounds(pw, lw, sw, W, Wq, pb + 2 * pw)
        for b in range(nrow):
            split_row(row, plane, srow - lw, sw, Wq, pb)
            row += Wq
            srow += sh * W
        return
    for b in range(nrow):
        if sw == 2:
            if (row + m * VW <= pend and srow - lw >= sbegin
                    and srow - lw + 2 * m * VW <= send):
                short_row_pair(row, row + plane, srow - lw, m, bounds)
            else:
                fill_row_pair(row, row + plane, srow - lw, bounds, Wq, send)
        elif sw == 1:
            if (Wq <= VW and row + VW <= pend and srow - lw >= sbegin
                    and srow - lw + VW <= send):
                short_row(row, srow - lw, bounds[0], bounds[1])
            else:
                fill_row(row, srow - lw, 1, bounds[0], bounds[1], Wq)
        else:
            for pw in range(sw):
                row_bounds(pw, lw, sw, W, Wq, pb)
                fill_row(row + pw * plane, srow + pw - lw, sw, pb[0], pb[1], Wq)
        row += Wq
        srow += sh * W


cdef void stage_image(const element *src, const Stage *st, element *out) noexcept nogil:
    """The staged planes of one (image, group) slice at src: for channel c and phase
    (pd, ph, pw), out[c * chan + ((pd * sh + ph) * sw + pw) * pstep + (a * Hq + b) * Wq + e] =
    src[c, a * sd + pd - ld, b * sh + ph - lh, e * sw + pw - lw], zero outside the source (the
    other images of a block of st.nimg go plane elements apart, at out + n * plane)."""
    # The geometry is copied to locals: Python extensions build with -fno-strict-aliasing, so
    # the compiler would otherwise reload every field of *st after each store into out.
    cdef Py_ssize_t c, pd, ph, a, iz, b_lo, b_hi
    cdef Py_ssize_t Dq = st.q[0], Hq = st.q[1], Wq = st.q[2], HWq = st.q[1] * st.q[2]
    cdef Py_ssize_t D = st.dim[0], H = st.dim[1], W = st.dim[2]
    cdef Py_ssize_t sd = st.step[0], sh = st.step[1], sw = st.step[2]
    cdef Py_ssize_t ld = st.lead[0], lh = st.lead[1], lw = st.lead[2]
    cdef Py_ssize_t pstep = st.pstep, chan = st.chan, src_chan = st.src_chan
    cdef Py_ssize_t nchan = st.nchan
    cdef element *base
    cdef bint outside
    cdef Py_ssize_t bounds[4]       # the staged columns inside, for phases 0 and 1 (once)
    row_bounds(0, lw, sw, W, Wq, bounds)
    row_bounds(1, lw, sw, W, Wq, bounds + 2)
    cdef const char *nxt
    cdef Py_ssize_t u, ahead = min(src_chan, STAGE_AHEAD) * sizeof(element)
    # where a channel's reads start: its first plane and row (a band's rows: stage_rows)
    cdef Py_ssize_t first = (min(max(-ld, 0), D - 1) * H + min(max(-lh, 0), H - 1)) * W
    ahead = min(ahead, (src_chan - first) * sizeof(element))
    for c in range(nchan):
        if c + 1 < nchan:
            nxt = <const char *>(src + (c + 1) * src_chan + first)
            for u in range(0, ahead, 64):
                lc_prefetch(nxt + u)
        for pd in range(sd):
            for ph in range(sh):
                # staged rows b_lo .. b_hi - 1 of this phase come from source rows inside
                b_lo = min(first_inside(ph - lh, sh), Hq)
                b_hi = max(min(end_inside(ph - lh, sh, H), Hq), b_lo)
                base = out + c * chan + (pd * sh + ph) * sw * pstep     # the phases pw follow
                for a in range(Dq):
                    iz = a * sd + pd - ld
                    outside = iz < 0 or iz >= D
                    zero_plane_rows(base + a * HWq, sw, pstep, Hq, Wq, b_lo, b_hi, outside)
                    if not outside:
                        copy_plane_rows(base + a * HWq + b_lo * Wq,
                                        src + c * src_chan + (iz * H + b_lo * sh + ph - lh) * W,
                                        b_hi - b_lo, pstep, Wq, W, sh, sw, lw, bounds,
                                        src, src + nchan * src_chan, base + (a + 1) * HWq)


cdef void stage_rows(const element *src, const Stage *st, Py_ssize_t r0,
                     element *out) noexcept nogil:
    """The band of one slice at src from row r0 of its staged grid (set_row_band): rows r0 ..
    r0 + st.band_rows - 1 of the grid (row r = a * Hq + b: row b of plane a) of every channel
    and phase, row r of (c, phase) at out + c * st.chan + phase * st.pstep + (r - r0) * Wq,
    then zeros to st.size.  Plane by plane, each part of a plane as a staging of its own
    (stage_image: one plane of those rows, its source plane and row counted from them); rows
    past the grid's last plane come from outside the source: zeros."""
    cdef Py_ssize_t Hq = st.q[1], Wq = st.q[2], r = r0, r1 = r0 + st.band_rows, a, b0, b1
    cdef Stage part = st[0]
    part.q[0] = 1
    while r < r1:
        a = r // Hq
        b0 = r - a * Hq
        b1 = min(Hq, b0 + r1 - r)
        part.q[1] = b1 - b0
        part.lead[0] = st.lead[0] - a * st.step[0]
        part.lead[1] = st.lead[1] - b0 * st.step[1]
        stage_image(src, &part, out + (r - r0) * Wq)
        r += b1 - b0
    zero_run(out + st.nchan * st.chan, st.size - st.nchan * st.chan)


cdef inline const element *staged_band(const element *src, const Stage *st, Py_ssize_t key,
                                       Py_ssize_t q0, Py_ssize_t q1, element *buf,
                                       Py_ssize_t *held) noexcept nogil:
    """The band of slice `key` (at src) that grid columns q0 .. q1 - 1 and their reach need:
    this thread's buffer buf, staged from q0's grid row on (stage_rows) unless it holds rows
    of that slice that cover them (held[0] names the slice it holds, held[1] its first
    row)."""
    cdef Py_ssize_t Wq = st.q[2], r0 = q0 // Wq
    if held[0] != key or held[1] > r0 or q1 + st.band_reach > (held[1] + st.band_rows) * Wq:
        stage_rows(src, st, r0, buf)
        held[0] = key
        held[1] = r0
    return buf


cdef bint set_row_band(Stage *st, Py_ssize_t columns, Py_ssize_t reach, Py_ssize_t spare,
                       bint allowed) noexcept nogil:
    """Whether a reader of `columns` grid columns at a time (a work item's, a chunk's steps),
    which reads `reach` columns past them, reads a staged slice of BAND_SLICE_BYTES or more
    (one image, `allowed`) in bands of rows instead (staged_band): each of enough rows for
    its columns and reach (more for a step of a band's reader that restarts a band where its
    `spare` columns do not fit in it), within BAND_BYTES (an L2), and BAND_REACH times what a
    band stages again or leaves unread or more.  Then st holds a band's layout (st.pstep a
    band's rows, st.chan, st.size; the grid's sizes, plane and leads as they were), and
    True.  The whole copy went to memory and back: a V-Net's 16 -> 32 2x2x2 stride-2 layer
    on 64^3 at batch 1 (16 MB staged) spent half its forward pass and weight gradient
    staging on one thread, and more on two, which shared the memory's bandwidth (the weight
    gradient 0.62 of PyTorch).  Slices that fit in L3 (4 MB of 32 -> 64 on 32^3) and bands
    beyond an L2 ran slower as bands (0.9-0.95x), and so did readers that reach a plane or
    more (kernels deeper than their stride along D, each band staging its plane again:
    0.82-0.9x): only those that reach less than two rows take bands.  With BAND_REACH 2
    rather than 4 the weight gradient of a transposed 32 -> 32 2x2x2 stride-2 layer onto 64^3
    (32 MB: bands of 32 rows for chunks of 34) takes bands: 5.4-5.6 -> 2.3 ms on two
    threads, 6.6 -> 6.2 on one."""
    cdef Py_ssize_t Wq = st.q[2], rows, most, extra
    cdef Py_ssize_t nphase = st.step[0] * st.step[1] * st.step[2]
    if (not allowed or st.nimg != 1 or st.identity or st.band or st.itemsize == 0
            or reach >= 2 * Wq or st.nchan * st.chan * st.itemsize < BAND_SLICE_BYTES):
        return False
    most = BAND_BYTES // (st.nchan * nphase * Wq * st.itemsize)
    rows = (columns + reach + Wq - 1) // Wq + 1
    extra = rows * Wq - columns         # one band for all the columns: what it leaves unread
    if rows > most:                     # else a band restarted: the reach, a row and a step
        rows = most
        extra = reach + Wq + spare
    if rows * Wq < BAND_REACH * extra or 4 * rows * Wq > st.pstep:
        return False
    st.band_rows = rows
    st.band_reach = reach
    st.pstep = rows * Wq                # (st.plane stays the grid's: where columns are)
    st.chan = nphase * st.pstep
    st.gap = 0
    st.size = round_up(st.nchan * st.chan + reach, 16)
    return True


cdef void zero_gaps(const Stage *st, element *out) noexcept nogil:
    """The zeros of a staged buffer at out outside its channels' data: the gaps after each
    channel (st.gap) and the slack after the last one, up to st.size."""
    cdef Py_ssize_t c
    if st.gap:
        for c in range(1, st.nchan):
            zero_run(out + c * st.chan - st.gap, st.gap)
    zero_run(out + st.nchan * st.chan - st.gap, st.size - st.nchan * st.chan + st.gap)


cdef void stage_slice(const element *src, const Stage *st, element *out) noexcept nogil:
    """out = the staged copy of one (image, group) slice at src (stage_image), and its zeros
    (zero_gaps)."""
    stage_image(src, st, out)
    zero_gaps(st, out)


cdef inline bint reads_in_place(const Stage *st, Py_ssize_t off) noexcept nogil:
    """Whether the tiles read the slice at source offset off in place: where staging would copy
    it unchanged and every read (st.overrun past its last channel) stays inside the source.
    Where the grid's columns are whole vectors that is the last image too: a 1x1 layer at batch
    1 on 56x56 or 64x64x64 read in place instead of copying all of x on every call (the copy
    was a third of a 32 -> 1 channel 1x1x1 layer's forward pass on 64^3)."""
    return st.identity and off + st.nchan * st.chan + st.overrun <= st.src_size


cdef inline bint block_in_place(const Stage *st, Py_ssize_t off) noexcept nogil:
    """Whether the tiles read the block of images at source offset off in place
    (reads_in_place; never a block of several images)."""
    return st.nimg == 1 and reads_in_place(st, off)


cdef inline bint last_in_place(const Stage *st, Py_ssize_t N, Py_ssize_t G, Py_ssize_t img,
                               Py_ssize_t grp) noexcept nogil:
    """Whether the tiles read the last of the blocks of N images and G groups (img and grp
    elements apart) in place, and so every one (block_in_place)."""
    return block_in_place(st, (N - 1) * img + (G - 1) * grp)


cdef inline const element *staged_slice(const element *src, Py_ssize_t off,
                                        const Stage *st, Py_ssize_t key, element *buf,
                                        Py_ssize_t *staged_key) noexcept nogil:
    """The slice `key` of the source (at src + off) as the tiles read it: the source itself
    where staging would copy it unchanged and every read of the tiles stays inside the source
    array (reads_in_place: a 1x1 convolution); else this thread's buffer, staged unless it
    holds that slice already (staged_key: the key of the slice it holds, -1 for none)."""
    if reads_in_place(st, off):
        return src + off
    if staged_key[0] != key:
        stage_slice(src + off, st, buf)
        staged_key[0] = key
    return buf


cdef void stage_images(const element *src, const Stage *st, Py_ssize_t src_img,
                       Py_ssize_t src_grp, Py_ssize_t n0, Py_ssize_t nimg, Py_ssize_t g,
                       Py_ssize_t key, element *buf, Py_ssize_t *staged_key,
                       const element *shared, Py_ssize_t G,
                       const element **staged) noexcept nogil:
    """staged[n]: the slice (image n0 + n, group g) as the tiles read it, for n < nimg (see
    staged_slice; images src_img and groups src_grp elements apart in src), in the thread's
    buffer one after the other; `key` names the block.  Where every slice of the G groups
    was staged before (shared, stage_shared), there."""
    cdef Py_ssize_t n, off
    cdef bint fresh = staged_key[0] != key
    for n in range(nimg):
        off = (n0 + n) * src_img + g * src_grp
        if reads_in_place(st, off):
            staged[n] = src + off
        elif shared != NULL:
            staged[n] = shared + ((n0 + n) * G + g) * st.size
        else:
            if fresh:
                stage_slice(src + off, st, buf + n * st.size)
            staged[n] = buf + n * st.size
    staged_key[0] = key


cdef void stage_channels(const element *src, const Stage *st, Py_ssize_t c0, Py_ssize_t c1,
                         element *out) noexcept nogil:
    """Channels c0 .. c1 - 1 of the staged copy of one slice at src into its buffer at out
    (stage_image, which reads nothing of the slice's other channels)."""
    cdef Stage part = st[0]
    part.nchan = c1 - c0
    stage_image(src + c0 * st.src_chan, &part, out + c0 * st.chan)


cdef void stage_shared(const element *src, const Stage *st, Py_ssize_t N, Py_ssize_t G,
                       Py_ssize_t src_img, Py_ssize_t src_grp, element *out,
                       int nthreads) noexcept nogil:
    """Every block of st.nimg images (one for the forward-style products) and group of the N
    images and G groups at src that the tiles do not read in place, staged once by all
    threads (block b of group g at out + (b * G + g) * st.size, as staged_block lays it out),
    each image's channels in parts, so that all threads take part even at batch 1.  For the
    products whose threads share slices (stage_images' shared): each thread staged every
    slice it took an item of, all of it, and at batch 1 on two threads both staged the whole
    image (in a 64 -> 64 3x3 layer on 128x256 an 8.5 MB copy that was a tenth of its time on
    one thread); for the weight gradients whose items of one chunk each stage its images
    (staged_block's shared)."""
    cdef Py_ssize_t nib = (N + st.nimg - 1) // st.nimg, nsl = nib * G * st.nimg
    cdef Py_ssize_t item, sl, key, n, part, off
    cdef Py_ssize_t parts = max(1, min(st.nchan, (SHARED_PARTS * nthreads + nsl - 1) // nsl))
    # race-free: each item writes its own channels of its own image's place, each block its
    # own gaps and missing images
    for item in prange(nsl * parts, schedule="dynamic", chunksize=1, num_threads=nthreads):
        sl = item // parts
        part = item % parts
        key = sl // st.nimg
        n = key // G * st.nimg + sl % st.nimg
        off = n * src_img + key % G * src_grp
        if n < N and not block_in_place(st, off):
            stage_channels(src + off, st, st.nchan * part // parts,
                           st.nchan * (part + 1) // parts,
                           out + key * st.size + sl % st.nimg * st.plane)
    for key in prange(nib * G, schedule="static", num_threads=nthreads):
        if not block_in_place(st, key // G * src_img + key % G * src_grp):
            finish_block(st, min(st.nimg, N - key // G * st.nimg), out + key * st.size)


cdef void finish_block(const Stage *st, Py_ssize_t nimg, element *buf) noexcept nogil:
    """The zeros of a staged block of nimg images at buf: the places of the images missing
    from a last block of fewer than st.nimg (so that the junk columns after the last image
    read finite values), and the gaps (zero_gaps)."""
    cdef Py_ssize_t c, f, nphase = st.step[0] * st.step[1] * st.step[2]
    if nimg < st.nimg:
        for c in range(st.nchan):
            for f in range(nphase):
                memset(buf + c * st.chan + f * st.pstep + nimg * st.plane, 0,
                       (st.nimg - nimg) * st.plane * sizeof(element))
    zero_gaps(st, buf)


cdef const element *staged_block(const element *src, Py_ssize_t off, Py_ssize_t src_img,
                                 const Stage *st, Py_ssize_t nimg, Py_ssize_t key,
                                 element *buf, Py_ssize_t *staged_key,
                                 const element *shared) noexcept nogil:
    """The block of images at src + off (nimg <= st.nimg of them, src_img elements apart) as
    the tiles read it: staged_slice for blocks of one image, else this thread's buffer, staged
    unless it holds that block already (finish_block: the places of missing images zero);
    where every block was staged before (shared, stage_shared), block `key` there."""
    cdef Py_ssize_t n
    if shared != NULL and not block_in_place(st, off):
        return shared + key * st.size
    if st.nimg == 1:
        return staged_slice(src, off, st, key, buf, staged_key)
    if staged_key[0] != key:
        for n in range(nimg):
            stage_image(src + off + n * src_img, st, buf + n * st.plane)
        finish_block(st, nimg, buf)
        staged_key[0] = key
    return buf


cdef Py_ssize_t grid_columns(Py_ssize_t q0, Py_ssize_t n, const Py_ssize_t *q,
                             const Py_ssize_t *grid, Py_ssize_t base, const Py_ssize_t *dstep,
                             Py_ssize_t *dcol, Py_ssize_t *run) noexcept nogil:
    """For staged grid columns q0 .. q0 + n - 1 (row length q[2], plane q[1] * q[2]): dcol[j],
    the destination base + a*dstep[0] + b*dstep[1] + e*dstep[2] of valid column (a, b, e), -1
    for junk; and run[j], the number of columns from j on whose destinations follow each other
    with step dstep[2] (0 for junk)."""
    cdef Py_ssize_t a = q0 // (q[1] * q[2]), b = (q0 // q[2]) % q[1], e = q0 % q[2]
    cdef Py_ssize_t j = 0, t, seg, valid, d0, r
    if (q[1] == grid[1] and q[2] == grid[2] and dstep[1] == grid[2] * dstep[2]
            and dstep[0] == grid[1] * dstep[1]):
        # the grid is the destination's pixels in order (a 1x1 layer's): columns q0 on are
        # one run.  The loops below, row by row, cost a sixth of a 32 -> 3 channel 1x1x1
        # layer's forward pass on 32^3 at batch 1.
        d0 = base + q0 * dstep[2]
        for j in range(n):
            dcol[j] = d0 + j * dstep[2]
            run[j] = n - j
        return n
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
    if q[2] == grid[2] and dstep[1] == grid[2] * dstep[2] and n > 0:
        # no junk columns and rows that follow each other: runs continue across rows (the run
        # of the column after j kept in r, not read back from run: reading it back made each
        # step wait on the store before it, 8 % of a 1x1 layer on 112x112 at batch 1)
        r = run[n - 1]
        for j in reversed(range(n - 1)):
            if dcol[j] >= 0 and dcol[j + 1] == dcol[j] + dstep[2]:
                r += 1
            else:
                r = run[j]
            run[j] = r
    return n


# ---------------------------------------------------------------------------------------------
# The geometry of a pass, set up by the entry points (with the GIL: from Python tuples).

cdef inline bint own_grid(const Stage *st) noexcept nogil:
    """Whether the staged grid is the source's own: one phase (steps of 1), no lead, the
    source's sizes (st.identity before the images and gaps are set; set_band)."""
    cdef int a
    for a in range(3):
        if st.step[a] != 1 or st.lead[a] != 0 or st.q[a] != st.dim[a]:
            return False
    return True


cdef inline bint aliases(Py_ssize_t nbytes) noexcept nogil:
    """Whether rows nbytes apart fall into the same few sets of the caches (ALIAS_BYTES)."""
    return nbytes % ALIAS_BYTES == 0


cdef void set_stage(Stage *st, tuple dim, tuple step, tuple lead, tuple q, Py_ssize_t nchan,
                    Py_ssize_t NR, Py_ssize_t src_size, Py_ssize_t itemsize=0,
                    Py_ssize_t rows=0):
    """The staging of nchan channels of a source with spatial sizes dim (src_size elements in
    all): step phases per axis, the first staged index at source index -lead, q staged indices
    per phase; NR elements of zeros at least after the last channel, for the tiles that read
    past it.  With the itemsize of the elements (the tiled loops), staged channels whose size
    would alias in the caches get a gap, and so does a source that would be read in place
    where the product that reads it has `rows` rows (per group) to spread it for
    (set_stage_images): SPREAD_ROWS or more, and SPREAD_PANELS panels of tile rows or more
    where the slice is larger than SPREAD_BYTES."""
    cdef int a
    st.itemsize = itemsize
    for a in range(3):
        st.dim[a] = dim[a]
        st.step[a] = step[a]
        st.lead[a] = lead[a]
        st.q[a] = q[a]
    st.plane = st.q[0] * st.q[1] * st.q[2]
    st.nchan = nchan
    st.src_chan = st.dim[0] * st.dim[1] * st.dim[2]
    st.spread = rows >= SPREAD_ROWS and (rows >= SPREAD_PANELS * LC_MR_B
                                         or nchan * st.src_chan * itemsize <= SPREAD_BYTES)
    st.identity = own_grid(st)
    st.src_size = src_size
    st.band = False
    st.band_rows = 0
    st.band_reach = 0
    set_stage_images(st, 1, NR)


cdef void set_stage_images(Stage *st, Py_ssize_t nimg, Py_ssize_t NR) noexcept nogil:
    """Stage blocks of nimg images (set_stage: one): in each (channel, phase) the images'
    planes one after the other, so that along a row of xcol the grid columns of one image are
    followed by those of the next; NR elements of zeros at least after the last channel.  A
    block of several images is always a copy."""
    st.nimg = nimg
    st.pstep = nimg * st.plane
    st.chan = st.step[0] * st.step[1] * st.step[2] * st.pstep
    # The forward-style tiles read a row of B per (channel, tap), the channels chan apart.
    # Where chan is a multiple of ALIAS_BYTES the rows of a pass fall into a few sets of the
    # caches and evict each other: a 256 -> 256 channel 1x1x1 layer on 32^3 (planes of 128
    # KiB) took 1.38x the time of one on 31 x 32 x 33.  A gap of one cache line after each
    # staged channel spreads them.  A source read in place has no room for it: with `spread`
    # (products of many rows, for which the copy costs less than the evictions) it is staged
    # instead.  The tiles of the weight gradient read their rows along the pixels, a few
    # streams at a time: copying for them was slower (0.92-0.98).
    st.gap = 0
    if (st.itemsize > 0 and st.nchan > 1 and aliases(st.chan * st.itemsize)
            and (st.spread or not st.identity or nimg > 1)):
        st.gap = max(1, 64 // st.itemsize)
        st.chan += st.gap
    # zeros after: tiles may read NR past, and the last rows of a staging whose zeros are
    # shared (shared_zeros) read up to lead[1] rows and lead[2] columns past
    st.size = round_up(st.nchan * st.chan + NR + st.lead[1] * st.q[2] + st.lead[2], 16)
    st.identity = st.identity and nimg == 1 and st.gap == 0
    st.overrun = st.size - st.nchan * st.chan      # (set_overrun narrows it)


cdef void set_overrun(Stage *st, Py_ssize_t ncols, Py_ssize_t VW, bint by_pixel,
                      bint exact=False) noexcept nogil:
    """st.overrun of a staging read in place (identity: one phase, the grid the source's own
    pixels, ncols columns), from how the tiles read it: pixel tiles LC_MR_B pixels from a run's
    last tile start; else their columns rounded up to whole vectors of VW, or (`exact`) not one
    column past the last: the forward-style product where it can move its last tile back to
    end there (tail_shift: where there are as many columns as that tile's, one or two vectors,
    a tile with a partial vector being a tail tile), the weight gradient's lc_tile_a and
    lc_tile_m, which read x element by element (lc_tile_d and lc_tile_e read whole vectors)."""
    if st.identity:
        st.overrun = LC_MR_B - 1 if by_pixel else 0 if exact else round_up(ncols, VW) - ncols


cdef bint set_band(Stage *st, Py_ssize_t ncb, Py_ssize_t NR, Py_ssize_t rows,
                   bint allowed) noexcept nogil:
    """Whether a 1x1 product (`allowed`: also one image per work item, not pixel tiles) of
    BAND_ROWS rows (per group) or more, whose source would be read in place but for its
    channels aliasing in the caches (a multiple of ALIAS_BYTES apart), reads it as bands
    instead: each work item copies its ncb columns or fewer of every channel into its thread's
    buffer (stage_band), the channels chan apart, with NR zeros after each and a cache line's
    gap, and its tiles read the band there; then st.chan is that stride (the rows of B the
    product reads), and True.  The copy of the whole slice (`spread`) went to memory and back
    where the slice outgrows the caches (a 64 -> 64 1x1 on 256x256 at batch 1 copied 16 MB a
    pass, and ran at 0.61 of PyTorch), and read in place the channels evict each other from
    L1, and from L2 where they are 128 KiB apart; a band stays in L2 and is read from there
    by every panel of rows.  Not for a slice that fits in L2 (SPREAD_BYTES) with channels at
    most BAND_CHANNEL_BYTES apart: that is copied whole, once per thread, where the items of a
    column block would each copy its band."""
    st.band = (allowed and own_grid(st) and st.nimg == 1 and st.nchan > 1 and st.itemsize > 0
               and rows >= BAND_ROWS
               and aliases(st.src_chan * st.itemsize)
               and (st.nchan * st.src_chan * st.itemsize > SPREAD_BYTES
                    or st.src_chan * st.itemsize > BAND_CHANNEL_BYTES))
    if not st.band:
        return False
    st.identity = False
    st.gap = max(1, 64 // st.itemsize)
    st.chan = round_up(ncb + NR, 64 // st.itemsize) + st.gap
    st.size = st.nchan * st.chan
    return True


cdef inline void stage_band(const element *src, const Stage *st, Py_ssize_t q0,
                            Py_ssize_t ncols, element *out) noexcept nogil:
    """The band of a work item (set_band): columns q0 .. q0 + ncols - 1 of each of the slice's
    channels (src: the slice, channels st.src_chan apart) at out + c * st.chan, zeros up to
    the next channel's."""
    cdef Py_ssize_t c
    for c in range(st.nchan):
        memcpy(out + c * st.chan, src + c * st.src_chan + q0, ncols * sizeof(element))
        zero_run(out + c * st.chan + ncols, st.chan - ncols)


cdef void widen_channel(const element *x, Py_ssize_t D, Py_ssize_t H, Py_ssize_t W,
                        Py_ssize_t Hw, Py_ssize_t hlead, Py_ssize_t Wo, Py_ssize_t kw,
                        Py_ssize_t sw, Py_ssize_t dw, Py_ssize_t pw,
                        element *out) noexcept nogil:
    """out[j, d, r, e] = x[d, r - hlead, e * sw + j * dw - pw] where that is inside x (D x H x
    W), else 0, for the kw taps j along W, the Hw rows r of each of the D planes and e < Wo: one
    channel of widen_source.  Where the rows keep their length (stride 1, Wo == W), the rows of
    a plane are one copy, shifted, whose few elements that wrap into the next row are then
    zeroed: a copy row by row cost a tenth of a 3x3 layer on 7x7 (rows of 7)."""
    cdef Py_ssize_t j, d, r, lo, hi, h0, h1, shift
    cdef element *o
    cdef const element *xp
    h0 = min(hlead, Hw)                     # rows r of x's rows: h0 .. h1 - 1
    h1 = max(min(hlead + H, Hw), h0)
    for j in range(kw):
        shift = j * dw - pw
        lo = min(first_inside(shift, sw), Wo)
        hi = max(min(end_inside(shift, sw, W), Wo), lo)
        for d in range(D):
            o = out + (j * D + d) * Hw * Wo
            xp = x + (d * H + h0 - hlead) * W
            zero_run(o, h0 * Wo)
            zero_run(o + h1 * Wo, (Hw - h1) * Wo)
            if sw == 1 and Wo == W and hi > lo:
                memcpy(o + h0 * Wo + lo, xp + lo + shift,
                       ((h1 - h0) * Wo - lo - (Wo - hi)) * sizeof(element))
                for r in range(h0, h1):
                    zero_run(o + r * Wo, lo)
                    zero_run(o + r * Wo + hi, Wo - hi)
            else:
                for r in range(h0, h1):
                    fill_row(o + r * Wo, xp + (r - h0) * W + shift, sw, lo, hi, Wo)


cdef void widen_source(const element *x, Py_ssize_t channels, Py_ssize_t D, Py_ssize_t H,
                       Py_ssize_t W, Py_ssize_t Hw, Py_ssize_t hlead, Py_ssize_t Wo,
                       Py_ssize_t kw, Py_ssize_t sw, Py_ssize_t dw, Py_ssize_t pw,
                       element *out, int num_threads) noexcept nogil:
    """The source of a widened forward pass (widened_geometry): channel c of x (`channels` of
    them over all images, each D x H x W) becomes kw channels c * kw + j of D x Hw rows of Wo,
    the output's width, holding what tap j along W reads for each output column, padding
    included, so that every tap along W reads whole rows of the output (widen_channel).  Its
    rows are x's from row hlead on, between zero rows: the padding along H where the widened
    pass reads the copy in place."""
    cdef Py_ssize_t c
    with parallel(num_threads=num_threads):
        for c in prange(channels, schedule="static"):
            widen_channel(x + c * D * H * W, D, H, W, Hw, hlead, Wo, kw, sw, dw, pw,
                          out + c * kw * D * Hw * Wo)


cdef tuple x_stage(tuple size, tuple out, tuple ksize, stride, pad, dilation):
    """Staged sizes (Dq, Hq, Wq) for reading x through a kernel: every tap of every valid
    output lies inside."""
    return tuple(out[a] + (ksize[a] - 1) * dilation[a] // stride[a] for a in range(3))


cdef tuple shared_zeros(tuple q, tuple dim, tuple step, tuple lead, tuple grid):
    """Staged sizes q (every read of a valid output inside, the source's dim values of each
    row at lead) made shorter along H and W where the zeros around the source can be shared:
    the reads of a row that run past its end land on the next row's first lead[2] columns
    (zero: before the source's first column), and those of a plane past its last row on the
    next plane's first lead[1] rows, which are zero likewise.  So a 3x3 kernel with padding 1
    stages rows of W + 1 values instead of W + 2, and planes of H + 1 rows: the product's grid,
    which computes every staged column of the rows it covers, has that many fewer junk columns
    (14x14: 209 grid columns instead of 222 per image, 16x16x16: 1.12 a pixel instead of 1.27).
    Only along axes of one phase (stride 1), whose rows all start with the same zeros; the
    next phase, channel or image starts with them too, and after the last one
    set_stage_images leaves room for what runs past.  A row still holds the grid's columns
    (and a plane its rows): `grid`, the largest grid of a phase."""
    cdef list r = list(q)
    for a in (1, 2):
        if step[a] == 1 and lead[a] > 0:
            r[a] = min(q[a], max(lead[a] + dim[a], q[a] - lead[a], grid[a]))
    return tuple(r)


cdef tuple x_stage_shared(tuple size, tuple out, tuple ksize, stride, pad, dilation):
    """x_stage with the zeros shared between rows and planes (shared_zeros): the staging of x
    for the tiled product (the depthwise loops keep x_stage)."""
    return shared_zeros(x_stage(size, out, ksize, stride, pad, dilation), size, tuple(stride),
                        tuple(pad), out)


cdef Py_ssize_t tap_offset(const Stage *st, Py_ssize_t c, tuple tap):
    """Staged offset of channel c and tap (kd, kh, kw) read with the staging's strides."""
    cdef Py_ssize_t phase = 0, shift = 0, a, t
    for a in range(3):
        t = tap[a]
        phase = phase * st.step[a] + t % st.step[a]
        shift = shift * st.q[a] + t // st.step[a]
    return c * st.chan + phase * st.pstep + shift


cdef Py_ssize_t taps_reach(const Stage *st, tuple ksize, dilation, Py_ssize_t tiles):
    """The farthest grid columns a reader of the staging reads past its last: its taps'
    largest shift along the staged grid, plus `tiles` (whole tiles past it)."""
    return max([tap_offset(st, 0, t) % st.pstep for t in kernel_taps(ksize, dilation)]) + tiles


cdef list kernel_taps(tuple ksize, dilation):
    """The taps (kd * dd, kh * dh, kw * dw) of a kernel of ksize, kd outermost."""
    return [(kd * dilation[0], kh * dilation[1], kw * dilation[2]) for kd in range(ksize[0])
            for kh in range(ksize[1]) for kw in range(ksize[2])]


cdef object tap_offsets(const Stage *st, Py_ssize_t nchan, list taps):
    """tap_offset of every (channel c < nchan, tap), c outermost, as an intp array: the rows
    of xcol (built by NumPy: a Python loop over the rows cost 30 ns a row, 0.14 ms a call for
    512 channels 3x3, a third of such a layer's forward pass at batch 1 on 7x7)."""
    return channel_rows(nchan, st.chan, [tap_offset(st, 0, t) for t in taps])


cdef object channel_rows(Py_ssize_t nchan, Py_ssize_t step, list offsets):
    """c * step + offsets[t] for every (c < nchan, t), c outermost, as an intp array."""
    return (np.arange(nchan, dtype=np.intp)[:, None] * step
            + np.array(offsets, dtype=np.intp).reshape(1, -1)).reshape(-1)
