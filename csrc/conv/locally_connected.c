/* Locally connected 2-D layer: a convolution whose filters are not shared,
 * one (K x C*kh*kw) matrix W_p and K biases per output position p.
 *
 * At each position the layer is one small GEMM over the batch: the patches
 * of the N images at p, X_p (N x C*kh*kw), times W_p transposed. Threads
 * split the positions; each position's GEMM runs on one thread with a fixed
 * summation order, so results do not depend on the thread count. The
 * backward's dx adds overlapping windows: each position's patch gradients
 * are kept, then threads split the images and add them in position order. */
#include <stdlib.h>
#include <string.h>
#include "fastconv.h"
#include "core/fc_omp.h"

/* X_p: the N patches at output position (oy, ox), zero outside the image. */
static void gather(const fc_conv_shape *s, const float *x, fc_int oy, fc_int ox, float *xp)
{
    fc_int q = s->c * s->kh * s->kw;
    for (fc_int n = 0; n < s->n; n++) {
        float *row = xp + n * q;
        for (fc_int c = 0; c < s->c; c++) {
            const float *plane = x + (n * s->c + c) * s->h * s->w;
            for (fc_int i = 0; i < s->kh; i++) {
                fc_int iy = oy * s->sh - s->ph + i;
                for (fc_int j = 0; j < s->kw; j++) {
                    fc_int ix = ox * s->sw - s->pw + j;
                    int inside = iy >= 0 && iy < s->h && ix >= 0 && ix < s->w;
                    *row++ = inside ? plane[iy * s->w + ix] : 0.0f;
                }
            }
        }
    }
}

int fc_locally_connected2d_forward(const fc_conv_shape *s, const float *x, const float *weight,
                                   const float *bias, float *y, int nthreads)
{
    fc_int positions = s->oh * s->ow, q = s->c * s->kh * s->kw;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        float *xp = malloc(sizeof(float) * (size_t)(s->n * q));
        float *yp = malloc(sizeof(float) * (size_t)(s->n * s->k));
        if (!xp || !yp) failed = 1;
#pragma omp for schedule(static)
        for (fc_int p = 0; p < positions; p++) {
            if (!xp || !yp) continue;
            gather(s, x, p / s->ow, p % s->ow, xp);
            if (fc_sgemm_ex(0, 1, s->n, s->k, q, 1.0f, xp, q, weight + p * s->k * q, q, 0.0f, yp, s->k, 1, 0)) {
                failed = 1;
                continue;
            }
            for (fc_int n = 0; n < s->n; n++)
                for (fc_int k = 0; k < s->k; k++)
                    y[(n * s->k + k) * positions + p] = yp[n * s->k + k] + (bias ? bias[k * positions + p] : 0.0f);
        }
        free(xp);
        free(yp);
    }
    return failed ? FC_ENOMEM : 0;
}

/* dx[n] += the patch gradients of image n at every position, in position order. */
static void scatter(const fc_conv_shape *s, const float *dcols, fc_int n, float *dx)
{
    fc_int positions = s->oh * s->ow, q = s->c * s->kh * s->kw;
    float *img = dx + n * s->c * s->h * s->w;
    memset(img, 0, sizeof(float) * (size_t)(s->c * s->h * s->w));
    for (fc_int p = 0; p < positions; p++) {
        const float *row = dcols + (p * s->n + n) * q;
        fc_int oy = p / s->ow, ox = p % s->ow;
        for (fc_int c = 0; c < s->c; c++)
            for (fc_int i = 0; i < s->kh; i++) {
                fc_int iy = oy * s->sh - s->ph + i;
                for (fc_int j = 0; j < s->kw; j++, row++) {
                    fc_int ix = ox * s->sw - s->pw + j;
                    if (iy >= 0 && iy < s->h && ix >= 0 && ix < s->w) img[(c * s->h + iy) * s->w + ix] += *row;
                }
            }
    }
}

int fc_locally_connected2d_backward(const fc_conv_shape *s, const float *x, const float *weight,
                                    const float *dy, float *dx, float *dweight, float *dbias, int nthreads)
{
    fc_int positions = s->oh * s->ow, q = s->c * s->kh * s->kw;
    /* dX_p of every position, (positions, N, q): dx adds them per image afterwards. */
    float *dcols = dx ? malloc(sizeof(float) * (size_t)(positions * s->n * q)) : NULL;
    if (dx && !dcols) return FC_ENOMEM;
    int failed = 0; /* shared: every thread must agree on it before the second loop */
#pragma omp parallel num_threads(nthreads)
    {
        float *xp = malloc(sizeof(float) * (size_t)(s->n * q));
        float *dyp = malloc(sizeof(float) * (size_t)(s->n * s->k));
        int mine = !xp || !dyp;
#pragma omp for schedule(static)
        for (fc_int p = 0; p < positions; p++) {
            if (mine) continue;
            for (fc_int n = 0; n < s->n; n++)
                for (fc_int k = 0; k < s->k; k++) dyp[n * s->k + k] = dy[(n * s->k + k) * positions + p];
            for (fc_int k = 0; k < s->k; k++) {
                float sum = 0.0f;
                for (fc_int n = 0; n < s->n; n++) sum += dyp[n * s->k + k];
                dbias[k * positions + p] = sum;
            }
            gather(s, x, p / s->ow, p % s->ow, xp);
            mine |= fc_sgemm_ex(1, 0, s->k, q, s->n, 1.0f, dyp, s->k, xp, q, 0.0f, dweight + p * s->k * q, q,
                                1, 0) != 0;
            if (dcols)
                mine |= fc_sgemm_ex(0, 0, s->n, q, s->k, 1.0f, dyp, s->k, weight + p * s->k * q, q, 0.0f,
                                    dcols + p * s->n * q, q, 1, 0) != 0;
        }
        free(xp);
        free(dyp);
        if (mine) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp barrier
        int skip;
#pragma omp atomic read
        skip = failed;
        if (dcols && !skip) {
#pragma omp for schedule(static)
            for (fc_int n = 0; n < s->n; n++) scatter(s, dcols, n, dx);
        }
    }
    free(dcols);
    return failed ? FC_ENOMEM : 0;
}
