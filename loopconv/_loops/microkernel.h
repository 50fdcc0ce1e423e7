/*
 * The register tile of loopconv's matrix-multiply loops.
 *
 *     C[0:MR, 0:NR]  (=, or +=)  sum over k < kc of  A[k, 0:MR]^T  B[k, 0:NR]
 *
 * A is a packed panel: kc rows of MR values (one per output row of the tile).
 * B is a packed panel: kc rows of NR values (one per output column), NR = two SIMD vectors.
 * C is written row by row: row i starts at c + i * ldc and holds NR contiguous values.
 *
 * Why this is C and not Cython: the tile only runs at the machine's peak when its MR x 2
 * accumulators stay in registers for the whole k loop.  With the accumulators as plain
 * arrays, GCC 12 keeps them in registers for some instruction sets and element types and
 * spills them to the stack for others (measured: 4 GFLOP/s instead of 110 for float32 with
 * AVX2).  GCC/Clang vector types make the register tile explicit and portable: the same
 * source gives SSE2, AVX2+FMA or AVX-512 code depending on the flags it is compiled with
 * (see setup.py), and the loops below are still ordinary loops.
 *
 * Everything around the tile -- packing, blocking, threads -- is in tiled.pxi.
 */
#ifndef LOOPCONV_MICROKERNEL_H
#define LOOPCONV_MICROKERNEL_H

#include <stddef.h>

/* MR rows x 2 vectors of accumulators: 24 of 32 registers with AVX-512, 12 of 16 with AVX2. */
#if defined(__AVX512F__)
#  define LC_VEC_BYTES 64
#  define LC_MR 12
#  define LC_ISA "avx512"
#elif defined(__AVX2__)
#  define LC_VEC_BYTES 32
#  define LC_MR 6
#  define LC_ISA "avx2"
#elif defined(__SSE2__) || defined(__ARM_NEON) || defined(__aarch64__)
#  define LC_VEC_BYTES 16
#  define LC_MR 6
#  define LC_ISA "128-bit"
#else
#  define LC_VEC_BYTES 16
#  define LC_MR 4
#  define LC_ISA "scalar"
#endif

#define LC_NR_F32 (2 * LC_VEC_BYTES / 4)
#define LC_NR_F64 (2 * LC_VEC_BYTES / 8)

#if defined(__GNUC__) || defined(__clang__)
#  define LC_RESTRICT __restrict__

/* One definition for both element types.  The aligned(sizeof(T)) twin of the vector type is
 * for unaligned loads and stores (C rows start anywhere in the output). */
#  define LC_DEFINE_TILE(NAME, T)                                                        \
typedef T NAME##_vec __attribute__((vector_size(LC_VEC_BYTES)));                        \
typedef T NAME##_uvec __attribute__((vector_size(LC_VEC_BYTES), aligned(sizeof(T))));    \
static inline void NAME(ptrdiff_t kc, const T *LC_RESTRICT a, const T *LC_RESTRICT b,   \
                        T *LC_RESTRICT c, ptrdiff_t ldc, int beta)                      \
{                                                                                       \
    enum { W = LC_VEC_BYTES / sizeof(T) };                                              \
    NAME##_vec acc[LC_MR][2];                                                           \
    for (int i = 0; i < LC_MR; i++) {                                                   \
        acc[i][0] = (NAME##_vec){0};                                                    \
        acc[i][1] = (NAME##_vec){0};                                                    \
    }                                                                                   \
    for (ptrdiff_t k = 0; k < kc; k++) {                                                \
        NAME##_vec b0 = *(const NAME##_uvec *)(b + 2 * W * k);                          \
        NAME##_vec b1 = *(const NAME##_uvec *)(b + 2 * W * k + W);                      \
        for (int i = 0; i < LC_MR; i++) {                                               \
            T ai = a[LC_MR * k + i];                                                    \
            acc[i][0] += ai * b0;                                                       \
            acc[i][1] += ai * b1;                                                       \
        }                                                                               \
    }                                                                                   \
    for (int i = 0; i < LC_MR; i++) {                                                   \
        NAME##_uvec *ci = (NAME##_uvec *)(c + i * ldc);                                 \
        if (beta) {                                                                     \
            ci[0] += acc[i][0];                                                         \
            ci[1] += acc[i][1];                                                         \
        } else {                                                                        \
            ci[0] = acc[i][0];                                                          \
            ci[1] = acc[i][1];                                                          \
        }                                                                               \
    }                                                                                   \
}

#else  /* other compilers: the same tile as scalar loops (correct, not fast) */
#  define LC_RESTRICT
#  define LC_DEFINE_TILE(NAME, T)                                                        \
static void NAME(ptrdiff_t kc, const T *a, const T *b, T *c, ptrdiff_t ldc, int beta)   \
{                                                                                       \
    enum { NR = 2 * LC_VEC_BYTES / sizeof(T) };                                         \
    T acc[LC_MR][NR];                                                                   \
    for (int i = 0; i < LC_MR; i++)                                                     \
        for (int j = 0; j < NR; j++) acc[i][j] = 0;                                     \
    for (ptrdiff_t k = 0; k < kc; k++)                                                  \
        for (int i = 0; i < LC_MR; i++)                                                 \
            for (int j = 0; j < NR; j++) acc[i][j] += a[LC_MR * k + i] * b[NR * k + j]; \
    for (int i = 0; i < LC_MR; i++)                                                     \
        for (int j = 0; j < NR; j++)                                                    \
            c[i * ldc + j] = beta ? c[i * ldc + j] + acc[i][j] : acc[i][j];             \
}
#endif

LC_DEFINE_TILE(lc_tile_f32, float)
LC_DEFINE_TILE(lc_tile_f64, double)

#endif  /* LOOPCONV_MICROKERNEL_H */
