/* The AVX-512 table: AVX2's, with this folder's GEMM, batch-norm tiles,
 * depthwise planes, Winograd transforms (16 tiles a vector), residual add,
 * im2col-family copies, range pass and peak loop, and on CPUs with
 * AVX512_BF16 (Zen 4, Cooper Lake, Sapphire Rapids and later) its bf16 GEMM,
 * conversion and direct forward; without it, the reference's emulation (the
 * same bits).
 * The direct convolution's tiles for K = 16 and 32 are this folder's (any
 * stride); K = 8's are AVX2's (its lanes are output positions, 8 a vector:
 * no AVX-512 version yet).
 *
 * The element-wise rows and the 2x2 max-pool rows are AVX2's: their
 * AVX-512 versions measured slower than AVX2's on a Zen 4 host
 * (bench/ab_builds.py, one build under FASTCONV_ISA=avx2 and avx512,
 * 2026-12-02, 1 thread: relu 128x32x32x32 1.52x AVX2's time, maxpool
 * 2x2/2 128x32x32x32 forward 1.51x; 2 threads 1.19x and 1.08x). Both are
 * memory-bound, where wider vectors add no bandwidth; a likely cost is
 * that every unaligned 64-byte access of a 16-byte-aligned array spans two
 * cache lines. tests/test_isa_tables.py checks which entries are this
 * folder's. */
#include "kernels/ctx.h"

extern const fc_gemm_kernel fc_gemm_kernel_avx512;
extern const fc_bn_kernel fc_bn_kernel_avx512;
fc_dw_plane_fn fc_dw_plane_avx512;
fc_dw_dweight_plane_fn fc_dw_dweight_plane_avx512;
fc_peak_fn fc_peak_avx512;
fc_wg_input_fn fc_wg_input_avx512;
fc_wg_output_fn fc_wg_output_avx512, fc_wg_output_pool_avx512;
fc_wg_grad_fn fc_wg_grad_avx512;
fc_add_relu_fn fc_add_relu_avx512;
fc_im2col_row_fn fc_im2col_row_avx512;
fc_col2im_channel_fn fc_col2im_channel_avx512;
fc_pack_b_fn fc_pack_columns_avx512;
fc_max_abs_bits_fn fc_max_abs_bits_avx512;
extern const fc_gemm_bf16_kernel fc_gemm_bf16_kernel_avx512;
fc_to_bf16_fn fc_to_bf16_avx512;
extern const fc_direct_kernel fc_direct_k16_avx512, fc_direct_wide_avx512;
fc_direct_bf16_forward_fn fc_direct_bf16_forward_avx512;

void fc_ctx_init_avx512(fc_ctx *ctx)
{
    fc_ctx_init_avx2(ctx);
    ctx->name = "avx512";
    ctx->gemm = &fc_gemm_kernel_avx512;
    ctx->bn = &fc_bn_kernel_avx512;
    ctx->dw_plane = fc_dw_plane_avx512;
    ctx->dw_dweight_plane = fc_dw_dweight_plane_avx512;
    ctx->wg_input = fc_wg_input_avx512;
    ctx->wg_output = fc_wg_output_avx512;
    ctx->wg_output_pool = fc_wg_output_pool_avx512;
    ctx->wg_grad = fc_wg_grad_avx512;
    ctx->add_relu = fc_add_relu_avx512;
    ctx->im2col_row = fc_im2col_row_avx512;
    ctx->col2im_channel = fc_col2im_channel_avx512;
    ctx->pack_columns = fc_pack_columns_avx512;
    ctx->max_abs_bits = fc_max_abs_bits_avx512;
    ctx->direct_k16 = fc_direct_k16_avx512;
    ctx->direct_wide = fc_direct_wide_avx512;
    ctx->peak_lanes = 16;
    ctx->peak = fc_peak_avx512;
    if (__builtin_cpu_supports("avx512bf16")) {
        ctx->gemm_bf16 = &fc_gemm_bf16_kernel_avx512;
        ctx->to_bf16 = fc_to_bf16_avx512;
        ctx->direct_bf16 = fc_direct_bf16_forward_avx512;
    }
}
