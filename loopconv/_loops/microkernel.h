/*
 * The register tile of loopconv's matrix-multiply loops.
 *
 *     C[0:MR, 0:NR]  (=, or +=)  sum over k < kc of  A[k, 0:MR]^T  B[k, 0:NR]
 *
 * NR = two SIMD vectors.  C is written row by row: row i starts at c + i * ldc and holds NR
 * contiguous values.
 *
 * Why this is C and not Cython: the tile only runs at the machine's peak when its MR x 2
 * accumulators stay in registers for the whole k loop.  With the accumulators as plain
 * arrays, GCC 12 keeps them in registers for some instruction sets and element types and
 * spills them to the stack for others (measured: 4 GFLOP/s instead of 110 for float32 with
 * AVX2).  GCC/Clang vector types make the register tile explicit and portable: the same
 * source gives SSE2, AVX2+FMA or AVX-512 code depending on the flags it is compiled with
 * (see setup.py), and the loops below are still ordinary loops.
 *
 * Everything around the tile -- packing, blocking, threads -- is in tiled.pxi and the files it
 * includes.  The tiles are macros of the element type T; elements.h instantiates them for each
 * type the loops compute in.
 */
#ifndef LOOPCONV_MICROKERNEL_H
#define LOOPCONV_MICROKERNEL_H

#include <stddef.h>
#include <string.h>

/* Tile shapes per instruction set: MR rows of accumulators by NV vectors.  lc_tile_b (forward
 * and input gradient: rows are output channels, vectors run along pixels), lc_tile_a (weight
 * gradient: rows are kernel taps, vectors run along output channels) and lc_tile_d (KR_D taps
 * by OR_D output channels, vectors along pixels) have their own.
 * AVX-512: 8 x 3 = 24 of 32 registers; AVX2: 4 x 3 = 12 of 16; 128-bit: 4 x 2.  MR = 8 and 4
 * divide the usual channel counts (8, 16, 32, 64, ...); MR = 12 left a third of a panel empty
 * for 8 channels and a ninth for 64. */
#if defined(__AVX512F__)
#  define LC_VEC_BYTES 64
#  define LC_MR_B 8
#  define LC_NV_B 3
#  define LC_MR_A 8
#  define LC_MR_A1 16
#  define LC_KR_D 3
#  define LC_OR_D 8
#  define LC_DOWN_V 4
#  define LC_ISA "avx512"
#  define LC_PREFETCH 1
#elif defined(__AVX2__)
#  define LC_VEC_BYTES 32
#  define LC_MR_B 4
#  define LC_NV_B 3
#  define LC_MR_A 6
#  define LC_MR_A1 12
#  define LC_KR_D 3
#  define LC_OR_D 4
#  define LC_DOWN_V 3
#  define LC_ISA "avx2"
#  define LC_PREFETCH 0
#else
#  define LC_VEC_BYTES 16
#  define LC_PREFETCH 0
#  define LC_MR_B 4
#  define LC_NV_B 2
#  define LC_MR_A 4
#  define LC_MR_A1 8
#  define LC_KR_D 2
#  define LC_OR_D 4
#  define LC_DOWN_V 3
#  if defined(__SSE2__) || defined(__ARM_NEON) || defined(__aarch64__)
#    define LC_ISA "128-bit"
#  else
#    define LC_ISA "scalar"
#  endif
#endif
/* the lanes of a vector of 4- and 8-byte elements (literal numbers: they are pasted into
 * names) */
#if LC_VEC_BYTES == 64
#  define LC_LANES_4 16
#  define LC_LANES_8 8
#elif LC_VEC_BYTES == 32
#  define LC_LANES_4 8
#  define LC_LANES_8 4
#else
#  define LC_LANES_4 4
#  define LC_LANES_8 2
#endif

/* lc_prefetch(p): ask for the cache line at p ahead of its use (nothing where the compiler has no
 * prefetch builtin). */
#if defined(__GNUC__) || defined(__clang__)
#  define lc_prefetch(p) __builtin_prefetch(p)
#else
#  define lc_prefetch(p) ((void)(p))
#endif

/* The flags of lc_tile_b's and lc_tile_v's last argument, pfa: ask for the packed A ahead
 * (LC_PF_A), and for B's rows nearer ahead (LC_PF_NEAR_B, rows that alias in the caches). */
#define LC_PF_A 1
#define LC_PF_NEAR_B 2

/* The tile in the forms the three passes need:
 *
 *   lc_tile_b_T:  C[i, j] (=, +=) sum_k a[mr * k + i] * b[boff[k] + j]        NR = nv vectors
 *                 A packed; row k of B read in place at b + boff[k] (forward, input gradient);
 *                 mr is 1, 2, 4 or MR_B rows (fewer rows for products with few: an input
 *                 gradient for one or three channels, a depthwise forward pass), nv is NV_B
 *                 vectors, or one or two for the last columns of a block
 *   lc_tile_v_T:  C[i, j] (=, +=) sum_k a[mr * k + i] * b[boff[k] + vo[j / P] + j % P]
 *                 with P = W / pieces: lc_tile_b with each vector of columns (pieces 1) or
 *                 each half of one (pieces 2) at its own offset: the valid columns of grids
 *                 whose rows are whole vectors or halves, junk columns between rows left out
 *                 (3x3x3 on 16^3: 1.125 grid columns a pixel; on 8^3 in float32 with
 *                 AVX-512, rows of half a vector, 1.25); the halves' tiles are lc_tile_h_*
 *   lc_tile_g_T:  C[i, j] (=, +=) sum_k a[aoff[k] + i * rs] * b[boff[k] + j]
 *                 lc_tile_b with A read in place, row i at a stride rs and column k at the
 *                 offset aoff[k]: the weight itself, unpacked (batch-1 and other problems with
 *                 few pixels per weight, where packing A would cost as much as the product);
 *                 not inlined, so that GCC still inlines lc_tile_b into its caller (inlining
 *                 both, it stopped: the forward pass of largek 5 % slower)
 *   lc_tile_r_T:  lc_tile_v for a compact phase's pieces 3 (ROW_PIECES): each vector from the
 *                 two grid rows it spans, lane j at b + boff[k] + vo[3v] + j where bit j of
 *                 the mask vo[3v + 2] is set, else at vo[3v + 1] + j where bit W + j is,
 *                 else 0 (lc_rows): the valid columns of rows that are neither whole vectors
 *                 nor halves (3x3 on 28x28: 784 columns a channel, 811 on its grid); not
 *                 inlined, as lc_tile_g (inlined in lc_tile_v, it made GCC stop inlining
 *                 lc_tile_b into its caller)
 *   lc_tile_gc_T: lc_tile_g with B's vectors (pieces 1) or halves (pieces 2) at their own
 *                 offsets, as lc_tile_v: a compact phase with A read in place (a GAN's 4x4
 *                 stride-2 transposed layer from 8x8 at batch 1: phases of 8x8 pixels, rows
 *                 of half a vector, whose grid tiles computed 80 columns for 64); not rows by
 *                 masks, which cost more there than the junk they save (tiled.pxi, ROWS_WASTE)
 *   lc_tile_p_T:  C[i, j] (=, +=) sum_k ar[i][aoff[k]] * b[ldb * k + j]        MR_B rows
 *                 pixel tiles: row i of A is a pixel of the staged source at its own place
 *                 ar[i] (a tile's pixels may lie in several rows and images), B the weight
 *                 packed in panels (nv vectors of channels, rows ldb apart: NR, also for a
 *                 last panel of one or two vectors); not inlined, as lc_tile_g
 *   lc_tile_a_T:  C[i, j] (=, +=) sum_k a[aoff[i] + k] * b[NR * k + j]         NR = nv vectors
 *                 row i of A read in place at a + aoff[i]; B packed (weight gradient); nv = 2
 *                 with MR_A rows, or 1 with MR_A1 rows (gradients with one vector of output
 *                 channels or fewer per group: ResNeXt's groups of 16, where two vectors would
 *                 compute half zeros)
 *   lc_tile_m_T:  lc_tile_a with A's columns through a map, a[aoff[i] + cmap[k]]: the
 *                 columns of a grid that are not junk (weight gradients on small 3-D grids)
 *   lc_tile_d_T:  C[i, j] (=, +=) sum_k a[aoff[i] + k] * b[j * ldb + k]       kr x OR_D
 *                 rows of A and B read in place, the vectors run along k and are summed at
 *                 the end, lanes in a fixed order (weight gradient with few output channels,
 *                 where transposing dy for lc_tile_a costs as much as the arithmetic; dense
 *                 products); kr is 1 or KR_D rows (one: a dense product of one image);
 *                 kc must be a multiple of the vector width
 *   lc_tile_e_T:  C[i, j] (=, +=) sum_k a[i * lda + k] * b[boff[j] + k]      kr x OR_D
 *                 lc_tile_d the other way round, C stored at c[i * ldi + j * ldj]: the
 *                 weight gradient for one to four output channels (kr of them, 1, 2 or KR_D,
 *                 the rows) by OR_D rows k of x (at boff), where lc_tile_d's OR_D output
 *                 channels would be half or more zeros (a segmentation net's last 1x1 to 3
 *                 classes, ResNeXt's groups of 4)
 */
#if defined(__GNUC__) || defined(__clang__)
#  define LC_RESTRICT __restrict__

/* Tiles with few accumulators (MR * NV < 8) would wait on the latency of each FMA (four cycles,
 * two FMAs per cycle: eight chains keep the unit busy).  They keep LC_SPLIT(MR * NV) sets of
 * accumulators, for k = 0, 1, ... modulo the set count, added together at the end: a fixed
 * order, whatever the threads. */
#  define LC_SPLIT(N) ((N) >= 8 ? 1 : (N) >= 4 ? 2 : (N) >= 2 ? 4 : 8)

/* The loops over a tile's rows, vectors and accumulator sets are unrolled by request: GCC
 * otherwise kept the accumulators of a tile that is not inlined in memory around its loop over
 * k (zeroed, loaded, stored and reloaded on the stack each call: the tiles of a 7x7 layer's
 * weight gradient, 49 steps, 10 % slower than the same tile inlined). */
#  define LC_UNROLL _Pragma("GCC unroll 64")

/* acc[SET] += row k of A (MR values) times row k of B (NV vectors, vector v read by LOAD, an
 * expression in bk = B_ROW and v) */
#  define LC_TILE_STEP(T, VEC, UVEC, MR, NV, A_AT, B_ROW, LOAD, SET)                    \
    {                                                                                   \
        const T *bk = B_ROW;                                                            \
        VEC bv[NV];                                                                     \
        LC_UNROLL for (int v = 0; v < NV; v++) bv[v] = LOAD;                            \
        LC_UNROLL for (int i = 0; i < MR; i++) {                                        \
            T ai = A_AT;                                                                \
            LC_UNROLL for (int v = 0; v < NV; v++) acc[SET][i][v] += ai * bv[v];        \
        }                                                                               \
    }

/* the whole tile: C = (beta ? C : 0) + A^T B over kc rows; PF is a statement run before each
 * row k but the last LC_PF_ROWS (a prefetch of row k + LC_PF_ROWS, or nothing).  That loop is
 * unrolled twice and the last rows have their own: with the bound checked in each step, the
 * 8-row tiles' loop ran out of registers (the offsets of lc_tile_v's vectors went to the
 * stack); 3x3x3 layers on 16^3 and 32^3 1.04-1.12x faster (forward and input gradient, float32
 * one thread; unrolled twice 3.5 % of that), 2-D layers within 3 %. */
#  define LC_TILE_BODY(T, VEC, UVEC, MR, NV, A_AT, B_ROW, LOAD, PF)                     \
    enum { W = LC_VEC_BYTES / sizeof(T), S = LC_SPLIT(MR * NV) };                       \
    VEC acc[S][MR][NV];                                                                 \
    LC_UNROLL for (int s = 0; s < S; s++)                                               \
        LC_UNROLL for (int i = 0; i < MR; i++)                                          \
            LC_UNROLL for (int v = 0; v < NV; v++) acc[s][i][v] = (VEC){0};             \
    ptrdiff_t kfull = kc - kc % S;                                                      \
    ptrdiff_t kpf = kc - LC_PF_ROWS;                                                    \
    kpf = kpf > 0 ? kpf - kpf % S : 0;                                                  \
    ptrdiff_t k0 = 0;                                                                   \
    _Pragma("GCC unroll 2")                                                             \
    for (; k0 < kpf; k0 += S)                                                           \
        LC_UNROLL for (int s = 0; s < S; s++) {                                         \
            ptrdiff_t k = k0 + s;                                                       \
            PF                                                                          \
            LC_TILE_STEP(T, VEC, UVEC, MR, NV, A_AT, B_ROW, LOAD, s)                    \
        }                                                                               \
    for (; k0 < kfull; k0 += S)                                                         \
        LC_UNROLL for (int s = 0; s < S; s++) {                                         \
            ptrdiff_t k = k0 + s;                                                       \
            LC_TILE_STEP(T, VEC, UVEC, MR, NV, A_AT, B_ROW, LOAD, s)                    \
        }                                                                               \
    for (ptrdiff_t k = kfull; k < kc; k++) {                                            \
        LC_TILE_STEP(T, VEC, UVEC, MR, NV, A_AT, B_ROW, LOAD, 0)                        \
    }                                                                                   \
    LC_UNROLL for (int s = 1; s < S; s++)                                               \
        LC_UNROLL for (int i = 0; i < MR; i++)                                          \
            LC_UNROLL for (int v = 0; v < NV; v++) acc[0][i][v] += acc[s][i][v];        \
    LC_UNROLL for (int i = 0; i < MR; i++) {                                            \
        UVEC *ci = (UVEC *)(c + i * ldc);                                               \
        LC_UNROLL for (int v = 0; v < NV; v++)                                          \
            ci[v] = beta ? ci[v] + acc[0][i][v] : acc[0][i][v];                         \
    }

