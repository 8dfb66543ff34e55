/* The AVX2 + FMA table: the reference table with this folder's entries. */
#include "kernels/ctx.h"

extern const fc_gemm_kernel fc_gemm_kernel_avx2;
extern const fc_eltwise_kernel fc_eltwise_kernel_avx2;
extern const fc_bn_kernel fc_bn_kernel_avx2;
extern const fc_direct_kernel fc_direct_k8_avx2, fc_direct_k16_avx2, fc_direct_wide_avx2;
fc_im2col_row_fn fc_im2col_row_avx2;
fc_col2im_channel_fn fc_col2im_channel_avx2;
fc_pack_b_fn fc_pack_columns_avx2;
fc_max_abs_bits_fn fc_max_abs_bits_avx2;
fc_wg_input_fn fc_wg_input_avx2;
fc_wg_output_fn fc_wg_output_avx2, fc_wg_output_pool_avx2;
fc_wg_grad_fn fc_wg_grad_avx2;
fc_pool_row_forward_fn fc_pool2x2_forward_avx2;
fc_pool_row_backward_fn fc_pool2x2_backward_avx2;
fc_dw_plane_fn fc_dw_plane_avx2;
fc_dw_dweight_plane_fn fc_dw_dweight_plane_avx2;
fc_peak_fn fc_peak_avx2;
fc_add_relu_fn fc_add_relu_avx2;

void fc_ctx_init_avx2(fc_ctx *ctx)
{
    fc_ctx_init_ref(ctx);
    ctx->name = "avx2";
    ctx->gemm = &fc_gemm_kernel_avx2;
    ctx->im2col_row = fc_im2col_row_avx2;
    ctx->col2im_channel = fc_col2im_channel_avx2;
    ctx->pack_columns = fc_pack_columns_avx2;
    ctx->max_abs_bits = fc_max_abs_bits_avx2;
    ctx->wg_input = fc_wg_input_avx2;
    ctx->wg_output = fc_wg_output_avx2;
    ctx->wg_output_pool = fc_wg_output_pool_avx2;
    ctx->wg_grad = fc_wg_grad_avx2;
    ctx->pool2x2_forward = fc_pool2x2_forward_avx2;
    ctx->pool2x2_backward = fc_pool2x2_backward_avx2;
    ctx->direct_k8 = fc_direct_k8_avx2;
    ctx->direct_k16 = fc_direct_k16_avx2;
    ctx->direct_wide = fc_direct_wide_avx2;
    ctx->eltwise = &fc_eltwise_kernel_avx2;
    ctx->bn = &fc_bn_kernel_avx2;
    ctx->add_relu = fc_add_relu_avx2;
    ctx->dw_plane = fc_dw_plane_avx2;
    ctx->dw_dweight_plane = fc_dw_dweight_plane_avx2;
    ctx->peak_lanes = 8;
    ctx->peak = fc_peak_avx2;
}
