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
 *
 * The transforms themselves are the ISA table's (kernels/winograd.h, whose
 * layouts this file's plans fill in); this file holds the algebra, the
 * plans, the weight transforms and the threading.
 *
 * bf16 (FC_BFLOAT16): the same transforms and blocks, the GEMMs in bf16
 * (the end of this file).
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fastconv.h"
#include "core/fc_omp.h"
#include "kernels/ctx.h"
#include "conv/conv.h"

/* A block's V and M in floats: 512 KB, half of a 1 MB L2 (and past a
 * 512 KB one still mostly L2 hits, as M is written and read in k order). */
#define WG_BLOCK_FLOATS (128 * 1024)

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

/* ---- the inputs' range -----------------------------------------------------
 * The transforms spread each input over a whole tile and rely on exact
 * cancellation, which IEEE arithmetic does not give at the edges: an
 * infinite pixel minus itself is NaN in every output of its tiles where the
 * direct sum has +-Inf, and values near FLT_MAX overflow inside V, U or M
 * where the direct sum stays finite. So Winograd runs only on inputs that
 * are all finite and keep every value it computes below FLT_MAX (conv/plan.c
 * asks these before it picks Winograd, and takes the next algorithm
 * otherwise).
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
 * path, so it has the same effects whichever runs. In bf16 the same bounds
 * serve: rounding V, U (or Yhat) to nearest bf16 grows each by at most a
 * factor 1 + 2^-8, every product by (1 + 2^-8)^2 < 1.01, which the margin
 * covers; a value below half of FLT_MAX never rounds to a bf16 Inf (the
 * largest bf16 is 0.996 FLT_MAX), and the sums stay float32 sums. */
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

static fc_wg_plan plan_for(const fc_conv_shape *s, int mr, int nr, int nthreads)
{
    fc_wg_plan p;
    p.th = ceil_div(s->oh, 2);
    p.tw = ceil_div(s->ow, 2);
    /* Tiles that fit the budget, then the most tile rows within it,
     * preferring a whole number of slivers (no partial sliver but the
     * last) down to half as many rows. */
    const fc_int fit = max_i(1, WG_BLOCK_FLOATS / (WG_XI * (s->c + s->k)));
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
    p.m_stride = odd_lines(s->k * p.tiles + WG_MAX_TILES_PER_VEC); /* + what full-vector loads overrun */
    p.v_floats = WG_XI * p.v_stride;
    p.m_floats = WG_XI * p.m_stride;
    p.ld = 2 * ceil_div(p.tw, WG_MAX_TILES_PER_VEC) * WG_MAX_TILES_PER_VEC + 2;
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
        float u[WG_XI];
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
            for (int xi = 0; xi < WG_XI; xi++) u[xi] = 0.0f;
        }
        const fc_int ks = k / mr, i = k % mr;
        for (int xi = 0; xi < WG_XI; xi++) ua[((xi * nks + ks) * s->c + c) * mr + i] = u[xi];
    }
}

/* Blocks [b0, b1) on the calling thread, with its workspace; tout: the
 * table's output transform (wg_output, or wg_output_pool). */
static void run_blocks(const fc_conv_shape *s, const fc_wg_plan *p, const fc_ctx *ctx,
                       fc_wg_output_fn *tout, const float *x, const float *ua, const fc_wg_out *out,
                       fc_int b0, fc_int b1, float *work)
{
    const fc_gemm_kernel *kr = ctx->gemm;
    const int mr = kr->mr, nr = kr->nr;
    float *vp = work, *m = vp + p->v_floats, *rows = m + p->m_floats;
    const fc_int all_rows = s->n * p->th;
    for (fc_int blk = b0; blk < b1; blk++) {
        const fc_int r0 = blk * p->rows, r1 = min_i(all_rows, r0 + p->rows);
        const fc_int tiles = (r1 - r0) * p->tw, ldm = p->tiles;
        ctx->wg_input(s, p, nr, x, r0, r1, vp, rows);
        for (int xi = 0; xi < WG_XI; xi++)
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
                            const fc_wg_out *out, int nthreads)
{
    const fc_ctx *ctx = fc_ctx_current();
    const fc_gemm_kernel *kr = ctx->gemm;
    fc_wg_output_fn *tout = out->pooled ? ctx->wg_output_pool : ctx->wg_output;
    const fc_wg_plan p = plan_for(s, kr->mr, kr->nr, nthreads);
    const int team = (int)min_i(nthreads > 1 ? nthreads : 1, p.nblocks);
    const fc_int ua_floats = round_to_line(WG_XI * p.nks * kr->mr * s->c);
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
            run_blocks(s, &p, ctx, tout, x, ua, out, blk, blk + 1, mine);
    }
    free(work);
    return 0;
}

