/* Max-pool with recorded argmax, and its backward through that argmax.
 *
 * 2x2 windows with stride 2 and no padding (every pool of the workloads) go
 * to the ISA's row kernels below, threads splitting the
 * output rows of all planes: windows do not overlap, so the backward writes
 * each dx element once, with no memset. Any other geometry takes the general
 * path below, whose work is split over (n, c) planes: each plane is read and
 * written by one thread only, so the backward's scatter-add has no race and no
 * atomics. Either way the result does not depend on the thread count. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fastconv.h"
#include "fc_omp.h"

/* Below this many input elements a pool runs on one thread: waking a team
 * costs more than it saves. */
#define PARALLEL_MIN 16384

static inline void store_index(void *argmax, int bytes, fc_int i, int v)
{
    if (bytes == 1) ((uint8_t *)argmax)[i] = (uint8_t)v;
    else ((int32_t *)argmax)[i] = (int32_t)v;
}

static inline fc_int load_index(const void *argmax, int bytes, fc_int i)
{
    return bytes == 1 ? ((const uint8_t *)argmax)[i] : ((const int32_t *)argmax)[i];
}

/* One output row: for each window tap (i, j) in row-major order, a
 * compare-and-select across all output columns. The loop over columns has no
 * branch, so the compiler vectorizes it, and scanning taps in window order
 * keeps the tie and NaN rules of a per-window scan. best/best_i hold ow
 * entries. */
static void pool_row(const fc_pool_shape *s, const float *plane, fc_int oy, float *best, int32_t *best_i)
{
    fc_int ys = oy * s->sh - s->ph;
    fc_int y0 = ys < 0 ? 0 : ys, y1 = ys + s->kh > s->h ? s->h : ys + s->kh;
    for (fc_int ox = 0; ox < s->ow; ox++) {
        /* Start from the window's first real (unpadded) element, as PyTorch
         * does, so a window of -inf still points at a real input. */
        fc_int xs = ox * s->sw - s->pw;
        best[ox] = -INFINITY;
        best_i[ox] = (int32_t)((y0 - ys) * s->kw + (xs < 0 ? -xs : 0));
    }
    for (fc_int iy = y0; iy < y1; iy++) {
        const float *row = plane + iy * s->w;
        for (fc_int j = 0; j < s->kw; j++) {
            /* Columns ox whose tap j lands inside the row: 0 <= ox*sw - pw + j < w. */
            fc_int lo = s->pw - j > 0 ? (s->pw - j + s->sw - 1) / s->sw : 0;
            fc_int last = s->w - 1 + s->pw - j; /* ox * sw <= last; none when last < 0 */
            fc_int hi = last < 0 ? 0 : last / s->sw + 1;
            if (hi > s->ow) hi = s->ow;
            int32_t tap = (int32_t)((iy - ys) * s->kw + j);
            const float *src = row + j - s->pw;
            for (fc_int ox = lo; ox < hi; ox++) {
                float v = src[ox * s->sw];
                int take = (v > best[ox]) | (v != v);
                best[ox] = take ? v : best[ox];
                best_i[ox] = take ? tap : best_i[ox];
            }
        }
    }
}

/* The 2x2 stride-2 row kernels (the common case: every pool of the
 * workloads), a portable pair and an AVX2 pair behind one interface; the
 * callers below do the geometry and the threading.
 *
 * Forward, one output row of `ow` windows: window ox covers r0[2ox], r0[2ox+1],
 * r1[2ox], r1[2ox+1], taps 0..3 in that (row-major) order. y[ox] is the
 * maximum and am[ox] its tap, by the scan rule of fc_maxpool2d_forward: start
 * from tap 0, take a later tap when it is greater or NaN (so ties keep the
 * first maximum, a NaN beats numbers and the last NaN wins; a window of -inf
 * points at tap 0).
 *
 * Backward, the same row: dx0[2ox + j] = dy[ox] if am[ox] == j else 0, and
 * dx1[2ox + j] likewise for am[ox] == 2 + j, j in {0, 1}. Windows do not
 * overlap, so each dx element of the row pair is stored, never accumulated
 * (no memset; a SIMD kernel may store an element twice, with the same
 * value). An am[ox] > 3 writes zeros there; the caller counts those. All
 * pointers may have any alignment. */

