/*
 * The register blocks of loopconv's depthwise loops (depthwise.pxi): convolutions with one or
 * a few channels per group.  T is float (suffix f32) or double (f64), W the lanes of a vector.
 *
 * Pixel vectors, one channel at a time:
 *   lc_dw_rows_T:  dst[r ld + j] = bias + sum_{k < nk} w[k] src[r ls + off[k] + j]
 *                  for rows r < nrows and j < n (n >= W): the taps (and channels of a group)
 *                  of a window, each a broadcast weight times a vector of the staged input.
 *                  A row's vectors start at j = 0, W, 2W, ... and the last at n - W (it
 *                  overlaps the one before and stores the same values there); they are taken
 *                  LC_DW_NB at a time across rows, each an accumulator over all the taps.
 *   lc_dw_dots_T:  acc[(o nk + k) W + l] += sum_{m, j = l mod W} dy[o ldy + m ds + j]
 *                                                      src[m ss + off[k] + j]
 *                  for o < no, k < nk, j < n, m < nseg: the weight gradient, as dot products
 *                  of dy (zero where there is no output) with shifted runs of the staged
 *                  input, n a multiple of W, in lane-wise partial sums; `no` rows of dy (a
 *                  group's output channels) and nseg segments (several small images, whose
 *                  accumulators stay in registers from one to the next).  Blocks of LC_DW_OB
 *                  rows by LC_DW_OKB taps, so that a loaded input vector serves every row of
 *                  the block, and for a last single row blocks of LC_DW_KB taps; each lane's
 *                  sum over the columns in order, segment after segment.
 * Channel blocks, W channels at a time (every grid element is a vector, one lane a channel):
 *   lc_dwc_runs_T:    dst[(r ld + e cs) W + l] = bias[l]
 *                         + sum_k wv[k W + l] src[(r ls + off_k + e) W + l]        e < n
 *   lc_dwc_dotruns_T: acc[k W + l] += sum_{r, e} dy[(r ld + e) W + l] src[(r ls + off_k + e) W + l]
 *                  with the taps as runs of consecutive offsets (a row of a kernel at stride
 *                  1: kw = 0, 1, 2), runs[3 i .. 3 i + 2] = (offset of the run's first tap,
 *                  its length R <= 7, the index k of its first tap).  PX = 7 or 8 pixels of
 *                  a row at a time (lc_dwc_px: whichever drops fewer at the row's end): a run
 *                  reads PX + R - 1 input vectors for PX R FMAs, each input vector serving R
 *                  pixels (measured with AVX-512 on a 7x7 to 28x28 forward pass: 100 GFLOP/s
 *                  against 65 for a load per FMA); lc_dwc_runs takes two rows at a time,
 *                  which share the run's weights and give 14 or 16 independent accumulators
 *                  (one row's chains of R FMAs each left the FMA units waiting: 7x7 kernels
 *                  1.2-1.3x faster so).  The last block of a row reads up to PX - 1 pixels
 *                  past its end (computed, never stored; dy is zero there).
 *   lc_dw_copy_T:  dst[r ld + j] = src[r ls + j], j < n, r < nrows;
 *   lc_dwc_copy_T: the same for vectors, taken `step` apart: dst[(r ld + e) W + l] =
 *                  src[(r ls + e step) W + l].
 * Every output element, or partial sum lane, is summed over the taps in a fixed order: k
 * ascending, then the bias.
 *
 * Why C: as in microkernel.h, the accumulators are GCC/Clang vector types (microkernel.h's
 * lc_vec_T), so that they stay in registers; other compilers get plain loops, with the same
 * results up to rounding.
 */
#ifndef LOOPCONV_DEPTHWISE_H
#define LOOPCONV_DEPTHWISE_H

#include <stddef.h>

#include "microkernel.h"

/* Output vectors per block of lc_dw_rows (8 accumulators cover the FMA latency; with the
 * weight broadcast they fit in 16 registers); the most taps per block of lc_dw_dots for one
 * row of dy (a 3x3 kernel in one block; 12 accumulators, dy and a loaded vector fit in 16 registers, and the
 * addresses of the 12 taps in the 16 general-purpose ones); the most pixels per block of the
 * channel blocks, which run only with the 32 registers of AVX-512 (two rows: 16 accumulators,
 * up to 7 weights and a loaded vector), and the staged slack past a block's rows (2 blocks). */
