# Tiled (matrix-multiply) loops for the three passes of a convolution.
#
# Included by tiled_baseline.pyx, tiled_x86_64_v3.pyx and tiled_x86_64_v4.pyx: the same loops
# compiled for several instruction sets (setup.py sets the flags; loopconv/_loops/__init__.py
# chooses one at import from the CPU's features).  This file holds what all the steps share (the
# layout below, the blocking sizes; the element types and their register tiles come from
# elements.pxd) and includes the steps in the order they build on each other:
#     tiled_stage.pxi     staging: the padded, phase-split copy of one (image, group) slice
#     tiled_product.pxi   the forward-style product (forward pass and input gradient)
#     tiled_weight.pxi    the weight gradient: partial products and their sum
#     tiled_entry.pxi     the Python-facing entry points, which set up and run the above
#     depthwise.pxi       the loops for few channels per group, on the same staging
# (Cython's include is textual: a later file may use any name of an earlier one.)
#
# Layout: every array is C-contiguous and five-dimensional
#     input   x  (N, C, D, H, W)        weight  w  (O, C // G, KD, KH, KW)
#     output  y  (N, O, OD, OH, OW)
#     OD = (D + pd_before + pd_after - dd * (KD - 1) - 1) // sd + 1
# (likewise H and W).  1-D and 2-D convolutions are these loops with D = KD = 1 (and H = KH = 1).
# Index names: n image, g group, c input channel, o output channel, (kd, kh, kw) tap,
# (od, oh, ow) output pixel; Cg = C // G and Og = O // G channels per group.
#
# Each pass is a matrix product per image n and group g, with k = (c, kd, kh, kw), p an output
# pixel and i an input pixel:
#     forward        y[o, p]  = sum_k w[o, k] * xcol[k, p]
#     weight grad    dw[o, k] = sum_{n, p} dy[o, p] * xcol[k, p]
#     input grad     dx[c, i] = sum_{o, taps} w[o, c, taps] * dy[o, (i + pad - tap * dil) / stride]
#
# The im2col matrix xcol is never formed.  Instead each (image, group) slice of the source is
# copied into a per-thread "staged" array: zero-padded, and split by stride phase, so that
#     staged[c, phase, a, b, e] = x[c, a*sd + pd - lead_d, b*sh + ph - lead_h, e*sw + pw - lead_w]
# (zero outside x).  Tap (kd, kh, kw) of output (od, oh, ow) is then staged element
#     [c, phase(tap), od + kd*dd // sd, oh + kh*dh // sh, ow + kw*dw // sw],  phase = tap*dil % s
# so along the flattened staged grid q = (od * Hq + oh) * Wq + ow every row of xcol is a
# contiguous run of the staged array, at an offset that depends on the tap alone.  The register
# tile (microkernel.h) reads those runs in place: no packing of the large operand.  Where the
# copy would change nothing (no padding, stride 1, as for a 1x1 convolution) the tiles read the
# source itself.  Grid columns with oh >= OH or ow >= OW ("junk") are computed and never stored,
# except where a phase's rows are whole vectors or halves, or (with AVX-512, A packed) any
# rows no vector spans more than two of (compact_phases): its tiles then take each vector (or
# half) from its own grid row, or from two by masked loads, and compute the valid columns
# alone.
# Along an axis of stride 1 the rows (and planes) share the padding's zeros: the windows that
# run past the end of a row read the zeros that start the next one (shared_zeros), so a row of
# a 3x3 kernel with padding 1 is W + 1 long, and the junk is one column a row.
# The weight gradient stages blocks of small images together, the images inside each (channel,
# phase): staged[c, phase, n, a, b, e], so that along a row of xcol the grid columns of one
# image are followed by those of the next (tiled_weight.pxi); that is always a copy.  A large
# slice (BAND_SLICE_BYTES) is staged in bands of rows of the grid instead (set_row_band): each
# reader stages the rows r0 .. r0 + band_rows - 1 of (a * Hq + b) that its columns and their
# taps reach, staged[c, phase, r - r0, e], and reads them at its columns less r0 * Wq.
#
# The input gradient is split by stride phase.  Along one axis, input index i = r + s * t with
# phase r = i mod s receives from tap k exactly when (r + pad - k * dil) is a multiple of s, and
# then from output index t + (r + pad - k * dil) / s: for each phase a stride-1 product of the
# staged dy with that phase's taps, written to every s-th input pixel.  Phases without taps (rows
# and columns that no window reaches) get zeros, plus the bias.  Each output element is written
# by one thread, and every sum has an order fixed by the problem alone.

from cython.parallel cimport parallel, prange, threadid
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

import math
import threading

import numpy as np

from loopconv._loops import direct

from loopconv._loops.common cimport (await_work, claim_work, end_inside, first_inside,
                                     flush_subnormals, fpstate, publish_work, restore_fpstate,
                                     round_up, work_done)
# the element types, their kernels and the tile shapes of this build
from loopconv._loops.elements cimport (LC_ISA, LC_DW_OB, LC_DWC_PX, LC_KR_D, LC_MR_A,
                                       LC_MR_A1, LC_MR_B, LC_NV_B, lc_prefetch,
                                       LC_OR_D, LC_PF_A, LC_PF_NEAR_B, LC_PUT_RUNS, LC_ROW_MASKS,
                                       LC_VEC_BYTES,
                                       block_put, dw_copy,
                                       dw_dots, dw_rows, dwc_copy, dwc_dotruns, dwc_runs,
                                       element, evens, put_run, short_row, split_phases,
                                       short_row_pair, stream, tile_a, tile_b,
                                       dots, down, tile_d, tile_e, tile_g, tile_gc, tile_m,
                                       tile_p, tile_r, tile_v,
                                       transpose_at, transpose_block, typecode)


