/* Batch normalization forward and backward over x viewed as (n, c, inner).
 *
 * Each thread owns a contiguous block of channels and walks it sample by
 * sample, so it reads x[b, c0:c1, :] as one contiguous stretch whatever the
 * layout: (N, C) input (inner = 1) is read row by row, not down columns
 * strided by C. Per-channel sums live in small tiles of accumulators on the
 * stack. Each stage has two loop shapes: over each channel's row of `inner`
 * values, or, when inner = 1, across the channels of a sample (vectorized;
 * one-element rows cost ~6x more, measured).
 *
 * Each channel is reduced by one thread in a fixed order (over samples, and
 * within a sample over its row), so results do not depend on the thread
 * count. Reductions are in double: a float accumulator over 10^6 values loses
 * about 3 digits. */
#include <math.h>
#include "fastconv.h"
#include "fc_omp.h"

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
static void tile_stats(fc_int n, fc_int c, fc_int inner, const float *x, fc_int j0, fc_int j1,
                       float *mean, float *var)
{
    double shift[FC_BN_TILE], s1[FC_BN_TILE], s2[FC_BN_TILE];
    fc_int stride = c * inner;
    for (fc_int j = j0; j < j1; j++) {
        float first = x[j * inner];
        shift[j - j0] = isfinite(first) ? first : 0.0;
        s1[j - j0] = s2[j - j0] = 0.0;
    }
    for (fc_int b = 0; b < n; b++) {
        if (inner == 1) {
            const float *row = x + b * stride;
            for (fc_int j = j0; j < j1; j++) {
                double d = (double)row[j] - shift[j - j0];
                s1[j - j0] += d;
                s2[j - j0] += d * d;
            }
            continue;
        }
        for (fc_int j = j0; j < j1; j++) {
            const float *row = x + b * stride + j * inner;
            double sh = shift[j - j0], a1 = 0.0, a2 = 0.0;
#pragma omp simd reduction(+ : a1, a2)
            for (fc_int i = 0; i < inner; i++) {
                double d = (double)row[i] - sh;
                a1 += d;
                a2 += d * d;
            }
            s1[j - j0] += a1;
            s2[j - j0] += a2;
        }
    }
    double count = (double)(n * inner);
    for (fc_int j = j0; j < j1; j++) {
        double m = s1[j - j0] / count, v = s2[j - j0] / count - m * m;
        mean[j] = (float)(shift[j - j0] + m);
        var[j] = (float)(v < 0.0 ? 0.0 : v); /* rounding can dip below 0; NaN stays NaN */
    }
}

/* y = (x - mean) * scale + shift on channels [j0, j1), scale = invstd * weight. */
static void tile_normalize(fc_int n, fc_int c, fc_int inner, const float *x, const float *weight,
                           const float *bias, const float *mean, const float *var, double eps,
                           fc_int j0, fc_int j1, float *y)
{
    float m[FC_BN_TILE], scale[FC_BN_TILE], shift[FC_BN_TILE];
    for (fc_int j = j0; j < j1; j++) {
        m[j - j0] = mean[j];
        scale[j - j0] = (float)(inv_std(var[j], eps) * (weight ? weight[j] : 1.0f));
        shift[j - j0] = bias ? bias[j] : 0.0f;
    }
    fc_int stride = c * inner, w = j1 - j0;
    for (fc_int b = 0; b < n; b++) {
        if (inner == 1) {
            const float *xr = x + b * stride + j0;
            float *yr = y + b * stride + j0;
            for (fc_int j = 0; j < w; j++) yr[j] = (xr[j] - m[j]) * scale[j] + shift[j];
            continue;
        }
        for (fc_int j = j0; j < j1; j++) {
            fc_int o = b * stride + j * inner;
            float mj = m[j - j0], s = scale[j - j0], t = shift[j - j0];
            for (fc_int i = 0; i < inner; i++) y[o + i] = (x[o + i] - mj) * s + t;
        }
    }
}

void fc_batchnorm_forward(fc_int n, fc_int c, fc_int inner, const float *x, const float *weight,
                          const float *bias, float *mean, float *var, double eps,
                          int batch_stats, float *y, int nthreads)
{
#pragma omp parallel num_threads(nthreads) if (n * c * inner >= FC_BN_PAR_MIN)
    {
        long long c0, c1;
        fc_split_range(c, fc_team_size(), fc_thread_id(), &c0, &c1);
        for (fc_int j0 = c0; j0 < c1; j0 += FC_BN_TILE) {
            fc_int j1 = j0 + FC_BN_TILE < c1 ? j0 + FC_BN_TILE : c1;
            if (batch_stats) tile_stats(n, c, inner, x, j0, j1, mean, var);
            tile_normalize(n, c, inner, x, weight, bias, mean, var, eps, j0, j1, y);
        }
    }
}

