/* Portable 2x2 stride-2 max-pool row kernels (always built). */
#include "kernels/maxpool2x2.h"

static void forward_generic(fc_int ow, const float *r0, const float *r1, float *y, uint8_t *am)
{
    fc_pool2x2_fwd_scalar(0, ow, r0, r1, y, am);
}

static void backward_generic(fc_int ow, const float *dy, const uint8_t *am, float *dx0, float *dx1)
{
    fc_pool2x2_bwd_scalar(0, ow, dy, am, dx0, dx1);
}

const fc_pool2x2_kernel fc_pool2x2_kernel_generic = {forward_generic, backward_generic};
