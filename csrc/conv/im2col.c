/* 2-D convolution by im2col + GEMM (contract in fastconv.h; conv/plan.c
 * picks this or another algorithm, and its variant).
 *
 * With W viewed as a (K, C*kh*kw) matrix and, per image n, the column matrix
 * col_n = im2col(x_n) of shape (C*kh*kw, OH*OW):
 *   forward:   y_n  = W @ col_n + bias
 *   backward:  dW   = sum_n dy_n @ col_n^T,   db = sum_n row sums of dy_n,
 *              dx_n = col2im(W^T @ dy_n)
 * The forward's variants (FC_IM2COL_*): explicit builds col_n, then runs the
 * GEMM; implicit has the GEMM pack its B panels straight from x (the
 * table's pack_columns), so col_n is never stored; pointwise is a 1x1
 * kernel with unit stride and no padding, whose col_n is x_n itself
 * (viewed as (C, H*W)), read in place (a group of several images, below,
 * is packed as implicit's). The backward pass builds col_n for
 * dW (x_n itself at 1x1), and its W^T @ dy_n is dx_n itself at 1x1. When
 * plan.c has dx computed as a convolution instead, this pass computes dW
 * and db alone.
 *
 * Small images are taken a few at a time: a group of g images puts its
 * column matrices side by side, (C*kh*kw, g*OH*OW), so that one GEMM is at
 * least FC_GROUP_COLS wide. An 8x8 output alone makes a 64-column GEMM that
 * packs all of W for few multiply-adds and runs at two thirds of the speed
 * of four images side by side. The group's outputs (or its dy, gathered)
 * then sit side by side in a (K, g*OH*OW) matrix. As long as fc_sgemm
 * gives each column of C the same arithmetic whatever the number of
 * columns, results do not depend on the grouping, hence on how a batch is
 * cut (tests/test_conv2d.py checks it).
 *
 * Threading. With at least as many images as threads, each thread runs
 * whole images with a single-threaded GEMM and its own workspace: in the
 * forward, groups of images go to threads as they come free (the outputs
 * do not depend on which thread runs them); in the backward the batch is
 * split statically and each thread keeps private dW/db partials that are
 * summed in thread order at the end, so results depend on the thread count
 * but never on timing, and each image's dx is written by one thread only. With fewer
 * images than threads (batch-1 inference), groups run one after another and
 * the GEMM, im2col and col2im use all threads instead.
 *
 * Workspace, allocated per call: per thread, one group's column matrix and
 * (K, g*OH*OW) matrix (plus the dW/db partials), never a whole batch's.
 */
#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastconv.h"
#include "core/fc_omp.h"
#include "kernels/ctx.h"
#include "conv/conv.h"

/* A group of images is the fewest whose column matrices, side by side, are
 * at least this wide: from there the GEMM's packing is amortized (a 64 x 288
 * W times 256 columns runs within 5% of the speed of 1024 columns), while a
 * group's column matrix still fits in L2 for the layers of small nets. */
#define FC_GROUP_COLS 256

/* Per-thread workspace slices are rounded up to whole 64-byte cache lines so
 * that two threads never write the same line. */
#define FC_LINE_FLOATS 16

/* Below this many elements, an im2col/col2im or row-sum pass is not worth a
 * parallel region. */
#define FC_CONV_PAR_MIN 32768

/* Independent partial sums in row_sum: enough for the compiler to vectorize
 * the loop and to hide the add latency. */
#define FC_SUM_LANES 16

static fc_int min_i(fc_int a, fc_int b) { return a < b ? a : b; }

static fc_int round_to_line(fc_int count)
{
    return (count + FC_LINE_FLOATS - 1) / FC_LINE_FLOATS * FC_LINE_FLOATS;
}

/* NULL when count floats do not fit in size_t or malloc fails. */
static float *alloc_floats(fc_int count)
{
    if ((uint64_t)count > SIZE_MAX / sizeof(float)) return NULL;
    return malloc((size_t)(count > 0 ? count : 1) * sizeof(float));
}

/* The column matrix of a group of gn images is x itself: a single image,
 * and a 1x1 kernel with unit stride and no padding on any side (im2col is
 * the identity). */
static int columns_are_x(const fc_conv_shape *s, fc_int gn)
{
    return gn == 1 && s->kh == 1 && s->kw == 1 && s->sh == 1 && s->sw == 1 && s->ph == 0 &&
           s->pw == 0 && s->oh == s->h && s->ow == s->w;
}

/* Input: one image x; output: its column matrix in col, rows ld apart.
 * Work is shared by (c, i) pairs, so that a single-channel image still
 * splits over threads; each runs the kw rows of its pair. */
