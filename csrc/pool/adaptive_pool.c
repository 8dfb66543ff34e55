/* Adaptive average and max pooling (PyTorch's AdaptiveAvgPool2d and
 * AdaptiveMaxPool2d) and their backwards. Output cell (i, j) of an oh x ow
 * output pools input rows [floor(i h / oh), ceil((i + 1) h / oh)) and the
 * columns likewise, so windows differ in size and may overlap. Work is split
 * over (n, c) planes: each plane is read and written by one thread only, so
 * the backward's scatter-add has no race and the bits do not depend on the
 * thread count. Sums are in float, in row-major window order.
 *
 * oh = ow = 1 is the global pool of ResNets: one window, the whole plane. */
#include <string.h>
#include "fastconv.h"
#include "core/fc_omp.h"

/* Below this many input elements a parallel region costs more than it saves. */
#define FC_POOL_PAR_MIN 16384

/* PyTorch's window [*lo, *hi) of output cell i of `out` along an axis of `in`. */
static inline void window(fc_int i, fc_int in, fc_int out, fc_int *lo, fc_int *hi)
{
    *lo = i * in / out;
    *hi = ((i + 1) * in + out - 1) / out;
}

/* One plane: y[i, j] (and, for max, the winner's index in the plane). For a
 * max, ties go to the first in row-major order and a NaN wins, as PyTorch. */
static void plane_forward(const fc_adaptive_shape *s, int max, const float *x, float *y, int64_t *arg)
{
    for (fc_int i = 0; i < s->oh; i++) {
        fc_int y0, y1;
        window(i, s->h, s->oh, &y0, &y1);
        for (fc_int j = 0; j < s->ow; j++) {
            fc_int x0, x1;
            window(j, s->w, s->ow, &x0, &x1);
            float acc = max ? x[y0 * s->w + x0] : 0.0f;
            fc_int best = y0 * s->w + x0;
            for (fc_int r = y0; r < y1; r++)
                for (fc_int c = x0; c < x1; c++) {
                    float v = x[r * s->w + c];
                    if (!max) {
                        acc += v;
                    } else if (acc == acc && (v > acc || v != v)) {
                        acc = v;
                        best = r * s->w + c;
                    }
                }
            if (max) {
                y[i * s->ow + j] = acc;
                arg[i * s->ow + j] = best;
            } else {
                y[i * s->ow + j] = acc / (float)((y1 - y0) * (x1 - x0));
            }
        }
    }
}

static void plane_backward(const fc_adaptive_shape *s, const float *dy, const int64_t *arg, float *dx)
{
    memset(dx, 0, sizeof(float) * (size_t)(s->h * s->w));
    for (fc_int i = 0; i < s->oh; i++) {
        fc_int y0, y1;
        window(i, s->h, s->oh, &y0, &y1);
        for (fc_int j = 0; j < s->ow; j++) {
            float g = dy[i * s->ow + j];
            if (arg) {
                dx[arg[i * s->ow + j]] += g;
                continue;
            }
            fc_int x0, x1;
            window(j, s->w, s->ow, &x0, &x1);
            g /= (float)((y1 - y0) * (x1 - x0));
            for (fc_int r = y0; r < y1; r++)
                for (fc_int c = x0; c < x1; c++) dx[r * s->w + c] += g;
        }
    }
}

void fc_adaptive_pool2d_forward(const fc_adaptive_shape *s, int max, const float *x, float *y,
                                int64_t *argmax, int nthreads)
{
    fc_int planes = s->n * s->c, in_plane = s->h * s->w, out_plane = s->oh * s->ow;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (planes * in_plane >= FC_POOL_PAR_MIN)
    for (fc_int p = 0; p < planes; p++)
        plane_forward(s, max, x + p * in_plane, y + p * out_plane, max ? argmax + p * out_plane : NULL);
}

void fc_adaptive_pool2d_backward(const fc_adaptive_shape *s, const float *dy, const int64_t *argmax,
                                 float *dx, int nthreads)
{
    fc_int planes = s->n * s->c, in_plane = s->h * s->w, out_plane = s->oh * s->ow;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (planes * in_plane >= FC_POOL_PAR_MIN)
    for (fc_int p = 0; p < planes; p++)
        plane_backward(s, dy + p * out_plane, argmax ? argmax + p * out_plane : NULL, dx + p * in_plane);
}
