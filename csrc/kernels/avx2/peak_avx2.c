/* The peak loop on 8-float vectors, with this folder's flags. */
#define FC_KERNEL_ISA avx2
#define FC_PEAK_LANES 8
#include "kernels/ref/peak_impl.h"
