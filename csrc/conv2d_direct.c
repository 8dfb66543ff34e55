/* Direct convolution for layers with few output channels (contract of
 * fc_conv2d_forward in fastconv.h; the dispatch rule is fc_conv2d_direct_fits).
 *
 * Why: with K = 8 or 16 output channels, im2col + GEMM uses each packed B
 * element in only K multiply-adds, so gathering the 5x5 taps into the packed
 * panels costs about as much as the arithmetic (64x8x14x14 -> 16, 5x5: the
 * implicit-im2col GEMM runs at a third of the FMA peak). Here nothing is
 * packed: the output channels are the vector lanes (K / 8 ymm registers of
 * 8 channels), and a register tile holds those channels for NP output
 * pixels, 12 accumulators in all:
 *   acc[v][q] += wt[c][i][j][8v .. 8v+7] * xpad[c][pixel q + (i, j)]
 * with one weight vector load per v and one broadcast per pixel per tap.
 * Each image is first copied into a zero-padded (C, H + 2ph, W + 2pw)
 * buffer, so that no tap needs a bounds test; weights are transposed once
 * per call to (C, kh, kw, K). Bias and ReLU are applied in the store, which
 * transposes the (pixel, channel) tile back to NCHW.
 *
 * Every output sums its taps in the same order (c, i, j), then adds the
 * bias, whatever the thread count or the batch split: results are bitwise
 * identical across both (unlike dW in the GEMM path there is no reduction).
 *
 * Threading: with at least as many images as threads, each thread runs whole
 * images (static split) with its own padded buffer; otherwise the images run
 * one after another and the pixel tiles of each are shared by all threads.
 *
 * AVX2 + FMA only (per-function target, picked at run time as maxpool2d.c's
 * kernels): on the generic ISA fc_conv2d_direct_fits says no and the GEMM
 * path, which has its generic micro-kernel, runs instead.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastconv.h"
#include "fc_omp.h"

/* Output pixels per register tile, by vectors of output channels (K / 8):
 * 12 accumulators, plus the weight vectors and one broadcast, fit in the 16
 * ymm registers. */
#define FC_DIRECT_NP1 12
#define FC_DIRECT_NP2 6

/* The shapes this path takes, from measurements at 1 thread (AVX2, Zen 2
 * EPYC, callgrind cycle estimates agreeing with wall-clock medians):
 *   64x8x14x14 -> 16, 5x5 p2 (lenet conv2) forward: 0.92 ms direct vs 1.62 GEMM;
 *   its dx as a convolution (16 -> 8 channels):     see fc_conv2d_backward.
 *   64x1x28x28 -> 8, 5x5 p2 (lenet conv1):           measured in the report.
 * Limits: unit strides (the tile's pixels are consecutive), K a multiple of 8
 * up to 16 (the register tile), and C * kh * kw <= 800 taps, beyond which
 * the GEMM's cache blocking wins (its packing cost is then amortized over
 * more taps per output). */
#define FC_DIRECT_MAX_TAPS 800

int fc_conv2d_direct_fits(const fc_conv_shape *s)
{
#if defined(FC_X86_KERNELS) && (defined(__GNUC__) || defined(__clang__))
    if (getenv("FC_NO_DIRECT")) return 0; /* TEMP */
    return fc_isa_get() >= FC_ISA_AVX2 && s->sh == 1 && s->sw == 1 && s->ph >= 0 &&
           s->pw >= 0 && (s->k == 8 || s->k == 16) &&
           s->c * s->kh * s->kw <= FC_DIRECT_MAX_TAPS;
#else
    (void)s;
    return 0;
#endif
}

#if defined(FC_X86_KERNELS) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FC_AVX2_FMA __attribute__((target("avx2,fma")))

/* The padded image's geometry. */
typedef struct {
    fc_int hp, wp, plane; /* padded height, width, hp * wp */
} padded_geom;

/* Output: xp, image x (C, H, W) surrounded by ph rows and pw columns of zeros. */
static void pad_image(const fc_conv_shape *s, const padded_geom *g, const float *x, float *xp)
{
    memset(xp, 0, sizeof(float) * s->c * g->plane);
    for (fc_int c = 0; c < s->c; c++)
        for (fc_int r = 0; r < s->h; r++)
            memcpy(xp + c * g->plane + (r + s->ph) * g->wp + s->pw, x + (c * s->h + r) * s->w,
                   sizeof(float) * s->w);
}

/* Output pixels [p0, p0 + NP) of one image (the tile's last pixels repeat
 * pixel `last` when the image ends inside the tile; they are not stored).
 * KV: vectors of 8 output channels (K = 8 KV). Inputs: xp, the padded image;
 * wt, the weights as (C, kh, kw, K); bias (K) or NULL. Output: y (K, OH, OW). */
