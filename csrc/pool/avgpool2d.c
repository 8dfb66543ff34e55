/* Average pooling and its backward. Work is split over (n, c) planes: each
 * plane is read and written by one thread only, so the backward's scatter-add
 * has no race and no atomics, and results do not depend on the thread count.
 *
 * The divisor is always kh * kw: zero padding counts (count_include_pad), and
 * with floor-mode output sizes no window reaches past the padding. Sums are in
 * float in row-major window order, as PyTorch's CPU kernel. */
#include <string.h>
#include "fastconv.h"
#include "core/fc_omp.h"

/* Below this many input elements a parallel region costs more than it saves. */
#define FC_POOL_PAR_MIN 16384

/* The part [*lo, *hi) of the window starting at `start` (may be negative:
 * padding) of size k that lies inside [0, size). */
static inline void clip(fc_int start, fc_int k, fc_int size, fc_int *lo, fc_int *hi)
{
    *lo = start < 0 ? 0 : start;
    *hi = start + k > size ? size : start + k;
}

static void avg_plane(const fc_pool_shape *s, const float *x, float *y)
{
    float div = (float)(s->kh * s->kw);
    for (fc_int oy = 0; oy < s->oh; oy++) {
        fc_int y0, y1;
        clip(oy * s->sh - s->ph, s->kh, s->h, &y0, &y1);
        for (fc_int ox = 0; ox < s->ow; ox++) {
            fc_int x0, x1;
            clip(ox * s->sw - s->pw, s->kw, s->w, &x0, &x1);
            float sum = 0.0f;
            for (fc_int iy = y0; iy < y1; iy++)
                for (fc_int ix = x0; ix < x1; ix++) sum += x[iy * s->w + ix];
            y[oy * s->ow + ox] = sum / div;
        }
    }
}

static void avg_plane_backward(const fc_pool_shape *s, const float *dy, float *dx)
{
    float div = (float)(s->kh * s->kw);
    memset(dx, 0, sizeof(float) * (size_t)(s->h * s->w));
    for (fc_int oy = 0; oy < s->oh; oy++) {
        fc_int y0, y1;
        clip(oy * s->sh - s->ph, s->kh, s->h, &y0, &y1);
        for (fc_int ox = 0; ox < s->ow; ox++) {
            fc_int x0, x1;
            clip(ox * s->sw - s->pw, s->kw, s->w, &x0, &x1);
            float g = dy[oy * s->ow + ox] / div;
            for (fc_int iy = y0; iy < y1; iy++)
                for (fc_int ix = x0; ix < x1; ix++) dx[iy * s->w + ix] += g;
        }
    }
}

void fc_avgpool2d_forward(const fc_pool_shape *s, const float *x, float *y, int nthreads)
{
    fc_int planes = s->n * s->c, in_plane = s->h * s->w, out_plane = s->oh * s->ow;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (planes * in_plane >= FC_POOL_PAR_MIN)
    for (fc_int p = 0; p < planes; p++) avg_plane(s, x + p * in_plane, y + p * out_plane);
}

void fc_avgpool2d_backward(const fc_pool_shape *s, const float *dy, float *dx, int nthreads)
{
    fc_int planes = s->n * s->c, in_plane = s->h * s->w, out_plane = s->oh * s->ow;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (planes * in_plane >= FC_POOL_PAR_MIN)
    for (fc_int p = 0; p < planes; p++)
        avg_plane_backward(s, dy + p * out_plane, dx + p * in_plane);
}
