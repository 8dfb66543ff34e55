/* The batch-norm tiles (contract: kernels/batchnorm.h) as one source that
 * each ISA folder compiles with its flags: kernels/ref/batchnorm_ref.c and
 * kernels/<isa>/batchnorm_<isa>.c. Include it once, with FC_KERNEL_ISA
 * defined; it defines the table fc_bn_kernel_<isa>.
 *
 * The row sums keep FC_BN_LANES partials in one GNU C vector rather than
 * an `omp simd` reduction, whose partials are as many as the folder's
 * vector holds: the order, and so the bits, would change with the ISA. Four
 * doubles fill one AVX2 vector; the baseline build holds them in two SSE2
 * ones. */
#include <string.h>

#include "kernels/ctx.h"

#ifndef FC_KERNEL_ISA
#error "define FC_KERNEL_ISA before including kernels/ref/batchnorm_impl.h"
#endif

typedef float lanes_f __attribute__((vector_size(4 * FC_BN_LANES)));
typedef double lanes_d __attribute__((vector_size(8 * FC_BN_LANES)));

/* *out = elements [i, i + FC_BN_LANES) of v, in double (any alignment). An
 * output argument: returning a vector wider than the baseline's registers
 * draws a warning about the ABI, which this inline function does not have. */
static inline void load_lanes(lanes_d *out, const float *v, fc_int i)
{
    lanes_f f;
    memcpy(&f, v + i, sizeof f);
    *out = __builtin_convertvector(f, lanes_d);
}

/* The partials, in order. Callers add it to their running sum as
 * `sum_lanes(p) + s`: where both are NaN, x86 keeps the first operand's,
 * and this is the order of the omp-simd loop these tiles replaced. */
static inline double sum_lanes(lanes_d p)
{
    double a = 0.0;
    for (int l = 0; l < FC_BN_LANES; l++) a += p[l];
    return a;
}

static void stats(fc_int n, fc_int stride, fc_int inner, fc_int w, const float *x,
                  const double *shift, double *s1, double *s2)
{
    for (fc_int b = 0; b < n; b++) {
        if (inner == 1) {
            const float *row = x + b * stride;
            for (fc_int j = 0; j < w; j++) {
                double d = (double)row[j] - shift[j];
                s1[j] += d;
                s2[j] += d * d;
            }
            continue;
        }
        for (fc_int j = 0; j < w; j++) {
            const float *row = x + b * stride + j * inner;
            const double sh = shift[j];
            lanes_d l1 = {0}, l2 = {0};
            fc_int i = 0;
            for (; i + FC_BN_LANES <= inner; i += FC_BN_LANES) {
                lanes_d d;
                load_lanes(&d, row, i);
                d -= sh;
                l1 += d;
                l2 += d * d;
            }
            for (; i < inner; i++) {
                double d = (double)row[i] - sh;
                l1[0] += d;
                l2[0] += d * d;
            }
            s1[j] = sum_lanes(l1) + s1[j];
            s2[j] = sum_lanes(l2) + s2[j];
        }
    }
}

static void normalize(fc_int n, fc_int stride, fc_int inner, fc_int w, const float *x,
                      const float *m, const float *scale, const float *shift, float *y)
{
    for (fc_int b = 0; b < n; b++) {
        if (inner == 1) {
            const float *xr = x + b * stride;
            float *yr = y + b * stride;
            for (fc_int j = 0; j < w; j++) yr[j] = (xr[j] - m[j]) * scale[j] + shift[j];
            continue;
        }
        for (fc_int j = 0; j < w; j++) {
            const fc_int o = b * stride + j * inner;
            const float mj = m[j], s = scale[j], t = shift[j];
            for (fc_int i = 0; i < inner; i++) y[o + i] = (x[o + i] - mj) * s + t;
        }
    }
}

static void grad_sums(fc_int n, fc_int stride, fc_int inner, fc_int w, const float *dy,
                      const float *x, const float *mean, double *sdy, double *sdyx)
{
    for (fc_int b = 0; b < n; b++) {
        if (inner == 1) {
            const float *dyr = dy + b * stride, *xr = x + b * stride;
            for (fc_int j = 0; j < w; j++) {
                sdy[j] += dyr[j];
                sdyx[j] += (double)dyr[j] * ((double)xr[j] - mean[j]);
            }
            continue;
        }
        for (fc_int j = 0; j < w; j++) {
            const fc_int o = b * stride + j * inner;
            const double m = mean[j];
            lanes_d l1 = {0}, l2 = {0};
            fc_int i = 0;
            for (; i + FC_BN_LANES <= inner; i += FC_BN_LANES) {
                lanes_d g, v;
                load_lanes(&g, dy + o, i);
                load_lanes(&v, x + o, i);
                l1 += g;
                l2 += g * (v - m);
            }
            for (; i < inner; i++) {
                l1[0] += dy[o + i];
                l2[0] += (double)dy[o + i] * ((double)x[o + i] - m);
            }
            sdy[j] = sum_lanes(l1) + sdy[j];
            sdyx[j] = sum_lanes(l2) + sdyx[j];
        }
    }
}

static void grad_input(fc_int n, fc_int stride, fc_int inner, fc_int w, const float *dy,
                       const float *x, const float *m, const float *gm, const float *k,
                       const float *scale, int batch_stats, float *dx)
{
    for (fc_int b = 0; b < n; b++) {
        if (inner == 1) {
            const float *dyr = dy + b * stride, *xr = x + b * stride;
            float *dxr = dx + b * stride;
            if (batch_stats)
                for (fc_int j = 0; j < w; j++) dxr[j] = (dyr[j] - gm[j] - (xr[j] - m[j]) * k[j]) * scale[j];
            else
                for (fc_int j = 0; j < w; j++) dxr[j] = dyr[j] * scale[j];
            continue;
        }
        for (fc_int j = 0; j < w; j++) {
            const fc_int o = b * stride + j * inner;
            const float s = scale[j];
            if (batch_stats) {
                const float mj = m[j], g = gm[j], kj = k[j];
                for (fc_int i = 0; i < inner; i++) dx[o + i] = (dy[o + i] - g - (x[o + i] - mj) * kj) * s;
            } else {
                for (fc_int i = 0; i < inner; i++) dx[o + i] = dy[o + i] * s;
            }
        }
    }
}

const fc_bn_kernel FC_KERNEL(bn_kernel) = {
    .stats = stats,
    .normalize = normalize,
    .grad_sums = grad_sums,
    .grad_input = grad_input,
};
