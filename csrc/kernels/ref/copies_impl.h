/* The copy kernels of the im2col family (contract: kernels/im2col.h) and the
 * range pass, as one source that each ISA folder compiles with its flags:
 * kernels/ref/copies_ref.c (baseline), kernels/avx2/copies_avx2.c and
 * kernels/avx512/copies_avx512.c, whose loops copy two and four times as much
 * per instruction as SSE2's. Include it once,
 * with FC_KERNEL_ISA defined as the suffix of the entries it defines
 * (fc_im2col_row_<isa>, fc_col2im_channel_<isa>, fc_pack_columns_<isa>,
 * fc_max_abs_bits_<isa>).
 *
 * The spans these loops copy are short (an output row, or a few): they stay
 * inline loops, not calls to memset and memcpy, which GCC would otherwise
 * put in their place where that is said below. */
#include <stdint.h>
#include <string.h>

#include "kernels/ctx.h"

#ifndef FC_KERNEL_ISA
#error "define FC_KERNEL_ISA before including kernels/ref/copies_impl.h"
#endif

/* Independent running maxima in the range pass. */
#define FC_SUM_LANES 16

static fc_int min_i(fc_int a, fc_int b) { return a < b ? a : b; }

/* The outputs o in [0, count) whose tap o * stride + offset falls inside
 * [0, size), as [*lo, *hi); the others tap zero padding. */
static inline void inside_range(fc_int offset, fc_int stride, fc_int size, fc_int count,
                                fc_int *lo, fc_int *hi)
{
    /* Unit stride, the common case, needs no division: a walk computes this
     * for every row of the column matrix. */
    const fc_int before = -offset, after = size - offset;
    fc_int first = before <= 0 ? 0 : stride == 1 ? before : (before + stride - 1) / stride;
    fc_int end = after <= 0 ? 0 : stride == 1 ? after : (after + stride - 1) / stride;
    *lo = first < count ? first : count;
    *hi = end < *lo ? *lo : end < count ? end : count;
}

/* The index walk that im2col and col2im share. Row (c, i, j) of the
 * column matrix, r = (c * kh + i) * kw + j, holds, at column (oy, ox), the
 * pixel (its tap offset i*dh - ph, j*dw - pw folded into base)
 *   img[base + oy * sh * w + ox * sw]   for oy in [y0, y1), ox in [x0, x1),
 * and zero padding elsewhere. base is an index into the (C, H, W) image
 * (negative when the tap's first row or column is padding; every index used
 * is in bounds). */
typedef struct {
    fc_int base, y0, y1, x0, x1;
} col_row_taps;

static inline col_row_taps taps_of_row(const fc_conv_shape *s, fc_int c, fc_int i, fc_int j)
{
    col_row_taps t;
    const fc_int iy = i * s->dh - s->ph, ix = j * s->dw - s->pw;
    t.base = (c * s->h + iy) * s->w + ix;
    inside_range(iy, s->sh, s->h, s->oh, &t.y0, &t.y1);
    inside_range(ix, s->sw, s->w, s->ow, &t.x0, &t.x1);
    if (t.x0 == t.x1) t.y1 = t.y0; /* the tap column is all padding: so is the row */
    return t;
}

/* Unit strides and output rows as long as the image's ("same" padding, the
 * common case): then a column-matrix row and its taps in the image have the
 * same layout, offset by base, and all the taps of the row form one
 * contiguous span, [first, end) below, that is copied (or added) with one
 * long vector loop instead of a short one per output row, which for the
 * narrow images of small nets costs more in loop overhead than in data.
 * Inside the span, the entries at padding columns pair with pixels of a
 * neighbouring image row instead: zero_padding_columns fixes them. */
static int taps_are_one_span(const fc_conv_shape *s)
{
    return s->sh == 1 && s->sw == 1 && s->ow == s->w;
}

/* Zero the entries of a column-matrix row that tap padding columns, in rows
 * [y0, y1): a few per row, so written column by column, as strided stores
 * (row by row, the compiler would turn each into a memset call). */
