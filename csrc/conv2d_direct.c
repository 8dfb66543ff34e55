/* Direct convolution for layers with 8 or 16 output channels: the forward
 * (contract of fc_conv2d_forward in fastconv.h), and dW/db (contract of
 * fc_conv2d_backward's); dx of a unit-stride layer is itself a convolution
 * (conv2d.c, dx_by_convolution), which comes here when it has 8 or 16
 * outputs. The dispatch rule is fc_conv2d_direct_fits (for dW,
 * fc_conv2d_direct_dweight_takes).
 *
 * Why: with K = 8 or 16 output channels, im2col + GEMM uses each packed B
 * element in only K multiply-adds, so gathering the 5x5 taps into the packed
 * panels costs about as much as the arithmetic (64x8x14x14 -> 16, 5x5: the
 * implicit-im2col GEMM runs at under half of the FMA peak). Here nothing is
 * packed. Each image is first copied into a zero-padded (C, H + 2ph, W + 2pw)
 * buffer, so that no tap needs a bounds test, and a tap (c, i, j) is one
 * offset into it; weights are transposed once per call to (C, kh, kw, K).
 * Register tiles of 12 accumulators:
 * - K = 16 (tile): the output channels are the lanes, 2 vectors x 6 output
 *   pixels; per tap, 2 weight loads and 6 broadcast pixels;
 * - K = 8 (row_tile): the lanes are output positions at the padded row
 *   pitch, 4 channels x 3 vectors; per tap, 3 loads and 4 broadcast weights.
 * Bias and ReLU are applied as a tile is stored.
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
 * AVX2 + FMA only (per-function target, picked at run time as maxpool2d.c's
 * kernels): on the generic ISA fc_conv2d_direct_fits says no and the GEMM
 * path, which has its generic micro-kernel, runs instead.
 */
#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastconv.h"
#include "fc_omp.h"

/* Output pixels per tile() (K = 16): 2 vectors of channels x 6 pixels = 12
 * accumulators, plus the 2 weight vectors and one broadcast, fit in the 16
 * ymm registers. */
#define FC_DIRECT_NP 6

/* The shapes this path takes: unit strides (a tile's pixels are
 * consecutive) and K = 8 or 16 (the register tiles). Measured at 1 thread
 * (AVX2, 2-core EPYC, shared and noisy), this build against the GEMM path
 * before it (dee45b3), each in its own process, 3 alternating rounds of
 * 0.6 s per case, medians; fwd, bwd (dx, dW, db) and dW (need_dx=False):
 *   64x8x14x14 -> 16, 5x5 p2 (lenet conv2): fwd 1.06 ms vs 1.83, bwd 2.52 vs 4.01, dW 1.20 vs 2.45
 *   64x1x28x28 -> 8, 5x5 p2 (lenet conv1):  fwd 0.42 vs 0.61, bwd 1.10 vs 2.33, dW 0.42 vs 0.98
 *   64x16x14x14 -> 8, 5x5 p2:               fwd 1.32 vs 2.57, bwd 2.52 vs 5.07
 *   32x64x8x8 -> 16, 3x3 p1:                fwd 0.52 vs 0.96, bwd 1.21 vs 1.66
 *   16x512x4x4 -> 16, 3x3 p1 (4608 taps):   fwd 0.72 vs 1.86, bwd 1.90 vs 8.43
 *   8x256x16x16 -> 8, 5x5 p2 (6400 taps):   fwd 4.12 vs 9.27, bwd 7.18 vs 17.4
 * so no limit on C * kh * kw: with K this small the GEMM never amortizes its
 * packing. The one near-tie: K = 16 with a handful of taps (4x3x64x64 ->
 * 16 3x3, 64x1x28x28 -> 16 5x5), where tile()'s transposing store weighs
 * as much as its multiply-adds: 0.8x to 1.3x of the GEMM path from run to
 * run, within this machine's noise, so no separate rule. */
