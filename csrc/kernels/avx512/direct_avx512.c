/* Direct convolution tiles for 16 output channels and their multiples up
 * to FC_DIRECT_MAX_K, AVX-512F (contract: kernels/direct.h; the driver, its
 * threading and the rule for when it runs: conv/direct.c, conv/plan.c). The
 * output channels are the lanes: 16 channels are one zmm per output pixel,
 * and K = 32, 48, ... runs as its parts of 16, one after the other over the
 * same pixels (the later parts' reads of the padded image hit the cache the
 * first filled).
 *
 * - forward (tile16): 16 output pixels x 16 channels, 16 accumulators; per
 *   tap, one weight load and 16 multiply-adds each with a broadcast pixel.
 *   The (pixel, channel) tile is transposed in registers and stored as 16
 *   channel rows of 16 consecutive pixels, masked at the image's end: a
 *   scalar transposing store (16 x 16 loads and stores) would weigh as much
 *   as the multiply-adds of a first layer's 27 taps.
 * - dW (dw_tile16): dy transposed to (pixel, K), T taps broadcast from the
 *   padded image, T accumulators running over all of an image's pixels in
 *   raster order: one partial per (tap, k), as AVX2's K = 16 tiles.
 *
 * A pixel's address is a free function of the output position, so these
 * tiles take any stride: the output (oy, ox) reads from the padded image's
 * (oy * sh, ox * sw) corner (strided = 1 in the table entry).
 *
 * Every output sums its taps in the order (c, i, j) in one FMA chain, then
 * adds the bias (zero without one), then the ReLU; every (tap, k) of dW sums
 * an image's pixels in raster order onto its partial, db likewise: the very
 * operations of AVX2's K = 16 tiles, lane by lane, so at K = 16 the two
 * give the same bits. */
#include <immintrin.h>

#include "kernels/avx512/transpose_avx512.h"
#include "kernels/direct.h"

/* Output pixels per forward tile: one 16 x 16 transpose. */
#define FC_NP 16

/* Taps per dW tile: 12 accumulators, each a zmm of 16 channels. */
#define FC_DW_T 12

/* Channels [16h, 16h + 16) of output pixels [p0, p0 + n), n <= 16, of one
 * image (the pixels past n repeat pixel p0 + n - 1 and are not stored).
 * Inputs: xp, the padded image; off, tap_offsets; wt, the weights as
 * (C, kh, kw, K); bias (K) or NULL. Output: y (K, OH, OW). step > 0 (a
 * constant): the 16 pixels lie in one output row at stride sw = step, so
 * pixel q reads at a constant displacement q * step from the first one's
 * corner (one addressing mode per broadcast); step = 0: any tile, its 16
 * corners computed. */
static inline __attribute__((always_inline)) void
tile16(const fc_conv_shape *s, const fc_direct_geom *g, const float *xp, const fc_int *off,
       const float *wt, const float *bias, int relu, float *y, fc_int p0, fc_int n, int h,
       const int step)
{
    const fc_int ohow = s->oh * s->ow, taps = s->c * s->kh * s->kw, K = s->k;
    fc_int at[FC_NP]; /* the pixels' corners in the padded image */
    for (int q = 0; q < FC_NP; q++) {
        const fc_int p = step ? p0 : p0 + (q < n ? q : n - 1);
        at[q] = p / s->ow * s->sh * g->wp + p % s->ow * s->sw + q * step;
    }
    __m512 acc[FC_NP];
    for (int q = 0; q < FC_NP; q++) acc[q] = _mm512_setzero_ps();
    const float *w = wt + 16 * h;
    for (fc_int t = 0; t < taps; t++, w += K) {
        const __m512 wv = _mm512_loadu_ps(w);
        const float *xt = xp + off[t] + (step ? at[0] : 0);
        /* An opaque base: else GCC folds off[t] into every pixel's index,
         * an extra add per broadcast instead of one addressing mode. */
        __asm__("" : "+r"(xt));
        for (int q = 0; q < FC_NP; q++) {
            const float *x = step ? xt + q * step : xt + at[q];
            acc[q] = _mm512_fmadd_ps(wv, _mm512_set1_ps(*x), acc[q]);
        }
    }
    /* Bias, ReLU (v < 0 ? 0 : v, NaN kept: maxps returns its second operand
     * on NaN), then channel-major. */
    const __m512 b = bias ? _mm512_loadu_ps(bias + 16 * h) : _mm512_setzero_ps();
    for (int q = 0; q < FC_NP; q++) {
        acc[q] = _mm512_add_ps(acc[q], b);
        if (relu) acc[q] = _mm512_max_ps(_mm512_setzero_ps(), acc[q]);
    }
    transpose16(acc);
    const __mmask16 m = first(n);
    for (int k = 0; k < 16; k++) _mm512_mask_storeu_ps(y + (16 * h + k) * ohow + p0, m, acc[k]);
}