typedef void row_forward_fn(fc_int ow, const float *r0, const float *r1, float *y, uint8_t *am);
typedef void row_backward_fn(fc_int ow, const float *dy, const uint8_t *am, float *dx0, float *dx1);

typedef struct {
    row_forward_fn *forward;
    row_backward_fn *backward;
} row_kernel_pair;

/* Windows [from, ow) in plain C: the generic kernel, and the SIMD kernels' tails. */
static inline void row_forward_scalar(fc_int from, fc_int ow, const float *r0, const float *r1,
                                         float *y, uint8_t *am)
{
    for (fc_int ox = from; ox < ow; ox++) {
        float v[4] = {r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]};
        float best = v[0];
        uint8_t tap = 0;
        for (int t = 1; t < 4; t++) {
            int take = (v[t] > best) | (v[t] != v[t]);
            best = take ? v[t] : best;
            tap = take ? (uint8_t)t : tap;
        }
        y[ox] = best;
        am[ox] = tap;
    }
}

static inline void row_backward_scalar(fc_int from, fc_int ow, const float *dy, const uint8_t *am,
                                         float *dx0, float *dx1)
{
    for (fc_int ox = from; ox < ow; ox++) {
        float g = dy[ox];
        int t = am[ox];
        dx0[2 * ox] = t == 0 ? g : 0.0f;
        dx0[2 * ox + 1] = t == 1 ? g : 0.0f;
        dx1[2 * ox] = t == 2 ? g : 0.0f;
        dx1[2 * ox + 1] = t == 3 ? g : 0.0f;
    }
}

static void forward_generic(fc_int ow, const float *r0, const float *r1, float *y, uint8_t *am)
{
    row_forward_scalar(0, ow, r0, r1, y, am);
}

static void backward_generic(fc_int ow, const float *dy, const uint8_t *am, float *dx0, float *dx1)
{
    row_backward_scalar(0, ow, dy, am, dx0, dx1);
}

static const row_kernel_pair kernel_generic = {forward_generic, backward_generic};

#if defined(FC_X86_KERNELS) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FC_AVX2 __attribute__((target("avx2")))

/* AVX2 row kernels (a per-function target, so the file needs no ISA flags;
 * picked at run time). Eight windows per step: two 8-float loads per input
 * row are split into even and odd columns with in-lane shuffles, which leaves the windows in
 * the order 0 1 4 5 | 2 3 6 7; one 64-bit-chunk permute restores it on the
 * results only. A row of ow >= 8 windows ends with the vector of its last 8
 * (overlapping the one before: both write the same values there), so rows
 * such as 28 / 2 = 14 do not spend most of their time in the scalar tail. */

/* Even (taps 0, 2) and odd (taps 1, 3) columns of 16 floats, windows in the
 * order 0 1 4 5 2 3 6 7. */
FC_AVX2 static inline void split(const float *r, __m256 *even, __m256 *odd)
{
    __m256 lo = _mm256_loadu_ps(r), hi = _mm256_loadu_ps(r + 8);
    *even = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    *odd = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
}