int fc_conv2d_direct_fits(const fc_conv_shape *s)
{
#if defined(FC_X86_KERNELS) && (defined(__GNUC__) || defined(__clang__))
    return fc_isa_get() >= FC_ISA_AVX2 && s->sh == 1 && s->sw == 1 && s->ph >= 0 &&
           s->pw >= 0 && (s->k == 8 || s->k == 16);
#else
    (void)s;
    return 0;
#endif
}

/* dW's K = 8 tiles run along the padded row pitch, multiplying the pixels
 * past each output row by zeros in dy: nothing for finite x, but NaN for an
 * infinite or NaN pixel there, where the direct sum has no such term. Such
 * x takes the GEMM path (one pass over x, for these small layers). */
int fc_conv2d_direct_dweight_takes(const fc_conv_shape *s, const float *x, int nthreads)
{
    return fc_conv2d_direct_fits(s) &&
           (s->k == 16 || fc_max_abs(x, s->n * s->c * s->h * s->w, nthreads) <= FLT_MAX);
}

#if defined(FC_X86_KERNELS) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FC_AVX2_FMA __attribute__((target("avx2,fma")))

/* The padded image's geometry. */
typedef struct {
    fc_int hp, wp, plane; /* padded height, width, hp * wp */
    fc_int floats;        /* the buffer: C planes, slack for row_tile, whole cache lines */
} padded_geom;

/* Output positions per row_tile: 3 vectors. */
#define FC_ROW_TILE 24

static padded_geom geom_of(const fc_conv_shape *s)
{
    padded_geom g;
    g.hp = s->h + 2 * s->ph;
    g.wp = s->w + 2 * s->pw;
    g.plane = g.hp * g.wp;
    /* row_tile's last tile reads up to 2 tiles and kw floats past the planes. */
    g.floats = (s->c * g.plane + 2 * FC_ROW_TILE + s->kw + 15) / 16 * 16;
    return g;
}

/* Output: xp, image x (C, H, W) surrounded by ph rows and pw columns of zeros. */
static void pad_image(const fc_conv_shape *s, const padded_geom *g, const float *x, float *xp)
{
    memset(xp, 0, sizeof(float) * g->floats);
    for (fc_int c = 0; c < s->c; c++)
        for (fc_int r = 0; r < s->h; r++)
            memcpy(xp + c * g->plane + (r + s->ph) * g->wp + s->pw, x + (c * s->h + r) * s->w,
                   sizeof(float) * s->w);
}

/* off[t] = c * plane + i * wp + j for tap t = (c * kh + i) * kw + j: where
 * the tap reads in the padded image, relative to the output pixel's corner. */
static void tap_offsets(const fc_conv_shape *s, const padded_geom *g, fc_int *off)
{
    for (fc_int c = 0, t = 0; c < s->c; c++)
        for (fc_int i = 0; i < s->kh; i++)
            for (fc_int j = 0; j < s->kw; j++) off[t++] = c * g->plane + i * g->wp + j;
}

/* K = 16: output pixels [p0, p0 + NP) of one image (the tile's last pixels
 * repeat pixel `last` when the image ends inside the tile; they are not
 * stored), KV = 2 vectors of 8 output channels each. Inputs: xp, the padded
 * image; off, tap_offsets; wt, the weights as (C, kh, kw, K); bias (K) or
 * NULL. Output: y (K, OH, OW). */
