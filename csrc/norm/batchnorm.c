/* Batch normalization forward and backward over x viewed as (n, c, inner).
 *
 * Each thread owns a contiguous block of channels and walks it in tiles of
 * FC_BN_TILE channels, sample by sample, so it reads x[b, c0:c1, :] as one
 * contiguous stretch whatever the layout: (N, C) input (inner = 1) is read
 * row by row, not down columns strided by C. The passes over a tile are the
 * ISA table's batch-norm entries (kernels/batchnorm.h); this file computes
 * the per-channel coefficients between them, into small arrays on the stack.
 *
 * Each channel is reduced by one thread in a fixed order (batchnorm.h), so
 * results depend neither on the thread count nor on the ISA. Reductions are
 * in double: a float accumulator over 10^6 values loses about 3 digits.
 *
 * A ReLU after the batch norm (conv -> bn -> relu) can run inside these
 * passes: the forward rectifies y as it writes it, the backward masks dy by
 * the ReLU's output as it reads it; the bits are those of the two layers
 * run apart, and the activations are walked once less each way. */
#include <math.h>
#include "fastconv.h"
#include "core/fc_omp.h"
#include "kernels/ctx.h"

/* Below this many elements a parallel region costs more than it saves. */
#define FC_BN_PAR_MIN 32768
/* Channels per stack tile: 64 doubles per accumulator stay in L1. */
#define FC_BN_TILE 64

/* invstd = 1 / sqrt(var + eps), from the float var that the forward returns,
 * so that the forward and the backward use exactly the same value. */
static inline double inv_std(float var, double eps) { return 1.0 / sqrt((double)var + eps); }

/* Mean and biased variance of channels [j0, j1) in one pass. Shifted sums:
 * with d = x - shift for a sample value `shift` of the channel, var = E[d^2]
 * - E[d]^2 cancels no worse than the data's own spread even when |mean| >>
 * std, and double covers the rest. A non-finite shift would turn every d into
 * NaN, so 0 is used then, and infinities propagate as in PyTorch (mean inf,
 * var NaN). */
static void tile_stats(const fc_bn_kernel *kern, fc_int n, fc_int c, fc_int inner, const float *x,
                       fc_int j0, fc_int j1, float *mean, float *var)
{
    double shift[FC_BN_TILE] = {0}, s1[FC_BN_TILE] = {0}, s2[FC_BN_TILE] = {0};
    for (fc_int j = j0; j < j1; j++) {
        float first = x[j * inner];
        shift[j - j0] = isfinite(first) ? first : 0.0;
    }
    kern->stats(n, c * inner, inner, j1 - j0, x + j0 * inner, shift, s1, s2);
    double count = (double)(n * inner);
    for (fc_int j = j0; j < j1; j++) {
        double m = s1[j - j0] / count, v = s2[j - j0] / count - m * m;
        mean[j] = (float)(shift[j - j0] + m);
        var[j] = (float)(v < 0.0 ? 0.0 : v); /* rounding can dip below 0; NaN stays NaN */
    }
}

/* y = (x - mean) * scale + shift on channels [j0, j1), scale = invstd * weight;
 * rectified if relu. */
static void tile_normalize(const fc_bn_kernel *kern, fc_int n, fc_int c, fc_int inner,
                           const float *x, const float *weight, const float *bias,
                           const float *mean, const float *var, double eps, int relu, fc_int j0,
                           fc_int j1, float *y)
{
    float scale[FC_BN_TILE], shift[FC_BN_TILE];
    for (fc_int j = j0; j < j1; j++) {
        scale[j - j0] = (float)(inv_std(var[j], eps) * (weight ? weight[j] : 1.0f));
        shift[j - j0] = bias ? bias[j] : 0.0f;
    }
    kern->normalize(n, c * inner, inner, j1 - j0, x + j0 * inner, mean + j0, scale, shift, relu,
                    y + j0 * inner);
}

