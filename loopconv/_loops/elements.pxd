# The element types the loops compute in, and every choice that depends on the type.
#
# The loops (direct.pyx, tiled.pxi and the files it includes) are written once over the fused
# type `element`; Cython compiles them once per member.  What differs per type is here: the
# members, NumPy's name for each and back (`typecode`, `ctype_name`), and which instantiation
# of a C kernel each wrapper below calls.  The kernels are instantiated per type in elements.h.
# Vector widths are not per type: a vector holds LC_VEC_BYTES // sizeof(element) lanes.
#
# A new type computed natively: a member here and a branch in each function below, a line in
# elements.h, and its place in the dtype policy (`loopconv._args`: `NATIVE_DTYPES`,
# `common_dtype`).

cdef extern from "elements.h" nogil:
    enum:
        LC_MR_B         # rows of the forward-style tile (or 1, 2, 4 for products with fewer)
        LC_NV_B         # its vectors
        LC_MR_A         # rows of the weight-gradient tile (its columns are two vectors)
        LC_MR_A1        # rows of the weight-gradient tile one vector wide
        LC_KR_D         # rows and columns of the weight-gradient tile for few output
        LC_OR_D         # (channels), which sums along the vector lanes
        LC_VEC_BYTES    # bytes of a vector
        LC_DWC_PX       # output pixels per block of the channel-blocked depthwise loops
        LC_DW_OB        # rows of dy per block of the depthwise weight gradient's dots
        LC_PUT_RUNS     # lc_put stores a tile's runs by vectors (else copy_run's loops)
        LC_ROW_MASKS    # tile_r's two grid rows a vector by masked loads (AVX-512)
        LC_PF_A         # flags of tile_b's and tile_v's pfa: ask for the packed A ahead,
        LC_PF_NEAR_B    # and for B's rows nearer ahead (rows that alias in the caches)
    const char *LC_ISA
    void lc_prefetch(const void *p)
    void lc_tile_b_f32(int mr, int nv, Py_ssize_t kc, const float *a, const float *b,
                       const Py_ssize_t *boff, float *c, Py_ssize_t ldc, int beta, int pfa)
    void lc_tile_b_f64(int mr, int nv, Py_ssize_t kc, const double *a, const double *b,
                       const Py_ssize_t *boff, double *c, Py_ssize_t ldc, int beta, int pfa)
    void lc_tile_v_f32(int pieces, int mr, int nv, Py_ssize_t kc, const float *a,
                       const float *b, const Py_ssize_t *boff, const Py_ssize_t *vo, float *c,
                       Py_ssize_t ldc, int beta, int pfa)
    void lc_tile_v_f64(int pieces, int mr, int nv, Py_ssize_t kc, const double *a,
                       const double *b, const Py_ssize_t *boff, const Py_ssize_t *vo,
                       double *c, Py_ssize_t ldc, int beta, int pfa)
    void lc_tile_r_f32(int mr, int nv, Py_ssize_t kc, const float *a, const float *b,
                       const Py_ssize_t *boff, const Py_ssize_t *vo, float *c, Py_ssize_t ldc,
                       int beta, int pfa)
    void lc_tile_r_f64(int mr, int nv, Py_ssize_t kc, const double *a, const double *b,
                       const Py_ssize_t *boff, const Py_ssize_t *vo, double *c,
                       Py_ssize_t ldc, int beta, int pfa)
    void lc_tile_g_f32(int mr, int nv, Py_ssize_t kc, const float *a, const Py_ssize_t *aoff,
                       Py_ssize_t rs, const float *b, const Py_ssize_t *boff, float *c,
                       Py_ssize_t ldc, int beta)
    void lc_tile_g_f64(int mr, int nv, Py_ssize_t kc, const double *a,
                       const Py_ssize_t *aoff, Py_ssize_t rs, const double *b,
                       const Py_ssize_t *boff, double *c, Py_ssize_t ldc, int beta)
    void lc_tile_gc_f32(int pieces, int mr, int nv, Py_ssize_t kc, const float *a,
                        const Py_ssize_t *aoff, Py_ssize_t rs, const float *b,
                        const Py_ssize_t *boff, const Py_ssize_t *vo, float *c, Py_ssize_t ldc,
                        int beta)
    void lc_tile_gc_f64(int pieces, int mr, int nv, Py_ssize_t kc, const double *a,
                        const Py_ssize_t *aoff, Py_ssize_t rs, const double *b,
                        const Py_ssize_t *boff, const Py_ssize_t *vo, double *c,
                        Py_ssize_t ldc, int beta)
    void lc_tile_p_f32(int nv, Py_ssize_t kc, const float *const *ar, const Py_ssize_t *aoff,
                       const float *b, Py_ssize_t ldb, float *c, Py_ssize_t ldc, int beta,
                       int pf)
    void lc_tile_p_f64(int nv, Py_ssize_t kc, const double *const *ar,
                       const Py_ssize_t *aoff, const double *b, Py_ssize_t ldb, double *c,
                       Py_ssize_t ldc, int beta, int pf)
    void lc_tile_a_f32(int nv, Py_ssize_t kc, const float *a, const Py_ssize_t *aoff,
                       const float *b, float *c, Py_ssize_t ldc, int beta)
    void lc_tile_a_f64(int nv, Py_ssize_t kc, const double *a, const Py_ssize_t *aoff,
                       const double *b, double *c, Py_ssize_t ldc, int beta)
    void lc_tile_m_f32(int nv, Py_ssize_t kc, const float *a, const Py_ssize_t *aoff,
                       const Py_ssize_t *cmap, const float *b, float *c, Py_ssize_t ldc,
                       int beta)
    void lc_tile_m_f64(int nv, Py_ssize_t kc, const double *a, const Py_ssize_t *aoff,
                       const Py_ssize_t *cmap, const double *b, double *c, Py_ssize_t ldc,
                       int beta)
    void lc_dots_f32(Py_ssize_t kc, const float *a, Py_ssize_t lda, Py_ssize_t nrows,
                     const float *b, Py_ssize_t ldb, int ncols, float *c, Py_ssize_t ldc,
                     Py_ssize_t dc, int beta)
    void lc_dots_f64(Py_ssize_t kc, const double *a, Py_ssize_t lda, Py_ssize_t nrows,
                     const double *b, Py_ssize_t ldb, int ncols, double *c, Py_ssize_t ldc,
                     Py_ssize_t dc, int beta)
    void lc_down_f32(Py_ssize_t kc, const float *a, const Py_ssize_t *aoff, Py_ssize_t nrows,
                     Py_ssize_t avail, const float *b, const Py_ssize_t *boff, Py_ssize_t db,
                     int ncols, float *c, Py_ssize_t ldc, Py_ssize_t dc, int beta)
    void lc_down_f64(Py_ssize_t kc, const double *a, const Py_ssize_t *aoff,
                     Py_ssize_t nrows, Py_ssize_t avail, const double *b,
                     const Py_ssize_t *boff, Py_ssize_t db, int ncols, double *c,
                     Py_ssize_t ldc, Py_ssize_t dc, int beta)
    void lc_stream_f32(int mr, Py_ssize_t kc, const float *a, const float *b, Py_ssize_t ldb,
                       Py_ssize_t n, float *c, Py_ssize_t ldc)
    void lc_stream_f64(int mr, Py_ssize_t kc, const double *a, const double *b,
                       Py_ssize_t ldb, Py_ssize_t n, double *c, Py_ssize_t ldc)
    void lc_tile_d_f32(int kr, Py_ssize_t kc, const float *a, const Py_ssize_t *aoff,
                       const float *b, Py_ssize_t ldb, float *c, Py_ssize_t ldc, int beta)
    void lc_tile_d_f64(int kr, Py_ssize_t kc, const double *a, const Py_ssize_t *aoff,
                       const double *b, Py_ssize_t ldb, double *c, Py_ssize_t ldc, int beta)
    void lc_tile_e_f32(int kr, Py_ssize_t kc, const float *a, Py_ssize_t lda, const float *b,
                       const Py_ssize_t *boff, float *c, Py_ssize_t ldi, Py_ssize_t ldj,
                       int beta)
    void lc_tile_e_f64(int kr, Py_ssize_t kc, const double *a, Py_ssize_t lda,
                       const double *b, const Py_ssize_t *boff, double *c, Py_ssize_t ldi,
                       Py_ssize_t ldj, int beta)
    void lc_transpose_f32(const float *src, Py_ssize_t lds, float *dst, Py_ssize_t ldd)
    void lc_transpose_f64(const double *src, Py_ssize_t lds, double *dst, Py_ssize_t ldd)
    void lc_transpose_at_f32(const float *src, const Py_ssize_t *roff, float *dst,
                             Py_ssize_t ldd)
    void lc_transpose_at_f64(const double *src, const Py_ssize_t *roff, double *dst,
                             Py_ssize_t ldd)
    void lc_block_put_f32(float *dst, Py_ssize_t ldd, const float *src, Py_ssize_t lds,
                          Py_ssize_t rows, Py_ssize_t n, int add)
    void lc_block_put_f64(double *dst, Py_ssize_t ldd, const double *src, Py_ssize_t lds,
                          Py_ssize_t rows, Py_ssize_t n, int add)
    void lc_evens_f32(float *dst, const float *src, Py_ssize_t n, Py_ssize_t avail)
    void lc_evens_f64(double *dst, const double *src, Py_ssize_t n, Py_ssize_t avail)
    void lc_phases_f32(float *dst, Py_ssize_t plane, const float *src, Py_ssize_t n,
                       Py_ssize_t sw)
    void lc_phases_f64(double *dst, Py_ssize_t plane, const double *src, Py_ssize_t n,
                       Py_ssize_t sw)
    void lc_row_f32(float *dst, const float *src, Py_ssize_t lo, Py_ssize_t hi)
    void lc_row_f64(double *dst, const double *src, Py_ssize_t lo, Py_ssize_t hi)
    void lc_row_pair_f32(float *row0, float *row1, const float *src, Py_ssize_t m,
                         Py_ssize_t lo0, Py_ssize_t hi0, Py_ssize_t lo1, Py_ssize_t hi1)
    void lc_row_pair_f64(double *row0, double *row1, const double *src, Py_ssize_t m,
                         Py_ssize_t lo0, Py_ssize_t hi0, Py_ssize_t lo1, Py_ssize_t hi1)
    void lc_put_f32(float *dst, Py_ssize_t ldd, Py_ssize_t ds, const float *tile,
                    Py_ssize_t width, Py_ssize_t rows, Py_ssize_t u, Py_ssize_t n, int add)
    void lc_put_f64(double *dst, Py_ssize_t ldd, Py_ssize_t ds, const double *tile,
                    Py_ssize_t width, Py_ssize_t rows, Py_ssize_t u, Py_ssize_t n, int add)
    void lc_dw_rows_f32(Py_ssize_t nk, const float *w, const Py_ssize_t *off, const float *src,
                        Py_ssize_t ls, float *dst, Py_ssize_t ld, Py_ssize_t n,
                        Py_ssize_t nrows, float bias)
    void lc_dw_rows_f64(Py_ssize_t nk, const double *w, const Py_ssize_t *off,
                        const double *src, Py_ssize_t ls, double *dst, Py_ssize_t ld,
                        Py_ssize_t n, Py_ssize_t nrows, double bias)
    void lc_dw_dots_f32(Py_ssize_t no, Py_ssize_t nk, const Py_ssize_t *off, const float *src,
                        Py_ssize_t ss, const float *dy, Py_ssize_t ldy, Py_ssize_t ds,
                        Py_ssize_t nseg, Py_ssize_t n, float *accv)
    void lc_dw_dots_f64(Py_ssize_t no, Py_ssize_t nk, const Py_ssize_t *off,
                        const double *src, Py_ssize_t ss, const double *dy, Py_ssize_t ldy,
                        Py_ssize_t ds, Py_ssize_t nseg, Py_ssize_t n, double *accv)
    void lc_dwc_runs_f32(Py_ssize_t nrun, const Py_ssize_t *runs, const float *wv,
                         const float *src, Py_ssize_t ls, float *dst, Py_ssize_t ld,
                         Py_ssize_t cs, Py_ssize_t n, Py_ssize_t nrows, const float *bias)
    void lc_dwc_runs_f64(Py_ssize_t nrun, const Py_ssize_t *runs, const double *wv,
                         const double *src, Py_ssize_t ls, double *dst, Py_ssize_t ld,
                         Py_ssize_t cs, Py_ssize_t n, Py_ssize_t nrows, const double *bias)
    void lc_dwc_dotruns_f32(Py_ssize_t nrun, const Py_ssize_t *runs, const float *src,
                            Py_ssize_t ls, const float *dy, Py_ssize_t ld, Py_ssize_t n,
                            Py_ssize_t nrows, float *accv)
    void lc_dwc_dotruns_f64(Py_ssize_t nrun, const Py_ssize_t *runs, const double *src,
                            Py_ssize_t ls, const double *dy, Py_ssize_t ld, Py_ssize_t n,
                            Py_ssize_t nrows, double *accv)
    void lc_dw_copy_f32(float *dst, Py_ssize_t ld, const float *src, Py_ssize_t ls,
                        Py_ssize_t n, Py_ssize_t nrows)
    void lc_dw_copy_f64(double *dst, Py_ssize_t ld, const double *src, Py_ssize_t ls,
                        Py_ssize_t n, Py_ssize_t nrows)
    void lc_dwc_copy_f32(float *dst, Py_ssize_t ld, const float *src, Py_ssize_t ls,
                         Py_ssize_t n, Py_ssize_t step, Py_ssize_t nrows)
    void lc_dwc_copy_f64(double *dst, Py_ssize_t ld, const double *src, Py_ssize_t ls,
                         Py_ssize_t n, Py_ssize_t step, Py_ssize_t nrows)


