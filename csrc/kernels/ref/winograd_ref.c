/* Winograd's transforms, baseline flags. */
#define FC_KERNEL_ISA ref
#include "kernels/ref/winograd_impl.h"
