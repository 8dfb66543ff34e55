/* The residual add (kernels/ref/add_impl.h) with this folder's AVX-512 flags:
 * gcc vectorizes its loop 16 lanes wide. */
#define FC_KERNEL_ISA avx512
#include "kernels/ref/add_impl.h"