# ---------------------------------------------------------------------------------------------
# Blocking: rows of A per pass over the tiles (KC), grid columns per work item of the forward-
# style product (NCB_TILES tiles of NR), reduction length per weight-gradient step (PC).  The
# measurements behind these sizes are in benchmarks/README.md ("History of the tiled loops").

cdef enum:
    KC = 384
    # SUM_BLOCKS: a product whose A has more than this many blocks of KC columns keeps the sums
    # of its grid tiles that are not whole in the item's rows until the last block
    # (product_tile), rather than adding each block's into dst run by run (lc_put: 6 % of 3x3
    # 256 -> 256 on 56x56 at batch 1).  Old / new, fastest of three alternating runs, float32
    # one thread: 3x3 512 on 28x28 and 256 on 56x56 at batch 1 1.02-1.07x, 256 on 14x14 at
    # batch 8 1.00-1.03x, 3x3x3 128 on 16^3 1.00-1.04x, 1x1 2048 -> 512 on 14x14 1.03-1.08x
    # (two threads 1.02-1.09x, float64 0.96-1.11x, AVX2 0.96-1.07x); from two blocks on, 64
    # channels on 224x224 (two blocks) 0.97x
    SUM_BLOCKS = 3
    # ROW_PIECES: Phase.pieces of a compact phase whose vectors each come from two grid rows by
    # masks (phase_pieces)
    ROW_PIECES = 3
    NCB_TILES = 8
    # PC: float32; float64 half of it, so that the packed dy panel (two vectors of columns)
    # and the eight rows of x it meets stay within L1
    PC = 256
    # PC_D_BYTES: per row, for lc_tile_d (512 float32 or 256 float64 columns): its OR_D packed
    # rows of dy stay in L1 over the row panels (larger blocks went back to L2 between row
    # panels), and the lanes are summed once per call
    PC_D_BYTES = 2048
    MAX_NR = 64     # at least the columns of any forward-style tile
    # PIX_CB: pixel tiles run their columns k in blocks of PIX_CB channels, tap by tap within
    # a block (blocked_column), so that a tap that reads only padding for all of a tile's
    # pixels is a run of k to skip.  All the channels tap by tap cost 8-19 % (3x3 on 14x14
    # and 7x7 with 256 and 512 channels at batch 8, DeepLab's dilation 12): each k read other
    # cache lines; blocks of 16 or 64 channels 0-4 %
    PIX_CB = 64
    # PIX_SKIP_COMPACT: the share of skipped (tile, tap) pairs from which a compact grid
    # (phase_pieces), whose tiles compute no junk, is tried as pixel tiles (new_geometry;
    # PIX_SKIP_PERCENT below): at 8 %, 3x3x3 on 8x32x32 and 16^3 (11-12 % of their pairs) took
    # pixel tiles, as fast with AVX-512, 0.88-0.90x with AVX2
    PIX_SKIP_COMPACT = 15
    # PIX_SKIP_COMPACT_WIDE: the same for kernels of more taps than a size_t has bits (their
    # masks by axis, PIX_TAPS).  Against the compact grid (float32, one thread, forward /
    # input gradient): V-Net's 5x5x5 on 8x8x8 (33 % of the pairs) 1.29 / 1.28x at batch 2;
    # on 16x16x16 (17 %) 0.86 / 0.85x with 64 channels, 0.95 / 0.92x with 32
    PIX_SKIP_COMPACT_WIDE = 25
    # PIX_TAPS: room for the taps of a phase that pixel tiles skip by.  A pixel's mask of the
    # taps that reach the source is a size_t: a bit a tap for fewer than 8 * sizeof(size_t)
    # taps; for more (5x5x5 kernels: 125), a bit per tap of each axis, which the taps' own
    # masks (tap_bits) then test, up to PIX_TAPS taps whose axes' taps fit in a size_t.
    # The padding reads of a pixel are those of its axes (the staged grid is a padded box),
    # so the masks group the pixels as the taps' own bits would; a tile's union of them marks
    # the product of its axes' unions, which can keep a tap that reads padding for all its
    # pixels (never one that reads the source).  Measured on V-Net's 5x5x5 layers (benchmarks/
    # README.md, History: "Taps skipped on 5x5x5 kernels").
    PIX_TAPS = 1024
    # PIX_WIDE_PIXELS: a forward pass with such a kernel skips taps only over this many output
    # pixels or more (all images): its weight is packed into the blocks' order at every call
    # (pack_panels), for so many taps 2.4 times as long as in its own order.  256 -> 256 5x5x5
    # on 4x4x4 at batch 2 (128 pixels, a 31 MB weight; 51 % of the pairs skipped) 0.93x, the
    # packing half its time; 128 channels on 8x8x8 at batch 1 (512) 1.24x
    PIX_WIDE_PIXELS = 512
    # PIX_KC: pixel tiles sum A's columns in blocks of this many (the forward-style tiles in
    # blocks of KC), each block's tile added into the output transposed (store_pixels); a
    # block of a weight panel, PIX_KC rows of NR channels, is 288 KiB, within L2.  Against KC
    # (A/B, float32 one / two threads): 3x3 on 7x7 512 -> 512 at batch 8 forward 1.05-1.06 /
    # 1.05, input gradient 1.05-1.09 / 1.08, 3x3x3 on 8^3 384 -> 128 at batch 1 1.03-1.07 /
    # 0.96-1.10, the DCGAN's 8x8 -> 16x16 layer at batch 32 1.06 / 1.06, 3x3 on 14x14 and
    # 4x4x4 1.02-1.07; 768: about half of that; float64 1.0-1.04
    PIX_KC = 1536
    # PIX_PREFETCH_BYTES: pixel tiles ask for their pixels' lines LC_PF_ROWS columns ahead
    # where a staged slice (one image's, or one group's) is larger than this, half as much again
    # as an L2, so that it is read from L3 (one thread, old / new, fastest of three to five
    # alternating runs): R3D-18's 128 -> 256 3x3x3 stride 2 on 8x28x28 forward (4.6 MB staged
    # in float32) 1.09-1.14x in three runs, float64 1.16x; DeepLab's rate 12 on 33x33 forward
    # (4.1 MB) 1.02-1.06x.  Asked for from 2 MiB, the 3-D U-Net's 384 -> 128 on 8^3 in float64
    # (2.5 MB) ran 0.95-0.96x; asked for everywhere, its float32 8^3 layers (0.2-1.2 MB, in L2)
    # 0.89-0.97x; all eight pixels' lines, 0.93x over the suite's pixel-tile layers
    PIX_PREFETCH_BYTES = 3145728
    # PIX_SPAN: pixel tiles that skip taps group the pixels of up to this many images of a work
    # item by their mask together (list_pixels), so that the few pixels of a mask in one image
    # (a 4x4x4 output's corners, edges and faces) fill tiles with those of the next: 3x3x3 on
    # 4x4x4 skips 35 % of its (tile, tap) pairs rather than 25 % (forward and input gradient at
    # batch 2 1.09-1.12x, at batch 4 1.10x), 3x3 on 7x7 16 % rather than 4 % (512 channels at
    # batch 8 and 256 at batch 16, forward and input gradient 1.05-1.07x on one thread).  A tile
    # then reads the lines of as many images at each k: pix2pix's 4x4 stride-2 layer onto 2x2 at
    # batch 8 skips 44 % of its taps grouped over 8 images, in the same time as none over one
    PIX_SPAN = 4
    # DENSE_SHORT: dense products with rows of one vector up to this many, for at most
    # LC_MR_B images, run with vectors along the outputs (dense_short)
    DENSE_SHORT = 2
    # STREAM_ROWS: dense_input for at most this many images, of a weight of STREAM_MIN_BYTES
    # or more whose rows have STREAM_ROW_BYTES or more, reads w's rows one after another
    # (stream_input), by blocks of at most STREAM_BYTES of each row, split down to
    # STREAM_SPLIT bytes for the threads.  Against lc_tile_b (float32 / float64, one thread,
    # fastest of two alternating runs): a GAN's first layer (100 -> 512, 1x1 to 4x4) at batch
    # 1 2.35 / 2.64x, at batch 2 2.14 / 1.59x; 256 x 4096 2.30 / 2.50x, 1024 x 2304 1.64 /
    # 1.21x, 512 x 1000 1.26 / 1.03x; at batch 4 1.00 (lc_tile_b's four rows are no longer
    # bound by B), on rows of 48 elements 0.90 / 0.95 (few independent sums: each element's
    # chain of FMAs through memory; 1152 -> 48 at batch 2 0.92 / 0.76), hence the bounds.
    # Blocks of 8 KiB against 2, 4 and 16: within noise, 8 the best on float64 and large w.
    # With AVX2 (x86-64-v3 on the same machine), whose lc_tile_b asks for nothing ahead and did
    # not stall so: 0.86-2.0 in float32, 0.78-1.45 in float64, geometric mean 1.08
    STREAM_ROWS = 2
    # STREAM_OUT: stream_forward takes 1x1 layers to this many output channels or fewer
    # (`loopconv._loops.HEAD_OUT`)
    STREAM_OUT = 4
    # HEAD_CHUNK: the pixels of a work item of head_weight
    HEAD_CHUNK = 4096
    STREAM_ROW_BYTES = 2048
    STREAM_MIN_BYTES = 1 << 18
    STREAM_BYTES = 8192
    STREAM_SPLIT = 1024
    # ALIAS_BYTES: staged channels whose size in bytes is a multiple of this get a gap of a
    # cache line (set_stage_images); SPREAD_ROWS: forward-style products of at least this many
    # rows (output channels per group) copy such a source rather than read it in place.  With
    # the copy, 1x1 layers on 32x32 and 64x64 at 32 and 48 output channels 1.04-1.22x faster,
    # at 16 0.81x, a 32 -> 1 channel head on 64^3 0.67x.  SPREAD_BYTES, SPREAD_PANELS: a slice
    # larger than SPREAD_BYTES (an L2's worth) is copied only for a product of SPREAD_PANELS
    # panels of tile rows or more: the copy streams from L3 or memory, and the evictions it
    # saves grow with the panels that read each row of B.  Read in place against the copy
    # (batch 4, 1x1 layers, fastest of three alternating runs), AVX-512 float32 one thread: on
    # 128x128 64 -> 32 1.29-1.37x, 128 -> 32 1.51x, 64 -> 48 1.18x, 128 -> 48 1.31x (two
    # threads 1.26x), 64 -> 64 1.04x, 64 -> 128 1.01x, 128 -> 128 0.99x, the input gradients
    # of 32 -> 64 and 32 -> 128 1.33x and 1.42x; 32 -> 32 on 64^3 1.62x (two threads 1.70x);
    # 256 -> 256 on 32^3 (the case behind the gap) 0.94-0.96x; float64 64 -> 32 1.51x, 64 ->
    # 64 1.14x.  With AVX2 (four rows a panel) 64 -> 32 0.92x, 64 -> 64 0.89x, 128 -> 96 0.72x
    ALIAS_BYTES = 2048
    # BAND_ROWS: a 1x1 product of at least this many rows (per group) reads a source whose
    # channels alias as bands (set_band).  Bands against reading in place or the spread copy
    # (float32 one thread, fastest of three alternating runs): 64 -> 64 on 256x256 at batch 1
    # 1.25x (forward and input gradient), 128 -> 128 on 128x128 1.19-1.22x, 256 -> 256 on 32^3
    # 1.31-1.37x, at batch 4 on 128x128 64 -> 128 1.15x and 1.33x (input gradient), input
    # gradients of 64 rows 1.20-1.25x (64 -> 16, 64 -> 21, 64 -> 32, 64 -> 48), 128 -> 32's
    # 1.16x, 32 -> 64 forward 1.23x, 48 rows 1.09-1.13x (48 -> 48 on 256x256 at batch 1, 0.68
    # of PyTorch before); of fewer rows most lost: 32 0.78-1.08x, 24 0.87x, 16 to 21 0.74-0.97x,
    # one (a 32 -> 1 head on 64^3) 0.76x: fewer panels of rows share each band's copy.
    # BAND_CHANNEL_BYTES: a slice within SPREAD_BYTES whose channels are at most this many
    # bytes apart is copied whole (set_stage_images' gap) instead: each work item copies its
    # band, and at batch 1 a column block's rows are several items (4 to 8), while the whole
    # slice is copied once per thread and stays in L2.  Against bands (fastest of four to six
    # alternating runs, forward / input gradient): float32 one thread, 1x1 on 32x32 512 -> 128
    # 1.83 / 1.08x, 64 -> 128 1.38 / 1.40x, on 16x32 512 -> 512 1.28 / 1.26x, 1x1x1 on 8^3
    # 1024 -> 256 2.00 / 1.12x, 256 -> 256 1.32 / 1.26x, kernel 1 on 1024 samples 512 -> 512
    # 1.23 / 1.10x, a GAN's 4x4 stride-2 transposed layer from 8x8 as columns (their 1x1
    # product) 1.19x; two threads 1.05-1.36x (the GAN layer 0.99x); float64 1.15-1.35x.
    # Channels 16 KiB apart kept bands: 128 -> 128 on 64x64 and 128 -> 64 on 16^3 copied whole
    # ran 0.85-0.98x
    BAND_CHANNEL_BYTES = 8192
    BAND_ROWS = 48
    SPREAD_ROWS = 32
    SPREAD_BYTES = 2097152
    SPREAD_PANELS = 8
    # STAGE_AHEAD: elements of the next source channel that staging asks for (prefetches)
    # before it stages a channel.  Staging a stride-2 slice ran at a third of a copy's speed,
    # waiting for the first line of each short source row: ResNeXt's stride-2 grouped 3x3 on
    # 28x28 at batch 8, forward 1.15x and weight gradient 1.1x faster so (one and two threads)
    STAGE_AHEAD = 2048
    # SHARED_STAGE_BYTES: staged slices of at least this many bytes are staged once by all
    # threads where the threads share them (shares_slices), in about SHARED_PARTS parts a
    # thread (stage_shared).  Against each thread staging every slice it works on (two
    # threads, the same process switching between the two on every call, fastest of 15-30,
    # forward / input gradient, batch 1 unless said): 64 -> 64 3x3 on 128x256 1.23 / 1.23,
    # on 224x224 1.26 / 1.28, on 512x512 1.12 / 1.11, 3 -> 32 stride 2 on 512x1024 1.18 /
    # 1.56, 64 -> 128 stride 2 on 208x208 1.11 / 1.06, 32 -> 64 3x3x3 on 64^3 1.06 / 1.12,
    # 64 -> 64 3x3 stride 3 on 96x96 1.18 / 1.00; slices of 256 KiB to 1 MiB (ResNet's 3x3 on
    # 56x56 and 28x28, 3x3x3 on 16^3, batch 3 on 28x28) 0.99-1.03; smaller slices (7x7 to
    # 32x32) 0.93-1.03, left as they were
    SHARED_STAGE_BYTES = 262144
    SHARED_PARTS = 4
    # SHARED_MAX_BYTES: at most this many bytes of staged slices or blocks in all are staged
    # once before a product (shares_slices; an odd batch of large 3-D volumes stays per
    # thread, rather than keeping all of them staged in scratch), or before a weight gradient,
    # where its items would each stage them (weight_shares_blocks): its items of one chunk
    # split the rows k into blocks, and each staged all the chunk's images.
    # Old / new, fastest of two alternating rounds, one / two threads: 512 -> 16 3x3 on 14x14
    # at batch 16 1.11 / 1.11, on 7x7 at batch 32 1.23 / 1.21, 256 -> 16 on 28x28 at batch 8
    # 1.13 / 1.15, 512 -> 48 on 14x14 1.06 / 1.03; others 0.97-1.02
    SHARED_MAX_BYTES = 33554432
    # SPLIT_STRIDE: the largest stride whose phases staging splits a row into in one pass
    # (split_row, lc_phases: strides 3 and 4); larger strides phase by phase
    SPLIT_STRIDE = 4
    # GATHER_COLUMNS: a forward-style product with fewer grid columns than this in all (images
    # times phases) reads the weight in place (lc_tile_g) instead of packing it: packing costs
    # about as much as PACK_COLUMNS columns of the product (in each phase), reading in place a
    # few per cent of it where A is narrow.  Not where the product is wide, GATHER_WORK grid
    # columns times columns of A or more (choose_tiles): with A packed, 3x3 on 14x14 at batch 3
    # and 4 with 256 to 1024 channels took pixel tiles, 1.08-1.13x faster (two threads
    # 1.08-1.11x), 3x3 on 16x16 at batch 3 a compact grid, 1.06-1.07x, and 3x3x3 on 8x8x8 from
    # 512 to 8 channels at batch 1 1.19x (one thread); 128 channels on 28x28 at batch 1 (840
    # columns of 1152) ran the same either way, as did wav2vec's stride-2 layer (799 of 1536),
    # which stay below
    # DOT_COLUMNS: the last columns of an item (after its tiles of NR) are summed column by
    # column where they hold at most this many valid columns (dot_columns); DOTS_ALONG_K and
    # DOTS_DOWN_ROWS name the two ways.  Three or more as dot products along k, 3x3 on 7x7
    # (seven columns) 0.84-0.88x; with vectors down the rows, 1x1 input gradients on 14x14
    # (four) 0.95-1.04x
    DOT_COLUMNS = 2             # at most 2: product_dots sums one pair
    # DOT_KEY: the entries that name a thread's gathered columns of an image (product_dots):
    # image and group, phase, the places in dst of its first and last column, elements
    # gathered
    DOT_KEY = 5
    DOTS_ALONG_K = 1
    DOTS_DOWN_ROWS = 2
    # SHORT_K_BYTES: forward-style items whose B for all of K and a block of NCB_TILES tiles
    # fits in this many bytes run SHORT_K_PANELS panels of rows at a time over all their
    # tiles (product_tiles), and may take whole rows as one block (whole_rows).  64 KiB
    # rather than 32 (K up to 42 in float32, 21 in float64): 32 -> 192 1x1 on 75x75 at batch 1
    # 1.21x faster (input gradient 1.24x), 24 -> 144 on 56x56 1.10x, 36 -> 64 on 8000 samples
    # 1.09x (two threads 1.05, 1.02, 1.14x); the others measured within 2 %
    SHORT_K_BYTES = 65536
    SHORT_K_PANELS = 4
    # WHOLE_ROW_BYTES: a forward-style product whose B for all of K and all the columns of each
    # phase fits in this many bytes (an L2's share) takes each phase's columns as one block
    # (whole_rows)
    WHOLE_ROW_BYTES = 262144
    # DY_ROWS_BYTES: the weight gradient takes dy_rows only where one step's packed x (the padded
    # rows k times the step's columns) fits in this many bytes: every block of output channels
    # reads all of it, from L2 while it fits (2 MiB on the machine measured), else from L3.
    # weight_cost, which counts each packed element once, chose dy_rows for 3x3 layers of many
    # channels at batch 1, where x read in place is faster (float32, one thread, fastest of
    # three alternating runs): 512 -> 512 on 28x28 (3.7 MiB packed) 1.39-1.47x (two threads
    # 1.48x, float64 1.32-1.39x), on 20x20 (3.9 MiB) 1.36-1.43x (float64 1.14-1.16x), 256 ->
    # 512 on 28x28 (1.8 MiB) 0.99-1.12x.  Below the limit dy_rows stays where it was chosen:
    # 128 -> 512 on 28x28 (0.9 MiB) with x in place 1.02x in float32 but 0.88x in float64 (1.05
    # MiB), wav2vec 2.0's positional convolution at batch 1 (1.2 MiB, four blocks of rows) 0.95x
    DY_ROWS_BYTES = 1572864
    GATHER_COLUMNS = 1024
    GATHER_WORK = 1400000
    PACK_COLUMNS = 34
    # STREAM_A_BYTES: a packed weight (a group's phase) larger than this, four L2s, comes from
    # L3 to each work item: its tiles ask for A's rows ahead (Product.stream_a,
    # LC_PREFETCH_A).  Old / new, float32 one thread, fastest of five alternating runs: 3x3
    # 512 -> 512 on 16x16 at batch 4 forward 1.03-1.09x, input gradient 1.12x, 1024 -> 512 on
    # 32x32 at batch 1 1.13x, float64 1.10-1.11x, two threads 1.02-1.07x; 1.2-1.3x in hours
    # when the machine's other work left less of the caches (512 -> 512 on 32x32 at batch 1
    # then ran at 116 GFLOP/s, and at 149 so, where 256 channels ran at 145).  Weights of
    # 4.7 MB gained nothing (256 -> 512 on 32x32 0.975x, 512 -> 256 on 64x64 1.03x, 256 ->
    # 256 in float64 1.0x), and where A stays in L2 (128 channels on 56x56) the tiles ran 1-3 %
    # slower when asked
    STREAM_A_BYTES = 8388608
    # PACK_BLOCK: columns of A packed together for all its panels (pack_panels); PACK_SERIAL:
    # elements of packed A below which one thread packs them all (a parallel region costs some
    # microseconds)
    PACK_BLOCK = 64
    # PACK_TAPS: elements of a panel's rows by taps that pack_phase_panel transposes at once,
    # on the stack (8 KiB in float64: the calling thread may have a small stack); PACK_AHEAD:
    # how many of w's rows further on it asks for their runs
    PACK_TAPS = 1024
    PACK_AHEAD = 8
    PACK_SERIAL = 1 << 15
    # PACK_ITEMS: pack_groups and pack_phases cut a panel into parts where they have fewer
    # (group, panel) pairs than this many a thread (pack_parts)
    PACK_ITEMS = 4
    # MIN_ITEMS: a forward-style product with fewer (image, group, column block) work items
    # than this splits its rows (output channels) too, into about ROW_ITEMS items in all, so
    # that batch 1 keeps every core busy; likewise the weight gradient with fewer (group,
    # chunk) items (into MIN_ITEMS).  ROW_ITEMS was 8: 1x1 layers at batch 1 with 10 or 14
    # panels of rows ran as 5 or 7 items, 3 + 2 or 4 + 3 on two threads (EfficientNet's
    # 480 -> 80 and 672 -> 112 on 14x14: 1.46-1.56x from the second core, 1.64-1.72x at 16)
    MIN_ITEMS = 8
    ROW_ITEMS = 16
    # Small images: a work item of the forward-style product takes up to MAX_IMAGES images,
    # so that it has about ITEM_COLUMNS grid columns for each panel of A it reads (a 1x1 input
    # of a GAN generator has 25 columns: A was read from L3 once per image and tile), while
    # their staged slices stay within STAGED_IMAGES elements
    MAX_IMAGES = 16
    ITEM_COLUMNS = 256
    STAGED_IMAGES = 1 << 18
    # The weight gradient stages small images in blocks (weight_images) whose grids fill at
    # most BLOCK_STEPS reduction steps: a thread stages a whole block for the steps of it that
    # it computes.  STEP_COLUMNS_A: what a step of lc_tile_a costs beyond its columns (the
    # tiles' C loads and stores), in columns; with 32 to 256 the choice took blocks that add
    # junk columns between images and ran slower (benchmarks/README.md)
    BLOCK_STEPS = 4
    STEP_COLUMNS_A = 8
    # ONE_STEP_BYTES, ONE_STEP_PANEL, ONE_STEP_STAGED: the weight gradient's reduction in one
    # step where its partial product would outgrow an L2 and the step's packed dy fits in one
    # (one_step)
    ONE_STEP_BYTES = 1 << 21
    ONE_STEP_PANEL = 1 << 20
    ONE_STEP_STAGED = 1 << 23
    # BAND_SLICE_BYTES, BAND_BYTES, BAND_REACH: the weight gradient reads a slice staged of at
    # least BAND_SLICE_BYTES in bands of rows of at most BAND_BYTES, each BAND_REACH times
    # what it stages again or more (set_weight_band)
    BAND_SLICE_BYTES = 1 << 23
    BAND_BYTES = 1 << 20
    BAND_REACH = 2
    # B_BLOCK_BYTES: the weight gradient's tiles take the packed dy (or x, where dy_rows) in
    # blocks of column tiles of at most this many bytes, each block against all the rows of
    # tiles of a call (weight_tiles); SPAN_BYTES: a reduction of one step writes the rows of
    # dw of about this many bytes of partial at a time (p.span)
    B_BLOCK_BYTES = 262144
    SPAN_BYTES = 262144
    # DIRECT_STEPS_BYTES: a weight gradient of dy_rows in several steps (an image a step) keeps
    # every step's packed x where together they fit in this many bytes, and writes its rows of
    # dw directly, summing all the steps for a span of rows at a time (split_weight_work)
    DIRECT_STEPS_BYTES = 1 << 20
    # the passes, for the geometry caches (tiled_entry.pxi, depthwise.pxi) and dw_suits
    PASS_FORWARD = 0
    PASS_INPUT = 1
    PASS_WEIGHT = 2

