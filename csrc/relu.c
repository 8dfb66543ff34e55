/* ReLU forward and backward: memory-bound streams, written so the compiler
 * vectorizes the loop body (a select, no branch) and split statically over
 * threads. */
#include "fastconv.h"
#include "fc_omp.h"

/* Below this many elements a parallel region costs more than it saves. */
#define FC_ELEMENTWISE_PAR_MIN 32768

void fc_relu_forward(fc_int count, const float *x, float *y, int nthreads)
{
    /* x < 0 is false for NaN, so NaN passes through as in PyTorch. */
#pragma omp parallel for num_threads(nthreads) schedule(static) if (count >= FC_ELEMENTWISE_PAR_MIN)
    for (fc_int i = 0; i < count; i++) y[i] = x[i] < 0.0f ? 0.0f : x[i];
}

void fc_relu_backward(fc_int count, const float *dy, const float *y, float *dx, int nthreads)
{
    /* PyTorch's threshold_backward: zero where y <= 0, so dy passes where y is NaN. */
#pragma omp parallel for num_threads(nthreads) schedule(static) if (count >= FC_ELEMENTWISE_PAR_MIN)
    for (fc_int i = 0; i < count; i++) {
        /* Load dy unconditionally: a conditional load keeps gcc from vectorizing. */
        float g = dy[i];
        dx[i] = y[i] <= 0.0f ? 0.0f : g;
    }
}
