# The forward-style product (included by tiled.pxi), for the forward pass (one phase) and the
# input gradient (one phase per stride residue):
#     dst[n, g*M + i, col(q)] = bias + sum_k A_phase[g][i, k] staged[boff[k] + q]
# with A the weight (packed in panels of mr rows, or read in place), the staged source read in
# place at the offsets boff of its rows k, and col(q) the destination of valid grid column q.
# The work is cut into items (block of images, group, phase, block of grid columns, block of
# rows) by the problem alone; each item computes its outputs in full, in a fixed order.

cdef struct Phase:
    Py_ssize_t K            # rows of B (channels x taps of this phase)
    Py_ssize_t a_off        # offset of this phase's packed A (all groups) in apack
    Py_ssize_t k_off        # offset of this phase's rows in the B-offset table
    Py_ssize_t grid[3]      # sizes of the valid grid
    Py_ssize_t ncols        # grid columns up to the last valid one (compact: valid ones)
    # pieces: 0, every grid column; 1 or 2 (compact), the valid columns alone, each vector of
    # a tile from as many runs of a grid row (compact_phases)
    Py_ssize_t pieces
    Py_ssize_t nblk         # work items per (image, group)
    Py_ssize_t dst_base     # destination of grid column (a, b, e):
    Py_ssize_t dstep[3]     # (dst_base + a*dstep[0] + b*dstep[1] + e*dstep[2])
    Py_ssize_t taps[3]      # taps along each axis, the last innermost (K: channels x taps)


cdef struct Product:
    Py_ssize_t N, G, M
    Py_ssize_t mr           # rows of the tile (tile_rows(M)); A is packed in panels of mr
    Py_ssize_t src_img, src_grp
    Py_ssize_t dst_img, dst_grp, dst_row
    Py_ssize_t nphase
    Py_ssize_t items_ng     # work items per (image, group): the sum of the phases' nblk
    const Py_ssize_t *order  # item r of an (image, group): (phase, column block) at 2r, 2r + 1
    const Py_ssize_t *bstart  # the first of those pairs of each column block (block_starts)
    Py_ssize_t nblocks      # column blocks: the most of any phase
    Py_ssize_t ncb          # grid columns per column block (compact_phases)
    Py_ssize_t kmost        # the most columns of A of any phase (compact_phases)
    Py_ssize_t nimg         # images per work item, and their blocks (see split_work)
    Py_ssize_t nib
    Py_ssize_t nrb          # row blocks per work item of a column block
    Py_ssize_t rblk         # tile panels (of mr rows) per row block
    bint gathered           # A is the weight read in place (lc_tile_g), not packed panels
    bint wide               # many grid columns times columns of A (choose_tiles)
    bint stream_a           # packed A beyond STREAM_A_BYTES: the tiles ask for it ahead
    bint near_b             # B's rows alias in the caches: the tiles ask for them nearer ahead
    Py_ssize_t a_rs         # gathered A: the weight's step from one row of A to the next
    bint a_along_k          # and each row's columns one after the other (aoff[k] = k)
    Py_ssize_t a_grp        # and from one group to the next
    # by_pixel: tiles of pixels by channels (pixel_tiles), A packed in panels of mr = NR rows,
    # read as lc_tile_p's B
    bint by_pixel
    # pixel tiles: per element of one staged channel, whether it comes from the source (1) or
    # is padding (0); NULL where nothing is padding (a source read in place)
    const unsigned char *valid
    Stage st

cdef struct Packing:
    # A packed by the work items (pack_first): each row block of each group by the first item
    # that reads it.  state: per (group, row block), claim_work's; NULL where A is packed before
    # the items run, or read in place
    int *state
    const void *w           # the weight
    const Py_ssize_t *kpos  # the forward pass: pack_panels' column order (NULL: w's own)
    # the input gradient: pack_phase_panel's w offsets (NULL: the forward pass), output channels
    # per group, taps and blocks of columns
    const Py_ssize_t *aoff
    Py_ssize_t Og, KS, cb


cdef struct Item:
    # One work item of the forward-style product (find_item)
    Py_ssize_t ng           # image block * G + group: names its staged slices
    Py_ssize_t g            # group
    Py_ssize_t n0, nimg     # its images n0 .. n0 + nimg - 1
    Py_ssize_t f            # its phase
    Py_ssize_t q0, ncols    # its grid columns q0 .. q0 + ncols - 1
    Py_ssize_t ip0, ip1     # its tile panels (of mr rows) ip0 .. ip1 - 1
    Py_ssize_t i0, i1       # and their rows i0 .. i1 - 1 (within M)


cdef struct Runs:
    # The runs of valid columns of one tile (tile_runs): where they start, and how long they are
    Py_ssize_t n
    Py_ssize_t start[MAX_NR]
    Py_ssize_t length[MAX_NR]


# ---------------------------------------------------------------------------------------------
# The register tiles and the panels of A.

cdef Py_ssize_t tile_rows(Py_ssize_t M) noexcept nogil:
    """Rows of the forward-style tile for a product with M rows: LC_MR_B, or the fewest of 1, 2
    and 4 that hold all M (so that one or three channels do not leave most of a tile idle)."""
    if M <= 2:
        return M if M > 0 else 1
    return 4 if M <= 4 else LC_MR_B


cdef inline Py_ssize_t row_panels(const Product *p) noexcept nogil:
    """The panels of p.mr rows that hold the product's M rows."""
    return (p.M + p.mr - 1) // p.mr


cdef inline Py_ssize_t packed_phase(const Product *p, const Phase *ph) noexcept nogil:
    """Elements of one group's packed A for phase ph: its K columns in each of the panels of
    p.mr rows (row_panels)."""
    return row_panels(p) * p.mr * ph.K


cdef inline bint short_k(Py_ssize_t K, Py_ssize_t columns, Py_ssize_t itemsize) noexcept nogil:
    """Whether B for K rows of `columns` columns fits in SHORT_K_BYTES: a short K, few sums
    for each output (product_tiles' order of panels, whole_rows)."""
    return K * columns * itemsize <= SHORT_K_BYTES


cdef inline void panel(const Product *p, const element *a_g, Py_ssize_t ip, Py_ssize_t K,
                       Py_ssize_t k0, Py_ssize_t kc, const Py_ssize_t *aoff, int nv,
                       const element *b, const Py_ssize_t *boff, const Py_ssize_t *vo,
                       Py_ssize_t pieces, Py_ssize_t mw, element *c, Py_ssize_t ldc,
                       bint beta) noexcept nogil:
    """Rows ip * mr .. ip * mr + mw - 1 of C (at c, rows ldc apart) over A's columns k0 ..
    k0 + kc - 1, B's vectors of columns one after the other from b, or (a compact phase's)
    each from `pieces` runs at b + vo[v * pieces + r] (ROW_PIECES: from two grid rows by
    masks, tile_r).  Packed A: one tile of mr rows (the packed panel is zero past M).
    Gathered A: tiles of mr, 4, 2 and 1 rows, so that no row past M is read."""
    cdef Py_ssize_t MR = p.mr, r0 = 0, rr
    cdef int pf = (LC_PF_A if p.stream_a else 0) | (LC_PF_NEAR_B if p.near_b else 0)
    if not p.gathered:
        if pieces == ROW_PIECES:
            tile_r(MR, nv, kc, a_g + (ip * K + k0) * MR, b, boff, vo, c, ldc, beta, pf)
        elif pieces:
            tile_v(pieces, MR, nv, kc, a_g + (ip * K + k0) * MR, b, boff, vo, c, ldc, beta,
                   pf)
        else:
            tile_b(MR, nv, kc, a_g + (ip * K + k0) * MR, b, boff, c, ldc, beta, pf)
        return
    while r0 < mw:
        rr = mw - r0
        rr = MR if rr >= MR else 4 if rr >= 4 else 2 if rr >= 2 else 1
        if pieces:
            tile_gc(pieces, rr, nv, kc, a_g + (ip * MR + r0) * p.a_rs, aoff + k0, p.a_rs, b,
                    boff, vo, c + r0 * ldc, ldc, beta)
        else:
            tile_g(rr, nv, kc, a_g + (ip * MR + r0) * p.a_rs, aoff + k0, p.a_rs, b, boff,
                   c + r0 * ldc, ldc, beta)
        r0 += rr


cdef inline Py_ssize_t blocked_column(Py_ssize_t c, Py_ssize_t t, Py_ssize_t C, Py_ssize_t T,
                                      Py_ssize_t cb) noexcept nogil:
    """The column k of A (row of B) of channel c < C and tap t < T where the columns run in
    blocks of cb channels, tap by tap within a block, each tap's channels together: cb = 1
    is channel by channel, each channel's taps together (channel_rows); pixel tiles take
    PIX_CB (tap_blocks)."""
    cdef Py_ssize_t b0 = c - c % cb
    return b0 * T + t * min(cb, C - b0) + c - b0


