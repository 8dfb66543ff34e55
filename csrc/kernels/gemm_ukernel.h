/* The GEMM micro-kernel interface: one signature, one block-size table per ISA.
 *
 * Packed layouts (written by csrc/sgemm.c, read by the micro-kernels):
 *   A panel: an MR x kc sliver of op(A), stored column by column:
 *            a[p * MR + i] = op(A)[i, p]   for p < kc, i < MR (rows past the
 *            edge are zero-filled, so a kernel may always read MR rows).
 *   B panel: a kc x NR sliver of op(B), stored row by row:
 *            b[p * NR + j] = op(B)[p, j]   for p < kc, j < NR (zero-filled
 *            past the edge).
 *
 * A micro-kernel computes, for the m x n corner (m <= MR, n <= NR) of C:
 *   C[i, j] := beta * C[i, j] + alpha * sum_p a[p*MR + i] * b[p*NR + j]
 * C is row-major with row stride ldc. When beta == 0, C is never read.
 * Edge tiles (m < MR or n < NR) are handled inside the kernel and never
 * write outside the m x n corner.
 */
#ifndef FC_GEMM_UKERNEL_H
#define FC_GEMM_UKERNEL_H

#include "fastconv.h"

typedef void fc_gemm_ukr(fc_int kc, float alpha, const float *a, const float *b,
                         float beta, float *c, fc_int ldc, fc_int m, fc_int n);

typedef struct {
    const char *name;
    int mr, nr;           /* register tile */
    fc_int mc, kc, nc;    /* cache blocks: A block mc x kc (L2), B panel kc x nr (L1), B block kc x nc (L3) */
    fc_gemm_ukr *ukr;
} fc_gemm_kernel;

/* One per ISA, each defined in csrc/kernels/<isa>/ next to its micro-kernel. */
extern const fc_gemm_kernel fc_gemm_kernel_generic;
#ifdef FC_X86_KERNELS
extern const fc_gemm_kernel fc_gemm_kernel_avx2;
extern const fc_gemm_kernel fc_gemm_kernel_avx512;
#endif

/* The kernel of the ISA picked at run time (dispatch.c). */
const fc_gemm_kernel *fc_gemm_kernel_current(void);

#endif
