/* The bf16 direct forward, AVX512_BF16 (contract: kernels/direct.h;
 * compiled with -mavx512bf16 -ffp-contract=off, setup.py; registered only
 * on CPUs with AVX512_BF16, ctx_avx512.c). The float32 tile of
 * direct_avx512.c with channel pairs for taps: 16 output pixels x 16
 * channels in 16 accumulators; per pair tap, one load of the 16 channels'
 * weight pairs and 16 vdpbf16ps, each with a broadcast word of the pixel's
 * two input channels: 32 multiply-adds an instruction, twice the FMA's.
 * vdpbf16ps does each lane's two products as fc_bf16_step does (high half
 * first), so kernels/ref/direct_bf16_ref.c gives the same bits. */
#include <immintrin.h>

#include "kernels/avx512/transpose_avx512.h"
#include "kernels/direct.h"

#define FC_NP FC_DIRECT_BF16_TILE
_Static_assert(FC_NP == 16, "one 16 x 16 transpose per tile");

/* acc + the pair products of w and the word at x in every lane: one
 * vdpbf16ps with x as its {1to16} memory operand, which GCC does not fold
 * from _mm512_set1_epi32 (a separate broadcast each, on the pipes the
 * dot products need). */
static inline __attribute__((always_inline)) __m512 dp_broadcast(__m512 acc, __m512bh w, const uint32_t *x)
{
    __asm__("vdpbf16ps %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*x));
    return acc;
}

/* Channels [16h, 16h + 16) of output pixels [p0, p0 + n), n <= 16 (the
 * pixels past n repeat pixel p0 + n - 1 and are not stored); step as in
 * direct_avx512.c's tile16: > 0, the pixels lie in one output row at that
 * stride (constant displacements), 0: their corners computed. */
static inline __attribute__((always_inline)) void
tile16(const fc_conv_shape *s, const fc_direct_geom *g, const uint32_t *xp2, const fc_int *off2,
       const uint16_t *wt2, const float *bias, int relu, float *y, fc_int p0, fc_int n, int h,
       const int step)
{
    const fc_int ohow = s->oh * s->ow, pairs = (s->c + 1) / 2 * s->kh * s->kw, K = s->k;
    fc_int at[FC_NP];
    for (int q = 0; q < FC_NP; q++) {
        const fc_int p = step ? p0 : p0 + (q < n ? q : n - 1);
        at[q] = p / s->ow * s->sh * g->wp + p % s->ow * s->sw + q * step;
    }
    __m512 acc[FC_NP];
    for (int q = 0; q < FC_NP; q++) acc[q] = _mm512_setzero_ps();
    const uint16_t *w = wt2 + 32 * h;
    for (fc_int u = 0; u < pairs; u++, w += 2 * K) {
        const __m512bh wv = (__m512bh)_mm512_loadu_si512((const void *)w);
        const uint32_t *xt = xp2 + off2[u] + (step ? at[0] : 0);
        __asm__("" : "+r"(xt)); /* one base register, the pixels as displacements */
        for (int q = 0; q < FC_NP; q++) {
            const uint32_t *x = step ? xt + q * step : xt + at[q];
            acc[q] = dp_broadcast(acc[q], wv, x);
        }
    }
    const __m512 b = bias ? _mm512_loadu_ps(bias + 16 * h) : _mm512_setzero_ps();
    for (int q = 0; q < FC_NP; q++) {
        acc[q] = _mm512_add_ps(acc[q], b);
        if (relu) acc[q] = _mm512_max_ps(_mm512_setzero_ps(), acc[q]);
    }
    transpose16(acc);
    const __mmask16 m = first(n);
    for (int k = 0; k < 16; k++) _mm512_mask_storeu_ps(y + (16 * h + k) * ohow + p0, m, acc[k]);
}

void fc_direct_bf16_forward_avx512(const fc_conv_shape *s, const fc_direct_geom *g, const uint32_t *xp2,
                                   const fc_int *off2, const uint16_t *wt2, const float *bias, int relu,
                                   float *y, fc_int t0, fc_int t1)
{
    const fc_int ohow = s->oh * s->ow;
    for (fc_int t = t0; t < t1; t++) {
        const fc_int p0 = t * FC_NP, n = ohow - p0 < FC_NP ? ohow - p0 : FC_NP;
        const int row = n == FC_NP && p0 % s->ow + FC_NP <= s->ow;
        const int step = row && s->sw <= 2 ? (int)s->sw : 0;
        for (int h = 0; h < s->k / 16; h++) {
            if (step == 1)
                tile16(s, g, xp2, off2, wt2, bias, relu, y, p0, n, h, 1);
            else if (step == 2)
                tile16(s, g, xp2, off2, wt2, bias, relu, y, p0, n, h, 2);
            else
                tile16(s, g, xp2, off2, wt2, bias, relu, y, p0, n, h, 0);
        }
    }
}
