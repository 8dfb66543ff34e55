/* 2-D convolution: which algorithm runs it, decided here and nowhere else
 * (the public entry points' contracts: fastconv.h).
 *
 * The algorithms, in the order auto tries them (the table `algorithms`):
 *   direct           conv/direct.c: each image zero-padded, then convolved
 *                    directly, for K = 8, 16 or a multiple of 16 up to
 *                    128 output channels, where the ISA table has the tiles
 *                    (AVX2: K = 8, 16 at unit stride; AVX-512: also the
 *                    multiples of 16, and those strided)
 *   winograd         conv/winograd.c: F(2x2, 3x3) for 3x3 kernels at unit
 *                    stride, 2.25x fewer multiply-adds, on inputs in range
 *   pointwise        conv/im2col.c: 1x1, unit stride, no padding: x is the
 *                    column matrix, the GEMM reads it in place
 *   implicit_im2col  conv/im2col.c: the GEMM packs its B straight from x,
 *                    the column matrix never stored
 *   polyphase        conv/polyphase.c: dx only, of a strided convolution:
 *                    one unit-stride forward of dy per phase of dx's
 *                    pixels (sh x sw of them), each planned as a forward
 *   im2col           conv/im2col.c: the column matrix built, then the GEMM
 *   depthwise        conv/depthwise.c: groups == C (each output channel
 *                    reads one input channel of its own), plane by plane, any
 *                    kernel, stride, padding and dilation. The only one
 *                    that takes grouped problems, which the others never
 *                    see (below), so its place in the order decides
 *                    nothing; last, so that im2col, the one that runs
 *                    every ungrouped shape, stays where it was.
 *
 * Directions. The forward, and the conv + 2x2 max-pool forward, which runs
 * the forward's algorithm: Winograd pools in its output transform and never
 * stores y, the others run the forward, then the pool. dx: im2col computes
 * W^T dy and scatters it by col2im; polyphase runs its phases; every other
 * algorithm computes dx as the forward convolution of dy with the flipped,
 * transposed weights (dx_by_convolution), planned as a forward of its own. dW and db: direct
 * and Winograd have their own; pointwise and im2col run in im2col's backward
 * pass, which also computes col2im's dx when dx goes that way.
 *
 * Each algorithm has, per direction, a rule on the shape and the ISA table
 * (NO: it cannot run this; APPLIES: it can, but auto does not take it;
 * PAYS: auto takes it, by the measurements given at each rule) and a guard
 * on the inputs' values (the range passes), taken only for the candidate
 * about to be chosen. No rule asks about another algorithm: precedence is
 * the order of the table. The mode (fc_conv_set_mode): auto takes the first
 * algorithm whose rule says PAYS and whose guard holds; forcing one takes it
 * wherever its rule says APPLIES or PAYS and its guard holds, and auto's
 * choice elsewhere; excluding one is auto without it. im2col pays for every
 * ungrouped shape, so auto always finds one (or runs per group).
 *
 * Groups. Only an algorithm marked `grouped` (depthwise) is asked about a
 * problem with groups > 1; for the others it is NO. When none takes it, the
 * problem runs per group (PER_GROUP): each group's channels, gathered into
 * a contiguous workspace when the batch has more than one image, are a
 * problem of their own with groups = 1, planned and run as any other,
 * with all the threads (the algorithms thread over images or tiles).
 * Dilation and padding that differs before and after (PyTorch's "same"
 * for even kernels) reach im2col and implicit im2col, whose taps are
 * bounds-checked; Winograd and pointwise say NO to them (direct takes the
 * uneven padding, conv/direct.c, not the dilation).
 *
 * Precision. A bf16 call (FC_BFLOAT16) runs the GEMM algorithms with the
 * bf16 GEMM: x, w and dy rounded to bf16 (nearest even) as they are
 * packed, the exact products summed in float32. All of them sum a
 * forward's taps in one order, so its bits do not depend on which of them
 * runs. Winograd runs in bf16 too (conv/winograd.c): its transforms in
 * float32 as ever, the transformed V = B^T d B and U = G g G^T (for dW:
 * V and Yhat = A dY A^T) rounded to bf16 once, as the bf16 GEMM packs
 * them, the 16 GEMMs summing in float32. So its rounding is not the GEMM
 * algorithms': a rounded V carries the error of a sum of up to 4 pixels,
 * a rounded U of up to 9 taps, on top of the transforms' cancellation; on
 * inputs of unit scale its RMS error against a float64 direct sum measured
 * 1.65-1.75x bf16 im2col's, forward, dx and dW (relative RMS 4e-3 against
 * 2.3e-3; tests/test_conv2d_winograd_bf16.py bounds the ratio at 3x). Its outputs are its own bits, the same on every ISA (and, but dW,
 * every thread count), not those of the GEMM algorithms. Its range guards
 * hold unchanged: rounding to bf16 grows a value by at most 1 + 2^-8,
 * within their margin (winograd.c). Auto takes it in bf16 where it takes
 * it in float32 (measured below winograd_forward). Direct's forward (and
 * so its dx as a convolution) runs in bf16 too, for K = 16, 32, ...
 * (kernels/direct.h: x and w rounded to bf16, the input channels in pairs as
 * vdpbf16ps takes them, in one order on every ISA: its own bits, emulated
 * on tables without the instruction); its dW and depthwise have float32
 * kernels only and say NO.
 *
 * A new algorithm is one file with its entry points (declared in
 * conv/conv.h) and one row of the table, with its rules.
 */
#include <float.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "fastconv.h"
#include "core/fc_omp.h"
#include "kernels/ctx.h"
#include "conv/conv.h"

/* Below this many elements the range pass is not worth a parallel region. */
#define FC_RANGE_PAR_MIN 32768

enum { NO = 0, APPLIES = 1, PAYS = 2 };

/* ---- why: a rule's reason, for fc_conv_explain ---------------------------- */

typedef struct {
    char text[480];
} reason;

/* r's text := the formatted string (r may be NULL: nothing is kept). */
static void say(reason *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(reason *r, const char *fmt, ...)
{
    if (!r) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->text, sizeof r->text, fmt, ap);
    va_end(ap);
}

/* r's text += the formatted string. */
static void add(reason *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(reason *r, const char *fmt, ...)
{
    if (!r) return;
    const size_t used = strlen(r->text);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->text + used, sizeof r->text - used, fmt, ap);
    va_end(ap);
}

/* ---- the problem ------------------------------------------------------------ */

/* A convolution being planned: its shape, the ISA table, its inputs and what
 * is known of their range. While explaining, the inputs are NULL and every
 * guard holds. */
typedef struct {
    fc_conv_shape s;
    const fc_ctx *ctx;
    const float *x, *w, *dy;
    float max_x, max_w, max_dy; /* fc_max_abs of each, taken when a guard first asks; -1 until then */
    int nthreads;
    int precision; /* FC_FLOAT32 or FC_BFLOAT16 */
    int need_dx;   /* the backward computes dx */
    int dx_col2im; /* ... through col2im (im2col's backward pass) */
} problem;

static problem problem_of(const fc_conv_shape *s, int precision, const float *x, const float *w,
                          const float *dy, int nthreads)
{
    problem p = {*s, fc_ctx_current(), x, w, dy, -1.0f, -1.0f, -1.0f, nthreads, precision, 0, 0};
    return p;
}

