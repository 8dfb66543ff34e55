/* The depthwise convolution's plane kernels (contract: kernels/depthwise.h)
 * as one source that each ISA folder compiles with its flags:
 * kernels/ref/depthwise_ref.c (baseline), kernels/avx2/depthwise_avx2.c and
 * kernels/avx512/depthwise_avx512.c. Include it once, with FC_KERNEL_ISA
 * defined as the suffix of the entries it defines (fc_dw_plane_<isa>,
 * fc_dw_dweight_plane_<isa>).
 *
 * A depthwise 3x3 output reads 9 inputs for 9 multiply-adds: the work is
 * bound by memory and by the set-up of short rows (a 16x16 plane's row is
 * one AVX-512 vector), not by arithmetic. So each plane is first copied
 * into the padded, polyphase buffer of depthwise.h (in L1 for the planes of
 * CNNs), where every tap of every output, at the edges too, is the same
 * contiguous offset: the forward is then one flat loop over the whole
 * plane, which the compiler vectorizes, its taps nine at a time with the
 * weights in registers and the sum in a register between them. The
 * garbage columns between rows (wq - ow of each, 2 of 18 at 16x16) cost
 * less than the row ends a row-by-row loop would run one by one. dW keeps
 * one running sum per tap and output column, so it runs over the rows,
 * four at a time for 3x3 with the nine taps' sums in registers.
 *
 * Everything runs in fixed-size blocks, whole vectors on every ISA, so
 * that no scalar remainder follows a vector loop (at 16x16 a remainder of
 * 14 outputs cost as much as the plane's 17 vectors): the flat passes
 * compute garbage past (oh - 1) * wq + ow from the buffer's slack, and an
 * output row's last block runs on into the next row, written after it. */
#include <string.h>

#include "kernels/ctx.h"

#ifndef FC_KERNEL_ISA
#error "define FC_KERNEL_ISA before including kernels/ref/depthwise_impl.h"
#endif

#define FC_DW_INLINE static inline __attribute__((always_inline))

/* The blocks: of the copies and dW's columns, and of the flat passes (four
 * AVX-512 vectors, so that four sums' latencies overlap). */
#define FC_DW_BLOCK 16
#define FC_DW_PASS 64
_Static_assert(FC_DW_PASS <= FC_DW_SLACK, "a pass's garbage stays in the slack");

/* GCC would turn a short copy loop (the rows' remainders, the strided
 * cases) into a call of memcpy, whose set-up costs more than the copy. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-tree-loop-distribute-patterns")
#endif

/* dst[e * dstep] = src[e * sstep] for e < n. */
FC_DW_INLINE void copy(float *restrict dst, fc_int dstep, const float *restrict src, fc_int sstep,
                       fc_int n)
{
    for (fc_int e = 0; e < n; e++) dst[e * dstep] = src[e * sstep];
}

/* A constant-size memcpy: the compiler's widest moves, inline. */
FC_DW_INLINE void copy_block(float *restrict d, const float *restrict s)
{
    memcpy(d, s, sizeof(float) * FC_DW_BLOCK);
}

/* The source's elements into the buffer; its padding is left alone. Either
 * the buffer has phases (sw > 1) or the source is spread out (uw > 1), never
 * both; each case gets its steps as constants, so that it vectorizes. The
 * rows' phases are stepped, not divided: a division per row cost as much
 * as a 16-wide row's taps. */
FC_DW_INLINE void fill(const fc_dw_geom *g, const float *src, float *buf)
{
    const fc_int sh = g->sh, sw = g->sw, uw = g->uw, phase = g->hq * g->wq;
    if (sh == 1 && sw == 1 && g->uh == 1 && uw == 1) { /* the usual case: plain rows */
        const fc_int n = g->x1 - g->x0, whole = n / FC_DW_BLOCK * FC_DW_BLOCK;
        const float *s = src + g->y0 * g->w + g->x0;
        float *d = buf + (g->y0 + g->top) * g->wq + g->x0 + g->left;
        for (fc_int y = g->y0; y < g->y1; y++, s += g->w, d += g->wq) {
            for (fc_int x = 0; x < whole; x += FC_DW_BLOCK) copy_block(d + x, s + x);
            for (fc_int x = whole; x < n; x++) d[x] = s[x];
        }
        return;
    }
    for (fc_int b = 0; b < sw; b++) {
        /* the columns c = x * uw + left (>= 0 here) with c % sw == b (uw == 1 if sw > 1) */
        const fc_int x = sw == 1 ? g->x0 : g->x0 + ((b - (g->x0 + g->left) % sw) + sw) % sw;
        if (x >= g->x1) continue;
        const fc_int n = (g->x1 - 1 - x) / sw + 1, c = x * uw + g->left;
        const float *s = src + g->y0 * g->w + x;
        float *d = buf + b * phase + c / sw;
        const fc_int r = g->y0 * g->uh + g->top;
        fc_int pr = r % sh, rq = r / sh; /* padded row r's phase and row in it */
        for (fc_int y = g->y0; y < g->y1; y++, s += g->w) {
            float *row = d + pr * sw * phase + rq * g->wq;
            if (sw == 2)
                copy(row, 1, s, 2, n);
            else if (sw > 2)
                copy(row, 1, s, sw, n);
            else if (uw == 2)
                copy(row, 2, s, 1, n);
            else
                copy(row, uw, s, 1, n);
            for (pr += g->uh; pr >= sh; pr -= sh) rq++;
        }
    }
}

