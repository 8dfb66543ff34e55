/* The depthwise plane kernels (kernels/ref/depthwise_impl.h) with this
 * folder's AVX2 + FMA flags: 8 outputs per vector. */
#define FC_KERNEL_ISA avx2
#include "kernels/ref/depthwise_impl.h"