float fc_max_abs(const float *v, fc_int count, int nthreads)
{
    fc_max_abs_bits_fn *const part = fc_ctx_current()->max_abs_bits;
    int32_t most = 0;
#pragma omp parallel num_threads(nthreads) reduction(max : most) \
    if (nthreads > 1 && count >= FC_RANGE_PAR_MIN)
    {
        long long lo, hi;
        fc_split_range(count, fc_team_size(), fc_thread_id(), &lo, &hi);
        most = part(v + lo, hi - lo);
    }
    float r;
    memcpy(&r, &most, sizeof r);
    return r;
}

/* The largest |values| of the inputs, each pass taken once per call. */
static float max_x(problem *p)
{
    if (p->max_x < 0) p->max_x = fc_max_abs(p->x, p->s.n * p->s.c * p->s.h * p->s.w, p->nthreads);
    return p->max_x;
}

static float max_w(problem *p)
{
    if (p->max_w < 0)
        p->max_w = fc_max_abs(p->w, p->s.k * (p->s.c / p->s.groups) * p->s.kh * p->s.kw, p->nthreads);
    return p->max_w;
}

static float max_dy(problem *p)
{
    if (p->max_dy < 0) p->max_dy = fc_max_abs(p->dy, p->s.n * p->s.k * p->s.oh * p->s.ow, p->nthreads);
    return p->max_dy;
}

/* The convolution whose output is dx (dx_by_convolution): dy (K channels,
 * OH x OW) convolved with the weights transposed to (C, K, kh, kw) and
 * flipped, padding dh*(kh-1)-ph by dw*(kw-1)-pw before, at unit stride and
 * the same dilation. A padding beyond dh*(kh-1) makes its padding negative,
 * which the forwards' tap ranges handle: those taps skip dy's border rows
 * instead of reading zeros. */
static problem dx_problem(const problem *p, const float *flipped)
{
    problem t = *p;
    t.s.c = p->s.k, t.s.h = p->s.oh, t.s.w = p->s.ow;
    t.s.k = p->s.c, t.s.oh = p->s.h, t.s.ow = p->s.w;
    t.s.ph = p->s.dh * (p->s.kh - 1) - p->s.ph, t.s.pw = p->s.dw * (p->s.kw - 1) - p->s.pw;
    t.x = p->dy, t.max_x = p->max_dy;
    t.w = flipped; /* max |flipped| = max |w|: t.max_w is p's */
    t.dy = NULL, t.max_dy = -1.0f;
    t.need_dx = t.dx_col2im = 0;
    return t;
}

static int unit_stride(const fc_conv_shape *s) { return s->sh == 1 && s->sw == 1; }

/* A tap of the kernel is spread apart from its neighbour (a 1x1 kernel has none). */
static int dilated(const fc_conv_shape *s)
{
    return (s->kh > 1 && s->dh > 1) || (s->kw > 1 && s->dw > 1);
}

/* The last tap lies within ph rows and pw columns of the image, as with
 * the same padding after as before: what Winograd's tiles and pointwise
 * assume. */
static int padded_evenly(const fc_conv_shape *s)
{
    return (s->oh - 1) * s->sh + s->dh * (s->kh - 1) < s->h + 2 * s->ph &&
           (s->ow - 1) * s->sw + s->dw * (s->kw - 1) < s->w + 2 * s->pw;
}

/* The reason, and NO, for the shapes Winograd cannot run. */
static int plain_only(const fc_conv_shape *s, reason *r)
{
    if (dilated(s)) {
        say(r, "needs dilation 1");
        return 0;
    }
    if (!padded_evenly(s)) {
        say(r, "needs the same padding before and after");
        return 0;
    }
    return 1;
}
static fc_int tiles_2x2(const fc_conv_shape *s) { return s->n * ((s->oh + 1) / 2) * ((s->ow + 1) / 2); }

/* ---- the rules -------------------------------------------------------------- */

typedef int rule_fn(const problem *p, reason *r);
typedef int guard_fn(problem *p, reason *r);

