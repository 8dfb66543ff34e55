/* The convolution algorithms' entry points, for conv/plan.c, which decides
 * which runs (the public entry points and their contracts: fastconv.h).
 * Each has fc_conv2d_forward's or fc_conv2d_backward's contract for the
 * shapes and inputs plan.c gives it. */
#ifndef FC_CONV_CONV_H
#define FC_CONV_CONV_H

#include <stdint.h>

#include "fastconv.h"
#include "kernels/ctx.h" /* fc_ctx, for fc_direct_tiles */

/* ---- im2col.c: im2col + GEMM, in either precision (fc_gemm's) ---------- */
enum {
    FC_IM2COL_EXPLICIT = 0,  /* the column matrix built, then the GEMM */
    FC_IM2COL_IMPLICIT = 1,  /* the GEMM packs its B straight from x */
    FC_IM2COL_POINTWISE = 2, /* 1x1, unit stride, no padding: x is the column matrix */
};
int fc_im2col_forward(const fc_conv_shape *s, int variant, int precision, const float *x,
                      const float *weight, const float *bias, int relu, float *y, int nthreads);
/* dweight and dbias (each may be NULL: not computed) by im2col, and dx (may
 * be NULL) by W^T dy and col2im, in one pass over the images. */
int fc_im2col_backward(const fc_conv_shape *s, int precision, const float *x, const float *weight,
                       const float *dy, float *dx, float *dweight, float *dbias, int nthreads);
/* dbias[k] = the sum of dy[:, k] (images in order), the same bits at any
 * thread count. */
int fc_conv_bias_gradient(const fc_conv_shape *s, const float *dy, float *dbias, int nthreads);

/* ---- winograd.c: F(2x2, 3x3), 3x3 kernels at unit stride ---------------
 * For inputs whose largest |values| (fc_max_abs: NaN or Inf when one is
 * not finite) *_in_range accepts: then no value inside the transforms can
 * overflow, and the results are finite as the direct sum's. */
int fc_winograd_forward_in_range(const fc_conv_shape *s, float max_x, float max_w);
int fc_winograd_dweight_in_range(const fc_conv_shape *s, float max_x, float max_dy, int nthreads);
/* precision: FC_FLOAT32, or FC_BFLOAT16 (the 16 GEMMs in bf16; winograd.c). */
int fc_conv2d_winograd(const fc_conv_shape *s, int precision, const float *x, const float *weight,
                       const float *bias, int relu, float *y, int nthreads);
/* The 2x2 stride-2 max-pool of fc_conv2d_winograd's y, and its argmax, as
 * fc_maxpool2d_forward gives them: each tile of the transform is one
 * window, so y is never stored. */
int fc_conv2d_winograd_maxpool(const fc_conv_shape *s, int precision, const float *x,
                               const float *weight,
                               const float *bias, int relu, float *pooled, uint8_t *argmax,
                               int nthreads);
int fc_conv2d_winograd_dweight(const fc_conv_shape *s, int precision, const float *x,
                               const float *dy, float *dweight, int nthreads);

/* ---- direct.c: K = 8, 16 or a multiple of 16 up to FC_DIRECT_MAX_K output
 * channels, where the ISA table has the tiles (kernels/direct.h: unit
 * stride, or any where `strided`); in bf16, K = 16, 32, ... at any stride,
 * on every table ----- */
/* The table's float32 tiles for K output channels, or NULL. */
const fc_direct_kernel *fc_direct_tiles(const fc_ctx *ctx, fc_int k);
int fc_conv2d_direct_forward(const fc_conv_shape *s, int precision, const float *x, const float *weight,
                             const float *bias, int relu, float *y, int nthreads);
/* dweight and dbias (may be NULL), overwritten; for x that is finite
 * where the K = 8 tiles need it (plan.c checks). */
int fc_conv2d_direct_backward_weight(const fc_conv_shape *s, const float *x, const float *dy,
                                     float *dweight, float *dbias, int nthreads);

/* ---- plan.c, for the algorithms that run convolutions of their own ------
 * A forward convolution that is part of a dx (polyphase's phases), planned
 * once for the whole batch (the shape s and all of dy: the rules count the
 * batch's tiles, the guards read its values), then run on blocks of it
 * (s with fewer images, dy and out from the block's first), so that every
 * block takes the same algorithm, whose outputs per image do not depend on
 * the block. Planned under the mode in force, but a forced algorithm counts
 * as auto (it was forced for the whole dx, where it does not apply: the
 * phases are auto's choice, as forcing promises elsewhere); failures are
 * noted for dx. */
int fc_conv2d_dx_part_plan(const fc_conv_shape *s, int precision, const float *dy, const float *weight,
                           int nthreads);
int fc_conv2d_dx_part_run(int algorithm, const fc_conv_shape *s, int precision, const float *dy,
                          const float *weight, float *out, int nthreads);

/* ---- polyphase.c: a strided dx as sh x sw unit-stride forwards ----------
 * For stride sh <= FC_POLYPHASE_MAX_STRIDE (and sw), a kernel of at most
 * FC_POLYPHASE_MAX_K rows (and columns), dilation 1, groups 1. Each phase
 * is planned once (fc_conv2d_dx_part_plan) and run a block of images at a
 * time; dx's bits do not depend on the thread count or the blocks. */
#define FC_POLYPHASE_MAX_STRIDE 8
#define FC_POLYPHASE_MAX_K 32
int fc_conv2d_polyphase_dx(const fc_conv_shape *s, int precision, const float *weight,
                           const float *dy, float *dx, int nthreads);

/* ---- depthwise.c: groups == C, any kernel, stride, padding, dilation ----
 * Each output plane and each channel's dW by one thread: the same bits at
 * any thread count. */
int fc_conv2d_depthwise_forward(const fc_conv_shape *s, const float *x, const float *weight,
                                const float *bias, int relu, float *y, int nthreads);
int fc_conv2d_depthwise_dx(const fc_conv_shape *s, const float *weight, const float *dy, float *dx,
                           int nthreads);
/* dweight and dbias (may be NULL), overwritten. */
int fc_conv2d_depthwise_dweight(const fc_conv_shape *s, const float *x, const float *dy,
                                float *dweight, float *dbias, int nthreads);

#endif
