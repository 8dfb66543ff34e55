/* Winograd F(2x2, 3x3)'s input, output and gradient transforms (contract:
 * kernels/winograd.h; the algebra: conv/winograd.c), as one source that
 * each ISA folder compiles with its flags: kernels/ref/winograd_ref.c and
 * kernels/avx2/winograd_avx2.c, kernels/avx512/winograd_avx512.c. Include it
 * once, with FC_KERNEL_ISA defined, and WG_LANES, the tiles per vector: 8
 * (the default) or 16 (AVX-512 only: its partial vectors are stored with
 * masks).
 *
 * The transforms work on WG_LANES tiles at a time through GNU C vector types
 * (GCC, clang), compiled to the SIMD of the folder's flags: AVX2 or AVX-512
 * there, pairs of SSE2 operations at the baseline. They add and subtract
 * only (no multiply a compiler could fuse), each lane on its own tile, so
 * every ISA and every vector width gives the same bits. Their row copies
 * stay inline loops: as memcpy and memset calls (GCC's loop distribution),
 * the short rows of small images cost a call each. */
#include <stdint.h>

#include "kernels/ctx.h"

#ifndef FC_KERNEL_ISA
#error "define FC_KERNEL_ISA before including kernels/ref/winograd_impl.h"
#endif
#ifndef WG_LANES
#define WG_LANES 8
#endif
#if WG_LANES == 16
#include <immintrin.h>
#elif WG_LANES != 8
#error "WG_LANES must be 8 or 16"
#endif
_Static_assert(WG_LANES <= WG_MAX_TILES_PER_VEC, "the plans pad for WG_MAX_TILES_PER_VEC tiles");

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

/* WG_LANES floats as one value: GNU C vector extensions (GCC, clang),
 * compiled to the SIMD of each function's target. Shuffles of two vectors
 * a, b (lanes 0 .. L-1 of a, then L .. 2L-1 of b): EVEN and ODD
 * deinterleave, ZIP_LO and ZIP_HI interleave the low and high halves. */
#define L WG_LANES
typedef float vf __attribute__((vector_size(4 * L)));
typedef int vi __attribute__((vector_size(4 * L)));
#if L == 8
#define EVEN_IDX 0, 2, 4, 6, 8, 10, 12, 14
#define ODD_IDX 1, 3, 5, 7, 9, 11, 13, 15
#define ZIP_LO_IDX 0, 8, 1, 9, 2, 10, 3, 11
#define ZIP_HI_IDX 4, 12, 5, 13, 6, 14, 7, 15
#else
#define EVEN_IDX 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define ODD_IDX 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
#define ZIP_LO_IDX 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23
#define ZIP_HI_IDX 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31
#endif
#ifdef __clang__
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (vi){__VA_ARGS__})
#endif
#define EVEN(a, b) SHUFFLE(a, b, EVEN_IDX)
#define ODD(a, b) SHUFFLE(a, b, ODD_IDX)
#define ZIP_LO(a, b) SHUFFLE(a, b, ZIP_LO_IDX)
#define ZIP_HI(a, b) SHUFFLE(a, b, ZIP_HI_IDX)

/* Unaligned vector loads and stores, through a type of float alignment
 * (macros, and pointers to vectors below: a function passing a vector by
 * value would change ABI with the target, and GCC warns; through memcpy,
 * GCC moved halves via the stack and stalled on store forwarding). */
typedef float vf_u __attribute__((vector_size(4 * L), aligned(4), may_alias));
#define LOADV(v, p) ((v) = *(const vf_u *)(p))
#define STOREV(p, v) (*(vf_u *)(p) = (v))

/* The partial-vector moves: *out = lanes l0, l0 + 1, ... of *v from lane 0
 * (the lanes after them unspecified); lanes [0, n) of *v to p[0, n), as
 * floats or as bytes; a vector from two half vectors at p0 and p1, and half
 * h of one to p. With AVX-512, masked and permuted vectors; otherwise lane
 * by lane (the 8-lane builds reach them on partial vectors only, and never
 * the halves, which only 16-lane vectors of 4-tile rows use). */
