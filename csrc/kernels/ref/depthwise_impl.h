/* The depthwise convolution's plane kernels (contract: kernels/depthwise.h)
 * as one source that each ISA folder compiles with its flags:
 * kernels/ref/depthwise_ref.c (baseline), kernels/avx2/depthwise_avx2.c and
 * kernels/avx512/depthwise_avx512.c. Include it once, with FC_KERNEL_ISA
 * defined as the suffix of the entries it defines (fc_dw_plane_<isa>,
 * fc_dw_dweight_plane_<isa>).
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
 * in (i, j) order whichever loop computes it.
 *
 * Whole planes per call, not rows: a 16-wide row is one AVX-512 vector, so
 * per-row set-up (and, in dW, a horizontal sum per tap and row) cost as
 * much as the arithmetic. At unit stride with ow == w (padding "same"
 * along the row) the output rows whose kernel rows all lie in the image
 * run as one flat pass: output o = oy*w + ox reads input o + a constant per
 * tap, so the interior loop runs over rows and their ends at once; the end
 * columns it computes wrongly (their taps wrap into the neighbouring row)
 * are saved before and computed again after, one by one. dW keeps one
 * running sum per tap and output column for the whole plane (the caller
 * carries them over the images), so its loops are the forward's, with a
 * store per tap. */
#include "kernels/ctx.h"

#ifndef FC_KERNEL_ISA
#error "define FC_KERNEL_ISA before including kernels/ref/depthwise_impl.h"
#endif

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

/* The forward terms of the outputs [oa, ob) of one row, output by output,
 * each tap tested against the row's ends: for the few outputs at the edges. */
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

/* The forward terms of the outputs [x0, x1), whose taps all fall inside the
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

/* cols[e] += dy[e] * src[e * sw] for e < n: one tap's column sums. */
FC_DW_INLINE void cols_loop(float *restrict cols, const float *restrict dy,
                            const float *restrict src, fc_int sw, fc_int n)
{
    for (fc_int e = 0; e < n; e++) cols[e] += dy[e] * src[e * sw];
}

/* The dW column sums of one row of a 3-wide kernel at column dilation 1
 * for the outputs [xa, xb): the three taps' columns c0, c1, c2 (apart, so
 * that the compiler sees they do not overlap and vectorizes). */
FC_DW_INLINE void cols_3(float *restrict c0, float *restrict c1, float *restrict c2,
                         const float *restrict dy, const float *restrict row, fc_int xa,
                         fc_int xb, fc_int pw, const fc_int sw)
{
    for (fc_int ox = xa; ox < xb; ox++) {
        const float *restrict r = row + ox * sw - pw;
        const float d = dy[ox];
        c0[ox] += d * r[0];
        c1[ox] += d * r[1];
        c2[ox] += d * r[2];
    }
}

/* dW's column sums of the outputs [oa, ob) of one row, output by output,
 * each tap tested against the row's ends: for the few outputs at the
 * edges. */
FC_DW_INLINE void edge_cols(const fc_dw_geom *g, const float *row, fc_int pitch, fc_int rows,
                            const float *dy, float *cols, fc_int oa, fc_int ob)
{
    for (fc_int ox = oa; ox < ob; ox++)
        for (fc_int i = 0; i < rows; i++)
            for (fc_int j = 0; j < g->kw; j++) {
                const fc_int ix = ox * g->sw + j * g->dw - g->pw;
                if (ix >= 0 && ix < g->w) cols[(i * g->kw + j) * g->ow + ox] += dy[ox] * row[i * pitch + ix];
            }
}

/* ---- one row -------------------------------------------------------------- */

/* 3-wide kernels at stride 1 or 2, one case per (rows, stride) so that each
 * is unrolled; -1 for the others. */
FC_DW_INLINE int case_3(const fc_dw_geom *g, fc_int rows)
{
    return g->kw == 3 && g->dw == 1 && rows <= 3 && (g->sw == 1 || g->sw == 2)
               ? (int)rows * 2 + (int)g->sw - 3 : -1;
}

/* The forward terms of the outputs [g->x0, g->x1), whose taps all fall
 * inside the row: the run-time geometry turned into constants. */
FC_DW_INLINE void inner_terms(const fc_dw_geom *g, const float *row, fc_int pitch, fc_int rows,
                              const float *wt, float *out)
{
    const fc_int xa = g->x0, xb = g->x1, pw = g->pw;
    switch (case_3(g, rows)) {
    case 0: inner_3(row, pitch, wt, out, xa, xb, pw, 1, 1); break;
    case 1: inner_3(row, pitch, wt, out, xa, xb, pw, 1, 2); break;
    case 2: inner_3(row, pitch, wt, out, xa, xb, pw, 2, 1); break;
    case 3: inner_3(row, pitch, wt, out, xa, xb, pw, 2, 2); break;
    case 4: inner_3(row, pitch, wt, out, xa, xb, pw, 3, 1); break;
    case 5: inner_3(row, pitch, wt, out, xa, xb, pw, 3, 2); break;
    default: inner_taps(g, row, pitch, rows, wt, out);
    }
}

/* One output row from its `rows` kernel rows inside the image, the first
 * at `row`, each `pitch` floats after the previous, weights from wt. */
FC_DW_INLINE void row_terms(const fc_dw_geom *g, const float *row, fc_int pitch, fc_int rows,
                            const float *wt, float *out)
{
    edge_taps(g, row, pitch, rows, wt, out, 0, g->x0);
    inner_terms(g, row, pitch, rows, wt, out);
    edge_taps(g, row, pitch, rows, wt, out, g->x1, g->ow);
}