static inline __attribute__((always_inline)) FC_AVX2_FMA void
tile(const fc_conv_shape *s, const padded_geom *g, const float *xp, const fc_int *off,
     const float *wt, const float *bias, int relu, float *y, fc_int p0, fc_int last)
{
    enum { KV = 2, K = 16, NP = FC_DIRECT_NP };
    const fc_int ohow = s->oh * s->ow, taps = s->c * s->kh * s->kw;
    fc_int at[NP]; /* the pixels' corners in the padded image */
    for (int q = 0; q < NP; q++) {
        const fc_int p = p0 + q <= last ? p0 + q : last;
        at[q] = p / s->ow * g->wp + p % s->ow;
    }
    __m256 acc[KV][NP];
    for (int v = 0; v < KV; v++)
        for (int q = 0; q < NP; q++) acc[v][q] = _mm256_setzero_ps();
    for (fc_int t = 0; t < taps; t++) {
        __m256 wv[KV];
        for (int v = 0; v < KV; v++) wv[v] = _mm256_loadu_ps(wt + t * K + 8 * v);
        const float *xt = xp + off[t];
        /* An opaque base: else GCC folds off[t] into every pixel's index,
         * an extra add per broadcast instead of one addressing mode. */
        __asm__("" : "+r"(xt));
        for (int q = 0; q < NP; q++) {
            const __m256 xv = _mm256_broadcast_ss(xt + at[q]);
            for (int v = 0; v < KV; v++) acc[v][q] = _mm256_fmadd_ps(wv[v], xv, acc[v][q]);
        }
    }
    /* Bias, ReLU (v < 0 ? 0 : v, NaN kept: maxps returns its second operand
     * on NaN), then the (pixel, channel) tile stored channel-major. */
    float out[NP][K] __attribute__((aligned(32)));
    for (int v = 0; v < KV; v++) {
        const __m256 b = bias ? _mm256_loadu_ps(bias + 8 * v) : _mm256_setzero_ps();
        for (int q = 0; q < NP; q++) {
            __m256 r = _mm256_add_ps(acc[v][q], b);
            if (relu) r = _mm256_max_ps(_mm256_setzero_ps(), r);
            _mm256_store_ps(out[q] + 8 * v, r);
        }
    }
    const int count = last - p0 + 1 < NP ? (int)(last - p0 + 1) : NP;
    for (fc_int k = 0; k < K; k++)
        for (int q = 0; q < count; q++) y[k * ohow + p0 + q] = out[q][k];
}

/* K = 8: with one vector of channels, tile() would broadcast one input
 * pixel per multiply-add and run at half its speed with K = 16 (measured:
 * the 16 -> 8 dx of lenet conv2 at 1 thread, about 1.9 ms against 1.0 ms for
 * its forward). So here the lanes are output positions instead: outputs are
 * computed at the padded image's row pitch, position P = oy * wp + ox (the
 * columns ox >= OW are computed and dropped: 4 of every 18 for lenet conv2's
 * dx, 4 of 32 for conv1), each tap then reads 3 contiguous vectors at
 * P + off[t], and 4 channels' weights are broadcast: 12 accumulators for
 * 3 loads and 4 broadcasts. Positions [P0, P0 + FC_ROW_TILE), both halves of
 * the 8 channels; sums in tap order, then + bias, as tile(). */
