/* The batch-norm tiles (contract: kernels/batchnorm.h) as one source that
 * each ISA folder compiles with its flags: kernels/ref/batchnorm_ref.c and
 * kernels/<isa>/batchnorm_<isa>.c. Include it once, with FC_KERNEL_ISA and
 * FC_VEC_DOUBLES (doubles per vector of that ISA) defined; it defines the
 * table fc_bn_kernel_<isa>.
 *
 * The row sums keep FC_BN_LANES partials in GNU C vectors rather than an
 * `omp simd` reduction, whose partials are as many as the folder's vector
 * holds: the order, and so the bits, would change with the ISA. The
 * partials fill FC_BN_LANES / VEC_D vectors of the folder's width, kept in
 * registers (a vector type wider than the ISA's goes through memory). */
#include <stdint.h>
#include <string.h>

#include "kernels/ctx.h"

#if !defined(FC_KERNEL_ISA) || !defined(FC_VEC_DOUBLES)
#error "define FC_KERNEL_ISA and FC_VEC_DOUBLES before including kernels/ref/batchnorm_impl.h"
#endif

/* Doubles per vector: the folder's, at most FC_BN_LANES. */
#define VEC_D (FC_VEC_DOUBLES < FC_BN_LANES ? FC_VEC_DOUBLES : FC_BN_LANES)
#define N_VEC (FC_BN_LANES / VEC_D)

typedef double vec_d __attribute__((vector_size(8 * VEC_D)));
typedef float row_f __attribute__((vector_size(4 * FC_BN_LANES)));
typedef int row_i __attribute__((vector_size(4 * FC_BN_LANES)));
typedef double row_d __attribute__((vector_size(8 * FC_BN_LANES)));

/* The partials: lane l of the row sum is p[l / VEC_D][l % VEC_D]. */
typedef struct {
    vec_d v[N_VEC];
} lanes;

/* *out = f in double: converted at the full width, which GCC lowers well to
 * any ISA's (as halves, it converts element by element), then split into the
 * folder's vectors. */
static inline void widen(lanes *out, row_f f)
{
    row_d d = __builtin_convertvector(f, row_d);
    memcpy(out, &d, sizeof *out);
}

/* *out = elements [i, i + FC_BN_LANES) of v, in double (any alignment). */
static inline void load_lanes(lanes *out, const float *v, fc_int i)
{
    row_f f;
    memcpy(&f, v + i, sizeof f);
    widen(out, f);
}

/* The gradient the backward reads at element i: dy, masked by the ReLU's
 * output ry when there is one (batchnorm.h). The mask clears the bits, to +0
 * as the ReLU's backward row does; a ?: here becomes a branch in GCC's
 * output, which stops the loop's vectorization. */
static inline float grad_at(const float *dy, const float *ry, fc_int i)
{
    if (!ry) return dy[i];
    uint32_t u;
    memcpy(&u, dy + i, sizeof u);
    u &= -(uint32_t)!(ry[i] <= 0.0f); /* ry NaN: kept */
    float g;
    memcpy(&g, &u, sizeof g);
    return g;
}

/* load_lanes of the gradient: grad_at on FC_BN_LANES elements, the mask as
 * bits (a compare is all ones where ry <= 0, and NaN compares false). */
static inline void load_grad_lanes(lanes *out, const float *dy, const float *ry, fc_int i)
{
    row_f g;
    memcpy(&g, dy + i, sizeof g);
    if (ry) {
        row_f r;
        memcpy(&r, ry + i, sizeof r);
        g = (row_f)((row_i)g & ~(r <= (row_f){0}));
    }
    widen(out, g);
}

/* The partials, in order. Callers add it to their running sum as
 * `sum_lanes(p) + s`: where both are NaN, x86 keeps the first operand's,
 * and this is the order of the omp-simd loop these tiles replaced. */
static inline double sum_lanes(const lanes *p)
{
    double a = 0.0;
    for (int k = 0; k < N_VEC; k++)
        for (int l = 0; l < VEC_D; l++) a += p->v[k][l];
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
            lanes l1 = {0}, l2 = {0}, d;
            fc_int i = 0;
            for (; i + FC_BN_LANES <= inner; i += FC_BN_LANES) {
                load_lanes(&d, row, i);
                for (int k = 0; k < N_VEC; k++) {
                    d.v[k] -= sh;
                    l1.v[k] += d.v[k];
                    l2.v[k] += d.v[k] * d.v[k];
                }
            }
            for (; i < inner; i++) {
                double e = (double)row[i] - sh;
                l1.v[0][0] += e;
                l2.v[0][0] += e * e;
            }
            s1[j] = sum_lanes(&l1) + s1[j];
            s2[j] = sum_lanes(&l2) + s2[j];
        }
    }
}

/* Each pass with a fused ReLU is one body, inlined twice by its table entry
 * (below), with the ReLU (relu 1, ry not NULL) and without (0, NULL), which
 * the compiler folds: the plain batch norm runs the loops it ran before the
 * fusion existed (the same instruction counts under callgrind; one loop with
 * a per-call lower bound of -inf cost 12% more in normalize), and the fused
 * one tests nothing per element. */
#define SPECIALIZED static inline __attribute__((always_inline))

/* The ReLU when relu: v < 0 ? 0 : v (NaN and -0 kept). */
static inline float rect(float v, int relu) { return relu && v < 0.0f ? 0.0f : v; }