ctypedef fused element:
    float
    double


cdef inline str typecode(const element *unused):
    """NumPy's type character of `element` (call with `<element *> NULL`)."""
    if element is float:
        return "f"
    else:
        return "d"


cdef inline str ctype_name(str code):
    """The member of `element` for NumPy's type character `code` (to pick a specialisation of
    a fused function by name, as `function[ctype_name(code)]`)."""
    if code == "f":
        return "float"
    if code == "d":
        return "double"
    raise TypeError(f"the loops do not compute in dtype {code!r}")


# ---------------------------------------------------------------------------------------------
# The kernels, by type.  microkernel.h and depthwise.h say what each computes.

cdef inline void tile_b(int mr, int nv, Py_ssize_t kc, const element *a,
                        const element *b, const Py_ssize_t *boff, element *c, Py_ssize_t ldc,
                        bint beta, int pfa) noexcept nogil:
    """The forward-style tile, A packed: nv vectors of columns (LC_NV_B, one or two); pfa:
    flags, LC_PF_A to ask for A's rows ahead (a streamed weight, Product.stream_a),
    LC_PF_NEAR_B for B's rows nearer ahead (Product.near_b)."""
    if element is float:
        lc_tile_b_f32(mr, nv, kc, a, b, boff, c, ldc, beta, pfa)
    else:
        lc_tile_b_f64(mr, nv, kc, a, b, boff, c, ldc, beta, pfa)


