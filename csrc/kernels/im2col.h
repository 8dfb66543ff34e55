/* The im2col family's copy kernels (called by conv/im2col.c; one source,
 * kernels/ref/copies_impl.h, compiled per ISA folder).
 *
 * The column matrix of one image x (C, H, W) for a convolution of shape s
 * has C*kh*kw rows, row r = (c * kh + i) * kw + j holding at column
 * (oy, ox) = oy * OW + ox the pixel x[c, oy*sh + i*dh - ph, ox*sw + j*dw - pw], or
 * zero where that falls in the padding.
 *
 * im2col_row: input x (one image); output: row (c, i, j) of its column
 *   matrix, in col, rows ld apart.
 * col2im_channel: input col, one image's column matrix (rows ld apart),
 *   whose entries at padding taps may be overwritten (it is a workspace);
 *   output: channel c of that image's dx, overwritten with the sum of every
 *   entry that lands on each pixel, taps in (i, j) order.
 * pack_columns: an fc_pack_b_fn (fastconv.h) whose ctx is an
 *   fc_column_source: the column matrix of a group of images side by side,
 *   column q * OH*OW + pix being pixel pix of image q of the group.
 */
#ifndef FC_KERNELS_IM2COL_H
#define FC_KERNELS_IM2COL_H

#include "fastconv.h"
#include "kernels/gemm_ukernel.h"

typedef void fc_im2col_row_fn(const fc_conv_shape *s, const float *x, float *col, fc_int ld,
                              fc_int c, fc_int i, fc_int j);
typedef void fc_col2im_channel_fn(const fc_conv_shape *s, float *col, fc_int ld, float *dx,
                                  fc_int c);

typedef struct {
    const fc_conv_shape *s;
    const float *x;     /* the group's first image */
    fc_deal_fn *deal;   /* the GEMM table's deal_nr: a packed row to its NR-slivers */
} fc_column_source;

#endif
