# The weight gradient (included by tiled.pxi):
#     dw_g[o, k] = sum over (n, q) of dy_ng[o, q] staged_ng[aoff[k] + q]
# computed transposed (rows k, columns o) so that the staged x is read in place and only dy is
# packed; or, where that costs more (weight_cost: x has fewer rows k than dy has output
# channels, as in 1x1 layers that widen and first layers), as it is (rows o, columns k, the
# plan's p.dy_rows), dy read in place and x packed, each step then within one image and over
# its valid columns only (those are consecutive in dy).  Small images are staged in blocks of
# nimg (set_stage_images), the grid columns of each image after those of the one before, so
# that a reduction step has as many columns as one large image would give it.  The reduction
# steps (block of images, block of `block` of their grid columns) are cut into `nchunk`
# contiguous chunks fixed by the problem size alone; each (group, chunk, block of rows) item
# sums into its rows of the chunk's own partial product, and the partials are added in chunk
# order (rows_to_dw), so results do not depend on the thread count.  A reduction of one step
# (p.direct) has one chunk: each item writes its rows of dw itself, a few rows at a time,
# without the partial product.

cdef struct WeightProduct:
    Py_ssize_t N, G, M, K
    Py_ssize_t Rpad, Cpad           # the partial product's rows (k, or o) and columns, padded
    bint dy_rows                    # rows o of dy in place by columns k of x packed transposed
    bint lanes                      # few output channels: lc_tile_d, else lc_tile_a
    # lanes with the output channels as the tiles' rows (lc_tile_e), by LC_OR_D rows k
    bint out_rows
    bint narrow                     # lc_tile_a (or _m) one vector wide (p.NR == VW)
    Py_ssize_t mr                   # rows of a tile: LC_KR_D, LC_MR_A or LC_MR_A1
    bint compact                    # lc_tile_m over the valid grid columns only
    Py_ssize_t NR                   # columns of lc_tile_a (two vectors)
    Py_ssize_t block                # grid columns per reduction step
    Py_ssize_t ncols                # grid columns of one image, up to its last valid one
    Py_ssize_t nimg, nib            # images per block (p.st.nimg), and the blocks of images
    Py_ssize_t nblk, nblk_last      # column blocks of a whole block of images, of the last
    Py_ssize_t nsteps               # reduction steps: (block of images, column block)
    Py_ssize_t nchunk
    Py_ssize_t nkb, kblk            # blocks of rows (k) per (group, chunk), panels per block
    bint direct                     # one reduction step: rows written to dw (weight_item)
    Py_ssize_t span                 # tiles of rows written to dw together (a multiple of VW)
    Py_ssize_t grid[3]              # output sizes OD, OH, OW (the valid grid)
    Py_ssize_t dstep[3]             # their strides in dy
    Py_ssize_t x_img, x_grp, y_img, y_grp, y_plane
    Stage st                        # the staging (or a band's: st.band_rows, set_weight)


cdef void transpose_runs(const element *src, const Py_ssize_t *roff, const Py_ssize_t *start,
                         Py_ssize_t pc, const Py_ssize_t *run, element *bo, Py_ssize_t NR,
                         bint compact) noexcept nogil:
    """bo[j * NR + i] = src[roff[i] + s] for the lanes i < VW and a step's columns j < pc, s the
    column's place in src: a run of run[j] valid columns from column j holds s = start[j],
    start[j] + 1, ... (start NULL: s = j, the columns themselves); 0 for junk columns (run[j]
    == 0).  compact: the valid columns only, one after the other (bo[v * NR + i] for the v-th
    valid column).  Whole blocks of VW columns of a run by one transpose (transpose_at), the
    rest element by element.  Packs dy transposed (pack_dy_panels) and, where p.dy_rows, x
    (pack_x_t)."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t i, j = 0, v = 0, u, t, ln
    cdef const element *s
    cdef element *b
    while j < pc:
        ln = run[j]
        if ln == 0:
            if not compact:
                for i in range(VW):
                    bo[j * NR + i] = 0
            j += 1
            continue
        s = src + (j if start == NULL else start[j])
        b = bo + (v if compact else j) * NR
        u = 0
        while u + VW <= ln:
            transpose_at(s + u, roff, b + u * NR, NR)
            u += VW
        for t in range(u, ln):
            for i in range(VW):
                b[t * NR + i] = s[roff[i] + t]
        j += ln
        v += ln


cdef inline void pack_dy_rows(const WeightProduct *p, const element *dyg, Py_ssize_t pc,
                              const Py_ssize_t *dcol, const Py_ssize_t *run, element *bpack,
                              bint first) noexcept nogil:
    """B of lc_tile_d for one reduction step: dy of the block (at dyg) on the grid, a row of
    p.block columns per output channel o < M at bpack + o * block, zero for junk columns and the
    tail up to whole vectors; the rows of the channels past M zeroed with the first step."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t B = p.block, o, j, u, ln
    cdef element *bo
    cdef const element *dyrow
    if first:
        memset(bpack, 0, p.Cpad * B * sizeof(element))
    for o in range(p.M):
        bo = bpack + o * B
        dyrow = dyg + o * p.y_plane
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