/* The backward of channels [j0, j1): sums, then dx. */
static void tile_backward(fc_int n, fc_int c, fc_int inner, const float *dy, const float *x,
                          const float *weight, const float *mean, const float *var, double eps,
                          int batch_stats, fc_int j0, fc_int j1, float *dx, float *dweight,
                          float *dbias)
{
    double sdy[FC_BN_TILE] = {0}, sdyx[FC_BN_TILE] = {0}; /* sum dy, sum dy * (x - mean) */
    fc_int stride = c * inner;
    for (fc_int b = 0; b < n; b++) {
        if (inner == 1) {
            const float *dyr = dy + b * stride, *xr = x + b * stride;
            for (fc_int j = j0; j < j1; j++) {
                sdy[j - j0] += dyr[j];
                sdyx[j - j0] += (double)dyr[j] * ((double)xr[j] - mean[j]);
            }
            continue;
        }
        for (fc_int j = j0; j < j1; j++) {
            fc_int o = b * stride + j * inner;
            double m = mean[j], a1 = 0.0, a2 = 0.0;
#pragma omp simd reduction(+ : a1, a2)
            for (fc_int i = 0; i < inner; i++) {
                a1 += dy[o + i];
                a2 += (double)dy[o + i] * ((double)x[o + i] - m);
            }
            sdy[j - j0] += a1;
            sdyx[j - j0] += a2;
        }
    }
    /* dx = (dy - gm - (x - mean) * k) * scale. With batch statistics, PyTorch's
     * form: gm = mean(dy) and k = sum(dy * (x - mean)) * invstd^2 / count are
     * the terms through the batch mean and variance. With constant statistics
     * dx = dy * scale: x (even inf) does not enter, as in PyTorch. */
    float m[FC_BN_TILE], gm[FC_BN_TILE], k[FC_BN_TILE], scale[FC_BN_TILE];
    double count = (double)(n * inner);
    for (fc_int j = j0; j < j1; j++) {
        double invstd = inv_std(var[j], eps);
        m[j - j0] = mean[j];
        dbias[j] = (float)sdy[j - j0];
        dweight[j] = (float)(sdyx[j - j0] * invstd);
        scale[j - j0] = (float)(invstd * (weight ? weight[j] : 1.0f));
        gm[j - j0] = batch_stats ? (float)(sdy[j - j0] / count) : 0.0f;
        k[j - j0] = batch_stats ? (float)(sdyx[j - j0] * invstd * invstd / count) : 0.0f;
    }
    fc_int w = j1 - j0;
    for (fc_int b = 0; b < n; b++) {
        if (inner == 1) {
            const float *dyr = dy + b * stride + j0, *xr = x + b * stride + j0;
            float *dxr = dx + b * stride + j0;
            if (batch_stats)
                for (fc_int j = 0; j < w; j++) dxr[j] = (dyr[j] - gm[j] - (xr[j] - m[j]) * k[j]) * scale[j];
            else
                for (fc_int j = 0; j < w; j++) dxr[j] = dyr[j] * scale[j];
            continue;
        }
        for (fc_int j = j0; j < j1; j++) {
            fc_int o = b * stride + j * inner;
            float mj = m[j - j0], g = gm[j - j0], kj = k[j - j0], s = scale[j - j0];
            if (batch_stats)
                for (fc_int i = 0; i < inner; i++) dx[o + i] = (dy[o + i] - g - (x[o + i] - mj) * kj) * s;
            else
                for (fc_int i = 0; i < inner; i++) dx[o + i] = dy[o + i] * s;
        }
    }
}

void fc_batchnorm_backward(fc_int n, fc_int c, fc_int inner, const float *dy, const float *x,
                           const float *weight, const float *mean, const float *var, double eps,
                           int batch_stats, float *dx, float *dweight, float *dbias,
                           int nthreads)
{
#pragma omp parallel num_threads(nthreads) if (n * c * inner >= FC_BN_PAR_MIN)
    {
        long long c0, c1;
        fc_split_range(c, fc_team_size(), fc_thread_id(), &c0, &c1);
        for (fc_int j0 = c0; j0 < c1; j0 += FC_BN_TILE) {
            fc_int j1 = j0 + FC_BN_TILE < c1 ? j0 + FC_BN_TILE : c1;
            tile_backward(n, c, inner, dy, x, weight, mean, var, eps, batch_stats, j0, j1,
                          dx, dweight, dbias);
        }
    }
}
