/* The machine's FLOP peak, measured: every thread runs independent chains of
 * multiply-adds on the widest vectors of an ISA (the ISA table's peak loop,
 * kernels/ref/peak_impl.h compiled per folder), so that "% of peak" in the
 * benchmarks is a measurement of this CPU at this moment (clock, SMT, other
 * load) rather than a number from a datasheet. Not a kernel: nothing in the
 * library calls it. */
#include <time.h>

#include "fastconv.h"
#include "core/fc_omp.h"
#include "kernels/ctx.h"

double fc_peak_flop_per_iter(int isa) { return 2.0 * FC_PEAK_CHAINS * fc_ctx_of(isa)->peak_lanes; }

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

double fc_peak_run(int isa, fc_int iters, int nthreads, float *sink)
{
    fc_peak_fn *const loop = fc_ctx_of(isa)->peak;
    float total = 0.0f;
    double start = now();
#pragma omp parallel num_threads(nthreads) reduction(+ : total)
    total += loop(iters, (float)(fc_thread_id() + 1));
    double seconds = now() - start;
    *sink = total; /* the result is used, so the loops cannot be dropped */
    return seconds;
}
