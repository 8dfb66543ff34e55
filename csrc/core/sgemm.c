/* Single-precision GEMM, laid out like BLIS/GotoBLAS: this file holds the
 * blocking, the packing and the threading; the micro-kernels and their block
 * sizes live in csrc/kernels/<isa>/ behind csrc/kernels/gemm_ukernel.h, and
 * the ISA's table (csrc/kernels/ctx.h) says which run.
 *
 * The five loops around the micro-kernel, for a C that one thread computes:
 *
 *   jc over n in NC steps          B block kc x nc (L3), packed during the
 *    pc over k in KC steps           first ic pass; beta applies on the
 *     ic over m in MC steps          first pc block only
 *                                  A block mc x kc packed per (jc, pc, ic): L2
 *      jr over nc in NR steps      a kc x NR sliver of B, reused from L1 by ...
 *       ir over mc in MR steps     ... every MR x kc sliver of A: micro-kernel
 *
 * Block lengths are evened out (k = 288 runs as 144 + 144 with KC = 256), and
 * the B block is packed in L2-sized sub-blocks just before their first use
 * (see gemm_serial), which matters for the skinny GEMMs of im2col
 * convolutions: there A is a single MC block and B is only streamed through.
 *
 * Threads. The thread count never changes what is summed in which order, so
 * results are bitwise identical for any thread count:
 *
 * - Usually C is cut into a grid of tm x tn rectangles on micro-tile
 *   boundaries, one per thread (or, when only n is cut, a few per thread,
 *   handed out as threads become free), and each thread runs the five loops
 *   above on its rectangles with its own packing buffers. No barriers, and
 *   no shared packed block: packing is cheap next to the multiply-adds (A is
 *   re-packed by each of the tn columns of the grid, B by each of the tm
 *   rows), and the grid is chosen to keep that re-packing small (plan_grid).
 *   Every element of C gets the same KC blocks in the same order as with one
 *   thread, whichever rectangle it falls in. BLIS's scheme instead splits
 *   the ic loop around one shared packed B block, with two barriers per KC
 *   block; in A/B runs on a busy 2-core machine it was 1.1 to 5 times
 *   slower than this, its barriers waiting on whichever thread another
 *   process had preempted.
 * - When C is tiny and k long (a weight gradient: 8 x 25 x 50176), the grid
 *   has too few micro-tiles to share out and packing dominates, so the k
 *   range is cut into a fixed number of chunks (set by the shape alone), each
 *   chunk's product goes to its own partial buffer, and the partials are
 *   summed in chunk order.
 *
 * Precision. In bf16 (FC_BFLOAT16) the same loops run the table's bf16
 * micro-kernel and packers (kernels/bf16.h), which round op(A) and op(B)
 * to bf16 as they pack them: no pass converts whole arrays. Its k blocks
 * are FC_BF16_KC long from k = 0 on every ISA, and it has no k split,
 * since the bf16 contract fixes the order of the sums: the bits are the
 * reference's on every ISA and at any thread count.
 *
 * Memory: packing buffers are per thread (_Thread_local), 64-byte aligned,
 * grown when a call needs more and kept for the next call, and freed when
 * the thread exits. So a call allocates nothing in steady state, and calls
 * from several threads at once (the convolution calls sgemm with nthreads
 * == 1 from inside its own parallel region) never share a buffer.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fastconv.h"
#include "core/fc_omp.h"
#include "kernels/ctx.h"

/* ---- per-thread workspace ------------------------------------------------ */

enum { WS_A, WS_B, WS_PARTIAL, WS_STAGE, WS_COUNT };

typedef struct {
    float *buf[WS_COUNT];
    size_t cap[WS_COUNT]; /* in floats */
} workspace;

static _Thread_local workspace tls_ws;
static pthread_key_t ws_key;
static pthread_once_t ws_key_once = PTHREAD_ONCE_INIT;
static int ws_key_ok;

/* Runs at thread exit (pthread key destructor), while the thread's
 * _Thread_local storage is still valid. */