static inline __attribute__((always_inline)) void zero_padding_columns(float *row, const col_row_taps *t, fc_int ow)
{
    for (fc_int ox = 0; ox < t->x0; ox++)
        for (fc_int oy = t->y0; oy < t->y1; oy++) row[oy * ow + ox] = 0.0f;
    for (fc_int ox = t->x1; ox < ow; ox++)
        for (fc_int oy = t->y0; oy < t->y1; oy++) row[oy * ow + ox] = 0.0f;
}

/* dst[e] = src[e * stride] for e < count. */
static inline __attribute__((always_inline)) void gather_loop(float *restrict dst,
                                                              const float *restrict src,
                                                              fc_int stride, fc_int count)
{
    for (fc_int e = 0; e < count; e++) dst[e] = src[e * stride];
}

/* dst[e * stride] += src[e] for e < count. */
static inline __attribute__((always_inline)) void add_loop(float *restrict dst, fc_int stride,
                                                           const float *restrict src, fc_int count)
{
    for (fc_int e = 0; e < count; e++) dst[e * stride] += src[e];
}

/* The loops above for any stride. Strides 1 and 2, the common ones, reach
 * them as constants, so that each gets its own vectorized copy of the loop;
 * with a run-time stride the compiler can only emit scalar code (half the
 * time of im2col for a stride-2 convolution). */
static inline __attribute__((always_inline)) void gather(float *dst, const float *src, fc_int stride, fc_int count)
{
    if (stride == 1)
        gather_loop(dst, src, 1, count);
    else if (stride == 2)
        gather_loop(dst, src, 2, count);
    else
        gather_loop(dst, src, stride, count);
}

static inline __attribute__((always_inline)) void add_strided(float *dst, fc_int stride, const float *src, fc_int count)
{
    if (stride == 1)
        add_loop(dst, 1, src, count);
    else if (stride == 2)
        add_loop(dst, 2, src, count);
    else
        add_loop(dst, stride, src, count);
}

/* Input x: one image (C, H, W); output: out[e] = entry (a + e) of row
 * (c, i, j) of its column matrix, for the pixels [a, b) of the output.
 * The spans are short (an output row, or a few): inline loops, not calls to
 * memset and memcpy, which GCC would otherwise put in their place. */
static inline __attribute__((always_inline)) void zero_loop(float *dst, fc_int count)
{
    for (fc_int e = 0; e < count; e++) dst[e] = 0.0f;
}

/* out[pix - a] = 0 for pix = first + multiples of ow in [a, stop). */
static inline void zero_column(float *out, fc_int a, fc_int stop, fc_int ow, fc_int first)
{
    if (first < a) first += (a - first + ow - 1) / ow * ow;
    for (fc_int pix = first; pix < stop; pix += ow) out[pix - a] = 0.0f;
}

