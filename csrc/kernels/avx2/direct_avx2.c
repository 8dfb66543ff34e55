/* Direct convolution tiles for 8, 16 and multiples of 16 up to
 * FC_DIRECT_MAX_K output channels, AVX2 + FMA (contract: kernels/direct.h;
 * the driver, its threading and the measured rule for when it runs:
 * conv/direct.c, conv/plan.c). Register tiles of 12 accumulators:
 * - K = 16 (tile): the output channels are the lanes, 2 vectors x 6 output
 *   pixels; per tap, 2 weight loads and 6 broadcast pixels; stored by 8 x 8
 *   register transposes where the next tile overwrites the 2 extra pixels.
 *   K = 32, 48, ... runs as its parts of 16, one after the other over the
 *   same pixels.
 *   A pixel's corner is a free function of its output position, so any
 *   stride: output (oy, ox) reads from the padded image's (oy * sh, ox * sw).
 * - K = 8 (row_tile): the lanes are output positions at the padded row
 *   pitch, 4 channels x 3 vectors; per tap, 3 loads and 4 broadcast weights
 *   (unit stride only).
 * Bias and ReLU are applied as a tile is stored. Every output sums its taps
 * in the order (c, i, j) in one FMA chain, then adds the bias; every (tap,
 * k) of dW sums an image's pixels in raster order onto its partial: the
 * operations of AVX-512's tiles lane by lane, so the two give the same bits
 * (tests/test_conv2d.py checks K = 16). */
#include <immintrin.h>
#include <string.h>

#include "kernels/direct.h"

/* Output pixels per tile() (K = 16): 2 vectors of channels x 6 pixels = 12
 * accumulators, plus the 2 weight vectors and one broadcast, fit in the 16
 * ymm registers. */
#define FC_DIRECT_NP 6

/* Output positions per row_tile: 3 vectors. */
#define FC_ROW_TILE 24

/* r[q][k] := r[k][q] (8 x 8 floats): pairs of rows interleaved by 32 bits,
 * then 64 bits, then the 128-bit halves. */