#if L == 16
static inline __attribute__((always_inline)) void lanes_from(vf *out, const vf *v, fc_int l0)
{
    const __m512i at = _mm512_add_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4,
                                                         3, 2, 1, 0),
                                        _mm512_set1_epi32((int)l0));
    *out = (vf)_mm512_permutexvar_ps(at, (__m512)*v);
}
static inline __mmask16 first_lanes(fc_int n) { return (__mmask16)((1u << n) - 1u); }
static inline __attribute__((always_inline)) void store_first(float *p, const vf *v, fc_int n)
{
    _mm512_mask_storeu_ps(p, first_lanes(n), (__m512)*v);
}
static inline __attribute__((always_inline)) void store_bytes_first(uint8_t *p, const vi *v, fc_int n)
{
    _mm512_mask_cvtepi32_storeu_epi8(p, first_lanes(n), (__m512i)*v);
}
static inline __attribute__((always_inline)) void load_halves(vf *v, const float *p0, const float *p1)
{
    const __m512d lo = _mm512_castpd256_pd512(_mm256_loadu_pd((const double *)p0));
    *v = (vf)_mm512_insertf64x4(lo, _mm256_loadu_pd((const double *)p1), 1);
}
static inline __attribute__((always_inline)) void store_half(float *p, const vf *v, int h)
{
    _mm256_storeu_pd((double *)p, _mm512_extractf64x4_pd((__m512d)*v, h));
}
#else
static inline __attribute__((always_inline)) void lanes_from(vf *out, const vf *v, fc_int l0)
{
    for (fc_int e = 0; e + l0 < L; e++) (*out)[e] = (*v)[e + l0];
}
static inline __attribute__((always_inline)) void store_first(float *p, const vf *v, fc_int n)
{
    for (fc_int e = 0; e < n; e++) p[e] = (*v)[e];
}
static inline __attribute__((always_inline)) void store_bytes_first(uint8_t *p, const vi *v, fc_int n)
{
    for (fc_int e = 0; e < n; e++) p[e] = (uint8_t)(*v)[e];
}
static inline __attribute__((always_inline)) void load_halves(vf *v, const float *p0, const float *p1)
{
    for (int e = 0; e < L / 2; e++) (*v)[e] = p0[e], (*v)[L / 2 + e] = p1[e];
}
static inline __attribute__((always_inline)) void store_half(float *p, const vf *v, int h)
{
    for (int e = 0; e < L / 2; e++) p[e] = (*v)[h * L / 2 + e];
}
#endif

/* Tile rows per vector for images tw tiles wide: 1 (lanes along one tile
 * row), or, when the vector holds exactly 2 or 4 whole tile rows (16x16 and
 * 8x8 outputs at 16 lanes, 8x8 at 8), that many: a narrow image would
 * otherwise leave most lanes idle. Four rows take half vectors of 2 tw = 8
 * floats each, so only at 16 lanes. */
static inline fc_int rows_per_vector(fc_int tw)
{
    return tw * 2 == L ? 2 : (L == 16 && tw * 4 == L) ? 4 : 1;
}

/* V = B^T d B of L tiles, one per lane, read from 4 padded input rows (ld
 * apart) at each of the spans s_g = p + g * step: with halves, lanes [0,
 * L/4) from columns 0 .. L/2 + 1 of s_0, the next L/4 of s_1, s_2, s_3
 * (four tile rows of L/4 tiles: step 2 ld); without, lanes [0, L/2) from
 * columns 0 .. L + 1 of s_0 and the rest from s_1 (L consecutive tiles of
 * a row, step L; or two tile rows of L/2, step 2 ld). A tile's columns
 * 2 tx .. 2 tx + 3 are the even and odd columns from 2 tx and from 2 tx + 2,
 * so deinterleaving two spans gives the 4 columns of all L tiles as
 * vectors; the transform is then whole-vector adds. */
