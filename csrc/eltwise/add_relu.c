/* The residual add y = a + b (then max(y, 0) when `relu`), split in contiguous
 * ranges over threads; each range runs the ISA table's add_relu loop. An
 * element's result depends on nothing else, so any split gives the same bits. */
#include "fastconv.h"
#include "core/fc_omp.h"
#include "kernels/ctx.h"

/* Below this many elements a parallel region costs more than it saves (as
 * the streaming activations, activations.c). */
#define FC_ADD_PAR_MIN 32768

void fc_add_relu(fc_int count, const float *a, const float *b, int relu, float *y, int nthreads)
{
    fc_add_relu_fn *add = fc_ctx_current()->add_relu;
    if (count < FC_ADD_PAR_MIN || nthreads < 2) {
        add(count, a, b, relu, y);
        return;
    }
#pragma omp parallel num_threads(nthreads)
    {
        long long lo, hi;
        fc_split_range(count, fc_team_size(), fc_thread_id(), &lo, &hi);
        add(hi - lo, a + lo, b + lo, relu, y + lo);
    }
}