/* lc_tile_b reads row k of B in place, at a stride that the hardware prefetchers do not follow
 * (the rows of one tile lie a plane of the image apart), so with AVX-512 it asks for row
 * k + LC_PF_ROWS while it computes row k.  Measured on tiles of 4 or more rows in float64 and
 * of 4 rows in float32 (an input gradient for three channels): 5-10 % faster (1x1, resnet,
 * largek); the 8-row float32 tile: 3x3x3 layers on 16^3 and 32^3 2-15 % faster (forward and
 * input gradient, one and two threads), 2-D layers (7x7 to 56x56) within 3 %; tiles of 1 or
 * 2 rows and AVX2 were no faster or slower. */
#  define LC_PF_ROWS 8
/* Where the caller says that B's rows alias in the caches (pfa & LC_PF_NEAR_B: a source read
 * in place whose channels are a multiple of 2 KiB apart, which a product of few rows does not
 * copy to spread them), lc_tile_b and lc_tile_v ask for row k + LC_PF_NEAR instead: all the
 * rows ahead of a tile then fall into the same few sets of L1, and eight of them with the row
 * in use and A's lines took most of its ways.  A GAN's 512 -> 256 4x4 stride-2 transposed
 * layer from 4x4 at batch 1 as columns (16 pixel rows by the 4096 columns of the weight, rows
 * 16 KiB apart): its product 1.21x faster (float32, one thread).  Tiles of fewer than four
 * rows, which otherwise ask for nothing, ask then too: a GAN's first layer (100 -> 512, 1x1
 * to 4x4) at batch 1 and 2 1.10-1.14x in float32, 0.98-1.16x in float64; 1x1 layers to one or
 * two channels on 32x32 to 128x128 1.00-1.13x. */
#  define LC_PF_NEAR 4
#  define LC_PREFETCH_B(T, MR, NV)                                                      \
    if (LC_PREFETCH && ((MR) >= 4 || (pfa & LC_PF_NEAR_B))) {                           \
        const char *pf = (const char *)(b + boff[k + ((pfa & LC_PF_NEAR_B) ? LC_PF_NEAR  \
                                                                        : LC_PF_ROWS)]); \
        for (int l = 0; l < (NV) * LC_VEC_BYTES / 64; l++) __builtin_prefetch(pf + 64 * l); \
        __builtin_prefetch(pf + (NV) * LC_VEC_BYTES - 1);                               \
    }

/* lc_tile_b's and lc_tile_v's packed A where asked (LC_PF_A): row k + LC_PF_A_ROWS of the
 * panel, within its kc rows.  A weight several times an L2 (STREAM_A_BYTES in tiled.pxi) comes
 * from L3 to each work item, a panel at a time, each panel's rows a whole panel further on than
 * the last's, which the prefetchers do not follow: the tiles waited at their broadcasts of A.
 * Asked for always, tiles whose A stays in L2 (128 channels on 56x56) ran 1-3 % slower: one
 * more load a row, where A's broadcasts and B's loads and prefetches take most of the load
 * ports.  16 rows ahead gave half the gain, 48 as much as 96. */
#  define LC_PF_A_ROWS 96
#  define LC_PREFETCH_A(T, MR)                                                          \
    if (LC_PREFETCH && (MR) >= 4 && (pfa & LC_PF_A) && k + LC_PF_A_ROWS < kc)           \
        __builtin_prefetch(a + (MR) * (k + LC_PF_A_ROWS));

/* lc_tile_g's A, read in place: the first and last element of its column k + LC_PF_ROWS, where
 * its MR values (a row of rs apart) span a few lines at most: the input gradient's weight of a
 * 1x1 layer (rs 1), one or two lines of a row of w, each column a row of w away from the last,
 * which the hardware prefetchers do not follow.  Batch 1, one thread, float32: 1024 -> 2048 on
 * 7x7 and 1024 -> 1024 on 14x14 1.24-1.26x, 2048 -> 512 on 7x7 1.22x; the forward pass (rs the
 * rows of w, which the prefetchers follow), asked the same way, 0.94-0.98x. */
#  define LC_PREFETCH_G(T, MR)                                                          \
    if (LC_PREFETCH && (MR) * rs <= 32) {                                               \
        const T *pa = a + aoff[k + LC_PF_ROWS];                                         \
        __builtin_prefetch(pa);                                                         \
        __builtin_prefetch(pa + ((MR) - 1) * rs);                                       \
    }

/* lc_tile_v's: the lines of the first and last element of each vector of row k + LC_PF_ROWS
 * (the vectors start anywhere in a line: with the first lines alone, 3x3x3 on 32^3 ran
 * 0.87-0.99 times as fast as on the grid's columns, with both 1.10; the lines of the vectors'
 * whole span instead, where that is short, 0.965) */
#  define LC_PREFETCH_V(T, MR, NV)                                                      \
    if (LC_PREFETCH && (MR) >= 4) {                                                     \
        const T *pf = b + boff[k + ((pfa & LC_PF_NEAR_B) ? LC_PF_NEAR : LC_PF_ROWS)];   \
        for (int v = 0; v < (NV); v++) {                                                \
            const char *pv = (const char *)(pf + vo[v]);                                \
            __builtin_prefetch(pv);                                                     \
            __builtin_prefetch(pv + LC_VEC_BYTES - sizeof(T));                          \
        }                                                                               \
    }

/* lc_tile_r's: the lines of the grid columns row k + LC_PF_ROWS spans from its
 * first vector's first piece, NV vectors and one line more (the junk of the rows between) */
#  define LC_PREFETCH_R(T, MR, NV)                                                      \
    if (LC_PREFETCH && (MR) >= 4) {                                                     \
        const char *pf = (const char *)(b + boff[k + LC_PF_ROWS] + vo[0]);              \
        for (int l = 0; l <= (NV) * LC_VEC_BYTES / 64; l++) __builtin_prefetch(pf + 64 * l); \
    }

/* lc_tile_p's A, where asked (pf): the lines of its first and last pixel in column
 * k + LC_PF_ROWS, each column a channel plane away from the last, which the prefetchers do not
 * follow (pixel_tiles asks where the staged source outgrows L2: PIX_PREFETCH_BYTES) */
#  define LC_PREFETCH_P(T, MR)                                                          \
    if (LC_PREFETCH && (MR) >= 4 && pf) {                                               \
        ptrdiff_t o = aoff[k + LC_PF_ROWS];                                             \
        __builtin_prefetch(rows[0] + o);                                                \
        __builtin_prefetch(rows[(MR) - 1] + o);                                         \
    }

/* lc_tile_gc's tiles (NAME lc_tile_gv or lc_tile_gh): lc_tile_g's A read in place, B's
 * vectors of columns each from P pieces at their own offsets, LOAD the vector v of row bk. */
#  define LC_TILE_GC(SUFFIX, T, TAG, MR, V, NV, NAME, P, LOAD)                          \
static inline void NAME##_##TAG##V##_##SUFFIX(ptrdiff_t kc, const T *LC_RESTRICT a,     \
        const ptrdiff_t *LC_RESTRICT aoff, ptrdiff_t rs, const T *LC_RESTRICT b,        \
        const ptrdiff_t *LC_RESTRICT boff, const ptrdiff_t *LC_RESTRICT vofs,           \
        T *LC_RESTRICT c, ptrdiff_t ldc, int beta)                                      \
{                                                                                       \
    ptrdiff_t vo[(P) * NV];                                                             \
    for (int v = 0; v < (P) * NV; v++) vo[v] = vofs[v];                                 \
    LC_TILE_BODY(T, lc_vec_##SUFFIX, lc_uvec_##SUFFIX, MR, NV, a[aoff[k] + i * rs],     \
                 b + boff[k], LOAD, LC_PREFETCH_G(T, MR))                               \
}

/* lc_tile_b, lc_tile_g, lc_tile_v and lc_tile_h with MR rows and NV vectors, named by V: NV_B
 * (w), one (n), two (d). */