static inline __attribute__((always_inline)) void im2col_row_part(const fc_conv_shape *s,
                                                                   const float *restrict x,
                                                                   fc_int c, fc_int i, fc_int j,
                                                                   fc_int a, fc_int b,
                                                                   float *restrict out)
{
    const col_row_taps t = taps_of_row(s, c, i, j);
    const fc_int ow = s->ow;
    if (t.y0 == t.y1) {
        zero_loop(out, b - a);
        return;
    }
    if (taps_are_one_span(s)) {
        /* The taps [first, end) as one copy; then the padding columns inside. */
        const fc_int first = t.y0 * ow + t.x0, end = (t.y1 - 1) * ow + t.x1;
        const fc_int lo = first < a ? a : first > b ? b : first;
        const fc_int hi = end > b ? b : end < lo ? lo : end;
        zero_loop(out, lo - a);
        gather_loop(out + lo - a, x + t.base + lo, 1, hi - lo);
        zero_loop(out + hi - a, b - hi);
        if (t.x0 == 0 && t.x1 == ow) return;
        /* Padding column ox of output rows [y0, y1): pixels ox + oy * ow. */
        const fc_int stop = min_i(b, t.y1 * ow);
        for (fc_int ox = 0; ox < t.x0; ox++) zero_column(out, a, stop, ow, t.y0 * ow + ox);
        for (fc_int ox = t.x1; ox < ow; ox++) zero_column(out, a, stop, ow, t.y0 * ow + ox);
        return;
    }
    /* Output row by output row: [ox_a, ox_b) of row oy falls in [a, b). */
    for (fc_int oy = a / ow; oy * ow < b; oy++) {
        const fc_int ox_a = oy * ow < a ? a - oy * ow : 0, ox_b = b - oy * ow < ow ? b - oy * ow : ow;
        float *o = out + oy * ow + ox_a - a;
        if (oy < t.y0 || oy >= t.y1) {
            zero_loop(o, ox_b - ox_a);
            continue;
        }
        const fc_int lo = t.x0 < ox_a ? ox_a : t.x0 > ox_b ? ox_b : t.x0;
        const fc_int hi = t.x1 > ox_b ? ox_b : t.x1 < lo ? lo : t.x1;
        zero_loop(o, lo - ox_a);
        const float *src = x + t.base + oy * s->sh * s->w + lo * s->sw;
        if (s->sw == 1) /* inlined with constant strides: see gather */
            gather_loop(o + lo - ox_a, src, 1, hi - lo);
        else if (s->sw == 2)
            gather_loop(o + lo - ox_a, src, 2, hi - lo);
        else
            gather_loop(o + lo - ox_a, src, s->sw, hi - lo);
        zero_loop(o + hi - ox_a, ox_b - hi);
    }
}

/* Input x: one image (C, H, W); output: row (c, i, j) of its column
 * matrix, whose rows are ld apart. */
static inline __attribute__((always_inline)) void im2col_row(const fc_conv_shape *s, const float *restrict x,
                                                              float *restrict col, fc_int ld, fc_int c,
                                                              fc_int i, fc_int j)
{
    const col_row_taps t = taps_of_row(s, c, i, j);
    const fc_int ow = s->ow;
    float *row = col + ((c * s->kh + i) * s->kw + j) * ld;
    memset(row, 0, sizeof(float) * t.y0 * ow);
    memset(row + t.y1 * ow, 0, sizeof(float) * (s->oh - t.y1) * ow);
    if (t.y0 == t.y1) return;
    if (taps_are_one_span(s)) {
        const fc_int first = t.y0 * ow + t.x0, end = (t.y1 - 1) * ow + t.x1;
        gather(row + first, x + t.base + first, 1, end - first);
    } else {
        for (fc_int oy = t.y0; oy < t.y1; oy++)
            gather(row + oy * ow + t.x0, x + t.base + oy * s->sh * s->w + t.x0 * s->sw, s->sw,
                   t.x1 - t.x0);
    }
    zero_padding_columns(row, &t, ow);
}

/* ---- implicit im2col: the forward GEMM's B packed straight from x -------- */

/* Columns packed per call of pack_columns: a row of them is built in an
 * L1 buffer, then dealt out to the slivers by the GEMM table's deal_nr. */
#define FC_PACK_COLS 1056

static inline __attribute__((always_inline)) void pack_columns_body(const void *ctx, fc_int p0,
                                                                     fc_int kc, fc_int j0,
                                                                     fc_int nb, int nr, float *dst)
{
    const fc_column_source *src = ctx;
    const fc_conv_shape *s = src->s;
    const fc_int ohow = s->oh * s->ow, chw = s->c * s->h * s->w, kk = s->kh * s->kw;
    const fc_int chunk = FC_PACK_COLS / nr * nr;
    float row[FC_PACK_COLS];
    for (fc_int jc = 0; jc < nb; jc += chunk) {
        const fc_int width = min_i(chunk, nb - jc), col0 = j0 + jc;
        float *d = dst + jc * kc;
        fc_int c = p0 / kk, i = p0 % kk / s->kw, j = p0 % s->kw;
        for (fc_int p = 0; p < kc; p++) {
            /* The row's columns [col0, col0 + width), image by image. */
            for (fc_int e = 0; e < width;) {
                const fc_int q = (col0 + e) / ohow, a = (col0 + e) % ohow;
                const fc_int b = min_i(ohow, a + width - e);
                im2col_row_part(s, src->x + q * chw, c, i, j, a, b, row + e);
                e += b - a;
            }
            src->deal(row, width, kc, d + p * nr);
            if (++j == s->kw) {
                j = 0;
                if (++i == s->kh) i = 0, c++;
            }
        }
    }
}