#define LC_DW_NB 8
#define LC_DW_KB 12
#define LC_DWC_PX 8
/* dy rows and taps per block of lc_dw_dots: OB KB accumulators, OB dy vectors and a loaded one
 * in 32 registers (AVX-512: 4 x 6) or 16 (2 x 6) */
#if LC_VEC_BYTES == 64
#  define LC_DW_OB 4
#else
#  define LC_DW_OB 2
#endif
#define LC_DW_OKB 6

#if defined(__GNUC__) || defined(__clang__)

/* Loops over the pixels and taps of a run, unrolled whole so that their accumulators, indexed
 * by both, stay in registers (GCC leaves a run of 7 taps, 14 x 7 FMAs, rolled otherwise, and
 * the accumulators in memory). */
#  if defined(__clang__)
#    define LC_DW_UNROLL _Pragma("unroll")
#  else
#    define LC_DW_UNROLL _Pragma("GCC unroll 16")
#  endif

/* Hides a loop counter from the optimiser, so that a copy loop stays a loop: GCC would call
 * memmove for it, which costs more than the copy for rows of 7 to 112 elements. */
#  define LC_DW_OPAQUE(j) __asm__("" : "+r"(j))

/* NB vectors of lc_dw_rows: dst[dpos[b] + l] = bias + sum_k w[k] src[spos[b] + off[k] + l] */
#  define LC_DW_ROWS_BLOCK(SUFFIX, T, NB)                                                \
static inline void lc_dw_rows##NB##_##SUFFIX(ptrdiff_t nk, const T *LC_RESTRICT w,      \
        const ptrdiff_t *LC_RESTRICT off, const T *LC_RESTRICT src,                     \
        const ptrdiff_t *LC_RESTRICT spos, T *LC_RESTRICT dst,                          \
        const ptrdiff_t *LC_RESTRICT dpos, T bias)                                      \
{                                                                                       \
    typedef lc_vec_##SUFFIX VEC;                                                        \
    typedef lc_uvec_##SUFFIX UVEC;                                                      \
    ptrdiff_t sp[NB];                                                                   \
    VEC acc[NB];                                                                        \
    for (int b = 0; b < NB; b++) {                                                      \
        sp[b] = spos[b];                                                                \
        acc[b] = (VEC){0};                                                              \
    }                                                                                   \
    for (ptrdiff_t k = 0; k < nk; k++) {                                                \
        const T *s = src + off[k];                                                      \
        T wk = w[k];                                                                    \
        for (int b = 0; b < NB; b++) acc[b] += wk * *(const UVEC *)(s + sp[b]);         \
    }                                                                                   \
    for (int b = 0; b < NB; b++) *(UVEC *)(dst + dpos[b]) = acc[b] + bias;              \
}

#  define LC_DW_ROWS_CASE(SUFFIX, NB)                                                    \
    case NB: lc_dw_rows##NB##_##SUFFIX(nk, w, off, src, spos, dst, dpos, bias); break;

/* OB dy rows (ldy apart) by KB taps of lc_dw_dots: each input vector loaded once for the OB
 * rows, each dy vector once for the KB taps (OB + KB loads for OB KB FMAs: a row at a time,
 * 1 + KB for KB); the accumulators of row o at accv + o lda */
#  define LC_DW_DOTS_BLOCK(SUFFIX, T, OB, KB)                                            \
static inline void lc_dw_dots##OB##_##KB##_##SUFFIX(const ptrdiff_t *LC_RESTRICT off,   \
        const T *LC_RESTRICT src, ptrdiff_t ss, const T *LC_RESTRICT dy, ptrdiff_t ldy, \
        ptrdiff_t ds, ptrdiff_t nseg, ptrdiff_t n, T *LC_RESTRICT accv, ptrdiff_t lda)  \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    typedef lc_vec_##SUFFIX VEC;                                                        \
    typedef lc_uvec_##SUFFIX UVEC;                                                      \
    const T *rows[KB];                                                                  \
    VEC acc[OB][KB];                                                                    \
    for (int i = 0; i < KB; i++) rows[i] = src + off[i];                                \
    for (int o = 0; o < OB; o++)                                                        \
        for (int i = 0; i < KB; i++) acc[o][i] = *(const UVEC *)(accv + o * lda + i * W); \
    for (ptrdiff_t m = 0; m < nseg; m++) {                                              \
        for (ptrdiff_t j = 0; j < n; j += W) {                                          \
            VEC d[OB];                                                                  \
            for (int o = 0; o < OB; o++) d[o] = *(const UVEC *)(dy + o * ldy + j);      \
            for (int i = 0; i < KB; i++) {                                              \
                VEC s = *(const UVEC *)(rows[i] + j);                                   \
                for (int o = 0; o < OB; o++) acc[o][i] += d[o] * s;                     \
            }                                                                           \
        }                                                                               \
        for (int i = 0; i < KB; i++) rows[i] += ss;                                     \
        dy += ds;                                                                       \
    }                                                                                   \
    for (int o = 0; o < OB; o++)                                                        \
        for (int i = 0; i < KB; i++) *(UVEC *)(accv + o * lda + i * W) = acc[o][i];     \
}