#  define LC_TILE_BG(SUFFIX, T, TAG, MR, V, NV, PF, PFA, PFV, PFR)                      \
static inline void lc_tile_b_##TAG##V##_##SUFFIX(ptrdiff_t kc, const T *LC_RESTRICT a,  \
        const T *LC_RESTRICT b, const ptrdiff_t *LC_RESTRICT boff,                      \
        T *LC_RESTRICT c, ptrdiff_t ldc, int beta, int pfa)                             \
{                                                                                       \
    LC_TILE_BODY(T, lc_vec_##SUFFIX, lc_uvec_##SUFFIX, MR, NV, a[MR * k + i],           \
                 b + boff[k], *(const lc_uvec_##SUFFIX *)(bk + v * W), PF PFA)          \
}                                                                                       \
static inline void lc_tile_g_##TAG##V##_##SUFFIX(ptrdiff_t kc, const T *LC_RESTRICT a,  \
        const ptrdiff_t *LC_RESTRICT aoff, ptrdiff_t rs, const T *LC_RESTRICT b,        \
        const ptrdiff_t *LC_RESTRICT boff, T *LC_RESTRICT c, ptrdiff_t ldc, int beta)   \
{                                                                                       \
    const int pfa = 0;          /* B's rows at LC_PF_ROWS (LC_PREFETCH_B) */            \
    (void)pfa;                                                                          \
    LC_TILE_BODY(T, lc_vec_##SUFFIX, lc_uvec_##SUFFIX, MR, NV, a[aoff[k] + i * rs],     \
                 b + boff[k], *(const lc_uvec_##SUFFIX *)(bk + v * W),                  \
                 PF LC_PREFETCH_G(T, MR))                                               \
}                                                                                       \
static inline void lc_tile_p_##TAG##V##_##SUFFIX(ptrdiff_t kc,                        \
        const T *const *LC_RESTRICT ar, const ptrdiff_t *LC_RESTRICT aoff,              \
        const T *LC_RESTRICT b, ptrdiff_t ldb, T *LC_RESTRICT c, ptrdiff_t ldc,         \
        int beta, int pf)                                                               \
{                                                                                       \
    const T *rows[MR];                                                                  \
    for (int i = 0; i < MR; i++) rows[i] = ar[i];                                       \
    LC_TILE_BODY(T, lc_vec_##SUFFIX, lc_uvec_##SUFFIX, MR, NV, rows[i][aoff[k]],        \
                 b + ldb * k, *(const lc_uvec_##SUFFIX *)(bk + v * W),                  \
                 LC_PREFETCH_P(T, MR))                                                  \
}                                                                                       \
static inline void lc_tile_v_##TAG##V##_##SUFFIX(ptrdiff_t kc, const T *LC_RESTRICT a,  \
        const T *LC_RESTRICT b, const ptrdiff_t *LC_RESTRICT boff,                      \
        const ptrdiff_t *LC_RESTRICT vofs, T *LC_RESTRICT c, ptrdiff_t ldc, int beta,   \
        int pfa)                                                                        \
{                                                                                       \
    ptrdiff_t vo[NV];                                                                   \
    for (int v = 0; v < NV; v++) vo[v] = vofs[v];                                       \
    LC_TILE_BODY(T, lc_vec_##SUFFIX, lc_uvec_##SUFFIX, MR, NV, a[MR * k + i],           \
                 b + boff[k], *(const lc_uvec_##SUFFIX *)(bk + vo[v]), PFV PFA)         \
}                                                                                       \
static inline void lc_tile_h_##TAG##V##_##SUFFIX(ptrdiff_t kc, const T *LC_RESTRICT a,  \
        const T *LC_RESTRICT b, const ptrdiff_t *LC_RESTRICT boff,                      \
        const ptrdiff_t *LC_RESTRICT vofs, T *LC_RESTRICT c, ptrdiff_t ldc, int beta,   \
        int pfa)                                                                        \
{                                                                                       \
    (void)pfa;                  /* halves ask for nothing ahead (LC_TILE_B_ROWS) */     \
    ptrdiff_t vo[2 * NV];                                                               \
    for (int v = 0; v < 2 * NV; v++) vo[v] = vofs[v];                                   \
    LC_TILE_BODY(T, lc_vec_##SUFFIX, lc_uvec_##SUFFIX, MR, NV, a[MR * k + i],           \
                 b + boff[k], lc_halves_##SUFFIX(bk + vo[2 * v], bk + vo[2 * v + 1]), ) \
}                                                                                       \
static inline void lc_tile_r_##TAG##V##_##SUFFIX(ptrdiff_t kc, const T *LC_RESTRICT a,  \
        const T *LC_RESTRICT b, const ptrdiff_t *LC_RESTRICT boff,                      \
        const ptrdiff_t *LC_RESTRICT vofs, T *LC_RESTRICT c, ptrdiff_t ldc, int beta,   \
        int pfa)                                                                        \
{                                                                                       \
    (void)pfa;                                                                          \
    ptrdiff_t vo[3 * NV];                                                               \
    for (int v = 0; v < 3 * NV; v++) vo[v] = vofs[v];                                   \
    LC_TILE_BODY(T, lc_vec_##SUFFIX, lc_uvec_##SUFFIX, MR, NV, a[MR * k + i],           \
                 b + boff[k], LC_ROWS_AT(SUFFIX, bk, vo, v), PFR PFA)                   \
}                                                                                       \
LC_TILE_GC(SUFFIX, T, TAG, MR, V, NV, lc_tile_gv, 1,                                   \
           *(const lc_uvec_##SUFFIX *)(bk + vo[v]))                                     \
LC_TILE_GC(SUFFIX, T, TAG, MR, V, NV, lc_tile_gh, 2,                                   \
           lc_halves_##SUFFIX(bk + vo[2 * v], bk + vo[2 * v + 1]))

/* The tiles of MR rows in every width; only the full width prefetches, and lc_tile_h not (its
 * halves' lines asked for the same way made 3x3x3 on 8^3 0.8-0.95 times as fast). */
#  define LC_TILE_B_ROWS(SUFFIX, T, TAG, MR)                                            \
LC_TILE_BG(SUFFIX, T, TAG, MR, w, LC_NV_B, LC_PREFETCH_B(T, MR, LC_NV_B),               \
           LC_PREFETCH_A(T, MR), LC_PREFETCH_V(T, MR, LC_NV_B),                         \
           LC_PREFETCH_R(T, MR, LC_NV_B))                                               \
LC_TILE_BG(SUFFIX, T, TAG, MR, n, 1, , , , )                                            \
LC_TILE_BG(SUFFIX, T, TAG, MR, d, 2, , , , )

/* lc_tile_a and lc_tile_m of MR rows and NV vectors (lc_tile_a2/m2: two, MR_A rows; a1/m1: one,
 * MR_A1 rows). */
#  define LC_TILE_AM(SUFFIX, T, NV, MR)                                                 \
static inline void lc_tile_a##NV##_##SUFFIX(ptrdiff_t kc, const T *LC_RESTRICT a,       \
        const ptrdiff_t *LC_RESTRICT aoff, const T *LC_RESTRICT b,                      \
        T *LC_RESTRICT c, ptrdiff_t ldc, int beta)                                      \
{                                                                                       \
    const T *rows[MR];                                                                  \
    for (int i = 0; i < MR; i++) rows[i] = a + aoff[i];                                 \
    LC_TILE_BODY(T, lc_vec_##SUFFIX, lc_uvec_##SUFFIX, MR, NV, rows[i][k],              \
                 b + NV * W * k, *(const lc_uvec_##SUFFIX *)(bk + v * W), )             \
}                                                                                       \
static inline void lc_tile_m##NV##_##SUFFIX(ptrdiff_t kc, const T *LC_RESTRICT a,       \
        const ptrdiff_t *LC_RESTRICT aoff, const ptrdiff_t *LC_RESTRICT cmap,           \
        const T *LC_RESTRICT b, T *LC_RESTRICT c, ptrdiff_t ldc, int beta)              \
{                                                                                       \
    const T *rows[MR];                                                                  \
    for (int i = 0; i < MR; i++) rows[i] = a + aoff[i];                                 \
    LC_TILE_BODY(T, lc_vec_##SUFFIX, lc_uvec_##SUFFIX, MR, NV, rows[i][cmap[k]],        \
                 b + NV * W * k, *(const lc_uvec_##SUFFIX *)(bk + v * W), )             \
}

/* The tile of one vector (n), two (d) or NV_B (w) for nv; two only where NV_B is more. */
#  define LC_BY_NV(NV, NAME, SUFFIX, ARGS)                                              \
    {                                                                                   \
        if ((NV) == 1) NAME##n_##SUFFIX ARGS;                                           \
        else if ((NV) == 2 && LC_NV_B > 2) NAME##d_##SUFFIX ARGS;                       \
        else NAME##w_##SUFFIX ARGS;                                                     \
    }
/* The tile of mr rows (1, 2, 4 or MR_B) and nv vectors of the family NAME (lc_tile_b, ...). */
#  define LC_BY_MR(MR, NV, NAME, SUFFIX, ARGS)                                          \
    {                                                                                   \
        if ((MR) == 1) LC_BY_NV(NV, NAME##_r1, SUFFIX, ARGS)                            \
        else if ((MR) == 2) LC_BY_NV(NV, NAME##_r2, SUFFIX, ARGS)                       \
        else if ((MR) == 4 && LC_MR_B != 4) LC_BY_NV(NV, NAME##_r4, SUFFIX, ARGS)       \
        else LC_BY_NV(NV, NAME##_full, SUFFIX, ARGS)                                    \
    }

/* lc_halves_T: the vector whose first half is read at p0 and second at p1 (lc_tile_h) */
#  define LC_IOTA_2 0, 1
#  define LC_IOTA_4 LC_IOTA_2, 2, 3
#  define LC_IOTA_8 LC_IOTA_4, 4, 5, 6, 7
#  define LC_IOTA_16 LC_IOTA_8, 8, 9, 10, 11, 12, 13, 14, 15
#  if defined(__clang__) || __GNUC__ >= 12
#    define LC_HALVES(SUFFIX, T, W)                                                      \
static inline lc_vec_##SUFFIX lc_halves_##SUFFIX(const T *p0, const T *p1)              \
{                                                                                       \
    typedef T half __attribute__((vector_size(LC_VEC_BYTES / 2), aligned(sizeof(T))));  \
    return __builtin_shufflevector(*(const half *)p0, *(const half *)p1, LC_IOTA_##W);  \
}
#  else     /* GCC before 12: no __builtin_shufflevector */
#    define LC_HALVES(SUFFIX, T, W)                                                      \
static inline lc_vec_##SUFFIX lc_halves_##SUFFIX(const T *p0, const T *p1)              \
{                                                                                       \
    lc_vec_##SUFFIX r;                                                                  \
    memcpy(&r, p0, LC_VEC_BYTES / 2);                                                   \
    memcpy((char *)&r + LC_VEC_BYTES / 2, p1, LC_VEC_BYTES / 2);                        \
    return r;                                                                           \
}
#  endif
/* (one more level, so that the lane count is expanded before it is pasted) */
#  define LC_HALVES_OF(SUFFIX, T, W) LC_HALVES(SUFFIX, T, W)
#  define LC_DEFINE_HALVES(SUFFIX, T, BYTES) LC_HALVES_OF(SUFFIX, T, LC_LANES_##BYTES)

/* lc_rows_T: the vector of lc_tile_r, lanes from p0 where bit j of m is set, else from p1
 * where bit W + j is, else 0 (lanes past a phase's last column).  With AVX-512 two masked
 * loads, which read nothing where their mask is clear (a row's lanes may start before the
 * staged array or end past it); elsewhere lane by lane, correct but slow, and never chosen
 * (phase_pieces takes rows by masks where LC_ROW_MASKS alone). */
#  if defined(__AVX512F__)
#    include <immintrin.h>
#    define LC_ROW_MASKS 1
#    define LC_ROWS_4(SUFFIX, T)                                                         \
static inline lc_vec_##SUFFIX lc_rows_##SUFFIX(const T *p0, const T *p1, ptrdiff_t m)   \
{                                                                                       \
    return (lc_vec_##SUFFIX)_mm512_mask_loadu_ps(_mm512_maskz_loadu_ps((__mmask16)m, p0), \
                                                 (__mmask16)(m >> 16), p1);             \
}
#    define LC_ROWS_8(SUFFIX, T)                                                         \
static inline lc_vec_##SUFFIX lc_rows_##SUFFIX(const T *p0, const T *p1, ptrdiff_t m)   \
{                                                                                       \
    return (lc_vec_##SUFFIX)_mm512_mask_loadu_pd(_mm512_maskz_loadu_pd((__mmask8)m, p0), \
                                                 (__mmask8)(m >> 8), p1);               \
}
#  else
#    define LC_ROW_MASKS 0
#    define LC_ROWS_ANY(SUFFIX, T)                                                       \
static inline lc_vec_##SUFFIX lc_rows_##SUFFIX(const T *p0, const T *p1, ptrdiff_t m)   \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    lc_vec_##SUFFIX r = (lc_vec_##SUFFIX){0};                                           \
    for (int j = 0; j < W; j++)                                                         \
        r[j] = (m >> j) & 1 ? p0[j] : (m >> (W + j)) & 1 ? p1[j] : 0;                   \
    return r;                                                                           \
}
#    define LC_ROWS_4(SUFFIX, T) LC_ROWS_ANY(SUFFIX, T)
#    define LC_ROWS_8(SUFFIX, T) LC_ROWS_ANY(SUFFIX, T)
#  endif
#  define LC_DEFINE_ROWS(SUFFIX, T, BYTES) LC_ROWS_##BYTES(SUFFIX, T)
/* vector v of row bk of lc_tile_r (vo: offset, offset, masks per vector) */
#  define LC_ROWS_AT(SUFFIX, BK, VO, V)                                                  \
    lc_rows_##SUFFIX(BK + VO[3 * (V)], BK + VO[3 * (V) + 1], VO[3 * (V) + 2])

/* The aligned(sizeof(T)) twin of each vector type is for unaligned loads and stores. */
#  define LC_DEFINE_TILES(SUFFIX, T, BYTES)                                              \
typedef T lc_vec_##SUFFIX __attribute__((vector_size(LC_VEC_BYTES)));                   \
typedef T lc_uvec_##SUFFIX __attribute__((vector_size(LC_VEC_BYTES), aligned(sizeof(T)))); \
LC_DEFINE_HALVES(SUFFIX, T, BYTES)                                                      \
LC_DEFINE_ROWS(SUFFIX, T, BYTES)                                                        \
LC_DEFINE_LANE_SUMS(SUFFIX, T, BYTES)                                                   \
LC_TILE_B_ROWS(SUFFIX, T, r1, 1)                                                        \
LC_TILE_B_ROWS(SUFFIX, T, r2, 2)                                                        \
LC_TILE_B_ROWS(SUFFIX, T, r4, 4)                                                        \
LC_TILE_B_ROWS(SUFFIX, T, full, LC_MR_B)                                                \
static inline void lc_tile_b_##SUFFIX(int mr, int nv, ptrdiff_t kc, const T *a,         \
        const T *b, const ptrdiff_t *boff, T *c, ptrdiff_t ldc, int beta, int pfa)      \
    LC_BY_MR(mr, nv, lc_tile_b, SUFFIX, (kc, a, b, boff, c, ldc, beta, pfa))            \
static inline void lc_tile_v_##SUFFIX(int pieces, int mr, int nv, ptrdiff_t kc,         \
        const T *a, const T *b, const ptrdiff_t *boff, const ptrdiff_t *vo, T *c,       \
        ptrdiff_t ldc, int beta, int pfa)                                               \
{                                                                                       \
    if (pieces == 2)                                                                    \
        LC_BY_MR(mr, nv, lc_tile_h, SUFFIX, (kc, a, b, boff, vo, c, ldc, beta, pfa))    \
    else                                                                                \
        LC_BY_MR(mr, nv, lc_tile_v, SUFFIX, (kc, a, b, boff, vo, c, ldc, beta, pfa))    \
}                                                                                       \
__attribute__((noinline))                                                               \
static void lc_tile_r_##SUFFIX(int mr, int nv, ptrdiff_t kc, const T *a, const T *b,    \
        const ptrdiff_t *boff, const ptrdiff_t *vo, T *c, ptrdiff_t ldc, int beta,      \
        int pfa)                                                                        \
    LC_BY_MR(mr, nv, lc_tile_r, SUFFIX, (kc, a, b, boff, vo, c, ldc, beta, pfa))        \
__attribute__((noinline))                                                               \
static void lc_tile_g_##SUFFIX(int mr, int nv, ptrdiff_t kc, const T *a,                \
        const ptrdiff_t *aoff, ptrdiff_t rs, const T *b, const ptrdiff_t *boff, T *c,   \
        ptrdiff_t ldc, int beta)                                                        \
    LC_BY_MR(mr, nv, lc_tile_g, SUFFIX, (kc, a, aoff, rs, b, boff, c, ldc, beta))       \
__attribute__((noinline))                                                               \
static void lc_tile_gc_##SUFFIX(int pieces, int mr, int nv, ptrdiff_t kc, const T *a,   \
        const ptrdiff_t *aoff, ptrdiff_t rs, const T *b, const ptrdiff_t *boff,         \
        const ptrdiff_t *vo, T *c, ptrdiff_t ldc, int beta)                             \
{                                                                                       \
    if (pieces == 2)                                                                    \
        LC_BY_MR(mr, nv, lc_tile_gh, SUFFIX, (kc, a, aoff, rs, b, boff, vo, c, ldc, beta)) \
    else                                                                                \
        LC_BY_MR(mr, nv, lc_tile_gv, SUFFIX, (kc, a, aoff, rs, b, boff, vo, c, ldc, beta)) \
}                                                                                       \
__attribute__((noinline))                                                               \
static void lc_tile_p_##SUFFIX(int nv, ptrdiff_t kc, const T *const *ar,                \
        const ptrdiff_t *aoff, const T *b, ptrdiff_t ldb, T *c, ptrdiff_t ldc, int beta, \
        int pf)                                                                         \
    LC_BY_NV(nv, lc_tile_p_full, SUFFIX, (kc, ar, aoff, b, ldb, c, ldc, beta, pf))      \
LC_TILE_AM(SUFFIX, T, 2, LC_MR_A)                                                       \
LC_TILE_AM(SUFFIX, T, 1, LC_MR_A1)                                                      \
LC_TILE_D_ROWS(SUFFIX, T, 1, 1)                                                         \
LC_TILE_D_ROWS(SUFFIX, T, full, LC_KR_D)                                                \
static inline void lc_tile_d_##SUFFIX(int kr, ptrdiff_t kc, const T *a,                 \
        const ptrdiff_t *aoff, const T *b, ptrdiff_t ldb, T *c, ptrdiff_t ldc, int beta) \
{                                                                                       \
    if (kr == 1) lc_tile_d1_##SUFFIX(kc, a, aoff, b, ldb, c, ldc, beta);                \
    else lc_tile_dfull_##SUFFIX(kc, a, aoff, b, ldb, c, ldc, beta);                     \
}                                                                                       \
LC_TILE_E_ROWS(SUFFIX, T, 1, 1)                                                         \
LC_TILE_E_ROWS(SUFFIX, T, 2, 2)                                                         \
LC_TILE_E_ROWS(SUFFIX, T, full, LC_KR_D)                                                \
static inline void lc_tile_e_##SUFFIX(int kr, ptrdiff_t kc, const T *a, ptrdiff_t lda,  \
        const T *b, const ptrdiff_t *boff, T *c, ptrdiff_t ldi, ptrdiff_t ldj, int beta) \
{                                                                                       \
    if (kr == 1) lc_tile_e1_##SUFFIX(kc, a, lda, b, boff, c, ldi, ldj, beta);           \
    else if (kr == 2) lc_tile_e2_##SUFFIX(kc, a, lda, b, boff, c, ldi, ldj, beta);      \
    else lc_tile_efull_##SUFFIX(kc, a, lda, b, boff, c, ldi, ldj, beta);                \
}                                                                                       \
LC_DOTS_RC(SUFFIX, T, one, LC_OR_D, 1)                                                  \
LC_DOTS_RC(SUFFIX, T, two, LC_OR_D / 2, 2)                                              \
LC_DOTS_RC(SUFFIX, T, row, 1, 2)                                                        \
__attribute__((noinline))                                                               \
static void lc_dots_##SUFFIX(ptrdiff_t kc, const T *a, ptrdiff_t lda, ptrdiff_t nrows,  \
        const T *b, ptrdiff_t ldb, int ncols, T *c, ptrdiff_t ldc, ptrdiff_t dc,        \
        int beta)                                                                       \
{                                                                                       \
    ptrdiff_t i = 0;                                                                    \
    if (ncols == 1)                                                                     \
        for (; i + LC_OR_D <= nrows; i += LC_OR_D) LC_DOTS_CALL(SUFFIX, one);           \
    else                                                                                \
        for (; i + LC_OR_D / 2 <= nrows; i += LC_OR_D / 2) LC_DOTS_CALL(SUFFIX, two);   \
    for (; i < nrows; i++) LC_DOTS_CALL(SUFFIX, row);                                   \
}                                                                                       \
LC_DOWN_RV(SUFFIX, T, wide, LC_DOWN_V)                                                  \
LC_DOWN_RV(SUFFIX, T, one, 1)                                                           \
__attribute__((noinline))                                                               \
static void lc_down_##SUFFIX(ptrdiff_t kc, const T *a, const ptrdiff_t *aoff,           \
        ptrdiff_t nrows, ptrdiff_t avail, const T *b, const ptrdiff_t *boff,            \
        ptrdiff_t db, int ncols, T *c, ptrdiff_t ldc, ptrdiff_t dc, int beta)           \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    ptrdiff_t i = 0;                                                                    \
    if (ncols == 1) db = 0;                                                             \
    for (; i + LC_DOWN_V * W <= nrows; i += LC_DOWN_V * W)                              \
        lc_down_wide_##SUFFIX(kc, a + i, aoff, b, boff, db, ncols, c + i * ldc, ldc, dc, \
                              LC_DOWN_V * W, beta);                                     \
    /* the last rows by whole vectors, as far as A has rows to read (avail) */          \
    for (; i < nrows && i + W <= avail; i += W)                                         \
        lc_down_one_##SUFFIX(kc, a + i, aoff, b, boff, db, ncols, c + i * ldc, ldc, dc, \
                             nrows - i, beta);                                          \
    for (; i < nrows; i++)                                                              \
        for (int j = 0; j < ncols; j++) {                                               \
            T sum = 0;                                                                  \
            for (ptrdiff_t k = 0; k < kc; k++) sum += a[aoff[k] + i] * b[boff[k] + j * db]; \
            T *d = c + i * ldc + j * dc;                                                \
            *d = beta ? *d + sum : sum;                                                 \
        }                                                                               \
}

