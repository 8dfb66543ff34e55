/* AVX-512F micro-kernel (compiled with -mavx512f -mavx2 -mfma; picked at run
 * time). The same structure as the AVX2 kernel, with zmm registers and masks.
 *
 * MR x NR = 8 x 48 (tile_avx512.h): each k step is 3 loads + 8 broadcasts
 * for 24 FMAs.
 *
 * Block sizes: a kc x NR sliver of B, reused from L1 by every sliver of A,
 * is 48 x 160 floats = 30 KB, inside the 32 KB L1 of Zen 4 and Skylake-X;
 * an A block of MC x KC = 256 x 160 floats (160 KB) stays in a 1 MB L2; a B
 * block of KC x NC = 160 x 4080 floats (2.6 MB) in L3. Not measured on
 * AVX-512 hardware yet (the development machine has none).
 */
#include <immintrin.h>

#include "kernels/avx512/tile_avx512.h"
#include "kernels/gemm_ukernel.h"
#include "kernels/pack.h"

/* The micro-kernel for tiles whose columns fit in the first nv vectors of a
 * row, inlined with a constant nv (see ukr_avx512) so that narrow edge tiles
 * skip the vectors that would only hold padding. Written like the AVX2
 * kernel's tile(), for the same reasons.
 * Inputs: kc, alpha, beta, packed panels a (MR x kc) and b (kc x NR), b
 * 64-byte aligned; m <= MR, n <= nv * VL. Output: the m x n corner of c (row
 * stride ldc), which is read only when beta != 0, with the fused epilogue
 * (bias may be NULL; store_tile). */
static inline __attribute__((always_inline)) void tile(int nv, fc_int kc, float alpha, const float *restrict a,
                                                       const float *restrict b, float beta, float *restrict c,
                                                       fc_int ldc, fc_int m, fc_int n, const float *bias,
                                                       int relu)
{
    __m512 acc[MR][NV];
    FC_UNROLL_TILE
    for (int i = 0; i < MR; i++)
        FC_UNROLL_TILE
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();

    /* Start bringing C in while the k loop runs. */
    FC_UNROLL_TILE
    for (int i = 0; i < MR; i++) {
        if (i >= m) break;
        FC_UNROLL_TILE
        for (int v = 0; v < NV; v++)
            if (v < nv) _mm_prefetch((const char *)(c + i * ldc + v * VL), _MM_HINT_T0);
    }

#pragma GCC unroll 4
    for (fc_int p = 0; p < kc; p++) {
        __m512 bv[NV];
        FC_UNROLL_TILE
        for (int v = 0; v < NV; v++) bv[v] = v < nv ? _mm512_load_ps(b + v * VL) : _mm512_setzero_ps();
        FC_UNROLL_TILE
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(a[i]);
            FC_UNROLL_TILE
            for (int v = 0; v < NV; v++)
                if (v < nv) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
        }
        a += MR;
        b += NR;
    }

    store_tile(nv, 1, acc, alpha, beta, c, ldc, m, n, bias, relu);
}

static void ukr_avx512(fc_int kc, float alpha, const float *restrict a, const float *restrict b,
                       float beta, float *restrict c, fc_int ldc, fc_int m, fc_int n)
{
    FC_AVX512_BY_WIDTH(tile, n, kc, alpha, a, b, beta, c, ldc, m, n, NULL, 0)
}

/* The conv forward's bias and ReLU in the store: at k = 16 (a 1x1 layer
 * from 16 channels) sgemm.c's separate pass over each stored tile took a
 * fifth of the GEMM's time. */
static void ukr_avx512_fused(fc_int kc, float alpha, const float *restrict a, const float *restrict b,
                             float beta, float *restrict c, fc_int ldc, fc_int m, fc_int n,
                             const float *bias, int relu)
{
    FC_AVX512_BY_WIDTH(tile, n, kc, alpha, a, b, beta, c, ldc, m, n, bias, relu)
}

#define MC 256
#define KC 160
#define NC 4080
_Static_assert(MC % MR == 0 && NC % NR == 0, "cache blocks hold whole register tiles");

FC_GEMM_PACKERS(MR, NR)

const fc_gemm_kernel fc_gemm_kernel_avx512 = {"avx512", MR, NR, MC, KC, NC, ukr_avx512, ukr_avx512_fused,
                                             pack_mr, pack_nr, deal_nr};
