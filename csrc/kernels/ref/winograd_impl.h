/* Winograd F(2x2, 3x3)'s input, output and gradient transforms (contract:
 * kernels/winograd.h; the algebra: conv/winograd.c), as one source that
 * each ISA folder compiles with its flags: kernels/ref/winograd_ref.c and
 * kernels/avx2/winograd_avx2.c. Include it once, with FC_KERNEL_ISA defined.
 *
 * The transforms work on 8 tiles at a time through GNU C vector types (GCC,
 * clang), compiled to the SIMD of the folder's flags: AVX2 there, pairs of
 * SSE2 operations at the baseline. They add and subtract only (no multiply
 * a compiler could fuse), so every ISA gives the same bits. Their row
 * copies stay inline loops: as memcpy and memset calls (GCC's loop
 * distribution), the short rows of small images cost a call each. */
#include <stdint.h>

#include "kernels/ctx.h"

#ifndef FC_KERNEL_ISA
#error "define FC_KERNEL_ISA before including kernels/ref/winograd_impl.h"
#endif

static fc_int min_i(fc_int a, fc_int b) { return a < b ? a : b; }
static fc_int max_i(fc_int a, fc_int b) { return a > b ? a : b; }

/* The padded rows [pr0, pr0 + count) of channel plane (H, W), padded row pr
 * being image row pr - ph, and padded column pc (< ld, which is at least
 * 2 tw + 2) image column pc - pw; zero outside the image. Rows ld apart in
 * out. */
static inline __attribute__((always_inline)) void pad_rows(const fc_conv_shape *s,
                                                           const float *restrict plane, fc_int pr0,
                                                           fc_int count, fc_int ld,
                                                           float *restrict out)
{
    /* Image columns [0, x1) land at padded columns [pw, x1 + pw). */
    const fc_int x1 = min_i(s->w, ld - s->pw);
    for (fc_int r = 0; r < count; r++) {
        const fc_int iy = pr0 + r - s->ph;
        float *row = out + r * ld;
        if (iy < 0 || iy >= s->h || x1 <= 0) {
            for (fc_int e = 0; e < ld; e++) row[e] = 0.0f;
            continue;
        }
        for (fc_int e = 0; e < s->pw; e++) row[e] = 0.0f;
        const float *src = plane + iy * s->w;
        for (fc_int e = 0; e < x1; e++) row[s->pw + e] = src[e];
        for (fc_int e = x1 + s->pw; e < ld; e++) row[e] = 0.0f;
    }
}

/* Start loading the image rows that pad_rows(s, plane, pr0, count) reads.
 * The planes of one image's channels are read a block of rows at a time,
 * too little for the hardware prefetchers to pick up (the copy in pad_rows
 * took 40% of the input transform, stalled on L3). */
static inline void prefetch_rows(const fc_conv_shape *s, const float *plane, fc_int pr0,
                                 fc_int count)
{
    const fc_int y0 = max_i(0, pr0 - s->ph), y1 = min_i(s->h, pr0 + count - s->ph);
    for (fc_int e = y0 * s->w; e < y1 * s->w; e += WG_LINE_FLOATS) __builtin_prefetch(plane + e);
}

/* Eight floats as one value: GNU C vector extensions (GCC, clang), compiled
 * to the SIMD of each function's target (AVX2 in the avx2 variants below,
 * pairs of SSE2 operations at the baseline). */
typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));
#ifdef __clang__
#define EVEN8(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14)
#define ODD8(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15)
#define ZIP_LO8(a, b) __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11)
#define ZIP_HI8(a, b) __builtin_shufflevector(a, b, 4, 12, 5, 13, 6, 14, 7, 15)
#else
#define EVEN8(a, b) __builtin_shuffle(a, b, (v8i){0, 2, 4, 6, 8, 10, 12, 14})
#define ODD8(a, b) __builtin_shuffle(a, b, (v8i){1, 3, 5, 7, 9, 11, 13, 15})
#define ZIP_LO8(a, b) __builtin_shuffle(a, b, (v8i){0, 8, 1, 9, 2, 10, 3, 11})
#define ZIP_HI8(a, b) __builtin_shuffle(a, b, (v8i){4, 12, 5, 13, 6, 14, 7, 15})
#endif

/* Unaligned vector loads and stores, through a type of float alignment
 * (macros: a function passing a v8f by value would change ABI with the
 * target, and GCC warns; through memcpy, GCC moved halves via the stack and
 * stalled on store forwarding). */
