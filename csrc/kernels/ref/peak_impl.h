/* The peak measurement's loop (peak.c; contract: fc_peak_fn in
 * kernels/ctx.h), one source for every ISA folder: include it once with
 * FC_KERNEL_ISA and FC_PEAK_LANES (floats per vector of that ISA) defined;
 * it defines fc_peak_<isa>.
 *
 * PEAK_CHAINS independent accumulators hide the FMA latency: two FMA pipes of
 * latency 4-5 need 8-10 in flight, and 12 still fit in AVX2's 16 registers.
 * GNU C vector types let one definition serve each ISA; with
 * -ffp-contract=fast (GCC's default in gnu11) acc * m + a is one fused
 * multiply-add where the folder's flags have FMA. */
#include "kernels/ctx.h"

#if !defined(FC_KERNEL_ISA) || !defined(FC_PEAK_LANES)
#error "define FC_KERNEL_ISA and FC_PEAK_LANES before including kernels/ref/peak_impl.h"
#endif

float FC_KERNEL(peak)(fc_int iters, float seed)
{
    typedef float vec __attribute__((vector_size(4 * (FC_PEAK_LANES))));
    vec acc[FC_PEAK_CHAINS], m = {0}, a = {0};
    m += 0.999999f;
    a += seed * 1e-7f;
    for (int j = 0; j < FC_PEAK_CHAINS; j++) acc[j] = a + (float)j;
    for (fc_int i = 0; i < iters; i++)
#pragma GCC unroll 12
        for (int j = 0; j < FC_PEAK_CHAINS; j++) acc[j] = acc[j] * m + a;
    float s = 0.0f;
    for (int j = 0; j < FC_PEAK_CHAINS; j++)
        for (int l = 0; l < (FC_PEAK_LANES); l++) s += acc[j][l];
    return s;
}