cdef inline Py_ssize_t read_rows(Py_ssize_t mw, Py_ssize_t MR, Py_ssize_t VW) noexcept nogil:
    """The rows of a packed panel of A with mw rows of data that the tiles read, so that those
    past mw are zero: all MR where a panel is at most a vector (the forward-style tiles
    broadcast every row), else up to the end of the last vector (pixel tiles read a last panel's
    vectors alone: a 16-channel group's 48-row panels were two thirds zeros, written on every
    call).  VW: the lanes of a vector."""
    return round_up(mw, VW) if MR % VW == 0 else MR


cdef void pack_panels(const element *w, Py_ssize_t M, Py_ssize_t MR, Py_ssize_t K,
                      const Py_ssize_t *kpos, element *dst, Py_ssize_t ip0, Py_ssize_t ip1,
                      Py_ssize_t kb0, Py_ssize_t kb1) noexcept nogil:
    """Panels ip0 .. ip1 - 1 of the forward pass's A from the weight w of one group (M rows of
    K columns, K apart), w's columns of blocks kb0 .. kb1 - 1 (of PACK_BLOCK): dst[(i // MR) *
    K * MR + kpos[k] * MR + i % MR] = w[i * K + k], rows past M zero; kpos NULL: w's own order
    (kpos[k] = k).  Copied PACK_BLOCK columns of w at a time for all the panels, so that what
    those columns read of w stays in cache.  Where the panels are whole vectors of rows (pixel
    tiles' NR), each vector of rows is transposed a vector's lanes of columns at a time in
    registers: into place in w's own order, else into tmp, whose rows are then copied each to
    its column; the rest copied element by element.
    Element by element, packing the 4 MiB weight of a 1x1 layer cost a sixth of its forward
    pass, and the 16 MiB of pix2pix's 512-channel 4x4 layer in blocks of channels more than its
    product of 32 pixels."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t ip, i0, mw, kb, k0, k1, kt, kv, k, kk, r, r0, rt, rb, j, zr
    cdef element tmp[16 * 16]       # a vector's lanes squared (LC_VEC_BYTES <= 64)
    cdef element *d
    for kb in range(kb0, kb1):
        k0 = kb * PACK_BLOCK
        k1 = min(K, k0 + PACK_BLOCK)
        kt = k0 + (k1 - k0) // VW * VW     # columns k0 .. kt - 1 transposed in blocks
        for ip in range(ip0, ip1):
            i0 = ip * MR
            mw = min(MR, M - i0)
            d = dst + i0 * K
            rt = mw // VW * VW if MR % VW == 0 else 0     # of the rows < rt
            zr = read_rows(mw, MR, VW)
            for kv in range((kt - k0) // VW):
                k = k0 + kv * VW
                for rb in range(rt // VW):
                    transpose_block(w + (i0 + rb * VW) * K + k, K,
                                    d + k * MR + rb * VW if kpos == NULL else tmp,
                                    MR if kpos == NULL else VW)
                    if kpos == NULL:
                        continue
                    for j in range(VW):
                        memcpy(d + kpos[k + j] * MR + rb * VW, tmp + j * VW,
                               VW * sizeof(element))
            for k in range(k0, k1):
                kk = k if kpos == NULL else kpos[k]
                r0 = rt if k < kt else 0
                for r in range(r0, mw):
                    d[kk * MR + r] = w[(i0 + r) * K + k]
                for r in range(mw, zr):
                    d[kk * MR + r] = 0


cdef void pack_groups(const element *w, Py_ssize_t G, Py_ssize_t M, Py_ssize_t MR,
                      Py_ssize_t K, const Py_ssize_t *kpos, element *dst,
                      int nthreads) noexcept nogil:
    """The packed A of the forward pass's G groups (pack_panels): group g's from w + g * M * K
    to dst + g * round_up(M, MR) * K, on nthreads threads, a (group, panel) pair at a time,
    or in parts of a panel's columns (pack_parts; packing is a copy: who packs a panel changes
    nothing in it)."""
    cdef Py_ssize_t npan = (M + MR - 1) // MR, nkb = (K + PACK_BLOCK - 1) // PACK_BLOCK
    cdef Py_ssize_t item, g, ip, part, parts
    if G * npan * MR * K < PACK_SERIAL:
        nthreads = 1
    parts = pack_parts(G * npan, nkb, nthreads)
    # race-free: each item writes its own columns of its own panel of dst
    for item in prange(G * npan * parts, schedule="static", num_threads=nthreads):
        part = item % parts
        g = item // parts // npan
        ip = item // parts % npan
        pack_panels(w + g * M * K, M, MR, K, kpos, dst + g * npan * MR * K, ip, ip + 1,
                    nkb * part // parts, nkb * (part + 1) // parts)


cdef inline Py_ssize_t pack_parts(Py_ssize_t pairs, Py_ssize_t most,
                                  int nthreads) noexcept nogil:
    """The parts (at most `most`) each of `pairs` (group, panel) pairs of a packing is cut
    into, so that nthreads threads have about PACK_ITEMS items each: 1 where the pairs are
    enough.  Three panels of 128 channels on two threads had one thread pack two while the
    other waited."""
    if pairs >= PACK_ITEMS * nthreads:
        return 1
    return min(most, (PACK_ITEMS * nthreads + pairs - 1) // pairs)


cdef void pack_phases(const element *w, Py_ssize_t G, Py_ssize_t Og, Py_ssize_t M,
                      Py_ssize_t KS, Py_ssize_t MR, Py_ssize_t nphase, const Phase *phases,
                      const Py_ssize_t *aoff, Py_ssize_t cb, element *dst,
                      int nthreads) noexcept nogil:
    """The packed A of every phase of an input gradient, in one pass over w (G * Og, M, KS):
    phase f's A[c, (o, j)] = w[g * Og + o, c, t_j] for its nt = K_f / Og taps t_j, column
    (o, j) at blocked_column(o, j, Og, nt, cb) (aoff, at phases[f].k_off, holds w's offsets
    o * M * KS + t_j in that order), laid out as pack_groups lays it out at dst +
    phases[f].a_off (group g, panel ip of MR rows c at (g * npan + ip) * MR * K_f, column k at
    k * MR; rows past M zero).  An item is a (group, panel) pair: for each o it reads the
    panel's MR rows of w[o] (MR * KS contiguous elements) once for all the phases.  Packed
    phase by phase, each element was gathered a stride KS apart,
    and each line of w read once per phase: a quarter of the time of a transposed 4x4 stride-2
    512 -> 256 layer at batch 1.  With few pairs an item is a part of a pair's o (pack_parts)."""
    cdef Py_ssize_t npan = (M + MR - 1) // MR, item, part, parts
    if G * npan * MR * Og * KS < PACK_SERIAL:
        nthreads = 1
    parts = pack_parts(G * npan, Og, nthreads)
    # race-free: each item writes its own columns of its own panel of every phase
    for item in prange(G * npan * parts, schedule="static", num_threads=nthreads):
        part = item % parts
        pack_phase_panel(w, item // parts // npan, item // parts % npan, npan, Og, M, KS, MR,
                         nphase, phases, aoff, cb, dst, Og * part // parts,
                         Og * (part + 1) // parts)


cdef inline bint taps_at_once(Py_ssize_t KS, Py_ssize_t rows) noexcept nogil:
    """Whether pack_phase_panel transposes a panel's rows (`rows` of them, read_rows) of KS
    taps at once: where they fit in PACK_TAPS elements."""
    return KS * rows <= PACK_TAPS


cdef inline void pack_phase_panel(const element *w, Py_ssize_t g, Py_ssize_t ip,
                                  Py_ssize_t npan, Py_ssize_t Og, Py_ssize_t M, Py_ssize_t KS,
                                  Py_ssize_t MR, Py_ssize_t nphase, const Phase *phases,
                                  const Py_ssize_t *aoff, Py_ssize_t cb, element *dst,
                                  Py_ssize_t o0, Py_ssize_t o1) noexcept nogil:
    """Panel ip of group g of every phase, its columns of w's rows o0 .. o1 - 1 (of Og), for
    pack_phases.  For each o the panel's rows of w[o] (one run of mw * KS elements) are
    transposed into tmp, tap by tap, where they fit (taps_at_once), and each phase's columns
    copied from there; the run PACK_AHEAD rows of o further on is asked for meanwhile (the
    runs lie M * KS apart, which the prefetchers do not follow).  Gathered from w a tap at a
    time, a stride KS apart, and waiting for each run, the packing was a quarter to a third of
    the forward pass of transposed layers with large weights at batch 1 (kernel 16 stride 8,
    512 -> 256 channels on 200 samples; 4x4 stride 2, 1024 -> 256 from 16x16), which now run
    1.10-1.12x faster.  A 1x1 kernel's run is its column as it is, copied straight (through
    tmp, the packing was a third of a 2048 -> 512 1x1 input gradient on 7x7 at batch 4)."""
    cdef Py_ssize_t c0 = ip * MR, mw = min(MR, M - c0), o, f, j, r, nt, tap, t, u
    cdef Py_ssize_t zr = read_rows(mw, MR, LC_VEC_BYTES // sizeof(element))
    cdef Py_ssize_t span = mw * KS * sizeof(element)
    cdef element tmp[PACK_TAPS]
    cdef bint by_tap = taps_at_once(KS, zr)
    cdef const element *src
    cdef element *d
    cdef element *dk
    if by_tap:
        for t in range(KS):
            for r in range(mw, zr):
                tmp[t * zr + r] = 0
    for o in range(o0, o1):
        src = w + ((g * Og + o) * M + c0) * KS
        if o + PACK_AHEAD < o1:
            for u in range(0, span, 64):
                lc_prefetch(<const char *> (src + PACK_AHEAD * M * KS) + u)
        if by_tap and KS > 1:
            for r in range(mw):
                for t in range(KS):
                    tmp[t * zr + r] = src[r * KS + t]
        for f in range(nphase):
            nt = phases[f].K // Og
            d = dst + phases[f].a_off + (g * npan + ip) * MR * phases[f].K
            for j in range(nt):
                tap = aoff[phases[f].k_off + blocked_column(0, j, Og, nt, cb)]
                dk = d + blocked_column(o, j, Og, nt, cb) * MR
                if KS == 1:     # the panel's rows of w[o] are its column, as they are
                    copy_short(dk, src, mw)
                    zero_run(dk + mw, zr - mw)
                    continue
                if by_tap:
                    copy_short(dk, tmp + tap * zr, zr)
                    continue
                for r in range(mw):
                    dk[r] = src[r * KS + tap]
                for r in range(mw, zr):
                    dk[r] = 0


cdef inline bint packs_first(const Product *p, int nthreads) noexcept nogil:
    """Whether the items of p pack A themselves (pack_first) rather than all threads together
    before they run (pack_groups, pack_phases): where A is packed and has at least two
    (group, row block) pieces a thread.  Packed before, the panels went to the threads in
    contiguous shares, while the items that read them go to the threads one at a time: on
    two threads each packed panel was read from the other core's cache and written back
    there on the next call, and packing took as long as on one thread (a 1x1 layer's 4 MiB
    weight, 512 -> 2048 channels on 7x7 at batch 4: 0.17 ms of the pass on one thread, 0.23
    ms on two).  An item's row block packed by its thread is then read from its own L2.  Not
    where the threads take whole slices of several image blocks of the same groups
    (run_product's by_slices): they would go through the same row blocks side by side, one
    packing each while the other waited."""
    return (not p.gathered and p.G * p.nrb >= 2 * nthreads
            and (nthreads == 1 or p.nib == 1 or not by_slices(p, nthreads)))


cdef void pack_before(const Product *p, const Phase *phases, const Packing *pk,
                      element *apack, int nthreads) noexcept nogil:
    """All of A packed on nthreads threads before the items run: pack_groups (the forward
    pass) or pack_phases (the input gradient)."""
    if pk.aoff == NULL:
        pack_groups(<const element *> pk.w, p.G, p.M, p.mr, phases[0].K, pk.kpos, apack,
                    nthreads)
    else:
        pack_phases(<const element *> pk.w, p.G, pk.Og, p.M, pk.KS, p.mr, p.nphase, phases,
                    pk.aoff, pk.cb, apack, nthreads)


cdef void pack_first(const Product *p, const Phase *phases, const Item *it,
                     const Packing *pk, element *apack) noexcept nogil:
    """The packed A of the item's group and row block, packed by this thread if it is the
    first to read them, else waited for; as pack_groups (the forward pass) or pack_phases
    (the input gradient) pack those panels.  Who packs a panel changes nothing in it."""
    cdef int *state = pk.state + it.g * p.nrb + it.ip0 // p.rblk
    cdef Py_ssize_t npan = row_panels(p), K = phases[0].K, ip
    cdef const element *w = <const element *> pk.w
    if work_done(state):
        return
    if not claim_work(state):
        await_work(state)
        return
    if pk.aoff == NULL:
        pack_panels(w + it.g * p.M * K, p.M, p.mr, K, pk.kpos, apack + it.g * npan * p.mr * K,
                    it.ip0, it.ip1, 0, (K + PACK_BLOCK - 1) // PACK_BLOCK)
    else:
        for ip in range(it.ip0, it.ip1):
            pack_phase_panel(w, it.g, ip, npan, pk.Og, p.M, pk.KS, p.mr, p.nphase, phases,
                             pk.aoff, pk.cb, apack, 0, pk.Og)
    publish_work(state)


cdef inline void copy_run(element *d, Py_ssize_t ds, const element *src, Py_ssize_t n,
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


# ---------------------------------------------------------------------------------------------
# One work item: the steps of product_item.

cdef inline void find_item(const Product *p, const Phase *phases, Py_ssize_t item,
                           Py_ssize_t NCB, Item *it) noexcept nogil:
    """Work item `item`: items run over (group, image block), then the (phase, column block)
    pairs of p.order, then the row blocks, innermost; NCB grid columns per column block.
    Groups outermost: a thread's share of the items (run_product) then reads the groups whose
    weight it packed (pack_groups, pack_phases: the same share of groups), and packing does not
    take each line of A back from the other core's cache (image blocks outermost, both threads
    read every group: RegNet's 384 channels in 24 groups on 7x7 at batch 8 gained 1.4x from
    the second thread, a tenth of the pass packing)."""
    cdef Py_ssize_t per_ng = p.items_ng * p.nrb, mpan = row_panels(p)
    cdef Py_ssize_t r = item % per_ng, rb = r % p.nrb
    r = r // p.nrb
    it.ng = item // per_ng
    it.g = it.ng // p.nib
    it.n0 = it.ng % p.nib * p.nimg
    it.nimg = min(p.N - it.n0, p.nimg)
    it.f = p.order[2 * r]
    it.q0 = p.order[2 * r + 1] * NCB
    it.ncols = min(NCB, phases[it.f].ncols - it.q0)
    it.ip0 = rb * p.rblk
    it.ip1 = min(mpan, it.ip0 + p.rblk)
    it.i0 = it.ip0 * p.mr
    it.i1 = min(p.M, it.ip1 * p.mr)


cdef inline Py_ssize_t compact_column(const Stage *st, const Phase *ph,
                                      Py_ssize_t j) noexcept nogil:
    """The grid column of valid column j of a compact phase (its valid columns in order)."""
    cdef Py_ssize_t plane = ph.grid[1] * ph.grid[2], r = j % plane
    return ((j // plane) * st.q[1] + r // ph.grid[2]) * st.q[2] + r % ph.grid[2]


cdef Py_ssize_t row_pieces(const Stage *st, const Phase *ph, Py_ssize_t j, int nv,
                           Py_ssize_t VW, Py_ssize_t *vo) noexcept nogil:
    """For tile_r, the nv vectors (of VW lanes) of valid columns j on of a compact phase whose
    vectors span two grid rows at most (ROW_PIECES): for each, the offsets of its lanes in its
    first row and in the next (each less the lanes before them), relative to the grid column
    of j, and their masks (bits 0 .. VW - 1, bits VW .. 2 VW - 1), no lane past the phase's
    last valid column; returns that grid column.  Not inlined: in product_tile, it made GCC
    stop inlining the grid's tiles into product_tiles."""
    cdef Py_ssize_t v, c, n0, n1
    cdef Py_ssize_t q = compact_column(st, ph, j)
    for v in range(nv):
        c = j + v * VW
        n0 = min(VW, ph.grid[2] - c % ph.grid[2], max(ph.ncols - c, 0))
        n1 = min(VW - n0, max(ph.ncols - c - n0, 0))
        vo[3 * v] = compact_column(st, ph, c) - q if n0 > 0 else 0
        vo[3 * v + 1] = compact_column(st, ph, c + n0) - q - n0 if n1 > 0 else 0
        vo[3 * v + 2] = ((1 << n0) - 1) | (((1 << n1) - 1) << (n0 + VW))
    return q


cdef inline void item_columns(const Stage *st, const Phase *ph, const Item *it, Py_ssize_t NR,
                              Py_ssize_t *dcol, Py_ssize_t *run) noexcept nogil:
    """dcol and run (grid_columns) of the item's columns (a compact phase's: valid columns
    alone, each run as long as their destinations follow each other), and junk after them up
    to a whole number of tiles of NR columns."""
    cdef Py_ssize_t j, plane = ph.grid[1] * ph.grid[2], r = it.q0 % plane
    cdef Py_ssize_t a = it.q0 // plane, b = r // ph.grid[2], e = r % ph.grid[2]
    if ph.pieces:
        for j in range(it.ncols):
            dcol[j] = ph.dst_base + a * ph.dstep[0] + b * ph.dstep[1] + e * ph.dstep[2]
            e += 1
            if e == ph.grid[2]:
                e = 0
                b += 1
                if b == ph.grid[1]:
                    b = 0
                    a += 1
        for j in reversed(range(it.ncols)):
            run[j] = (run[j + 1] + 1 if j + 1 < it.ncols
                      and dcol[j + 1] == dcol[j] + ph.dstep[2] else 1)
    else:
        grid_columns(it.q0, it.ncols, st.q, ph.grid, ph.dst_base, ph.dstep, dcol, run)
    for j in range(it.ncols, (it.ncols + NR - 1) // NR * NR):
        dcol[j] = -1
        run[j] = 0


cdef inline void tile_runs(const Py_ssize_t *run, Py_ssize_t j0, Py_ssize_t width,
                           Runs *runs) noexcept nogil:
    """The runs of valid columns among the tile's columns j0 .. j0 + width - 1 (none: the tile
    is all junk)."""
    cdef Py_ssize_t t = j0, ln
    runs.n = 0
    while t < j0 + width:
        ln = min(run[t], j0 + width - t)
        if ln == 0:
            t += 1
            continue
        runs.start[runs.n] = t
        runs.length[runs.n] = ln
        runs.n += 1
        t += ln


cdef inline void store_tile(const element *ctile, Py_ssize_t mw, Py_ssize_t width,
                            Py_ssize_t j0, element *d0, Py_ssize_t ldd, const Py_ssize_t *dcol,
                            Py_ssize_t ds, const Runs *runs, bint add) noexcept nogil:
    """Rows i < mw of a computed tile (ctile, width columns a row, grid columns j0 on) into
    the destination rows d0 + i * ldd at dcol, (=, +=) run by run of valid columns: at
    strides 1 and 2 each run in all rows by lc_put (LC_PUT_RUNS), else row by row, run by run
    by copy_run."""
    cdef Py_ssize_t i, sg, t
    cdef element *d
    cdef const element *cr
    if LC_PUT_RUNS and ds <= 2:
        for sg in range(runs.n):
            t = runs.start[sg]
            put_run(d0 + dcol[t], ldd, ds, ctile, width, mw, t - j0, runs.length[sg], add)
        return
    for i in range(mw):
        d = d0 + i * ldd
        cr = ctile + i * width - j0
        for sg in range(runs.n):
            t = runs.start[sg]
            copy_run(d + dcol[t], ds, cr + t, runs.length[sg], add)


cdef inline Py_ssize_t item_sums_at(Py_ssize_t itemsize) noexcept nogil:
    """Where a thread's item sums (product_tile) start in its scratch after the staged slices,
    in elements of itemsize bytes: after a tile and a block for transposes (whole cache
    lines)."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // itemsize
    return round_up(max(LC_MR_B, VW) * (LC_NV_B * VW) + VW * VW, 64 // itemsize)


cdef inline Py_ssize_t dot_room(const Product *p) noexcept nogil:
    """The scratch a thread keeps for the columns of B that product_dots gathers: two rows of
    p.kmost (the most columns of A of a phase) for each image of an item, where A is read in
    place (p.gathered: only then are columns summed as dot products); 0 elsewhere."""
    return p.nimg * 2 * p.kmost if p.gathered and not p.by_pixel else 0


cdef inline Py_ssize_t dots_at(const Product *p, Py_ssize_t itemsize) noexcept nogil:
    """Where the gathered columns (dot_room) start in a thread's scratch, in elements of
    itemsize bytes: after the staged slices, a tile and a block for transposes (item_sums_at),
    and an item's sums."""
    cdef Py_ssize_t NR = LC_NV_B * LC_VEC_BYTES // itemsize
    cdef Py_ssize_t sums = (p.nimg * p.rblk * p.mr * round_up(p.ncb, NR)
                            if keeps_sums(p.kmost) and not p.by_pixel else 0)
    return round_up(p.nimg * p.st.size + item_sums_at(itemsize) + sums, 64 // itemsize)


cdef inline Py_ssize_t dot_keys_at(const Product *p) noexcept nogil:
    """Where the keys of the gathered columns (product_dots) start in a thread's index
    scratch: after the staged slices' name, an item's dcol and run (p.ncb each) and a pixel
    tile's entries; DOT_KEY entries for each image of an item."""
    return 2 + 2 * p.ncb + (6 * p.nimg * p.ncb if p.by_pixel else 0)


cdef inline bint keeps_sums(Py_ssize_t K) noexcept nogil:
    """Whether a product of K columns of A (a phase's) runs them in more than SUM_BLOCKS blocks
    of KC, its grid tiles then keeping their sums in the item's rows (product_tile): the one
    test for product_tiles, which uses them, and product_pass, which makes room for them."""
    return K > SUM_BLOCKS * KC


cdef inline void product_tile(const Product *p, const Phase *ph, const Item *it,
                              Py_ssize_t ip0, Py_ssize_t ip1,
                              Py_ssize_t k0, Py_ssize_t kc, int nv, Py_ssize_t j0,
                              Py_ssize_t shift,
                              const Runs *runs, const element **staged, const element *a_g,
                              const Py_ssize_t *boff, const Py_ssize_t *aoff, element *dst_g,
                              const Py_ssize_t *dcol, element *ctile, element *sums,
                              Py_ssize_t lds) noexcept nogil:
    """The item's rows in panels ip0 .. ip1 - 1 of the tile of its columns j0 on (nv vectors of
    columns: grid columns, or a compact phase's valid columns) over A's columns k0 .. k0 + kc
    - 1, for each of its images (innermost, so that each panel of A is read once for all of
    them), added to the sums of the earlier columns of A if k0 > 0.  With a shift, the tile
    computes the columns j0 - shift on (the item's last tile moved back so that it ends at the
    item's last column: tail_shift) and stores those from j0 on.  sums (not NULL where A's
    columns run in several blocks: product_tiles): the item's sums so far, its images' rows
    one after the other, lds apart, grid column j at j; a grid tile that is not whole adds its
    block there, and the last block's sums go to dst run by run, once."""
    cdef Py_ssize_t NR = LC_NV_B * LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t MR = p.mr, width = nv * VW, ip, mw, n, v, q = it.q0 + j0 - shift
    cdef Py_ssize_t vo[12]      # at least 3 * LC_NV_B
    cdef element *d0
    if ph.pieces == ROW_PIECES:
        q = row_pieces(&p.st, ph, it.q0 + j0, nv, VW, vo)
    elif ph.pieces:     # each piece of a vector of valid columns lies within a grid row
        q = compact_column(&p.st, ph, it.q0 + j0)
        for v in range(nv * ph.pieces):
            vo[v] = compact_column(&p.st, ph, it.q0 + j0 + v * (VW // ph.pieces)) - q
    # the whole tile lands on one contiguous output row (its first run is all of it): store in
    # place
    cdef bint whole = ph.dstep[2] == 1 and runs.length[0] >= width and shift == 0
    cdef bint summed = sums != NULL and shift == 0 and not ph.pieces
    cdef element *c
    for ip in range(ip0, ip1):
        mw = min(MR, p.M - ip * MR)
        for n in range(it.nimg):
            d0 = dst_g + n * p.dst_img + ip * MR * p.dst_row
            if whole and mw == MR:
                panel(p, a_g, ip, ph.K, k0, kc, aoff, nv, staged[n] + q, boff + k0, vo,
                      ph.pieces, mw, d0 + dcol[j0], p.dst_row, k0 > 0)
                continue
            if summed:
                c = sums + (n * (it.ip1 - it.ip0) + ip - it.ip0) * MR * lds + j0
                panel(p, a_g, ip, ph.K, k0, kc, aoff, nv, staged[n] + q, boff + k0, vo, 0, mw,
                      c, lds, k0 > 0)
                if k0 + kc >= ph.K:
                    store_tile(c, mw, lds, j0, d0, p.dst_row, dcol, ph.dstep[2], runs, False)
                continue
            panel(p, a_g, ip, ph.K, k0, kc, aoff, nv, staged[n] + q, boff + k0, vo, ph.pieces,
                  mw, ctile, width, 0)
            store_tile(ctile, mw, width, j0 - shift, d0, p.dst_row, dcol, ph.dstep[2], runs,
                       k0 > 0)


cdef inline Py_ssize_t tail_shift(const Product *p, const Phase *ph, const Item *it,
                                  Py_ssize_t j0, Py_ssize_t width) noexcept nogil:
    """How far the item's tile of columns j0 .. j0 + width - 1 moves back so as to end at
    the item's last column: where it runs past it, over a staging that may be read in place
    (st.identity: whole vectors past the last column would then read past the source array)
    and has the columns before (the source's own pixels: no junk, no compact columns); else
    0.  The moved tile computes the same sums for its columns (each column's sum runs over A's
    columns alone, lane by lane), and stores only the columns from j0 on.  So the last vector
    of a 1x1 layer's image whose pixels are not whole vectors (55x55, 14x14, 7x7) reads the
    source, which was otherwise staged for it, a copy of the whole slice on every call (128 ->
    16 channels on 55x55 at batch 1 ran at 0.43 of PyTorch, the copy a third of the time)."""
    cdef Py_ssize_t shift = j0 + width - it.ncols
    if shift <= 0 or not (p.st.identity or p.st.band) or ph.pieces or shift > it.q0 + j0:
        return 0
    return shift


cdef inline void product_tiles(const Product *p, const Phase *ph, const Item *it,
                               const element **staged, const element *a_g,
                               const Py_ssize_t *boff, const Py_ssize_t *aoff, element *dst_g,
                               const Py_ssize_t *dcol, const Py_ssize_t *run,
                               element *ctile, element *memo,
                               Py_ssize_t *keys) noexcept nogil:
    """The sums of the item: A's columns in blocks of KC, and within a block the item's grid
    columns in tiles of NR, then the last columns in tiles of two vectors and one
    (tail_vectors); tiles that are all junk are skipped.  Each tile runs over all the item's
    panels of rows, which then read it from L1; where B for all of K and NCB_TILES tiles
    of columns fits in SHORT_K_BYTES (a short K: few input channels and taps), each block of
    SHORT_K_PANELS panels of rows runs over all the tiles instead, so that it writes its rows
    of dst as runs, line after line.  Tile after tile, with all the rows between, the lines
    that a tile shares with the next (rows that do not start on a line) left L1 in between
    and were read for ownership twice, and the output of such a product is large against its
    sums: wav2vec 2.0's first layer (1 -> 512 channels, kernel 10, stride 5, 16000 samples)
    1.44x faster, 16 -> 96 1x1 on 112x112 1.35-1.6x, 24 -> 144 on 56x56 1.1-1.17x (float32,
    one thread; float64 1.35-1.44x; two threads 1.2-1.3x, but 0.92-0.95x for 16 -> 96 on
    112x112 at batch 1 and its input gradient, where both orders write dst at about 15 GB/s).
    Panels one by one or four at a time ran as fast; eight, 0.75-0.85x."""
    cdef Py_ssize_t NR = LC_NV_B * LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t K = ph.K, nfull = it.ncols // NR, k0, kc, jt, j0, nv, ip
    cdef Py_ssize_t tail = (it.ncols - nfull * NR + VW - 1) // VW     # vectors after them
    cdef bint short = K > 0 and short_k(K, min(it.ncols, NCB_TILES * NR) * it.nimg,
                                        sizeof(element))
    # columns of A per pass over the tiles, and panels of rows per tile
    cdef Py_ssize_t kstep = K if short else KC
    cdef Py_ssize_t rstep = SHORT_K_PANELS if short else max(it.ip1 - it.ip0, 1)
    cdef Runs runs
    # the last columns apart, for all the item's rows at once (dot_columns), or in tiles
    cdef int by_dots = dot_columns(p, ph, it, nfull * NR, run, VW)
    # a last vector after whole tiles of three: two tiles of two instead of three and one
    # (in one process switching on every call, float32 one thread: a GAN's 4x4 stride-2 layer
    # from 8x8 at batch 1, four vectors a phase, 1.04x; 3x3 on 28x28 1.02x; others 1.00)
    if not by_dots and tail == 1 and nfull > 0 and LC_NV_B == 3:
        nfull -= 1
        tail += LC_NV_B
    cdef Py_ssize_t ntiles = nfull if by_dots else nfull + tail_tiles(tail)
    # the sums of grid tiles that are not whole, kept in the item's rows (product_tile) where
    # A's columns run in several blocks, rather than added into dst run by run each block
    cdef element *sums = (ctile + item_sums_at(sizeof(element)) if keeps_sums(K) and not short
                          else NULL)
    cdef Py_ssize_t lds = round_up(it.ncols, NR)
    k0 = 0
    while k0 < K:
        kc = min(kstep, K - k0)
        if by_dots:
            product_dots(p, ph, it, by_dots, k0, kc, nfull * NR, staged, a_g, boff, aoff,
                         dst_g, dcol, run, memo, keys)
        ip = it.ip0
        while ip < it.ip1:
            j0 = 0
            for jt in range(ntiles):
                nv = LC_NV_B if jt < nfull else tail_vectors(tail, jt - nfull)
                tile_runs(run, j0, nv * VW, &runs)
                if runs.n > 0:
                    product_tile(p, ph, it, ip, min(ip + rstep, it.ip1), k0, kc, nv, j0,
                                 tail_shift(p, ph, it, j0, nv * VW), &runs, staged, a_g, boff,
                                 aoff, dst_g, dcol, ctile, sums, lds)
                j0 += nv * VW
            ip += rstep
        k0 += kstep


cdef inline Py_ssize_t valid_columns(const Py_ssize_t *run, Py_ssize_t j0, Py_ssize_t j1,
                                     Py_ssize_t *cols) noexcept nogil:
    """The valid columns among j0 .. j1 - 1, at cols (if not NULL); returns their number."""
    cdef Py_ssize_t t = j0, n = 0, u, v
    while t < j1:
        if run[t] == 0:
            t += 1
            continue
        u = min(t + run[t], j1)
        if cols != NULL:
            for v in range(t, u):
                cols[n + v - t] = v
        n += u - t
        t = u
    return n


cdef inline int dot_columns(const Product *p, const Phase *ph, const Item *it, Py_ssize_t j0,
                            const Py_ssize_t *run, Py_ssize_t VW) noexcept nogil:
    """How the item's columns from j0 on (those after its tiles of whole NR columns) run, where
    A is the weight read in place (VW lanes a vector) and they are at most DOT_COLUMNS valid
    columns: 0, in tiles of one or two vectors; else by product_dots, which sums each column
    apart, DOTS_DOWN_ROWS where A's columns have their rows one after the other (p.a_rs 1: a
    1x1 layer's input gradient) and the item has a vector of rows or more, DOTS_ALONG_K where
    A's rows have their columns one after the other (p.a_along_k: the forward pass).  A 7x7
    image has 49 pixels, 48 in whole tiles and one in a tile of a vector, which reads its row
    of A as broadcasts, each for a vector of work of which one lane is used."""
    cdef Py_ssize_t n
    if not p.gathered or ph.pieces or j0 >= it.ncols:
        return 0
    n = valid_columns(run, j0, it.ncols, NULL)
    if n == 0 or n > DOT_COLUMNS:
        return 0
    if p.a_rs == 1 and it.i1 - it.i0 >= VW:
        return DOTS_DOWN_ROWS
    return DOTS_ALONG_K if p.a_along_k else 0


cdef void product_dots(const Product *p, const Phase *ph, const Item *it, int how,
                       Py_ssize_t k0, Py_ssize_t kc, Py_ssize_t j0, const element **staged,
                       const element *a_g, const Py_ssize_t *boff, const Py_ssize_t *aoff,
                       element *dst_g, const Py_ssize_t *dcol, const Py_ssize_t *run,
                       element *memo, Py_ssize_t *keys) noexcept nogil:
    """The item's valid columns from j0 on (two at most), all its rows, over A's columns k0 ..
    k0 + kc - 1 (added to the earlier ones if k0 > 0), `how` (dot_columns): DOTS_ALONG_K, by
    `dots`, A's rows read in place and the columns of B gathered into two rows of p.kmost
    elements in memo (for image n of the item, at n * 2 * p.kmost); DOTS_DOWN_ROWS, by `down`,
    A's columns and B's elements read in place.  The gathered columns stay in this thread's
    memo for the next item with the same columns of the same image, group and phase (the
    item's other row blocks, which come one after the other): `keys` (DOT_KEY entries an
    image) names them and how many of their elements are there.  Gathered item by item, a
    512 -> 128 1x1 layer on 7x7 at batch 1 gathered its 49th column 16 times, strided loads
    of every channel, a fifth of its time."""
    cdef Py_ssize_t cols[MAX_NR]
    cdef Py_ssize_t ncol = valid_columns(run, j0, it.ncols, cols)
    cdef Py_ssize_t r0 = it.i0, r1 = it.i1, n, nc, j, k, t, u, kmost = p.kmost
    cdef const element *b
    cdef const element *a = a_g + r0 * p.a_rs
    cdef element *d
    cdef element *bcol
    cdef Py_ssize_t *key
    cdef Py_ssize_t image
    cdef bint same
    if ncol == 0:
        return
    nc = min(2, ncol)
    t = cols[0]
    u = cols[nc - 1]
    for n in range(it.nimg):
        b = staged[n] + it.q0
        d = dst_g + n * p.dst_img + r0 * p.dst_row
        if how == DOTS_DOWN_ROWS:
            down(kc, a, aoff + k0, r1 - r0, p.M - r0, b + t, boff + k0, u - t, nc,
                 d + dcol[t], p.dst_row, dcol[u] - dcol[t], k0 > 0)
            continue
        bcol = memo + n * 2 * kmost
        key = keys + n * DOT_KEY
        image = (it.n0 + n) * p.G + it.g
        # named by the places in dst of the columns, which a band's columns (it.q0 0) or a
        # phase's grid do not change
        same = (key[0] == image and key[1] == it.f and key[2] == dcol[t]
                and key[3] == dcol[u])
        if not (same and key[4] >= k0 + kc):
            for j in range(2):
                for k in range(k0, k0 + kc):
                    bcol[j * kmost + k] = b[cols[min(j, nc - 1)] + boff[k]]
            if same and key[4] == k0:
                key[4] = k0 + kc        # the gathered elements run on
            else:
                key[0], key[1], key[2], key[3] = image, it.f, dcol[t], dcol[u]
                key[4] = kc if k0 == 0 else 0
        k = 0
        while k < kc:           # in blocks of KC, as the tiles
            j = min(KC, kc - k)
            dots(j, a + aoff[k0] + k, p.a_rs, r1 - r0, bcol + k0 + k, kmost, nc, d + dcol[t],
                 p.dst_row, dcol[u] - dcol[t], k0 + k > 0)
            k += j


cdef inline Py_ssize_t tail_ones(Py_ssize_t tail) noexcept nogil:
    """One-vector tiles among those of the last `tail` vectors of columns (fewer than
    LC_NV_B): two-vector tiles first, where LC_NV_B is more than two, then one of one vector."""
    return tail % 2 if LC_NV_B > 2 else tail


cdef inline Py_ssize_t tail_tiles(Py_ssize_t tail) noexcept nogil:
    """Tiles of the last `tail` vectors of columns (tail_ones)."""
    return (tail - tail_ones(tail)) // 2 + tail_ones(tail)


cdef inline Py_ssize_t tail_vectors(Py_ssize_t tail, Py_ssize_t t) noexcept nogil:
    """The vectors of tail tile t (tail_tiles)."""
    return 2 if t < (tail - tail_ones(tail)) // 2 else 1


cdef inline void store_pixels(const element *ctile, Py_ssize_t NR, Py_ssize_t w,
                              Py_ssize_t mw, element *d, const Py_ssize_t *doff, Py_ssize_t ldd,
                              bint add, element *tmp) noexcept nogil:
    """A tile of pixels by channels into the destination's channel rows, pixel i at d + doff[i]:
    d[j * ldd + doff[i]] (=, +=) ctile[i * NR + j] for pixels i < w and channels j < mw.  Where
    a vector holds a tile's LC_MR_B pixels, a vector's lanes of channels at a time are
    transposed in registers (ctile read over a vector's lanes of rows, past w: the caller's
    buffer has them) into tmp (VW * VW elements), whose rows are then stored: as one run where
    the tile is LC_MR_B pixels one after the other in the destination (element by element, the
    stores of a 1x1 layer's tiles cost a tenth of its time), else pixel by pixel (a tile
    across rows or images, a stride phase's pixels, the last tile)."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t i, j = 0, t
    cdef bint run = w == LC_MR_B
    cdef element *dj
    cdef const element *src
    for i in range(1, w):
        if doff[i] != doff[0] + i:
            run = False
            break
    if LC_MR_B <= VW:
        while j + VW <= mw:
            transpose_block(ctile + j, NR, tmp, VW)
            if run:             # constant sizes: a vector move or add per channel
                block_put(d + j * ldd + doff[0], ldd, tmp, VW, VW, LC_MR_B, add)
                j += VW
                continue
            for t in range(VW):
                dj = d + (j + t) * ldd
                src = tmp + t * VW
                if add:
                    for i in range(w):
                        dj[doff[i]] += src[i]
                else:
                    for i in range(w):
                        dj[doff[i]] = src[i]
            j += VW
    for j in range(j, mw):
        dj = d + j * ldd
        if add:
            for i in range(w):
                dj[doff[i]] += ctile[i * NR + j]
        else:
            for i in range(w):
                dj[doff[i]] = ctile[i * NR + j]


cdef inline bint by_axis(const Phase *ph) noexcept nogil:
    """Whether the phase has more taps than a size_t has bits: its taps' masks are by axis
    (tap_bits)."""
    return ph.taps[0] * ph.taps[1] * ph.taps[2] >= 8 * <Py_ssize_t> sizeof(size_t)


cdef inline bint tap_bits(const Phase *ph, Py_ssize_t T, size_t *bits) noexcept nogil:
    """The mask of each of the phase's T taps (PIX_TAPS): 1 << t where T < 8 * sizeof(size_t);
    else, for tap t = (td, th, tw), the bits of its taps along each axis, (1 << td) | (1 <<
    (Td + th)) | (1 << (Td + Th + tw)).  False where the taps cannot be skipped by a mask (more
    than PIX_TAPS, or more axis taps than a size_t has bits)."""
    cdef Py_ssize_t t, td = ph.taps[0], th = ph.taps[1], tw = ph.taps[2]
    cdef Py_ssize_t width = 8 * <Py_ssize_t> sizeof(size_t)
    if T < width:
        for t in range(T):
            bits[t] = (<size_t> 1) << t
        return True
    if T > PIX_TAPS or td * th * tw != T or td + th + tw >= width:
        return False
    for t in range(T):
        bits[t] = (((<size_t> 1) << (t // (th * tw))) | ((<size_t> 1) << (td + t // tw % th))
                   | ((<size_t> 1) << (td + th + t % tw)))
    return True


cdef inline Py_ssize_t list_pixels(const Product *p, const Item *it,
                                   const element **staged, const Py_ssize_t *boff,
                                   Py_ssize_t C, Py_ssize_t T, const size_t *bits,
                                   const Py_ssize_t *dcol, const Py_ssize_t *run,
                                   Py_ssize_t *pix) noexcept nogil:
    """The item's valid pixels for pixel_tiles, image after image; returns their number.  At
    pix, each one's place in its staged slice; at pix + cap (cap = it.nimg * it.ncols), its
    offset in dst_g.  With T taps per channel to skip by (T > 0; C channels, boff's columns in
    blocks, blocked_column; bits, each tap's mask, tap_bits): each pixel's mask of the taps
    that reach the source from it (p.valid), the pixels of each PIX_SPAN images grouped by
    mask (in the order each mask first appears), and at pix + 2 * cap the union of the masks
    of each tile of LC_MR_B, so that a tile's taps that read padding for all its pixels can be
    skipped.  pix has room for 6 * cap entries."""
    cdef Py_ssize_t cap = it.nimg * it.ncols, n, j, u, ln, q, t, i, first, s = 0, npix = 0
    cdef const element **src = <const element **> pix
    cdef Py_ssize_t *doff = pix + cap
    cdef size_t *tiles = <size_t *> (pix + 2 * cap)
    cdef size_t *mask = <size_t *> (pix + 3 * cap)
    cdef const element **src0 = src if T == 0 else <const element **> (pix + 4 * cap)
    cdef Py_ssize_t *doff0 = doff if T == 0 else pix + 5 * cap
    cdef Py_ssize_t toff[PIX_TAPS]
    cdef size_t m, taken = ~(<size_t> 0)    # no pixel's mask (tap_bits leaves a bit unused)
    for t in range(T):                      # channel 0's offset of each tap
        toff[t] = boff[blocked_column(0, t, C, T, PIX_CB)]
    for i in range(cap // LC_MR_B + 1 if T else 0):
        tiles[i] = 0
    for n in range(it.nimg):
        if n % PIX_SPAN == 0:
            first = npix
        j = 0
        while j < it.ncols:
            ln = run[j]
            if ln == 0:
                j += 1
                continue
            for u in range(ln):
                q = it.q0 + j + u
                src0[npix] = staged[n] + q
                doff0[npix] = n * p.dst_img + dcol[j + u]
                if T:
                    m = 0
                    for t in range(T):
                        if p.valid[q + toff[t]]:
                            m |= bits[t]
                    mask[npix] = m
                npix += 1
            j += ln
        if T == 0 or (n + 1 < it.nimg and (n + 1) % PIX_SPAN != 0):
            continue
        for i in range(first, npix):        # the span's pixels grouped by mask
            if mask[i] == taken:
                continue
            m = mask[i]
            for j in range(i, npix):
                if mask[j] == m:
                    src[s] = src0[j]
                    doff[s] = doff0[j]
                    tiles[s // LC_MR_B] |= m
                    mask[j] = taken
                    s += 1
    return npix


cdef inline bint tile_taps(int nv, Py_ssize_t k0, Py_ssize_t kc, Py_ssize_t C, Py_ssize_t T,
                           size_t taps, const size_t *bits, const element *const *rows,
                           const Py_ssize_t *boff, const element *b, Py_ssize_t NR,
                           element *ctile, bint pf) noexcept nogil:
    """ctile = a pixel tile's sums over its columns k0 .. k0 + kc - 1 whose taps are in the
    mask `taps` (C channels of T taps, blocked_column; tap t where taps holds all of bits[t]):
    one lc_tile_p call per run of such columns (B's row k at b + k * NR).  False where there
    is none (ctile left as it was).  The columns skipped read padding, zeros, for every pixel
    of the tile: the sums are those of all the columns."""
    cdef Py_ssize_t k = k0, k1 = k0 + kc, ka = -1, b0, cbs, t
    cdef bint done = False
    while k < k1:
        # the block of k, its channels and tap, worked out once a block: two divisions a
        # tap took a third of ResNeXt's 32-channel groups' pixel tiles (tile_p runs of 32)
        b0 = k // (PIX_CB * T) * PIX_CB
        cbs = min(PIX_CB, C - b0)
        t = (k - b0 * T) // cbs
        while t < T and k < k1:
            if taps & bits[t] == bits[t]:
                if ka < 0:
                    ka = k
            elif ka >= 0:
                tile_p(nv, k - ka, rows, boff + ka, b + ka * NR, NR, ctile, NR, done, pf)
                done = True
                ka = -1
            t += 1
            k = min(b0 * T + t * cbs, k1)
    if ka >= 0:
        tile_p(nv, k1 - ka, rows, boff + ka, b + ka * NR, NR, ctile, NR, done, pf)
        done = True
    return done


cdef inline void pixel_tiles(const Product *p, const Phase *ph, const Item *it,
                             const element **staged, const element *a_g,
                             const Py_ssize_t *boff, element *dst_g, const Py_ssize_t *dcol,
                             const Py_ssize_t *run, element *ctile,
                             Py_ssize_t *pix) noexcept nogil:
    """The sums of the item transposed (p.by_pixel): tiles of LC_MR_B pixels by NR output
    channels (the last panel one or two vectors where it has no more), the staged source
    broadcast along the tile's rows (lc_tile_p's A, each row a pixel at its own place, its
    columns k at boff) and the weight's panels of NR channels along its vectors (B, row k at
    k * NR).  The valid columns of all the item's images are cut into tiles in order
    (list_pixels), so that a tile may take pixels from several rows and images and only the
    item's last tile computes pixels it does not store (it repeats its last pixel); junk
    columns are never computed.  Where the staging pads the source, the pixels are grouped by
    the taps that reach the source from them, and a tile skips the taps that read padding for
    all its pixels (tile_taps): 3x3x3 on 4x4x4 reads padding at 42 % of its taps, 3x3 on 7x7
    18 %, DeepLab's dilation 12 on 33x33 43 %.  pix: room for six entries per valid column
    of the item.  A's columns in blocks of PIX_KC; the tiles prefetch A where a staged slice
    is larger than PIX_PREFETCH_BYTES."""
    cdef Py_ssize_t NR = LC_NV_B * LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t K = ph.K, C = p.st.nchan, kb, k0, kc, w, ip, mw, npix, t0, i
    cdef Py_ssize_t T = K // C if C > 0 else 0
    cdef bint pf = p.st.size * <Py_ssize_t> sizeof(element) > PIX_PREFETCH_BYTES
    cdef size_t bits[PIX_TAPS]
    if p.valid == NULL or T < 2 or T * C != K or not tap_bits(ph, T, bits):
        T = 0       # no taps skipped
    npix = list_pixels(p, it, staged, boff, C, T, bits, dcol, run, pix)
    cdef const element **src = <const element **> pix
    cdef Py_ssize_t *doff = pix + it.nimg * it.ncols
    cdef const size_t *tiles = <const size_t *> (pix + 2 * it.nimg * it.ncols)
    cdef const element *last[LC_MR_B]
    cdef const element **rows
    cdef int nv
    for kb in range((K + PIX_KC - 1) // PIX_KC):
        k0 = kb * PIX_KC
        kc = min(PIX_KC, K - k0)
        for ip in range(it.ip0, it.ip1):
            mw = min(NR, p.M - ip * NR)
            nv = 1 if mw <= VW else 2 if mw <= 2 * VW else LC_NV_B    # the last panel's
            t0 = 0
            while t0 < npix:
                w = min(LC_MR_B, npix - t0)
                rows = src + t0
                if w < LC_MR_B:
                    for i in range(LC_MR_B):
                        last[i] = src[t0 + min(i, w - 1)]
                    rows = last
                if T == 0:
                    tile_p(nv, kc, rows, boff + k0, a_g + (ip * K + k0) * NR, NR, ctile, NR, 0,
                           pf)
                elif not tile_taps(nv, k0, kc, C, T, tiles[t0 // LC_MR_B], bits, rows,
                                   boff, a_g + ip * K * NR, NR, ctile, pf):
                    if k0 > 0:          # nothing to add
                        t0 += LC_MR_B
                        continue
                    memset(ctile, 0, LC_MR_B * NR * sizeof(element))
                store_pixels(ctile, NR, w, mw, dst_g + ip * NR * p.dst_row, doff + t0,
                             p.dst_row, k0 > 0, ctile + max(LC_MR_B, VW) * NR)
                t0 += LC_MR_B


cdef inline void set_columns(const Product *p, const Item *it, element *dst_g,
                             const Py_ssize_t *dcol, const element *bias,
                             bint add) noexcept nogil:
    """The item's valid outputs: += bias (add), or = 0 (where no tap reaches them)."""
    cdef Py_ssize_t n, i, j
    cdef element *d
    cdef element bv
    for n in range(it.nimg):
        for i in range(it.i0, it.i1):
            bv = bias[it.g * p.M + i] if add else 0
            d = dst_g + n * p.dst_img + i * p.dst_row
            for j in range(it.ncols):
                if dcol[j] >= 0:
                    if add:
                        d[dcol[j]] += bv
                    else:
                        d[dcol[j]] = 0


cdef void product_item(const Product *p, const Phase *phases, Py_ssize_t item,
                       const element *src, const element *shared, const Py_ssize_t *boff_all,
                       const element *apack, const Py_ssize_t *aoff_all,
                       const element *bias, element *dst, element *fws,
                       Py_ssize_t *iws, const Packing *pk) noexcept nogil:
    """Work item `item` of the forward-style product (find_item): its rows of dst at its valid
    grid columns, for each of its images.  A is apack: packed panels (packed by the items where
    pk.state is not NULL: pack_first), or with p.gathered the weight itself, read at aoff_all.
    fws and iws: this thread's scratch (iws[0] names the slices staged in fws); shared: every
    slice staged before (stage_shared), or NULL."""
    cdef Py_ssize_t NR = LC_NV_B * LC_VEC_BYTES // sizeof(element)
    cdef Item it
    cdef const element *staged[MAX_IMAGES]
    cdef Py_ssize_t *dcol = iws + 2
    cdef Py_ssize_t *run = dcol + p.ncb
    find_item(p, phases, item, p.ncb, &it)
    if pk.state != NULL:
        pack_first(p, phases, &it, pk, <element *> apack)
    cdef const Phase *ph = &phases[it.f]
    cdef element *dst_g = dst + it.n0 * p.dst_img + it.g * p.dst_grp
    cdef const element *a_g
    if p.gathered:
        a_g = apack + it.g * p.a_grp
    else:
        a_g = apack + ph.a_off + it.g * packed_phase(p, ph)

    item_columns(&p.st, ph, &it, NR, dcol, run)
    if p.st.band:       # the item's columns of the slice, copied (stage_band)
        stage_band(src + it.n0 * p.src_img + it.g * p.src_grp, &p.st, it.q0, it.ncols, fws)
        staged[0] = fws
        it.q0 = 0           # the band's columns count from the item's first
    elif p.st.band_rows:    # the rows of the staged grid its columns read (iws[1]: the first)
        staged[0] = staged_band(src + it.n0 * p.src_img + it.g * p.src_grp, &p.st, it.ng,
                                it.q0, it.q0 + it.ncols, fws, iws)
        it.q0 -= iws[1] * p.st.q[2]
    else:
        stage_images(src, &p.st, p.src_img, p.src_grp, it.n0, it.nimg, it.g, it.ng, fws, iws,
                     shared, p.G, staged)
    if ph.K == 0:           # no tap reaches these pixels
        set_columns(p, &it, dst_g, dcol, bias, False)
    if p.by_pixel:
        pixel_tiles(p, ph, &it, staged, a_g, boff_all + ph.k_off, dst_g, dcol, run,
                    fws + p.nimg * p.st.size, run + p.ncb)
    else:
        product_tiles(p, ph, &it, staged, a_g, boff_all + ph.k_off, aoff_all + ph.k_off,
                      dst_g, dcol, run, fws + p.nimg * p.st.size,
                      fws + dots_at(p, sizeof(element)), iws + dot_keys_at(p))
    if bias != NULL:
        set_columns(p, &it, dst_g, dcol, bias, True)


# ---------------------------------------------------------------------------------------------
# The work items, and the parallel loop over them.

cdef void split_work(Product *p, Py_ssize_t columns) noexcept nogil:
    """The work items, from the problem alone (`columns`: grid columns of one image, all
    phases).  p.nimg: images per item, as many as make ITEM_COLUMNS columns (within MAX_IMAGES
    and STAGED_IMAGES).  p.nrb and p.rblk: with fewer than MIN_ITEMS items of (images, group,
    column block) -- with several phases, of (images, group, column block of every phase) --
    the rows too are split into blocks of whole tile panels, about ROW_ITEMS items in all, as
    evenly as they go.  Each output is still computed by one item, in the same order."""
    cdef Py_ssize_t mpan = row_panels(p), items
    p.nimg = 1
    if 0 < columns < ITEM_COLUMNS:
        p.nimg = max(1, min(p.N, MAX_IMAGES, (ITEM_COLUMNS + columns - 1) // columns,
                            STAGED_IMAGES // max(p.st.size, 1)))
    # blocks as even as they go (8 images in blocks of at most 5: 4 + 4, not 5 + 3, which left
    # a thread of two idle for a quarter of the pass)
    p.nib = (p.N + p.nimg - 1) // p.nimg
    p.nimg = (p.N + p.nib - 1) // p.nib
    # the units of run_product: with several phases, a column block's phases together
    items = p.nib * p.G * (p.nblocks if p.nphase > 1 else p.items_ng)
    p.nrb = 1
    if 0 < items < MIN_ITEMS:
        p.nrb = min(mpan, (ROW_ITEMS + items - 1) // items)
    p.rblk = (mpan + p.nrb - 1) // p.nrb
    p.nrb = (mpan + p.rblk - 1) // p.rblk


cdef inline bint by_slices(const Product *p, int nthreads) noexcept nogil:
    """Whether run_product hands out whole (images, group) slices, each with all its items,
    rather than items one at a time (see there)."""
    return p.nib * p.G >= MIN_ITEMS or (p.nib * p.G) % nthreads == 0


cdef void run_product(const Product *p, const Phase *phases, const element *src,
                      const element *shared, const Py_ssize_t *boff, const element *apack,
                      const Py_ssize_t *aoff, const element *bias, element *dst, element *fws,
                      Py_ssize_t fper, Py_ssize_t *iws, Py_ssize_t iper, const Packing *pk,
                      int nthreads) noexcept nogil:
    cdef Py_ssize_t item, t, nitems = p.nib * p.G * p.items_ng * p.nrb
    # With few (images, group) slices (batch 1), items are handed out one at a time as threads
    # come free: they differ in size (a last, short column block), and a fixed share left one
    # thread idle for a third of the pass (128 channels 3x3 on 28x28: 1.36x on two threads,
    # 1.84x so).  With many, whole slices are handed out one at a time, each with all its
    # items, so that the items of a slice run on the thread that staged it (handed out one by
    # one, two threads took turns on each slice's items and both staged it: ResNeXt's 32 groups
    # ran slower on two threads than on one).  Not a fixed contiguous share per thread, as
    # before: wherever one thread was held up, the other waited for it at the end.  The first
    # writes to a fresh output fault its pages in, and the kernel at times stalls such a fault
    # to assemble a huge page (NumPy asks for them for arrays of 4 MiB and more): ResNeXt-50's
    # float64 1x1 layers on 56x56 at batch 8 (51 MB outputs) took 2.5-4.2 times their time in
    # whole turns of the networks suite on two threads (128 -> 256 channels forward 27.6 ms, then
    # 10.5), never on one.  Handed out by slice, the spread between the suite's two turns of
    # the same pass, summed over ResNet-50's and ResNeXt-50's 116 passes, fell from 158-199 ms
    # to 39-41 ms, the largest ratio from 4.2 to 2.3; the fastest times are unchanged (0.98-1.05,
    # eleven layers at batch 4 to 32).  So too where the slices are fewer but go evenly into
    # the threads (two or four images on two threads), every thread staging only its own: one
    # at a time, both threads staged both images (the 3-D U-Net's 96 -> 32 3x3x3 on 32^3 at
    # batch 2, 14 MB a staged image: forward 1.08x; a 3x3 stride-3 layer at batch 2, whose
    # staging is a fifth of its pass, 1.24x; forward passes and input gradients of other
    # U-Net and ResNet layers at batch 2 and 4 1.00-1.05x).  Which thread computes an item
    # does not change its result.
    cdef bint by_slice = by_slices(p, nthreads)
    # Handed out one at a time, the phases of a stride-2 input gradient's column block went to
    # both threads, which then wrote every other element of the same lines of dx (1x1 stride 2
    # from 56x56 at batch 1, three of whose four phases are zeros: 2.2x slower on two threads
    # than on one).  There a unit is a column block's phases for a row block, one after the
    # other, on one thread.
    cdef Py_ssize_t unit, nunits = 0, per_ng = p.items_ng * p.nrb, per_b = p.nblocks * p.nrb
    cdef Py_ssize_t ng, b, rb, r
    if not by_slice and p.nphase > 1:
        nunits = p.nib * p.G * per_b
    cdef int tid
    cdef fpstate fp
    for t in range(nthreads):
        iws[t * iper] = -1      # nothing staged yet
    with parallel(num_threads=nthreads):
        fp = flush_subnormals()
        # race-free: each item writes its own (images, group, phase, column block, row block)
        # of dst and reads only shared inputs; the staged slices and other scratch are per
        # thread.
        if nunits > 0:
            for unit in prange(nunits, schedule="dynamic", chunksize=1):
                tid = threadid()
                ng = unit // per_b
                b = unit % per_b // p.nrb
                rb = unit % p.nrb
                for r in range(p.bstart[b], p.bstart[b + 1]):
                    product_item(p, phases, ng * per_ng + r * p.nrb + rb, src, shared, boff,
                                 apack, aoff, bias, dst, fws + tid * fper, iws + tid * iper,
                                 pk)
        elif not by_slice:
            for item in prange(nitems, schedule="dynamic", chunksize=1):
                tid = threadid()
                product_item(p, phases, item, src, shared, boff, apack, aoff, bias, dst,
                             fws + tid * fper, iws + tid * iper, pk)
        else:
            for ng in prange(p.nib * p.G, schedule="dynamic", chunksize=1):
                tid = threadid()
                for r in range(ng * per_ng, (ng + 1) * per_ng):
                    product_item(p, phases, r, src, shared, boff, apack, aoff, bias, dst,
                                 fws + tid * fper, iws + tid * iper, pk)
        restore_fpstate(fp)