#  define LC_DW_DOTS_ROWS(SUFFIX, T, OB)                                                 \
LC_DW_DOTS_BLOCK(SUFFIX, T, OB, 1) LC_DW_DOTS_BLOCK(SUFFIX, T, OB, 2)                    \
LC_DW_DOTS_BLOCK(SUFFIX, T, OB, 3) LC_DW_DOTS_BLOCK(SUFFIX, T, OB, 4)                    \
LC_DW_DOTS_BLOCK(SUFFIX, T, OB, 5) LC_DW_DOTS_BLOCK(SUFFIX, T, OB, 6)
#  define LC_DW_DOTS_ROW(SUFFIX, T)                                                      \
LC_DW_DOTS_ROWS(SUFFIX, T, 1) LC_DW_DOTS_BLOCK(SUFFIX, T, 1, 7)                          \
LC_DW_DOTS_BLOCK(SUFFIX, T, 1, 8) LC_DW_DOTS_BLOCK(SUFFIX, T, 1, 9)                      \
LC_DW_DOTS_BLOCK(SUFFIX, T, 1, 10) LC_DW_DOTS_BLOCK(SUFFIX, T, 1, 11)                    \
LC_DW_DOTS_BLOCK(SUFFIX, T, 1, 12)

#  define LC_DW_DOTS_CASE(SUFFIX, OB, KB)                                                \
    case OB * 16 + KB:                                                                  \
        lc_dw_dots##OB##_##KB##_##SUFFIX(off + k0, src, ss, dy, ldy, ds, nseg, n,          \
                                         accv + k0 * W, lda);                           \
        break;

#  define LC_DW_DOTS_CASES(SUFFIX, OB)                                                   \
    LC_DW_DOTS_CASE(SUFFIX, OB, 1) LC_DW_DOTS_CASE(SUFFIX, OB, 2)                        \
    LC_DW_DOTS_CASE(SUFFIX, OB, 3) LC_DW_DOTS_CASE(SUFFIX, OB, 4)                        \
    LC_DW_DOTS_CASE(SUFFIX, OB, 5) LC_DW_DOTS_CASE(SUFFIX, OB, 6)
#  define LC_DW_DOTS_ROW_CASES(SUFFIX)                                                   \
    LC_DW_DOTS_CASES(SUFFIX, 1) LC_DW_DOTS_CASE(SUFFIX, 1, 7)                            \
    LC_DW_DOTS_CASE(SUFFIX, 1, 8) LC_DW_DOTS_CASE(SUFFIX, 1, 9)                          \
    LC_DW_DOTS_CASE(SUFFIX, 1, 10) LC_DW_DOTS_CASE(SUFFIX, 1, 11)                        \
    LC_DW_DOTS_CASE(SUFFIX, 1, 12)

/* a run of R taps of lc_dwc_runs: acc[q][b] (pixel e0 + b of row q) += the run's weights times
 * the input vectors s[q ls + i], each loaded once for the R pixels it serves */
#  define LC_DWC_RUN(VEC, UVEC, R, PX, ROWS)                                             \
    {                                                                                   \
        VEC wr[R];                                                                      \
        for (int j = 0; j < R; j++) wr[j] = *(const UVEC *)(wk + j * W);                \
        LC_DW_UNROLL                                                                    \
        for (int i = 0; i < PX + R - 1; i++) {                                          \
            LC_DW_UNROLL                                                                \
            for (int q = 0; q < ROWS; q++) {                                            \
                VEC v = *(const UVEC *)(s + (q * ls + i) * W);                          \
                LC_DW_UNROLL                                                            \
                for (int j = 0; j < R; j++)                                             \
                    if (i - j >= 0 && i - j < PX) acc[q][i - j] += wr[j] * v;           \
            }                                                                           \
        }                                                                               \
    }

