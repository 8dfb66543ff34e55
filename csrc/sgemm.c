/* PLACEHOLDER: naive loops until the packed BLIS-style GEMM lands. */
#include "fastconv.h"
int fc_sgemm(int trans_a, int trans_b, fc_int m, fc_int n, fc_int k, float alpha,
             const float *a, fc_int lda, const float *b, fc_int ldb, float beta,
             float *c, fc_int ldc, int nthreads)
{
    (void)nthreads;
    for (fc_int i = 0; i < m; i++)
        for (fc_int j = 0; j < n; j++) {
            float s = 0;
            for (fc_int p = 0; p < k; p++)
                s += (trans_a ? a[p * lda + i] : a[i * lda + p]) * (trans_b ? b[j * ldb + p] : b[p * ldb + j]);
            c[i * ldc + j] = beta == 0.0f ? alpha * s : alpha * s + beta * c[i * ldc + j];
        }
    return 0;
}
