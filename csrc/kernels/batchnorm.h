#ifndef FC_KERNELS_BATCHNORM_H
#define FC_KERNELS_BATCHNORM_H

#include "fastconv.h"

/* The batch-norm tiles: batchnorm.c's per-channel loops, the ISA table's `bn`
 * (kernels/ctx.h). One source, kernels/ref/batchnorm_impl.h, compiled by each
 * ISA folder; batchnorm.c splits the channels over threads and computes the
 * per-channel coefficients between the passes.
 *
 * Every entry works on a tile of w channels of x viewed as (n, c, inner):
 * its pointers are at the tile's first channel of sample 0, samples are
 * `stride` = c * inner floats apart, and each channel's row of a sample is
 * `inner` contiguous floats. Per-channel arrays (m, scale, ...) have w
 * entries. When inner = 1 the loops run across the tile's channels of a
 * sample instead of along rows, so that they vectorize (one-element rows
 * cost ~6x more, measured).
 *
 * Sums are in double, in one fixed order for every ISA, so that results do
 * not depend on the vector width (nor on the thread count: the caller gives
 * each channel to one thread): over samples in order; within a sample's row,
 * element i into partial sum i mod FC_BN_LANES, the last inner %
 * FC_BN_LANES elements into partial 0, then the partials in order. The ISA
 * folders compile this family with -ffp-contract=off (setup.py). */
#define FC_BN_LANES 4

/* s1[j] += sum of d, s2[j] += sum of d * d, d = x - shift[j], over channel j's
 * n * inner values. */
typedef void fc_bn_stats_fn(fc_int n, fc_int stride, fc_int inner, fc_int w, const float *x,
                            const double *shift, double *s1, double *s2);
/* y = (x - m[j]) * scale[j] + shift[j]; then, if relu, v < 0 ? 0 : v (NaN
 * and -0 kept: the bits of the ReLU row run on y). */
typedef void fc_bn_normalize_fn(fc_int n, fc_int stride, fc_int inner, fc_int w, const float *x,
                                const float *m, const float *scale, const float *shift, int relu,
                                float *y);
/* The backward entries read dy masked by a ReLU after the batch norm when
 * ry (that ReLU's output, laid out as dy) is not NULL: g = ry <= 0 ? 0 : dy
 * (dy passes where ry is NaN), the bits of the ReLU's backward row, in
 * registers; with ry NULL, g = dy. */
/* sdy[j] += sum of g, sdyx[j] += sum of g * (x - mean[j]). */
typedef void fc_bn_grad_sums_fn(fc_int n, fc_int stride, fc_int inner, fc_int w, const float *dy,
                                const float *ry, const float *x, const float *mean, double *sdy,
                                double *sdyx);
/* dx = (g - gm[j] - (x - m[j]) * k[j]) * scale[j] if batch_stats, else
 * g * scale[j] (x, m, gm and k unread: an infinite x does not enter). */
typedef void fc_bn_grad_input_fn(fc_int n, fc_int stride, fc_int inner, fc_int w, const float *dy,
                                 const float *ry, const float *x, const float *m, const float *gm,
                                 const float *k, const float *scale, int batch_stats, float *dx);

typedef struct {
    fc_bn_stats_fn *stats;
    fc_bn_normalize_fn *normalize;
    fc_bn_grad_sums_fn *grad_sums;
    fc_bn_grad_input_fn *grad_input;
} fc_bn_kernel;

#endif
