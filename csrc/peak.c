/* The machine's FLOP peak, measured: every thread runs independent chains of
 * multiply-adds on the widest vectors of an ISA, so that "% of peak" in the
 * benchmarks is a measurement of this CPU at this moment (clock, SMT, other
 * load) rather than a number from a datasheet. Not a kernel: nothing in the
 * library calls it.
 *
 * PEAK_CHAINS independent accumulators hide the FMA latency: two FMA pipes of
 * latency 4-5 need 8-10 in flight, and 12 still fit in AVX2's 16 registers.
 * GNU C vector types and a per-function target let one definition serve each
 * ISA; with -ffp-contract=fast (GCC's default in gnu11) acc * m + a is one
 * fused multiply-add where the target has it. */
#include <time.h>

#include "fastconv.h"
#include "fc_omp.h"

#define PEAK_CHAINS 12

#define PEAK_LOOP(NAME, LANES, TARGET)                                                   \
    TARGET static float NAME(fc_int iters, float seed)                                   \
    {                                                                                    \
        typedef float vec __attribute__((vector_size(4 * (LANES))));                     \
        vec acc[PEAK_CHAINS], m = {0}, a = {0};                                          \
        m += 0.999999f;                                                                  \
        a += seed * 1e-7f;                                                               \
        for (int j = 0; j < PEAK_CHAINS; j++) acc[j] = a + (float)j;                     \
        for (fc_int i = 0; i < iters; i++)                                               \
            _Pragma("GCC unroll 12") for (int j = 0; j < PEAK_CHAINS; j++) acc[j] = acc[j] * m + a; \
        float s = 0.0f;                                                                  \
        for (int j = 0; j < PEAK_CHAINS; j++)                                            \
            for (int l = 0; l < (LANES); l++) s += acc[j][l];                            \
        return s;                                                                        \
    }

PEAK_LOOP(peak_generic, 4, )
#if defined(FC_X86_KERNELS) && (defined(__GNUC__) || defined(__clang__))
PEAK_LOOP(peak_avx2, 8, __attribute__((target("avx2,fma"))))
PEAK_LOOP(peak_avx512, 16, __attribute__((target("avx512f,avx2,fma"))))
#endif

static int lanes(int isa) { return isa == FC_ISA_AVX512 ? 16 : isa == FC_ISA_AVX2 ? 8 : 4; }

double fc_peak_flop_per_iter(int isa) { return 2.0 * PEAK_CHAINS * lanes(isa); }

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

double fc_peak_run(int isa, fc_int iters, int nthreads, float *sink)
{
    float total = 0.0f;
    double start = now();
#pragma omp parallel num_threads(nthreads) reduction(+ : total)
    {
        float seed = (float)(fc_thread_id() + 1);
        switch (isa) {
#if defined(FC_X86_KERNELS) && (defined(__GNUC__) || defined(__clang__))
        case FC_ISA_AVX512: total += peak_avx512(iters, seed); break;
        case FC_ISA_AVX2: total += peak_avx2(iters, seed); break;
#endif
        default: total += peak_generic(iters, seed);
        }
    }
    double seconds = now() - start;
    *sink = total; /* the result is used, so the loops cannot be dropped */
    return seconds;
}