static void im2col(const fc_conv_shape *s, const float *x, float *col, fc_int ld, int nthreads)
{
    fc_im2col_row_fn *const row = fc_ctx_current()->im2col_row;
    const fc_int units = s->c * s->kh;
#pragma omp parallel for num_threads(nthreads) schedule(static) \
    if (nthreads > 1 && units * s->kw * s->oh * s->ow >= FC_CONV_PAR_MIN)
    for (fc_int u = 0; u < units; u++)
        for (fc_int j = 0; j < s->kw; j++) row(s, x, col, ld, u / s->kh, u % s->kh, j);
}

static void col2im(const fc_conv_shape *s, float *col, fc_int ld, float *dx, int nthreads)
{
    fc_col2im_channel_fn *const channel = fc_ctx_current()->col2im_channel;
#pragma omp parallel for num_threads(nthreads) schedule(static) \
    if (nthreads > 1 && s->c > 1 && s->c * s->kh * s->kw * s->oh * s->ow >= FC_CONV_PAR_MIN)
    for (fc_int c = 0; c < s->c; c++) channel(s, col, ld, dx, c);
}

/* Sum of v[0, n) in a fixed order: FC_SUM_LANES running sums, then those
 * summed. A single running sum would be one long dependency chain that the
 * compiler may not reorder (nor vectorize), and would lose more precision. */
static float row_sum(const float *v, fc_int n)
{
    float lane[FC_SUM_LANES] = {0};
    fc_int i = 0;
    for (; i + FC_SUM_LANES <= n; i += FC_SUM_LANES)
        for (int l = 0; l < FC_SUM_LANES; l++) lane[l] += v[i + l];
    for (int l = 0; i < n; i++, l++) lane[l] += v[i];
    float sum = 0.0f;
    for (int l = 0; l < FC_SUM_LANES; l++) sum += lane[l];
    return sum;
}

/* How a thread walks its images: groups of g, and its workspace. */
typedef struct {
    fc_int g;           /* images per group */
    fc_int col_floats;  /* a group's column matrix; 0 when it is always x itself */
    fc_int wide_floats; /* a group's (K, g*OH*OW) outputs or dy; 0 when g == 1 */
    fc_int floats;      /* both, each rounded to whole cache lines */
} conv_plan;

/* The plan for a thread that runs up to `images` images. */
static conv_plan plan_for(const fc_conv_shape *s, fc_int images)
{
    const fc_int ohow = s->oh * s->ow;
    conv_plan p;
    p.g = min_i((FC_GROUP_COLS + ohow - 1) / ohow, images > 0 ? images : 1);
    p.col_floats = columns_are_x(s, p.g) ? 0 : round_to_line(s->c * s->kh * s->kw * p.g * ohow);
    p.wide_floats = p.g == 1 ? 0 : round_to_line(s->k * p.g * ohow);
    p.floats = p.col_floats + p.wide_floats;
    return p;
}

/* The column matrix of images [n, n + gn) side by side, rows gn*OH*OW apart:
 * x itself when columns_are_x, else built in col. */
static const float *group_columns(const fc_conv_shape *s, const float *x, fc_int n, fc_int gn,
                                  float *col, int nthreads)
{
    const fc_int chw = s->c * s->h * s->w, ohow = s->oh * s->ow;
    if (columns_are_x(s, gn)) return x + n * chw;
    for (fc_int q = 0; q < gn; q++)
        im2col(s, x + (n + q) * chw, col + q * ohow, gn * ohow, nthreads);
    return col;
}

/* Images [n0, n1) of the forward pass by `variant` (FC_IM2COL_*), with
 * workspace `work` laid out as `plan` says (no column matrix but for the
 * explicit variant).
 * nthreads: threads for each group's GEMM. Returns 0 or the GEMM's error. */