/* The body of lc_tile_d and lc_tile_e: acc[i][j] = the vector sums over k < kc (in steps of a
 * vector) of row i of A (its vector at k: the address A_AT) times row j of B (B_AT), for i < KR
 * and j < OR_D; the caller sums each acc[i]'s lanes. */
#  define LC_DOT_BODY(SUFFIX, KR, A_AT, B_AT)                                            \
    typedef lc_vec_##SUFFIX VEC;                                                        \
    typedef lc_uvec_##SUFFIX UVEC;                                                      \
    VEC acc[KR][LC_OR_D];                                                               \
    LC_UNROLL for (int i = 0; i < KR; i++)                                              \
        LC_UNROLL for (int j = 0; j < LC_OR_D; j++) acc[i][j] = (VEC){0};               \
    for (ptrdiff_t k = 0; k < kc; k += W) {                                             \
        VEC av[KR];                                                                     \
        LC_UNROLL for (int i = 0; i < KR; i++) av[i] = *(const UVEC *)(A_AT);           \
        LC_UNROLL for (int j = 0; j < LC_OR_D; j++) {                                   \
            VEC bj = *(const UVEC *)(B_AT);                                             \
            LC_UNROLL for (int i = 0; i < KR; i++) acc[i][j] += av[i] * bj;             \
        }                                                                               \
    }

/* lc_dots: c[i * ldc + j] (=, +=) sum over k < kc of a[i * lda + k] b[j * ldb + k], for
 * i < nrows and j < ncols (1 or 2): the products of one or two columns (the last columns of
 * an image, where a tile of whole vectors would compute mostly nothing) as dot products
 * along k, both operands read as vectors.  R rows by NC columns at a time, their accumulators
 * summed along the lanes LC_OR_D at a time (lc_lane_sums); a second column of b is read
 * (the caller's buffer has it) where ncols is 1 and R is 1, and not stored.  kc past whole
 * vectors: scalars. */
#  define LC_DOTS_RC(SUFFIX, T, NAME, R, NC)                                            \
static inline void lc_dots_##NAME##_##SUFFIX(ptrdiff_t kc, const T *LC_RESTRICT a,      \
        ptrdiff_t lda, const T *LC_RESTRICT b, ptrdiff_t ldb, int ncols,                \
        T *LC_RESTRICT c, ptrdiff_t ldc, ptrdiff_t dc, int beta)                        \
{                                                                                       \
    typedef lc_vec_##SUFFIX VEC;                                                        \
    typedef lc_uvec_##SUFFIX UVEC;                                                      \
    enum { W = LC_VEC_BYTES / sizeof(T), NS = (R * NC + LC_OR_D - 1) / LC_OR_D };       \
    VEC acc[NS * LC_OR_D];                                                              \
    T sums[NS * LC_OR_D];                                                               \
    LC_UNROLL for (int u = 0; u < NS * LC_OR_D; u++) acc[u] = (VEC){0};                 \
    ptrdiff_t kv = kc - kc % W;                                                         \
    for (ptrdiff_t k = 0; k < kv; k += W) {                                             \
        VEC bv[NC];                                                                     \
        LC_UNROLL for (int j = 0; j < NC; j++) bv[j] = *(const UVEC *)(b + j * ldb + k); \
        LC_UNROLL for (int i = 0; i < R; i++) {                                         \
            VEC av = *(const UVEC *)(a + i * lda + k);                                  \
            LC_UNROLL for (int j = 0; j < NC; j++) acc[i * NC + j] += av * bv[j];       \
        }                                                                               \
    }                                                                                   \
    LC_UNROLL for (int g = 0; g < NS; g++)                                              \
        lc_lane_sums_##SUFFIX(acc + g * LC_OR_D, sums + g * LC_OR_D, 0);                \
    for (int i = 0; i < R; i++)                                                         \
        for (int j = 0; j < NC && j < ncols; j++) {                                     \
            T sum = sums[i * NC + j];                                                   \
            for (ptrdiff_t k = kv; k < kc; k++) sum += a[i * lda + k] * b[j * ldb + k]; \
            T *d = c + i * ldc + j * dc;                                                \
            *d = beta ? *d + sum : sum;                                                 \
        }                                                                               \
}
#  define LC_DOTS_CALL(SUFFIX, NAME)                                                    \
    lc_dots_##NAME##_##SUFFIX(kc, a + i * lda, lda, b, ldb, ncols, c + i * ldc, ldc, dc, beta)

/* lc_down: c[i * ldc + j * dc] (=, +=) sum over k < kc of a[aoff[k] + i] b[boff[k] + j * db],
 * for i < nrows and j < ncols (1 or 2): the products of one or two columns where A's columns
 * have their rows one after the other (the weight read in place by a 1x1 layer's input
 * gradient), with vectors down the rows and each element of B broadcast.  RV vectors of rows
 * at a time, storing the first `rows`; then one, the last reading rows up to avail (A's rows
 * that exist) past nrows; then single rows.  A second column is computed (the first again,
 * db 0) where ncols is 1, and not stored. */
#  define LC_DOWN_RV(SUFFIX, T, NAME, RV)                                               \
static inline void lc_down_##NAME##_##SUFFIX(ptrdiff_t kc, const T *LC_RESTRICT a,      \
        const ptrdiff_t *LC_RESTRICT aoff, const T *LC_RESTRICT b,                      \
        const ptrdiff_t *LC_RESTRICT boff, ptrdiff_t db, int ncols, T *LC_RESTRICT c,   \
        ptrdiff_t ldc, ptrdiff_t dc, ptrdiff_t rows, int beta)                          \
{                                                                                       \
    typedef lc_vec_##SUFFIX VEC;                                                        \
    typedef lc_uvec_##SUFFIX UVEC;                                                      \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    VEC acc[RV][2];                                                                     \
    LC_UNROLL for (int v = 0; v < RV; v++) acc[v][0] = acc[v][1] = (VEC){0};            \
    for (ptrdiff_t k = 0; k < kc; k++) {                                                \
        const T *ak = a + aoff[k];                                                      \
        T b0 = b[boff[k]], b1 = b[boff[k] + db];                                        \
        LC_UNROLL for (int v = 0; v < RV; v++) {                                        \
            VEC av = *(const UVEC *)(ak + v * W);                                       \
            acc[v][0] += av * b0;                                                       \
            acc[v][1] += av * b1;                                                       \
        }                                                                               \
    }                                                                                   \
    for (int v = 0; v < RV; v++)                                                        \
        for (int j = 0; j < ncols; j++)                                                 \
            for (int l = 0; l < W && v * W + l < rows; l++) {                           \
                T *d = c + (v * W + l) * ldc + j * dc;                                  \
                *d = beta ? *d + acc[v][j][l] : acc[v][j][l];                           \
            }                                                                           \
}

