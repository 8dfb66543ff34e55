/* The bf16 GEMM's packers with a constant sliver width (layout and contract:
 * kernels/bf16.h), for each kernels/<isa>/gemm_bf16_<isa>.c, whose
 * FC_GEMM_BF16_PACKERS(MR, NR) defines its pack_mr, pack_nr and deal_nr,
 * compiled with its folder's flags. The rounding is plain integer code (the
 * same bits on every ISA), which the compiler vectorizes with R constant. */
#ifndef FC_KERNELS_PACK_BF16_H
#define FC_KERNELS_PACK_BF16_H

#include "kernels/bf16.h"
#include "kernels/pack.h"

static inline __attribute__((always_inline)) void pack_bf16(fc_int rows, fc_int kc, int R,
                                                            const float *src, fc_int rs, fc_int cs,
                                                            fc_bf16 *restrict dst)
{
    const fc_int kc2 = (kc + 1) & ~(fc_int)1;
    for (fc_int r0 = 0; r0 < rows; r0 += R, src += R * rs, dst += R * kc2) {
        const fc_int h = rows - r0 < R ? rows - r0 : R;
        if (h < R || kc < kc2) memset(dst, 0, sizeof(fc_bf16) * R * kc2);
        if (rs == 1) {
            /* Rows p of the source are contiguous along r: one read stream per p. */
            for (fc_int p = 0; p < kc; p++) {
                const float *s = src + p * cs;
                fc_bf16 *d = dst + (p / 2) * 2 * R + (p & 1);
                if (h == R) {
#pragma GCC unroll 64
                    for (int i = 0; i < R; i++) d[2 * i] = fc_bf16_round(s[i]);
                } else {
                    for (fc_int i = 0; i < h; i++) d[2 * i] = fc_bf16_round(s[i]);
                }
            }
        } else {
            /* Each row r is contiguous along p: its pairs are adjacent. */
            for (fc_int i = 0; i < h; i++) {
                const float *s = src + i * rs;
                for (fc_int p = 0; p < kc; p++) dst[(p / 2) * 2 * R + 2 * i + (p & 1)] = fc_bf16_round(s[p * cs]);
            }
        }
    }
}

#define FC_GEMM_BF16_PACKERS(MR_, NR_)                                                             \
    static void pack_mr(fc_int rows, fc_int kc, const float *src, fc_int rs, fc_int cs,          \
                        fc_bf16 *dst)                                                              \
    {                                                                                              \
        pack_bf16(rows, kc, MR_, src, rs, cs, dst);                                                \
    }                                                                                              \
    static void pack_nr(fc_int rows, fc_int kc, const float *src, fc_int rs, fc_int cs,          \
                        fc_bf16 *dst)                                                              \
    {                                                                                              \
        pack_bf16(rows, kc, NR_, src, rs, cs, dst);                                                \
    }                                                                                              \
    FC_GEMM_DEAL(NR_)

#endif