/* direct: K = 8, 16 or a multiple of 16 up to FC_DIRECT_MAX_K (the
 * register tiles) where the ISA table has them; unit strides, or any where
 * the tiles take them (kernels/direct.h, `strided`: the K >= 16 tiles). Measured at 1 thread (AVX2,
 * 2-core EPYC, shared and noisy) against the GEMM path, each in its own
 * process, 3 alternating rounds of 0.6 s per case, medians; fwd, bwd (dx,
 * dW, db) and dW (need_dx=False):
 *   64x8x14x14 -> 16, 5x5 p2 (lenet conv2): fwd 1.06 ms vs 1.83, bwd 2.52 vs 4.01, dW 1.20 vs 2.45
 *   64x1x28x28 -> 8, 5x5 p2 (lenet conv1):  fwd 0.42 vs 0.61, bwd 1.10 vs 2.33, dW 0.42 vs 0.98
 *   64x16x14x14 -> 8, 5x5 p2:               fwd 1.32 vs 2.57, bwd 2.52 vs 5.07
 *   32x64x8x8 -> 16, 3x3 p1:                fwd 0.52 vs 0.96, bwd 1.21 vs 1.66
 *   16x512x4x4 -> 16, 3x3 p1 (4608 taps):   fwd 0.72 vs 1.86, bwd 1.90 vs 8.43
 *   8x256x16x16 -> 8, 5x5 p2 (6400 taps):   fwd 4.12 vs 9.27, bwd 7.18 vs 17.4
 * so no limit on C * kh * kw: with K this small the GEMM never amortizes its
 * packing. The one near-tie: K = 16 with a handful of taps (4x3x64x64 ->
 * 16 3x3, 64x1x28x28 -> 16 5x5), where the K = 16 tile's transposing store
 * weighs as much as its multiply-adds: 0.8x to 1.3x of the GEMM path from
 * run to run, within this machine's noise, so no separate rule.
 * AVX-512's K = 16 tiles take AVX2's rule (the same shapes, one zmm per
 * pixel instead of two ymm), not timed against the GEMM path themselves.
 * Against AVX2's tiles (1 thread, 128x3x32x32 -> 16 3x3 and lenet conv2,
 * AVX-512's time over AVX2's): forward 0.98 and 1.06, backward 1.14 and
 * 1.19, measured before both ISAs' dW tiles were rewritten (dy staged by
 * register transposes, pixels four at a time) and not since (on Zen 5, the
 * AVX-512 rewrite took the 128x16x32x32 -> 16 backward from 12.2 to about
 * 8.5 ms). AVX-512's K = 32 and strided tiles, timed on a
 * 2-core Zen 5 EPYC against auto's GEMM path, one process, 15 interleaved
 * calls each, medians at 1 / 2 threads (fwd; dW alone):
 *   128x3x32x32 -> 32, 3x3 p1:     fwd 2.27 / 1.30 ms vs 3.36 / 1.70; dW 2.50 / 2.24 vs 3.66 / 3.00
 *   128x16x32x32 -> 32, 3x3/2 p1:  fwd 2.34 / 1.68 vs 3.89 / 2.68;    dW 2.41 / 2.43 vs 3.75 / 3.14
 *   16x3x64x64 -> 16, 7x7/2 p3:    fwd 0.62 / 0.32 vs 1.34 / 0.69;    dW 0.54 / 0.50 vs 1.16 / 1.14
 *   128x16x32x32 -> 32, 1x1/2:     fwd 0.77 / 0.55 vs 0.88 / 0.51;    dW 0.66 / 0.62 vs 0.79 / 0.68
 * and K = 64, 128 (the same tiles, 16 channels at a time), against the
 * same build with direct off, 11 interleaved calls:
 *   128x32x16x16 -> 64, 3x3/2 p1:  fwd 3.30 / 1.73 vs 4.61 / 2.43;    dW 3.56 / 1.81 vs 4.63 / 2.46
 *   128x64x8x8 -> 128, 3x3/2 p1:   fwd 2.86 / 1.53 vs 5.20 / 2.77;    dW 4.20 / 2.29 vs 4.97 / 2.56
 *   16x3x64x64 -> 64, 7x7/2 p3:    fwd 2.48 / 1.18 vs 3.06 / 1.38;    dW 2.55 / 1.27 vs 3.53 / 1.57
 *   128x32x16x16 -> 64, 1x1/2:     fwd 0.88 / 0.36 vs 0.85 / 0.39;    dW 1.06 / 0.41 vs 0.90 / 0.42
 *   128x64x16x16 -> 64, 3x3 p1:    fwd 18.5 / 9.57 vs 9.85 / 5.21 (Winograd's ground)
 * AVX2's tiles for the same K (16 channels at a time, 2 ymm x 6 pixels),
 * timed on a 2-core Zen 3 EPYC against the same build with direct off, one
 * process, 11 or 21 interleaved calls, medians at 1 / 2 threads, the unit
 * strides twice (fwd; dW alone; ratios of direct's time):
 *   128x3x32x32 -> 32, 3x3 p1:     fwd 0.99-1.03 / 0.59-0.62;  dW 0.62 / 0.61
 *   128x16x32x32 -> 32, 3x3/2 p1:  fwd 0.79 / 0.79;            dW 0.66 / 0.65
 *   16x3x64x64 -> 16, 7x7/2 p3:    fwd 0.54 / 0.52;            dW 0.41 / 0.43
 *   128x16x32x32 -> 32, 1x1/2:     fwd 1.22 / 1.32;            dW 0.87 / 0.86
 *   128x32x16x16 -> 64, 3x3/2 p1:  fwd 0.74 / 0.75;            dW 0.78 / 0.76
 *   128x64x8x8 -> 128, 3x3/2 p1:   fwd 0.71 / 0.77;            dW 0.96 / 1.03
 *   16x3x64x64 -> 64, 7x7/2 p3:    fwd 0.85 / 0.86;            dW 0.68 / 0.67
 *   128x32x16x16 -> 64, 1x1/2:     fwd 1.16 / 1.15;            dW 1.08 / 0.90
 *   128x3x32x32 -> 64, 3x3 p1:     fwd 1.05-1.07 / 0.75-0.84;  dW 0.66 (K > 32: forced only)
 * so AVX2 takes the same rule (the forward's 1 / 2-thread gap at C = 3 is
 * the GEMM path's: its implicit im2col scales 1.3x to 2 threads there).
 * An A/B of two builds (bench/ab_builds.py, 3 rounds) put the 1x1/2 at
 * K = 32 at 1.16 / 1.03 of the GEMM path's time forward, 1.07 / 0.90
 * backward: so they pay when strided with a kernel larger than 1x1 (a 1x1
 * strided has no taps to share, and the GEMM path's gathered columns cost
 * little), and at K = 32 with C < 16 input channels (the first layers). Other unit-stride K from 32 up are Winograd's and the
 * GEMM path's: APPLIES (forced only), but for the kernels that are neither
 * 3x3 (Winograd's) nor 1x1 (pointwise's) at K = 32: the phases of a strided
 * dx (polyphase) and 5x5 layers, where direct took 0.75-0.88x implicit
 * im2col's time (Zen 4, 1 thread, 3 rounds: 64x16x14x14 -> 32 5x5 3.18 vs
 * 4.24 ms, 128x64x8x8 -> 32 2x2 1.41 vs 1.86, 1x2 0.82 vs 0.94, 128x32x16x16
 * -> 32 2x2 2.80 vs 3.30, 128x128x8x8 -> 32 2x2 2.76 vs 3.62; AVX2 takes the
 * same rule, not timed).
 * In bf16 (K = 16, 32, ... on every table, any stride: kernels/direct.h) the
 * same rule, by these times of direct over auto without it (bf16
 * Winograd or the bf16 GEMM paths; Zen 4 with AVX512_BF16, 1 thread, 9
 * interleaved calls, medians; fwd, bwd = dx + dW, dx running direct where
 * forcing it does, dW never):
 *   128x16x32x32 -> 16, 3x3:     fwd 0.57, bwd 0.85
 *   128x16x16x16 -> 16, 3x3:     fwd 0.66, bwd 0.93
 *   128x3x32x32 -> 16, 3x3:      fwd 0.48;  -> 32: 0.78
 *   64x8x14x14 -> 16, 5x5 p2:    fwd 0.31
 *   128x16x32x32 -> 32, 3x3/2:   fwd 0.56;  128x32x16x16 -> 64, 3x3/2: 0.47
 *   128x32x16x16 -> 32, 3x3:     fwd 0.99, bwd 0.96;  128x32x8x8 -> 32: 0.80, 1.00
 *   128x64x8x8 -> 64, 3x3:       fwd 1.20, bwd 1.07;  128x64x16x16 -> 64: 1.19, 0.97
 *   128x16x32x32 -> 32, 1x1/2:   fwd 1.37;  128x64x8x8 -> 64, 1x1: 1.01
 * (2026-12-04). */
static int direct_forward(const problem *p, reason *r)
{
    const fc_conv_shape *s = &p->s;
    if (dilated(s)) { /* any padding, each side (conv/direct.c), negative too */
        say(r, "needs dilation 1");
        return NO;
    }
    if (p->precision == FC_BFLOAT16) {
        if (s->k % 16 || s->k > FC_DIRECT_MAX_K) {
            say(r, "needs K a multiple of 16 up to %d output channels in bf16 (K = %lld)", FC_DIRECT_MAX_K,
                (long long)s->k);
            return NO;
        }
    } else {
        if (s->k != 8 && (s->k % 16 || s->k > FC_DIRECT_MAX_K)) {
            say(r, "needs K = 8 or a multiple of 16 up to %d output channels (K = %lld)", FC_DIRECT_MAX_K,
                (long long)s->k);
            return NO;
        }
        const fc_direct_kernel *kr = fc_direct_tiles(p->ctx, s->k);
        if (!kr) {
            say(r, "no direct tiles for K = %lld on %s", (long long)s->k, p->ctx->name);
            return NO;
        }
        if (!unit_stride(s) && !kr->strided) {
            say(r, "needs unit stride (K = %lld on %s)", (long long)s->k, p->ctx->name);
            return NO;
        }
    }
    if (!unit_stride(s) && s->kh * s->kw > 1) {
        say(r, "K = %lld output channels, strided: nothing packed", (long long)s->k);
        return PAYS;
    }
    if (!unit_stride(s)) {
        say(r, "K = %lld output channels, 1x1 strided: no faster than the GEMM path's gathered "
            "columns", (long long)s->k);
        return APPLIES;
    }
    const int three = s->kh == 3 && s->kw == 3, one = s->kh == 1 && s->kw == 1;
    if (s->k > 32 || (s->k == 32 && s->c >= 16 && (three || one))) {
        say(r, "K = %lld output channels at unit stride, C = %lld (Winograd's and the GEMM path's)",
            (long long)s->k, (long long)s->c);
        return APPLIES;
    }
    say(r, "K = %lld output channels at unit stride%s: nothing packed", (long long)s->k,
        s->k < 32 ? "" : s->c < 16 ? ", C < 16" : ", neither 3x3 nor 1x1");
    return PAYS;
}

