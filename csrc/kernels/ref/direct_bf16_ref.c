/* The bf16 direct forward in plain C (contract: kernels/direct.h), the
 * emulation every table starts from and the oracle of the AVX512_BF16
 * tiles: vdpbf16ps's two multiply-adds per pair tap as fc_bf16_step does
 * them, high channel first (kernels/bf16.h). */
#include "kernels/bf16.h"
#include "kernels/direct.h"

void fc_direct_bf16_forward_ref(const fc_conv_shape *s, const fc_direct_geom *g, const uint32_t *xp2,
                                const fc_int *off2, const uint16_t *wt2, const float *bias, int relu,
                                float *y, fc_int t0, fc_int t1)
{
    const fc_int ohow = s->oh * s->ow, pairs = (s->c + 1) / 2 * s->kh * s->kw, K = s->k;
    const fc_int p1 = t1 * FC_DIRECT_BF16_TILE < ohow ? t1 * FC_DIRECT_BF16_TILE : ohow;
    for (fc_int p = t0 * FC_DIRECT_BF16_TILE; p < p1; p++) {
        const uint32_t *x = xp2 + p / s->ow * s->sh * g->wp + p % s->ow * s->sw;
        for (fc_int k = 0; k < K; k++) {
            float acc = 0.0f;
            for (fc_int u = 0; u < pairs; u++) {
                const uint32_t v = x[off2[u]];
                const uint16_t *w = wt2 + (u * K + k) * 2;
                acc = fc_bf16_step(acc, fc_bf16_value(w[1]), fc_bf16_value((fc_bf16)(v >> 16)));
                acc = fc_bf16_step(acc, fc_bf16_value(w[0]), fc_bf16_value((fc_bf16)(v & 0xffffu)));
            }
            float out = acc + (bias ? bias[k] : 0.0f);
            if (relu) out = out < 0.0f ? 0.0f : out;
            y[k * ohow + p] = out;
        }
    }
}
