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
 * strided dx's phases have, conv/plan.c), and the same for the columns.
 * `planes` of them (C; in bf16, the (C + 1) / 2 channel pairs, a 32-bit
 * word a pixel), `overread` elements past them. */
static fc_direct_geom geom_of(const fc_conv_shape *s, fc_int planes, fc_int overread)
{
    fc_direct_geom g;
    g.hp = (s->oh - 1) * s->sh + s->kh;
    g.wp = (s->ow - 1) * s->sw + s->kw;
    g.plane = g.hp * g.wp;
    g.floats = (planes * g.plane + overread + s->kw + 15) / 16 * 16;
    return g;
}

/* The rows [r0, r1) and columns [x0, x0 + len) of the image that fall in
 * the padded planes (none when len <= 0). */
typedef struct {
    fc_int r0, r1, x0, len;
} window;

static window window_of(const fc_conv_shape *s, const fc_direct_geom *g)
{
    window v;
    v.r0 = s->ph < 0 ? -s->ph : 0, v.r1 = s->h < g->hp - s->ph ? s->h : g->hp - s->ph;
    v.x0 = s->pw < 0 ? -s->pw : 0;
    v.len = (s->w < g->wp - s->pw ? s->w : g->wp - s->pw) - v.x0;
    return v;
}

/* Output: xp, the rows and columns of image x (C, H, W) that fall in the
 * padded planes, at (ph, pw) from their corner, zeros elsewhere. Every
 * image writes the same elements, so the zeros are written for the first
 * (`first`) and stay for the next ones. */
static void pad_image(const fc_conv_shape *s, const fc_direct_geom *g, const float *x, float *xp,
                      int first)
{
    if (first) memset(xp, 0, sizeof(float) * g->floats);
    const window v = window_of(s, g);
    if (v.len <= 0) return;
    for (fc_int c = 0; c < s->c; c++)
        for (fc_int r = v.r0; r < v.r1; r++) {
            float *restrict d = xp + c * g->plane + (r + s->ph) * g->wp + v.x0 + s->pw;
            const float *restrict src = x + (c * s->h + r) * s->w + v.x0;
            /* an inline loop: for rows of a few dozen floats a memcpy call
             * costs more than the copy */
            for (fc_int e = 0; e < v.len; e++) d[e] = src[e];
        }
}

/* pad_image in bf16 (kernels/direct.h): channels 2c and 2c + 1 rounded
 * (by the ISA table's to_bf16, a plane at a time into `planes`, 2 H W
 * halves) into the low and high halves of one word per pixel; an odd C's
 * last high halves stay zero. */
static void pad_image_bf16(const fc_conv_shape *s, const fc_direct_geom *g, fc_to_bf16_fn *to_bf16,
                           const float *x, uint16_t *planes, uint32_t *xp2, int first)
{
    if (first) memset(xp2, 0, sizeof(uint32_t) * g->floats);
    const window v = window_of(s, g);
    if (v.len <= 0) return;
    const fc_int hw = s->h * s->w;
    for (fc_int c = 0; c < s->c; c += 2) {
        const int pair = c + 1 < s->c;
        to_bf16(x + c * hw, hw, planes);
        if (pair) to_bf16(x + (c + 1) * hw, hw, planes + hw);
        for (fc_int r = v.r0; r < v.r1; r++) {
            uint32_t *restrict d = xp2 + c / 2 * g->plane + (r + s->ph) * g->wp + v.x0 + s->pw;
            const uint16_t *restrict lo = planes + r * s->w + v.x0, *restrict hi = lo + hw;
            if (pair)
                for (fc_int e = 0; e < v.len; e++) d[e] = (uint32_t)lo[e] | (uint32_t)hi[e] << 16;
            else
                for (fc_int e = 0; e < v.len; e++) d[e] = lo[e];
        }
    }
}

/* off[t] = c * plane + i * wp + j for tap t = (c * kh + i) * kw + j of
 * `planes` channels (in bf16, channel pairs): where the tap reads in the
 * padded image, relative to the output pixel's corner. */
static void tap_offsets(const fc_conv_shape *s, const fc_direct_geom *g, fc_int planes, fc_int *off)
{
    for (fc_int c = 0, t = 0; c < planes; c++)
        for (fc_int i = 0; i < s->kh; i++)
            for (fc_int j = 0; j < s->kw; j++) off[t++] = c * g->plane + i * g->wp + j;
}

/* Forward tiles of one padded image: for K = 16 and up they cover its
 * output pixels, for K = 8 its positions at the padded pitch. */
static fc_int tile_count(const fc_conv_shape *s, const fc_direct_geom *g, fc_int tile)
{
    const fc_int positions = s->k == 8 ? s->oh * g->wp : s->oh * s->ow;
    return (positions + tile - 1) / tile;
}

/* The forward's kernel and its operands in one precision: float32 (the ISA
 * table's tiles for K, kr) or bf16 (its direct_bf16). */
