/* AVX-512F 2x2 stride-2 max-pool row kernels (contract: kernels/pool.h),
 * compiled with this folder's flags. Sixteen windows a step: two zmm loads
 * of an input row are split into its even and odd columns by one
 * two-source permute each, which keeps the windows in order (AVX2's in-lane
 * shuffles needed a fix-up permute). A row's last step loads and stores
 * under masks, so there is no scalar tail, and a row of fewer than 16
 * windows is one masked step. Only selects, no arithmetic: the reference's
 * bits and taps. */
#include <immintrin.h>
#include <string.h>

#include "kernels/pool.h"

/* Lanes [0, n) of a vector (none for n <= 0, all for n >= 16). */
static inline __mmask16 first(fc_int n)
{
    return n <= 0 ? 0 : n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}

/* Even (taps 0, 2) and odd (taps 1, 3) columns of the 2 n floats at r, as
 * windows 0 .. n - 1 (lanes past n are zero: nothing past the row is read). */
static inline void split(const float *r, fc_int n, __m512 *even, __m512 *odd)
{
    const __m512i even_at = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd_at = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    const __m512 lo = _mm512_maskz_loadu_ps(first(2 * n), r);
    const __m512 hi = _mm512_maskz_loadu_ps(first(2 * n - 16), r + 16);
    *even = _mm512_permutex2var_ps(lo, even_at, hi);
    *odd = _mm512_permutex2var_ps(lo, odd_at, hi);
}

/* The scan rule's step: take v when v > best or v is NaN. */
static inline void take(__m512 v, int tap, __m512 *best, __m512i *idx)
{
    const __mmask16 m = _mm512_cmp_ps_mask(v, *best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    *best = _mm512_mask_mov_ps(*best, m, v);
    *idx = _mm512_mask_mov_epi32(*idx, m, _mm512_set1_epi32(tap));
}

void fc_pool2x2_forward_avx512(fc_int ow, const float *r0, const float *r1, float *y, uint8_t *am)
{
    for (fc_int ox = 0; ox < ow; ox += 16) {
        const fc_int n = ow - ox < 16 ? ow - ox : 16;
        __m512 v0, v1, v2, v3;
        split(r0 + 2 * ox, n, &v0, &v1);
        split(r1 + 2 * ox, n, &v2, &v3);
        __m512 best = v0;
        __m512i idx = _mm512_setzero_si512();
        take(v1, 1, &best, &idx);
        take(v2, 2, &best, &idx);
        take(v3, 3, &best, &idx);
        _mm512_mask_storeu_ps(y + ox, first(n), best);
        _mm512_mask_cvtepi32_storeu_epi8(am + ox, first(n), idx);
    }
}

/* The n <= 16 taps at am as 32-bit lanes (past n: 4, no tap). A masked byte
 * load needs AVX512BW, which this folder does not assume: a partial step
 * copies its bytes instead. */
static inline __m512i load_taps(const uint8_t *am, fc_int n)
{
    uint8_t t[16];
    if (n == 16) return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)am));
    memset(t, 4, sizeof t);
    memcpy(t, am, (size_t)n);
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)t));
}

/* a (even columns) and b (odd columns) of n windows, interleaved into the
 * 2 n floats at d. */
static inline void store_interleaved(float *d, fc_int n, __m512 a, __m512 b)
{
    const __m512i lo_at = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi_at = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    _mm512_mask_storeu_ps(d, first(2 * n), _mm512_permutex2var_ps(a, lo_at, b));
    _mm512_mask_storeu_ps(d + 16, first(2 * n - 16), _mm512_permutex2var_ps(a, hi_at, b));
}

void fc_pool2x2_backward_avx512(fc_int ow, const float *dy, const uint8_t *am, float *dx0, float *dx1)
{
    for (fc_int ox = 0; ox < ow; ox += 16) {
        const fc_int n = ow - ox < 16 ? ow - ox : 16;
        const __m512 g = _mm512_maskz_loadu_ps(first(n), dy + ox);
        const __m512i t = load_taps(am + ox, n);
        __m512 d[4];
        for (int k = 0; k < 4; k++) d[k] = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(t, _mm512_set1_epi32(k)), g);
        store_interleaved(dx0 + 2 * ox, n, d[0], d[1]);
        store_interleaved(dx1 + 2 * ox, n, d[2], d[3]);
    }
}
