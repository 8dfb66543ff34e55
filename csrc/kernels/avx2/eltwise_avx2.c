/* The element-wise rows (kernels/ref/eltwise_impl.h) with this folder's flags:
 * 8 floats per instruction. */
#define FC_KERNEL_ISA avx2
#include "kernels/ref/eltwise_impl.h"
