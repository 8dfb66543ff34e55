/* 3x3 convolution at unit stride by Winograd's minimal filtering F(2x2, 3x3)
 * (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
 *
 * The output is cut into 2x2 tiles; tile t reads a 4x4 patch d of each input
 * channel (zero outside the image), and with the 4x4 transforms
 *   V = B^T d B  (of each patch),  U = G g G^T  (of each 3x3 filter g),
 * every tile's outputs are Y = A^T M A with M = sum over channels c of
 * U[k, c] * V[c, t] elementwise. Element xi of the 4x4 M is thus a matrix
 * product over channels, M_xi (K x tiles) = U_xi (K x C) @ V_xi (C x tiles):
 * 16 GEMMs of 16 K C multiply-adds per tile, against 36 K C for the direct
 * convolution's 2x2 outputs, 2.25x fewer.
 *
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
 *   G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
 *   A^T = [1 1 1 0; 0 1 -1 -1]
 *
 * The transforms add and subtract whole patches and filters (halving is
 * exact) and rely on exact cancellation, so the rounding error is bounded
 * by eps times the sums of |d| over a patch and |g| over a filter, rather
 * than by the direct sum's terms alone (tests/test_conv2d_winograd.py
 * checks that bound against the NumPy twin). Cancellation fails with
 * infinities and overflow: inputs out of range go elsewhere (below).
 *
 * Each tile is also one window of a 2x2 stride-2 max-pool, which the output
 * transform can take instead of storing y (fc_conv2d_winograd_maxpool).
 * dW runs through the same transforms, transposed (below).
 *
 * Blocks. Tiles are taken a block of tile rows at a time, per thread: the
 * block's V is written straight into the GEMM micro-kernel's packed B layout
 * (one sliver of NR tiles per C rows), U once per call into its packed A
 * layout, and the micro-kernel is called directly, so nothing is packed
 * twice; the block's M (16 x K x tiles) goes through the output transform
 * while it is still in L2. A block's V and M together take at most
 * WG_BLOCK_FLOATS. Every output is the same arithmetic whatever the block,
 * the batch split or the thread count: the micro-kernel sums each element
 * of M over c in a fixed order, and the transforms are per tile.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fastconv.h"
#include "fc_omp.h"
#include "kernels/gemm_ukernel.h"

#define XI 16 /* points of a 4x4 transformed tile */
#define TILES_PER_VEC 8 /* tiles transformed at once, one per lane */

/* A block's V and M in floats: 512 KB, half of a 1 MB L2 (and past a
 * 512 KB one still mostly L2 hits, as M is written and read in k order). */
#define WG_BLOCK_FLOATS (128 * 1024)

/* Per-thread workspace slices start on their own cache lines. */
#define WG_LINE_FLOATS 16

static int wg_mode = FC_WINOGRAD_AUTO;

void fc_winograd_set_mode(int mode) { wg_mode = mode; }
int fc_winograd_get_mode(void) { return wg_mode; }

static fc_int min_i(fc_int a, fc_int b) { return a < b ? a : b; }
static fc_int max_i(fc_int a, fc_int b) { return a > b ? a : b; }
static fc_int ceil_div(fc_int a, fc_int b) { return (a + b - 1) / b; }
static fc_int round_to_line(fc_int n) { return ceil_div(n, WG_LINE_FLOATS) * WG_LINE_FLOATS; }

/* count floats (a whole number of cache lines), cache-line aligned: the
 * micro-kernel loads packed B with aligned loads. NULL on failure. */
static float *alloc_lines(fc_int count)
{
    return aligned_alloc(64, sizeof(float) * (size_t)round_to_line(count > 0 ? count : 1));
}

/* At least n floats, an odd number of cache lines. The 16 points of a tile
 * are written (V) and read (M) together, a point's array apart; at a
 * stride of an even number of lines, as the usual power-of-two channel
 * counts give, they fall into a few sets of the L1 cache and evict each
 * other (128x128x8x8 -> 64 ran 1.7x slower). Odd strides spread them over
 * 16 sets. */
static fc_int odd_lines(fc_int n)
{
    const fc_int lines = ceil_div(n, WG_LINE_FLOATS);
    return (lines | 1) * WG_LINE_FLOATS;
}

