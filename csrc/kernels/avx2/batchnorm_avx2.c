/* The batch-norm tiles (kernels/ref/batchnorm_impl.h) with this folder's flags. */
#define FC_KERNEL_ISA avx2
#define FC_VEC_DOUBLES 4
#include "kernels/ref/batchnorm_impl.h"
