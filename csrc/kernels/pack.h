/* The GEMM packers with a constant sliver width (contract: fc_pack_fn and
 * fc_deal_fn in gemm_ukernel.h). Included by each kernels/<isa>/gemm_<isa>.c,
 * whose FC_GEMM_PACKERS(MR, NR) defines its pack_mr, pack_nr and deal_nr
 * with its register tile, compiled with its folder's flags.
 *
 * The source is walked one p (a memory row) at a time, scattering it over
 * all slivers, so it is read as a sequential stream: one sliver at a time
 * would jump a whole row stride every p, a cache and TLB miss each that the
 * prefetcher cannot see coming. Inlined with a constant R, the R-float copy
 * is a few vector moves; with R known only at run time GCC makes it a
 * memcpy call per sliver and p, slower than the multiply-adds it feeds. */
#ifndef FC_KERNELS_PACK_H
#define FC_KERNELS_PACK_H

#include <string.h>

#include "kernels/gemm_ukernel.h"

/* How many memory rows ahead pack_contiguous asks for the next rows. */
#define PACK_PREFETCH_ROWS 4

static inline __attribute__((always_inline)) void pack_contiguous(fc_int rows, fc_int kc, int R,
                                                                 const float *src, fc_int cs,
                                                                 float *restrict dst)
{
    const fc_int full = rows / R, h = rows % R;
    if (h > 0) memset(dst + full * R * kc, 0, sizeof(float) * R * kc); /* the edge sliver's padding */
    for (fc_int p = 0; p < kc; p++) {
        const float *s = src + p * cs;
        float *d = dst + p * R;
        /* Rows are far apart (often a multiple of 4 KiB), so the hardware
         * prefetcher does not see the next one coming: ask for it a few rows
         * ahead, which keeps several rows' cache misses in flight. */
        if (p + PACK_PREFETCH_ROWS < kc)
            for (fc_int off = 0; off < rows; off += 64 / (fc_int)sizeof(float))
                __builtin_prefetch(s + PACK_PREFETCH_ROWS * cs + off);
        for (fc_int q = 0; q < full; q++, s += R, d += R * kc)
#pragma GCC unroll 64
            for (int i = 0; i < R; i++) d[i] = s[i];
        for (fc_int i = 0; i < h; i++) d[i] = s[i];
    }
}

/* src[0, nb) dealt out to row p of nb / R slivers (plus an edge one, zero
 * past nb) of R x kc floats. */
static inline __attribute__((always_inline)) void deal_row(const float *restrict src, fc_int nb,
                                                           int R, fc_int kc, float *restrict dst)
{
    fc_int j = 0;
    for (; j + R <= nb; j += R, dst += R * kc)
#pragma GCC unroll 64
        for (int e = 0; e < R; e++) dst[e] = src[j + e];
    if (j < nb) {
        for (fc_int e = 0; e < nb - j; e++) dst[e] = src[j + e];
        for (fc_int e = nb - j; e < R; e++) dst[e] = 0.0f;
    }
}

/* The packer entries of a kernel with register tile MR x NR, as statics:
 * name them in its fc_gemm_kernel. */
#define FC_GEMM_PACKERS(MR_, NR_)                                                                  \
    static void pack_mr(fc_int rows, fc_int kc, const float *src, fc_int cs, float *dst)          \
    {                                                                                              \
        pack_contiguous(rows, kc, MR_, src, cs, dst);                                              \
    }                                                                                              \
    static void pack_nr(fc_int rows, fc_int kc, const float *src, fc_int cs, float *dst)          \
    {                                                                                              \
        pack_contiguous(rows, kc, NR_, src, cs, dst);                                              \
    }                                                                                              \
    FC_GEMM_DEAL(NR_)

/* deal_nr alone (also the bf16 kernels' staging of a B source, kernels/bf16.h). */
#define FC_GEMM_DEAL(NR_)                                                                          \
    __attribute__((optimize("no-tree-loop-distribute-patterns"))) static void deal_nr(            \
        const float *src, fc_int nb, fc_int kc, float *dst)                                        \
    {                                                                                              \
        deal_row(src, nb, NR_, kc, dst);                                                           \
    }

#endif
