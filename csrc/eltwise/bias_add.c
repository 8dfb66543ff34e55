/* Bias add over the channel axis, in place: one row of `inner` elements per
 * (outer, channel) pair, rows split statically over threads, each added by
 * the ISA table's element-wise rows (kernels/eltwise.h). */
#include "fastconv.h"
#include "core/fc_omp.h"
#include "kernels/ctx.h"

#define FC_BIAS_PAR_MIN 32768

void fc_bias_add(fc_int outer, fc_int channels, fc_int inner, float *y,
                 const float *bias, int nthreads)
{
    const fc_eltwise_kernel *const k = fc_ctx_current()->eltwise;
    fc_int rows = outer * channels;
    if (inner == 1) {
        /* (outer, channels): add the whole bias vector to each row. */
#pragma omp parallel for num_threads(nthreads) schedule(static) if (rows >= FC_BIAS_PAR_MIN)
        for (fc_int o = 0; o < outer; o++) k->add_vector(channels, y + o * channels, bias);
        return;
    }
#pragma omp parallel for num_threads(nthreads) schedule(static) if (rows * inner >= FC_BIAS_PAR_MIN)
    for (fc_int r = 0; r < rows; r++) k->add_scalar(inner, y + r * inner, bias[r % channels]);
}
