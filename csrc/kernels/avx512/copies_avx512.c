/* The reference copies and range pass (kernels/ref/copies_impl.h) with this
 * folder's AVX-512 flags: GCC vectorizes their loops 16 floats wide (then an
 * 8-wide and a scalar epilogue: the spans are an output row or several). */
#define FC_KERNEL_ISA avx512
#include "kernels/ref/copies_impl.h"
