/* The bf16 GEMM's reference: vdpbf16ps emulated in plain C (kernels/bf16.h's
 * fc_bf16_step), always built. It is what ISAs without bf16 dot products
 * run, and the oracle of the others: the same bits, by the contract of
 * kernels/bf16.h. Compiled with -ffp-contract=off (setup.py), so that the
 * compiler fuses no multiply-add the contract rounds twice. */
#include "kernels/bf16.h"
#include "kernels/pack_bf16.h"

#define MR 4
#define NR 16

static void ukr_emulated(fc_int kc, float alpha, const fc_bf16 *restrict a, const fc_bf16 *restrict b,
                         float beta, float *restrict c, fc_int ldc, fc_int m, fc_int n)
{
    float acc[MR][NR] = {{0}};
    for (fc_int q = 0; q < (kc + 1) / 2; q++, a += 2 * MR, b += 2 * NR)
        for (int i = 0; i < MR; i++) {
            const float a0 = fc_bf16_value(a[2 * i]), a1 = fc_bf16_value(a[2 * i + 1]);
            for (int j = 0; j < NR; j++) {
                const float s = fc_bf16_step(acc[i][j], a1, fc_bf16_value(b[2 * j + 1]));
                acc[i][j] = fc_bf16_step(s, a0, fc_bf16_value(b[2 * j]));
            }
        }
    for (fc_int i = 0; i < m; i++)
        for (fc_int j = 0; j < n; j++) {
            const float v = alpha * acc[i][j];
            c[i * ldc + j] = beta == 0.0f ? v : v + beta * c[i * ldc + j];
        }
}

void fc_to_bf16_ref(const float *x, fc_int n, fc_bf16 *y)
{
    for (fc_int i = 0; i < n; i++) y[i] = fc_bf16_round(x[i]);
}

/* The fp32 reference's cache blocks, for half the bytes per value. */
#define MC 128
#define NC 4096
_Static_assert(MC % MR == 0 && NC % NR == 0, "cache blocks hold whole register tiles");

FC_GEMM_BF16_PACKERS(MR, NR)

const fc_gemm_bf16_kernel fc_gemm_bf16_kernel_ref = {"emulated", MR, NR, MC, NC, ukr_emulated, NULL,
                                                    pack_mr, pack_nr, deal_nr};
