/* AVX-512F 2x2 stride-2 max-pool row kernels (contract: kernels/pool.h),
 * compiled with this folder's flags. Sixteen windows a step: two zmm loads
 * of an input row are split into its even and odd columns by one
 * two-source permute each, which keeps the windows in order (AVX2's in-lane
 * shuffles needed a fix-up permute). A row of ow >= 16 windows ends with
 * the step of its last 16, overlapping the one before (both store the same
 * values there), as AVX2's rows do.
 *
 * Rows of fewer than 16 windows (a 28-wide plane pools to 14 per row) run
 * AVX2's kernels: a single masked 16-window step, tried first, cost more
 * instructions than AVX2's overlapping 8-window steps (the mask set-up,
 * and taps loaded in 4-byte groups since this folder does not assume
 * AVX512BW's byte masks), and measured slower on a Zen 4 host (maxpool
 * 64x16x28x28 forward and backward at 1 thread, 1.09x AVX2's time).
 * Only selects, no arithmetic: the reference's bits and taps. */
#include <immintrin.h>

#include "kernels/pool.h"

fc_pool_row_forward_fn fc_pool2x2_forward_avx2;
fc_pool_row_backward_fn fc_pool2x2_backward_avx2;

/* Even (taps 0, 2) and odd (taps 1, 3) columns of the 32 floats at r, as
 * windows 0 .. 15. */
static inline __attribute__((always_inline)) void split(const float *r, __m512 *even, __m512 *odd)
{
    const __m512i even_at = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd_at = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    const __m512 a = _mm512_loadu_ps(r), b = _mm512_loadu_ps(r + 16);
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

/* Windows ox .. ox + 15; the taps narrow in a register and store as one xmm. */
static inline __attribute__((always_inline)) void forward16(fc_int ox, const float *r0, const float *r1,
                                                            float *y, uint8_t *am)
{
    __m512 v0, v1, v2, v3;
    split(r0 + 2 * ox, &v0, &v1);
    split(r1 + 2 * ox, &v2, &v3);
    __m512 best = v0;
    __m512i idx = _mm512_setzero_si512();
    take(v1, 1, &best, &idx);
    take(v2, 2, &best, &idx);
    take(v3, 3, &best, &idx);
    _mm512_storeu_ps(y + ox, best);
    _mm_storeu_si128((__m128i *)(am + ox), _mm512_cvtepi32_epi8(idx));
}

void fc_pool2x2_forward_avx512(fc_int ow, const float *r0, const float *r1, float *y, uint8_t *am)
{
    if (ow < 16) {
        fc_pool2x2_forward_avx2(ow, r0, r1, y, am);
        return;
    }
    for (fc_int ox = 0; ox + 16 <= ow; ox += 16) forward16(ox, r0, r1, y, am);
    if (ow % 16) forward16(ow - 16, r0, r1, y, am);
}

/* a (even columns) and b (odd columns) of 16 windows, interleaved into the
 * 32 floats at d. */
static inline __attribute__((always_inline)) void store_interleaved(float *d, __m512 a, __m512 b)
{
    const __m512i lo_at = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi_at = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    _mm512_storeu_ps(d, _mm512_permutex2var_ps(a, lo_at, b));
    _mm512_storeu_ps(d + 16, _mm512_permutex2var_ps(a, hi_at, b));
}

static inline __attribute__((always_inline)) void backward16(fc_int ox, const float *dy, const uint8_t *am,
                                                             float *dx0, float *dx1)
{
    const __m512 g = _mm512_loadu_ps(dy + ox);
    const __m512i t = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(am + ox)));
    __m512 d[4];
    for (int k = 0; k < 4; k++) d[k] = _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(t, _mm512_set1_epi32(k)), g);
    store_interleaved(dx0 + 2 * ox, d[0], d[1]);
    store_interleaved(dx1 + 2 * ox, d[2], d[3]);
}

void fc_pool2x2_backward_avx512(fc_int ow, const float *dy, const uint8_t *am, float *dx0, float *dx1)
{
    if (ow < 16) {
        fc_pool2x2_backward_avx2(ow, dy, am, dx0, dx1);
        return;
    }
    for (fc_int ox = 0; ox + 16 <= ow; ox += 16) backward16(ox, dy, am, dx0, dx1);
    if (ow % 16) backward16(ow - 16, dy, am, dx0, dx1);
}