/* One block of outputs: acc[e] = (first ? init : acc[e]) plus the cnt (1,
 * 3 or 9) taps o[0..cnt) of weights w[0..cnt), in order. cnt and first are
 * constants at each call, so the taps unroll with their weights in
 * registers and the sum in one. */
FC_DW_INLINE void block(float *restrict acc, float init, const float *restrict b,
                        const fc_int *o, const float *w, const int cnt, const int first)
{
    const fc_int o0 = o[0], o1 = cnt > 1 ? o[1] : 0, o2 = cnt > 1 ? o[2] : 0;
    const fc_int o3 = cnt > 3 ? o[3] : 0, o4 = cnt > 3 ? o[4] : 0, o5 = cnt > 3 ? o[5] : 0;
    const fc_int o6 = cnt > 3 ? o[6] : 0, o7 = cnt > 3 ? o[7] : 0, o8 = cnt > 3 ? o[8] : 0;
    const float w0 = w[0], w1 = cnt > 1 ? w[1] : 0.0f, w2 = cnt > 1 ? w[2] : 0.0f;
    const float w3 = cnt > 3 ? w[3] : 0.0f, w4 = cnt > 3 ? w[4] : 0.0f, w5 = cnt > 3 ? w[5] : 0.0f;
    const float w6 = cnt > 3 ? w[6] : 0.0f, w7 = cnt > 3 ? w[7] : 0.0f, w8 = cnt > 3 ? w[8] : 0.0f;
    for (int e = 0; e < FC_DW_PASS; e++) {
        float v = first ? init : acc[e];
        v += w0 * b[e + o0];
        if (cnt > 1) {
            v += w1 * b[e + o1];
            v += w2 * b[e + o2];
        }
        if (cnt > 3) {
            v += w3 * b[e + o3];
            v += w4 * b[e + o4];
            v += w5 * b[e + o5];
            v += w6 * b[e + o6];
            v += w7 * b[e + o7];
            v += w8 * b[e + o8];
        }
        acc[e] = v;
    }
}

/* One pass of cnt taps over the plane onto acc, from init (first): one flat
 * loop over the rows and the garbage columns between them, in blocks. */
FC_DW_INLINE void pass(const fc_dw_geom *g, float init, const float *buf, const fc_int *o,
                       const float *w, const int cnt, int first, float *acc)
{
    const fc_int n = (g->oh - 1) * g->wq + g->ow;
    if (first)
        for (fc_int f = 0; f < n; f += FC_DW_PASS) block(acc + f, init, buf + f, o, w, cnt, 1);
    else
        for (fc_int f = 0; f < n; f += FC_DW_PASS) block(acc + f, init, buf + f, o, w, cnt, 0);
}

FC_DW_INLINE void out_block(float *restrict d, const float *restrict a, const int relu)
{
    if (relu)
        for (int e = 0; e < FC_DW_BLOCK; e++) d[e] = a[e] < 0.0f ? 0.0f : a[e];
    else
        copy_block(d, a);
}

/* out's rows out of acc, max(., 0) with relu (NaN kept), in blocks: a row's
 * last block runs on into the next row, which is written after it; a block
 * that would run past the plane goes through tmp. */
FC_DW_INLINE void store(const fc_dw_geom *g, const float *acc, const int relu, float *out)
{
    const fc_int oh = g->oh, ow = g->ow;
    for (fc_int oy = 0; oy < oh; oy++)
        for (fc_int x = 0; x < ow; x += FC_DW_BLOCK) {
            const fc_int at = oy * ow + x;
            const float *a = acc + oy * g->wq + x;
            if (at + FC_DW_BLOCK <= oh * ow) {
                out_block(out + at, a, relu);
                continue;
            }
            float tmp[FC_DW_BLOCK];
            out_block(tmp, a, relu);
            for (fc_int e = 0; e < ow - x && e < FC_DW_BLOCK; e++) out[at + e] = tmp[e];
        }
}

/* The running sums of the nine taps o[0..8], columns c0..c8, and of dy
 * itself, column cb (db), of one block of `rows` rows of dy (d, pitch dp)
 * and of the buffer (b, pitch bp), the rows in order; rows is a constant at
 * each call, so that the sums stay in registers over them. */