/* dW: the forward's rule, in float32 (no bf16 dW tiles yet). */
static int direct_dweight(const problem *p, reason *r)
{
    if (p->precision != FC_FLOAT32) {
        say(r, "float32 dW tiles only");
        return NO;
    }
    return direct_forward(p, r);
}

/* dW's K = 8 tiles run along the padded row pitch, multiplying the pixels
 * past each output row by zeros in dy: nothing for finite x, but NaN for an
 * infinite or NaN pixel there, where the direct sum has no such term. Such
 * x takes the next algorithm (one pass over x, for these small layers). */
static int direct_dweight_guard(problem *p, reason *r)
{
    if (p->s.k != 8) return 1;
    if (!p->x) {
        add(r, ", if x is finite");
        return 1;
    }
    return max_x(p) <= FLT_MAX;
}

/* winograd: where it pays, measured on AVX2 against the im2col path: the
 * GEMMs reduce over C alone, so with few input channels each micro-kernel
 * call does little work per store of its tile and the transforms dominate
 * (128x3x32x32 -> 32: 0.55x at 1 and 2 threads); with few output channels
 * the input transform is spread over few outputs. With C and K from 32 to
 * 128 it ran 1.4-2.0x faster (bench_conv2d's fastconv_im2col side).
 * Batch-1 inference: below WG_MIN_TILES tiles, the weight transform and
 * GEMMs a few tiles wide cost more than the multiply-adds saved
 * (1x64x8x8 -> 128, 16 tiles: 0.42x the im2col path). */
#define WG_MIN_C 16
#define WG_MIN_K 16
#define WG_MIN_TILES 256

/* In bf16 the same rule: with U packed once and V rounded into the bf16
 * micro-kernel's slivers per block (winograd.c), bf16 Winograd took 0.48-0.67x
 * bf16 implicit im2col's forward time and 0.59-0.97x bf16 im2col's dx + dW
 * on the 3x3 layers of ResNet-20 and cifar_small at batch 128 (C, K = 16 to
 * 128, 8x8 to 32x32; 1 and 2 threads; a 2-core Zen 4 EPYC with AVX512_BF16,
 * two runs of bench/bf16_winograd.py's method, 2026-12-03). dW alone, whose
 * GEMMs still pack through fc_gemm, ranged 0.74-1.13x, above 1 only at
 * K >= 64 (32 -> 64 at 16x16, 64 -> 128 at 8x8): a rule for dW alone is
 * left for when its GEMMs take slivers too, as a step runs dx and dW together. */

static int winograd_forward(const problem *p, reason *r)
{
    const fc_conv_shape *s = &p->s;
    if (s->kh != 3 || s->kw != 3 || !unit_stride(s) || s->ph < 0 || s->pw < 0) {
        say(r, "needs a 3x3 kernel at unit stride, padding >= 0");
        return NO;
    }
    if (!plain_only(s, r)) return NO;
    const long long c = s->c, k = s->k, tiles = tiles_2x2(s);
    if (c < WG_MIN_C || k < WG_MIN_K || tiles < WG_MIN_TILES) {
        say(r, "3x3 stride 1, but");
        if (c < WG_MIN_C) add(r, " C = %lld < %d", c, WG_MIN_C);
        if (k < WG_MIN_K) add(r, " K = %lld < %d", k, WG_MIN_K);
        if (tiles < WG_MIN_TILES) add(r, " %lld tiles < %d", tiles, WG_MIN_TILES);
        return APPLIES;
    }
    say(r, "3x3 stride 1, C = %lld, K = %lld >= %d, %lld tiles >= %d%s", c, k, WG_MIN_C, tiles,
        WG_MIN_TILES, p->precision == FC_BFLOAT16 ? ", bf16 GEMMs" : "");
    return PAYS;
}

/* The transforms cancel exactly only within the float range (winograd.c). */
static int winograd_forward_guard(problem *p, reason *r)
{
    if (!p->x) {
        add(r, ", if x and w are in range");
        return 1;
    }
    return fc_winograd_forward_in_range(&p->s, max_x(p), max_w(p));
}

/* dW by Winograd only when dx needs no col2im, whose pass over the images
 * computes dW with it. */
static int winograd_dweight(const problem *p, reason *r)
{
    const int v = winograd_forward(p, r);
    if (v != NO && p->need_dx && p->dx_col2im) {
        say(r, "dx runs by col2im, whose pass computes dW too");
        return NO;
    }
    return v;
}

static int winograd_dweight_guard(problem *p, reason *r)
{
    if (!p->x) {
        add(r, ", if x and dy are in range");
        return 1;
    }
    return fc_winograd_dweight_in_range(&p->s, max_x(p), max_dy(p), p->nthreads);
}

static int pointwise_forward(const problem *p, reason *r)
{
    const fc_conv_shape *s = &p->s;
    if (s->kh != 1 || s->kw != 1 || !unit_stride(s) || s->ph != 0 || s->pw != 0 || s->oh != s->h ||
        s->ow != s->w) {
        say(r, "needs a 1x1 kernel at unit stride, no padding");
        return NO;
    }
    say(r, "1x1, unit stride, no padding: x is the column matrix");
    return PAYS;
}

/* depthwise: every output channel reads one input channel of its own
 * (groups == C; K = C times the multiplier). A GEMM per group would be one
 * row of kh*kw times OH*OW columns: all packing, no reuse. Instructions
 * (callgrind, AVX2, 1 thread) for 8x32x28x28 -> 32, 3x3 p1 against
 * no-depthwise (per group, implicit im2col): stride 1 forward 4.44M vs
 * 6.98M, backward 18.7M vs 40.7M; stride 2 forward 1.69M vs 4.57M, backward
 * 12.7M vs 17.1M. A one-channel input (groups = 1) can run here too, but
 * auto keeps the algorithms measured on that shape. */
static int depthwise_rule(const problem *p, reason *r)
{
    const fc_conv_shape *s = &p->s;
    if (p->precision != FC_FLOAT32) {
        say(r, "float32 rows only");
        return NO;
    }
    if (s->groups != s->c) {
        say(r, "needs groups == C (groups = %lld, C = %lld)", (long long)s->groups,
            (long long)s->c);
        return NO;
    }
    /* The plane buffer holds sh x sw phases (kernels/depthwise.h): past the
     * kernel's extent most would be empty, and a huge stride a huge buffer. */
    if (s->sh > s->dh * (s->kh - 1) + 1 || s->sw > s->dw * (s->kw - 1) + 1) {
        say(r, "stride past the kernel's extent: the phase buffer would be mostly empty");
        return NO;
    }
    if (s->groups == 1) {
        say(r, "one input channel, no groups: auto leaves it to the GEMM paths");
        return APPLIES;
    }
    say(r, "groups == C = %lld, multiplier %lld: plane by plane, no GEMM", (long long)s->c,
        (long long)(s->k / s->c));
    return PAYS;
}

