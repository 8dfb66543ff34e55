/* The element-wise rows (contract: kernels/eltwise.h) as one source that
 * each ISA folder compiles with its flags: kernels/ref/eltwise_ref.c and
 * kernels/<isa>/eltwise_<isa>.c. Include it once, with FC_KERNEL_ISA defined;
 * it defines the table fc_eltwise_kernel_<isa>.
 *
 * Each row is one loop with a body that the compiler vectorizes at the
 * folder's width: selects are bit masks (blend) and exp and tanh are branch-
 * free polynomials (exp_nonpos, tanh_poly) instead of libm calls, which glibc
 * only vectorizes under -ffast-math and which cost 5-30 ns per element here
 * (sigmoid through expf ran 15x slower than PyTorch's SIMD one, measured).
 * The ELU forward needs expm1's relative accuracy near 0, which exp(x) - 1
 * loses; it gets it from tanh_poly through expm1(x) = 2t / (1 - t), t = tanh(x/2). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/ctx.h"

#ifndef FC_KERNEL_ISA
#error "define FC_KERNEL_ISA before including kernels/ref/eltwise_impl.h"
#endif

/* c ? a : b by bit masks, with both a and b computed. gcc turns a ?: whose
 * arms need arithmetic into branches (it will not execute a possibly trapping
 * multiply speculatively, and it threads jumps through constant arms), and a
 * branch stops vectorization; `x > 0 ? x : x * slope` ran 6x slower than ReLU
 * on mixed signs, measured. Bit-exact with the ?: (memcpy is the defined way
 * to reinterpret bits). */
static inline float blend(int c, float a, float b)
{
    uint32_t ua, ub, m = -(uint32_t)(c != 0), r;
    memcpy(&ua, &a, sizeof ua);
    memcpy(&ub, &b, sizeof ub);
    r = (ua & m) | (ub & ~m);
    float out;
    memcpy(&out, &r, sizeof out);
    return out;
}

/* 2^n for n in [-126, 127], built in the exponent bits. */
static inline float pow2i(int32_t n)
{
    uint32_t u = (uint32_t)(n + 127) << 23;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* exp(x) for x <= 0 (x > 0 gives 1), branch-free; NaN stays NaN. Cephes'
 * expf: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two so n * C1 is
 * exact), exp(r) by a degree-6 polynomial, times 2^n in two factors so that
 * results down to the subnormals (n >= -150) need no special case. Max error
 * 0.98 ulp over every float (checked exhaustively against double exp). */
static inline float exp_nonpos(float x)
{
    float xc = blend(x >= -104.0f, blend(x > 0.0f, 0.0f, x), -104.0f); /* NaN -> -104 */
    float v = xc * 1.44269504088896341f + 0.5f;
    int32_t t = (int32_t)v, n = t - (v < (float)t); /* floor(v), v in [-150, 0.5] */
    float fn = (float)n;
    float r = xc - fn * 0.693359375f - fn * -2.12194440e-4f;
    float p = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r
                 + 4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f) * (r * r)
              + r + 1.0f;
    int32_t half = n / 2;
    return blend(x != x, x, p * pow2i(half) * pow2i(n - half));
}

/* tanh, branch-free: Cephes' tanhf odd polynomial for |x| < 0.625, else
 * (1 - e) / (1 + e) with e = exp(-2|x|) <= 0.29 (no cancellation), signed.
 * Saturates to +-1 without overflow; NaN and -0.0 kept. Max error 1.51 ulp
 * over every float (checked exhaustively). */
static inline float tanh_poly(float x)
{
    float ax = fabsf(x), z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                    + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    float e = exp_nonpos(-2.0f * ax);
    /* copysign on both branches: the polynomial gives +0 for x = -0. */
    return copysignf(blend(ax < 0.625f, small, (1.0f - e) / (1.0f + e)), x);
}

/* expm1(x) for x <= 0 (and NaN) as 2t / (1 - t) with t = tanh(x / 2) in
 * [-1, 0]: the denominator stays in [1, 2], so t's relative accuracy near 0
 * carries over, and no libm call keeps the loop vectorizable. x = -inf gives
 * -1, -0 gives -0. Within 4 ulp of expm1 (t within 1.51 ulp, 2 roundings). */
