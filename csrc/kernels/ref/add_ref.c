/* The residual add (kernels/ref/add_impl.h) with the baseline flags. */
#define FC_KERNEL_ISA ref
#include "kernels/ref/add_impl.h"
