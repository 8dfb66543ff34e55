/* Direct convolution for layers with 8, 16 or 32..128 (multiples of 16) output channels: the
 * forward (contract of fc_conv2d_forward in fastconv.h), and dW/db (contract
 * of fc_conv2d_backward's); dx of a unit-stride layer is itself a
 * convolution (conv/plan.c, dx_by_convolution), and a strided one a few
 * (conv/polyphase.c, with uneven or negative padding), which come here when
 * they have such K outputs. Strides other than 1 where the tiles take them
 * (kernels/direct.h, `strided`). When it runs is conv/plan.c's rule (with
 * the measurements behind it).
 *
 * Why: with K = 8 or 16 output channels, im2col + GEMM uses each packed B
 * element in only K multiply-adds, so gathering the 5x5 taps into the packed
 * panels costs about as much as the arithmetic (64x8x14x14 -> 16, 5x5: the
 * implicit-im2col GEMM runs at under half of the FMA peak). Here nothing is
 * packed. Each image is first copied into a zero-padded buffer of the
 * (C, hp, wp) planes its taps read, so that no tap needs a bounds test, and
 * a tap (c, i, j) is one offset into it; weights are transposed once per
 * call to (C, kh, kw, K).
 * The register tiles are the ISA table's (kernels/direct.h; AVX2's in
 * kernels/avx2/direct_avx2.c, AVX-512's in kernels/avx512/direct_avx512.c):
 * with K = 16 (and its multiples) output channels as the vector lanes, with K = 8 output
 * positions at the padded row pitch. Bias and ReLU
 * are applied as a tile is stored.
 *
 * Every output sums its taps in the same order (c, i, j), then adds the
 * bias, whatever the thread count or the batch split: the forward is bitwise
 * identical across both. dW sums over images in per-thread partials, as the
 * GEMM path does (see below).
 *
 * Threading: with at least as many images as threads, each thread runs whole
 * images (static split) with its own padded buffer; otherwise the forward
 * runs the images one after another and shares each one's tiles among the
 * threads, and dW runs on one thread.
 *
 * Where the ISA table has no tiles for K (the generic ISA has none), the
 * planner does not pick it, and the GEMM path runs instead.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastconv.h"
#include "core/fc_omp.h"
#include "kernels/ctx.h"
#include "conv/conv.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-tree-loop-distribute-patterns")
#endif

const fc_direct_kernel *fc_direct_tiles(const fc_ctx *ctx, fc_int k)
{
    const fc_direct_kernel *kr = k == 8    ? &ctx->direct_k8
                                 : k == 16 ? &ctx->direct_k16
                                 : k > 16 && k % 16 == 0 && k <= FC_DIRECT_MAX_K ? &ctx->direct_wide
                                           : NULL;
    return kr && kr->forward ? kr : NULL;
}

/* The padded image holds the rows and columns the taps read: ph rows of
 * zeros before the image (cropped rows when ph < 0) and as many after as the
 * output size implies, which may differ from ph (uneven padding, as a
 * strided dx's phases have, conv/plan.c), and the same for the columns. */
static fc_direct_geom geom_of(const fc_conv_shape *s, const fc_direct_kernel *kr)
{
    fc_direct_geom g;
    g.hp = (s->oh - 1) * s->sh + s->kh;
    g.wp = (s->ow - 1) * s->sw + s->kw;
    g.plane = g.hp * g.wp;
    g.floats = (s->c * g.plane + kr->overread + s->kw + 15) / 16 * 16;
    return g;
}

/* Output: xp, the rows and columns of image x (C, H, W) that fall in the
 * padded planes, at (ph, pw) from their corner, zeros elsewhere. Every
 * image writes the same elements, so the zeros are written for the first
 * (`first`) and stay for the next ones. */
static void pad_image(const fc_conv_shape *s, const fc_direct_geom *g, const float *x, float *xp,
                      int first)
{
    if (first) memset(xp, 0, sizeof(float) * g->floats);
    const fc_int r0 = s->ph < 0 ? -s->ph : 0, r1 = s->h < g->hp - s->ph ? s->h : g->hp - s->ph;
    const fc_int x0 = s->pw < 0 ? -s->pw : 0, x1 = s->w < g->wp - s->pw ? s->w : g->wp - s->pw;
    const fc_int len = x1 - x0;
    if (len <= 0) return;
    for (fc_int c = 0; c < s->c; c++)
        for (fc_int r = r0; r < r1; r++) {
            float *restrict d = xp + c * g->plane + (r + s->ph) * g->wp + x0 + s->pw;
            const float *restrict src = x + (c * s->h + r) * s->w + x0;
            /* an inline loop: for rows of a few dozen floats a memcpy call
             * costs more than the copy */
            for (fc_int e = 0; e < len; e++) d[e] = src[e];
        }
}

/* off[t] = c * plane + i * wp + j for tap t = (c * kh + i) * kw + j: where
 * the tap reads in the padded image, relative to the output pixel's corner. */
static void tap_offsets(const fc_conv_shape *s, const fc_direct_geom *g, fc_int *off)
{
    for (fc_int c = 0, t = 0; c < s->c; c++)
        for (fc_int i = 0; i < s->kh; i++)
            for (fc_int j = 0; j < s->kw; j++) off[t++] = c * g->plane + i * g->wp + j;
}

/* Forward tiles of one padded image: for K = 16 and up they cover its
 * output pixels, for K = 8 its positions at the padded pitch. */
static fc_int tile_count(const fc_conv_shape *s, const fc_direct_geom *g, const fc_direct_kernel *kr)
{
    const fc_int positions = s->k == 8 ? s->oh * g->wp : s->oh * s->ow;
    return (positions + kr->tile - 1) / kr->tile;
}