static int winograd_possible(const fc_conv_shape *s)
{
    return s->kh == 3 && s->kw == 3 && s->sh == 1 && s->sw == 1 && s->ph >= 0 && s->pw >= 0;
}

/* Where it pays (auto mode), measured on AVX2 against the im2col path: the
 * GEMMs reduce over C alone, so with few input channels each micro-kernel
 * call does little work per store of its tile and the transforms dominate
 * (128x3x32x32 -> 32: 0.55x at 1 and 2 threads); with few output channels
 * the input transform is spread over few outputs. With C and K from 32 to
 * 128 it ran 1.4-2.0x faster (bench_conv2d's fastconv_im2col side). */
#define WG_MIN_C 16
#define WG_MIN_K 16
/* Batch-1 inference: below this many tiles, the weight transform and
 * GEMMs a few tiles wide cost more than the multiply-adds saved
 * (1x64x8x8 -> 128, 16 tiles: 0.42x the im2col path). */
#define WG_MIN_TILES 256

int fc_winograd_applies(const fc_conv_shape *s)
{
    if (wg_mode == FC_WINOGRAD_NEVER || !winograd_possible(s)) return 0;
    if (wg_mode == FC_WINOGRAD_ALWAYS) return 1;
    const fc_int tiles = s->n * ((s->oh + 1) / 2) * ((s->ow + 1) / 2);
    /* K = 16 fits conv2d_direct.c's kernel, which needs no transforms. */
    return s->c >= WG_MIN_C && s->k >= WG_MIN_K && tiles >= WG_MIN_TILES &&
           !fc_conv2d_direct_fits(s);
}

/* ---- the inputs' range -----------------------------------------------------
 * The transforms spread each input over a whole tile and rely on exact
 * cancellation, which IEEE arithmetic does not give at the edges: an
 * infinite pixel minus itself is NaN in every output of its tiles where the
 * direct sum has +-Inf, and values near FLT_MAX overflow inside V, U or M
 * where the direct sum stays finite. So Winograd runs only on inputs that
 * are all finite and keep every value it computes below FLT_MAX; the caller
 * takes its direct or im2col path otherwise.
 *
 * The bound, for exact values, with a and b the largest |x| and |w| (|dy|
 * for dW) and the sums of |coefficients| in each row of the transforms:
 *   forward: B^T has two entries +-1 a row, so |B^T d B| <= 4 a; G's rows
 *     sum to at most 1.5, so |G g G^T| <= 2.25 b (4.5 b before halving);
 *     M sums C products, so it and its partial sums are <= 9 C a b; A^T's
 *     rows sum to at most 3, so |A^T M A| <= 81 C a b.
 *   dW: |A dY A^T| <= 4 b, |V| <= 4 a, Mw sums T tiles' products (in
 *     parts, then the threads' parts): <= 16 T a b; G^T's rows sum to at
 *     most 2: |dW| <= 64 T a b.
 * These also bound the direct sums (9 C a b, 4 T a b), which are then
 * finite too. Rounding: a computed sum, product or FMA is at most (1 + u)
 * times the same of its operands' absolute values (u = 2^-24, round to
 * nearest), so a value after d rounded operations is within (1 + u)^d <=
 * exp(d u) of its bound; d is at most the terms of the longest sum, plus
 * the threads' parts, plus 16 for the transforms. The other half of
 * FLT_MAX is a margin. The bias is added to the finished sum by every
 * path, so it has the same effects whichever runs. */
static int within_range(double a, double b, double coef_a, double coef_b, double coef_ab,
                        fc_int depth)
{
    const double limit = 0.5 * FLT_MAX / exp((double)depth * 0x1p-24);
    /* false for NaN: a comparison with NaN is */
    return coef_a * a <= limit && coef_b * b <= limit && coef_ab * a * b <= limit;
}

int fc_winograd_forward_in_range(const fc_conv_shape *s, float max_x, float max_w)
{
    return within_range(max_x, max_w, 4.0, 4.5, 81.0 * (double)s->c, s->c + 16);
}