typedef float v8f_u __attribute__((vector_size(32), aligned(4), may_alias));
#define LOAD8(v, p) ((v) = *(const v8f_u *)(p))
#define STORE8(p, v) (*(v8f_u *)(p) = (v))

/* V = B^T d B of 8 tiles, one per lane: lanes 0-7 read columns 0-17 of lo's
 * 4 padded input rows (ld apart), or, with hi = lo + 8, lanes 0-3 columns
 * 0-9 of lo's rows and lanes 4-7 those of hi's: two tile rows of 4 tiles.
 * A tile's columns 2 tx .. 2 tx + 3 are the even and odd columns from 2 tx
 * and from 2 tx + 2, so deinterleaving two spans gives the 4 columns of all
 * 8 tiles as vectors; the transform is then whole-vector adds. */
static inline __attribute__((always_inline)) void transform_tiles(const float *lo, const float *hi,
                                                                  fc_int ld, v8f v[WG_XI])
{
    v8f d[4][4], t[4][4];
    for (int q = 0; q < 4; q++) {
        v8f a, b, c, e;
        LOAD8(a, lo + q * ld);
        LOAD8(b, hi + q * ld);
        LOAD8(c, lo + q * ld + 2);
        LOAD8(e, hi + q * ld + 2);
        d[q][0] = EVEN8(a, b);
        d[q][1] = ODD8(a, b);
        d[q][2] = EVEN8(c, e);
        d[q][3] = ODD8(c, e);
    }
    for (int j = 0; j < 4; j++) { /* B^T d */
        t[0][j] = d[0][j] - d[2][j];
        t[1][j] = d[1][j] + d[2][j];
        t[2][j] = d[2][j] - d[1][j];
        t[3][j] = d[1][j] - d[3][j];
    }
    for (int i = 0; i < 4; i++) { /* (B^T d) B */
        v[4 * i + 0] = t[i][0] - t[i][2];
        v[4 * i + 1] = t[i][1] + t[i][2];
        v[4 * i + 2] = t[i][2] - t[i][1];
        v[4 * i + 3] = t[i][1] - t[i][3];
    }
}

/* Lanes [0, count) of v as the block's tiles jj, jj + 1, ... of channel c
 * (layout: transform_input_body's). */
static inline __attribute__((always_inline)) void store_v(const v8f v[WG_XI], fc_int count, float *vp,
                                                          fc_int xi_stride, int nr, fc_int channels,
                                                          fc_int c, fc_int jj)
{
    float *dst = vp + ((jj / nr) * channels + c) * nr + jj % nr;
    if (count == WG_TILES_PER_VEC && jj % nr + WG_TILES_PER_VEC <= nr) {
        for (int xi = 0; xi < WG_XI; xi++) STORE8(dst + xi * xi_stride, v[xi]);
        return;
    }
    /* A partial vector, or one across two slivers: tile by tile. */
    for (fc_int e = 0; e < count; e++) {
        const fc_int je = jj + e;
        float *d = vp + ((je / nr) * channels + c) * nr + je % nr;
        for (int xi = 0; xi < WG_XI; xi++) d[xi * xi_stride] = v[xi][e];
    }
}

/* The block of tile rows [r0, r1) (row r is tile row r % th of image
 * r / th): V of every channel, written as packed B slivers,
 * vp[((xi * slivers + j / NR) * C + c) * NR + j % NR] for the block's tile j.
 * rows: the padded input rows (p->ld apart) of the block's tile rows of
 * one image and one channel. */
