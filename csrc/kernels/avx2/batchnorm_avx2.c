/* The batch-norm tiles (kernels/ref/batchnorm_impl.h) with this folder's flags. */
#define FC_KERNEL_ISA avx2
#include "kernels/ref/batchnorm_impl.h"
