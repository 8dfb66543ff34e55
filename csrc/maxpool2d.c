/* Max-pool with recorded argmax, and its backward through that argmax.
 * Work is split over (n, c) planes: each plane is read and written by one
 * thread only, so the backward's scatter-add has no race and no atomics, and
 * the result does not depend on the thread count. */
#include <math.h>
#include <string.h>
#include "fastconv.h"
#include "fc_omp.h"

static inline void store_index(void *argmax, int bytes, fc_int i, int v)
{
    if (bytes == 1) ((uint8_t *)argmax)[i] = (uint8_t)v;
    else ((int32_t *)argmax)[i] = (int32_t)v;
}

static inline fc_int load_index(const void *argmax, int bytes, fc_int i)
{
    return bytes == 1 ? ((const uint8_t *)argmax)[i] : ((const int32_t *)argmax)[i];
}

static void pool_plane(const fc_pool_shape *s, const float *x, float *y, void *argmax,
                       int bytes, fc_int out_base)
{
    for (fc_int oy = 0; oy < s->oh; oy++) {
        fc_int ys = oy * s->sh - s->ph;
        fc_int y0 = ys < 0 ? 0 : ys, y1 = ys + s->kh > s->h ? s->h : ys + s->kh;
        for (fc_int ox = 0; ox < s->ow; ox++) {
            fc_int xs = ox * s->sw - s->pw;
            fc_int x0 = xs < 0 ? 0 : xs, x1 = xs + s->kw > s->w ? s->w : xs + s->kw;
            /* Start from the first real (unpadded) element, as PyTorch does, so
             * a window of -inf still points at a real input. */
            float best = -INFINITY;
            int best_i = (int)((y0 - ys) * s->kw + (x0 - xs));
            for (fc_int iy = y0; iy < y1; iy++) {
                const float *row = x + iy * s->w;
                for (fc_int ix = x0; ix < x1; ix++) {
                    float v = row[ix];
                    if (v > best || v != v) {
                        best = v;
                        best_i = (int)((iy - ys) * s->kw + (ix - xs));
                    }
                }
            }
            fc_int o = out_base + oy * s->ow + ox;
            y[o] = best;
            store_index(argmax, bytes, o, best_i);
        }
    }
}

void fc_maxpool2d_forward(const fc_pool_shape *s, const float *x, float *y,
                          void *argmax, int argmax_bytes, int nthreads)
{
    fc_int planes = s->n * s->c, in_plane = s->h * s->w, out_plane = s->oh * s->ow;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (planes * in_plane >= 16384)
    for (fc_int p = 0; p < planes; p++)
        pool_plane(s, x + p * in_plane, y, argmax, argmax_bytes, p * out_plane);
}

fc_int fc_maxpool2d_backward(const fc_pool_shape *s, const float *dy, const void *argmax,
                             int argmax_bytes, float *dx, int nthreads)
{
    fc_int planes = s->n * s->c, in_plane = s->h * s->w, out_plane = s->oh * s->ow;
    fc_int bad = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+ : bad) if (planes * in_plane >= 16384)
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
