/* The batch-norm tiles, baseline flags: SSE2 vectors of 2 doubles. */
#define FC_KERNEL_ISA ref
#define FC_VEC_DOUBLES 2
#include "kernels/ref/batchnorm_impl.h"
