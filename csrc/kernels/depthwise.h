/* The depthwise convolution's plane kernels (called by conv/depthwise.c; one
 * source, kernels/ref/depthwise_impl.h, compiled per ISA folder).
 *
 * One plane of one channel: a source plane h x w (x, or dy for dx), outputs
 * oh x ow. The caller gives each thread a zeroed buffer holding the source
 * padded, split into sh x sw phases (polyphase): padded element (r, c),
 * r = y + top and c = x + left for source element (y, x), sits at
 *   buf[((r % sh) * sw + c % sw) * hq * wq + (r / sh) * wq + c / sw],
 * so that the output at flat index f = oy * wq + ox reads its tap t at
 * buf[f + off[t]] whatever the stride and dilation: every tap is one
 * contiguous pass over the outputs, and the padding is the buffer's zeros.
 * The kernels write only the source's own elements, so the zeros stay for
 * the next plane of the same geometry.
 *
 * Padding adds terms w * 0 (forward, dx) and dy * 0 (dW): +-0 for finite
 * w and dy, NaN for infinite ones, where the direct sum has no such term;
 * the planner's guards (conv/plan.c) send such input to the per-group path.
 *
 * dw_plane: the output plane job->out (oh x ow) of the sum over the
 *   job's source planes s = 0, 1, ... (dx sums the multiplier's channels):
 *   starting from job->init, for each s in turn src_s copied into buf and
 *   the terms wt_s[t] * buf[f + off[t]] added for t = 0, 1, ... in turn,
 *   for the outputs f = oy * wq + ox; then max(., 0) with relu (NaN kept).
 *   acc, (oh * wq + FC_DW_SLACK floats) holds the sums between the passes
 *   over the taps; buf has FC_DW_SLACK floats past its phases, zero: the
 *   passes run in whole blocks.
 * dw_dweight_plane: copies src into buf, then for oy = 0, 1, ... in turn
 *   cols[t * cp + ox] += dy[oy * ow + ox] * buf[oy * wq + ox + off[t]] for
 *   each tap t, and cols[taps * cp + ox] += dy[oy * ow + ox] (db's), with
 *   cp = FC_DW_COLS_PITCH(ow): one running sum per tap (and db) and output
 *   column, which the caller reduces once, after all the planes of a
 *   channel, in a fixed order; the columns ox >= ow are garbage.
 */
#ifndef FC_KERNELS_DEPTHWISE_H
#define FC_KERNELS_DEPTHWISE_H

#include "fastconv.h"

/* The floats past a buffer's and an accumulator's sizes the kernels may
 * read (buf) and write (acc). */
#define FC_DW_SLACK 64
/* dW's columns per tap: ow in whole blocks. */
#define FC_DW_COLS_PITCH(ow) (((ow) + 15) / 16 * 16)

typedef struct {
    fc_int h, w;           /* the source plane */
    fc_int oh, ow;         /* the outputs */
    fc_int sh, sw;         /* the strides: the buffer's phases */
    fc_int uh, uw;         /* the source's spacing in the buffer (dx's forward strides) */
    fc_int hq, wq;         /* one phase's rows and columns */
    fc_int y0, y1, x0, x1; /* the source rows and columns that land in the buffer */
    fc_int top, left;      /* padding before the source (negative: cropped) */
    fc_int taps;           /* kh * kw */
    const fc_int *off;     /* tap t of the output at f reads buf[f + off[t]] */
} fc_dw_geom;

typedef struct {
    const float *src; /* the first source plane; the others src_step floats apart */
    const float *wt;  /* its kh x kw weights; the others' wt_step floats apart */
    fc_int planes, src_step, wt_step;
    float init;       /* the bias, or 0 */
    int relu;
    float *out;
} fc_dw_sum;

typedef void fc_dw_plane_fn(const fc_dw_geom *g, const fc_dw_sum *job, float *buf, float *acc);
typedef void fc_dw_dweight_plane_fn(const fc_dw_geom *g, const float *src, const float *dy,
                                    float *buf, float *cols);

#endif
