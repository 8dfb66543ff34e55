/* Average pooling and its backward. Work is split over (n, c) planes: each
 * plane is read and written by one thread only, so the backward's scatter-add
 * has no race and no atomics, and results do not depend on the thread count.
 *
 * Divisors are PyTorch's (see fastconv.h): with the defaults
 * (count_include_pad, no override, floor-mode sizes) every window's is
 * kh * kw. Sums are in float in row-major window order, as PyTorch's CPU
 * kernel. */
#include <string.h>
#include "fastconv.h"
#include "core/fc_omp.h"

/* Below this many input elements a parallel region costs more than it saves. */
#define FC_POOL_PAR_MIN 16384

/* Window (oy, ox): its real elements [y0, y1) x [x0, x1) and its divisor. */
typedef struct {
    fc_int y0, y1, x0, x1;
    float div;
} window;

/* The part [*lo, *hi) of the window starting at `start` (may be negative:
 * padding) of size k that lies inside [0, size); returns the part inside the
 * padded extent [-pad, size + pad), which count_include_pad counts. */
static inline fc_int clip(fc_int start, fc_int k, fc_int size, fc_int pad, fc_int *lo, fc_int *hi)
{
    fc_int end = start + k > size + pad ? size + pad : start + k;
    *lo = start < 0 ? 0 : start;
    *hi = end > size ? size : end;
    return end - start;
}

static inline window window_at(const fc_pool_shape *s, int count_include_pad, fc_int divisor_override,
                               fc_int oy, fc_int ox)
{
    window win;
    fc_int padded = clip(oy * s->sh - s->ph, s->kh, s->h, s->ph, &win.y0, &win.y1) *
                    clip(ox * s->sw - s->pw, s->kw, s->w, s->pw, &win.x0, &win.x1);
    fc_int real = (win.y1 - win.y0) * (win.x1 - win.x0);
    win.div = (float)(divisor_override > 0 ? divisor_override : count_include_pad ? padded : real);
    return win;
}

static void avg_plane(const fc_pool_shape *s, int include_pad, fc_int divisor, const float *x, float *y)
{
    for (fc_int oy = 0; oy < s->oh; oy++)
        for (fc_int ox = 0; ox < s->ow; ox++) {
            window win = window_at(s, include_pad, divisor, oy, ox);
            float sum = 0.0f;
            for (fc_int iy = win.y0; iy < win.y1; iy++)
                for (fc_int ix = win.x0; ix < win.x1; ix++) sum += x[iy * s->w + ix];
            /* A window of padding alone (the wrappers never make one) gives 0, as PyTorch. */
            y[oy * s->ow + ox] = win.y0 < win.y1 && win.x0 < win.x1 ? sum / win.div : 0.0f;
        }
}

static void avg_plane_backward(const fc_pool_shape *s, int include_pad, fc_int divisor, const float *dy,
                               float *dx)
{
    memset(dx, 0, sizeof(float) * (size_t)(s->h * s->w));
    for (fc_int oy = 0; oy < s->oh; oy++)
        for (fc_int ox = 0; ox < s->ow; ox++) {
            window win = window_at(s, include_pad, divisor, oy, ox);
            float g = dy[oy * s->ow + ox] / win.div;
            for (fc_int iy = win.y0; iy < win.y1; iy++)
                for (fc_int ix = win.x0; ix < win.x1; ix++) dx[iy * s->w + ix] += g;
        }
}

void fc_avgpool2d_forward(const fc_pool_shape *s, int count_include_pad, fc_int divisor_override,
                          const float *x, float *y, int nthreads)
{
    fc_int planes = s->n * s->c, in_plane = s->h * s->w, out_plane = s->oh * s->ow;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (planes * in_plane >= FC_POOL_PAR_MIN)
    for (fc_int p = 0; p < planes; p++)
        avg_plane(s, count_include_pad, divisor_override, x + p * in_plane, y + p * out_plane);
}

void fc_avgpool2d_backward(const fc_pool_shape *s, int count_include_pad, fc_int divisor_override,
                           const float *dy, float *dx, int nthreads)
{
    fc_int planes = s->n * s->c, in_plane = s->h * s->w, out_plane = s->oh * s->ow;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (planes * in_plane >= FC_POOL_PAR_MIN)
    for (fc_int p = 0; p < planes; p++)
        avg_plane_backward(s, count_include_pad, divisor_override, dy + p * out_plane, dx + p * in_plane);
}
