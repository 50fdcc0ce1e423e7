/*
 * The element types the compiled loops compute in: the kernels of microkernel.h (register
 * tiles, lane transposes) and depthwise.h, instantiated once per type.
 *
 * LC_ELEMENT(SUFFIX, T, BYTES) defines, for the C type T of BYTES bytes,
 * lc_tile_{b,g,a,d}_SUFFIX, lc_stream_SUFFIX, lc_lane_sums_SUFFIX, lc_transpose_SUFFIX,
 * lc_block_put_SUFFIX, lc_evens_SUFFIX, lc_phases_SUFFIX, lc_row_SUFFIX, lc_row_pair_SUFFIX,
 * lc_put_SUFFIX, lc_dw_*_SUFFIX and lc_dwc_*_SUFFIX.  A new type is one
 * line here, its member of the fused type and its kernel selections in elements.pxd, and its
 * place in the dtype policy (loopconv/_args.py).  The 512-bit lane transposes, the 256- and
 * 512-bit lane sums, the even- and odd-lane picks and the runs' lane indices exist for 4- and
 * 8-byte types (microkernel.h, LC_TRANSPOSE_SHUFFLES_4 and _8, LC_LANES_4 and _8,
 * LC_LANE_IDS_32 and _64); another size needs its own there.
 */
#ifndef LOOPCONV_ELEMENTS_H
#define LOOPCONV_ELEMENTS_H

#include "depthwise.h"

/* pixel tiles (tiled_product.pxi) keep the pointers to their pixels in an intp workspace */
_Static_assert(sizeof(const void *) == sizeof(ptrdiff_t), "pointers are not intp-sized");

/* tiled.pxi keeps per-tile tables of MAX_NR = 64 columns */
#define LC_ELEMENT(SUFFIX, T, BYTES)                                                      \
_Static_assert(sizeof(T) == BYTES, #T " is not " #BYTES " bytes");                        \
_Static_assert(LC_NV_B * LC_VEC_BYTES / BYTES <= 64, "forward-style tile wider than 64"); \
LC_DEFINE_TILES(SUFFIX, T, BYTES)                                                         \
LC_DEFINE_WEIGHT_TILES(SUFFIX, T)                                                         \
LC_DEFINE_STREAM(SUFFIX, T)                                                               \
LC_DEFINE_TRANSPOSE(SUFFIX, T, BYTES)                                                     \
LC_DEFINE_BLOCK_PUT(SUFFIX, T)                                                            \
LC_DEFINE_EVENS(SUFFIX, T, BYTES)                                                         \
LC_DEFINE_PHASES(SUFFIX, T)                                                               \
LC_DEFINE_ROW(SUFFIX, T, BYTES)                                                           \
LC_DEFINE_PUT(SUFFIX, T, BYTES)                                                           \
LC_DEFINE_DEPTHWISE(SUFFIX, T)

LC_ELEMENT(f32, float, 4)
LC_ELEMENT(f64, double, 8)

#endif  /* LOOPCONV_ELEMENTS_H */
