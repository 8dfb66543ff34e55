/* The depthwise convolution's row kernels (contract: kernels/depthwise.h)
 * as one source that each ISA folder compiles with its flags:
 * kernels/ref/depthwise_ref.c (baseline), kernels/avx2/depthwise_avx2.c and
 * kernels/avx512/depthwise_avx512.c. Include it once, with FC_KERNEL_ISA
 * defined as the suffix of the entries it defines (fc_dw_row_<isa>,
 * fc_dw_dweight_row_<isa>).
 *
 * A depthwise 3x3 output reads 9 inputs for 9 multiply-adds: the loops are
 * bound by memory, not arithmetic, so they read each input row once per
 * output row with the 9 weights in registers, vectorized along the row;
 * strides 1 and 2 reach the loops as constants, so the compiler vectorizes
 * each (a run-time stride leaves scalar code). Other kernels run tap by
 * tap, one vector pass over the output row per tap, which the row's staying
 * in L1 keeps cheap. The outputs at the row's ends, whose taps are partly
 * padding, run one by one: a vector pass per tap over one or two outputs
 * cost more in its set-up than the arithmetic. Every output adds its terms
 * in (i, j) order whichever loop computes it. */
#include "kernels/ctx.h"

#ifndef FC_KERNEL_ISA
#error "define FC_KERNEL_ISA before including kernels/ref/depthwise_impl.h"
#endif

/* Independent running sums in a dot product: enough for the compiler to
 * vectorize it and to hide the add latency. */
#define FC_DW_LANES 16

#define FC_DW_INLINE static inline __attribute__((always_inline))

/* The outputs ox in [0, ow) whose tap ox*sw + off falls inside [0, w),
 * as [*lo, *hi). */
FC_DW_INLINE void tap_outputs(fc_int off, fc_int sw, fc_int w, fc_int ow, fc_int *lo, fc_int *hi)
{
    fc_int a = off >= 0 ? 0 : (-off + sw - 1) / sw;
    fc_int b = w - 1 - off < 0 ? 0 : (w - 1 - off) / sw + 1;
    a = a < ow ? a : ow;
    b = b < ow ? b : ow;
    *lo = a;
    *hi = b > a ? b : a;
}

/* out[e] += wv * src[e * sw] for e < n. */
FC_DW_INLINE void axpy_loop(float *restrict out, float wv, const float *restrict src, fc_int sw,
                            fc_int n)
{
    for (fc_int e = 0; e < n; e++) out[e] += wv * src[e * sw];
}

/* dw_row's terms for the outputs [oa, ob), output by output, each tap tested
 * against the row's ends: for the few outputs at the edges. */
FC_DW_INLINE void edge_taps(const fc_dw_geom *g, const float *row, fc_int pitch, fc_int rows,
                            const float *wt, float *out, fc_int oa, fc_int ob)
{
    for (fc_int ox = oa; ox < ob; ox++) {
        float acc = out[ox];
        for (fc_int i = 0; i < rows; i++)
            for (fc_int j = 0; j < g->kw; j++) {
                const fc_int ix = ox * g->sw + j * g->dw - g->pw;
                if (ix >= 0 && ix < g->w) acc += wt[i * g->kw + j] * row[i * pitch + ix];
            }
        out[ox] = acc;
    }
}

/* dw_row's terms for the outputs [x0, x1), whose taps all fall inside the
 * row, tap by tap: one vector pass over them per tap. */
FC_DW_INLINE void inner_taps(const fc_dw_geom *g, const float *row, fc_int pitch, fc_int rows,
                             const float *wt, float *out)
{
    const fc_int n = g->x1 - g->x0;
    for (fc_int i = 0; i < rows; i++)
        for (fc_int j = 0; j < g->kw; j++) {
            const float wv = wt[i * g->kw + j];
            const float *src = row + i * pitch + g->x0 * g->sw + j * g->dw - g->pw;
            if (g->sw == 1)
                axpy_loop(out + g->x0, wv, src, 1, n);
            else if (g->sw == 2)
                axpy_loop(out + g->x0, wv, src, 2, n);
            else
                axpy_loop(out + g->x0, wv, src, g->sw, n);
        }
}