static inline __attribute__((always_inline)) void transpose8(__m256 r[8])
{
    __m256 t[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
        t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    for (int i = 0; i < 8; i++) r[i] = t[i];
}

/* Channels [16h, 16h + 16) of output pixels [p0, p0 + NP) of one image (the
 * tile's last pixels repeat pixel `last` when the image ends inside the
 * tile; they are not stored), KV = 2 vectors of 8 output channels each.
 * Inputs: xp, the padded image; off, tap_offsets; wt, the weights as (C, kh,
 * kw, K); bias (K) or NULL. Output: y (K, OH, OW). */
static inline __attribute__((always_inline)) void
tile(const fc_conv_shape *s, const fc_direct_geom *g, const float *xp, const fc_int *off,
     const float *wt, const float *bias, int relu, float *y, fc_int p0, fc_int last, fc_int h,
     int spill)
{
    enum { KV = 2, NP = FC_DIRECT_NP };
    const fc_int ohow = s->oh * s->ow, taps = s->c * s->kh * s->kw, K = s->k;
    fc_int at[NP]; /* the pixels' corners in the padded image */
    for (int q = 0; q < NP; q++) {
        const fc_int p = p0 + q <= last ? p0 + q : last;
        at[q] = p / s->ow * s->sh * g->wp + p % s->ow * s->sw;
    }
    __m256 acc[KV][NP];
    for (int v = 0; v < KV; v++)
        for (int q = 0; q < NP; q++) acc[v][q] = _mm256_setzero_ps();
    const float *w = wt + 16 * h;
    for (fc_int t = 0; t < taps; t++, w += K) {
        __m256 wv[KV];
        for (int v = 0; v < KV; v++) wv[v] = _mm256_loadu_ps(w + 8 * v);
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
     * on NaN), then the (pixel, channel) tile stored channel-major: by
     * register transposes to one 8-pixel store per channel when `spill`
     * (pixels p0 + NP .. p0 + 7 are in the image and a later tile of this
     * call stores them again), else float by float (the transposing store
     * cost a first layer with 27 taps a fifth of its time). */
    for (int v = 0; v < KV; v++) {
        const __m256 b = bias ? _mm256_loadu_ps(bias + 16 * h + 8 * v) : _mm256_setzero_ps();
        for (int q = 0; q < NP; q++) {
            acc[v][q] = _mm256_add_ps(acc[v][q], b);
            if (relu) acc[v][q] = _mm256_max_ps(_mm256_setzero_ps(), acc[v][q]);
        }
    }
    float *yk = y + 16 * h * ohow + p0;
    if (spill) {
        for (int v = 0; v < KV; v++) {
            __m256 r[8];
            for (int q = 0; q < 8; q++) r[q] = q < NP ? acc[v][q] : _mm256_setzero_ps();
            transpose8(r);
            for (int k = 0; k < 8; k++) _mm256_storeu_ps(yk + (8 * v + k) * ohow, r[k]);
        }
        return;
    }
    float out[NP][16] __attribute__((aligned(32)));
    for (int v = 0; v < KV; v++)
        for (int q = 0; q < NP; q++) _mm256_store_ps(out[q] + 8 * v, acc[v][q]);
    const int count = last - p0 + 1 < NP ? (int)(last - p0 + 1) : NP;
    for (fc_int k = 0; k < 16; k++)
        for (int q = 0; q < count; q++) yk[k * ohow + q] = out[q][k];
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
static inline __attribute__((always_inline)) void
row_tile(const fc_conv_shape *s, const fc_direct_geom *g, const float *xp, const fc_int *off,
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

/* ---- dW and db ------------------------------------------------------------
 * dW[k][c][i][j] = sum over images and output pixels p of
 * dy[k][p] * xpad[c][p + (i, j)], both forward tiles turned around:
 *
 * K = 16 and up (dw_tile): the output channels as lanes of dy transposed,
 * per 16 channels, to (pixel, 16), T taps of the padded image broadcast, 2T
 * accumulators that run over all the pixels of an image in raster order:
 * partials of one float per (tap, k).
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

/* n pixels (a constant) of one output row, the first at column ox, into
 * acc: xt[t], tap t's input for the row's first pixel; d, pixel ox's dyt
 * row (16 channels). 12 accumulators, 2 dy vectors and a broadcast fill the
 * 16 ymm registers, so the pixels go one after the other, each of its
 * broadcasts at xt[t] + ox * sw plus a constant (step = sw, a constant; 0:
 * sw read at run time, the pixels' indices one add each). */
static inline __attribute__((always_inline)) void
dw_pixels(__m256 acc[2][FC_DW_T], const float *const *xt, fc_int ox, fc_int sw, const float *d,
          const int T, const int n, const int step)
{
    /* The index opaque, one register for all T taps: else GCC steps a
     * pointer per tap, T adds per 4 pixels, and at T = 6 keeps some of them
     * on the stack. */
    fc_int i = ox * (step ? step : sw);
    __asm__("" : "+r"(i));
    for (int q = 0; q < n; q++) {
        const __m256 d0 = _mm256_loadu_ps(d + 16 * q), d1 = _mm256_loadu_ps(d + 16 * q + 8);
        const fc_int iq = i + q * (step ? step : sw);
        for (int t = 0; t < T; t++) {
            const __m256 xv = _mm256_broadcast_ss(xt[t] + iq);
            acc[0][t] = _mm256_fmadd_ps(d0, xv, acc[0][t]);
            acc[1][t] = _mm256_fmadd_ps(d1, xv, acc[1][t]);
        }
        /* d0 and d1 live to the pixel's end: else GCC writes the last
         * taps' sums into their registers (an FMA may overwrite any of its
         * operands), the accumulators wander between registers over the 4
         * pixels, and the loop pays moves and a spill to bring them back. */
        __asm__("" ::"x"(d0), "x"(d1));
    }
}

/* Taps [t0, t0 + T) x channels [16h, 16h + 16) into part (taps, K), over
 * all pixels of one image in raster order: xp padded, dyt (K / 16, OH*OW,
 * 16). A row's pixels go four at a time from one pointer per tap
 * (dw_pixels): 7 instructions of bookkeeping per 48 multiply-adds at unit
 * stride, where each pixel's corner computed anew (through an opaque base)
 * cost 8 per 12. */
static inline __attribute__((always_inline)) void
dw_tile(const fc_conv_shape *s, const fc_direct_geom *g, const float *xp, const float *dyt,
        const fc_int *off, fc_int t0, fc_int h, float *part, const int T, const int step)
{
    enum { KV = 2 };
    const fc_int K = s->k;
    __m256 acc[KV][FC_DW_T];
    for (int v = 0; v < KV; v++)
        for (int t = 0; t < T; t++) acc[v][t] = _mm256_loadu_ps(part + (t0 + t) * K + 16 * h + 8 * v);
    for (fc_int oy = 0; oy < s->oh; oy++) {
        const float *d = dyt + (h * s->oh + oy) * s->ow * 16, *xt[FC_DW_T];
        for (int t = 0; t < T; t++) xt[t] = xp + oy * s->sh * g->wp + off[t0 + t];
        fc_int ox = 0;
        for (; ox + 4 <= s->ow; ox += 4, d += 4 * 16) dw_pixels(acc, xt, ox, s->sw, d, T, 4, step);
        for (; ox < s->ow; ox++, d += 16) dw_pixels(acc, xt, ox, s->sw, d, T, 1, step);
    }
    for (int v = 0; v < KV; v++)
        for (int t = 0; t < T; t++) _mm256_storeu_ps(part + (t0 + t) * K + 16 * h + 8 * v, acc[v][t]);
}

/* K = 8: taps [t0, t0 + T) x channels [4h, 4h + 4) into part (taps, 8, 8
 * lanes), over positions [0, span) of one image: xp padded, dyp (8, span)
 * at the padded pitch. */
static inline __attribute__((always_inline)) void
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
 * last, narrower tile (T and the step compile-time constants in each case).
 * dyk is dyt (K >= 16) or dyp (K = 8, whose positions run to span). */
#define FC_DW_CASE(T)                                                      \
    case T:                                                                \
        if (s->sw == 1)                                                    \
            dw_tile(s, g, xp, dyk, off, t0, h, part, T, 1);                \
        else                                                               \
            dw_tile(s, g, xp, dyk, off, t0, h, part, T, 0);                \
        break;
#define FC_DW_ROW_CASE(T) \
    case T: dw_row_tile(xp, dyk, span, off, t0, h, part, T); break;
static void dw_image(const fc_conv_shape *s, const fc_direct_geom *g, const float *xp,
                     const float *dyk, fc_int span, const fc_int *off, float *part)
{
    const fc_int taps = s->c * s->kh * s->kw;
    if (s->k >= 16) {
        for (fc_int h = 0; h < s->k / 16; h++)
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

/* 8 channels x pixels [0, n), n <= 8, of dy (rows ohow apart, the
 * loads masked when n < 8) transposed to dyt (pixel rows 16 apart); returns
 * acc + the pixels' rows, in pixel order. */
static inline __attribute__((always_inline)) __m256
stage8(const float *dy, fc_int ohow, float *dyt, int n, __m256 acc)
{
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 r[8];
    for (int k = 0; k < 8; k++)
        r[k] = n == 8 ? _mm256_loadu_ps(dy + k * ohow) : _mm256_maskload_ps(dy + k * ohow, m);
    transpose8(r);
    for (int q = 0; q < 8; q++)
        if (q < n) {
            _mm256_storeu_ps(dyt + 16 * q, r[q]);
            acc = _mm256_add_ps(acc, r[q]);
        }
    return acc;
}

/* One image's dy (K, OH*OW) in the layout dw_image reads, and db's partial
 * (K, L) += its sums in a fixed order. K >= 16: dyk = dyt (K / 16, OH*OW,
 * 16), by register transposes of 8 pixels x each half of 16 channels, db
 * summed pixel by pixel as they give the pixels' rows. K = 8: dyk = dyp (K, span),
 * rows at the padded pitch (its dropped columns and tail stay zero from the
 * first call), summed in 8 lanes. */
static void stage_dy(const fc_conv_shape *s, const fc_direct_geom *g, const float *dy,
                     float *dyk, fc_int span, float *db)
{
    const fc_int ohow = s->oh * s->ow, K = s->k;
    if (K >= 16) {
        for (fc_int k0 = 0; k0 < K; k0 += 16) {
            const float *d = dy + k0 * ohow;
            float *dt = dyk + k0 * ohow;
            __m256 lo = _mm256_loadu_ps(db + k0), hi = _mm256_loadu_ps(db + k0 + 8);
            fc_int p = 0;
            for (; p + 8 <= ohow; p += 8) {
                lo = stage8(d + p, ohow, dt + p * 16, 8, lo);
                hi = stage8(d + 8 * ohow + p, ohow, dt + p * 16 + 8, 8, hi);
            }
            if (p < ohow) {
                lo = stage8(d + p, ohow, dt + p * 16, (int)(ohow - p), lo);
                hi = stage8(d + 8 * ohow + p, ohow, dt + p * 16 + 8, (int)(ohow - p), hi);
            }
            _mm256_storeu_ps(db + k0, lo);
            _mm256_storeu_ps(db + k0 + 8, hi);
        }
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

/* ---- the entries (kernels/direct.h) ---------------------------------------- */

static void forward_k16(const fc_conv_shape *s, const fc_direct_geom *g, const float *xp,
                        const fc_int *off, const float *wt, const float *bias, int relu, float *y,
                        fc_int t0, fc_int t1)
{
    const fc_int last = s->oh * s->ow - 1;
    for (fc_int t = t0; t < t1; t++) {
        const fc_int p0 = t * FC_DIRECT_NP;
        const int spill = t + 1 < t1 && p0 + 8 <= last + 1;
        for (fc_int h = 0; h < s->k / 16; h++) {
            if (spill)
                tile(s, g, xp, off, wt, bias, relu, y, p0, last, h, 1);
            else
                tile(s, g, xp, off, wt, bias, relu, y, p0, last, h, 0);
        }
    }
}

static void forward_k8(const fc_conv_shape *s, const fc_direct_geom *g, const float *xp,
                       const fc_int *off, const float *wt, const float *bias, int relu, float *y,
                       fc_int t0, fc_int t1)
{
    for (fc_int t = t0; t < t1; t++) row_tile(s, g, xp, off, wt, bias, relu, y, t * FC_ROW_TILE);
}

static void dweight(const fc_conv_shape *s, const fc_direct_geom *g, const float *xp,
                    const float *dy, float *dyk, fc_int span, const fc_int *off, float *part,
                    float *db)
{
    stage_dy(s, g, dy, dyk, span, db);
    dw_image(s, g, xp, dyk, span, off, part);
}

/* {forward, dweight, tile, lanes, overread, strided}: nothing read past the
 * planes, any stride. */
const fc_direct_kernel fc_direct_k16_avx2 = {forward_k16, dweight, FC_DIRECT_NP, 1, 0, 1};
/* K = 32, 48, ..., FC_DIRECT_MAX_K: the same code, 16 channels at a time. */
const fc_direct_kernel fc_direct_wide_avx2 = {forward_k16, dweight, FC_DIRECT_NP, 1, 0, 1};
/* Unit stride only: row_tile() takes consecutive positions; its last tile
 * reads up to 2 tiles past the planes. */
const fc_direct_kernel fc_direct_k8_avx2 = {forward_k8, dweight, FC_ROW_TILE, 8, 2 * FC_ROW_TILE, 0};