/* The scan rule's step: take v when v > best or v is NaN. */
FC_AVX2 static inline void take(__m256 v, int tap, __m256 *best, __m256 *idx)
{
    __m256 m = _mm256_or_ps(_mm256_cmp_ps(v, *best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    *best = _mm256_blendv_ps(*best, v, m);
    *idx = _mm256_blendv_ps(*idx, _mm256_castsi256_ps(_mm256_set1_epi32(tap)), m);
}

/* Windows ox .. ox + 7. */
FC_AVX2 static inline void forward8(fc_int ox, const float *r0, const float *r1, float *y, uint8_t *am)
{
    __m256 v0, v1, v2, v3;
    split(r0 + 2 * ox, &v0, &v1);
    split(r1 + 2 * ox, &v2, &v3);
    __m256 best = v0, idx = _mm256_setzero_ps();
    take(v1, 1, &best, &idx);
    take(v2, 2, &best, &idx);
    take(v3, 3, &best, &idx);
    const int order = _MM_SHUFFLE(3, 1, 2, 0); /* 64-bit chunks 0 2 1 3: windows 0..7 */
    _mm256_storeu_ps(y + ox, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(best), order)));
    __m256i t = _mm256_permute4x64_epi64(_mm256_castps_si256(idx), order);
    __m128i t16 = _mm_packs_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    _mm_storel_epi64((__m128i *)(am + ox), _mm_packus_epi16(t16, t16));
}

/* Rows of 4 to 7 windows (a 14x14 plane pools to 7 per row: lenet's second
 * pool) in 4-window steps on 128-bit vectors, the last overlapping as above;
 * the scalar loop took 10x longer per element than the 8-window kernel
 * (64x16x14x14: 0.68 ms forward, 0.50 backward at 1 thread, against 0.066
 * and 0.094 for the same bytes in 28-wide rows). In 128 bits the even/odd
 * shuffle keeps the windows in order. */
FC_AVX2 static inline void take4(__m128 v, int tap, __m128 *best, __m128 *idx)
{
    __m128 m = _mm_or_ps(_mm_cmp_ps(v, *best, _CMP_GT_OQ), _mm_cmp_ps(v, v, _CMP_UNORD_Q));
    *best = _mm_blendv_ps(*best, v, m);
    *idx = _mm_blendv_ps(*idx, _mm_castsi128_ps(_mm_set1_epi32(tap)), m);
}

FC_AVX2 static inline void forward4(fc_int ox, const float *r0, const float *r1, float *y, uint8_t *am)
{
    const __m128 a = _mm_loadu_ps(r0 + 2 * ox), b = _mm_loadu_ps(r0 + 2 * ox + 4);
    const __m128 c = _mm_loadu_ps(r1 + 2 * ox), d = _mm_loadu_ps(r1 + 2 * ox + 4);
    __m128 best = _mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)), idx = _mm_setzero_ps();
    take4(_mm_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)), 1, &best, &idx);
    take4(_mm_shuffle_ps(c, d, _MM_SHUFFLE(2, 0, 2, 0)), 2, &best, &idx);
    take4(_mm_shuffle_ps(c, d, _MM_SHUFFLE(3, 1, 3, 1)), 3, &best, &idx);
    _mm_storeu_ps(y + ox, best);
    const __m128i t16 = _mm_packs_epi32(_mm_castps_si128(idx), _mm_castps_si128(idx));
    const int32_t t8 = _mm_cvtsi128_si32(_mm_packus_epi16(t16, t16));
    memcpy(am + ox, &t8, 4);
}

FC_AVX2 static void forward_avx2(fc_int ow, const float *r0, const float *r1, float *y, uint8_t *am)
{
    if (ow < 4) {
        row_forward_scalar(0, ow, r0, r1, y, am);
        return;
    }
    if (ow < 8) {
        forward4(0, r0, r1, y, am);
        if (ow > 4) forward4(ow - 4, r0, r1, y, am);
        return;
    }
    for (fc_int ox = 0; ox + 8 <= ow; ox += 8) forward8(ox, r0, r1, y, am);
    if (ow % 8) forward8(ow - 8, r0, r1, y, am);
}