/* The same for `rows` (1 to 3) rows of a 3-wide kernel at column dilation
 * 1, both constants: the weights in registers, each input read where its
 * output is. */
FC_DW_INLINE void inner_3(const float *restrict row, fc_int pitch, const float *restrict wt,
                          float *restrict out, fc_int xa, fc_int xb, fc_int pw, const int rows,
                          const fc_int sw)
{
    for (fc_int ox = xa; ox < xb; ox++) {
        const fc_int ix = ox * sw - pw;
        float acc = out[ox];
        for (int i = 0; i < rows; i++) {
            const float *restrict r = row + i * pitch + ix;
            acc += wt[3 * i] * r[0];
            acc += wt[3 * i + 1] * r[1];
            acc += wt[3 * i + 2] * r[2];
        }
        out[ox] = acc;
    }
}

/* The sum of dy[e] * src[e * sw] for e < n, in FC_DW_LANES running sums,
 * then those in order. */
FC_DW_INLINE float dot_loop(const float *restrict dy, const float *restrict src, fc_int sw,
                            fc_int n)
{
    float lane[FC_DW_LANES] = {0};
    fc_int e = 0;
    for (; e + FC_DW_LANES <= n; e += FC_DW_LANES)
        for (int l = 0; l < FC_DW_LANES; l++) lane[l] += dy[e + l] * src[(e + l) * sw];
    for (int l = 0; e < n; e++, l++) lane[l] += dy[e] * src[e * sw];
    float sum = 0.0f;
    for (int l = 0; l < FC_DW_LANES; l++) sum += lane[l];
    return sum;
}

/* ---- the entries ---------------------------------------------------------- */

void FC_KERNEL(dw_row)(const fc_dw_geom *g, const float *row, fc_int pitch, fc_int rows,
                       const float *wt, float *out)
{
    edge_taps(g, row, pitch, rows, wt, out, 0, g->x0);
    const fc_int xa = g->x0, xb = g->x1, pw = g->pw;
    /* 3-wide kernels at stride 1 or 2, one case per (rows, stride), so each is unrolled */
    const int case3 = g->kw == 3 && g->dw == 1 && rows <= 3 && (g->sw == 1 || g->sw == 2)
                          ? (int)rows * 2 + (int)g->sw - 3 : -1;
    switch (case3) {
    case 0: inner_3(row, pitch, wt, out, xa, xb, pw, 1, 1); break;
    case 1: inner_3(row, pitch, wt, out, xa, xb, pw, 1, 2); break;
    case 2: inner_3(row, pitch, wt, out, xa, xb, pw, 2, 1); break;
    case 3: inner_3(row, pitch, wt, out, xa, xb, pw, 2, 2); break;
    case 4: inner_3(row, pitch, wt, out, xa, xb, pw, 3, 1); break;
    case 5: inner_3(row, pitch, wt, out, xa, xb, pw, 3, 2); break;
    default: inner_taps(g, row, pitch, rows, wt, out);
    }
    edge_taps(g, row, pitch, rows, wt, out, g->x1, g->ow);
}

void FC_KERNEL(dw_dweight_row)(const fc_dw_geom *g, const float *row, fc_int pitch, fc_int rows,
                               const float *dy, float *acc)
{
    for (fc_int i = 0; i < rows; i++)
        for (fc_int j = 0; j < g->kw; j++) {
            const fc_int off = j * g->dw - g->pw;
            fc_int lo, hi;
            tap_outputs(off, g->sw, g->w, g->ow, &lo, &hi);
            if (lo == hi) continue;
            const float *src = row + i * pitch + lo * g->sw + off;
            float sum;
            if (g->sw == 1)
                sum = dot_loop(dy + lo, src, 1, hi - lo);
            else if (g->sw == 2)
                sum = dot_loop(dy + lo, src, 2, hi - lo);
            else
                sum = dot_loop(dy + lo, src, g->sw, hi - lo);
            acc[i * g->kw + j] += sum;
        }
}