cdef inline void tile_v(int pieces, int mr, int nv, Py_ssize_t kc, const element *a,
                        const element *b, const Py_ssize_t *boff, const Py_ssize_t *vo,
                        element *c, Py_ssize_t ldc, bint beta, int pfa) noexcept nogil:
    """tile_b with each vector of the columns (pieces 1) or each half of one (pieces 2) at
    its own offset, b + vo[r] for piece r (rows of a grid without its junk)."""
    if element is float:
        lc_tile_v_f32(pieces, mr, nv, kc, a, b, boff, vo, c, ldc, beta, pfa)
    else:
        lc_tile_v_f64(pieces, mr, nv, kc, a, b, boff, vo, c, ldc, beta, pfa)


cdef inline void tile_r(int mr, int nv, Py_ssize_t kc, const element *a, const element *b,
                        const Py_ssize_t *boff, const Py_ssize_t *vo, element *c,
                        Py_ssize_t ldc, bint beta, int pfa) noexcept nogil:
    """tile_b with each vector of the columns from the two grid rows it spans (LC_ROW_MASKS):
    vo[3v] and vo[3v + 1] their offsets, less the lanes before, vo[3v + 2] their lanes'
    masks (lc_rows)."""
    if element is float:
        lc_tile_r_f32(mr, nv, kc, a, b, boff, vo, c, ldc, beta, pfa)
    else:
        lc_tile_r_f64(mr, nv, kc, a, b, boff, vo, c, ldc, beta, pfa)