static int forward_images(const fc_conv_shape *s, int variant, int precision, const float *x,
                          const float *weight,
                          const float *bias, int relu, float *y, fc_int n0, fc_int n1,
                          const conv_plan *plan, float *work, int nthreads)
{
    const fc_int ckk = s->c * s->kh * s->kw, ohow = s->oh * s->ow, kohow = s->k * ohow;
    const fc_int chw = s->c * s->h * s->w;
    const fc_ctx *ctx = fc_ctx_current();
    for (fc_int n = n0; n < n1; n += plan->g) {
        const fc_int gn = min_i(plan->g, n1 - n), ld = gn * ohow;
        /* Slivers as wide as the precision's micro-kernel's. */
        const fc_column_source cols = {
            s, x + n * chw, precision == FC_BFLOAT16 ? ctx->gemm_bf16->deal_nr : ctx->gemm->deal_nr};
        const fc_b_source packer = {ctx->pack_columns, &cols};
        /* B is x itself (1x1, one image), packed from x (implicit), or the
         * column matrix built first (explicit). */
        const int explicit = variant == FC_IM2COL_EXPLICIT;
        const int packed = !explicit && !(variant == FC_IM2COL_POINTWISE && columns_are_x(s, gn));
        const float *b = explicit ? group_columns(s, x, n, gn, work, nthreads) : x + n * chw;
        /* One image writes its y directly; a group goes through `wide`. */
        float *wide = gn == 1 ? y + n * kohow : work + plan->col_floats;
        /* Bias and ReLU in the GEMM's epilogue; no k split, so an image's
         * outputs do not depend on its group's width. */
        int rc = fc_sgemm_fused(precision, s->k, ld, ckk, weight, ckk, b, ld, packed ? &packer : NULL, bias,
                                relu, wide, ld, nthreads);
        if (rc) return rc;
        if (gn == 1) continue;
        for (fc_int q = 0; q < gn; q++)
            for (fc_int k = 0; k < s->k; k++)
                memcpy(y + (n + q) * kohow + k * ohow, wide + k * ld + q * ohow,
                       sizeof(float) * ohow);
    }
    return 0;
}

int fc_im2col_forward(const fc_conv_shape *s, int variant, int precision, const float *x,
                      const float *weight, const float *bias, int relu, float *y, int nthreads)
{
    const int team = nthreads > 1 && s->n >= nthreads ? nthreads : 1;
    conv_plan plan = plan_for(s, (s->n + team - 1) / team);
    if (variant != FC_IM2COL_EXPLICIT) { /* no column matrix */
        plan.col_floats = 0;
        plan.floats = plan.wide_floats;
    }
    float *work = NULL;
    if (plan.floats && !(work = alloc_floats(team * plan.floats))) return FC_ENOMEM;

    int failed = 0;
    if (team == 1) {
        failed = forward_images(s, variant, precision, x, weight, bias, relu, y, 0, s->n, &plan, work,
                                nthreads) != 0;
    } else {
        /* Groups are handed out as threads come free: an image's outputs do
         * not depend on its group or thread, and a preempted thread does not
         * hold the other up at the end. */
        const fc_int groups = (s->n + plan.g - 1) / plan.g;
#pragma omp parallel num_threads(team) reduction(| : failed)
        {
            float *mine = work ? work + fc_thread_id() * plan.floats : NULL;
#pragma omp for schedule(dynamic, 1)
            for (fc_int gi = 0; gi < groups; gi++)
                failed |= forward_images(s, variant, precision, x, weight, bias, relu, y, gi * plan.g,
                                         min_i(s->n, (gi + 1) * plan.g), &plan, mine, 1) != 0;
        }
    }
    free(work);
    return failed ? FC_ENOMEM : 0;
}

/* Images [n0, n1) of the backward pass, with workspace `work` laid out as
 * `plan` says. Outputs: dx (may be NULL) for those images; dweight and
 * dbias (each may be NULL) overwritten with the sums over those images only.
 * nthreads: threads for each group's GEMMs and copies. Returns 0 or the
 * GEMM's error. */
static int backward_images(const fc_conv_shape *s, int precision, const float *x, const float *weight,
                           const float *dy, float *dx, fc_int n0, fc_int n1,
                           const conv_plan *plan, float *work, float *dweight, float *dbias,
                           int nthreads)
{
    const fc_int ckk = s->c * s->kh * s->kw, ohow = s->oh * s->ow, kohow = s->k * ohow;
    const fc_int chw = s->c * s->h * s->w;
    if (dweight) memset(dweight, 0, sizeof(float) * s->k * ckk);
    if (dbias) memset(dbias, 0, sizeof(float) * s->k);
    for (fc_int n = n0; n < n1; n += plan->g) {
        const fc_int gn = min_i(plan->g, n1 - n), ld = gn * ohow;
        const float *cols = dweight ? group_columns(s, x, n, gn, work, nthreads) : NULL;
        /* The group's dy side by side, (K, gn*OH*OW): gathered unless single. */
        const float *dyg = dy + n * kohow;
        if (gn > 1) {
            float *wide = work + plan->col_floats;
            for (fc_int q = 0; q < gn; q++)
                for (fc_int k = 0; k < s->k; k++)
                    memcpy(wide + k * ld + q * ohow, dy + (n + q) * kohow + k * ohow,
                           sizeof(float) * ohow);
            dyg = wide;
        }
        int rc = dweight ? fc_gemm(precision, 0, 1, s->k, ckk, ld, 1.0f, dyg, ld, cols, ld, 1.0f,
                                   dweight, ckk, nthreads, 1)
                         : 0;
        if (rc) return rc;
        if (dbias) {
#pragma omp parallel for num_threads(nthreads) schedule(static) \
    if (nthreads > 1 && s->k * ld >= FC_CONV_PAR_MIN)
            for (fc_int k = 0; k < s->k; k++) dbias[k] += row_sum(dyg + k * ld, ld);
        }
        if (!dx) continue;
        /* W^T @ dy is dx_n itself when the columns are x; else it overwrites
         * the column matrix, free again, and col2im folds it into dx. */
        const int direct = columns_are_x(s, gn);
        rc = fc_gemm(precision, 1, 0, ckk, ld, s->k, 1.0f, weight, ckk, dyg, ld, 0.0f,
                     direct ? dx + n * chw : work, ld, nthreads, 0);
        if (rc) return rc;
        if (!direct)
            for (fc_int q = 0; q < gn; q++)
                col2im(s, work + q * ohow, ld, dx + (n + q) * chw, nthreads);
    }
    return 0;
}