/* lc_tile_d with KR rows; each row's OR_D sums by lc_lane_sums (LC_DEFINE_LANE_SUMS) */
#  define LC_TILE_D_ROWS(SUFFIX, T, NAME, KR)                                            \
static inline void lc_tile_d##NAME##_##SUFFIX(ptrdiff_t kc, const T *LC_RESTRICT a,     \
        const ptrdiff_t *LC_RESTRICT aoff, const T *LC_RESTRICT b, ptrdiff_t ldb,       \
        T *LC_RESTRICT c, ptrdiff_t ldc, int beta)                                      \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    const T *rows[KR];                                                                  \
    LC_UNROLL for (int i = 0; i < KR; i++) rows[i] = a + aoff[i];                       \
    LC_DOT_BODY(SUFFIX, KR, rows[i] + k, b + j * ldb + k)                               \
    for (int i = 0; i < KR; i++) lc_lane_sums_##SUFFIX(acc[i], c + i * ldc, beta);      \
}

/* lc_tile_e with KR rows: each row's OR_D sums by lc_lane_sums, then stored one by one (ldj
 * apart) */
#  define LC_TILE_E_ROWS(SUFFIX, T, NAME, KR)                                            \
static inline void lc_tile_e##NAME##_##SUFFIX(ptrdiff_t kc, const T *LC_RESTRICT a,     \
        ptrdiff_t lda, const T *LC_RESTRICT b, const ptrdiff_t *LC_RESTRICT boff,       \
        T *LC_RESTRICT c, ptrdiff_t ldi, ptrdiff_t ldj, int beta)                       \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    const T *cols[LC_OR_D];                                                             \
    T sums[LC_OR_D];                                                                    \
    LC_UNROLL for (int j = 0; j < LC_OR_D; j++) cols[j] = b + boff[j];                  \
    LC_DOT_BODY(SUFFIX, KR, a + i * lda + k, cols[j] + k)                               \
    for (int i = 0; i < KR; i++) {                                                      \
        lc_lane_sums_##SUFFIX(acc[i], sums, 0);                                         \
        for (int j = 0; j < LC_OR_D; j++) {                                             \
            T *d = c + i * ldi + j * ldj;                                               \
            *d = beta ? *d + sums[j] : sums[j];                                         \
        }                                                                               \
    }                                                                                   \
}

#else  /* other compilers: the same tiles as scalar loops (correct, not fast) */
#  define LC_RESTRICT
#  define LC_ROW_MASKS 0
#  define LC_SCALAR_TILE(T, MR, NV, A_AT, B_AT)                                         \
    enum { NR = NV * LC_VEC_BYTES / sizeof(T) };                                        \
    T acc[MR][NR];                                                                      \
    for (int i = 0; i < MR; i++)                                                        \
        for (int j = 0; j < NR; j++) acc[i][j] = 0;                                     \
    for (ptrdiff_t k = 0; k < kc; k++)                                                  \
        for (int i = 0; i < MR; i++)                                                    \
            for (int j = 0; j < NR; j++) acc[i][j] += (A_AT) * (B_AT);                  \
    for (int i = 0; i < MR; i++)                                                        \
        for (int j = 0; j < NR; j++)                                                    \
            c[i * ldc + j] = beta ? c[i * ldc + j] + acc[i][j] : acc[i][j];
#  define LC_SCALAR_AM(SUFFIX, T, NV, MR)                                               \
static void lc_tile_a##NV##_##SUFFIX(ptrdiff_t kc, const T *a, const ptrdiff_t *aoff,   \
                                     const T *b, T *c, ptrdiff_t ldc, int beta)         \
{ LC_SCALAR_TILE(T, MR, NV, a[aoff[i] + k], b[NR * k + j]) }                            \
static void lc_tile_m##NV##_##SUFFIX(ptrdiff_t kc, const T *a, const ptrdiff_t *aoff,   \
                                     const ptrdiff_t *cmap, const T *b, T *c,           \
                                     ptrdiff_t ldc, int beta)                           \
{ LC_SCALAR_TILE(T, MR, NV, a[aoff[i] + cmap[k]], b[NR * k + j]) }

#  define LC_DEFINE_TILES(SUFFIX, T, BYTES)                                              \
static void lc_tile_b_##SUFFIX(int mr, int nv, ptrdiff_t kc, const T *a, const T *b,    \
                               const ptrdiff_t *boff, T *c, ptrdiff_t ldc, int beta)    \
{                                                                                       \
    int nr = nv * (int)(LC_VEC_BYTES / sizeof(T));                                      \
    for (int i = 0; i < mr; i++)                                                        \
        for (int j = 0; j < nr; j++) {                                                  \
            T sum = 0;                                                                  \
            for (ptrdiff_t k = 0; k < kc; k++) sum += a[mr * k + i] * b[boff[k] + j];   \
            c[i * ldc + j] = beta ? c[i * ldc + j] + sum : sum;                         \
        }                                                                               \
}                                                                                       \
static void lc_tile_v_##SUFFIX(int pieces, int mr, int nv, ptrdiff_t kc, const T *a,    \
                               const T *b, const ptrdiff_t *boff, const ptrdiff_t *vo,  \
                               T *c, ptrdiff_t ldc, int beta)                           \
{                                                                                       \
    int pw = (int)(LC_VEC_BYTES / sizeof(T)) / pieces;                                  \
    for (int i = 0; i < mr; i++)                                                        \
        for (int j = 0; j < nv * pieces * pw; j++) {                                    \
            T sum = 0;                                                                  \
            for (ptrdiff_t k = 0; k < kc; k++)                                          \
                sum += a[mr * k + i] * b[boff[k] + vo[j / pw] + j % pw];                \
            c[i * ldc + j] = beta ? c[i * ldc + j] + sum : sum;                         \
        }                                                                               \
}                                                                                       \
static void lc_tile_r_##SUFFIX(int mr, int nv, ptrdiff_t kc, const T *a, const T *b,    \
                               const ptrdiff_t *boff, const ptrdiff_t *vo, T *c,        \
                               ptrdiff_t ldc, int beta, int pfa)                        \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    (void)pfa;                                                                          \
    for (int i = 0; i < mr; i++)                                                        \
        for (int j = 0; j < nv * W; j++) {                                              \
            const ptrdiff_t *r = vo + 3 * (j / W);                                      \
            int l = j % W, first = (r[2] >> l) & 1, second = (r[2] >> (W + l)) & 1;     \
            T sum = 0;                                                                  \
            if (first || second)                                                        \
                for (ptrdiff_t k = 0; k < kc; k++)                                      \
                    sum += a[mr * k + i] * b[boff[k] + r[first ? 0 : 1] + l];           \
            c[i * ldc + j] = beta ? c[i * ldc + j] + sum : sum;                         \
        }                                                                               \
}                                                                                       \
static void lc_tile_g_##SUFFIX(int mr, int nv, ptrdiff_t kc, const T *a,                \
                               const ptrdiff_t *aoff, ptrdiff_t rs, const T *b,         \
                               const ptrdiff_t *boff, T *c, ptrdiff_t ldc, int beta)    \
{                                                                                       \
    int nr = nv * (int)(LC_VEC_BYTES / sizeof(T));                                      \
    for (int i = 0; i < mr; i++)                                                        \
        for (int j = 0; j < nr; j++) {                                                  \
            T sum = 0;                                                                  \
            for (ptrdiff_t k = 0; k < kc; k++)                                          \
                sum += a[aoff[k] + i * rs] * b[boff[k] + j];                            \
            c[i * ldc + j] = beta ? c[i * ldc + j] + sum : sum;                         \
        }                                                                               \
}                                                                                       \
static void lc_tile_p_##SUFFIX(int nv, ptrdiff_t kc, const T *const *ar,                \
                               const ptrdiff_t *aoff, const T *b, ptrdiff_t ldb, T *c,  \
                               ptrdiff_t ldc, int beta, int pf)                         \
{                                                                                       \
    (void)pf;                                                                           \
    int nr = nv * (int)(LC_VEC_BYTES / sizeof(T));                                      \
    for (int i = 0; i < LC_MR_B; i++)                                                   \
        for (int j = 0; j < nr; j++) {                                                  \
            T sum = 0;                                                                  \
            for (ptrdiff_t k = 0; k < kc; k++) sum += ar[i][aoff[k]] * b[ldb * k + j];  \
            c[i * ldc + j] = beta ? c[i * ldc + j] + sum : sum;                         \
        }                                                                               \
}                                                                                       \
LC_SCALAR_AM(SUFFIX, T, 2, LC_MR_A)                                                     \
LC_SCALAR_AM(SUFFIX, T, 1, LC_MR_A1)                                                    \
static void lc_tile_d_##SUFFIX(int kr, ptrdiff_t kc, const T *a, const ptrdiff_t *aoff, \
                               const T *b, ptrdiff_t ldb, T *c, ptrdiff_t ldc, int beta) \
{                                                                                       \
    for (int i = 0; i < kr; i++)                                                        \
        for (int j = 0; j < LC_OR_D; j++) {                                             \
            T sum = 0;                                                                  \
            for (ptrdiff_t k = 0; k < kc; k++) sum += a[aoff[i] + k] * b[j * ldb + k];  \
            c[i * ldc + j] = beta ? c[i * ldc + j] + sum : sum;                         \
        }                                                                               \
}                                                                                       \
static void lc_tile_e_##SUFFIX(int kr, ptrdiff_t kc, const T *a, ptrdiff_t lda,         \
                               const T *b, const ptrdiff_t *boff, T *c, ptrdiff_t ldi,  \
                               ptrdiff_t ldj, int beta)                                 \
{                                                                                       \
    for (int i = 0; i < kr; i++)                                                        \
        for (int j = 0; j < LC_OR_D; j++) {                                             \
            T sum = 0;                                                                  \
            for (ptrdiff_t k = 0; k < kc; k++) sum += a[i * lda + k] * b[boff[j] + k];  \
            c[i * ldi + j * ldj] = beta ? c[i * ldi + j * ldj] + sum : sum;             \
        }                                                                               \
}                                                                                       \
static void lc_dots_##SUFFIX(ptrdiff_t kc, const T *a, ptrdiff_t lda, ptrdiff_t nrows,  \
                             const T *b, ptrdiff_t ldb, int ncols, T *c, ptrdiff_t ldc, \
                             ptrdiff_t dc, int beta)                                    \
{                                                                                       \
    for (ptrdiff_t i = 0; i < nrows; i++)                                               \
        for (int j = 0; j < ncols; j++) {                                               \
            T sum = 0;                                                                  \
            for (ptrdiff_t k = 0; k < kc; k++) sum += a[i * lda + k] * b[j * ldb + k];  \
            T *d = c + i * ldc + j * dc;                                                \
            *d = beta ? *d + sum : sum;                                                 \
        }                                                                               \
}                                                                                       \
static void lc_down_##SUFFIX(ptrdiff_t kc, const T *a, const ptrdiff_t *aoff,           \
                             ptrdiff_t nrows, ptrdiff_t avail, const T *b,              \
                             const ptrdiff_t *boff, ptrdiff_t db, int ncols, T *c,      \
                             ptrdiff_t ldc, ptrdiff_t dc, int beta)                     \
{                                                                                       \
    for (ptrdiff_t i = 0; i < nrows; i++)                                               \
        for (int j = 0; j < ncols; j++) {                                               \
            T sum = 0;                                                                  \
            for (ptrdiff_t k = 0; k < kc; k++) sum += a[aoff[k] + i] * b[boff[k] + j * db]; \
            T *d = c + i * ldc + j * dc;                                                \
            *d = beta ? *d + sum : sum;                                                 \
        }                                                                               \
}
#endif

/* The weight-gradient tiles by width: nv = 2 (lc_tile_a2, lc_tile_m2) or 1 (a1, m1). */
#define LC_DEFINE_WEIGHT_TILES(SUFFIX, T)                                               \
static inline void lc_tile_a_##SUFFIX(int nv, ptrdiff_t kc, const T *a,                 \
        const ptrdiff_t *aoff, const T *b, T *c, ptrdiff_t ldc, int beta)               \
{                                                                                       \
    if (nv == 1) lc_tile_a1_##SUFFIX(kc, a, aoff, b, c, ldc, beta);                     \
    else lc_tile_a2_##SUFFIX(kc, a, aoff, b, c, ldc, beta);                             \
}                                                                                       \
static inline void lc_tile_m_##SUFFIX(int nv, ptrdiff_t kc, const T *a,                 \
        const ptrdiff_t *aoff, const ptrdiff_t *cmap, const T *b, T *c, ptrdiff_t ldc,  \
        int beta)                                                                       \
{                                                                                       \
    if (nv == 1) lc_tile_m1_##SUFFIX(kc, a, aoff, cmap, b, c, ldc, beta);               \
    else lc_tile_m2_##SUFFIX(kc, a, aoff, cmap, b, c, ldc, beta);                       \
}