int fc_conv2d_direct_forward(const fc_conv_shape *s, const float *x, const float *weight,
                             const float *bias, int relu, float *y, int nthreads)
{
    const fc_int kk = s->kh * s->kw, taps = s->c * kk, ohow = s->oh * s->ow;
    const fc_int chw = s->c * s->h * s->w, kohow = s->k * ohow;
    const fc_direct_kernel *kr = fc_direct_tiles(fc_ctx_current(), s->k);
    const fc_direct_geom g = geom_of(s, kr);
    const fc_int tiles = tile_count(s, &g, kr);
    const int team = nthreads > 1 && s->n >= nthreads ? nthreads : 1;
    /* Per thread, a padded image rounded up to whole cache lines (no two
     * threads write one line); then the transposed weights. */
    const fc_int pad_floats = g.floats;
    const size_t bytes = sizeof(float) * (size_t)(team * pad_floats + taps * s->k) +
                         sizeof(fc_int) * (size_t)taps;
    float *work = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!work) return FC_ENOMEM;
    float *wt = work + team * pad_floats;
    fc_int *off = (fc_int *)(wt + taps * s->k);
    tap_offsets(s, &g, off);
    for (fc_int k = 0; k < s->k; k++)
        for (fc_int t = 0; t < taps; t++) wt[t * s->k + k] = weight[k * taps + t];

    if (team > 1) {
#pragma omp parallel num_threads(team)
        {
            const int t = fc_thread_id();
            float *xp = work + t * pad_floats;
            long long lo, hi;
            fc_split_range(s->n, fc_team_size(), t, &lo, &hi);
            for (fc_int n = lo; n < hi; n++) {
                pad_image(s, &g, x + n * chw, xp, n == lo);
                kr->forward(s, &g, xp, off, wt, bias, relu, y + n * kohow, 0, tiles);
            }
        }
    } else {
        for (fc_int n = 0; n < s->n; n++) {
            pad_image(s, &g, x + n * chw, work, n == 0);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && tiles >= 2 * nthreads)
            {
                long long lo, hi;
                fc_split_range(tiles, fc_team_size(), fc_thread_id(), &lo, &hi);
                kr->forward(s, &g, work, off, wt, bias, relu, y + n * kohow, lo, hi);
            }
        }
    }
    free(work);
    return 0;
}

/* dW and db: each thread's images accumulate into its own (taps, K, lanes)
 * partials (the tiles' layout, kernels/direct.h); at the end dW = the
 * partials summed in thread order, each thread's lanes in order:
 * deterministic for a thread count. */
int fc_conv2d_direct_backward_weight(const fc_conv_shape *s, const float *x, const float *dy,
                                     float *dweight, float *dbias, int nthreads)
{
    const fc_int taps = s->c * s->kh * s->kw, ohow = s->oh * s->ow;
    const fc_int chw = s->c * s->h * s->w, kohow = s->k * ohow;
    const fc_direct_kernel *kr = fc_direct_tiles(fc_ctx_current(), s->k);
    const fc_direct_geom g = geom_of(s, kr);
    const fc_int lanes = kr->lanes;
    /* K = 8: positions at the padded pitch, whole vectors (the tiles'
     * overread covers the reads past the planes). */
    const fc_int span = (s->oh * g.wp + lanes - 1) / lanes * lanes;
    /* Images split over threads; n < nthreads runs on one (a small job). */
    const int team = nthreads > 1 && s->n >= nthreads ? nthreads : 1;
    /* Per thread, whole cache lines: padded image, staged dy, the (taps, K,
     * lanes) dW partial and the (K, lanes) db partial. */
    const fc_int dy_floats = (s->k == 8 ? span * s->k + 15 : ohow * s->k) / 16 * 16;
    const fc_int part_floats = ((taps + 1) * s->k * lanes + 15) / 16 * 16;
    const fc_int per_thread = g.floats + dy_floats + part_floats;
    const size_t bytes = sizeof(float) * (size_t)(team * per_thread) + sizeof(fc_int) * (size_t)taps;
    float *work = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!work) return FC_ENOMEM;
    fc_int *off = (fc_int *)(work + team * per_thread);
    tap_offsets(s, &g, off);

#pragma omp parallel num_threads(team) if (team > 1)
    {
        const int t = fc_thread_id();
        float *xp = work + t * per_thread, *dyk = xp + g.floats, *part = dyk + dy_floats;
        memset(dyk, 0, sizeof(float) * (dy_floats + part_floats));
        long long lo, hi;
        fc_split_range(s->n, fc_team_size(), t, &lo, &hi);
        for (fc_int n = lo; n < hi; n++) {
            pad_image(s, &g, x + n * chw, xp, n == lo);
            kr->dweight(s, &g, xp, dy + n * kohow, dyk, span, off, part, part + taps * s->k * lanes);
        }
#pragma omp barrier
        /* dW[k][tap] and db[k] (as tap `taps`): partials in thread order. */
        const int nparts = fc_team_size();
        const float *first = work + g.floats + dy_floats;
#pragma omp for schedule(static)
        for (fc_int e = 0; e < (taps + 1) * s->k; e++) {
            const fc_int tap = e / s->k, k = e % s->k;
            float acc = 0.0f;
            for (int q = 0; q < nparts; q++)
                for (fc_int l = 0; l < lanes; l++) acc += first[q * per_thread + e * lanes + l];
            if (tap < taps)
                dweight[k * taps + tap] = acc;
            else if (dbias)
                dbias[k] = acc;
        }
    }
    free(work);
    return 0;
}
