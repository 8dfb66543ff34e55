/* Depthwise convolution: groups == C, each output channel k convolving its
 * own input channel k / m (m = K / C, the channel multiplier) with its own
 * kh x kw filter. Contracts: fc_conv2d_forward's and fc_conv2d_backward's
 * (fastconv.h); conv/plan.c decides when it runs.
 *
 * Why its own algorithm: per output it does kh*kw multiply-adds on kh*kw
 * inputs that no other output channel shares (but the multiplier's), so a
 * GEMM per group would be 1 x kh*kw times kh*kw x OH*OW, all packing and no
 * reuse. It is bound by memory: each plane is computed in one call of the
 * ISA table's plane kernel (kernels/depthwise.h), which keeps a 3x3 filter
 * in registers and vectorizes along the rows (across them where the
 * geometry allows).
 *
 * Any kernel size, stride, padding (each side) and dilation: the plane
 * kernels add only the taps inside the image, so padding adds no terms
 * (no 0 * Inf). dx at unit stride is the depthwise convolution of dy with
 * the flipped filters (padding dh*(kh-1) - ph before, the rest implied by
 * the output size), summed over the multiplier's channels in order; at
 * other strides each dy is scattered to its taps instead, plainly.
 *
 * dW's summation order: for each tap, one running sum per output column
 * over the rows of the images of a block (in order: images, then rows),
 * then the columns summed left to right, then the blocks in order. A block
 * is a channel's images split by the shape alone (FC_DW_UNITS), so that few
 * channels still share out over the threads.
 *
 * Determinism: every output plane (y, dx) and every dW block is computed by
 * one thread in that fixed order, so results are the same bits at any
 * thread count. Threads share the planes (blocks for dW) statically.
 */
#include <stdlib.h>
#include <string.h>

#include "fastconv.h"
#include "kernels/ctx.h"
#include "conv/conv.h"
#include "core/fc_omp.h"

/* Below this many output elements a parallel region is not worth it. */
#define FC_DW_PAR_MIN 32768

/* The o in [0, count) with o * step + off inside [0, size), as [*lo, *hi). */
static void inside(fc_int off, fc_int step, fc_int size, fc_int count, fc_int *lo, fc_int *hi)
{
    fc_int a = off >= 0 ? 0 : (-off + step - 1) / step;
    fc_int b = size - 1 - off < 0 ? 0 : (size - 1 - off) / step + 1;
    a = a < count ? a : count;
    b = b < count ? b : count;
    *lo = a;
    *hi = b > a ? b : a;
}

static fc_dw_plane plane_of(fc_int h, fc_int w, fc_int oh, fc_int ow, fc_int kh, fc_int kw,
                            fc_int sh, fc_int sw, fc_int dh, fc_int dw, fc_int ph, fc_int pw)
{
    fc_dw_plane p = {{w, ow, kw, sw, dw, pw, 0, 0}, h, oh, kh, sh, dh, ph};
    /* Interior: the first tap at or after column 0, the last before w. */
    fc_int a, b, lo, hi;
    inside(-pw, sw, w, ow, &a, &b);
    inside((kw - 1) * dw - pw, sw, w, ow, &lo, &hi);
    p.g.x0 = a > lo ? a : lo;
    p.g.x1 = b < hi ? b : hi;
    if (p.g.x1 < p.g.x0) p.g.x1 = p.g.x0;
    return p;
}

static int parallel(int nthreads, fc_int units, fc_int elements)
{
    return nthreads > 1 && units > 1 && elements >= FC_DW_PAR_MIN;
}

int fc_conv2d_depthwise_forward(const fc_conv_shape *s, const float *x, const float *weight,
                                const float *bias, int relu, float *y, int nthreads)
{
    const fc_ctx *ctx = fc_ctx_current();
    const fc_dw_plane p = plane_of(s->h, s->w, s->oh, s->ow, s->kh, s->kw, s->sh, s->sw, s->dh, s->dw,
                                s->ph, s->pw);
    const fc_int m = s->k / s->c, hw = s->h * s->w, ohow = s->oh * s->ow, kk = s->kh * s->kw;
    const fc_int planes = s->n * s->k;
#pragma omp parallel for num_threads(nthreads) schedule(static) \
    if (parallel(nthreads, planes, planes * ohow))
    for (fc_int e = 0; e < planes; e++) {
        const fc_int n = e / s->k, k = e % s->k;
        float *out = y + e * ohow;
        const float b = bias ? bias[k] : 0.0f;
        for (fc_int o = 0; o < ohow; o++) out[o] = b;
        ctx->dw_plane(&p, x + (n * s->c + k / m) * hw, weight + k * kk, out);
        if (relu)
            for (fc_int o = 0; o < ohow; o++) out[o] = out[o] < 0.0f ? 0.0f : out[o]; /* NaN kept */
    }
    return 0;
}

/* dx plane of channel c, image n, at any stride: each dy scattered to the
 * pixels its taps read. */
