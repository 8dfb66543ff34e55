/* The reference Winograd transforms (kernels/ref/winograd_impl.h) with this
 * folder's AVX2 flags: one ymm operation for each pair of SSE2 ones. */
#define FC_KERNEL_ISA avx2
#include "kernels/ref/winograd_impl.h"
