/* The peak loop on 4-float vectors, with this folder's flags. */
#define FC_KERNEL_ISA ref
#define FC_PEAK_LANES 4
#include "kernels/ref/peak_impl.h"
