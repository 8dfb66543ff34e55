/* Element-wise activations, forward and backward: ReLU, leaky ReLU, ELU,
 * sigmoid, tanh. The loops are the ISA table's rows (formulas and NaN rules:
 * kernels/eltwise.h); this file splits the array statically over threads,
 * one contiguous share each. */
#include "fastconv.h"
#include "core/fc_omp.h"
#include "kernels/ctx.h"

/* Below this many elements a parallel region costs more than it saves. ReLU,
 * leaky ReLU and the backwards stream memory; an exp or tanh costs several
 * times more per element, so it pays to split smaller arrays. */
#define FC_STREAM_PAR_MIN 32768
#define FC_EXP_PAR_MIN 8192

static const fc_int forward_par_min[FC_ACT_COUNT] = {
    [FC_ACT_RELU] = FC_STREAM_PAR_MIN, [FC_ACT_LEAKY_RELU] = FC_STREAM_PAR_MIN,
    [FC_ACT_ELU] = FC_EXP_PAR_MIN, [FC_ACT_SIGMOID] = FC_EXP_PAR_MIN, [FC_ACT_TANH] = FC_EXP_PAR_MIN,
};
static const fc_int backward_par_min[FC_ACT_COUNT] = {
    [FC_ACT_RELU] = FC_STREAM_PAR_MIN, [FC_ACT_LEAKY_RELU] = FC_STREAM_PAR_MIN,
    [FC_ACT_ELU] = FC_EXP_PAR_MIN, [FC_ACT_SIGMOID] = FC_STREAM_PAR_MIN, [FC_ACT_TANH] = FC_STREAM_PAR_MIN,
};

void fc_activation_forward(int op, fc_int count, const float *x, float param, float *y,
                           int nthreads)
{
    fc_act_forward_fn *const row = fc_ctx_current()->eltwise->forward[op];
#pragma omp parallel num_threads(nthreads) if (count >= forward_par_min[op])
    {
        long long lo, hi;
        fc_split_range(count, fc_team_size(), fc_thread_id(), &lo, &hi);
        row(hi - lo, x + lo, param, y + lo);
    }
}

void fc_activation_backward(int op, fc_int count, const float *dy, const float *a, float param,
                            float *dx, int nthreads)
{
    fc_act_backward_fn *const row = fc_ctx_current()->eltwise->backward[op];
#pragma omp parallel num_threads(nthreads) if (count >= backward_par_min[op])
    {
        long long lo, hi;
        fc_split_range(count, fc_team_size(), fc_thread_id(), &lo, &hi);
        row(hi - lo, dy + lo, a + lo, param, dx + lo);
    }
}