/* Any stride; at stride 2 building the column matrix first measured 15%
 * faster (the 7x7 stride-2 layer, whose output-row-sized gathers cost more
 * per packed sliver than the GEMM, K = 16, spends on it). */
static int implicit_forward(const problem *p, reason *r)
{
    if (!unit_stride(&p->s)) {
        say(r, "strided: building the column matrix first was faster");
        return APPLIES;
    }
    say(r, "unit stride: the GEMM packs B straight from x");
    return PAYS;
}

static int im2col_forward(const problem *p, reason *r)
{
    say(r, unit_stride(&p->s) ? "the column matrix, then the GEMM"
                              : "strided: the column matrix, then the GEMM");
    return PAYS;
}

static int im2col_dweight(const problem *p, reason *r)
{
    say(r, "dy times the column matrix (im2col), db with it");
    return PAYS;
}

/* dx as the convolution of dy that dx_problem describes, by the algorithm
 * whose forward rule is `forward`. */
static int by_convolution(const problem *p, rule_fn *forward, reason *r)
{
    if (!unit_stride(&p->s)) {
        say(r, "dx as a convolution needs unit stride");
        return NO;
    }
    const problem t = dx_problem(p, NULL);
    const int v = forward(&t, r);
    if (r) {
        const reason inner = *r;
        say(r, "dy convolved with the flipped weights (K = %lld -> C = %lld): %s",
            (long long)p->s.k, (long long)p->s.c, inner.text);
    }
    return v;
}

static int direct_dx(const problem *p, reason *r) { return by_convolution(p, direct_forward, r); }
static int winograd_dx(const problem *p, reason *r) { return by_convolution(p, winograd_forward, r); }

/* With a GEMM either way, dx as a convolution packs K*kh*kw rows of B for a
 * GEMM with C rows; col2im's GEMM packs K rows for C*kh*kw, then scatters
 * C*kh*kw rows. Measured at 1 thread (AVX2), the convolution wins when
 * C >= K (3x3, 128x64x16x16 -> 32: 34.4 ms against 37.8; 5x5, 64x32x14x14
 * -> 8: 8.4 against 10.7), ties at C == K and loses when K = 2C, the usual
 * widening layer (128x32x16x16 -> 64: 34.5 against 32.5). */
static int gemm_dx(const problem *p, rule_fn *forward, reason *r)
{
    if (by_convolution(p, forward, r) == NO) return NO;
    const long long c = p->s.c, k = p->s.k;
    add(r, c >= k ? ", C >= K (%lld >= %lld)" : ", but C < K (%lld < %lld)", c, k);
    return c >= k ? PAYS : APPLIES;
}

static int pointwise_dx(const problem *p, reason *r) { return gemm_dx(p, pointwise_forward, r); }
static int implicit_dx(const problem *p, reason *r) { return gemm_dx(p, implicit_forward, r); }

/* polyphase: a strided dx as sh x sw unit-stride forwards of dy, one per
 * phase of dx's pixels (conv/polyphase.c), each planned as a forward. It
 * pays where the phases, C output channels each, can run direct (C = 8, 16
 * or 32 where the ISA table has those tiles; the phases' uneven padding is
 * direct's too; at C = 32 a 3x3 or 1x1 phase goes to Winograd or the GEMM
 * paths, as any such forward). Backward (dx, dW, db) against the same build without it
 * (im2col's dx: W^T dy into a column matrix, then col2im), Zen 4, 3 rounds
 * of 15 calls, medians at 1 / 2 threads:
 *   128x16x32x32 -> 32, 3x3/2 p1:  9.06 / 5.42 ms vs 10.04 / 5.52
 *   128x32x16x16 -> 64, 3x3/2 p1:  7.85 / 4.22 vs 8.52 / 4.33
 *   64x8x28x28 -> 16, 5x5/2 p2:    3.00 / 1.09 vs 3.86 / 1.58
 * and slower where the phases take the GEMM paths, which pack dy for few
 * output channels: C = 64 (128x64x8x8 -> 128, 3x3/2: 12.9 vs 11.4 at 1
 * thread), C = 24 (2.59 vs 2.42), C = 3 (16x3x64x64 -> 16, 7x7/2: 6.15 vs
 * 3.27), every bf16 case (direct being float32 only: 15.4 vs 13.9 ms at
 * 128x16x32x32 -> 32), and 1x1 kernels, whose im2col dx is one GEMM and a
 * scatter (128x16x32x32 -> 32, 1x1/2: 4.66 vs 3.44). There: APPLIES. */
static int polyphase_dx(const problem *p, reason *r)
{
    const fc_conv_shape *s = &p->s;
    if (unit_stride(s)) {
        say(r, "unit stride: dx is one convolution of dy");
        return NO;
    }
    if (dilated(s)) {
        say(r, "needs dilation 1");
        return NO;
    }
    if (s->sh > FC_POLYPHASE_MAX_STRIDE || s->sw > FC_POLYPHASE_MAX_STRIDE ||
        s->kh > FC_POLYPHASE_MAX_K || s->kw > FC_POLYPHASE_MAX_K) {
        say(r, "needs strides up to %d and kernels up to %d", FC_POLYPHASE_MAX_STRIDE,
            FC_POLYPHASE_MAX_K);
        return NO;
    }
    say(r, "stride %lldx%lld: dx as %lld unit-stride convolutions of dy, one per phase of its pixels",
        (long long)s->sh, (long long)s->sw, (long long)(s->sh * s->sw));
    if (p->precision != FC_FLOAT32) {
        add(r, ", on the GEMM paths in bf16 (col2im's is faster)");
        return APPLIES;
    }
    if (s->kh * s->kw == 1) {
        add(r, ", but a 1x1's col2im dx is one GEMM and a scatter");
        return APPLIES;
    }
    if (s->c > 32 || !fc_direct_tiles(p->ctx, s->c)) {
        add(r, ", but C = %lld: no direct phases on %s (col2im's is faster)", (long long)s->c,
            p->ctx->name);
        return APPLIES;
    }
    add(r, ", C = %lld: the phases direct's where their kernels are", (long long)s->c);
    return PAYS;
}

static int im2col_dx(const problem *p, reason *r)
{
    say(r, "W^T dy, then col2im");
    return PAYS;
}

/* As a convolution, dx multiplies dy's zero padding by the weights: an
 * infinite or NaN weight would make NaN (0 * Inf) where dx's sum has no
 * such term; col2im adds only the real terms. In bf16 the weights are
 * those rounded to bf16, where a finite float past bf16's largest value
 * (from 2^128 (1 - 2^-9)) is Inf. */
static int by_convolution_guard(problem *p, reason *r)
{
    if (!p->x) {
        add(r, p->precision == FC_BFLOAT16 ? ", if w rounded to bf16 is finite" : ", if w is finite");
        return 1;
    }
    const float m = max_w(p);
    return (p->precision == FC_BFLOAT16 ? fc_bf16_value(fc_bf16_round(m)) : m) <= FLT_MAX;
}