static inline __attribute__((always_inline)) void transform_tiles(const float *p, fc_int step,
                                                                  int halves, fc_int ld, vf v[WG_XI])
{
    vf d[4][4], t[4][4];
    for (int q = 0; q < 4; q++) {
        for (int off = 0; off < 2; off++) { /* columns from 0, from 2 */
            const float *r = p + q * ld + 2 * off;
            vf a, b;
            if (halves) {
                load_halves(&a, r, r + step);
                load_halves(&b, r + 2 * step, r + 3 * step);
            } else {
                LOADV(a, r);
                LOADV(b, r + step);
            }
            d[q][2 * off] = EVEN(a, b);
            d[q][2 * off + 1] = ODD(a, b);
        }
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
 * (layout: transform_input_body's): whole vectors where they fit in one
 * sliver, else the part in each sliver. */
static inline __attribute__((always_inline)) void store_v(const vf v[WG_XI], fc_int count, float *vp,
                                                          fc_int xi_stride, int nr, fc_int channels,
                                                          fc_int c, fc_int jj)
{
    for (fc_int e = 0; e < count;) {
        const fc_int je = jj + e, part = min_i(count - e, nr - je % nr);
        float *dst = vp + ((je / nr) * channels + c) * nr + je % nr;
        if (part == L) {
            for (int xi = 0; xi < WG_XI; xi++) STOREV(dst + xi * xi_stride, v[xi]);
        } else {
            for (int xi = 0; xi < WG_XI; xi++) {
                vf lanes = v[xi];
                if (e) lanes_from(&lanes, &v[xi], e);
                store_first(dst + xi * xi_stride, &lanes, part);
            }
        }
        e += part;
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
    const fc_int xi_stride = p->v_stride, rv = rows_per_vector(tw);
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
                vf v[WG_XI];
                if (rv > 1 && ty + rv <= ty1) { /* rv whole tile rows */
                    transform_tiles(row, 2 * ld, rv == 4, ld, v);
                    store_v(v, L, vp, xi_stride, nr, s->c, c, j);
                    ty += rv, r += rv, j += L;
                    continue;
                }
                for (fc_int tx0 = 0; tx0 < tw; tx0 += L) {
                    transform_tiles(row + 2 * tx0, L, 0, ld, v);
                    store_v(v, min_i(L, tw - tx0), vp, xi_stride, nr, s->c, c, j + tx0);
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

/* The 2x2 max-pool of L tiles' outputs o (o[2 a + b] at (a, b)): each
 * window's maximum and its index, by maxpool2d's scan rule (take a later
 * tap when greater or NaN). */
static inline __attribute__((always_inline)) void pool_vec(const vf o[4], vf *best, vi *idx)
{
    *best = o[0];
    *idx = (vi){0};
    for (int t = 1; t < 4; t++) {
        const vi take = (vi)(o[t] > *best) | (vi)(o[t] != o[t]);
        const vi tap = (vi){0} + t;
        *best = (vf)(((vi)o[t] & take) | ((vi)*best & ~take));
        *idx = (tap & take) | (*idx & ~take);
    }
}

/* Y = A^T M A + bias, then ReLU as relu_forward when relu, for the L tiles
 * whose M point xi is mt[xi * ms], one per lane: A^T M sums rows 0 + 1 + 2
 * and 1 - 2 - 3 of each column, A the same of columns. o[2 a + b] holds
 * each tile's output (a, b). */
static inline __attribute__((always_inline)) void output_tiles(const float *mt, fc_int ms,
                                                               const fc_wg_out *out, const vf *vb,
                                                               vf o[4])
{
    const vf zero = {0};
    vf a[4], c[4];
    for (int i = 0; i < 4; i++) { /* column i of the 4x4 points */
        vf v0, v1, v2, v3;
        LOADV(v0, mt + i * ms);
        LOADV(v1, mt + (4 + i) * ms);
        LOADV(v2, mt + (8 + i) * ms);
        LOADV(v3, mt + (12 + i) * ms);
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
            o[e] = (vf)((vi)o[e] & ~(vi)(o[e] < zero));
    }
}

/* Lanes [l0, l0 + count) of o, tiles tx0, tx0 + 1, ... of tile row ty of
 * plane (n, k): y (outputs past an odd edge dropped), or the pool of whole
 * windows. */
static inline __attribute__((always_inline)) void emit_lanes(const fc_conv_shape *s,
                                                             const fc_wg_out *out, const vf o[4],
                                                             fc_int l0, fc_int count, fc_int n,
                                                             fc_int k, fc_int ty, fc_int tx0,
                                                             const int pool)
{
    const fc_int ow = s->ow, oy = 2 * ty, plane = n * s->k + k;
    vf w[4];
    for (int e = 0; e < 4; e++) {
        w[e] = o[e];
        if (l0) lanes_from(&w[e], &o[e], l0);
    }
    if (pool) {
        const fc_int pw = ow / 2, windows = min_i(count, pw - tx0);
        if (oy + 1 >= s->oh || windows <= 0) return; /* the last row or column of an odd size */
        vf best;
        vi idx;
        pool_vec(w, &best, &idx);
        const fc_int at = (plane * (s->oh / 2) + ty) * pw + tx0;
        store_first(out->pooled + at, &best, windows);
        store_bytes_first(out->argmax + at, &idx, windows);
        return;
    }
    float *row = out->y + (plane * s->oh + oy) * ow + 2 * tx0;
    const fc_int outputs = min_i(2 * count, ow - 2 * tx0); /* of each row */
    for (int q = 0; q < 2 && oy + q < s->oh; q++) {
        const vf lo = ZIP_LO(w[2 * q], w[2 * q + 1]), hi = ZIP_HI(w[2 * q], w[2 * q + 1]);
        store_first(row + q * ow, &lo, min_i(outputs, L));
        if (outputs > L) store_first(row + q * ow + L, &hi, outputs - L);
    }
}

/* The L tiles of o, rv tile rows of them from tile row ty (tiles tx0 ..
 * when rv = 1), as whole vectors when their outputs are whole rows of y
 * (or of the pool): rows 2 ty .. 2 (ty + rv) - 1 complete, and L tiles
 * within an even width. Returns 0, having written nothing, when they are
 * not. */
static inline __attribute__((always_inline)) int emit_vectors(const fc_conv_shape *s,
                                                              const fc_wg_out *out, const vf o[4],
                                                              fc_int rv, fc_int tw, fc_int n,
                                                              fc_int k, fc_int ty, fc_int tx0,
                                                              const int pool)
{
    const fc_int ow = s->ow, oy = 2 * ty, plane = n * s->k + k;
    if (oy + 2 * rv > s->oh || (rv > 1 ? ow != 2 * tw : 2 * tx0 + 2 * L > ow)) return 0;
    if (pool) {
        vf best;
        vi idx;
        pool_vec(o, &best, &idx);
        /* rv > 1: the pooled rows ty .. ty + rv - 1, tw wide, are L floats in a row */
        const fc_int at = (plane * (s->oh / 2) + ty) * (ow / 2) + tx0;
        STOREV(out->pooled + at, best);
        store_bytes_first(out->argmax + at, &idx, L);
        return 1;
    }
    /* Output (dr, q, col) of the tile in lane l: row oy + 2 dr + q, where
     * dr = l / tw and col 2 (l % tw) when rv > 1, else dr = 0 and col
     * 2 (tx0 + l). The interleaved half h of o (ZIP_LO, ZIP_HI) holds lanes
     * from h L / 2: one span of y, or (rv = 4) two of L / 2 floats. */
    float *const y = out->y + (plane * s->oh + oy) * ow;
    for (int q = 0; q < 2; q++) {
        const vf z[2] = {ZIP_LO(o[2 * q], o[2 * q + 1]), ZIP_HI(o[2 * q], o[2 * q + 1])};
        for (int h = 0; h < 2; h++) {
            const fc_int l = h * L / 2;
            float *at = rv > 1 ? y + (2 * (l / tw) + q) * ow : y + q * ow + 2 * (tx0 + l);
            if (rv == 4) {
                store_half(at, &z[h], 0);
                store_half(at + 2 * ow, &z[h], 1); /* lanes l + L / 4: the next tile row */
            } else {
                STOREV(at, z[h]);
            }
        }
    }
    return 1;
}

/* Y = A^T M A (+ bias, ReLU; when pool, its 2x2 max-pool: see fc_wg_out)
 * for the block of tile rows [r0, r1), whose M is m[xi * m_stride + k * ldm
 * + j] (j: the block's tile; lanes past the block's tiles are read but
 * dropped), L tiles at a time: L of a tile row, or rows_per_vector whole
 * tile rows. */
static inline __attribute__((always_inline)) void transform_output_body(
    const fc_conv_shape *s, const fc_wg_plan *p, const float *m, fc_int ldm, const fc_wg_out *out,
    fc_int r0, fc_int r1, const int pool)
{
    const fc_int tw = p->tw, ms = p->m_stride, rv = rows_per_vector(tw);
    for (fc_int k = 0; k < s->k; k++) {
        const vf vb = (vf){0} + (out->bias ? out->bias[k] : 0.0f);
        const float *mk = m + k * ldm;
        for (fc_int r = r0, j = 0; r < r1;) {
            const fc_int n = r / p->th, ty = r % p->th;
            vf o[4];
            if (rv > 1 && r + rv <= r1 && ty + rv <= p->th) {
                output_tiles(mk + j, ms, out, &vb, o);
                if (!emit_vectors(s, out, o, rv, tw, n, k, ty, 0, pool))
                    for (fc_int g = 0; g < rv; g++)
                        emit_lanes(s, out, o, g * tw, tw, n, k, ty + g, 0, pool);
                r += rv, j += L;
                continue;
            }
            for (fc_int tx0 = 0; tx0 < tw; tx0 += L) {
                output_tiles(mk + j + tx0, ms, out, &vb, o);
                if (tx0 + L > tw || !emit_vectors(s, out, o, 1, tw, n, k, ty, tx0, pool))
                    emit_lanes(s, out, o, 0, min_i(L, tw - tx0), n, k, ty, tx0, pool);
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
            for (fc_int tx0 = 0; tx0 < tw; tx0 += L) {
                vf y[2][2], z[2][4], a, b;
                for (int q = 0; q < 2; q++) {
                    LOADV(a, rows + q * lw + 2 * tx0);
                    LOADV(b, rows + q * lw + 2 * tx0 + L);
                    y[q][0] = EVEN(a, b);
                    y[q][1] = ODD(a, b);
                }
                for (int q = 0; q < 2; q++) { /* dY A^T */
                    z[q][0] = y[q][0];
                    z[q][1] = y[q][0] + y[q][1];
                    z[q][2] = y[q][0] - y[q][1];
                    z[q][3] = -y[q][1];
                }
                float *dst = yhat + k * ldv + j + tx0;
                for (int c = 0; c < 4; c++) { /* A (dY A^T) */
                    const vf v0 = z[0][c], v1 = z[0][c] + z[1][c], v2 = z[0][c] - z[1][c],
                             v3 = -z[1][c];
                    STOREV(dst + c * p->m_stride, v0);
                    STOREV(dst + (4 + c) * p->m_stride, v1);
                    STOREV(dst + (8 + c) * p->m_stride, v2);
                    STOREV(dst + (12 + c) * p->m_stride, v3);
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
