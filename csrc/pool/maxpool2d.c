/* Max-pool with recorded argmax, and its backward through that argmax.
 *
 * 2x2 windows with stride 2 and no padding (every pool of the workloads) go
 * to the ISA table's row kernels (kernels/pool.h), threads splitting the
 * output rows of all planes: windows do not overlap, so the backward writes
 * each dx element once, with no memset. Any other geometry (padding,
 * dilation, a ceil_mode window past the input) takes the general path below, whose work is split over (n, c) planes: each plane is read and
 * written by one thread only, so the backward's scatter-add has no race and no
 * atomics. Either way the result does not depend on the thread count. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fastconv.h"
#include "core/fc_omp.h"
#include "kernels/ctx.h"

/* Below this many input elements a pool runs on one thread: waking a team
 * costs more than it saves. */
#define PARALLEL_MIN 16384

static inline void store_index(void *argmax, int bytes, fc_int i, int v)
{
    if (bytes == 1) ((uint8_t *)argmax)[i] = (uint8_t)v;
    else ((int32_t *)argmax)[i] = (int32_t)v;
}

static inline fc_int load_index(const void *argmax, int bytes, fc_int i)
{
    return bytes == 1 ? ((const uint8_t *)argmax)[i] : ((const int32_t *)argmax)[i];
}

/* The taps [*i0, *i1) of a window starting at `start` (may be negative:
 * padding) with k taps `d` apart that land inside [0, size). */
static inline void taps_inside(fc_int start, fc_int k, fc_int d, fc_int size, fc_int *i0, fc_int *i1)
{
    *i0 = start < 0 ? (-start + d - 1) / d : 0;
    *i1 = start >= size ? 0 : (size - 1 - start) / d + 1;
    if (*i1 > k) *i1 = k;
}

/* One output row: for each window tap (i, j) in row-major order, a
 * compare-and-select across all output columns. The loop over columns has no
 * branch, so the compiler vectorizes it, and scanning taps in window order
 * keeps the tie and NaN rules of a per-window scan. best/best_i hold ow
 * entries. */
static void pool_row(const fc_pool_shape *s, const float *plane, fc_int oy, float *best, int32_t *best_i)
{
    fc_int ys = oy * s->sh - s->ph, i0, i1;
    taps_inside(ys, s->kh, s->dh, s->h, &i0, &i1);
    for (fc_int ox = 0; ox < s->ow; ox++) {
        /* Start from the window's first real (unpadded) tap, as PyTorch does,
         * so a window of -inf still points at a real input. */
        fc_int xs = ox * s->sw - s->pw;
        best[ox] = -INFINITY;
        best_i[ox] = (int32_t)(i0 * s->kw + (xs < 0 ? (-xs + s->dw - 1) / s->dw : 0));
    }
    for (fc_int i = i0; i < i1; i++) {
        const float *row = plane + (ys + i * s->dh) * s->w;
        for (fc_int j = 0; j < s->kw; j++) {
            /* Columns ox whose tap j lands inside the row: 0 <= ox*sw + off < w. */
            fc_int off = j * s->dw - s->pw;
            fc_int lo = off < 0 ? (-off + s->sw - 1) / s->sw : 0;
            fc_int last = s->w - 1 - off; /* ox * sw <= last; none when last < 0 */
            fc_int hi = last < 0 ? 0 : last / s->sw + 1;
            if (hi > s->ow) hi = s->ow;
            int32_t tap = (int32_t)(i * s->kw + j);
            for (fc_int ox = lo; ox < hi; ox++) {
                float v = row[ox * s->sw + off];
                int take = (v > best[ox]) | (v != v);
                best[ox] = take ? v : best[ox];
                best_i[ox] = take ? tap : best_i[ox];
            }
        }
    }
}

/* The row kernels' case: 2x2 windows at stride 2, no padding or dilation,
 * none past the input (ceil_mode on an odd size makes a last, clipped one). */
static int is_2x2_stride_2(const fc_pool_shape *s)
{
    return s->kh == 2 && s->kw == 2 && s->sh == 2 && s->sw == 2 && s->ph == 0 && s->pw == 0 &&
           s->dh == 1 && s->dw == 1 && s->oh == s->h / 2 && s->ow == s->w / 2;
}

static void forward_2x2(const fc_pool_shape *s, const float *x, float *y, uint8_t *argmax, int nthreads)
{
    fc_pool_row_forward_fn *const row = fc_ctx_current()->pool2x2_forward;
    fc_int planes = s->n * s->c;
    /* collapse(2): threads split the rows of all planes, so a batch of one
     * image with few channels still keeps both busy. */
#pragma omp parallel for collapse(2) num_threads(nthreads) schedule(static) \
    if (planes * s->h * s->w >= PARALLEL_MIN)
    for (fc_int p = 0; p < planes; p++)
        for (fc_int oy = 0; oy < s->oh; oy++) {
            const float *r0 = x + (p * s->h + 2 * oy) * s->w;
            fc_int o = (p * s->oh + oy) * s->ow;
            row(s->ow, r0, r0 + s->w, y + o, argmax + o);
        }
}