static inline __attribute__((always_inline)) FC_AVX2_FMA void
row_tile(const fc_conv_shape *s, const padded_geom *g, const float *xp, const fc_int *off,
         const float *wt, const float *bias, int relu, float *y, fc_int P0)
{
    const fc_int taps = s->c * s->kh * s->kw, ohow = s->oh * s->ow, span = s->oh * g->wp;
    float buf[8][FC_ROW_TILE] __attribute__((aligned(32)));
    for (int h = 0; h < 2; h++) {
        __m256 acc[4][3];
        for (int r = 0; r < 4; r++)
            for (int u = 0; u < 3; u++) acc[r][u] = _mm256_setzero_ps();
        for (fc_int t = 0; t < taps; t++) {
            const float *xt = xp + off[t] + P0;
            __asm__("" : "+r"(xt)); /* see tile() */
            const __m256 x0 = _mm256_loadu_ps(xt), x1 = _mm256_loadu_ps(xt + 8);
            const __m256 x2 = _mm256_loadu_ps(xt + 16);
            const float *w = wt + t * 8 + 4 * h;
            for (int r = 0; r < 4; r++) {
                const __m256 wv = _mm256_broadcast_ss(w + r);
                acc[r][0] = _mm256_fmadd_ps(wv, x0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(wv, x1, acc[r][1]);
                acc[r][2] = _mm256_fmadd_ps(wv, x2, acc[r][2]);
            }
        }
        for (int r = 0; r < 4; r++) {
            const __m256 b = _mm256_set1_ps(bias ? bias[4 * h + r] : 0.0f);
            for (int u = 0; u < 3; u++) {
                __m256 v = _mm256_add_ps(acc[r][u], b);
                if (relu) v = _mm256_max_ps(_mm256_setzero_ps(), v);
                _mm256_store_ps(buf[4 * h + r] + 8 * u, v);
            }
        }
    }
    /* The tile's runs of real columns (ox < OW) to y. */
    for (fc_int P = P0; P < P0 + FC_ROW_TILE && P < span;) {
        const fc_int oy = P / g->wp, ox = P % g->wp;
        if (ox >= s->ow) {
            P = (oy + 1) * g->wp;
            continue;
        }
        const fc_int row_end = oy * g->wp + s->ow;
        const fc_int len = (row_end < P0 + FC_ROW_TILE ? row_end : P0 + FC_ROW_TILE) - P;
        for (int k = 0; k < 8; k++)
            for (fc_int e = 0; e < len; e++) y[k * ohow + oy * s->ow + ox + e] = buf[k][P - P0 + e];
        P += len;
    }
}

/* Tiles of one padded image: for K = 16, tile()s of FC_DIRECT_NP output
 * pixels; for K = 8, row_tile()s. */
static fc_int tile_count(const fc_conv_shape *s, const padded_geom *g)
{
    return s->k == 16 ? (s->oh * s->ow + FC_DIRECT_NP - 1) / FC_DIRECT_NP
                      : (s->oh * g->wp + FC_ROW_TILE - 1) / FC_ROW_TILE;
}

/* Tiles [t0, t1) of one padded image. */
static FC_AVX2_FMA void image_tiles(const fc_conv_shape *s, const padded_geom *g, const float *xp,
                                    const fc_int *off, const float *wt, const float *bias,
                                    int relu, float *y, fc_int t0, fc_int t1)
{
    const fc_int last = s->oh * s->ow - 1;
    if (s->k == 16) {
        for (fc_int t = t0; t < t1; t++)
            tile(s, g, xp, off, wt, bias, relu, y, t * FC_DIRECT_NP, last);
    } else {
        for (fc_int t = t0; t < t1; t++) row_tile(s, g, xp, off, wt, bias, relu, y, t * FC_ROW_TILE);
    }
}

int fc_conv2d_direct_forward(const fc_conv_shape *s, const float *x, const float *weight,
                             const float *bias, int relu, float *y, int nthreads)
{
    const fc_int kk = s->kh * s->kw, taps = s->c * kk, ohow = s->oh * s->ow;
    const fc_int chw = s->c * s->h * s->w, kohow = s->k * ohow;
    const padded_geom g = geom_of(s);
    const fc_int tiles = tile_count(s, &g);
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
                pad_image(s, &g, x + n * chw, xp);
                image_tiles(s, &g, xp, off, wt, bias, relu, y + n * kohow, 0, tiles);
            }
        }
    } else {
        for (fc_int n = 0; n < s->n; n++) {
            pad_image(s, &g, x + n * chw, work);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && tiles >= 2 * nthreads)
            {
                long long lo, hi;
                fc_split_range(tiles, fc_team_size(), fc_thread_id(), &lo, &hi);
                image_tiles(s, &g, work, off, wt, bias, relu, y + n * kohow, lo, hi);
            }
        }
    }
    free(work);
    return 0;
}

/* ---- dW and db ------------------------------------------------------------
 * dW[k][c][i][j] = sum over images and output pixels p of
 * dy[k][p] * xpad[c][p + (i, j)], both forward tiles turned around:
 *
 * K = 16 (dw_tile): the output channels as lanes of dy transposed to
 * (pixel, K), T taps of the padded image broadcast, 2T accumulators that run
 * over all the pixels of an image in raster order: partials of one float per
 * (tap, k).
 * K = 8 (dw_row_tile): lanes over output positions at the padded row pitch,
 * as row_tile(), from dy copied to that pitch with zeros in the dropped
 * columns (so they add nothing); 4 channels x 3 taps of accumulators, each a
 * vector of 8 partial sums kept per (tap, k). With channel lanes, K = 8 would
 * broadcast one pixel per multiply-add (lenet conv1's dW: 0.94 ms, no faster
 * than the GEMM path).
 *
 * The partials live between images in a per-thread (taps, K, L) buffer (L = 1
 * or 8 lanes); at the end dW = the partials summed in thread order, each
 * thread's L lanes in order: deterministic for a thread count. db is summed
 * the same way from dy. */

