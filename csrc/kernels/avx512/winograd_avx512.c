/* The reference Winograd transforms (kernels/ref/winograd_impl.h) with this
 * folder's AVX-512 flags, 16 tiles per zmm: partial vectors stored with
 * masks, and 16x16 and 8x8 outputs taken 2 and 4 tile rows per vector. */
#define FC_KERNEL_ISA avx512
#define WG_LANES 16
#include "kernels/ref/winograd_impl.h"