/* dW's column sums of one output row, the same rows as row_terms. */
FC_DW_INLINE void row_cols(const fc_dw_geom *g, const float *row, fc_int pitch, fc_int rows,
                           const float *dy, float *cols)
{
    const fc_int ow = g->ow, kw = g->kw, xa = g->x0, xb = g->x1, pw = g->pw;
    edge_cols(g, row, pitch, rows, dy, cols, 0, xa);
    edge_cols(g, row, pitch, rows, dy, cols, xb, ow);
    if (kw == 3 && g->dw == 1 && (g->sw == 1 || g->sw == 2)) {
        for (fc_int i = 0; i < rows; i++) {
            float *c = cols + 3 * i * ow;
            if (g->sw == 1)
                cols_3(c, c + ow, c + 2 * ow, dy, row + i * pitch, xa, xb, pw, 1);
            else
                cols_3(c, c + ow, c + 2 * ow, dy, row + i * pitch, xa, xb, pw, 2);
        }
        return;
    }
    for (fc_int i = 0; i < rows; i++)
        for (fc_int j = 0; j < kw; j++) {
            const float *src = row + i * pitch + xa * g->sw + j * g->dw - pw;
            float *c = cols + (i * kw + j) * ow + xa;
            if (g->sw == 1)
                cols_loop(c, dy + xa, src, 1, xb - xa);
            else if (g->sw == 2)
                cols_loop(c, dy + xa, src, 2, xb - xa);
            else
                cols_loop(c, dy + xa, src, g->sw, xb - xa);
        }
}

/* ---- the plane ------------------------------------------------------------ */

/* The kernel rows of output row oy that lie in the image, as [*i0, *i1),
 * and the input row of kernel row 0 (maybe outside). */
FC_DW_INLINE fc_int kernel_rows(const fc_dw_plane *p, fc_int oy, fc_int *i0, fc_int *i1)
{
    const fc_int base = oy * p->sh - p->ph;
    tap_outputs(base, p->dh, p->h, p->kh, i0, i1);
    return base;
}

/* The end columns the flat pass saves, per chunk of rows (a stack buffer). */
#define FC_DW_SAVED 512

/* Output rows [a, b), all kernel rows inside the image, at unit stride with
 * ow == w: the flat pass, then the end columns (saved, restored, computed). */
FC_DW_INLINE void flat_rows(const fc_dw_plane *p, const float *in, const float *wt, float *out,
                            fc_int a, fc_int b)
{
    const fc_int w = p->g.w, x0 = p->g.x0, x1 = p->g.x1, ends = w - (x1 - x0);
    const fc_int chunk = ends ? FC_DW_SAVED / ends : b - a;
    float saved[FC_DW_SAVED];
    for (fc_int r0 = a; r0 < b; r0 += chunk) {
        const fc_int r1 = r0 + chunk < b ? r0 + chunk : b;
        float *s = saved;
        for (fc_int oy = r0; oy < r1; oy++) {
            for (fc_int ox = 0; ox < x0; ox++) *s++ = out[oy * w + ox];
            for (fc_int ox = x1; ox < w; ox++) *s++ = out[oy * w + ox];
        }
        fc_dw_geom flat = p->g;
        flat.x1 = (r1 - 1 - r0) * w + x1;
        const float *row = in + (r0 - p->ph) * w;
        inner_terms(&flat, row, p->dh * w, p->kh, wt, out + r0 * w);
        s = saved;
        for (fc_int oy = r0; oy < r1; oy++) {
            float *o = out + oy * w;
            for (fc_int ox = 0; ox < x0; ox++) o[ox] = *s++;
            for (fc_int ox = x1; ox < w; ox++) o[ox] = *s++;
            const float *r = in + (oy - p->ph) * w;
            edge_taps(&p->g, r, p->dh * w, p->kh, wt, o, 0, x0);
            edge_taps(&p->g, r, p->dh * w, p->kh, wt, o, x1, w);
        }
    }
}

/* ---- the entries ---------------------------------------------------------- */

void FC_KERNEL(dw_plane)(const fc_dw_plane *p, const float *in, const float *wt, float *out)
{
    const fc_int w = p->g.w, ow = p->g.ow, kw = p->g.kw;
    /* the output rows with every kernel row inside the image: [a, b) */
    fc_int a, b, lo, hi;
    tap_outputs(-p->ph, p->sh, p->h, p->oh, &a, &b);
    tap_outputs((p->kh - 1) * p->dh - p->ph, p->sh, p->h, p->oh, &lo, &hi);
    a = a > lo ? a : lo;
    b = b < hi ? b : hi;
    const int flat = p->sh == 1 && p->g.sw == 1 && ow == w && p->g.x1 > p->g.x0 && b - a > 1 &&
                     w - (p->g.x1 - p->g.x0) <= FC_DW_SAVED;
    for (fc_int oy = 0; oy < p->oh; oy++) {
        if (flat && oy == a) {
            flat_rows(p, in, wt, out, a, b);
            oy = b - 1;
            continue;
        }
        fc_int i0, i1;
        const fc_int base = kernel_rows(p, oy, &i0, &i1);
        if (i0 < i1)
            row_terms(&p->g, in + (base + i0 * p->dh) * w, p->dh * w, i1 - i0, wt + i0 * kw,
                      out + oy * ow);
    }
}

void FC_KERNEL(dw_dweight_plane)(const fc_dw_plane *p, const float *in, const float *dy,
                                 float *cols)
{
    const fc_int w = p->g.w, ow = p->g.ow, kw = p->g.kw;
    for (fc_int oy = 0; oy < p->oh; oy++) {
        fc_int i0, i1;
        const fc_int base = kernel_rows(p, oy, &i0, &i1);
        if (i0 < i1)
            row_cols(&p->g, in + (base + i0 * p->dh) * w, p->dh * w, i1 - i0, dy + oy * ow,
                     cols + i0 * kw * ow);
    }
}
