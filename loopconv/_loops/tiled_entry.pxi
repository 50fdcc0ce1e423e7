# The Python-facing entry points (included by tiled.pxi).  The Python layer (loopconv/_args.py
# and loopconv/_loops/__init__.py) has checked every shape, handled empty arrays, and allocated
# the output; these only fill it.  stride, pad and dilation are (d, h, w) triples of ints; pad is
# the padding before each axis (the padding after is implied by the shapes).  Each sets up the
# geometry of its pass with the GIL, then runs the loops without it.

_workspaces = threading.local()


def _workspace(name, dtype, Py_ssize_t n):
    """A scratch array of at least n elements, kept across calls and per calling thread (so
    that concurrent calls from several Python threads never share one).  Fresh multi-megabyte
    arrays would cost page faults on every call.  It starts on a cache line (malloc gives 16
    bytes), and so do the threads' regions (per_thread) and the staged rows and packed panels
    in them: whole vectors of them are loaded without crossing a line."""
    arrays = getattr(_workspaces, "arrays", None)
    if arrays is None:
        arrays = _workspaces.arrays = {}
    key = (name, np.dtype(dtype).char)
    buf = arrays.get(key)
    if buf is None or buf.shape[0] < n:
        buf = direct.aligned_empty((max(n, 1),), dtype)
        arrays[key] = buf
    return buf


cdef inline Py_ssize_t per_thread(Py_ssize_t n) noexcept nogil:
    """n elements of scratch per thread, rounded up to whole cache lines."""
    return round_up(n, 16)      # each thread's region starts on its own cache line


