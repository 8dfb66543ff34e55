/* The element-wise rows, baseline flags. */
#define FC_KERNEL_ISA ref
#include "kernels/ref/eltwise_impl.h"
