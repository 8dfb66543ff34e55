/* The batch-norm tiles, baseline flags. */
#define FC_KERNEL_ISA ref
#include "kernels/ref/batchnorm_impl.h"