/* ---- the runs --------------------------------------------------------------- */

static int depthwise_run(const problem *p, const float *bias, int relu, float *y)
{
    return fc_conv2d_depthwise_forward(&p->s, p->x, p->w, bias, relu, y, p->nthreads);
}

static int depthwise_dweight_run(const problem *p, float *dweight, float *dbias)
{
    return fc_conv2d_depthwise_dweight(&p->s, p->x, p->dy, dweight, dbias, p->nthreads);
}

static int depthwise_dx_run(const problem *p, float *dx)
{
    return fc_conv2d_depthwise_dx(&p->s, p->w, p->dy, dx, p->nthreads);
}

static int polyphase_dx_run(const problem *p, float *dx)
{
    return fc_conv2d_polyphase_dx(&p->s, p->precision, p->w, p->dy, dx, p->nthreads);
}

static int direct_run(const problem *p, const float *bias, int relu, float *y)
{
    return fc_conv2d_direct_forward(&p->s, p->precision, p->x, p->w, bias, relu, y, p->nthreads);
}

static int winograd_run(const problem *p, const float *bias, int relu, float *y)
{
    return fc_conv2d_winograd(&p->s, p->precision, p->x, p->w, bias, relu, y, p->nthreads);
}

static int pointwise_run(const problem *p, const float *bias, int relu, float *y)
{
    return fc_im2col_forward(&p->s, FC_IM2COL_POINTWISE, p->precision, p->x, p->w, bias, relu, y,
                             p->nthreads);
}

static int implicit_run(const problem *p, const float *bias, int relu, float *y)
{
    return fc_im2col_forward(&p->s, FC_IM2COL_IMPLICIT, p->precision, p->x, p->w, bias, relu, y,
                             p->nthreads);
}

static int im2col_run(const problem *p, const float *bias, int relu, float *y)
{
    return fc_im2col_forward(&p->s, FC_IM2COL_EXPLICIT, p->precision, p->x, p->w, bias, relu, y,
                             p->nthreads);
}

static int winograd_pool(const problem *p, const float *bias, int relu, float *pooled,
                         uint8_t *argmax)
{
    return fc_conv2d_winograd_maxpool(&p->s, p->precision, p->x, p->w, bias, relu, pooled, argmax, p->nthreads);
}

static int direct_dweight_run(const problem *p, float *dweight, float *dbias)
{
    return fc_conv2d_direct_backward_weight(&p->s, p->x, p->dy, dweight, dbias, p->nthreads);
}

static int winograd_dweight_run(const problem *p, float *dweight, float *dbias)
{
    int rc = fc_conv2d_winograd_dweight(&p->s, p->precision, p->x, p->dy, dweight, p->nthreads);
    if (!rc && dbias) rc = fc_conv_bias_gradient(&p->s, p->dy, dbias, p->nthreads);
    return rc;
}

/* ---- the table -------------------------------------------------------------- */

enum { DIRECTIONS = 3 }; /* FC_CONV_FORWARD, FC_CONV_DX, FC_CONV_DWEIGHT */

typedef struct {
    const char *name;
    rule_fn *rule[DIRECTIONS];   /* NULL: it does not compute that direction */
    guard_fn *guard[DIRECTIONS]; /* NULL: no condition on the inputs */
    int (*forward)(const problem *p, const float *bias, int relu, float *y);
    /* NULL: the forward, then the pool */
    int (*forward_pool)(const problem *p, const float *bias, int relu, float *pooled,
                        uint8_t *argmax);
    /* dW and db; NULL: in im2col's backward pass */
    int (*dweight)(const problem *p, float *dweight, float *dbias);
    int dx_col2im; /* dx by col2im in that pass; else by `dx`, or as the convolution of dy */
    int (*dx)(const problem *p, float *dx); /* NULL: col2im or as a convolution */
    int grouped;   /* runs problems with groups > 1 whole; the others see one group at a time */
} algorithm;

static const algorithm algorithms[FC_CONV_ALGORITHMS] = {
    [FC_CONV_DIRECT] = {"direct", {direct_forward, direct_dx, direct_dweight},
                        {NULL, by_convolution_guard, direct_dweight_guard},
                        direct_run, NULL, direct_dweight_run, 0},
    [FC_CONV_WINOGRAD] = {"winograd", {winograd_forward, winograd_dx, winograd_dweight},
                          {winograd_forward_guard, by_convolution_guard, winograd_dweight_guard},
                          winograd_run, winograd_pool, winograd_dweight_run, 0},
    [FC_CONV_POINTWISE] = {"pointwise", {pointwise_forward, pointwise_dx, pointwise_forward},
                           {NULL, by_convolution_guard, NULL}, pointwise_run, NULL, NULL, 0},
    [FC_CONV_IMPLICIT_IM2COL] = {"implicit_im2col", {implicit_forward, implicit_dx, NULL},
                                 {NULL, by_convolution_guard, NULL}, implicit_run, NULL, NULL, 0},
    [FC_CONV_POLYPHASE] = {"polyphase", {NULL, polyphase_dx, NULL}, {NULL, by_convolution_guard, NULL},
                           NULL, NULL, NULL, 0, polyphase_dx_run, 0},
    [FC_CONV_IM2COL] = {"im2col", {im2col_forward, im2col_dx, im2col_dweight}, {NULL, NULL, NULL},
                        im2col_run, NULL, NULL, 1, NULL, 0},
    [FC_CONV_DEPTHWISE] = {"depthwise", {depthwise_rule, depthwise_rule, depthwise_rule},
                           {NULL, by_convolution_guard, NULL}, depthwise_run, NULL, depthwise_dweight_run, 0,
                           depthwise_dx_run, 1},
};

/* choose's answer for a grouped problem that no grouped algorithm takes:
 * each group runs as a problem of its own (group_problem). */
#define PER_GROUP FC_CONV_ALGORITHMS

const char *fc_conv_algorithm_name(int algorithm)
{
    return algorithm >= 0 && algorithm < FC_CONV_ALGORITHMS ? algorithms[algorithm].name : "unknown";
}

/* ---- the mode and the choice ------------------------------------------------ */

static int mode_kind = FC_CONV_MODE_AUTO, mode_algorithm = -1;

void fc_conv_set_mode(int kind, int algorithm)
{
    mode_kind = kind;
    mode_algorithm = kind == FC_CONV_MODE_AUTO ? -1 : algorithm;
}

int fc_conv_get_mode(int *algorithm)
{
    *algorithm = mode_algorithm;
    return mode_kind;
}

static const char *const direction_names[DIRECTIONS] = {"forward", "dx", "dW"};

/* a's verdict for direction d of p, its reason in r. */
static int verdict(int a, int d, const problem *p, reason *r)
{
    rule_fn *rule = algorithms[a].rule[d];
    if (p->s.groups > 1 && !algorithms[a].grouped) {
        say(r, "grouped: runs one group at a time");
        return NO;
    }
    if (rule) return rule(p, r);
    say(r, "has no %s of its own", direction_names[d]);
    return NO;
}