int fc_winograd_dweight_in_range(const fc_conv_shape *s, float max_x, float max_dy, int nthreads)
{
    const fc_int tiles = s->n * ((s->oh + 1) / 2) * ((s->ow + 1) / 2);
    return within_range(max_x, max_dy, 4.0, 4.0, 64.0 * (double)tiles, tiles + nthreads + 16);
}

typedef struct {
    fc_int th, tw;       /* tiles per image: rows, columns */
    fc_int rows;         /* tile rows per block */
    fc_int tiles;        /* tiles per (full) block: rows * tw */
    fc_int nblocks;      /* ceil(n * th / rows) */
    fc_int slivers;      /* NR-tile slivers per block */
    fc_int nks;          /* MR-row slivers of K */
    fc_int v_stride;     /* floats from one point's packed V to the next's */
    fc_int m_stride;     /* the same for M */
    fc_int v_floats;     /* a block's packed V: XI * v_stride */
    fc_int m_floats;     /* a block's M: XI * m_stride */
    fc_int ld;           /* padded input row: 2 tw rounded up to whole vectors, + 2 */
    fc_int row_floats;   /* a block's padded input rows of one channel */
    fc_int tmp_floats;   /* dW: the thread's sums over tiles, XI * C * K */
    fc_int ldv;          /* dW: floats between the rows of V and of Yhat */
    fc_int per_thread;   /* all of the above, each on whole cache lines */
} wg_plan;

static wg_plan plan_for(const fc_conv_shape *s, int mr, int nr, int nthreads)
{
    wg_plan p;
    p.th = ceil_div(s->oh, 2);
    p.tw = ceil_div(s->ow, 2);
    /* Tiles that fit the budget, then the most tile rows within it,
     * preferring a whole number of slivers (no partial sliver but the
     * last) down to half as many rows. */
    const fc_int fit = max_i(1, WG_BLOCK_FLOATS / (XI * (s->c + s->k)));
    const fc_int most = max_i(1, fit / p.tw);
    p.rows = most;
    for (fc_int r = most; r >= 1 && 2 * r >= most; r--)
        if (r * p.tw % nr == 0) {
            p.rows = r;
            break;
        }
    /* Enough blocks for every thread (batch-1 inference). */
    p.rows = min_i(p.rows, ceil_div(s->n * p.th, nthreads > 1 ? nthreads : 1));
    p.tiles = p.rows * p.tw;
    p.nblocks = ceil_div(s->n * p.th, p.rows);
    p.slivers = ceil_div(p.tiles, nr);
    p.nks = ceil_div(s->k, mr);
    p.v_stride = odd_lines(p.slivers * s->c * nr);
    p.m_stride = odd_lines(s->k * p.tiles + TILES_PER_VEC); /* + what 8-lane loads overrun */
    p.v_floats = XI * p.v_stride;
    p.m_floats = XI * p.m_stride;
    p.ld = 2 * ceil_div(p.tw, TILES_PER_VEC) * TILES_PER_VEC + 2;
    p.row_floats = round_to_line((2 * min_i(p.rows, p.th) + 2) * p.ld);
    p.tmp_floats = 0;
    p.ldv = 0;
    p.per_thread = p.v_floats + p.m_floats + p.row_floats + p.tmp_floats;
    return p;
}

/* U = G g G^T of each filter g = weight[k, c], packed as the micro-kernel's
 * A panels, one set per point xi: ua[((xi * nks + ks) * C + c) * MR + i]
 * holds U_xi[ks * MR + i, c], zero past K. Work-shared over the team. */