/* Accumulators per dW tile: 2 vectors x FC_DW_T taps. */
#define FC_DW_T 6

/* K = 16: taps [t0, t0 + T) into part (taps, K), over all pixels of one
 * image: xp padded, dyt (OH*OW, K). */
static inline __attribute__((always_inline)) FC_AVX2_FMA void
dw_tile(const fc_conv_shape *s, const padded_geom *g, const float *xp, const float *dyt,
        const fc_int *off, fc_int t0, float *part, const int T)
{
    enum { KV = 2, K = 16 };
    fc_int o[FC_DW_T];
    for (int t = 0; t < T; t++) o[t] = off[t0 + t];
    __m256 acc[KV][FC_DW_T];
    for (int v = 0; v < KV; v++)
        for (int t = 0; t < T; t++) acc[v][t] = _mm256_loadu_ps(part + (t0 + t) * K + 8 * v);
    for (fc_int oy = 0; oy < s->oh; oy++) {
        const float *d = dyt + oy * s->ow * K;
        for (fc_int ox = 0; ox < s->ow; ox++, d += K) {
            const float *p = xp + oy * g->wp + ox;
            __asm__("" : "+r"(p)); /* a base register, as in tile() */
            __m256 dv[KV];
            for (int v = 0; v < KV; v++) dv[v] = _mm256_loadu_ps(d + 8 * v);
            for (int t = 0; t < T; t++) {
                const __m256 xv = _mm256_broadcast_ss(p + o[t]);
                for (int v = 0; v < KV; v++) acc[v][t] = _mm256_fmadd_ps(dv[v], xv, acc[v][t]);
            }
        }
    }
    for (int v = 0; v < KV; v++)
        for (int t = 0; t < T; t++) _mm256_storeu_ps(part + (t0 + t) * K + 8 * v, acc[v][t]);
}

/* K = 8: taps [t0, t0 + T) x channels [4h, 4h + 4) into part (taps, 8, 8
 * lanes), over positions [0, span) of one image: xp padded, dyp (8, span)
 * at the padded pitch. */
static inline __attribute__((always_inline)) FC_AVX2_FMA void
dw_row_tile(const float *xp, const float *dyp, fc_int span, const fc_int *off, fc_int t0,
            int h, float *part, const int T)
{
    const float *xt[3];
    for (int t = 0; t < T; t++) xt[t] = xp + off[t0 + t];
    __m256 acc[4][3];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_loadu_ps(part + ((t0 + t) * 8 + 4 * h + r) * 8);
    for (fc_int P = 0; P < span; P += 8) {
        __m256 xv[3];
        for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(xt[t] + P);
        for (int r = 0; r < 4; r++) {
            const __m256 dv = _mm256_loadu_ps(dyp + (4 * h + r) * span + P);
            for (int t = 0; t < T; t++) acc[r][t] = _mm256_fmadd_ps(dv, xv[t], acc[r][t]);
        }
    }
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < T; t++) _mm256_storeu_ps(part + ((t0 + t) * 8 + 4 * h + r) * 8, acc[r][t]);
}

/* All taps of one image into part: tiles of the widest T, and the rest in a
 * last, narrower tile (T is a compile-time constant in each case). dyk is
 * dyt (K = 16) or dyp (K = 8, whose positions run to span). */
#define FC_DW_CASE(T) \
    case T: dw_tile(s, g, xp, dyk, off, t0, part, T); break;
#define FC_DW_ROW_CASE(T) \
    case T: dw_row_tile(xp, dyk, span, off, t0, h, part, T); break;