static int guard_holds(int a, int d, problem *p, reason *r)
{
    guard_fn *guard = algorithms[a].guard[d];
    return !guard || guard(p, r);
}

/* The algorithm for direction d of p under the mode (kind, target), or
 * PER_GROUP, and in why (may be NULL) the reason: the chosen one's, then
 * those of the algorithms before it that could have run this but do not
 * pay here. */
static int choose(int d, problem *p, int kind, int target, reason *why)
{
    reason r, forced, passed, *rp = why ? &r : NULL;
    if (why) r.text[0] = forced.text[0] = passed.text[0] = '\0';
    if (kind == FC_CONV_MODE_FORCE) {
        if (verdict(target, d, p, rp) != NO && guard_holds(target, d, p, rp)) {
            if (why) say(why, "forced: %s", r.text);
            return target;
        }
        if (why) say(&forced, "%s (forced) %s; auto: ", algorithms[target].name, r.text);
    }
    for (int a = 0; a < FC_CONV_ALGORITHMS; a++) {
        if (kind != FC_CONV_MODE_AUTO && a == target) continue;
        const int v = verdict(a, d, p, rp);
        if (v == PAYS && guard_holds(a, d, p, rp)) {
            if (why)
                say(why, passed.text[0] ? "%s%s (over %s)" : "%s%s%s", forced.text, r.text,
                    passed.text);
            return a;
        }
        if (why && v == APPLIES)
            add(&passed, "%s%s: %s", passed.text[0] ? "; " : "", algorithms[a].name, r.text);
    }
    if (why) say(why, "%s%s", forced.text, passed.text);
    /* im2col pays for every shape of one group */
    return p->s.groups > 1 ? PER_GROUP : FC_CONV_IM2COL;
}

/* ---- running a plan --------------------------------------------------------- */

/* Which algorithm, in which direction, a failed call could not get its
 * workspace for: the first failure of the calling thread's last call. */
static _Thread_local int failed_algorithm = -1, failed_direction = -1;

static int noted(int a, int d, int rc)
{
    if (rc && failed_algorithm < 0 && a < FC_CONV_ALGORITHMS) failed_algorithm = a, failed_direction = d;
    return rc;
}

int fc_conv_failure(int *direction)
{
    *direction = failed_direction;
    return failed_algorithm;
}

static void new_call(void) { failed_algorithm = failed_direction = -1; }

/* ---- groups ------------------------------------------------------------------ */

/* One group of p: its channels alone, groups = 1. The inputs are set per group. */
static problem group_problem(const problem *p)
{
    problem t = *p;
    t.s.c = p->s.c / p->s.groups, t.s.k = p->s.k / p->s.groups, t.s.groups = 1;
    t.max_x = t.max_w = t.max_dy = -1.0f;
    t.dx_col2im = 0;
    return t;
}

/* dst's n blocks of len floats, dst_pitch apart, := src's, src_pitch apart. */
static void copy_blocks(float *dst, fc_int dst_pitch, const float *src, fc_int src_pitch, fc_int n,
                        fc_int len, int nthreads)
{
#pragma omp parallel for num_threads(nthreads) schedule(static) \
    if (nthreads > 1 && n > 1 && n * len >= FC_RANGE_PAR_MIN)
    for (fc_int q = 0; q < n; q++)
        memcpy(dst + q * dst_pitch, src + q * src_pitch, sizeof(float) * (size_t)len);
}

/* Group g's slice of an (n, groups * per, plane) tensor: in place for one
 * image, else gathered into work. */
static const float *group_slice(const float *v, fc_int n, fc_int groups, fc_int per, fc_int plane,
                                fc_int g, float *work, int nthreads)
{
    const fc_int len = per * plane;
    if (n == 1) return v + g * len;
    copy_blocks(work, len, v + g * len, groups * len, n, len, nthreads);
    return work;
}

/* NULL when count floats do not fit in size_t or malloc fails. */
static float *alloc_floats(fc_int count)
{
    if ((uint64_t)count > SIZE_MAX / sizeof(float)) return NULL;
    return malloc((size_t)(count > 0 ? count : 1) * sizeof(float));
}

/* ---- running a plan --------------------------------------------------------- */

static int forward(problem *p, int d, const float *bias, int relu, float *y);

/* The forward of p one group at a time (d as forward's). */
static int per_group_forward(const problem *p, int d, const float *bias, int relu, float *y)
{
    const fc_conv_shape *s = &p->s;
    const fc_int groups = s->groups, hw = s->h * s->w, ohow = s->oh * s->ow;
    problem t = group_problem(p);
    const fc_int cg = t.s.c, kg = t.s.k, wsize = kg * cg * s->kh * s->kw;
    float *work = NULL;
    if (s->n > 1 && !(work = alloc_floats(s->n * (cg * hw + kg * ohow)))) return FC_ENOMEM;
    float *yg = work ? work + s->n * cg * hw : NULL;
    int rc = 0;
    for (fc_int g = 0; g < groups && !rc; g++) {
        t.x = group_slice(p->x, s->n, groups, cg, hw, g, work, p->nthreads);
        t.w = p->w + g * wsize;
        t.max_x = t.max_w = -1.0f;
        rc = forward(&t, d, bias ? bias + g * kg : NULL, relu, yg ? yg : y + g * kg * ohow);
        if (!rc && yg)
            copy_blocks(y + g * kg * ohow, s->k * ohow, yg, kg * ohow, s->n, kg * ohow, p->nthreads);
    }
    free(work);
    return rc;
}

static int run_forward(int a, problem *p, int d, const float *bias, int relu, float *y)
{
    if (a == PER_GROUP) return per_group_forward(p, d, bias, relu, y);
    return noted(a, d, algorithms[a].forward(p, bias, relu, y));
}

/* The forward of p, for the output of direction d (the forward, or dx as a
 * convolution). */
static int forward(problem *p, int d, const float *bias, int relu, float *y)
{
    return run_forward(choose(FC_CONV_FORWARD, p, mode_kind, mode_algorithm, NULL), p, d, bias,
                       relu, y);
}

int fc_conv2d_forward(const fc_conv_shape *s, int precision, const float *x, const float *weight,
                      const float *bias, int relu, float *y, int nthreads)
{
    new_call();
    problem p = problem_of(s, precision, x, weight, NULL, nthreads);
    return forward(&p, FC_CONV_FORWARD, bias, relu, y);
}

int fc_conv2d_dx_part_plan(const fc_conv_shape *s, int precision, const float *dy, const float *weight,
                           int nthreads)
{
    problem p = problem_of(s, precision, dy, weight, NULL, nthreads);
    const int kind = mode_kind == FC_CONV_MODE_FORCE ? FC_CONV_MODE_AUTO : mode_kind;
    return choose(FC_CONV_FORWARD, &p, kind, mode_algorithm, NULL);
}

int fc_conv2d_dx_part_run(int algorithm, const fc_conv_shape *s, int precision, const float *dy,
                          const float *weight, float *out, int nthreads)
{
    problem p = problem_of(s, precision, dy, weight, NULL, nthreads);
    return run_forward(algorithm, &p, FC_CONV_DX, NULL, 0, out);
}