static void ws_release(void *p)
{
    workspace *ws = p;
    for (int i = 0; i < WS_COUNT; i++) {
        free(ws->buf[i]);
        ws->buf[i] = NULL;
        ws->cap[i] = 0;
    }
}

static void ws_key_create(void) { ws_key_ok = pthread_key_create(&ws_key, ws_release) == 0; }

/* This thread's buffer `which`, with room for at least `count` floats, or NULL
 * when it cannot be allocated. Contents are not kept across growth. */
static float *ws_get(int which, size_t count)
{
    workspace *ws = &tls_ws;
    if (count <= ws->cap[which]) return ws->buf[which];
    if (ws->cap[WS_A] + ws->cap[WS_B] + ws->cap[WS_PARTIAL] + ws->cap[WS_STAGE] == 0) {
        /* First allocation on this thread: arrange for the buffers to be freed
         * when it exits. Without a key they live until the process ends. */
        pthread_once(&ws_key_once, ws_key_create);
        if (ws_key_ok) pthread_setspecific(ws_key, ws);
    }
    free(ws->buf[which]);
    ws->cap[which] = 0;
    size_t bytes = (count * sizeof(float) + 63) & ~(size_t)63; /* aligned_alloc wants a multiple */
    ws->buf[which] = aligned_alloc(64, bytes);
    if (ws->buf[which] != NULL) ws->cap[which] = bytes / sizeof(float);
    return ws->buf[which];
}

/* ---- the problem and its sub-problems ------------------------------------ */

typedef struct {
    int ta, tb;
    fc_int m, n, k;
    float alpha, beta;
    const float *a, *b;
    float *c;
    fc_int lda, ldb, ldc;
    /* Set by fc_sgemm_fused only: B packed by bsrc (rows from bp0, columns
     * from bj0 of the whole problem's B), and the epilogue. */
    const fc_b_source *bsrc;
    fc_int bp0, bj0;
    const float *bias; /* of row 0 of this (sub-)problem */
    int relu;
} gemm_problem;

static inline fc_int min_i(fc_int x, fc_int y) { return x < y ? x : y; }
static inline fc_int max_i(fc_int x, fc_int y) { return x > y ? x : y; }
static inline fc_int ceil_div(fc_int x, fc_int y) { return (x + y - 1) / y; }

/* Address of op(X)[r, col] for X stored row-major with row stride ld. */
static inline const float *op_at(const float *x, fc_int ld, int trans, fc_int r, fc_int col)
{
    return trans ? x + col * ld + r : x + r * ld + col;
}

/* The block rows [i0, i1) x columns [j0, j1) of C, over k range [p0, p1). */
static gemm_problem sub_problem(const gemm_problem *g, fc_int i0, fc_int i1, fc_int j0, fc_int j1,
                                fc_int p0, fc_int p1)
{
    gemm_problem s = *g;
    s.m = i1 - i0;
    s.n = j1 - j0;
    s.k = p1 - p0;
    s.a = op_at(g->a, g->lda, g->ta, i0, p0);
    if (g->bsrc) {
        s.bp0 += p0;
        s.bj0 += j0;
    } else {
        s.b = op_at(g->b, g->ldb, g->tb, p0, j0);
    }
    if (g->bias) s.bias += i0;
    s.c = g->c + i0 * g->ldc + j0;
    return s;
}

/* ---- the micro-kernel, in either precision --------------------------------- */

/* What the loops need of a micro-kernel: its blocks, and through the
 * functions below its packers and its tile update. One of f32, bf16 is set. */
typedef struct {
    const fc_gemm_kernel *f32;
    const fc_gemm_bf16_kernel *bf16;
    fc_int mr, nr, mc, kc, nc;
} gemm_kernel;

static gemm_kernel kernel_of(int precision)
{
    const fc_ctx *ctx = fc_ctx_current();
    if (precision == FC_BFLOAT16) {
        const fc_gemm_bf16_kernel *k = ctx->gemm_bf16;
        return (gemm_kernel){NULL, k, k->mr, k->nr, k->mc, FC_BF16_KC, k->nc};
    }
    const fc_gemm_kernel *k = ctx->gemm;
    return (gemm_kernel){k, NULL, k->mr, k->nr, k->mc, k->kc, k->nc};
}