typedef struct {
    const fc_direct_kernel *kr;
    fc_direct_bf16_forward_fn *bf16;
    fc_to_bf16_fn *to_bf16;
    fc_direct_geom g;
    const fc_int *off;
    const void *wt; /* float (taps, K), or uint16 (pair taps, K, 2) */
} forward_plan;

/* Image x padded into xp (the first image of this buffer: `first`); in
 * bf16, its rounded planes staged past the padded ones. */
static void pad_for(const fc_conv_shape *s, const forward_plan *f, const float *x, void *xp, int first)
{
    if (f->bf16)
        pad_image_bf16(s, &f->g, f->to_bf16, x, (uint16_t *)((uint32_t *)xp + f->g.floats), xp, first);
    else
        pad_image(s, &f->g, x, xp, first);
}

/* Tiles [t0, t1) of the padded image xp into y. */
static void tiles_of(const fc_conv_shape *s, const forward_plan *f, const void *xp, const float *bias,
                     int relu, float *y, fc_int t0, fc_int t1)
{
    if (f->bf16)
        f->bf16(s, &f->g, xp, f->off, f->wt, bias, relu, y, t0, t1);
    else
        f->kr->forward(s, &f->g, xp, f->off, f->wt, bias, relu, y, t0, t1);
}

int fc_conv2d_direct_forward(const fc_conv_shape *s, int precision, const float *x, const float *weight,
                             const float *bias, int relu, float *y, int nthreads)
{
    const int bf16 = precision == FC_BFLOAT16;
    const fc_ctx *ctx = fc_ctx_current();
    forward_plan f = {bf16 ? NULL : fc_direct_tiles(ctx, s->k), bf16 ? ctx->direct_bf16 : NULL,
                      ctx->to_bf16};
    const fc_int kk = s->kh * s->kw, planes = bf16 ? (s->c + 1) / 2 : s->c, taps = planes * kk;
    const fc_int chw = s->c * s->h * s->w, kohow = s->k * s->oh * s->ow;
    f.g = geom_of(s, planes, bf16 ? 0 : f.kr->overread);
    const fc_int tiles = tile_count(s, &f.g, bf16 ? FC_DIRECT_BF16_TILE : f.kr->tile);
    const int team = nthreads > 1 && s->n >= nthreads ? nthreads : 1;
    /* Per thread, a padded image (in bf16, and two rounded planes: H W
     * words) rounded up to whole cache lines (no two threads write one
     * line); then the transposed weights (in bf16, two halves per tap and
     * channel: the floats' bytes). */
    const fc_int pad_floats = f.g.floats + (bf16 ? (s->h * s->w + 15) / 16 * 16 : 0);
    const size_t bytes = sizeof(float) * (size_t)(team * pad_floats + taps * s->k) +
                         sizeof(fc_int) * (size_t)taps;
    float *work = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!work) return FC_ENOMEM;
    float *wt = work + team * pad_floats;
    fc_int *off = (fc_int *)(wt + taps * s->k);
    tap_offsets(s, &f.g, planes, off);
    if (bf16) {
        uint16_t *w2 = (uint16_t *)wt;
        for (fc_int c2 = 0; c2 < planes; c2++)
            for (fc_int e = 0; e < 2; e++)
                for (fc_int k = 0; k < s->k; k++)
                    for (fc_int t = 0; t < kk; t++)
                        w2[((c2 * kk + t) * s->k + k) * 2 + e] =
                            2 * c2 + e < s->c ? fc_bf16_round(weight[(k * s->c + 2 * c2 + e) * kk + t]) : 0;
    } else {
        for (fc_int k = 0; k < s->k; k++)
            for (fc_int t = 0; t < taps; t++) wt[t * s->k + k] = weight[k * taps + t];
    }
    f.off = off, f.wt = wt;

    if (team > 1) {
#pragma omp parallel num_threads(team)
        {
            const int t = fc_thread_id();
            long long lo, hi;
            fc_split_range(s->n, fc_team_size(), t, &lo, &hi);
            float *xp = work + t * pad_floats;
            for (fc_int n = lo; n < hi; n++) {
                pad_for(s, &f, x + n * chw, xp, n == lo);
                tiles_of(s, &f, xp, bias, relu, y + n * kohow, 0, tiles);
            }
        }
    } else {
        for (fc_int n = 0; n < s->n; n++) {
            pad_for(s, &f, x + n * chw, work, n == 0);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && tiles >= 2 * nthreads)
            {
                long long lo, hi;
                fc_split_range(tiles, fc_team_size(), fc_thread_id(), &lo, &hi);
                tiles_of(s, &f, work, bias, relu, y + n * kohow, lo, hi);
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
    const fc_direct_geom g = geom_of(s, s->c, kr->overread);
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
    tap_offsets(s, &g, s->c, off);

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
