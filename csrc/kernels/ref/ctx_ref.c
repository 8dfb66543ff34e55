/* The reference table: plain C for every entry, compiled with the baseline
 * flags. It is the generic ISA's table, and where every other ISA's table
 * starts (kernels/ctx.h). No float32 direct-convolution tiles: the direct
 * algorithm does not apply here in float32, and the GEMM path runs instead;
 * its bf16 forward is here, as every bf16 kernel, emulated. */
#include <string.h>

#include "kernels/ctx.h"

extern const fc_gemm_kernel fc_gemm_kernel_ref;
extern const fc_eltwise_kernel fc_eltwise_kernel_ref;
extern const fc_bn_kernel fc_bn_kernel_ref;
extern const fc_gemm_bf16_kernel fc_gemm_bf16_kernel_ref;
fc_to_bf16_fn fc_to_bf16_ref;
fc_im2col_row_fn fc_im2col_row_ref;
fc_col2im_channel_fn fc_col2im_channel_ref;
fc_pack_b_fn fc_pack_columns_ref;
fc_max_abs_bits_fn fc_max_abs_bits_ref;
fc_wg_input_fn fc_wg_input_ref;
fc_wg_output_fn fc_wg_output_ref, fc_wg_output_pool_ref;
fc_wg_grad_fn fc_wg_grad_ref;
fc_pool_row_forward_fn fc_pool2x2_forward_ref;
fc_pool_row_backward_fn fc_pool2x2_backward_ref;
fc_dw_plane_fn fc_dw_plane_ref;
fc_dw_dweight_plane_fn fc_dw_dweight_plane_ref;
fc_peak_fn fc_peak_ref;
fc_add_relu_fn fc_add_relu_ref;
fc_direct_bf16_forward_fn fc_direct_bf16_forward_ref;

void fc_ctx_init_ref(fc_ctx *ctx)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->name = "generic";
    ctx->gemm = &fc_gemm_kernel_ref;
    ctx->gemm_bf16 = &fc_gemm_bf16_kernel_ref;
    ctx->to_bf16 = fc_to_bf16_ref;
    ctx->im2col_row = fc_im2col_row_ref;
    ctx->col2im_channel = fc_col2im_channel_ref;
    ctx->pack_columns = fc_pack_columns_ref;
    ctx->max_abs_bits = fc_max_abs_bits_ref;
    ctx->wg_input = fc_wg_input_ref;
    ctx->wg_output = fc_wg_output_ref;
    ctx->wg_output_pool = fc_wg_output_pool_ref;
    ctx->wg_grad = fc_wg_grad_ref;
    ctx->pool2x2_forward = fc_pool2x2_forward_ref;
    ctx->pool2x2_backward = fc_pool2x2_backward_ref;
    ctx->eltwise = &fc_eltwise_kernel_ref;
    ctx->bn = &fc_bn_kernel_ref;
    ctx->add_relu = fc_add_relu_ref;
    ctx->dw_plane = fc_dw_plane_ref;
    ctx->dw_dweight_plane = fc_dw_dweight_plane_ref;
    ctx->direct_bf16 = fc_direct_bf16_forward_ref;
    ctx->peak_lanes = 4;
    ctx->peak = fc_peak_ref;
}
