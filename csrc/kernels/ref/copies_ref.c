/* The im2col family's copies and the range pass, baseline flags. */
#define FC_KERNEL_ISA ref
#include "kernels/ref/copies_impl.h"