/* Bytes of a packed R x kc sliver: bf16 takes k in pairs (kernels/bf16.h). */
static size_t sliver_bytes(const gemm_kernel *kr, fc_int R, fc_int kc)
{
    if (kr->bf16) return (size_t)(R * ((kc + 1) & ~(fc_int)1)) * sizeof(fc_bf16);
    return (size_t)(R * kc) * sizeof(float);
}

static float *ws_get_bytes(int which, size_t bytes) { return ws_get(which, (bytes + 3) / sizeof(float)); }

/* ---- packing ------------------------------------------------------------- */

/* Pack `rows` x kc elements X[r, p] = src[r * rs + p * cs] into slivers of R
 * rows, each stored p-major: dst[(r / R) * R * kc + p * R + r % R]. Rows past
 * `rows` are zero-filled to a multiple of R, so the micro-kernel can always
 * read full slivers. op(A) packs with R = MR (r = i); op(B) packs with R = NR
 * viewed transposed (r = j). One of rs, cs is 1: rows of A and B are
 * contiguous in memory.
 *
 * rs == 1 (B not transposed, A transposed): the R values of a sliver for one
 * p are contiguous, and the kernel table's own packer (pack_mr, pack_nr in
 * kernels/pack.h, compiled with R constant) copies them. */

/* Four floats as one value, for the 4 x 4 transposes of pack_strided. GNU C
 * vector extensions (GCC, clang) compile to the baseline SIMD of the target
 * (SSE2 shuffles on x86-64, NEON on ARM) without any ISA flag. */
typedef float v4f __attribute__((vector_size(16)));
typedef int v4i __attribute__((vector_size(16)));
#ifdef __clang__
#define SHUFFLE4(x, y, i0, i1, i2, i3) __builtin_shufflevector(x, y, i0, i1, i2, i3)
#else
#define SHUFFLE4(x, y, i0, i1, i2, i3) __builtin_shuffle(x, y, (v4i){i0, i1, i2, i3})
#endif

/* dst[q * ld + r] = src[r * rs + q] for r, q < 4: a 4 x 4 block transposed. */
static inline void transpose4x4(const float *src, fc_int rs, float *dst, fc_int ld)
{
    v4f r0, r1, r2, r3;
    memcpy(&r0, src, sizeof r0);
    memcpy(&r1, src + rs, sizeof r1);
    memcpy(&r2, src + 2 * rs, sizeof r2);
    memcpy(&r3, src + 3 * rs, sizeof r3);
    const v4f t0 = SHUFFLE4(r0, r1, 0, 4, 1, 5), t1 = SHUFFLE4(r0, r1, 2, 6, 3, 7);
    const v4f t2 = SHUFFLE4(r2, r3, 0, 4, 1, 5), t3 = SHUFFLE4(r2, r3, 2, 6, 3, 7);
    const v4f c0 = SHUFFLE4(t0, t2, 0, 1, 4, 5), c1 = SHUFFLE4(t0, t2, 2, 3, 6, 7);
    const v4f c2 = SHUFFLE4(t1, t3, 0, 1, 4, 5), c3 = SHUFFLE4(t1, t3, 2, 3, 6, 7);
    memcpy(dst, &c0, sizeof c0);
    memcpy(dst + ld, &c1, sizeof c1);
    memcpy(dst + 2 * ld, &c2, sizeof c2);
    memcpy(dst + 3 * ld, &c3, sizeof c3);
}

/* cs == 1 (A not transposed, B transposed): each sliver row is contiguous
 * along p, and the packing is a transpose. It goes in 4 x 4 blocks, four
 * rows read side by side: 3.5 times faster than a scalar copy of one row at
 * a time, whose stores all land a sliver width apart. Not more rows at once:
 * when the row stride is a multiple of 4 KiB (im2col rows of 50176 floats
 * are), every row maps to the same L1 set, and 8 or more of them would evict
 * each other's lines before they are used up. */
