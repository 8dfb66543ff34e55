/* PLACEHOLDER until the SIMD micro-kernel lands: same as generic. */
#include "kernels/gemm_ukernel.h"
#define MR 4
#define NR 8
static void ukr(fc_int kc, float alpha, const float *a, const float *b,
                float beta, float *c, fc_int ldc, fc_int m, fc_int n)
{
    float acc[MR][NR] = {{0}};
    for (fc_int p = 0; p < kc; p++)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] += a[p * MR + i] * b[p * NR + j];
    for (fc_int i = 0; i < m; i++)
        for (fc_int j = 0; j < n; j++) {
            float v = alpha * acc[i][j];
            c[i * ldc + j] = beta == 0.0f ? v : v + beta * c[i * ldc + j];
        }
}
const fc_gemm_kernel fc_gemm_kernel_avx2 = {"avx2", MR, NR, 128, 256, 4096, ukr};
