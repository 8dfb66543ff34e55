/* dx of a strided convolution as sh x sw unit-stride convolutions of dy, one
 * per phase of dx's pixels (contract: fc_conv2d_backward's, fastconv.h;
 * conv/plan.c decides when it runs).
 *
 * With stride (sh, sw) and dilation 1, dx pixel (y, x) = (sh Y + a, sw X + b)
 * receives tap (i, j) of output (oy, ox) exactly when y = sh oy + i - ph,
 * that is for the rows i with (a + ph - i) % sh == 0, reading oy = Y +
 * (a + ph - i) / sh, and the same for the columns. So phase (a, b) of dx,
 * an Ha x Wb plane (Ha = ceil((H - a) / sh)), is the correlation of dy with
 * the sub-kernel of those taps, flipped (the taps ordered by the dy row
 * they read) and transposed (K in, C out), at unit stride, with the padding
 * that puts Y's first tap on row Y - top of dy (top = -min (a + ph - i) /
 * sh, negative when it crops); the padding after is what Ha implies, often
 * one more or one less than top. A phase without taps (a stride past the
 * kernel) is zero. The sh * sw phases hold each tap once: the multiply-adds
 * of the forward, in convolutions that the planner runs as any other
 * (direct, pointwise, Winograd, implicit im2col), against im2col's dx,
 * which builds a column matrix K * kh * kw times larger than dy and
 * scatters it (col2im).
 *
 * Each phase is planned once as a forward of the whole batch
 * (fc_conv2d_dx_part_plan: auto's choice, or the mode's exclusion; a rule
 * may count the batch's tiles and a guard read all of dy), then run a block
 * of images at a time into a scratch that holds the block's phases, which
 * are dealt out into dx. Each dx pixel is one phase's output, by one
 * algorithm whatever the block, whose outputs per image do not depend on
 * the block or the thread count (the forwards' own guarantee), so neither
 * do dx's.
 *
 * The padding of dy is multiplied by the weights as in dx_by_convolution
 * (plan.c): the planner guards against infinite weights.
 */
#include <stdlib.h>
#include <string.h>

#include "fastconv.h"
#include "core/fc_omp.h"
#include "conv/conv.h"

/* A block's phases in floats (512 KB): with the block's dy, which each
 * phase's forward reads again, in a 1 MB L2 until they are dealt out (4 MB
 * blocks, in L3, spent a fifth of dx's time re-reading dy). */
#define FC_PHASES_BLOCK_FLOATS (1 << 17)

/* Below this many dx elements, dealing out is not worth a parallel region. */
#define FC_PHASES_PAR_MIN 32768

/* The taps of one axis that feed phase a: count, the first dy row they read
 * relative to the phase's row (-top), and tap[t] for t in dy-row order. */
typedef struct {
    fc_int count, first;
    fc_int tap[FC_POLYPHASE_MAX_K];
    fc_int size; /* the phase's rows: ceil((n - a) / stride) */
} axis_phase;

static axis_phase phase_of(fc_int a, fc_int n, fc_int k, fc_int stride, fc_int pad)
{
    axis_phase q = {.count = 0, .first = 0, .size = n > a ? (n - a + stride - 1) / stride : 0};
    /* (a + pad - i) / stride grows as i falls: the taps from the last down */
    for (fc_int i = k - 1; i >= 0; i--) {
        const fc_int e = a + pad - i;
        if (((e % stride) + stride) % stride) continue;
        if (q.count == 0) q.first = e / stride;
        q.tap[q.count++] = i;
    }
    return q;
}

/* The forward that computes phase (r, q) of n images' dx from their dy. */
static fc_conv_shape phase_shape(const fc_conv_shape *s, const axis_phase *r, const axis_phase *q,
                                 fc_int n)
{
    return (fc_conv_shape){.n = n, .c = s->k, .h = s->oh, .w = s->ow, .k = s->c, .kh = r->count,
                           .kw = q->count, .sh = 1, .sw = 1, .ph = -r->first, .pw = -q->first,
                           .oh = r->size, .ow = q->size, .dh = 1, .dw = 1, .groups = 1};
}

/* dst[j * step] = src[j] (0 when src is NULL) for j < n. */
static inline __attribute__((always_inline)) void deal(float *restrict dst, fc_int step,
                                                       const float *restrict src, fc_int n)
{
    if (src)
        for (fc_int j = 0; j < n; j++) dst[j * step] = src[j];
    else
        for (fc_int j = 0; j < n; j++) dst[j * step] = 0.0f;
}