SPECIALIZED void normalize_tile(fc_int n, fc_int stride, fc_int inner, fc_int w, const float *x,
                                const float *m, const float *scale, const float *shift, int relu,
                                float *y)
{
    for (fc_int b = 0; b < n; b++) {
        if (inner == 1) {
            const float *xr = x + b * stride;
            float *yr = y + b * stride;
            for (fc_int j = 0; j < w; j++) yr[j] = rect((xr[j] - m[j]) * scale[j] + shift[j], relu);
            continue;
        }
        for (fc_int j = 0; j < w; j++) {
            const fc_int o = b * stride + j * inner;
            const float mj = m[j], s = scale[j], t = shift[j];
            for (fc_int i = 0; i < inner; i++) y[o + i] = rect((x[o + i] - mj) * s + t, relu);
        }
    }
}

SPECIALIZED void grad_sums_tile(fc_int n, fc_int stride, fc_int inner, fc_int w, const float *dy,
                                const float *ry, const float *x, const float *mean, double *sdy,
                                double *sdyx)
{
    for (fc_int b = 0; b < n; b++) {
        if (inner == 1) {
            const fc_int o = b * stride;
            for (fc_int j = 0; j < w; j++) {
                const float g = grad_at(dy, ry, o + j);
                sdy[j] += g;
                sdyx[j] += (double)g * ((double)x[o + j] - mean[j]);
            }
            continue;
        }
        for (fc_int j = 0; j < w; j++) {
            const fc_int o = b * stride + j * inner;
            const double m = mean[j];
            lanes l1 = {0}, l2 = {0}, g, v;
            fc_int i = 0;
            for (; i + FC_BN_LANES <= inner; i += FC_BN_LANES) {
                load_grad_lanes(&g, dy + o, ry ? ry + o : NULL, i);
                load_lanes(&v, x + o, i);
                for (int k = 0; k < N_VEC; k++) {
                    l1.v[k] += g.v[k];
                    l2.v[k] += g.v[k] * (v.v[k] - m);
                }
            }
            for (; i < inner; i++) {
                const float e = grad_at(dy, ry, o + i);
                l1.v[0][0] += e;
                l2.v[0][0] += (double)e * ((double)x[o + i] - m);
            }
            sdy[j] = sum_lanes(&l1) + sdy[j];
            sdyx[j] = sum_lanes(&l2) + sdyx[j];
        }
    }
}

SPECIALIZED void grad_input_tile(fc_int n, fc_int stride, fc_int inner, fc_int w,
                                 const float *dy, const float *ry, const float *x, const float *m,
                                 const float *gm, const float *k, const float *scale,
                                 int batch_stats, float *dx)
{
    for (fc_int b = 0; b < n; b++) {
        if (inner == 1) {
            const fc_int o = b * stride;
            const float *xr = x + o;
            float *dxr = dx + o;
            if (batch_stats)
                for (fc_int j = 0; j < w; j++)
                    dxr[j] = (grad_at(dy, ry, o + j) - gm[j] - (xr[j] - m[j]) * k[j]) * scale[j];
            else
                for (fc_int j = 0; j < w; j++) dxr[j] = grad_at(dy, ry, o + j) * scale[j];
            continue;
        }
        for (fc_int j = 0; j < w; j++) {
            const fc_int o = b * stride + j * inner;
            const float s = scale[j];
            if (batch_stats) {
                const float mj = m[j], g = gm[j], kj = k[j];
                for (fc_int i = 0; i < inner; i++)
                    dx[o + i] = (grad_at(dy, ry, o + i) - g - (x[o + i] - mj) * kj) * s;
            } else {
                for (fc_int i = 0; i < inner; i++) dx[o + i] = grad_at(dy, ry, o + i) * s;
            }
        }
    }
}

static void normalize(fc_int n, fc_int stride, fc_int inner, fc_int w, const float *x,
                      const float *m, const float *scale, const float *shift, int relu, float *y)
{
    if (relu)
        normalize_tile(n, stride, inner, w, x, m, scale, shift, 1, y);
    else
        normalize_tile(n, stride, inner, w, x, m, scale, shift, 0, y);
}

static void grad_sums(fc_int n, fc_int stride, fc_int inner, fc_int w, const float *dy,
                      const float *ry, const float *x, const float *mean, double *sdy, double *sdyx)
{
    if (ry)
        grad_sums_tile(n, stride, inner, w, dy, ry, x, mean, sdy, sdyx);
    else
        grad_sums_tile(n, stride, inner, w, dy, NULL, x, mean, sdy, sdyx);
}

static void grad_input(fc_int n, fc_int stride, fc_int inner, fc_int w, const float *dy,
                       const float *ry, const float *x, const float *m, const float *gm,
                       const float *k, const float *scale, int batch_stats, float *dx)
{
    if (ry)
        grad_input_tile(n, stride, inner, w, dy, ry, x, m, gm, k, scale, batch_stats, dx);
    else
        grad_input_tile(n, stride, inner, w, dy, NULL, x, m, gm, k, scale, batch_stats, dx);
}

const fc_bn_kernel FC_KERNEL(bn_kernel) = {
    .stats = stats,
    .normalize = normalize,
    .grad_sums = grad_sums,
    .grad_input = grad_input,
};