static inline __attribute__((always_inline)) FC_AVX2_FMA void
tile(const fc_conv_shape *s, const padded_geom *g, const float *xp, const float *wt,
     const float *bias, int relu, float *y, fc_int p0, fc_int last, const int KV, const int NP)
{
    const fc_int ohow = s->oh * s->ow, K = 8 * KV;
    const float *src[FC_DIRECT_NP1];
    for (int q = 0; q < NP; q++) {
        const fc_int p = p0 + q <= last ? p0 + q : last;
        src[q] = xp + p / s->ow * g->wp + p % s->ow;
    }
    __m256 acc[2][FC_DIRECT_NP1];
    for (int v = 0; v < KV; v++)
        for (int q = 0; q < NP; q++) acc[v][q] = _mm256_setzero_ps();
    const float *w = wt;
    for (fc_int c = 0; c < s->c; c++)
        for (fc_int i = 0; i < s->kh; i++) {
            const fc_int row = c * g->plane + i * g->wp;
            for (fc_int j = 0; j < s->kw; j++, w += K) {
                __m256 wv[2];
                for (int v = 0; v < KV; v++) wv[v] = _mm256_loadu_ps(w + 8 * v);
                for (int q = 0; q < NP; q++) {
                    const __m256 xv = _mm256_broadcast_ss(src[q] + row + j);
                    for (int v = 0; v < KV; v++) acc[v][q] = _mm256_fmadd_ps(wv[v], xv, acc[v][q]);
                }
            }
        }
    /* Bias, ReLU (v < 0 ? 0 : v, NaN kept: maxps returns its second operand
     * on NaN), then the (pixel, channel) tile stored channel-major. */
    float out[FC_DIRECT_NP1][16] __attribute__((aligned(32)));
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

/* Tiles [t0, t1) of one padded image; K / 8 = KV picks the tile shape. */
static FC_AVX2_FMA void image_tiles(const fc_conv_shape *s, const padded_geom *g, const float *xp,
                                    const float *wt, const float *bias, int relu, float *y,
                                    fc_int t0, fc_int t1)
{
    const fc_int last = s->oh * s->ow - 1;
    if (s->k == 16) {
        for (fc_int t = t0; t < t1; t++)
            tile(s, g, xp, wt, bias, relu, y, t * FC_DIRECT_NP2, last, 2, FC_DIRECT_NP2);
    } else {
        for (fc_int t = t0; t < t1; t++)
            tile(s, g, xp, wt, bias, relu, y, t * FC_DIRECT_NP1, last, 1, FC_DIRECT_NP1);
    }
}

int fc_conv2d_direct_forward(const fc_conv_shape *s, const float *x, const float *weight,
                             const float *bias, int relu, float *y, int nthreads)
{
    const fc_int kk = s->kh * s->kw, taps = s->c * kk, ohow = s->oh * s->ow;
    const fc_int chw = s->c * s->h * s->w, kohow = s->k * ohow;
    padded_geom g;
    g.hp = s->h + 2 * s->ph;
    g.wp = s->w + 2 * s->pw;
    g.plane = g.hp * g.wp;
    const fc_int np = s->k == 16 ? FC_DIRECT_NP2 : FC_DIRECT_NP1;
    const fc_int tiles = (ohow + np - 1) / np;
    const int team = nthreads > 1 && s->n >= nthreads ? nthreads : 1;
    /* Per thread, a padded image rounded up to whole cache lines (no two
     * threads write one line); then the transposed weights. */
    const fc_int pad_floats = (s->c * g.plane + 15) / 16 * 16;
    const size_t bytes = sizeof(float) * (size_t)(team * pad_floats + taps * s->k);
    float *work = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!work) return FC_ENOMEM;
    float *wt = work + team * pad_floats;
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
                image_tiles(s, &g, xp, wt, bias, relu, y + n * kohow, 0, tiles);
            }
        }
    } else {
        for (fc_int n = 0; n < s->n; n++) {
            pad_image(s, &g, x + n * chw, work);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && tiles >= 2 * nthreads)
            {
                long long lo, hi;
                fc_split_range(tiles, fc_team_size(), fc_thread_id(), &lo, &hi);
                image_tiles(s, &g, work, wt, bias, relu, y + n * kohow, lo, hi);
            }
        }
    }
    free(work);
    return 0;
}
#else
int fc_conv2d_direct_forward(const fc_conv_shape *s, const float *x, const float *weight,
                             const float *bias, int relu, float *y, int nthreads)
{
    (void)s, (void)x, (void)weight, (void)bias, (void)relu, (void)y, (void)nthreads;
    return FC_ENOMEM; /* never called: fc_conv2d_direct_fits is 0 */
}
#endif