/* a run of R taps of lc_dwc_dotruns over all the rows: acc[j] += dy of pixel e0 + b times the
 * input vector of pixel e0 + b + j, each input vector loaded once for the R taps it serves */
#  define LC_DWC_DOTRUN(T, VEC, UVEC, R, PX)                                             \
    {                                                                                   \
        VEC acc[R];                                                                     \
        for (int j = 0; j < R; j++) acc[j] = *(const UVEC *)(accv + (k0 + j) * W);      \
        for (ptrdiff_t r = 0; r < nrows; r++) {                                         \
            const T *s = src + (r * ls + ob) * W;                                       \
            const T *d = dy + r * ld * W;                                               \
            for (ptrdiff_t e0 = 0; e0 < n; e0 += PX) {                                  \
                VEC dv[PX];                                                             \
                for (int b = 0; b < PX; b++)                                            \
                    dv[b] = b < n - e0 ? *(const UVEC *)(d + (e0 + b) * W) : (VEC){0};  \
                LC_DW_UNROLL                                                            \
                for (int i = 0; i < PX + R - 1; i++) {                                  \
                    VEC v = *(const UVEC *)(s + (e0 + i) * W);                          \
                    LC_DW_UNROLL                                                        \
                    for (int j = 0; j < R; j++)                                         \
                        if (i - j >= 0 && i - j < PX) acc[j] += dv[i - j] * v;          \
                }                                                                       \
            }                                                                           \
        }                                                                               \
        for (int j = 0; j < R; j++) *(UVEC *)(accv + (k0 + j) * W) = acc[j];            \
    }

/* lc_dwc_runs for rows r0 ... r0 + ROWS - 1 in blocks of PX pixels; lc_dwc_dotruns in blocks of
 * PX pixels */
#  define LC_DWC_RUNS_PX(SUFFIX, T, PX, ROWS)                                            \
static inline void lc_dwc_runs##PX##x##ROWS##_##SUFFIX(ptrdiff_t nrun,                  \
        const ptrdiff_t *LC_RESTRICT runs, const T *LC_RESTRICT wv,                     \
        const T *LC_RESTRICT src, ptrdiff_t ls, T *LC_RESTRICT dst, ptrdiff_t ld,       \
        ptrdiff_t cs, ptrdiff_t n, ptrdiff_t r0, lc_vec_##SUFFIX bv)                    \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    typedef lc_vec_##SUFFIX VEC;                                                        \
    typedef lc_uvec_##SUFFIX UVEC;                                                      \
    for (ptrdiff_t e0 = 0; e0 < n; e0 += PX) {                                          \
        VEC acc[ROWS][PX];                                                              \
        for (int q = 0; q < ROWS; q++)                                                  \
            for (int b = 0; b < PX; b++) acc[q][b] = (VEC){0};                          \
        for (ptrdiff_t g = 0; g < nrun; g++) {                                          \
            const T *s = src + (r0 * ls + e0 + runs[3 * g]) * W;                        \
            const T *wk = wv + runs[3 * g + 2] * W;                                     \
            switch (runs[3 * g + 1]) {                                                  \
            case 1: LC_DWC_RUN(VEC, UVEC, 1, PX, ROWS) break;                           \
            case 2: LC_DWC_RUN(VEC, UVEC, 2, PX, ROWS) break;                           \
            case 3: LC_DWC_RUN(VEC, UVEC, 3, PX, ROWS) break;                           \
            case 4: LC_DWC_RUN(VEC, UVEC, 4, PX, ROWS) break;                           \
            case 5: LC_DWC_RUN(VEC, UVEC, 5, PX, ROWS) break;                           \
            case 6: LC_DWC_RUN(VEC, UVEC, 6, PX, ROWS) break;                           \
            default: LC_DWC_RUN(VEC, UVEC, 7, PX, ROWS) break;                          \
            }                                                                           \
        }                                                                               \
        for (int q = 0; q < ROWS; q++) {                                                \
            T *d = dst + ((r0 + q) * ld + e0 * cs) * W;                                 \
            for (int b = 0; b < PX; b++)                                                \
                if (b < n - e0) *(UVEC *)(d + b * cs * W) = acc[q][b] + bv;             \
        }                                                                               \
    }                                                                                   \
}