void fc_batchnorm_forward(fc_int n, fc_int c, fc_int inner, const float *x, const float *weight,
                          const float *bias, float *mean, float *var, double eps,
                          int batch_stats, int relu, float *y, int nthreads)
{
    const fc_bn_kernel *const kern = fc_ctx_current()->bn;
#pragma omp parallel num_threads(nthreads) if (n * c * inner >= FC_BN_PAR_MIN)
    {
        long long c0, c1;
        fc_split_range(c, fc_team_size(), fc_thread_id(), &c0, &c1);
        for (fc_int j0 = c0; j0 < c1; j0 += FC_BN_TILE) {
            fc_int j1 = j0 + FC_BN_TILE < c1 ? j0 + FC_BN_TILE : c1;
            if (batch_stats) tile_stats(kern, n, c, inner, x, j0, j1, mean, var);
            tile_normalize(kern, n, c, inner, x, weight, bias, mean, var, eps, relu, j0, j1, y);
        }
    }
}

/* The backward of channels [j0, j1): sums, then dx; dy masked by relu_y
 * (the ReLU's output) in both passes when it is not NULL. */
static void tile_backward(const fc_bn_kernel *kern, fc_int n, fc_int c, fc_int inner,
                          const float *dy, const float *relu_y, const float *x,
                          const float *weight, const float *mean, const float *var, double eps,
                          int batch_stats, fc_int j0, fc_int j1, float *dx, float *dweight,
                          float *dbias)
{
    double sdy[FC_BN_TILE] = {0}, sdyx[FC_BN_TILE] = {0}; /* sum dy, sum dy * (x - mean) */
    const fc_int stride = c * inner, w = j1 - j0, at = j0 * inner;
    const float *ry = relu_y ? relu_y + at : NULL;
    kern->grad_sums(n, stride, inner, w, dy + at, ry, x + at, mean + j0, sdy, sdyx);
    /* dx = (dy - gm - (x - mean) * k) * scale. With batch statistics, PyTorch's
     * form: gm = mean(dy) and k = sum(dy * (x - mean)) * invstd^2 / count are
     * the terms through the batch mean and variance. With constant statistics
     * dx = dy * scale: x (even inf) does not enter, as in PyTorch. */
    float gm[FC_BN_TILE], k[FC_BN_TILE], scale[FC_BN_TILE];
    double count = (double)(n * inner);
    for (fc_int j = j0; j < j1; j++) {
        double invstd = inv_std(var[j], eps);
        dbias[j] = (float)sdy[j - j0];
        dweight[j] = (float)(sdyx[j - j0] * invstd);
        scale[j - j0] = (float)(invstd * (weight ? weight[j] : 1.0f));
        gm[j - j0] = batch_stats ? (float)(sdy[j - j0] / count) : 0.0f;
        k[j - j0] = batch_stats ? (float)(sdyx[j - j0] * invstd * invstd / count) : 0.0f;
    }
    kern->grad_input(n, stride, inner, w, dy + at, ry, x + at, mean + j0, gm, k, scale, batch_stats,
                     dx + at);
}

void fc_batchnorm_backward(fc_int n, fc_int c, fc_int inner, const float *dy, const float *relu_y,
                           const float *x, const float *weight, const float *mean,
                           const float *var, double eps, int batch_stats, float *dx,
                           float *dweight, float *dbias, int nthreads)
{
    const fc_bn_kernel *const kern = fc_ctx_current()->bn;
#pragma omp parallel num_threads(nthreads) if (n * c * inner >= FC_BN_PAR_MIN)
    {
        long long c0, c1;
        fc_split_range(c, fc_team_size(), fc_thread_id(), &c0, &c1);
        for (fc_int j0 = c0; j0 < c1; j0 += FC_BN_TILE) {
            fc_int j1 = j0 + FC_BN_TILE < c1 ? j0 + FC_BN_TILE : c1;
            tile_backward(kern, n, c, inner, dy, relu_y, x, weight, mean, var, eps, batch_stats,
                          j0, j1, dx, dweight, dbias);
        }
    }
}