/* Interleave a (even columns) and b (odd columns) of 8 windows into 16 floats at d. */
FC_AVX2 static inline void store_interleaved(float *d, __m256 a, __m256 b)
{
    __m256 lo = _mm256_unpacklo_ps(a, b), hi = _mm256_unpackhi_ps(a, b);
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(d + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}

FC_AVX2 static inline void backward8(fc_int ox, const float *dy, const uint8_t *am, float *dx0, float *dx1)
{
    __m256 g = _mm256_loadu_ps(dy + ox);
    __m256i t = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(am + ox)));
    __m256 d[4];
    for (int k = 0; k < 4; k++)
        d[k] = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(t, _mm256_set1_epi32(k))), g);
    store_interleaved(dx0 + 2 * ox, d[0], d[1]);
    store_interleaved(dx1 + 2 * ox, d[2], d[3]);
}

FC_AVX2 static inline void backward4(fc_int ox, const float *dy, const uint8_t *am, float *dx0, float *dx1)
{
    const __m128 g = _mm_loadu_ps(dy + ox);
    int32_t t8;
    memcpy(&t8, am + ox, 4);
    const __m128i t = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(t8));
    __m128 d[4];
    for (int k = 0; k < 4; k++) d[k] = _mm_and_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(t, _mm_set1_epi32(k))), g);
    _mm_storeu_ps(dx0 + 2 * ox, _mm_unpacklo_ps(d[0], d[1]));
    _mm_storeu_ps(dx0 + 2 * ox + 4, _mm_unpackhi_ps(d[0], d[1]));
    _mm_storeu_ps(dx1 + 2 * ox, _mm_unpacklo_ps(d[2], d[3]));
    _mm_storeu_ps(dx1 + 2 * ox + 4, _mm_unpackhi_ps(d[2], d[3]));
}

FC_AVX2 static void backward_avx2(fc_int ow, const float *dy, const uint8_t *am, float *dx0, float *dx1)
{
    if (ow < 4) {
        row_backward_scalar(0, ow, dy, am, dx0, dx1);
        return;
    }
    if (ow < 8) {
        backward4(0, dy, am, dx0, dx1);
        if (ow > 4) backward4(ow - 4, dy, am, dx0, dx1);
        return;
    }
    for (fc_int ox = 0; ox + 8 <= ow; ox += 8) backward8(ox, dy, am, dx0, dx1);
    if (ow % 8) backward8(ow - 8, dy, am, dx0, dx1);
}

static const row_kernel_pair kernel_avx2 = {forward_avx2, backward_avx2};
#endif

/* The pair of the ISA picked at run time; AVX-512 uses AVX2's, since the row
 * kernels are bound by memory, not by vector width. */
static const row_kernel_pair *row_kernels(void)
{
#if defined(FC_X86_KERNELS) && (defined(__GNUC__) || defined(__clang__))
    if (fc_isa_get() >= FC_ISA_AVX2) return &kernel_avx2;
#endif
    return &kernel_generic;
}

static int is_2x2_stride_2(const fc_pool_shape *s)
{
    return s->kh == 2 && s->kw == 2 && s->sh == 2 && s->sw == 2 && s->ph == 0 && s->pw == 0;
}

static void forward_2x2(const fc_pool_shape *s, const float *x, float *y, uint8_t *argmax, int nthreads)
{
    const row_kernel_pair *k = row_kernels();
    fc_int planes = s->n * s->c;
    /* collapse(2): threads split the rows of all planes, so a batch of one
     * image with few channels still keeps both busy. */
#pragma omp parallel for collapse(2) num_threads(nthreads) schedule(static) \
    if (planes * s->h * s->w >= PARALLEL_MIN)
    for (fc_int p = 0; p < planes; p++)
        for (fc_int oy = 0; oy < s->oh; oy++) {
            const float *r0 = x + (p * s->h + 2 * oy) * s->w;
            fc_int o = (p * s->oh + oy) * s->ow;
            k->forward(s->ow, r0, r0 + s->w, y + o, argmax + o);
        }
}

/* dx rows and columns that no window covers (the last of an odd H or W) get
 * zeros here; the row kernels write all the others. */