static void transform_weights(const fc_conv_shape *s, const float *weight, int mr, fc_int nks,
                              float *ua)
{
#pragma omp for schedule(static)
    for (fc_int kc = 0; kc < nks * mr * s->c; kc++) {
        const fc_int k = kc / s->c, c = kc % s->c;
        float u[XI];
        if (k < s->k) {
            const float *g = weight + (k * s->c + c) * 9;
            float t[4][3]; /* G g */
            for (int j = 0; j < 3; j++) {
                t[0][j] = g[j];
                t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
                t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
                t[3][j] = g[6 + j];
            }
            for (int i = 0; i < 4; i++) { /* (G g) G^T */
                u[4 * i + 0] = t[i][0];
                u[4 * i + 1] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
                u[4 * i + 2] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
                u[4 * i + 3] = t[i][2];
            }
        } else {
            for (int xi = 0; xi < XI; xi++) u[xi] = 0.0f;
        }
        const fc_int ks = k / mr, i = k % mr;
        for (int xi = 0; xi < XI; xi++) ua[((xi * nks + ks) * s->c + c) * mr + i] = u[xi];
    }
}

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
                                                                  fc_int ld, v8f v[XI])
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
static inline __attribute__((always_inline)) void store_v(const v8f v[XI], fc_int count, float *vp,
                                                          fc_int xi_stride, int nr, fc_int channels,
                                                          fc_int c, fc_int jj)
{
    float *dst = vp + ((jj / nr) * channels + c) * nr + jj % nr;
    if (count == TILES_PER_VEC && jj % nr + TILES_PER_VEC <= nr) {
        for (int xi = 0; xi < XI; xi++) STORE8(dst + xi * xi_stride, v[xi]);
        return;
    }
    /* A partial vector, or one across two slivers: tile by tile. */
    for (fc_int e = 0; e < count; e++) {
        const fc_int je = jj + e;
        float *d = vp + ((je / nr) * channels + c) * nr + je % nr;
        for (int xi = 0; xi < XI; xi++) d[xi * xi_stride] = v[xi][e];
    }
}

/* The block of tile rows [r0, r1) (row r is tile row r % th of image
 * r / th): V of every channel, written as packed B slivers,
 * vp[((xi * slivers + j / NR) * C + c) * NR + j % NR] for the block's tile j.
 * rows: the padded input rows (p->ld apart) of the block's tile rows of
 * one image and one channel. */
static inline __attribute__((always_inline)) void transform_input_body(
    const fc_conv_shape *s, const wg_plan *p, int nr, const float *x, fc_int r0, fc_int r1,
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
                v8f v[XI];
                if (tw == TILES_PER_VEC / 2 && ty + 1 < ty1) { /* 8x8 images: two tile rows */
                    transform_tiles(row, row + 2 * ld, ld, v);
                    store_v(v, TILES_PER_VEC, vp, xi_stride, nr, s->c, c, j);
                    ty += 2, r += 2, j += 2 * tw;
                    continue;
                }
                for (fc_int tx0 = 0; tx0 < tw; tx0 += TILES_PER_VEC) {
                    transform_tiles(row + 2 * tx0, row + 2 * tx0 + 8, ld, v);
                    store_v(v, min_i(TILES_PER_VEC, tw - tx0), vp, xi_stride, nr, s->c, c, j + tx0);
                }
                ty++, r++, j += tw;
            }
        }
        /* The last sliver's columns past the block's tiles are read by the
         * micro-kernel (and their results dropped): keep them finite. */
        if (j % nr)
            for (int xi = 0; xi < XI; xi++) {
                float *d = vp + xi * xi_stride + ((j / nr) * s->c + c) * nr;
                for (fc_int e = j % nr; e < nr; e++) d[e] = 0.0f;
            }
    }
}

/* Where the output transform writes: y = conv + bias, then ReLU as
 * relu_forward when relu; or, when pooled is not NULL, only the 2x2 stride-2
 * max-pool of that (each tile is one window) and each window's argmax. */