static void pack_strided(fc_int rows, fc_int kc, int R, const float *src, fc_int rs, float *restrict dst)
{
    for (fc_int r0 = 0; r0 < rows; r0 += R, src += R * rs, dst += R * kc) {
        const int h = (int)min_i(R, rows - r0);
        if (h < R) memset(dst, 0, sizeof(float) * R * kc); /* one call, not one per p */
        int i = 0;
        for (; i + 4 <= h; i += 4) {
            const float *s = src + i * rs;
            fc_int p = 0;
            for (; p + 4 <= kc; p += 4) transpose4x4(s + p, rs, dst + p * R + i, R);
            for (; p < kc; p++)
                for (int r = 0; r < 4; r++) dst[p * R + i + r] = s[r * rs + p];
        }
        for (; i < h; i++)
            for (fc_int p = 0; p < kc; p++) dst[p * R + i] = src[i * rs + p];
    }
}

/* X[r, p] = src[r * rs + p * cs] into the slivers of A (of MR rows) or, when
 * of_b, of B (of NR rows, r = j), in kr's precision. */
static void pack_slivers(const gemm_kernel *kr, int of_b, fc_int rows, fc_int kc, const float *src,
                         fc_int rs, fc_int cs, void *restrict dst)
{
    if (kr->bf16)
        (of_b ? kr->bf16->pack_nr : kr->bf16->pack_mr)(rows, kc, src, rs, cs, dst);
    else if (rs != 1)
        pack_strided(rows, kc, (int)(of_b ? kr->nr : kr->mr), src, rs, dst);
    else
        (of_b ? kr->f32->pack_nr : kr->f32->pack_mr)(rows, kc, src, cs, dst);
}

/* Columns [j0, j0 + nb) x rows [p0, p0 + kc) of B from its source into
 * slivers: in bf16, staged as float32 slivers, then rounded as they are
 * packed, one sliver at a time (still in L1). */
static int pack_from_source(const gemm_kernel *kr, const fc_b_source *bsrc, fc_int p0, fc_int kc,
                            fc_int j0, fc_int nb, void *restrict dst)
{
    const fc_int NR = kr->nr, slivers = ceil_div(nb, NR);
    if (!kr->bf16) {
        bsrc->pack(bsrc->ctx, p0, kc, j0, nb, (int)NR, dst);
        return 0;
    }
    float *stage = ws_get(WS_STAGE, (size_t)(slivers * NR * kc));
    if (stage == NULL) return FC_ENOMEM;
    bsrc->pack(bsrc->ctx, p0, kc, j0, nb, (int)NR, stage);
    for (fc_int q = 0; q < slivers; q++)
        kr->bf16->pack_nr(NR, kc, stage + q * NR * kc, 1, NR,
                          (fc_bf16 *)((char *)dst + q * sliver_bytes(kr, NR, kc)));
    return 0;
}

/* ---- one thread's GEMM: the five loops ----------------------------------- */

/* Cut [0, total) into ceil(total / block) blocks of near-equal length, each a
 * multiple of `unit` (except the last): k = 288 with KC = 256 runs 144 + 144,
 * not 256 + 32, whose second block would spend more on C than on FMAs. */
static fc_int even_block(fc_int total, fc_int block, fc_int unit)
{
    fc_int nblocks = ceil_div(total, block);
    return min_i(block, ceil_div(ceil_div(total, nblocks), unit) * unit);
}

/* The fused epilogue on an m x n tile of C (row stride ldc): + bias[i] on
 * row i (bias may be NULL), then ReLU as relu_forward (x < 0 ? 0 : x keeps
 * NaN). The same additions as a separate pass, so results match one. */
static void tile_epilogue(float *c, fc_int ldc, fc_int m, fc_int n, const float *bias, int relu)
{
    for (fc_int i = 0; i < m; i++) {
        float *ci = c + i * ldc;
        if (bias) {
            const float b = bias[i];
            for (fc_int j = 0; j < n; j++) ci[j] += b;
        }
        if (relu)
            for (fc_int j = 0; j < n; j++) ci[j] = ci[j] < 0.0f ? 0.0f : ci[j];
    }
}

