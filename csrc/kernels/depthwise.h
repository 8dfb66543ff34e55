/* The depthwise convolution's row kernels (called by conv/depthwise.c; one
 * source, kernels/ref/depthwise_impl.h, compiled per ISA folder).
 *
 * One output row of one channel from the input rows its taps read. Output
 * column ox, tap column j reads input column ix = ox*sw + j*dw - pw of a
 * row of w floats; a tap outside [0, w) is padding and adds no term. The
 * tap rows are `rows` consecutive kernel rows, the first at `row`, each
 * `pitch` floats after the previous (dilation times the image pitch), with
 * their weights kw apart from `wt`: the caller passes only the rows inside
 * the image, so no kernel row is ever padding.
 *
 * dw_row: out[ox] += the terms wt[i*kw + j] * row_i[ix], added one by one
 *   in (i, j) order onto out[ox], for ox in [0, ow).
 * dw_dweight_row: acc[i*kw + j] += the sum over ox of dy[ox] * row_i[ix],
 *   each sum taken in a fixed order (the same bits on every call).
 */
#ifndef FC_KERNELS_DEPTHWISE_H
#define FC_KERNELS_DEPTHWISE_H

#include "fastconv.h"

typedef struct {
    fc_int w, ow;       /* input and output row lengths */
    fc_int kw, sw, dw, pw;
    fc_int x0, x1;      /* the outputs whose kw taps all fall inside [0, w) */
} fc_dw_geom;

typedef void fc_dw_row_fn(const fc_dw_geom *g, const float *row, fc_int pitch, fc_int rows,
                          const float *wt, float *out);
typedef void fc_dw_dweight_row_fn(const fc_dw_geom *g, const float *row, fc_int pitch,
                                  fc_int rows, const float *dy, float *acc);

#endif