typedef struct {
    const float *bias;
    int relu;
    float *y;
    float *pooled;
    uint8_t *argmax;
} wg_out;

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
                                                               const wg_out *out, const v8f *vb,
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
                                                             const wg_out *out, const v8f o[4],
                                                             int l0, fc_int count, fc_int n,
                                                             fc_int k, fc_int ty, fc_int tx0)
{
    const fc_int ow = s->ow, oy = 2 * ty, plane = n * s->k + k;
    if (out->pooled) {
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
                                                              const wg_out *out, const v8f o[4],
                                                              int pair, fc_int n, fc_int k,
                                                              fc_int ty, fc_int tx0)
{
    const fc_int ow = s->ow, oy = 2 * ty, plane = n * s->k + k;
    const fc_int rows = pair ? 4 : 2; /* output rows the tiles cover */
    if (oy + rows > s->oh || (pair ? ow != 8 : 2 * tx0 + 16 > ow)) return 0;
    if (out->pooled) {
        v8f best;
        v8i idx;
        pool_vec(o, &best, &idx);
        /* pair: pooled rows ty and ty + 1 of width 4 are 8 floats in a row */
        const fc_int at = (plane * (s->oh / 2) + ty) * (ow / 2) + tx0;
        STORE8(out->pooled + at, best);
        for (int e = 0; e < TILES_PER_VEC; e++) out->argmax[at + e] = (uint8_t)idx[e];
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

/* Y = A^T M A (+ bias, ReLU, pool: see wg_out) for the block of tile rows
 * [r0, r1), whose M is m[xi * m_stride + k * ldm + j] (j: the block's tile;
 * lanes past the block's tiles are read but dropped), 8 tiles at a time:
 * 8 of a tile row, or, for 8x8 outputs (4 tiles across), two tile rows. */
static inline __attribute__((always_inline)) void transform_output_body(
    const fc_conv_shape *s, const wg_plan *p, const float *m, fc_int ldm, const wg_out *out,
    fc_int r0, fc_int r1)
{
    const fc_int tw = p->tw, ms = p->m_stride;
    for (fc_int k = 0; k < s->k; k++) {
        const float b = out->bias ? out->bias[k] : 0.0f;
        const v8f vb = {b, b, b, b, b, b, b, b};
        const float *mk = m + k * ldm;
        for (fc_int r = r0, j = 0; r < r1;) {
            const fc_int n = r / p->th, ty = r % p->th;
            v8f o[4];
            if (tw == TILES_PER_VEC / 2 && r + 1 < r1 && ty + 1 < p->th) {
                output_tiles(mk + j, ms, out, &vb, o);
                if (!emit_vectors(s, out, o, 1, n, k, ty, 0)) {
                    emit_lanes(s, out, o, 0, tw, n, k, ty, 0);
                    emit_lanes(s, out, o, (int)tw, tw, n, k, ty + 1, 0);
                }
                r += 2, j += 2 * tw;
                continue;
            }
            for (fc_int tx0 = 0; tx0 < tw; tx0 += TILES_PER_VEC) {
                output_tiles(mk + j + tx0, ms, out, &vb, o);
                if (tx0 + TILES_PER_VEC > tw || !emit_vectors(s, out, o, 0, n, k, ty, tx0))
                    emit_lanes(s, out, o, 0, min_i(TILES_PER_VEC, tw - tx0), n, k, ty, tx0);
            }
            r++, j += tw;
        }
    }
}

/* The transforms for the baseline ISA and for AVX2 (per-function targets,
 * as conv2d.c's copy loops), picked at run time. Their row copies stay
 * inline loops: as memcpy and memset calls (GCC's loop distribution), the
 * short rows of small images cost a call each. */
#define WG_OPTS optimize("no-tree-loop-distribute-patterns")
typedef void transform_input_fn(const fc_conv_shape *s, const wg_plan *p, int nr, const float *x,
                                fc_int r0, fc_int r1, float *vp, float *rows);
typedef void transform_output_fn(const fc_conv_shape *s, const wg_plan *p, const float *m,
                                 fc_int ldm, const wg_out *out, fc_int r0, fc_int r1);

__attribute__((WG_OPTS)) static void transform_input_base(const fc_conv_shape *s, const wg_plan *p, int nr,
                                 const float *x, fc_int r0, fc_int r1, float *vp, float *rows)
{
    transform_input_body(s, p, nr, x, r0, r1, vp, rows);
}

__attribute__((WG_OPTS)) static void transform_output_base(const fc_conv_shape *s,
                                                           const wg_plan *p, const float *m,
                                                           fc_int ldm, const wg_out *out,
                                                           fc_int r0, fc_int r1)
{
    transform_output_body(s, p, m, ldm, out, r0, r1);
}

#if defined(FC_X86_KERNELS) && (defined(__GNUC__) || defined(__clang__))
__attribute__((WG_OPTS, target("avx2"))) static void transform_input_avx2(
    const fc_conv_shape *s, const wg_plan *p, int nr, const float *x, fc_int r0, fc_int r1,
    float *vp, float *rows)
{
    transform_input_body(s, p, nr, x, r0, r1, vp, rows);
}

__attribute__((WG_OPTS, target("avx2"))) static void transform_output_avx2(
    const fc_conv_shape *s, const wg_plan *p, const float *m, fc_int ldm, const wg_out *out,
    fc_int r0, fc_int r1)
{
    transform_output_body(s, p, m, ldm, out, r0, r1);
}
#define WG_AVX2 1
#else
#define WG_AVX2 0
#endif

/* Blocks [b0, b1) on the calling thread, with its workspace. */
static void run_blocks(const fc_conv_shape *s, const wg_plan *p, const fc_gemm_kernel *kr,
                       const float *x, const float *ua, const wg_out *out, fc_int b0, fc_int b1,
                       float *work)
{
    transform_input_fn *tin = transform_input_base;
    transform_output_fn *tout = transform_output_base;
#if WG_AVX2
    if (fc_isa_get() >= FC_ISA_AVX2) tin = transform_input_avx2, tout = transform_output_avx2;
#endif
    const int mr = kr->mr, nr = kr->nr;
    float *vp = work, *m = vp + p->v_floats, *rows = m + p->m_floats;
    const fc_int all_rows = s->n * p->th;
    for (fc_int blk = b0; blk < b1; blk++) {
        const fc_int r0 = blk * p->rows, r1 = min_i(all_rows, r0 + p->rows);
        const fc_int tiles = (r1 - r0) * p->tw, ldm = p->tiles;
        tin(s, p, nr, x, r0, r1, vp, rows);
        for (int xi = 0; xi < XI; xi++)
            for (fc_int ks = 0; ks < p->nks; ks++) {
                const float *a = ua + (xi * p->nks + ks) * s->c * mr;
                float *mt = m + xi * p->m_stride + ks * mr * ldm;
                const fc_int rows_k = min_i(mr, s->k - ks * mr);
                for (fc_int sl = 0; sl * nr < tiles; sl++)
                    kr->ukr(s->c, 1.0f, a, vp + xi * p->v_stride + sl * s->c * nr, 0.0f,
                            mt + sl * nr, ldm, rows_k, min_i(nr, tiles - sl * nr));
            }
        tout(s, p, m, ldm, out, r0, r1);
    }
}

static int winograd_forward(const fc_conv_shape *s, const float *x, const float *weight,
                            const wg_out *out, int nthreads)
{
    const fc_gemm_kernel *kr = fc_gemm_kernel_current();
    const wg_plan p = plan_for(s, kr->mr, kr->nr, nthreads);
    const int team = (int)min_i(nthreads > 1 ? nthreads : 1, p.nblocks);
    const fc_int ua_floats = round_to_line(XI * p.nks * kr->mr * s->c);
    float *work = alloc_lines(ua_floats + team * p.per_thread);
    if (!work) return FC_ENOMEM;
    float *ua = work;
#pragma omp parallel num_threads(team) if (team > 1)
    {
        transform_weights(s, weight, kr->mr, p.nks, ua); /* ends with a barrier */
        float *mine = work + ua_floats + fc_thread_id() * p.per_thread;
        /* Blocks are handed out as threads come free: a block's outputs are
         * the same bits whichever thread runs it, and a thread that the OS
         * (or a busy host) preempts does not hold the others up at the end. */
#pragma omp for schedule(dynamic, 1)
        for (fc_int blk = 0; blk < p.nblocks; blk++)
            run_blocks(s, &p, kr, x, ua, out, blk, blk + 1, mine);
    }
    free(work);
    return 0;
}

int fc_conv2d_winograd(const fc_conv_shape *s, const float *x, const float *weight,
                       const float *bias, int relu, float *y, int nthreads)
{
    const wg_out out = {bias, relu, y, NULL, NULL};
    return winograd_forward(s, x, weight, &out, nthreads);
}

int fc_conv2d_winograd_maxpool(const fc_conv_shape *s, const float *x, const float *weight,
                               const float *bias, int relu, float *pooled, uint8_t *argmax,
                               int nthreads)
{
    const wg_out out = {bias, relu, NULL, pooled, argmax};
    return winograd_forward(s, x, weight, &out, nthreads);
}

/* ---- dW: the same transforms, transposed -------------------------------
 * The forward is linear in U, so dL/dU[k, c] = sum over tiles of
 * (A dY A^T) * V elementwise, with dY the tile's 2x2 output gradient, and
 * dW = G^T (dL/dU) G. Point xi of the sum over tiles is again a matrix
 * product, here reducing over tiles: Mw_xi (C x K) = V_xi (C x tiles) @
 * Yhat_xi^T (tiles x K), 16 K C multiply-adds per tile against 36 K C for
 * im2col's dW. Blocks of tile rows as in the forward; V and Yhat are plain
 * row-major matrices (tiles ldv apart per channel) that sgemm packs. Each
 * thread sums its blocks into a private Mw, the partials are summed in
 * thread order, then transformed: deterministic for a thread count. */

/*   A = [1 0; 1 1; 1 -1; 0 -1]   (A dY A^T: 4x4 from a 2x2 tile) */

/* Yhat = A dY A^T for output channel k of the block of tile rows [r0, r1),
 * written as yhat[xi * p->m_stride + k * ldv + j] for the block's tile j.
 * rows: 2 dy rows of 2 tw rounded up to whole vectors (zero past the edge). */
static inline __attribute__((always_inline)) void transform_grad_body(
    const fc_conv_shape *s, const wg_plan *p, const float *dy, fc_int r0, fc_int r1,
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
            for (fc_int tx0 = 0; tx0 < tw; tx0 += TILES_PER_VEC) {
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

typedef void transform_grad_fn(const fc_conv_shape *s, const wg_plan *p, const float *dy,
                               fc_int r0, fc_int r1, fc_int ldv, float *yhat, float *rows);

__attribute__((WG_OPTS)) static void transform_grad_base(const fc_conv_shape *s, const wg_plan *p, const float *dy,
                                fc_int r0, fc_int r1, fc_int ldv, float *yhat, float *rows)
{
    transform_grad_body(s, p, dy, r0, r1, ldv, yhat, rows);
}

#if WG_AVX2
__attribute__((WG_OPTS, target("avx2"))) static void transform_grad_avx2(
    const fc_conv_shape *s, const wg_plan *p, const float *dy, fc_int r0, fc_int r1, fc_int ldv,
    float *yhat, float *rows)
{
    transform_grad_body(s, p, dy, r0, r1, ldv, yhat, rows);
}
#endif

/* dW's plan: v_stride and m_stride are V's and Yhat's point strides, tiles
 * rows ldv (= nr, for transform_input's layout) apart; the block's V and
 * Yhat take the forward's budget, so that with the thread's sums Mw (16 C K
 * floats, 512 KB for 64 -> 128 channels) the workspace stays near 1 MB per
 * thread (twice the budget measured no faster, within the noise). */
static wg_plan plan_dweight(const fc_conv_shape *s, int nthreads)
{
    wg_plan p;
    p.th = ceil_div(s->oh, 2);
    p.tw = ceil_div(s->ow, 2);
    const fc_int fit = max_i(1, WG_BLOCK_FLOATS / (XI * (s->c + s->k)));
    p.rows = max_i(1, fit / p.tw);
    p.rows = min_i(p.rows, ceil_div(s->n * p.th, nthreads > 1 ? nthreads : 1));
    p.tiles = p.rows * p.tw;
    p.nblocks = ceil_div(s->n * p.th, p.rows);
    p.slivers = 1;
    p.nks = 0;
    p.ldv = round_to_line(p.tiles + TILES_PER_VEC); /* + the lanes full-vector stores spill */
    p.v_stride = odd_lines(s->c * p.ldv);
    p.m_stride = odd_lines(s->k * p.ldv);
    p.v_floats = XI * p.v_stride;
    p.m_floats = XI * p.m_stride;
    p.ld = 2 * ceil_div(p.tw, TILES_PER_VEC) * TILES_PER_VEC + 2;
    p.row_floats = round_to_line((2 * min_i(p.rows, p.th) + 2) * p.ld);
    p.tmp_floats = round_to_line(XI * s->c * s->k); /* the thread's Mw */
    p.per_thread = p.v_floats + p.m_floats + p.row_floats + p.tmp_floats;
    return p;
}

/* dW = G^T Mw G of filter (k, c), Mw summed over the nparts partials
 * (part t at mw + t * stride; point xi at xi * C K, element c K + k). */
static void finish_dweight(const fc_conv_shape *s, const float *mw, fc_int stride, int nparts,
                           float *dweight)
{
    const fc_int ck = s->c * s->k;
#pragma omp for schedule(static)
    for (fc_int e = 0; e < ck; e++) {
        const fc_int c = e / s->k, k = e % s->k;
        float m[XI], r[3][4];
        for (int xi = 0; xi < XI; xi++) {
            float acc = mw[xi * ck + e];
            for (int t = 1; t < nparts; t++) acc += mw[t * stride + xi * ck + e];
            m[xi] = acc;
        }
        for (int j = 0; j < 4; j++) { /* G^T Mw */
            r[0][j] = m[j] + 0.5f * (m[4 + j] + m[8 + j]);
            r[1][j] = 0.5f * (m[4 + j] - m[8 + j]);
            r[2][j] = 0.5f * (m[4 + j] + m[8 + j]) + m[12 + j];
        }
        float *g = dweight + (k * s->c + c) * 9;
        for (int i = 0; i < 3; i++) { /* (G^T Mw) G */
            g[3 * i + 0] = r[i][0] + 0.5f * (r[i][1] + r[i][2]);
            g[3 * i + 1] = 0.5f * (r[i][1] - r[i][2]);
            g[3 * i + 2] = 0.5f * (r[i][1] + r[i][2]) + r[i][3];
        }
    }
}

int fc_conv2d_winograd_dweight(const fc_conv_shape *s, const float *x, const float *dy,
                               float *dweight, int nthreads)
{
    const wg_plan p = plan_dweight(s, nthreads);
    const int team = (int)min_i(nthreads > 1 ? nthreads : 1, p.nblocks);
    float *work = alloc_lines(team * p.per_thread);
    if (!work) return FC_ENOMEM;
    const fc_int ldv = p.ldv;
    const fc_int mw_offset = p.v_floats + p.m_floats + p.row_floats;
    int failed = 0;
#pragma omp parallel num_threads(team) if (team > 1) reduction(| : failed)
    {
        transform_input_fn *tin = transform_input_base;
        transform_grad_fn *tgrad = transform_grad_base;
#if WG_AVX2
        if (fc_isa_get() >= FC_ISA_AVX2) tin = transform_input_avx2, tgrad = transform_grad_avx2;
#endif
        const int t = fc_thread_id();
        float *mine = work + t * p.per_thread, *v = mine, *yhat = v + p.v_floats;
        float *rows = yhat + p.m_floats, *mw = mine + mw_offset;
        long long lo, hi;
        fc_split_range(p.nblocks, fc_team_size(), t, &lo, &hi);
        if (lo == hi) memset(mw, 0, sizeof(float) * XI * s->c * s->k);
        const fc_int all_rows = s->n * p.th;
        for (fc_int blk = lo; blk < hi && !failed; blk++) {
            const fc_int r0 = blk * p.rows, r1 = min_i(all_rows, r0 + p.rows);
            tin(s, &p, (int)ldv, x, r0, r1, v, rows);
            tgrad(s, &p, dy, r0, r1, ldv, yhat, rows);
            for (int xi = 0; xi < XI && !failed; xi++)
                failed |= fc_sgemm_ex(0, 1, s->c, s->k, (r1 - r0) * p.tw, 1.0f,
                                      v + xi * p.v_stride, ldv, yhat + xi * p.m_stride, ldv,
                                      blk == lo ? 0.0f : 1.0f, mw + xi * s->c * s->k, s->k, 1,
                                      0) != 0;
        }
#pragma omp barrier
        finish_dweight(s, work + mw_offset, p.per_thread, fc_team_size(), dweight);
    }
    free(work);
    return failed ? FC_ENOMEM : 0;
}