static FC_AVX2_FMA void dw_image(const fc_conv_shape *s, const padded_geom *g, const float *xp,
                                 const float *dyk, fc_int span, const fc_int *off, float *part)
{
    const fc_int taps = s->c * s->kh * s->kw;
    if (s->k == 16) {
        for (fc_int t0 = 0; t0 < taps; t0 += FC_DW_T) {
            switch (taps - t0 < FC_DW_T ? taps - t0 : FC_DW_T) {
            FC_DW_CASE(1) FC_DW_CASE(2) FC_DW_CASE(3) FC_DW_CASE(4) FC_DW_CASE(5) FC_DW_CASE(6)
            }
        }
        return;
    }
    for (int h = 0; h < 2; h++)
        for (fc_int t0 = 0; t0 < taps; t0 += 3) {
            switch (taps - t0 < 3 ? taps - t0 : 3) {
            FC_DW_ROW_CASE(1) FC_DW_ROW_CASE(2) FC_DW_ROW_CASE(3)
            }
        }
}

/* One image's dy (K, OH*OW) in the layout dw_image reads, and db's partial
 * (K, L) += its sums in a fixed order. K = 16: dyk = dyt (OH*OW, K), summed
 * pixel by pixel. K = 8: dyk = dyp (K, span), rows at the padded pitch (its
 * dropped columns and tail stay zero from the first call), summed in 8
 * lanes. */
static FC_AVX2_FMA void stage_dy(const fc_conv_shape *s, const padded_geom *g, const float *dy,
                                 float *dyk, fc_int span, float *db)
{
    const fc_int ohow = s->oh * s->ow, K = s->k;
    if (K == 16) {
        for (fc_int k = 0; k < K; k++)
            for (fc_int p = 0; p < ohow; p++) dyk[p * K + k] = dy[k * ohow + p];
        for (fc_int p = 0; p < ohow; p++)
            for (fc_int k = 0; k < K; k++) db[k] += dyk[p * K + k];
        return;
    }
    for (fc_int k = 0; k < K; k++) {
        for (fc_int oy = 0; oy < s->oh; oy++)
            memcpy(dyk + k * span + oy * g->wp, dy + k * ohow + oy * s->ow, sizeof(float) * s->ow);
        __m256 acc = _mm256_loadu_ps(db + 8 * k);
        for (fc_int P = 0; P < span; P += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(dyk + k * span + P));
        _mm256_storeu_ps(db + 8 * k, acc);
    }
}

int fc_conv2d_direct_backward_weight(const fc_conv_shape *s, const float *x, const float *dy,
                                     float *dweight, float *dbias, int nthreads)
{
    const fc_int taps = s->c * s->kh * s->kw, ohow = s->oh * s->ow;
    const fc_int chw = s->c * s->h * s->w, kohow = s->k * ohow;
    const padded_geom g = geom_of(s);
    const fc_int lanes = s->k == 16 ? 1 : 8;
    /* K = 8: positions at the padded pitch, whole vectors (row_tile's slack
     * covers the reads past the planes). */
    const fc_int span = (s->oh * g.wp + 7) / 8 * 8;
    /* Images split over threads; n < nthreads runs on one (a small job). */
    const int team = nthreads > 1 && s->n >= nthreads ? nthreads : 1;
    /* Per thread, whole cache lines: padded image, staged dy, the (taps, K,
     * lanes) dW partial and the (K, lanes) db partial. */
    const fc_int dy_floats = (s->k == 16 ? ohow * s->k : span * s->k + 15) / 16 * 16;
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
            pad_image(s, &g, x + n * chw, xp);
            stage_dy(s, &g, dy + n * kohow, dyk, span, part + taps * s->k * lanes);
            dw_image(s, &g, xp, dyk, span, off, part);
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
#else
int fc_conv2d_direct_backward_weight(const fc_conv_shape *s, const float *x, const float *dy,
                                     float *dweight, float *dbias, int nthreads)
{
    (void)s, (void)x, (void)dy, (void)dweight, (void)dbias, (void)nthreads;
    return FC_ENOMEM; /* never called: fc_conv2d_direct_fits is 0 */
}

int fc_conv2d_direct_forward(const fc_conv_shape *s, const float *x, const float *weight,
                             const float *bias, int relu, float *y, int nthreads)
{
    (void)s, (void)x, (void)weight, (void)bias, (void)relu, (void)y, (void)nthreads;
    return FC_ENOMEM; /* never called: fc_conv2d_direct_fits is 0 */
}
#endif