/* ---- dW and db ------------------------------------------------------------
 * dW[k][c][i][j] = sum over images and output pixels of dy[k][oy][ox] *
 * xpad[c][oy * sh + i][ox * sw + j]. */

/* Taps [t0, t0 + T) x channels [16h, 16h + 16) into part (taps, K), over all
 * pixels of one image: xp padded, dyt (OH*OW, K). A row's pixels go four at
 * a time, each broadcast at a constant displacement from the group's corner
 * (step = sw, a constant; 0: sw read at run time), so that the loop's
 * bookkeeping and the offsets GCC keeps on the stack are paid once per 48
 * multiply-adds instead of 12. */
static inline __attribute__((always_inline)) void
dw_tile16(const fc_conv_shape *s, const fc_direct_geom *g, const float *xp, const float *dyt,
          const fc_int *off, fc_int t0, int h, float *part, const int T, const int step)
{
    const fc_int K = s->k, sw = step ? step : s->sw;
    fc_int o[FC_DW_T];
    for (int t = 0; t < T; t++) o[t] = off[t0 + t];
    __m512 acc[FC_DW_T];
    for (int t = 0; t < T; t++) acc[t] = _mm512_loadu_ps(part + (t0 + t) * K + 16 * h);
    for (fc_int oy = 0; oy < s->oh; oy++) {
        const float *d = dyt + oy * s->ow * K + 16 * h;
        const float *p = xp + oy * s->sh * g->wp;
        fc_int ox = 0;
        for (; ox + 4 <= s->ow; ox += 4, d += 4 * K, p += 4 * sw) {
            const float *b = p;
            __asm__("" : "+r"(b)); /* a base register, as in tile16() */
            __m512 dv[4];
            for (int q = 0; q < 4; q++) dv[q] = _mm512_loadu_ps(d + q * K);
            for (int t = 0; t < T; t++) {
                const float *bt = b + o[t];
                __asm__("" : "+r"(bt)); /* one register, the 4 pixels as displacements */
                for (int q = 0; q < 4; q++) acc[t] = _mm512_fmadd_ps(dv[q], _mm512_set1_ps(bt[q * sw]), acc[t]);
            }
        }
        for (; ox < s->ow; ox++, d += K, p += sw) {
            const float *b = p;
            __asm__("" : "+r"(b));
            const __m512 dv = _mm512_loadu_ps(d);
            for (int t = 0; t < T; t++) acc[t] = _mm512_fmadd_ps(dv, _mm512_set1_ps(b[o[t]]), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) _mm512_storeu_ps(part + (t0 + t) * K + 16 * h, acc[t]);
}

/* All taps of one image into part: tiles of FC_DW_T taps, the rest in a
 * last, narrower tile (T and the step compile-time constants in each case). */
#define FC_DW_CASE(T)                                                      \
    case T:                                                                \
        if (s->sw == 1)                                                    \
            dw_tile16(s, g, xp, dyt, off, t0, h, part, T, 1);              \
        else                                                               \
            dw_tile16(s, g, xp, dyt, off, t0, h, part, T, 0);              \
        break;
static void dw_image(const fc_conv_shape *s, const fc_direct_geom *g, const float *xp,
                     const float *dyt, const fc_int *off, float *part)
{
    const fc_int taps = s->c * s->kh * s->kw;
    for (int h = 0; h < s->k / 16; h++)
        for (fc_int t0 = 0; t0 < taps; t0 += FC_DW_T) {
            switch (taps - t0 < FC_DW_T ? taps - t0 : FC_DW_T) {
            FC_DW_CASE(1) FC_DW_CASE(2) FC_DW_CASE(3) FC_DW_CASE(4) FC_DW_CASE(5) FC_DW_CASE(6)
            FC_DW_CASE(7) FC_DW_CASE(8) FC_DW_CASE(9) FC_DW_CASE(10) FC_DW_CASE(11) FC_DW_CASE(12)
            }
        }
}

/* One image's dy (K, OH*OW) transposed to dyt (OH*OW, K), 16 channels x 16
 * pixels a register transpose (masked at the image's end), and db's
 * partial (K) += its pixels' values in raster order, each pixel's row added
 * as the transpose gives it. */
static void stage_dy(const fc_conv_shape *s, const float *dy, float *dyt, float *db)
{
    const fc_int ohow = s->oh * s->ow, K = s->k;
    for (fc_int k0 = 0; k0 < K; k0 += 16) {
        __m512 acc = _mm512_loadu_ps(db + k0);
        for (fc_int p0 = 0; p0 < ohow; p0 += 16) {
            const fc_int n = ohow - p0 < 16 ? ohow - p0 : 16;
            const __mmask16 m = first(n);
            __m512 r[16];
            for (int k = 0; k < 16; k++) r[k] = _mm512_maskz_loadu_ps(m, dy + (k0 + k) * ohow + p0);
            transpose16(r);
            for (int q = 0; q < n; q++) {
                _mm512_storeu_ps(dyt + (p0 + q) * K + k0, r[q]);
                acc = _mm512_add_ps(acc, r[q]);
            }
        }
        _mm512_storeu_ps(db + k0, acc);
    }
}

/* ---- the entries (kernels/direct.h) ---------------------------------------- */

static void forward(const fc_conv_shape *s, const fc_direct_geom *g, const float *xp,
                    const fc_int *off, const float *wt, const float *bias, int relu, float *y,
                    fc_int t0, fc_int t1)
{
    const fc_int ohow = s->oh * s->ow;
    for (fc_int t = t0; t < t1; t++) {
        const fc_int p0 = t * FC_NP, n = ohow - p0 < FC_NP ? ohow - p0 : FC_NP;
        /* Unit stride or 2, a whole tile in one output row: the constant
         * displacements (first layers of 32x32 images, 7x7/2 stems). */
        const int row = n == FC_NP && p0 % s->ow + FC_NP <= s->ow;
        const int step = row && s->sw <= 2 ? (int)s->sw : 0;
        for (int h = 0; h < s->k / 16; h++) {
            if (step == 1)
                tile16(s, g, xp, off, wt, bias, relu, y, p0, n, h, 1);
            else if (step == 2)
                tile16(s, g, xp, off, wt, bias, relu, y, p0, n, h, 2);
            else
                tile16(s, g, xp, off, wt, bias, relu, y, p0, n, h, 0);
        }
    }
}

static void dweight(const fc_conv_shape *s, const fc_direct_geom *g, const float *xp,
                    const float *dy, float *dyk, fc_int span, const fc_int *off, float *part,
                    float *db)
{
    (void)span; /* K = 8's */
    stage_dy(s, dy, dyk, db);
    dw_image(s, g, xp, dyk, off, part);
}

/* {forward, dweight, tile, lanes, overread, strided}: nothing read past the
 * planes, any stride. */
const fc_direct_kernel fc_direct_k16_avx512 = {forward, dweight, FC_NP, 1, 0, 1};
/* K = 32, 48, ..., FC_DIRECT_MAX_K: the same code, 16 channels at a time. */
const fc_direct_kernel fc_direct_wide_avx512 = {forward, dweight, FC_NP, 1, 0, 1};