def info():
    """The instruction set and register tiles of this build."""
    return {"isa": LC_ISA.decode(),
            "forward tile float32": (LC_MR_B, LC_NV_B * LC_VEC_BYTES // 4),
            "forward tile float64": (LC_MR_B, LC_NV_B * LC_VEC_BYTES // 8),
            "weight tile float32": (LC_MR_A, 2 * LC_VEC_BYTES // 4),
            "weight tile float64": (LC_MR_A, 2 * LC_VEC_BYTES // 8),
            "weight tile, one vector float32": (LC_MR_A1, LC_VEC_BYTES // 4),
            "weight tile, few channels": (LC_KR_D, LC_OR_D),
            "weight read in place below grid columns": GATHER_COLUMNS,
            "and below grid columns times columns of the weight": GATHER_WORK,
            "columns of A per block": KC,
            "weight streamed above bytes": STREAM_A_BYTES,
            "tiles keep their sums above blocks of A's columns": SUM_BLOCKS,
            "rows by masks": bool(LC_ROW_MASKS)}


def item_order(nblk):
    """The work items of one (image, group) as (phase, column block) pairs, flattened: block
    by block, the phases of a block one after the other.  The phases of an input gradient read
    the same staged dy, each at its own taps, so that a block's dy is still in L2 for the next
    phase (phase by phase, all of dy went through L3 once per phase)."""
    pairs = [(f, b) for b in range(max(nblk)) for f in range(len(nblk)) if b < nblk[f]]
    return np.array(pairs or [(0, 0)], dtype=np.intp).reshape(-1)     # never empty


def block_starts(nblk):
    """Where each column block's pairs begin in item_order's pairs, and their number last:
    the phases of block b are pairs block_starts[b] .. block_starts[b + 1] - 1."""
    blocks = item_order(nblk)[1::2]         # in order, block by block
    return np.searchsorted(blocks, np.arange(max(nblk) + 1)).astype(np.intp)


# ---------------------------------------------------------------------------------------------
# The forward-style product: the forward pass and the input gradient.

cdef void set_product(Product *p, Py_ssize_t N, Py_ssize_t G, Py_ssize_t src_c,
                      Py_ssize_t dst_c, tuple dst_size):
    """The sizes of a forward-style product over N images of G groups, from a source of src_c
    channels (p.st, set before, stages p.st.nchan of them per group) to a destination of dst_c
    channels (M = dst_c // G per group) of dst_size pixels."""
    p.N = N
    p.G = G
    p.M = dst_c // G
    p.mr = tile_rows(p.M)
    p.by_pixel = False
    p.valid = NULL
    p.src_img = src_c * p.st.src_chan
    p.src_grp = p.st.nchan * p.st.src_chan
    p.dst_row = dst_size[0] * dst_size[1] * dst_size[2]
    p.dst_img = dst_c * p.dst_row
    p.dst_grp = p.M * p.dst_row


cdef void choose_tiles(Product *p, const Phase *phases, Py_ssize_t itemsize, bint wide,
                       double skip) noexcept nogil:
    """Whether p runs as pixel_tiles (pixel_tiles_suit), and then A (the weight) packed in
    panels of NR channels, and whether the grid's tiles ask for a packed A ahead (p.stream_a:
    STREAM_A_BYTES); called once the phases and p.gathered (by the columns alone) are
    set.  A wide product (`wide`: GATHER_WORK or more grid columns times columns of A) that
    does not take pixel tiles is weighed again against pixel tiles with A packed, and packs A
    where it then takes them or a compact grid (phase_pieces) whose junk columns saved, over
    all images, come to PACK_COLUMNS a phase or more; else its grid's tiles read A in place
    after all.  A compact grid that saved less had packed the weight of 3x3 layers of 1024
    channels on 16x16 at batch 1 (16 rows of 17 grid columns, 15 of them junk; weights of
    19-38 MB); read in place (float32, one thread, old / new, fastest of three alternating
    runs): 1024 -> 1024 forward pass 1.39x, input gradient 1.56x, 512 -> 1024 input gradient
    1.41x, two threads 1.41-1.56x, float64 1.18x, AVX2 1.50x.
    Packing the weight for the grid cost 3x3 layers of many channels on
    14x14 to 28x28 at batch 1 (weights of 5-38 MB) more than it saved; read in place (float32,
    one thread, old / new, fastest of three alternating runs): 512 -> 512 on 28x28 forward 1.15x,
    input gradient 1.12x, on 24x24 and 20x20 1.24-1.26x, 1024 -> 1024 on 14x14 1.51x and
    1.74x (two threads 1.05-1.64x, float64 forward 1.10-1.28x, AVX2 0.99-1.09x).  The model
    does not count the taps that pixel tiles skip, so a product that takes them with A read
    in place keeps them (3x3x3 on 4x4x4 at batch 6 in float64 ran 1.2-1.45x slower as a
    packed compact grid).  skip: the share of their (tile, tap) pairs
    that pixel tiles would skip (new_geometry; 0 where not worked out)."""
    cdef Py_ssize_t NR = LC_NV_B * LC_VEC_BYTES // itemsize, f
    cdef bint narrow = p.gathered
    cdef Py_ssize_t saved = 0
    p.wide = wide
    p.by_pixel = pixel_tiles_suit(p, phases, itemsize, skip)
    if wide and not p.by_pixel:
        p.gathered = False
        p.by_pixel = pixel_tiles_suit(p, phases, itemsize, skip)
        # the junk columns a compact grid would save, against what packing costs (not rows by
        # masks: phase_pieces offers them only once A is packed, and they save a few per cent
        # of the columns, measured against the grid and not against packing)
        for f in range(p.nphase):
            if 0 < phase_pieces(p, &phases[f], itemsize) < ROW_PIECES:
                saved += phases[f].ncols - phase_pixels(&phases[f])
        # neither pixel tiles nor a compact grid worth the packing: the grid's tiles read A in
        # place after all
        p.gathered = narrow and not p.by_pixel and p.N * saved < PACK_COLUMNS * p.nphase
    if p.by_pixel:
        p.mr = NR
        p.gathered = False
    # the grid's tiles ask for a packed A ahead where it outgrows STREAM_A_BYTES
    p.stream_a = False
    if not p.gathered and not p.by_pixel:
        for f in range(p.nphase):
            p.stream_a |= packed_phase(p, &phases[f]) * itemsize > STREAM_A_BYTES
    set_overrun(&p.st, phases[0].ncols, LC_VEC_BYTES // itemsize, p.by_pixel,
                phases[0].ncols >= 2 * LC_VEC_BYTES // itemsize)


cdef void set_phase(Phase *ph, const Stage *st, Py_ssize_t K, Py_ssize_t k_off, tuple grid,
                    Py_ssize_t dst_base, tuple dstep, Py_ssize_t NR):
    """One phase of a forward-style product: K rows of B, its B offsets at k_off, and its valid
    grid (a, b, e) < grid, written to dst_base + a * dstep[0] + b * dstep[1] + e * dstep[2];
    its packed A at offset 0 (input_product sets the other phases' once p.mr is chosen)."""
    cdef int a
    ph.K = K
    ph.a_off = 0
    ph.k_off = k_off
    for a in range(3):
        ph.grid[a] = grid[a]
        ph.dstep[a] = dstep[a]
    ph.ncols = ((ph.grid[0] - 1) * st.q[1] + ph.grid[1] - 1) * st.q[2] + ph.grid[2]
    ph.nblk = 0         # (compact_phases)
    ph.pieces = 0
    ph.dst_base = dst_base
    for a in range(3):  # unknown until the caller sets them: no taps skipped by mask
        ph.taps[a] = 0


cdef inline Py_ssize_t phase_pixels(const Phase *ph) noexcept nogil:
    """The valid columns of phase ph: its grid's pixels (a compact phase's columns)."""
    return ph.grid[0] * ph.grid[1] * ph.grid[2]


cdef Py_ssize_t phase_pieces(const Product *p, const Phase *ph,
                             Py_ssize_t itemsize) noexcept nogil:
    """The pieces each vector of a tile of phase ph (its grid's columns, ph.ncols, not yet
    made compact) would take from the rows of its grid if compact (compact_phases): 1 where
    its rows are whole vectors and its junk is COMPACT_WASTE or more, 2 where they are half
    vectors (of 4 elements or more) and its junk HALVES_WASTE or more, ROW_PIECES where the
    build has masked loads (LC_ROW_MASKS) of ROWS_LANES elements or more, A is packed and has
    ROWS_MIN_K columns or more, no vector spans more than two rows and the junk is ROWS_WASTE
    or more (lc_tile_r: 3x3 on 28x28 at batch 2 to 8, float32), else 0.  Tiles of
    fewer rows than LC_MR_B (few output channels) keep their grid: the few sums a row of B
    meets leave the loads and the offsets the larger cost (a GAN's last layer, 64 -> 3
    channels 4x4 stride 2 from 32x32 to 64x64 at batch 32, took 1.30 times as long with
    compact phases of 4-row tiles).  Products that read the weight in place (batch 1) are
    compact too (lc_tile_gc; in one process switching on every call, against their grid,
    float32 one thread: a GAN's 4x4 stride-2 layer from 8x8 1.11x (batch 2 1.13x), 3x3 on 8x8
    with 64 channels 1.16x, 256 channels input gradient 1.21x, on 16x16 1.06-1.08x, stride 2
    onto 16x16 1.23x, 512 -> 256 on 8x8 input gradient 1.23x, 5x5 on 16x16 1.06x; two threads
    alike; float64 1.05-1.23x, and 3x3 on 4x4 with 96 channels, which took pixel tiles that
    skip taps, as halves 1.08-1.73x; 32x32 and 64x64 1.00)."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // itemsize
    cdef Py_ssize_t valid = phase_pixels(ph)
    if valid == 0 or p.mr < LC_MR_B:
        return 0
    if ph.grid[2] % VW == 0 and valid * COMPACT_WASTE <= ph.ncols:
        return 1
    if VW >= 8 and ph.grid[2] % (VW // 2) == 0 and valid * HALVES_WASTE <= ph.ncols:
        return 2
    # the vectors start at multiples of VW among the valid columns, so gcd(VW, width) columns
    # from the end of a row at the latest (VW a power of two): then they span two rows at most
    if (LC_ROW_MASKS and VW >= ROWS_LANES and ph.K >= ROWS_MIN_K and not p.gathered
            and ph.grid[2] % VW and ph.grid[2] > VW - 1 - min(VW, ph.grid[2] & -ph.grid[2])
            and valid * ROWS_WASTE <= ph.ncols):
        return ROW_PIECES
    return 0


cdef Py_ssize_t compact_phases(Product *p, Phase *phases, Py_ssize_t itemsize) noexcept nogil:
    """Makes compact the phases that take pieces (phase_pieces), unless p runs as pixel tiles:
    their tiles (lc_tile_v, lc_tile_h, lc_tile_r) compute the valid columns alone, each vector
    (or half) in one grid row, or in two by masks.  3x3x3 on 16^3 computed 1.125 grid columns
    a pixel, on 8^3 1.25, 32^3 1.06, 3x3 on 32x32 1.03.  Then cuts the phases' columns into
    blocks (p.ncb columns each, whole_rows) and sets p.items_ng and p.nblocks (the most column
    blocks of a phase); returns the columns of one (image, group), all phases; sets p.kmost."""
    cdef Py_ssize_t NR = LC_NV_B * LC_VEC_BYTES // itemsize, f, columns = 0
    cdef Phase *ph
    p.kmost = 0
    for f in range(p.nphase):
        ph = &phases[f]
        p.kmost = max(p.kmost, ph.K)
        ph.pieces = 0 if p.by_pixel else phase_pieces(p, ph, itemsize)
        if ph.pieces:
            ph.ncols = phase_pixels(ph)
        columns += ph.ncols
    p.ncb = whole_rows(p, phases, itemsize)
    p.items_ng = 0
    p.nblocks = 0
    for f in range(p.nphase):
        ph = &phases[f]
        ph.nblk = (ph.ncols + p.ncb - 1) // p.ncb
        p.items_ng += ph.nblk
        p.nblocks = max(p.nblocks, ph.nblk)
    return columns


cdef Py_ssize_t whole_rows(const Product *p, const Phase *phases,
                           Py_ssize_t itemsize) noexcept nogil:
    """The grid columns per column block of the forward-style product p: NCB_TILES tiles of
    NR, or all of each phase's columns where K is short (B for a block of NCB_TILES tiles
    fits in SHORT_K_BYTES: few input channels and taps, few sums for each output) and B for
    all its columns fits in WHOLE_ROW_BYTES, and the rows of all images and groups make
    ROW_ITEMS blocks of SHORT_K_PANELS panels or more.  Then the work items are blocks of rows
    (split_work) that each write whole rows of dst, line after line, on one thread, and
    each item's set-up (its columns' destinations, item_columns) is shared by several
    panels (by one, 1x1 layers with 16 channels on 56x56 ran at half the speed).
    In blocks of 384 columns, wav2vec 2.0's first layer (1 -> 512 channels, kernel 10, stride
    5, 3199 output columns) ran as 9 items, which two threads wrote as short runs of every
    row, one of them alone at the end; in 16 blocks of whole rows it runs 1.1x faster on one
    thread and 1.66x on two (batch 4: 1.22x, 1.72x; float32).  Not taken by 1x1 layers with
    few channels on larger images (16 -> 96 on 112x112: B beyond WHOLE_ROW_BYTES), which ran
    0.75-0.8x as fast in blocks of 1536 or 4080 columns."""
    cdef Py_ssize_t NR = LC_NV_B * LC_VEC_BYTES // itemsize, f, block = NCB_TILES * NR
    cdef Py_ssize_t most = block
    if p.by_pixel or p.N * p.G * row_panels(p) < ROW_ITEMS * SHORT_K_PANELS:
        return block
    for f in range(p.nphase):
        if (not short_k(phases[f].K, block, itemsize)
                or phases[f].K * phases[f].ncols * itemsize > WHOLE_ROW_BYTES):
            return block
        most = max(most, round_up(phases[f].ncols, NR))
    return most


cdef bint product_bands(Product *p, Py_ssize_t taps, Py_ssize_t NR) noexcept nogil:
    """set_band for the product p once its work is split: a 1x1 product (`taps` 1) of one
    image per work item whose grid tiles read its source.  Then, with the staging settled,
    p.near_b: a source still read in place whose channels alias (a multiple of ALIAS_BYTES
    apart, too few rows to spread or band them), whose rows the tiles ask for nearer ahead
    (LC_PF_NEAR in microkernel.h)."""
    cdef bint band = set_band(&p.st, p.ncb, NR, p.M,
                              taps == 1 and p.nimg == 1 and not p.by_pixel)
    p.near_b = (p.st.identity and p.st.nchan > 1 and p.st.itemsize > 0
                and aliases(p.st.chan * p.st.itemsize))
    return band


cdef bint pixel_tiles_suit(const Product *p, const Phase *phases, Py_ssize_t itemsize,
                           double skip) noexcept nogil:
    """Whether the tiles of pixels by channels (pixel_tiles) suit a forward-style product: where
    the tiled product's cost in grid columns, junk included and its one-vector tiles counted
    NARROW_COST times (likewise pixel tiles' last panel of one vector, in float64), is
    PIXEL_WASTE times or more what pixel_tiles computes (the valid pixels of a work item's
    images rounded up to a whole tile of LC_MR_B, its channels to panels of NR, the last to
    whole vectors), plus, where the tiled product would read the weight in place (p.gathered:
    few columns), packing it (PACK_COLUMNS a phase).  Since pixel tiles take pixels across
    rows and images: small 2-D images with many channels at a training batch (3x3 on 14x14
    with 64 to 512 channels, 1x7 on 17x17, 3x3 on 7x7 with 32 output channels: 1.06-1.17x
    forward and input gradient, float32 on one and two threads), large dilations whose
    windows leave most of the padded grid (DeepLab's 3x3 with dilation 12 on 33x33:
    1.2-1.4x), 3-D planes of 4x4 and 4x14x14, the input gradient of 2x2x2 stride 2.  That is
    small grids of 3-D convolutions (3x3x3 on 8x8x8 computes 1.25 times its pixels tiled, its
    rows and planes sharing the padding's zeros, 1.0 by pixels) and small phase grids of
    transposed ones.  Where the tiled product would be compact (phase_pieces), its cost is its
    valid columns, HALVES_COST times for halves: 3x3x3 on 8x8x8 at batch 2 then leaves pixel
    tiles for halves in float32 with AVX-512 (below, the measurements of the grid).  Measured
    with that staging (tiled time / pixel_tiles time, float32 one thread): 3x3x3 on 8x8x8,
    384 -> 128 and 128 -> 128 channels at batch 2 1.20-1.26, at batch 1 (packing counted)
    1.03-1.15, 64 -> 128 1.04 (its input gradient, 64 channels, is left to the
    tiled product: 1.0-1.1, 48 + 16 channel panels); a GAN's 4x4 stride-2 transposed
    convolution from 8x8 to 16x16 at batch 32 1.23 (against the tiled product on the earlier
    staging, whose rows had both paddings).  Left to the tiled product: the same from 16x16
    (1.07 faster than on the earlier staging), 3x3x3 on 8x8x8 64 -> 64 at batch 2 (model 1.125,
    tiled 0.9-0.94), 16x16x16 (pixel tiles 0.87-0.97 against the earlier staging, 0.8-0.9 now),
    32x32x32 with 32 channels 0.71-0.84; measured on the earlier staging: 4x4x4 0.95, 14x14 1.0,
    28x28 and 56x56 0.8-0.9; at batch 1 3x3 on 7x7 with 512 channels 0.45-0.54, the GAN layers
    0.5-0.98, a squeeze-and-excitation layer's 64 -> 1536 channels on one pixel (16 grid columns
    against 8) 0.1.  3x3 on 7x7 with 512 channels at batch 8 takes pixel tiles (the tiled product's
    55 columns a row are a tile and a one-vector tile: model 1.29), as fast as the tiled product
    (0.97-1.0).  Pixel tiles that skip taps (skip, the share of their (tile, tap) pairs they
    skip) compute that much less: 3x3x3 on few frames (2x40x40, 3x20x20 and 4x28x28 at batch
    4, 2x56x56 at batch 1: 35, 26, 20 and 35 %) ran 1.27-1.45x faster so than on the grid,
    whose tiles compute the taps that read the planes of padding before and after."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // itemsize, NR = LC_NV_B * VW
    cdef Py_ssize_t f, rows, rest = p.M % NR, tail, one, cols, pieces
    cdef Py_ssize_t nimg = 1, columns = 0
    cdef double tiled = 0, channels, by_pixel = 0
    cdef const Phase *ph
    for f in range(p.nphase):
        columns += phases[f].ncols
    if 0 < columns < ITEM_COLUMNS:     # the images of a work item, as split_work makes them
        nimg = max(1, min(p.N, MAX_IMAGES, (ITEM_COLUMNS + columns - 1) // columns))
    for f in range(p.nphase):
        ph = &phases[f]
        rows = ph.grid[0] * ph.grid[1]
        # the tiled product's columns: compact (with halves costing HALVES_COST), or the grid;
        # weighed as a grid where it reads the weight in place, though its tiles are compact
        # there too (lc_tile_gc): pixel tiles that skip taps ran faster than those (24 images
        # of 4x4, 5x5 with padding 2, float64: 1.08 against 1.47 ms), and the choice was
        # measured against the grid
        pieces = 0 if p.gathered else phase_pieces(p, ph, itemsize)
        cols = rows * ph.grid[2] if pieces else ph.ncols
        # the last columns of a block in tiles of two vectors and one (product_tiles)
        tail = (cols % NR + VW - 1) // VW
        one = tail_ones(tail)
        tiled += ((cols // NR * NR + (tail - one + NARROW_COST * one) * VW)
                  * (HALVES_COST if pieces == 2 else ROWS_COST if pieces == ROW_PIECES else 1))
        # the valid columns of an item's images one after the other, the last tile of
        # LC_MR_B pixels partly computed for nothing
        by_pixel += round_up(nimg * rows * ph.grid[2], LC_MR_B) / <double> nimg
    # the last channels in a panel of one vector (a one-vector tile) or two; in float32 a
    # last panel of one vector costs its columns (lc_tile_p: 3x3 on 14x14 with 64, 160 and 256
    # channels at batch 8 1.06-1.14x as pixel tiles than on the grid, which the one-vector
    # panel counted 1.5 times had kept); in float64 as many layers gained as lost (0.93-1.10).
    # Not where that panel is all the channels (a vector or fewer: ResNeXt's groups of 16 and
    # 4, a layer to or from 16 channels): those tiles are LC_MR_B accumulators, with no full
    # panel beside them, and the grid's tiles (the channels as rows, by three vectors of
    # pixels) ran 1.05-1.16x faster
    # (3x3 on 14x14 at batch 8, 32 groups of 16 channels, 16 groups of 4, 64 -> 16; on 7x7;
    # float32 one thread, fastest of three alternating runs; two threads 1.09-1.7x)
    cdef double narrow = 1 if itemsize == 4 and p.M > VW else NARROW_COST
    channels = p.M - rest + (0 if rest == 0 else narrow * VW if rest <= VW
                             else round_up(rest, VW))
    # pixel tiles pack the weight, which a gathered product reads in place
    cdef double pack = PACK_COLUMNS * p.nphase * channels if p.gathered else 0
    return (p.N * tiled * round_up(p.M, p.mr)
            >= PIXEL_WASTE * p.N * by_pixel * channels * (1 - skip) + pack)


cdef int product_pass(const Product *p, const Phase *phases,
                      const element[:, :, :, :, ::1] src, const Py_ssize_t[::1] boff,
                      const element *a, const Py_ssize_t[::1] aoff,
                      const element[::1] bias, element[:, :, :, :, ::1] dst, Packing *pk,
                      int num_threads) except -1:
    """Run the forward-style product p (its phases, A at a read at aoff, B the staged src read
    at boff) into dst on num_threads threads, with this Python thread's workspaces.  Where A is
    packed (not p.gathered), a is where it goes, packed as pk says: by the items as they first
    read it (packs_first), else by all threads before they run."""
    cdef Py_ssize_t NR = LC_NV_B * LC_VEC_BYTES // sizeof(element)
    dtype = typecode(<element *> NULL)
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    # the staged slices, a tile (pixel tiles: a vector's lanes of rows, and a block for their
    # transposes), an item's sums where A's columns run in several blocks (product_tile) and
    # the columns of B gathered for dot products (product_dots), dots_at
    cdef Py_ssize_t room = dot_room(p), t, u
    cdef Py_ssize_t fper = per_thread(dots_at(p, sizeof(element)) + room)
    # the staged slices' name, dcol and run of an item's columns (pixel tiles: and six entries
    # per pixel of its images), the gathered columns' keys (dot_keys_at)
    cdef Py_ssize_t iper = per_thread(dot_keys_at(p) + (p.nimg * DOT_KEY if room else 0))
    cdef element[::1] fws = _workspace("f", dtype, fper * num_threads)
    cdef Py_ssize_t[::1] iws = _workspace("i", np.intp, iper * num_threads)
    if room:
        for t in range(num_threads):        # no columns gathered yet
            for u in range(p.nimg * DOT_KEY):
                iws[t * iper + dot_keys_at(p) + u] = -1
    cdef const element *bptr = &bias[0] if bias.shape[0] > 0 else NULL
    cdef element[::1] sws
    cdef element *shared = NULL
    cdef int[::1] states
    pk.state = NULL
    if packs_first(p, num_threads):     # nothing packed yet
        states = _workspace("p", np.intc, p.G * p.nrb)[:p.G * p.nrb]
        states[:] = 0
        pk.state = &states[0]
    elif not p.gathered:
        with nogil:
            pack_before(p, phases, pk, <element *> a, num_threads)
    if shares_slices(p, num_threads, sizeof(element)):
        sws = _workspace("s", dtype, p.N * p.G * p.st.size)
        shared = &sws[0]
    with nogil:
        if shared != NULL:
            stage_shared(&src[0, 0, 0, 0, 0], &p.st, p.N, p.G, p.src_img, p.src_grp, shared,
                         num_threads)
        run_product(p, phases, &src[0, 0, 0, 0, 0], shared, &boff[0], a, &aoff[0], bptr,
                    &dst[0, 0, 0, 0, 0], &fws[0], fper, &iws[0], iper, pk, num_threads)
    return 0


cdef bint shares_slices(const Product *p, int nthreads, Py_ssize_t itemsize) noexcept nogil:
    """Whether the forward-style product p stages its slices once, all threads together,
    before it runs (stage_shared): where its threads share slices (run_product hands out
    items, not slices: batch 1, or an odd batch under MIN_ITEMS on two threads), each slice of
    SHARED_STAGE_BYTES or more and all of them SHARED_MAX_BYTES at most, staged whole (no
    bands), and not all of them read in place."""
    return (nthreads > 1 and not by_slices(p, nthreads) and not p.st.band
            and not p.st.band_rows
            and p.st.size * itemsize >= SHARED_STAGE_BYTES
            and p.N * p.G * p.st.size * itemsize <= SHARED_MAX_BYTES
            and not last_in_place(&p.st, p.N, p.G, p.src_img, p.src_grp))


cdef void forward_product(Product *p, Phase *ph, tuple xshape, tuple wshape, tuple yshape,
                          stride, pad, dilation, Py_ssize_t groups, Py_ssize_t itemsize,
                          double skip):
    """The forward pass's product: its staging of x, its one phase, the choice of its tiles
    (skip: as choose_tiles)."""
    cdef Py_ssize_t NR = LC_NV_B * LC_VEC_BYTES // itemsize, Cg = wshape[1]
    size, out, ksize = xshape[2:], yshape[2:], wshape[2:]
    set_stage(&p.st, size, tuple(stride), tuple(pad),
              x_stage_shared(size, out, ksize, stride, pad, dilation), Cg, NR, math.prod(xshape),
              itemsize, wshape[0] // groups)
    set_product(p, xshape[0], groups, xshape[1], wshape[0], out)
    set_phase(ph, &p.st, Cg * math.prod(ksize), 0, out, 0, (out[1] * out[2], out[2], 1), NR)
    ph.taps[0], ph.taps[1], ph.taps[2] = ksize      # kernel_taps' order
    p.nphase = 1
    # A[o, (c, tap)] = w[g * Og + o, c, tap]: the weight's rows as they are, read in place
    # where the product is narrow, else packed
    p.gathered = p.N * ph.ncols < GATHER_COLUMNS
    choose_tiles(p, ph, itemsize, p.N * ph.ncols * ph.K >= GATHER_WORK, skip)
    p.a_rs = ph.K
    p.a_grp = p.M * ph.K
    split_work(p, compact_phases(p, ph, itemsize))
    product_bands(p, math.prod(ksize), NR)
    # a large slice in bands of rows, each for a column block (its taps' reach and whole
    # tiles past it)
    set_row_band(&p.st, p.ncb, taps_reach(&p.st, ksize, dilation, NR), p.ncb,
                 p.nimg == 1 and not p.by_pixel and not ph.pieces and not p.gathered)


def forward(const element[:, :, :, :, ::1] x, const element[:, :, :, :, ::1] w,
            const element[::1] bias, element[:, :, :, :, ::1] y,
            stride, pad, dilation, Py_ssize_t groups, int num_threads):
    """y = conv(x, w) + bias over 5-D arrays.  An empty bias means none."""
    dtype = typecode(<element *> NULL)
    cdef _Geometry geo = tiled_geometry(PASS_FORWARD, shape5(x.shape), shape5(w.shape),
                                        shape5(y.shape), stride, pad, dilation, groups,
                                        sizeof(element))
    cdef Product *p = &geo.p
    cdef Py_ssize_t Og = w.shape[0] // groups, K = geo.phases[0].K
    cdef Py_ssize_t mpad = round_up(Og, p.mr)
    cdef element[::1] apack = _workspace("a", dtype, 1 if p.gathered else groups * mpad * K)
    cdef Packing pk
    pk.w = &w[0, 0, 0, 0, 0]
    pk.kpos = &geo.kpos[0] if p.valid != NULL else NULL
    pk.aoff = NULL
    pk.Og, pk.KS, pk.cb = 0, 0, 0
    cdef const element[:, :, :, :, ::1] src = x
    cdef element[:, :, :, :, ::1] xw
    cdef Py_ssize_t nw, sw = stride[2], dw = dilation[2], pw = pad[2]
    if geo.widened is not None:     # x widened into this Python thread's workspace
        nw = math.prod(geo.widened)
        xw = np.asarray(_workspace("x", dtype, nw))[:nw].reshape(geo.widened)
        with nogil:
            widen_source(&x[0, 0, 0, 0, 0], x.shape[0] * x.shape[1], x.shape[2], x.shape[3],
                         x.shape[4], xw.shape[3], geo.widen_lead, y.shape[4], w.shape[4], sw,
                         dw, pw, &xw[0, 0, 0, 0, 0], num_threads)
        src = xw
    product_pass(p, geo.phases, src, geo.boff, &w[0, 0, 0, 0, 0] if p.gathered else &apack[0],
                 geo.aoff, bias, y, &pk, num_threads)


cdef _Geometry product_geometry(which, xshape, wshape, yshape, stride, pad, dilation,
                                Py_ssize_t groups, Py_ssize_t itemsize):
    """The geometry of the forward pass (`which` "forward") or the input gradient ("input"),
    for the inspectors below."""
    return tiled_geometry(PASS_FORWARD if which == "forward" else PASS_INPUT, tuple(xshape),
                          tuple(wshape), tuple(yshape), stride, pad, dilation, groups, itemsize)


def uses_pixel_tiles(which, xshape, wshape, yshape, stride, pad, dilation, Py_ssize_t groups,
                     Py_ssize_t itemsize):
    """Whether the forward pass (`which` "forward") or the input gradient ("input") of a
    convolution of these 5-D shapes runs as tiles of pixels by channels (pixel_tiles)."""
    return bool(product_geometry(which, xshape, wshape, yshape, stride, pad, dilation, groups,
                                 itemsize).p.by_pixel)


def product_plan(which, xshape, wshape, yshape, stride, pad, dilation, Py_ssize_t groups,
                 Py_ssize_t itemsize):
    """How the forward-style product of the forward pass (`which` "forward") or the input
    gradient ("input") of these 5-D shapes cuts its work (internal: for the tests)."""
    cdef _Geometry geo = product_geometry(which, xshape, wshape, yshape, stride, pad,
                                          dilation, groups, itemsize)
    cdef Product p = geo.p
    return {"images": p.nimg, "image blocks": p.nib, "row blocks": p.nrb,
            "block columns": p.ncb,
            "pixel tiles": bool(p.by_pixel), "taps skipped": p.valid != NULL,
            "skip share": geo.skip,
            "weight read in place": bool(p.gathered), "weight streamed": bool(p.stream_a),
            "weight packed by the items on two threads": bool(packs_first(&p, 2)),
            "rows asked for nearer": bool(p.near_b),
            "channel gap": p.st.gap, "source read in place": bool(p.st.identity),
            "bands": bool(p.st.band), "band rows": p.st.band_rows,
            "slices staged shared on two threads": bool(shares_slices(&p, 2, itemsize)),
            "staged slice": p.st.size,
            "last slice read in place": last_in_place(&p.st, p.N, p.G, p.src_img, p.src_grp),
            "compact phases": sum([geo.phases[f].pieces > 0 for f in range(p.nphase)]),
            "halves": sum([geo.phases[f].pieces == 2 for f in range(p.nphase)]),
            "rows by masks": sum([geo.phases[f].pieces == ROW_PIECES for f in range(p.nphase)]),
            "dot columns": dot_columns_of(geo, itemsize),
            "widened": geo.widened is not None,
            "taps packed at once": (which == "input" and not p.gathered
                                    and taps_at_once(math.prod(wshape[2:]), p.mr))}


cdef Py_ssize_t dot_columns_of(_Geometry geo, Py_ssize_t itemsize) except -1:
    """The valid columns of the first image block and group that the forward-style product
    computes as dot products (dot_columns), over all its phases and column blocks."""
    cdef const Product *p = &geo.p
    cdef Py_ssize_t NR = LC_NV_B * LC_VEC_BYTES // itemsize, r, j0, count = 0
    cdef Py_ssize_t[::1] cols = np.zeros(2 * p.ncb + 2, np.intp)
    cdef Item it
    cdef const Phase *ph
    if p.by_pixel:
        return 0
    for r in range(p.items_ng):
        find_item(p, geo.phases, r * p.nrb, p.ncb, &it)
        ph = &geo.phases[it.f]
        item_columns(&p.st, ph, &it, NR, &cols[0], &cols[p.ncb])
        j0 = it.ncols // NR * NR
        if ph.K > 0 and dot_columns(p, ph, &it, j0, &cols[p.ncb], LC_VEC_BYTES // itemsize):
            count += valid_columns(&cols[p.ncb], j0, it.ncols, NULL)
    return count


def grid_waste(which, xshape, wshape, yshape, stride, pad, dilation, Py_ssize_t groups,
               Py_ssize_t itemsize):
    """The columns the forward-style product of the forward pass (`which` "forward") or the
    input gradient ("input") computes per pixel it writes (its phases' grids, junk included,
    or a compact phase's valid columns, over the pixels of y or dx): 1.0 without junk."""
    cdef _Geometry geo = product_geometry(which, xshape, wshape, yshape, stride, pad, dilation,
                                          groups, itemsize)
    cdef Py_ssize_t f, columns = 0
    for f in range(geo.p.nphase):
        columns += geo.phases[f].ncols
    dst = yshape if which == "forward" else xshape
    return columns / max(1, dst[2] * dst[3] * dst[4])


cdef list input_phases(tuple size, tuple ksize, stride, pad, dilation):
    """Per axis, per phase r of the input gradient (input indices = r mod s): its taps as
    (k, offset into dy), and the number of input indices in the phase."""
    axes = []
    for a in range(3):
        s, d, pb = stride[a], dilation[a], pad[a]
        axes.append([([(k, (r + pb - k * d) // s) for k in range(ksize[a])
                       if (r + pb - k * d) % s == 0], (size[a] - r + s - 1) // s)
                     for r in range(min(s, size[a]))])
    return axes


cdef tuple dy_stage(list axes, tuple out):
    """The staging of dy once for all phases of an input gradient: (lead, q), so that every
    phase's reads are inside."""
    lead = tuple(max([0] + [-o for taps, _ in axes[a] for _, o in taps]) for a in range(3))
    q = tuple(max([out[a] + lead[a]] + [n + o + lead[a] for taps, n in axes[a] for _, o in taps])
              for a in range(3))
    grid = tuple(max([n for _, n in axes[a]]) for a in range(3))
    return lead, shared_zeros(q, out, (1, 1, 1), lead, grid)


cdef tuple set_input_phases(Product *p, Phase *phases, list axes, tuple lead, tuple q,
                            tuple size, tuple ksize, stride, Py_ssize_t NR):
    """The phases (rd, rh, rw) of an input gradient, rd outermost, into phases (dy staged with
    lead and q, dy_stage); returns, per phase, the B offsets (row
    (o, tap): staged dy at the tap's offset) and the columns of A (A[c, (o, tap)] =
    w[o, c, tap], at koff from row c)."""
    cdef Py_ssize_t f = 0, k_off = 0, Og = p.st.nchan, Cg = p.M
    cdef Py_ssize_t KS = ksize[0] * ksize[1] * ksize[2]
    dstep = (stride[0] * size[1] * size[2], stride[1] * size[2], stride[2])
    boffs, koffs = [], []
    for rd, (td, nd_) in enumerate(axes[0]):
        for rh, (th, nh) in enumerate(axes[1]):
            for rw, (tw, nw) in enumerate(axes[2]):
                taps = [(kd, kh, kw, od + lead[0], oh + lead[1], ow + lead[2])
                        for kd, od in td for kh, oh in th for kw, ow in tw]
                set_phase(&phases[f], &p.st, Og * len(taps), k_off, (nd_, nh, nw),
                          (rd * size[1] + rh) * size[2] + rw, dstep, NR)
                phases[f].taps[0], phases[f].taps[1], phases[f].taps[2] = (
                    len(td), len(th), len(tw))
                boffs.append(channel_rows(Og, p.st.chan, [(t[3] * q[1] + t[4]) * q[2] + t[5]
                                                          for t in taps]))
                koffs.append(channel_rows(Og, Cg * KS, [(t[0] * ksize[1] + t[1]) * ksize[2]
                                                        + t[2] for t in taps]))
                k_off += phases[f].K
                f += 1
    return boffs, koffs


cdef tuple input_product(Product *p, tuple dyshape, tuple wshape, tuple dxshape, stride, pad,
                         dilation, Py_ssize_t groups, Py_ssize_t itemsize, double skip):
    """The input gradient's product: its staging of dy, its phases (malloc'ed, returned first
    as an address; the caller frees them), the choice of its tiles (skip: as choose_tiles);
    and, per phase, its B offsets and columns of A (set_input_phases)."""
    cdef Py_ssize_t NR = LC_NV_B * LC_VEC_BYTES // itemsize, Og = wshape[0] // groups, f
    cdef Py_ssize_t KS = math.prod(wshape[2:])
    size, out, ksize = dxshape[2:], dyshape[2:], wshape[2:]
    axes = input_phases(size, ksize, stride, pad, dilation)
    lead, q = dy_stage(axes, out)
    set_stage(&p.st, out, (1, 1, 1), lead, q, Og, NR, math.prod(dyshape), itemsize,
              wshape[1])
    set_product(p, dxshape[0], groups, wshape[0], dxshape[1], size)
    p.nphase = len(axes[0]) * len(axes[1]) * len(axes[2])
    cdef Phase *phases = <Phase *> malloc(p.nphase * sizeof(Phase))
    if phases == NULL:
        raise MemoryError()
    try:
        boffs, koffs = set_input_phases(p, phases, axes, lead, q, size, ksize, stride, NR)
        columns = sum([phases[f].ncols for f in range(p.nphase)])
        work = sum([phases[f].ncols * phases[f].K for f in range(p.nphase)])
        # A[c, (o, tap)] = w[g * Og + o, c, tap]: row c at a step of KS, column (o, tap) at
        # koff, read in place where the product is narrow, else packed phase by phase
        p.gathered = p.N * columns < GATHER_COLUMNS
        choose_tiles(p, phases, itemsize, p.N * work >= GATHER_WORK, skip)
        for f in range(1, p.nphase):    # A packed phase by phase, in panels of p.mr rows
            phases[f].a_off = phases[f - 1].a_off + p.G * packed_phase(p, &phases[f - 1])
    except BaseException:
        free(phases)
        raise
    p.a_rs = KS
    p.a_grp = Og * wshape[1] * KS
    split_work(p, compact_phases(p, phases, itemsize))
    cdef Py_ssize_t chan = p.st.chan
    if product_bands(p, KS, NR):
        boffs = [b // chan * p.st.chan for b in boffs]     # one tap, at 0: channel rows
    return <Py_ssize_t> phases, boffs, koffs


def grad_input(const element[:, :, :, :, ::1] dy, const element[:, :, :, :, ::1] w,
               const element[::1] bias, element[:, :, :, :, ::1] dx, stride, pad, dilation,
               Py_ssize_t groups, int num_threads):
    """dx = bias + gradient of conv(x, w) with respect to x, given dy (the transposed
    convolution of dy); dx is overwritten.  An empty bias means none."""
    dtype = typecode(<element *> NULL)
    cdef _Geometry geo = tiled_geometry(PASS_INPUT, shape5(dx.shape), shape5(w.shape),
                                        shape5(dy.shape), stride, pad, dilation, groups,
                                        sizeof(element))
    cdef Product *p = &geo.p
    cdef Py_ssize_t n, last = p.nphase - 1, M = w.shape[1], mpad = round_up(M, p.mr)
    cdef element[::1] apack
    cdef Packing pk
    if not p.gathered:      # A packed, phase f at phases[f].a_off
        n = geo.phases[last].a_off + groups * mpad * geo.phases[last].K
        apack = _workspace("a", dtype, n + 1)
        apack[n] = 0
    pk.w = &w[0, 0, 0, 0, 0]
    pk.kpos = NULL
    pk.aoff = &geo.aoff[0]
    pk.Og = w.shape[0] // groups
    pk.KS = w.shape[2] * w.shape[3] * w.shape[4]
    pk.cb = PIX_CB if p.valid != NULL else 1
    product_pass(p, geo.phases, dy, geo.boff, &w[0, 0, 0, 0, 0] if p.gathered else &apack[0],
                 geo.aoff, bias, dx, &pk, num_threads)


# ---------------------------------------------------------------------------------------------
# The weight gradient.

cdef void set_weight_product(WeightProduct *p, Py_ssize_t N, Py_ssize_t G, Py_ssize_t C,
                             Py_ssize_t O, Py_ssize_t K, tuple out):
    """The sizes of the weight gradient of N images of G groups, C input and O output channels,
    K rows (channels times taps per group) and output sizes out (p.lanes, p.NR, p.block and
    p.st set before, with one image a block; weight_images then sets the blocks)."""
    cdef int a
    p.N = N
    p.G = G
    p.M = O // G
    p.K = K
    p.Rpad = round_up(p.M if p.dy_rows else p.K, p.mr)
    p.Cpad = round_up(p.K, p.NR) if p.dy_rows else round_up(p.M, LC_OR_D if p.lanes else p.NR)
    for a in range(3):
        p.grid[a] = out[a]
    p.dstep[0] = out[1] * out[2]
    p.dstep[1] = out[2]
    p.dstep[2] = 1
    p.ncols = ((out[0] - 1) * p.st.q[1] + out[1] - 1) * p.st.q[2] + out[2]
    p.x_img = C * p.st.src_chan
    p.x_grp = p.st.nchan * p.st.src_chan
    p.y_plane = out[0] * out[1] * out[2]
    p.y_img = O * p.y_plane
    p.y_grp = p.M * p.y_plane


cdef bint compact_block(const WeightProduct *p, Py_ssize_t nimg) noexcept nogil:
    """Whether the steps of blocks of nimg images sum over the valid grid columns only: where
    the junk between rows, planes and images makes WEIGHT_WASTE grid columns a valid pixel or
    more (and lc_tile_a or its one-vector form sums them); always where p.dy_rows."""
    cdef Py_ssize_t valid = p.grid[0] * p.grid[1] * p.grid[2]
    return p.dy_rows or not p.lanes and block_columns(p, nimg) >= WEIGHT_WASTE * nimg * valid


cdef Py_ssize_t step_cost(const WeightProduct *p, Py_ssize_t nimg,
                          Py_ssize_t per_step) noexcept nogil:
    """The cost, in columns, of the reduction steps of one group with blocks of nimg images:
    the columns they sum (all grid columns, or the valid ones: compact_block), plus per_step
    for each step."""
    cdef Py_ssize_t nib = (p.N + nimg - 1) // nimg, B = p.block, n_last = p.N - (nib - 1) * nimg
    cdef Py_ssize_t full = block_columns(p, nimg), last = block_columns(p, n_last)
    cdef Py_ssize_t steps = (nib - 1) * ((full + B - 1) // B) + (last + B - 1) // B
    cdef Py_ssize_t valid = p.grid[0] * p.grid[1] * p.grid[2]
    if compact_block(p, nimg):
        return p.N * valid + steps * per_step
    return (nib - 1) * full + last + steps * per_step


cdef bint one_step(const WeightProduct *p) noexcept nogil:
    """Whether the weight gradient p (rows k of x by columns o: not p.dy_rows, not p.lanes)
    sums all its images' columns in one reduction step (p.direct: each item writes its rows of
    dw itself) rather than in steps of p.block columns cut into chunks, each chunk's partial
    product written and then summed (rows_to_dw).  Where the partial product is ONE_STEP_BYTES
    or more, so beyond an L2, its chunks went to memory and back: 4 of 21 MB for the 768 ->
    256 3x3x3 layer on 8^3 of a 3-D U-Net at batch 2, a quarter of its time.  Taken where the
    step's packed dy (the columns o of all its columns, the valid ones where the step is
    compact) fits in ONE_STEP_PANEL bytes, within an L2, as every block of rows reads all of
    it, and its staged images in ONE_STEP_STAGED.  Measured (old / new, fastest of three to
    five alternating runs): that layer 1.25-1.32x at batches 1 and 2 on one thread (1.26-1.39x
    on two, float64 at batch 1 1.23x), 256 -> 256 on 8^3 1.20-1.37x, 128 -> 256 at batch 2
    1.11x, ResNet-50's 2048 -> 512 1x1 on 7x7 at batch 8 1.07-1.23x (AVX2 1.11-1.20x on
    these).  Panels of 1.6 MB (wav2vec 2.0's 512-channel kernel-3 stride-2 layer on 400
    samples at batch 4, VGG's 512 on 14x14 at batch 4, 256 on 14x14 at batch 8) ran
    0.94-1.09x on one thread, 0.82-1.06x on two; 2 MiB in float64 (128 -> 256 on 8^3 at
    batch 2) 0.93x.  The sizes are those of the problem, whatever blocks of images p.st stages
    now."""
    cdef Py_ssize_t cols, image = p.st.nchan * (p.st.chan // max(p.st.nimg, 1))  # per image
    if p.lanes or p.dy_rows or p.Rpad * p.Cpad * p.st.itemsize < ONE_STEP_BYTES:
        return False
    cols = (p.N * p.grid[0] * p.grid[1] * p.grid[2] if compact_block(p, p.N)
            else block_columns(p, p.N))
    return (p.Cpad * cols * p.st.itemsize <= ONE_STEP_PANEL
            and p.N * image * p.st.itemsize <= ONE_STEP_STAGED)


cdef void weight_images(WeightProduct *p, Py_ssize_t VW, bint one) noexcept nogil:
    """Images per block of reduction steps, from the problem alone: of the counts whose
    planes fill at most BLOCK_STEPS steps (and whose staged copy fits in STAGED_IMAGES
    elements), the smallest with the least step_cost; and the steps of those blocks.  A step
    of lc_tile_d costs VW * VW columns more (its lane sums: as many adds as VW vectors of
    columns), one of lc_tile_a STEP_COLUMNS_A.  `one` (set_weight, once one_step holds): all
    the images in one block of one step instead."""
    cdef Py_ssize_t per_step = VW * VW if p.lanes else STEP_COLUMNS_A, n, most, best = 1
    cdef Py_ssize_t full, nb
    most = min(p.N, BLOCK_STEPS * p.block // p.st.plane,
               STAGED_IMAGES // max(p.st.nchan * p.st.chan, 1))
    if p.ncols >= p.block or p.dy_rows:     # an image fills a step (or dy is read in place)
        most = 1
    for n in range(2, most + 1):
        if step_cost(p, n, per_step) < step_cost(p, best, per_step):
            best = n
    if one:
        best = p.N
        p.block = round_up(block_columns(p, p.N), VW)
    set_stage_images(&p.st, best, p.NR)
    p.nimg = best
    p.nib = (p.N + best - 1) // best
    # steps as even as they go: a 28x28 image's 811 grid columns in 4 steps of 208 and 187,
    # not 3 of 256 and one of 43, which made a short last chunk and left a thread of two idle
    # for a third of a batch-1 weight gradient
    full = block_columns(p, best)
    nb = (full + p.block - 1) // p.block
    p.block = round_up((full + nb - 1) // nb, VW)
    p.nblk = (block_columns(p, best) + p.block - 1) // p.block
    p.nblk_last = (block_columns(p, p.N - (p.nib - 1) * best) + p.block - 1) // p.block
    p.nsteps = (p.nib - 1) * p.nblk + p.nblk_last


cdef inline Py_ssize_t gcd(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    while b:
        a, b = b, a % b
    return a


cdef void split_weight_work(WeightProduct *p, Py_ssize_t VW) noexcept nogil:
    """The work items of the weight gradient, from the problem alone: p.nchunk chunks of the
    reduction steps, and p.nkb blocks of p.kblk tile panels of rows k."""
    # Reduction chunks: a function of the problem only, never of the thread count.  At least
    # four items (both cores busy, and some balance for more), more while the partial products
    # stay within about 1 MiB (float32): each chunk's partial is written and then summed.
    cdef Py_ssize_t nsteps = p.nsteps, G = p.G
    cdef Py_ssize_t npan = p.Rpad // p.mr, base
    # One chunk whose items write their rows of dw themselves (p.direct): a reduction of one
    # step, or where p.dy_rows, one of several steps whose packed x together fit in
    # DIRECT_STEPS_BYTES (each item keeps them all and sums every step for a span of rows at a
    # time), rather than chunks whose partial products are written and summed after
    p.direct = nsteps == 1 or (p.dy_rows and nsteps > 1 and nsteps * p.Cpad * p.block
                               * p.st.itemsize <= DIRECT_STEPS_BYTES)
    p.nchunk = 1
    if not p.direct:
        p.nchunk = max(1, min(nsteps, 32, max((4 + G - 1) // G,
                                              (1 << 18) // (G * p.Rpad * p.Cpad))))
    # Few (group, chunk) items (batch 1, few pixels): the rows k are split into blocks too.
    # Each element is still summed by one item, in the same order.
    p.nkb = 1
    if G * p.nchunk < MIN_ITEMS:
        p.nkb = min(npan, (MIN_ITEMS + G * p.nchunk - 1) // (G * p.nchunk))
    p.kblk = (npan + p.nkb - 1) // p.nkb
    # Direct (small images at batch 1): each item writes its rows of dw itself, p.span tiles
    # of rows (whole vectors of rows k) at a time, so that the partial product, which the sums
    # then read back transposed, never leaves the cache.  ConvNeXt's 1x1 768 -> 3072 on 7x7 at
    # batch 1 wrote and read back a partial of 9.4 MB
    p.span = VW // gcd(p.mr, VW) if p.direct else 1
    if p.direct:
        # more tiles of rows at a time where their partial stays small, so that a wide packed
        # dy is read once for more of them (weight_tiles), never past the item's own rows (an
        # item's last span may be shorter: the blocks of rows, and so the work items, are
        # those of whole vectors of rows)
        base = p.span
        p.kblk = round_up(p.kblk, base)
        p.span = max(base, min(p.kblk,
                               SPAN_BYTES // (p.mr * p.Cpad * p.st.itemsize) // base * base))
    p.nkb = (npan + p.kblk - 1) // p.kblk


cdef double weight_cost(const WeightProduct *p) noexcept nogil:
    """The time of a weight-gradient plan of lc_tile_a (or _m), in tile rows times tile
    columns summed over one column: its products (step_cost of its blocks of images, by its
    padded rows and columns) plus PACK_COST for each element it packs (dy's M, or x's K where
    p.dy_rows, per valid pixel) or stages (x, where its blocks are staged rather than read in
    place), per image and group."""
    cdef Py_ssize_t valid = p.grid[0] * p.grid[1] * p.grid[2]
    cdef double cols = step_cost(p, p.nimg, STEP_COLUMNS_A)
    cdef double staged = 0
    if p.st.nimg > 1 or not p.st.identity:
        staged = <double> p.st.nchan * p.st.chan / p.st.nimg
    return p.G * (cols * p.Rpad * p.Cpad
                  + PACK_COST * p.N * (valid * (p.K if p.dy_rows else p.M) + staged))


cdef void set_weight(WeightProduct *p, tuple xs, tuple ws, tuple ys, stride, pad, dilation,
                     Py_ssize_t groups, Py_ssize_t itemsize, Py_ssize_t x_size):
    """The weight gradient's geometry for 5-D shapes xs (x), ws (dw) and ys (dy), elements of
    itemsize bytes and x_size elements of x: its tiles, staging, blocks of images and work
    items; the rows k of x read in place and dy packed, or where that costs more (weight_cost,
    times ROWS_K_COST against dy_rows that keeps its steps packed, where the rows k take one
    step or a step's packed dy is wide)
    and the output channels fill a tile's rows, the rows o of dy read in place and x packed
    (p.dy_rows), where a step's packed x fits in DY_ROWS_BYTES; else, where one_step, the
    reduction in one step.  Then, from the staging chosen, its bands (set_weight_band)."""
    cdef WeightProduct q
    cdef double rows_k = 1
    set_weight_as(p, xs, ws, ys, stride, pad, dilation, groups, itemsize, x_size, False, False)
    if not p.lanes:
        set_weight_as(&q, xs, ws, ys, stride, pad, dilation, groups, itemsize, x_size, True,
                      False)
        if q.direct and (p.nsteps == 1 or p.Cpad * p.block * itemsize > B_BLOCK_BYTES):
            rows_k = ROWS_K_COST
        # each block of rows of dy_rows reads all of a step's packed x (DY_ROWS_BYTES)
        if (q.Cpad * min(q.block, q.ncols) * itemsize <= DY_ROWS_BYTES
                and weight_cost(&q) < rows_k * weight_cost(p)):
            p[0] = q
        elif one_step(p):
            set_weight_as(p, xs, ws, ys, stride, pad, dilation, groups, itemsize, x_size,
                          False, True)
    set_weight_band(p, taps_reach(&p.st, ws[2:], dilation, p.NR))


cdef void set_weight_band(WeightProduct *p, Py_ssize_t reach) noexcept nogil:
    """Bands for the weight gradient p, whose steps read `reach` grid columns past their last
    (set_row_band): each band the rows for a chunk's steps, staged by the thread of the
    chunk's first item where a step first needs it (staged_band).  Only for one image a
    block whose rows k are x's (not p.dy_rows, which packs x, nor p.direct, which keeps
    every step)."""
    set_row_band(&p.st, (p.nsteps + p.nchunk - 1) // p.nchunk * p.block, reach, p.block,
                 not (p.dy_rows or p.direct))


cdef void set_weight_as(WeightProduct *p, tuple xs, tuple ws, tuple ys, stride, pad, dilation,
                        Py_ssize_t groups, Py_ssize_t itemsize, Py_ssize_t x_size,
                        bint dy_rows, bint one):
    """set_weight's geometry with p.dy_rows as given (dy_rows: lc_tile_a, never the lanes),
    in one reduction step if `one` (weight_images)."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // itemsize
    size, out, ksize = xs[2:], ys[2:], ws[2:]
    cdef Py_ssize_t K = ws[1] * ksize[0] * ksize[1] * ksize[2]
    # Output channels per group that fill at most half a vector would leave most lanes of
    # lc_tile_a empty: lc_tile_d sums along pixels instead.  Up to one vector, lc_tile_a one
    # vector wide (more rows).  Measured (one thread, grouped 3x3 on 7x7 to 56x56, 1 to 8
    # images), the narrow tile's speed-up over lc_tile_d: float32 AVX-512, 12 and 16 channels
    # 1.17-1.9x, 8 and fewer 0.72-1.12x; AVX2, 8 channels 0.96-1.25x, 2 and 4 channels 0.6x;
    # float64 AVX-512 1.5-1.9x from 2 channels on (there lc_tile_d, its eight 512-bit loads a
    # step each across cache lines, is never taken); AVX2, 2 and 4 channels 0.94-1.02x.
    cdef Py_ssize_t Og = ws[0] // groups
    p.dy_rows = dy_rows
    p.lanes = not dy_rows and 2 * Og <= VW and not (itemsize == 8 and LC_VEC_BYTES == 64)
    p.narrow = not p.lanes and (K if dy_rows else Og) <= VW
    # Where lc_tile_d's OR_D columns would hold zeros (fewer output channels per group), the
    # output channels are the rows of the tile instead (lc_tile_e), by OR_D rows k.  Measured
    # (one thread, AVX-512 float32, against lc_tile_d): 1 channel 3.3x, 2 3.0x, 3 2.1-2.2x (a
    # 3-D U-Net's last 1x1 to 3 classes, a generator's 4x4 stride-2 output), 5 1.6x, 6 1.3x,
    # 7 1.15x, 8 (no zeros) 1.03x; AVX2 (OR_D 4) 1 channel 1.7x (float64 too), 3 1.13-1.15x.
    p.out_rows = p.lanes and Og < LC_OR_D
    p.NR = VW if p.narrow else 2 * VW
    p.mr = (LC_OR_D if p.out_rows else LC_KR_D) if p.lanes else LC_MR_A1 if p.narrow else LC_MR_A
    p.block = PC_D_BYTES // itemsize if p.lanes else PC * 4 // itemsize
    set_stage(&p.st, size, tuple(stride), tuple(pad),
              x_stage_shared(size, out, ksize, stride, pad, dilation), ws[1], p.NR, x_size,
              itemsize)
    set_weight_product(p, xs[0], groups, xs[1], ws[0], K, out)
    weight_images(p, VW, one)
    split_weight_work(p, VW)
    p.compact = compact_block(p, p.nimg)
    # lc_tile_a/m and pack_x_t read x element by element, exactly the step's columns
    set_overrun(&p.st, p.ncols, VW, False, not (p.lanes or p.out_rows))


cdef Py_ssize_t weight_scratch(const WeightProduct *p, Py_ssize_t VW) noexcept nogil:
    """Elements of scratch a thread of the weight gradient p uses: the staging, the packed dy
    (p.direct: of every step); p.direct: the rows written together and a block to transpose
    (else rows_to_dw's block, VW * VW, after the staging)."""
    return per_thread(max(p.st.size + p.Cpad * p.block * (p.nsteps if p.direct else 1)
                          + (p.span * p.mr * p.Cpad + VW * VW if p.direct else 0), VW * VW))


cdef Py_ssize_t weight_indices(const WeightProduct *p) noexcept nogil:
    """Indices of scratch a thread of the weight gradient p uses: the marks of what it holds
    staged and packed and its band, a step's columns (dcol, run, cmap); p.direct: each
    step's A and columns."""
    return per_thread(4 + 3 * p.block + (2 * p.nsteps if p.direct else 0))


def weight_plan(xs, ws, ys, stride, pad, dilation, Py_ssize_t groups, Py_ssize_t itemsize):
    """How the weight gradient cuts its reduction for 5-D shapes as grad_weight takes them (x,
    dw, dy) and elements of `itemsize` bytes, and the scratch a thread uses (internal: for the
    tests, and for `choose`, which asks whether a 1x1 gradient's plan takes "dy rows")."""
    cdef WeightProduct p = tiled_geometry(PASS_WEIGHT, tuple(xs), tuple(ws), tuple(ys), stride,
                                          pad, dilation, groups, itemsize).q
    return {"images": p.nimg, "image blocks": p.nib, "steps": p.nsteps, "chunks": p.nchunk,
            "row blocks": p.nkb, "columns": p.ncols, "block": p.block, "lanes": bool(p.lanes),
            "compact": bool(p.compact), "narrow": bool(p.narrow), "direct": bool(p.direct),
            "output rows": bool(p.out_rows), "dy rows": bool(p.dy_rows),
            "band rows": p.st.band_rows,
            "scratch": weight_scratch(&p, LC_VEC_BYTES // itemsize),
            "indices": weight_indices(&p),
            "last slice read in place": last_in_place(&p.st, xs[0], groups, p.x_img,
                                                      p.x_grp)}


# ---------------------------------------------------------------------------------------------
# The geometry of each pass, worked out once per problem.

cdef class _Geometry:
    """What a pass of the tiled loops works out from the shapes and arguments alone: the
    product and its phases (forward, input gradient) or the weight gradient's product, and
    their tables.  Kept per problem (tiled_geometry) and only read by the passes, which may
    run in several Python threads at once."""
    cdef Product p
    cdef WeightProduct q
    cdef Phase *phases
    # B offsets of all phases (forward-style), or x's rows k where the weight gradient packs
    # them (dy_rows)
    cdef Py_ssize_t[::1] boff
    cdef Py_ssize_t[::1] aoff       # columns of A of all phases, or the weight gradient's rows
    cdef Py_ssize_t[::1] kpos       # forward, taps skipped: the column of A of w's column k
    cdef Py_ssize_t[::1] order      # item_order of the phases' column blocks
    cdef Py_ssize_t[::1] bstart     # and block_starts
    cdef unsigned char[::1] valid   # pixel tiles: staged_validity
    cdef double skip                # pixel tiles: skip_share (0 where not worked out)
    cdef tuple widened              # forward: the shape of x widened (widened_geometry), or None
    cdef Py_ssize_t widen_lead      # and the zero rows before x's first in each of its planes

    def __dealloc__(self):
        free(self.phases)


cdef object tap_blocks(object rows, Py_ssize_t nchan):
    """A table of columns (c, tap), c outermost (channel_rows), in the order of pixel tiles:
    blocks of PIX_CB channels, tap by tap within a block (blocked_column)."""
    table = np.asarray(rows).reshape(nchan, -1)
    return np.concatenate([table[c0:c0 + PIX_CB].T.reshape(-1)
                           for c0 in range(0, nchan, PIX_CB)] + [np.zeros(0, np.intp)])


cdef object staged_validity(const Stage *st):
    """Per element of a staged channel, 1 where staging copies it from the source, 0 where it
    is padding: two channels of ones staged, since the taps of a channel's last pixels read
    past its end, into the zeros the next channel begins with (shared_zeros) or the slack
    after the last one."""
    cdef Stage two = st[0]
    two.nchan = 2
    ones = np.ones(2 * max(st.src_chan, 1), np.float32)
    staged = np.zeros(2 * st.chan, np.float32)
    cdef float[::1] src = ones, out = staged
    stage_image(&src[0], &two, &out[0])
    return (staged != 0).view(np.uint8)


cdef object phase_bits(const Phase *ph):
    """The masks of the phase's taps (tap_bits) as a NumPy array, or None where its taps
    cannot be skipped by mask."""
    cdef size_t bits[PIX_TAPS]
    cdef Py_ssize_t T = ph.taps[0] * ph.taps[1] * ph.taps[2]
    if T == 0 or not tap_bits(ph, T, bits):
        return None
    return np.array([bits[t] for t in range(T)], dtype=np.uint64)


cdef object skip_share(_Geometry geo, unsigned char[::1] valid, list boffs):
    """The share of the pixel tiles' (tile, tap) pairs that tile_taps would skip, from the
    validity of a staged channel (staged_validity) and each phase's B offsets (boffs, channels
    outermost): per phase and column block of a work item (NCB_TILES * NR grid columns), the
    valid pixels of its p.nimg images, those of each PIX_SPAN images grouped by their mask of
    the taps that reach the source (list_pixels), in tiles of LC_MR_B; a tap is skipped where
    it reads padding for all of a tile's pixels.  That, not the share of the reads that is
    padding, is what skipping saves: pix2pix's 4x4 stride-2 layer onto 2x2 reads padding at
    44 % of its taps, but grouped image by image a tile takes the four corners of two images,
    and together they read every tap."""
    cdef Py_ssize_t f, C = geo.p.st.nchan, T, NCB = NCB_TILES * geo.p.mr
    cdef const Phase *ph
    skipped = total = 0
    flags = np.asarray(valid).astype(bool)
    for f in range(geo.p.nphase):
        ph = &geo.phases[f]
        if ph.K == 0:
            continue
        T = ph.K // C
        bits = phase_bits(ph)
        a, b, e = np.meshgrid(*[np.arange(ph.grid[i], dtype=np.intp) for i in range(3)],
                              indexing="ij")
        q = ((a * geo.p.st.q[1] + b) * geo.p.st.q[2] + e).reshape(-1)
        reach = flags[q.reshape(-1, 1) + np.asarray(boffs[f])[:T].reshape(1, -1)]
        masks = np.zeros(len(q), np.uint64)
        for t in range(T):
            masks |= np.where(reach[:, t], bits[t], np.uint64(0))
        blocks = q // NCB
        for v in np.unique(blocks):
            m = masks[blocks == v]
            _, first, kind = np.unique(m, return_index=True, return_inverse=True)
            rank = np.empty(len(first), np.intp)
            rank[np.argsort(first, kind="stable")] = np.arange(len(first))
            # an image's masks grouped; a block of images' repeats each mask as many times
            by_mask = m[np.argsort(rank[kind.reshape(-1)], kind="stable")]
            spans = [PIX_SPAN] * (geo.p.nimg // PIX_SPAN) + [geo.p.nimg % PIX_SPAN]
            grouped = np.concatenate([np.repeat(by_mask, s) for s in spans])
            grouped = np.concatenate([grouped, np.repeat(
                grouped[len(grouped) - 1:], (LC_MR_B - len(grouped) % LC_MR_B) % LC_MR_B)])
            unions = np.bitwise_or.reduce(grouped.reshape(-1, LC_MR_B), axis=1)
            total += T * len(unions)
            for t in range(T):      # tile_taps keeps tap t where a union holds all its bits
                skipped += int(np.count_nonzero(unions & bits[t] != bits[t]))
    return skipped / total if total else 0.0


cdef tuple pixel_order(_Geometry geo, list boffs, list koffs, bint forward):
    """The B offsets and columns of A of each phase (channels outermost) as the product runs
    them: for pixel tiles that would skip PIX_SKIP_PERCENT of their (tile, tap) pairs or more
    (skip_share), in blocks of channels (tap_blocks), with the validity of a staged channel
    kept for them (p.valid: the tiles skip the taps that read padding for all their pixels);
    else as they are (also where a phase's taps cannot be skipped by mask, tap_bits).
    Measured against the columns as they are (float32, one thread): DeepLab's 3x3 with
    dilation 12 on 33x33 (41 % of the pairs) forward 1.33-1.45x, input gradient 1.40-1.45x,
    dilation 6 (21 %) 1.32-1.39x and 1.10-1.17x; the input gradient of 3x3x3 on 4x4x4 (25 %)
    1.10-1.24x.  Below the share the order and the grouping cost about what the taps skipped
    save: 5x5 on 7x7 (10 %) and a strided dilated 3x3x3 (14 %) 0.99-1.07x; with an earlier
    grouping, across images, 3x3 on 7x7 with 512 and 1024 channels at batch 4 and 8 (4 %)
    0.75-0.95x.  The forward pass's weight is packed into that order through registers
    (pack_panels; gathered element by element, pix2pix's 512-channel 4x4 stride-2 layer onto
    2x2 at batch 8 took 2.5 times as long).  Nor where the columns a pixel skips (the share
    times the columns of A, K of a group, averaged over the phases' grid columns) are fewer
    than PIX_SKIP_COLUMNS, nor in the forward pass (`forward`) of a kernel of more taps than a
    size_t has bits over fewer than PIX_WIDE_PIXELS output pixels."""
    cdef Py_ssize_t f
    if (not geo.p.by_pixel or geo.p.st.identity or geo.p.st.chan == 0
            or any([geo.phases[f].K > 0 and phase_bits(&geo.phases[f]) is None
                    for f in range(geo.p.nphase)])):
        return boffs, koffs
    if (forward and by_axis(&geo.phases[0])
            and geo.p.N * phase_pixels(&geo.phases[0]) < PIX_WIDE_PIXELS):
        return boffs, koffs
    valid = staged_validity(&geo.p.st)
    geo.skip = skip_share(geo, valid, boffs)
    cols = sum([geo.phases[f].ncols for f in range(geo.p.nphase)])
    K = sum([geo.phases[f].ncols * geo.phases[f].K for f in range(geo.p.nphase)]) / max(cols, 1)
    if geo.skip * 100 < PIX_SKIP_PERCENT or geo.skip * K < PIX_SKIP_COLUMNS:
        return boffs, koffs
    geo.valid = valid
    geo.p.valid = &geo.valid[0]
    return ([tap_blocks(b, geo.p.st.nchan) for b in boffs],
            [tap_blocks(k, geo.p.st.nchan) for k in koffs])


cdef void product_tables(_Geometry geo) except *:
    """The forward-style product's work-item order, pointed at by geo.p."""
    cdef Py_ssize_t f
    nblk = [geo.phases[f].nblk for f in range(geo.p.nphase)]
    geo.order = item_order(nblk)
    geo.p.order = &geo.order[0]
    geo.bstart = block_starts(nblk)
    geo.p.bstart = &geo.bstart[0]


cdef _Geometry product_try(int which, tuple xs, tuple ws, tuple ys, stride, pad, dilation,
                           Py_ssize_t groups, Py_ssize_t itemsize, double skip):
    """The geometry of the forward pass or the input gradient (`which`), its tiles chosen
    with `skip` (choose_tiles)."""
    cdef _Geometry geo = _Geometry()
    if which == PASS_FORWARD:
        geo.phases = <Phase *> malloc(sizeof(Phase))
        if geo.phases == NULL:
            raise MemoryError()
        forward_product(&geo.p, geo.phases, xs, ws, ys, stride, pad, dilation, groups,
                        itemsize, skip)
        K = geo.phases[0].K
        geo.boff = tap_offsets(&geo.p.st, ws[1], kernel_taps(ws[2:], dilation))
        geo.aoff = np.arange(K, dtype=np.intp)
        (geo.boff,), (geo.aoff,) = pixel_order(geo, [geo.boff], [geo.aoff], True)
        geo.kpos = np.argsort(geo.aoff).astype(np.intp)     # aoff: a permutation of w's columns
        geo.p.a_along_k = bool(np.array_equal(geo.aoff, np.arange(K)))
    else:
        address, boffs, koffs = input_product(&geo.p, ys, ws, xs, stride, pad, dilation,
                                              groups, itemsize, skip)
        geo.phases = <Phase *> <Py_ssize_t> address
        boffs, koffs = pixel_order(geo, boffs, koffs, False)
        geo.boff = np.concatenate(boffs + [np.zeros(1, np.intp)])
        geo.aoff = np.concatenate(koffs + [np.zeros(1, np.intp)])
        geo.p.a_along_k = False     # A's rows are w's columns
    product_tables(geo)
    return geo


def padding_share(int which, tuple xs, tuple ws, tuple ys, stride, pad, dilation):
    """The share of the (pixel, tap) pairs of the forward pass (`which` PASS_FORWARD: pixels
    of y) or of the input gradient (pixels of dx, the taps of their phase) that read padding:
    per axis the pairs that read the source, multiplied over the axes.  Tiles skip a tap only
    where all their pixels read padding at it, so this bounds the share skip_share finds."""
    reached = 1.0
    for a in range(3):
        X, O, T = xs[2 + a], ys[2 + a], ws[2 + a]
        s, p, d = stride[a], pad[a], dilation[a]
        taps = np.arange(T, dtype=np.intp) * d
        if which == PASS_FORWARD:
            read = np.arange(O, dtype=np.intp)[:, None] * s - p + taps
            phase = np.ones(read.shape, bool)
            inside = (read >= 0) & (read < X)
        else:
            at = np.arange(X, dtype=np.intp)[:, None] + p - taps
            phase = at % s == 0
            inside = phase & (at >= 0) & (at < O * s)
        pairs = np.count_nonzero(phase)
        reached *= np.count_nonzero(inside) / pairs if pairs else 1.0
    return 1.0 - reached


cdef _Geometry new_geometry(int which, tuple xs, tuple ws, tuple ys, stride, pad, dilation,
                            Py_ssize_t groups, Py_ssize_t itemsize):
    """The geometry of pass `which` for 5-D shapes xs (x or dx), ws (w or dw), ys (y or dy).
    A forward-style product that does not take pixel tiles, but whose pixels read padding at
    PIX_SKIP_PERCENT of their taps or more (padding_share; PIX_SKIP_COMPACT, or
    PIX_SKIP_COMPACT_WIDE for kernels of more taps than a size_t has bits, where the grid is
    compact, without the junk columns that pixel tiles save), is tried as pixel tiles to find
    the share of the (tile, tap) pairs they would skip (skip_share), and its tiles chosen
    again with it: 3x3x3 on volumes of few frames (the taps of their first and last planes
    that read the padding before and after) ran 1.27-1.45x faster as pixel tiles.  PIX_TRY:
    a share of skipped pairs that makes pixel tiles the choice wherever they can be.  Not
    where the grid reads a weight of more than PIX_PACK_BYTES in place (few pixels, and not a
    wide product, which reads it in place only for want of other tiles: choose_tiles), which
    pixel tiles pack at each pass: 3x3x3 on 4x4x4 at batch 1 with 256 channels (25 % of the
    pairs skipped) took 1.4 times as long for the input gradient as pixel tiles, the forward
    pass as long; with 32 and 64 channels 1.2x faster, 64 channels dilated 6 on 7x7 1.9-2.1x."""
    cdef _Geometry geo, trial
    cdef Py_ssize_t f, least = PIX_SKIP_PERCENT, VW = LC_VEC_BYTES // itemsize
    if which == PASS_WEIGHT:
        geo = _Geometry()
        set_weight(&geo.q, xs, ws, ys, stride, pad, dilation, groups, itemsize, math.prod(xs))
        # A's rows past K (or M) repeat row 0: the tile computes them and the reduction never
        # reads them
        rows = tap_offsets(&geo.q.st, ws[1], kernel_taps(ws[2:], dilation))
        if geo.q.dy_rows:       # A: dy's output channels; x's rows k packed (geo.boff, whole
            # vectors of them: pack_x_t)
            geo.boff = np.concatenate([rows,
                                       np.repeat(rows[:1], round_up(geo.q.K, VW) - geo.q.K)])
            rows = np.arange(geo.q.M, dtype=np.intp) * geo.q.y_plane
        geo.aoff = np.concatenate([rows, np.repeat(rows[:1], geo.q.Rpad - len(rows))])
        return geo
    geo = product_try(which, xs, ws, ys, stride, pad, dilation, groups, itemsize, 0)
    for f in range(geo.p.nphase):
        if geo.phases[f].pieces:        # a compact grid: no junk columns
            least = max(least, PIX_SKIP_COMPACT_WIDE if by_axis(&geo.phases[f])
                        else PIX_SKIP_COMPACT)
    if geo.p.by_pixel or (geo.p.gathered and not geo.p.wide
                          and math.prod(ws) * itemsize > PIX_PACK_BYTES) or (
            padding_share(which, xs, ws, ys, stride, pad, dilation) * 100 < least):
        return geo
    trial = product_try(which, xs, ws, ys, stride, pad, dilation, groups, itemsize, PIX_TRY)
    if not trial.p.by_pixel or trial.skip * 100 < least:
        return geo
    chosen = product_try(which, xs, ws, ys, stride, pad, dilation, groups, itemsize,
                         trial.skip)
    return chosen if chosen.p.by_pixel else geo


cdef tuple widened_shapes(tuple xs, tuple ws, tuple ys, stride, pad, dilation):
    """The problem a widened forward pass runs (widened_geometry): x of kw times the channels,
    each of rows of the output's width, and a kernel of one tap along W (stride 1, no
    padding, no dilation along W); at stride 1 along H the padding along H too is in the copy
    (its rows: what the kernel reads), so that the pass reads it in place.  Returns (x's and
    w's shapes, stride, pad, dilation)."""
    kw, H, ph = ws[4], xs[3], pad[1]
    if stride[1] == 1:
        H, ph = ys[3] + (ws[3] - 1) * dilation[1], 0
    return ((xs[0], xs[1] * kw, xs[2], H, ys[4]), (ws[0], ws[1] * kw, ws[2], ws[3], 1),
            (stride[0], stride[1], 1), (pad[0], ph, 0), (dilation[0], dilation[1], 1))


cdef Py_ssize_t grid_cost(_Geometry geo, Py_ssize_t itemsize) except -1:
    """The columns the forward pass's tiles compute for one image (a work item's images each
    run their own tiles): whole tiles of NR, then whole vectors, or a few columns as dot
    products (dot_columns), each counted as DOT_EQUIVALENT."""
    cdef Py_ssize_t NR = LC_NV_B * LC_VEC_BYTES // itemsize, VW = LC_VEC_BYTES // itemsize
    cdef Py_ssize_t ncols = geo.phases[0].ncols, dots = dot_columns_of(geo, itemsize)
    cdef Py_ssize_t whole = ncols // NR * NR
    return whole + (dots * DOT_EQUIVALENT if dots else round_up(ncols - whole, VW))


cdef _Geometry widened_geometry(_Geometry geo, tuple xs, tuple ws, tuple ys, stride, pad,
                                dilation, Py_ssize_t groups, Py_ssize_t itemsize):
    """The forward pass's geometry geo, or where its grid computes WIDEN_GAIN times the
    columns or more and saves WIDEN_COPY_COST multiply-adds per element copied, that of the
    same pass over x widened (widen_source): every tap j along W reads its own copy of x whose
    rows are the output's, so the grid has no junk columns between rows (3x3 onto 7x7: 49
    columns, 48 in a tile and one as a dot product, against 55 of rows of 8 taking 64 in whole
    vectors).  Its B offsets are those of the widened problem (widened_shapes) put in the
    order of w's columns (channel, taps along D and H, tap along W), so that A is still w read
    in place or packed as it is.  Not for pixel tiles (whose pixels have no junk), and only
    with the copy within WIDEN_BYTES."""
    cdef _Geometry wide
    cdef Py_ssize_t kw = ws[4]
    if (kw == 1 or geo.p.by_pixel or geo.phases[0].pieces
            or math.prod(xs[:4]) * kw * ys[4] * itemsize > WIDEN_BYTES):
        return geo
    xw, ww, sw, pw, dw = widened_shapes(xs, ws, ys, stride, pad, dilation)
    wide = product_try(PASS_FORWARD, xw, ww, ys, sw, pw, dw, groups, itemsize, 0)
    cdef Py_ssize_t narrow = grid_cost(geo, itemsize), widened = grid_cost(wide, itemsize)
    if (wide.p.by_pixel or narrow < WIDEN_GAIN * widened
            or ((narrow - widened) * xs[0] * ws[0] * wide.phases[0].K
                < WIDEN_COPY_COST * math.prod(xw))):
        return geo
    # the widened problem's rows (c * kw + j, tap along D and H) in w's order
    wide.boff = np.ascontiguousarray(
        np.asarray(wide.boff).reshape(ws[1], kw, -1).transpose(0, 2, 1).reshape(-1))
    wide.widened = xw
    wide.widen_lead = pad[1] - pw[1]    # the padding along H that the copy holds
    return wide


# As many problems as loopconv._loops.choose remembers: the passes of every layer of a large
# network (EfficientNet-B0's 81 convolutions make 242 at one batch size) stay in it
_tiled_geometries = {}
_MAX_TILED_GEOMETRIES = 1024


cdef _Geometry tiled_geometry(int which, tuple xs, tuple ws, tuple ys, stride, pad, dilation,
                              Py_ssize_t groups, Py_ssize_t itemsize):
    """The geometry of a pass, from the cache or worked out (and kept).  Working it out cost
    more than a small pass: 9 us of a 10 us forward pass of a few pixels, against some 3 us
    from the cache."""
    key = (which, itemsize, xs, ws, ys, tuple(stride), tuple(pad), tuple(dilation), groups)
    geo = _tiled_geometries.get(key)
    if geo is not None:
        return geo
    geo = new_geometry(which, xs, ws, ys, stride, pad, dilation, groups, itemsize)
    if which == PASS_FORWARD:
        geo = widened_geometry(geo, xs, ws, ys, stride, pad, dilation, groups, itemsize)
    if len(_tiled_geometries) >= _MAX_TILED_GEOMETRIES:
        _tiled_geometries.clear()
    _tiled_geometries[key] = geo
    return geo


def grad_weight(const element[:, :, :, :, ::1] x, const element[:, :, :, :, ::1] dy,
                element[:, :, :, :, ::1] dw, stride, pad, dilation, Py_ssize_t groups,
                int num_threads):
    """dw = gradient of conv(x, w) with respect to w, given dy; dw is overwritten."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    dtype = typecode(<element *> NULL)
    cdef _Geometry geo = tiled_geometry(PASS_WEIGHT, shape5(x.shape), shape5(dw.shape),
                                        shape5(dy.shape), stride, pad, dilation, groups,
                                        sizeof(element))
    cdef WeightProduct *p = &geo.q
    cdef Py_ssize_t fper = weight_scratch(p, VW), iper = weight_indices(p)
    cdef Py_ssize_t[::1] aoff = geo.aoff
    cdef const Py_ssize_t *xoff = &geo.boff[0] if p.dy_rows else NULL
    cdef element[::1] partial = _workspace("p", dtype, 1 if p.direct
                                           else groups * p.nchunk * p.Rpad * p.Cpad)
    cdef element[::1] fws = _workspace("f", dtype, fper * num_threads)
    cdef Py_ssize_t[::1] iws = _workspace("i", np.intp, iper * num_threads)
    cdef element[::1] sws
    cdef element *shared = NULL
    cdef Py_ssize_t nblocks = p.nib * groups
    if weight_shares_blocks(p, nblocks, sizeof(element)):
        sws = _workspace("s", dtype, nblocks * p.st.size)
        shared = &sws[0]
    with nogil:
        if shared != NULL:
            stage_shared(&x[0, 0, 0, 0, 0], &p.st, p.N, groups, p.x_img, p.x_grp, shared,
                         num_threads)
        run_weight(p, &x[0, 0, 0, 0, 0], shared, &dy[0, 0, 0, 0, 0], &aoff[0], xoff,
                   &partial[0], &dw[0, 0, 0, 0, 0], &fws[0], fper, &iws[0], iper, num_threads)


cdef bint weight_shares_blocks(const WeightProduct *p, Py_ssize_t nblocks,
                               Py_ssize_t itemsize) noexcept nogil:
    """Whether the weight gradient p stages all its blocks of images once before it runs
    (stage_shared): where its rows k are split into blocks (p.nkb), each item of a chunk
    staged the chunk's images again, every block of them, and all the blocks take
    SHARED_STAGE_BYTES to SHARED_MAX_BYTES."""
    return (p.nkb > 1 and not p.st.band_rows
            and SHARED_STAGE_BYTES <= nblocks * p.st.size * itemsize <= SHARED_MAX_BYTES
            and not last_in_place(&p.st, p.N, p.G, p.x_img, p.x_grp))


def weight_blocks_shared(xs, ws, ys, stride, pad, dilation, Py_ssize_t groups,
                         Py_ssize_t itemsize):
    """Whether the weight gradient of these 5-D shapes stages its blocks of images once,
    before it runs (weight_shares_blocks; internal: for the tests)."""
    cdef _Geometry geo = tiled_geometry(PASS_WEIGHT, tuple(xs), tuple(ws), tuple(ys), stride,
                                        pad, dilation, groups, itemsize)
    return bool(weight_shares_blocks(&geo.q, geo.q.nib * groups, itemsize))


# ---------------------------------------------------------------------------------------------
# Dense products: one output pixel per image.

def dense(const element[:, ::1] cols, const element[:, ::1] w, element[:, ::1] y,
          int num_threads):
    """y[n, o] = sum over k of cols[n, k] * w[o, k]: the forward pass of a layer with one
    output pixel per image from its columns (a squeeze-and-excitation layer's 1x1 image, a
    GAN's dense first layer), as lc_tile_d's dot products along k, LC_KR_D rows of cols (one
    for a last block of one image) by LC_OR_D rows of w read in place (its vectors along k, the
    lanes summed at the end by a tree of shuffles; the last K % VW columns added after), rather
    than a product whose tile has one useful column.  Each element is summed in an order fixed
    by K alone; (row block, column block) items on num_threads threads.  The one-row tile and
    the tree of lane sums (against three rows, two of them repeats, and lanes added one at a
    time): 48 -> 1152 channels at batch 1 12.7 -> 4.4 us, 100 -> 8192 119 -> 56 us, at batch 8
    38 -> 21 us (float32, one thread; float64 1.2-2.1x)."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element)
    cdef Py_ssize_t N = cols.shape[0], K = cols.shape[1], O = w.shape[0]
    cdef Py_ssize_t kfull = K - K % VW, nob, nnb, item
    if N == 0 or O == 0:
        return
    if VW >= 16 and VW <= K < DENSE_SHORT * VW and N <= LC_MR_B:
        dense_short(cols, w, y, num_threads)
        return
    # fewer rows of w than a tile: a zero-padded copy (the tile reads LC_OR_D rows)
    cdef const element *wp = &w[0, 0]
    cdef element *padded = NULL
    if O < LC_OR_D:
        padded = <element *> small_scratch(LC_OR_D * K * sizeof(element))
        memset(padded, 0, LC_OR_D * K * sizeof(element))
        memcpy(padded, wp, O * K * sizeof(element))
        wp = padded
    nob = (O + LC_OR_D - 1) // LC_OR_D
    nnb = (N + LC_KR_D - 1) // LC_KR_D
    cdef fpstate fp
    with nogil, parallel(num_threads=num_threads):
        fp = flush_subnormals()
        # race-free: item (row block, column block) writes only its own elements of y.
        for item in prange(nnb * nob, schedule="static"):
            dense_block(&cols[0, 0], wp, &y[0, 0], N, K, O, kfull,
                        item // nob * LC_KR_D, item % nob * LC_OR_D)
        restore_fpstate(fp)
    free(padded)


cdef void *small_scratch(size_t n) except NULL:
    """n bytes of C scratch for the dense products, which the caller frees: a NumPy array and
    its memoryview cost about a microsecond each, as much as the sums of a small
    squeeze-and-excitation layer."""
    cdef void *p = malloc(max(n, 1))
    if p == NULL:
        raise MemoryError()
    return p


def dense_input(const element[:, ::1] dy, const element[:, ::1] w, element[:, ::1] dx,
                int num_threads):
    """dx[n, k] = sum over o of dy[n, o] * w[o, k]: the input gradient of a layer with one
    output pixel per image whose window covers the whole image (a squeeze-and-excitation layer,
    a dense layer), as lc_tile_b tiles of LC_MR_B images (fewer for fewer images: dense_rows)
    by NR columns of w, its rows read in place (the last, partial block of columns from a
    zero-padded copy), dy packed o outermost.  Each element is summed over o in order; (row
    block, column block) items on num_threads threads.  Through the general product of w read
    as an image of K pixels, with its staging, these small products took 10-15 us at batch 1:
    conv2d_input of squeeze-and-excitation layers at batch 1 to 8 1.0-1.8x faster so (28 -> 672
    channels at batch 1 14.8 -> 8.3 us, float32 one thread, Python included).  One or two
    images of a large weight (STREAM_ROWS) read w's rows one after another (stream_input)."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element), NR = LC_NV_B * VW
    cdef Py_ssize_t N = dy.shape[0], O = dy.shape[1], K = w.shape[1]
    cdef Py_ssize_t mr = dense_rows(min(N, LC_MR_B)), nrb = (N + mr - 1) // mr
    cdef Py_ssize_t ncb = (K + NR - 1) // NR, kfull = K - K % NR, item
    if N == 0 or K == 0:
        return
    if O == 0:
        dx[...] = 0
        return
    if (N <= STREAM_ROWS and K * sizeof(element) >= STREAM_ROW_BYTES
            and O * K * sizeof(element) >= STREAM_MIN_BYTES):
        stream_input(dy, w, dx, num_threads)
        return
    # dy packed: block rb's rows, o outermost; the last block of columns zero-padded
    cdef Py_ssize_t npack = nrb * O * mr + O * round_up(K - kfull, VW) + 1
    cdef Py_ssize_t *offs = <Py_ssize_t *> small_scratch(2 * O * sizeof(Py_ssize_t)
                                                         + npack * sizeof(element))
    cdef element *pack = <element *> (offs + 2 * O)
    cdef element *tail = pack + nrb * O * mr
    cdef fpstate fp
    with nogil:
        dense_pack(&dy[0, 0], N, O, O, 1, mr, nrb, pack)      # dy's rows (images)
        dense_tail(&w[0, 0], O, K, kfull, round_up(K - kfull, VW), tail, offs)
        with parallel(num_threads=num_threads):
            fp = flush_subnormals()
            # race-free: item (row block, column block) writes only its own elements of dx.
            for item in prange(nrb * ncb, schedule="static"):
                dense_tile(pack + (item // ncb) * O * mr, mr, O, &w[0, 0], offs, tail,
                           offs + O, K, (item % ncb) * NR, kfull, &dx[0, 0], N,
                           (item // ncb) * mr)
            restore_fpstate(fp)
    free(offs)


cdef void stream_input(const element[:, ::1] dy, const element[:, ::1] w, element[:, ::1] dx,
                       int num_threads) except *:
    """dense_input for one or two images (STREAM_ROWS): dy's rows times w, w's rows streamed
    (stream_rows)."""
    cdef Py_ssize_t N = dy.shape[0], O = dy.shape[1], K = w.shape[1], o, i
    cdef element *a = <element *> small_scratch(O * N * sizeof(element))
    with nogil:
        for o in range(O):
            for i in range(N):
                a[o * N + i] = dy[i, o]
        stream_rows(<int>N, O, a, &w[0, 0], K, 0, K, &dx[0, 0], K, 0, 1, NULL, num_threads)
    free(a)


def stream_forward(const element[:, :, :, :, ::1] x, const element[:, :, :, :, ::1] w,
                   const element[::1] bias, element[:, :, :, :, ::1] y, int num_threads):
    """y = bias + the convolution of x with a 1x1 kernel w of one to four output channels
    (STREAM_OUT; stride 1, no padding, one group: a segmentation network's last layer), each
    image's rows of x (its channels) streamed (stream_rows): three output channels as two and
    one, the block of x read again from L2.  An empty bias means none."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], O = w.shape[0], o, c
    cdef Py_ssize_t P = x.shape[2] * x.shape[3] * x.shape[4]
    cdef const element *bptr = &bias[0] if bias.shape[0] > 0 else NULL
    if (O < 1 or O > STREAM_OUT or w.shape[1] != C or w.shape[2] * w.shape[3] * w.shape[4] != 1
            or y.shape[0] != N or y.shape[1] != O or y.shape[2] != x.shape[2]
            or y.shape[3] != x.shape[3] or y.shape[4] != x.shape[4]
            or (bptr != NULL and bias.shape[0] != O)):
        raise ValueError("stream_forward: shapes of x, w, bias and y do not match")
    if y.size == 0:
        return
    cdef element *a = <element *> small_scratch(O * C * sizeof(element))
    cdef Py_ssize_t lead = 2 if O == 3 else O       # a's layout: stream_rows
    with nogil:
        for c in range(C):
            for o in range(lead):
                a[c * lead + o] = w[o, c, 0, 0, 0]
            if O == 3:
                a[2 * C + c] = w[2, c, 0, 0, 0]
        stream_rows(<int>O, C, a, &x[0, 0, 0, 0, 0], P, C * P, P, &y[0, 0, 0, 0, 0], P, O * P,
                    N, bptr, num_threads)
    free(a)


def head_weight(const element[:, :, :, :, ::1] x, const element[:, :, :, :, ::1] dy,
                element[:, :, :, :, ::1] dw, int num_threads):
    """dw = the weight gradient of a 1x1 convolution (stride 1, no padding, one group) of x
    with output gradient dy, for a layer of few input and output channels over large images
    (`head_weight_suits`): dw[o, c] = the sum over images and pixels of dy[n, o, p] x[n, c, p],
    as dot products over chunks of HEAD_CHUNK pixels of an image (each work item one chunk;
    `dots`, every input channel's run against two output channels' at a time), whose results
    are then added in the order of the chunks: an order fixed by the problem, whatever the
    threads.  The depthwise loops' weight gradient takes an image a work item, and their sums
    ran at a third of PyTorch's speed there."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], O = dy.shape[1]
    cdef Py_ssize_t P = x.shape[2] * x.shape[3] * x.shape[4]
    cdef Py_ssize_t chunks = (P + HEAD_CHUNK - 1) // HEAD_CHUNK, item, n, p0, o, i
    cdef int nc
    if (dy.shape[0] != N or dy.shape[2] != x.shape[2] or dy.shape[3] != x.shape[3]
            or dy.shape[4] != x.shape[4] or dw.shape[0] != O or dw.shape[1] != C
            or dw.shape[2] != 1 or dw.shape[3] != 1 or dw.shape[4] != 1):
        raise ValueError("head_weight: shapes of x, dy and dw do not match")
    if dw.size == 0:
        return
    if N * P == 0:
        dw[...] = 0
        return
    cdef element *parts = <element *> small_scratch(N * chunks * O * C * sizeof(element))
    cdef const element *x0 = &x[0, 0, 0, 0, 0]
    cdef const element *d0 = &dy[0, 0, 0, 0, 0]
    cdef element *out = &dw[0, 0, 0, 0, 0]
    cdef fpstate fp
    with nogil:
        with parallel(num_threads=num_threads):
            fp = flush_subnormals()
            # race-free: item (image, chunk) writes only its own O * C parts.
            for item in prange(N * chunks, schedule="static"):
                n = item // chunks
                p0 = (item % chunks) * HEAD_CHUNK
                for o in range(0, O, 2):
                    # parts[item, o', c] for o' = o, o + 1 (one row of dy read twice when
                    # it is the last: dots reads two)
                    nc = <int>min(2, O - o)
                    dots(min(HEAD_CHUNK, P - p0), x0 + n * C * P + p0, P, C,
                         d0 + (n * O + o) * P + p0, P if nc == 2 else 0, nc,
                         parts + (item * O + o) * C, 1, C, False)
            restore_fpstate(fp)
        for i in range(O * C):
            out[i] = parts[i]
        for item in range(1, N * chunks):
            for i in range(O * C):
                out[i] += parts[item * O * C + i]
    free(parts)


cdef void stream_rows(int mr, Py_ssize_t kc, const element *a, const element *b, Py_ssize_t ldb,
                      Py_ssize_t bstep, Py_ssize_t n, element *c, Py_ssize_t ldc,
                      Py_ssize_t cstep, Py_ssize_t nimg, const element *bias,
                      int num_threads) noexcept nogil:
    """For each of nimg images: c (mr rows of n, ldc apart; image i at c + i * cstep) = the
    sums over k < kc of a(k, r) times row k of b (ldb apart; image i at b + i * bstep), plus
    bias[r] where given: lc_stream over blocks of the columns, STREAM_BYTES of each row or
    less, at least one a thread down to STREAM_SPLIT bytes, each a whole number of vectors;
    (image, block) items on num_threads threads.  mr is 1, 2 or 4, a(k, r) = a[k * mr + r], or
    3, run as two rows and one: a(k, r) = a[k * 2 + r] for r < 2, a(k, 2) = a[2 * kc + k].
    Which columns a block holds does not change any sum (each runs over k in order, from zero;
    the columns past whole vectors are the last n % VW of the last block), so the result is
    the same on any number of threads."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element), row = n * sizeof(element)
    cdef Py_ssize_t nblk = max((row + STREAM_BYTES - 1) // STREAM_BYTES,
                               min(num_threads, row // STREAM_SPLIT))
    cdef Py_ssize_t nb = round_up((n + nblk - 1) // nblk, VW), item, j0, cols, r, j
    cdef element *cb
    cdef fpstate fp
    nblk = (n + nb - 1) // nb
    with parallel(num_threads=num_threads):
        fp = flush_subnormals()
        # race-free: item (image, block) writes only its columns of that image's rows of c.
        for item in prange(nimg * nblk, schedule="static"):
            j0 = (item % nblk) * nb
            cols = min(nb, n - j0)
            cb = c + (item // nblk) * cstep + j0
            if mr == 3:
                stream(2, kc, a, b + (item // nblk) * bstep + j0, ldb, cols, cb, ldc)
                stream(1, kc, a + 2 * kc, b + (item // nblk) * bstep + j0, ldb, cols,
                       cb + 2 * ldc, ldc)
            else:
                stream(mr, kc, a, b + (item // nblk) * bstep + j0, ldb, cols, cb, ldc)
            if bias != NULL:
                for r in range(mr):
                    for j in range(cols):
                        cb[r * ldc + j] += bias[r]
        restore_fpstate(fp)


def dense_weight(const element[:, ::1] x, const element[:, ::1] dy, element[:, ::1] dw,
                 int num_threads):
    """dw[o, k] = sum over n of dy[n, o] * x[n, k]: the weight gradient of a layer with one
    output pixel per image whose window covers the whole image, for a few images: lc_tile_b
    tiles of LC_MR_B outputs by NR columns of x, its rows read in place (the last, partial
    block of columns from a zero-padded copy), the reduction over the N images (dy packed n
    outermost).  Each element is summed over n in order; (row block, column block) items on
    num_threads threads.  As columns through the general product these took 12-15 us at batch
    1 (a squeeze-and-excitation layer's outer product): conv2d_weight at batch 1 to 8 1.0-1.5x
    faster so (1152 -> 48 channels at batch 1 14.0 -> 9.2 us)."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element), NR = LC_NV_B * VW
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], O = dy.shape[1], mr = LC_MR_B
    cdef Py_ssize_t nrb = (O + mr - 1) // mr, ncb = (K + NR - 1) // NR
    cdef Py_ssize_t kfull = K - K % NR, item
    if O == 0 or K == 0:
        return
    if N == 0:
        dw[...] = 0
        return
    cdef Py_ssize_t npack = nrb * N * mr + N * round_up(K - kfull, VW) + 1
    cdef Py_ssize_t *offs = <Py_ssize_t *> small_scratch(2 * N * sizeof(Py_ssize_t)
                                                         + npack * sizeof(element))
    cdef element *pack = <element *> (offs + 2 * N)
    cdef element *tail = pack + nrb * N * mr
    cdef fpstate fp
    with nogil:
        dense_pack(&dy[0, 0], O, N, 1, O, mr, nrb, pack)      # dy's columns (outputs)
        dense_tail(&x[0, 0], N, K, kfull, round_up(K - kfull, VW), tail, offs)
        with parallel(num_threads=num_threads):
            fp = flush_subnormals()
            # race-free: item (row block, column block) writes only its own elements of dw.
            for item in prange(nrb * ncb, schedule="static"):
                dense_tile(pack + (item // ncb) * N * mr, mr, N, &x[0, 0], offs, tail,
                           offs + N, K, (item % ncb) * NR, kfull, &dw[0, 0], O,
                           (item // ncb) * mr)
            restore_fpstate(fp)
    free(offs)


cdef void dense_pack(const element *a, Py_ssize_t R, Py_ssize_t C, Py_ssize_t rs,
                     Py_ssize_t cs, Py_ssize_t mr, Py_ssize_t nrb, element *pack) noexcept nogil:
    """A (R rows of C, row r and column c at a[r * rs + c * cs]) packed for dense_tile: block
    rb holds rows rb * mr ... (the last one repeated past R), c outermost.  dense_input packs
    dy's rows (images), dense_weight its columns (outputs)."""
    cdef Py_ssize_t rb, i, c
    cdef const element *row
    for rb in range(nrb):
        for i in range(mr):
            row = a + min(rb * mr + i, R - 1) * rs
            for c in range(C):
                pack[(rb * C + c) * mr + i] = row[c * cs]


cdef void dense_tail(const element *b, Py_ssize_t R, Py_ssize_t K, Py_ssize_t kfull,
                     Py_ssize_t tw, element *tail, Py_ssize_t *offs) noexcept nogil:
    """For the rows of b (R rows of K): their offsets (offs[:R]), and where K is not a
    multiple of NR their last K - kfull columns copied into tail zero-padded to tw (whole
    vectors), with the offsets of its rows (offs[R:])."""
    cdef Py_ssize_t r
    for r in range(R):
        offs[r] = r * K
        offs[R + r] = r * tw
        if kfull < K:
            memcpy(tail + r * tw, b + r * K + kfull, (K - kfull) * sizeof(element))
            memset(tail + r * tw + K - kfull, 0, (tw - K + kfull) * sizeof(element))


cdef void dense_tile(const element *a, Py_ssize_t mr, Py_ssize_t kc, const element *b,
                     const Py_ssize_t *boff, const element *tail, const Py_ssize_t *toff,
                     Py_ssize_t K, Py_ssize_t j0, Py_ssize_t kfull, element *c, Py_ssize_t M,
                     Py_ssize_t i0) noexcept nogil:
    """One tile of dense_input or dense_weight: rows i0 .. i0 + mr - 1 (those below M) and
    columns j0 .. j0 + NR - 1 (those below K) of c (rows of K), from a (mr rows packed, kc
    steps) and the rows of b at boff, or for the last, partial block (j0 = kfull) the padded
    copy tail at toff (its nv vectors); a whole tile straight into c, else through a
    buffer."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element), NR = LC_NV_B * VW
    cdef element ctile[512]         # LC_MR_B * NR at most
    cdef Py_ssize_t nv = min(LC_NV_B, (K - j0 + VW - 1) // VW), i
    # b's rows K apart: where they alias, the tile asks for them nearer ahead (Product.near_b)
    cdef int pf = LC_PF_NEAR_B if aliases(K * <Py_ssize_t> sizeof(element)) else 0
    if j0 < kfull and i0 + mr <= M:
        tile_b(<int>mr, <int>nv, kc, a, b + j0, boff, c + i0 * K + j0, K, False, pf)
        return
    if j0 < kfull:
        tile_b(<int>mr, <int>nv, kc, a, b + j0, boff, ctile, NR, False, pf)
    else:
        tile_b(<int>mr, <int>nv, kc, a, tail, toff, ctile, NR, False, 0)
    for i in range(min(mr, M - i0)):
        memcpy(c + (i0 + i) * K + j0, ctile + i * NR, min(NR, K - j0) * sizeof(element))

cdef void dense_short(const element[:, ::1] cols, const element[:, ::1] w, element[:, ::1] y,
                      int num_threads) except *:
    """dense for rows of one to DENSE_SHORT vectors of 16 lanes or more (float32 with AVX-512)
    and at most LC_MR_B images: the weight transposed into wt (K rows of its O outputs, padded
    to whole vectors), then lc_tile_b tiles of the images' rows (packed, k outermost) by NR
    outputs, each output summed over k in order.  The dot products along k spent most of their
    time summing the lanes: a 28 -> 672 channel squeeze-and-excitation layer at batch 1 took
    8.7 us, 5.6 us so, at batch 8 31.8 and 6.9 us (rows of 16 to 31: 1.1-3.8x, one and two
    threads).
    Shorter rows (no whole vector: the old loops sum them element by element) and float64
    (8 lanes) were as fast or faster the old way (0.6-1.2x)."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element), NR = LC_NV_B * VW
    cdef Py_ssize_t N = cols.shape[0], K = cols.shape[1], O = w.shape[0]
    cdef Py_ssize_t ldt = round_up(O, VW), mr = dense_rows(N), k, n
    cdef Py_ssize_t nwt = K * ldt + mr * K
    cdef Py_ssize_t *boff = <Py_ssize_t *> small_scratch(K * sizeof(Py_ssize_t)
                                                         + nwt * sizeof(element))
    cdef element *wt = <element *> (boff + K)
    cdef element *a = wt + K * ldt
    cdef Py_ssize_t nblk = (O + NR - 1) // NR, jb
    cdef fpstate fp
    with nogil:
        for k in range(K):      # the images' rows, k outermost; wt's row offsets
            boff[k] = k * ldt
            for n in range(mr):
                a[k * mr + n] = cols[n, k] if n < N else 0
        with parallel(num_threads=num_threads):
            fp = flush_subnormals()
            # race-free: block jb writes only its columns of wt and of y.
            for jb in prange(nblk, schedule="static"):
                dense_columns(a, mr, &w[0, 0], wt, boff, K, ldt, N, O, jb * NR, &y[0, 0])
            restore_fpstate(fp)
    free(boff)


cdef inline Py_ssize_t dense_rows(Py_ssize_t N) noexcept nogil:
    """The rows of lc_tile_b for N <= LC_MR_B images: 1, 2, 4 or LC_MR_B."""
    return 1 if N == 1 else 2 if N == 2 else 4 if N <= 4 else LC_MR_B


cdef void dense_columns(const element *a, Py_ssize_t mr, const element *w, element *wt,
                        const Py_ssize_t *boff, Py_ssize_t K, Py_ssize_t ldt, Py_ssize_t N,
                        Py_ssize_t O, Py_ssize_t j0, element *y) noexcept nogil:
    """Columns j0 .. j0 + NR - 1 of dense_short's y (those inside it): the block's outputs of w
    transposed into wt, wt[k * ldt + o] = w[o * K + k] (zero for o >= O), by VW x VW blocks in
    registers, the partial ones through a zero-padded copy (column by column they took longer
    than the rest of the call); then one tile of mr rows by the block's vectors of outputs,
    through a buffer."""
    cdef Py_ssize_t VW = LC_VEC_BYTES // sizeof(element), NR = LC_NV_B * VW
    cdef element ctile[512]         # LC_MR_B * NR at most
    cdef element tmp[512]           # two VW x VW blocks
    cdef Py_ssize_t nv = min(LC_NV_B, (O - j0 + VW - 1) // VW), n, j, o0, k0, kr, i, k
    o0 = j0
    while o0 < j0 + nv * VW:
        k0 = 0
        while k0 < K:
            kr = min(VW, K - k0)
            if o0 + VW <= O and kr == VW:
                transpose_block(w + o0 * K + k0, K, wt + k0 * ldt + o0, ldt)
            else:
                memset(tmp, 0, VW * VW * sizeof(element))
                for i in range(max(0, min(VW, O - o0))):
                    memcpy(tmp + i * VW, w + (o0 + i) * K + k0, kr * sizeof(element))
                transpose_block(tmp, VW, tmp + VW * VW, VW)
                for k in range(kr):
                    memcpy(wt + (k0 + k) * ldt + o0, tmp + VW * VW + k * VW,
                           VW * sizeof(element))
            k0 += VW
        o0 += VW
    tile_b(<int>mr, <int>nv, K, a, wt + j0, boff, ctile, NR, False, False)
    for n in range(N):
        for j in range(min(NR, O - j0)):
            y[n * O + j0 + j] = ctile[n * NR + j]


cdef void dense_block(const element *cols, const element *w, element *y, Py_ssize_t N,
                      Py_ssize_t K, Py_ssize_t O, Py_ssize_t kfull, Py_ssize_t n0,
                      Py_ssize_t j0) noexcept nogil:
    """Rows n0 .. n0 + LC_KR_D - 1 and columns j0 .. j0 + LC_OR_D - 1 of dense's y (those
    inside it): a whole tile, its last column block moved back to end at O (w has at least
    LC_OR_D rows); a block of one row is a one-row tile, the missing rows of other blocks read
    row n0."""
    cdef element ctile[64]          # LC_KR_D * LC_OR_D at most
    cdef Py_ssize_t aoff[8]         # LC_KR_D at most
    cdef Py_ssize_t OW = max(O, LC_OR_D), o0 = min(j0, OW - LC_OR_D), i, j, k, n, o
    cdef element s
    for i in range(LC_KR_D):
        aoff[i] = (n0 + i if n0 + i < N else n0) * K
    if kfull > 0:
        tile_d(1 if N - n0 == 1 else LC_KR_D, kfull, cols, aoff, w + o0 * K, K, ctile,
               LC_OR_D, False)
    else:
        for i in range(LC_KR_D * LC_OR_D):
            ctile[i] = 0
    for i in range(LC_KR_D):
        n = n0 + i
        if n >= N:
            break
        for j in range(j0 - o0, LC_OR_D):
            o = o0 + j
            if o >= O:
                break
            s = ctile[i * LC_OR_D + j]
            for k in range(kfull, K):
                s = s + cols[n * K + k] * w[o * K + k]
            y[n * O + o] = s
