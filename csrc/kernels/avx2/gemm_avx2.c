/* AVX2 + FMA micro-kernel (compiled with -mavx2 -mfma; picked at run time).
 *
 * MR x NR = 4 x 24: the 12 accumulators are 4 rows x 3 ymm vectors, leaving 4
 * of the 16 ymm registers for the 3 B vectors and the A broadcast. Each k step
 * is 3 loads + 4 broadcasts for 12 FMAs (6x16 needs 2 + 6 = 8). MR = 4 also
 * divides the small power-of-two channel counts (M = 8, 16, 32, 64) that
 * im2col convolutions produce, so no rows are wasted on padding there, where
 * 6 x 16 computes 12 rows for M = 8. Measured against 6 x 16 (MC = 120) on
 * the conv forwards of workloads.md, 1 thread, Zen 3: 4 x 24 was 4-10%
 * faster on every layer (e.g. 128x32x16x16 -> 64, 3x3: 15.2 vs 16.1 ms;
 * 128x3x32x32 -> 32: 4.5 vs 5.1 ms).
 *
 * Block sizes (measured on Zen 3: 32 KB L1, 512 KB L2, 32 MB L3): a kc x NR
 * sliver of B, reused from L1 by every sliver of A, is 256 x 24 floats =
 * 24 KB; an A block of MC x KC = 128 x 256 floats (128 KB) stays in L2; a B
 * block of KC x NC = 256 x 4080 floats (4 MB) in L3. MC from 64 to 256 and
 * KC from 192 to 384 were all within 5 % of each other on 1024^3 and the
 * im2col shapes; MC = 128, KC = 256 was never worse than 3 %.
 */
#include <immintrin.h>

#include "kernels/gemm_ukernel.h"
#include "kernels/pack.h"

#define MR 4
#define NR 24
#define VL 8          /* floats per ymm */
#define NV (NR / VL)  /* ymm vectors per row of the tile */

/* Lanes l of vector v with v * VL + l < n: -1 (selected) or 0. */
static inline __m256i column_mask(fc_int n, int v)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - (fc_int)v * VL)), lane);
}

/* The micro-kernel for tiles whose columns fit in the first nv vectors of a
 * row. Inlined with a constant nv (see ukr_avx2), so an edge tile only a few
 * columns wide (n = 25 is one full sliver and a sliver of one column) skips
 * the vectors that would only hold padding. The tile loops keep the constant
 * bounds MR and NV and test v < nv inside, and the accumulators never leave
 * this function: with either a variable bound or a helper taking the array
 * by pointer, clang keeps the accumulators in memory.
 * Inputs: kc, alpha, beta, packed panels a (MR x kc) and b (kc x NR), b
 * 32-byte aligned; m <= MR, n <= nv * VL. Output: the m x n corner of c (row
 * stride ldc), which is read only when beta != 0. */
static inline __attribute__((always_inline)) void tile(int nv, fc_int kc, float alpha, const float *restrict a,
                                                       const float *restrict b, float beta, float *restrict c,
                                                       fc_int ldc, fc_int m, fc_int n, const float *bias,
                                                       int relu)
{
    __m256 acc[MR][NV];
    FC_UNROLL_TILE
    for (int i = 0; i < MR; i++)
        FC_UNROLL_TILE
        for (int v = 0; v < NV; v++) acc[i][v] = _mm256_setzero_ps();

    /* Start bringing C in while the k loop runs. */
    FC_UNROLL_TILE
    for (int i = 0; i < MR; i++) {
        if (i >= m) break;
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + nv * VL - 1), _MM_HINT_T0);
    }

#pragma GCC unroll 4
    for (fc_int p = 0; p < kc; p++) {
        __m256 bv[NV];
        FC_UNROLL_TILE
        for (int v = 0; v < NV; v++) bv[v] = v < nv ? _mm256_load_ps(b + v * VL) : _mm256_setzero_ps();
        FC_UNROLL_TILE
        for (int i = 0; i < MR; i++) {
            __m256 ai = _mm256_broadcast_ss(a + i);
            FC_UNROLL_TILE
            for (int v = 0; v < NV; v++)
                if (v < nv) acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);
        }
        a += MR;
        b += NR;
    }

    /* The same arithmetic for full and edge tiles; edges use masked loads and
     * stores so nothing outside the m x n corner is touched. The loops have
     * constant bounds (i < m only breaks out), so acc stays in registers. */
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta), zero = _mm256_setzero_ps();
    const int full = n == nv * VL;
    FC_UNROLL_TILE
    for (int i = 0; i < MR; i++) {
        if (i >= m) break;
        float *ci = c + i * ldc;
        FC_UNROLL_TILE
        for (int v = 0; v < NV; v++) {
            if (v >= nv) break;
            __m256 r = _mm256_mul_ps(va, acc[i][v]);
            const __m256i mask = column_mask(n, v);
            if (beta != 0.0f)
                r = _mm256_fmadd_ps(vb, full ? _mm256_loadu_ps(ci + v * VL)
                                             : _mm256_maskload_ps(ci + v * VL, mask), r);
            if (bias) r = _mm256_add_ps(r, _mm256_broadcast_ss(bias + i));
            if (relu) r = _mm256_andnot_ps(_mm256_cmp_ps(r, zero, _CMP_LT_OQ), r);
            if (full)
                _mm256_storeu_ps(ci + v * VL, r);
            else
                _mm256_maskstore_ps(ci + v * VL, mask, r);
        }
    }
}

/* Both entry points, the plain one with bias and relu off as constants. */
static inline __attribute__((always_inline)) void tiles(fc_int kc, float alpha, const float *restrict a,
                                                        const float *restrict b, float beta,
                                                        float *restrict c, fc_int ldc, fc_int m, fc_int n,
                                                        const float *bias, int relu)
{
    switch ((n + VL - 1) / VL) {
    case 1: tile(1, kc, alpha, a, b, beta, c, ldc, m, n, bias, relu); break;
    case 2: tile(2, kc, alpha, a, b, beta, c, ldc, m, n, bias, relu); break;
    default: tile(NV, kc, alpha, a, b, beta, c, ldc, m, n, bias, relu); break;
    }
}

static void ukr_avx2(fc_int kc, float alpha, const float *restrict a, const float *restrict b,
                     float beta, float *restrict c, fc_int ldc, fc_int m, fc_int n)
{
    tiles(kc, alpha, a, b, beta, c, ldc, m, n, NULL, 0);
}

/* The GEMM epilogue in the store (the conv forward's bias and ReLU): for
 * k = 27, as the first layer of cifar_small, reading each tile back for
 * a separate pass took 40% as long as the multiply-adds. */
static void ukr_avx2_fused(fc_int kc, float alpha, const float *restrict a, const float *restrict b,
                           float beta, float *restrict c, fc_int ldc, fc_int m, fc_int n,
                           const float *bias, int relu)
{
    tiles(kc, alpha, a, b, beta, c, ldc, m, n, bias, relu);
}

#define MC 128
#define KC 256
#define NC 4080
_Static_assert(MC % MR == 0 && NC % NR == 0, "cache blocks hold whole register tiles");

FC_GEMM_PACKERS(MR, NR)

const fc_gemm_kernel fc_gemm_kernel_avx2 = {"avx2", MR, NR, MC, KC, NC, ukr_avx2, ukr_avx2_fused,
                                           pack_mr, pack_nr, deal_nr};