/* out[e] = parts[e] + parts[stride + e] + ... over nparts partials, in that
 * order whatever the schedule. Work-shared over the enclosing team. */
static void sum_partials(float *out, const float *parts, fc_int stride, int nparts, fc_int count)
{
#pragma omp for schedule(static)
    for (fc_int e = 0; e < count; e++) {
        float acc = parts[e];
        for (int t = 1; t < nparts; t++) acc += parts[t * stride + e];
        out[e] = acc;
    }
}

/* dbias[k] = sum over images n, in order, of the sum of dy[n, k]. The plane
 * sums are taken in memory order (dy is read once, streaming) into a
 * workspace, then summed per channel: the same bits at any thread count. */
int fc_conv_bias_gradient(const fc_conv_shape *s, const float *dy, float *dbias, int nthreads)
{
    const fc_int ohow = s->oh * s->ow, planes = s->n * s->k;
    float *sums = alloc_floats(planes);
    if (!sums) return FC_ENOMEM;
    const int par = nthreads > 1 && planes * ohow >= FC_CONV_PAR_MIN;
#pragma omp parallel num_threads(nthreads) if (par)
    {
#pragma omp for schedule(static)
        for (fc_int e = 0; e < planes; e++) sums[e] = row_sum(dy + e * ohow, ohow);
#pragma omp for schedule(static)
        for (fc_int k = 0; k < s->k; k++) {
            float acc = 0.0f;
            for (fc_int n = 0; n < s->n; n++) acc += sums[n * s->k + k];
            dbias[k] = acc;
        }
    }
    free(sums);
    return 0;
}

int fc_im2col_backward(const fc_conv_shape *s, int precision, const float *x, const float *weight,
                       const float *dy, float *dx, float *dweight, float *dbias, int nthreads)
{
    if (!(nthreads > 1 && s->n >= nthreads)) {
        const conv_plan plan = plan_for(s, s->n);
        float *work = NULL;
        if (plan.floats && !(work = alloc_floats(plan.floats))) return FC_ENOMEM;
        int rc = backward_images(s, precision, x, weight, dy, dx, 0, s->n, &plan, work, dweight, dbias,
                                 nthreads);
        free(work);
        return rc ? FC_ENOMEM : 0;
    }

    /* Per thread: [group workspace | dW partial | db partial]. */
    const conv_plan plan = plan_for(s, (s->n + nthreads - 1) / nthreads);
    const fc_int dw_size = s->k * s->c * s->kh * s->kw;
    const fc_int per_thread = plan.floats + round_to_line(dw_size + s->k);
    float *work = alloc_floats(nthreads * per_thread);
    if (!work) return FC_ENOMEM;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        const int t = fc_thread_id(), team = fc_team_size();
        float *mine = work + t * per_thread, *dw_part = mine + plan.floats;
        long long lo, hi;
        fc_split_range(s->n, team, t, &lo, &hi);
        failed |= backward_images(s, precision, x, weight, dy, dx, lo, hi, &plan, mine,
                                  dweight ? dw_part : NULL, dbias ? dw_part + dw_size : NULL,
                                  1) != 0;
#pragma omp barrier
        if (dweight) sum_partials(dweight, work + plan.floats, per_thread, team, dw_size);
        if (dbias) sum_partials(dbias, work + plan.floats + dw_size, per_thread, team, s->k);
    }
    free(work);
    return failed ? FC_ENOMEM : 0;
}
