/* The reference copies and range pass (kernels/ref/copies_impl.h) with this
 * folder's AVX2 flags: twice the bytes per instruction of SSE2. */
#define FC_KERNEL_ISA avx2
#include "kernels/ref/copies_impl.h"
