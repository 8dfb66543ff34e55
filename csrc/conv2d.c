/* PLACEHOLDER: direct loops until im2col + sgemm lands. */
#include <string.h>
#include "fastconv.h"
int fc_conv2d_forward(const fc_conv_shape *s, const float *x, const float *weight,
                      const float *bias, float *y, int nthreads)
{
    (void)nthreads;
    for (fc_int n = 0; n < s->n; n++)
        for (fc_int k = 0; k < s->k; k++)
            for (fc_int oy = 0; oy < s->oh; oy++)
                for (fc_int ox = 0; ox < s->ow; ox++) {
                    float acc = bias ? bias[k] : 0.0f;
                    for (fc_int c = 0; c < s->c; c++)
                        for (fc_int i = 0; i < s->kh; i++)
                            for (fc_int j = 0; j < s->kw; j++) {
                                fc_int iy = oy * s->sh - s->ph + i, ix = ox * s->sw - s->pw + j;
                                if (iy < 0 || iy >= s->h || ix < 0 || ix >= s->w) continue;
                                acc += x[((n * s->c + c) * s->h + iy) * s->w + ix] *
                                       weight[((k * s->c + c) * s->kh + i) * s->kw + j];
                            }
                    y[((n * s->k + k) * s->oh + oy) * s->ow + ox] = acc;
                }
    return 0;
}
int fc_conv2d_backward(const fc_conv_shape *s, const float *x, const float *weight,
                       const float *dy, float *dx, float *dweight, float *dbias, int nthreads)
{
    (void)nthreads;
    if (dx) memset(dx, 0, sizeof(float) * s->n * s->c * s->h * s->w);
    memset(dweight, 0, sizeof(float) * s->k * s->c * s->kh * s->kw);
    if (dbias) memset(dbias, 0, sizeof(float) * s->k);
    for (fc_int n = 0; n < s->n; n++)
        for (fc_int k = 0; k < s->k; k++)
            for (fc_int oy = 0; oy < s->oh; oy++)
                for (fc_int ox = 0; ox < s->ow; ox++) {
                    float g = dy[((n * s->k + k) * s->oh + oy) * s->ow + ox];
                    if (dbias) dbias[k] += g;
                    for (fc_int c = 0; c < s->c; c++)
                        for (fc_int i = 0; i < s->kh; i++)
                            for (fc_int j = 0; j < s->kw; j++) {
                                fc_int iy = oy * s->sh - s->ph + i, ix = ox * s->sw - s->pw + j;
                                if (iy < 0 || iy >= s->h || ix < 0 || ix >= s->w) continue;
                                fc_int xi = ((n * s->c + c) * s->h + iy) * s->w + ix;
                                fc_int wi = ((k * s->c + c) * s->kh + i) * s->kw + j;
                                dweight[wi] += g * x[xi];
                                if (dx) dx[xi] += g * weight[wi];
                            }
                }
    return 0;
}