static int winograd_forward_bf16(const fc_conv_shape *s, const float *x, const float *weight,
                                 const fc_wg_out *out, int nthreads);

int fc_conv2d_winograd(const fc_conv_shape *s, int precision, const float *x, const float *weight,
                       const float *bias, int relu, float *y, int nthreads)
{
    const fc_wg_out out = {bias, relu, y, NULL, NULL};
    if (precision == FC_BFLOAT16) return winograd_forward_bf16(s, x, weight, &out, nthreads);
    return winograd_forward(s, x, weight, &out, nthreads);
}

int fc_conv2d_winograd_maxpool(const fc_conv_shape *s, int precision, const float *x,
                               const float *weight, const float *bias, int relu, float *pooled,
                               uint8_t *argmax, int nthreads)
{
    const fc_wg_out out = {bias, relu, NULL, pooled, argmax};
    if (precision == FC_BFLOAT16) return winograd_forward_bf16(s, x, weight, &out, nthreads);
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

/* dW's plan: v_stride and m_stride are V's and Yhat's point strides, tiles
 * rows ldv (= nr, for transform_input's layout) apart; the block's V and
 * Yhat take the forward's budget, so that with the thread's sums Mw (16 C K
 * floats, 512 KB for 64 -> 128 channels) the workspace stays near 1 MB per
 * thread (twice the budget measured no faster, within the noise). */
static fc_wg_plan plan_dweight(const fc_conv_shape *s, int nthreads)
{
    fc_wg_plan p;
    p.th = ceil_div(s->oh, 2);
    p.tw = ceil_div(s->ow, 2);
    const fc_int fit = max_i(1, WG_BLOCK_FLOATS / (WG_XI * (s->c + s->k)));
    p.rows = max_i(1, fit / p.tw);
    p.rows = min_i(p.rows, ceil_div(s->n * p.th, nthreads > 1 ? nthreads : 1));
    p.tiles = p.rows * p.tw;
    p.nblocks = ceil_div(s->n * p.th, p.rows);
    p.slivers = 1;
    p.nks = 0;
    p.ldv = round_to_line(p.tiles + WG_MAX_TILES_PER_VEC); /* + the lanes full-vector stores spill */
    p.v_stride = odd_lines(s->c * p.ldv);
    p.m_stride = odd_lines(s->k * p.ldv);
    p.v_floats = WG_XI * p.v_stride;
    p.m_floats = WG_XI * p.m_stride;
    p.ld = 2 * ceil_div(p.tw, WG_MAX_TILES_PER_VEC) * WG_MAX_TILES_PER_VEC + 2;
    p.row_floats = round_to_line((2 * min_i(p.rows, p.th) + 2) * p.ld);
    p.tmp_floats = round_to_line(WG_XI * s->c * s->k); /* the thread's Mw */
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
        float m[WG_XI], r[3][4];
        for (int xi = 0; xi < WG_XI; xi++) {
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

int fc_conv2d_winograd_dweight(const fc_conv_shape *s, int precision, const float *x,
                               const float *dy, float *dweight, int nthreads)
{
    const fc_wg_plan p = plan_dweight(s, nthreads);
    const int team = (int)min_i(nthreads > 1 ? nthreads : 1, p.nblocks);
    float *work = alloc_lines(team * p.per_thread);
    if (!work) return FC_ENOMEM;
    const fc_int ldv = p.ldv;
    const fc_int mw_offset = p.v_floats + p.m_floats + p.row_floats;
    int failed = 0;
    const fc_ctx *ctx = fc_ctx_current();
#pragma omp parallel num_threads(team) if (team > 1) reduction(| : failed)
    {
        const int t = fc_thread_id();
        float *mine = work + t * p.per_thread, *v = mine, *yhat = v + p.v_floats;
        float *rows = yhat + p.m_floats, *mw = mine + mw_offset;
        long long lo, hi;
        fc_split_range(p.nblocks, fc_team_size(), t, &lo, &hi);
        if (lo == hi) memset(mw, 0, sizeof(float) * WG_XI * s->c * s->k);
        const fc_int all_rows = s->n * p.th;
        for (fc_int blk = lo; blk < hi && !failed; blk++) {
            const fc_int r0 = blk * p.rows, r1 = min_i(all_rows, r0 + p.rows);
            ctx->wg_input(s, &p, (int)ldv, x, r0, r1, v, rows);
            ctx->wg_grad(s, &p, dy, r0, r1, ldv, yhat, rows);
            for (int xi = 0; xi < WG_XI && !failed; xi++)
                failed |= fc_gemm(precision, 0, 1, s->c, s->k, (r1 - r0) * p.tw, 1.0f,
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

/* ---- bf16: the 16 GEMMs with the bf16 micro-kernel ----------------------
 * The same transforms, in float32, and the same algebra and blocks as the
 * float32 forward (plan_for, with the bf16 kernel's MR and NR); only M_xi
 * = U_xi @ V_xi runs in bf16. U is packed once per call into the bf16
 * kernel's A panels, and each block's V, written by the table's wg_input
 * as float32 slivers, is rounded into bf16 slivers one point xi at a time,
 * while it is in L2; the bf16 micro-kernel is then called directly, as the
 * float32 forward calls its own. Rounding once to nearest even (the
 * packers of kernels/bf16.h) and summing C in the contract's k blocks of
 * FC_BF16_KC, this gives the bits of fc_gemm(FC_BFLOAT16) on U and V: U and
 * V are each rounded once, after their transforms; nothing else is. Every
 * ISA's transforms and bf16 GEMM give the same bits, so the outputs are the
 * same bits on every ISA, and (as M_xi's sums run over C alone, per tile)
 * for every thread count and blocking. dW is fc_conv2d_winograd_dweight in
 * bf16: there the sums run over tiles, cut by blocks and threads, so its
 * bits depend on the thread count as float32's do.
 *
 * Layouts: a bf16 panel or sliver of R rows holds C rounded up to even
 * rows of pairs (kernels/bf16.h), k block b from row b * FC_BF16_KC (an even
 * number, so every block but the last is whole pairs); B slivers are
 * bf16_sliver() values apart, a whole number of cache lines, as the
 * micro-kernel loads them aligned. */
static fc_int bf16_rows(fc_int c) { return (c + 1) & ~(fc_int)1; }
static fc_int bf16_sliver(fc_int c, int nr) { return ceil_div(nr * bf16_rows(c), 32) * 32; }

/* One block's M (as run_blocks), the bf16 way: vp the block's float32 V,
 * vb room for one point's bf16 slivers, ub the bf16 U panels. */
static void run_block_bf16(const fc_conv_shape *s, const fc_wg_plan *p, const fc_gemm_bf16_kernel *bk,
                           const fc_bf16 *ub, const float *vp, fc_bf16 *vb, float *m, fc_int tiles)
{
    const int mr = bk->mr, nr = bk->nr;
    const fc_int panel = mr * bf16_rows(s->c), sliver = bf16_sliver(s->c, nr), ldm = p->tiles;
    const fc_int slivers = ceil_div(tiles, nr);
    for (int xi = 0; xi < WG_XI; xi++) {
        const float *v = vp + xi * p->v_stride;
        for (fc_int sl = 0; sl < slivers; sl++)
            for (fc_int c0 = 0; c0 < s->c; c0 += FC_BF16_KC)
                bk->pack_nr(nr, min_i(FC_BF16_KC, s->c - c0), v + (sl * s->c + c0) * nr, 1, nr,
                            vb + sl * sliver + c0 * nr);
        for (fc_int ks = 0; ks < p->nks; ks++) {
            const fc_bf16 *a = ub + (xi * p->nks + ks) * panel;
            float *mt = m + xi * p->m_stride + ks * mr * ldm;
            const fc_int rows_k = min_i(mr, s->k - ks * mr);
            for (fc_int sl = 0; sl < slivers; sl++)
                for (fc_int c0 = 0; c0 < s->c; c0 += FC_BF16_KC)
                    bk->ukr(min_i(FC_BF16_KC, s->c - c0), 1.0f, a + c0 * mr, vb + sl * sliver + c0 * nr,
                            c0 ? 1.0f : 0.0f, mt + sl * nr, ldm, rows_k, min_i(nr, tiles - sl * nr));
        }
    }
}

static int winograd_forward_bf16(const fc_conv_shape *s, const float *x, const float *weight,
                                 const fc_wg_out *out, int nthreads)
{
    const fc_ctx *ctx = fc_ctx_current();
    const fc_gemm_bf16_kernel *bk = ctx->gemm_bf16;
    fc_wg_output_fn *tout = out->pooled ? ctx->wg_output_pool : ctx->wg_output;
    const int mr = bk->mr, nr = bk->nr;
    fc_wg_plan p = plan_for(s, mr, nr, nthreads);
    /* + one point's bf16 V slivers, two values a float */
    p.tmp_floats = round_to_line(ceil_div(p.slivers * bf16_sliver(s->c, nr), 2));
    p.per_thread += p.tmp_floats;
    const int team = (int)min_i(nthreads > 1 ? nthreads : 1, p.nblocks);
    const fc_int panel = mr * bf16_rows(s->c), panels = WG_XI * p.nks;
    const fc_int ua_floats = round_to_line(panels * mr * s->c);
    const fc_int ub_floats = round_to_line(ceil_div(panels * panel, 2));
    float *work = alloc_lines(ua_floats + ub_floats + team * p.per_thread);
    if (!work) return FC_ENOMEM;
    float *ua = work;
    fc_bf16 *ub = (fc_bf16 *)(work + ua_floats);
#pragma omp parallel num_threads(team) if (team > 1)
    {
        transform_weights(s, weight, mr, p.nks, ua); /* ends with a barrier */
#pragma omp for schedule(static)
        for (fc_int q = 0; q < panels; q++)
            for (fc_int c0 = 0; c0 < s->c; c0 += FC_BF16_KC)
                bk->pack_mr(mr, min_i(FC_BF16_KC, s->c - c0), ua + (q * s->c + c0) * mr, 1, mr,
                            ub + q * panel + c0 * mr);
        float *vp = work + ua_floats + ub_floats + fc_thread_id() * p.per_thread;
        float *m = vp + p.v_floats, *rows = m + p.m_floats;
        fc_bf16 *vb = (fc_bf16 *)(rows + p.row_floats);
        const fc_int all_rows = s->n * p.th;
#pragma omp for schedule(dynamic, 1)
        for (fc_int blk = 0; blk < p.nblocks; blk++) {
            const fc_int r0 = blk * p.rows, r1 = min_i(all_rows, r0 + p.rows);
            ctx->wg_input(s, &p, nr, x, r0, r1, vp, rows);
            run_block_bf16(s, &p, bk, ub, vp, vb, m, (r1 - r0) * p.tw);
            tout(s, &p, m, p.tiles, out, r0, r1);
        }
    }
    free(work);
    return 0;
}
