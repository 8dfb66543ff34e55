/* The bf16 GEMM's packers with a constant sliver width (layout and contract:
 * kernels/bf16.h), for each kernels/<isa>/gemm_bf16_<isa>.c, whose
 * FC_GEMM_BF16_PACKERS(MR, NR) defines its pack_mr, pack_nr and deal_nr,
 * compiled with its folder's flags. The rounding is plain integer code (the
 * same bits on every ISA), which the compiler vectorizes with R constant. */
#ifndef FC_KERNELS_PACK_BF16_H
#define FC_KERNELS_PACK_BF16_H

#include "kernels/bf16.h"
#include "kernels/pack.h"

/* The pair (lo, hi) rounded, as the 32-bit lane vdpbf16ps reads (lo in the low half). */
static inline uint32_t bf16_pair(float lo, float hi)
{
    return (uint32_t)fc_bf16_round(lo) | (uint32_t)fc_bf16_round(hi) << 16;
}

/* Each pair is built whole and stored as one 32-bit lane: stores of single
 * bf16 two apart do not vectorize, nor do loops that test for the padding
 * (it is read from `zeros` instead). */
static inline __attribute__((always_inline)) void pack_bf16(fc_int rows, fc_int kc, int R,
                                                            const float *src, fc_int rs, fc_int cs,
                                                            fc_bf16 *restrict dst)
{
    static const float zeros[64];
    const fc_int pairs = (kc + 1) / 2;
    for (fc_int r0 = 0; r0 < rows; r0 += R, src += R * rs, dst += 2 * R * pairs) {
        const fc_int h = rows - r0 < R ? rows - r0 : R;
        if (h < R) memset(dst, 0, sizeof(fc_bf16) * 2 * R * pairs);
        if (rs == 1) {
            /* Rows p of the source are contiguous along r: two read streams per pair. */
            uint32_t lane[64];
            for (fc_int q = 0; q < pairs; q++) {
                const float *s0 = src + 2 * q * cs, *s1 = 2 * q + 1 < kc ? s0 + cs : zeros;
                for (fc_int i = 0; i < h; i++) lane[i] = bf16_pair(s0[i], s1[i]);
                memcpy(dst + 2 * R * q, lane, sizeof(uint32_t) * h);
            }
        } else {
            /* Each row r is contiguous along p (cs == 1): its pairs are adjacent. */
            for (fc_int i = 0; i < h; i++) {
                const float *s = src + i * rs;
                for (fc_int q = 0; q < kc / 2; q++) {
                    const uint32_t v = bf16_pair(s[2 * q], s[2 * q + 1]);
                    memcpy(dst + 2 * (R * q + i), &v, sizeof v);
                }
                if (kc % 2) {
                    const uint32_t v = bf16_pair(s[kc - 1], 0.0f);
                    memcpy(dst + 2 * (R * (pairs - 1) + i), &v, sizeof v);
                }
            }
        }
    }
}

#define FC_GEMM_BF16_PACKERS(MR_, NR_)                                                             \
    _Static_assert((MR_) <= 64 && (NR_) <= 64, "pack_bf16 builds a sliver row in 64 lanes");      \
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