static inline float expm1_nonpos(float x)
{
    float t = tanh_poly(0.5f * x);
    return 2.0f * t / (1.0f - t);
}

/* Sigmoid without overflow: with e = exp(-|x|) <= 1, sigmoid(x) = 1 / (1 + e)
 * for x >= 0 and e / (1 + e) for x < 0. NaN gives NaN (x >= 0 is false).
 * Max error 2.4 ulp over every float. */
static inline float sigmoid(float x)
{
    float e = exp_nonpos(-fabsf(x));
    return blend(x >= 0.0f, 1.0f, e) / (1.0f + e);
}

/* ---- the rows ------------------------------------------------------------- */

/* x < 0 is false for NaN, so NaN passes through as in PyTorch. */
static void relu_forward(fc_int n, const float *x, float param, float *y)
{
    (void)param;
    for (fc_int i = 0; i < n; i++) y[i] = blend(x[i] < 0.0f, 0.0f, x[i]);
}

static void leaky_relu_forward(fc_int n, const float *x, float slope, float *y)
{
    for (fc_int i = 0; i < n; i++) y[i] = blend(x[i] > 0.0f, x[i], x[i] * slope);
}

static void elu_forward(fc_int n, const float *x, float alpha, float *y)
{
    for (fc_int i = 0; i < n; i++) y[i] = blend(x[i] > 0.0f, x[i], expm1_nonpos(x[i]) * alpha);
}

static void sigmoid_forward(fc_int n, const float *x, float param, float *y)
{
    (void)param;
    for (fc_int i = 0; i < n; i++) y[i] = sigmoid(x[i]);
}

static void tanh_forward(fc_int n, const float *x, float param, float *y)
{
    (void)param;
    for (fc_int i = 0; i < n; i++) y[i] = tanh_poly(x[i]);
}

/* a = y; zero where y <= 0, so dy passes where y is NaN (threshold_backward). */
static void relu_backward(fc_int n, const float *dy, const float *y, float param, float *dx)
{
    (void)param;
    for (fc_int i = 0; i < n; i++) dx[i] = blend(y[i] <= 0.0f, 0.0f, dy[i]);
}

static void leaky_relu_backward(fc_int n, const float *dy, const float *x, float slope, float *dx)
{
    for (fc_int i = 0; i < n; i++) dx[i] = blend(x[i] > 0.0f, dy[i], dy[i] * slope);
}

/* a = x rather than y, so that any alpha (also < 0) is right. */
static void elu_backward(fc_int n, const float *dy, const float *x, float alpha, float *dx)
{
    for (fc_int i = 0; i < n; i++) dx[i] = blend(x[i] > 0.0f, dy[i], dy[i] * alpha * exp_nonpos(x[i]));
}

static void sigmoid_backward(fc_int n, const float *dy, const float *y, float param, float *dx)
{
    (void)param;
    for (fc_int i = 0; i < n; i++) dx[i] = dy[i] * (1.0f - y[i]) * y[i];
}

static void tanh_backward(fc_int n, const float *dy, const float *y, float param, float *dx)
{
    (void)param;
    for (fc_int i = 0; i < n; i++) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
}

static void add_scalar(fc_int n, float *y, float b)
{
    for (fc_int i = 0; i < n; i++) y[i] += b;
}

static void add_vector(fc_int n, float *restrict y, const float *restrict b)
{
    for (fc_int i = 0; i < n; i++) y[i] += b[i];
}

const fc_eltwise_kernel FC_KERNEL(eltwise_kernel) = {
    .forward = {[FC_ACT_RELU] = relu_forward, [FC_ACT_LEAKY_RELU] = leaky_relu_forward,
                [FC_ACT_ELU] = elu_forward, [FC_ACT_SIGMOID] = sigmoid_forward,
                [FC_ACT_TANH] = tanh_forward},
    .backward = {[FC_ACT_RELU] = relu_backward, [FC_ACT_LEAKY_RELU] = leaky_relu_backward,
                 [FC_ACT_ELU] = elu_backward, [FC_ACT_SIGMOID] = sigmoid_backward,
                 [FC_ACT_TANH] = tanh_backward},
    .add_scalar = add_scalar,
    .add_vector = add_vector,
};
