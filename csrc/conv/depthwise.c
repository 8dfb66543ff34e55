/* Depthwise convolution: groups == C, each output channel k convolving its
 * own input channel k / m (m = K / C, the channel multiplier) with its own
 * kh x kw filter. Contracts: fc_conv2d_forward's and fc_conv2d_backward's
 * (fastconv.h); conv/plan.c decides when it runs.
 *
 * Why its own algorithm: per output it does kh*kw multiply-adds on kh*kw
 * inputs that no other output channel shares (but the multiplier's), so a
 * GEMM per group would be 1 x kh*kw times kh*kw x OH*OW, all packing and no
 * reuse. It is bound by memory: each plane is computed in one call of the
 * ISA table's plane kernel (kernels/depthwise.h), which copies it into a
 * per-thread padded buffer and runs every tap as one pass over the plane.
 *
 * Any kernel size, stride, padding (each side) and dilation. The padding
 * is the buffer's zeros, multiplied like the other terms (the planner
 * guards against infinite weights and dy, conv/plan.c). dx is the
 * depthwise convolution of dy with the flipped filters at unit stride
 * (padding dh*(kh-1) - ph before, the rest implied by the output size),
 * dy spread out by the forward's strides with zeros between, summed over
 * the multiplier's channels in order.
 *
 * dW's summation order: for each tap, one running sum per output column
 * over the rows of the images of a block (in order: images, then rows),
 * then the columns summed left to right, then the blocks in order. db is
 * summed the same way, in the same pass over dy. A block
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

/* A plane's buffer (kernels/depthwise.h) and the accumulator of its outputs,
 * one per thread, with the geometry they serve. */
typedef struct {
    fc_dw_geom g;
    fc_int buf_size, acc_size;
    fc_int *off;
    float *scratch; /* team * (buf_size + acc_size), zeroed: the padding */
} planes;

/* The outputs oh x ow of a source h x w spread out by (uh, uw) and padded
 * by (top, left) before, read at stride (sh, sw) and dilation (dh, dw) of a
 * kh x kw kernel; scratch for `team` threads, each accumulator `acc_size`
 * floats (0: the outputs' rows at the buffer's pitch). */
static int planes_init(planes *p, fc_int h, fc_int w, fc_int uh, fc_int uw, fc_int top,
                       fc_int left, fc_int oh, fc_int ow, fc_int kh, fc_int kw, fc_int sh,
                       fc_int sw, fc_int dh, fc_int dw, fc_int acc_size, int team)
{
    fc_dw_geom *g = &p->g;
    *g = (fc_dw_geom){.h = h, .w = w, .oh = oh, .ow = ow, .sh = sh, .sw = sw, .uh = uh,
                      .uw = uw, .top = top, .left = left, .taps = kh * kw};
    /* the padded rows and columns the taps read, in phases of the strides */
    g->hq = ((oh - 1) * sh + (kh - 1) * dh + sh) / sh;
    g->wq = ((ow - 1) * sw + (kw - 1) * dw + sw) / sw;
    inside(top, uh, sh * g->hq, h, &g->y0, &g->y1);
    inside(left, uw, sw * g->wq, w, &g->x0, &g->x1);
    p->buf_size = sh * sw * g->hq * g->wq + FC_DW_SLACK;
    p->acc_size = (acc_size ? acc_size : oh * g->wq) + FC_DW_SLACK;
    p->off = malloc(sizeof(fc_int) * (size_t)g->taps);
    p->scratch = calloc((size_t)team * (size_t)(p->buf_size + p->acc_size), sizeof(float));
    if (!p->off || !p->scratch) {
        free(p->off);
        free(p->scratch);
        return FC_ENOMEM;
    }
    for (fc_int i = 0; i < kh; i++)
        for (fc_int j = 0; j < kw; j++) {
            const fc_int a = i * dh, b = j * dw;
            p->off[i * kw + j] = ((a % sh) * sw + b % sw) * g->hq * g->wq + (a / sh) * g->wq + b / sw;
        }
    g->off = p->off;
    return 0;
}

static void planes_free(planes *p)
{
    free(p->off);
    free(p->scratch);
}

static float *buffer_of(const planes *p) { return p->scratch + fc_thread_id() * (p->buf_size + p->acc_size); }

static int parallel(int nthreads, fc_int units, fc_int elements)
{
    return nthreads > 1 && units > 1 && elements >= FC_DW_PAR_MIN;
}

int fc_conv2d_depthwise_forward(const fc_conv_shape *s, const float *x, const float *weight,
                                const float *bias, int relu, float *y, int nthreads)
{
    const fc_ctx *ctx = fc_ctx_current();
    const fc_int m = s->k / s->c, hw = s->h * s->w, ohow = s->oh * s->ow, kk = s->kh * s->kw;
    const fc_int planes_n = s->n * s->k;
    const int par = parallel(nthreads, planes_n, planes_n * ohow);
    planes p;
    if (planes_init(&p, s->h, s->w, 1, 1, s->ph, s->pw, s->oh, s->ow, s->kh, s->kw, s->sh, s->sw,
                    s->dh, s->dw, 0, par ? nthreads : 1))
        return FC_ENOMEM;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (par)
    for (fc_int e = 0; e < planes_n; e++) {
        const fc_int n = e / s->k, k = e % s->k;
        float *buf = buffer_of(&p);
        const fc_dw_sum job = {x + (n * s->c + k / m) * hw, weight + k * kk, 1, 0, 0,
                               bias ? bias[k] : 0.0f, relu, y + e * ohow};
        ctx->dw_plane(&p.g, &job, buf, buf + p.buf_size);
    }
    planes_free(&p);
    return 0;
}