#define BSRC_MIN_COLS 256

/* The m x n tile c of C := alpha * a-sliver . b-sliver + beta * C over kc,
 * then, on the last k block of a fused problem, its epilogue. */
static void update_tile(const gemm_kernel *kr, const gemm_problem *g, fc_int kc, const void *a,
                        const void *b, float beta, float *c, fc_int m, fc_int n, int epilogue,
                        const float *bias)
{
    if (kr->bf16) {
        if (epilogue && kr->bf16->ukr_fused) {
            kr->bf16->ukr_fused(kc, g->alpha, a, b, beta, c, g->ldc, m, n, bias, g->relu);
            return;
        }
        kr->bf16->ukr(kc, g->alpha, a, b, beta, c, g->ldc, m, n);
    } else if (epilogue && kr->f32->ukr_fused) {
        kr->f32->ukr_fused(kc, g->alpha, a, b, beta, c, g->ldc, m, n, bias, g->relu);
        return;
    } else {
        kr->f32->ukr(kc, g->alpha, a, b, beta, c, g->ldc, m, n);
    }
    if (epilogue) tile_epilogue(c, g->ldc, m, n, bias, g->relu);
}

static int gemm_serial(const gemm_kernel *kr, const gemm_problem *g)
{
    const fc_int MR = kr->mr, NR = kr->nr;
    const int fused = g->bsrc || g->bias || g->relu;
    /* With a B source or a bias: C finished in one pass when k allows, so
     * the epilogue runs once per tile, on a tile the micro-kernel just
     * stored (still in L1). Not for a ReLU alone: its k blocks must be the
     * plain GEMM's, so that a fused ReLU gives relu(plain C) bit for bit
     * (the blocks set the order of the k sums). In bf16 the blocks are the
     * contract's (kernels/bf16.h). */
    const fc_int KC = kr->bf16 ? kr->kc
                      : (g->bsrc || g->bias) && g->k <= FC_GEMM_ONE_PASS_K ? g->k
                                                                           : even_block(g->k, kr->kc, 1);
    const fc_int MC = even_block(g->m, kr->mc, MR);
    const fc_int NC = even_block(g->n, kr->nc, NR);
    /* The B block is packed during the first ic pass, a sub-block of NB
     * columns just ahead of its first use, so that the micro-kernels read it
     * from L2 (sized like an A block, MC x KC floats, which the table fits in
     * L2) rather than from L3. When A is a single MC block, as in the skinny
     * im2col GEMMs, that first pass is the only one: then every sub-block
     * reuses the same buffer, which stays in L2 instead of being written
     * back to L3 for nothing. */
    fc_int NB = ceil_div(kr->mc * kr->kc, KC * NR) * NR;
    /* A packing callback pays a cost per call and per row: ask it for at
     * least BSRC_MIN_COLS columns at a time (with k <= 576, still within L2). */
    if (g->bsrc) NB = max_i(NB, ceil_div(BSRC_MIN_COLS, NR) * NR);
    const int one_pass = g->m <= MC;
    const fc_int b_slivers = ceil_div(one_pass ? min_i(NB, NC) : NC, NR);
    char *ap = (char *)ws_get_bytes(WS_A, ceil_div(MC, MR) * sliver_bytes(kr, MR, KC));
    char *bp = (char *)ws_get_bytes(WS_B, b_slivers * sliver_bytes(kr, NR, KC));
    if (ap == NULL || bp == NULL) return FC_ENOMEM;

    /* Strides of op(A)[i, p] and op(B)[p, j] in memory. */
    const fc_int a_rs = g->ta ? 1 : g->lda, a_cs = g->ta ? g->lda : 1;
    const fc_int b_js = g->tb ? g->ldb : 1, b_ps = g->tb ? 1 : g->ldb;

    for (fc_int jc = 0; jc < g->n; jc += NC) {
        const fc_int nc = min_i(NC, g->n - jc);
        for (fc_int pc = 0; pc < g->k; pc += KC) {
            const fc_int kc = min_i(KC, g->k - pc);
            const size_t a_sliver = sliver_bytes(kr, MR, kc), b_sliver = sliver_bytes(kr, NR, kc);
            const float beta = pc == 0 ? g->beta : 1.0f;
            const int last = fused && pc + kc == g->k;
            for (fc_int ic = 0; ic < g->m; ic += MC) {
                const fc_int mc = min_i(MC, g->m - ic);
                pack_slivers(kr, 0, mc, kc, op_at(g->a, g->lda, g->ta, ic, pc), a_rs, a_cs, ap);
                for (fc_int jb = 0; jb < nc; jb += NB) {
                    const fc_int nb = min_i(NB, nc - jb);
                    char *bpj = one_pass ? bp : bp + (jb / NR) * b_sliver;
                    if (ic == 0 && g->bsrc) {
                        if (pack_from_source(kr, g->bsrc, g->bp0 + pc, kc, g->bj0 + jc + jb, nb, bpj))
                            return FC_ENOMEM;
                    } else if (ic == 0) {
                        pack_slivers(kr, 1, nb, kc, op_at(g->b, g->ldb, g->tb, pc, jc + jb), b_js, b_ps,
                                     bpj);
                    }
                    for (fc_int jr = 0; jr < nb; jr += NR)
                        for (fc_int ir = 0; ir < mc; ir += MR) {
                            float *ct = g->c + (ic + ir) * g->ldc + jc + jb + jr;
                            const fc_int mt = min_i(MR, mc - ir), nt = min_i(NR, nb - jr);
                            const float *bias = g->bias ? g->bias + ic + ir : NULL;
                            update_tile(kr, g, kc, ap + (ir / MR) * a_sliver, bpj + (jr / NR) * b_sliver,
                                        beta, ct, mt, nt, last, bias);
                        }
                }
            }
        }
    }
    return 0;
}

