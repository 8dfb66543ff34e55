/* The peak loop on 16-float vectors, with this folder's flags. */
#define FC_KERNEL_ISA avx512
#define FC_PEAK_LANES 16
#include "kernels/ref/peak_impl.h"