static fc_int backward_2x2(const fc_pool_shape *s, const float *dy, const uint8_t *argmax, float *dx,
                           int nthreads)
{
    const row_kernel_pair *k = row_kernels();
    fc_int planes = s->n * s->c, bad = 0;
#pragma omp parallel for collapse(2) num_threads(nthreads) schedule(static) reduction(+ : bad) \
    if (planes * s->h * s->w >= PARALLEL_MIN)
    for (fc_int p = 0; p < planes; p++)
        for (fc_int oy = 0; oy < s->oh; oy++) {
            fc_int o = (p * s->oh + oy) * s->ow;
            const uint8_t *am = argmax + o;
            float *d0 = dx + (p * s->h + 2 * oy) * s->w, *d1 = d0 + s->w;
            k->backward(s->ow, dy + o, am, d0, d1);
            /* An index past 3 sets a bit above the low two: OR all (cheap,
             * vectorized), count only when one is there. */
            uint8_t any = 0;
            for (fc_int ox = 0; ox < s->ow; ox++) any |= am[ox];
            if (any > 3)
                for (fc_int ox = 0; ox < s->ow; ox++) bad += am[ox] > 3;
            if (s->w > 2 * s->ow) d0[s->w - 1] = d1[s->w - 1] = 0.0f;
            if (oy == s->oh - 1) memset(d1 + s->w, 0, sizeof(float) * (size_t)((s->h - 2 * s->oh) * s->w));
        }
    return bad;
}

int fc_maxpool2d_forward(const fc_pool_shape *s, const float *x, float *y,
                         void *argmax, int argmax_bytes, int nthreads)
{
    if (is_2x2_stride_2(s) && argmax_bytes == 1) {
        forward_2x2(s, x, y, argmax, nthreads);
        return 0;
    }
    fc_int planes = s->n * s->c, in_plane = s->h * s->w, out_plane = s->oh * s->ow;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (planes * in_plane >= PARALLEL_MIN) reduction(| : failed)
    {
        int32_t *row_i = malloc(sizeof(int32_t) * (size_t)s->ow);
        if (!row_i) failed = 1;
#pragma omp for schedule(static)
        for (fc_int p = 0; p < planes; p++) {
            if (!row_i) continue;
            for (fc_int oy = 0; oy < s->oh; oy++) {
                fc_int o = p * out_plane + oy * s->ow;
                pool_row(s, x + p * in_plane, oy, y + o, row_i);
                for (fc_int ox = 0; ox < s->ow; ox++) store_index(argmax, argmax_bytes, o + ox, row_i[ox]);
            }
        }
        free(row_i);
    }
    return failed ? FC_ENOMEM : 0;
}

fc_int fc_maxpool2d_backward(const fc_pool_shape *s, const float *dy, const void *argmax,
                             int argmax_bytes, float *dx, int nthreads)
{
    if (is_2x2_stride_2(s) && argmax_bytes == 1) return backward_2x2(s, dy, argmax, dx, nthreads);
    fc_int planes = s->n * s->c, in_plane = s->h * s->w, out_plane = s->oh * s->ow;
    fc_int bad = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+ : bad) if (planes * in_plane >= PARALLEL_MIN)
    for (fc_int p = 0; p < planes; p++) {
        float *plane = dx + p * in_plane;
        memset(plane, 0, sizeof(float) * (size_t)in_plane);
        for (fc_int oy = 0; oy < s->oh; oy++) {
            fc_int ys = oy * s->sh - s->ph;
            for (fc_int ox = 0; ox < s->ow; ox++) {
                fc_int o = p * out_plane + oy * s->ow + ox;
                fc_int idx = load_index(argmax, argmax_bytes, o);
                fc_int iy = ys + idx / s->kw, ix = ox * s->sw - s->pw + idx % s->kw;
                if (idx < 0 || idx >= s->kh * s->kw || iy < 0 || iy >= s->h || ix < 0 || ix >= s->w) {
                    bad++;
                    continue;
                }
                plane[iy * s->w + ix] += dy[o];
            }
        }
    }
    return bad;
}