cdef inline void tile_g(int mr, int nv, Py_ssize_t kc, const element *a,
                        const Py_ssize_t *aoff, Py_ssize_t rs, const element *b,
                        const Py_ssize_t *boff, element *c, Py_ssize_t ldc,
                        bint beta) noexcept nogil:
    """The forward-style tile with A read in place, nv vectors wide (LC_NV_B, one or two)."""
    if element is float:
        lc_tile_g_f32(mr, nv, kc, a, aoff, rs, b, boff, c, ldc, beta)
    else:
        lc_tile_g_f64(mr, nv, kc, a, aoff, rs, b, boff, c, ldc, beta)


cdef inline void tile_gc(int pieces, int mr, int nv, Py_ssize_t kc, const element *a,
                         const Py_ssize_t *aoff, Py_ssize_t rs, const element *b,
                         const Py_ssize_t *boff, const Py_ssize_t *vo, element *c,
                         Py_ssize_t ldc, bint beta) noexcept nogil:
    """tile_g with each vector of the columns (pieces 1) or each half of one (pieces 2) at its
    own offset, b + vo[r] for piece r (as tile_v)."""
    if element is float:
        lc_tile_gc_f32(pieces, mr, nv, kc, a, aoff, rs, b, boff, vo, c, ldc, beta)
    else:
        lc_tile_gc_f64(pieces, mr, nv, kc, a, aoff, rs, b, boff, vo, c, ldc, beta)