#  define LC_DWC_DOTRUNS_PX(SUFFIX, T, PX)                                               \
static inline void lc_dwc_dotruns##PX##_##SUFFIX(ptrdiff_t nrun,                        \
        const ptrdiff_t *LC_RESTRICT runs, const T *LC_RESTRICT src, ptrdiff_t ls,      \
        const T *LC_RESTRICT dy, ptrdiff_t ld, ptrdiff_t n, ptrdiff_t nrows,            \
        T *LC_RESTRICT accv)                                                            \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    typedef lc_vec_##SUFFIX VEC;                                                        \
    typedef lc_uvec_##SUFFIX UVEC;                                                      \
    for (ptrdiff_t g = 0; g < nrun; g++) {                                              \
        ptrdiff_t ob = runs[3 * g], k0 = runs[3 * g + 2];                               \
        switch (runs[3 * g + 1]) {                                                      \
        case 1: LC_DWC_DOTRUN(T, VEC, UVEC, 1, PX) break;                               \
        case 2: LC_DWC_DOTRUN(T, VEC, UVEC, 2, PX) break;                               \
        case 3: LC_DWC_DOTRUN(T, VEC, UVEC, 3, PX) break;                               \
        case 4: LC_DWC_DOTRUN(T, VEC, UVEC, 4, PX) break;                               \
        case 5: LC_DWC_DOTRUN(T, VEC, UVEC, 5, PX) break;                               \
        case 6: LC_DWC_DOTRUN(T, VEC, UVEC, 6, PX) break;                               \
        default: LC_DWC_DOTRUN(T, VEC, UVEC, 7, PX) break;                              \
        }                                                                               \
    }                                                                                   \
}

/* Pixels per block of the channel blocks for rows of n: 7 where blocks of 7 compute fewer
 * dropped pixels (rows of 7, 14, 28: 8 computes 8, 16, 32), else 8. */
static inline int lc_dwc_px(ptrdiff_t n)
{
    return (n + 6) / 7 * 7 < (n + 7) / 8 * 8 ? 7 : 8;
}

