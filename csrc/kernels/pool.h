#ifndef FC_KERNELS_POOL_H
#define FC_KERNELS_POOL_H

#include <stdint.h>

#include "fastconv.h"

/* The 2x2 stride-2 max-pool row kernels (maxpool2d.c's common case: every
 * pool of the workloads), the ISA table's pool2x2_forward and
 * pool2x2_backward (kernels/ctx.h): the reference pair in
 * kernels/ref/pool_ref.c, the SIMD pair in kernels/avx2/pool_avx2.c (which
 * the AVX-512 table keeps: kernels/avx512/ctx_avx512.c). The callers do the geometry and the
 * threading.
 *
 * Forward, one output row of `ow` windows: window ox covers r0[2ox], r0[2ox+1],
 * r1[2ox], r1[2ox+1], taps 0..3 in that (row-major) order. y[ox] is the
 * maximum and am[ox] its tap, by the scan rule of fc_maxpool2d_forward: start
 * from tap 0, take a later tap when it is greater or NaN (so ties keep the
 * first maximum, a NaN beats numbers and the last NaN wins; a window of -inf
 * points at tap 0).
 *
 * Backward, the same row: dx0[2ox + j] = dy[ox] if am[ox] == j else 0, and
 * dx1[2ox + j] likewise for am[ox] == 2 + j, j in {0, 1}. Windows do not
 * overlap, so each dx element of the row pair is stored, never accumulated
 * (no memset; a SIMD kernel may store an element twice, with the same
 * value). An am[ox] > 3 writes zeros there; the caller counts those. All
 * pointers may have any alignment. */

typedef void fc_pool_row_forward_fn(fc_int ow, const float *r0, const float *r1, float *y,
                                    uint8_t *am);
typedef void fc_pool_row_backward_fn(fc_int ow, const float *dy, const uint8_t *am, float *dx0,
                                     float *dx1);

/* Windows [from, ow) in plain C: the reference kernels, and the SIMD kernels' tails. */
static inline void row_forward_scalar(fc_int from, fc_int ow, const float *r0, const float *r1,
                                         float *y, uint8_t *am)
{
    for (fc_int ox = from; ox < ow; ox++) {
        float v[4] = {r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]};
        float best = v[0];
        uint8_t tap = 0;
        for (int t = 1; t < 4; t++) {
            int take = (v[t] > best) | (v[t] != v[t]);
            best = take ? v[t] : best;
            tap = take ? (uint8_t)t : tap;
        }
        y[ox] = best;
        am[ox] = tap;
    }
}

static inline void row_backward_scalar(fc_int from, fc_int ow, const float *dy, const uint8_t *am,
                                         float *dx0, float *dx1)
{
    for (fc_int ox = from; ox < ow; ox++) {
        float g = dy[ox];
        int t = am[ox];
        dx0[2 * ox] = t == 0 ? g : 0.0f;
        dx0[2 * ox + 1] = t == 1 ? g : 0.0f;
        dx1[2 * ox] = t == 2 ? g : 0.0f;
        dx1[2 * ox + 1] = t == 3 ? g : 0.0f;
    }
}

#endif