cdef inline void tile_p(int nv, Py_ssize_t kc, const element *const *ar,
                        const Py_ssize_t *aoff, const element *b, Py_ssize_t ldb, element *c,
                        Py_ssize_t ldc, bint beta, bint pf) noexcept nogil:
    """The pixel tile: LC_MR_B rows of A, row i at ar[i] (column k at aoff[k]), by nv vectors
    of B (row k at b + k * ldb); pf: prefetch A's columns ahead (LC_PREFETCH_P)."""
    if element is float:
        lc_tile_p_f32(nv, kc, ar, aoff, b, ldb, c, ldc, beta, pf)
    else:
        lc_tile_p_f64(nv, kc, ar, aoff, b, ldb, c, ldc, beta, pf)


cdef inline void tile_a(int nv, Py_ssize_t kc, const element *a, const Py_ssize_t *aoff,
                        const element *b, element *c, Py_ssize_t ldc, bint beta) noexcept nogil:
    """The weight-gradient tile, B (dy) packed: LC_MR_A rows by two vectors (nv = 2), or
    LC_MR_A1 rows by one."""
    if element is float:
        lc_tile_a_f32(nv, kc, a, aoff, b, c, ldc, beta)
    else:
        lc_tile_a_f64(nv, kc, a, aoff, b, c, ldc, beta)


cdef inline void tile_m(int nv, Py_ssize_t kc, const element *a, const Py_ssize_t *aoff,
                        const Py_ssize_t *cmap, const element *b, element *c, Py_ssize_t ldc,
                        bint beta) noexcept nogil:
    """tile_a with A's columns at cmap (the valid columns of a grid)."""
    if element is float:
        lc_tile_m_f32(nv, kc, a, aoff, cmap, b, c, ldc, beta)
    else:
        lc_tile_m_f64(nv, kc, a, aoff, cmap, b, c, ldc, beta)


cdef inline void tile_d(int kr, Py_ssize_t kc, const element *a, const Py_ssize_t *aoff,
                        const element *b, Py_ssize_t ldb, element *c, Py_ssize_t ldc,
                        bint beta) noexcept nogil:
    """The tile summing along the lanes (weight gradients for few output channels, dense
    products), of kr = 1 or LC_KR_D rows."""
    if element is float:
        lc_tile_d_f32(kr, kc, a, aoff, b, ldb, c, ldc, beta)
    else:
        lc_tile_d_f64(kr, kc, a, aoff, b, ldb, c, ldc, beta)


cdef inline void stream(int mr, Py_ssize_t kc, const element *a, const element *b,
                        Py_ssize_t ldb, Py_ssize_t n, element *c, Py_ssize_t ldc) noexcept nogil:
    """n columns of a product of mr = 1, 2 or 4 rows (a packed, k outermost) with B read row
    after row (rows ldb apart), into c (rows ldc apart)."""
    if element is float:
        lc_stream_f32(mr, kc, a, b, ldb, n, c, ldc)
    else:
        lc_stream_f64(mr, kc, a, b, ldb, n, c, ldc)


