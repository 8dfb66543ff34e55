/* The depthwise convolution's plane kernels (called by conv/depthwise.c; one
 * source, kernels/ref/depthwise_impl.h, compiled per ISA folder).
 *
 * One plane of one channel: input h x w, output oh x ow. Output (oy, ox),
 * tap (i, j) reads input row iy = oy*sh + i*dh - ph, column
 * ix = ox*sw + j*dw - pw; a tap outside the image is padding and adds no
 * term (so no 0 * Inf). x0, x1 in the geometry are the output columns whose
 * kw taps all fall inside [0, w) (x1 >= x0), filled by the caller.
 *
 * dw_plane: out[oy*ow + ox] += the terms wt[i*kw + j] * in[iy*w + ix],
 *   added one by one in (i, j) order onto out, for every output: so the
 *   bits do not depend on which loop computes an output.
 * dw_dweight_plane: cols[(i*kw + j)*ow + ox] += dy[oy*ow + ox] * in[iy*w + ix]
 *   for oy = 0, 1, ... in turn (one running sum per tap and output column,
 *   the taps inside the image only). The caller reduces the columns once,
 *   after all the planes of a channel, in a fixed order: no horizontal
 *   reduction per row.
 */
#ifndef FC_KERNELS_DEPTHWISE_H
#define FC_KERNELS_DEPTHWISE_H

#include "fastconv.h"

typedef struct {
    fc_int w, ow;       /* input and output row lengths */
    fc_int kw, sw, dw, pw;
    fc_int x0, x1;      /* the outputs whose kw taps all fall inside [0, w) */
} fc_dw_geom;

typedef struct {
    fc_dw_geom g;       /* along a row */
    fc_int h, oh;       /* input and output rows */
    fc_int kh, sh, dh, ph;
} fc_dw_plane;

typedef void fc_dw_plane_fn(const fc_dw_plane *p, const float *in, const float *wt, float *out);
typedef void fc_dw_dweight_plane_fn(const fc_dw_plane *p, const float *in, const float *dy,
                                    float *cols);

#endif