int fc_conv2d_polyphase_dx(const fc_conv_shape *s, int precision, const float *weight,
                           const float *dy, float *dx, int nthreads)
{
    const fc_int sh = s->sh, sw = s->sw, hw = s->h * s->w, ohow = s->oh * s->ow;
    const fc_int kk = s->kh * s->kw, chw = s->c * hw;
    if (s->n <= 0 || chw <= 0) return 0; /* no dx */
    axis_phase rows[FC_POLYPHASE_MAX_STRIDE], cols[FC_POLYPHASE_MAX_STRIDE];
    for (fc_int a = 0; a < sh; a++) rows[a] = phase_of(a, s->h, s->kh, sh, s->ph);
    for (fc_int b = 0; b < sw; b++) cols[b] = phase_of(b, s->w, s->kw, sw, s->pw);
    /* Each phase's sub-kernels, (C, K, taps of the phase), one after another. */
    float *sub = malloc(sizeof(float) * (size_t)(s->c * s->k * kk));
    /* images per block: the budget's, at least one per thread, at most all */
    fc_int nb = FC_PHASES_BLOCK_FLOATS / chw;
    nb = nb < nthreads ? nthreads : nb;
    nb = nb < s->n ? nb : s->n;
    nb = nb > 1 ? nb : 1;
    float *phases = malloc(sizeof(float) * (size_t)(nb * chw));
    /* phase (a, b)'s sub-kernels, and the algorithm planned for it */
    fc_int at[FC_POLYPHASE_MAX_STRIDE * FC_POLYPHASE_MAX_STRIDE];
    int algorithm[FC_POLYPHASE_MAX_STRIDE * FC_POLYPHASE_MAX_STRIDE];
    int rc = sub && phases ? 0 : FC_ENOMEM;
    for (fc_int a = 0, used = 0; a < sh && !rc; a++)
        for (fc_int b = 0; b < sw; b++) {
            const axis_phase *r = &rows[a], *q = &cols[b];
            at[a * sw + b] = used;
            for (fc_int c = 0; c < s->c; c++)
                for (fc_int k = 0; k < s->k; k++)
                    for (fc_int u = 0; u < r->count; u++)
                        for (fc_int v = 0; v < q->count; v++)
                            sub[used + ((c * s->k + k) * r->count + u) * q->count + v] =
                                weight[((k * s->c + c) * s->kh + r->tap[u]) * s->kw + q->tap[v]];
            used += s->c * s->k * r->count * q->count;
            if (!r->count || !q->count || !r->size || !q->size) continue;
            const fc_conv_shape t = phase_shape(s, r, q, s->n);
            algorithm[a * sw + b] = fc_conv2d_dx_part_plan(&t, precision, dy, sub + at[a * sw + b], nthreads);
        }
    for (fc_int n0 = 0; n0 < s->n && !rc; n0 += nb) {
        const fc_int m = s->n - n0 < nb ? s->n - n0 : nb;
        /* the block's phases, phase (a, b) at its offset, (m, C, Ha, Wb) */
        fc_int offset[FC_POLYPHASE_MAX_STRIDE * FC_POLYPHASE_MAX_STRIDE];
        for (fc_int a = 0, used = 0; a < sh && !rc; a++)
            for (fc_int b = 0; b < sw && !rc; b++) {
                const axis_phase *r = &rows[a], *q = &cols[b];
                offset[a * sw + b] = used;
                if (!r->count || !q->count || !r->size || !q->size) continue;
                const fc_conv_shape t = phase_shape(s, r, q, m);
                rc = fc_conv2d_dx_part_run(algorithm[a * sw + b], &t, precision, dy + n0 * s->k * ohow,
                                           sub + at[a * sw + b], phases + used, nthreads);
                used += m * s->c * r->size * q->size;
            }
        if (rc) break;
        /* dx's rows of the block, each from its phases' rows (zero where none) */
        const fc_int planes = m * s->c;
#pragma omp parallel for num_threads(nthreads) schedule(static) \
    if (nthreads > 1 && planes > 1 && planes * hw >= FC_PHASES_PAR_MIN)
        for (fc_int e = 0; e < planes; e++) {
            float *d = dx + n0 * chw + e * hw;
            for (fc_int y = 0; y < s->h; y++) {
                const fc_int a = y % sh;
                const axis_phase *r = &rows[a];
                float *row = d + y * s->w;
                const float *src[FC_POLYPHASE_MAX_STRIDE] = {NULL};
                for (fc_int b = 0; b < sw && b < s->w; b++)
                    src[b] = !r->count || !cols[b].count
                                 ? NULL
                                 : phases + offset[a * sw + b] + (e * r->size + y / sh) * cols[b].size;
                if (sw == 2 && src[0] && s->w > 1 && src[1]) {
                    /* the usual stride: two rows interleaved, which vectorizes */
                    const fc_int pairs = s->w / 2;
                    const float *restrict s0 = src[0], *restrict s1 = src[1];
                    for (fc_int j = 0; j < pairs; j++) {
                        row[2 * j] = s0[j];
                        row[2 * j + 1] = s1[j];
                    }
                    if (s->w % 2) row[s->w - 1] = s0[pairs];
                    continue;
                }
                for (fc_int b = 0; b < sw && b < s->w; b++) deal(row + b, sw, src[b], cols[b].size);
            }
        }
    }
    free(sub);
    free(phases);
    return rc;
}