cdef inline void dots(Py_ssize_t kc, const element *a, Py_ssize_t lda, Py_ssize_t nrows,
                      const element *b, Py_ssize_t ldb, int ncols, element *c, Py_ssize_t ldc,
                      Py_ssize_t dc, bint beta) noexcept nogil:
    """c[i * ldc + j * dc] (=, +=) the dot product of row i of a (lda apart) and row j of b
    (ldb apart) over kc elements, for i < nrows and j < ncols, 1 or 2 (b has two rows)."""
    if element is float:
        lc_dots_f32(kc, a, lda, nrows, b, ldb, ncols, c, ldc, dc, beta)
    else:
        lc_dots_f64(kc, a, lda, nrows, b, ldb, ncols, c, ldc, dc, beta)


cdef inline void down(Py_ssize_t kc, const element *a, const Py_ssize_t *aoff,
                      Py_ssize_t nrows, Py_ssize_t avail, const element *b,
                      const Py_ssize_t *boff, Py_ssize_t db, int ncols, element *c,
                      Py_ssize_t ldc, Py_ssize_t dc, bint beta) noexcept nogil:
    """c[i * ldc + j * dc] (=, +=) sum over k < kc of a[aoff[k] + i] b[boff[k] + j * db], for
    i < nrows and j < ncols, 1 or 2: vectors down A's columns, which have avail rows to read
    (at least nrows)."""
    if element is float:
        lc_down_f32(kc, a, aoff, nrows, avail, b, boff, db, ncols, c, ldc, dc, beta)
    else:
        lc_down_f64(kc, a, aoff, nrows, avail, b, boff, db, ncols, c, ldc, dc, beta)


cdef inline void tile_e(int kr, Py_ssize_t kc, const element *a, Py_ssize_t lda,
                        const element *b, const Py_ssize_t *boff, element *c, Py_ssize_t ldi,
                        Py_ssize_t ldj, bint beta) noexcept nogil:
    """lc_tile_d the other way round: kr = 1, 2 or LC_KR_D rows (output channels) by LC_OR_D
    columns (rows of x at boff), stored at c[i * ldi + j * ldj]."""
    if element is float:
        lc_tile_e_f32(kr, kc, a, lda, b, boff, c, ldi, ldj, beta)
    else:
        lc_tile_e_f64(kr, kc, a, lda, b, boff, c, ldi, ldj, beta)


cdef inline void transpose_block(const element *src, Py_ssize_t lds, element *dst,
                                 Py_ssize_t ldd) noexcept nogil:
    """dst[j * ldd + i] = src[i * lds + j] for i, j < the lanes of a vector."""
    if element is float:
        lc_transpose_f32(src, lds, dst, ldd)
    else:
        lc_transpose_f64(src, lds, dst, ldd)


cdef inline void transpose_at(const element *src, const Py_ssize_t *roff, element *dst,
                              Py_ssize_t ldd) noexcept nogil:
    """dst[j * ldd + i] = src[roff[i] + j] for i, j < the lanes of a vector."""
    if element is float:
        lc_transpose_at_f32(src, roff, dst, ldd)
    else:
        lc_transpose_at_f64(src, roff, dst, ldd)


cdef inline void block_put(element *dst, Py_ssize_t ldd, const element *src, Py_ssize_t lds,
                           Py_ssize_t rows, Py_ssize_t n, bint add) noexcept nogil:
    """dst[i * ldd + j] (=, +=) src[i * lds + j] for i < rows, j < n (the blocks must not
    overlap)."""
    if element is float:
        lc_block_put_f32(dst, ldd, src, lds, rows, n, add)
    else:
        lc_block_put_f64(dst, ldd, src, lds, rows, n, add)


cdef inline void dw_rows(Py_ssize_t nk, const element *w, const Py_ssize_t *off,
                         const element *src, Py_ssize_t ls, element *dst, Py_ssize_t ld,
                         Py_ssize_t n, Py_ssize_t nrows, element bias) noexcept nogil:
    if element is float:
        lc_dw_rows_f32(nk, w, off, src, ls, dst, ld, n, nrows, bias)
    else:
        lc_dw_rows_f64(nk, w, off, src, ls, dst, ld, n, nrows, bias)


cdef inline void evens(element *dst, const element *src, Py_ssize_t n,
                       Py_ssize_t avail) noexcept nogil:
    if element is float:
        lc_evens_f32(dst, src, n, avail)
    else:
        lc_evens_f64(dst, src, n, avail)