/* lc_stream_T: C[i, j] = sum over k < kc of a[mr * k + i] * b[ldb * k + j], for i < mr (1, 2 or
 * 4) and j < n: a product of a few rows, the columns of one block of it, with B read row after
 * row, LC_STREAM_K rows at a time, each run of n columns from its start to its end; C, the
 * accumulators, stays in L1 (n * mr elements), loaded and stored once per LC_STREAM_K rows.
 * For a product of one or two rows the arithmetic is a few operations per element of B and the
 * time is B's: lc_tile_b, NR columns of every row of B at a time, has kc short runs in flight
 * 4 or 8 rows apart, which the prefetchers do not follow; these are LC_STREAM_K long runs
 * that they do.  Each element is summed over k in order, from zero. */
#define LC_STREAM_K 4
#if defined(__GNUC__) || defined(__clang__)
#  define LC_STREAM_ROWS(SUFFIX, T, MR)                                                 \
static inline void lc_stream##MR##_##SUFFIX(ptrdiff_t kc, const T *LC_RESTRICT a,       \
        const T *LC_RESTRICT b, ptrdiff_t ldb, ptrdiff_t n, T *LC_RESTRICT c,           \
        ptrdiff_t ldc)                                                                  \
{                                                                                       \
    typedef lc_vec_##SUFFIX VEC;                                                        \
    typedef lc_uvec_##SUFFIX UVEC;                                                      \
    enum { W = LC_VEC_BYTES / sizeof(T), KS = LC_STREAM_K };                            \
    ptrdiff_t nv = n - n % W, k0 = 0;                                                   \
    for (int i = 0; i < MR; i++) memset(c + i * ldc, 0, n * sizeof(T));                 \
    for (; k0 + KS <= kc; k0 += KS) {                                                   \
        const T *bk = b + k0 * ldb, *ak = a + k0 * MR;                                  \
        VEC av[KS][MR];                                                                 \
        LC_UNROLL for (int s = 0; s < KS; s++)                                          \
            LC_UNROLL for (int i = 0; i < MR; i++) av[s][i] = (VEC){0} + ak[s * MR + i]; \
        for (ptrdiff_t j = 0; j < nv; j += W) {                                         \
            VEC bv[KS];                                                                 \
            LC_UNROLL for (int s = 0; s < KS; s++) bv[s] = *(const UVEC *)(bk + s * ldb + j); \
            LC_UNROLL for (int i = 0; i < MR; i++) {                                    \
                UVEC *ci = (UVEC *)(c + i * ldc + j);                                   \
                VEC acc = *ci;                                                          \
                LC_UNROLL for (int s = 0; s < KS; s++) acc += av[s][i] * bv[s];         \
                *ci = acc;                                                              \
            }                                                                           \
        }                                                                               \
        for (int i = 0; i < MR; i++)                                                    \
            for (ptrdiff_t j = nv; j < n; j++)                                          \
                for (int s = 0; s < KS; s++) c[i * ldc + j] += ak[s * MR + i] * bk[s * ldb + j]; \
    }                                                                                   \
    for (; k0 < kc; k0++) {                                                             \
        const T *bk = b + k0 * ldb, *ak = a + k0 * MR;                                  \
        for (int i = 0; i < MR; i++) {                                                  \
            VEC ai = (VEC){0} + ak[i];                                                  \
            for (ptrdiff_t j = 0; j < nv; j += W)                                       \
                *(UVEC *)(c + i * ldc + j) += ai * *(const UVEC *)(bk + j);             \
            for (ptrdiff_t j = nv; j < n; j++) c[i * ldc + j] += ak[i] * bk[j];         \
        }                                                                               \
    }                                                                                   \
}
#else   /* other compilers: the same order, element by element */
#  define LC_STREAM_ROWS(SUFFIX, T, MR)                                                 \
static void lc_stream##MR##_##SUFFIX(ptrdiff_t kc, const T *a, const T *b, ptrdiff_t ldb, \
                                     ptrdiff_t n, T *c, ptrdiff_t ldc)                  \
{                                                                                       \
    for (int i = 0; i < MR; i++)                                                        \
        for (ptrdiff_t j = 0; j < n; j++) {                                             \
            T sum = 0;                                                                  \
            for (ptrdiff_t k = 0; k < kc; k++) sum += a[MR * k + i] * b[ldb * k + j];   \
            c[i * ldc + j] = sum;                                                       \
        }                                                                               \
}
#endif
#define LC_DEFINE_STREAM(SUFFIX, T)                                                     \
LC_STREAM_ROWS(SUFFIX, T, 1)                                                            \
LC_STREAM_ROWS(SUFFIX, T, 2)                                                            \
LC_STREAM_ROWS(SUFFIX, T, 4)                                                            \
static inline void lc_stream_##SUFFIX(int mr, ptrdiff_t kc, const T *a, const T *b,     \
        ptrdiff_t ldb, ptrdiff_t n, T *c, ptrdiff_t ldc)                                \
{                                                                                       \
    if (mr == 1) lc_stream1_##SUFFIX(kc, a, b, ldb, n, c, ldc);                         \
    else if (mr == 2) lc_stream2_##SUFFIX(kc, a, b, ldb, n, c, ldc);                    \
    else lc_stream4_##SUFFIX(kc, a, b, ldb, n, c, ldc);                                 \
}

/* Lane tables of two-vector shuffles (GCC and Clang, 256- and 512-bit vectors): the lane sums
 * below and the transposes after them. */
#if defined(__GNUC__) && (LC_VEC_BYTES == 64 || LC_VEC_BYTES == 32)
/* lane j of the round of block size h: from row i (a) or, as W + lane, from row i + h (b) */
#  define LC_T_LO(W, h, j) (((j) & (h)) ? (W) + (j) - (h) : (j))
#  define LC_T_HI(W, h, j) (((j) & (h)) ? (W) + (j) : (j) + (h))
#  define LC_T_4(F, W, h) F(W, h, 0), F(W, h, 1), F(W, h, 2), F(W, h, 3)
#  define LC_T_8(F, W, h) LC_T_4(F, W, h), F(W, h, 4), F(W, h, 5), F(W, h, 6), F(W, h, 7)
#  define LC_T_16(F, W, h) LC_T_8(F, W, h), F(W, h, 8), F(W, h, 9), F(W, h, 10),          \
                           F(W, h, 11), F(W, h, 12), F(W, h, 13), F(W, h, 14), F(W, h, 15)
/* The OR_D lane sums of lc_tile_d as a tree: log2(W) rounds, each adding the two halves (of the
 * size of the round) of a pair of vectors into one vector, whose lanes then hold half of each;
 * a vector without a partner (OR_D < W) pairs with itself.  In the end lane j of r[0] holds the
 * sum of vector j: about 3 shuffles and adds per vector where the lanes summed one at a time took
 * W - 1 adds and as many extracts (a squeeze-and-excitation layer's dense product at batch 1
 * spent most of its time there).  The order of the additions is fixed by W alone. */
#  if defined(__clang__)
#    define LC_SHUF(VEC, IVEC, a, b, SIDE, W, LANES, h)                                  \
    __builtin_shufflevector(a, b, LANES(SIDE, W, h))
#  else
#    define LC_SHUF(VEC, IVEC, a, b, SIDE, W, LANES, h)                                  \
    __builtin_shuffle(a, b, (IVEC){LANES(SIDE, W, h)})
#  endif
#  define LC_LANE_ROUND(VEC, IVEC, W, LANES, h)                                          \
    {                                                                                   \
        const int pairs = m > (h), live = pairs ? (h) : m;                              \
        for (int i = 0; i < live; i++) {                                                \
            VEC a = r[i], b = pairs ? r[i + (h)] : a;                                   \
            r[i] = LC_SHUF(VEC, IVEC, a, b, LC_T_LO, W, LANES, h)                       \
                   + LC_SHUF(VEC, IVEC, a, b, LC_T_HI, W, LANES, h);                    \
        }                                                                               \
        m = live;                                                                       \
    }
#  define LC_LANE_SUMS_HEAD(SUFFIX, T, ITYPE, W)                                         \
static inline void lc_lane_sums_##SUFFIX(const lc_vec_##SUFFIX *v, T *c, int beta)      \
{                                                                                       \
    typedef lc_vec_##SUFFIX VEC;                                                        \
    typedef ITYPE ivec __attribute__((vector_size(LC_VEC_BYTES)));                      \
    _Static_assert(sizeof(ivec) == sizeof(VEC), "one index per lane");                  \
    _Static_assert(LC_OR_D <= (W) && (LC_OR_D & (LC_OR_D - 1)) == 0, "OR_D lanes");     \
    VEC r[W];                                                                           \
    int m = LC_OR_D;                                                                    \
    for (int i = 0; i < LC_OR_D; i++) r[i] = v[i];
#  define LC_LANE_SUMS_TAIL                                                              \
    for (int j = 0; j < LC_OR_D; j++) c[j] = beta ? c[j] + r[0][j] : r[0][j];           \
}
/* the rounds for W lanes (a vector of 4, 8 or 16), with the lane tables LANES */
#  define LC_LANE_ROUNDS_4(LANES)                                                        \
    LC_LANE_ROUND(VEC, ivec, 4, LANES, 2) LC_LANE_ROUND(VEC, ivec, 4, LANES, 1)
#  define LC_LANE_ROUNDS_8(LANES)                                                        \
    LC_LANE_ROUND(VEC, ivec, 8, LANES, 4) LC_LANE_ROUND(VEC, ivec, 8, LANES, 2)         \
    LC_LANE_ROUND(VEC, ivec, 8, LANES, 1)
#  define LC_LANE_ROUNDS_16(LANES)                                                       \
    LC_LANE_ROUND(VEC, ivec, 16, LANES, 8) LC_LANE_ROUND(VEC, ivec, 16, LANES, 4)       \
    LC_LANE_ROUND(VEC, ivec, 16, LANES, 2) LC_LANE_ROUND(VEC, ivec, 16, LANES, 1)
/* the integer type of the lane indices of a type of BYTES bytes */
#  define LC_LANE_INDEX_4 int
#  define LC_LANE_INDEX_8 long long
#  define LC_LANE_TREE(SUFFIX, T, ITYPE, W)                                              \
LC_LANE_SUMS_HEAD(SUFFIX, T, ITYPE, W)                                                  \
    LC_LANE_ROUNDS_##W(LC_T_##W)                                                        \
LC_LANE_SUMS_TAIL
/* (one more level, so that the lane count is expanded before it is pasted) */
#  define LC_LANE_TREE_OF(SUFFIX, T, ITYPE, W) LC_LANE_TREE(SUFFIX, T, ITYPE, W)
#  define LC_DEFINE_LANE_SUMS(SUFFIX, T, BYTES)                                          \
    LC_LANE_TREE_OF(SUFFIX, T, LC_LANE_INDEX_##BYTES, LC_LANES_##BYTES)
#else
/* the lane sums of lc_tile_d one lane after the other (128-bit vectors) */
#  define LC_DEFINE_LANE_SUMS(SUFFIX, T, BYTES)                                          \
static inline void lc_lane_sums_##SUFFIX(const lc_vec_##SUFFIX *v, T *c, int beta)      \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    for (int j = 0; j < LC_OR_D; j++) {                                                 \
        T sum = 0;                                                                      \
        for (int l = 0; l < W; l++) sum += v[j][l];                                     \
        c[j] = beta ? c[j] + sum : sum;                                                 \
    }                                                                                   \
}
#endif

/* A square block of one vector's lanes (W) transposed:  dst[j * ldd + i] = src[i * lds + j]
 * for i, j < W.  The weight gradient packs dy transposed with it (one element at a time, that
 * packing took up to a fifth of the time where the taps are few: cifar, the ResNet stem).
 * log2(W) rounds of two-vector shuffles, each swapping the off-diagonal blocks of half the size
 * of the last, with constant lane tables: GCC's __builtin_shuffle (Clang's
 * __builtin_shufflevector) with AVX-512 (weight gradients in float32: cifar 0.80 of the time,
 * largek 0.76, resnet and 1x1 0.90; float64 0.86-1.0); plain loops elsewhere (with AVX2 the
 * generic shuffles were no faster). */
#if defined(__GNUC__) && LC_VEC_BYTES == 64
#  if defined(__clang__)
/* Clang (which also defines __GNUC__) has no __builtin_shuffle; its __builtin_shufflevector
 * takes the same lane tables as constant arguments rather than as IVEC vectors (IVEC is only
 * named in a size check, which also keeps -Wunused-local-typedef quiet). */
