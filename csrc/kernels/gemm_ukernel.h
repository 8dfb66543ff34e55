/* The GEMM micro-kernel interface: one signature, one block-size table per ISA.
 *
 * Packed layouts (written by csrc/core/sgemm.c, read by the micro-kernels):
 *   A panel: an MR x kc sliver of op(A), stored column by column:
 *            a[p * MR + i] = op(A)[i, p]   for p < kc, i < MR (rows past the
 *            edge are zero-filled, so a kernel may always read MR rows).
 *   B panel: a kc x NR sliver of op(B), stored row by row:
 *            b[p * NR + j] = op(B)[p, j]   for p < kc, j < NR (zero-filled
 *            past the edge).
 * Packing buffers are 64-byte aligned and a B panel starts a multiple of
 * kc * NR floats into one, so each row of b is aligned to the largest power
 * of two dividing NR * sizeof(float), at most 64: a kernel whose NR is a
 * multiple of its vector width may load b with aligned loads. a has no
 * alignment beyond a float's.
 *
 * A micro-kernel computes, for the m x n corner (1 <= m <= MR, 1 <= n <= NR)
 * of C, with kc >= 1:
 *   C[i, j] := beta * C[i, j] + alpha * sum_p a[p*MR + i] * b[p*NR + j]
 * summing over p in increasing order (sgemm.c relies on a fixed order for
 * determinism). C is row-major with row stride ldc and any alignment. When
 * beta == 0, C is never read (NaN or garbage there does not propagate).
 * Edge tiles (m < MR or n < NR) are handled inside the kernel, which never
 * reads or writes C outside the m x n corner. A kernel keeps no state: it is
 * called from several threads at once.
 *
 * Each ISA's kernel is one fc_gemm_kernel in kernels/<isa>/gemm_<isa>.c,
 * registered in that ISA's context (kernels/ctx.h).
 *
 * Block sizes: sgemm.c packs an MC x KC block of op(A) for L2, a KC x NC
 * block of op(B) for L3, and walks it in kc x NR slivers that should stay in
 * L1 while every MR x kc sliver of A streams past. MC must be a multiple of
 * MR and NC of NR.
 */
#ifndef FC_GEMM_UKERNEL_H
#define FC_GEMM_UKERNEL_H

#include "fastconv.h"

typedef void fc_gemm_ukr(fc_int kc, float alpha, const float *a, const float *b,
                         float beta, float *c, fc_int ldc, fc_int m, fc_int n);

/* The micro-kernel, then, on the tile it stores: + bias[i] on row i (bias
 * may be NULL), then max(C, 0) as relu_forward when relu (x < 0 ? 0 : x,
 * keeping NaN and -0): the same bits as sgemm.c's separate epilogue, without
 * reading the tile back. */
typedef void fc_gemm_ukr_fused(fc_int kc, float alpha, const float *a, const float *b,
                               float beta, float *c, fc_int ldc, fc_int m, fc_int n,
                               const float *bias, int relu);

/* The packers whose sliver width is the register tile's, compiled with it
 * as a constant (kernels/pack.h), so that each sliver row is a few vector
 * moves; with the width known only at run time GCC makes it a memcpy call
 * per row. pack: rows x kc elements src[r + p * cs] into slivers of R = MR
 * (pack_mr) or NR (pack_nr) rows, dst[(r / R) * R * kc + p * R + r % R],
 * zero past `rows` (the contiguous case of sgemm.c's pack_slivers). deal:
 * one row p of B, src[0, nb), into the NR-slivers at dst[(j / NR) * NR *
 * kc + j % NR], zero past nb (implicit im2col's packer, conv/im2col.c). */
typedef void fc_pack_fn(fc_int rows, fc_int kc, const float *src, fc_int cs, float *dst);
typedef void fc_deal_fn(const float *src, fc_int nb, fc_int kc, float *dst);

typedef struct {
    const char *name;
    int mr, nr;           /* register tile */
    fc_int mc, kc, nc;    /* cache blocks: A block mc x kc (L2), B sliver kc x nr (L1), B block kc x nc (L3) */
    fc_gemm_ukr *ukr;
    fc_gemm_ukr_fused *ukr_fused; /* may be NULL: sgemm.c then runs the epilogue itself */
    fc_pack_fn *pack_mr, *pack_nr;
    fc_deal_fn *deal_nr;
} fc_gemm_kernel;

/* Put before a loop over the register tile (its rows, the vectors of a row)
 * in a micro-kernel. Fully unrolled early, such loops index the accumulator
 * array with constants, so the compiler keeps it in registers; GCC 12
 * otherwise keeps it in memory and stores it on every k step, at a third of
 * the speed. */
#define FC_UNROLL_TILE _Pragma("GCC unroll 32")

#endif
