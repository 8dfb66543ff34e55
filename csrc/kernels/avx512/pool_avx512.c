/* AVX-512F 2x2 stride-2 max-pool row kernels (contract: kernels/pool.h),
 * compiled with this folder's flags. Sixteen windows a step: two zmm loads
 * of an input row are split into its even and odd columns by one
 * two-source permute each, which keeps the windows in order (AVX2's in-lane
 * shuffles needed a fix-up permute). A row's last partial step loads and
 * stores under masks, so there is no scalar tail, and a row of fewer than
 * 16 windows is one masked step. Only selects, no arithmetic: the reference's
 * bits and taps. */
#include <immintrin.h>
#include <string.h>

#include "kernels/pool.h"

/* Lanes [0, n) of a vector (none for n <= 0, all for n >= 16). */
static inline __mmask16 first(fc_int n)
{
    return n <= 0 ? 0 : n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}

/* Even (taps 0, 2) and odd (taps 1, 3) columns of the floats at r under
 * the masks lo, hi of its two vectors, as windows 0 .. 15 (masked lanes
 * are zero: nothing past the row is read). */
static inline __attribute__((always_inline)) void split(const float *r, __mmask16 lo, __mmask16 hi,
                                                        __m512 *even, __m512 *odd)
{
    const __m512i even_at = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd_at = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    const __m512 a = _mm512_maskz_loadu_ps(lo, r), b = _mm512_maskz_loadu_ps(hi, r + 16);
    *even = _mm512_permutex2var_ps(a, even_at, b);
    *odd = _mm512_permutex2var_ps(a, odd_at, b);
}

/* The scan rule's step: take v when v > best or v is NaN. */
static inline __attribute__((always_inline)) void take(__m512 v, int tap, __m512 *best, __m512i *idx)
{
    const __mmask16 m = _mm512_cmp_ps_mask(v, *best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    *best = _mm512_mask_mov_ps(*best, m, v);
    *idx = _mm512_mask_mov_epi32(*idx, m, _mm512_set1_epi32(tap));
}

/* Windows ox .. ox + n - 1, n <= 16 (inlined with n = 16 for the full
 * steps, whose masks are then constants and vanish). */
static inline __attribute__((always_inline)) void forward16(fc_int ox, fc_int n, const float *r0,
                                                            const float *r1, float *y, uint8_t *am)
{
    __m512 v0, v1, v2, v3;
    split(r0 + 2 * ox, first(2 * n), first(2 * n - 16), &v0, &v1);
    split(r1 + 2 * ox, first(2 * n), first(2 * n - 16), &v2, &v3);
    __m512 best = v0;
    __m512i idx = _mm512_setzero_si512();
    take(v1, 1, &best, &idx);
    take(v2, 2, &best, &idx);
    take(v3, 3, &best, &idx);
    _mm512_mask_storeu_ps(y + ox, first(n), best);
    _mm512_mask_cvtepi32_storeu_epi8(am + ox, first(n), idx);
}

void fc_pool2x2_forward_avx512(fc_int ow, const float *r0, const float *r1, float *y, uint8_t *am)
{
    fc_int ox = 0;
    for (; ox + 16 <= ow; ox += 16) forward16(ox, 16, r0, r1, y, am);
    if (ox < ow) forward16(ox, ow - ox, r0, r1, y, am);
}

/* The n <= 16 taps at am as 32-bit lanes (lanes past n unspecified). A
 * masked byte load needs AVX512BW, which this folder does not assume: the
 * whole 4-byte groups load under a mask, the last n % 4 bytes one by one
 * (never a read past am + n, nor a store to reload, which would stall). */
static inline __attribute__((always_inline)) __m512i load_taps(const uint8_t *am, fc_int n)
{
    if (n == 16) return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)am));
    const fc_int whole = n / 4, left = n % 4;
    const uint8_t *last = am + 4 * whole;
    const uint32_t rest = (left > 0 ? last[0] : 0u) | (left > 1 ? (uint32_t)last[1] << 8 : 0u) |
                          (left > 2 ? (uint32_t)last[2] << 16 : 0u);
    __m512i groups = _mm512_maskz_loadu_epi32(first(whole), am);
    groups = _mm512_mask_set1_epi32(groups, (__mmask16)(1u << whole), (int)rest);
    return _mm512_cvtepu8_epi32(_mm512_castsi512_si128(groups));
}

/* a (even columns) and b (odd columns) of n windows, interleaved into the
 * 2 n floats at d. */
static inline __attribute__((always_inline)) void store_interleaved(float *d, fc_int n, __m512 a, __m512 b)
{
    const __m512i lo_at = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi_at = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    _mm512_mask_storeu_ps(d, first(2 * n), _mm512_permutex2var_ps(a, lo_at, b));
    _mm512_mask_storeu_ps(d + 16, first(2 * n - 16), _mm512_permutex2var_ps(a, hi_at, b));
}

static inline __attribute__((always_inline)) void backward16(fc_int ox, fc_int n, const float *dy,
                                                             const uint8_t *am, float *dx0, float *dx1)
{
    const __m512 g = _mm512_maskz_loadu_ps(first(n), dy + ox);
    const __m512i t = load_taps(am + ox, n);
    __m512 d[4];
    for (int k = 0; k < 4; k++) d[k] = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(t, _mm512_set1_epi32(k)), g);
    store_interleaved(dx0 + 2 * ox, n, d[0], d[1]);
    store_interleaved(dx1 + 2 * ox, n, d[2], d[3]);
}

void fc_pool2x2_backward_avx512(fc_int ow, const float *dy, const uint8_t *am, float *dx0, float *dx1)
{
    fc_int ox = 0;
    for (; ox + 16 <= ow; ox += 16) backward16(ox, 16, dy, am, dx0, dx1);
    if (ox < ow) backward16(ox, ow - ox, dy, am, dx0, dx1);
}
