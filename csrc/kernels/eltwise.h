#ifndef FC_KERNELS_ELTWISE_H
#define FC_KERNELS_ELTWISE_H

#include "fastconv.h"

/* The element-wise rows: activations.c's and bias_add.c's loops, the ISA
 * table's `eltwise` (kernels/ctx.h). One source, kernels/ref/eltwise_impl.h,
 * compiled by each ISA folder; the callers split the arrays over threads.
 *
 * Activations, forward y[i] = f(x[i]) and backward dx[i] = dy[i] * f'(.) for
 * i < n, indexed by FC_ACT_*. `a` is the saved forward tensor: x for leaky
 * ReLU and ELU, y for ReLU, sigmoid and tanh; `param` is leaky ReLU's slope
 * or ELU's alpha. The formulas are PyTorch's CPU kernels term for term, so
 * that NaN, infinity and signed-zero cases come out the same (sigmoid in an
 * overflow-free form, which also keeps the tiny values PyTorch flushes to 0
 * for x < -88):
 *   ReLU        y = x < 0 ? 0 : x                  dx = y <= 0 ? 0 : dy
 *   leaky ReLU  y = x > 0 ? x : x * slope          dx = x > 0 ? dy : dy * slope
 *   ELU         y = x > 0 ? x : expm1(x) * alpha   dx = x > 0 ? dy : dy * alpha * exp(x)
 *   sigmoid     y = 1 / (1 + exp(-x))              dx = dy * (1 - y) * y
 *   tanh        y = tanh(x)                        dx = dy * (1 - y * y)
 * A NaN x takes the second branch, as in PyTorch's vectorized kernels (ReLU
 * passes it through; the ELU gradient at NaN is NaN, where PyTorch's scalar
 * tail loop passes dy). Nothing overflows for large |x|: exp is only ever
 * taken of a value <= 0. Outputs may alias inputs.
 *
 * Every entry gives the same bits on every ISA: each element is computed by
 * the same operations in the same order (the ISA folders compile this family
 * with -ffp-contract=off, setup.py), whatever the vector width. */
typedef void fc_act_forward_fn(fc_int n, const float *x, float param, float *y);
typedef void fc_act_backward_fn(fc_int n, const float *dy, const float *a, float param, float *dx);

/* Bias rows, in place: y[i] += b for i < n (one channel's row of an NCHW
 * array), and y[i] += b[i] (one sample of an (N, C) array). */
typedef void fc_add_scalar_fn(fc_int n, float *y, float b);
typedef void fc_add_vector_fn(fc_int n, float *y, const float *b);

typedef struct {
    fc_act_forward_fn *forward[FC_ACT_COUNT];
    fc_act_backward_fn *backward[FC_ACT_COUNT];
    fc_add_scalar_fn *add_scalar;
    fc_add_vector_fn *add_vector;
} fc_eltwise_kernel;

#endif
