/* Portable C micro-kernel, always built: the reference the SIMD kernels are
 * tested against, and the path for CPUs without AVX2 (and non-x86).
 *
 * Plain C for the auto-vectorizer. The row loop is unrolled (FC_UNROLL_TILE)
 * and the NR-wide column loop is left for the vectorizer, which makes each
 * row a few vector multiply-adds. 4 x 16 was the fastest tile measured with
 * x86-64's baseline SSE2 (29 GFLOP/s on a Zen 3 core, against 23 for 6 x 8
 * and 5 without the unrolling, which keeps the tile in memory). */
#include "kernels/gemm_ukernel.h"
#include "kernels/pack.h"

#define MR 4
#define NR 16

/* Inputs: kc, alpha, beta, packed panels a (MR x kc) and b (kc x NR); m <= MR,
 * n <= NR. Output: the m x n corner of c (row stride ldc), read only when
 * beta != 0. */
static void ukr_generic(fc_int kc, float alpha, const float *restrict a, const float *restrict b,
                        float beta, float *restrict c, fc_int ldc, fc_int m, fc_int n)
{
    float acc[MR][NR] = {{0}};
    for (fc_int p = 0; p < kc; p++, a += MR, b += NR)
        FC_UNROLL_TILE
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] += a[i] * b[j];
    for (fc_int i = 0; i < m; i++)
        for (fc_int j = 0; j < n; j++) {
            float v = alpha * acc[i][j];
            c[i * ldc + j] = beta == 0.0f ? v : v + beta * c[i * ldc + j];
        }
}

/* Cache blocks as in the AVX2 table, for the same caches: a kc x NR sliver of
 * B is 256 x 16 floats = 16 KB (L1), an A block 128 KB (L2), a B block 4 MB. */
#define MC 128
#define KC 256
#define NC 4096
_Static_assert(MC % MR == 0 && NC % NR == 0, "cache blocks hold whole register tiles");

FC_GEMM_PACKERS(MR, NR)

const fc_gemm_kernel fc_gemm_kernel_ref = {"generic", MR, NR, MC, KC, NC, ukr_generic, NULL,
                                          pack_mr, pack_nr, deal_nr};