#  define LC_DEFINE_DEPTHWISE(SUFFIX, T)                                                 \
LC_DW_ROWS_BLOCK(SUFFIX, T, 1) LC_DW_ROWS_BLOCK(SUFFIX, T, 2)                           \
LC_DW_ROWS_BLOCK(SUFFIX, T, 3) LC_DW_ROWS_BLOCK(SUFFIX, T, 4)                           \
LC_DW_ROWS_BLOCK(SUFFIX, T, 5) LC_DW_ROWS_BLOCK(SUFFIX, T, 6)                           \
LC_DW_ROWS_BLOCK(SUFFIX, T, 7) LC_DW_ROWS_BLOCK(SUFFIX, T, 8)                           \
static inline void lc_dw_rows_##SUFFIX(ptrdiff_t nk, const T *w, const ptrdiff_t *off,  \
        const T *src, ptrdiff_t ls, T *dst, ptrdiff_t ld, ptrdiff_t n, ptrdiff_t nrows, \
        T bias)                                                                         \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    ptrdiff_t spos[LC_DW_NB], dpos[LC_DW_NB];                                           \
    int cnt = 0;                                                                        \
    for (ptrdiff_t r = 0; r < nrows; r++)                                               \
        for (ptrdiff_t j = 0; j < n; j += W) {                                          \
            ptrdiff_t jj = j + W <= n ? j : n - W;                                      \
            spos[cnt] = r * ls + jj;                                                    \
            dpos[cnt] = r * ld + jj;                                                    \
            if (++cnt == LC_DW_NB) {                                                    \
                lc_dw_rows8_##SUFFIX(nk, w, off, src, spos, dst, dpos, bias);           \
                cnt = 0;                                                                \
            }                                                                           \
        }                                                                               \
    switch (cnt) {                                                                      \
    LC_DW_ROWS_CASE(SUFFIX, 1) LC_DW_ROWS_CASE(SUFFIX, 2) LC_DW_ROWS_CASE(SUFFIX, 3)    \
    LC_DW_ROWS_CASE(SUFFIX, 4) LC_DW_ROWS_CASE(SUFFIX, 5) LC_DW_ROWS_CASE(SUFFIX, 6)    \
    LC_DW_ROWS_CASE(SUFFIX, 7)                                                          \
    default: break;                                                                     \
    }                                                                                   \
}                                                                                       \
LC_DW_DOTS_ROW(SUFFIX, T)                                                               \
LC_DW_DOTS_ROWS(SUFFIX, T, 2) LC_DW_DOTS_ROWS(SUFFIX, T, 3) LC_DW_DOTS_ROWS(SUFFIX, T, 4) \
static inline void lc_dw_dots_##SUFFIX(ptrdiff_t no, ptrdiff_t nk, const ptrdiff_t *off,  \
        const T *src, ptrdiff_t ss, const T *dy, ptrdiff_t ldy, ptrdiff_t ds,           \
        ptrdiff_t nseg, ptrdiff_t n, T *accv)                                           \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    ptrdiff_t lda = nk * W;                                                             \
    for (ptrdiff_t o0 = 0; o0 < no; ) {                                                 \
        ptrdiff_t ob = no - o0 < LC_DW_OB ? no - o0 : LC_DW_OB;                         \
        ptrdiff_t most = ob == 1 ? LC_DW_KB : LC_DW_OKB;                                \
        /* nb blocks of nearly equal size (25 taps: 9, 8, 8 rather than 12, 12, 1) */   \
        ptrdiff_t nb = (nk + most - 1) / most, k0 = 0;                                  \
        for (ptrdiff_t b = 0; b < nb; b++) {                                            \
            ptrdiff_t kb = nk / nb + (b < nk % nb);                                     \
            switch (ob * 16 + kb) {                                                     \
            LC_DW_DOTS_ROW_CASES(SUFFIX) LC_DW_DOTS_CASES(SUFFIX, 2)                    \
            LC_DW_DOTS_CASES(SUFFIX, 3) LC_DW_DOTS_CASES(SUFFIX, 4)                     \
            default: break;                                                             \
            }                                                                           \
            k0 += kb;                                                                   \
        }                                                                               \
        o0 += ob;                                                                       \
        dy += ob * ldy;                                                                 \
        accv += ob * lda;                                                               \
    }                                                                                   \
}                                                                                       \
LC_DWC_RUNS_PX(SUFFIX, T, 7, 1) LC_DWC_RUNS_PX(SUFFIX, T, 7, 2)                         \
LC_DWC_RUNS_PX(SUFFIX, T, 8, 1) LC_DWC_RUNS_PX(SUFFIX, T, 8, 2)                         \
static inline void lc_dwc_runs_##SUFFIX(ptrdiff_t nrun, const ptrdiff_t *LC_RESTRICT runs, \
        const T *LC_RESTRICT wv, const T *LC_RESTRICT src, ptrdiff_t ls,                \
        T *LC_RESTRICT dst, ptrdiff_t ld, ptrdiff_t cs, ptrdiff_t n, ptrdiff_t nrows,   \
        const T *LC_RESTRICT bias)                                                      \
{                                                                                       \
    lc_vec_##SUFFIX bv = bias ? *(const lc_uvec_##SUFFIX *)bias : (lc_vec_##SUFFIX){0}; \
    ptrdiff_t r = 0;                                                                    \
    if (lc_dwc_px(n) == 7) {                                                            \
        for (; r + 1 < nrows; r += 2)                                                   \
            lc_dwc_runs7x2_##SUFFIX(nrun, runs, wv, src, ls, dst, ld, cs, n, r, bv);    \
        if (r < nrows)                                                                  \
            lc_dwc_runs7x1_##SUFFIX(nrun, runs, wv, src, ls, dst, ld, cs, n, r, bv);    \
    } else {                                                                            \
        for (; r + 1 < nrows; r += 2)                                                   \
            lc_dwc_runs8x2_##SUFFIX(nrun, runs, wv, src, ls, dst, ld, cs, n, r, bv);    \
        if (r < nrows)                                                                  \
            lc_dwc_runs8x1_##SUFFIX(nrun, runs, wv, src, ls, dst, ld, cs, n, r, bv);    \
    }                                                                                   \
}                                                                                       \
LC_DWC_DOTRUNS_PX(SUFFIX, T, 7) LC_DWC_DOTRUNS_PX(SUFFIX, T, 8)                         \
static inline void lc_dwc_dotruns_##SUFFIX(ptrdiff_t nrun,                              \
        const ptrdiff_t *LC_RESTRICT runs, const T *LC_RESTRICT src, ptrdiff_t ls,      \
        const T *LC_RESTRICT dy, ptrdiff_t ld, ptrdiff_t n, ptrdiff_t nrows,            \
        T *LC_RESTRICT accv)                                                            \
{                                                                                       \
    if (lc_dwc_px(n) == 7)                                                              \
        lc_dwc_dotruns7_##SUFFIX(nrun, runs, src, ls, dy, ld, n, nrows, accv);          \
    else                                                                                \
        lc_dwc_dotruns8_##SUFFIX(nrun, runs, src, ls, dy, ld, n, nrows, accv);          \
}                                                                                       \
/* one row: vectors, the last overlapping; 16-byte vectors for rows shorter than one */ \
static inline void lc_dw_copy_row_##SUFFIX(T *LC_RESTRICT dst, const T *LC_RESTRICT src, \
                                           ptrdiff_t n)                                 \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T), H = 16 / sizeof(T) };                          \
    typedef T hvec __attribute__((vector_size(16), aligned(sizeof(T))));               \
    if (n >= W) {                                                                       \
        for (ptrdiff_t j = 0; j + W < n; j += W) {                                      \
            LC_DW_OPAQUE(j);                                                            \
            *(lc_uvec_##SUFFIX *)(dst + j) = *(const lc_uvec_##SUFFIX *)(src + j);      \
        }                                                                               \
        *(lc_uvec_##SUFFIX *)(dst + n - W) = *(const lc_uvec_##SUFFIX *)(src + n - W);  \
    } else if (n >= H) {                                                                \
        for (ptrdiff_t j = 0; j + H < n; j += H) {                                      \
            LC_DW_OPAQUE(j);                                                            \
            *(hvec *)(dst + j) = *(const hvec *)(src + j);                              \
        }                                                                               \
        *(hvec *)(dst + n - H) = *(const hvec *)(src + n - H);                          \
    } else {                                                                            \
        if (n > 0) dst[0] = src[0];                                                     \
        if (n > 1) dst[1] = src[1];                                                     \
        if (n > 2) dst[2] = src[2];                                                     \
    }                                                                                   \
}                                                                                       \
static inline void lc_dw_copy_##SUFFIX(T *LC_RESTRICT dst, ptrdiff_t ld,                \
        const T *LC_RESTRICT src, ptrdiff_t ls, ptrdiff_t n, ptrdiff_t nrows)           \
{                                                                                       \
    for (ptrdiff_t r = 0; r < nrows; r++, dst += ld, src += ls)                         \
        lc_dw_copy_row_##SUFFIX(dst, src, n);                                           \
}                                                                                       \
static inline void lc_dwc_copy_##SUFFIX(T *LC_RESTRICT dst, ptrdiff_t ld,               \
        const T *LC_RESTRICT src, ptrdiff_t ls, ptrdiff_t n, ptrdiff_t step,            \
        ptrdiff_t nrows)                                                                \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    for (ptrdiff_t r = 0; r < nrows; r++)                                               \
        for (ptrdiff_t e = 0; e < n; e++)                                               \
            *(lc_uvec_##SUFFIX *)(dst + (r * ld + e) * W)                               \
                = *(const lc_uvec_##SUFFIX *)(src + (r * ls + e * step) * W);           \
}
_Static_assert(LC_DW_NB == 8 && LC_DW_KB == 12, "a block for each size up to LC_DW_NB, LC_DW_KB");
_Static_assert(LC_DW_OB <= 4 && LC_DW_OKB == 6 && LC_DW_KB < 16,
               "a block for each row count up to LC_DW_OB and tap count up to LC_DW_OKB");

#else  /* other compilers: plain loops (correct, not fast) */
#  define LC_DEFINE_DEPTHWISE(SUFFIX, T)                                                 \
static void lc_dw_rows_##SUFFIX(ptrdiff_t nk, const T *w, const ptrdiff_t *off,         \
        const T *src, ptrdiff_t ls, T *dst, ptrdiff_t ld, ptrdiff_t n, ptrdiff_t nrows, \
        T bias)                                                                         \
{                                                                                       \
    for (ptrdiff_t r = 0; r < nrows; r++)                                               \
        for (ptrdiff_t j = 0; j < n; j++) {                                             \
            T sum = 0;                                                                  \
            for (ptrdiff_t k = 0; k < nk; k++) sum += w[k] * src[r * ls + off[k] + j];  \
            dst[r * ld + j] = sum + bias;                                               \
        }                                                                               \
}                                                                                       \
static void lc_dw_dots_##SUFFIX(ptrdiff_t no, ptrdiff_t nk, const ptrdiff_t *off,        \
        const T *src, ptrdiff_t ss, const T *dy, ptrdiff_t ldy, ptrdiff_t ds,           \
        ptrdiff_t nseg, ptrdiff_t n, T *accv)                                           \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    for (ptrdiff_t o = 0; o < no; o++)                                                  \
        for (ptrdiff_t k = 0; k < nk; k++)                                              \
            for (ptrdiff_t m = 0; m < nseg; m++)                                        \
                for (ptrdiff_t j = 0; j < n; j++)                                       \
                    accv[(o * nk + k) * W + j % W] += dy[o * ldy + m * ds + j]          \
                                                      * src[m * ss + off[k] + j];       \
}                                                                                       \
static void lc_dwc_runs_##SUFFIX(ptrdiff_t nrun, const ptrdiff_t *runs, const T *wv,    \
        const T *src, ptrdiff_t ls, T *dst, ptrdiff_t ld, ptrdiff_t cs, ptrdiff_t n,    \
        ptrdiff_t nrows, const T *bias)                                                 \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    for (ptrdiff_t r = 0; r < nrows; r++)                                               \
        for (ptrdiff_t e = 0; e < n; e++)                                               \
            for (int l = 0; l < W; l++) {                                               \
                T sum = 0;                                                              \
                for (ptrdiff_t g = 0; g < nrun; g++)                                    \
                    for (ptrdiff_t j = 0; j < runs[3 * g + 1]; j++)                     \
                        sum += wv[(runs[3 * g + 2] + j) * W + l]                        \
                               * src[(r * ls + runs[3 * g] + j + e) * W + l];           \
                dst[(r * ld + e * cs) * W + l] = sum + (bias ? bias[l] : 0);            \
            }                                                                           \
}                                                                                       \
static void lc_dwc_dotruns_##SUFFIX(ptrdiff_t nrun, const ptrdiff_t *runs, const T *src, \
        ptrdiff_t ls, const T *dy, ptrdiff_t ld, ptrdiff_t n, ptrdiff_t nrows, T *accv) \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    for (ptrdiff_t g = 0; g < nrun; g++)                                                \
        for (ptrdiff_t j = 0; j < runs[3 * g + 1]; j++)                                 \
            for (ptrdiff_t r = 0; r < nrows; r++)                                       \
                for (ptrdiff_t e = 0; e < n; e++)                                       \
                    for (int l = 0; l < W; l++)                                         \
                        accv[(runs[3 * g + 2] + j) * W + l] += dy[(r * ld + e) * W + l] \
                            * src[(r * ls + runs[3 * g] + j + e) * W + l];              \
}                                                                                       \
static void lc_dw_copy_##SUFFIX(T *dst, ptrdiff_t ld, const T *src, ptrdiff_t ls,       \
                                ptrdiff_t n, ptrdiff_t nrows)                           \
{                                                                                       \
    for (ptrdiff_t r = 0; r < nrows; r++)                                               \
        for (ptrdiff_t j = 0; j < n; j++) dst[r * ld + j] = src[r * ls + j];            \
}                                                                                       \
static void lc_dwc_copy_##SUFFIX(T *dst, ptrdiff_t ld, const T *src, ptrdiff_t ls,      \
                                 ptrdiff_t n, ptrdiff_t step, ptrdiff_t nrows)          \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    for (ptrdiff_t r = 0; r < nrows; r++)                                               \
        for (ptrdiff_t e = 0; e < n; e++)                                               \
            for (int l = 0; l < W; l++)                                                 \
                dst[(r * ld + e) * W + l] = src[(r * ls + e * step) * W + l];           \
}
#endif

#endif  /* LOOPCONV_DEPTHWISE_H */