static inline __attribute__((always_inline)) void transform_input_body(
    const fc_conv_shape *s, const fc_wg_plan *p, int nr, const float *x, fc_int r0, fc_int r1,
    float *vp, float *rows)
{
    const fc_int tw = p->tw, th = p->th, hw = s->h * s->w, ld = p->ld;
    const fc_int xi_stride = p->v_stride;
    for (fc_int c = 0; c < s->c; c++) {
        fc_int j = 0;
        for (fc_int r = r0; r < r1;) {
            /* The tile rows [ty0, ty1) of image n in the block. */
            const fc_int n = r / th, ty0 = r % th, ty1 = min_i(th, ty0 + r1 - r);
            pad_rows(s, x + (n * s->c + c) * hw, 2 * ty0, 2 * (ty1 - ty0) + 2, ld, rows);
            if (c + 1 < s->c) /* the same rows of the next channel, from L3 */
                prefetch_rows(s, x + (n * s->c + c + 1) * hw, 2 * ty0, 2 * (ty1 - ty0) + 2);
            for (fc_int ty = ty0; ty < ty1;) {
                const float *row = rows + 2 * (ty - ty0) * ld;
                v8f v[WG_XI];
                if (tw == WG_TILES_PER_VEC / 2 && ty + 1 < ty1) { /* 8x8 images: two tile rows */
                    transform_tiles(row, row + 2 * ld, ld, v);
                    store_v(v, WG_TILES_PER_VEC, vp, xi_stride, nr, s->c, c, j);
                    ty += 2, r += 2, j += 2 * tw;
                    continue;
                }
                for (fc_int tx0 = 0; tx0 < tw; tx0 += WG_TILES_PER_VEC) {
                    transform_tiles(row + 2 * tx0, row + 2 * tx0 + 8, ld, v);
                    store_v(v, min_i(WG_TILES_PER_VEC, tw - tx0), vp, xi_stride, nr, s->c, c, j + tx0);
                }
                ty++, r++, j += tw;
            }
        }
        /* The last sliver's columns past the block's tiles are read by the
         * micro-kernel (and their results dropped): keep them finite. */
        if (j % nr)
            for (int xi = 0; xi < WG_XI; xi++) {
                float *d = vp + xi * xi_stride + ((j / nr) * s->c + c) * nr;
                for (fc_int e = j % nr; e < nr; e++) d[e] = 0.0f;
            }
    }
}

/* The 2x2 max-pool of 8 tiles' outputs o (o[2 a + b] at (a, b)): each
 * window's maximum and its index, by maxpool2d's scan rule (take a later
 * tap when greater or NaN). */
static inline __attribute__((always_inline)) void pool_vec(const v8f o[4], v8f *best, v8i *idx)
{
    *best = o[0];
    *idx = (v8i){0};
    for (int t = 1; t < 4; t++) {
        const v8i take = (v8i)(o[t] > *best) | (v8i)(o[t] != o[t]);
        const v8i tap = {t, t, t, t, t, t, t, t};
        *best = (v8f)(((v8i)o[t] & take) | ((v8i)*best & ~take));
        *idx = (tap & take) | (*idx & ~take);
    }
}

/* Y = A^T M A + bias, then ReLU as relu_forward when relu, for the 8 tiles
 * whose M point xi is mt[xi * ms], one per lane: A^T M sums rows 0 + 1 + 2
 * and 1 - 2 - 3 of each column, A the same of columns. o[2 a + b] holds
 * each tile's output (a, b). */
static inline __attribute__((always_inline)) void output_tiles(const float *mt, fc_int ms,
                                                               const fc_wg_out *out, const v8f *vb,
                                                               v8f o[4])
{
    const v8f zero = {0};
    v8f a[4], c[4];
    for (int i = 0; i < 4; i++) { /* column i of the 4x4 points */
        v8f v0, v1, v2, v3;
        LOAD8(v0, mt + i * ms);
        LOAD8(v1, mt + (4 + i) * ms);
        LOAD8(v2, mt + (8 + i) * ms);
        LOAD8(v3, mt + (12 + i) * ms);
        a[i] = v0 + v1 + v2;
        c[i] = v1 - v2 - v3;
    }
    o[0] = a[0] + a[1] + a[2];
    o[1] = a[1] - a[2] - a[3];
    o[2] = c[0] + c[1] + c[2];
    o[3] = c[1] - c[2] - c[3];
    for (int e = 0; e < 4; e++) {
        if (out->bias) o[e] += *vb;
        if (out->relu) /* x < 0 ? 0 : x, keeping NaN and -0 */
            o[e] = (v8f)((v8i)o[e] & ~(v8i)(o[e] < zero));
    }
}

/* Lanes [l0, l0 + count) of o, tiles tx0, tx0 + 1, ... of tile row ty of
 * plane (n, k), written one by one: y (outputs past an odd edge dropped),
 * or the pool of whole windows. */
static inline __attribute__((always_inline)) void emit_lanes(const fc_conv_shape *s,
                                                             const fc_wg_out *out, const v8f o[4],
                                                             int l0, fc_int count, fc_int n,
                                                             fc_int k, fc_int ty, fc_int tx0,
                                                             const int pool)
{
    const fc_int ow = s->ow, oy = 2 * ty, plane = n * s->k + k;
    if (pool) {
        const fc_int pw = ow / 2;
        if (oy + 1 >= s->oh) return; /* the last row of an odd size: no window */
        v8f best;
        v8i idx;
        pool_vec(o, &best, &idx);
        const fc_int at = (plane * (s->oh / 2) + ty) * pw + tx0;
        for (fc_int e = 0; e < count && tx0 + e < pw; e++) {
            out->pooled[at + e] = best[l0 + e];
            out->argmax[at + e] = (uint8_t)idx[l0 + e];
        }
        return;
    }
    float *row = out->y + (plane * s->oh + oy) * ow;
    for (int q = 0; q < 2 && oy + q < s->oh; q++)
        for (fc_int e = 0; e < count; e++) {
            const fc_int ox = 2 * (tx0 + e);
            row[q * ow + ox] = o[2 * q][l0 + e];
            if (ox + 1 < ow) row[q * ow + ox + 1] = o[2 * q + 1][l0 + e];
        }
}