cdef void pack_x_t(const WeightProduct *p, const element *xq, const Py_ssize_t *xoff,
                   Py_ssize_t pc, const Py_ssize_t *run, element *bpack,
                   bint first) noexcept nogil:
    """B of lc_tile_a where p.dy_rows: the staged x (at xq, the step's first grid column) at
    its rows k (xoff, whole vectors of them: the rows past K repeat row 0) over the step's
    valid columns, transposed in panels of NR rows k, bpack[k // NR][v][k % NR] for the v-th
    valid column, VW rows k at a time (transpose_runs).  The columns of B past those vectors
    of rows k are zero (written with the first step); those within them but past K hold
    copies of row 0, which only make columns of the partial product that are never read."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t NR = p.NR, B = p.block, nkv = (p.K + VW - 1) // VW, t, k, kb
    cdef element *b
    if first:
        for k in range(nkv * VW, p.Cpad):
            b = bpack + k // NR * B * NR + k % NR
            for t in range(B):
                b[t * NR] = 0
    for kb in range(nkv):
        k = kb * VW
        transpose_runs(xq, xoff + k, NULL, pc, run, bpack + k // NR * B * NR + k % NR, NR,
                       True)


cdef inline void pack_dy_panels(const WeightProduct *p, const element *dyg, Py_ssize_t pc,
                                const Py_ssize_t *dcol, const Py_ssize_t *run, element *bpack,
                                bint first) noexcept nogil:
    """B of lc_tile_a for one reduction step: dy^T of the block (at dyg) in panels of NR output
    channels, bpack[o // NR][j][o % NR], VW channels at a time (transpose_runs; the lanes of
    a last partial vector of channels copy its last channel, making columns of the product
    that are never read); zero for junk columns and (written with the first step) for the
    vectors of channels past M."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t NR = p.NR, B = p.block, og, o0, o, j
    cdef Py_ssize_t roff[MAX_NR]
    cdef element *bo
    for og in range(p.Cpad // VW):
        o0 = og * VW
        bo = bpack + (o0 // NR) * B * NR + o0 % NR
        if first and o0 >= p.M:
            for j in range(B):
                for o in range(VW):
                    bo[j * NR + o] = 0
        if o0 < p.M:
            for o in range(VW):     # the lanes past M: copies of the last channel
                roff[o] = min(o0 + o, p.M - 1) * p.y_plane
            transpose_runs(dyg, roff, dcol, pc, run, bo, NR, p.compact)


cdef inline void weight_tiles(const WeightProduct *p, Py_ssize_t ip0, Py_ssize_t ip1,
                              Py_ssize_t pc, const element *xq, const Py_ssize_t *aoff,
                              const element *bpack, const Py_ssize_t *cmap, element *part,
                              Py_ssize_t row0, bint first) noexcept nogil:
    """Rows ip0 * unit .. ip1 * unit - 1 of the partial product part (= on the first step, else
    +=) the product over the step's pc grid columns (p.compact: its pc valid columns, at cmap):
    the staged x at xq read at aoff (a tile's rows) times the packed dy (unit: p.mr, the rows
    of a tile); where p.dy_rows, dy at xq (its pc columns) times the packed x.  part holds the
    rows from row0 * unit on."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t NR = p.NR, B = p.block, mr = p.mr, ip, jp, o0, kr, j0, j1
    # blocks of column tiles whose packed dy (B_BLOCK_BYTES) stays in L2 while every row of
    # tiles meets it, rather than all of a wide dy read from L3 once per row of tiles
    cdef Py_ssize_t ncp = p.Cpad // NR
    cdef Py_ssize_t jb = max(1, B_BLOCK_BYTES // (NR * max(pc, 1) * <Py_ssize_t> sizeof(element)))
    if p.out_rows:          # rows o0 .. o0 + kr - 1 of dy (packed) by mr rows k of x
        for ip in range(ip0, ip1):
            o0 = 0
            while o0 < p.M:
                kr = min(p.M - o0, LC_KR_D)
                tile_e(kr, round_up(pc, VW), bpack + o0 * B, B, xq, aoff + ip * mr,
                       part + (ip - row0) * mr * p.Cpad + o0, 1, p.Cpad, not first)
                o0 += kr
    elif p.lanes:
        for ip in range(ip0, ip1):
            for jp in range(p.Cpad // LC_OR_D):
                tile_d(LC_KR_D, round_up(pc, VW), xq, aoff + ip * LC_KR_D,
                       bpack + jp * LC_OR_D * B, B,
                       part + (ip - row0) * LC_KR_D * p.Cpad + jp * LC_OR_D, p.Cpad, not first)
    else:                   # lc_tile_m over the valid columns, or lc_tile_a
        j0 = 0
        while j0 < ncp:
            j1 = min(ncp, j0 + jb)
            for ip in range(ip0, ip1):
                for jp in range(j0, j1):
                    if p.compact and not p.dy_rows:
                        tile_m(NR // VW, pc, xq, aoff + ip * mr, cmap, bpack + jp * B * NR,
                               part + (ip - row0) * mr * p.Cpad + jp * NR, p.Cpad, not first)
                    else:
                        tile_a(NR // VW, pc, xq, aoff + ip * mr, bpack + jp * B * NR,
                               part + (ip - row0) * mr * p.Cpad + jp * NR, p.Cpad, not first)
            j0 = j1


cdef inline Py_ssize_t block_columns(const WeightProduct *p, Py_ssize_t nimg) noexcept nogil:
    """Grid columns of a block of nimg images, up to the last valid one of the last image."""
    return (nimg - 1) * p.st.plane + p.ncols


cdef void step_columns(const WeightProduct *p, Py_ssize_t q0, Py_ssize_t n, Py_ssize_t *dcol,
                       Py_ssize_t *run) noexcept nogil:
    """grid_columns of the columns q0 .. q0 + n - 1 of a block of images: image i's grid at
    columns i * plane on, its destinations i images into dy; its columns past p.ncols junk."""
    cdef Py_ssize_t plane = p.st.plane, j = 0, t, i, local, seg, valid
    while j < n:                # one image (or the part of it in range) at a time
        i = (q0 + j) // plane
        local = (q0 + j) % plane
        seg = min(plane - local, n - j)
        valid = min(max(p.ncols - local, 0), seg)
        if valid > 0:
            grid_columns(local, valid, p.st.q, p.grid, i * p.y_img, p.dstep, dcol + j, run + j)
        for t in range(valid, seg):
            dcol[j + t] = -1
            run[j + t] = 0
        j += seg


cdef void weight_item(const WeightProduct *p, Py_ssize_t item, const element *x,
                      const element *shared, const element *dy, const Py_ssize_t *aoff,
                      const Py_ssize_t *xoff, element *partial, element *dw, element *fws,
                      Py_ssize_t *iws) noexcept nogil:
    """Work item (group g, chunk, block of rows k) of the weight gradient: its rows of the
    partial product of (g, chunk), summed over the chunk's reduction steps (block of images,
    block of their grid columns) in order; shared: every block staged before (stage_shared),
    or NULL.  fws and iws: this thread's scratch (iws[0] names the staged block in fws,
    iws[1] the step whose dy it holds packed: the items of one (group, chunk) that follow
    each other on a thread pack a step's dy once, not once per block of rows; iws[2] and
    iws[3] the band it holds, where p.st.band_rows: staged_band).  Where p.dy_rows, the rows
    are output channels and x is packed (p.xoff: its rows k) instead of dy.  A direct
    reduction (p.direct, one chunk) writes its rows of dw instead, p.span tiles of rows at a
    time through a partial of those rows in fws, each span summed over every step in order:
    all the steps are packed first, each in its own place (several only where p.dy_rows,
    whose A, dy read in place, needs no staging kept; their A and valid columns in iws),
    iws[1] then naming the group's last step.  With one step the sums are those of one
    chunk's partial: the same bits."""
    cdef Py_ssize_t B = p.block, PB = p.Cpad * p.block
    cdef Py_ssize_t kb = item % p.nkb, gc = item // p.nkb
    cdef Py_ssize_t chunk = gc % p.nchunk, g = gc // p.nchunk
    cdef Py_ssize_t s0 = chunk * p.nsteps // p.nchunk, s1 = (chunk + 1) * p.nsteps // p.nchunk
    cdef Py_ssize_t unit = p.mr
    cdef Py_ssize_t ip0 = kb * p.kblk, ip1 = min(p.Rpad // unit, ip0 + p.kblk)
    cdef Py_ssize_t step, ib, n0, nimg, q0, pc
    cdef element *part = partial if p.direct else partial + gc * p.Rpad * p.Cpad
    cdef const element *staged = NULL
    cdef const element *dyg
    cdef const element *a = NULL    # A of the tiles: the staged x, or dy where p.dy_rows
    cdef element *bpack = fws + p.st.size
    cdef element *bstep
    cdef Py_ssize_t *dcol = iws + 4
    cdef Py_ssize_t *run = dcol + B
    cdef Py_ssize_t *cmap = run + B
    cdef Py_ssize_t *kept = cmap + B        # p.direct: each step's A (in dy) and columns
    cdef Py_ssize_t j, ncol = 0, packed
    # p.direct: every step of the group already packed by this thread's item before
    cdef bint have = p.direct and iws[1] == g * p.nsteps + s1 - 1
    cdef bint first = True
    cdef Py_ssize_t r, r1
    cdef element *rows = bpack + PB * (p.nsteps if p.direct else 1)   # p.direct: rows, acc
    cdef element *acc
    for step in range(s0, s1):
        ib = step // p.nblk
        n0 = ib * p.nimg
        nimg = min(p.nimg, p.N - n0)
        q0 = (step % p.nblk) * B
        pc = min(B, block_columns(p, nimg) - q0)
        packed = g * p.nsteps + step
        bstep = bpack + (step - s0) * PB if p.direct else bpack
        if have and p.dy_rows:  # packed, and dy's columns kept: nothing to stage
            continue
        if p.st.band_rows:      # the step's band: its columns from the band's first row on
            staged = staged_band(x + n0 * p.x_img + g * p.x_grp, &p.st, ib * p.G + g, q0,
                                 q0 + pc, fws, iws + 2)
            a = staged + (q0 - iws[3] * p.st.q[2])
        else:
            staged = staged_block(x, n0 * p.x_img + g * p.x_grp, p.x_img, &p.st, nimg,
                                  ib * p.G + g, fws, iws, shared)
            a = staged + q0
        step_columns(p, q0, pc, dcol, run)
        ncol = pc
        if p.compact:           # the step's valid columns
            ncol = 0
            for j in range(pc):
                if dcol[j] >= 0:
                    cmap[ncol] = j
                    ncol += 1
        dyg = dy + n0 * p.y_img + g * p.y_grp
        if p.dy_rows:           # dy in place from the step's first valid column
            a = dyg + (dcol[cmap[0]] if ncol > 0 else 0)
        if p.dy_rows and p.direct:
            kept[2 * (step - s0)] = a - dy
            kept[2 * (step - s0) + 1] = ncol
        if not have and iws[1] != packed:
            if p.dy_rows:
                pack_x_t(p, staged + q0, xoff, pc, run, bstep, first or p.direct)
            elif p.lanes:
                pack_dy_rows(p, dyg, pc, dcol, run, bstep, first or p.direct)
            else:
                pack_dy_panels(p, dyg, pc, dcol, run, bstep, first or p.direct)
            iws[1] = packed
        if not p.direct:
            weight_tiles(p, ip0, ip1, ncol, a, aoff, bpack, cmap, part, 0, first)
        first = False
    if p.direct:
        acc = rows + p.span * unit * p.Cpad
        r = ip0
        while r < ip1:
            r1 = min(ip1, r + p.span)
            for step in range(s0, s1):
                if p.dy_rows:
                    a = dy + kept[2 * (step - s0)]
                    ncol = kept[2 * (step - s0) + 1]
                weight_tiles(p, r, r1, ncol, a, aoff, bpack + (step - s0) * PB, cmap, rows, r,
                             step == s0)
            rows_to_dw(p, g, r * unit, r1 * unit, rows, 1, dw, acc)
            r = r1
    elif first:             # no steps: the rows are zero (p.direct has a step)
        memset(part + ip0 * unit * p.Cpad, 0, (ip1 - ip0) * unit * p.Cpad * sizeof(element))


cdef inline Py_ssize_t weight_units(const WeightProduct *p, Py_ssize_t item) noexcept nogil:
    """The work of item `item` of the weight gradient (weight_item), in (reduction step, tile
    panel of rows) pairs."""
    cdef Py_ssize_t chunk = item // p.nkb % p.nchunk, ip0 = item % p.nkb * p.kblk
    cdef Py_ssize_t steps = ((chunk + 1) * p.nsteps // p.nchunk - chunk * p.nsteps // p.nchunk)
    return steps * (min(p.Rpad // p.mr, ip0 + p.kblk) - ip0)


cdef Py_ssize_t weight_share(const WeightProduct *p, Py_ssize_t t, Py_ssize_t nthreads,
                             Py_ssize_t total) noexcept nogil:
    """The first item of share t of nthreads (the end of the items for t = nthreads): shares
    are runs of consecutive items, each about total / nthreads of the work (weight_units): an
    item is in the first share whose end its middle is before.  Runs, so that the items of one
    (group, chunk) that follow each other stay on one thread (see weight_item).  By the count
    of items, as OpenMP's static schedule cut them, chunks of unequal steps left one thread
    more work than the other (a 1x1 layer of DenseNet at batch 8, 8 steps in 5 chunks and 2
    blocks of rows: 9 to 7; a stride-3 layer, 8 steps in 7 chunks: 9 to 7)."""
    cdef Py_ssize_t item = 0, done = 0, u, nitems = p.G * p.nchunk * p.nkb
    if t >= nthreads:
        return nitems
    while item < nitems:
        u = weight_units(p, item)
        if (2 * done + u) * nthreads >= 2 * total * t:
            break
        done += u
        item += 1
    return item


cdef void run_weight(const WeightProduct *p, const element *x, const element *shared,
                     const element *dy, const Py_ssize_t *aoff, const Py_ssize_t *xoff,
                     element *partial, element *dw, element *fws, Py_ssize_t fper,
                     Py_ssize_t *iws, Py_ssize_t iper, int nthreads) noexcept nogil:
    """dw of all groups: the work items (weight_item) into their partial products, then the
    partials summed in chunk order (rows_to_dw), each on nthreads threads.  aoff: the rows
    of A (x's rows k, or where p.dy_rows dy's output channels); xoff: x's rows k where
    p.dy_rows."""
    cdef Py_ssize_t item, t, g, r0
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t nkv = ((p.M if p.dy_rows else p.K) + VW - 1) // VW
    cdef int tid
    cdef fpstate fp
    cdef Py_ssize_t total = 0
    for item in range(p.G * p.nchunk * p.nkb):
        total += weight_units(p, item)
    for t in range(nthreads):
        iws[t * iper] = -1      # nothing staged yet
        iws[t * iper + 1] = -1  # nor packed
        iws[t * iper + 2] = -1  # nor a band
    with parallel(num_threads=nthreads):
        fp = flush_subnormals()
        # race-free: item (group, chunk, block of rows) writes only its rows of its own
        # partial product.  Share t of nthreads: a run of items of about a share of the work
        # (weight_share).
        for t in prange(nthreads, schedule="static", chunksize=1):
            tid = threadid()
            for item in range(weight_share(p, t, nthreads, total),
                              weight_share(p, t + 1, nthreads, total)):
                weight_item(p, item, x, shared, dy, aoff, xoff, partial, dw,
                            fws + tid * fper, iws + tid * iper)
        restore_fpstate(fp)
    if p.direct:
        return
    # (a second parallel region: Cython's prange inside parallel() ends without a barrier, and
    # every partial product must be complete before the sums)
    with parallel(num_threads=nthreads):
        fp = flush_subnormals()
        # race-free: each block of VW rows (group, k) of the transposed dw (where p.dy_rows,
        # VW rows o of dw) is summed by one thread and written to its elements of dw.
        for item in prange(p.G * nkv, schedule="static"):
            tid = threadid()
            g = item // nkv
            r0 = item % nkv * VW
            rows_to_dw(p, g, r0, r0 + VW, partial + (g * p.nchunk * p.Rpad + r0) * p.Cpad,
                       p.nchunk, dw, fws + tid * fper)
        restore_fpstate(fp)


cdef void rows_to_dw(const WeightProduct *p, Py_ssize_t g, Py_ssize_t r0, Py_ssize_t r1,
                     const element *rows, Py_ssize_t nchunk, element *dw,
                     element *acc) noexcept nogil:
    """Rows r0 <= r < r1 of group g's nchunk partial products (at rows: the first one's row
    r0, the next ones p.Rpad * p.Cpad apart) summed in chunk order into dw: rows k of the
    transposed dw, VW at a time (transpose_rows, acc its scratch), or where p.dy_rows rows o of
    dw itself (add_rows).  The partials' sums (run_weight, nchunk of them) and a reduction of
    one step (weight_item, the rows of one) both end here."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element), k0 = r0
    if p.dy_rows:
        add_rows(p, g, r0, min(r1, p.M) - r0, rows, nchunk, dw)
        return
    while k0 < min(r1, p.K):
        transpose_rows(p, g, k0, rows + (k0 - r0) * p.Cpad, nchunk, dw, acc)
        k0 += VW


cdef void transpose_rows(const WeightProduct *p, Py_ssize_t g, Py_ssize_t k0,
                         const element *rows, Py_ssize_t nchunk, element *dw,
                         element *acc) noexcept nogil:
    """dw[g * M + o, k] for k0 <= k < k0 + VW: the rows k of nchunk partial products (rows at
    the first one's row k0, the next ones p.Rpad * p.Cpad apart; columns o) summed in chunk
    order, VW columns at a time in acc, each block then written transposed (runs of VW
    consecutive k: whole cache lines of dw, not single elements a row of K apart).  Whole VW x
    VW blocks are summed in loops of a fixed length and transposed in registers: element by
    element, the sums of a 1024 -> 2048 1x1 layer's four partials took a fifth of its weight
    gradient."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t kw = min(VW, p.K - k0), ow, ob, o0, o, k, c
    cdef const element *part
    cdef element *d
    for ob in range((p.M + VW - 1) // VW):
        o0 = ob * VW
        ow = min(VW, p.M - o0)
        part = rows + o0
        if kw == VW and ow == VW:
            for k in range(VW):
                for o in range(VW):
                    acc[k * VW + o] = part[k * p.Cpad + o]
            for c in range(1, nchunk):
                part = part + p.Rpad * p.Cpad
                for k in range(VW):
                    for o in range(VW):
                        acc[k * VW + o] = acc[k * VW + o] + part[k * p.Cpad + o]
            transpose_block(acc, VW, dw + (g * p.M + o0) * p.K + k0, p.K)
            continue
        for k in range(kw):
            for o in range(ow):
                acc[k * VW + o] = part[k * p.Cpad + o]
        for c in range(1, nchunk):
            part = part + p.Rpad * p.Cpad
            for k in range(kw):
                for o in range(ow):
                    acc[k * VW + o] = acc[k * VW + o] + part[k * p.Cpad + o]
        for o in range(ow):
            d = dw + (g * p.M + o0 + o) * p.K + k0
            for k in range(kw):
                d[k] = acc[k * VW + o]


cdef void add_rows(const WeightProduct *p, Py_ssize_t g, Py_ssize_t o0, Py_ssize_t n,
                   const element *rows, Py_ssize_t nchunk, element *dw) noexcept nogil:
    """Where p.dy_rows: dw[g * M + o, k] for o0 <= o < o0 + n, the rows o of nchunk partial
    products (rows at the first one's row o0, the next ones p.Rpad * p.Cpad apart; columns k)
    summed in chunk order."""
    cdef Py_ssize_t o, k, c
    cdef const element *part
    cdef element *d
    for o in range(n):
        d = dw + (g * p.M + o0 + o) * p.K
        part = rows + o * p.Cpad
        for k in range(p.K):
            d[k] = part[k]
        for c in range(1, nchunk):
            part = part + p.Rpad * p.Cpad
            for k in range(p.K):
                d[k] = d[k] + part[k]