# PIXEL_WASTE: how much more the tiled product must compute than pixel_tiles for the latter
# (whose own speed is some 0.9-1.0 of the tiled product's; pixel_tiles_suit).  1.15 while pixel
# tiles were cut from single rows; 1.12 since they take any pixels of an item's images: 3x3 on
# 14x14 with 512 channels at batch 8 (1.14 in the model) 1.13x, with 256 (1.11: a last panel
# of one vector) 0.97-0.99x, 28x28 (1.08) 0.96-0.99x, 56x56 0.91-0.94x
cdef double PIXEL_WASTE = 1.12
# PIX_TRY: the share of skipped (tile, tap) pairs with which new_geometry tries a product as
# pixel tiles (to find the share they would skip); PIX_PACK_BYTES: see new_geometry
cdef double PIX_TRY = 0.99
# PIX_SKIP_PERCENT: pixel tiles skip taps where they would skip this share of their (tile,
# tap) pairs or more (skip_share, pixel_order), and other grids are tried as pixel tiles from
# this share of their pairs (new_geometry).  DeepLab's dilation 6 on 33x33 (21 %) 1.34x
# forward, 1.15x input gradient; at 10 % and 14 % (5x5 on 7x7, a strided dilated 3x3x3)
# 0.99-1.07.  With AVX-512, 8 rather than 15: the 3x3 dilation-2 layers on 28x28 of DeepLab's
# backbone (9 % of their pairs, 8-9 % skipped, and a grid of 30 columns a row of 28) 1.07-1.23x
# as pixel tiles, forward and input gradient, one and two threads, both dtypes, where they had
# run at 0.82-0.85 of PyTorch; layers already on pixel tiles that now skip 9-10 % (7x7 on 28x28,
# 3x3 on 12x12 and 10x10, stride-2 3x3 on 14x14 at batch 8) 0.99-1.10x.  With AVX2 (tiles of
# four pixels) the same layers gained as much, but others lost: ResNeXt's groups of 16
# channels on 14x14 at batch 8 0.81x, 3x3 on 14x14 with 256 channels 0.94x; it keeps 15
cdef Py_ssize_t PIX_SKIP_PERCENT = 8 if LC_VEC_BYTES == 64 else 15
# PIX_SKIP_COLUMNS: nor where a pixel would skip fewer columns of A than this (pixel_order): the
# masks and the grouping of the pixels, worked out for each work item (each group), cost about a
# hundred columns a pixel.  With 3x3 on 7x7 (16 % of the pairs), one thread, AVX-512 float32,
# forward and input gradient at batch 2-8, taps not skipped against skipped: ResNeXt's groups
# of 16, 24 and 32 channels (K 144-288: 23-46 columns skipped) 1.11-1.36x, groups of 64 and 64
# channels dense (92) 1.03-1.06x; 128 and 256 channels (184-369) 0.97-0.99x, 512 (737)
# 0.91-0.96x, 3x3x3 on 4x4x4 with 64 channels (570) 0.85x, 16 groups of 32 (285) 0.96-0.99x.
# (The grouped tiles' stores, pixel by pixel, were a tenth of the first; by runs with lc_put
# they took as long.)  A product tried as pixel tiles for the share (new_geometry) keeps them
# without skipping: 48 channels dilated 2 on 28x28 (39 columns) as fast either way, 7 % slower
# on the grid.
cdef double PIX_SKIP_COLUMNS = 128
cdef Py_ssize_t PIX_PACK_BYTES = 1 << 20
# COMPACT_WASTE: grid columns per valid pixel from which a phase whose rows are whole vectors
# computes its valid columns alone (compact_phases).  In one process against the grid's tiles
# (float32, one thread): 3x3x3 on 16^3 (1.125) 1.15-1.22x, on 32^3 (1.06) 1.05-1.13x; 3x3 on
# 32x32 at batch 8 (1.03) 1.05-1.18x; the input gradient of a 7x7 stride-2 stem (phases of
# 112x112, 1.009) 0.95x: the tiles' own offsets and three rows read at once cost about a per
# cent
cdef double COMPACT_WASTE = 1.02
# HALVES_WASTE: likewise for rows of half a vector (lc_tile_h, each vector from two rows: 3x3x3
# on 8^3 in float32 with AVX-512, 1.25, 1.04-1.44x); HALVES_COST: what its columns cost against
# whole vectors' (pixel_tiles_suit: with it, 8^3 with 128 and 384 channels leave pixel tiles
# for halves, 0.9-1.17x, about even)
cdef double HALVES_WASTE = 1.1
cdef double HALVES_COST = 1.05
# ROWS_WASTE: likewise for other rows (of VW - gcd(VW, width) lanes or more, so that no vector
# spans more than two of them) where A is packed, each vector from the two rows it spans by
# masked loads (lc_tile_r, LC_ROW_MASKS); ROWS_COST: what its columns cost against whole
# vectors'.  Against the grid (float32, one thread, fastest of alternating runs): 3x3 on 28x28
# at batch 2 and 8 (1.03 columns a pixel) 1.03-1.06x, stride 2 onto 28x28 at batch 8
# 1.02-1.05x, 56x56 at batch 1 (1.02) 1.01-1.04x, at batch 8 0.97-1.02x.  Not where A is read
# in place (as lc_tile_gc's tiles; batch 1 on 14x14 and 28x28, 1.07 and 1.03): 0.96-0.98x, even
# with the rows asked for ahead as the grid's tiles do (0.87x without).  ROWS_MIN_K: nor where A
# has fewer columns (few channels a group: ResNeXt's 3x3 layers of 8 channels a group on 28x28,
# K 72, 0.70-0.73x forward, 0.61-0.72x input gradient; 16 channels, K 144, 0.97-0.98x; 32,
# K 288, 1.02-1.03x).  ROWS_LANES: nor with vectors of fewer elements (float64 with AVX-512,
# where half as much junk goes per masked load: 3x3 on 14x14 at batch 4 0.84-0.90x, ResNeXt's
# stride-2 layer onto 7x7 0.90-0.93x)
cdef double ROWS_WASTE = 1.01
cdef double ROWS_COST = 1.03
cdef Py_ssize_t ROWS_MIN_K = 256
cdef Py_ssize_t ROWS_LANES = 16
# NARROW_COST: a one-vector tile of the forward-style product (LC_MR_B rows, one vector: of
# grid columns in the tiled product, of channels in pixel tiles) costs about as much as this
# many times its columns in full tiles: it broadcasts a row's LC_MR_B values of A for one
# vector of B instead of LC_NV_B, and its LC_MR_B sums barely cover the FMA latency
cdef double NARROW_COST = 1.5
# WEIGHT_WASTE: grid columns per valid pixel (junk included: the columns between rows, planes
# and images of a reduction step) from which the weight gradient sums over the valid columns
# only (lc_tile_m, the columns through a map).  Measured against lc_tile_a over all columns
# (float32 one and two threads, float64; min of alternating runs): 3x3x3 on 8x8x8 (1.52
# columns per pixel) 1.36-1.47x, on 16x16x16 (1.26) 1.21-1.23x, on 32x32x32 (1.13) 1.11x;
# 3x3 on 14x14 (1.13) 1.10-1.13x, on 28x28 (1.07) 1.07-1.08x, on 7x7 (1.24) 1.02-1.03x.  Those
# ratios are of the staging whose rows held both paddings; sharing them (shared_zeros) makes
# 8x8x8 1.25, 16x16x16 1.12, 14x14 1.07 and 28x28 1.03 (now summed over all columns: the same
# time within 4 %, alternating runs)
cdef double WEIGHT_WASTE = 1.05
# PACK_COST: what packing one element for the weight gradient's tiles (dy transposed, or x
# where dy_rows) or staging one costs, in tile rows times columns summed over one column.
# Measured (float32, AVX-512): packing dy took 27 % of EfficientNet-B3's 32 -> 192 1x1 on 75x75
# and its 36 x 192 tile products 54 %, 18 per element; staging blocks of five 14x14 images of
# 256 channels 15 % of that layer's time at batch 8 and its products 64 %, some 30 per element
# (staged blocks larger than L2), copies into L2 less.
cdef double PACK_COST = 16
# ROWS_K_COST: a weight gradient of rows k of x (dy packed) costs this many times its
# weight_cost against dy read in place with every step kept packed (p.direct) where it takes
# one step too, whose dw it then writes transposed from the partial (dy_rows copies rows), or
# where a step packs more dy than B_BLOCK_BYTES (read in blocks again for every row of tiles):
# set_weight.  Measured (rows k time over dy_rows', float32 one thread / two / float64): 1-D
# 1x1 512 -> 2048 over two 128-frame sequences 1.16 (against two single sequences), 1x1 1024
# -> 512 on 7x7 at batch 1 1.34 / 1.43 / 1.43, 1024 -> 16 on 49 frames 1.77 / 1.59 / 1.36,
# 512 -> 96 on 4x4x4 at batch 2 1.40 / 1.91 / 1.25, 192 -> 1152 on 7x7 at batch 4 1.14 / 1.49
# / 1.10, 112 -> 768 on 28x28 at batch 2 1.18 / 1.22 / 0.99, 3x3 on 3x3 1.0; with dy rows of
# many steps where the rows k take several of a narrow dy, 0.77-0.97 (64 channels on 28x28 at
# batch 4, 24 on 8x8x8), so not there
cdef double ROWS_K_COST = 1.1
# WIDEN_GAIN: a forward pass whose grid computes this many times the columns (in whole tiles
# and vectors, a dot-product column counted as DOT_EQUIVALENT) that the same product computes
# with the taps of each kernel column staged apart (widened_geometry) runs widened, where the
# multiply-adds saved are WIDEN_COPY_COST times the elements of the widened copy of x or more,
# and the copy takes WIDEN_BYTES at most.  The widened grid's rows are the output's (no junk
# between them), so 3x3 onto 7x7 computes 48 columns and one as a dot product instead of 64.
# Measured (batch 1, one thread, fastest of six to ten alternating runs, old / new), float32:
# 512 -> 512 on 7x7 (1.23 in the model, 316 multiply-adds saved per element copied)
# 1.11-1.13x (at batch 2, whose work items' images each run their own tiles, 1.16x), 1024 ->
# 1024 on 7x7 1.11-1.14x, 256 on 7x7 1.09x, 256 -> 512 stride 2 onto 7x7 (204) 1.09-1.13x,
# 512 -> 256 4x4 stride 2 onto 4x4 1.07x (float64 1.31x), 200 -> 192 3x3 dilated 2 along W on
# 9x7 1.24x (float64 1.25x); a GAN's 64 -> 128 4x4 stride 2 onto 8x8 (64 saved per element)
# 0.83-0.89x, the copy the larger part of a short pass; with a dot column counted as 3, 512
# on 5x5 in float64 (1.19) 0.98x.  As a (3, 1) convolution of the copy, 256 on 14x14 (1.08
# in the model) ran 0.99x, 128 on 28x28 0.98x, 64 on 56x56 0.96x: where B's rows of a tile
# outgrow L1, the taps along W, each in its own copy, no longer share cache lines
cdef double WIDEN_GAIN = 1.15
cdef Py_ssize_t DOT_EQUIVALENT = 4
cdef double WIDEN_COPY_COST = 128
cdef Py_ssize_t WIDEN_BYTES = 1 << 22


include "tiled_stage.pxi"
include "tiled_product.pxi"
include "tiled_weight.pxi"
include "tiled_entry.pxi"

# ---------------------------------------------------------------------------------------------
# Convolutions with few channels per group: depthwise.pxi (the same staging, the same flags).

include "depthwise.pxi"
