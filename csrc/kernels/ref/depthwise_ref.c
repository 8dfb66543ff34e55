/* The depthwise plane kernels, baseline flags. */
#define FC_KERNEL_ISA ref
#include "kernels/ref/depthwise_impl.h"
