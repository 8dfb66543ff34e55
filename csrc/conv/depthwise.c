/* Depthwise convolution: groups == C, each output channel k convolving its
 * own input channel k / m (m = K / C, the channel multiplier) with its own
 * kh x kw filter. Contracts: fc_conv2d_forward's and fc_conv2d_backward's
 * (fastconv.h); conv/plan.c decides when it runs.
 *
 * Why its own algorithm: per output it does kh*kw multiply-adds on kh*kw
 * inputs that no other output channel shares (but the multiplier's), so a
 * GEMM per group would be 1 x kh*kw times kh*kw x OH*OW, all packing and no
 * reuse. It is bound by memory: each output row is computed in one pass
 * over its input rows by the ISA table's row kernel (kernels/depthwise.h),
 * which keeps a 3x3 filter in registers and vectorizes along the row.
 *
 * Any kernel size, stride, padding (each side) and dilation: a row kernel
 * is given only the kernel rows whose input rows lie in the image, and
 * skips the taps of a row that fall outside it, so padding adds no terms
 * (no 0 * Inf). dx at unit stride is the depthwise convolution of dy with
 * the flipped filters (padding dh*(kh-1) - ph before, the rest implied by
 * the output size), summed over the multiplier's channels in order; at
 * other strides each dy is scattered to its taps instead, plainly.
 *
 * Determinism: every output plane (y, dx) and every channel's dW is
 * computed by one thread in a fixed order (dW: images, then rows, each row
 * kernel's sums in its fixed order), so results are the same bits at any
 * thread count. Threads share the planes (channels for dW) statically.
 */
#include <stdlib.h>
#include <string.h>

#include "fastconv.h"
#include "kernels/ctx.h"
#include "conv/conv.h"

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

/* One plane's convolution: input rows of the row kernel's geometry g, h of
 * them; kernel rows kh, dilation dh, stride sh, padding ph before; oh
 * output rows. */
typedef struct {
    fc_dw_geom g;
    fc_int h, kh, sh, dh, ph, oh;
} dw_plane;

static dw_plane plane_of(fc_int h, fc_int w, fc_int oh, fc_int ow, fc_int kh, fc_int kw,
                         fc_int sh, fc_int sw, fc_int dh, fc_int dw, fc_int ph, fc_int pw)
{
    dw_plane p = {{w, ow, kw, sw, dw, pw, 0, 0}, h, kh, sh, dh, ph, oh};
    /* Interior: the first tap at or after column 0, the last before w. */
    fc_int a, b, lo, hi;
    inside(-pw, sw, w, ow, &a, &b);
    inside((kw - 1) * dw - pw, sw, w, ow, &lo, &hi);
    p.g.x0 = a > lo ? a : lo;
    p.g.x1 = b < hi ? b : hi;
    if (p.g.x1 < p.g.x0) p.g.x1 = p.g.x0;
    return p;
}

/* out (oh rows of ow) += the taps of the input plane `in` with filter wt. */
static void convolve_plane(const fc_ctx *ctx, const dw_plane *p, const float *in, const float *wt,
                           float *out)
{
    const fc_int w = p->g.w, kw = p->g.kw;
    for (fc_int oy = 0; oy < p->oh; oy++) {
        const fc_int base = oy * p->sh - p->ph;
        fc_int i0, i1;
        inside(base, p->dh, p->h, p->kh, &i0, &i1);
        if (i0 < i1)
            ctx->dw_row(&p->g, in + (base + i0 * p->dh) * w, p->dh * w, i1 - i0, wt + i0 * kw,
                        out + oy * p->g.ow);
    }
}

static int parallel(int nthreads, fc_int units, fc_int elements)
{
    return nthreads > 1 && units > 1 && elements >= FC_DW_PAR_MIN;
}

int fc_conv2d_depthwise_forward(const fc_conv_shape *s, const float *x, const float *weight,
                                const float *bias, int relu, float *y, int nthreads)
{
    const fc_ctx *ctx = fc_ctx_current();
    const dw_plane p = plane_of(s->h, s->w, s->oh, s->ow, s->kh, s->kw, s->sh, s->sw, s->dh, s->dw,
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
        convolve_plane(ctx, &p, x + (n * s->c + k / m) * hw, weight + k * kk, out);
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
    const dw_plane p = plane_of(s->oh, s->ow, s->h, s->w, s->kh, s->kw, 1, 1, s->dh, s->dw,
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
            convolve_plane(ctx, &p, dy + (n * s->k + k) * ohow, flipped + k * kk, out);
        }
    }
    free(flipped);
    return 0;
}

int fc_conv2d_depthwise_dweight(const fc_conv_shape *s, const float *x, const float *dy,
                                float *dweight, float *dbias, int nthreads)
{
    const fc_ctx *ctx = fc_ctx_current();
    const dw_plane p = plane_of(s->h, s->w, s->oh, s->ow, s->kh, s->kw, s->sh, s->sw, s->dh, s->dw,
                                s->ph, s->pw);
    const fc_int m = s->k / s->c, hw = s->h * s->w, ohow = s->oh * s->ow, kk = s->kh * s->kw;
#pragma omp parallel for num_threads(nthreads) schedule(static) \
    if (parallel(nthreads, s->k, s->n * s->k * ohow))
    for (fc_int k = 0; k < s->k; k++) {
        float *acc = dweight + k * kk;
        memset(acc, 0, sizeof(float) * (size_t)kk);
        for (fc_int n = 0; n < s->n; n++) {
            const float *in = x + (n * s->c + k / m) * hw, *d = dy + (n * s->k + k) * ohow;
            for (fc_int oy = 0; oy < s->oh; oy++) {
                const fc_int base = oy * s->sh - s->ph;
                fc_int i0, i1;
                inside(base, s->dh, s->h, s->kh, &i0, &i1);
                if (i0 < i1)
                    ctx->dw_dweight_row(&p.g, in + (base + i0 * s->dh) * s->w, s->dh * s->w,
                                        i1 - i0, d + oy * s->ow, acc + i0 * s->kw);
            }
        }
    }
    return dbias ? fc_conv_bias_gradient(s, dy, dbias, nthreads) : 0;
}
