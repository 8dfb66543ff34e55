/* The batch-norm tiles (kernels/ref/batchnorm_impl.h) with this folder's flags. */
#define FC_KERNEL_ISA avx512
#define FC_VEC_DOUBLES 8
#include "kernels/ref/batchnorm_impl.h"