FC_DW_INLINE void cols_9(float *restrict c0, float *restrict c1, float *restrict c2,
                         float *restrict c3, float *restrict c4, float *restrict c5,
                         float *restrict c6, float *restrict c7, float *restrict c8,
                         float *restrict cb, const float *restrict d, fc_int dp,
                         const float *restrict b, fc_int bp, const fc_int *o, const int rows)
{
    const fc_int o0 = o[0], o1 = o[1], o2 = o[2], o3 = o[3], o4 = o[4], o5 = o[5], o6 = o[6],
                 o7 = o[7], o8 = o[8];
    for (int x = 0; x < FC_DW_BLOCK; x++) {
        float s0 = c0[x], s1 = c1[x], s2 = c2[x], s3 = c3[x], s4 = c4[x], s5 = c5[x], s6 = c6[x],
              s7 = c7[x], s8 = c8[x], sb = cb[x];
        for (int r = 0; r < rows; r++) {
            const float v = d[r * dp + x], *restrict br = b + r * bp + x;
            s0 += v * br[o0];
            s1 += v * br[o1];
            s2 += v * br[o2];
            s3 += v * br[o3];
            s4 += v * br[o4];
            s5 += v * br[o5];
            s6 += v * br[o6];
            s7 += v * br[o7];
            s8 += v * br[o8];
            sb += v;
        }
        c0[x] = s0, c1[x] = s1, c2[x] = s2, c3[x] = s3, c4[x] = s4, c5[x] = s5, c6[x] = s6;
        c7[x] = s7, c8[x] = s8, cb[x] = sb;
    }
}

FC_DW_INLINE void cols_1(float *restrict c, const float *restrict d, const float *restrict b)
{
    for (int x = 0; x < FC_DW_BLOCK; x++) c[x] += d[x] * b[x];
}

FC_DW_INLINE void cols_sum(float *restrict c, const float *restrict d)
{
    for (int x = 0; x < FC_DW_BLOCK; x++) c[x] += d[x];
}

/* dW's rows of one block of columns from output row oy: four rows at once
 * where they lie inside dy's plane, else one, through tmp if the block runs
 * past the plane (its columns past ow are never summed). Returns the rows. */
FC_DW_INLINE fc_int cols_rows(const fc_dw_geom *g, const float *buf, const float *dy,
                              float *cols, fc_int oy, fc_int x)
{
    const fc_int oh = g->oh, ow = g->ow, cp = FC_DW_COLS_PITCH(ow), wq = g->wq;
    const fc_int at = oy * ow + x;
    const float *d = dy + at, *b = buf + oy * wq + x;
    float *c = cols + x;
    if (g->taps == 9 && oy + 4 <= oh && at + 3 * ow + FC_DW_BLOCK <= oh * ow) {
        cols_9(c, c + cp, c + 2 * cp, c + 3 * cp, c + 4 * cp, c + 5 * cp, c + 6 * cp, c + 7 * cp,
               c + 8 * cp, c + 9 * cp, d, ow, b, wq, g->off, 4);
        return 4;
    }
    float tmp[FC_DW_BLOCK];
    if (at + FC_DW_BLOCK > oh * ow) {
        for (fc_int e = 0; e < FC_DW_BLOCK; e++) tmp[e] = e < ow - x ? d[e] : 0.0f;
        d = tmp;
    }
    if (g->taps == 9) {
        cols_9(c, c + cp, c + 2 * cp, c + 3 * cp, c + 4 * cp, c + 5 * cp, c + 6 * cp, c + 7 * cp,
               c + 8 * cp, c + 9 * cp, d, ow, b, wq, g->off, 1);
    } else {
        for (fc_int t = 0; t < g->taps; t++) cols_1(c + t * cp, d, b + g->off[t]);
        cols_sum(c + g->taps * cp, d);
    }
    return 1;
}

/* ---- the entries ---------------------------------------------------------- */

void FC_KERNEL(dw_plane)(const fc_dw_geom *g, const fc_dw_sum *job, float *buf, float *acc)
{
    const fc_int taps = g->taps, *off = g->off;
    for (fc_int q = 0; q < job->planes; q++) {
        const float *wt = job->wt + q * job->wt_step;
        fill(g, job->src + q * job->src_step, buf);
        fc_int t = 0;
        for (; t + 9 <= taps; t += 9) pass(g, job->init, buf, off + t, wt + t, 9, q + t == 0, acc);
        for (; t + 3 <= taps; t += 3) pass(g, job->init, buf, off + t, wt + t, 3, q + t == 0, acc);
        for (; t < taps; t++) pass(g, job->init, buf, off + t, wt + t, 1, q + t == 0, acc);
    }
    if (job->relu)
        store(g, acc, 1, job->out);
    else
        store(g, acc, 0, job->out);
}

void FC_KERNEL(dw_dweight_plane)(const fc_dw_geom *g, const float *src, const float *dy,
                                 float *buf, float *cols)
{
    fill(g, src, buf);
    for (fc_int x = 0; x < g->ow; x += FC_DW_BLOCK)
        for (fc_int oy = 0; oy < g->oh;) oy += cols_rows(g, buf, dy, cols, oy, x);
}
