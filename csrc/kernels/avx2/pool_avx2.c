/* AVX2 2x2 stride-2 max-pool row kernels (contract: kernels/pool.h),
 * compiled with this folder's flags; the AVX-512 table's too. */
#include <immintrin.h>
#include <string.h>

#include "kernels/pool.h"

/* Eight windows per step: two 8-float loads per input row are split into
 * even and odd columns with in-lane shuffles, which leaves the windows in
 * the order 0 1 4 5 | 2 3 6 7; one 64-bit-chunk permute restores it on the
 * results only. A row of ow >= 8 windows ends with the vector of its last 8
 * (overlapping the one before: both write the same values there), so rows
 * such as 28 / 2 = 14 do not spend most of their time in the scalar tail. */

/* Even (taps 0, 2) and odd (taps 1, 3) columns of 16 floats, windows in the
 * order 0 1 4 5 2 3 6 7. */
static inline void split(const float *r, __m256 *even, __m256 *odd)
{
    __m256 lo = _mm256_loadu_ps(r), hi = _mm256_loadu_ps(r + 8);
    *even = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    *odd = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
}

/* The scan rule's step: take v when v > best or v is NaN. */
static inline void take(__m256 v, int tap, __m256 *best, __m256 *idx)
{
    __m256 m = _mm256_or_ps(_mm256_cmp_ps(v, *best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    *best = _mm256_blendv_ps(*best, v, m);
    *idx = _mm256_blendv_ps(*idx, _mm256_castsi256_ps(_mm256_set1_epi32(tap)), m);
}

/* Windows ox .. ox + 7. */
static inline void forward8(fc_int ox, const float *r0, const float *r1, float *y, uint8_t *am)
{
    __m256 v0, v1, v2, v3;
    split(r0 + 2 * ox, &v0, &v1);
    split(r1 + 2 * ox, &v2, &v3);
    __m256 best = v0, idx = _mm256_setzero_ps();
    take(v1, 1, &best, &idx);
    take(v2, 2, &best, &idx);
    take(v3, 3, &best, &idx);
    const int order = _MM_SHUFFLE(3, 1, 2, 0); /* 64-bit chunks 0 2 1 3: windows 0..7 */
    _mm256_storeu_ps(y + ox, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(best), order)));
    __m256i t = _mm256_permute4x64_epi64(_mm256_castps_si256(idx), order);
    __m128i t16 = _mm_packs_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    _mm_storel_epi64((__m128i *)(am + ox), _mm_packus_epi16(t16, t16));
}

/* Rows of 4 to 7 windows (a 14x14 plane pools to 7 per row: lenet's second
 * pool) in 4-window steps on 128-bit vectors, the last overlapping as above;
 * the scalar loop took 10x longer per element than the 8-window kernel
 * (64x16x14x14: 0.68 ms forward, 0.50 backward at 1 thread, against 0.066
 * and 0.094 for the same bytes in 28-wide rows). In 128 bits the even/odd
 * shuffle keeps the windows in order. */
static inline void take4(__m128 v, int tap, __m128 *best, __m128 *idx)
{
    __m128 m = _mm_or_ps(_mm_cmp_ps(v, *best, _CMP_GT_OQ), _mm_cmp_ps(v, v, _CMP_UNORD_Q));
    *best = _mm_blendv_ps(*best, v, m);
    *idx = _mm_blendv_ps(*idx, _mm_castsi128_ps(_mm_set1_epi32(tap)), m);
}

static inline void forward4(fc_int ox, const float *r0, const float *r1, float *y, uint8_t *am)
{
    const __m128 a = _mm_loadu_ps(r0 + 2 * ox), b = _mm_loadu_ps(r0 + 2 * ox + 4);
    const __m128 c = _mm_loadu_ps(r1 + 2 * ox), d = _mm_loadu_ps(r1 + 2 * ox + 4);
    __m128 best = _mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)), idx = _mm_setzero_ps();
    take4(_mm_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)), 1, &best, &idx);
    take4(_mm_shuffle_ps(c, d, _MM_SHUFFLE(2, 0, 2, 0)), 2, &best, &idx);
    take4(_mm_shuffle_ps(c, d, _MM_SHUFFLE(3, 1, 3, 1)), 3, &best, &idx);
    _mm_storeu_ps(y + ox, best);
    const __m128i t16 = _mm_packs_epi32(_mm_castps_si128(idx), _mm_castps_si128(idx));
    const int32_t t8 = _mm_cvtsi128_si32(_mm_packus_epi16(t16, t16));
    memcpy(am + ox, &t8, 4);
}

void fc_pool2x2_forward_avx2(fc_int ow, const float *r0, const float *r1, float *y, uint8_t *am)
{
    if (ow < 4) {
        row_forward_scalar(0, ow, r0, r1, y, am);
        return;
    }
    if (ow < 8) {
        forward4(0, r0, r1, y, am);
        if (ow > 4) forward4(ow - 4, r0, r1, y, am);
        return;
    }
    for (fc_int ox = 0; ox + 8 <= ow; ox += 8) forward8(ox, r0, r1, y, am);
    if (ow % 8) forward8(ow - 8, r0, r1, y, am);
}

/* Interleave a (even columns) and b (odd columns) of 8 windows into 16 floats at d. */
static inline void store_interleaved(float *d, __m256 a, __m256 b)
{
    __m256 lo = _mm256_unpacklo_ps(a, b), hi = _mm256_unpackhi_ps(a, b);
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(d + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}

static inline void backward8(fc_int ox, const float *dy, const uint8_t *am, float *dx0, float *dx1)
{
    __m256 g = _mm256_loadu_ps(dy + ox);
    __m256i t = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(am + ox)));
    __m256 d[4];
    for (int k = 0; k < 4; k++)
        d[k] = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(t, _mm256_set1_epi32(k))), g);
    store_interleaved(dx0 + 2 * ox, d[0], d[1]);
    store_interleaved(dx1 + 2 * ox, d[2], d[3]);
}

static inline void backward4(fc_int ox, const float *dy, const uint8_t *am, float *dx0, float *dx1)
{
    const __m128 g = _mm_loadu_ps(dy + ox);
    int32_t t8;
    memcpy(&t8, am + ox, 4);
    const __m128i t = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(t8));
    __m128 d[4];
    for (int k = 0; k < 4; k++) d[k] = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(t, _mm_set1_epi32(k))), g);
    _mm_storeu_ps(dx0 + 2 * ox, _mm_unpacklo_ps(d[0], d[1]));
    _mm_storeu_ps(dx0 + 2 * ox + 4, _mm_unpackhi_ps(d[0], d[1]));
    _mm_storeu_ps(dx1 + 2 * ox, _mm_unpacklo_ps(d[2], d[3]));
    _mm_storeu_ps(dx1 + 2 * ox + 4, _mm_unpackhi_ps(d[2], d[3]));
}

void fc_pool2x2_backward_avx2(fc_int ow, const float *dy, const uint8_t *am, float *dx0, float *dx1)
{
    if (ow < 4) {
        row_backward_scalar(0, ow, dy, am, dx0, dx1);
        return;
    }
    if (ow < 8) {
        backward4(0, dy, am, dx0, dx1);
        if (ow > 4) backward4(ow - 4, dy, am, dx0, dx1);
        return;
    }
    for (fc_int ox = 0; ox + 8 <= ow; ox += 8) backward8(ox, dy, am, dx0, dx1);
    if (ow % 8) backward8(ow - 8, dy, am, dx0, dx1);
}