/* dx rows and columns that no window covers (the last of an odd H or W) get
 * zeros here; the row kernels write all the others. */
static fc_int backward_2x2(const fc_pool_shape *s, const float *dy, const uint8_t *argmax, float *dx,
                           int nthreads)
{
    fc_pool_row_backward_fn *const row = fc_ctx_current()->pool2x2_backward;
    fc_int planes = s->n * s->c, bad = 0;
#pragma omp parallel for collapse(2) num_threads(nthreads) schedule(static) reduction(+ : bad) \
    if (planes * s->h * s->w >= PARALLEL_MIN)
    for (fc_int p = 0; p < planes; p++)
        for (fc_int oy = 0; oy < s->oh; oy++) {
            fc_int o = (p * s->oh + oy) * s->ow;
            const uint8_t *am = argmax + o;
            float *d0 = dx + (p * s->h + 2 * oy) * s->w, *d1 = d0 + s->w;
            row(s->ow, dy + o, am, d0, d1);
            /* An index past 3 sets a bit above the low two: OR all (cheap,
             * vectorized), count only when one is there. */
            uint8_t any = 0;
            for (fc_int ox = 0; ox < s->ow; ox++) any |= am[ox];
            if (any > 3)
                for (fc_int ox = 0; ox < s->ow; ox++) bad += am[ox] > 3;
            if (s->w > 2 * s->ow) d0[s->w - 1] = d1[s->w - 1] = 0.0f;
            if (oy == s->oh - 1) memset(d1 + s->w, 0, sizeof(float) * (size_t)((s->h - 2 * s->oh) * s->w));
        }
    return bad;
}

int fc_maxpool2d_forward(const fc_pool_shape *s, const float *x, float *y,
                         void *argmax, int argmax_bytes, int nthreads)
{
    if (is_2x2_stride_2(s) && argmax_bytes == 1) {
        forward_2x2(s, x, y, argmax, nthreads);
        return 0;
    }
    fc_int planes = s->n * s->c, in_plane = s->h * s->w, out_plane = s->oh * s->ow;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (planes * in_plane >= PARALLEL_MIN) reduction(| : failed)
    {
        int32_t *row_i = malloc(sizeof(int32_t) * (size_t)s->ow);
        if (!row_i) failed = 1;
#pragma omp for schedule(static)
        for (fc_int p = 0; p < planes; p++) {
            if (!row_i) continue;
            for (fc_int oy = 0; oy < s->oh; oy++) {
                fc_int o = p * out_plane + oy * s->ow;
                pool_row(s, x + p * in_plane, oy, y + o, row_i);
                for (fc_int ox = 0; ox < s->ow; ox++) store_index(argmax, argmax_bytes, o + ox, row_i[ox]);
            }
        }
        free(row_i);
    }
    return failed ? FC_ENOMEM : 0;
}

fc_int fc_maxpool2d_backward(const fc_pool_shape *s, const float *dy, const void *argmax,
                             int argmax_bytes, float *dx, int nthreads)
{
    if (is_2x2_stride_2(s) && argmax_bytes == 1) return backward_2x2(s, dy, argmax, dx, nthreads);
    fc_int planes = s->n * s->c, in_plane = s->h * s->w, out_plane = s->oh * s->ow;
    fc_int bad = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+ : bad) if (planes * in_plane >= PARALLEL_MIN)
    for (fc_int p = 0; p < planes; p++) {
        float *plane = dx + p * in_plane;
        memset(plane, 0, sizeof(float) * (size_t)in_plane);
        for (fc_int oy = 0; oy < s->oh; oy++) {
            fc_int ys = oy * s->sh - s->ph;
            for (fc_int ox = 0; ox < s->ow; ox++) {
                fc_int o = p * out_plane + oy * s->ow + ox;
                fc_int idx = load_index(argmax, argmax_bytes, o);
                /* Range first: the tap's offset times a dilation must not overflow. */
                int ok = idx >= 0 && idx < s->kh * s->kw;
                fc_int iy = ok ? ys + idx / s->kw * s->dh : -1;
                fc_int ix = ok ? ox * s->sw - s->pw + idx % s->kw * s->dw : -1;
                if (iy < 0 || iy >= s->h || ix < 0 || ix >= s->w) {
                    bad++;
                    continue;
                }
                plane[iy * s->w + ix] += dy[o];
            }
        }
    }
    return bad;
}