/* ---- threading: a grid of rectangles of C -------------------------------- */

/* Below this many multiply-adds (a few microseconds) one thread does it all:
 * waking a team costs more than it saves. */
#define PAR_MIN_MADDS (1 << 18)
/* Cost of packing one element, in multiply-adds: a packed element takes about
 * a cycle to copy, in which the micro-kernel retires 16 FMA lanes. */
#define PACK_COST 16

typedef struct {
    int tm, tn;
} grid;

/* The tm x tn grid (tm * tn <= nthreads) whose slowest thread finishes first,
 * by a model of its multiply-adds (padded to whole micro-tiles) plus packing
 * (B once per row of the grid, A once per NC block per column). */
static grid plan_grid(const gemm_kernel *kr, fc_int m, fc_int n, fc_int k, int nthreads)
{
    grid best = {1, 1};
    if ((double)m * n * k < PAR_MIN_MADDS) return best;
    const fc_int pm = ceil_div(m, kr->mr), pn = ceil_div(n, kr->nr);
    double best_cost = -1;
    for (int tm = 1; tm <= nthreads && tm <= pm; tm++) {
        int tn = (int)min_i(nthreads / tm, pn);
        double rows = (double)ceil_div(pm, tm) * kr->mr, cols = (double)ceil_div(pn, tn) * kr->nr;
        double cost = rows * cols + PACK_COST * (rows * ceil_div((fc_int)cols, kr->nc) + cols);
        if (best_cost < 0 || cost < best_cost) {
            best_cost = cost;
            best = (grid){tm, tn};
        }
    }
    return best;
}

/* When the grid cuts n only (the skinny GEMMs), each thread's column range is
 * cut into up to TASKS_PER_THREAD tasks handed out as threads become free, so
 * that a thread slowed down by another process on its core does not hold up
 * the rest: how the columns are cut changes no result. Each task re-packs A,
 * small there; keeping TASK_MIN_SLIVERS slivers of B per task keeps that
 * re-packing to a few percent. */
#define TASKS_PER_THREAD 4
#define TASK_MIN_SLIVERS 32