int fc_conv2d_depthwise_dx(const fc_conv_shape *s, const float *weight, const float *dy, float *dx,
                           int nthreads)
{
    const fc_ctx *ctx = fc_ctx_current();
    const fc_int m = s->k / s->c, hw = s->h * s->w, ohow = s->oh * s->ow, kk = s->kh * s->kw;
    const fc_int planes_n = s->n * s->c;
    const int par = parallel(nthreads, planes_n, planes_n * hw * m);
    float *flipped = malloc(sizeof(float) * (size_t)(s->k * kk));
    if (!flipped) return FC_ENOMEM;
    for (fc_int k = 0; k < s->k; k++)
        for (fc_int e = 0; e < kk; e++) flipped[k * kk + kk - 1 - e] = weight[k * kk + e];
    /* dx: dy (oh x ow, spread out by the strides) convolved into h x w */
    planes p;
    if (planes_init(&p, s->oh, s->ow, s->sh, s->sw, s->dh * (s->kh - 1) - s->ph,
                    s->dw * (s->kw - 1) - s->pw, s->h, s->w, s->kh, s->kw, 1, 1, s->dh, s->dw,
                    0, par ? nthreads : 1)) {
        free(flipped);
        return FC_ENOMEM;
    }
#pragma omp parallel for num_threads(nthreads) schedule(static) if (par)
    for (fc_int e = 0; e < planes_n; e++) {
        const fc_int n = e / s->c, c = e % s->c;
        float *buf = buffer_of(&p);
        const fc_dw_sum job = {dy + (n * s->k + c * m) * ohow, flipped + c * m * kk, m, ohow, kk,
                               0.0f, 0, dx + e * hw};
        ctx->dw_plane(&p.g, &job, buf, buf + p.buf_size);
    }
    planes_free(&p);
    free(flipped);
    return 0;
}

/* dW's work units: the images split into `blocks` contiguous blocks (their
 * column sums reduced apart, then added in block order), so that the
 * threads share any layer; each block walks its planes in memory order (an
 * image's channels in turn), which keeps the hardware prefetch running, with
 * every channel's column sums at hand. The split depends on the shape alone,
 * never on the thread count, so neither do the bits. */
#define FC_DW_UNITS 16

int fc_conv2d_depthwise_dweight(const fc_conv_shape *s, const float *x, const float *dy,
                                float *dweight, float *dbias, int nthreads)
{
    const fc_ctx *ctx = fc_ctx_current();
    const fc_int m = s->k / s->c, hw = s->h * s->w, ohow = s->oh * s->ow, kk = s->kh * s->kw;
    const fc_int blocks = s->n < FC_DW_UNITS ? s->n : FC_DW_UNITS;
    /* per channel: a row of column sums per tap, and db's */
    const fc_int cp = FC_DW_COLS_PITCH(s->ow), sums = kk + 1, ncols = sums * cp;
    const int par = parallel(nthreads, blocks, s->n * s->k * ohow);
    float *partial = malloc(sizeof(float) * (size_t)(blocks * s->k * sums));
    planes p;
    if (!partial || planes_init(&p, s->h, s->w, 1, 1, s->ph, s->pw, s->oh, s->ow, s->kh, s->kw,
                                s->sh, s->sw, s->dh, s->dw, s->k * ncols, par ? nthreads : 1)) {
        free(partial);
        return FC_ENOMEM;
    }
#pragma omp parallel for num_threads(nthreads) schedule(static) if (par)
    for (fc_int u = 0; u < blocks; u++) {
        long long n0, n1;
        fc_split_range(s->n, (int)blocks, (int)u, &n0, &n1);
        float *buf = buffer_of(&p), *cols = buf + p.buf_size;
        memset(cols, 0, sizeof(float) * (size_t)(s->k * ncols));
        for (fc_int n = n0; n < n1; n++)
            for (fc_int k = 0; k < s->k; k++)
                ctx->dw_dweight_plane(&p.g, x + (n * s->c + k / m) * hw,
                                      dy + (n * s->k + k) * ohow, buf, cols + k * ncols);
        /* each sum's columns in order */
        for (fc_int e = 0; e < s->k * sums; e++) {
            const float *c = cols + e * cp;
            float sum = 0.0f;
            for (fc_int ox = 0; ox < s->ow; ox++) sum += c[ox];
            partial[u * s->k * sums + e] = sum;
        }
    }
    for (fc_int e = 0; e < s->k * sums; e++) {
        float sum = partial[e];
        for (fc_int b = 1; b < blocks; b++) sum += partial[b * s->k * sums + e];
        if (e % sums < kk)
            dweight[e / sums * kk + e % sums] = sum;
        else if (dbias)
            dbias[e / sums] = sum;
    }
    free(partial);
    planes_free(&p);
    return 0;
}