#    define LC_T_ROUND(VEC, IVEC, W, LANES, h)                                           \
    {                                                                                   \
        _Static_assert(sizeof(IVEC) == sizeof(VEC), "one index per lane");              \
        for (int i = 0; i < W; i++)                                                     \
            if (!(i & (h))) {                                                           \
                VEC a = r[i], b = r[i + (h)];                                           \
                r[i] = __builtin_shufflevector(a, b, LANES(LC_T_LO, W, h));             \
                r[i + (h)] = __builtin_shufflevector(a, b, LANES(LC_T_HI, W, h));       \
            }                                                                           \
    }
#  else
#    define LC_T_ROUND(VEC, IVEC, W, LANES, h)                                           \
    {                                                                                   \
        const IVEC lo = {LANES(LC_T_LO, W, h)}, hi = {LANES(LC_T_HI, W, h)};            \
        for (int i = 0; i < W; i++)                                                     \
            if (!(i & (h))) {                                                           \
                VEC a = r[i], b = r[i + (h)];                                           \
                r[i] = __builtin_shuffle(a, b, lo);                                     \
                r[i + (h)] = __builtin_shuffle(a, b, hi);                               \
            }                                                                           \
    }
#  endif
#  define LC_T_LOAD(SUFFIX, W, ROW)                                                     \
    lc_vec_##SUFFIX r[W];                                                               \
    for (int i = 0; i < W; i++) r[i] = *(const lc_uvec_##SUFFIX *)(src + ROW(i));
#  define LC_T_STRIDED(i) ((i) * lds)
#  define LC_T_TABLE(i) (roff[i])
#  define LC_T_STORE(SUFFIX, W)                                                         \
    for (int i = 0; i < W; i++) *(lc_uvec_##SUFFIX *)(dst + i * ldd) = r[i];
/* the transpose of a type of BYTES bytes: 4 (16 lanes) or 8 (8 lanes) */
#  define LC_DEFINE_TRANSPOSE(SUFFIX, T, BYTES) LC_TRANSPOSE_SHUFFLES_##BYTES(SUFFIX, T)
#  define LC_TRANSPOSE_SHUFFLES_4(SUFFIX, T)                                             \
    LC_T_FUNC(SUFFIX, T, , ptrdiff_t lds, 16, LC_T_16, LC_T_STRIDED)                    \
    LC_T_FUNC(SUFFIX, T, _at, const ptrdiff_t *LC_RESTRICT roff, 16, LC_T_16, LC_T_TABLE)
#  define LC_TRANSPOSE_SHUFFLES_8(SUFFIX, T)                                             \
    LC_T_FUNC(SUFFIX, T, , ptrdiff_t lds, 8, LC_T_8, LC_T_STRIDED)                      \
    LC_T_FUNC(SUFFIX, T, _at, const ptrdiff_t *LC_RESTRICT roff, 8, LC_T_8, LC_T_TABLE)
/* lc_transpose (rows lds apart) or lc_transpose_at (NAME _at: rows at the offsets roff) of W
 * lanes: log2(W) rounds, from swapping blocks of W / 2 lanes down to single lanes */
#  define LC_T_FUNC(SUFFIX, T, NAME, ROWS, W, LANES, ROW)                               \
static inline void lc_transpose##NAME##_##SUFFIX(const T *LC_RESTRICT src, ROWS,        \
                                                 T *LC_RESTRICT dst, ptrdiff_t ldd)     \
{                                                                                       \
    typedef LC_T_INT_##W ivec __attribute__((vector_size(64)));                         \
    LC_T_LOAD(SUFFIX, W, ROW)                                                           \
    LC_T_ROUNDS_##W(lc_vec_##SUFFIX, ivec, LANES)                                       \
    LC_T_STORE(SUFFIX, W)                                                               \
}
#  define LC_T_INT_16 int
#  define LC_T_INT_8 long long
#  define LC_T_ROUNDS_16(VEC, IVEC, LANES)                                               \
    LC_T_ROUND(VEC, IVEC, 16, LANES, 8)                                                 \
    LC_T_ROUNDS_8_OF(VEC, IVEC, 16, LANES)
#  define LC_T_ROUNDS_8(VEC, IVEC, LANES) LC_T_ROUNDS_8_OF(VEC, IVEC, 8, LANES)
#  define LC_T_ROUNDS_8_OF(VEC, IVEC, W, LANES)                                          \
    LC_T_ROUND(VEC, IVEC, W, LANES, 4)                                                  \
    LC_T_ROUND(VEC, IVEC, W, LANES, 2)                                                  \
    LC_T_ROUND(VEC, IVEC, W, LANES, 1)
#else
#  define LC_DEFINE_TRANSPOSE(SUFFIX, T, BYTES)                                         \
static void lc_transpose_##SUFFIX(const T *src, ptrdiff_t lds, T *dst, ptrdiff_t ldd)   \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    for (int i = 0; i < W; i++)                                                         \
        for (int j = 0; j < W; j++) dst[j * ldd + i] = src[i * lds + j];                \
}                                                                                       \
static void lc_transpose_at_##SUFFIX(const T *src, const ptrdiff_t *roff, T *dst,       \
                                     ptrdiff_t ldd)                                     \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    for (int i = 0; i < W; i++)                                                         \
        for (int j = 0; j < W; j++) dst[j * ldd + i] = src[roff[i] + j];                \
}
#endif

/* lc_block_put_T: dst[i * ldd + j] (=, +=) src[i * lds + j] for i < rows, j < n: by vectors
 * where n is a vector's lanes or half of them (a transposed pixel tile's LC_MR_B pixels of
 * each channel, store_pixels), else element by element.  Written as Cython loops, GCC left the
 * adds mostly element by element: half of the stores of a pixel tile that takes its sums in
 * blocks of KC (3x3 on 14x14 with 256 channels: 4 % of the forward pass). */
#if defined(__GNUC__) || defined(__clang__)
#  define LC_BLOCK_ROWS(VT)                                                              \
    for (ptrdiff_t i = 0; i < rows; i++) {                                              \
        VT *d = (VT *)(dst + i * ldd);                                                  \
        VT v = *(const VT *)(src + i * lds);                                            \
        *d = add ? *d + v : v;                                                          \
    }
#  define LC_DEFINE_BLOCK_PUT(SUFFIX, T)                                                 \
static inline void lc_block_put_##SUFFIX(T *LC_RESTRICT dst, ptrdiff_t ldd,             \
        const T *LC_RESTRICT src, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t n, int add)  \
{                                                                                       \
    typedef T full __attribute__((vector_size(LC_VEC_BYTES), aligned(sizeof(T))));      \
    typedef T half __attribute__((vector_size(LC_VEC_BYTES / 2), aligned(sizeof(T))));  \
    if (n * (ptrdiff_t)sizeof(T) == LC_VEC_BYTES) {                                     \
        LC_BLOCK_ROWS(full)                                                             \
        return;                                                                         \
    }                                                                                   \
    if (2 * n * (ptrdiff_t)sizeof(T) == LC_VEC_BYTES) {                                 \
        LC_BLOCK_ROWS(half)                                                             \
        return;                                                                         \
    }                                                                                   \
    LC_BLOCK_ELEMENTS                                                                   \
}
#else
#  define LC_DEFINE_BLOCK_PUT(SUFFIX, T)                                                 \
static void lc_block_put_##SUFFIX(T *dst, ptrdiff_t ldd, const T *src, ptrdiff_t lds,   \
                                  ptrdiff_t rows, ptrdiff_t n, int add)                 \
{                                                                                       \
    LC_BLOCK_ELEMENTS                                                                   \
}
#endif
#define LC_BLOCK_ELEMENTS                                                                \
    for (ptrdiff_t i = 0; i < rows; i++)                                                \
        for (ptrdiff_t j = 0; j < n; j++)                                               \
            dst[i * ldd + j] = add ? dst[i * ldd + j] + src[i * lds + j] : src[i * lds + j];

/* lc_evens_T: dst[e] = src[2 e] for e < n, a stride-2 phase of a row for the stagings, reading
 * src[0 .. avail - 1] at most: vectors of the widest of W, W / 2 and W / 4 lanes (2 at least)
 * that the row fills, each from two loaded ones, the last one overlapping the one before
 * where n is not a multiple (so that nothing past dst[n - 1] is written: the staged row's
 * padding after it stays zero); element by element where n is shorter or the reads would
 * pass avail (they reach src[2 n - 1]).  The scalar loop was most of a stride-2 grouped
 * weight gradient's staging, itself half its time (448 channels in groups of 8, 3x3 stride 2
 * from 28x28: rows of 14). */
#if defined(__GNUC__)
#  define LC_EVENS_2 0, 2
#  define LC_EVENS_4 LC_EVENS_2, 4, 6
#  define LC_EVENS_8 LC_EVENS_4, 8, 10, 12, 14
#  define LC_EVENS_16 LC_EVENS_8, 16, 18, 20, 22, 24, 26, 28, 30
#  if defined(__clang__)
#    define LC_PICK_EVENS(a, b, IVEC, V) __builtin_shufflevector(a, b, LC_EVENS_##V)
#  else
#    define LC_PICK_EVENS(a, b, IVEC, V) __builtin_shuffle(a, b, (IVEC){LC_EVENS_##V})
#  endif
/* the vectors of V lanes, if the row fills one; returns from lc_evens when done */
#  define LC_EVENS_RUN(T, I, V)                                                          \
    {                                                                                   \
        typedef T vt __attribute__((vector_size((V) * sizeof(T))));                     \
        typedef T uvt __attribute__((vector_size((V) * sizeof(T)), aligned(sizeof(T)))); \
        typedef I it __attribute__((vector_size((V) * sizeof(T))));                     \
        if (n >= (V) && 2 * n <= avail) {                                               \
            for (ptrdiff_t e = 0;; e += (V)) {                                          \
                if (e > n - (V)) e = n - (V);                                           \
                vt a = *(const uvt *)(src + 2 * e), b = *(const uvt *)(src + 2 * e + (V)); \
                *(uvt *)(dst + e) = LC_PICK_EVENS(a, b, it, V);                         \
                if (e == n - (V)) return;                                               \
            }                                                                           \
        }                                                                               \
    }
#  define LC_EVENS_HEAD(SUFFIX, T)                                                       \
static inline void lc_evens_##SUFFIX(T *LC_RESTRICT dst, const T *LC_RESTRICT src,      \
                                     ptrdiff_t n, ptrdiff_t avail)
#  define LC_EVENS_TAIL                                                                  \
    for (ptrdiff_t e = 0; e < n; e++) dst[e] = src[2 * e];                              \
}
/* 4-byte types: W = 16, 8 or 4 lanes; 8-byte: 8, 4 or 2 */
#  if LC_VEC_BYTES == 64
#    define LC_DEFINE_EVENS_4(SUFFIX, T) LC_EVENS_HEAD(SUFFIX, T) {                      \
    LC_EVENS_RUN(T, int, 16) LC_EVENS_RUN(T, int, 8) LC_EVENS_RUN(T, int, 4) LC_EVENS_TAIL
#    define LC_DEFINE_EVENS_8(SUFFIX, T) LC_EVENS_HEAD(SUFFIX, T) {                      \
    LC_EVENS_RUN(T, long long, 8) LC_EVENS_RUN(T, long long, 4)                         \
    LC_EVENS_RUN(T, long long, 2) LC_EVENS_TAIL
#  elif LC_VEC_BYTES == 32
#    define LC_DEFINE_EVENS_4(SUFFIX, T) LC_EVENS_HEAD(SUFFIX, T) {                      \
    LC_EVENS_RUN(T, int, 8) LC_EVENS_RUN(T, int, 4) LC_EVENS_RUN(T, int, 2) LC_EVENS_TAIL
#    define LC_DEFINE_EVENS_8(SUFFIX, T) LC_EVENS_HEAD(SUFFIX, T) {                      \
    LC_EVENS_RUN(T, long long, 4) LC_EVENS_RUN(T, long long, 2) LC_EVENS_TAIL
#  else
#    define LC_DEFINE_EVENS_4(SUFFIX, T) LC_EVENS_HEAD(SUFFIX, T) {                      \
    LC_EVENS_RUN(T, int, 4) LC_EVENS_RUN(T, int, 2) LC_EVENS_TAIL
#    define LC_DEFINE_EVENS_8(SUFFIX, T) LC_EVENS_HEAD(SUFFIX, T) {                      \
    LC_EVENS_RUN(T, long long, 2) LC_EVENS_TAIL
#  endif
#  define LC_DEFINE_EVENS(SUFFIX, T, BYTES) LC_DEFINE_EVENS_##BYTES(SUFFIX, T)
/* lc_row_T: dst[e] = src[e] for lo <= e < hi, 0 for the other e < W (one vector: a short
 * row of a staged grid and its padding in one store, which writes W elements at dst and reads
 * W at src) */