static int gemm_grid(const gemm_kernel *kr, const gemm_problem *g, int nthreads)
{
    const grid gr = plan_grid(kr, g->m, g->n, g->k, nthreads);
    const int threads = gr.tm * gr.tn;
    if (threads == 1) return gemm_serial(kr, g);
    const fc_int pm = ceil_div(g->m, kr->mr), pn = ceil_div(g->n, kr->nr);
    fc_int tn = gr.tn;
    if (gr.tm == 1) tn = min_i(gr.tn * TASKS_PER_THREAD, max_i(gr.tn, pn / TASK_MIN_SLIVERS));
    const fc_int tasks = gr.tm * tn;
    int err = 0;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(| : err)
    for (fc_int r = 0; r < tasks; r++) {
        long long i0, i1, j0, j1;
        fc_split_range(pm, gr.tm, (int)(r / tn), &i0, &i1);
        fc_split_range(pn, (int)tn, (int)(r % tn), &j0, &j1);
        gemm_problem s = sub_problem(g, i0 * kr->mr, min_i(i1 * kr->mr, g->m), j0 * kr->nr,
                                     min_i(j1 * kr->nr, g->n), 0, g->k);
        err |= gemm_serial(kr, &s) != 0;
    }
    return err ? FC_ENOMEM : 0;
}

/* ---- threading: chunks of k for a tiny C --------------------------------- */

/* A C of at most this many elements (one L1 worth) with k of at least two
 * chunks goes through the k split. */
#define KSPLIT_MAX_MN 4096
/* Chunks are KSPLIT_CHUNK_KC x KC long, at most KSPLIT_MAX_CHUNKS of them,
 * which bounds the partials to 64 x 16 KB. */
#define KSPLIT_CHUNK_KC 4
#define KSPLIT_MAX_CHUNKS 64

static int use_ksplit(const gemm_kernel *kr, fc_int m, fc_int n, fc_int k)
{
    return m * n <= KSPLIT_MAX_MN && k >= 2 * KSPLIT_CHUNK_KC * kr->kc;
}

/* Chunks [q0, q1) of the k range, each into its own partial (alpha = 1). */
static int ksplit_chunks(const gemm_kernel *kr, const gemm_problem *g, fc_int chunk, float *partial,
                         fc_int q0, fc_int q1)
{
    for (fc_int q = q0; q < q1; q++) {
        gemm_problem s = sub_problem(g, 0, g->m, 0, g->n, q * chunk, min_i((q + 1) * chunk, g->k));
        s.alpha = 1.0f;
        s.beta = 0.0f;
        s.c = partial + q * g->m * g->n;
        s.ldc = g->n;
        if (gemm_serial(kr, &s) != 0) return FC_ENOMEM;
    }
    return 0;
}

/* C = alpha * (sum of the partials in chunk order) + beta * C. */
static void ksplit_reduce(const gemm_problem *g, fc_int chunks, const float *partial)
{
    const fc_int mn = g->m * g->n;
    for (fc_int i = 0; i < g->m; i++)
        for (fc_int j = 0; j < g->n; j++) {
            const float *pq = partial + i * g->n + j;
            float s = pq[0];
            for (fc_int q = 1; q < chunks; q++) s += pq[q * mn];
            float *cij = g->c + i * g->ldc + j;
            *cij = g->beta == 0.0f ? g->alpha * s : g->alpha * s + g->beta * *cij;
        }
}