/* Input: one image's column matrix, rows ld apart, whose entries at
 * padding taps are zeroed on the way (it is a workspace); output: channel c
 * of that image's dx, overwritten with the sum of every tap that lands on
 * each pixel. A channel is the unit of work because its kh*kw rows overlap
 * in dx and the channels do not. */
static inline __attribute__((always_inline)) void col2im_channel(const fc_conv_shape *s, float *restrict col,
                                                                  fc_int ld, float *restrict dx, fc_int c)
{
    const fc_int ow = s->ow;
    memset(dx + c * s->h * s->w, 0, sizeof(float) * s->h * s->w);
    for (fc_int i = 0; i < s->kh; i++)
        for (fc_int j = 0; j < s->kw; j++) {
            const col_row_taps t = taps_of_row(s, c, i, j);
            float *row = col + ((c * s->kh + i) * s->kw + j) * ld;
            if (t.y0 == t.y1) continue;
            if (taps_are_one_span(s)) {
                const fc_int first = t.y0 * ow + t.x0, end = (t.y1 - 1) * ow + t.x1;
                zero_padding_columns(row, &t, ow);
                add_strided(dx + t.base + first, 1, row + first, end - first);
            } else {
                for (fc_int oy = t.y0; oy < t.y1; oy++)
                    add_strided(dx + t.base + oy * s->sh * s->w + t.x0 * s->sw, s->sw,
                                row + oy * ow + t.x0, t.x1 - t.x0);
            }
        }
}

/* The largest of v's bit patterns with the sign cleared, as int32: these
 * order as |v| does, with the NaNs above +Inf, so one integer max flags
 * NaN and Inf with the largest |v| (a float max would drop NaNs). FC_SUM_LANES
 * independent maxima, which the compiler vectorizes. */
static inline __attribute__((always_inline)) int32_t max_abs_bits_body(const float *v, fc_int n)
{
    int32_t lane[FC_SUM_LANES] = {0}, bits;
    fc_int i = 0;
    for (; i + FC_SUM_LANES <= n; i += FC_SUM_LANES)
        for (int l = 0; l < FC_SUM_LANES; l++) {
            memcpy(&bits, v + i + l, sizeof bits);
            bits &= INT32_MAX;
            lane[l] = bits > lane[l] ? bits : lane[l];
        }
    for (int l = 0; i < n; i++, l++) {
        memcpy(&bits, v + i, sizeof bits);
        bits &= INT32_MAX;
        lane[l] = bits > lane[l] ? bits : lane[l];
    }
    int32_t most = 0;
    for (int l = 0; l < FC_SUM_LANES; l++) most = lane[l] > most ? lane[l] : most;
    return most;
}

/* ---- the entries ---------------------------------------------------------- */

void FC_KERNEL(im2col_row)(const fc_conv_shape *s, const float *x, float *col, fc_int ld, fc_int c,
                           fc_int i, fc_int j)
{
    im2col_row(s, x, col, ld, c, i, j);
}

void FC_KERNEL(col2im_channel)(const fc_conv_shape *s, float *col, fc_int ld, float *dx, fc_int c)
{
    col2im_channel(s, col, ld, dx, c);
}

__attribute__((optimize("no-tree-loop-distribute-patterns"))) void FC_KERNEL(pack_columns)(
    const void *ctx, fc_int p0, fc_int kc, fc_int j0, fc_int nb, int nr, float *dst)
{
    pack_columns_body(ctx, p0, kc, j0, nb, nr, dst);
}

int32_t FC_KERNEL(max_abs_bits)(const float *v, fc_int n) { return max_abs_bits_body(v, n); }