#  define LC_ROW(SUFFIX, T, I, W)                                                        \
static inline void lc_row_##SUFFIX(T *dst, const T *src, ptrdiff_t lo, ptrdiff_t hi)    \
{                                                                                       \
    typedef I ivec __attribute__((vector_size(LC_VEC_BYTES)));                          \
    const ivec iota = {LC_IOTA_##W};                                                    \
    ivec v = (ivec)*(const lc_uvec_##SUFFIX *)src;                                      \
    ivec keep = (iota >= (I)lo) & (iota < (I)hi);                                       \
    *(lc_uvec_##SUFFIX *)dst = (lc_vec_##SUFFIX)(v & keep);                             \
}
/* lc_row_pair_T: both phases of stride 2 of a short staged row in m vectors each,
 * row0[e] = src[2 e] for lo0 <= e < hi0 and row1[e] = src[2 e + 1] for lo1 <= e < hi1, 0 for
 * the other e < m W; reads src[0 .. 2 m W - 1], both phases from the same two loads a vector.
 * fill_row_pair's runs of zeros and of even lanes cost more than the copy on rows of 14 to 28
 * (a stride-2 grouped 3x3 layer on 28x28 at batch 1 spent a third of its forward pass
 * staging x). */
#  define LC_ODDS_2 1, 3
#  define LC_ODDS_4 LC_ODDS_2, 5, 7
#  define LC_ODDS_8 LC_ODDS_4, 9, 11, 13, 15
#  define LC_ODDS_16 LC_ODDS_8, 17, 19, 21, 23, 25, 27, 29, 31
#  if defined(__clang__)
#    define LC_PICK_ODDS(a, b, IVEC, V) __builtin_shufflevector(a, b, LC_ODDS_##V)
#  else
#    define LC_PICK_ODDS(a, b, IVEC, V) __builtin_shuffle(a, b, (IVEC){LC_ODDS_##V})
#  endif
#  define LC_ROW_PAIR(SUFFIX, T, I, W)                                                   \
static inline void lc_row_pair_##SUFFIX(T *row0, T *row1, const T *src, ptrdiff_t m,    \
                                        ptrdiff_t lo0, ptrdiff_t hi0, ptrdiff_t lo1,    \
                                        ptrdiff_t hi1)                                  \
{                                                                                       \
    typedef I ivec __attribute__((vector_size(LC_VEC_BYTES)));                          \
    typedef I uivec __attribute__((vector_size(LC_VEC_BYTES), aligned(sizeof(T))));     \
    ivec iota = {LC_IOTA_##W};                                                          \
    for (ptrdiff_t j = 0; j < m; j++, iota += (I)(W)) {                                 \
        ivec a = *(const uivec *)(src + 2 * j * (W));                                   \
        ivec b = *(const uivec *)(src + 2 * j * (W) + (W));                             \
        ivec ev = LC_PICK_EVENS(a, b, ivec, W), od = LC_PICK_ODDS(a, b, ivec, W);       \
        *(uivec *)(row0 + j * (W)) = ev & ((iota >= (I)lo0) & (iota < (I)hi0));         \
        *(uivec *)(row1 + j * (W)) = od & ((iota >= (I)lo1) & (iota < (I)hi1));         \
    }                                                                                   \
}
#  define LC_ROW_OF(SUFFIX, T, I, W) LC_ROW(SUFFIX, T, I, W) LC_ROW_PAIR(SUFFIX, T, I, W)
#  define LC_DEFINE_ROW_4(SUFFIX, T) LC_ROW_OF(SUFFIX, T, int, LC_LANES_4)
#  define LC_DEFINE_ROW_8(SUFFIX, T) LC_ROW_OF(SUFFIX, T, long long, LC_LANES_8)
#  define LC_DEFINE_ROW(SUFFIX, T, BYTES) LC_DEFINE_ROW_##BYTES(SUFFIX, T)
#else
#  define LC_DEFINE_EVENS(SUFFIX, T, BYTES)                                             \
static void lc_evens_##SUFFIX(T *dst, const T *src, ptrdiff_t n, ptrdiff_t avail)       \
{                                                                                       \
    (void)avail;                                                                        \
    for (ptrdiff_t e = 0; e < n; e++) dst[e] = src[2 * e];                              \
}
#  define LC_DEFINE_ROW(SUFFIX, T, BYTES)                                               \
static void lc_row_##SUFFIX(T *dst, const T *src, ptrdiff_t lo, ptrdiff_t hi)           \
{                                                                                       \
    for (ptrdiff_t e = 0; e < (ptrdiff_t)(LC_VEC_BYTES / sizeof(T)); e++)               \
        dst[e] = e >= lo && e < hi ? src[e] : 0;                                        \
}                                                                                       \
static void lc_row_pair_##SUFFIX(T *row0, T *row1, const T *src, ptrdiff_t m,           \
                                 ptrdiff_t lo0, ptrdiff_t hi0, ptrdiff_t lo1, ptrdiff_t hi1) \
{                                                                                       \
    for (ptrdiff_t e = 0; e < m * (ptrdiff_t)(LC_VEC_BYTES / sizeof(T)); e++) {         \
        row0[e] = e >= lo0 && e < hi0 ? src[2 * e] : 0;                                 \
        row1[e] = e >= lo1 && e < hi1 ? src[2 * e + 1] : 0;                             \
    }                                                                                   \
}
#endif

/* lc_phases_T: dst[pw * plane + e] = src[e * sw + pw] for pw < sw and e < n: the sw phases of
 * stride sw of a run of a row for the stagings (strides 3 and 4: a patch embedding's or a
 * ConvNeXt stem's 4x4 stride 4, an AlexNet stem).  For sw 3 and 4 each phase gets its own
 * restrict pointer, so that the compiler reads the run once, in whole vectors, and splits the
 * lanes by shuffles; phase by phase with a strided scalar load (fill_row) took 0.27 ns an
 * element against 0.07 on rows of 96 to 384 in cache, and a third of a 64 -> 64 3x3 stride-3
 * layer's forward pass.  Other strides element by element. */
#define LC_PHASES_3(T)                                                                   \
    for (ptrdiff_t e = 0; e < n; e++) {                                                 \
        d0[e] = src[3 * e]; d1[e] = src[3 * e + 1]; d2[e] = src[3 * e + 2];             \
    }
#define LC_PHASES_4(T)                                                                   \
    for (ptrdiff_t e = 0; e < n; e++) {                                                 \
        d0[e] = src[4 * e]; d1[e] = src[4 * e + 1]; d2[e] = src[4 * e + 2];             \
        d3[e] = src[4 * e + 3];                                                         \
    }
#define LC_DEFINE_PHASES(SUFFIX, T)                                                      \
static void lc_phases3_##SUFFIX(T *LC_RESTRICT d0, T *LC_RESTRICT d1, T *LC_RESTRICT d2, \
                                const T *LC_RESTRICT src, ptrdiff_t n)                  \
{                                                                                       \
    LC_PHASES_3(T)                                                                      \
}                                                                                       \
static void lc_phases4_##SUFFIX(T *LC_RESTRICT d0, T *LC_RESTRICT d1, T *LC_RESTRICT d2, \
                                T *LC_RESTRICT d3, const T *LC_RESTRICT src, ptrdiff_t n) \
{                                                                                       \
    LC_PHASES_4(T)                                                                      \
}                                                                                       \
static inline void lc_phases_##SUFFIX(T *dst, ptrdiff_t plane, const T *src, ptrdiff_t n, \
                                      ptrdiff_t sw)                                     \
{                                                                                       \
    if (sw == 3) {                                                                      \
        lc_phases3_##SUFFIX(dst, dst + plane, dst + 2 * plane, src, n);                 \
    } else if (sw == 4) {                                                               \
        lc_phases4_##SUFFIX(dst, dst + plane, dst + 2 * plane, dst + 3 * plane, src, n); \
    } else {                                                                            \
        for (ptrdiff_t pw = 0; pw < sw; pw++)                                           \
            for (ptrdiff_t e = 0; e < n; e++) dst[pw * plane + e] = src[e * sw + pw];   \
    }                                                                                   \
}

/* lc_put_T: dst[i * ldd + v * ds] (=, or += where add) tile[i * width + u + v] for i < rows,
 * v < n, ds 1 or 2, and no other element of dst written: a run of columns of a computed tile
 * (rows of width elements, stored vector by vector) into its place in each destination row,
 * whose elements between (ds = 2: a stride-2 input gradient's other phase) may be another
 * thread's.
 * AVX-512 (LC_PUT_RUNS): up to W (ds = 1) or W / 2 (ds = 2) columns at a time, taken by a
 * lane permutation from the two whole vectors of the tile row that hold them -- loads of
 * exactly what the tile stored, which the CPU forwards from its stores (a load across two of
 * them waits for both to reach the cache: 8.2 ns against 4.4 ns a round here) -- and put by
 * one masked store; the permutation and the mask are the same for every row, the rows the
 * inner loop (a few instructions a row).  Element by element, the runs of a stride-2 input
 * gradient's tiles (14 of a 28-wide row) were a quarter of such a layer's time (160 channels
 * in groups of 16), and lane work set up per row and run as much again.
 * Not inlined: inlined in the tiles' loop, it made GCC stop inlining the tile there (a
 * dense weight gradient by columns 8 % slower).  Elsewhere the loops of tiled_product.pxi's
 * copy_run do it. */
#if defined(__AVX512F__)
#  include <immintrin.h>
#  define LC_PUT_RUNS 1
#  define LC_LANE_IDS_32 _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)
#  define LC_LANE_IDS_64 _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0)
#  define LC_PUT(SUFFIX, T, BITS, MASK, W, EVEN)                                         \
__attribute__((noinline))                                                               \
static void lc_put_##SUFFIX(T *dst, ptrdiff_t ldd, ptrdiff_t ds, const T *tile,         \
                            ptrdiff_t width, ptrdiff_t rows, ptrdiff_t u, ptrdiff_t n,  \
                            int add)                                                    \
{                                                                                       \
    const __m512i ids = LC_LANE_IDS_##BITS;                                             \
    /* lane j of a store takes column j / ds of the chunk */                            \
    const __m512i take = ds == 2 ? _mm512_srli_epi##BITS(ids, 1) : ids;                 \
    const ptrdiff_t most = (W) / ds;                                                    \
    while (n > 0) {                                                                     \
        ptrdiff_t c = n < most ? n : most, s = u % (W);                                 \
        const T *a = tile + u - s, *b = tile + (u + c - 1) / (W) * (W);                 \
        __m512i idx = _mm512_add_epi##BITS(take, _mm512_set1_epi##BITS(s));             \
        MASK m = (MASK)((1ull << (c * ds)) - 1);                                        \
        if (ds == 2) m &= (MASK)(EVEN);                                                 \
        for (ptrdiff_t i = 0; i < rows; i++) {                                          \
            __m512i v = _mm512_permutex2var_epi##BITS(                                  \
                (__m512i)*(const lc_uvec_##SUFFIX *)(a + i * width), idx,               \
                (__m512i)*(const lc_uvec_##SUFFIX *)(b + i * width));                   \
            if (add)                                                                    \
                v = (__m512i)((lc_vec_##SUFFIX)v + (lc_vec_##SUFFIX)                    \
                              _mm512_maskz_loadu_epi##BITS(m, dst + i * ldd));          \
            _mm512_mask_storeu_epi##BITS(dst + i * ldd, m, v);                          \
        }                                                                               \
        dst += c * ds;                                                                  \
        u += c;                                                                         \
        n -= c;                                                                         \
    }                                                                                   \
}
#  define LC_DEFINE_PUT_4(SUFFIX, T) LC_PUT(SUFFIX, T, 32, __mmask16, 16, 0x5555)
#  define LC_DEFINE_PUT_8(SUFFIX, T) LC_PUT(SUFFIX, T, 64, __mmask8, 8, 0x55)
#  define LC_DEFINE_PUT(SUFFIX, T, BYTES) LC_DEFINE_PUT_##BYTES(SUFFIX, T)
#else
#  define LC_PUT_RUNS 0
#  define LC_DEFINE_PUT(SUFFIX, T, BYTES)                                               \
__attribute__((noinline))                                                               \
static void lc_put_##SUFFIX(T *dst, ptrdiff_t ldd, ptrdiff_t ds, const T *tile,         \
                            ptrdiff_t width, ptrdiff_t rows, ptrdiff_t u, ptrdiff_t n,  \
                            int add)                                                    \
{                                                                                       \
    for (ptrdiff_t i = 0; i < rows; i++)                                                \
        for (ptrdiff_t v = 0; v < n; v++) {                                             \
            T *d = dst + i * ldd + v * ds, x = tile[i * width + u + v];                 \
            *d = add ? *d + x : x;                                                      \
        }                                                                               \
}
#endif

#endif  /* LOOPCONV_MICROKERNEL_H */