static int gemm_ksplit(const gemm_kernel *kr, const gemm_problem *g, int nthreads)
{
    const fc_int chunks = min_i(ceil_div(g->k, KSPLIT_CHUNK_KC * kr->kc), KSPLIT_MAX_CHUNKS);
    const fc_int chunk = ceil_div(g->k, chunks);
    float *partial = ws_get(WS_PARTIAL, (size_t)(chunks * g->m * g->n));
    if (partial == NULL) return FC_ENOMEM;
    int err = 0;
    if (nthreads == 1 || (double)g->m * g->n * g->k < PAR_MIN_MADDS) {
        err = ksplit_chunks(kr, g, chunk, partial, 0, chunks) != 0;
    } else {
        /* Chunks go to threads as they become free: each has its own partial,
         * so who computes it does not matter. */
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) reduction(| : err)
        for (fc_int q = 0; q < chunks; q++) err |= ksplit_chunks(kr, g, chunk, partial, q, q + 1) != 0;
    }
    if (err) return FC_ENOMEM;
    /* The sum is at most KSPLIT_MAX_CHUNKS x KSPLIT_MAX_MN additions: done by
     * the calling thread, it needs no barrier inside the parallel region. */
    ksplit_reduce(g, chunks, partial);
    return 0;
}

/* ---- entry point --------------------------------------------------------- */

int fc_sgemm(int trans_a, int trans_b, fc_int m, fc_int n, fc_int k, float alpha,
             const float *a, fc_int lda, const float *b, fc_int ldb, float beta,
             float *c, fc_int ldc, int nthreads)
{
    return fc_gemm(FC_FLOAT32, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                   nthreads, 1);
}

int fc_sgemm_ex(int trans_a, int trans_b, fc_int m, fc_int n, fc_int k, float alpha,
                const float *a, fc_int lda, const float *b, fc_int ldb, float beta,
                float *c, fc_int ldc, int nthreads, int allow_ksplit)
{
    return fc_gemm(FC_FLOAT32, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                   nthreads, allow_ksplit);
}

int fc_gemm(int precision, int trans_a, int trans_b, fc_int m, fc_int n, fc_int k, float alpha,
            const float *a, fc_int lda, const float *b, fc_int ldb, float beta, float *c,
            fc_int ldc, int nthreads, int allow_ksplit)
{
    if (m <= 0 || n <= 0) return 0;
    if (k <= 0) {
        /* An empty sum: C = beta * C, never reading C when beta == 0. */
        for (fc_int i = 0; i < m; i++)
            for (fc_int j = 0; j < n; j++) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
        return 0;
    }
    const gemm_kernel kr = kernel_of(precision);
    const gemm_problem g = {trans_a, trans_b, m, n, k, alpha, beta, a, b, c, lda, ldb, ldc,
                            NULL, 0, 0, NULL, 0};
    if (nthreads < 1) nthreads = 1;
    if (allow_ksplit && !kr.bf16 && use_ksplit(&kr, m, n, k)) return gemm_ksplit(&kr, &g, nthreads);
    if (nthreads == 1) return gemm_serial(&kr, &g);
    return gemm_grid(&kr, &g, nthreads);
}

int fc_sgemm_fused(int precision, fc_int m, fc_int n, fc_int k, const float *a, fc_int lda,
                   const float *b, fc_int ldb, const fc_b_source *bsrc, const float *bias, int relu,
                   float *c, fc_int ldc, int nthreads)
{
    if (m <= 0 || n <= 0) return 0;
    if (k <= 0) { /* an empty sum: the epilogue alone */
        for (fc_int i = 0; i < m; i++)
            for (fc_int j = 0; j < n; j++) c[i * ldc + j] = 0.0f;
        tile_epilogue(c, ldc, m, n, bias, relu);
        return 0;
    }
    const gemm_kernel kr = kernel_of(precision);
    const gemm_problem g = {0, 0, m, n, k, 1.0f, 0.0f, a, b, c, lda, ldb, ldc,
                            bsrc, 0, 0, bias, relu};
    if (nthreads <= 1) return gemm_serial(&kr, &g);
    return gemm_grid(&kr, &g, nthreads);
}

/* Chunks of this many floats or more go to threads. */
#define TO_BF16_PAR_MIN 65536

void fc_to_bf16(const float *x, fc_int n, uint16_t *y, int nthreads)
{
    fc_to_bf16_fn *const row = fc_ctx_current()->to_bf16;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && n >= TO_BF16_PAR_MIN)
    {
        long long lo, hi;
        fc_split_range(n, fc_team_size(), fc_thread_id(), &lo, &hi);
        row(x + lo, hi - lo, y + lo);
    }
}
