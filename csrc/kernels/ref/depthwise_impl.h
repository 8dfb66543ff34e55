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
 * in L1 keeps cheap. */
#include "kernels/ctx.h"

#ifndef FC_KERNEL_ISA
#error "define FC_KERNEL_ISA before including kernels/ref/depthwise_impl.h"
#endif

/* Independent running sums in a dot product: enough for the compiler to
 * vectorize it and to hide the add latency. */
#define FC_DW_LANES 16

#define FC_DW_INLINE static inline __attribute__((always_inline))

/* The outputs ox in [oa, ob) whose tap ox*sw + off falls inside [0, w),
 * as [*lo, *hi). */
FC_DW_INLINE void tap_outputs(fc_int off, fc_int sw, fc_int w, fc_int oa, fc_int ob, fc_int *lo,
                              fc_int *hi)
{
    fc_int a = off >= 0 ? 0 : (-off + sw - 1) / sw;
    fc_int b = w - 1 - off < 0 ? 0 : (w - 1 - off) / sw + 1;
    a = a > oa ? a : oa;
    b = b < ob ? b : ob;
    *lo = a;
    *hi = b > a ? b : a;
}

/* out[e] += wv * src[e * sw] for e < n. */
FC_DW_INLINE void axpy_loop(float *restrict out, float wv, const float *restrict src, fc_int sw,
                            fc_int n)
{
    for (fc_int e = 0; e < n; e++) out[e] += wv * src[e * sw];
}

/* dw_row's terms for the outputs [oa, ob) only, tap by tap. */
FC_DW_INLINE void row_taps(const fc_dw_geom *g, const float *row, fc_int pitch, fc_int rows,
                           const float *wt, float *out, fc_int oa, fc_int ob)
{
    for (fc_int i = 0; i < rows; i++)
        for (fc_int j = 0; j < g->kw; j++) {
            const fc_int off = j * g->dw - g->pw;
            fc_int lo, hi;
            tap_outputs(off, g->sw, g->w, oa, ob, &lo, &hi);
            if (lo == hi) continue;
            const float wv = wt[i * g->kw + j], *src = row + i * pitch + lo * g->sw + off;
            if (g->sw == 1)
                axpy_loop(out + lo, wv, src, 1, hi - lo);
            else if (g->sw == 2)
                axpy_loop(out + lo, wv, src, 2, hi - lo);
            else
                axpy_loop(out + lo, wv, src, g->sw, hi - lo);
        }
}

/* Three rows of a 3x3 kernel (column dilation 1) for the outputs [xa, xb),
 * whose taps all fall inside the row: the 9 weights in registers, each
 * input read where its output is. */
FC_DW_INLINE void row_3x3(const float *restrict r0, fc_int pitch, const float *wt,
                          float *restrict out, fc_int xa, fc_int xb, fc_int pw, const fc_int sw)
{
    const float *restrict r1 = r0 + pitch, *restrict r2 = r1 + pitch;
    const float w0 = wt[0], w1 = wt[1], w2 = wt[2], w3 = wt[3], w4 = wt[4], w5 = wt[5];
    const float w6 = wt[6], w7 = wt[7], w8 = wt[8];
    for (fc_int ox = xa; ox < xb; ox++) {
        const fc_int ix = ox * sw - pw;
        float acc = out[ox];
        acc += w0 * r0[ix];
        acc += w1 * r0[ix + 1];
        acc += w2 * r0[ix + 2];
        acc += w3 * r1[ix];
        acc += w4 * r1[ix + 1];
        acc += w5 * r1[ix + 2];
        acc += w6 * r2[ix];
        acc += w7 * r2[ix + 1];
        acc += w8 * r2[ix + 2];
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
    /* Inside the row, the same terms in the same order as row_taps adds. */
    if (rows == 3 && g->kw == 3 && g->dw == 1 && (g->sw == 1 || g->sw == 2) && g->x0 < g->x1) {
        row_taps(g, row, pitch, rows, wt, out, 0, g->x0);
        if (g->sw == 1)
            row_3x3(row, pitch, wt, out, g->x0, g->x1, g->pw, 1);
        else
            row_3x3(row, pitch, wt, out, g->x0, g->x1, g->pw, 2);
        row_taps(g, row, pitch, rows, wt, out, g->x1, g->ow);
        return;
    }
    row_taps(g, row, pitch, rows, wt, out, 0, g->ow);
}

void FC_KERNEL(dw_dweight_row)(const fc_dw_geom *g, const float *row, fc_int pitch, fc_int rows,
                               const float *dy, float *acc)
{
    for (fc_int i = 0; i < rows; i++)
        for (fc_int j = 0; j < g->kw; j++) {
            const fc_int off = j * g->dw - g->pw;
            fc_int lo, hi;
            tap_outputs(off, g->sw, g->w, 0, g->ow, &lo, &hi);
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
