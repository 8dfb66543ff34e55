/* Element-wise activations, forward and backward: ReLU, leaky ReLU, ELU, sigmoid,
 * tanh. Each op is one loop split statically over threads, with a body that
 * gcc vectorizes: selects are bit masks (blend) and exp and tanh are branch-
 * free polynomials (exp_nonpos, tanh_poly) instead of libm calls, which glibc
 * only vectorizes under -ffast-math and which cost 5-30 ns per element here
 * (sigmoid through expf ran 15x slower than PyTorch's SIMD one, measured).
 * The ELU forward needs expm1's relative accuracy near 0, which exp(x) - 1
 * loses; it gets it from tanh_poly through expm1(x) = 2t / (1 - t), t = tanh(x/2).
 *
 * The formulas are PyTorch's CPU kernels term for term, so that NaN, infinity
 * and signed-zero cases come out the same (sigmoid in its overflow-free form,
 * see below, which also keeps the tiny values PyTorch flushes to 0 for
 * x < -88):
 *   leaky ReLU  y = x > 0 ? x : x * slope          dx = x > 0 ? dy : dy * slope
 *   ELU         y = x > 0 ? x : expm1(x) * alpha   dx = x > 0 ? dy : dy * alpha * exp(x)
 *   sigmoid     y = 1 / (1 + exp(-x))              dx = dy * (1 - y) * y
 *   tanh        y = tanh(x)                        dx = dy * (1 - y * y)
 * A NaN x takes the second branch, as in PyTorch's vectorized kernels: the
 * ELU gradient at NaN is NaN (PyTorch's scalar tail loop passes dy instead).
 * Nothing overflows for large |x|: exp is only ever taken of a value <= 0. */
#include <math.h>
#include <string.h>
#include "fastconv.h"
#include "fc_omp.h"

/* Below this many elements a parallel region costs more than it saves. ReLU,
 * leaky ReLU and the backwards stream memory; an exp or tanh costs several
 * times more per element, so it pays to split smaller arrays. */
#define FC_STREAM_PAR_MIN 32768
#define FC_EXP_PAR_MIN 8192

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

void fc_activation_forward(int op, fc_int count, const float *x, float param, float *y,
                           int nthreads)
{
    switch (op) {
    case FC_ACT_RELU: /* x < 0 is false for NaN, so NaN passes through as in PyTorch */
#pragma omp parallel for num_threads(nthreads) schedule(static) if (count >= FC_STREAM_PAR_MIN)
        for (fc_int i = 0; i < count; i++) y[i] = blend(x[i] < 0.0f, 0.0f, x[i]);
        break;
    case FC_ACT_LEAKY_RELU:
#pragma omp parallel for num_threads(nthreads) schedule(static) if (count >= FC_STREAM_PAR_MIN)
        for (fc_int i = 0; i < count; i++) y[i] = blend(x[i] > 0.0f, x[i], x[i] * param);
        break;
    case FC_ACT_ELU:
#pragma omp parallel for num_threads(nthreads) schedule(static) if (count >= FC_EXP_PAR_MIN)
        for (fc_int i = 0; i < count; i++) y[i] = blend(x[i] > 0.0f, x[i], expm1_nonpos(x[i]) * param);
        break;
    case FC_ACT_SIGMOID:
#pragma omp parallel for num_threads(nthreads) schedule(static) if (count >= FC_EXP_PAR_MIN)
        for (fc_int i = 0; i < count; i++) y[i] = sigmoid(x[i]);
        break;
    case FC_ACT_TANH:
#pragma omp parallel for num_threads(nthreads) schedule(static) if (count >= FC_EXP_PAR_MIN)
        for (fc_int i = 0; i < count; i++) y[i] = tanh_poly(x[i]);
        break;
    }
}

void fc_activation_backward(int op, fc_int count, const float *dy, const float *a, float param,
                            float *dx, int nthreads)
{
    switch (op) {
    case FC_ACT_RELU: /* a = y; zero where y <= 0, so dy passes where y is NaN (threshold_backward) */
#pragma omp parallel for num_threads(nthreads) schedule(static) if (count >= FC_STREAM_PAR_MIN)
        for (fc_int i = 0; i < count; i++) dx[i] = blend(a[i] <= 0.0f, 0.0f, dy[i]);
        break;
    case FC_ACT_LEAKY_RELU: /* a = x */
#pragma omp parallel for num_threads(nthreads) schedule(static) if (count >= FC_STREAM_PAR_MIN)
        for (fc_int i = 0; i < count; i++) dx[i] = blend(a[i] > 0.0f, dy[i], dy[i] * param);
        break;
    case FC_ACT_ELU: /* a = x; from x rather than y, so that any alpha (also < 0) is right */
#pragma omp parallel for num_threads(nthreads) schedule(static) if (count >= FC_EXP_PAR_MIN)
        for (fc_int i = 0; i < count; i++)
            dx[i] = blend(a[i] > 0.0f, dy[i], dy[i] * param * exp_nonpos(a[i]));
        break;
    case FC_ACT_SIGMOID: /* a = y */
#pragma omp parallel for num_threads(nthreads) schedule(static) if (count >= FC_STREAM_PAR_MIN)
        for (fc_int i = 0; i < count; i++) dx[i] = dy[i] * (1.0f - a[i]) * a[i];
        break;
    case FC_ACT_TANH: /* a = y */
#pragma omp parallel for num_threads(nthreads) schedule(static) if (count >= FC_STREAM_PAR_MIN)
        for (fc_int i = 0; i < count; i++) dx[i] = dy[i] * (1.0f - a[i] * a[i]);
        break;
    }
}
