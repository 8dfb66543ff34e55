/* Winograd F(2x2, 3x3)'s transforms (called by conv/winograd.c, which
 * derives them; one source, kernels/ref/winograd_impl.h, compiled per ISA
 * folder).
 *
 * A block is the tile rows [r0, r1) of the batch, tile row r being tile row
 * r % th of image r / th; its tiles are numbered j = 0, 1, ... in that
 * order, tw per tile row. The plan (fc_wg_plan, made by conv/winograd.c)
 * holds the strides of the layouts below.
 *
 * wg_input: V = B^T d B of every channel of the block's tiles, written as
 *   the GEMM's packed B slivers of nr tiles, vp[((xi * slivers + j / nr) *
 *   C + c) * nr + j % nr] with xi's arrays v_stride apart; columns past the
 *   block's tiles in the last sliver are zero. rows: a workspace of
 *   row_floats.
 * wg_output: Y = A^T M A of the block, with M at m[xi * m_stride + k * ldm
 *   + j], to out (fc_wg_out); wg_output_pool: the same, pooled.
 * wg_grad: Yhat = A dY A^T of each output channel k, yhat[xi * m_stride +
 *   k * ldv + j]. rows: as wg_input's.
 *
 * Each works on a vector of tiles at a time, one per lane (8 in the
 * reference and AVX2 builds, 16 in AVX-512's), and may read up to that many
 * floats past the block's tiles in M (m_stride has room for them); the
 * plans pad for the widest, WG_MAX_TILES_PER_VEC.
 */
#ifndef FC_KERNELS_WINOGRAD_H
#define FC_KERNELS_WINOGRAD_H

#include <stdint.h>

#include "fastconv.h"

#define WG_XI 16 /* points of a 4x4 transformed tile */
#define WG_MAX_TILES_PER_VEC 16 /* the most tiles a table's transforms take at once */

/* Per-thread workspace slices start on their own cache lines. */
#define WG_LINE_FLOATS 16

typedef struct {
    fc_int th, tw;       /* tiles per image: rows, columns */
    fc_int rows;         /* tile rows per block */
    fc_int tiles;        /* tiles per (full) block: rows * tw */
    fc_int nblocks;      /* ceil(n * th / rows) */
    fc_int slivers;      /* NR-tile slivers per block */
    fc_int nks;          /* MR-row slivers of K */
    fc_int v_stride;     /* floats from one point's packed V to the next's */
    fc_int m_stride;     /* the same for M */
    fc_int v_floats;     /* a block's packed V: WG_XI * v_stride */
    fc_int m_floats;     /* a block's M: WG_XI * m_stride */
    fc_int ld;           /* padded input row: 2 tw rounded up to whole vectors, + 2 */
    fc_int row_floats;   /* a block's padded input rows of one channel */
    fc_int tmp_floats;   /* dW: the thread's sums over tiles, WG_XI * C * K */
    fc_int ldv;          /* dW: floats between the rows of V and of Yhat */
    fc_int per_thread;   /* all of the above, each on whole cache lines */
} fc_wg_plan;


/* Where the output transform writes: y = conv + bias, then ReLU as
 * relu_forward when relu (wg_output); or only the 2x2 stride-2 max-pool of
 * that (each tile is one window) in pooled, and each window's argmax
 * (wg_output_pool, as fc_maxpool2d_forward gives them). */
typedef struct {
    const float *bias;
    int relu;
    float *y;
    float *pooled;
    uint8_t *argmax;
} fc_wg_out;

typedef void fc_wg_input_fn(const fc_conv_shape *s, const fc_wg_plan *p, int nr, const float *x,
                            fc_int r0, fc_int r1, float *vp, float *rows);
typedef void fc_wg_output_fn(const fc_conv_shape *s, const fc_wg_plan *p, const float *m,
                             fc_int ldm, const fc_wg_out *out, fc_int r0, fc_int r1);
typedef void fc_wg_grad_fn(const fc_conv_shape *s, const fc_wg_plan *p, const float *dy,
                           fc_int r0, fc_int r1, fc_int ldv, float *yhat, float *rows);

#endif