static void scatter_plane(const fc_conv_shape *s, const float *weight, const float *dy, fc_int n,
                          fc_int c, float *dx)
{
    const fc_int m = s->k / s->c, ohow = s->oh * s->ow, kk = s->kh * s->kw;
    for (fc_int q = 0; q < m; q++) {
        const fc_int k = c * m + q;
        const float *d = dy + (n * s->k + k) * ohow, *wt = weight + k * kk;
        for (fc_int oy = 0; oy < s->oh; oy++) {
            fc_int i0, i1;
            inside(oy * s->sh - s->ph, s->dh, s->h, s->kh, &i0, &i1);
            for (fc_int i = i0; i < i1; i++) {
                float *row = dx + (oy * s->sh + i * s->dh - s->ph) * s->w;
                for (fc_int j = 0; j < s->kw; j++) {
                    const fc_int off = j * s->dw - s->pw;
                    const float wv = wt[i * s->kw + j];
                    fc_int lo, hi;
                    inside(off, s->sw, s->w, s->ow, &lo, &hi);
                    for (fc_int ox = lo; ox < hi; ox++) row[ox * s->sw + off] += wv * d[oy * s->ow + ox];
                }
            }
        }
    }
}

int fc_conv2d_depthwise_dx(const fc_conv_shape *s, const float *weight, const float *dy, float *dx,
                           int nthreads)
{
    const fc_ctx *ctx = fc_ctx_current();
    const fc_int m = s->k / s->c, hw = s->h * s->w, ohow = s->oh * s->ow, kk = s->kh * s->kw;
    const fc_int planes = s->n * s->c;
    const int unit = s->sh == 1 && s->sw == 1;
    float *flipped = NULL;
    if (unit) {
        if (!(flipped = malloc(sizeof(float) * (size_t)(s->k * kk)))) return FC_ENOMEM;
        for (fc_int k = 0; k < s->k; k++)
            for (fc_int e = 0; e < kk; e++) flipped[k * kk + kk - 1 - e] = weight[k * kk + e];
    }
    /* At unit stride, dx is the convolution of dy (oh x ow) into h x w. */
    const fc_dw_plane p = plane_of(s->oh, s->ow, s->h, s->w, s->kh, s->kw, 1, 1, s->dh, s->dw,
                                s->dh * (s->kh - 1) - s->ph, s->dw * (s->kw - 1) - s->pw);
#pragma omp parallel for num_threads(nthreads) schedule(static) \
    if (parallel(nthreads, planes, planes * hw * m))
    for (fc_int e = 0; e < planes; e++) {
        const fc_int n = e / s->c, c = e % s->c;
        float *out = dx + e * hw;
        memset(out, 0, sizeof(float) * (size_t)hw);
        if (!unit) {
            scatter_plane(s, weight, dy, n, c, out);
            continue;
        }
        for (fc_int q = 0; q < m; q++) {
            const fc_int k = c * m + q;
            ctx->dw_plane(&p, dy + (n * s->k + k) * ohow, flipped + k * kk, out);
        }
    }
    free(flipped);
    return 0;
}

/* dW's work units: channel k's images split into `blocks` contiguous blocks
 * (their column sums reduced apart, then added in block order), so that a
 * layer with few channels still gives every thread work. The split depends
 * on the shape alone, never on the thread count, so neither do the bits. */
#define FC_DW_UNITS 16

int fc_conv2d_depthwise_dweight(const fc_conv_shape *s, const float *x, const float *dy,
                                float *dweight, float *dbias, int nthreads)
{
    const fc_ctx *ctx = fc_ctx_current();
    const fc_dw_plane p = plane_of(s->h, s->w, s->oh, s->ow, s->kh, s->kw, s->sh, s->sw, s->dh,
                                   s->dw, s->ph, s->pw);
    const fc_int m = s->k / s->c, hw = s->h * s->w, ohow = s->oh * s->ow, kk = s->kh * s->kw;
    const fc_int per = (FC_DW_UNITS + s->k - 1) / s->k;
    const fc_int blocks = per < s->n ? per : s->n, units = s->k * blocks;
    const fc_int ncols = kk * s->ow;
    const int par = parallel(nthreads, units, s->n * s->k * ohow);
    const int team = par ? nthreads : 1;
    float *partial = malloc(sizeof(float) * (size_t)(units * kk));
    float *cols = malloc(sizeof(float) * (size_t)(team * ncols));
    if (!partial || !cols) {
        free(partial);
        free(cols);
        return FC_ENOMEM;
    }
#pragma omp parallel for num_threads(team) schedule(static) if (par)
    for (fc_int u = 0; u < units; u++) {
        const fc_int k = u / blocks;
        long long n0, n1;
        fc_split_range(s->n, (int)blocks, (int)(u % blocks), &n0, &n1);
        float *c = cols + fc_thread_id() * ncols;
        memset(c, 0, sizeof(float) * (size_t)ncols);
        for (fc_int n = n0; n < n1; n++)
            ctx->dw_dweight_plane(&p, x + (n * s->c + k / m) * hw, dy + (n * s->k + k) * ohow, c);
        /* each tap's columns in order */
        for (fc_int t = 0; t < kk; t++) {
            float sum = 0.0f;
            for (fc_int ox = 0; ox < s->ow; ox++) sum += c[t * s->ow + ox];
            partial[u * kk + t] = sum;
        }
    }
    for (fc_int k = 0; k < s->k; k++)
        for (fc_int t = 0; t < kk; t++) {
            float sum = partial[k * blocks * kk + t];
            for (fc_int b = 1; b < blocks; b++) sum += partial[(k * blocks + b) * kk + t];
            dweight[k * kk + t] = sum;
        }
    free(partial);
    free(cols);
    return dbias ? fc_conv_bias_gradient(s, dy, dbias, nthreads) : 0;
}
