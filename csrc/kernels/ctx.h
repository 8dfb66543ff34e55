/* The ISA context: one table of every micro-kernel the op code calls.
 *
 * The op files (csrc/core/, conv/, pool/, eltwise/, norm/) hold the loops,
 * the blocking and the threading; every piece of code that is compiled per
 * ISA, or that bakes in a fact of one ISA (a register tile, a vector
 * width), is an entry here. Each ISA fills one table, in
 * kernels/<isa>/ctx_<isa>.c, the way BLIS's bli_cntx_init_<arch> does:
 * start from the reference table (kernels/ref/, plain C, always built: it
 * is what the generic ISA runs, and the oracle the others are tested
 * against), then override the entries it has its own code for. The files
 * of a folder are compiled with that folder's flags (setup.py, ISA_FLAGS).
 *
 * A NULL entry means "not on this ISA": the op code then takes the path it
 * would take without it (documented at each entry). The op code never asks
 * which ISA it runs on; it asks the table. Entries are called per tile,
 * row or block, never per element, so the indirection costs nothing
 * measurable.
 *
 * Contracts: each family's layouts are documented in its header
 * (gemm_ukernel.h, im2col.h, winograd.h, pool.h, direct.h, depthwise.h,
 * eltwise.h, batchnorm.h, bf16.h); every entry is stateless and called from
 * several threads at once.
 */
#ifndef FC_KERNELS_CTX_H
#define FC_KERNELS_CTX_H

#include "fastconv.h"
#include "kernels/batchnorm.h"
#include "kernels/bf16.h"
#include "kernels/depthwise.h"
#include "kernels/direct.h"
#include "kernels/eltwise.h"
#include "kernels/gemm_ukernel.h"
#include "kernels/im2col.h"
#include "kernels/pool.h"
#include "kernels/winograd.h"

/* The peak measurement's loop (peak.c): `iters` steps of FC_PEAK_CHAINS
 * independent multiply-add chains on vectors of peak_lanes floats (2 *
 * FC_PEAK_CHAINS * peak_lanes FLOP a step); returns their (meaningless)
 * sum. */
#define FC_PEAK_CHAINS 12
typedef float fc_peak_fn(fc_int iters, float seed);

/* The range pass (fc_max_abs): the largest of v[0, n)'s bit patterns with
 * the sign cleared, as int32, so that NaN and Inf order above every finite
 * value. */
typedef int32_t fc_max_abs_bits_fn(const float *v, fc_int n);

/* The residual add (add_relu.c): y[i] = a[i] + b[i] for i in [0, n), then
 * max(y[i], 0) when `relu` (NaN and -0 kept, as the ReLU kernel). */
typedef void fc_add_relu_fn(fc_int n, const float *a, const float *b, int relu, float *y);

typedef struct {
    const char *name;

    /* sgemm.c: the micro-kernels, their block sizes and the packers tied to
     * MR and NR (gemm_ukernel.h). ukr_fused may be NULL. */
    const fc_gemm_kernel *gemm;

    /* sgemm.c in bf16 (kernels/bf16.h): the micro-kernel and its packers,
     * and the rounding of a float row (the `to_bfloat16` kernel). The
     * reference's emulate vdpbf16ps on ISAs without it; every table's give
     * the same bits. */
    const fc_gemm_bf16_kernel *gemm_bf16;
    fc_to_bf16_fn *to_bf16;

    /* conv/im2col.c: im2col rows, col2im channels, and implicit im2col's B
     * packer (im2col.h). */
    fc_im2col_row_fn *im2col_row;
    fc_col2im_channel_fn *col2im_channel;
    fc_pack_b_fn *pack_columns;
    fc_max_abs_bits_fn *max_abs_bits;

    /* conv/winograd.c: the F(2x2, 3x3) transforms (winograd.h). The
     * output transform adds the bias and applies ReLU; its pool variant
     * stores the 2x2 max-pool of each tile and its argmax instead of y. */
    fc_wg_input_fn *wg_input;
    fc_wg_output_fn *wg_output;
    fc_wg_output_fn *wg_output_pool;
    fc_wg_grad_fn *wg_grad;

    /* maxpool2d.c: the 2x2 stride-2 row kernels (pool.h). */
    fc_pool_row_forward_fn *pool2x2_forward;
    fc_pool_row_backward_fn *pool2x2_backward;

    /* conv/direct.c: the direct convolution's tiles for K = 8 and 16 output
     * channels, and `wide` for K = 32, 48, ... up to FC_DIRECT_MAX_K, in
     * 16-channel parts (direct.h). A NULL forward: the direct algorithm
     * does not apply to that K on this ISA. */
    fc_direct_kernel direct_k8, direct_k16, direct_wide;
    /* ... and its bf16 forward for K = 16, 32, ..., FC_DIRECT_MAX_K
     * (direct.h): the reference's emulates vdpbf16ps (the same bits), so
     * that every table has one. */
    fc_direct_bf16_forward_fn *direct_bf16;

    /* activations.c, bias_add.c: the element-wise rows (eltwise.h). */
    const fc_eltwise_kernel *eltwise;

    /* batchnorm.c: the per-channel tiles of each pass (batchnorm.h). */
    const fc_bn_kernel *bn;
    /* add_relu.c: the residual add's loop. */
    fc_add_relu_fn *add_relu;

    /* conv/depthwise.c: one plane of one channel, and its dW terms
     * (depthwise.h). */
    fc_dw_plane_fn *dw_plane;
    fc_dw_dweight_plane_fn *dw_dweight_plane;

    /* peak.c */
    int peak_lanes;
    fc_peak_fn *peak;
} fc_ctx;

/* The entry `name` of the ISA whose folder is being compiled: for sources
 * that several folders compile (kernels/ref/<family>_impl.h), each
 * defining FC_KERNEL_ISA first. FC_KERNEL(im2col_row) with FC_KERNEL_ISA
 * avx2 is fc_im2col_row_avx2. */
#define FC_KERNEL(name) FC_KERNEL_CAT(name, FC_KERNEL_ISA)
#define FC_KERNEL_CAT(name, isa) FC_KERNEL_CAT2(name, isa)
#define FC_KERNEL_CAT2(name, isa) fc_##name##_##isa

/* The table of the ISA picked at run time (core/dispatch.c), and of any
 * ISA (kernels/isa.c; one this build or this CPU does not have gives the
 * reference table). */
const fc_ctx *fc_ctx_current(void);
const fc_ctx *fc_ctx_of(int isa);

/* Each fills *ctx completely: the reference entries, then its own. */
void fc_ctx_init_ref(fc_ctx *ctx);
void fc_ctx_init_avx2(fc_ctx *ctx);
void fc_ctx_init_avx512(fc_ctx *ctx);

#endif
