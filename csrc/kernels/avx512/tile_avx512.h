/* The register tile that this folder's GEMM micro-kernels share
 * (gemm_avx512.c in float32, gemm_bf16_avx512.c in bf16): MR x NR = 8 x 48,
 * 24 zmm accumulators of 8 rows x 3 vectors, leaving 8 of the 32 zmm
 * registers for the B vectors and the A broadcast. MR = 8 divides the
 * power-of-two channel counts of im2col convolutions (M = 8, 16, 32, ...),
 * so no rows are wasted on padding there. */
#ifndef FC_KERNELS_AVX512_TILE_H
#define FC_KERNELS_AVX512_TILE_H

#include <immintrin.h>

#include "fastconv.h"
#include "kernels/gemm_ukernel.h"

#define MR 8
#define NR 48
#define VL 16         /* floats per zmm */
#define NV (NR / VL)  /* zmm vectors per row of the tile */

/* Lanes l of vector v with v * VL + l < n. */
static inline __mmask16 column_mask(fc_int n, int v)
{
    const fc_int left = n - (fc_int)v * VL;
    return left >= VL ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
}

/* c := alpha * acc + beta * c on the m x n corner of the tile (nv vectors a
 * row), c read only when beta != 0; with fused, beta * c is added by one FMA,
 * else rounded before the sum (the bf16 contract, kernels/bf16.h). Then the
 * fused epilogue of gemm_ukernel.h: + bias[i] on row i (bias may be NULL),
 * then x < 0 ? 0 : x with relu (NaN and -0 kept), the bits of sgemm.c's
 * separate pass: the bias is added with explicit rounding, which the
 * compiler cannot contract into an FMA with alpha's product. Masked loads
 * and stores serve full and edge tiles alike (a full mask costs nothing),
 * so nothing outside the corner is touched. */
static inline __attribute__((always_inline)) void store_tile(int nv, int fused, __m512 acc[MR][NV],
                                                             float alpha, float beta, float *restrict c,
                                                             fc_int ldc, fc_int m, fc_int n,
                                                             const float *bias, int relu)
{
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta), zero = _mm512_setzero_ps();
    FC_UNROLL_TILE
    for (int i = 0; i < MR; i++) {
        if (i >= m) break;
        float *ci = c + i * ldc;
        FC_UNROLL_TILE
        for (int v = 0; v < NV; v++) {
            if (v >= nv) break;
            const __mmask16 mask = column_mask(n, v);
            __m512 r = _mm512_mul_ps(va, acc[i][v]);
            if (beta != 0.0f) {
                const __m512 cv = _mm512_maskz_loadu_ps(mask, ci + v * VL);
                r = fused ? _mm512_fmadd_ps(vb, cv, r) : _mm512_add_ps(r, _mm512_mul_ps(vb, cv));
            }
            if (bias)
                r = _mm512_add_round_ps(r, _mm512_set1_ps(bias[i]),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            if (relu) r = _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(r, zero, _CMP_LT_OQ), zero);
            _mm512_mask_storeu_ps(ci + v * VL, mask, r);
        }
    }
}

/* A micro-kernel's body: `tile` inlined with a constant nv, the vectors
 * that hold the tile's n columns, so that narrow edge tiles skip the
 * vectors that would only hold padding. */
#define FC_AVX512_BY_WIDTH(tile, n, ...)                                                           \
    switch (((n) + VL - 1) / VL) {                                                                 \
    case 1: tile(1, __VA_ARGS__); break;                                                           \
    case 2: tile(2, __VA_ARGS__); break;                                                           \
    default: tile(NV, __VA_ARGS__); break;                                                         \
    }

#endif