int fc_conv2d_maxpool_forward(const fc_conv_shape *s, int precision, const float *x,
                              const float *weight, const float *bias, int relu, float *pooled,
                              uint8_t *argmax, int nthreads)
{
    new_call();
    problem p = problem_of(s, precision, x, weight, NULL, nthreads);
    const int a = choose(FC_CONV_FORWARD, &p, mode_kind, mode_algorithm, NULL);
    if (a != PER_GROUP && algorithms[a].forward_pool)
        return noted(a, FC_CONV_FORWARD, algorithms[a].forward_pool(&p, bias, relu, pooled, argmax));
    /* The other algorithms' tiles are not pool windows: the conv, then the pool. */
    float *y = malloc(sizeof(float) * (size_t)(s->n * s->k * s->oh * s->ow));
    int rc = y ? run_forward(a, &p, FC_CONV_FORWARD, bias, relu, y) : FC_ENOMEM;
    const fc_pool_shape ps = {.n = s->n, .c = s->k, .h = s->oh, .w = s->ow, .kh = 2, .kw = 2, .sh = 2, .sw = 2,
                              .oh = s->oh / 2, .ow = s->ow / 2, .dh = 1, .dw = 1};
    if (!rc) rc = fc_maxpool2d_forward(&ps, y, pooled, argmax, 1, nthreads);
    free(y);
    return noted(a, FC_CONV_FORWARD, rc);
}

/* dx of p as the forward convolution of dy with the flipped, transposed
 * weights (dx_problem): no col2im scatter, and an output of exactly H x W. */
static int dx_by_convolution(int a, problem *p, float *dx)
{
    const fc_conv_shape *s = &p->s;
    const fc_int kk = s->kh * s->kw;
    float *flipped = malloc(sizeof(float) * (size_t)(s->k * s->c * kk));
    if (!flipped) return noted(a, FC_CONV_DX, FC_ENOMEM);
    for (fc_int k = 0; k < s->k; k++)
        for (fc_int c = 0; c < s->c; c++)
            for (fc_int e = 0; e < kk; e++)
                flipped[(c * s->k + k) * kk + kk - 1 - e] = p->w[(k * s->c + c) * kk + e];
    problem t = dx_problem(p, flipped);
    const int rc = forward(&t, FC_CONV_DX, NULL, 0, dx);
    free(flipped);
    return rc;
}

static int backward(problem *p, float *dx, float *dweight, float *dbias);

/* The backward of p one group at a time: each group's dW and db are
 * contiguous slices of the outputs; its x, dy and dx are gathered and
 * scattered when the batch has more than one image. */
static int per_group_backward(const problem *p, float *dx, float *dweight, float *dbias)
{
    const fc_conv_shape *s = &p->s;
    const fc_int groups = s->groups, hw = s->h * s->w, ohow = s->oh * s->ow;
    problem t = group_problem(p);
    const fc_int cg = t.s.c, kg = t.s.k, wsize = kg * cg * s->kh * s->kw;
    float *work = NULL;
    if (s->n > 1 && !(work = alloc_floats(s->n * ((dx ? 2 : 1) * cg * hw + kg * ohow))))
        return FC_ENOMEM;
    float *dyg = work ? work + s->n * cg * hw : NULL, *dxg = dx && work ? dyg + s->n * kg * ohow : NULL;
    int rc = 0;
    for (fc_int g = 0; g < groups && !rc; g++) {
        t.x = group_slice(p->x, s->n, groups, cg, hw, g, work, p->nthreads);
        t.dy = group_slice(p->dy, s->n, groups, kg, ohow, g, dyg, p->nthreads);
        t.w = p->w + g * wsize;
        t.max_x = t.max_w = t.max_dy = -1.0f;
        float *out = !dx ? NULL : dxg ? dxg : dx + g * cg * hw;
        rc = backward(&t, out, dweight + g * wsize, dbias ? dbias + g * kg : NULL);
        if (!rc && dxg)
            copy_blocks(dx + g * cg * hw, s->c * hw, dxg, cg * hw, s->n, cg * hw, p->nthreads);
    }
    free(work);
    return rc;
}

static int backward(problem *p, float *dx, float *dweight, float *dbias)
{
    const fc_conv_shape *s = &p->s;
    p->need_dx = dx != NULL;
    const int kind = mode_kind, target = mode_algorithm;
    const int dxa = dx ? choose(FC_CONV_DX, p, kind, target, NULL) : -1;
    p->dx_col2im = dx && dxa != PER_GROUP && algorithms[dxa].dx_col2im;
    const int dwa = choose(FC_CONV_DWEIGHT, p, kind, target, NULL);
    if (dxa == PER_GROUP || dwa == PER_GROUP) return per_group_backward(p, dx, dweight, dbias);
    const algorithm *dw = &algorithms[dwa];
    int rc = dw->dweight ? noted(dwa, FC_CONV_DWEIGHT, dw->dweight(p, dweight, dbias)) : 0;
    /* im2col's pass: its dW and db, and col2im's dx, whichever of them run there. */
    if (!rc && (p->dx_col2im || !dw->dweight)) {
        const int outputs = (p->dx_col2im ? FC_CONV_DX : 0) | (dw->dweight ? 0 : FC_CONV_DWEIGHT);
        rc = noted(p->dx_col2im ? dxa : dwa, outputs,
                   fc_im2col_backward(s, p->precision, p->x, p->w, p->dy, p->dx_col2im ? dx : NULL,
                                      dw->dweight ? NULL : dweight, dw->dweight ? NULL : dbias,
                                      p->nthreads));
    }
    if (rc || !dx || p->dx_col2im) return rc;
    if (algorithms[dxa].dx) return noted(dxa, FC_CONV_DX, algorithms[dxa].dx(p, dx));
    return dx_by_convolution(dxa, p, dx);
}

int fc_conv2d_backward(const fc_conv_shape *s, int precision, const float *x, const float *weight,
                       const float *dy, float *dx, float *dweight, float *dbias, int nthreads)
{
    new_call();
    problem p = problem_of(s, precision, x, weight, dy, nthreads);
    return backward(&p, dx, dweight, dbias);
}

/* The algorithm for direction d of p (a group's, when p runs per group),
 * its reason in r. */
static int explain(problem *p, int direction, int kind, int algorithm, reason *r)
{
    if (direction == FC_CONV_DWEIGHT && p->need_dx) {
        const int dxa = choose(FC_CONV_DX, p, kind, algorithm, NULL);
        p->dx_col2im = dxa != PER_GROUP && algorithms[dxa].dx_col2im;
    }
    const int a = choose(direction, p, kind, algorithm, r);
    if (a != PER_GROUP) return a;
    problem t = group_problem(p);
    reason inner;
    const int ga = explain(&t, direction, kind, algorithm, &inner);
    say(r, "%lld groups of C = %lld -> K = %lld, each: %s", (long long)p->s.groups,
        (long long)t.s.c, (long long)t.s.k, inner.text);
    return ga;
}

int fc_conv_explain(const fc_conv_shape *s, int precision, int direction, int need_dx, int kind,
                    int algorithm, char *why, size_t len)
{
    problem p = problem_of(s, precision, NULL, NULL, NULL, 1);
    p.need_dx = need_dx;
    reason r;
    const int a = explain(&p, direction, kind, algorithm, &r);
    if (why && len) snprintf(why, len, "%s", r.text);
    return a;
}