cdef inline void split_phases(element *dst, Py_ssize_t plane, const element *src,
                              Py_ssize_t n, Py_ssize_t sw) noexcept nogil:
    if element is float:
        lc_phases_f32(dst, plane, src, n, sw)
    else:
        lc_phases_f64(dst, plane, src, n, sw)


cdef inline void short_row(element *dst, const element *src, Py_ssize_t lo,
                           Py_ssize_t hi) noexcept nogil:
    if element is float:
        lc_row_f32(dst, src, lo, hi)
    else:
        lc_row_f64(dst, src, lo, hi)


cdef inline void short_row_pair(element *row0, element *row1, const element *src,
                                Py_ssize_t m, const Py_ssize_t *bounds) noexcept nogil:
    if element is float:
        lc_row_pair_f32(row0, row1, src, m, bounds[0], bounds[1], bounds[2], bounds[3])
    else:
        lc_row_pair_f64(row0, row1, src, m, bounds[0], bounds[1], bounds[2], bounds[3])


cdef inline void put_run(element *dst, Py_ssize_t ldd, Py_ssize_t ds, const element *tile,
                         Py_ssize_t width, Py_ssize_t rows, Py_ssize_t u, Py_ssize_t n,
                         bint add) noexcept nogil:
    if element is float:
        lc_put_f32(dst, ldd, ds, tile, width, rows, u, n, add)
    else:
        lc_put_f64(dst, ldd, ds, tile, width, rows, u, n, add)


cdef inline void dw_dots(Py_ssize_t no, Py_ssize_t nk, const Py_ssize_t *off,
                         const element *src, Py_ssize_t ss, const element *dy, Py_ssize_t ldy,
                         Py_ssize_t ds, Py_ssize_t nseg, Py_ssize_t n,
                         element *accv) noexcept nogil:
    if element is float:
        lc_dw_dots_f32(no, nk, off, src, ss, dy, ldy, ds, nseg, n, accv)
    else:
        lc_dw_dots_f64(no, nk, off, src, ss, dy, ldy, ds, nseg, n, accv)


cdef inline void dwc_runs(Py_ssize_t nrun, const Py_ssize_t *runs, const element *wv,
                          const element *src, Py_ssize_t ls, element *dst, Py_ssize_t ld,
                          Py_ssize_t cs, Py_ssize_t n, Py_ssize_t nrows,
                          const element *bias) noexcept nogil:
    if element is float:
        lc_dwc_runs_f32(nrun, runs, wv, src, ls, dst, ld, cs, n, nrows, bias)
    else:
        lc_dwc_runs_f64(nrun, runs, wv, src, ls, dst, ld, cs, n, nrows, bias)


cdef inline void dwc_dotruns(Py_ssize_t nrun, const Py_ssize_t *runs, const element *src,
                             Py_ssize_t ls, const element *dy, Py_ssize_t ld, Py_ssize_t n,
                             Py_ssize_t nrows, element *accv) noexcept nogil:
    if element is float:
        lc_dwc_dotruns_f32(nrun, runs, src, ls, dy, ld, n, nrows, accv)
    else:
        lc_dwc_dotruns_f64(nrun, runs, src, ls, dy, ld, n, nrows, accv)


cdef inline void dw_copy(element *dst, Py_ssize_t ld, const element *src, Py_ssize_t ls,
                         Py_ssize_t n, Py_ssize_t nrows) noexcept nogil:
    """dst[r * ld + j] = src[r * ls + j] for j < n, r < nrows."""
    if element is float:
        lc_dw_copy_f32(dst, ld, src, ls, n, nrows)
    else:
        lc_dw_copy_f64(dst, ld, src, ls, n, nrows)


cdef inline void dwc_copy(element *dst, Py_ssize_t ld, const element *src, Py_ssize_t ls,
                          Py_ssize_t n, Py_ssize_t step, Py_ssize_t nrows) noexcept nogil:
    """Vectors: dst[(r * ld + e) * VW + l] = src[(r * ls + e * step) * VW + l]."""
    if element is float:
        lc_dwc_copy_f32(dst, ld, src, ls, n, step, nrows)
    else:
        lc_dwc_copy_f64(dst, ld, src, ls, n, step, nrows)
