/* The residual add (kernels/ref/add_impl.h) with this folder's AVX2 flags. */
#define FC_KERNEL_ISA avx2
#include "kernels/ref/add_impl.h"
