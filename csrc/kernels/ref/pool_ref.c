/* The 2x2 stride-2 max-pool row kernels in plain C (contract: kernels/pool.h). */
#include "kernels/pool.h"

void fc_pool2x2_forward_ref(fc_int ow, const float *r0, const float *r1, float *y, uint8_t *am)
{
    row_forward_scalar(0, ow, r0, r1, y, am);
}

void fc_pool2x2_backward_ref(fc_int ow, const float *dy, const uint8_t *am, float *dx0, float *dx1)
{
    row_backward_scalar(0, ow, dy, am, dx0, dx1);
}