/* The 8 tiles of o as whole vectors when they are 8 tiles of a row of y
 * (rows 2 ty and 2 ty + 1 complete), or, when pair, tiles 0-3 of tile rows
 * ty and ty + 1 of an 8-wide y; the same for the pool. Returns 0, having
 * written nothing, when the tiles are not laid out so. */
static inline __attribute__((always_inline)) int emit_vectors(const fc_conv_shape *s,
                                                              const fc_wg_out *out, const v8f o[4],
                                                              int pair, fc_int n, fc_int k,
                                                              fc_int ty, fc_int tx0, const int pool)
{
    const fc_int ow = s->ow, oy = 2 * ty, plane = n * s->k + k;
    const fc_int rows = pair ? 4 : 2; /* output rows the tiles cover */
    if (oy + rows > s->oh || (pair ? ow != 8 : 2 * tx0 + 16 > ow)) return 0;
    if (pool) {
        v8f best;
        v8i idx;
        pool_vec(o, &best, &idx);
        /* pair: pooled rows ty and ty + 1 of width 4 are 8 floats in a row */
        const fc_int at = (plane * (s->oh / 2) + ty) * (ow / 2) + tx0;
        STORE8(out->pooled + at, best);
        for (int e = 0; e < WG_TILES_PER_VEC; e++) out->argmax[at + e] = (uint8_t)idx[e];
        return 1;
    }
    float *row = out->y + (plane * s->oh + oy) * ow + 2 * tx0;
    for (int q = 0; q < 2; q++) {
        const v8f lo = ZIP_LO8(o[2 * q], o[2 * q + 1]), hi = ZIP_HI8(o[2 * q], o[2 * q + 1]);
        STORE8(row + q * ow, lo);                      /* tiles 0-3 (row ty) */
        STORE8(row + (pair ? 2 + q : q) * ow + (pair ? 0 : 8), hi); /* tiles 4-7 */
    }
    return 1;
}

/* Y = A^T M A (+ bias, ReLU; when pool, its 2x2 max-pool: see fc_wg_out)
 * for the block of tile rows [r0, r1), whose M is m[xi * m_stride + k * ldm
 * + j] (j: the block's tile; lanes past the block's tiles are read but
 * dropped), 8 tiles at a time: 8 of a tile row, or, for 8x8 outputs (4
 * tiles across), two tile rows. */
static inline __attribute__((always_inline)) void transform_output_body(
    const fc_conv_shape *s, const fc_wg_plan *p, const float *m, fc_int ldm, const fc_wg_out *out,
    fc_int r0, fc_int r1, const int pool)
{
    const fc_int tw = p->tw, ms = p->m_stride;
    for (fc_int k = 0; k < s->k; k++) {
        const float b = out->bias ? out->bias[k] : 0.0f;
        const v8f vb = {b, b, b, b, b, b, b, b};
        const float *mk = m + k * ldm;
        for (fc_int r = r0, j = 0; r < r1;) {
            const fc_int n = r / p->th, ty = r % p->th;
            v8f o[4];
            if (tw == WG_TILES_PER_VEC / 2 && r + 1 < r1 && ty + 1 < p->th) {
                output_tiles(mk + j, ms, out, &vb, o);
                if (!emit_vectors(s, out, o, 1, n, k, ty, 0, pool)) {
                    emit_lanes(s, out, o, 0, tw, n, k, ty, 0, pool);
                    emit_lanes(s, out, o, (int)tw, tw, n, k, ty + 1, 0, pool);
                }
                r += 2, j += 2 * tw;
                continue;
            }
            for (fc_int tx0 = 0; tx0 < tw; tx0 += WG_TILES_PER_VEC) {
                output_tiles(mk + j + tx0, ms, out, &vb, o);
                if (tx0 + WG_TILES_PER_VEC > tw || !emit_vectors(s, out, o, 0, n, k, ty, tx0, pool))
                    emit_lanes(s, out, o, 0, min_i(WG_TILES_PER_VEC, tw - tx0), n, k, ty, tx0, pool);
            }
            r++, j += tw;
        }
    }
}

