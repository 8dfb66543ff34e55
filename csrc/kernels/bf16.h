/* bf16 (bfloat16, the top half of a float32) for the mixed-precision GEMM:
 * the conversion, the packed layout, the micro-kernel contract and the
 * emulated dot-product step that kernels/ref/ runs in place of vdpbf16ps.
 *
 * The bf16 GEMM (sgemm.c, precision FC_BFLOAT16) computes
 *   C := beta * C + alpha * op(A) @ op(B)
 * with op(A) and op(B) rounded to bf16 (fc_bf16_round) and the products
 * summed in fp32 in one order fixed by this contract, so that every ISA,
 * thread count and blocking gives the same bits as the reference:
 *   - k is cut into blocks of FC_BF16_KC from 0 (the last one shorter);
 *     block b's sum S_b starts at 0 and takes the pairs (2q, 2q+1) of its k
 *     range in increasing q, each pair as vdpbf16ps does it: S += a[2q+1] *
 *     b[2q+1], then S += a[2q] * b[2q] (fc_bf16_step); an odd last block is
 *     padded with a zero pair member;
 *   - C := alpha * S_0 (+ beta * C when beta != 0), then C := alpha * S_b + C
 *     for each later block, each product and sum rounded on its own (the
 *     bf16 sources are compiled with -ffp-contract=off: no fused
 *     multiply-add there).
 * NaN comes out where it comes out of that sum; which NaN (its payload) is
 * not part of the contract.
 *
 * Packed layout (the pairs vdpbf16ps reads as one 32-bit lane): an R x kc
 * sliver (R = MR for A, NR for B) takes kc2 = kc rounded up to even rows of
 * pairs, dst[(p / 2) * 2 * R + 2 * r + p % 2] = bf16(X[r, p]) for r < R,
 * p < kc2, zero past the edge (r >= rows or p >= kc). Slivers follow each
 * other R * kc2 values apart. Packed values are never denormal (the
 * conversion flushes them), which the emulated step relies on.
 */
#ifndef FC_KERNELS_BF16_H
#define FC_KERNELS_BF16_H

#include <float.h>
#include <math.h>
#include <string.h>

#include "fastconv.h"

typedef uint16_t fc_bf16;

/* Every bf16 kernel's k block: one constant for all ISAs, since the block
 * boundaries decide the bits (a B sliver of 256 x 48 bf16 is 24 KB, in L1). */
#define FC_BF16_KC 256

/* x rounded to bf16 as vcvtneps2bf16 rounds it (checked on all 2^32 inputs
 * on Zen 4): to nearest, ties to even; zero and denormals to the zero of
 * their sign (the instruction's DAZ); NaN quieted (its top mantissa bit
 * set), so that no NaN truncates to Inf; a finite value past the largest
 * bf16 rounds to Inf. */
static inline fc_bf16 fc_bf16_round(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    /* Selects, not branches, so that the packers' loops vectorize. */
    const uint32_t nearest = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t special = (u & 0x7f800000u) == 0 ? (u >> 16) & 0x8000u : (u >> 16) | 0x40u;
    const int is_special = (u & 0x7f800000u) == 0 || (u & 0x7fffffffu) > 0x7f800000u;
    return (fc_bf16)(is_special ? special : nearest);
}

static inline float fc_bf16_value(fc_bf16 h)
{
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* One multiply-add of vdpbf16ps on non-denormal inputs: acc + a * b rounded
 * once to nearest even, a denormal result flushed to the zero of its sign
 * (the instruction's FTZ; with it, acc is never denormal either). The
 * product of two bf16 values is exact in double, and the double sum of it
 * and acc, rounded to float, is rounded correctly (double has more than
 * twice float's precision); checked bit for bit against vdpbf16ps on 1.4e8
 * random lanes, denormal and overflowing ranges included. */
static inline float fc_bf16_step(float acc, float a, float b)
{
    const float r = (float)((double)acc + (double)a * (double)b);
    return fabsf(r) < FLT_MIN ? copysignf(0.0f, r) : r;
}

/* Inputs: n floats x. Output: y[i] = fc_bf16_round(x[i]). */
typedef void fc_to_bf16_fn(const float *x, fc_int n, fc_bf16 *y);

/* Inputs: kc, alpha, beta, packed slivers a (MR x kc) and b (kc x NR, the
 * start of b 64-byte aligned) in the layout above; m <= MR, n <= NR.
 * Output: the m x n corner of c (row stride ldc): c := alpha * S + beta * c
 * with S the block sum of the contract, c read only when beta != 0. */
typedef void fc_gemm_bf16_ukr(fc_int kc, float alpha, const fc_bf16 *a, const fc_bf16 *b,
                              float beta, float *c, fc_int ldc, fc_int m, fc_int n);

/* pack: rows x kc elements X[r, p] = src[r * rs + p * cs], one of rs and cs
 * being 1, into slivers of R = MR (pack_mr) or NR (pack_nr) rows, as laid
 * out above. */
typedef void fc_pack_bf16_fn(fc_int rows, fc_int kc, const float *src, fc_int rs, fc_int cs,
                             fc_bf16 *dst);

/* The micro-kernel, then gemm_ukernel.h's fused epilogue (+ bias[i] on row
 * i, bias may be NULL; ReLU with relu) on the tile it stores: the bits of
 * sgemm.c's separate pass. */
typedef void fc_gemm_bf16_ukr_fused(fc_int kc, float alpha, const fc_bf16 *a, const fc_bf16 *b,
                                    float beta, float *c, fc_int ldc, fc_int m, fc_int n,
                                    const float *bias, int relu);

typedef struct {
    const char *name;
    int mr, nr;        /* register tile */
    fc_int mc, nc;     /* A block mc x FC_BF16_KC (L2), B block FC_BF16_KC x nc (L3) */
    fc_gemm_bf16_ukr *ukr;
    fc_gemm_bf16_ukr_fused *ukr_fused; /* may be NULL: sgemm.c then runs the epilogue itself */
    fc_pack_bf16_fn *pack_mr, *pack_nr;
    /* float32 rows dealt to NR-slivers (fc_deal_fn): the staging layout
     * of a B source (fc_b_source) before its conversion to bf16 */
    void (*deal_nr)(const float *src, fc_int nb, fc_int kc, float *dst);
} fc_gemm_bf16_kernel;

#endif
