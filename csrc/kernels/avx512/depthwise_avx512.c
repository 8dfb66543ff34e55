/* The depthwise plane kernels (kernels/ref/depthwise_impl.h) with this
 * folder's AVX-512 flags: 16 outputs per vector. */
#define FC_KERNEL_ISA avx512
#include "kernels/ref/depthwise_impl.h"
