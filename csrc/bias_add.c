/* Bias add over the channel axis, in place: one row of `inner` elements per
 * (outer, channel) pair, rows split statically over threads. */
#include "fastconv.h"
#include "fc_omp.h"

#define FC_BIAS_PAR_MIN 32768

void fc_bias_add(fc_int outer, fc_int channels, fc_int inner, float *y,
                 const float *bias, int nthreads)
{
    fc_int rows = outer * channels;
    if (inner == 1) {
        /* (outer, channels): add the whole bias vector to each row. */
#pragma omp parallel for num_threads(nthreads) schedule(static) if (rows >= FC_BIAS_PAR_MIN)
        for (fc_int o = 0; o < outer; o++) {
            float *row = y + o * channels;
            for (fc_int j = 0; j < channels; j++) row[j] += bias[j];
        }
        return;
    }
#pragma omp parallel for num_threads(nthreads) schedule(static) if (rows * inner >= FC_BIAS_PAR_MIN)
    for (fc_int r = 0; r < rows; r++) {
        float b = bias[r % channels], *row = y + r * inner;
        for (fc_int i = 0; i < inner; i++) row[i] += b;
    }
}
