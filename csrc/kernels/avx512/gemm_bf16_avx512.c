/* AVX512_BF16 micro-kernel of the bf16 GEMM (compiled with this folder's
 * flags plus -mavx512bf16 -ffp-contract=off, setup.py; registered only on
 * CPUs with AVX512_BF16, ctx_avx512.c). Contract and packed layout:
 * kernels/bf16.h; kernels/ref/gemm_bf16_ref.c gives the same bits.
 *
 * MR x NR = 8 x 48, the float32 kernel's tile (tile_avx512.h): per pair of
 * k, 3 loads of B (48 columns x 2 bf16), 8 broadcasts of an A pair and 24
 * vdpbf16ps, each 32 multiply-adds (twice the float32 FMA's).
 */
#include <immintrin.h>

#include "kernels/avx512/tile_avx512.h"
#include "kernels/bf16.h"
#include "kernels/pack_bf16.h"

/* The tile for columns in the first nv vectors, inlined with a constant nv
 * (as the fp32 kernel's tile()). */
static inline __attribute__((always_inline)) void tile(int nv, fc_int kc, float alpha, const fc_bf16 *restrict a,
                                                       const fc_bf16 *restrict b, float beta, float *restrict c,
                                                       fc_int ldc, fc_int m, fc_int n, const float *bias,
                                                       int relu)
{
    __m512 acc[MR][NV];
    FC_UNROLL_TILE
    for (int i = 0; i < MR; i++)
        FC_UNROLL_TILE
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();

#pragma GCC unroll 2
    for (fc_int q = 0; q < (kc + 1) / 2; q++) {
        __m512bh bv[NV];
        FC_UNROLL_TILE
        for (int v = 0; v < NV; v++)
            bv[v] = (__m512bh)(v < nv ? _mm512_load_si512((const void *)(b + v * 2 * VL))
                                      : _mm512_setzero_si512());
        FC_UNROLL_TILE
        for (int i = 0; i < MR; i++) {
            uint32_t pair;
            memcpy(&pair, a + 2 * i, sizeof pair);
            const __m512bh ai = (__m512bh)_mm512_set1_epi32((int)pair);
            FC_UNROLL_TILE
            for (int v = 0; v < NV; v++)
                if (v < nv) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, bv[v]);
        }
        a += 2 * MR;
        b += 2 * NR;
    }

    /* alpha * S, beta * C rounded each, then the epilogue */
    store_tile(nv, 0, acc, alpha, beta, c, ldc, m, n, bias, relu);
}

static void ukr_avx512_bf16(fc_int kc, float alpha, const fc_bf16 *restrict a, const fc_bf16 *restrict b,
                            float beta, float *restrict c, fc_int ldc, fc_int m, fc_int n)
{
    FC_AVX512_BY_WIDTH(tile, n, kc, alpha, a, b, beta, c, ldc, m, n, NULL, 0)
}

static void ukr_avx512_bf16_fused(fc_int kc, float alpha, const fc_bf16 *restrict a,
                                  const fc_bf16 *restrict b, float beta, float *restrict c, fc_int ldc,
                                  fc_int m, fc_int n, const float *bias, int relu)
{
    FC_AVX512_BY_WIDTH(tile, n, kc, alpha, a, b, beta, c, ldc, m, n, bias, relu)
}

/* vcvtneps2bf16 rounds as fc_bf16_round (kernels/bf16.h). */
void fc_to_bf16_avx512(const float *x, fc_int n, fc_bf16 *y)
{
    fc_int i = 0;
    for (; i + VL <= n; i += VL)
        _mm256_storeu_si256((__m256i *)(y + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
    for (; i < n; i++) y[i] = fc_bf16_round(x[i]);
}

/* The fp32 kernel's blocks: a B block of bf16 takes half its bytes. */
#define MC 256
#define NC 4080
_Static_assert(MC % MR == 0 && NC % NR == 0, "cache blocks hold whole register tiles");

FC_GEMM_BF16_PACKERS(MR, NR)

const fc_gemm_bf16_kernel fc_gemm_bf16_kernel_avx512 = {"avx512_bf16", MR, NR, MC, NC, ukr_avx512_bf16,
                                                       ukr_avx512_bf16_fused, pack_mr, pack_nr, deal_nr};
