/* The residual add y = a + b, with the ReLU max(y, 0) after it when `relu`,
 * as one source that each ISA folder compiles with its flags (like
 * copies_impl.h): kernels/ref/add_ref.c, kernels/avx2/add_avx2.c and
 * kernels/avx512/add_avx512.c, whose loop gcc vectorizes 8 and 16 lanes wide. Include it once, with FC_KERNEL_ISA
 * defined (the entry is fc_add_relu_<isa>).
 *
 * The ReLU is relu_forward's select (activations.c) term for term: y < 0
 * gives +0, anything else (NaN, -0) passes, so the fused add + ReLU has the
 * bits of the add followed by the ReLU kernel. */
#include <stdint.h>
#include <string.h>

#include "kernels/ctx.h"

#ifndef FC_KERNEL_ISA
#error "define FC_KERNEL_ISA before including kernels/ref/add_impl.h"
#endif

void FC_KERNEL(add_relu)(fc_int n, const float *a, const float *b, int relu, float *y)
{
    if (!relu) {
        for (fc_int i = 0; i < n; i++) y[i] = a[i] + b[i];
        return;
    }
    for (fc_int i = 0; i < n; i++) {
        /* A bit-mask select, not ?: (which gcc turns into a branch): see blend in activations.c. */
        float s = a[i] + b[i];
        uint32_t u, m;
        memcpy(&u, &s, sizeof u);
        m = -(uint32_t)(s < 0.0f);
        u &= ~m;
        memcpy(&y[i], &u, sizeof u);
    }
}
