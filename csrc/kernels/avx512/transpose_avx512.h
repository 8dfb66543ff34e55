/* The 16 x 16 register transpose and the lane masks that this folder's
 * direct-convolution tiles share (direct_avx512.c in float32,
 * direct_bf16_avx512.c in bf16): their accumulators hold 16 output pixels
 * x 16 channels, stored as 16 channel rows of 16 pixels. */
#ifndef FC_KERNELS_AVX512_TRANSPOSE_H
#define FC_KERNELS_AVX512_TRANSPOSE_H

#include <immintrin.h>

#include "fastconv.h"

/* Lanes [0, n) of a vector (none for n <= 0, all for n >= 16). */
static inline __mmask16 first(fc_int n)
{
    return n <= 0 ? 0 : n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}

/* r[q][k] := r[k][q] (16 x 16 floats): pairs of rows interleaved by
 * 32 bits, then 64 bits, then 128-bit blocks two ways. */
static inline __attribute__((always_inline)) void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int h = 0; h < 16; h += 8)
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
        }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
}

#endif