/* Yhat = A dY A^T for output channel k of the block of tile rows [r0, r1),
 * written as yhat[xi * p->m_stride + k * ldv + j] for the block's tile j.
 * rows: 2 dy rows of 2 tw rounded up to whole vectors (zero past the edge). */
static inline __attribute__((always_inline)) void transform_grad_body(
    const fc_conv_shape *s, const fc_wg_plan *p, const float *dy, fc_int r0, fc_int r1,
    fc_int ldv, float *yhat, float *rows)
{
    const fc_int tw = p->tw, th = p->th, ohow = s->oh * s->ow, lw = p->ld - 2;
    for (fc_int k = 0; k < s->k; k++) {
        fc_int j = 0;
        for (fc_int r = r0; r < r1; r++, j += tw) {
            const fc_int n = r / th, oy = 2 * (r % th);
            const float *plane = dy + (n * s->k + k) * ohow;
            if (k + 1 < s->k) /* these rows of the next channel, from L3 (see prefetch_rows) */
                for (fc_int e = oy * s->ow; e < min_i(oy + 2, s->oh) * s->ow; e += WG_LINE_FLOATS)
                    __builtin_prefetch(plane + ohow + e);
            for (int a = 0; a < 2; a++) {
                float *row = rows + a * lw;
                fc_int e = 0;
                if (oy + a < s->oh)
                    for (; e < s->ow; e++) row[e] = plane[(oy + a) * s->ow + e];
                for (; e < lw; e++) row[e] = 0.0f;
            }
            /* Full vectors: lanes past the row's tiles land in the next
             * row's slots, rewritten next, or past the block's tiles. */
            for (fc_int tx0 = 0; tx0 < tw; tx0 += WG_TILES_PER_VEC) {
                v8f y[2][2], z[2][4], a, b;
                for (int q = 0; q < 2; q++) {
                    LOAD8(a, rows + q * lw + 2 * tx0);
                    LOAD8(b, rows + q * lw + 2 * tx0 + 8);
                    y[q][0] = EVEN8(a, b);
                    y[q][1] = ODD8(a, b);
                }
                for (int q = 0; q < 2; q++) { /* dY A^T */
                    z[q][0] = y[q][0];
                    z[q][1] = y[q][0] + y[q][1];
                    z[q][2] = y[q][0] - y[q][1];
                    z[q][3] = -y[q][1];
                }
                float *dst = yhat + k * ldv + j + tx0;
                for (int c = 0; c < 4; c++) { /* A (dY A^T) */
                    const v8f v0 = z[0][c], v1 = z[0][c] + z[1][c], v2 = z[0][c] - z[1][c],
                              v3 = -z[1][c];
                    STORE8(dst + c * p->m_stride, v0);
                    STORE8(dst + (4 + c) * p->m_stride, v1);
                    STORE8(dst + (8 + c) * p->m_stride, v2);
                    STORE8(dst + (12 + c) * p->m_stride, v3);
                }
            }
        }
    }
}

/* ---- the entries ---------------------------------------------------------- */

#define WG_OPTS optimize("no-tree-loop-distribute-patterns")

__attribute__((WG_OPTS)) void FC_KERNEL(wg_input)(const fc_conv_shape *s, const fc_wg_plan *p, int nr,
                                                  const float *x, fc_int r0, fc_int r1, float *vp,
                                                  float *rows)
{
    transform_input_body(s, p, nr, x, r0, r1, vp, rows);
}

__attribute__((WG_OPTS)) void FC_KERNEL(wg_output)(const fc_conv_shape *s, const fc_wg_plan *p,
                                                   const float *m, fc_int ldm, const fc_wg_out *out,
                                                   fc_int r0, fc_int r1)
{
    transform_output_body(s, p, m, ldm, out, r0, r1, 0);
}

__attribute__((WG_OPTS)) void FC_KERNEL(wg_output_pool)(const fc_conv_shape *s, const fc_wg_plan *p,
                                                        const float *m, fc_int ldm,
                                                        const fc_wg_out *out, fc_int r0, fc_int r1)
{
    transform_output_body(s, p, m, ldm, out, r0, r1, 1);
}

__attribute__((WG_OPTS)) void FC_KERNEL(wg_grad)(const fc_conv_shape *s, const fc_wg_plan *p,
                                                 const float *dy, fc_int r0, fc_int r1, fc_int ldv,
                                                 float *yhat, float *rows)
{
    transform_grad_body(s, p, dy, r0, r1, ldv, yhat, rows);
}
